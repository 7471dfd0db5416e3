"""What the distributed tests run, once per rank under torchrun and once in a single process.

`python dist_cases.py CASE OUT` under `torchrun --nproc-per-node N` writes OUT/rank{r}.npz; the
test computes the single-process reference with the same functions (world 1) and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import kiln
import kiln.distributed
from kiln.autodiff import grad_name
from kiln.ir import Graph
from kiln.train import AdamW, ArrayLoader, Trainer, TrainStep
from kiln.train.losses import cross_entropy


def rank_inputs(rank: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + rank)
    return {"x": rng.standard_normal((4, 6)).astype(np.float32)}


def collectives(rank: int, world: int, out=None) -> dict[str, np.ndarray]:
    """all_reduce (sum, mean), all_gather, reduce_scatter and the gradient through all_gather."""
    g = Graph("collectives")
    x = g.input("x", (4, 6))
    g.output("sum", g.all_reduce(x, world=world))
    g.output("mean", g.all_reduce(x, world=world, reduce="mean"))
    g.output("gather", g.all_gather(x, world=world, axis=1))
    g.output("scatter", g.reduce_scatter(x, world=world, axis=0))
    out = kiln.compile(g).run(**rank_inputs(rank))
    # d/dx of sum over ranks of <w_r, all_gather(x)> = reduce_scatter(w) (the VJP rule)
    gg = Graph("vjp")
    xi = gg.input("x", (4, 6))
    w = gg.input("w", (4, 6 * world))
    gg.output("loss", gg.sum(gg.mul(gg.all_gather(xi, world=world, axis=1), w)))
    step = kiln.grad(gg, ["x"], "loss")
    w_r = np.random.default_rng(200 + rank).standard_normal((4, 6 * world)).astype(np.float32)
    out["grad_x"] = kiln.compile(step).run(x=rank_inputs(rank)["x"], w=w_r)[grad_name("x")]
    return out


def mlp_graph(batch: int) -> Graph:
    g = Graph("mlp")
    x = g.input("x", (batch, 8))
    y = g.input("y", (batch,), "int64")
    h = g.tanh(g.linear(x, g.parameter("w1", (16, 8)), g.parameter("b1", (16,))))
    logits = g.linear(h, g.parameter("w2", (5, 16)), g.parameter("b2", (5,)))
    g.output("loss", cross_entropy(g, logits, y))
    return g


def mlp_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w1": rng.standard_normal((16, 8)).astype(np.float32) / np.sqrt(8),
            "b1": 0.1 * rng.standard_normal(16).astype(np.float32),
            "w2": rng.standard_normal((5, 16)).astype(np.float32) / 4, "b2": np.zeros(5, np.float32)}


def data_parallel(rank: int, world: int, global_batch: int = 16, steps: int = 5,
                  checkpoint: str | None = None, resume: str | None = None) -> dict[str, np.ndarray]:
    """AdamW steps of a small MLP on global batches of 16 (4 per epoch), each rank on its 16/world
    rows; optionally resumed from / saved to a checkpoint."""
    rng = np.random.default_rng(1)
    data = {"x": rng.standard_normal((64, 8)).astype(np.float32), "y": rng.integers(0, 5, 64)}
    step = TrainStep(mlp_graph(global_batch // world), AdamW(lr=0.05), clip_norm=1.0, world=world)
    step.init(mlp_params())
    trainer = Trainer(step, ArrayLoader(data, global_batch, seed=3), progress=False, distributed=world > 1)
    if resume:
        trainer.load(resume)
    trainer.fit(epochs=2, max_steps=steps)
    if checkpoint:
        trainer.save(checkpoint)
    return {**step.params, "losses": np.array(trainer.step_losses)}


def tensor_parallel(rank: int, world: int, out: Path) -> dict[str, np.ndarray]:
    """Logits and 16 greedy tokens of the tiny Llama saved at out/llama, split over `world` ranks."""
    model = kiln.load(str(out / "llama"), tensor_parallel=world)
    ids = np.random.default_rng(5).integers(0, model.graphs.vocab_size, (2, 11))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    return {"logits": model(ids, mask), "tokens": model.generate(ids, mask, max_new_tokens=16, eos_token_id=[]),
            "kv_heads": np.array(model.graphs.num_kv_heads)}


CASES = {"collectives": collectives,
         "data_parallel": lambda rank, world, out: data_parallel(rank, world),
         "data_parallel_3_steps": lambda rank, world, out: data_parallel(rank, world, steps=3,
                                                                          checkpoint=str(out / "ck.safetensors")),
         "tensor_parallel": tensor_parallel}

if __name__ == "__main__":
    case, out = sys.argv[1], Path(sys.argv[2])
    rank, world = kiln.distributed.init()
    result = CASES[case](rank, world, out)
    np.savez(out / f"rank{rank}.npz", **result)
    import torch.distributed as dist

    dist.barrier()                    # leave together: a rank exiting with gloo's threads alive aborts
    dist.destroy_process_group()
