"""CTranslate2 model directories (faster-whisper's format): model.bin + config.json + vocabulary.

``model.bin`` layout (CTranslate2's ``ModelSpec._serialize``, little-endian): uint32 binary
version; for version >= 2 the spec name (a string) and a uint32 spec revision; uint32
variable count; per variable: name, uint8 rank, rank x uint32 dims, uint8 dtype id
(float32, int8, int16, int32, float16, bfloat16), uint32 byte count, the bytes; then
(version >= 3) uint32 alias count and (alias, variable name) pairs. A string is a uint16
length (counting a trailing NUL) and that many bytes.

Int8 / int16 weights carry a ``<name>_scale`` variable; they are dequantized here
(``weight / scale``), so a model reads plain float arrays. :func:`whisper_hf_checkpoint`
maps a ``WhisperSpec`` onto HF Whisper's key names (the fused self-attention QKV and the
cross-attention KV projections are split back into q/k/v) with the HF config and
generation settings derived from the tensors, config.json and tokenizer.json.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.files import read_json_file
from kiln.io.errors import CheckpointError

__all__ = ["CTranslate2Error", "CTranslate2Model", "read_model_bin", "read_ctranslate2_dir",
           "is_ctranslate2_dir", "whisper_hf_checkpoint"]

# dtype id -> NumPy dtype (bfloat16 is read as uint16 bits and widened)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
MODEL_FILE = "model.bin"
# config.json keys CTranslate2 converters write (and HF config.json does not)
_CT2_CONFIG_KEYS = {"suppress_ids", "suppress_ids_begin", "lang_ids", "alignment_heads", "add_source_bos",
                    "add_source_eos", "decoder_start_token", "unk_token", "layer_norm_epsilon"}


class CTranslate2Error(CheckpointError):
    """A CTranslate2 model directory or model.bin is missing, truncated, or not a supported spec."""


@dataclass
class CTranslate2Model:
    """The contents of a CTranslate2 model directory."""

    path: Path
    spec: str                       # e.g. "WhisperSpec"
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray]  # aliases resolved, quantized weights dequantized to float32
    config: dict[str, Any]            # config.json


class _Cursor:
    def __init__(self, data: memoryview, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise CTranslate2Error(f"{self.path}: truncated: {what} needs bytes {self.pos}..{self.pos + n}, "
                                   f"the file has {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", what)
        raw = bytes(self.take(n, what))
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise CTranslate2Error(f"{self.path}: {what} at byte {self.pos - n} is not UTF-8: {raw[:40]!r}") from None


def read_model_bin(path: str | os.PathLike) -> tuple[str, int, int, dict[str, np.ndarray]]:
    """(spec name, spec revision, binary version, variables) of a CTranslate2 model.bin."""
    p = Path(path)
    if not p.is_file():
        raise CTranslate2Error(f"{p}: no such file")
    data = np.memmap(p, dtype=np.uint8, mode="r") if p.stat().st_size else np.zeros(0, np.uint8)
    cur = _Cursor(memoryview(data), p)
    version = cur.unpack("I", "the binary version")
    if not 1 <= version <= 6:
        raise CTranslate2Error(f"{p}: binary version {version} is not a CTranslate2 model.bin version kiln reads "
                               f"(1 to 6)")
    spec, revision = "", 1
    if version >= 2:
        spec = cur.string("the spec name")
        revision = cur.unpack("I", "the spec revision")
    count = cur.unpack("I", "the variable count")
    variables: dict[str, np.ndarray] = {}
    for i in range(count):
        name = cur.string(f"the name of variable {i}")
        rank = cur.unpack("B", f"the rank of '{name}'")
        shape = tuple(cur.unpack("I", f"the shape of '{name}'") for _ in range(rank))
        if version >= 4:
            type_id = cur.unpack("B", f"the dtype of '{name}'")
            if type_id not in _DTYPES:
                raise CTranslate2Error(f"{p}: variable '{name}' has dtype id {type_id}; known ids: {sorted(_DTYPES)}")
            dtype = _DTYPES[type_id]
            nbytes = cur.unpack("I", f"the size of '{name}'")
        else:  # versions 1-3 store the item size; float32 or int8/int16 weights
            item = cur.unpack("B", f"the item size of '{name}'")
            dtype = {4: np.float32, 2: np.int16, 1: np.int8}.get(item)
            if dtype is None:
                raise CTranslate2Error(f"{p}: variable '{name}' has item size {item}; expected 1, 2 or 4")
            nbytes = cur.unpack("I", f"the element count of '{name}'") * item
        raw = cur.take(nbytes, f"the data of '{name}'")
        arr = np.frombuffer(raw, dtype=np.uint16 if dtype == "bfloat16" else dtype)
        if dtype == "bfloat16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        if arr.size != int(np.prod(shape)):
            raise CTranslate2Error(f"{p}: variable '{name}' has {arr.size} elements for shape {shape}")
        variables[name] = arr.reshape(shape)
    if version >= 3:
        for i in range(cur.unpack("I", "the alias count")):
            alias = cur.string(f"alias {i}")
            target = cur.string(f"the target of alias '{alias}'")
            if target not in variables:
                raise CTranslate2Error(f"{p}: alias '{alias}' points to '{target}', which is not a variable")
            variables[alias] = variables[target]
    return spec, revision, version, variables


def _dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int8/int16 weights with a `<name>_scale` -> float32 (CTranslate2 stores round(w * scale))."""
    out = dict(variables)
    done: dict[int, np.ndarray] = {}  # id of a quantized array -> its float32 values
    for name, scale in variables.items():
        if not name.endswith("_scale"):
            continue
        base = name[: -len("_scale")]
        w = variables.get(base)
        if w is None or w.dtype not in (np.int8, np.int16):
            continue
        scale = np.asarray(scale, np.float32)
        flat = w.reshape(w.shape[0], -1).astype(np.float32)
        flat = flat / (scale.reshape(-1, 1) if scale.ndim else scale)
        done[id(w)] = flat.reshape(w.shape)
        del out[name]
    # an alias (e.g. decoder/projection/weight -> decoder/embeddings/weight) shares its target's array
    return {k: done.get(id(a), a) for k, a in out.items()}


