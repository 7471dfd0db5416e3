"""Single-op test harness: run one kiln op through the real compile/run path, compare to torch.

Why: every op test reads the same way — random inputs, `check(op, inputs, torch_ref, **attrs)`.
The torch reference sees half-precision inputs upcast to float32 (exactly) and its result is
rounded once to the output dtype, which is the precision policy kiln's kernels promise.
"""

from __future__ import annotations

from typing import Callable, Sequence

import ml_dtypes
import numpy as np
import torch

import kiln
from kiln.ir import as_dtype

FLOATS = ("float32", "float64", "float16", "bfloat16")
INTS = ("int32", "int64", "uint8")

TORCH_DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64,
    "uint8": torch.uint8, "bool": torch.bool,
}

# (rtol, atol) per output dtype; exact dtypes compare bit for bit.
TOLERANCES = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-5),
    "float16": (2e-3, 1e-3),    # one float16 ulp is 2**-10 relative
    "bfloat16": (1.6e-2, 1e-2),  # one bfloat16 ulp is 2**-7 relative
}


# ---- random inputs ------------------------------------------------------------

def rand(rng: np.random.Generator, shape, dtype="float32", low=None, high=None) -> np.ndarray:
    """Random array of a kiln dtype: normal floats (or uniform in [low, high)), small ints, coin-flip bools."""
    dt = as_dtype(dtype)
    shape = tuple(shape)
    if dt.is_float:
        x = rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape)
        return np.asarray(x).astype(dt.np_dtype)
    if dt.name == "bool":
        return rng.random(shape) < 0.5
    lo = (0 if dt.name == "uint8" else -9) if low is None else low
    hi = 10 if high is None else high
    return rng.integers(lo, hi, shape).astype(dt.np_dtype)


# ---- numpy <-> torch -------------------------------------------------------------

def to_torch(a: np.ndarray, upcast: bool = True) -> torch.Tensor:
    """A torch copy of `a`; half floats become float32 (exact) unless upcast=False."""
    a = np.asarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        t = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a.copy())
    if upcast and t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t


def to_numpy(t: torch.Tensor, dtype) -> np.ndarray:
    """Round/cast a torch result to kiln dtype `dtype` (in torch) and return it as NumPy."""
    dt = as_dtype(dtype)
    t = t.detach().to(TORCH_DTYPES[dt.name])
    if dt.name == "bfloat16":
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


# ---- running one op through kiln ----------------------------------------------------

def single_op_graph(op: str, inputs: Sequence, attrs: dict):
    """Graph with one input per array (a list for variadic inputs, None for absent optionals)."""
    g = kiln.Graph(f"single_{op}")
    args = []
    for i, x in enumerate(inputs):
        if x is None:
            args.append(None)
        elif isinstance(x, (list, tuple)):
            args.append([g.input(f"in{i}_{j}", np.shape(a), as_dtype(np.asarray(a).dtype))
                         for j, a in enumerate(x)])
        else:
            args.append(g.input(f"in{i}", np.shape(x), as_dtype(np.asarray(x).dtype)))
    out = g.op(op, *args, **attrs)
    outs = out if isinstance(out, tuple) else (out,)
    for j, o in enumerate(outs):
        g.output(f"out{j}", o)
    return g, len(outs), isinstance(out, tuple)


def run_op(op: str, inputs: Sequence, **attrs):
    """Run a single-op graph through kiln.compile(...).run(...); a tuple for multi-output ops."""
    g, n, multi = single_op_graph(op, inputs, attrs)
    feeds = {}
    for i, x in enumerate(inputs):
        if isinstance(x, (list, tuple)):
            feeds.update({f"in{i}_{j}": a for j, a in enumerate(x)})
        elif x is not None:
            feeds[f"in{i}"] = x
    res = kiln.compile(g).run(**feeds)
    outs = tuple(res[f"out{j}"] for j in range(n))
    declared = [g.outputs[f"out{j}"].type for j in range(n)]
    for o, t in zip(outs, declared):
        assert o.shape == t.shape and o.dtype == t.dtype.np_dtype, \
            f"{op}: kernel returned {o.dtype}{list(o.shape)}, graph declares {t}"
    return outs if multi else outs[0]


# ---- comparison ---------------------------------------------------------------------

def assert_matches(got: np.ndarray, want: np.ndarray, dtype, rtol=None, atol=None, what=""):
    dt = as_dtype(dtype)
    assert got.dtype == dt.np_dtype, f"{what}: dtype {got.dtype}, expected {dt}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    if dt.is_float:
        r, a = TOLERANCES[dt.name]
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                   rtol=r if rtol is None else rtol, atol=a if atol is None else atol,
                                   err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


def check(op: str, inputs: Sequence, ref: Callable, out_dtype=None, rtol=None, atol=None, **attrs):
    """Run `op` in kiln and `ref` in torch on the same inputs; compare within the dtype's tolerance.

    `ref` receives torch tensors (half floats upcast to float32; lists for variadic inputs,
    None for absent ones) and returns a tensor or a tuple of tensors. `out_dtype` is the
    expected output dtype (default: the first array input's dtype).
    """
    got = run_op(op, inputs, **attrs)
    targs = [None if x is None else [to_torch(a) for a in x] if isinstance(x, (list, tuple)) else to_torch(x)
             for x in inputs]
    with torch.no_grad():
        want = ref(*targs)
    if out_dtype is None:
        first = next(x for x in inputs if x is not None)
        out_dtype = np.asarray(first[0] if isinstance(first, (list, tuple)) else first).dtype
    gots = got if isinstance(got, tuple) else (got,)
    wants = want if isinstance(want, tuple) else (want,)
    assert len(gots) == len(wants), f"{op}: {len(gots)} outputs, reference has {len(wants)}"
    for i, (g_, w_) in enumerate(zip(gots, wants)):
        assert_matches(g_, to_numpy(w_, out_dtype), out_dtype, rtol, atol,
                       what=f"{op} output {i} with attrs {attrs}")
    return got
