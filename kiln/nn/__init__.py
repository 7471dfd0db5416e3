"""kiln.nn: building blocks that own their parameters and emit kiln graph ops.

Each block declares its parameters once (`Module.own_params`), builds its ops in
`__call__(g, x, ...)`, and its parameter spec (`Module.params()`) is what a family's
checkpoint key table (`keys.KeyTable`) loads. Model families (kiln.models) are wiring
of these blocks plus a config dataclass and a key table.
"""

from .attention import Attention, CrossAttention, merge_heads, split_heads
from .block import TransformerBlock
from .conv import Conv
from .decoder_graphs import DecoderGraphs
from .features import feature_inputs, place_features
from .keys import Concat, KeyTable, Layout, OrMake, Rows, Transposed, Unsqueezed, Zeros
from .kv_cache import DecodeCache, PromptCache, SlotCache
from .linear import Embedding, Linear
from .mlp import MLP, activation, gated_activation
from .module import Module, ParamSpec
from .norm import LayerNorm, RMSNorm
from .parallel import shard_params
from .rope import Rope, RopeConfig
from .rope3d import Rope3D
from .softcap import softcap

__all__ = ["Attention", "CrossAttention", "merge_heads", "split_heads", "TransformerBlock", "Conv", "DecoderGraphs", "feature_inputs",
           "place_features", "Concat", "KeyTable", "Layout", "OrMake", "Transposed", "Unsqueezed", "Zeros",
           "DecodeCache", "PromptCache", "SlotCache", "Embedding", "Linear", "MLP", "activation", "gated_activation",
           "Module", "ParamSpec", "LayerNorm", "RMSNorm", "shard_params", "Rope", "RopeConfig", "Rope3D", "Rows",
           "softcap"]
