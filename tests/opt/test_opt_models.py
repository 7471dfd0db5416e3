"""Every model family's graphs give the same outputs optimized as written.

The graphs come from the model builders in kiln.models (tiny configs, random weights):
BERT, the Whisper encoder and decoder, the Llama prefill and decode graphs. Each is
compiled with the optimizer and compared with a node-by-node reference run of the graph
as the builder wrote it.
"""

from __future__ import annotations

import numpy as np
import pytest
from opt_testing import reference_run, run_compiled


def _feeds(graph, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, v in {**graph.inputs, **graph.parameters}.items():
        shape, dt = v.shape, v.dtype
        if dt.name == "bool":
            feeds[name] = np.ones(shape, bool)
        elif dt.is_float:
            feeds[name] = (0.2 * rng.standard_normal(shape)).astype(dt.np_dtype)
        elif "mask" in name:
            feeds[name] = np.ones(shape, dt.np_dtype)
        elif "position" in name:
            feeds[name] = np.broadcast_to(np.arange(shape[-1]) + (3 if shape[-1] == 1 else 0), shape).astype(dt.np_dtype)
        elif "token_type" in name:
            feeds[name] = np.zeros(shape, dt.np_dtype)
        else:
            feeds[name] = rng.integers(0, 8, shape).astype(dt.np_dtype)
    return feeds


def _bert():
    from kiln.models.bert import BertConfig, build_bert_graph
    return [build_bert_graph(BertConfig(64, 32, 2, 4, 48, 32, 2, 1e-12, "gelu"), 2, 5)]


def _whisper():
    from kiln.models.whisper import WhisperConfig, build_decoder_graph, build_encoder_graph
    cfg = WhisperConfig.from_dict(dict(
        vocab_size=64, num_mel_bins=8, d_model=32, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=48, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=48,
        max_source_positions=8, max_target_positions=16))
    return [build_encoder_graph(cfg, 1), build_decoder_graph(cfg, 1, 1, 3, 8)]


def _llama():
    from kiln.models.llama import LlamaConfig, LlamaGraphs
    cfg = LlamaConfig.from_hf(dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=8, tie_word_embeddings=True))
    graphs = LlamaGraphs(cfg)
    return [graphs.prefill_graph(2, 5), graphs.prefill_graph(2, 5, last_only=True, cache_len=8),
            graphs.decode_graph(2, 8)]


@pytest.mark.parametrize("family", [_bert, _whisper, _llama], ids=["bert", "whisper", "llama"])
def test_model_graphs_match_when_optimized(family):
    for graph in family():
        feeds = _feeds(graph)
        want = reference_run(graph, feeds)
        got, cg = run_compiled(graph, feeds)
        assert not cg.report.optimizer_fell_back, cg.report.optimizer_reason
        assert cg.report.nodes_after <= cg.report.nodes_before
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=f"{graph.name}:{name}")


def test_integer_matmul_is_optimized_without_falling_back():
    """linear is float-only: the rule that forms it must not fire on an int64 matmul (it did, and the
    optimizer fell back to the unoptimized graph with an OptimizationWarning)."""
    import warnings

    import kiln
    from kiln.opt.optimizer import OptimizationWarning

    g = kiln.Graph()
    x, w = g.input("x", (3, 4), "int64"), g.parameter("w", (5, 4), "int64")
    g.output("y", g.matmul(x, w, transpose_b=True) + g.scalar(1, "int64"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", OptimizationWarning)
        cg = kiln.compile(g)
    assert cg.report.optimized
    cg.load_params({"w": np.arange(20, dtype=np.int64).reshape(5, 4)})
    xs = np.arange(12, dtype=np.int64).reshape(3, 4)
    np.testing.assert_array_equal(cg.run(x=xs)["y"], xs @ np.arange(20).reshape(5, 4).T + 1)
