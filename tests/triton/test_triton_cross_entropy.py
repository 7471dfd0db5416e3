"""The chunked softmax cross-entropy kernels (kernels/cross_entropy.py) against torch, and lowered in
graphs (strided logits rows, broadcast cotangents, sliced labels) against the NumPy backend.

Without a GPU they run in Triton's interpreter at tiny vocabularies with chunks smaller than V;
the `gpu` test runs an LM's real shape (4088 rows of a 49152 vocabulary, bfloat16)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from helpers import check, randn
from kiln.autodiff import grad, grad_name
from kiln.backends.triton.kernels import cross_entropy as xent_k
from kiln.ir import Graph
from kiln.train import cross_entropy

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _labels(gen, rows, v, ignore_index, frac=0.25):
    y = torch.randint(0, v, (rows,), generator=gen)
    y[torch.rand(rows, generator=gen) < frac] = ignore_index
    y[0] = ignore_index
    return y


def _torch_reference(x, y, dloss, dlse, ignore_index, smoothing):
    """(loss, lse, dx) from torch in float32 (autograd for dx), dx rounded once to x's dtype."""
    xf = x.float().detach().requires_grad_(True)
    loss = F.cross_entropy(xf, y, ignore_index=ignore_index, label_smoothing=smoothing, reduction="none")
    lse = torch.logsumexp(xf, -1)
    total = (loss * dloss).sum() + ((lse * dlse).sum() if dlse is not None else 0)
    (dx,) = torch.autograd.grad(total, [xf])
    return loss.detach(), lse.detach(), dx.to(x.dtype)


def _run_kernels(x, y, dloss, dlse, ignore_index, smoothing, block=None):
    layout = xent_k.row_layout(x)
    kw = dict(ignore_index=ignore_index, label_smoothing=smoothing, block=block)
    loss = torch.empty(y.shape, dtype=torch.float32, device=x.device)
    lse = torch.empty_like(loss)
    xent_k.SoftmaxCrossEntropy(x, layout, y, **kw)(x, y, loss, lse)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    xent_k.SoftmaxCrossEntropyBackward(x, layout, y, lse, dloss, dlse, **kw)(x, y, lse, dloss, dlse, dx)
    return loss, lse, dx


