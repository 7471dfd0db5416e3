"""Graph <-> egglog terms.

`encode` turns a graph into rows of plain tables (value id, op, child ids, attributes,
shape facts), which egglog reads in bulk with `(input ...)` and the `seed` rules turn
into terms: every value `%i` becomes the e-class of `(V i)`, unioned with the term of
the op that computes it, plus the shape facts (`Shp`, `Rank`, `LastDim`, ...) that rule
conditions read. Bulk tables matter: one egglog command per fact costs ~40 us, which is
half a second on a 30-layer model; the tables load in milliseconds.

Ops the rules know get their own constructor; any other op (conv, gather, ops added
later) becomes an opaque `(Op k args)` whose descriptor k (op name + attributes,
interned so equal nodes hash-cons into one e-class) stays on the Python side.

`enode_op` maps an extracted e-node back to (op name, attributes, inputs), the one
table both type inference during extraction and graph rebuilding use; `decode` rebuilds
a Graph from the chosen e-nodes.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any

from kiln.ir import Graph, Node, TensorType, Value
from kiln.ir.shapes import norm_axes, norm_axis

from .attr_key import node_key

UNARY = {"exp": "Exp", "sqrt": "Sqrt", "rsqrt": "Rsqrt", "tanh": "Tanh", "erf": "Erf", "sigmoid": "Sigmoid",
         "neg": "Neg", "relu": "Relu", "silu": "Silu", "softmax": "Softmax"}
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "swiglu": "Swiglu"}
CTOR_UNARY = {v: k for k, v in UNARY.items() if k != "softmax"}
CTOR_BINARY = {v: k for k, v in BINARY.items() if k != "swiglu"}
STRING_UNARY = ("Gelu", "Transpose", "Reshape", "BroadcastTo", "Cast", "RedLast")
LAST_AXIS_REDUCTIONS = ("sum", "mean", "max")
NONE_ID = -1  # (V -1) is (NoneT); (L -1) is (ANil)

# Constructors that are glue, not ops: they cost nothing and build no node.
GLUE = ("Src", "Const", "NoneT", "ANil", "ACons", "Out")

# table name -> egglog column sorts (the last one is the function's output)
TABLES = {
    "SrcRow": ("i64", "i64"), "ConstRow": ("i64", "f64", "i64"), "ParamRow": ("i64", "i64"),
    "UnRow": ("i64", "String", "i64"), "BinRow": ("i64", "String", "i64", "i64"),
    "SUnRow": ("i64", "String", "String", "i64"), "GegluRow": ("i64", "String", "i64", "i64"),
    "RepRow": ("i64", "i64", "i64"), "SliceRow": ("i64", "i64", "i64", "i64"), "CatRow": ("i64", "i64", "i64"),
    "MmRow": ("i64", "i64", "i64", "i64", "i64"), "RmsRow": ("i64", "f64", "i64", "i64", "i64"),
    "LnRow": ("i64", "f64", "i64", "i64", "i64"),
    "LinRow": ("i64", "String", "String", "f64", "i64", "i64", "i64", "i64", "i64", "i64", "i64"),
    "AttnRow": ("i64", "f64", "i64", "i64", "i64", "i64", "i64"),
    "OpRow": ("i64", "i64", "i64"), "ConsRow": ("i64", "i64", "i64"), "OutRow": ("i64", "i64", "i64"),
    "ShpRow": ("i64", "String"), "RankRow": ("i64", "i64"), "LastRow": ("i64", "i64"), "DtRow": ("i64", "String"),
    "B4Row": ("i64", "i64"), "BH4Row": ("i64", "String"),
}


def _b(flag) -> str:
    return "true" if flag else "false"


def _seed_rules() -> str:
    """The `seed` ruleset: one pass turns the table rows into terms and shape facts."""
    r = []

    def rule(query, action):
        r.append(f"(rule ({query}) ({action}) :ruleset seed)")

    rule("(= k (SrcRow o))", "(union (V o) (Src k))")
    rule("(= k (ConstRow o c))", "(union (V o) (Const c k))")
    rule("(= n (ParamRow k))", "(set (MaxSrc (Src k)) k) (set (Rows (Src k)) n) (set (NCat (Src k)) 1)")
    for ctor in UNARY.values():
        rule(f'(= x (UnRow o "{ctor}"))', f"(union (V o) ({ctor} (V x)))")
    for ctor in BINARY.values():
        rule(f'(= b (BinRow o "{ctor}" a))', f"(union (V o) ({ctor} (V a) (V b)))")
    for ctor in STRING_UNARY:
        rule(f'(= x (SUnRow o "{ctor}" s))', f"(union (V o) ({ctor} s (V x)))")
    rule("(= b (GegluRow o s a))", "(union (V o) (Geglu s (V a) (V b)))")
    rule("(= x (RepRow o r))", "(union (V o) (RepeatKV r (V x)))")
    rule("(= x (SliceRow o s e))", "(union (V o) (SliceLast s e (V x)))")
    rule("(= b (CatRow o a))", "(union (V o) (Cat0 (V a) (V b)))")
    for ta in (0, 1):
        for tb in (0, 1):
            rule(f"(= b (MmRow o {ta} {tb} a))", f"(union (V o) (MatMul {_b(ta)} {_b(tb)} (V a) (V b)))")
    for u in (0, 1):
        rule(f"(= w (RmsRow o e {u} x))", f"(union (V o) (RmsNorm e {_b(u)} (V x) (V w)))")
        rule(f"(= nb (LinRow o act nrm e {u} x w b r nw))",
             f"(union (V o) (Lin act nrm e {_b(u)} (V x) (V w) (V b) (V r) (V nw) (V nb)))")
        rule(f"(= m (AttnRow o s {u} q k v))", f"(union (V o) (Attn s {_b(u)} (V q) (V k) (V v) (V m)))")
    rule("(= b (LnRow o e x w))", "(union (V o) (LayerNorm e (V x) (V w) (V b)))")
    rule("(= c (OpRow o k))", "(union (V o) (Op k (L c)))")
    rule("(= t (ConsRow c h))", "(union (L c) (ACons (V h) (L t)))")
    rule("(= t (OutRow o i))", "(union (V o) (Out i (V t)))")
    rule("(= s (ShpRow o))", "(set (Shp (V o)) s)")
    rule("(= n (RankRow o))", "(set (Rank (V o)) n)")
    rule("(= n (LastRow o))", "(set (LastDim (V o)) n)")
    rule("(= s (DtRow o))", "(set (DT (V o)) s)")
    rule("(= n (B4Row o))", "(set (B4 (V o)) n)")
    rule("(= s (BH4Row o))", "(set (BH4 (V o)) s)")
    return "\n".join(r)


SEED_PROGRAM = (
    "(constructor L (i64) Args :unextractable)\n"
    + "".join(f"(function {name} ({' '.join(cols[:-1])}) {cols[-1]} :no-merge)\n" for name, cols in TABLES.items())
    + "(ruleset seed)\n" + _seed_rules() + "\n"
    + f"(union (V {NONE_ID}) (NoneT))\n(union (L {NONE_ID}) (ANil))\n"
)


@dataclass
class Opaque:
    """An op the rules do not look into: its name, attributes and input layout."""
    op: str
    attrs: dict
    layout: tuple  # per input slot: None (absent), 1 (one value) or ("list", n)
    num_outputs: int


@dataclass
class Encoding:
    """A graph as table rows, plus what extraction and decoding need on the Python side."""
    rows: dict[str, list[tuple]]
    sources: dict[int, Node]              # Src/Const key -> source node of the input graph
    opaque: list[Opaque]                  # Op key -> descriptor
    value_types: dict[int, TensorType]    # V index (value id) -> type
    perms: dict[int, set] = field(default_factory=dict)
    dtypes: set = field(default_factory=set)
    param_keys: set = field(default_factory=set)   # source keys whose values are known at load time
    input_keys: set = field(default_factory=set)

    def write_tables(self, folder: str) -> str:
        """Write the rows as TSV files; returns the egglog commands that load them."""
        cmds = []
        for name, rows in self.rows.items():
            if not rows:
                continue
            path = os.path.join(folder, f"{name}.tsv")
            with open(path, "w") as f:
                f.write("\n".join("\t".join(map(_cell, r)) for r in rows))
                f.write("\n")
            cmds.append(f'(input {name} "{path}")')
        return "\n".join(cmds)


def _cell(x) -> str:
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, float):
        return repr(x)
    return str(x)


def f64(x: float) -> str:
    """A float literal egglog parses as f64 (always with a '.' or an exponent)."""
    s = repr(float(x))
    return s if ("." in s or "e" in s or "n" in s) else s + ".0"


def shape_str(shape) -> str:
    """Shapes and permutations as egglog strings: "[2,3]", "[]" for a scalar."""
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def parse_shape(s: str) -> list[int]:
    inner = s[1:-1]
    return [int(d) for d in inner.split(",")] if inner else []


def encode(graph: Graph) -> Encoding:
    enc = Encoding({name: [] for name in TABLES}, {}, [], {})
    opaque_keys: dict[Any, int] = {}
    next_id = [max((o.id for n in graph.nodes for o in n.outputs), default=0) + 1]
    for node in graph.nodes:
        if node.op in ("input", "parameter", "constant"):
            _encode_source(node, enc)
        elif not _encode_op(node, enc):
            _encode_opaque(node, enc, opaque_keys, next_id)
        for o in node.outputs:
            _type_rows(o, enc)
    return enc


def _id(v: Value | None) -> int:
    return NONE_ID if v is None else v.id


def _encode_source(node: Node, enc: Encoding) -> None:
    key = node.id
    enc.sources[key] = node
    v = node.outputs[0]
    rows = enc.rows
    if node.op == "input":
        enc.input_keys.add(key)
        rows["SrcRow"].append((v.id, key))
        return
    enc.param_keys.add(key)
    if node.op == "parameter" and v.ndim == 2:
        rows["ParamRow"].append((key, v.shape[0]))
    if node.op == "constant":
        arr = node.attrs["value"]
        if arr.size == 1 and v.dtype.is_float and math.isfinite(float(arr.reshape(-1)[0])):
            rows["ConstRow"].append((v.id, float(arr.reshape(-1)[0]), key))
            return
    rows["SrcRow"].append((v.id, key))


def _type_rows(v: Value, enc: Encoding) -> None:
    enc.value_types[v.id] = v.type
    rows = enc.rows
    rows["ShpRow"].append((v.id, shape_str(v.shape)))
    rows["RankRow"].append((v.id, v.ndim))
    if v.ndim:
        rows["LastRow"].append((v.id, v.shape[-1]))
    if v.ndim == 4:
        rows["B4Row"].append((v.id, v.shape[0]))
        rows["BH4Row"].append((v.id, f"{v.shape[0]},{v.shape[1]}"))
    rows["DtRow"].append((v.id, v.dtype.name))
    enc.dtypes.add(v.dtype.name)


def _encode_op(node: Node, enc: Encoding) -> bool:
    """Rows for ops the rules know; False means the op goes in opaque."""
    op, a, ins = node.op, node.attrs, node.inputs
    rows = enc.rows
    if op == "split":  # a split of the last axis is its slices; extraction regroups them
        x = ins[0]
        if not x.ndim or norm_axis(a["axis"], x.ndim) != x.ndim - 1 or any(n == 0 for n in a["sizes"]):
            return False
        start = 0
        for out, n in zip(node.outputs, a["sizes"]):
            rows["SliceRow"].append((out.id, start, start + n, x.id))
            start += n
        return True
    o = node.outputs[0].id if len(node.outputs) == 1 else None
    if o is None:
        return False
    ids = [_id(v) if not isinstance(v, list) else None for v in ins]
    if op in UNARY:
        if op == "softmax" and norm_axis(a["axis"], ins[0].ndim) != ins[0].ndim - 1:
            return False
        rows["UnRow"].append((o, UNARY[op], ids[0]))
    elif op in BINARY:
        rows["BinRow"].append((o, BINARY[op], ids[0], ids[1]))
    elif op == "gelu":
        rows["SUnRow"].append((o, "Gelu", a["approximate"], ids[0]))
    elif op == "geglu":
        rows["GegluRow"].append((o, a["approximate"], ids[0], ids[1]))
    elif op in LAST_AXIS_REDUCTIONS:
        rank = ins[0].ndim
        if not (rank and a["keepdims"] and norm_axes(a["axes"], rank) == [rank - 1]):
            return False
        rows["SUnRow"].append((o, "RedLast", op, ids[0]))
    elif op == "rms_norm":
        rows["RmsRow"].append((o, float(a["eps"]), a["add_unit_offset"], ids[0], ids[1]))
    elif op == "layer_norm":
        rows["LnRow"].append((o, float(a["eps"]), ids[0], ids[1], ids[2]))
    elif op == "matmul":
        rows["MmRow"].append((o, a["transpose_a"], a["transpose_b"], ids[0], ids[1]))
    elif op == "linear":
        rows["LinRow"].append((o, "none", "none", 0.0, False, ids[0], ids[1], ids[2], NONE_ID, NONE_ID, NONE_ID))
    elif op == "fused_linear":
        norm = a["norm"]
        eps = float(a["eps"]) if norm != "none" else 0.0
        unit = bool(a["add_unit_offset"]) if norm == "rms_norm" else False
        rows["LinRow"].append((o, a["activation"], norm, eps, unit, *ids))
    elif op == "attention":
        if a["window"] is not None or a["softcap"] is not None:
            return False
        scale = ins[0].shape[-1] ** -0.5 if a["scale"] is None else a["scale"]
        rows["AttnRow"].append((o, float(scale), bool(a["causal"]), *ids))
    elif op == "transpose":
        x = ins[0]
        perm = tuple(norm_axis(p, x.ndim) for p in a["perm"])
        enc.perms.setdefault(x.ndim, set()).add(perm)
        rows["SUnRow"].append((o, "Transpose", shape_str(perm), ids[0]))
    elif op == "reshape":
        rows["SUnRow"].append((o, "Reshape", shape_str(node.outputs[0].shape), ids[0]))
    elif op == "broadcast_to":
        rows["SUnRow"].append((o, "BroadcastTo", shape_str(a["shape"]), ids[0]))
    elif op == "cast":
        rows["SUnRow"].append((o, "Cast", node.outputs[0].dtype.name, ids[0]))
    elif op == "repeat_interleave":
        if not (ins[0].ndim == 4 and norm_axis(a["axis"], 4) == 1):
            return False
        rows["RepRow"].append((o, a["repeats"], ids[0]))
    elif op == "slice":
        x = ins[0]
        steps = a["steps"] or [1] * len(a["axes"])
        if not (x.ndim and len(a["axes"]) == 1 and norm_axis(a["axes"][0], x.ndim) == x.ndim - 1 and steps[0] == 1):
            return False
        r = range(x.shape[-1])[slice(a["starts"][0], a["ends"][0])]
        if not len(r):
            return False
        rows["SliceRow"].append((o, r.start, r.stop, ids[0]))
    elif op == "concat":
        xs = ins[0]
        if not (len(xs) == 2 and norm_axis(a["axis"], xs[0].ndim) == 0):
            return False
        rows["CatRow"].append((o, xs[0].id, xs[1].id))
    else:
        return False
    return True


def _encode_opaque(node: Node, enc: Encoding, keys: dict, next_id: list) -> None:
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
    # the argument list as cons cells with fresh ids; hash-consing merges equal lists
    cell = NONE_ID
    for v in reversed(flat):
        new = next_id[0]
        next_id[0] += 1
        enc.rows["ConsRow"].append((new, v.id, cell))
        cell = new
    if len(node.outputs) == 1:
        enc.rows["OpRow"].append((node.outputs[0].id, idx, cell))
    else:
        tup = next_id[0]
        next_id[0] += 1
        enc.rows["OpRow"].append((tup, idx, cell))
        for i, o in enumerate(node.outputs):
            enc.rows["OutRow"].append((o.id, i, tup))


def _attrs_key(op: str, attrs: dict, layout: tuple):
    """A hashable key of an op's attributes, or None when they cannot be compared safely (arrays)."""
    return node_key(op, attrs, layout)


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
        return "transpose", {"perm": parse_shape(prims[0])}, [0]
    if ctor in ("Reshape", "BroadcastTo"):
        shape = parse_shape(prims[0])
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
        if rs[0][0] == 0 and rs[-1][1] == t.shape[-1] and all(a[1] == b[0] for a, b in itertools.pairwise(rs)):
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
