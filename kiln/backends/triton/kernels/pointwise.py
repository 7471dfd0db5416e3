"""Pointwise archetype: one generated Triton kernel for any fused elementwise expression.

A `PointwiseExpr` is a small DAG over tensor operands (loaded with their own strides, so
broadcasting, transposed views and slices cost no copies) and scalar literals. The generator
collapses dimensions that are contiguous for every operand, bakes the shape and strides into
the source (the divisions become multiplications by constants; a kernel that collapses to one
dimension has no shape in its source, so one kernel serves every length), and writes one or more
outputs of the full shape. Half-precision values are computed in float32 and rounded once at
the store (a `cast` to a half type rounds where it stands, as its meaning requires).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import torch
import triton

from kiln.ir import DType, as_dtype

from ..cache import KernelCache, default_cache
from ..device import interpreting
from .launch import launch

# kiln dtype -> the Triton dtype values are computed in
_COMPUTE = {"float16": "tl.float32", "bfloat16": "tl.float32", "float32": "tl.float32",
            "float64": "tl.float64", "int64": "tl.int64", "int32": "tl.int32", "uint8": "tl.uint8",
            "bool": "tl.int1"}
_STORAGE = {"float16": "tl.float16", "bfloat16": "tl.bfloat16", "float32": "tl.float32",
            "float64": "tl.float64", "int64": "tl.int64", "int32": "tl.int32", "uint8": "tl.uint8",
            "bool": "tl.int1"}

_UNARY_FLOAT = {
    "exp": "tl.exp({0})", "log": "tl.log({0})", "sqrt": "tl.sqrt({0})", "rsqrt": "(1.0 / tl.sqrt({0}))",
    "sin": "tl.sin({0})", "cos": "tl.cos({0})", "tanh": "tm.tanh({0})", "sigmoid": "tm.sigmoid({0})",
    "silu": "({0} * tm.sigmoid({0}))", "erf": "tl.erf({0})",
}
_BINARY = {"add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
           "equal": "({0} == {1})", "not_equal": "({0} != {1})", "less": "({0} < {1})",
           "less_equal": "({0} <= {1})", "greater": "({0} > {1})", "greater_equal": "({0} >= {1})",
           "logical_and": "({0} & {1})", "logical_or": "({0} | {1})", "pow": "tm.pow({0}, {1})"}

POINTWISE_OPS = frozenset(set(_UNARY_FLOAT) | set(_BINARY) | {
    "neg", "abs", "relu", "gelu", "maximum", "minimum", "where", "cast", "clamp", "logical_not",
    "swiglu", "geglu", "identity"})


@dataclass(frozen=True)
class Ref:
    """An argument of an expression node: a tensor operand, an earlier node, or a literal."""
    kind: str   # "in" | "node" | "lit"
    index: int = 0
    value: float | int = 0


@dataclass
class PointwiseExpr:
    input_dtypes: list[DType] = field(default_factory=list)
    nodes: list[tuple] = field(default_factory=list)   # (op, [Ref], attrs, DType)
    outputs: list[int] = field(default_factory=list)   # node indices

    def add_input(self, dt: DType) -> Ref:
        self.input_dtypes.append(as_dtype(dt))
        return Ref("in", len(self.input_dtypes) - 1)

    def add(self, op: str, args: list[Ref], attrs: dict, dt: DType) -> Ref:
        if op not in POINTWISE_OPS:
            raise NotImplementedError(f"pointwise codegen has no rule for op {op!r}")
        self.nodes.append((op, list(args), dict(attrs), as_dtype(dt)))
        return Ref("node", len(self.nodes) - 1)

    def dtype_of(self, r: Ref) -> DType | None:
        if r.kind == "in":
            return self.input_dtypes[r.index]
        if r.kind == "node":
            return self.nodes[r.index][3]
        return None

    def key(self) -> list:
        return [[d.name for d in self.input_dtypes],
                [[op, [[a.kind, a.index, repr(a.value)] for a in args], sorted((k, repr(v)) for k, v in at.items()),
                  dt.name] for op, args, at, dt in self.nodes],
                list(self.outputs)]


def supports(op: str, attrs: dict) -> bool:
    if op not in POINTWISE_OPS:
        return False
    if op in ("gelu", "geglu"):
        return attrs.get("approximate", "none") in ("none", "tanh")
    return True


# ---- shape / stride handling ------------------------------------------------------------------

def collapse(shape: tuple[int, ...], strides: list[tuple[int, ...]]) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Drop size-1 dims and merge neighbours that are contiguous for every operand."""
    dims = [i for i, s in enumerate(shape) if s != 1]
    if not dims:
        return (1,), [(0,) for _ in strides]
    shp = [shape[dims[0]]]
    sts = [[st[dims[0]]] for st in strides]
    for d in dims[1:]:
        if all(st[-1] == s[d] * shape[d] for st, s in zip(sts, strides)):
            shp[-1] *= shape[d]
            for st, s in zip(sts, strides):
                st[-1] = s[d]
        else:
            shp.append(shape[d])
            for st, s in zip(sts, strides):
                st.append(s[d])
    return tuple(shp), [tuple(s) for s in sts]


