"""The persistent compile cache: a graph's optimized form, Plan and report on disk, so a second
process (or a second compile of the same graph) skips the optimizer and the planner.

Key (`compile_key`): a hash of everything the result depends on --
- the input graph as a structure (`graph_key`): every node's op, name, attributes, inputs (as
  positions, not ids), output types, the outputs by name (states are inputs with an output of the
  same name, so they are in it) and the graph's name. Constants are hashed by value: constant
  folding reads them and the Plan carries them. Parameters are hashed by name, shape and dtype
  only: nothing at compile time reads their values (folding sees constants only; the Plan's load
  steps run when weights are bound).
- the options: device, optimize, rules, exclude_rules, limits and which evaluator folds constants;
- the compiler's version (`compiler_version`): a hash of the source files of kiln/ir, kiln/opt,
  kiln/compile and the NumPy reference kernels (folding runs them), plus the versions of egglog,
  NumPy and Python. Editing any of them invalidates every entry.

Recipes (`recipe_key`): a caller that builds its graph from a description -- a model's graph
builder (config, dtype, modules) and the graph's kind and shape -- can name the plan by that
description instead, hashed with every kiln source file's path, size and modification time (the
builders live outside the compiler). A recipe entry (`plans/recipes/<key>`) holds the compile key of the graph the recipe
built, so a second process finds its plan without building the graph or hashing it.

Value: a pickle of (format, key, Plan, CompileReport) written atomically to
`$KILN_CACHE_DIR/plans/<key>.pkl` (default `~/.cache/kiln/plans`). An entry that cannot be read
is a miss with a `CompileCacheWarning`, never an error. Results of an optimizer that fell back
(it may have hit its time limit) are not stored. `KILN_COMPILE_CACHE=0` (or `cache=False`)
turns the cache off.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import os
import pickle
import sys
import tempfile
import types
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np

from kiln.files import kiln_cache_root

FORMAT = 1
# sources whose change can change a compile result (the reference kernels fold constants)
_VERSIONED = ("ir", "opt", "compile", "backends/numpy/kernels")


class CompileCacheWarning(UserWarning):
    """A compile cache entry could not be read or written; the graph was compiled instead."""


def enabled(cache: bool | None = None) -> bool:
    """`cache` when given, else the environment: KILN_COMPILE_CACHE=0 turns the cache off."""
    if cache is not None:
        return bool(cache)
    return os.environ.get("KILN_COMPILE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    return kiln_cache_root() / "plans"


@functools.lru_cache(maxsize=1)
def compiler_version() -> str:
    """A hash of the compiler's own source and of the libraries that shape its results."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(f"format {FORMAT} python {sys.version_info[:2]}".encode())
    for sub in _VERSIONED:
        for path in sorted((root / sub).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    for dist in ("egglog", "numpy", "ml_dtypes"):
        h.update(f"{dist} {_dist_version(dist)}".encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def source_version() -> str:
    """`compiler_version` and a hash of every kiln source file's path, size and modification time
    (a stat, not a read, of the ~200 files): what a recipe's graph depends on."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(compiler_version().encode())
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(root)} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _dist_version(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


class Uncacheable(Exception):
    """The graph or options hold something without a stable description (e.g. a lambda)."""


def graph_key(graph) -> str:
    """A stable hash of `graph` as a structure; constants by value, parameters by type only.

    Raises Uncacheable when an attribute has no stable description, or when a node reads a value
    no earlier node of this graph defines (`Graph.verify` then names the problem)."""
    h = hashlib.sha256()
    pos: dict[int, int] = {}   # value id -> position in definition order

    def ref(x):
        if x is None:
            return None
        if isinstance(x, list):
            return [ref(v) for v in x]
        p = pos.get(x.id)
        if p is None or x.graph is not graph:
            raise Uncacheable(f"value {x!r} is read before any node of this graph defines it")
        return p

    h.update(repr(graph.name).encode())
    for n in graph.nodes:
        if n.op == "constant":
            arr = np.ascontiguousarray(n.attrs["value"])
            h.update(repr(("constant", n.name, arr.dtype.str, arr.shape)).encode())
            h.update(arr.tobytes())
            attrs = None
        else:
            attrs = _stable(n.attrs)
        outs = [(o.shape, o.dtype.name) for o in n.outputs]
        h.update(repr((n.op, n.name, attrs, [ref(x) for x in n.inputs], outs)).encode())
        for o in n.outputs:
            pos[o.id] = len(pos)
    h.update(repr([(name, ref(v)) for name, v in graph.outputs.items()]).encode())
    return h.hexdigest()


def _stable(value):
    """A repr-able description of an attribute value that is the same in every process."""
    if isinstance(value, dict):
        return tuple((k, _stable(value[k])) for k in sorted(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_stable(x) for x in value))
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        return ("ndarray", a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())
    if isinstance(value, np.generic):
        return ("np", value.dtype.str, value.item())
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    text = repr(value)
    if " at 0x" in text:
        raise Uncacheable(f"attribute value {text} has no stable description")
    return (type(value).__qualname__, text)


def describe(obj, _path: frozenset = frozenset()):
    """A repr-able description of a graph recipe that is the same in every process: plain values as
    `_stable` has them, enums, functions and classes by name, kiln's own objects and dataclasses by
    class and attributes (recursively). Raises Uncacheable for anything else (its state may live
    outside its attributes) and on a cycle."""
    if isinstance(obj, dict):
        return ("dict", tuple((repr(k), describe(obj[k], _path)) for k in sorted(obj, key=repr)))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(describe(x, _path) for x in obj))
    if isinstance(obj, (set, frozenset)):
        return ("set", tuple(sorted(repr(describe(x, _path)) for x in obj)))
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, np.ndarray, np.generic)):
        return _stable(obj)
    if isinstance(obj, enum.Enum):
        return ("enum", type(obj).__qualname__, obj.name)
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        name = f"{obj.__module__}.{obj.__qualname__}"
        if "<" in name:
            raise Uncacheable(f"{obj!r} has no stable name")
        return ("named", name)
    cls = type(obj)
    if not (is_dataclass(obj) or cls.__module__.split(".")[0] == "kiln") or not hasattr(obj, "__dict__"):
        raise Uncacheable(f"a {cls.__module__}.{cls.__qualname__} object has no stable description")
    if id(obj) in _path:
        raise Uncacheable(f"a {cls.__qualname__} object refers to itself")
    inner = _path | {id(obj)}
    return (f"{cls.__module__}.{cls.__qualname__}", tuple((k, describe(v, inner)) for k, v in sorted(vars(obj).items())))


def digest(obj) -> str:
    """A hash of `describe(obj)`: a recipe part described once and reused."""
    return hashlib.sha256(repr(describe(obj)).encode()).hexdigest()


def recipe_key(recipe, *, device: str, optimize: bool, evaluate, rules, exclude_rules, limits) -> str:
    """The key of the plan the graph built from `recipe` compiles to with these options (Uncacheable
    if the recipe has no stable description)."""
    h = hashlib.sha256(f"recipe|{source_version()}|{_options(device, optimize, evaluate, rules, exclude_rules, limits)}"
                       f"|{describe(recipe)!r}".encode())
    return h.hexdigest()[:32]


def _recipe_path(rkey: str) -> Path:
    return cache_dir() / "recipes" / rkey


def recipe_target(rkey: str) -> str | None:
    """The compile key a recipe entry names, when that plan is stored; else None."""
    try:
        key = _recipe_path(rkey).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return key if len(key) == 32 and has(key) else None


def store_recipe(rkey: str, key: str) -> None:
    """Record that recipe `rkey` builds the graph whose plan is stored under `key` (atomically)."""
    path = _recipe_path(rkey)
    try:
        _write_atomically(path, key.encode())
    except OSError as e:
        warnings.warn(f"kiln compile cache: cannot write {path} ({e}); continuing", CompileCacheWarning, stacklevel=3)


def _options(device, optimize, evaluate, rules, exclude_rules, limits) -> str:
    if evaluate is None:
        folding = None
    else:
        folding = f"{getattr(evaluate, '__module__', '?')}.{getattr(evaluate, '__qualname__', '?')}"
        if "<" in folding or "?" in folding:   # a lambda or a local function: no stable name
            raise Uncacheable(f"constant-folding evaluator {evaluate!r} has no stable name")
    if limits is not None:
        limits = asdict(limits) if is_dataclass(limits) else limits
    return repr((device, bool(optimize), folding, None if rules is None else tuple(rules),
                 tuple(sorted(exclude_rules)), _stable(limits)))


def compile_key(graph, *, device: str, optimize: bool, evaluate, rules, exclude_rules, limits) -> str:
    """The cache key of compiling `graph` with these options (Uncacheable if it has none)."""
    options = _options(device, optimize, evaluate, rules, exclude_rules, limits)
    h = hashlib.sha256(f"{compiler_version()}|{options}|{graph_key(graph)}".encode())
    return h.hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_dir() / f"{key}.pkl"


def has(key: str) -> bool:
    """Whether an entry is stored under `key` (readable or not)."""
    return _path(key).is_file()


def load(key: str):
    """(plan, report) stored under `key`, or None (a missing entry; an unreadable one also warns)."""
    path = _path(key)
    try:
        blob = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        warnings.warn(f"kiln compile cache: cannot read {path}: {e}; compiling instead", CompileCacheWarning,
                      stacklevel=3)
        return None
    try:
        fmt, stored_key, plan, report = pickle.loads(blob)
        if fmt != FORMAT or stored_key != key:
            raise ValueError(f"entry holds format {fmt!r}, key {stored_key!r}")
    except Exception as e:
        warnings.warn(f"kiln compile cache: entry {path} is unreadable ({type(e).__name__}: {e}); compiling "
                      f"instead (it will be overwritten)", CompileCacheWarning, stacklevel=3)
        return None
    return plan, report


def store(key: str, plan, report) -> bool:
    """Write the entry atomically (a reader never sees half a file); False (and a warning) on failure."""
    path = _path(key)
    try:
        _write_atomically(path, pickle.dumps((FORMAT, key, plan, report), protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as e:
        warnings.warn(f"kiln compile cache: cannot write {path} ({type(e).__name__}: {e}); continuing uncached",
                      CompileCacheWarning, stacklevel=3)
        return False
    return True


def _write_atomically(path: Path, blob: bytes) -> None:
    """Write `blob` to `path` through a temporary file beside it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
