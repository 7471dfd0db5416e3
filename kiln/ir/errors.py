"""The error raised for an ill-formed graph: it names the node, op and what was expected.

Defined in :mod:`kiln.errors` (a ``KilnError`` and a ``ValueError``) and re-exported here."""

from kiln.errors import GraphError

__all__ = ["GraphError"]
