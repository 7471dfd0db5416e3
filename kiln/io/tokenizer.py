"""Tokenizers loaded from HF files, behaving like ``transformers``' fast tokenizers.

Why not just use transformers: it is a reference in kiln's tests, not a
runtime dependency. The ``tokenizers`` library does the actual work
(tokenizer.json holds the whole pipeline); this module adds what HF layers on
top of it, matching ``PreTrainedTokenizerFast`` (transformers 5) on the same
files:

- named special tokens (bos/eos/unk/sep/pad/cls/mask) from
  tokenizer_config.json, or legacy special_tokens_map.json;
- ``add_bos_token``/``add_eos_token``: read and exposed, but, as in
  transformers 5, the post-processor in tokenizer.json decides what encode adds;
- batch padding (left/right) into NumPy arrays;
- ``clean_up_tokenization_spaces`` on decode (not for BPE models, as HF);
- chat templates rendered with the same sandboxed jinja2 environment
  (``raise_exception``, ``strftime_now``, a non-escaping ``tojson``,
  trim_blocks/lstrip_blocks, special tokens as variables);
- incremental decoding for streaming (:class:`StreamDecoder`).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tokenizers
from tokenizers import AddedToken

from kiln.io.errors import TokenizerError
from kiln.files import read_json_file, read_text_file

__all__ = ["Tokenizer", "StreamDecoder", "SPECIAL_TOKEN_NAMES", "clean_up_tokenization"]

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_ADDED_TOKEN_FIELDS = ("single_word", "lstrip", "rstrip", "normalized", "special")


def _token_content(value: Any) -> str | None:
    """A special token as written in HF json: a string or an AddedToken dict."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"special token {value!r}: expected a string or an object with 'content'")


def _added_token(value: dict) -> AddedToken:
    """An AddedToken from its HF json form ({"content": ..., "lstrip": ..., ...})."""
    return AddedToken(value["content"], **{k: value[k] for k in _ADDED_TOKEN_FIELDS if k in value})


def _read_json(path: Path) -> Any:
    return read_json_file(path, "tokenizer file", TokenizerError, expect=None)


def _read_text(path: Path) -> str:
    return read_text_file(path, "tokenizer file", TokenizerError)