def _assert_dx_close(dx, want, dtype):
    # bfloat16: one rounding of nearly the same float32 value may land one ulp apart
    rtol, atol = (1e-5, 1e-7) if dtype == "float32" else (2 ** -7, 1e-6)
    torch.testing.assert_close(dx.float(), want.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("v,block,smoothing,with_dlse", [
    (37, 16, 0.0, False),      # three chunks, the last one partial
    (300, 128, 0.1, True),
    (300, 512, 0.0, True),     # one chunk wider than the row
])
def test_kernels_match_torch(v, block, smoothing, with_dlse, dtype):
    gen = torch.Generator().manual_seed(v + block)
    rows, ignore = 9, -100 if smoothing else 3
    x = (torch.randn(rows, v, generator=gen) * 4).to(TORCH[dtype]).to(DEVICE)
    y = _labels(gen, rows, v, ignore).to(DEVICE)
    dloss = torch.randn(rows, generator=gen).to(DEVICE)
    dlse = torch.randn(rows, generator=gen).to(DEVICE) if with_dlse else None
    loss, lse, dx = _run_kernels(x, y, dloss, dlse, ignore, smoothing, block)
    want_loss, want_lse, want_dx = _torch_reference(x, y, dloss, dlse, ignore, smoothing)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    assert dx.dtype == x.dtype
    _assert_dx_close(dx, want_dx, dtype)
    ignored = y == ignore
    assert not loss[ignored].any()
    if not with_dlse:
        assert not dx[ignored].float().any()


def test_out_of_range_labels_give_nan_rows():
    """The documented GPU behaviour (NumPy raises): NaN loss and gradient for that row only."""
    x = torch.randn(4, 37).to(DEVICE)
    y = torch.tensor([1, 37, -100, -5]).to(DEVICE)
    loss, lse, dx = _run_kernels(x, y, torch.ones(4, device=DEVICE), None, -100, 0.0, block=16)
    assert loss[1].isnan() and loss[3].isnan() and not loss[[0, 2]].isnan().any()
    assert dx[[1, 3]].isnan().all() and not dx[[0, 2]].isnan().any()
    torch.testing.assert_close(lse, torch.logsumexp(x, -1))


def test_row_layout_reads_sliced_rows_in_place():
    x = torch.empty(2, 6, 37, device="meta")
    assert xent_k.row_layout(x[:, :5]) == (5, 6 * 37, 37)
    assert xent_k.row_layout(x.reshape(12, 37)) == (12, 0, 37)
    assert xent_k.row_layout(x.transpose(0, 1)[:, :, :]) == (2, 37, 6 * 37)
    assert xent_k.row_layout(x[..., ::2]) is None                   # strided columns
    assert xent_k.row_layout(x.reshape(2, 3, 2, 37)[:, :, :1]) == (6, 0, 74)   # collapses to one level
    assert xent_k.row_layout(torch.empty(2, 3, 4, 37, device="meta")[:, :2, :3]) is None   # three levels


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_lowered_loss_and_gradient_match_numpy(rng, dtype):
    """An LM's loss: logits [B, S, V] sliced to the next-token rows (read in place), labels sliced
    from the ids, the mean's broadcast cotangent; forward and backward both run the kernels."""
    b, s, v = 2, 6, 300
    g = Graph()
    h = g.input("h", (b, s, v), dtype)
    ids = g.input("ids", (b, s), "int64")
    logits = g.slice(h, axes=[1], starts=[0], ends=[s - 1])
    labels = g.slice(ids, axes=[1], starts=[1], ends=[s])
    loss, lse = g.softmax_cross_entropy(logits, labels, ignore_index=7, label_smoothing=0.05)
    valid = g.cast(g.not_equal(labels, g.scalar(7, "int64")), dtype=loss.dtype.name)
    g.output("loss", g.div(g.sum(loss), g.sum(valid)))
    g.output("lse", lse)
    gg = grad(g, ["h"])
    id_arr = rng.integers(0, v, (b, s))
    id_arr[0, 2] = id_arr[1, 4] = 7
    ex = check(gg, {"h": randn(rng, (b, s, v), dtype, 4.0), "ids": id_arr})
    labels_of = {l.label for l in ex.program.launches}
    assert {"softmax_cross_entropy", "softmax_cross_entropy_backward"} <= labels_of
    assert not any("cross_entropy" in k for k in ex.stats()["fallbacks"])
    # the logits rows were read in place: the only copy is the labels' (a strided [B, S-1] int view)
    assert [l for l in ex.program.launches if l.label == "contiguous"] == \
        [l for l in ex.program.launches if l.label == "contiguous" and l.args[0][0].meta.dtype == torch.int64]


@pytest.mark.gpu
def test_lm_shape_bfloat16_matches_torch_on_gpu():
    """N = 8 x 511 rows of a 49152 vocabulary in bfloat16, the default chunking, against torch."""
    gen = torch.Generator().manual_seed(0)
    n, v = 8 * 511, 49152
    x = (torch.randn(n, v, generator=gen) * 3).to(torch.bfloat16).cuda()
    y = _labels(gen, n, v, -100, frac=0.05).cuda()
    dloss = torch.full((n,), 1.0 / n).cuda()        # the mean's cotangent, as a training step has it
    loss, lse, dx = _run_kernels(x, y, dloss.expand(n), None, -100, 0.0)
    want_loss, want_lse, want_dx = _torch_reference(x, y, dloss, None, -100, 0.0)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-4)
    assert dx.dtype == torch.bfloat16
    _assert_dx_close(dx, want_dx, "bfloat16")


@pytest.mark.gpu
def test_lm_loss_step_on_gpu_writes_the_bfloat16_gradient():
    """The benchmark's loss: bfloat16 logits [8, 512, 49152] cast to float32 and sliced to the
    next-token rows; compiled for cuda, the gradient graph holds no float32 [..., V] tensor, and
    loss and gradient equal torch's (float32 autograd rounded to bfloat16)."""
    b, s, v = 8, 512, 49152
    g = Graph()
    h = g.input("h", (b, s, v), "bfloat16")
    logits = g.slice(g.cast(h, dtype="float32"), axes=[1], starts=[0], ends=[s - 1])
    g.output("loss", cross_entropy(g, logits, g.input("labels", (b, s - 1), "int64")))
    cg = kiln.compile(grad(g, ["h"]), device="cuda")
    wide = [t for t in cg.plan.types.values() if t.shape and t.shape[-1] == v and t.dtype.name == "float32"]
    assert not wide, wide
    gen = torch.Generator().manual_seed(1)
    ht = (torch.randn(b, s, v, generator=gen) * 3).to(torch.bfloat16)
    labels = torch.randint(0, v, (b, s - 1), generator=gen)
    labels[:, -7:] = -100
    out = cg.run(h=ht.view(torch.int16).numpy().view(kiln.as_dtype("bfloat16").np_dtype), labels=labels.numpy())
    hf = ht.cuda().float().requires_grad_(True)
    want = F.cross_entropy(hf[:, :-1].reshape(-1, v), labels.cuda().reshape(-1))
    (want_dh,) = torch.autograd.grad(want, [hf])
    np.testing.assert_allclose(out["loss"], want.item(), rtol=1e-5)
    got_dh = torch.from_numpy(out[grad_name("h")].view(np.int16)).view(torch.bfloat16).cuda()
    _assert_dx_close(got_dh, want_dh.to(torch.bfloat16), "bfloat16")
