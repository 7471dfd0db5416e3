"""SigLIP: the vision transformer (alone, or the image encoder of Idefics3 / SmolVLM) and the
two-tower SiglipModel whose image/text similarity logits classify images zero-shot.

The vision tower is a strided-conv patch embedding plus learned position embeddings, pre-LN
blocks (LayerNorm, bidirectional attention with biases, GELU-tanh MLP) and a post-LayerNorm;
SiglipVisionModel adds an attention-pooling head (a learned probe attends over the patches).
At a resolution other than the trained one, the position table is resized bicubically as HF
does (`interpolate_pos_encoding`): the resize is linear in the table, so it is a constant
matrix applied to the table parameter in the graph. Idefics3 feeds explicit position ids
and a patch mask instead (images of varied size, padded). The text tower is token +
position embeddings, the same blocks, a final LayerNorm and a linear head on the last token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kiln.errors import InputError
from kiln.files import read_json_if_present
from kiln.io.image import fixed_size_pixels
from kiln.io.config import check_divisible, config_bool, config_float, config_int, config_str, read_config
from kiln.io.errors import ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.weight_map import WeightMap
from kiln.ir import Graph, Value, as_dtype
from kiln.nn import (MLP, Attention, Concat, Conv, CrossAttention, Embedding, KeyTable, LayerNorm, Layout, Linear,
                     Module, Rows, TransformerBlock)
from kiln.nn.module import ParamSpec
from kiln.nn.mlp import HF_ACTIVATIONS
from kiln.runtime.compiler import compile as compile_graph

SIZE_MAX = 1 << 24


@dataclass(frozen=True)
class SiglipVisionConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    hidden_act: str = "gelu_tanh"
    layer_norm_eps: float = 1e-6
    use_head: bool = True

    @property
    def grid(self) -> int:
        """Patches per side at the trained resolution."""
        return self.image_size // self.patch_size

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], use_head_default: bool = True) -> "SiglipVisionConfig":
        size = lambda name, **kw: config_int(cfg, name, max=SIZE_MAX, **kw)  # noqa: E731
        act = config_str(cfg, "hidden_act", choices=HF_ACTIVATIONS, default="gelu_pytorch_tanh")
        c = cls(size("hidden_size"), size("intermediate_size"), size("num_hidden_layers"),
                size("num_attention_heads"), size("num_channels", default=3), size("image_size"), size("patch_size"),
                HF_ACTIVATIONS[act], config_float(cfg, "layer_norm_eps", min=0.0, min_exclusive=True, default=1e-6),
                config_bool(cfg, "vision_use_head", default=use_head_default))
        check_divisible(cfg, "hidden_size", c.hidden_size, "num_attention_heads", c.num_attention_heads)
        check_divisible(cfg, "image_size", c.image_size, "patch_size", c.patch_size)
        return c


@dataclass(frozen=True)
class SiglipTextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    projection_size: int
    hidden_act: str = "gelu_tanh"
    layer_norm_eps: float = 1e-6

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> "SiglipTextConfig":
        size = lambda name, **kw: config_int(cfg, name, max=SIZE_MAX, **kw)  # noqa: E731
        act = config_str(cfg, "hidden_act", choices=HF_ACTIVATIONS, default="gelu_pytorch_tanh")
        hidden = size("hidden_size")
        c = cls(size("vocab_size"), hidden, size("intermediate_size"), size("num_hidden_layers"),
                size("num_attention_heads"), size("max_position_embeddings", default=64),
                size("projection_size", default=hidden), HF_ACTIVATIONS[act],
                config_float(cfg, "layer_norm_eps", min=0.0, min_exclusive=True, default=1e-6))
        check_divisible(cfg, "hidden_size", c.hidden_size, "num_attention_heads", c.num_attention_heads)
        return c


# ---- the network ---------------------------------------------------------------------------

class SiglipEncoder(Module):
    """Pre-LN blocks: LayerNorm, bidirectional attention (biases), LayerNorm, MLP (fc1/fc2)."""

    def __init__(self, name: str, hidden: int, heads: int, inter: int, act: str, eps: float, layers: int, dtype):
        super().__init__(name, dtype)
        self.layers = [TransformerBlock(
            LayerNorm(self.full_name(f"layers.{i}.layer_norm1"), hidden, eps, dtype=dtype),
            Attention(self.full_name(f"layers.{i}.self_attn"), hidden, heads, qkv_bias=True, out_bias=True,
                      names={"out": "out_proj"}, dtype=dtype),
            LayerNorm(self.full_name(f"layers.{i}.layer_norm2"), hidden, eps, dtype=dtype),
            MLP(self.full_name(f"layers.{i}.mlp"), hidden, inter, act, bias=True, names={"up": "fc1", "down": "fc2"},
                dtype=dtype)) for i in range(layers)]

    def __call__(self, g: Graph, x: Value, mask: Value | None = None) -> Value:
        for block in self.layers:
            x = block(g, x, mask=mask)
        return x


class Probe(Module):
    """The attention-pooling head's learned query [1, 1, dim]."""

    def __init__(self, name: str, dim: int, dtype):
        super().__init__(name, dtype)
        self.dim = dim

    def own_params(self) -> dict[str, ParamSpec]:
        return {"probe": ParamSpec((1, 1, self.dim), self.dtype)}


