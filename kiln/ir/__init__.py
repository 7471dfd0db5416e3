"""kiln's intermediate representation: dtypes, op specs, the Graph, verification, JSON."""

from .dtypes import ALL_DTYPES, DType, as_dtype, bfloat16, bool_, float16, float32, float64, int32, int64, uint8
from .errors import GraphError
from .graph import SOURCE_OPS, Graph, Node, Value
from .op_spec import OpSpec, all_ops, get_op, register_op
from .serialize import graph_from_dict, graph_to_dict, load_graph, save_graph
from .tensor_type import TensorType

__all__ = [
    "ALL_DTYPES", "DType", "as_dtype", "bfloat16", "bool_", "float16", "float32", "float64", "int32", "int64",
    "uint8", "GraphError", "SOURCE_OPS", "Graph", "Node", "Value", "OpSpec", "all_ops", "get_op",
    "register_op", "graph_from_dict", "graph_to_dict", "load_graph", "save_graph", "TensorType",
]
