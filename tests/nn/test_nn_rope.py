"""RoPE tables (default, linear, llama3 inverse frequencies; HF config parsing) and rotation in the half and
interleaved layouts, with partial rotary dims, against torch references (HF's rotate_half, Meta's complex pairs)."""

import numpy as np
import pytest
import torch

from kiln.io.errors import ConfigError
from kiln.ir import Graph
from kiln.nn import Rope, RopeConfig
from nn_helpers import close, run, t

transformers = pytest.importorskip("transformers")


def test_default_and_linear_inv_freq_match_the_closed_form():
    ref = 1.0 / (500.0 ** (torch.arange(0, 12, 2, dtype=torch.int64).float() / 12))
    close(RopeConfig(theta=500.0).inv_freq(12), ref.numpy(), 1e-6)
    close(RopeConfig(theta=500.0, partial_rotary_factor=0.75).inv_freq(16), ref.numpy(), 1e-6)
    close(RopeConfig(theta=500.0, type="linear", factor=4.0, partial_rotary_factor=0.75).inv_freq(16),
          ref.numpy() / 4, 1e-6)


def test_llama3_inv_freq_matches_hf():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    hf_cfg = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, rope_theta=10000.0,
                                      rope_scaling=scaling)
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    ours = RopeConfig.from_hf({"rope_scaling": scaling, "rope_theta": 10000.0})
    assert ours.type == "llama3" and ours.original_max_position_embeddings == 64
    close(ours.inv_freq(64), ref.numpy(), 1e-6)


def test_hf_rope_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="rope type 'yarn' is not supported"):
        RopeConfig.from_hf({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(ConfigError, match="rope type 'linear' needs a 'factor'"):
        RopeConfig.from_hf({"rope_scaling": {"type": "linear"}})
    with pytest.raises(ConfigError, match=r"needs \['high_freq_factor'\]"):
        RopeConfig.from_hf({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}})


def _rotate(x, pos, inv_freq, layout):
    """HF's apply_rotary_pos_emb (half) or Meta's complex multiplication (interleaved) on the first rot dims."""
    rot = 2 * inv_freq.shape[0]
    ang = pos[:, None, :, None].float() * inv_freq          # [B, 1, S, rot/2]
    xr, rest = x[..., :rot], x[..., rot:]
    if layout == "half":
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        x1, x2 = xr[..., :rot // 2], xr[..., rot // 2:]
        out = xr * cos + torch.cat([-x2, x1], -1) * sin
    else:
        z = torch.view_as_complex(xr.reshape(*xr.shape[:-1], rot // 2, 2).contiguous())
        out = torch.view_as_real(z * torch.polar(torch.ones_like(ang), ang)).flatten(-2)
    return torch.cat([out, rest], -1)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_rope_rotation_matches_torch(layout, partial, rng):
    cfg = RopeConfig(theta=100.0, partial_rotary_factor=partial)
    rope = Rope(cfg, 8, layout)
    x = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
    pos = rng.permutation(40)[:10].reshape(2, 5)
    g = Graph()
    g.output("y", rope(g, g.input("x", x.shape), rope.tables(g, g.input("pos", pos.shape, "int64"))))
    want = _rotate(t(x), t(pos), torch.from_numpy(cfg.inv_freq(8)), layout)
    close(run(g, {}, x=x, pos=pos)["y"], want, 1e-5)


def test_rope_rejects_an_unknown_layout():
    with pytest.raises(ValueError, match="rope layout must be one of"):
        Rope(RopeConfig(), 8, "gptj")
