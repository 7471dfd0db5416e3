"""The GPU backend: Plans run as generated Triton kernels over one arena, replayed as a CUDA graph.

Kernels per archetype (`kernels/`):

| archetype | ops | kernel |
|---|---|---|
| pointwise | every elementwise op, cast, where, clamp, swiglu/geglu; chains of them (several outputs); the Plan's multi-tensor kernels | one generated kernel per fused expression; one launch over pointer tables for a multi-tensor kernel (`pointwise.py`) |
| reduction | softmax, log_softmax (last axis); rms_norm, layer_norm; sum/mean/max/min/argmax over consecutive axes | `reduction.py` (rows split over a second launch when too few programs fill the GPU) |
| reduction | softmax_cross_entropy and its backward (any leading dims; logits rows read in place through two row strides; a label outside [0, V) other than ignore_index gives NaN for that row) | one program per row over vocabulary chunks (`cross_entropy.py`) |
| matmul | matmul (one collapsible batch dim), linear, fused_linear; + norm prologue, bias / activation / gated / residual / cast epilogue | Triton GEMM for M < 128, cuBLAS + generated epilogue above (`matmul.py`) |
| attention | attention, attention_lse (causal, window, GQA, softcap, bool/additive mask); attention_backward (the same, head dim <= 128, without mask_grad) | flash forward, split-KV decode merged by its last split, which takes in the Plan's rope_qkv_cache_attention prologue for one token per row (`attention.py`); flash backward: delta, dK/dV per key block over the GQA group, dQ per query block (`attention_backward.py`) |
| layout | reshape/transpose/slice/split/broadcast_to as views; concat, repeat_interleave, copies; rope; embedding; cache_write (rows only when the Plan updates the state in place); the prologue of the Plan's rope_qkv_cache_attention kernel beyond one token per row | `layout.py`, pointwise copies |

Fallbacks (never a silent approximation: these compute the reference semantics):

| ops | runs as |
|---|---|
| softmax/log_softmax over a non-last axis; max/min/argmax of integers; sum/mean/max/min over non-consecutive axes; group_norm; pad; gather; take_along_axis; one_hot; index_add; scatter_add; pixel_shuffle/unshuffle; slice with a negative step; attention with a value head dim unlike q's; attention_backward with mask_grad (the scores' gradient), a value head dim unlike q's or a head dim above 128; conv1-3d; conv_transpose1-3d; matmul whose batch dims do not collapse to two | torch on the GPU (`fallback.py`; captured in the CUDA graph) |
| everything else (pools, interpolate, interpolate_backward, ...) | the NumPy reference kernel on the host (device round trip; the plan then runs without a CUDA graph) |

`TritonExecutor(plan)` launches one kernel per `plan.kernels` entry over `plan.memory`; it has
the NumPy executor's `run(inputs, params)` and state interface (states are device tensors)
plus `params_changed` and `stats()`.
Tests run the same kernels on the CPU under `TRITON_INTERPRET=1`.

On sm_90+ the decode-step kernels (GEMV, decode attention, rope + KV-cache write) launch early
(programmatic dependent launch, `device.programmatic_launch`; KILN_PDL=0 turns it off): each lets the
next launch at its entry and waits (`gdc_wait`) before touching what earlier kernels write; a GEMV
first loads its weight's first chunk, which no kernel of the run writes.
"""

from .executor import TritonExecutor

__all__ = ["TritonExecutor"]
