"""The run: its processes (torchrun's), device and precision (Env), where it is (RunState), what a
training step uses (Step), and the ways it stops early (a stop signal, divergence)."""
import contextlib
import dataclasses
import math
import os

import torch
import torch.distributed as dist

from helpers import cli, devices, stop


@dataclasses.dataclass(frozen=True)
class World:
    """The processes of a torchrun launch (or just this one)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # the processes on this machine

    @classmethod
    def from_env(cls):
        """What torchrun tells each process in its environment."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    @property
    def distributed(self):
        return self.size > 1

    @property
    def is_main(self):
        return self.rank == 0


@dataclasses.dataclass(frozen=True)
class Env:
    """Where and how a run computes; made once, after the settings, and never changed."""
    world: World
    device: torch.device
    amp_dtype: torch.dtype = None  # None: fp32
    memory_format: torch.memory_format = torch.contiguous_format


@contextlib.contextmanager
def environment(s, world):
    """The run's Env: torchrun's process group started (NCCL on GPUs, gloo otherwise) for the
    block, and ended after it; the device the settings chose, its autocast dtype and memory format."""
    device = devices.select_device(s.device)
    if world.distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image sizes: cuDNN picks its fastest kernels once
    try:
        fmt = devices.memory_format(devices.channels_last(device, s.channels_last))
        yield Env(world, device, devices.amp_dtype(device, s.amp_dtype), fmt)
    finally:
        if world.distributed and dist.is_initialized():
            dist.destroy_process_group()


class Diverged(Exception):
    """The training loss (or the val loss) became NaN or infinite: the weights are lost, and every
    later step too."""

    def __init__(self, loss, epoch, step, what="training loss"):
        super().__init__(f"the {what} became {loss} at epoch {epoch + 1}, step {step}")
        self.what, self.epoch, self.step = what, epoch, step


def stop_signal(world, device):
    """The signal that asked this run to stop (0: none). Under torchrun each process may get its own
    signal, or only one of them: they agree on the largest, so that none waits alone in the next
    all-reduce."""
    if not world.distributed:
        return stop.requested()
    flag = torch.tensor([float(stop.requested())], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def check_val(val, n_images, data_path, state):
    """An epoch's val result can select the best weights: some image was read (every unreadable one
    was named), and its loss is a number (finite weights whose outputs overflow have diverged too)."""
    if not len(val.index):
        raise cli.UserError(f"none of the {n_images} images in {data_path}/val could be read (each is named above); "
                            "replace them, or run split_data.py again")
    if not math.isfinite(val.loss):
        raise Diverged(val.loss, state.epoch, state.step, what="val loss")


@dataclasses.dataclass
class Step:
    """What a training step uses, besides the model and the batch."""
    criterion: object
    optimizer: object
    scheduler: object
    scaler: object  # a GradScaler (disabled unless fp16 on CUDA)
    settings: object
    env: Env
    state: object  # RunState
    ema: object = None  # torch.optim.swa_utils.AveragedModel, or None
    mixer: object = None  # mixup or cutmix, or None


@dataclasses.dataclass
class RunState:
    """Where a run is. A checkpoint holds it beside the model and optimiser, so that a resumed run
    goes on exactly where this one stopped."""
    epoch: int = 0  # epochs done
    step: int = 0  # batches done in this epoch
    seconds: float = 0.0  # this epoch's
    # loss sum, correct, images: this epoch, this process (float32: MPS has no float64)
    sums: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(3))
    best_acc: float = -1.0  # -1: the first epoch's weights are always kept
    history: list = dataclasses.field(default_factory=list)
    lr_restart: int = None  # the optimizer step where a cosine schedule restarted (optim.build_scheduler)

    def state_dict(self):
        return {**dataclasses.asdict(self), "sums": self.sums.cpu()}

    def load_state_dict(self, d, batch_size=None):
        """batch_size: the resumed run's, when it changed (to a divisor of the saved one, with
        --accum-steps keeping the images per optimizer step); the step is then counted in the new
        batches."""
        self.epoch, self.step, self.seconds = d["epoch"], d["step"], d["seconds"]
        saved = d["settings"].get("batch_size", batch_size)
        if batch_size and saved != batch_size:
            self.step = self.step * saved // batch_size
        self.sums = d["sums"].float()
        self.best_acc, self.history, self.lr_restart = d["best_acc"], list(d["history"]), d.get("lr_restart")

    def next_epoch(self):
        self.epoch, self.step, self.seconds = self.epoch + 1, 0, 0.0
        self.sums = torch.zeros(3)
