"""Whisper decoding with HF `WhisperForConditionalGeneration.generate` semantics.

* **Prompt**: ``<|startoftranscript|>``, the language (given, or detected from the
  first 30 s window: the arg-max of the language tokens' logits after the start
  token), the task (``<|transcribe|>`` / ``<|translate|>``) and, unless timestamps
  are predicted, ``<|notimestamps|>``. Legacy ``forced_decoder_ids`` in
  generation_config.json are honoured as HF does when neither is given.
* **Logit rules**, in HF's order: suppress ``begin_suppress_tokens`` at the first
  generated position, suppress ``suppress_tokens`` always, and with timestamps
  the timestamp grammar (pairs, monotonic, first token a timestamp of at most
  ``max_initial_timestamp_index``, timestamps forced when their total
  probability beats every text token).
* **Search**: greedy (arg-max, finished rows padded) or beam search with HF's
  vectorized algorithm (log-softmax then rules, top ``2 * beams`` continuations,
  length penalty on finished hypotheses, HF's early-stop heuristic).
* **Windows**: audio longer than one window (3000 frames = 30 s) is decoded
  window by window; each window's tokens are split into segments at timestamp
  pairs and the next window starts at the last complete segment's end, as in
  HF's (and the Whisper paper's) sequential long-form algorithm. Without
  temperature fallback, prompt conditioning or no-speech detection.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from kiln.files import read_json_if_present
from kiln.io.audio import load_audio
from kiln.io.errors import ConfigError
from kiln.io.log_mel import HOP_LENGTH, log_mel_spectrogram

TIME_PRECISION = 0.02  # seconds per timestamp token
FRAME_SECONDS = HOP_LENGTH / 16000  # seconds per mel frame (0.01)
INPUT_STRIDE = 2  # mel frames per encoder position (and per timestamp step)

# Whisper's languages: token code -> English name (the order is the vocabulary's).
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada",
    "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao",
    "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa",
    "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}
LANGUAGE_ALIASES = {
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb", "pushto": "ps",
    "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si", "castilian": "es", "mandarin": "zh",
}
TASKS = ("transcribe", "translate")
# generation options HF's Whisper generate honours but this decoder does not implement, with their no-op values
UNSUPPORTED = {"do_sample": False, "temperature": 1.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
               "num_return_sequences": 1, "condition_on_prev_tokens": False, "compression_ratio_threshold": None,
               "logprob_threshold": None, "no_speech_threshold": None}


# ---- generation config ------------------------------------------------------------

@dataclass
class WhisperGenerationConfig:
    """The fields of generation_config.json that Whisper decoding reads (HF defaults otherwise)."""

    decoder_start_token_id: int
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    no_timestamps_token_id: int | None = None
    lang_to_id: dict[str, int] | None = None
    task_to_id: dict[str, int] | None = None
    is_multilingual: bool | None = None
    language: str | None = None
    task: str | None = None
    forced_decoder_ids: list | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    max_initial_timestamp_index: int | None = None
    return_timestamps: bool | None = None
    max_length: int = 20
    max_new_tokens: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    source: str = field(default="generation_config.json", repr=False)

    @classmethod
    def from_dict(cls, d: dict, source: str = "generation_config.json") -> WhisperGenerationConfig:
        names = {f.name for f in fields(cls)} - {"source"}
        if d.get("decoder_start_token_id") is None:
            raise ConfigError(f"{source}: Whisper generation needs 'decoder_start_token_id' "
                              f"(the <|startoftranscript|> id)")
        ignored = {k: v for k, v in d.items() if k in UNSUPPORTED and v not in (UNSUPPORTED[k], None)}
        if ignored:
            warnings.warn(f"{source}: generation options {ignored} are not supported by kiln's Whisper decoding "
                          f"and are ignored (greedy or beam search, no sampling or fallback)", stacklevel=3)
        return cls(**{k: v for k, v in d.items() if k in names and v is not None}, source=source)

    @classmethod
    def from_dir(cls, d: Path, cfg, tokenizer=None) -> WhisperGenerationConfig:
        """generation_config.json if present, else the ids config.json and the tokenizer define."""
        path = Path(d) / "generation_config.json"
        raw = read_json_if_present(path, "generation config", ConfigError)   # only a regular JSON object file
        if raw is not None:
            return cls.from_dict(raw, str(path))
        raw = {"decoder_start_token_id": cfg.decoder_start_token_id, "eos_token_id": cfg.eos_token_id,
               "pad_token_id": cfg.pad_token_id, "max_length": cfg.max_target_positions}
        if tokenizer is not None:
            tid = tokenizer.token_to_id
            raw["no_timestamps_token_id"] = tid("<|notimestamps|>")
            langs = {f"<|{c}|>": tid(f"<|{c}|>") for c in LANGUAGES if tid(f"<|{c}|>") is not None}
            tasks = {t: tid(f"<|{t}|>") for t in TASKS if tid(f"<|{t}|>") is not None}
            if langs:
                raw["lang_to_id"], raw["is_multilingual"] = langs, True
            if len(tasks) == 2:
                raw["task_to_id"] = tasks
        return cls.from_dict(raw, f"{d} (no generation_config.json)")

    @property
    def eos_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([int(x) for x in e] if isinstance(e, (list, tuple)) else [int(e)])

    @property
    def pad_id(self) -> int | None:
        """HF falls back to the (first) eos id when no pad id is set."""
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        return self.eos_ids[0] if self.eos_ids else None


def language_token(language: str, lang_to_id: dict[str, int]) -> str:
    """'en', 'english' or '<|en|>' -> '<|en|>' (checked against the model's languages)."""
    lang = language.lower()
    if lang in lang_to_id:
        tok = lang
    elif lang in LANGUAGES:
        tok = f"<|{lang}|>"
    else:
        by_name = {name: code for code, name in LANGUAGES.items()} | LANGUAGE_ALIASES
        if lang not in by_name:
            raise ValueError(f"unknown language {language!r}; expected a Whisper language code (e.g. 'en'), "
                             f"name (e.g. 'english') or token (e.g. '<|en|>')")
        tok = f"<|{by_name[lang]}|>"
    if tok not in lang_to_id:
        raise ValueError(f"language {language!r} ({tok}) is not one of this model's languages")
    return tok


# ---- logit rules ----------------------------------------------------------------

def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32 (rows of -inf stay -inf)."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, np.float32(0))
    with np.errstate(divide="ignore"):
        return (x - m) - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


class LogitRules:
    """HF's Whisper logits processors, in its order: begin-suppress, suppress, timestamp rules."""

    def __init__(self, gc: WhisperGenerationConfig, begin_index: int, timestamps: bool, vocab_size: int):
        self.begin_index = begin_index

        def ids(tokens):
            return np.asarray([t for t in tokens or () if 0 <= t < vocab_size], dtype=np.int64)

        self.begin_suppress = ids(gc.begin_suppress_tokens)
        self.suppress = ids(gc.suppress_tokens)
        self.timestamps = timestamps
        if timestamps:
            self.no_timestamps = gc.no_timestamps_token_id
            self.timestamp_begin = gc.no_timestamps_token_id + 1
            eos = gc.eos_ids[0] if gc.eos_ids else gc.bos_token_id
            self.eos = eos
            self.max_initial = gc.max_initial_timestamp_index

    def __call__(self, seqs: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Apply the rules in place to scores [rows, vocab] given the tokens so far [rows, length]."""
        if self.begin_suppress.size and seqs.shape[1] == self.begin_index:
            scores[:, self.begin_suppress] = -np.inf
        if self.suppress.size:
            scores[:, self.suppress] = -np.inf
        if self.timestamps:
            self._timestamp_rules(seqs, scores)
        return scores

    def _timestamp_rules(self, seqs, scores):
        tb = self.timestamp_begin
        scores[:, self.no_timestamps] = -np.inf
        for k, row in enumerate(seqs[:, self.begin_index:].tolist()):
            last_ts = len(row) >= 1 and row[-1] >= tb
            penultimate_ts = len(row) < 2 or row[-2] >= tb
            if last_ts:
                if penultimate_ts:  # a pair just closed: text (or eos) next
                    scores[k, tb:] = -np.inf
                else:  # an open timestamp: another timestamp or eos next
                    scores[k, :self.eos] = -np.inf
            stamps = [t for t in row if t >= tb]
            floor = tb
            if stamps:  # timestamps never decrease (and <|0.00|> is not repeated)
                floor = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
            scores[k, tb:floor] = -np.inf
        if seqs.shape[1] == self.begin_index:  # the first token is a timestamp, not too late
            scores[:, :tb] = -np.inf
            if self.max_initial is not None:
                scores[:, tb + self.max_initial + 1:] = -np.inf
        logprobs = log_softmax(scores.astype(np.float32))
        with np.errstate(divide="ignore"):
            ts_mass = np.logaddexp.reduce(logprobs[:, tb:], axis=-1)
        best_text = logprobs[:, :tb].max(axis=-1)
        scores[ts_mass > best_text, :tb] = -np.inf


# ---- searches -----------------------------------------------------------------

def greedy_search(state, prompt: np.ndarray, rules: LogitRules, max_length: int, eos_ids, pad_id) -> np.ndarray:
    """Arg-max decoding until every row hit eos or max_length; finished rows are padded with pad_id."""
    seqs = prompt
    unfinished = np.ones(len(prompt), bool)
    logits = state.step(prompt)[:, -1]
    while True:
        scores = rules(seqs, logits.astype(np.float32, copy=True))
        nxt = scores.argmax(axis=-1)
        if pad_id is not None:
            nxt = np.where(unfinished, nxt, pad_id)
        seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
        done = np.isin(nxt, eos_ids) | (seqs.shape[1] >= max_length)
        unfinished &= ~done
        if not unfinished.any():
            return seqs
        logits = state.step(nxt[:, None])[:, -1]


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row, largest first (ties: lower index first)."""
    return np.argsort(-x, axis=-1, kind="stable")[:, :k]


def _gather(t: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """t[b, idx[b, j], ...] for [batch, beams, ...] arrays."""
    return np.take_along_axis(t, idx.reshape(idx.shape + (1,) * (t.ndim - 2)), axis=1)


def beam_search(state, prompt: np.ndarray, rules: LogitRules, max_length: int, eos_ids, pad_id, num_beams: int,
                length_penalty: float = 1.0, early_stopping: bool | str = False) -> np.ndarray:
    """HF's vectorized beam search; `prompt` is [batch * num_beams, length] (utterance-major).

    Returns the best finished hypothesis of each utterance, [batch, prompt + generated].
    """
    f32 = np.float32
    rows, plen = prompt.shape
    nb, batch = num_beams, rows // num_beams
    keep = max(2, 1 + len(eos_ids)) * nb
    top_mask = np.arange(keep) < nb
    fill = (pad_id if pad_id else eos_ids[0]) if eos_ids else -1  # HF: `pad or eos[0]`
    running = np.full((batch, nb, max_length), fill, np.int64)
    running[:, :, :plen] = prompt.reshape(batch, nb, plen)
    sequences = running.copy()
    running_scores = np.zeros((batch, nb), f32)
    running_scores[:, 1:] = -1e9  # only the first beam's continuations count at the first step
    beam_scores = np.full((batch, nb), -1e9, f32)
    finished = np.zeros((batch, nb), bool)
    may_improve = np.ones((batch, 1), bool)
    running_idx = np.full((batch, nb, max_length - plen), -1, np.int64)
    beam_idx = running_idx.copy()
    cur_len = plen
    logits = state.step(prompt)[:, -1]
    while True:
        vocab = logits.shape[-1]
        logp = rules(running[:, :, :cur_len].reshape(rows, cur_len), log_softmax(logits.astype(f32)))
        logp = (logp.reshape(batch, nb, vocab) + running_scores[:, :, None]).reshape(batch, nb * vocab)
        # top-k continuations over all beams
        top = _topk(logp, keep)
        top_lp = np.take_along_axis(logp, top, axis=1)
        src_beam, token = top // vocab, top % vocab
        top_seqs = _gather(running, src_beam)
        top_seqs[:, :, cur_len] = token
        top_idx = _gather(running_idx, src_beam)
        top_idx[:, :, cur_len - plen] = src_beam + np.arange(batch)[:, None] * nb
        hits = np.isin(token, eos_ids) | (cur_len + 1 >= max_length)
        # the best unfinished continuations run on
        run_lp = (top_lp + hits.astype(f32) * f32(-1e9)).astype(f32)
        nxt = _topk(run_lp, nb)
        running, running_scores, running_idx = _gather(top_seqs, nxt), _gather(run_lp, nxt), _gather(top_idx, nxt)
        # finished continuations among the top num_beams join the finished set if they beat it
        just_done = hits & top_mask[None, :]
        fin_lp = (top_lp / f32((cur_len + 1 - plen) ** length_penalty)).astype(f32)
        full = np.all(finished, axis=-1, keepdims=True) & (early_stopping is True)
        fin_lp = fin_lp + full.astype(f32) * f32(-1e9)
        fin_lp = fin_lp + (~may_improve).astype(f32) * f32(-1e9)
        fin_lp = (fin_lp + (~just_done).astype(f32) * f32(-1e9)).astype(f32)
        merged_scores = np.concatenate([beam_scores, fin_lp], axis=1)
        sel = _topk(merged_scores, nb)
        sequences = _gather(np.concatenate([sequences, top_seqs], axis=1), sel)
        beam_scores = _gather(merged_scores, sel)
        beam_idx = _gather(np.concatenate([beam_idx, top_idx], axis=1), sel)
        finished = _gather(np.concatenate([finished, just_done], axis=1), sel)
        state.reorder(running_idx[:, :, cur_len - plen].reshape(rows))
        cur_len += 1
        # HF's early-stop heuristic (early_stopping=False/True: best running score at the current length)
        best_len = (max_length if early_stopping == "never" and length_penalty > 0 else cur_len) - plen
        best_running = running_scores[:, :1] / f32(best_len ** length_penalty)
        worst_done = np.where(finished, beam_scores.min(axis=1, keepdims=True), f32(-1e9))
        may_improve = may_improve & np.any(best_running > worst_done, axis=-1, keepdims=True)
        open_beam = not (finished.all() and early_stopping is True)
        if not (may_improve.any() and open_beam and not hits.all()):
            break
        logits = state.step(running[:, :, cur_len - 1].reshape(rows, 1))[:, -1]
    best, best_idx = sequences[:, 0], beam_idx[:, 0]
    generated = int((best_idx != -1).sum(axis=1).max())
    return best[:, :plen + generated]


# ---- prompts and language detection -------------------------------------------

def _window(features: np.ndarray, start: int, frames: int, size: int) -> np.ndarray:
    """features[:, :, start:start + frames], zero-padded to `size` frames (as HF pads a window)."""
    w = features[:, :, start:start + frames]
    if w.shape[-1] < size:
        w = np.pad(w, ((0, 0), (0, 0), (0, size - w.shape[-1])))
    return w


def _lang_ids(model, enc) -> np.ndarray:
    gc = model.generation_config
    logits = model.start_decoding(enc).step(np.full((enc.batch, 1), gc.decoder_start_token_id, np.int64))[:, -1]
    allowed = np.zeros(logits.shape[-1], bool)
    allowed[list(gc.lang_to_id.values())] = True
    return np.where(allowed, logits.astype(np.float32), -np.inf).argmax(axis=-1)


def detect_language(model, input_features) -> list[str]:
    """The most likely language token of each item, from its first 30 s window."""
    gc = model.generation_config
    if not gc.lang_to_id:
        raise ValueError(f"{gc.source} has no lang_to_id: this checkpoint cannot detect languages")
    feats = _check_features(model, input_features)
    enc = model.encode(_window(feats, 0, model.config.num_frames, model.config.num_frames))
    by_id = {v: k for k, v in gc.lang_to_id.items()}
    return [by_id[int(i)] for i in _lang_ids(model, enc)]


def _init_tokens(model, gc: WhisperGenerationConfig, batch: int, return_timestamps: bool, first_window):
    """HF's `_retrieve_init_tokens`: the forced prompt of every item. `first_window()` returns the
    encoder output of the first window, for language detection."""
    def replace_or_add(lst, num, itr):
        if any(i in lst for i in itr):
            return [num if i in itr else i for i in lst]
        return lst + [num]

    task, language = gc.task, gc.language
    init = [gc.decoder_start_token_id]
    if task is None and language is None and gc.forced_decoder_ids:
        forced = [list(f) for f in gc.forced_decoder_ids]
        if forced[0][0] == 1:
            i = 1
            while forced and forced[0][0] == i:
                init.append(forced.pop(0)[1])
                i += 1
            if forced:
                raise ValueError(f"{gc.source}: forced_decoder_ids {gc.forced_decoder_ids} do not follow "
                                 f"Whisper's prompt pattern (positions 1, 2, 3, ...)")
    lang_undefined = len(init) <= 1 or init[1] is None
    if isinstance(language, (list, tuple)):
        if len(language) != batch:
            raise ValueError(f"got {len(language)} languages for a batch of {batch}")
        languages = list(language)
    else:
        languages = [language] * batch
    inits = [list(init) for _ in range(batch)]
    lang_ids = None
    if language is not None:
        lang_ids = [gc.lang_to_id[language_token(x, gc.lang_to_id)] for x in languages]
    elif gc.lang_to_id and lang_undefined:
        lang_ids = _lang_ids(model, first_window()).tolist()
    if lang_ids is not None:
        for t, lid in zip(inits, lang_ids):
            if len(t) > 1:
                t[1] = lid
            else:
                t.append(lid)
    out = []
    for t in inits:
        if task is not None:
            if task not in TASKS:
                raise ValueError(f"task {task!r} is not supported; expected one of {TASKS}")
            t.append(gc.task_to_id[task])
            t = replace_or_add(t, gc.task_to_id[task], list(gc.task_to_id.values()))
        elif language is not None and gc.task_to_id and not any(x in t for x in gc.task_to_id.values()):
            t.append(gc.task_to_id["transcribe"])
        if not return_timestamps and gc.no_timestamps_token_id is not None and t[-1] != gc.no_timestamps_token_id:
            t.append(gc.no_timestamps_token_id)
        elif return_timestamps and t[-1] == gc.no_timestamps_token_id:
            t = t[:-1]
        out.append([x for x in t if x is not None])
    return out


def _check_features(model, input_features) -> np.ndarray:
    feats = np.asarray(input_features)
    if feats.ndim != 3 or feats.shape[1] != model.config.num_mel_bins or feats.shape[0] < 1 or feats.shape[2] < 1:
        raise ValueError(f"input_features must be [batch, {model.config.num_mel_bins}, frames], got shape {feats.shape}")
    if not np.issubdtype(feats.dtype, np.floating):
        raise TypeError(f"input_features must be a float array, got dtype {feats.dtype}")
    return feats


# ---- segments -------------------------------------------------------------------

def _strip(seq: np.ndarray, pad_id, eos_ids) -> np.ndarray:
    """HF: drop the padding of a finished row (keeping one eos when pad == eos), then the eos."""
    if len(seq) and pad_id is not None and seq[-1] == pad_id:
        n_pad = int((seq == pad_id).sum()) - (1 if pad_id in eos_ids else 0)
        if n_pad:
            seq = seq[:-n_pad]
    if len(seq) and seq[-1] in eos_ids:
        seq = seq[:-1]
    return seq


def split_segments(seq: np.ndarray, seek: int, seek_frames: int, timestamp_begin: int):
    """HF's `_retrieve_segment`: segments of one window's tokens and the frames to advance."""
    time_offset = seek * TIME_PRECISION / INPUT_STRIDE
    toks = [int(t) for t in seq]
    is_ts = [t >= timestamp_begin for t in toks]
    single_ending = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(toks) - 1) if is_ts[i] and is_ts[i + 1]]
    segments = []
    if cuts:
        if single_ending:
            cuts.append(len(toks))
        else:
            cuts[-1] += 1  # keep the closing timestamp pair in the last segment
        last = 0
        for n, cut in enumerate(cuts):
            part = toks[last:cut]
            end_at = -1 if n < len(cuts) - 1 or single_ending else -2
            segments.append({"start": time_offset + float(part[0] - timestamp_begin) * TIME_PRECISION,
                             "end": time_offset + float(part[end_at] - timestamp_begin) * TIME_PRECISION,
                             "tokens": np.asarray(part, np.int64)})
            last = cut
        if single_ending:  # no speech after the last timestamp: the window is done
            advance = seek_frames
        else:  # the window ends mid-segment: resume at the last complete segment's end
            advance = (toks[last - 2] - timestamp_begin) * INPUT_STRIDE
    else:
        stamps = [t for t, s in zip(toks, is_ts) if s]
        end_pos = float(int(seek_frames * FRAME_SECONDS / TIME_PRECISION))
        if stamps and stamps[-1] != timestamp_begin:
            end_pos = float(stamps[-1] - timestamp_begin)
        segments.append({"start": time_offset, "end": time_offset + end_pos * TIME_PRECISION,
                         "tokens": np.asarray(toks, np.int64)})
        advance = seek_frames
    if advance <= 0:  # HF would decode the same window forever; move on instead
        advance = seek_frames
    return segments, advance


# ---- generate -------------------------------------------------------------------

def generate(model, input_features, *, language=None, task: str | None = None, return_timestamps: bool | None = None,
             num_beams: int | None = None, max_length: int | None = None, max_new_tokens: int | None = None,
             length_penalty: float | None = None, early_stopping: bool | str | None = None, attention_mask=None,
             is_multilingual: bool | None = None, return_segments: bool = False):
    """Token ids of each item's transcript, like HF `WhisperForConditionalGeneration.generate`.

    input_features: [batch, n_mels, frames] log-mel features; more than 3000 frames (30 s) is long-form
    audio, decoded in sequential windows with timestamps. language: code, name or token (one, or one per
    item); None detects it. task: "transcribe" / "translate" / None (the generation config's).
    num_beams, length_penalty, early_stopping, max_length, max_new_tokens override the generation config.
    attention_mask [batch, frames] gives each item's real length in a padded long-form batch.

    Returns int64 [batch, tokens] (the generated tokens of all windows, without the prompt or eos,
    right-padded with pad_token_id), or with return_segments a dict with "sequences", "segments"
    (per item: dicts with start, end in seconds and tokens) and "prompt_ids" (each item's forced prompt).
    """
    cfg = model.config
    gc = copy.deepcopy(model.generation_config)
    feats = _check_features(model, input_features)
    batch, total = feats.shape[0], feats.shape[2]
    if not np.all(np.isfinite(feats)):
        raise ValueError("input_features contain NaN or Inf values")
    if num_beams is not None:
        gc.num_beams = int(num_beams)
    if max_length is not None:
        gc.max_length = int(max_length)
    if max_new_tokens is not None:
        gc.max_new_tokens = int(max_new_tokens)
    if length_penalty is not None:
        gc.length_penalty = float(length_penalty)
    if early_stopping is not None:
        if early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
        gc.early_stopping = early_stopping
    if gc.num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {gc.num_beams}")
    window = cfg.num_frames
    short = total <= window

    if return_timestamps is None:
        return_timestamps = gc.return_timestamps
    if not short:
        if return_timestamps is False:
            raise ValueError(f"input_features have {total} frames (> {window}, 30 s): long-form decoding predicts "
                             f"timestamps; pass return_timestamps=True or None")
        return_timestamps = True
    return_timestamps = bool(return_timestamps)
    if return_timestamps and gc.no_timestamps_token_id is None:
        raise ValueError(f"{gc.source} has no no_timestamps_token_id: this checkpoint cannot predict timestamps")
    timestamp_begin = gc.no_timestamps_token_id + 1 if gc.no_timestamps_token_id is not None else cfg.vocab_size + 1

    if is_multilingual is not None:
        gc.is_multilingual = is_multilingual
    if gc.is_multilingual is False and (task is not None or language is not None):
        raise ValueError("this is an English-only Whisper checkpoint: it takes no task or language")
    if language is not None:
        if not gc.lang_to_id:
            raise ValueError(f"{gc.source} has no lang_to_id: cannot set language {language!r}")
        gc.language = language
    if task is not None:
        if not gc.task_to_id:
            raise ValueError(f"{gc.source} has no task_to_id: cannot set task {task!r}")
        gc.task = task

    cached = {}

    def first_window():
        w = _window(feats, 0, window, window)
        cached["window"], cached["enc"] = w, model.encode(w)
        return cached["enc"]

    prompts = _init_tokens(model, gc, batch, return_timestamps, first_window)
    plen = len(prompts[0])
    rules = LogitRules(gc, plen, return_timestamps, cfg.vocab_size)
    eos_ids, pad_id = gc.eos_ids, gc.pad_id

    if attention_mask is not None and not short and batch > 1:
        mask = np.asarray(attention_mask)
        if mask.shape != (batch, total):
            raise ValueError(f"attention_mask must be [{batch}, {total}], got shape {mask.shape}")
        max_frames = mask.sum(-1).astype(np.int64)
    else:
        max_frames = np.full(batch, total, np.int64)
    seek = np.zeros(batch, np.int64)
    segments: list[list[dict]] = [[] for _ in range(batch)]
    step_max_length = gc.max_length
    while (seek < max_frames).any():
        active = [i for i in range(batch) if seek[i] < max_frames[i]]
        frames = np.minimum(max_frames - seek, window)
        win = np.concatenate([_window(feats[i:i + 1], int(seek[i]), int(frames[i]), window) for i in active])
        if "window" in cached and np.array_equal(win, cached["window"]):
            enc = cached["enc"]  # the language-detection pass already encoded this window
        else:
            enc = model.encode(win)
        cached.clear()
        prompt = np.asarray([prompts[i] for i in active], np.int64)
        # HF's `_set_max_new_tokens_and_length` (which grows max_length by the prompt on every window)
        if gc.max_new_tokens is None:
            step_max_length = min(step_max_length + min(cfg.max_target_positions // 2 - 1, plen),
                                  cfg.max_target_positions)
            limit = step_max_length
        else:
            if gc.max_new_tokens + plen > cfg.max_target_positions:
                raise ValueError(f"prompt of {plen} tokens + max_new_tokens {gc.max_new_tokens} exceeds "
                                 f"max_target_positions {cfg.max_target_positions}")
            limit = plen + gc.max_new_tokens
        if limit <= plen:
            raise ValueError(f"max_length {limit} leaves no room to generate after the {plen}-token prompt")
        if gc.num_beams > 1:
            state = model.start_decoding(enc, group=gc.num_beams)
            out = beam_search(state, np.repeat(prompt, gc.num_beams, axis=0), rules, limit, eos_ids, pad_id,
                              gc.num_beams, gc.length_penalty, gc.early_stopping)
        else:
            out = greedy_search(model.start_decoding(enc), prompt, rules, limit, eos_ids, pad_id)
        for j, i in enumerate(active):
            seq = _strip(out[j, plen:], pad_id, eos_ids)
            segs, advance = split_segments(seq, int(seek[i]), int(frames[i]), timestamp_begin)
            segments[i] += segs
            seek[i] += advance

    tokens = [np.concatenate([s["tokens"] for s in segs]) if segs else np.zeros(0, np.int64) for segs in segments]
    width = max(len(t) for t in tokens)
    sequences = np.full((batch, width), pad_id if pad_id is not None else 0, np.int64)
    for i, t in enumerate(tokens):
        sequences[i, :len(t)] = t
    if return_segments:
        return {"sequences": sequences, "segments": segments, "prompt_ids": prompts}
    return sequences


# ---- text -----------------------------------------------------------------------

def decode_text(tokenizer, ids, timestamp_begin: int) -> str:
    """Text of token ids without special or timestamp tokens (as HF's decode(skip_special_tokens=True))."""
    out, run = [], []
    for t in list(ids) + [timestamp_begin]:
        if t >= timestamp_begin:
            if run:
                out.append(tokenizer.decode(run, skip_special_tokens=True))
            run = []
        else:
            run.append(int(t))
    return "".join(out)


def transcribe(model, path_or_array, language: str | None = None, task: str = "transcribe",
               return_segments: bool = False, sampling_rate: int | None = None, num_beams: int | None = None):
    """Transcribe (or translate) an audio file or array of any rate and channel count.

    Up to 30 s is one padded window (timestamps only with return_segments); longer audio is decoded
    in sequential 30 s windows with timestamps. Returns the text, or with return_segments a dict with
    "text", "language" (e.g. "en", None for English-only models) and "segments" (start, end, text).
    """
    if model.tokenizer is None:
        raise ValueError("this checkpoint has no tokenizer.json; use model.generate on features instead")
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not supported; expected one of {TASKS}")
    gc = model.generation_config
    multilingual = gc.is_multilingual is not False and bool(gc.lang_to_id)
    if not multilingual:
        if task != "transcribe":
            raise ValueError("this is an English-only Whisper checkpoint: it cannot translate")
        if language is not None and language.lower() not in ("en", "english", "<|en|>"):
            raise ValueError(f"this is an English-only Whisper checkpoint: language {language!r} is not available")
        language, task_arg = None, None
    else:
        task_arg = task
    audio = load_audio(path_or_array, sampling_rate=sampling_rate)
    n_samples = model.config.num_frames * HOP_LENGTH
    feats = log_mel_spectrogram(audio, n_mels=model.config.num_mel_bins, pad_or_trim=len(audio) <= n_samples)
    if feats.shape[-1] == 0:
        raise ValueError(f"audio of {len(audio)} samples is shorter than one mel frame ({HOP_LENGTH} samples)")
    out = generate(model, feats[None], language=language, task=task_arg,
                   return_timestamps=True if return_segments else None, num_beams=num_beams, return_segments=True)
    tb = gc.no_timestamps_token_id + 1 if gc.no_timestamps_token_id is not None else model.config.vocab_size + 1
    text = decode_text(model.tokenizer, out["sequences"][0], tb)
    if not return_segments:
        return text
    prompt = out["prompt_ids"][0]
    by_id = {v: k for k, v in (gc.lang_to_id or {}).items()}
    lang = by_id[prompt[1]][2:-2] if len(prompt) > 1 and prompt[1] in by_id else None
    segs = [{"start": s["start"], "end": s["end"], "text": decode_text(model.tokenizer, s["tokens"], tb),
             "tokens": s["tokens"].tolist()} for s in out["segments"][0]]
    return {"text": text, "language": lang, "segments": segs}
