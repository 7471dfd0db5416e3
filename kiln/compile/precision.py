"""Precision policy: what dtype each step computes and accumulates in.

float32 and float64 graphs compute in their own dtype. bfloat16/float16 graphs store
tensors in the half type but compute in float32: matmuls and attention accumulate in
float32, norms, softmax and reductions run entirely in float32, and pointwise chains
compute in float32 and round once when the result is stored. Backends read
`Step.compute_dtype` / `Step.accumulate_dtype`; the NumPy reference kernels implement
exactly this (they upcast half inputs and round at the end).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.ir import get_op

HALF = ("float16", "bfloat16")
WIDE = ("matmul", "reduction", "norm", "attention")  # categories that accumulate across elements


@dataclass(frozen=True)
class Precision:
    compute_dtype: str | None     # dtype the arithmetic runs in; None for pure data movement
    accumulate_dtype: str | None  # dtype sums/dot products accumulate in; None if the op does not reduce


def step_precision(op: str, in_dtypes: list[str], out_dtypes: list[str]) -> Precision:
    try:
        cat = get_op(op).category
    except KeyError:
        cat = "other"
    floats = [d for d in list(in_dtypes) + list(out_dtypes) if d in HALF + ("float32", "float64")]
    if cat in ("layout", "gather") or not floats:
        return Precision(None, None)
    if any(d in HALF for d in floats):
        compute = "float32"
    else:
        compute = "float64" if "float64" in floats else "float32"
    return Precision(compute, compute if cat in WIDE else None)
