"""Malformed graph JSON files give a GraphError naming the file and the node, not a bare
JSONDecodeError / KeyError / AttributeError / NumPy error."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

import kiln
from kiln.errors import GraphError


def small_graph() -> kiln.Graph:
    g = kiln.Graph("small")
    x = g.input("x", (2, 3))
    w = g.parameter("w", (4, 3))
    b = g.constant(np.arange(4, dtype=np.float32), name="bias")
    g.output("y", g.softmax(g.linear(x, w, b), axis=-1))
    return g


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "g.json"
    kiln.save_graph(small_graph(), path)
    return path, json.loads(path.read_text())


def _node(data, op):
    return next(n for n in data["nodes"] if n["op"] == op)


def _write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_valid_file_loads(saved):
    path, data = saved
    assert kiln.load_graph(path).dump() == small_graph().dump()


def test_truncated_file(saved):
    path, _ = saved
    text = path.read_text()
    _write(path, text[: len(text) // 2])
    with pytest.raises(GraphError, match=r"g\.json: invalid JSON at line 1 column \d+"):
        kiln.load_graph(path)
    _write(path, "")
    with pytest.raises(GraphError, match=r"g\.json: invalid JSON at line 1 column 1"):
        kiln.load_graph(path)


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: [d], r"g\.json: expected a JSON object at top level, found list"),
    (lambda d: {k: v for k, v in d.items() if k != "nodes"}, r"g\.json: 'nodes' must be a JSON array, found missing"),
    (lambda d: {**d, "nodes": {}}, r"g\.json: 'nodes' must be a JSON array, found a dict"),
    (lambda d: {**d, "outputs": [1]}, r"g\.json: 'outputs' must be a JSON object, found a list"),
    (lambda d: {**d, "name": 3}, r"g\.json: 'name' must be a string"),
    (lambda d: {**d, "nodes": [1] + d["nodes"]}, r"g\.json: nodes\[0\]: a node must be a JSON object, found int"),
])
def test_top_level_schema(saved, edit, pattern):
    path, data = saved
    with pytest.raises(GraphError, match=pattern):
        kiln.load_graph(_write(path, edit(data)))


def _edit_input_shape(d):
    _node(d, "input")["outputs"][0]["shape"] = "2x3"


def _edit_const_data(d):
    _node(d, "constant")["attrs"]["data"] = "not base64!!"


def _edit_const_size(d):
    _node(d, "constant")["attrs"]["data"] = base64.b64encode(b"\0" * 12).decode()


def _edit_const_dtype(d):
    _node(d, "constant")["attrs"]["dtype"] = "complex64"


def _drop_key(op, key):
    return lambda d: _node(d, op).pop(key)


def _edit_attr(d):
    _node(d, "softmax")["attrs"]["axis"] = "last"


def _edit_ref(d):
    _node(d, "softmax")["inputs"] = [True]


def _dup_output_id(d):
    _node(d, "parameter")["outputs"][0]["id"] = _node(d, "input")["outputs"][0]["id"]


def _two_outputs(d):
    _node(d, "softmax")["outputs"].append(dict(_node(d, "softmax")["outputs"][0], id=999))


def _source_attrs(d):
    _node(d, "input")["attrs"]["shape"] = [5]  # would be silently ignored: sources take their type from outputs


def _bad_output_ref(d):
    d["outputs"]["y"] = "softmax"


@pytest.mark.parametrize("edit, pattern", [
    (_edit_input_shape, r"g\.json: JSON node #\d+ \(input 'x'\): shape must be a list of non-negative integers, found '2x3'"),
    (_edit_const_data, r"g\.json: JSON node #\d+ \(constant 'bias'\): constant data is not valid base64"),
    (_edit_const_size, r"\(constant 'bias'\): constant data holds 12 bytes, expected 16 = prod\(shape \[4\]\) \* 4"),
    (_edit_const_dtype, r"\(constant 'bias'\): unknown dtype 'complex64'"),
    (_drop_key("linear", "attrs"), r"g\.json: nodes\[\d+\]: node lacks \['attrs'\]"),
    (_drop_key("input", "outputs"), r"nodes\[0\]: node lacks \['outputs'\]"),
    (_edit_attr, r"g\.json: JSON node #\d+ \(softmax\): invalid attributes \{'axis': 'last'\} for op 'softmax'"),
    (_edit_ref, r"\(softmax\): an input must be a value id, a non-empty list of ids or null, found True"),
    (_dup_output_id, r"\(parameter 'w'\): output id %\d+ is already defined by an earlier node"),
    (_two_outputs, r"\(softmax\): stores 2 outputs, the op produces 1"),
    (_bad_output_ref, r"g\.json: output 'y' must be a value id, found 'softmax'"),
    (_source_attrs, r"\(input 'x'\): unexpected attrs \['shape'\] for input nodes"),
])
def test_node_schema_names_file_and_node(saved, edit, pattern):
    path, data = saved
    edit(data)
    with pytest.raises(GraphError, match=pattern):
        kiln.load_graph(_write(path, data))


def test_duplicate_key_is_an_error(saved):
    path, data = saved
    text = json.dumps(data).replace('"name": "small"', '"name": "small", "name": "other"', 1)
    with pytest.raises(GraphError, match=r"g\.json: the key 'name' appears twice"):
        kiln.load_graph(_write(path, text))


def test_graph_from_dict_names_its_source():
    with pytest.raises(GraphError, match=r"^JSON graph: expected a JSON object at top level, found list"):
        kiln.ir.graph_from_dict([])
