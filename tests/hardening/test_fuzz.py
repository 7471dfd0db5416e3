"""Property-based fuzzing of everything kiln reads from disk: safetensors headers and data, sharded
index files, config.json (through kiln.io.config and through kiln.load), graph JSON.

Each example either loads, and then the result is exactly what the file says (for safetensors: what
the `safetensors` library itself reads), or fails with a KilnError. Any other exception, or a run past
the time limit, fails the test. Examples are bounded and derandomized so the suite stays fast and
deterministic; set KILN_FUZZ_EXAMPLES=<n> (and KILN_FUZZ_RANDOM=1 for fresh randomness) to fuzz longer.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError, deserialize
from safetensors.numpy import save_file as library_save

import kiln
from hardening_limits import time_limit
from kiln.errors import CheckpointError, ConfigError, GraphError, KilnError
from kiln.io.config import config_bool, config_float, config_int, config_str, read_config
from kiln.io.safetensors_file import SAFETENSORS_DTYPES, load_checkpoint_dir, load_safetensors, save_safetensors
from kiln.ir import graph_from_dict, graph_to_dict

LIMIT_S = 20  # per example: far above any honest load of these tiny files


def fuzz_settings(examples: int):
    n = int(os.environ.get("KILN_FUZZ_EXAMPLES", examples))
    return settings(max_examples=n, deadline=None, database=None, derandomize=not os.environ.get("KILN_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# ---- JSON values and mutations of a JSON tree ------------------------------------------------

TAGS = sorted(SAFETENSORS_DTYPES) + ["F8_E8M0", "C64", "F4", "I4", "f32", ""]
scalars = (st.none() | st.booleans() | st.integers(-3, 40) | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6) | st.sampled_from(TAGS))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                           max_leaves=6)


def _paths(tree, prefix=()):
    """Every path (tuple of keys/indices) into a JSON tree, the root included."""
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, prefix + (i,))


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


@st.composite
def mutated(draw, tree, values=json_values):
    """`tree` with 1-3 random edits: replace a value, delete a key or element, add one, or swap two."""
    tree = json.loads(json.dumps(tree))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(tree))
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "delete", "add", "swap"]))
        if not path:
            if kind == "replace":
                return draw(values)
            continue
        parent, key = _get(tree, path[:-1]), path[-1]
        if kind == "replace":
            parent[key] = draw(values)
        elif kind == "delete":
            del parent[key]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=4) | st.sampled_from(list(parent)))] = draw(values)
        elif kind == "add":
            parent.insert(draw(st.integers(0, len(parent))), draw(values))
        else:
            other = draw(st.sampled_from(paths))
            try:
                a, b = _get(tree, path), _get(tree, other)
                _get(tree, other[:-1])[other[-1]] = a if other else None
                parent[key] = b
            except (KeyError, IndexError, TypeError):
                pass  # one path was inside the other: no swap
    return tree


@st.composite
def text_edits(draw, text: str):
    """Text-level damage: truncation, a replaced or inserted character, a duplicated key, junk appended."""
    kind = draw(st.sampled_from(["truncate", "char", "insert", "duplicate", "append"]))
    if kind == "truncate":
        return text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    if kind in ("char", "insert"):
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        c = draw(st.sampled_from(list('{}[]",:0-9 .eNaIfty\\\x00') + ["\u00e9", "\ud7ff"]))
        return text[:i] + c + text[i + (kind == "char"):]
    if kind == "duplicate":
        i = text.find('"', draw(st.integers(0, max(len(text) - 1, 0))))
        j = text.find('"', i + 1)
        k = text.find(",", j)
        return text if min(i, j, k) < 0 else text[:k] + "," + text[i:k] + text[k:]
    return text + draw(st.sampled_from(["x", "}", "\n", " " * 3, "[]"]))


def _dup_keys(text: str) -> bool:
    """True if some JSON object in `text` has a key twice (kiln refuses; the library lets the last win)."""
    found = []

    def hook(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            found.append(True)
        return dict(pairs)

    try:
        json.loads(text, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return False
    return bool(found)


# ---- safetensors: headers and data, compared with the library ----------------------------------

ARRAYS = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.array([1, -2, 3], np.int64),
    "c": np.array([[True, False]]),
    "d": np.arange(4, dtype=np.float16),
    "e": np.zeros((0, 3), np.float32),
    "h": np.array([1.5, -2.25], ml_dtypes.bfloat16),
}


@pytest.fixture(scope="module")
def valid_blob(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("st") / "base.safetensors"
    save_safetensors(path, ARRAYS, {"format": "pt"})
    blob = path.read_bytes()
    assert set(_library(blob)) == set(load_safetensors(path)) == set(ARRAYS)  # the baseline agrees
    return blob


def _split(blob: bytes):
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header, data: bytes, pad: int = 0) -> bytes:
    raw = (json.dumps(header) if not isinstance(header, str) else header).encode("utf-8", "surrogatepass") + b" " * pad
    return struct.pack("<Q", len(raw)) + raw + data


@st.composite
def damaged_safetensors(draw, blob: bytes):
    header, data = _split(blob)
    kind = draw(st.sampled_from(["header-json", "header-text", "bytes", "truncate", "append", "length", "data-len"]))
    if kind == "header-json":
        return _join(draw(mutated(header)), data)
    if kind == "header-text":
        return _join(draw(text_edits(json.dumps(header))), data)
    if kind == "bytes":  # overwrite 1-4 bytes anywhere
        b = bytearray(blob)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if kind == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if kind == "append":
        return blob + draw(st.binary(min_size=1, max_size=16))
    if kind == "length":  # a wrong header length prefix
        (n,) = struct.unpack("<Q", blob[:8])
        new = draw(st.integers(0, n + 64) | st.integers(0, 2**64 - 1))
        return struct.pack("<Q", new) + blob[8:]
    # data buffer shifted: drop or insert bytes at a point in the data
    i = draw(st.integers(0, len(data)))
    extra = draw(st.binary(min_size=0, max_size=8))
    cut = draw(st.integers(0, 8))
    return _join(header, data[:i] + extra + data[i + cut:])


def _library(blob: bytes):
    """{name: (tag, shape, bytes)} as the safetensors library reads the file, or None if it refuses it."""
    try:
        return {name: (t["dtype"], list(t["shape"]), bytes(t["data"])) for name, t in deserialize(blob)}
    except SafetensorError:
        return None


def _allowed_divergence(blob: bytes, err: CheckpointError, ref) -> bool:
    """Where kiln is deliberately stricter than the library: dtypes kiln has no NumPy type for, NumPy's
    array-size limit, and duplicate keys (the library keeps the last; kiln refuses the ambiguity)."""
    msg = str(err)
    if "unknown dtype" in msg and any(tag not in SAFETENSORS_DTYPES for tag, _, _ in ref.values()):
        return True
    if "too large to represent" in msg:
        return True
    (n,) = struct.unpack("<Q", blob[:8])
    return "appears twice" in msg and _dup_keys(blob[8:8 + n].decode("utf-8", "replace"))


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_safetensors_matches_the_library(tmp_path, valid_blob, data):
    blob = data.draw(damaged_safetensors(valid_blob))
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    ref = _library(blob)
    with time_limit(LIMIT_S, "load_safetensors"):
        try:
            ours = load_safetensors(path)
        except CheckpointError as e:
            event("refused")
            assert ref is None or _allowed_divergence(blob, e, ref), f"kiln refuses a file the library reads: {e}"
            assert str(path) in str(e)
            return
    event("loaded")
    assert ref is not None, "kiln reads a file the safetensors library refuses"
    assert set(ours) == set(ref)
    tag_of = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    for name, arr in ours.items():
        tag, shape, raw = ref[name]
        assert (tag_of[arr.dtype], list(arr.shape), arr.tobytes()) == (tag, shape, raw), name


# ---- sharded index files -------------------------------------------------------------------

SHARDS = {"model-00001-of-00002.safetensors": {"a": ARRAYS["a"], "b": ARRAYS["b"]},
          "model-00002-of-00002.safetensors": {"c": ARRAYS["c"], "d": ARRAYS["d"]}}
INDEX = {"metadata": {"total_size": 64}, "weight_map": {k: shard for shard, ts in SHARDS.items() for k in ts}}


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sharded")
    for shard, tensors in SHARDS.items():
        library_save(tensors, str(d / shard))
    (d / "stray.safetensors").write_bytes(b"not a shard")
    return d


shard_names = st.sampled_from(list(SHARDS) + ["stray.safetensors", "missing.safetensors", "../x.safetensors",
                                              "/etc/passwd", "", ".", "sub/../model-00001-of-00002.safetensors"])


@fuzz_settings(150)
@given(data=st.data())
def test_fuzz_sharded_index(sharded_dir, data):
    if data.draw(st.booleans()):
        text = json.dumps(data.draw(mutated(INDEX, values=json_values | shard_names)))
    else:
        text = data.draw(text_edits(json.dumps(INDEX)))
    (sharded_dir / "model.safetensors.index.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    with time_limit(LIMIT_S, "load_checkpoint_dir"):
        try:
            out = load_checkpoint_dir(sharded_dir)
        except CheckpointError as e:
            event("refused")
            assert str(sharded_dir) in str(e)
            return
    event("loaded")
    index = json.loads(text)
    weight_map = index["weight_map"]
    everything = {k: v for ts in SHARDS.values() for k, v in ts.items()}
    # What loaded is exactly the tensors of the shards the index names, each from the file it came from.
    named = {shard for shard in weight_map.values()}
    assert named <= set(SHARDS), f"loaded with shards {named}"
    assert set(out) == {k for shard in named for k in SHARDS[shard]} >= set(weight_map)
    for k, arr in out.items():
        assert arr.dtype == everything[k].dtype and np.array_equal(arr, everything[k]), k
    for k, shard in weight_map.items():
        assert k in SHARDS[shard], f"index puts {k} in {shard}, and that loaded"


# ---- config.json through kiln.io.config ------------------------------------------------------

# field -> (accessor, kwargs, validity of a JSON value): the oracle is written independently of the accessors
def _is_int(v, lo):
    return type(v) is int and v >= lo


def _is_num(v, lo=None, strict=False):
    if type(v) not in (int, float):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    return np.isfinite(f) and (lo is None or (f > lo if strict else f >= lo))


FIELDS = {
    "hidden_size": (config_int, {}, lambda v: _is_int(v, 1)),
    "num_hidden_layers": (config_int, {}, lambda v: _is_int(v, 1)),
    "num_key_value_heads": (config_int, {"default": 4}, lambda v: _is_int(v, 1)),
    "bos_token_id": (config_int, {"min": 0, "default": None}, lambda v: _is_int(v, 0)),
    "rms_norm_eps": (config_float, {"min": 0, "min_exclusive": True, "default": 1e-6}, lambda v: _is_num(v, 0, True)),
    "rope_theta": (config_float, {"min": 0, "min_exclusive": True, "default": 1e4}, lambda v: _is_num(v, 0, True)),
    "tie_word_embeddings": (config_bool, {"default": False}, lambda v: type(v) is bool),
    "hidden_act": (config_str, {"choices": ("silu", "gelu")}, lambda v: v in ("silu", "gelu")),
}
BASE_CONFIG = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1, "num_key_value_heads": 2,
               "bos_token_id": 1, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
               "hidden_act": "silu"}


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_config_readers(tmp_path, data):
    if data.draw(st.integers(0, 4)):
        cfg_json = data.draw(mutated(BASE_CONFIG))
        text = json.dumps(cfg_json)
    else:
        text = data.draw(text_edits(json.dumps(BASE_CONFIG)))
    (tmp_path / "config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = read_config(tmp_path)
    except ConfigError as e:
        event("refused")
        assert "config.json" in str(e)
        return
    event("read")
    assert cfg == json.loads(text) and cfg.path == str(tmp_path / "config.json")
    for field, (accessor, kwargs, valid) in FIELDS.items():
        value = cfg.get(field)
        try:
            got = accessor(cfg, field, **kwargs)
        except ConfigError as e:
            assert f"'{field}'" in str(e) and "config.json" in str(e), str(e)
            assert not (value is not None and valid(value)), f"{field}={value!r} refused: {e}"
            assert value is not None or "default" not in kwargs
            continue
        if value is None:
            assert got == kwargs["default"]
        else:
            assert valid(value), f"{field}={value!r} accepted as {got!r}"
            assert got == value and type(got) is (float if accessor is config_float else type(value))


# ---- config.json through kiln.load on a tiny checkpoint ---------------------------------------

def _load_outcome(d):
    with time_limit(LIMIT_S, "kiln.load"):
        try:
            return kiln.load(d)
        except KilnError as e:
            return e


@pytest.fixture(scope="module")
def reference_model(tiny_llama):
    d, _ = tiny_llama
    return kiln.load(d)


def _checkpoint_copy(tiny_llama, tmp_path, text: str):
    import shutil
    d, _ = tiny_llama
    work = tmp_path / "ckpt"
    if not work.exists():
        work.mkdir()
        for f in d.iterdir():
            shutil.copy(f, work / f.name)
    (work / "config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    return work


@fuzz_settings(40)
@given(data=st.data())
def test_fuzz_load_survives_a_damaged_config_file(tiny_llama, reference_model, tmp_path, data):
    _, cfg = tiny_llama
    text = data.draw(text_edits(json.dumps(cfg, indent=2)))
    out = _load_outcome(_checkpoint_copy(tiny_llama, tmp_path, text))
    if isinstance(out, KilnError) or json.loads(text) != cfg:
        return  # refused with a KilnError, or loaded a config that now says something else
    # the damage was harmless (whitespace): the model is the original
    assert set(out.params) == set(reference_model.params)
    for k, v in out.params.items():
        assert np.array_equal(v, reference_model.params[k]), k


SIZE_FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings"]
bad_sizes = st.sampled_from([0, -1, -4, 2.5, 16.0, "16", True, None, [], {}, 10**30]) | json_values


@fuzz_settings(60)
@given(data=st.data())
def test_fuzz_load_rejects_bad_size_fields_naming_them(tiny_llama, tmp_path, data):
    _, cfg = tiny_llama
    cfg = dict(cfg)
    field = data.draw(st.sampled_from(SIZE_FIELDS))
    value = data.draw(bad_sizes)
    if value is None:
        cfg.pop(field, None)
    else:
        cfg[field] = value
    out = _load_outcome(_checkpoint_copy(tiny_llama, tmp_path, json.dumps(cfg)))
    invalid = value is not None and not (type(value) is int and value >= 1)
    if invalid:
        assert isinstance(out, ConfigError) and f"'{field}'" in str(out), f"{field}={value!r} gave {out!r}"


# ---- graph JSON ---------------------------------------------------------------------------

def _graph():
    g = kiln.Graph("fuzz")
    x = g.input("x", (2, 3))
    w = g.parameter("w", (4, 3))
    b = g.constant(np.arange(4, dtype=np.float32), name="bias")
    h = g.linear(x, w, b)
    lo, hi = g.split(h, sizes=[1, 3], axis=-1)
    g.output("y", g.softmax(hi, axis=-1))
    g.output("z", g.reshape(g.concat([lo, lo], axis=0), shape=[4]))
    return g


GRAPH = json.loads(json.dumps(graph_to_dict(_graph())))


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_graph_json(tmp_path, data):
    if data.draw(st.integers(0, 4)):
        text = json.dumps(data.draw(mutated(GRAPH)))
    else:
        text = data.draw(text_edits(json.dumps(GRAPH)))
    path = tmp_path / "g.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with time_limit(LIMIT_S, "load_graph"):
        try:
            g = kiln.load_graph(path)
        except GraphError as e:
            event("refused")
            assert str(path) in str(e)
            return
    event("loaded")
    # It loaded: the graph is what the file says, node by node (value ids renumbered in order).
    stored, loaded = json.loads(text), graph_to_dict(g)
    assert len(loaded["nodes"]) == len(stored["nodes"])
    ids = {}
    for s, n in zip(stored["nodes"], loaded["nodes"]):
        ids.update((so["id"], no["id"]) for so, no in zip(s["outputs"], n["outputs"]))

    def renamed(ref):
        return None if ref is None else [renamed(r) for r in ref] if isinstance(ref, list) else ids[ref]

    for s, n in zip(stored["nodes"], loaded["nodes"]):
        inputs = [renamed(r) for r in s["inputs"]]
        inputs += [None] * (len(n["inputs"]) - len(inputs))  # trailing optional inputs may be left out
        assert (n["op"], n["name"], n["inputs"]) == (s["op"], s.get("name"), inputs)
        assert [(o["shape"], o["dtype"]) for o in n["outputs"]] == [(o["shape"], o["dtype"]) for o in s["outputs"]]
        if n["op"] == "constant":
            assert {k: s["attrs"][k] for k in ("dtype", "shape", "data")} == n["attrs"]
        else:
            for k, v in s["attrs"].items():
                assert json.dumps(n["attrs"][k]) == json.dumps(v), (n["op"], k)
    assert loaded["outputs"] == {k: ids[v] for k, v in stored["outputs"].items()}
    g.verify()
