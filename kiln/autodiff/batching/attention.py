"""Attention-family ops and rope take [N, ...] tensors: the batch axis folds into N."""

from __future__ import annotations

from ._core import align, batch_rule, emit, fold, unfold


def fold_all(g, node, args, flags, b, ranks=None, broadcastable=()):
    """Fold every input's batch axis into its leading axis (size N of the first input); inputs at
    `broadcastable` positions may have a leading 1 (or a lower rank) that the op broadcasts."""
    n = node.inputs[0].shape[0]
    new = []
    for i, (v, f, old) in enumerate(zip(args, flags, node.inputs)):
        if v is None:
            new.append(None)
            continue
        rank = ranks[i] if ranks and ranks[i] else old.ndim
        if old.ndim < rank:  # e.g. a [Sq, Sk] mask: give it its broadcast leading axes first
            if not f:
                new.append(v)
                continue
            v = align(g, v, True, rank)
        new.append(fold(g, v, f, b, n, i in broadcastable))
    return [unfold(g, o, b) for o in emit(g, node.op, new, node.attrs)]


@batch_rule("attention", "attention_lse")
def _attention(g, node, args, flags, b):
    return fold_all(g, node, args, flags, b, ranks=[4, 4, 4, 4], broadcastable=(3,))


@batch_rule("attention_backward")
def _attention_backward(g, node, args, flags, b):
    return fold_all(g, node, args, flags, b, ranks=[4, 4, 4, 4, 4, 3, 4, 3], broadcastable=(3,))


@batch_rule("rope")
def _rope(g, node, args, flags, b):
    return fold_all(g, node, args, flags, b, broadcastable=(1, 2))
