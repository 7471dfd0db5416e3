"""JSON save/load of graphs. Constants travel as base64 bytes with dtype and shape.

Loading validates the whole schema before building anything from it: every
problem (a truncated file, a top-level list, a missing key, a string where a
shape belongs, bad base64, a constant whose bytes do not fill its shape, a
reference to an undefined value, an op's rejected attributes) is a
``GraphError`` naming the file and the node.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import math
from typing import Any

import numpy as np

from kiln.files import read_json_file

from .dtypes import as_dtype
from .errors import GraphError
from .graph import Graph, Value
from .tensor_type import TensorType

FORMAT_VERSION = 1


def graph_to_dict(graph: Graph) -> dict:
    nodes = []
    for n in graph.nodes:
        if n.op == "constant":
            arr = np.asarray(n.attrs["value"])
            attrs = {"dtype": as_dtype(arr.dtype).name, "shape": list(arr.shape),
                     "data": base64.b64encode(arr.tobytes()).decode("ascii")}
        else:
            attrs = copy.deepcopy(n.attrs)  # nested lists (pads, shapes) must not alias the graph
        nodes.append({
            "id": n.id, "op": n.op, "name": n.name, "attrs": attrs,
            "inputs": [_ref(x) for x in n.inputs],
            "outputs": [{"id": o.id, "shape": list(o.shape), "dtype": o.dtype.name} for o in n.outputs],
        })
    return {"format": "kiln-graph", "version": FORMAT_VERSION, "name": graph.name, "nodes": nodes,
            "outputs": {k: v.id for k, v in graph.outputs.items()}}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(d) and d >= 0 for d in value):
        raise GraphError(f"{where}: shape must be a list of non-negative integers, found {value!r}")
    return tuple(value)


def _dtype(value: Any, where: str):
    try:
        if isinstance(value, str):
            return as_dtype(value)
    except TypeError:
        pass
    raise GraphError(f"{where}: unknown dtype {value!r}")


def _constant(attrs: dict, where: str) -> np.ndarray:
    missing = [k for k in ("dtype", "shape", "data") if k not in attrs]
    if missing:
        raise GraphError(f"{where}: constant attrs lack {missing}; found keys {sorted(attrs)}")
    dt = _dtype(attrs["dtype"], where).np_dtype
    shape = _shape(attrs["shape"], where)
    if not isinstance(attrs["data"], str):
        raise GraphError(f"{where}: constant data must be a base64 string, found {type(attrs['data']).__name__}")
    try:
        raw = base64.b64decode(attrs["data"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise GraphError(f"{where}: constant data is not valid base64: {e}") from None
    expected = math.prod(shape) * dt.itemsize
    if len(raw) != expected:
        raise GraphError(f"{where}: constant data holds {len(raw)} bytes, expected {expected} "
                         f"= prod(shape {list(shape)}) * {dt.itemsize} ({attrs['dtype']})")
    return np.frombuffer(raw, dtype=dt).reshape(shape).copy()


def _check_ref(ref: Any, where: str) -> None:
    if ref is None or _is_int(ref):
        return
    if isinstance(ref, list) and ref and all(_is_int(r) for r in ref):
        return
    raise GraphError(f"{where}: an input must be a value id, a non-empty list of ids or null, found {ref!r}")


def graph_from_dict(data: Any, source: str = "JSON graph") -> Graph:
    """The graph a :func:`graph_to_dict` dict describes; ``source`` (a file name) prefixes every error."""
    if not isinstance(data, dict):
        raise GraphError(f"{source}: expected a JSON object at top level, found {type(data).__name__}")
    if data.get("format") != "kiln-graph" or data.get("version") != FORMAT_VERSION:
        raise GraphError(f"{source}: not a kiln graph of version {FORMAT_VERSION}: format={data.get('format')!r} "
                         f"version={data.get('version')!r}")
    for key, kind in (("nodes", list), ("outputs", dict)):
        if not isinstance(data.get(key), kind):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise GraphError(f"{source}: '{key}' must be a JSON {'array' if kind is list else 'object'}, found {found}")
    name = data.get("name", "graph")
    if not isinstance(name, str):
        raise GraphError(f"{source}: 'name' must be a string, found {name!r}")
    g = Graph(name)
    values: dict[int, Value] = {}

    def lookup(ref, where):
        if ref is None:
            return None
        if isinstance(ref, list):
            return [lookup(r, where) for r in ref]
        if ref not in values:
            raise GraphError(f"{where}: JSON graph refers to value %{ref} before defining it")
        return values[ref]

    for i, nd in enumerate(data["nodes"]):
        where = f"{source}: nodes[{i}]"
        if not isinstance(nd, dict):
            raise GraphError(f"{where}: a node must be a JSON object, found {type(nd).__name__}")
        missing = [k for k in ("id", "op", "attrs", "inputs", "outputs") if k not in nd]
        if missing:
            raise GraphError(f"{where}: node lacks {missing}; found keys {sorted(nd)}")
        op, attrs, node_name = nd["op"], nd["attrs"], nd.get("name")
        if not isinstance(op, str) or not isinstance(attrs, dict) or not isinstance(nd["inputs"], list) or \
                not (node_name is None or isinstance(node_name, str)):
            raise GraphError(f"{where}: 'op' must be a string, 'attrs' an object, 'inputs' an array and 'name' a "
                             f"string or null; found op={op!r}, attrs {type(attrs).__name__}, "
                             f"inputs {type(nd['inputs']).__name__}, name={node_name!r}")
        label = f"{op} {node_name!r}" if node_name is not None else op
        where = f"{source}: JSON node #{nd['id']} ({label})" if _is_int(nd["id"]) else f"{where} ({label})"
        outs_json = nd["outputs"]
        if not isinstance(outs_json, list) or not outs_json:
            raise GraphError(f"{where}: 'outputs' must be a non-empty array, found {outs_json!r}")
        out_types = []
        for od in outs_json:
            if not isinstance(od, dict) or not _is_int(od.get("id")):
                raise GraphError(f"{where}: each output must be an object with an integer 'id', found {od!r}")
            if od["id"] in values:
                raise GraphError(f"{where}: output id %{od['id']} is already defined by an earlier node")
            out_types.append(TensorType(_shape(od.get("shape"), where), _dtype(od.get("dtype"), where)))
        for ref in nd["inputs"]:
            _check_ref(ref, where)

        allowed = {"input": set(), "parameter": set(), "constant": {"dtype", "shape", "data"}}.get(op)
        if allowed is not None and set(attrs) - allowed:
            raise GraphError(f"{where}: unexpected attrs {sorted(set(attrs) - allowed)} for {op} nodes"
                             + (f"; expected {sorted(allowed)}" if allowed else ""))
        try:
            if op in ("input", "parameter"):
                if len(out_types) != 1:
                    raise GraphError(f"{op} has exactly one output, found {len(out_types)}")
                out = g._source(op, node_name, out_types[0])
            elif op == "constant":
                out = g.constant(_constant(attrs, where), name=node_name)
            else:
                out = g.op(op, *[lookup(r, where) for r in nd["inputs"]], name=node_name, **attrs)
        except GraphError as e:
            msg = str(e)
            raise GraphError(msg if msg.startswith(source) else f"{where}: {msg}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, ZeroDivisionError) as e:
            # An op's type rule choking on attributes no builder would pass (a string axis, a huge rank):
            # the file is at fault, and the message says which node and what the rule said.
            raise GraphError(f"{where}: invalid attributes {attrs!r} for op {op!r}: {type(e).__name__}: {e}") from e
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != len(out_types):
            raise GraphError(f"{where}: stores {len(out_types)} outputs, the op produces {len(outs)}")
        for o, od, t in zip(outs, outs_json, out_types):
            if o.type != t:
                raise GraphError(f"{where}: stored output type {od['dtype']}{od['shape']} "
                                 f"differs from inferred {o.type}")
            values[od["id"]] = o
    for out_name, ref in data["outputs"].items():
        if not _is_int(ref):
            raise GraphError(f"{source}: output {out_name!r} must be a value id, found {ref!r}")
        try:
            g.output(out_name, lookup(ref, f"{source}: output {out_name!r}"))
        except GraphError as e:
            msg = str(e)
            raise GraphError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    return g


def _ref(x):
    if x is None:
        return None
    if isinstance(x, list):
        return [v.id for v in x]
    return x.id


def save_graph(graph: Graph, path) -> None:
    with open(path, "w") as f:
        json.dump(graph_to_dict(graph), f)


def load_graph(path) -> Graph:
    """The graph saved at ``path``; every problem with the file is a ``GraphError`` naming it."""
    data = read_json_file(path, "kiln graph file", GraphError, expect=None, unique_keys=True)
    return graph_from_dict(data, source=str(path))
