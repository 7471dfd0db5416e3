"""kiln.io: loading HF checkpoints, configs and tokenizers (imports nothing else from kiln)."""

from kiln.io.config import ModelConfig, config_get, read_config
from kiln.io.errors import CheckpointError, ConfigError, ModelNotFoundError, TokenizerError
from kiln.io.hub import hf_cache_dir, resolve_model_path
from kiln.io.safetensors_file import (
    SAFETENSORS_DTYPES,
    load_checkpoint_dir,
    load_safetensors,
    read_safetensors_header,
    save_safetensors,
)
from kiln.io.tokenizer import StreamDecoder, Tokenizer
from kiln.io.weight_map import WeightMap

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ModelNotFoundError",
    "TokenizerError",
    "ModelConfig",
    "read_config",
    "config_get",
    "hf_cache_dir",
    "resolve_model_path",
    "SAFETENSORS_DTYPES",
    "load_safetensors",
    "load_checkpoint_dir",
    "read_safetensors_header",
    "save_safetensors",
    "Tokenizer",
    "StreamDecoder",
    "WeightMap",
]