def is_ctranslate2_dir(path: str | os.PathLike) -> bool:
    """True for a directory holding model.bin, or a config.json in CTranslate2's style (no model_type)."""
    d = Path(path)
    if not d.is_dir():
        return False
    if (d / MODEL_FILE).is_file():
        return True
    cfg = _read_config(d, required=False)
    return cfg is not None and "model_type" not in cfg and bool(_CT2_CONFIG_KEYS & set(cfg))


def _read_config(d: Path, required: bool = True) -> dict | None:
    path = d / "config.json"
    if not path.is_file():
        return {} if required else None
    return read_json_file(path, "CTranslate2 config.json", CTranslate2Error)


def read_ctranslate2_dir(path: str | os.PathLike) -> CTranslate2Model:
    """Read a CTranslate2 model directory (model.bin and config.json)."""
    d = Path(path)
    if not d.is_dir():
        raise CTranslate2Error(f"{d}: not a directory; a CTranslate2 model is a directory holding {MODEL_FILE}")
    model_bin = d / MODEL_FILE
    if not model_bin.is_file():
        present = sorted(p.name for p in d.iterdir())
        raise CTranslate2Error(f"{model_bin}: missing; a CTranslate2 model directory needs {MODEL_FILE} (the "
                               f"weights) beside config.json; files present: {present}")
    spec, revision, version, variables = read_model_bin(model_bin)
    return CTranslate2Model(d, spec, revision, version, _dequantize(variables), _read_config(d) or {})


# ---- Whisper -----------------------------------------------------------------------------

def _scalar(model: CTranslate2Model, name: str, default=None):
    v = model.variables.get(name)
    return default if v is None else v.reshape(-1)[0].item()


def _layers(variables: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in variables if (m := re.match(re.escape(prefix) + r"layer_(\d+)/", k))}
    if found != set(range(len(found))):
        raise CTranslate2Error(f"{prefix}: layer indices {sorted(found)} are not 0..n-1")
    return len(found)


