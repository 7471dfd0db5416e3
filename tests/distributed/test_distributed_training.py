"""Collectives and data-parallel training on two gloo processes started by torchrun vs one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dist_cases

pytest.importorskip("torch.distributed")

HERE = Path(__file__).parent


def torchrun(case: str, out: Path, world: int = 2) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent.parent), str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                           str(HERE / "dist_cases.py"), case, str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(world)]


def test_collectives_on_two_ranks_match_their_definitions(tmp_path):
    got = torchrun("collectives", tmp_path)
    xs = [dist_cases.rank_inputs(r)["x"] for r in range(2)]
    ws = [np.random.default_rng(200 + r).standard_normal((4, 12)).astype(np.float32) for r in range(2)]
    for r, out in enumerate(got):
        np.testing.assert_allclose(out["sum"], xs[0] + xs[1], rtol=1e-6)
        np.testing.assert_allclose(out["mean"], (xs[0] + xs[1]) / 2, rtol=1e-6)
        np.testing.assert_array_equal(out["gather"], np.concatenate(xs, axis=1))
        np.testing.assert_allclose(out["scatter"], (xs[0] + xs[1])[2 * r:2 * r + 2], rtol=1e-6)
        # the gradient of sum_r <w_r, all_gather(x)> w.r.t. this rank's x: its columns of sum_r w_r
        np.testing.assert_allclose(out["grad_x"], (ws[0] + ws[1])[:, 6 * r:6 * r + 6], rtol=1e-5)


def test_data_parallel_training_equals_one_process_on_the_full_batch(tmp_path):
    got = torchrun("data_parallel", tmp_path)
    ref = dist_cases.data_parallel(0, 1)
    for out in got:
        assert np.abs(out["losses"] - ref["losses"]).max() < 1e-6, (out["losses"], ref["losses"])
        for name in dist_cases.mlp_params():
            np.testing.assert_allclose(out[name], ref[name], atol=1e-6, err_msg=name)
    assert np.abs(ref["w1"] - dist_cases.mlp_params()["w1"]).max() > 1e-2   # it trained


def test_a_two_rank_checkpoint_resumes_in_one_process(tmp_path):
    """3 steps on 2 ranks, saved by rank 0; 2 more in one process: the same as 5 steps in one."""
    torchrun("data_parallel_3_steps", tmp_path)
    resumed = dist_cases.data_parallel(0, 1, steps=5, resume=str(tmp_path / "ck.safetensors"))
    ref = dist_cases.data_parallel(0, 1, steps=5)
    assert np.abs(resumed["losses"] - ref["losses"]).max() < 1e-6
    for name in dist_cases.mlp_params():
        np.testing.assert_allclose(resumed[name], ref[name], atol=1e-6, err_msg=name)


def test_tensor_parallel_llama_equals_one_process(tmp_path):
    """Heads, KV heads and MLP columns split over 2 ranks (one all_reduce per attention block and
    per MLP): logits and 16 greedy tokens of a left-padded batch equal the unsplit model's."""
    sys.path.insert(0, str(HERE.parent / "models"))
    from llama_checkpoints import save_checkpoint

    save_checkpoint(tmp_path / "llama", "llama3", num_attention_heads=4, num_key_value_heads=2)
    got = torchrun("tensor_parallel", tmp_path)
    ref = dist_cases.tensor_parallel(0, 1, tmp_path)
    for out in got:
        assert int(out["kv_heads"]) == 1                       # the KV cache holds this rank's heads
        np.testing.assert_allclose(out["logits"], ref["logits"], atol=1e-5)
        np.testing.assert_array_equal(out["tokens"], ref["tokens"])


def test_a_collective_without_a_group_names_the_launch():
    from kiln.errors import DistributedError
    import kiln
    from kiln.ir import Graph

    g = Graph()
    g.output("y", g.all_reduce(g.input("x", (2,)), world=2))
    with pytest.raises(DistributedError, match="torchrun --nproc-per-node 2"):
        kiln.compile(g).run(x=np.ones(2, np.float32))


def test_tensor_parallel_needs_the_group_and_divisible_sizes(tmp_path):
    from kiln.errors import ConfigError, DistributedError
    import kiln

    sys.path.insert(0, str(HERE.parent / "models"))
    from llama_checkpoints import save_checkpoint

    save_checkpoint(tmp_path / "odd", "llama3", num_attention_heads=4, num_key_value_heads=1)
    with pytest.raises(ConfigError, match="num_key_value_heads \\(1\\) does not split into 2"):
        kiln.load(str(tmp_path / "odd"), tensor_parallel=2)
    save_checkpoint(tmp_path / "even", "llama3")
    with pytest.raises(DistributedError, match="torchrun --nproc-per-node 2"):
        kiln.load(str(tmp_path / "even"), tensor_parallel=2)
