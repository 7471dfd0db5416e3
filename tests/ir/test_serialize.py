"""JSON round trip of graphs: the reloaded graph is the same graph and computes bit-identical outputs."""

import copy
import json

import ml_dtypes
import numpy as np
import pytest

import kiln
from kiln.ir import graph_from_dict, graph_to_dict

B, S, D = 2, 4, 6


def build_graph(rng) -> kiln.Graph:
    """A graph touching many ops, constants of every dtype (bfloat16 too) and a multi-output split."""
    g = kiln.Graph("roundtrip")
    x = g.input("x", (B, S, D), "float32")
    ids = g.input("ids", (B, S), "int64")
    w = g.parameter("w", (D, D), "float32")
    table = g.parameter("table", (10, D), "bfloat16")

    h = g.add(x, g.cast(g.embedding(ids, table), dtype="float32"))
    h = g.rms_norm(h, g.constant(rng.standard_normal(D).astype(np.float32)), add_unit_offset=True)
    h = g.linear(h, w, g.constant(rng.standard_normal(D).astype(np.float32), name="bias"))
    qa, ka, va = g.split(h, sizes=[2, 2, 2], axis=-1)
    q, k, v = (g.transpose(g.reshape(t, shape=[B, S, 1, 2]), perm=[0, 2, 1, 3]) for t in (qa, ka, va))
    angles = np.arange(S, dtype=np.float32)[None, :, None] * np.float32(0.5)
    q = g.rope(q, g.constant(np.cos(angles)), g.constant(np.sin(angles)), layout="interleaved")
    mask = g.constant(np.tril(np.ones((S, S), bool)) | np.eye(S, k=1, dtype=bool))
    att = g.attention(q, k, v, mask, causal=True, window=3, softcap=5.0, scale=0.7)
    att = g.reshape(g.transpose(att, perm=[0, 2, 1, 3]), shape=[B, S, 2])
    cat = g.concat([att, ka, va], axis=-1)
    g.output("cat", cat)

    g.output("rev", g.slice(cat, axes=[1, 2], starts=[-1, 5], ends=[None, 0], steps=[-1, -2]))
    g.output("padded", g.pad(cat, pads=[(0, 0), (1, 2), (2, 1)], mode="reflect"))
    g.output("probs", g.softmax(g.gelu(cat, approximate="tanh"), axis=-1))
    g.output("total", g.sum(cat, axes=[0, 2], keepdims=True))
    g.output("best", g.argmax(cat, axis=-1))

    thresh = g.cast(g.constant(np.array([0.1, -0.2, 0.3, 0.0, 1.0, -1.0], np.float64)), dtype="float32")
    g.output("gated", g.where(g.greater(x, thresh), g.clamp(x, min=-0.5, max=0.5), g.neg(x)))
    half = g.mul(g.cast(x, dtype="float16"), g.constant(rng.standard_normal(D).astype(np.float16)))
    g.output("half", g.layer_norm(half, eps=1e-3))
    bf = g.constant(rng.standard_normal((S, D)).astype(ml_dtypes.bfloat16), name="bf_const")
    g.output("bf", g.geglu(g.cast(x, dtype="bfloat16"), bf))
    u8 = g.cast(g.constant(np.array([0, 7, 255, 3, 128, 1], np.uint8)), dtype="float32")
    g.output("u8", g.mul(x, u8))
    idx = g.constant(np.array([[3, 0], [1, -1]], np.int32))
    g.output("gathered", g.gather(x, idx, axis=2))
    g.output("onehot", g.one_hot(ids, num_classes=10, dtype="bfloat16"))
    g.output("swish", g.swiglu(x, x * 2.0))
    return g


def _run(g, feeds, params):
    cg = kiln.compile(g)
    cg.load_params(params)
    return cg.run(**feeds)


@pytest.fixture
def case(rng):
    g = build_graph(rng)
    feeds = {"x": rng.standard_normal((B, S, D)).astype(np.float32), "ids": rng.integers(0, 10, (B, S))}
    params = {"w": rng.standard_normal((D, D)).astype(np.float32),
              "table": rng.standard_normal((10, D)).astype(ml_dtypes.bfloat16)}
    return g, feeds, params


