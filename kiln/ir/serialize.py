"""JSON save/load of graphs. Constants travel as base64 bytes with dtype and shape."""

from __future__ import annotations

import base64
import copy
import json

import numpy as np

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


def graph_from_dict(data: dict) -> Graph:
    if data.get("format") != "kiln-graph" or data.get("version") != FORMAT_VERSION:
        raise GraphError(f"not a kiln graph of version {FORMAT_VERSION}: format={data.get('format')!r} "
                         f"version={data.get('version')!r}")
    g = Graph(data.get("name", "graph"))
    values: dict[int, Value] = {}

    def lookup(ref):
        if ref is None:
            return None
        if isinstance(ref, list):
            return [lookup(r) for r in ref]
        if ref not in values:
            raise GraphError(f"JSON graph refers to value %{ref} before defining it")
        return values[ref]

    for nd in data["nodes"]:
        op, attrs = nd["op"], nd["attrs"]
        if op in ("input", "parameter"):
            o = nd["outputs"][0]
            out = g._source(op, nd["name"], TensorType(tuple(o["shape"]), as_dtype(o["dtype"])))
        elif op == "constant":
            dt = as_dtype(attrs["dtype"]).np_dtype
            arr = np.frombuffer(base64.b64decode(attrs["data"]), dtype=dt).reshape(tuple(attrs["shape"])).copy()
            out = g.constant(arr, name=nd["name"])
        else:
            out = g.op(op, *[lookup(r) for r in nd["inputs"]], name=nd["name"], **attrs)
        outs = out if isinstance(out, tuple) else (out,)
        for o, od in zip(outs, nd["outputs"]):
            if list(o.shape) != od["shape"] or o.dtype.name != od["dtype"]:
                raise GraphError(f"JSON node #{nd['id']} ({op}): stored output type {od['dtype']}{od['shape']} "
                                 f"differs from inferred {o.type}")
            values[od["id"]] = o
    for name, ref in data["outputs"].items():
        g.output(name, lookup(ref))
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
    with open(path) as f:
        return graph_from_dict(json.load(f))
