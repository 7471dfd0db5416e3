"""Attention backward on one GPU: kiln's flash backward kernels against torch's
scaled_dot_product_attention backward (flash backend) and kiln's torch fallback.

At SmolLM2-135M's training shape by default (B=8, Hq=9, Hk=3, S=512, D=64, bfloat16, causal), with
the training graph's padding mask (bool [B, 1, 1, S], all True here; `--mask none` drops it). torch's
flash backend takes no mask, and an all-True one changes nothing, so sdpa runs with is_causal alone.
Every peer gets the same q, k, v, dout; kiln's kernels take out and lse from kiln's forward kernel.
`--sweep` times the backward for a grid of block sizes (`BackwardBlocks`), the dK/dV launch's
and the dQ launch's each varied with the other at its default.

    python bench/attention_backward.py
    python bench/attention_backward.py --batch 2 --seq 2048 --sweep
"""

from __future__ import annotations

import argparse

import timing


def _inputs(torch, args):
    g = torch.Generator(device="cuda").manual_seed(0)
    dt = getattr(torch, args.dtype)

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", generator=g).to(dt)

    B, Hq, Hk, S, D = args.batch, args.heads, args.kv_heads, args.seq, args.head_dim
    return rnd(B, Hq, S, D), rnd(B, Hk, S, D), rnd(B, Hk, S, D), rnd(B, Hq, S, D)


def kiln_backward(torch, args, q, k, v, dout, blocks=None):
    """A callable running kiln's three backward kernels into preallocated dq, dk, dv, and them."""
    from kiln.backends.triton.kernels.attention import Attention
    from kiln.backends.triton.kernels.attention_backward import AttentionBackward
    B, Hq, S, _ = q.shape
    mask = torch.ones(B, 1, 1, S, dtype=torch.bool, device="cuda") if args.mask == "padding" else None
    kind = "bool" if mask is not None else "none"
    out, lse = torch.empty_like(q), torch.empty(B, Hq, S, device="cuda")
    Attention(q.shape, k.shape, v.shape, q.dtype, causal=True, write_lse=True, mask_kind=kind)(q, k, v, mask, out, lse)
    kern = AttentionBackward(q.shape, k.shape, v.shape, q.dtype, causal=True, mask_kind=kind,
                             mask_per_key=mask is not None, blocks=blocks)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    scratch = [torch.empty(shape, dtype=dt, device="cuda") for shape, dt in kern.scratch()]
    return (lambda: kern(q, k, v, mask, out, lse, dout, None, dq, dk, dv, scratch)), (dq, dk, dv), kern.blocks


def sdpa_backward(torch, q, k, v, dout):
    """torch's flash backward of causal GQA attention (heads repeated if its flash kernel takes no GQA;
    float32, which the flash backend does not take, on the memory-efficient backend)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    g = q.shape[1] // k.shape[1]
    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    half = q.dtype in (torch.bfloat16, torch.float16)
    backend = SDPBackend.FLASH_ATTENTION if half else SDPBackend.EFFICIENT_ATTENTION
    with sdpa_kernel(backend):
        try:
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)
            note = "enable_gqa"
        except RuntimeError:
            kk = k.repeat_interleave(g, 1).detach().requires_grad_()
            vv = v.repeat_interleave(g, 1).detach().requires_grad_()
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
            note = "heads repeated"
    note += "" if half else ", memory-efficient backend"

    def run():
        return torch.autograd.grad(out, (qq, kk, vv), dout, retain_graph=True)
    return run, note


def fallback_backward(torch, q, k, v, dout):
    """kiln's torch fallback (what attention_backward ran as before the flash kernels)."""
    from kiln.backends.triton.fallback import _attention, _attention_backward
    out, lse = _attention(q, k, v, causal=True, lse=True)
    return lambda: _attention_backward(q, k, v, None, out, lse, dout, causal=True)