class PoolingHead(Module):
    """SigLIP's multihead attention pooling: probe attends over the patches, then LayerNorm + MLP residual."""

    def __init__(self, name: str, cfg: SiglipVisionConfig, dtype):
        super().__init__(name, dtype)
        h = cfg.hidden_size
        self.probe = Probe(name, h, dtype)
        self.attention = CrossAttention(self.full_name("attention"), h, cfg.num_attention_heads,
                                        names={"q": "q", "kv": "kv", "out": "out_proj"}, dtype=dtype)
        self.layernorm = LayerNorm(self.full_name("layernorm"), h, cfg.layer_norm_eps, dtype=dtype)
        self.mlp = MLP(self.full_name("mlp"), h, cfg.intermediate_size, cfg.hidden_act, bias=True,
                       names={"up": "fc1", "down": "fc2"}, dtype=dtype)

    def __call__(self, g: Graph, x: Value) -> Value:
        n, _, h = x.shape
        q = g.broadcast_to(self.probe.param(g, "probe"), shape=[n, 1, h])
        a = self.attention(g, q, *self.attention.memory(g, x))
        a = a + self.mlp(g, self.layernorm(g, a))
        return g.reshape(a, shape=[n, h])


class SiglipVision(Module):
    """Patch embedding + positions, encoder, post-LayerNorm (+ pooling head): HF SiglipVisionTransformer."""

    def __init__(self, cfg: SiglipVisionConfig, prefix: str = "vision_model", dtype="float32",
                 with_head: bool | None = None):
        super().__init__(prefix, dtype)
        h, dt = cfg.hidden_size, self.dtype
        self.cfg = cfg
        self.patch = Conv(self.full_name("embeddings.patch_embedding"), cfg.num_channels, h, cfg.patch_size, dims=2,
                          stride=cfg.patch_size, dtype=dt)
        self.position = Embedding(self.full_name("embeddings.position_embedding"), cfg.grid ** 2, h, dtype=dt)
        self.encoder = SiglipEncoder(self.full_name("encoder"), h, cfg.num_attention_heads, cfg.intermediate_size,
                                     cfg.hidden_act, cfg.layer_norm_eps, cfg.num_hidden_layers, dt)
        self.post_layernorm = LayerNorm(self.full_name("post_layernorm"), h, cfg.layer_norm_eps, dtype=dt)
        use_head = cfg.use_head if with_head is None else with_head
        self.head = PoolingHead(self.full_name("head"), cfg, dt) if use_head else None

    def embed(self, g: Graph, pixels: Value, position_ids: Value | None = None,
              interpolate_pos_encoding: bool = False) -> Value:
        """Patch embeddings [N, P, hidden] plus their positions' embeddings."""
        n, _, height, width = pixels.shape
        x = self.patch(g, pixels)                                       # [N, hidden, h, w]
        _, hidden, gh, gw = x.shape
        x = g.transpose(g.reshape(x, shape=[n, hidden, gh * gw]), perm=[0, 2, 1])
        if position_ids is not None:
            return x + self.position(g, position_ids)
        table = self.position.weight(g)
        if (gh, gw) != (self.cfg.grid, self.cfg.grid):
            if not interpolate_pos_encoding:
                raise InputError(f"pixel_values of {height}x{width} make a {gh}x{gw} patch grid, but the model "
                                 f"was trained on {self.cfg.image_size}x{self.cfg.image_size} ({self.cfg.grid}x"
                                 f"{self.cfg.grid}); pass interpolate_pos_encoding=True to resize its positions")
            resize = bicubic_resize_matrix(self.cfg.grid, self.cfg.grid, gh, gw).astype(as_dtype(self.dtype).np_dtype)
            table = g.matmul(g.constant(resize, name="position_resize"), table)
        return x + g.reshape(table, shape=[1, gh * gw, hidden])

    def __call__(self, g: Graph, pixels: Value, position_ids: Value | None = None, patch_mask: Value | None = None,
                 interpolate_pos_encoding: bool = False) -> tuple[Value, Value | None]:
        """(last_hidden_state [N, P, hidden], pooler_output [N, hidden] or None).

        `patch_mask` [N, P] bool marks the real patches of padded images: keys elsewhere are not attended."""
        x = self.embed(g, pixels, position_ids, interpolate_pos_encoding)
        mask = None
        if patch_mask is not None:
            n, p = patch_mask.shape
            mask = g.reshape(patch_mask, shape=[n, 1, 1, p])
        x = self.post_layernorm(g, self.encoder(g, x, mask))
        return x, (self.head(g, x) if self.head is not None else None)