def _lit(value, dt: DType | None) -> str:
    if dt is not None and not dt.is_float:
        return str(int(value))
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"non-finite literal {v} must be a tensor operand")
    return repr(v)


def generate_source(expr: PointwiseExpr, shape: tuple[int, ...], in_strides: list[tuple[int, ...]],
                    out_strides: list[tuple[int, ...]], out_dtypes: list[DType], wide: bool,
                    multi: bool = False) -> str:
    """The Triton source of one kernel computing `expr` over a (collapsed) `shape`.

    multi: over many flat tensor sets in one launch (`MultiTensorPointwise`): operand i of every
    set is a pointer in table in{i}_ptrs; program p works on elements [blk_start[p], + BLOCK) of
    set blk_set[p], whose length is numels[set]; strides are (1,) or (0,) (one element)."""
    n_in, n_out = len(expr.input_dtypes), len(expr.outputs)
    params = [f"in{i}" for i in range(n_in)] + [f"out{i}" for i in range(n_out)]
    head = [
        "import triton", "import triton.language as tl", "from kiln.backends.triton.kernels import tmath as tm", "",
        "", "@triton.jit"]
    if multi:
        out_types = [_STORAGE[dt.name] for dt in out_dtypes]
        in_types = [_STORAGE[dt.name] for dt in expr.input_dtypes]
        lines = head + [
            f"def {kernel_name(expr, 'mt_')}({', '.join(p + '_ptrs' for p in params)}, blk_set, blk_start, numels, "
            "BLOCK: tl.constexpr):",
            "    pid = tl.program_id(0)",
            "    t = tl.load(blk_set + pid)",
            "    offs = tl.load(blk_start + pid) + tl.arange(0, BLOCK).to(tl.int64)",
            "    mask = offs < tl.load(numels + t)",
        ] + [f"    {p} = tl.load({p}_ptrs + t).to(tl.pointer_type({ty}))"
             for p, ty in zip(params, in_types + out_types)]
    else:
        lines = head + [
            f"def {kernel_name(expr)}({', '.join(params)}, N, BLOCK: tl.constexpr):",
            "    pid = tl.program_id(0)",
            ("    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)" if wide
             else "    offs = pid * BLOCK + tl.arange(0, BLOCK)"),
            "    mask = offs < N",
        ]
    rank = len(shape)
    idx = []
    if rank == 1:
        idx = ["offs"]
    else:
        lines.append("    rem = offs")
        for d in range(rank - 1, 0, -1):
            lines.append(f"    i{d} = rem % {shape[d]}")
            lines.append(f"    rem = rem // {shape[d]}")
            idx.insert(0, f"i{d}")
        idx.insert(0, "rem")

    def offset(strides) -> str:
        terms = [(i if s == 1 else f"{i} * {s}") for i, s in zip(idx, strides) if s != 0]
        return " + ".join(terms) if terms else "offs * 0"   # a broadcast scalar: still one pointer per lane

    names = {}
    for i, dt in enumerate(expr.input_dtypes):
        load = f"tl.load(in{i} + ({offset(in_strides[i])}), mask=mask, other=0)"
        conv = _COMPUTE[dt.name]
        lines.append(f"    a{i} = {load}.to({conv})")
        names[("in", i)] = f"a{i}"

    def arg(r: Ref) -> str:
        if r.kind == "lit":
            return _lit(r.value, None if isinstance(r.value, float) else as_dtype("int64"))
        return names[(r.kind, r.index)]

    for j, (op, args, attrs, dt) in enumerate(expr.nodes):
        a = [arg(r) for r in args]
        in_dt = expr.dtype_of(args[0]) if args else None
        lines.append(f"    v{j} = {_emit(op, a, attrs, dt, in_dt)}")
        names[("node", j)] = f"v{j}"

    for k, (node, dt) in enumerate(zip(expr.outputs, out_dtypes)):
        val = names[("node", node)]
        lines.append(f"    tl.store(out{k} + ({offset(out_strides[k])}), {val}.to({_STORAGE[dt.name]}), mask=mask)")
    lines += ["", "", f"kernel = {kernel_name(expr, 'mt_' if multi else 'pw_')}"]
    return "\n".join(lines) + "\n"


