"""The training loop: batches from a loader, the LR schedule, a progress bar, per-epoch
metrics history, evaluation, and checkpoints that resume exactly where they left off."""

from __future__ import annotations

import time
from typing import Callable, Mapping

from tqdm.auto import tqdm

from kiln.distributed import require_world

from .checkpoint import load_checkpoint, save_checkpoint
from .loader import ArrayLoader
from .schedules import Constant
from .step import TrainStep


class Trainer:
    """Runs a TrainStep over an ArrayLoader.

    `schedule(step) -> lr` (default: the optimizer's constant lr). `evaluate(params) -> dict`
    runs after every epoch; its values join the epoch's record in `history`. Checkpoints
    hold the parameters, optimizer state, step, position in the epoch, partial epoch sums and
    history, so `load` + `fit` continues the run exactly as if it had not stopped.

    `distributed=True` (data parallel, under torchrun; the step built with `world=N`): every rank
    walks the same global batches and trains on its 1/N slice of each (rank r: rows
    [r*b/N, (r+1)*b/N)), so the run equals one process on the whole batch. Only rank 0 shows
    progress, logs, evaluates and writes checkpoints; a checkpoint holds the (replicated) state
    and positions in global batches, so it resumes on any number of ranks.
    """

    def __init__(self, step: TrainStep, loader: ArrayLoader, *, schedule: Callable[[int], float] | None = None,
                 evaluate: Callable[[Mapping], dict] | None = None, progress: bool = True,
                 log: Callable[[str], None] | None = None, distributed: bool = False):
        if len(loader) < step.accumulation:
            raise ValueError(f"the loader gives {len(loader)} batches per epoch, fewer than the "
                             f"{step.accumulation} micro-batches of one step")
        self.world = step.world if distributed else 1
        if not distributed and step.world > 1:
            raise ValueError(f"the step averages gradients over {step.world} ranks; pass distributed=True")
        self.rank = require_world(self.world, "Trainer(distributed=True)")
        if loader.batch_size % self.world:
            raise ValueError(f"batch_size {loader.batch_size} does not split into {self.world} equal shards")
        self.main = self.rank == 0
        if not self.main:
            progress, log, evaluate = False, None, None
        self.step, self.loader = step, loader
        self.schedule = schedule or Constant(step.optimizer.lr)
        self.evaluate, self.progress, self.log = evaluate, progress, log
        self.epoch = 0          # the epoch in progress
        self.position = 0       # optimizer steps done within it
        self.sums: dict[str, float] = {}
        self.history: list[dict] = []
        self.step_losses: list[float] = []

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader) // self.step.accumulation

    def fit(self, epochs: int, max_steps: int | None = None) -> list[dict]:
        """Train until `epochs` epochs are complete (or `max_steps` optimizer steps in total)."""
        k = self.step.accumulation
        while self.epoch < epochs:
            start = time.perf_counter()
            batches = self.loader.epoch(self.epoch, start=self.position * k)
            bar = tqdm(total=self.steps_per_epoch, initial=self.position, desc=f"epoch {self.epoch + 1}/{epochs}",
                       disable=not self.progress, leave=False)
            while self.position < self.steps_per_epoch:
                if max_steps is not None and self.step.step_count >= max_steps:
                    bar.close()
                    return self.history
                group = [self._shard(next(batches)) for _ in range(k)]
                lr = self.schedule(self.step.step_count)
                report = self.step(group if k > 1 else group[0], lr)
                for name, v in report.items():
                    self.sums[name] = self.sums.get(name, 0.0) + v
                self.step_losses.append(report[self.step.loss])
                self.position += 1
                bar.update(1)
                bar.set_postfix(loss=f"{report[self.step.loss]:.4f}", lr=f"{lr:.2e}")
            bar.close()
            record = {"epoch": self.epoch + 1, **{n: v / self.steps_per_epoch for n, v in self.sums.items()},
                      "lr": self.schedule(self.step.step_count - 1), "seconds": time.perf_counter() - start}
            if self.evaluate is not None:
                record.update(self.evaluate(self.step.params))
            self.history.append(record)
            if self.log is not None:
                self.log(format_record(record))
            self.epoch, self.position, self.sums = self.epoch + 1, 0, {}
        return self.history

    def _shard(self, batch: Mapping) -> dict:
        """This rank's slice of a global batch."""
        if self.world == 1:
            return dict(batch)
        n = self.loader.batch_size // self.world
        return {k: v[self.rank * n:(self.rank + 1) * n] for k, v in batch.items()}

    def save(self, path) -> None:
        """Write a checkpoint (rank 0 only under distributed=True)."""
        if not self.main:
            return
        meta = {"epoch": self.epoch, "position": self.position, "sums": self.sums, "history": self.history,
                "step_losses": self.step_losses, "optimizer": self.step.optimizer.config()}
        save_checkpoint(path, self.step.params, self.step.opt_state, self.step.step_count, meta)

    def load(self, path) -> None:
        ck = load_checkpoint(path)
        self.step.load_state_dict({"params": ck["params"], "opt_state": ck["opt_state"], "step": ck["step"]})
        m = ck["meta"]
        self.epoch, self.position, self.sums = m["epoch"], m["position"], m["sums"]
        self.history, self.step_losses = m["history"], m["step_losses"]


def format_record(r: Mapping) -> str:
    parts = [f"epoch {r['epoch']:>3}"]
    for k, v in r.items():
        if k in ("epoch", "seconds", "lr"):
            continue
        parts.append(f"{k} {v:.4f}")
    parts.append(f"lr {r['lr']:.2e}")
    parts.append(f"{r['seconds']:.1f}s")
    return "  ".join(parts)
