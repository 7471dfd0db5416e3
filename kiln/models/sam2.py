"""SAM 2 (HF `Sam2Model` and original facebookresearch/sam2 checkpoints): promptable segmentation.

Two compiled graphs per static shape: the image graph (Hiera backbone + FPN neck + the mask decoder's
high-resolution projections, once per image: `embed_image`) and the prompt graph (prompt encoder +
two-way transformer + mask decoder, once per set of prompts against cached embeddings). Calling the
model takes HF's input names (pixel_values or image_embeddings, input_points, input_labels,
input_boxes, input_masks, multimask_output) and returns HF's output fields as NumPy arrays.
Pre- and post-processing (resize, normalize, coordinate rescaling, mask upscaling) live in
`sam2_processor.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.io.config import read_config
from kiln.io.errors import ConfigError
from kiln.io.safetensors_file import load_checkpoint_dir
from kiln.io.weight_map import WeightMap
from kiln.errors import InputError
from kiln.ir import Graph, as_dtype
from kiln.nn import Concat, KeyTable, Layout, Module, ParamSpec
from kiln.runtime.compiler import compile as compile_graph

from .sam2_config import Sam2Config
from .sam2_decoder import PAD_LABEL, FourierPositions, MaskDecoder, PromptEncoder, image_positions, per_prompt
from .sam2_hiera import FpnNeck, HieraBackbone

EMBEDDING_NAMES = ("high_res_s0", "high_res_s1", "image_embeddings")


class Sam2(Module):
    """Every block of the image model: the parameter spec the checkpoint loads."""

    def __init__(self, cfg: Sam2Config, dtype: str = "float32"):
        super().__init__("", dtype)
        self.cfg = cfg
        self.backbone, self.neck = HieraBackbone(cfg, dtype), FpnNeck(cfg, dtype)
        self.prompt_encoder, self.mask_decoder = PromptEncoder(cfg, dtype), MaskDecoder(cfg, dtype)
        self.image_pe = FourierPositions("shared_image_embedding", cfg.prompt_hidden_size, dtype)

    def own_params(self) -> dict[str, ParamSpec]:
        return {"no_memory_embedding": ParamSpec((1, 1, self.cfg.fpn_hidden_size), self.dtype)}

    def embed(self, g: Graph, pixels) -> list:
        """[s0 [B, C/8, 4h, 4w], s1 [B, C/4, 2h, 2w], embedding [B, C, h, w]] (HF get_image_embeddings)."""
        levels = self.neck(g, self.backbone(g, pixels))
        s0 = self.mask_decoder.conv_s0(g, levels[0])
        s1 = self.mask_decoder.conv_s1(g, levels[1])
        c = self.cfg.fpn_hidden_size
        emb = levels[2] + g.reshape(self.param(g, "no_memory_embedding"), shape=[1, c, 1, 1])
        for v, size in zip((s0, s1, emb), self.cfg.backbone_feature_sizes):
            if tuple(v.shape[2:]) != tuple(size):
                raise ConfigError(f"SAM 2 config: backbone_feature_sizes {list(self.cfg.backbone_feature_sizes)} "
                                      f"do not match the encoder's feature maps (got {list(v.shape[2:])})")
        return [s0, s1, emb]


def embedding_types(cfg: Sam2Config, batch: int) -> list[tuple[str, tuple[int, ...]]]:
    c, side = cfg.decoder_hidden_size, cfg.embedding_size
    shapes = ((c // 8, 4 * side, 4 * side), (c // 4, 2 * side, 2 * side), (c, side, side))
    return [(name, (batch, *shape)) for name, shape in zip(EMBEDDING_NAMES, shapes)]


def build_image_graph(cfg: Sam2Config, batch: int, dtype: str = "float32", keep: bool = False) -> Graph:
    """pixel_values -> the three embeddings: outputs, or with `keep` graph states `cached.<name>` that stay
    on the device for the prompt graphs built with `cached=True`."""
    g = Graph(f"sam2_image_b{batch}{'_keep' if keep else ''}")
    s = cfg.image_size
    pixels = g.input("pixel_values", (batch, cfg.num_channels, s, s), dtype)
    for (name, shape), v in zip(embedding_types(cfg, batch), Sam2(cfg, dtype).embed(g, pixels)):
        if keep:
            g.assign(g.state(f"cached.{name}", shape, dtype), v)
        else:
            g.output(name, v)
    return g


def build_prompt_graph(cfg: Sam2Config, batch: int, prompts: int, points: int | None, boxes: bool, masks: bool,
                       multimask: bool, dtype: str = "float32", cached: bool = False) -> Graph:
    """Masks for `prompts` prompt rows per image from image embeddings (inputs, or with `cached` the states
    `build_image_graph(keep=True)` wrote); `points` per row (None: no points)."""
    g = Graph(f"sam2_prompt_b{batch}_p{prompts}_n{points}_box{int(boxes)}_mask{int(masks)}_mm{int(multimask)}"
              f"{'_cached' if cached else ''}")
    model = Sam2(cfg, dtype)
    c, side = cfg.decoder_hidden_size, cfg.embedding_size
    if cached:  # read only: assigned their own value, which the planner turns into no copy at all
        s0, s1, emb = (g.state(f"cached.{name}", shape, dtype) for name, shape in embedding_types(cfg, batch))
        for v in (s0, s1, emb):
            g.assign(v, v)
    else:
        s0, s1, emb = (g.input(name, shape, dtype) for name, shape in embedding_types(cfg, batch))
    pe = model.prompt_encoder
    sparse = []
    if points is not None:
        pts = g.input("input_points", (batch, prompts, points, 2), dtype)
        labels = g.input("input_labels", (batch, prompts, points), "int64")
        sparse.append(pe.points(g, pts, labels, pad=not boxes))
    if boxes:
        sparse.append(pe.boxes(g, g.input("input_boxes", (batch, prompts, 4), dtype)))
    sparse = sparse[0] if len(sparse) == 1 else g.concat(*sparse, axis=2)
    sparse = g.reshape(sparse, shape=[batch * prompts, sparse.shape[2], c])
    mask_in = g.input("input_masks", (batch, 1, 4 * side, 4 * side), dtype) if masks else None
    image = per_prompt(g, emb + pe.dense(g, mask_in, batch, side), prompts)
    high_res = (per_prompt(g, s0, prompts), per_prompt(g, s1, prompts))
    outs = model.mask_decoder(g, image, image_positions(g, model.image_pe, side), sparse, high_res, batch, prompts,
                              multimask)
    for name, v in outs.items():
        g.output(name, v)
    return g


def _mlp_keys(ours: str, theirs: str, depth: int) -> dict[str, str]:
    """An original `layers.{0..depth-1}` MLP -> HF's proj_in / layers.{i} / proj_out."""
    out = {f"{ours}.proj_in.{{kind}}": f"{theirs}.layers.0.{{kind}}",
           f"{ours}.proj_out.{{kind}}": f"{theirs}.layers.{depth - 1}.{{kind}}"}
    for i in range(depth - 2):
        out[f"{ours}.layers.{i}.{{kind}}"] = f"{theirs}.layers.{i + 1}.{{kind}}"
    return out


