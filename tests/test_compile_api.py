"""kiln.compile(...).load_params / .run: correct results, and errors that name the bad input or parameter."""

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.runtime.compiled_graph import InputError


def _compiled():
    """y = linear(x, w, b) gathered by ids: float32 x, int64 ids, float32 w and bfloat16 scale."""
    g = kiln.Graph("api")
    x = g.input("x", (2, 3), "float32")
    ids = g.input("ids", (4,), "int64")
    w = g.parameter("w", (5, 3), "float32")
    b = g.parameter("b", (5,), "float32")
    scale = g.parameter("scale", (5,), "bfloat16")
    y = g.mul(g.linear(x, w, b), g.cast(scale, dtype="float32"))
    g.output("y", y)
    g.output("rows", g.gather(y, ids, axis=1))
    return kiln.compile(g)


def _params(rng):
    return {"w": rng.standard_normal((5, 3)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32),
            "scale": rng.standard_normal(5).astype(ml_dtypes.bfloat16)}


def _inputs(rng):
    return {"x": rng.standard_normal((2, 3)).astype(np.float32), "ids": np.array([4, 0, 0, 2])}


def test_run_matches_torch(rng):
    cg, params, inputs = _compiled(), _params(rng), _inputs(rng)
    cg.load_params(params)
    out = cg.run(**inputs)
    scale = torch.from_numpy(params["scale"].astype(np.float32))
    want = F.linear(*(torch.from_numpy(a) for a in (inputs["x"], params["w"], params["b"]))) * scale
    np.testing.assert_allclose(out["y"], want.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["rows"], out["y"][:, inputs["ids"]])
    assert cg(**inputs).keys() == {"y", "rows"}  # calling is running
    assert cg.input_types["ids"] == kiln.TensorType((4,), "int64")
    assert cg.param_types["scale"] == kiln.TensorType((5,), "bfloat16")


def test_outputs_are_fresh_and_inputs_untouched(rng):
    cg, inputs = _compiled(), _inputs(rng)
    cg.load_params(_params(rng))
    x_before = inputs["x"].copy()
    first = cg.run(**inputs)
    first["y"][:] = 0
    second = cg.run(**inputs)
    assert np.abs(second["y"]).sum() > 0
    np.testing.assert_array_equal(inputs["x"], x_before)


# ---- run() -------------------------------------------------------------------------------

def test_run_before_load_params_names_missing_params(rng):
    with pytest.raises(InputError, match=r"parameters not loaded: \['w', 'b', 'scale'\]; call load_params"):
        _compiled().run(**_inputs(rng))


@pytest.fixture
def loaded(rng):
    cg = _compiled()
    cg.load_params(_params(rng))
    return cg


def test_missing_input(loaded, rng):
    inputs = _inputs(rng)
    del inputs["ids"]
    with pytest.raises(InputError, match=r"missing input\(s\) \['ids'\]"):
        loaded.run(**inputs)


def test_extra_input(loaded, rng):
    with pytest.raises(InputError, match=r"unexpected input\(s\) \['mask'\]; expected \['ids', 'x'\]"):
        loaded.run(**_inputs(rng), mask=np.ones(3))


def test_wrongly_shaped_input(loaded, rng):
    inputs = _inputs(rng)
    inputs["x"] = inputs["x"].T
    with pytest.raises(InputError, match=r"input 'x': expected shape \(2, 3\), got \(3, 2\)"):
        loaded.run(**inputs)


@pytest.mark.parametrize("name,value,found", [
    ("x", np.zeros((2, 3), np.float64), "float64"),
    ("x", np.zeros((2, 3), np.float16), "float16"),
    ("x", np.zeros((2, 3), ml_dtypes.bfloat16), "bfloat16"),
    ("x", [[0.0] * 3] * 2, "float64"),  # a Python list is float64, never silently float32
    ("ids", np.zeros(4, np.int32), "int32"),
    ("ids", np.zeros(4, np.float32), "float32"),
])
def test_wrongly_typed_input_is_not_cast(loaded, rng, name, value, found):
    inputs = _inputs(rng)
    inputs[name] = value
    expected = "float32" if name == "x" else "int64"
    with pytest.raises(InputError, match=rf"input '{name}': expected dtype {expected}, got {found} \(cast explicitly\)"):
        loaded.run(**inputs)


def test_unsupported_input_dtype(loaded, rng):
    inputs = _inputs(rng)
    inputs["x"] = np.zeros((2, 3), np.complex64)
    with pytest.raises(InputError, match="input 'x': expected dtype float32, got unsupported complex64"):
        loaded.run(**inputs)


def test_out_of_range_index_at_run_time(loaded, rng):
    inputs = _inputs(rng)
    inputs["ids"] = np.array([0, 1, 2, 5])
    with pytest.raises(IndexError, match="gather: index out of range"):
        loaded.run(**inputs)


# ---- load_params() ---------------------------------------------------------------------------

def test_load_params_missing(rng):
    params = _params(rng)
    del params["b"]
    with pytest.raises(InputError, match=r"missing parameter\(s\) \['b'\]"):
        _compiled().load_params(params)


def test_load_params_extra(rng):
    with pytest.raises(InputError, match=r"unexpected parameter\(s\) \['lm_head'\]; expected \['b', 'scale', 'w'\]"):
        _compiled().load_params({**_params(rng), "lm_head": np.zeros(3)})


def test_load_params_wrong_shape(rng):
    params = _params(rng)
    params["w"] = params["w"].T.copy()
    with pytest.raises(InputError, match=r"parameter 'w': expected shape \(5, 3\), got \(3, 5\)"):
        _compiled().load_params(params)


@pytest.mark.parametrize("name,dtype,expected", [("scale", np.float32, "bfloat16"), ("w", np.float16, "float32"),
                                                 ("b", np.float64, "float32")])
def test_load_params_wrong_dtype_is_not_cast(rng, name, dtype, expected):
    params = _params(rng)
    params[name] = params[name].astype(dtype)
    found = kiln.as_dtype(dtype).name
    with pytest.raises(InputError, match=rf"parameter '{name}': expected dtype {expected}, got {found}"):
        _compiled().load_params(params)


def test_partial_load_then_run_names_what_is_still_missing(rng):
    cg, params = _compiled(), _params(rng)
    cg.load_params({"w": params["w"]}, strict=False)
    with pytest.raises(InputError, match=r"parameters not loaded: \['b', 'scale'\]"):
        cg.run(**_inputs(rng))
    cg.load_params({"b": params["b"], "scale": params["scale"]}, strict=False)
    assert cg.run(**_inputs(rng))["y"].shape == (2, 5)


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


def test_compile_rejects_unknown_device():
    g = kiln.Graph()
    g.output("y", g.relu(g.input("x", (2,))))
    with pytest.raises(ValueError, match=r"unknown device 'tpu'; expected one of \('cpu', 'cuda'\)"):
        kiln.compile(g, device="tpu")