class Tokenizer:
    """A HF fast tokenizer without transformers. Build with :meth:`from_dir`."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: Mapping[str, str | None] | None = None,
        extra_special_tokens: Sequence[str] = (),
        chat_template: str | Mapping[str, str] | None = None,
        padding_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        model_max_length: int | None = None,
        source: str = "<tokenizer>",
    ):
        if padding_side not in ("left", "right"):
            raise TokenizerError(f"{source}: padding_side must be 'left' or 'right', found {padding_side!r}")
        self._tk = backend
        # kiln pads itself and never truncates silently.
        self._tk.no_padding()
        self._tk.no_truncation()
        self.source = source
        self._special = {name: (special_tokens or {}).get(name) for name in SPECIAL_TOKEN_NAMES}
        self.extra_special_tokens = list(extra_special_tokens)
        self.chat_template = dict(chat_template) if isinstance(chat_template, Mapping) else chat_template
        self.padding_side = padding_side
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.model_max_length = model_max_length

    # ---- loading ----------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> "Tokenizer":
        """Load tokenizer.json + tokenizer_config.json (+ special_tokens_map.json, chat templates)."""
        d = Path(directory)
        tj = d / "tokenizer.json"
        if not os.path.lexists(tj):
            others = sorted(p.name for p in d.glob("*")) if d.is_dir() else []
            raise TokenizerError(
                f"{d}: no tokenizer.json (the HF fast-tokenizer file kiln loads); "
                f"files present: {others or 'none (directory missing?)'}"
            )
        try:
            backend = tokenizers.Tokenizer.from_str(_read_text(tj))
        except TokenizerError:
            raise
        except Exception as e:
            raise TokenizerError(f"{tj}: the tokenizers library cannot load it: {e}") from None

        cfg_path = d / "tokenizer_config.json"
        cfg = _read_json(cfg_path) if os.path.lexists(cfg_path) else {}
        if not isinstance(cfg, dict):
            raise TokenizerError(f"{cfg_path}: expected a JSON object")

        raw_special: dict[str, Any] = {k: cfg.get(k) for k in SPECIAL_TOKEN_NAMES if cfg.get(k) is not None}
        extra = cfg.get("extra_special_tokens") or cfg.get("additional_special_tokens") or []
        if isinstance(extra, dict):  # model-specific named extras: {"image_token": "<img>"}
            extra = list(extra.values())
        extra = list(extra)
        # As HF: special_tokens_map.json (legacy) overrides the config unless the config
        # carries the modern added_tokens_decoder.
        stm_path = d / "special_tokens_map.json"
        if "added_tokens_decoder" not in cfg and os.path.lexists(stm_path):
            stm = _read_json(stm_path)
            if not isinstance(stm, dict):
                raise TokenizerError(f"{stm_path}: expected a JSON object")
            for k, v in stm.items():
                if k in SPECIAL_TOKEN_NAMES and v is not None:
                    raw_special[k] = v
                elif k in ("additional_special_tokens", "extra_special_tokens") and isinstance(v, list):
                    extra += [t for t in v if t not in extra]

        cls._add_declared_tokens(backend, cfg.get("added_tokens_decoder") or {}, raw_special, extra)

        special = {k: _token_content(v) for k, v in raw_special.items()}
        padding = backend.padding
        if special.get("pad_token") is None and padding:
            special["pad_token"] = padding.get("pad_token")
        padding_side = cfg.get("padding_side") or (padding or {}).get("direction") or "right"

        chat_template = cls._load_chat_template(d, cfg)
        mml = cfg.get("model_max_length")
        return cls(
            backend,
            special_tokens=special,
            extra_special_tokens=[_token_content(t) for t in extra],
            chat_template=chat_template,
            padding_side=padding_side,
            clean_up_tokenization_spaces=bool(cfg.get("clean_up_tokenization_spaces", False)),
            add_bos_token=cfg.get("add_bos_token"),
            add_eos_token=cfg.get("add_eos_token"),
            model_max_length=int(mml) if isinstance(mml, (int, float)) and mml < 1e18 else None,
            source=str(d),
        )

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any], source: str = "<gguf>") -> "Tokenizer":
        """A tokenizer from a GGUF file's ``tokenizer.*`` metadata (see :mod:`kiln.io.gguf`).

        ``tokenizer.ggml.model`` "gpt2": byte-level BPE with the file's merges, split as
        llama.cpp splits for ``tokenizer.ggml.pre``; "llama": SentencePiece-style BPE
        (``▁`` for spaces, byte fallback), merges from the file or derived from the scores.
        Control tokens (type 3) become special added tokens, user-defined ones (type 4)
        plain added tokens; bos/eos/unk/pad and the chat template come from the metadata.
        """
        from kiln.io.gguf import tokenizer_backend

        backend, specials = tokenizer_backend(meta, source)
        add_bos = meta.get("tokenizer.ggml.add_bos_token")
        add_eos = meta.get("tokenizer.ggml.add_eos_token")
        return cls(
            backend,
            special_tokens=specials,
            chat_template=meta.get("tokenizer.chat_template"),
            add_bos_token=None if add_bos is None else bool(add_bos),
            add_eos_token=None if add_eos is None else bool(add_eos),
            source=source,
        )

    @staticmethod
    def _add_declared_tokens(backend: tokenizers.Tokenizer, decoder: dict, raw_special: dict, extra: list) -> None:
        """Add tokens the config declares but tokenizer.json lacks, as HF's constructor does.

        Entries of ``added_tokens_decoder`` that differ from the backend's added
        tokens, then named/extra special tokens that are not added tokens yet
        (a named token is always registered as special).
        """
        existing = {t.content: repr(t) for t in backend.get_added_tokens_decoder().values()}
        by_content: dict[str, AddedToken] = {}
        for _, v in sorted(decoder.items(), key=lambda kv: int(kv[0])):
            if isinstance(v, dict) and isinstance(v.get("content"), str):
                by_content[v["content"]] = _added_token(v)
        to_add = [t for c, t in by_content.items() if existing.get(c) != repr(t)]
        named = {_token_content(v) for v in raw_special.values()}
        seen = set(existing) | {t.content for t in to_add}
        for value in [*raw_special.values(), *extra]:
            content = _token_content(value)
            if content in seen:
                continue
            tok = by_content.get(content) or (
                _added_token(value) if isinstance(value, dict) else AddedToken(content, special=True)
            )
            if content in named and not tok.special:
                tok = AddedToken(content, **{k: getattr(tok, k) for k in _ADDED_TOKEN_FIELDS[:-1]}, special=True)
            to_add.append(tok)
            seen.add(content)
        if to_add:
            backend.add_tokens(to_add)

    @staticmethod
    def _load_chat_template(d: Path, cfg: dict) -> str | dict[str, str] | None:
        """chat_template.jinja and additional_chat_templates/*.jinja win over tokenizer_config.json, as in HF."""
        templates: dict[str, str] = {}
        if os.path.lexists(d / "chat_template.jinja"):
            templates["default"] = _read_text(d / "chat_template.jinja")
        extra_dir = d / "additional_chat_templates"
        if extra_dir.is_dir():
            for f in sorted(extra_dir.glob("*.jinja")):
                templates[f.name.removesuffix(".jinja")] = _read_text(f)
        if templates:
            return templates["default"] if list(templates) == ["default"] else templates
        if os.path.lexists(d / "chat_template.json"):  # processor-style file: {"chat_template": "..."}
            ct = _read_json(d / "chat_template.json")
            if isinstance(ct, dict) and ct.get("chat_template"):
                return ct["chat_template"]
        ct = cfg.get("chat_template")
        if isinstance(ct, list):  # [{"name": ..., "template": ...}, ...]
            return {t["name"]: t["template"] for t in ct}
        return ct

    # ---- special tokens ---------------------------------------------------
    def _special_id(self, name: str) -> int | None:
        tok = self._special.get(name)
        return None if tok is None else self._tk.token_to_id(tok)

    bos_token = property(lambda self: self._special["bos_token"])
    eos_token = property(lambda self: self._special["eos_token"])
    pad_token = property(lambda self: self._special["pad_token"])
    unk_token = property(lambda self: self._special["unk_token"])
    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    pad_token_id = property(lambda self: self._special_id("pad_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens that are set (the variables a chat template sees)."""
        return {k: v for k, v in self._special.items() if v is not None}

    @property
    def all_special_ids(self) -> list[int]:
        toks = list(self.special_tokens_map.values()) + self.extra_special_tokens
        ids = [self._tk.token_to_id(t) for t in dict.fromkeys(toks)]
        return [i for i in ids if i is not None]

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the valid id range is ``[0, vocab_size)``)."""
        return self._tk.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tk

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(int(token_id))

    # ---- encode / decode --------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens (e.g. BOS) as the post-processor adds them."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, found {type(text).__name__}")
        return self._tk.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(
        self,
        texts: Sequence[str],
        add_special_tokens: bool = True,
        padding_side: str | None = None,
        pad_token_id: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode and pad to the longest: ``(input_ids, attention_mask)``, both int64 ``[batch, seq]``.

        ``padding_side`` defaults to the tokenizer's (``tokenizer_config.json``,
        else right); use ``"left"`` for batched generation.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_batch expects a sequence of str")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise TokenizerError(f"padding_side must be 'left' or 'right', found {side!r}")
        seqs = [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=add_special_tokens)]
        width = max((len(s) for s in seqs), default=0)
        pad = self.pad_token_id if pad_token_id is None else int(pad_token_id)
        if pad is None and any(len(s) != width for s in seqs):
            raise TokenizerError(
                f"{self.source}: sequences of different lengths need padding but the tokenizer has no pad token "
                f"(pad_token={self.pad_token!r}); pass pad_token_id="
            )
        ids = np.full((len(seqs), width), pad if pad is not None else 0, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for i, s in enumerate(seqs):
            if not s:
                continue
            sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
            ids[i, sl] = s
            mask[i, sl] = 1
        return ids, mask

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TokenizerError(f"decode expects a 1-D sequence of integer ids, found shape {arr.shape} {arr.dtype}")
        out = [int(i) for i in arr]
        n = self.vocab_size
        bad = [i for i in out if not 0 <= i < n]
        if bad:
            raise TokenizerError(f"{self.source}: token ids {bad[:5]} out of range [0, {n})")
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (a list or 1-D integer array)."""
        text = self._tk.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.cleans_up_spaces else text

    @property
    def cleans_up_spaces(self) -> bool:
        """Whether decode applies HF's clean-up (which HF skips for BPE, where it corrupts text)."""
        return self.clean_up_tokenization_spaces and type(self._tk.model).__name__ != "BPE"

    def stream_decoder(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # ---- chat templates ---------------------------------------------------
    def get_chat_template(self, name: str | None = None, tools: list | None = None) -> str:
        """The template string: by ``name`` when the tokenizer has several, else the default."""
        ct = self.chat_template
        if isinstance(ct, dict):
            if name is not None:
                if name not in ct:
                    raise TokenizerError(f"{self.source}: no chat template named {name!r}; have {sorted(ct)}")
                return ct[name]
            if tools is not None and "tool_use" in ct:
                return ct["tool_use"]
            if "default" in ct:
                return ct["default"]
            raise TokenizerError(f"{self.source}: several chat templates {sorted(ct)} and none is 'default'; pass name=")
        if ct is None:
            raise TokenizerError(
                f"{self.source}: no chat template (looked in chat_template.jinja, "
                "additional_chat_templates/, and tokenizer_config.json 'chat_template')"
            )
        return ct

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        *,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        template_name: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render a conversation to text exactly as HF ``apply_chat_template(tokenize=False)``.

        ``kwargs`` become template variables (overriding the special tokens).
        Tokenize the result with ``encode(text, add_special_tokens=False)``
        (or :meth:`encode_chat`), since the template writes its own BOS.
        """
        if not messages:
            raise TokenizerError("cannot apply a chat template to an empty conversation")
        chat = []
        for m in messages:
            if not isinstance(m, Mapping):
                raise TypeError(f"chat messages must be dicts, found {m!r}")
            m = {k: copy.deepcopy(v) for k, v in m.items() if v is not None}  # HF drops None-valued keys
            reasoning = next((m[k] for k in ("reasoning_content", "thinking", "reasoning") if k in m), None)
            if reasoning is not None:  # HF aliases reasoning fields for templates
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
            chat.append(m)
        template = _compile_template(self.get_chat_template(template_name, tools))
        variables = {**self.special_tokens_map, **kwargs}
        try:
            return template.render(
                messages=chat, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt, **variables
            )
        except Exception as e:
            import jinja2

            if isinstance(e, jinja2.TemplateError):
                raise TokenizerError(f"{self.source}: chat template error: {e}") from e
            raise

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs) -> list[int]:
        """Token ids of the rendered conversation (``add_special_tokens=False``, as HF)."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text, add_special_tokens=False)


def clean_up_tokenization(text: str) -> str:
    """HF's ``clean_up_tokenization``: drop the spaces WordPiece decoding puts before punctuation."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


@functools.lru_cache(maxsize=16)
def _compile_template(source: str):
    """Compile a chat template in an environment equivalent to transformers'."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant spans for HF's
        # assistant-token masks; when only rendering, it is a pass-through block.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson HTML-escapes; HF's does not.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class _Namespace(jinja2.utils.Namespace):
        # As HF: no underscore-prefixed attributes on namespaces (a sandbox hardening).
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                _Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            _Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attribute {name!r}")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(f"chat template has a syntax error at line {e.lineno}: {e.message}") from None


class StreamDecoder:
    """Turn a stream of token ids into a stream of text pieces.

    Decoding one id at a time is wrong for byte-level BPE (an emoji spans
    several tokens, each alone an invalid UTF-8 fragment) and for
    SentencePiece (a token's leading space depends on its neighbour). This
    keeps a small window of ids, re-decodes it, and emits only text that is
    final: nothing while the tail decodes to an incomplete character
    (U+FFFD). The concatenation of everything returned by :meth:`step` and
    :meth:`flush` equals ``tokenizer.decode(all_ids)``.

    With HF's space clean-up active (WordPiece tokenizers), a later token can
    change earlier text (``it ' s`` becomes ``it's``), so the last
    ``CLEANUP_HOLDBACK`` characters are held back until more text or
    :meth:`flush` arrives.
    """

    CLEANUP_HOLDBACK = 32

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before this have been emitted
        self._clean = tokenizer.cleans_up_spaces
        self._raw = ""  # raw (uncleaned) text so far, only kept when cleaning
        self._emitted = 0  # characters of cleaned text emitted

    def _decode_raw(self, ids: list[int]) -> str:
        return self.tokenizer.backend.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _raw_step(self) -> str:
        prefix_text = self._decode_raw(self.ids[self._prefix : self._read])
        new_text = self._decode_raw(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def _emit(self, raw_piece: str, final: bool) -> str:
        if not self._clean:
            return raw_piece
        self._raw += raw_piece
        cleaned = clean_up_tokenization(self._raw)
        upto = len(cleaned) if final else max(len(cleaned) - self.CLEANUP_HOLDBACK, self._emitted)
        out = cleaned[self._emitted : upto]
        self._emitted = upto
        return out

    def step(self, token_id: int) -> str:
        """Add one id; return the newly final text ("" if none yet)."""
        self.ids.extend(self.tokenizer._check_ids([token_id]))
        return self._emit(self._raw_step(), final=False)

    def extend(self, ids: Iterable[int]) -> str:
        """Add several ids; return the newly final text."""
        return "".join(self.step(i) for i in ids)

    def flush(self) -> str:
        """Emit whatever is still pending (incomplete characters decode as U+FFFD)."""
        piece = ""
        if self._read < len(self.ids):
            prefix_text = self._decode_raw(self.ids[self._prefix : self._read])
            new_text = self._decode_raw(self.ids[self._prefix :])
            self._prefix = self._read = len(self.ids)
            piece = new_text[len(prefix_text) :]
        return self._emit(piece, final=True)

    def stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Yield non-empty text pieces as ``ids`` arrive, then the flushed remainder."""
        for i in ids:
            piece = self.step(i)
            if piece:
                yield piece
        tail = self.flush()
        if tail:
            yield tail
