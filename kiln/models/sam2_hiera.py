"""SAM 2's image encoder: the Hiera backbone (multi-scale stages, windowed and global attention, query
pooling between stages, windowed absolute position embeddings) and the FPN neck.

Feature maps stay channels-last [B, H, W, C] through the backbone (the layout its LayerNorms and
Linears want); the neck switches to channels-first [B, C, H, W] for its convolutions. Parameter
names are HF `Sam2Model`'s (`vision_encoder.backbone.*`, `vision_encoder.neck.*`).
"""

from __future__ import annotations

from kiln.io.errors import ConfigError
from kiln.ir import Graph, Value
from kiln.nn import MLP, Attention, Conv, LayerNorm, Linear, Module, ParamSpec, merge_heads
from kiln.nn.window import max_pool_stride, resize_bicubic, upsample_nearest2x, window_partition, window_unpartition

from .sam2_config import Sam2Config

BACKBONE, NECK = "vision_encoder.backbone", "vision_encoder.neck"


class HieraBlock(Module):
    """LayerNorm -> (windowed) attention, whose queries are max-pooled at a stage change -> residual ->
    LayerNorm -> MLP -> residual. At a stage change the residual is projected and pooled too."""

    def __init__(self, name: str, dim: int, dim_out: int, heads: int, window: int, query_stride, cfg: Sam2Config,
                 dtype: str):
        super().__init__(name, dtype)
        eps = cfg.backbone_eps
        self.dim_out, self.heads, self.window, self.query_stride = dim_out, heads, window, query_stride
        self.norm1 = LayerNorm(f"{name}.layer_norm1", dim, eps, dtype=dtype)
        self.attn = Attention(f"{name}.attn", dim, heads, head_dim=dim_out // heads, qkv_bias=True, out_bias=True,
                              out_dim=dim_out, names={"qkv": "qkv", "out": "proj"}, dtype=dtype)
        self.norm2 = LayerNorm(f"{name}.layer_norm2", dim_out, eps, dtype=dtype)
        self.mlp = MLP(f"{name}.mlp", dim_out, int(dim_out * cfg.mlp_ratio), cfg.backbone_act, bias=True,
                       names={"up": "proj_in", "down": "proj_out"}, dtype=dtype)
        self.proj = Linear(f"{name}.proj", dim, dim_out, bias=True, dtype=dtype) if dim != dim_out else None

    def __call__(self, g: Graph, x: Value) -> Value:
        shortcut = x
        x = self.norm1(g, x)
        if self.proj is not None:
            shortcut = self.proj(g, x)
            if self.query_stride:
                shortcut = max_pool_stride(g, shortcut, self.query_stride)
        if self.window:
            x, _ = window_partition(g, x, self.window)
        n, h, w, c = x.shape
        q, k, v = self.attn.project(g, g.reshape(x, shape=[n, h * w, c]))
        if self.query_stride:  # pool the queries over each window's grid: the stage's downsampling
            hd = self.dim_out // self.heads
            grid = g.reshape(g.transpose(q, perm=[0, 2, 1, 3]), shape=[n, h, w, self.dim_out])
            grid = max_pool_stride(g, grid, self.query_stride)
            h, w = grid.shape[1:3]
            q = g.transpose(g.reshape(grid, shape=[n, h * w, self.heads, hd]), perm=[0, 2, 1, 3])
        o = self.attn.out(g, merge_heads(g, self.attn.attend(g, q, k, v)))
        o = g.reshape(o, shape=[n, h, w, self.dim_out])
        if self.window:
            size = self.window // self.query_stride[0] if self.query_stride else self.window
            hh, ww = shortcut.shape[1:3]
            o = window_unpartition(g, o, size, (hh + (-hh) % size, ww + (-ww) % size), (hh, ww))
        x = shortcut + o
        return x + self.mlp(g, self.norm2(g, x))


