"""Extraction: pick one e-node per e-class so the program is cheapest as a DAG.

Why not egglog's own extractor: it prices a term as a tree, so a value used three
times is paid three times. That hides the win of one concatenated Q/K/V matmul shared
by three slices, and of keeping a normalized activation that two matmuls read. Here a
child's cost is divided among the parents that share it (first by how many could,
then by how many did in the previous round), each candidate selection is priced as the
real DAG (every chosen e-class paid once), and the cheapest acyclic one wins.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

from kiln.ir import GraphError, TensorType, get_op

from .cost import CostModel
from .rules import SCHEMA
from .terms import GLUE, Encoding, enode_op

INF = math.inf

_CTOR = re.compile(r"\(constructor (\w+) \(([^)]*)\) (\w+)( :unextractable)?\)")
CONSTRUCTORS = {m.group(1): (m.group(2).split(), m.group(3), bool(m.group(4))) for m in _CTOR.finditer(SCHEMA)}
EQ_SORTS = ("T", "Args")


@dataclass
class ENode:
    ctor: str
    prims: tuple
    kids: tuple  # child e-class numbers
    cls: int


class EGraphView:
    """The saturated e-graph as plain Python: e-classes numbered 0..n-1, e-nodes per class."""

    def __init__(self, egraph, enc: Encoding):
        frozen = egraph.freeze()
        self.enc = enc
        class_ids: dict = {}

        def cid(v) -> int:
            i = class_ids.get(v)
            if i is None:
                i = class_ids[v] = len(class_ids)
            return i

        conv = {"i64": egraph.value_to_i64, "f64": egraph.value_to_f64, "String": egraph.value_to_string,
                "bool": egraph.value_to_bool}
        self.nodes: list[ENode] = []
        self.value_class: dict[int, int] = {}
        for name, fn in frozen.functions.items():
            spec = CONSTRUCTORS.get(name)
            if spec is None:
                continue
            sorts, _, unextractable = spec
            if name == "V":
                for row in fn.rows:
                    self.value_class[egraph.value_to_i64(row.inputs[0])] = cid(row.output)
                continue
            if unextractable:
                continue
            for row in fn.rows:
                if row.subsumed:
                    continue
                prims, kids = [], []
                for s, v in zip(sorts, row.inputs):
                    if s in EQ_SORTS:
                        kids.append(cid(v))
                    else:
                        prims.append(conv[s](v))
                self.nodes.append(ENode(name, tuple(prims), tuple(kids), cid(row.output)))
        self.num_classes = len(class_ids)
        self.class_nodes: list[list[int]] = [[] for _ in range(self.num_classes)]
        for i, n in enumerate(self.nodes):
            self.class_nodes[n.cls].append(i)
        self.none_class = next((n.cls for n in self.nodes if n.ctor == "NoneT"), -1)

    def size(self) -> int:
        return len(self.nodes)


class Extractor:
    def __init__(self, view: EGraphView, model: CostModel):
        self.view, self.model = view, model
        self.types: list = [None] * view.num_classes  # TensorType, or list of them for tuple classes
        self._infer_types()
        self.load_time = self._load_time_classes()
        self.node_cost = [self._cost(n) for n in view.nodes]
        self.parents: list[list[int]] = [[] for _ in range(view.num_classes)]
        for i, n in enumerate(view.nodes):
            for k in set(n.kids):
                if k != n.cls:
                    self.parents[k].append(i)

    # ---- analyses -------------------------------------------------------------------
    def _infer_types(self) -> None:
        v, types = self.view, self.types
        for vid, c in v.value_class.items():
            t = v.enc.value_types.get(vid)  # None for (NoneT) and the tuple ids of multi-output ops
            if t is not None:
                types[c] = t
        tuples: dict[int, dict[int, TensorType]] = {}
        for n in v.nodes:
            if n.ctor == "Out" and types[n.cls] is not None:
                tuples.setdefault(n.kids[0], {})[n.prims[0]] = types[n.cls]
        for c, outs in tuples.items():
            types[c] = [outs[i] for i in sorted(outs)]
        # classes the rules created (concatenated weights, their matmul): infer from children
        pending = [i for i, n in enumerate(v.nodes) if types[n.cls] is None and n.ctor not in GLUE]
        changed = True
        while pending and changed:
            changed, rest = False, []
            for i in pending:
                n = v.nodes[i]
                if types[n.cls] is not None:
                    continue
                t = self._infer_node(n)
                if t is None:
                    rest.append(i)
                else:
                    types[n.cls], changed = t, True
            pending = rest

    def _infer_node(self, n: ENode):
        desc = self._op(n)
        if desc is None:
            return None
        op, attrs, slots = desc
        ins = self._slot_types(n, slots)
        if ins is None:
            return None
        spec = get_op(op)
        full = {k: attrs.get(k, d) for k, d in spec.attrs.items()}
        try:
            res = spec.infer(ins, full)
        except (GraphError, ValueError, TypeError, IndexError):
            return None  # not a well-typed alternative; extraction will not pick it
        return res if isinstance(res, TensorType) else list(res)

    def _op(self, n: ENode):
        none = self.view.none_class
        return enode_op(n.ctor, n.prims, tuple(k == none for k in n.kids), self.view.enc)

    def _slot_types(self, n: ENode, slots):
        if n.ctor == "Op":
            flat = self._arg_types(n.kids[0])
            if flat is None:
                return None
        else:
            flat = [self.types[k] for k in n.kids]
        none = self.view.none_class
        kids = n.kids if n.ctor != "Op" else None
        out = []
        for s in slots:
            if s is None or (kids is not None and not isinstance(s, list) and kids[s] == none):
                out.append(None)
            elif isinstance(s, list):
                ts = [flat[i] for i in s]
                if any(t is None or isinstance(t, list) for t in ts):
                    return None
                out.append(ts)
            else:
                t = flat[s]
                if t is None or isinstance(t, list):
                    return None
                out.append(t)
        return out

    def _arg_types(self, args_class: int):
        """Types along an argument list class (ACons chains); None if unknown."""
        out, c, seen = [], args_class, set()
        while c not in seen:
            seen.add(c)
            nodes = [self.view.nodes[i] for i in self.view.class_nodes[c]]
            if any(n.ctor == "ANil" for n in nodes):
                return out
            cons = next((n for n in nodes if n.ctor == "ACons"), None)
            if cons is None:
                return None
            t = self.types[cons.kids[0]]
            out.append(t if cons.kids[0] != self.view.none_class else None)
            c = cons.kids[1]
        return None

    def _load_time_classes(self) -> list[bool]:
        """Classes computable from parameters and constants alone (run once at load time)."""
        v = self.view
        known = [False] * v.num_classes
        enc = v.enc
        changed = True
        while changed:
            changed = False
            for n in v.nodes:
                if known[n.cls]:
                    continue
                if n.ctor in ("Src", "Const"):
                    ok = n.prims[-1] in enc.param_keys
                else:
                    ok = all(known[k] for k in n.kids)
                if ok:
                    known[n.cls] = changed = True
        return known

    def _cost(self, n: ENode) -> float:
        if n.ctor in GLUE:
            return 0.0
        desc = self._op(n)
        if desc is None:
            return 0.0
        op, attrs, slots = desc
        ins = self._slot_types(n, slots) or []
        flat_ins = []
        for t in ins:
            flat_ins.extend(t if isinstance(t, list) else [t])
        out = self.types[n.cls]
        outs = [] if out is None else (out if isinstance(out, list) else [out])
        load = all(self.load_time[k] for k in n.kids)
        return self.model.node_cost(op, attrs, flat_ins, outs, load)

    # ---- extraction -------------------------------------------------------------------
    def _positions(self) -> list[float]:
        """A topological position per class; chosen e-nodes must point to lower positions.

        Classes of original values sit at their value id (ids grow in graph order); classes
        the rules created sit just above the children of their earliest e-node. Requiring
        every chosen e-node's children to sit strictly lower makes any selection acyclic,
        and every class keeps at least one e-node that satisfies it (its original one).
        """
        v = self.view
        pos = [INF] * v.num_classes
        fixed = set()
        for vid, c in v.value_class.items():
            if vid in v.enc.value_types:  # an original value (not NoneT or a multi-output tuple)
                pos[c] = min(pos[c], float(vid))
                fixed.add(c)
        for n in v.nodes:
            if not n.kids:
                pos[n.cls] = -1.0  # sources exist before anything runs, wherever the graph declared them
                fixed.add(n.cls)
        changed = True
        while changed:
            changed = False
            for n in v.nodes:
                if n.cls in fixed:
                    continue
                p = max((pos[k] for k in n.kids), default=-1.0)
                if p != INF and p + 1e-6 < pos[n.cls]:
                    pos[n.cls] = p + 1e-6
                    changed = True
        return pos

    def extract(self, roots: list[int]) -> tuple[list[int], float]:
        """Best node per class (index into view.nodes, -1 if unreachable) and its DAG cost."""
        v = self.view
        pos = self._positions()
        allowed = [all(pos[k] < pos[n.cls] for k in n.kids) for n in v.nodes]
        sel = self._fixpoint(allowed, None, None)
        best_sel, best_cost = sel, self.dag_cost(sel, roots)
        # Sharing: a class already in the DAG costs nothing more to reuse, and a last-axis
        # slice pays for its part of the value it slices (the parts of a concatenated
        # matmul together pay for it once).
        share = self._slice_shares()
        for _ in range(4):
            order, _ = self._reachable(best_sel, roots)
            in_dag = [False] * v.num_classes
            for c in order:
                in_dag[c] = True
            sel = self._fixpoint(allowed, in_dag, share)
            cost = self.dag_cost(sel, roots)
            if cost >= best_cost - 1e-9:
                break
            best_sel, best_cost = sel, cost
        return best_sel, best_cost

    def _slice_shares(self) -> list[float]:
        """Per e-node: the fraction of its (single) child's cost a slice carries; 1 otherwise."""
        out = [1.0] * len(self.view.nodes)
        for i, n in enumerate(self.view.nodes):
            if n.ctor == "SliceLast":
                t = self.types[n.kids[0]]
                if isinstance(t, TensorType) and t.rank and t.shape[-1]:
                    out[i] = (n.prims[1] - n.prims[0]) / t.shape[-1]
        return out

    def _fixpoint(self, allowed: list[bool], in_dag, share) -> list[int]:
        """Cheapest allowed node per class; with `in_dag`, costs are marginal to that DAG."""
        v = self.view
        nodes, ncost, parents = v.nodes, self.node_cost, self.parents
        cost = [INF] * v.num_classes
        best = [-1] * v.num_classes
        queue = deque()
        free = in_dag if in_dag is not None else [False] * v.num_classes
        share = share if share is not None else [1.0] * len(nodes)

        def relax(i: int) -> None:
            n = nodes[i]
            c = 0.0
            for k in n.kids:
                ck = cost[k]
                if ck == INF:
                    return
                if not free[k]:
                    c += ck
            c = ncost[i] + c * share[i]
            if c < cost[n.cls] * (1 - 1e-12) - 1e-15:
                cost[n.cls] = c
                best[n.cls] = i
                queue.append(n.cls)

        for i, n in enumerate(nodes):
            if not n.kids and allowed[i]:
                relax(i)
        while queue:
            c = queue.popleft()
            for p in parents[c]:
                if allowed[p]:
                    relax(p)
        return best

    def _reachable(self, sel: list[int], roots: list[int]):
        """Classes reachable through the selection, children before parents."""
        nodes = self.view.nodes
        state: dict[int, int] = {}
        order = []
        for r in roots:
            if r in state:
                continue
            stack = [(r, 0)]
            while stack:
                c, i = stack.pop()
                if i == 0:
                    if c in state:
                        continue
                    if sel[c] < 0:
                        raise RuntimeError(f"extraction found no e-node for e-class {c}")
                    state[c] = 1
                kids = nodes[sel[c]].kids
                if i < len(kids):
                    stack.append((c, i + 1))
                    if kids[i] not in state:
                        stack.append((kids[i], 0))
                else:
                    state[c] = 2
                    order.append(c)
        return order, state

    def dag_cost(self, sel: list[int], roots: list[int]) -> float:
        order, _ = self._reachable(sel, roots)
        return sum(self.node_cost[sel[c]] for c in order)
