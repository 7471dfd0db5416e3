"""Checkpoint key tables: renames with layer fields, load-time fusion (with zero parts and per-layer
repetition), transposes, fallbacks, layout detection with a prefix, tied copies, and the errors."""

import warnings

import numpy as np
import pytest

from kiln.io.errors import CheckpointError
from kiln.io.weight_map import WeightMap
from kiln.nn import MLP, Attention, Concat, KeyTable, Layout, Linear, Module, OrMake, RMSNorm, Transposed, Zeros


class Tiny(Module):
    def __init__(self, layers=2):
        super().__init__()
        self.layers = [Attention(f"blocks.{i}.attn", 4, 2, qkv_bias=True) for i in range(layers)]
        self.mlps = [MLP(f"blocks.{i}.mlp", 4, 3, "silu", gated=True) for i in range(layers)]
        self.norm = RMSNorm("norm", 4)
        self.head = Linear("head", 4, 5)
        self.kv = Linear("kv_all", 4, 2 * 4 * layers, bias=True, parts=(4,) * (2 * layers))


TABLE = KeyTable("tiny", Layout("hf", "final_norm.weight", strip=("model.",), keys={
    "blocks.{i}.attn.qkv_proj.weight": Concat(*(f"h.{{i}}.{p}.weight" for p in "qkv")),
    "blocks.{i}.attn.qkv_proj.bias": Concat("h.{i}.q.bias", Zeros(), "h.{i}.v.bias"),
    "blocks.{i}.mlp.gate_up_proj.weight": Concat("h.{i}.gate.weight", "h.{i}.up.weight"),
    "blocks.{i}.{name}": "h.{i}.{name}",
    "norm.weight": OrMake("final_norm.weight", lambda shape: np.ones(shape)),
    "head.weight": Transposed("head_t"),
    "kv_all.weight": Concat("h.{j}.ck.weight", "h.{j}.cv.weight", each="j"),
    "kv_all.bias": Concat(Zeros(), "h.{j}.cv.bias", each="j"),
}, ignore=("*.inv_freq",), tied={"copy_of_head": "head.weight"}))


def _checkpoint(rng, layers=2):
    ck = {"final_norm.weight": rng.standard_normal(4), "head_t": rng.standard_normal((4, 5)),
          "rotary.inv_freq": np.ones(2)}
    for i in range(layers):
        ck |= {f"h.{i}.{p}.weight": rng.standard_normal((4, 4)) for p in ("q", "k", "v", "attn.o_proj", "ck", "cv")}
        ck |= {f"h.{i}.{p}.bias": rng.standard_normal(4) for p in ("q", "v", "cv")}
        ck |= {f"h.{i}.{p}.weight": rng.standard_normal((3, 4)) for p in ("gate", "up")}
        ck[f"h.{i}.mlp.down_proj.weight"] = rng.standard_normal((4, 3))
    return {k: v.astype(np.float32) for k, v in ck.items()}


