"""Per-backend cost models for extraction: kernel launches + bytes moved + flops, in microseconds.

Why a model rather than counting nodes: a fused op is one launch and one round trip
through memory where its primitives were several, and a concatenated matmul is one
launch where its siblings were three; only a model in time units weighs those
against each other and against the flops that do not change.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.ir import TensorType, get_op

TRANSCENDENTAL = {"exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu", "erf", "gelu",
                  "pow", "swiglu", "geglu"}
VIEW_OPS = {"reshape"}
# Ties go to the higher-level op: it tells a backend more (a linear is a matmul with a known weight layout).
HIGH_LEVEL = {"linear", "fused_linear", "attention", "softmax", "rms_norm", "layer_norm", "gelu", "silu",
              "swiglu", "geglu"}


@dataclass(frozen=True)
class CostModel:
    """Launch overhead (us), memory bandwidth (bytes/us), arithmetic rate (flop/us).

    `load_time_factor` scales ops whose inputs are all parameters or constants: they run
    once when weights are loaded, not per call.
    """
    name: str
    launch_us: float
    bytes_per_us: float
    flops_per_us: float
    view_us: float
    load_time_factor: float = 1e-3

    def node_cost(self, op: str, attrs: dict, ins: list, outs: list, load_time: bool) -> float:
        c = self._cost(op, attrs, [t for t in ins if t is not None], outs)
        if op in HIGH_LEVEL:
            c *= 0.999
        return max(c * (self.load_time_factor if load_time else 1.0), 1e-9)

    def _cost(self, op, attrs, ins: list[TensorType], outs: list[TensorType]) -> float:
        if op in VIEW_OPS or (op == "slice" and attrs.get("axes") == [-1]):
            return self.view_us  # the backend hands out a view, nothing moves
        moved = sum(t.nbytes for t in ins) + sum(t.nbytes for t in outs)
        return self.launch_us + moved / self.bytes_per_us + _flops(op, attrs, ins, outs) / self.flops_per_us


def _flops(op, attrs, ins, outs) -> float:
    out = outs[0] if outs else None
    if op in ("matmul", "linear", "fused_linear"):
        a, b = ins[0], ins[1]
        if op == "matmul":
            k = a.shape[-2] if attrs.get("transpose_a") else a.shape[-1]
        else:
            k = b.shape[1]
        f = 2.0 * out.size * k
        if attrs.get("activation") in ("swiglu", "geglu", "geglu_tanh"):
            f *= 2.0  # the output is half the matmul's width
        if op == "fused_linear":
            f += 5.0 * a.size * (attrs.get("norm", "none") != "none")
            f += 8.0 * out.size * (attrs.get("activation", "none") != "none")
        return f
    if op == "attention":
        q, k = ins[0], ins[1]
        b, h, sq, d = q.shape
        sk = k.shape[2]
        return 4.0 * b * h * sq * sk * d + 8.0 * b * h * sq * sk
    try:
        cat = get_op(op).category
    except KeyError:
        cat = "other"
    size = sum(t.size for t in outs)
    if cat == "pointwise":
        return size * (8.0 if op in TRANSCENDENTAL else 1.0)
    if cat in ("reduction", "norm"):
        return 6.0 * (ins[0].size if ins else size)
    return float(size)


# NumPy on a CPU: each op costs a Python dispatch and a full pass over memory.
CPU = CostModel("cpu", launch_us=4.0, bytes_per_us=5_000.0, flops_per_us=50_000.0, view_us=0.3)
# A GPU: launches dominate small ops, bandwidth and flops are far higher.
CUDA = CostModel("cuda", launch_us=5.0, bytes_per_us=1_500_000.0, flops_per_us=200_000_000.0, view_us=0.5)

COST_MODELS = {"cpu": CPU, "cuda": CUDA}


def cost_model(device: str) -> CostModel:
    try:
        return COST_MODELS[device]
    except KeyError:
        raise ValueError(f"no cost model for device {device!r}; expected one of {sorted(COST_MODELS)}") from None