class HieraBackbone(Module):
    """Patch embedding + position embeddings, then the blocks; returns each stage's last output."""

    def __init__(self, cfg: Sam2Config, dtype: str = "float32"):
        super().__init__(BACKBONE, dtype)
        self.cfg = cfg
        self.patch_embed = Conv(f"{BACKBONE}.patch_embed.projection", cfg.num_channels, cfg.hidden_size,
                                cfg.patch_kernel_size, dims=2, stride=list(cfg.patch_stride),
                                padding=list(cfg.patch_padding), dtype=dtype)
        self.blocks, self.stage_ends = [], []
        total = 0
        for stage, count in enumerate(cfg.blocks_per_stage):
            for j in range(count):
                first = stage > 0 and j == 0  # takes the previous stage's width and window
                dim = cfg.embed_dim_per_stage[stage - 1 if first else stage]
                window = cfg.window_size_per_stage[stage - 1 if first else stage]
                window = 0 if total in cfg.global_attention_blocks else window
                stride = cfg.query_stride if 0 < stage <= cfg.num_query_pool_stages and j == 0 else None
                self.blocks.append(HieraBlock(f"{BACKBONE}.blocks.{total}", dim, cfg.embed_dim_per_stage[stage],
                                              cfg.heads_per_stage[stage], window, stride, cfg, dtype))
                total += 1
            self.stage_ends.append(total - 1)

    def own_params(self) -> dict[str, ParamSpec]:
        c, w = self.cfg.hidden_size, self.cfg.window_size_per_stage[0]
        return {"pos_embed": ParamSpec((1, c, *self.cfg.pos_embed_background), self.dtype),
                "pos_embed_window": ParamSpec((1, c, w, w), self.dtype)}

    def position_embedding(self, g: Graph, h: int, w: int) -> Value:
        """[1, H, W, C]: the background embedding resized (bicubic) plus the window embedding tiled."""
        c, win = self.cfg.hidden_size, self.cfg.window_size_per_stage[0]
        if h % win or w % win:
            raise ConfigError(f"SAM 2: the patch grid {h}x{w} is not a multiple of window_size_per_stage[0] "
                              f"({win}), so the window position embedding does not tile it")
        bg = g.reshape(self.param(g, "pos_embed"), shape=[c, *self.cfg.pos_embed_background])
        bg = g.transpose(resize_bicubic(g, bg, (h, w)), perm=[1, 2, 0])                   # [H, W, C]
        tile = g.transpose(g.reshape(self.param(g, "pos_embed_window"), shape=[c, win, win]), perm=[1, 2, 0])
        tile = g.broadcast_to(g.reshape(tile, shape=[1, win, 1, win, c]), shape=[h // win, win, w // win, win, c])
        return g.reshape(bg + g.reshape(tile, shape=[h, w, c]), shape=[1, h, w, c])

    def __call__(self, g: Graph, pixels: Value) -> list[Value]:
        x = g.transpose(self.patch_embed(g, pixels), perm=[0, 2, 3, 1])
        x = x + self.position_embedding(g, *x.shape[1:3])
        stages = []
        for i, block in enumerate(self.blocks):
            x = block(g, x)
            if i in self.stage_ends:
                stages.append(x)
        return stages


class FpnNeck(Module):
    """1x1 lateral convolutions per stage, top-down nearest-2x sums at `fpn_top_down_levels`; returns the
    last `num_feature_levels` levels, highest resolution first, channels-first."""

    def __init__(self, cfg: Sam2Config, dtype: str = "float32"):
        super().__init__(NECK, dtype)
        self.cfg = cfg
        self.convs = [Conv(f"{NECK}.convs.{j}", ch, cfg.fpn_hidden_size, cfg.fpn_kernel_size, dims=2,
                           stride=cfg.fpn_stride, padding=cfg.fpn_padding, dtype=dtype)
                      for j, ch in enumerate(cfg.backbone_channel_list)]

    def __call__(self, g: Graph, stages: list[Value]) -> list[Value]:
        n = len(self.convs) - 1
        levels, prev = [], None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](g, g.transpose(stages[i], perm=[0, 3, 1, 2]))
            if i in self.cfg.fpn_top_down_levels and i != n:
                prev = lateral + upsample_nearest2x(g, prev)
            else:
                prev = lateral
            levels.append(prev)
        return levels[-self.cfg.num_feature_levels:][::-1]