def test_table_fuses_renames_transposes_and_uses_every_tensor(rng):
    ck = _checkpoint(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = TABLE.load(WeightMap({"model." + k: v for k, v in ck.items()}, "ck"), Tiny().params())
    np.testing.assert_array_equal(out["blocks.1.attn.qkv_proj.weight"],
                                  np.concatenate([ck[f"h.1.{p}.weight"] for p in "qkv"]))
    np.testing.assert_array_equal(out["blocks.0.attn.qkv_proj.bias"],
                                  np.concatenate([ck["h.0.q.bias"], np.zeros(4), ck["h.0.v.bias"]]))
    np.testing.assert_array_equal(out["head.weight"], ck["head_t"].T)
    np.testing.assert_array_equal(out["kv_all.weight"], np.concatenate(
        [ck[f"h.{j}.{p}.weight"] for j in range(2) for p in ("ck", "cv")]))
    np.testing.assert_array_equal(out["kv_all.bias"][12:], ck["h.1.cv.bias"])
    assert not out["kv_all.bias"][8:12].any()
    np.testing.assert_array_equal(out["blocks.0.mlp.down_proj.weight"], ck["h.0.mlp.down_proj.weight"])


def test_missing_tensors_fall_back_or_are_named(rng):
    ck = _checkpoint(rng)
    del ck["final_norm.weight"]
    ck["other.weight"] = np.zeros(4, np.float32)  # a marker must identify the layout
    with pytest.raises(CheckpointError, match=r"not a tiny checkpoint: expected 'model.final_norm.weight' \(hf\)"):
        TABLE.detect(WeightMap(ck, "ck"))
    ck = _checkpoint(rng)
    table = KeyTable("tiny", Layout("hf", "head_t", keys={**TABLE.layouts[0].keys}, ignore=("*.inv_freq",)))
    del ck["final_norm.weight"]
    assert (table.load(WeightMap(ck, "ck"), Tiny().params())["norm.weight"] == 1).all()
    del ck["h.1.k.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensor 'h\.1\.k\.weight'"):
        table.load(WeightMap(ck, "ck"), Tiny().params())


def test_a_wrong_part_shape_names_the_part(rng):
    ck = _checkpoint(rng)
    ck["h.0.up.weight"] = ck["h.0.up.weight"][:2].copy()
    with pytest.raises(CheckpointError, match=r"'h\.0\.up\.weight' has shape \(2, 4\), expected \(3, 4\)"):
        TABLE.load(WeightMap(ck, "ck"), Tiny().params())


def test_a_parameter_without_an_entry_is_named(rng):
    spec = {**Tiny().params(), **RMSNorm("blocks.0.attn.q_norm", 2).params()}
    table = KeyTable("tiny", Layout("hf", "final_norm.weight",
                                    keys={k: v for k, v in TABLE.layouts[0].keys.items() if "{name}" not in k}))
    with pytest.raises(CheckpointError, match=r"has no tensor for parameter 'blocks\.0\.attn\.o_proj\.weight'"):
        table.load(WeightMap(_checkpoint(rng), "ck"), spec)


def test_unused_tensors_warn_and_tied_copies_are_checked(rng):
    ck = _checkpoint(rng)
    ck["h.0.extra"] = np.zeros(1, np.float32)
    with pytest.warns(UserWarning, match=r"1 checkpoint tensors were not used: h\.0\.extra"):
        TABLE.load(WeightMap(ck, "ck"), Tiny().params())
    ck = _checkpoint(rng)
    ck["copy_of_head"] = ck["head_t"].T.copy()
    TABLE.load(WeightMap(ck, "ck"), Tiny().params())
    ck["copy_of_head"][0, 0] += 1
    with pytest.raises(CheckpointError, match="'copy_of_head' is a stored copy of the tied 'head.weight' but differs"):
        TABLE.load(WeightMap(ck, "ck"), Tiny().params())


def test_layers_order_and_limit_the_per_layer_parameters(rng):
    ck = _checkpoint(rng, layers=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # layer 0 is left out on purpose
        out = TABLE.load(WeightMap(ck, "ck"), Tiny(3).params(), layers=[2, 1])
    assert not any(k.startswith("blocks.0.") for k in out) and "blocks.2.attn.qkv_proj.weight" in out
    assert list(out)[-1].startswith("blocks.1.")


def test_a_fallback_of_the_wrong_shape_is_an_error(rng):
    ck = _checkpoint(rng)
    del ck["final_norm.weight"]
    keys = {**TABLE.layouts[0].keys, "norm.weight": OrMake("final_norm.weight", lambda shape: np.ones(3))}
    table = KeyTable("tiny", Layout("hf", "head_t", keys=keys, ignore=("*.inv_freq",)))
    with pytest.raises(CheckpointError, match=r"'final_norm.weight' is missing and its fallback made shape \(3,\), "
                                              r"expected \(4,\)"):
        table.load(WeightMap(ck, "ck"), Tiny().params())


def test_a_fusion_must_match_the_declared_parts(rng):
    ck = _checkpoint(rng)
    keys = {**TABLE.layouts[0].keys, "blocks.{i}.mlp.gate_up_proj.weight": Concat("h.{i}.gate.weight")}
    table = KeyTable("tiny", Layout("hf", "head_t", keys=keys))
    with pytest.raises(CheckpointError, match=r"has 1 tensors for a parameter of 2 parts \(3, 3\)"):
        table.load(WeightMap(ck, "ck"), Tiny().params())
    keys = {**TABLE.layouts[0].keys, "head.weight": Concat("head_t")}
    with pytest.raises(CheckpointError, match=r"fuses tensors into a parameter of shape \(5, 4\) that declares no parts"):
        KeyTable("tiny", Layout("hf", "head_t", keys=keys)).load(WeightMap(ck, "ck"), Tiny().params())
