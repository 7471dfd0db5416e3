"""The error raised for an ill-formed graph: it names the node, op and what was expected."""


class GraphError(ValueError):
    """A graph is ill-formed: wrong shape, wrong dtype, unknown value or name."""
