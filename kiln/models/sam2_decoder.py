"""SAM 2's prompt side: the prompt encoder (points with labels, boxes, mask inputs, random-Fourier
positions), the two-way transformer and the mask decoder (upscaling, hypernetwork MLPs, IoU and
object-score heads, multimask output and the single-mask stability rule).

Prompts of one image form `P` rows (HF's point batch); tensors here are [B * P, tokens, C], and the
image's tensors are broadcast to the P rows of their image. Parameter names are HF `Sam2Model`'s.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph, Value
from kiln.nn import Attention, Conv, Embedding, LayerNorm, Linear, Module, ParamSpec
from kiln.nn.mlp import activation

from .sam2_config import Sam2Config

PROMPT, DECODER = "prompt_encoder", "mask_decoder"
PAD_LABEL, NOT_A_POINT = -10, -1


def per_prompt(g: Graph, x: Value, prompts: int) -> Value:
    """[B, ...] -> [B * P, ...]: each image's rows repeated for its P prompts (repeat_interleave)."""
    if prompts == 1:
        return x
    b, *rest = x.shape
    x = g.broadcast_to(g.reshape(x, shape=[b, 1, *rest]), shape=[b, prompts, *rest])
    return g.reshape(x, shape=[b * prompts, *rest])


def channels_first_norm(g: Graph, norm: LayerNorm, x: Value) -> Value:
    """LayerNorm over the channels of [B, C, H, W]."""
    return g.transpose(norm(g, g.transpose(x, perm=[0, 2, 3, 1])), perm=[0, 3, 1, 2])


class FeedForward(Module):
    """`depth` Linear layers (proj_in, layers.{i}, proj_out) with an activation between, optional sigmoid."""

    def __init__(self, name: str, dim: int, hidden: int, out: int, depth: int, act: str = "relu", *,
                 sigmoid: bool = False, dtype="float32"):
        super().__init__(name, dtype)
        self.act, self.sigmoid = act, sigmoid
        self.proj_in = Linear(f"{name}.proj_in", dim, hidden, bias=True, dtype=dtype)
        self.layers = [Linear(f"{name}.layers.{i}", hidden, hidden, bias=True, dtype=dtype) for i in range(depth - 2)]
        self.proj_out = Linear(f"{name}.proj_out", hidden, out, bias=True, dtype=dtype)

    def __call__(self, g: Graph, x: Value) -> Value:
        x = activation(g, self.proj_in(g, x), self.act)
        for layer in self.layers:
            x = activation(g, layer(g, x), self.act)
        x = self.proj_out(g, x)
        return g.sigmoid(x) if self.sigmoid else x


