"""Hashable keys of op attributes, so equal nodes can be found by dictionary lookup."""

from __future__ import annotations

import numpy as np


def freeze_attrs(value):
    """A hashable, type-tagged copy of an attribute value; TypeError for arrays and unhashables."""
    if isinstance(value, np.ndarray):
        raise TypeError("array attributes are not compared by value")
    if isinstance(value, (list, tuple)):
        return tuple(freeze_attrs(x) for x in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze_attrs(x)) for k, x in value.items()))
    hash(value)
    return (type(value).__name__, value)


def node_key(op: str, attrs: dict, tail) -> tuple | None:
    """(op, frozen attrs, tail), or None when the attributes cannot be compared safely."""
    try:
        return (op, freeze_attrs(attrs), tail)
    except TypeError:
        return None