def kernel_name(expr: PointwiseExpr, prefix: str = "pw_") -> str:
    """`pw_` (`mt_` multi-tensor) and the chain's ops: the name profilers (CUPTI, Nsight) show."""
    return (prefix + "_".join(op for op, *_ in expr.nodes))[:64]


def _is_float_name(dt: DType | None) -> bool:
    return dt is not None and dt.is_float


def _emit(op: str, a: list[str], attrs: dict, dt: DType, in_dt: DType | None) -> str:
    if op in _UNARY_FLOAT:
        return _UNARY_FLOAT[op].format(*a)
    if op in _BINARY:
        return _BINARY[op].format(*a)
    if op == "identity":
        return a[0]
    if op == "neg":
        return f"(-{a[0]})"
    if op == "abs":
        return f"tl.abs({a[0]})"
    if op == "relu":
        return f"tl.where({a[0]} < 0, 0, {a[0]}).to({_COMPUTE[dt.name]})"
    if op in ("maximum", "minimum"):
        nan = ", propagate_nan=tl.PropagateNan.ALL" if _is_float_name(dt) else ""
        return f"tl.{op}({a[0]}, {a[1]}{nan})"
    if op == "logical_not":
        return f"({a[0]} == 0)"
    if op == "where":
        return f"tl.where({a[0]} != 0, {a[1]}, {a[2]})"
    if op == "gelu":
        return f"tm.gelu_tanh({a[0]})" if attrs.get("approximate") == "tanh" else f"tm.gelu({a[0]})"
    if op == "swiglu":
        return f"({a[0]} * tm.sigmoid({a[0]}) * {a[1]})"
    if op == "geglu":
        f = "tm.gelu_tanh" if attrs.get("approximate") == "tanh" else "tm.gelu"
        return f"({f}({a[0]}) * {a[1]})"
    if op == "clamp":
        nan = ", propagate_nan=tl.PropagateNan.ALL" if _is_float_name(dt) else ""
        x = a[0]
        if attrs.get("min") is not None:
            x = f"tl.maximum({x}, {_lit(attrs['min'], dt)}{nan})"
        if attrs.get("max") is not None:
            x = f"tl.minimum({x}, {_lit(attrs['max'], dt)}{nan})"
        return x
    if op == "cast":
        target = as_dtype(attrs["dtype"])
        if target.name == "bool":
            return f"({a[0]} != 0)"
        if target.name in ("float16", "bfloat16"):   # round to the half type, keep computing in float32
            return f"{a[0]}.to({_STORAGE[target.name]}).to(tl.float32)"
        return f"{a[0]}.to({_COMPUTE[target.name]})"
    raise NotImplementedError(f"pointwise codegen has no rule for op {op!r}")


# the generator's own source is part of every key: editing it invalidates cached kernels
_GENERATOR = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


# ---- launching --------------------------------------------------------------------------------