class SiglipText(Module):
    """Token + position embeddings, encoder, final LayerNorm, head on the last token: HF SiglipTextTransformer."""

    def __init__(self, cfg: SiglipTextConfig, prefix: str = "text_model", dtype="float32"):
        super().__init__(prefix, dtype)
        h, dt = cfg.hidden_size, self.dtype
        self.cfg = cfg
        self.token = Embedding(self.full_name("embeddings.token_embedding"), cfg.vocab_size, h, dtype=dt)
        self.position = Embedding(self.full_name("embeddings.position_embedding"), cfg.max_position_embeddings, h, dtype=dt)
        self.encoder = SiglipEncoder(self.full_name("encoder"), h, cfg.num_attention_heads, cfg.intermediate_size,
                                     cfg.hidden_act, cfg.layer_norm_eps, cfg.num_hidden_layers, dt)
        self.final_layer_norm = LayerNorm(self.full_name("final_layer_norm"), h, cfg.layer_norm_eps, dtype=dt)
        self.head = Linear(self.full_name("head"), h, cfg.projection_size, bias=True, dtype=dt)

    def __call__(self, g: Graph, ids: Value, attention_mask: Value | None = None) -> tuple[Value, Value]:
        b, s = ids.shape
        pos = g.slice(self.position.weight(g), axes=[0], starts=[0], ends=[s])
        x = self.token(g, ids) + g.reshape(pos, shape=[1, s, self.cfg.hidden_size])
        mask = None
        if attention_mask is not None:
            mask = g.reshape(g.greater(attention_mask, g.scalar(0, "int64")), shape=[b, 1, 1, s])
        x = self.final_layer_norm(g, self.encoder(g, x, mask))
        last = g.reshape(g.slice(x, axes=[1], starts=[s - 1], ends=[s]), shape=[b, self.cfg.hidden_size])
        return x, self.head(g, last)


class LogitScale(Module):
    """SiglipModel's learned logit_scale and logit_bias (one value each)."""

    def own_params(self) -> dict[str, ParamSpec]:
        return {"logit_scale": ParamSpec((1,), self.dtype), "logit_bias": ParamSpec((1,), self.dtype)}


def bicubic_resize_matrix(in_h: int, in_w: int, out_h: int, out_w: int) -> np.ndarray:
    """[out_h*out_w, in_h*in_w]: torch's bicubic interpolate (align_corners=False, A=-0.75) as a matrix
    over a row-major grid, so that resized = M @ table."""
    return np.kron(_bicubic_1d(in_h, out_h), _bicubic_1d(in_w, out_w))


