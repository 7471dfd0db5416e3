"""Run one op case through kiln's autodiff transforms and through torch, as NumPy arrays."""

from __future__ import annotations

import numpy as np
import torch

import kiln
from kiln.autodiff import grad, grad_name, hvp, hvp_name, jvp, tangent_name

from autodiff_cases import Case, inputs_for


def flat_named(inputs):
    """[(name, array)] for the graph inputs of an op's input list (variadic lists flattened)."""
    out = []
    for i, x in enumerate(inputs):
        if isinstance(x, list):
            out.extend((f"in{i}_{j}", a) for j, a in enumerate(x))
        elif x is not None:
            out.append((f"in{i}", x))
    return out


def float_names(inputs):
    return [n for n, a in flat_named(inputs) if kiln.as_dtype(a.dtype).is_float]


def op_graph(case: Case, inputs, weights=None):
    """Graph: the op on one input per array; outputs y<j>, and loss = sum_j sum(y_j * weights_j)."""
    g = kiln.Graph(case.name)
    args = []
    for i, x in enumerate(inputs):
        if isinstance(x, list):
            args.append([g.input(f"in{i}_{j}", a.shape, a.dtype) for j, a in enumerate(x)])
        else:
            args.append(None if x is None else g.input(f"in{i}", x.shape, x.dtype))
    out = g.op(case.op, *args, **case.attrs)
    outs = list(out) if isinstance(out, tuple) else [out]
    for j, o in enumerate(outs):
        g.output(f"y{j}", o)
    if weights is not None:
        loss = None
        for o, w in zip(outs, weights):
            if w is None:
                continue
            term = g.sum(g.mul(o, g.constant(w.astype(o.dtype.np_dtype))))
            loss = term if loss is None else g.add(loss, term)
        g.output("loss", loss)
    return g, outs


def output_weights(case: Case, inputs, rng):
    """Random weights (cotangents) for every float output of the op."""
    _, outs = op_graph(case, inputs)
    return [rng.standard_normal(o.shape).astype(o.dtype.np_dtype) if o.dtype.is_float else None for o in outs]


def run(graph, feeds, optimize=False):
    """Compile and run. The op tables check rules, so by default they skip the e-graph optimizer
    (about 0.2 s per graph); the float64 VJP pass and the whole-model tests run optimized."""
    return kiln.compile(graph, optimize=optimize).run(**feeds)


# ---- torch side ----------------------------------------------------------------------

def torch_args(inputs, requires_grad=True):
    """Torch copies in the op's input structure, and the list of float leaves (in flat_named order)."""
    leaves = []

    def conv(a):
        t = torch.from_numpy(np.array(a))
        if requires_grad and t.is_floating_point():
            t.requires_grad_(True)
            leaves.append(t)
        return t
    args = [None if x is None else [conv(a) for a in x] if isinstance(x, list) else conv(x) for x in inputs]
    return args, leaves


def as_tuple(r):
    return tuple(r) if isinstance(r, (tuple, list)) else (r,)


def torch_loss(case, args, weights):
    outs = as_tuple(case.ref(*args))
    loss = 0
    for o, w in zip(outs, weights):
        if w is not None:
            loss = loss + (o * torch.from_numpy(w).to(o.dtype)).sum()
    return loss


def torch_grads(case, inputs, weights):
    args, leaves = torch_args(inputs)
    loss = torch_loss(case, args, weights)
    gs = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [np.zeros(leaf.shape, leaf.detach().numpy().dtype) if gr is None else gr.numpy()
            for leaf, gr in zip(leaves, gs)]


def torch_hvp(case, inputs, weights, vectors):
    args, leaves = torch_args(inputs)
    loss = torch_loss(case, args, weights)
    gs = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
    pairs = [(gr, torch.from_numpy(v)) for gr, v in zip(gs, vectors) if gr is not None and gr.requires_grad]
    if not pairs:
        return [np.zeros_like(v) for v in vectors]
    hv = torch.autograd.grad([p[0] for p in pairs], leaves, grad_outputs=[p[1] for p in pairs], allow_unused=True)
    return [np.zeros_like(v) if h is None else h.detach().numpy(force=True) for h, v in zip(hv, vectors)]


def torch_jvp(case, inputs, tangents):
    args, _ = torch_args(inputs, requires_grad=False)
    flat = [(i, j) for i, x in enumerate(args) for j in (range(len(x)) if isinstance(x, list) else [None])
            if x is not None and (x[j] if j is not None else x).is_floating_point()]

    def fn(*floats):
        a = [list(x) if isinstance(x, list) else x for x in args]
        for (i, j), f in zip(flat, floats):
            if j is None:
                a[i] = f
            else:
                a[i][j] = f
        return as_tuple(case.ref(*a))
    primals = tuple((args[i][j] if j is not None else args[i]) for i, j in flat)
    _, tout = torch.func.jvp(fn, primals, tuple(torch.from_numpy(t) for t in tangents))
    return [t.detach().numpy(force=True) for t in tout]


# ---- kiln side ----------------------------------------------------------------------

def kiln_grads(case, inputs, weights, optimize=False):
    g, _ = op_graph(case, inputs, weights)
    names = float_names(inputs)
    res = run(grad(g, names, "loss"), dict(flat_named(inputs)), optimize)
    return [res[grad_name(n)] for n in names]


def kiln_jvp(case, inputs, tangents):
    g, outs = op_graph(case, inputs)
    names = float_names(inputs)
    feeds = dict(flat_named(inputs))
    feeds.update({tangent_name(n): t for n, t in zip(names, tangents)})
    res = run(jvp(g, names), feeds)
    return [res[tangent_name(f"y{j}")] for j, o in enumerate(outs) if o.dtype.is_float]


def kiln_hvp(case, inputs, weights, vectors):
    g, _ = op_graph(case, inputs, weights)
    names = float_names(inputs)
    feeds = dict(flat_named(inputs))
    feeds.update({tangent_name(n): v for n, v in zip(names, vectors)})
    res = run(hvp(g, names, "loss"), feeds)
    return [res[hvp_name(n)] for n in names]


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} vs {want.shape}"
    scale = max(np.abs(want).max(initial=0.0), 1e-30)
    return float(np.abs(got - want).max(initial=0.0) / scale)


def sample_case(case, seed, dtype="float64"):
    rng = np.random.default_rng(seed)
    return rng, inputs_for(case, rng, dtype)
