"""Training subprocess for test_checkpoint_kill.py.

Builds (imports, compiles) the trainer once, then for each "trial <checkpoint> <mode>" line on stdin
forks a fresh training process from that pristine state. The child trains, saving a checkpoint after
every optimizer step from step 2 on and printing "saving <step>" / "saved <step>" around each save;
the test SIGKILLs it during a save (mode "random"), or the child SIGKILLs itself at a chosen point of
the save of step 4 (the other modes). The zygote reports "exit <pid> <wait status>" when the child is gone.
"""

import os
import signal
import sys

from ckpt_model import EPOCHS, make_trainer

import kiln.io.safetensors_file as stf
import safetensors.numpy

KILL_STEP = 4


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(mode: str, state: dict) -> None:
    """Make the save of step KILL_STEP kill this process at the point `mode` names."""
    real_save, real_replace, real_fsync = safetensors.numpy.save_file, os.replace, stf._fsync_path

    def save_file(tensors, filename, metadata=None):
        if state["step"] == KILL_STEP and mode == "partial":  # half the bytes of the temporary file, then death
            real_save(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            die()
        real_save(tensors, filename, metadata=metadata)
        if state["step"] == KILL_STEP and mode == "written":  # complete but not fsynced, not renamed
            die()

    def replace(src, dst):
        if state["step"] == KILL_STEP and mode == "fsynced":  # fsynced, not renamed
            die()
        real_replace(src, dst)

    def fsync_path(path, directory=False):
        if directory and state["step"] == KILL_STEP and mode == "renamed":  # renamed, directory not fsynced
            die()
        real_fsync(path, directory)

    safetensors.numpy.save_file, os.replace, stf._fsync_path = save_file, replace, fsync_path


def train(trainer, path: str, mode: str) -> None:
    state = {"step": 0}
    if mode != "random":
        arm(mode, state)
    print(f"pid {os.getpid()}", flush=True)
    total = EPOCHS * trainer.steps_per_epoch
    for s in range(2, total + 1):
        trainer.fit(EPOCHS, max_steps=s)
        state["step"] = s
        print(f"saving {s}", flush=True)
        trainer.save(path)
        print(f"saved {s}", flush=True)


def main() -> None:
    trainer = make_trainer(0)
    print("ready", flush=True)
    for line in sys.stdin:
        _, path, mode = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                train(trainer, path, mode)
            finally:
                sys.stdout.flush()
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {status}", flush=True)


if __name__ == "__main__":
    main()
