"""Ill-formed graphs raise kiln.GraphError naming the node or op and what was expected vs found."""

import numpy as np
import pytest

import kiln
from kiln import GraphError, TensorType


def _graph():
    g = kiln.Graph("t")
    x = g.input("x", (2, 3), "float32")
    w = g.parameter("w", (4, 3), "float32")
    return g, x, w


def test_well_formed_graph_verifies_and_runs():
    g, x, w = _graph()
    y = g.relu(g.linear(x, w, name="proj"))
    g.output("y", y)
    g.verify()
    cg = kiln.compile(g)
    xv, wv = np.arange(6, dtype=np.float32).reshape(2, 3) - 2, np.ones((4, 3), np.float32)
    cg.load_params({"w": wv})
    np.testing.assert_array_equal(cg.run(x=xv)["y"], np.maximum(xv @ wv.T, 0))


def test_shape_mismatch_names_node_op_and_both_shapes():
    g, x, _ = _graph()
    with pytest.raises(GraphError, match=r"node #\d+ \(add 'resid'\): shapes \(2, 3\) and \(4,\) do not broadcast"):
        g.add(x, g.input("b", (4,), "float32"), name="resid")


def test_shape_mismatch_in_matmul_names_contraction_dims():
    g, x, _ = _graph()
    with pytest.raises(GraphError, match=r"\(matmul\).*K=3.*K=2"):
        g.matmul(x, g.input("m", (2, 5), "float32"))


@pytest.mark.parametrize("other", ["float16", "bfloat16", "float64", "int32"])
def test_dtype_mismatch_is_an_error_not_a_cast(other):
    g, x, _ = _graph()
    with pytest.raises(GraphError, match=rf"\(mul\).*input 'b' has dtype {other}, expected float32.*explicit cast"):
        g.mul(x, g.input("h", (2, 3), other))
    g.mul(x, g.cast(g.input("h2", (2, 3), other), dtype="float32"))  # the explicit way works


def test_float_only_op_rejects_int_input():
    g = kiln.Graph()
    with pytest.raises(GraphError, match=r"op 'exp': input 'x' must be a float tensor, got int64\[3\]"):
        g.exp(g.input("i", (3,), "int64"))


def test_unknown_op():
    g, x, _ = _graph()
    with pytest.raises(GraphError, match="unknown op 'frobnicate'; registered ops: .*'add'"):
        g.op("frobnicate", x)
    with pytest.raises(AttributeError, match="frobnicate"):
        g.frobnicate(x)


def test_unknown_and_missing_attributes():
    g, x, _ = _graph()
    with pytest.raises(GraphError, match=r"op 'softmax': unknown attribute\(s\) \['dim'\]; expected \['axis'\]"):
        g.softmax(x, dim=-1)
    with pytest.raises(GraphError, match="op 'reshape': missing required attribute 'shape'"):
        g.reshape(x)
    with pytest.raises(GraphError, match="op 'cast': missing required attribute 'dtype'"):
        g.cast(x)


def test_wrong_number_of_inputs():
    g, x, w = _graph()
    with pytest.raises(GraphError, match=r"op 'add': expected inputs \['a', 'b'\], got 1 value"):
        g.add(x)
    with pytest.raises(GraphError, match=r"op 'relu': expected inputs \['x'\], got 2 value"):
        g.relu(x, x)
    with pytest.raises(GraphError, match=r"op 'linear': expected inputs \['x', 'weight', 'bias\?'\], got 4"):
        g.linear(x, w, None, x)
    with pytest.raises(GraphError, match="op 'add': input 'b' is required"):
        g.add(x, None)
    with pytest.raises(GraphError, match="op 'concat': needs at least one input"):
        g.concat([])


def test_non_value_input():
    g, x, _ = _graph()
    with pytest.raises(GraphError, match="op 'add': input 'b' must be a Value, got float"):
        g.op("add", x, 2.0)
    with pytest.raises(GraphError, match="op 'concat': input '\\*xs' must be a Value, got ndarray"):
        g.concat([x, np.ones((2, 3), np.float32)])


