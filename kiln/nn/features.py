"""Features from another modality (image patches, audio frames) written at their token positions.

A vision-language or audio-language model runs its encoder once per prompt and hands the
decoder one row of the decoder's width per placeholder token (`<image>`, `<audio>`, ...). The
prefill graph then takes two more inputs: `inputs_embeds` [B, S, hidden] (rows at the
placeholder positions, anything elsewhere) and `embeds_mask` [B, S] bool (True at the
placeholders), and uses a row of `inputs_embeds` wherever the mask says so, in place of the
token embedding (after any embedding scale the family applies, as HF merges them).
"""

from __future__ import annotations

from kiln.ir import Graph

INPUTS_EMBEDS, EMBEDS_MASK = "inputs_embeds", "embeds_mask"


def feature_inputs(g: Graph, batch: int, seq: int, hidden: int, dtype: str):
    """The two graph inputs of a prefill that takes features: (inputs_embeds, embeds_mask)."""
    return g.input(INPUTS_EMBEDS, (batch, seq, hidden), dtype), g.input(EMBEDS_MASK, (batch, seq), "bool")


def place_features(g: Graph, x, features):
    """Token embeddings x [B, S, H] with the feature rows where the mask is set; x itself without features."""
    if features is None:
        return x
    embeds, mask = features
    b, s = mask.shape
    return g.where(g.reshape(mask, shape=[b, s, 1]), embeds, x)