def time_ms(torch, fn, reps):
    fn()
    torch.cuda.synchronize()
    return timing.median(timing.cuda_ms(torch, fn, reps))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--mask", default="padding", choices=["padding", "none"],
                    help="kiln's kernels with the training graph's [B, 1, 1, S] bool mask, or none")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--sweep", action="store_true", help="time a grid of block sizes")
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("bench/attention_backward.py needs a CUDA GPU")
    q, k, v, dout = _inputs(torch, args)
    B, Hq, S, D = q.shape
    flops = 5 * 2 * B * Hq * S * S * D / 2          # five [S, S] products, half of them causal-skipped
    run, grads, blocks = kiln_backward(torch, args, q, k, v, dout)
    sdpa, note = sdpa_backward(torch, q, k, v, dout)
    rows = [("kiln flash backward", time_ms(torch, run, args.reps), str(blocks)),
            ("torch sdpa backward", time_ms(torch, sdpa, args.reps), note),
            ("kiln torch fallback", time_ms(torch, fallback_backward(torch, q, k, v, dout), max(5, args.reps // 5)),
             "float32 probabilities")]
    ref = sdpa()
    g = Hq // k.shape[1]
    ref = [ref[0]] + [r if r.shape == k.shape else r.float().reshape(B, k.shape[1], g, S, D).sum(2) for r in ref[1:]]
    errs = ", ".join(f"{n} {((a.float() - b.float()).abs().max() / b.float().abs().max()).item():.2e}"
                     for n, a, b in zip(("dq", "dk", "dv"), grads, ref))
    timing.log(f"attention backward B={B} Hq={Hq} Hk={k.shape[1]} S={S} D={D} {args.dtype} causal, mask {args.mask} "
               f"(kiln vs sdpa, max error / max: {errs})")
    timing.log(f"  {'':<28} {'ms':>8} {'TFLOP/s':>8}  note")
    for name, ms, note in rows:
        timing.log(f"  {name:<28} {ms:8.3f} {flops / ms / 1e9:8.1f}  {note}")
    if args.sweep:
        sweep(torch, args, q, k, v, dout, blocks, flops)
    return 0


def sweep(torch, args, q, k, v, dout, default, flops) -> None:
    from dataclasses import replace
    kv = [(64, 64, 4), (64, 32, 4), (64, 64, 8), (128, 32, 4), (128, 32, 8), (128, 64, 8), (32, 32, 4)]
    qs = [(64, 64, 4), (64, 32, 4), (128, 32, 4), (128, 32, 8), (128, 64, 8), (32, 64, 4)]
    configs = [replace(default, kv_n=n, kv_m=m, kv_warps=w, num_stages=st) for n, m, w in kv for st in (2, 3)]
    configs += [replace(default, q_m=m, q_n=n, q_warps=w, num_stages=st) for m, n, w in qs for st in (2, 3)]
    timing.log("sweep (kv: keys per dK/dV program, query rows per step, warps; q: the dQ launch's)")
    timing.log(f"  {'kv_n kv_m kv_w':>15} {'q_m q_n q_w':>12} {'stages':>6} {'ms':>8} {'TFLOP/s':>8}")
    for bl in dict.fromkeys(configs):
        try:
            ms = f"{time_ms(torch, kiln_backward(torch, args, q, k, v, dout, bl)[0], args.reps):8.3f}"
            tf = f"{flops / float(ms) / 1e9:8.1f}"
        except Exception as e:   # a config that does not compile (shared memory) is a row, not the end
            ms, tf = f"{type(e).__name__:>8}", ""
        timing.log(f"  {bl.kv_n:>4} {bl.kv_m:>4} {bl.kv_warps:>4} {bl.q_m:>5} {bl.q_n:>3} {bl.q_warps:>3} "
                   f"{bl.num_stages:>6} {ms} {tf}")


if __name__ == "__main__":
    raise SystemExit(main())
