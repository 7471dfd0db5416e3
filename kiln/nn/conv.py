"""Convolutions over 1, 2 or 3 spatial axes, weights [out, in / groups, *kernel] (PyTorch's layout);
`transposed=True` is the transposed convolution, weights [in, out / groups, *kernel] (PyTorch's layout)."""

from __future__ import annotations

from kiln.ir import Graph, Value

from .module import Module, ParamSpec


class Conv(Module):
    def __init__(self, name: str, in_channels: int, out_channels: int, kernel_size: int | tuple[int, ...], *,
                 dims: int = 1, stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 transposed: bool = False, dtype="float32"):
        super().__init__(name, dtype)
        if dims not in (1, 2, 3):
            raise ValueError(f"Conv {name!r}: dims must be 1, 2 or 3, got {dims}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv {name!r}: channels {in_channels} -> {out_channels} are not divisible by "
                             f"groups {groups}")
        k = (kernel_size,) * dims if isinstance(kernel_size, int) else tuple(kernel_size)
        self.weight_shape = ((in_channels, out_channels // groups, *k) if transposed
                             else (out_channels, in_channels // groups, *k))
        self.dims, self.bias, self.transposed, self.out_channels = dims, bias, transposed, out_channels
        self.attrs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def own_params(self) -> dict[str, ParamSpec]:
        p = {"weight": ParamSpec(self.weight_shape, self.dtype)}
        if self.bias:
            p["bias"] = ParamSpec((self.out_channels,), self.dtype)
        return p

    def __call__(self, g: Graph, x: Value) -> Value:
        op = f"conv_transpose{self.dims}d" if self.transposed else f"conv{self.dims}d"
        return g.op(op, x, self.param(g, "weight"), self.param(g, "bias") if self.bias else None, **self.attrs)