def _bicubic_1d(n_in: int, n_out: int) -> np.ndarray:
    a = -0.75

    def near(x):   # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):    # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for o in range(n_out):
        src = (o + 0.5) * scale - 0.5
        i0 = math.floor(src)
        t = src - i0
        for k, w in zip(range(i0 - 1, i0 + 3), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            m[o, min(max(k, 0), n_in - 1)] += w
    return m


# ---- checkpoint keys -------------------------------------------------------------------------

def siglip_layout(name: str, marker: str, strip: tuple[str, ...] = (), extra: Mapping | None = None, **kw) -> Layout:
    """HF SigLIP key names (any prefix): Q/K/V fused, the pooling head's packed in-projection split."""
    return Layout(name, marker, strip=strip, keys={
        **(extra or {}),    # a family's own keys first: the patterns below match any prefix
        "{pre}.self_attn.qkv_proj.{kind}": Concat(*(f"{{pre}}.self_attn.{p}_proj.{{kind}}" for p in "qkv")),
        "{pre}.head.attention.q.{kind}": Rows("{pre}.head.attention.in_proj_{kind}", 0, 1, 3),
        "{pre}.head.attention.kv.{kind}": Rows("{pre}.head.attention.in_proj_{kind}", 1, 3, 3),
        "head.attention.q.{kind}": Rows("head.attention.in_proj_{kind}", 0, 1, 3),
        "head.attention.kv.{kind}": Rows("head.attention.in_proj_{kind}", 1, 3, 3),
        "{name}": "{name}",
    }, **kw)


KEYS = KeyTable("SigLIP",
                siglip_layout("two towers", "text_model.embeddings.token_embedding.weight"),
                siglip_layout("vision", "embeddings.patch_embedding.weight", strip=("vision_model.",)))


# ---- loaded models ---------------------------------------------------------------------------

def _pixels(pixel_values, channels: int) -> np.ndarray:
    px = np.asarray(pixel_values)
    if px.ndim != 4 or px.shape[1] != channels:
        raise InputError(f"pixel_values must be [images, {channels}, height, width], got shape {px.shape}")
    if not np.issubdtype(px.dtype, np.floating):
        raise InputError(f"pixel_values must be a float array (normalized pixels), got dtype {px.dtype}")
    return px


def _token_ids(name: str, a, vocab: int, max_len: int) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer) or arr.shape[1] == 0:
        raise InputError(f"{name} must be a non-empty integer array [batch, seq], got {arr.dtype} {arr.shape}")
    if arr.shape[1] > max_len:
        raise InputError(f"{name} has {arr.shape[1]} tokens, more than max_position_embeddings ({max_len})")
    if name == "input_ids" and (arr.min() < 0 or arr.max() >= vocab):
        raise InputError(f"input_ids must be in [0, {vocab}), got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


@dataclass(frozen=True)
class SiglipImageSettings:
    """The checkpoint's image processor: one fixed size, Pillow resample code, rescale, mean / std."""

    height: int = 224
    width: int = 224
    resample: int = 3           # bicubic
    rescale: float | None = 1 / 255
    mean: tuple[float, ...] | None = (0.5, 0.5, 0.5)
    std: tuple[float, ...] | None = (0.5, 0.5, 0.5)

    @classmethod
    def from_dir(cls, d: Path) -> "SiglipImageSettings | None":
        """From preprocessor_config.json (transformers 4) or processor_config.json's image_processor (5)."""
        proc = read_json_if_present(d / "processor_config.json", "processor config", ConfigError) or {}
        cfg = proc.get("image_processor") or read_json_if_present(
            d / "preprocessor_config.json", "image processor config", ConfigError)
        if cfg is None:
            return None
        where = _Sub(cfg.get("size") or {}, f"{d} image processor size")
        norm = cfg.get("do_normalize", True)
        return cls(config_int(where, "height", default=224), config_int(where, "width", default=224),
                   int(cfg.get("resample", 3)),
                   float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None,
                   tuple(cfg.get("image_mean", (0.5,) * 3)) if norm else None,
                   tuple(cfg.get("image_std", (0.5,) * 3)) if norm else None)


class _Compiled:
    """Graphs built per static shape, compiled once and cached; `pixel_values(images)` prepares images."""

    def __init__(self, params: dict[str, np.ndarray], device: str, dtype: str):
        self.params, self.device, self.dtype = params, device, dtype
        self._cache: dict[tuple, Any] = {}
        self.image_settings: SiglipImageSettings | None = None

    def pixel_values(self, images) -> np.ndarray:
        """Images (paths, Pillow images, uint8 arrays) -> float32 [N, 3, H, W], as HF's SiglipImageProcessor."""
        s = self.image_settings or SiglipImageSettings()
        return fixed_size_pixels(list(images), s.height, s.width, s.resample, s.rescale, s.mean, s.std)

    def _run(self, key: tuple, build, **inputs) -> dict[str, np.ndarray]:
        if key not in self._cache:
            cg = compile_graph(build(), device=self.device)
            cg.load_params({k: v for k, v in self.params.items() if k in cg.param_types})
            self._cache[key] = cg
        return self._cache[key].run(**inputs)

    def _cast(self, px: np.ndarray) -> np.ndarray:
        return px.astype(as_dtype(self.dtype).np_dtype, copy=False)

    def _vision(self, cfg: SiglipVisionConfig, prefix: str, pixel_values, interpolate: bool, head: bool):
        """{last_hidden_state, pooler_output (with the head)} of a vision tower."""
        px = self._cast(_pixels(pixel_values, cfg.num_channels))

        def build():
            g = Graph(f"siglip_vision_{'x'.join(map(str, px.shape))}")
            x = g.input("pixel_values", px.shape, self.dtype)
            hidden, pooled = SiglipVision(cfg, prefix, self.dtype, with_head=head)(
                g, x, interpolate_pos_encoding=interpolate)
            g.output("last_hidden_state", hidden)
            if pooled is not None:
                g.output("pooler_output", pooled)
            return g

        return self._run(("vision", px.shape, interpolate), build, pixel_values=px)


class SiglipVisionModel(_Compiled):
    """A loaded SigLIP vision tower: `model(pixel_values)` -> {last_hidden_state, pooler_output} like HF."""

    def __init__(self, cfg: SiglipVisionConfig, params, device="cpu", dtype="float32", prefix=""):
        super().__init__(params, device, dtype)
        self.config, self.prefix = cfg, prefix

    def __call__(self, pixel_values, interpolate_pos_encoding: bool = False) -> dict[str, np.ndarray]:
        return self._vision(self.config, self.prefix, pixel_values, interpolate_pos_encoding, self.config.use_head)


class SiglipModel(_Compiled):
    """A loaded two-tower SigLIP: image and text embeddings and their similarity logits (HF SiglipModel)."""

    def __init__(self, vision: SiglipVisionConfig, text: SiglipTextConfig, params, device="cpu", dtype="float32"):
        super().__init__(params, device, dtype)
        self.vision_config, self.text_config = vision, text

    def __call__(self, input_ids, pixel_values, attention_mask=None,
                 interpolate_pos_encoding: bool = False) -> dict[str, np.ndarray]:
        """{logits_per_image [images, texts], logits_per_text, image_embeds, text_embeds} (embeds L2-normalized)."""
        px = self._cast(_pixels(pixel_values, self.vision_config.num_channels))
        ids = _token_ids("input_ids", input_ids, self.text_config.vocab_size, self.text_config.max_position_embeddings)
        feeds = {"pixel_values": px, "input_ids": ids}
        if attention_mask is not None:
            feeds["attention_mask"] = _token_ids("attention_mask", attention_mask, 2, ids.shape[1])
            if feeds["attention_mask"].shape != ids.shape:
                raise InputError(f"attention_mask has shape {feeds['attention_mask'].shape}, expected {ids.shape}")

        def build():
            g = Graph(f"siglip_{ids.shape[0]}x{ids.shape[1]}_{'x'.join(map(str, px.shape))}")
            x = g.input("pixel_values", px.shape, self.dtype)
            t = g.input("input_ids", ids.shape, "int64")
            m = g.input("attention_mask", ids.shape, "int64") if attention_mask is not None else None
            _, image = SiglipVision(self.vision_config, "vision_model", self.dtype, with_head=True)(
                g, x, interpolate_pos_encoding=interpolate_pos_encoding)
            _, text = SiglipText(self.text_config, "text_model", self.dtype)(g, t, m)
            image, text = _l2_normalized(g, image), _l2_normalized(g, text)
            scale = LogitScale("", self.dtype)
            per_text = g.linear(text, image) * g.exp(scale.param(g, "logit_scale")) + scale.param(g, "logit_bias")
            g.output("logits_per_text", per_text)
            g.output("logits_per_image", g.transpose(per_text, perm=[1, 0]))
            g.output("text_embeds", text)
            g.output("image_embeds", image)
            return g

        return self._run(("both", px.shape, ids.shape, attention_mask is not None, interpolate_pos_encoding), build,
                         **feeds)

    def get_image_features(self, pixel_values, interpolate_pos_encoding: bool = False) -> np.ndarray:
        """Pooled image embeddings [images, hidden] (not normalized), as HF's pooler_output."""
        return self._vision(self.vision_config, "vision_model", pixel_values, interpolate_pos_encoding,
                            head=True)["pooler_output"]

    def get_text_features(self, input_ids, attention_mask=None) -> np.ndarray:
        """Pooled text embeddings [texts, projection] (not normalized), as HF's pooler_output."""
        ids = _token_ids("input_ids", input_ids, self.text_config.vocab_size, self.text_config.max_position_embeddings)
        feeds = {"input_ids": ids}
        if attention_mask is not None:
            feeds["attention_mask"] = np.asarray(attention_mask, np.int64).reshape(ids.shape)

        def build():
            g = Graph(f"siglip_text_{ids.shape[0]}x{ids.shape[1]}")
            t = g.input("input_ids", ids.shape, "int64")
            m = g.input("attention_mask", ids.shape, "int64") if attention_mask is not None else None
            g.output("pooler_output", SiglipText(self.text_config, "text_model", self.dtype)(g, t, m)[1])
            return g

        return self._run(("text", ids.shape, attention_mask is not None), build, **feeds)["pooler_output"]


def _l2_normalized(g: Graph, x: Value) -> Value:
    return x * g.rsqrt(g.sum(x * x, axes=[-1], keepdims=True))


# ---- loading -------------------------------------------------------------------------------

def load_siglip(path, device: str = "cpu", dtype: str = "float32", **_options):
    """A SigLIP checkpoint: `siglip` (SiglipModel, two towers) or `siglip_vision_model` (SiglipVisionModel)."""
    d = Path(path)
    raw = read_config(d)
    dtype = as_dtype(dtype).name
    weights = WeightMap(load_checkpoint_dir(d), source=str(d))
    if raw.get("model_type") == "siglip_vision_model":
        cfg = SiglipVisionConfig.from_hf(raw)
        spec = SiglipVision(cfg, "", dtype).params()
        model = SiglipVisionModel(cfg, KEYS.load(weights, spec, layers=range(cfg.num_hidden_layers)), device, dtype)
        model.image_settings = SiglipImageSettings.from_dir(d)
        return model
    for sub in ("vision_config", "text_config"):
        if not isinstance(raw.get(sub), dict):
            raise ConfigError(f"{raw.path}: a 'siglip' config needs a {sub!r} object")
    vision = SiglipVisionConfig.from_hf(_Sub(raw["vision_config"], f"{raw.path} (vision_config)"))
    text = SiglipTextConfig.from_hf(_Sub(raw["text_config"], f"{raw.path} (text_config)"))
    spec = {**SiglipVision(vision, "vision_model", dtype, with_head=True).params(),
            **SiglipText(text, "text_model", dtype).params(), **LogitScale("", dtype).params()}
    model = SiglipModel(vision, text, KEYS.load(weights, spec), device, dtype)
    model.image_settings = SiglipImageSettings.from_dir(d)
    return model


class _Sub(dict):
    """A nested config object that names where it sits in errors (`.path`)."""

    def __init__(self, values: dict, path: str):
        super().__init__(values)
        self.path = path