HF_IGNORE = ("memory_*", "mask_downsample*", "object_pointer_proj*", "temporal_positional_encoding_projection_layer*",
             "no_memory_positional_encoding", "no_object_pointer", "occlusion_spatial_embedding_parameter")
ORIGINAL_IGNORE = ("memory_attention.*", "memory_encoder.*", "maskmem_tpos_enc", "no_mem_pos_enc", "obj_ptr_proj.*",
                   "obj_ptr_tpos_proj.*", "mask_downsample.*", "no_obj_ptr", "no_obj_embed_spatial")
T, D, P = "image_encoder.trunk", "sam_mask_decoder", "sam_prompt_encoder"
KEYS = KeyTable(
    "SAM 2",
    Layout("hf", "vision_encoder.backbone.patch_embed.projection.weight", keys={"{name}": "{name}"},
           ignore=HF_IGNORE),
    Layout("original", f"{T}.patch_embed.proj.weight", ignore=ORIGINAL_IGNORE, keys={
        "vision_encoder.backbone.patch_embed.projection.{kind}": f"{T}.patch_embed.proj.{{kind}}",
        "vision_encoder.backbone.blocks.{i}.layer_norm{n}.{kind}": f"{T}.blocks.{{i}}.norm{{n}}.{{kind}}",
        "vision_encoder.backbone.blocks.{i}.mlp.proj_in.{kind}": f"{T}.blocks.{{i}}.mlp.layers.0.{{kind}}",
        "vision_encoder.backbone.blocks.{i}.mlp.proj_out.{kind}": f"{T}.blocks.{{i}}.mlp.layers.1.{{kind}}",
        "vision_encoder.backbone.{name}": f"{T}.{{name}}",
        "vision_encoder.neck.convs.{i}.{kind}": "image_encoder.neck.convs.{i}.conv.{kind}",
        "prompt_encoder.shared_embedding.positional_embedding": f"{P}.pe_layer.positional_encoding_gaussian_matrix",
        "shared_image_embedding.positional_embedding": f"{P}.pe_layer.positional_encoding_gaussian_matrix",
        "prompt_encoder.point_embed.weight": Concat(f"{P}.point_embeddings.{{j}}.weight", each="j"),
        "prompt_encoder.mask_embed.conv1.{kind}": f"{P}.mask_downscaling.0.{{kind}}",
        "prompt_encoder.mask_embed.layer_norm1.{kind}": f"{P}.mask_downscaling.1.{{kind}}",
        "prompt_encoder.mask_embed.conv2.{kind}": f"{P}.mask_downscaling.3.{{kind}}",
        "prompt_encoder.mask_embed.layer_norm2.{kind}": f"{P}.mask_downscaling.4.{{kind}}",
        "prompt_encoder.mask_embed.conv3.{kind}": f"{P}.mask_downscaling.6.{{kind}}",
        "prompt_encoder.{name}": f"{P}.{{name}}",
        "mask_decoder.transformer.layers.{i}.layer_norm{n}.{kind}": f"{D}.transformer.layers.{{i}}.norm{{n}}.{{kind}}",
        **_mlp_keys("mask_decoder.transformer.layers.{i}.mlp", f"{D}.transformer.layers.{{i}}.mlp", 2),
        "mask_decoder.transformer.layer_norm_final_attn.{kind}": f"{D}.transformer.norm_final_attn.{{kind}}",
        "mask_decoder.transformer.{name}.o_proj.{kind}": f"{D}.transformer.{{name}}.out_proj.{{kind}}",
        "mask_decoder.upscale_conv1.{kind}": f"{D}.output_upscaling.0.{{kind}}",
        "mask_decoder.upscale_layer_norm.{kind}": f"{D}.output_upscaling.1.{{kind}}",
        "mask_decoder.upscale_conv2.{kind}": f"{D}.output_upscaling.3.{{kind}}",
        **_mlp_keys("mask_decoder.output_hypernetworks_mlps.{i}", f"{D}.output_hypernetworks_mlps.{{i}}", 3),
        **_mlp_keys("mask_decoder.iou_prediction_head", f"{D}.iou_prediction_head", 3),
        **_mlp_keys("mask_decoder.pred_obj_score_head", f"{D}.pred_obj_score_head", 3),
        "mask_decoder.{name}": f"{D}.{{name}}",
        "no_memory_embedding": "no_mem_embed",
    }))