def _assert_same_outputs(a: dict, b: dict):
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_dict_json_round_trip_is_identical(case):
    g, feeds, params = case
    data = json.loads(json.dumps(graph_to_dict(g)))  # through real JSON text
    g2 = graph_from_dict(data)
    g2.verify()
    assert json.dumps(graph_to_dict(g2), sort_keys=True) == json.dumps(data, sort_keys=True)
    assert g2.dump() == g.dump()
    _assert_same_outputs(_run(g, feeds, params), _run(g2, feeds, params))


def test_file_round_trip(case, tmp_path):
    g, feeds, params = case
    path = tmp_path / "g.json"
    kiln.save_graph(g, path)
    g2 = kiln.load_graph(path)
    _assert_same_outputs(_run(g, feeds, params), _run(g2, feeds, params))
    consts = [n.attrs["value"] for n in g.nodes if n.op == "constant"]
    consts2 = [n.attrs["value"] for n in g2.nodes if n.op == "constant"]
    assert {str(c.dtype) for c in consts} >= {"float32", "float64", "float16", "bfloat16", "bool", "uint8", "int32"}
    for c, c2 in zip(consts, consts2, strict=True):
        assert c.dtype == c2.dtype and c.shape == c2.shape and c.tobytes() == c2.tobytes()


def test_split_outputs_keep_their_order(case):
    g, _, _ = case
    g2 = graph_from_dict(json.loads(json.dumps(graph_to_dict(g))))
    split = next(n for n in g2.nodes if n.op == "split")
    assert [o.index for o in split.outputs] == [0, 1, 2]
    assert [o.id for o in split.outputs] == [o.id for o in next(n for n in g.nodes if n.op == "split").outputs]


def _corrupt(g, edit):
    data = json.loads(json.dumps(graph_to_dict(g)))
    edit(data)
    return data


def test_load_rejects_wrong_format_or_version(case):
    g, _, _ = case
    bad = _corrupt(g, lambda d: d.update(version=99))
    with pytest.raises(kiln.GraphError, match="version=99"):
        graph_from_dict(bad)
    bad = _corrupt(g, lambda d: d.update(format="onnx"))
    with pytest.raises(kiln.GraphError, match="format='onnx'"):
        graph_from_dict(bad)


def _node(data, op):
    return next(n for n in data["nodes"] if n["op"] == op)


def test_load_rejects_edited_output_type(case):
    g, _, _ = case
    bad = _corrupt(g, lambda d: _node(d, "linear")["outputs"][0].update(shape=[B, S, 7]))
    with pytest.raises(kiln.GraphError, match=r"JSON node #\d+ \(linear\): stored output type float32\[2, 4, 7\] "
                                              r"differs from inferred float32\[2, 4, 6\]"):
        graph_from_dict(bad)


def test_load_rejects_unknown_op_and_dangling_reference(case):
    g, _, _ = case
    bad = _corrupt(g, lambda d: _node(d, "softmax").update(op="softmax2"))
    with pytest.raises(kiln.GraphError, match="unknown op 'softmax2'"):
        graph_from_dict(bad)
    bad = _corrupt(g, lambda d: _node(d, "softmax").update(inputs=[123456]))
    with pytest.raises(kiln.GraphError, match="refers to value %123456 before defining it"):
        graph_from_dict(bad)
    bad = _corrupt(g, lambda d: _node(d, "softmax")["attrs"].update(dim=1))
    with pytest.raises(kiln.GraphError, match=r"unknown attribute\(s\) \['dim'\]"):
        graph_from_dict(bad)


def test_to_dict_does_not_alias_graph_state(case):
    g, _, _ = case
    data = graph_to_dict(g)
    snapshot = copy.deepcopy(data)
    _node(data, "pad")["attrs"]["pads"][1][0] = 99
    assert graph_to_dict(g) == snapshot, "editing the dict must not edit the graph"
