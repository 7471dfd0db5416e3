"""Every registered op has a NumPy kernel and is checked against a reference by some tests/ops module.

Each `tests/ops/test_*.py` declares a module-level `TESTED_OPS` set; an op added to the registry
without a kernel or without a test fails here, naming the op and the module that registered it.
"""

import importlib.util
from pathlib import Path

import pytest

import kiln
from kiln.backends.numpy.kernels import KERNELS

OPS_DIR = Path(__file__).parent


def _where_registered(names) -> str:
    ops = kiln.ir.all_ops()
    return ", ".join(f"{n} ({ops[n].infer.__module__})" for n in sorted(names))


def _tested_ops_by_module() -> dict[str, set]:
    out = {}
    for path in sorted(OPS_DIR.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        spec = importlib.util.spec_from_file_location(f"_kiln_op_tests_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        tested = getattr(module, "TESTED_OPS", None)
        if not isinstance(tested, (set, frozenset)) or not all(isinstance(n, str) for n in tested):
            pytest.fail(f"{path.name} must define a module-level TESTED_OPS set of op names")
        out[path.name] = set(tested)
    return out


@pytest.fixture(scope="module")
def tested_by_module():
    return _tested_ops_by_module()


def test_every_op_has_a_numpy_kernel():
    missing = set(kiln.ir.all_ops()) - set(KERNELS)
    assert not missing, f"ops without a NumPy kernel: {_where_registered(missing)}"


def test_every_kernel_belongs_to_a_registered_op():
    stray = set(KERNELS) - set(kiln.ir.all_ops())
    assert not stray, f"NumPy kernels for unregistered ops: {sorted(stray)}"


def test_every_op_is_tested(tested_by_module):
    tested = set().union(*tested_by_module.values())
    missing = set(kiln.ir.all_ops()) - tested
    assert not missing, (f"ops missing from TESTED_OPS of every tests/ops/test_*.py module: "
                         f"{_where_registered(missing)}")


def test_tested_ops_are_registered(tested_by_module):
    ops = kiln.ir.all_ops()
    stale = {f"{mod}: {n}" for mod, names in tested_by_module.items() for n in names if n not in ops}
    assert not stale, f"TESTED_OPS names that are not registered ops: {sorted(stale)}"
