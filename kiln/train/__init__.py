"""Training: losses, optimizers fused into the compiled step, schedules, the loop, checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .loader import ArrayLoader
from .losses import bce_with_logits, cross_entropy, mse_loss
from .metrics import accuracy
from .optimizers import SGD, Adam, AdamW, Optimizer
from .schedules import Constant, Cosine, LinearWarmup, constant, cosine, linear_warmup
from .step import TrainStep, build_step_graph, new_name, state_name
from .trainer import Trainer

__all__ = ["ArrayLoader", "cross_entropy", "mse_loss", "bce_with_logits", "accuracy", "Optimizer", "SGD", "Adam",
           "AdamW", "Constant", "LinearWarmup", "Cosine", "constant", "linear_warmup", "cosine", "TrainStep",
           "build_step_graph", "new_name", "state_name", "Trainer", "save_checkpoint", "load_checkpoint"]