def test_duplicate_source_and_output_names():
    g, x, _ = _graph()
    with pytest.raises(GraphError, match=r"input name 'x' already used by node #\d+ \(input 'x'\)"):
        g.input("x", (3,), "float32")
    with pytest.raises(GraphError, match=r"parameter name 'x' already used by node #\d+ \(input 'x'\)"):
        g.parameter("x", (3,), "float32")
    with pytest.raises(GraphError, match="non-empty string name"):
        g.input("", (3,))
    g.output("y", x)
    with pytest.raises(GraphError, match="output 'y' defined twice"):
        g.output("y", g.relu(x))


def test_bad_source_types():
    g = kiln.Graph()
    with pytest.raises(TypeError, match="unsupported dtype 'complex64'"):
        g.input("c", (2,), "complex64")
    with pytest.raises(ValueError, match=r"negative dimension in shape \(2, -1\)"):
        g.input("n", (2, -1))
    with pytest.raises(TypeError, match="unsupported dtype complex128"):
        g.constant(np.ones(2, np.complex128))


def test_failed_op_leaves_graph_unchanged():
    g, x, _ = _graph()
    before = len(g.nodes)
    with pytest.raises(GraphError):
        g.add(x, g.input("b", (5,), "float32"))
    assert len(g.nodes) == before + 1  # only the new input
    g.verify()


def test_value_of_another_graph():
    g, x, _ = _graph()
    other = kiln.Graph("other")
    y = other.relu(other.input("x", (2, 3), "float32"))
    with pytest.raises(GraphError, match=r"output 'y' must be a Value of this graph, got %\d+:float32\[2, 3\]"):
        g.output("y", y)
    with pytest.raises(GraphError, match=r"op 'add': input 'b' \(%\d+:float32\[2, 3\]\) belongs to another graph"):
        g.add(x, y)
    with pytest.raises(GraphError, match="must be a Value of this graph"):
        g.output("z", "x")


# ---- verify() re-checks what was tampered with after construction ---------------------------

def _small():
    g, x, w = _graph()
    h = g.linear(x, w, name="proj")
    y = g.softmax(h, name="probs")
    g.output("y", y)
    return g, h, y


def test_verify_catches_edited_output_type():
    g, h, _ = _small()
    h.type = TensorType((2, 5), "float32")
    with pytest.raises(GraphError, match=r"\(linear 'proj'\): outputs have types \['float32\[2, 5\]'\], "
                                         r"but op 'linear' infers \['float32\[2, 4\]'\]"):
        g.verify()
    with pytest.raises(GraphError, match="linear 'proj'"):
        kiln.compile(g)  # compiling verifies first


def test_verify_catches_edited_dtype_and_attrs():
    g, h, y = _small()
    y.type = TensorType(y.shape, "float16")
    with pytest.raises(GraphError, match=r"softmax 'probs'.*float16\[2, 4\].*infers \['float32\[2, 4\]'\]"):
        g.verify()
    y.type = TensorType(y.shape, "float32")
    g.verify()
    y.node.attrs["axis"] = 5
    with pytest.raises(GraphError, match=r"softmax 'probs'\): axis 5 is out of range for rank 2"):
        g.verify()


def test_verify_catches_use_before_definition_and_foreign_input():
    g, h, y = _small()
    i, j = g.nodes.index(h.node), g.nodes.index(y.node)
    g.nodes[i], g.nodes[j] = g.nodes[j], g.nodes[i]
    with pytest.raises(GraphError, match=r"softmax 'probs'\): input %\d+:float32\[2, 4\] is not defined before"):
        g.verify()
    g.nodes[i], g.nodes[j] = g.nodes[j], g.nodes[i]
    other = kiln.Graph()
    y.node.inputs[0] = other.input("x", (2, 4), "float32")
    with pytest.raises(GraphError, match="softmax 'probs'.*not defined before this node"):
        g.verify()


def test_verify_catches_removed_node_duplicate_name_and_unknown_op():
    g, h, y = _small()
    g.nodes.remove(y.node)
    with pytest.raises(GraphError, match=r"output 'y' refers to %\d+:float32\[2, 4\], which no node defines"):
        g.verify()
    g, h, y = _small()
    g.nodes[1].name = "x"  # the parameter now shares the input's name
    with pytest.raises(GraphError, match=r"\(parameter 'x'\): name 'x' already used by node #\d+ \(input 'x'\)"):
        g.verify()
    g, h, y = _small()
    y.node.op = "softmaxx"
    with pytest.raises(GraphError, match=r"\(softmaxx 'probs'\): unknown op 'softmaxx'"):
        g.verify()