class Sam2Model:
    """A loaded SAM 2 image model. Per image, once: `embed_image` (the embeddings to the host, as HF's
    get_image_embeddings) or `set_image` (kept where the backend lives); then any number of prompts."""

    def __init__(self, cfg: Sam2Config, params: dict, device: str = "cpu", dtype: str = "float32",
                 processor=None):
        self.config, self.params, self.device, self.dtype = cfg, params, device, dtype
        self.processor = processor
        self._compiled: dict[tuple, object] = {}
        self._pools: dict[int, dict] = {}          # batch -> the cached embeddings' device buffers
        self._image_batch: int | None = None       # batch of the image set_image holds, if any

    def _compiled_graph(self, key: tuple, build, pool: dict | None = None):
        if key not in self._compiled:
            cg = compile_graph(build(), device=self.device)
            cg.load_params({k: v for k, v in self.params.items() if k in cg.plan.params})
            if pool is not None:
                cg.share_states(pool)
            self._compiled[key] = cg
        return self._compiled[key]

    def set_image(self, pixel_values) -> None:
        """Embed an image and keep its embeddings where the backend lives (on the GPU for cuda): calls
        without pixel_values / image_embeddings then prompt against it, nothing crossing to the host."""
        px = self._pixels(pixel_values)
        b = px.shape[0]
        cg = self._compiled_graph(("image_keep", b), lambda: build_image_graph(self.config, b, self.dtype, keep=True),
                                  self._pools.setdefault(b, {}))
        cg.run(pixel_values=px)
        self._image_batch = b

    def embed_image(self, pixel_values) -> list[np.ndarray]:
        """[s0, s1, image_embeddings] for pixel_values [B, 3, S, S] (HF `get_image_embeddings`)."""
        px = self._pixels(pixel_values)
        cg = self._compiled_graph(("image", px.shape[0]),
                                  lambda: build_image_graph(self.config, px.shape[0], self.dtype))
        out = cg.run(pixel_values=px)
        return [out[n] for n in EMBEDDING_NAMES]

    def __call__(self, pixel_values=None, input_points=None, input_labels=None, input_boxes=None, input_masks=None,
                 image_embeddings=None, multimask_output: bool = True) -> dict:
        """HF Sam2Model.forward: pred_masks [B, P, K, 4h, 4w], iou_scores [B, P, K], object_score_logits
        [B, P, 1] and the image_embeddings used (None when prompting the image `set_image` holds, given
        neither pixel_values nor image_embeddings). Point and box coordinates are in the model's input
        frame (the processor rescales them); labels: 1 foreground, 0 background, -1 not-a-point, -10 padding."""
        if pixel_values is not None and image_embeddings is not None:
            raise InputError("give one of pixel_values and image_embeddings, not both")
        if pixel_values is None and image_embeddings is None and self._image_batch is None:
            raise InputError("give pixel_values or image_embeddings (or call set_image first)")
        if not isinstance(multimask_output, bool):
            raise InputError(f"multimask_output must be a bool, got {multimask_output!r}")
        cached = pixel_values is None and image_embeddings is None
        embs = None
        if pixel_values is not None:
            embs = self.embed_image(pixel_values)
        elif image_embeddings is not None:
            embs = self._embeddings(image_embeddings)
        batch = self._image_batch if cached else embs[2].shape[0]
        feeds = {} if cached else dict(zip(EMBEDDING_NAMES, embs))
        points, labels, boxes = self._prompts(batch, input_points, input_labels, input_boxes)
        n_points = None
        if points is not None:
            feeds.update(input_points=points, input_labels=labels)
            n_points = points.shape[2]
        if boxes is not None:
            feeds["input_boxes"] = boxes
        prompts = (points if points is not None else boxes).shape[1]
        if input_masks is not None:
            feeds["input_masks"] = self._masks(input_masks, batch)
        key = ("prompt", batch, prompts, n_points, boxes is not None, input_masks is not None, multimask_output,
               cached)
        cg = self._compiled_graph(key, lambda: build_prompt_graph(self.config, *key[1:-1], dtype=self.dtype,
                                                                  cached=cached),
                                  self._pools.setdefault(batch, {}) if cached else None)
        out = cg.run(**feeds)
        return {"iou_scores": out["iou_scores"], "pred_masks": out["pred_masks"],
                "object_score_logits": out["object_score_logits"], "image_embeddings": embs}

    # ---- input checks ----------------------------------------------------------------------

    def _pixels(self, pixel_values) -> np.ndarray:
        px = self._floats("pixel_values", pixel_values, 4)
        s, ch = self.config.image_size, self.config.num_channels
        if px.shape[1:] != (ch, s, s):
            raise InputError(f"pixel_values must be [batch, {ch}, {s}, {s}] (the processor's output), got shape "
                             f"{px.shape}")
        return px

    def _floats(self, name: str, a, ndim: int) -> np.ndarray:
        arr = np.asarray(a)
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"{name} must be a float array, got dtype {arr.dtype}")
        if arr.ndim != ndim:
            raise InputError(f"{name} must have {ndim} dims, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise InputError(f"{name} holds NaN or infinite values")
        return np.ascontiguousarray(arr, dtype=as_dtype(self.dtype).np_dtype)

    def _embeddings(self, embs) -> list[np.ndarray]:
        c, side = self.config.decoder_hidden_size, self.config.embedding_size
        if not isinstance(embs, (list, tuple)) or len(embs) != 3:
            raise InputError("image_embeddings must be the list of 3 arrays embed_image returns")
        shapes = ((c // 8, 4 * side, 4 * side), (c // 4, 2 * side, 2 * side), (c, side, side))
        out = []
        for i, (e, shape) in enumerate(zip(embs, shapes)):
            e = self._floats(f"image_embeddings[{i}]", e, 4)
            if e.shape[1:] != shape or e.shape[0] != np.shape(embs[0])[0]:
                raise InputError(f"image_embeddings[{i}] must be [batch, {', '.join(map(str, shape))}], got "
                                 f"shape {e.shape}")
            out.append(e)
        return out

    def _prompts(self, batch: int, points, labels, boxes):
        size = self.config.prompt_image_size
        if points is None and labels is not None:
            raise InputError("input_labels were given without input_points")
        if points is None and boxes is None:  # HF: one not-a-point prompt
            points = np.zeros((batch, 1, 1, 2), np.float32)
            labels = -np.ones((batch, 1, 1), np.int64)
        if points is not None:
            points = self._floats("input_points", points, 4)
            if points.shape[0] != batch or points.shape[3] != 2:
                raise InputError(f"input_points must be [batch={batch}, prompts, points, 2], got shape {points.shape}")
            if labels is None:
                labels = np.ones(points.shape[:3], np.int64)
            labels = np.asarray(labels)
            if not np.issubdtype(labels.dtype, np.integer):
                raise InputError(f"input_labels must be an integer array, got dtype {labels.dtype}")
            if labels.shape != points.shape[:3]:
                raise InputError(f"input_labels has shape {labels.shape}, expected one label per point: "
                                 f"{points.shape[:3]} (input_points is {points.shape})")
            allowed = {PAD_LABEL, -1, *range(self.config.num_point_embeddings)}
            bad = sorted(set(np.unique(labels).tolist()) - allowed)
            if bad:
                raise InputError(f"input_labels holds {bad}; expected 1 (foreground), 0 (background), -1 "
                                 f"(not a point), -10 (padding) or another point-embedding row < "
                                 f"{self.config.num_point_embeddings}")
            real = labels != PAD_LABEL
            outside = real & ((points < 0) | (points > size)).any(axis=-1)
            if outside.any():
                idx = tuple(int(i) for i in np.argwhere(outside)[0])
                raise InputError(f"input_points{list(idx)} = {points[idx].tolist()} lies outside the model's "
                                 f"{size}x{size} input (coordinates are in resized-input pixels)")
            labels = labels.astype(np.int64)
        if boxes is not None:
            boxes = self._floats("input_boxes", boxes, 3)
            if boxes.shape[0] != batch or boxes.shape[2] != 4:
                raise InputError(f"input_boxes must be [batch={batch}, boxes, 4] (x0, y0, x1, y1), got shape "
                                 f"{boxes.shape}")
            if points is not None and points.shape[1] != boxes.shape[1]:
                raise InputError(f"input_points has {points.shape[1]} prompt rows but input_boxes has "
                                 f"{boxes.shape[1]}; give one box per row of points")
            flipped = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
            outside = ((boxes < 0) | (boxes > size)).any(axis=-1)
            for what, bad in (("has x1 < x0 or y1 < y0", flipped), (f"lies outside the {size}x{size} input", outside)):
                if bad.any():
                    idx = tuple(int(i) for i in np.argwhere(bad)[0])
                    raise InputError(f"input_boxes{list(idx)} = {boxes[idx].tolist()} {what}; expected "
                                     f"(x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")
        return points, labels, boxes

    def _masks(self, masks, batch: int) -> np.ndarray:
        side = 4 * self.config.embedding_size
        m = self._floats("input_masks", masks, 4)
        if m.shape != (batch, 1, side, side):
            raise InputError(f"input_masks must be [batch={batch}, 1, {side}, {side}] (low-resolution mask logits, "
                             f"e.g. a previous pred_masks), got shape {m.shape}")
        return m


def sam2_params(weights: WeightMap, cfg: Sam2Config, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Graph parameters from a HF or original-layout SAM 2 checkpoint (detected from its keys)."""
    return KEYS.load(weights, Sam2(cfg, dtype).params())


def load_sam2(path, device: str = "cpu", dtype: str = "float32", **_options) -> Sam2Model:
    d = Path(path)
    cfg = Sam2Config.from_dict(read_config(d))
    params = sam2_params(WeightMap(load_checkpoint_dir(d), source=str(d)), cfg, dtype)
    from .sam2_processor import Sam2Processor

    return Sam2Model(cfg, params, device, dtype, processor=Sam2Processor.from_dir(d, cfg))
