"""The collector pause around compile time (`kiln/compile/gc_pause.py`)."""

import gc

from kiln.compile.gc_pause import gc_paused


def test_the_collector_is_off_inside_and_back_after_the_outermost_block(monkeypatch):
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    monkeypatch.setenv("KILN_GC_PAUSE", "0")
    with gc_paused():
        assert gc.isenabled()


def test_a_block_left_by_an_exception_turns_it_back_on():
    try:
        with gc_paused():
            raise KeyError("x")
    except KeyError:
        pass
    assert gc.isenabled()


def test_compile_graph_leaves_the_collector_as_it_found_it():
    from kiln.api import reference_evaluate
    from kiln.compile import compile_graph
    from kiln.models.llama import LlamaConfig, LlamaGraphs
    cfg = LlamaConfig(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    compile_graph(LlamaGraphs(cfg, "float32").prefill_graph(1, 4), evaluate=reference_evaluate, cache=False)
    assert gc.isenabled()