def whisper_hf_checkpoint(model: CTranslate2Model, tokenizer=None) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """(HF config dict, HF generation config dict, tensors under HF WhisperForConditionalGeneration keys).

    `tokenizer` (a kiln Tokenizer from tokenizer.json) supplies the special token ids.
    """
    src = model.path / MODEL_FILE
    if model.spec != "WhisperSpec":
        raise CTranslate2Error(f"{src}: spec {model.spec!r} is not supported; kiln reads 'WhisperSpec' models")
    v = model.variables

    def need(name):
        if name not in v:
            raise CTranslate2Error(f"{src}: missing variable '{name}'")
        return v[name]

    out: dict[str, np.ndarray] = {}
    d = need("encoder/conv1/weight").shape[0]

    def linear(ct2, hf):
        out[hf + ".weight"] = need(ct2 + "/weight")
        if ct2 + "/bias" in v:
            out[hf + ".bias"] = v[ct2 + "/bias"]

    def norm(ct2, hf):
        out[hf + ".weight"] = need(ct2 + "/gamma")
        out[hf + ".bias"] = need(ct2 + "/beta")

    def split(ct2, hf_names):
        """A fused projection [n*d, d] -> n HF projections; K has no bias in HF Whisper."""
        w, b = need(ct2 + "/weight"), need(ct2 + "/bias")
        n = len(hf_names)
        if w.shape != (n * d, d) or b.shape != (n * d,):
            raise CTranslate2Error(f"{src}: '{ct2}/weight' has shape {w.shape}, expected {(n * d, d)}")
        for j, hf in enumerate(hf_names):
            out[hf + ".weight"] = w[j * d:(j + 1) * d]
            part = b[j * d:(j + 1) * d]
            if hf.endswith("k_proj"):
                if np.any(part != 0):
                    raise CTranslate2Error(f"{src}: '{ct2}/bias' has a nonzero key bias; HF Whisper's k_proj has none")
            else:
                out[hf + ".bias"] = part

    def block(ct2, hf, cross: bool):
        norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        split(f"{ct2}/self_attention/linear_0", [f"{hf}.self_attn.{n}_proj" for n in "qkv"])
        linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
        if cross:
            norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
            linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
            split(f"{ct2}/attention/linear_1", [f"{hf}.encoder_attn.k_proj", f"{hf}.encoder_attn.v_proj"])
            linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
        norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
        linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
        linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")

    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    out["model.encoder.embed_positions.weight"] = need("encoder/position_encodings/encodings")
    enc_layers, dec_layers = _layers(v, "encoder/"), _layers(v, "decoder/")
    for i in range(enc_layers):
        block(f"encoder/layer_{i}", f"model.encoder.layers.{i}", cross=False)
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    out["model.decoder.embed_tokens.weight"] = need("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = need("decoder/position_encodings/encodings")
    for i in range(dec_layers):
        block(f"decoder/layer_{i}", f"model.decoder.layers.{i}", cross=True)
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    proj = v.get("decoder/projection/weight")
    tied = proj is None or proj is v["decoder/embeddings/weight"] or np.array_equal(proj, v["decoder/embeddings/weight"])
    if not tied:
        out["proj_out.weight"] = proj

    vocab = out["model.decoder.embed_tokens.weight"].shape[0]
    if _scalar(model, "decoder/scale_embeddings", 0) or not _scalar(model, "decoder/pre_norm", 1):
        raise CTranslate2Error(f"{src}: decoder flags (scale_embeddings, pre_norm) differ from Whisper's")

    def tid(token):
        i = tokenizer.token_to_id(token) if tokenizer is not None else None
        return None if i is None else int(i)

    eos = tid("<|endoftext|>")
    cfg = {
        "model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"],
        "vocab_size": int(vocab), "num_mel_bins": int(out["model.encoder.conv1.weight"].shape[1]), "d_model": int(d),
        "encoder_layers": enc_layers, "encoder_attention_heads": int(_scalar(model, "encoder/num_heads")),
        "encoder_ffn_dim": int(out["model.encoder.layers.0.fc1.weight"].shape[0]),
        "decoder_layers": dec_layers, "decoder_attention_heads": int(_scalar(model, "decoder/num_heads")),
        "decoder_ffn_dim": int(out["model.decoder.layers.0.fc1.weight"].shape[0]),
        "max_source_positions": int(out["model.encoder.embed_positions.weight"].shape[0]),
        "max_target_positions": int(out["model.decoder.embed_positions.weight"].shape[0]),
        "activation_function": "gelu", "tie_word_embeddings": tied,
        "decoder_start_token_id": tid("<|startoftranscript|>"), "eos_token_id": eos, "pad_token_id": eos,
        "bos_token_id": eos,
    }
    if cfg["encoder_attention_heads"] is None or cfg["decoder_attention_heads"] is None:
        raise CTranslate2Error(f"{src}: missing 'encoder/num_heads' or 'decoder/num_heads'")
    multilingual = vocab >= 51865  # openai/whisper's rule: English-only vocabularies have 51864 ids
    gen: dict[str, Any] = {
        "decoder_start_token_id": cfg["decoder_start_token_id"], "eos_token_id": eos, "pad_token_id": eos,
        "bos_token_id": eos, "no_timestamps_token_id": tid("<|notimestamps|>"),
        "suppress_tokens": list(model.config.get("suppress_ids") or []) or None,
        "begin_suppress_tokens": list(model.config.get("suppress_ids_begin") or []) or None,
        "max_length": cfg["max_target_positions"], "max_initial_timestamp_index": 50,
        "is_multilingual": multilingual,
    }
    if multilingual and tokenizer is not None:
        ids = [int(i) for i in model.config.get("lang_ids") or []]
        gen["lang_to_id"] = {tokenizer.id_to_token(i): i for i in ids}
        gen["task_to_id"] = {t: tid(f"<|{t}|>") for t in ("transcribe", "translate")}
    return cfg, gen, out
