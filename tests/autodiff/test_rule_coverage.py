"""Every differentiable op has a VJP (rule, decomposition or gradient forward), a JVP, and a
case in the gradient test table; every rule belongs to a registered op."""

import kiln
from kiln.autodiff import DECOMPOSITIONS, GRAD_FORWARDS, JVP_RULES, VJP_RULES, has_jvp, has_vjp

from autodiff_cases import CASES


def _differentiable():
    return {n for n, s in kiln.ir.all_ops().items() if s.differentiable}


def test_every_differentiable_op_has_a_vjp_and_a_jvp():
    ops = _differentiable()
    assert not sorted(o for o in ops if not has_vjp(o)), "differentiable ops without a VJP rule"
    assert not sorted(o for o in ops if not has_jvp(o)), "differentiable ops without a JVP rule"


def test_every_differentiable_op_has_a_gradient_test_case():
    missing = _differentiable() - {c.op for c in CASES}
    assert not missing, f"differentiable ops missing from tests/autodiff/autodiff_cases.py: {sorted(missing)}"


def test_rules_belong_to_registered_differentiable_ops():
    ops = kiln.ir.all_ops()
    for table in (VJP_RULES, JVP_RULES, DECOMPOSITIONS, GRAD_FORWARDS):
        stale = [n for n in table if n not in ops or not ops[n].differentiable]
        assert not stale, f"rules for unknown or non-differentiable ops: {stale}"
