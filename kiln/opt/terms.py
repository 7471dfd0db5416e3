"""Graph <-> egglog terms.

`encode` writes a graph as egglog facts: every value `%i` becomes the e-class of
`(V i)`, unioned with the term of the op that computes it, plus its shape facts
(`Shp`, `Rank`, `LastDim`, ...) that rule conditions read. Ops the rules know get
their own constructor; any other op (conv, gather, ops added later) becomes an opaque
`(Op k args)` whose descriptor k (op name + attributes, interned so equal nodes
hash-cons into one e-class) stays on the Python side.

`enode_op` maps an extracted e-node back to (op name, attributes, inputs), the one
table both type inference during extraction and graph rebuilding use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.ir import Graph, Node, TensorType, Value
from kiln.ir.shapes import norm_axes, norm_axis

UNARY = {"exp": "Exp", "sqrt": "Sqrt", "rsqrt": "Rsqrt", "tanh": "Tanh", "erf": "Erf", "sigmoid": "Sigmoid",
         "neg": "Neg", "relu": "Relu", "silu": "Silu"}
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow"}
CTOR_UNARY = {v: k for k, v in UNARY.items()}
CTOR_BINARY = {v: k for k, v in BINARY.items()}
LAST_AXIS_REDUCTIONS = ("sum", "mean", "max")

# Constructors that are glue, not ops: they cost nothing and build no node.
GLUE = ("Src", "Const", "NoneT", "ANil", "ACons", "Out")


@dataclass
class Opaque:
    """An op the rules do not look into: its name, attributes and input layout."""
    op: str
    attrs: dict
    layout: tuple  # per input slot: None (absent), 1 (one value) or ("list", n)
    num_outputs: int


@dataclass
class Encoding:
    """What `encode` hands to the rest of the optimizer besides the egglog text."""
    facts: list[str]
    sources: dict[int, Node]              # Src/Const key -> source node of the input graph
    opaque: list[Opaque]                  # Op key -> descriptor
    value_types: dict[int, TensorType]    # V index (value id) -> type
    perms: dict[int, set] = field(default_factory=dict)
    dtypes: set = field(default_factory=set)
    param_keys: set = field(default_factory=set)   # source keys whose values are known at load time
    input_keys: set = field(default_factory=set)


def f64(x: float) -> str:
    """A float literal egglog parses as f64 (always with a '.' or an exponent)."""
    s = repr(float(x))
    return s if ("." in s or "e" in s) else s + ".0"


def _shape_str(shape) -> str:
    return ",".join(str(int(d)) for d in shape)


def _b(flag) -> str:
    return "true" if flag else "false"


def encode(graph: Graph) -> Encoding:
    enc = Encoding([], {}, [], {})
    opaque_keys: dict[Any, int] = {}
    facts = enc.facts
    for node in graph.nodes:
        if node.op in ("input", "parameter", "constant"):
            facts.append(f"(union (V {node.outputs[0].id}) {_source_term(node, enc)})")
        else:
            term = _encode_op(node, enc)
            if term is None:
                term = _opaque_term(node, enc, opaque_keys)
            outs = node.outputs
            if len(outs) == 1 and not isinstance(term, list):
                facts.append(f"(union (V {outs[0].id}) {term})")
            else:
                for i, o in enumerate(outs):
                    facts.append(f"(union (V {o.id}) (Out {i} {term}))")
        for o in node.outputs:
            _type_facts(o, enc)
    return enc


def _ref(v: Value | None) -> str:
    return "(NoneT)" if v is None else f"(V {v.id})"


def _source_term(node: Node, enc: Encoding) -> str:
    key = node.id
    enc.sources[key] = node
    v = node.outputs[0]
    if node.op == "input":
        enc.input_keys.add(key)
        return f"(Src {key})"
    enc.param_keys.add(key)
    if node.op == "parameter" and v.ndim == 2:
        enc.facts += [f"(set (MaxSrc (Src {key})) {key})", f"(set (Rows (Src {key})) {v.shape[0]})",
                      f"(set (NCat (Src {key})) 1)"]
    if node.op == "constant":
        arr = node.attrs["value"]
        if arr.size == 1 and v.dtype.is_float and math.isfinite(float(arr.reshape(-1)[0])):
            return f"(Const {f64(arr.reshape(-1)[0])} {key})"
    return f"(Src {key})"


def _type_facts(v: Value, enc: Encoding) -> None:
    enc.value_types[v.id] = v.type
    r = f"(V {v.id})"
    f = enc.facts
    f.append(f'(set (Shp {r}) "{_shape_str(v.shape)}")')
    f.append(f"(set (Rank {r}) {v.ndim})")
    if v.ndim:
        f.append(f"(set (LastDim {r}) {v.shape[-1]})")
    if v.ndim == 4:
        f.append(f"(set (B4 {r}) {v.shape[0]})")
        f.append(f'(set (BH4 {r}) "{v.shape[0]},{v.shape[1]}")')
    f.append(f'(set (DT {r}) "{v.dtype.name}")')
    enc.dtypes.add(v.dtype.name)


def _encode_op(node: Node, enc: Encoding) -> str | None:
    """The specific constructor term for ops the rules know; None means opaque."""
    op, a, ins = node.op, node.attrs, node.inputs
    if op in UNARY:
        return f"({UNARY[op]} {_ref(ins[0])})"
    if op in BINARY:
        return f"({BINARY[op]} {_ref(ins[0])} {_ref(ins[1])})"
    if op == "gelu":
        return f'(Gelu "{a["approximate"]}" {_ref(ins[0])})'
    if op == "swiglu":
        return f"(Swiglu {_ref(ins[0])} {_ref(ins[1])})"
    if op == "geglu":
        return f'(Geglu "{a["approximate"]}" {_ref(ins[0])} {_ref(ins[1])})'
    if op in LAST_AXIS_REDUCTIONS:
        rank = ins[0].ndim
        if rank and a["keepdims"] and norm_axes(a["axes"], rank) == [rank - 1]:
            return f'(RedLast "{op}" {_ref(ins[0])})'
        return None
    if op == "softmax":
        x = ins[0]
        return f"(Softmax {_ref(x)})" if norm_axis(a["axis"], x.ndim) == x.ndim - 1 else None
    if op == "rms_norm":
        return f"(RmsNorm {f64(a['eps'])} {_b(a['add_unit_offset'])} {_ref(ins[0])} {_ref(ins[1])})"
    if op == "layer_norm":
        return f"(LayerNorm {f64(a['eps'])} {_ref(ins[0])} {_ref(ins[1])} {_ref(ins[2])})"
    if op == "matmul":
        return f"(MatMul {_b(a['transpose_a'])} {_b(a['transpose_b'])} {_ref(ins[0])} {_ref(ins[1])})"
    if op == "linear":
        return lin_term("none", "none", 0.0, False, *[_ref(v) for v in ins], "(NoneT)", "(NoneT)", "(NoneT)")
    if op == "fused_linear":
        x, w, b, r, nw, nb = ins
        eps = a["eps"] if a["norm"] != "none" else 0.0
        unit = a["add_unit_offset"] if a["norm"] == "rms_norm" else False
        return lin_term(a["activation"], a["norm"], eps, unit, *[_ref(v) for v in (x, w, b, r, nw, nb)])
    if op == "attention":
        if a["window"] is not None or a["softcap"] is not None:
            return None
        q = ins[0]
        scale = q.shape[-1] ** -0.5 if a["scale"] is None else a["scale"]
        return f"(Attn {f64(scale)} {_b(a['causal'])} {' '.join(_ref(v) for v in ins)})"
    if op == "transpose":
        x = ins[0]
        perm = tuple(norm_axis(p, x.ndim) for p in a["perm"])
        enc.perms.setdefault(x.ndim, set()).add(perm)
        return f'(Transpose "{_shape_str(perm)}" {_ref(x)})'
    if op == "reshape":
        return f'(Reshape "{_shape_str(node.outputs[0].shape)}" {_ref(ins[0])})'
    if op == "broadcast_to":
        return f'(BroadcastTo "{_shape_str(a["shape"])}" {_ref(ins[0])})'
    if op == "cast":
        return f'(Cast "{node.outputs[0].dtype.name}" {_ref(ins[0])})'
    if op == "repeat_interleave":
        x = ins[0]
        if x.ndim == 4 and norm_axis(a["axis"], 4) == 1:
            return f"(RepeatKV {a['repeats']} {_ref(x)})"
        return None
    if op == "slice":
        x = ins[0]
        steps = a["steps"] or [1] * len(a["axes"])
        if x.ndim and len(a["axes"]) == 1 and norm_axis(a["axes"][0], x.ndim) == x.ndim - 1 and steps[0] == 1:
            r = range(x.shape[-1])[slice(a["starts"][0], a["ends"][0])]
            if len(r) and r.step == 1:
                return f"(SliceLast {r.start} {r.stop} {_ref(x)})"
        return None
    if op == "concat":
        xs = ins[0]
        if len(xs) == 2 and norm_axis(a["axis"], xs[0].ndim) == 0:
            return f"(Cat0 {_ref(xs[0])} {_ref(xs[1])})"
        return None
    return None


def lin_term(act, norm, eps, unit, x, w, b, r, nw, nb) -> str:
    return f'(Lin "{act}" "{norm}" {f64(eps)} {_b(unit)} {x} {w} {b} {r} {nw} {nb})'


def _opaque_term(node: Node, enc: Encoding, keys: dict) -> str:
    layout, flat = [], []
    for x in node.inputs:
        if x is None:
            layout.append(None)
        elif isinstance(x, list):
            layout.append(("list", len(x)))
            flat.extend(x)
        else:
            layout.append(1)
            flat.append(x)
    key = _attrs_key(node.op, node.attrs, tuple(layout))
    if key is None or key not in keys:
        idx = len(enc.opaque)
        enc.opaque.append(Opaque(node.op, dict(node.attrs), tuple(layout), len(node.outputs)))
        if key is not None:
            keys[key] = idx
    else:
        idx = keys[key]
    args = "(ANil)"
    for v in reversed(flat):
        args = f"(ACons {_ref(v)} {args})"
    return f"(Op {idx} {args})"


def _attrs_key(op: str, attrs: dict, layout: tuple):
    """A hashable key of an op's attributes, or None when they cannot be compared safely (arrays)."""
    def freeze(v):
        if isinstance(v, np.ndarray):
            raise TypeError
        if isinstance(v, (list, tuple)):
            return tuple(freeze(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted((k, freeze(x)) for k, x in v.items()))
        hash(v)
        return (type(v).__name__, v)
    try:
        return (op, freeze(attrs), layout)
    except TypeError:
        return None


# ---- e-node -> op ---------------------------------------------------------------------

def enode_op(ctor: str, prims: tuple, kid_is_none: tuple, enc: Encoding):
    """(op name, attrs, input slots) for an e-node; a slot is a child index, None, or a list of them.

    `prims` are the primitive arguments (numbers, strings, bools) in order; `kid_is_none[i]`
    says whether child i is the absent-input class `(NoneT)`. Returns None for glue
    constructors (Src, Const, NoneT, Out, argument lists).
    """
    if ctor in CTOR_UNARY:
        return CTOR_UNARY[ctor], {}, [0]
    if ctor in CTOR_BINARY:
        return CTOR_BINARY[ctor], {}, [0, 1]
    if ctor == "Gelu":
        return "gelu", {"approximate": prims[0]}, [0]
    if ctor == "Swiglu":
        return "swiglu", {}, [0, 1]
    if ctor == "Geglu":
        return "geglu", {"approximate": prims[0]}, [0, 1]
    if ctor == "RedLast":
        return prims[0], {"axes": [-1], "keepdims": True}, [0]
    if ctor == "Softmax":
        return "softmax", {"axis": -1}, [0]
    if ctor == "RmsNorm":
        return "rms_norm", {"eps": prims[0], "add_unit_offset": prims[1]}, [0, 1]
    if ctor == "LayerNorm":
        return "layer_norm", {"eps": prims[0]}, [0, 1, 2]
    if ctor == "MatMul":
        return "matmul", {"transpose_a": prims[0], "transpose_b": prims[1]}, [0, 1]
    if ctor == "Lin":
        act, norm, eps, unit = prims
        if act == "none" and norm == "none" and kid_is_none[3]:
            return "linear", {}, [0, 1, 2]
        attrs = {"activation": act, "norm": norm, "eps": eps if norm != "none" else 1e-5,
                 "add_unit_offset": unit}
        return "fused_linear", attrs, [0, 1, 2, 3, 4, 5]
    if ctor == "Attn":
        return "attention", {"scale": prims[0], "causal": prims[1]}, [0, 1, 2, 3]
    if ctor == "Transpose":
        return "transpose", {"perm": [int(p) for p in prims[0].split(",")] if prims[0] else []}, [0]
    if ctor in ("Reshape", "BroadcastTo"):
        shape = [int(d) for d in prims[0].split(",")] if prims[0] else []
        return ("reshape" if ctor == "Reshape" else "broadcast_to"), {"shape": shape}, [0]
    if ctor == "Cast":
        return "cast", {"dtype": prims[0]}, [0]
    if ctor == "RepeatKV":
        return "repeat_interleave", {"repeats": prims[0], "axis": 1}, [0]
    if ctor == "SliceLast":
        return "slice", {"axes": [-1], "starts": [prims[0]], "ends": [prims[1]], "steps": None}, [0]
    if ctor == "Cat0":
        return "concat", {"axis": 0}, [[0, 1]]
    if ctor == "Op":
        d = enc.opaque[prims[0]]
        slots, i = [], 0
        for item in d.layout:
            if item is None:
                slots.append(None)
            elif item == 1:
                slots.append(i)
                i += 1
            else:
                slots.append(list(range(i, i + item[1])))
                i += item[1]
        return d.op, dict(d.attrs), slots
    return None


# ---- selection -> Graph ---------------------------------------------------------------

def decode(source: Graph, enc: Encoding, nodes: list, sel: list[int], roots: dict[str, int],
           types: list, none_class: int) -> Graph:
    """Rebuild a Graph from the chosen e-node of each class reachable from the outputs.

    Inputs and parameters keep their names and order (unused ones too, so callers can
    still bind every name). Last-axis slices that tile one value become a single split.
    """
    g = Graph(source.name)
    src_vals: dict[int, Value] = {}
    for node in source.nodes:
        if node.op in ("input", "parameter"):
            v = node.outputs[0]
            src_vals[node.id] = getattr(g, "input" if node.op == "input" else "parameter")(
                node.name, v.shape, v.dtype)
    splits = _split_groups(nodes, sel, list(roots.values()), types)
    done: dict[int, Any] = {}

    def chosen(c):
        return nodes[sel[c]]

    def deps(c) -> list[int]:
        n = chosen(c)
        if n.ctor == "Cat0":
            return [k for k in _cat_leaves(c, chosen)]
        if n.ctor == "SliceLast" and n.kids[0] in splits:
            return [n.kids[0]]
        return list(n.kids)

    for r in roots.values():
        stack = [(r, False)]
        while stack:
            c, expanded = stack.pop()
            if c in done:
                continue
            if not expanded:
                stack.append((c, True))
                stack.extend((k, False) for k in deps(c) if k not in done)
                continue
            done[c] = _build(g, c, chosen(c), done, enc, src_vals, splits, none_class, chosen)
    for name, c in roots.items():
        g.output(name, done[c])
    return g


def _cat_leaves(c, chosen) -> list[int]:
    n = chosen(c)
    if n.ctor != "Cat0":
        return [c]
    return _cat_leaves(n.kids[0], chosen) + _cat_leaves(n.kids[1], chosen)


def _split_groups(nodes, sel, roots, types) -> dict[int, list[int]]:
    """value class -> split sizes, where the selected last-axis slices of it tile it exactly."""
    ranges: dict[int, set] = {}
    seen, stack = set(), list(roots)
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        n = nodes[sel[c]]
        if n.ctor == "SliceLast":
            ranges.setdefault(n.kids[0], set()).add((n.prims[0], n.prims[1]))
        stack.extend(n.kids)
    out = {}
    for c, rs in ranges.items():
        t = types[c]
        if len(rs) < 2 or not isinstance(t, TensorType) or not t.rank:
            continue
        rs = sorted(rs)
        if rs[0][0] == 0 and rs[-1][1] == t.shape[-1] and all(a[1] == b[0] for a, b in zip(rs, rs[1:])):
            out[c] = [e - s for s, e in rs]
    return out


def _build(g: Graph, c, n, done, enc: Encoding, src_vals, splits, none_class, chosen):
    ctor = n.ctor
    if ctor in ("Src", "Const"):
        key = n.prims[-1]
        if key not in src_vals:
            node = enc.sources[key]
            src_vals[key] = g.constant(node.attrs["value"], name=node.name)
        return src_vals[key]
    if ctor == "NoneT":
        return None
    if ctor == "ANil":
        return []
    if ctor == "ACons":
        return [done[n.kids[0]]] + done[n.kids[1]]
    if ctor == "Out":
        return done[n.kids[0]][n.prims[0]]
    if ctor == "Cat0":
        return g.concat([done[k] for k in _cat_leaves(c, chosen)], axis=0)
    if ctor == "SliceLast" and n.kids[0] in splits:
        base = n.kids[0]
        key = ("split", base)
        if key not in done:
            sizes = splits[base]
            parts = g.split(done[base], sizes=sizes, axis=-1)
            done[key] = (parts if isinstance(parts, tuple) else (parts,), [sum(sizes[:i]) for i in range(len(sizes))])
        parts, starts = done[key]
        return parts[starts.index(n.prims[0])]
    op, attrs, slots = enode_op(ctor, n.prims, tuple(k == none_class for k in n.kids), enc)
    if ctor == "Op":
        flat = done[n.kids[0]]
    else:
        flat = [done[k] for k in n.kids]
    args = []
    for s in slots:
        if s is None:
            args.append(None)
        elif isinstance(s, list):
            args.append([flat[i] for i in s])
        else:
            args.append(flat[s])
    while args and args[-1] is None:
        args.pop()
    return g.op(op, *args, **attrs)
