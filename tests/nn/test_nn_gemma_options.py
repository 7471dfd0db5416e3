"""The kiln.nn options Gemma needs, against torch: a block's output norms ("sandwich"), an Embedding
scale in the table's dtype, and tanh softcapping."""

import numpy as np
import pytest
import torch

from kiln.ir import Graph, as_dtype
from kiln.nn import MLP, Embedding, RMSNorm, TransformerBlock, softcap
from nn_helpers import close, init_params, run, t
from torch_ref import act, rms


class _Scale:
    """A stand-in sublayer for the block test: y = 2x (its norms are what is under test)."""

    dtype = "float32"

    def __call__(self, g, x, **kw):
        return x * g.scalar(2.0)

    def params(self):
        return {}


def test_block_output_norms_normalize_each_sublayer_before_the_residual(rng):
    dim = 6
    norms = [RMSNorm(f"n{i}", dim, 1e-6, add_unit_offset=True) for i in range(4)]
    mlp = MLP("mlp", dim, 8, "gelu_tanh", gated=True)
    block = TransformerBlock(norms[0], _Scale(), norms[1], mlp, attn_out_norm=norms[2], mlp_out_norm=norms[3])
    p = {}
    for m in (*norms, mlp):
        p.update(init_params(m, rng))
    x = rng.standard_normal((1, 3, dim)).astype(np.float32)
    g = Graph()
    g.output("y", block(g, g.input("x", x.shape)))

    def n(i, h):
        return rms(h, t(p[f"n{i}.weight"]), 1e-6, offset=True)

    h = t(x) + n(2, 2 * n(0, t(x)))
    gate, up = torch.split(torch.nn.functional.linear(n(1, h), t(p["mlp.gate_up_proj.weight"])), [8, 8], -1)
    want = h + n(3, torch.nn.functional.linear(act(gate, "gelu_tanh") * up, t(p["mlp.down_proj.weight"])))
    close(run(g, p, x=x)["y"], want)
    with pytest.raises(ValueError, match="pre-norm blocks only"):
        TransformerBlock(norms[0], _Scale(), norms[1], mlp, post_norm=True, attn_out_norm=norms[2])


def test_embedding_scale_is_rounded_to_the_table_dtype(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    ids = np.array([[3, 1, 7]], np.int64)
    for dtype in ("float32", "bfloat16"):
        emb = Embedding("e", 10, 4, scale=640 ** 0.5, dtype=dtype)
        g = Graph()
        g.output("y", g.cast(emb(g, g.input("ids", ids.shape, "int64")), dtype="float32"))
        tt = torch.from_numpy(table).to(getattr(torch, dtype))
        want = (tt[torch.from_numpy(ids)] * torch.tensor(640 ** 0.5).to(tt.dtype)).float()
        got = run(g, {"e.weight": table.astype(as_dtype(dtype).np_dtype)}, ids=ids)["y"]
        close(got, want, tol=1e-6)  # bfloat16: the same rounded product as torch


def test_softcap_bounds_values_smoothly(rng):
    x = (10 * rng.standard_normal((2, 5))).astype(np.float32)
    g = Graph()
    g.output("y", softcap(g, g.input("x", x.shape), 3.0))
    close(run(g, {}, x=x)["y"], 3.0 * torch.tanh(t(x) / 3.0))
    assert softcap(g, g.input("z", (2,)), None).shape == (2,)