class FourierPositions(Module):
    """Random-Fourier position encoding of [0, 1] coordinates: [sin, cos](2 pi (2 c - 1) @ G)."""

    def __init__(self, name: str, dim: int, dtype="float32"):
        super().__init__(name, dtype)
        self.dim = dim

    def own_params(self) -> dict[str, ParamSpec]:
        return {"positional_embedding": ParamSpec((2, self.dim // 2), self.dtype)}

    def __call__(self, g: Graph, coords: Value) -> Value:
        c = coords * 2.0 - 1.0
        c = g.linear(c, g.transpose(self.param(g, "positional_embedding"), perm=[1, 0])) * (2 * np.pi)
        return g.concat(g.sin(c), g.cos(c), axis=-1)


def image_positions(g: Graph, pe: FourierPositions, side: int) -> Value:
    """[side * side, C]: the encoding of every image-embedding cell's centre (row-major)."""
    centres = ((np.arange(side, dtype=np.float32) + 1 - 0.5) / np.float32(side)).astype(np.float32)
    grid = np.stack(np.broadcast_arrays(centres[None, :], centres[:, None]), axis=-1).reshape(side * side, 2)
    return pe(g, g.constant(grid.astype(np.float32), name=f"sam2_grid_{side}"))


class PromptEncoder(Module):
    def __init__(self, cfg: Sam2Config, dtype="float32"):
        super().__init__(PROMPT, dtype)
        c, mic = cfg.prompt_hidden_size, cfg.mask_input_channels
        self.cfg = cfg
        self.shared_embedding = FourierPositions(f"{PROMPT}.shared_embedding", c, dtype)
        self.not_a_point_embed = Embedding(f"{PROMPT}.not_a_point_embed", 1, c, dtype=dtype)
        self.no_mask_embed = Embedding(f"{PROMPT}.no_mask_embed", 1, c, dtype=dtype)
        self.conv1 = Conv(f"{PROMPT}.mask_embed.conv1", 1, mic // 4, 2, dims=2, stride=2, dtype=dtype)
        self.norm1 = LayerNorm(f"{PROMPT}.mask_embed.layer_norm1", mic // 4, cfg.prompt_eps, dtype=dtype)
        self.conv2 = Conv(f"{PROMPT}.mask_embed.conv2", mic // 4, mic, 2, dims=2, stride=2, dtype=dtype)
        self.norm2 = LayerNorm(f"{PROMPT}.mask_embed.layer_norm2", mic, cfg.prompt_eps, dtype=dtype)
        self.conv3 = Conv(f"{PROMPT}.mask_embed.conv3", mic, c, 1, dims=2, dtype=dtype)

    def own_params(self) -> dict[str, ParamSpec]:  # rows: one per label 0, 1, then the box corners
        n = self.cfg.num_point_embeddings
        return {"point_embed.weight": ParamSpec((n, self.cfg.prompt_hidden_size), self.dtype, (1,) * n)}

    def points(self, g: Graph, points: Value, labels: Value, pad: bool) -> Value:
        """[B, P, N(+1), C] from points [B, P, N, 2] (input-image pixels) and labels [B, P, N]."""
        b, p, n, _ = points.shape
        points = points + 0.5  # pixel centres
        if pad:  # a not-a-point token, as the original does when no box follows
            points = g.concat(points, g.constant(np.zeros((b, p, 1, 2), np.float32), name="sam2_pad_point"), axis=2)
            labels = g.concat(labels, g.constant(np.full((b, p, 1), NOT_A_POINT, np.int64), name="sam2_pad_label"),
                              axis=2)
        emb = self.shared_embedding(g, points / float(self.cfg.prompt_image_size))
        lab = g.reshape(labels, shape=[*labels.shape, 1])
        emb = g.where(g.equal(lab, g.scalar(NOT_A_POINT, "int64")), self.not_a_point_embed.weight(g), emb)
        emb = g.where(g.not_equal(lab, g.scalar(PAD_LABEL, "int64")), emb, g.scalar(0.0, self.dtype))
        rows = g.embedding(g.clamp(labels, min=0), self.param(g, "point_embed.weight"))
        return emb + rows * g.cast(g.greater_equal(lab, g.scalar(0, "int64")), dtype=self.dtype)

    def boxes(self, g: Graph, boxes: Value) -> Value:
        """[B, P, 3, C] from boxes [B, P, 4] (x0, y0, x1, y1): two corner tokens and a not-a-point token."""
        b, p, _ = boxes.shape
        corners = g.reshape(boxes + 0.5, shape=[b, p, 2, 2])
        emb = self.shared_embedding(g, corners / float(self.cfg.prompt_image_size))
        emb = emb + g.slice(self.param(g, "point_embed.weight"), axes=[0], starts=[2], ends=[4])
        nap = g.broadcast_to(g.reshape(self.not_a_point_embed.weight(g), shape=[1, 1, 1, emb.shape[-1]]),
                             shape=[b, p, 1, emb.shape[-1]])
        return g.concat(emb, nap, axis=2)

    def dense(self, g: Graph, masks: Value | None, batch: int, side: int) -> Value:
        """[B, C, side, side]: the mask input's embedding, or the no-mask embedding everywhere."""
        c = self.cfg.prompt_hidden_size
        if masks is None:
            return g.broadcast_to(g.reshape(self.no_mask_embed.weight(g), shape=[1, c, 1, 1]),
                                  shape=[batch, c, side, side])
        act = self.cfg.prompt_act
        x = activation(g, channels_first_norm(g, self.norm1, self.conv1(g, masks)), act)
        x = activation(g, channels_first_norm(g, self.norm2, self.conv2(g, x)), act)
        return self.conv3(g, x)


def sam_attention(name: str, cfg: Sam2Config, downsample: int, dtype: str) -> Attention:
    """Attention whose Q/K/V project to hidden / downsample wide (SAM's cheaper cross-attention)."""
    c, heads = cfg.decoder_hidden_size, cfg.decoder_heads
    return Attention(name, c, heads, head_dim=c // downsample // heads, qkv_bias=True, out_bias=True,
                     fused_qkv=False, dtype=dtype)


class TwoWayBlock(Module):
    """Token self-attention -> tokens attend to the image -> MLP -> the image attends to the tokens."""

    def __init__(self, name: str, cfg: Sam2Config, skip_first_pe: bool, dtype: str):
        super().__init__(name, dtype)
        c, rate = cfg.decoder_hidden_size, cfg.attention_downsample_rate
        self.skip_first_pe = skip_first_pe
        self.self_attn = sam_attention(f"{name}.self_attn", cfg, 1, dtype)
        self.token_to_image = sam_attention(f"{name}.cross_attn_token_to_image", cfg, rate, dtype)
        self.image_to_token = sam_attention(f"{name}.cross_attn_image_to_token", cfg, rate, dtype)
        self.mlp = FeedForward(f"{name}.mlp", c, cfg.mlp_dim, c, cfg.decoder_layers, dtype=dtype)
        self.norms = [LayerNorm(f"{name}.layer_norm{i}", c, 1e-5, dtype=dtype) for i in range(1, 5)]

    def __call__(self, g: Graph, tokens: Value, image: Value, token_pe: Value, image_pe: Value):
        if self.skip_first_pe:
            tokens = self.self_attn(g, tokens)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(g, q, key=q, value=tokens)
        tokens = self.norms[0](g, tokens)
        keys = image + image_pe
        tokens = self.norms[1](g, tokens + self.token_to_image(g, tokens + token_pe, key=keys, value=image))
        tokens = self.norms[2](g, tokens + self.mlp(g, tokens))
        image = image + self.image_to_token(g, keys, key=tokens + token_pe, value=tokens)
        return tokens, self.norms[3](g, image)


class MaskDecoder(Module):
    def __init__(self, cfg: Sam2Config, dtype="float32"):
        super().__init__(DECODER, dtype)
        c, m = cfg.decoder_hidden_size, cfg.num_mask_tokens
        self.cfg = cfg
        self.obj_score_token = Embedding(f"{DECODER}.obj_score_token", 1, c, dtype=dtype)
        self.iou_token = Embedding(f"{DECODER}.iou_token", 1, c, dtype=dtype)
        self.mask_tokens = Embedding(f"{DECODER}.mask_tokens", m, c, dtype=dtype)
        t = f"{DECODER}.transformer"
        self.layers = [TwoWayBlock(f"{t}.layers.{i}", cfg, i == 0, dtype) for i in range(cfg.decoder_layers)]
        self.final_attn = sam_attention(f"{t}.final_attn_token_to_image", cfg, cfg.attention_downsample_rate, dtype)
        self.final_norm = LayerNorm(f"{t}.layer_norm_final_attn", c, 1e-5, dtype=dtype)
        self.upscale_conv1 = Conv(f"{DECODER}.upscale_conv1", c, c // 4, 2, dims=2, stride=2, transposed=True,
                                  dtype=dtype)
        self.upscale_norm = LayerNorm(f"{DECODER}.upscale_layer_norm", c // 4, 1e-6, dtype=dtype)
        self.upscale_conv2 = Conv(f"{DECODER}.upscale_conv2", c // 4, c // 8, 2, dims=2, stride=2, transposed=True,
                                  dtype=dtype)
        self.hypernetworks = [FeedForward(f"{DECODER}.output_hypernetworks_mlps.{i}", c, c, c // 8, 3, dtype=dtype)
                              for i in range(m)]
        self.iou_head = FeedForward(f"{DECODER}.iou_prediction_head", c, cfg.iou_head_hidden_dim, m,
                                    cfg.iou_head_depth, sigmoid=True, dtype=dtype)
        self.obj_score_head = FeedForward(f"{DECODER}.pred_obj_score_head", c, c, 1, 3, dtype=dtype)
        # applied once per image by the encoder graph, to the two high-resolution FPN levels
        self.conv_s0 = Conv(f"{DECODER}.conv_s0", c, c // 8, 1, dims=2, dtype=dtype)
        self.conv_s1 = Conv(f"{DECODER}.conv_s1", c, c // 4, 1, dims=2, dtype=dtype)

    def transformer(self, g: Graph, tokens: Value, image: Value, image_pe: Value) -> tuple[Value, Value]:
        queries, keys = tokens, image
        for layer in self.layers:
            queries, keys = layer(g, queries, keys, tokens, image_pe)
        q = queries + tokens
        queries = queries + self.final_attn(g, q, key=keys + image_pe, value=keys)
        return self.final_norm(g, queries), keys

    def __call__(self, g: Graph, image: Value, image_pe: Value, sparse: Value, high_res: tuple[Value, Value],
                 batch: int, prompts: int, multimask: bool) -> dict[str, Value]:
        """image [B*P, C, h, w] (dense prompt added), image_pe [h*w, C], sparse [B*P, T, C],
        high_res (s0 [B*P, C/8, 4h, 4w], s1 [B*P, C/4, 2h, 2w]) -> pred_masks, iou_scores, object_score_logits."""
        rows, c, h, w = image.shape
        m = self.cfg.num_mask_tokens
        out_tokens = g.concat(self.obj_score_token.weight(g), self.iou_token.weight(g), self.mask_tokens.weight(g),
                              axis=0)
        out_tokens = g.broadcast_to(g.reshape(out_tokens, shape=[1, 2 + m, c]), shape=[rows, 2 + m, c])
        tokens = g.concat(out_tokens, sparse, axis=1)
        flat = g.transpose(g.reshape(image, shape=[rows, c, h * w]), perm=[0, 2, 1])
        pe = g.broadcast_to(g.reshape(image_pe, shape=[1, h * w, c]), shape=[rows, h * w, c])
        tokens, flat = self.transformer(g, tokens, flat, pe)

        grid = g.reshape(g.transpose(flat, perm=[0, 2, 1]), shape=[rows, c, h, w])
        s0, s1 = high_res
        up = channels_first_norm(g, self.upscale_norm, self.upscale_conv1(g, grid) + s1)
        up = g.gelu(self.upscale_conv2(g, g.gelu(up)) + s0)                       # [rows, C/8, 4h, 4w]
        token = lambda i: g.reshape(g.slice(tokens, axes=[1], starts=[i], ends=[i + 1]), shape=[rows, c])  # noqa: E731
        hyper = g.concat(*(g.reshape(mlp(g, token(2 + i)), shape=[rows, 1, c // 8])
                           for i, mlp in enumerate(self.hypernetworks)), axis=1)  # [rows, M, C/8]
        hh, ww = up.shape[2:]
        masks = g.matmul(hyper, g.reshape(up, shape=[rows, c // 8, hh * ww]))      # [rows, M, 4h*4w]
        iou = self.iou_head(g, token(1))                                            # [rows, M]
        obj = self.obj_score_head(g, token(0))                                      # [rows, 1]
        if multimask:
            masks = g.slice(masks, axes=[1], starts=[1], ends=[m])
            iou = g.slice(iou, axes=[1], starts=[1], ends=[m])
        elif self.cfg.dynamic_multimask_via_stability:
            masks, iou = self.select_stable(g, masks, iou)
        else:
            masks = g.slice(masks, axes=[1], starts=[0], ends=[1])
            iou = g.slice(iou, axes=[1], starts=[0], ends=[1])
        k = masks.shape[1]
        return {"pred_masks": g.reshape(masks, shape=[batch, prompts, k, hh, ww]),
                "iou_scores": g.reshape(iou, shape=[batch, prompts, k]),
                "object_score_logits": g.reshape(obj, shape=[batch, prompts, 1])}

    def select_stable(self, g: Graph, masks: Value, iou: Value) -> tuple[Value, Value]:
        """The single-mask output (token 0) where it is stable (the IoU of its masks thresholded at +-delta
        is >= thresh), else the multimask output with the highest predicted IoU."""
        rows, m, n = masks.shape
        delta, f32 = self.cfg.stability_delta, self.dtype
        single = g.slice(masks, axes=[1], starts=[0], ends=[1])                     # [rows, 1, n]
        inter = g.sum(g.cast(g.greater(single, g.scalar(delta, f32)), dtype="float32"), axes=[2])
        union = g.sum(g.cast(g.greater(single, g.scalar(-delta, f32)), dtype="float32"), axes=[2])
        score = g.where(g.greater(union, g.scalar(0.0)), inter / g.maximum(union, g.scalar(1.0)), g.scalar(1.0))
        stable = g.greater_equal(score, g.scalar(self.cfg.stability_thresh))       # [rows, 1]
        multi_iou = g.slice(iou, axes=[1], starts=[1], ends=[m])
        best = g.reshape(g.argmax(multi_iou, axis=1), shape=[rows, 1])
        best_iou = g.take_along_axis(multi_iou, best, axis=1)
        best_mask = g.take_along_axis(g.slice(masks, axes=[1], starts=[1], ends=[m]),
                                      g.broadcast_to(g.reshape(best, shape=[rows, 1, 1]), shape=[rows, 1, n]), axis=1)
        mask = g.where(g.reshape(stable, shape=[rows, 1, 1]), single, best_mask)
        return mask, g.where(stable, g.slice(iou, axes=[1], starts=[0], ends=[1]), best_iou)


__all__ = ["FeedForward", "FourierPositions", "MaskDecoder", "PromptEncoder", "image_positions", "per_prompt"]
