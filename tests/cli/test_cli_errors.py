"""Every bad input to `kiln` is one stderr line and exit status 2; no traceback unless --debug."""

from __future__ import annotations

import pytest
from cli_helpers import run_kiln

# (argv, words the one error line must contain)
CASES = [
    # argument checks (argparse, one line instead of the usage block)
    (["embed", "--dtype", "foo", "hi"], ["kiln embed: error:", "--dtype", "'foo'", "float32"]),
    (["embed", "--device", "tpu", "hi"], ["--device", "'tpu'", "cpu", "cuda"]),
    (["embed", "--batch-size", "0", "hi"], ["--batch-size", "positive integer", "0"]),
    (["embed", "--batch-size", "two", "hi"], ["--batch-size", "'two'"]),
    (["run", "llama", "--prompt", "x", "--max-new-tokens", "0"], ["--max-new-tokens", "positive integer"]),
    (["run", "llama", "--prompt", "x", "--top-p", "1.5"], ["--top-p", "(0, 1]"]),
    (["run", "llama", "--prompt", "x", "--temperature", "0"], ["--temperature", "> 0"]),
    (["train", "digits", "--device", "cuda"], ["kiln train: error:", "--device", "'cuda'", "cpu"]),
    (["train", "digits", "--epochs", "0"], ["--epochs", "positive integer"]),
    (["train", "cifar"], ["'cifar'", "digits"]),
    (["frobnicate"], ["kiln: error:", "'frobnicate'", "embed"]),
    ([], ["kiln: error:", "COMMAND"]),
    # embed
    (["embed"], ["kiln embed: error:", "sentences", "--file"]),
    (["embed", "--similarity", "only a query"], ["--similarity", "at least one sentence"]),
    (["embed", "--out", "embeddings.txt", "hi"], ["--out", "embeddings.txt", ".npy"]),
    (["embed", "--file", "missing.txt"], ["missing.txt", "No such file"]),
    (["embed", "--model", "/nonexistent/model", "hi"], ["/nonexistent/model", "no such directory"]),
    (["embed", "--model", "nobody/nothing", "hi"], ["nobody/nothing", "not found"]),
    (["embed", "--model", "llama", "hi"], ["is a 'llama' checkpoint", "BERT"]),
    (["embed", "--model", "whisper", "hi"], ["is a 'whisper' checkpoint", "BERT"]),
    (["embed", "--model", "noconfig", "hi"], ["noconfig", "no config.json"]),
    (["embed", "--model", "badjson", "hi"], ["config.json", "invalid JSON"]),
    (["embed", "--model", "bert", "hi"], ["config.json", "vocab_size"]),
    # run
    (["run", "/nonexistent/model", "--prompt", "x"], ["kiln run: error:", "/nonexistent/model"]),
    (["run", "mamba", "--prompt", "x"], ["'mamba'", "not supported", "llama"]),
    (["run", "bert", "--prompt", "x"], ["is a 'bert' checkpoint", "kiln embed --model"]),
    (["run", "llama"], ["--prompt", "'llama' language model"]),
    (["run", "llama", "clip.wav"], ["clip.wav", "speech models", "--prompt"]),
    (["run", "llama", "--prompt", "hi"], ["config.json", "hidden_size"]),
    (["run", "junk.gguf", "--prompt", "hi"], ["junk.gguf"]),
    (["run", "whisper"], ["audio files"]),
    (["run", "whisper", "missing.wav"], ["'missing.wav'", "not found"]),
    (["run", "whisper", "junk.wav"], ["'junk.wav'", "cannot decode", "WAV"]),
    (["run", "whisper", "empty.wav"], ["'empty.wav'", "cannot decode"]),
    (["run", "whisper", "llama"], ["'llama'", "is a directory"]),
    # inspect
    (["inspect", "graph.json"], ["kiln inspect", "graph.json"]),
    (["inspect", "missing.json"], ["kiln inspect", "missing.json"]),
    (["inspect", "llama", "--dtype", "int7"], ["--dtype", "'int7'", "float32"]),
]


def _one_error_line(res, argv):
    lines = res.stderr.splitlines()
    assert res.returncode == 2, (argv, res.returncode, res.stderr)
    assert len(lines) == 1, (argv, res.stderr)
    assert "Traceback" not in res.stderr and res.stdout == "", (argv, res.stdout, res.stderr)
    return lines[0]


@pytest.mark.parametrize("argv,words", CASES, ids=[" ".join(a) or "(no args)" for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(workdir, argv, words):
    line = _one_error_line(run_kiln(*argv, cwd=workdir), argv)
    for w in words:
        assert w in line, (w, line)


def test_device_cuda_without_a_gpu_is_one_line(workdir):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for argv in (["embed", "--device", "cuda", "hi"], ["run", "llama", "--prompt", "x", "--device", "cuda"]):
        line = _one_error_line(run_kiln(*argv, cwd=workdir), argv)
        assert "--device cuda" in line and "no CUDA GPU" in line and "--device cpu" in line, line


def test_device_cuda_without_torch_names_the_gpu_extra(workdir):
    argv = ["embed", "--device", "cuda", "hi"]
    line = _one_error_line(run_kiln(*argv, cwd=workdir, without=("torch",)), argv)
    assert "--device cuda needs torch" in line and "pip install -e '.[gpu]'" in line, line


def test_debug_shows_the_traceback(workdir):
    res = run_kiln("embed", "--model", "llama", "hi", "--debug", cwd=workdir)
    assert res.returncode != 0 and "Traceback" in res.stderr and "is a 'llama' checkpoint" in res.stderr


def test_model_type_is_checked_before_the_family_parses_the_config(workdir):
    # a real Llama config that BERT's parser would reject for another reason (hidden_act 'silu')
    import json
    d = workdir / "llama-full"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_act": "silu", "hidden_size": 64,
                                               "num_attention_heads": 4, "num_hidden_layers": 2,
                                               "intermediate_size": 128, "vocab_size": 100}))
    line = _one_error_line(run_kiln("embed", "--model", str(d), "hi", cwd=workdir), "embed llama-full")
    assert "is a 'llama' checkpoint" in line and "silu" not in line, line
