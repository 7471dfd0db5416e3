"""The Graph: one data structure for every level of the pipeline.

A graph is a list of nodes in topological order. Sources (inputs, parameters,
constants) are nodes too, so passes see one uniform list. Every value has a
static TensorType, inferred by the op's spec when the node is added.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .dtypes import DType, as_dtype
from .errors import GraphError
from .op_spec import REQUIRED, get_op
from .tensor_type import TensorType

SOURCE_OPS = ("input", "parameter", "constant")


class Value:
    """One tensor in a graph: produced by `node` as its output number `index`."""

    __slots__ = ("id", "type", "node", "index", "graph")

    def __init__(self, id: int, type: TensorType, node: "Node", index: int, graph: "Graph"):
        self.id, self.type, self.node, self.index, self.graph = id, type, node, index, graph

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.type.shape)

    def __repr__(self) -> str:
        return f"%{self.id}:{self.type}"

    # Operator sugar so model builders read like math.
    def _lift(self, other):
        return other if isinstance(other, Value) else self.graph.scalar(other, self.dtype)

    def __add__(self, o): return self.graph.add(self, self._lift(o))
    def __radd__(self, o): return self.graph.add(self._lift(o), self)
    def __sub__(self, o): return self.graph.sub(self, self._lift(o))
    def __rsub__(self, o): return self.graph.sub(self._lift(o), self)
    def __mul__(self, o): return self.graph.mul(self, self._lift(o))
    def __rmul__(self, o): return self.graph.mul(self._lift(o), self)
    def __truediv__(self, o): return self.graph.div(self, self._lift(o))
    def __rtruediv__(self, o): return self.graph.div(self._lift(o), self)
    def __neg__(self): return self.graph.neg(self)
    def __matmul__(self, o): return self.graph.matmul(self, o)

    __hash__ = object.__hash__


@dataclass(eq=False)
class Node:
    id: int
    op: str
    inputs: list  # list[Value | None | list[Value]]
    attrs: dict[str, Any]
    outputs: list[Value] = field(default_factory=list)
    name: str | None = None

    def flat_inputs(self) -> list[Value]:
        out = []
        for x in self.inputs:
            if isinstance(x, (list, tuple)):
                out.extend(x)
            elif x is not None:
                out.append(x)
        return out

    def describe(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"node #{self.id} ({self.op}{label})"


class Graph:
    """A static, typed computation graph built one op at a time.

    >>> g = Graph(); x = g.input("x", (2, 3)); g.output("y", g.relu(x))
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nodes: list[Node] = []
        self.outputs: dict[str, Value] = {}
        self._ids = itertools.count()
        self._names: dict[str, Node] = {}
        self._scalars: dict[tuple, Value] = {}

    def __getstate__(self) -> dict:
        """Pickled with its id counter as a number (the compile cache stores optimized graphs)."""
        state = dict(self.__dict__)
        nxt = next(self._ids)
        self._ids = itertools.count(nxt)
        state["_ids"] = nxt
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._ids = itertools.count(state["_ids"])

    # ---- sources -------------------------------------------------------
    def input(self, name: str, shape: Sequence[int], dtype="float32") -> Value:
        return self._source("input", name, TensorType(tuple(shape), as_dtype(dtype)))

    def parameter(self, name: str, shape: Sequence[int], dtype="float32") -> Value:
        return self._source("parameter", name, TensorType(tuple(shape), as_dtype(dtype)))

    def state(self, name: str, shape: Sequence[int], dtype="float32") -> Value:
        """A buffer that persists across runs (a KV cache, weights being trained, optimizer moments).

        It is read like an input; `assign` sets its value after the run. In the IR a state is
        an input with an output of the same name; runs do not pass it, its compiled graph keeps it
        where its backend lives (see CompiledGraph's state methods)."""
        return self.input(name, shape, dtype)

    def assign(self, state: Value, value: Value) -> Value:
        """Make `value` the state's content after the run (in place when the planner can)."""
        node = state.node if isinstance(state, Value) else None
        if node is None or node.op != "input" or state.graph is not self:
            raise GraphError(f"assign: {state!r} is not a state (an input) of this graph")
        if not isinstance(value, Value) or value.type != state.type:
            raise GraphError(f"assign to state {node.name!r}: value {value!r} must have the state's type {state.type}")
        return self.output(node.name, value)

    @property
    def states(self) -> dict[str, tuple[Value, Value]]:
        """State name -> (value read, value assigned): the inputs that have an output of the same name."""
        return {n: (v, self.outputs[n]) for n, v in self.inputs.items() if n in self.outputs}

    def constant(self, value, dtype=None, name: str | None = None) -> Value:
        arr = np.asarray(value, dtype=as_dtype(dtype).np_dtype if dtype is not None else None)
        as_dtype(arr.dtype)  # raises for unsupported dtypes
        node = self._new_node("constant", [], {"value": arr}, name)
        return self._add_outputs(node, [TensorType(arr.shape, as_dtype(arr.dtype))])[0]

    def scalar(self, value, dtype="float32") -> Value:
        """A 0-d constant, shared between uses so CSE has nothing to do."""
        dt = as_dtype(dtype)
        key = (float(value) if dt.is_float else value, dt.name)
        if key not in self._scalars:
            self._scalars[key] = self.constant(np.asarray(value, dtype=dt.np_dtype))
        return self._scalars[key]

    def _source(self, kind: str, name: str, ttype: TensorType) -> Value:
        if not isinstance(name, str) or not name:
            raise GraphError(f"{kind} needs a non-empty string name, got {name!r}")
        node = self._new_node(kind, [], {}, name)
        return self._add_outputs(node, [ttype])[0]

    # ---- ops -------------------------------------------------------------
    def op(self, opname: str, *inputs, name: str | None = None, **attrs):
        """Add a node for a registered op; returns its Value, or a tuple for multi-output ops."""
        try:
            spec = get_op(opname)
        except KeyError as e:
            raise GraphError(e.args[0]) from None
        full_attrs = self._resolve_attrs(spec, attrs, opname)
        ins = self._bind_inputs(spec, list(inputs))
        node = self._new_node(opname, ins, full_attrs, name)
        try:
            types = self._infer(node)
        except Exception:
            self.nodes.pop()  # a failed op leaves the graph as it was
            raise
        outs = self._add_outputs(node, types)
        return outs[0] if len(outs) == 1 and spec.outputs_for(full_attrs) == 1 else tuple(outs)

    def __getattr__(self, opname: str):
        if opname.startswith("_"):
            raise AttributeError(opname)
        try:
            get_op(opname)
        except KeyError:
            raise AttributeError(f"Graph has no method or op named {opname!r}") from None
        return lambda *inputs, **attrs: self.op(opname, *inputs, **attrs)

    def output(self, name: str, value: Value) -> Value:
        if not isinstance(value, Value) or value.graph is not self:
            raise GraphError(f"output {name!r} must be a Value of this graph, got {value!r}")
        if name in self.outputs:
            raise GraphError(f"output {name!r} defined twice")
        self.outputs[name] = value
        return value

    # ---- queries ---------------------------------------------------------
    def sources(self, kind: str) -> dict[str, Value]:
        return {n.name: n.outputs[0] for n in self.nodes if n.op == kind}

    @property
    def inputs(self) -> dict[str, Value]:
        return self.sources("input")

    @property
    def parameters(self) -> dict[str, Value]:
        return self.sources("parameter")

    def compute_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op not in SOURCE_OPS]

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes, outputs={list(self.outputs)})"

    def dump(self) -> str:
        """A readable listing, one node per line."""
        lines = []
        for n in self.nodes:
            ins = ", ".join(_fmt_input(x) for x in n.inputs)
            attrs = {k: v for k, v in n.attrs.items() if k != "value"}
            outs = ", ".join(repr(o) for o in n.outputs)
            label = f" {n.name}" if n.name else ""
            lines.append(f"{outs} = {n.op}{label}({ins}) {attrs if attrs else ''}".rstrip())
        lines.append("return " + ", ".join(f"{k}={v!r}" for k, v in self.outputs.items()))
        return "\n".join(lines)

    # ---- verification ----------------------------------------------------
    def verify(self) -> None:
        """Re-check every node: inputs defined before use, types as the spec infers, names unique."""
        defined: set[int] = set()
        names: dict[str, Node] = {}
        for node in self.nodes:
            if node.op in SOURCE_OPS:
                if node.op != "constant":
                    if node.name in names:
                        raise GraphError(f"{node.describe()}: name {node.name!r} already used by {names[node.name].describe()}")
                    names[node.name] = node
            else:
                try:
                    spec = get_op(node.op)
                except KeyError as e:
                    raise GraphError(f"{node.describe()}: {e.args[0]}") from None
                for v in node.flat_inputs():
                    if v.id not in defined or v.graph is not self:
                        raise GraphError(f"{node.describe()}: input {v!r} is not defined before this node")
                types = self._infer(node)
                found = [o.type for o in node.outputs]
                if list(types) != found:
                    raise GraphError(
                        f"{node.describe()}: outputs have types {[str(t) for t in found]}, "
                        f"but op {spec.name!r} infers {[str(t) for t in types]}")
            defined.update(o.id for o in node.outputs)
        for name, v in self.outputs.items():
            if v.id not in defined:
                raise GraphError(f"output {name!r} refers to {v!r}, which no node defines")
            if name in names and names[name].op == "input" and names[name].outputs[0].type != v.type:
                raise GraphError(f"state {name!r}: assigned {v!r}, expected its type {names[name].outputs[0].type}")

    # ---- internals -------------------------------------------------------
    def _new_node(self, op, inputs, attrs, name) -> Node:
        if name is not None and op in ("input", "parameter"):
            if name in self._names:
                raise GraphError(f"{op} name {name!r} already used by {self._names[name].describe()}")
        node = Node(next(self._ids), op, inputs, attrs, [], name)
        if name is not None and op in ("input", "parameter"):
            self._names[name] = node
        self.nodes.append(node)
        return node

    def _add_outputs(self, node: Node, types) -> list[Value]:
        node.outputs = [Value(next(self._ids), t, node, i, self) for i, t in enumerate(types)]
        return node.outputs

    def _resolve_attrs(self, spec, attrs: dict, opname: str) -> dict:
        unknown = set(attrs) - set(spec.attrs)
        if unknown:
            raise GraphError(f"op {opname!r}: unknown attribute(s) {sorted(unknown)}; expected {sorted(spec.attrs)}")
        out = {}
        for k, default in spec.attrs.items():
            if k in attrs:
                out[k] = _normalize_attr(attrs[k])
            elif default is REQUIRED:
                raise GraphError(f"op {opname!r}: missing required attribute {k!r}")
            else:
                out[k] = default
        return out

    def _bind_inputs(self, spec, inputs: list) -> list:
        names = spec.inputs
        if spec.variadic:
            # exactly one variadic input: the only one (concat) takes all values
            if len(names) != 1:
                raise GraphError(f"op {spec.name!r}: variadic ops take a single input list")
            vals = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) else inputs
            if not vals:
                raise GraphError(f"op {spec.name!r}: needs at least one input")
            for v in vals:
                self._check_value(spec, names[0], v)
            return [list(vals)]
        required = [n for n in names if not n.endswith("?")]
        if not (len(required) <= len(inputs) <= len(names)):
            raise GraphError(f"op {spec.name!r}: expected inputs {list(names)}, got {len(inputs)} value(s)")
        inputs = inputs + [None] * (len(names) - len(inputs))
        for n, v in zip(names, inputs):
            if v is None:
                if not n.endswith("?"):
                    raise GraphError(f"op {spec.name!r}: input {n!r} is required")
                continue
            self._check_value(spec, n, v)
        return inputs

    def _check_value(self, spec, name, v):
        if not isinstance(v, Value):
            raise GraphError(f"op {spec.name!r}: input {name!r} must be a Value, got {type(v).__name__}")
        if v.graph is not self:
            raise GraphError(f"op {spec.name!r}: input {name!r} ({v!r}) belongs to another graph")

    def _infer(self, node: Node) -> list[TensorType]:
        spec = get_op(node.op)
        in_types = [([v.type for v in x] if isinstance(x, list) else (x.type if x is not None else None))
                    for x in node.inputs]
        try:
            result = spec.infer(in_types, node.attrs)
        except GraphError as e:
            raise GraphError(f"{node.describe()}: {e}") from None
        types = [result] if isinstance(result, TensorType) else list(result)
        return types


def _normalize_attr(v):
    if isinstance(v, DType):
        return v.name
    if isinstance(v, tuple):
        return [_normalize_attr(x) for x in v]
    if isinstance(v, list):
        return [_normalize_attr(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _fmt_input(x) -> str:
    if x is None:
        return "None"
    if isinstance(x, list):
        return "[" + ", ".join(repr(v) for v in x) + "]"
    return repr(x)


def iter_values(nodes: Iterable[Node]):
    for n in nodes:
        yield from n.outputs