def _block_for(n: int) -> int:
    cap = 4096 if interpreting() else 1024
    return max(16, min(cap, triton_next_pow2(n)))


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class PointwiseKernel:
    """A compiled-on-first-use kernel for one expression over fixed operand shapes and strides."""

    archetype = "pointwise"

    def __init__(self, expr: PointwiseExpr, shape: tuple[int, ...], in_views: list[torch.Tensor],
                 out_views: list[torch.Tensor], cache: KernelCache | None = None):
        if not expr.outputs:
            raise ValueError("pointwise kernel without outputs")
        self.numel = int(np.prod(shape)) if shape else 1
        bstr = [_broadcast_strides(v, shape) for v in in_views]
        ostr = [_broadcast_strides(v, shape) for v in out_views]
        cshape, cstr = collapse(tuple(shape) if shape else (1,), [tuple(s) for s in bstr + ostr] if shape
                                else [(0,)] * (len(bstr) + len(ostr)))
        in_str, out_str = cstr[:len(bstr)], cstr[len(bstr):]
        span = max([self.numel] + [sum(abs(s) * (d - 1) for s, d in zip(st, cshape)) + 1 for st in cstr])
        wide = span >= 2 ** 31 - 1
        out_dtypes = [expr.nodes[i][3] for i in expr.outputs]
        for o, dt in zip(out_views, out_dtypes):
            if o.dtype != _torch_of(dt):
                raise TypeError(f"pointwise kernel: output buffer {o.dtype} does not hold {dt}")
        # a 1-d (collapsed) kernel's source does not depend on its length: one kernel serves every size
        kshape = cshape if len(cshape) > 1 else "any"
        key = {"expr": expr.key(), "shape": kshape, "in": in_str, "out": out_str, "wide": wide, "gen": _GENERATOR}
        self.key = key
        cache = cache or default_cache()
        self.fn = cache.kernel("pointwise", key,
                               lambda: generate_source(expr, cshape, in_str, out_str, out_dtypes, wide))
        self.block = _block_for(self.numel)
        self.grid = (triton.cdiv(self.numel, self.block),)

    def __call__(self, ins: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        launch(self.fn, self.grid, *ins, *outs, self.numel, BLOCK=self.block)


def _broadcast_strides(t: torch.Tensor, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of `t` broadcast to `shape` (stride 0 along broadcast dims)."""
    rank = len(shape)
    pad = rank - t.dim()
    if pad < 0:
        raise ValueError(f"operand of shape {tuple(t.shape)} has higher rank than the output {shape}")
    out = []
    for i, d in enumerate(shape):
        j = i - pad
        if j < 0:
            out.append(0)
        else:
            td = t.shape[j]
            if td == d:
                out.append(t.stride(j) if d != 1 else 0)
            elif td == 1:
                out.append(0)
            else:
                raise ValueError(f"operand of shape {tuple(t.shape)} does not broadcast to {shape}")
    return tuple(out)


def _torch_of(dt: DType) -> torch.dtype:
    from ..device import torch_dtype
    return torch_dtype(dt)

MULTI_TENSOR_BLOCK = 1024


def block_table(numels: list[int], per_program: int) -> tuple[np.ndarray, np.ndarray]:
    """A multi-tensor launch's programs: for each, the tensor it works on (int32) and its first
    element (int64), `per_program` elements apiece, tensor after tensor."""
    tensor = [t for t, n in enumerate(numels) for _ in range(0, n, per_program)]
    start = [b for n in numels for b in range(0, n, per_program)]
    return np.asarray(tensor, np.int32), np.asarray(start, np.int64)


class MultiTensorPointwise:
    """One launch of one pointwise expression over many independent sets of flat tensors (the
    optimizer update of every parameter): a table of block -> (set, start) and one pointer table
    per operand. The tables are built on the first call and reused while the tensors keep their
    addresses (a CUDA graph replays them), rebuilt when they move."""

    archetype = "pointwise"

    def __init__(self, expr: PointwiseExpr, in_views: list[list[torch.Tensor]], out_views: list[list[torch.Tensor]],
                 cache: KernelCache | None = None):
        if not in_views or len(in_views) != len(out_views):
            raise ValueError("multi-tensor pointwise kernel needs one operand list per tensor set")
        self.numels = [int(outs[0].numel()) for outs in out_views]
        one = [[v.numel() == 1 and n > 1 for v in ins] for ins, n in zip(in_views, self.numels)]
        self.one = [any(col) for col in zip(*one)] if one and one[0] else []
        for ins, outs, n in zip(in_views, out_views, self.numels):
            for j, v in enumerate(ins):
                if v.numel() != (1 if self.one[j] else n):
                    raise ValueError(f"multi-tensor operand {j} has {v.numel()} elements, expected "
                                     f"{1 if self.one[j] else n}")
            if any(o.numel() != n for o in outs):
                raise ValueError("multi-tensor outputs of one set must have one size")
        out_dtypes = [expr.nodes[i][3] for i in expr.outputs]
        in_strides = [(0,) if o else (1,) for o in self.one]
        key = {"expr": expr.key(), "multi": True, "one": self.one, "gen": _GENERATOR}
        cache = cache or default_cache()
        self.fn = cache.kernel("pointwise", key, lambda: generate_source(
            expr, (1,), in_strides, [(1,)] * len(out_dtypes), out_dtypes, True, multi=True))
        self.block = MULTI_TENSOR_BLOCK if not interpreting() else 4096
        sets, starts = block_table(self.numels, self.block)
        self._blocks = (sets, starts, np.asarray(self.numels, np.int64))
        self.grid = (len(sets),)
        self._tables = None

    def _tables_for(self, ins, outs) -> tuple:
        ptrs = tuple(t.data_ptr() for group in ins + outs for t in group)
        if self._tables is None or self._tables[0] != ptrs:
            dev = outs[0][0].device
            per_operand = [[group[j].data_ptr() for group in ins] for j in range(len(ins[0]))] + \
                          [[group[j].data_ptr() for group in outs] for j in range(len(outs[0]))]
            tables = [torch.tensor(col, dtype=torch.int64, device=dev) for col in per_operand]
            blocks = [torch.from_numpy(b).to(dev) for b in self._blocks]
            self._tables = (ptrs, tables, blocks)
        return self._tables[1], self._tables[2]

    def __call__(self, ins: list[list[torch.Tensor]], outs: list[list[torch.Tensor]]) -> None:
        tables, blocks = self._tables_for(ins, outs)
        launch(self.fn, self.grid, *tables, *blocks, BLOCK=self.block)
