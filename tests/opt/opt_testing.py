"""Shared helpers for optimizer tests: a node-by-node reference run of a graph and random bindings.

The reference run calls the NumPy reference kernels directly, one graph node at a time,
with no optimizer, plan, arena or executor in between: the semantics every optimized
graph must reproduce.
"""

import numpy as np

from kiln.backends.numpy.kernels import KERNELS


def reference_run(graph, feeds: dict) -> dict:
    env = {}
    for n in graph.nodes:
        if n.op in ("input", "parameter"):
            env[n.outputs[0].id] = feeds[n.name]
            continue
        if n.op == "constant":
            env[n.outputs[0].id] = n.attrs["value"]
            continue
        args = [([env[v.id] for v in x] if isinstance(x, list) else (None if x is None else env[x.id]))
                for x in n.inputs]
        res = KERNELS[n.op](*args, **n.attrs)
        for o, r in zip(n.outputs, res if isinstance(res, tuple) else (res,)):
            env[o.id] = np.asarray(r)
    return {k: env[v.id] for k, v in graph.outputs.items()}


def random_feeds(graph, seed: int = 0) -> dict:
    """Normal floats (positive for anything called 'pos'), small ints below 8 for int inputs."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, v in {**graph.inputs, **graph.parameters}.items():
        if v.dtype.is_float:
            a = rng.standard_normal(v.shape)
            feeds[name] = (np.abs(a) + 0.5 if "pos" in name else a).astype(v.dtype.np_dtype)
        else:
            feeds[name] = rng.integers(0, 8, v.shape).astype(v.dtype.np_dtype)
    return feeds


def run_compiled(graph, feeds: dict, optimize: bool = True):
    import kiln
    cg = kiln.compile(graph, optimize=optimize)
    cg.load_params({k: feeds[k] for k in graph.parameters})
    for name in cg.state_types:                     # states: set before the run, read after it
        cg.set_state(name, feeds[name])
    out = cg.run(**{k: feeds[k] for k in graph.inputs if k not in cg.state_types})
    return {**out, **{name: cg.get_state(name) for name in cg.state_types}}, cg
