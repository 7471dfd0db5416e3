"""Checkpoints survive a kill: a training process SIGKILLed in the middle of a checkpoint save, at
random moments and at each step of the save protocol (temporary file half written, written, fsynced,
renamed), always leaves a checkpoint that loads and resumes bit-identically to the uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ckpt_model import EPOCHS, make_trainer
from hardening_limits import time_limit
from kiln.train import load_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the training subprocess forks trials")

HERE = Path(__file__).parent
KILL_STEP = 4  # as in _ckpt_zygote.py


@pytest.fixture(scope="module")
def zygote():
    env = dict(os.environ)  # the same BLAS threading as this process: the same float sums
    proc = subprocess.Popen([sys.executable, str(HERE / "_ckpt_zygote.py")], cwd=HERE, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1)
    try:
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference():
    t = make_trainer(0)
    t.fit(EPOCHS)
    return t


def _line(proc) -> str:
    line = proc.stdout.readline()
    assert line, f"the training subprocess died (exit code {proc.poll()})"
    return line.split()


def _run_trial(proc, path: Path, mode: str, rng: random.Random, total: int):
    """Start one training process; returns (steps saved completely, step of a save begun and not finished)."""
    proc.stdin.write(f"trial {path} {mode}\n")
    proc.stdin.flush()
    target = rng.randint(3, total) if mode == "random" else None
    saved, begun, pid, killed = [], None, None, False
    while True:
        words = _line(proc)
        if words[0] == "pid":
            pid = int(words[1])
        elif words[0] == "saving":
            begun = int(words[1])
            if int(words[1]) == target and not killed:
                time.sleep(rng.uniform(0, 0.006))  # a save takes a few ms: land somewhere inside it
                os.kill(pid, signal.SIGKILL)
                killed = True
        elif words[0] == "saved":
            saved.append(int(words[1]))
            begun = None
        elif words[0] == "exit":
            status = int(words[2])
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{mode}: not killed ({status})"
            return saved, begun


def _run_state(t):
    """(step count, per-step losses, per-epoch losses, {name: array} of parameters and optimizer state)."""
    arrays = {**{"param/" + k: v for k, v in t.step.params.items()}, **{"opt/" + k: v for k, v in t.step.opt_state.items()}}
    return t.step.step_count, t.step_losses, [h["loss"] for h in t.history], arrays


def _assert_same_run(a, b):
    *scalars_a, arrays_a = _run_state(a)
    *scalars_b, arrays_b = _run_state(b)
    assert scalars_a == scalars_b
    assert arrays_a.keys() == arrays_b.keys()
    assert [k for k in arrays_a if not np.array_equal(arrays_a[k], arrays_b[k])] == []


def test_killed_mid_save_the_checkpoint_loads_and_resumes_bit_identically(tmp_path, zygote, reference):
    with time_limit(120, "the checkpoint-kill test"):
        assert _line(zygote) == ["ready"]
        resumed = make_trainer(99)  # other initial weights: everything must come from the checkpoint
        total = EPOCHS * resumed.steps_per_epoch
        rng = random.Random(18)
        modes = ["partial", "written", "fsynced", "renamed"] + ["random"] * 6
        for i, mode in enumerate(modes):
            path = tmp_path / f"trial{i}" / "ck.safetensors"
            saved, begun = _run_trial(zygote, path, mode, rng, total)
            ck = load_checkpoint(path)  # the file under the final name is always a complete checkpoint
            if mode in ("partial", "written", "fsynced"):
                assert ck["step"] == KILL_STEP - 1, (mode, ck["step"])  # the previous checkpoint
            elif mode == "renamed":
                assert ck["step"] == KILL_STEP
            else:
                assert ck["step"] == saved[-1] or ck["step"] == begun, (saved, begun, ck["step"])
            resumed.load(path)
            assert resumed.step.step_count == ck["step"]
            resumed.fit(EPOCHS)
            _assert_same_run(resumed, reference)


def test_save_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    import stat

    import kiln.io.safetensors_file as stf
    from kiln.train import save_checkpoint

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        mode = os.fstat(fd).st_mode
        events.append(("fsync", "dir" if stat.S_ISDIR(mode) else "file", os.fstat(fd).st_size if stat.S_ISREG(mode) else None))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(stf.os, "fsync", fsync)
    monkeypatch.setattr(stf.os, "replace", replace)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"w": np.ones((4, 4), np.float32)}, {"m/w": np.zeros((4, 4), np.float32)}, 3, {"a": 1})
    size = path.stat().st_size
    assert events == [("fsync", "file", size), ("replace", f".ck.safetensors.{os.getpid()}.tmp", "ck.safetensors"),
                      ("fsync", "dir", None)]
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]  # no temporary left behind


@pytest.mark.parametrize("metadata, pattern", [
    ({"format": "kiln-train-checkpoint", "meta": "{}"}, r"metadata 'step'/'meta' missing or malformed: 'step'"),
    ({"format": "kiln-train-checkpoint", "step": "x", "meta": "{}"}, r"'step'/'meta' missing or malformed"),
    ({"format": "kiln-train-checkpoint", "step": "3", "meta": "{"}, r"'step'/'meta' missing or malformed"),
    ({"format": "kiln-train-checkpoint", "step": "3", "meta": "[]"}, r"'meta' must be a JSON object, found list"),
    ({"format": "pt"}, r"not a kiln training checkpoint"),
])
def test_malformed_training_checkpoint_metadata(tmp_path, metadata, pattern):
    from kiln.errors import CheckpointError
    from kiln.io.safetensors_file import save_safetensors

    save_safetensors(tmp_path / "ck.safetensors", {"param/w": np.zeros(2, np.float32)}, metadata)
    with pytest.raises(CheckpointError, match=r"ck\.safetensors: .*" + pattern):
        load_checkpoint(tmp_path / "ck.safetensors")
