"""Memory: training's estimated peak (from bench/train_memory.py's table) against what the machine
has free, the batch size that fits, and out-of-memory errors of every allocator. The estimate only
warns. torch is imported only where needed: prediction with --onnx runs without it."""
import dataclasses
import sys
from pathlib import Path

# Training's MB per image at 224 px in fp32, channels-last, with Adam (bench/train_memory.py).
PER_IMAGE_MB = {
    "resnet18": 28.8,
    "resnet34": 42.2,
    "resnet50": 93.1,
    "resnet101": 145.8,
    "resnet152": 181.0,
    "resnext50_32x4d": 133.3,
    "resnext101_32x8d": 262.7,
}
HALF = 0.51  # 16-bit autocast keeps about half of that, where the hardware runs it natively.
FROZEN = 0.3  # --freeze-backbone: the frozen layers keep nothing for a backward pass.
BASE_MB = 730.0  # Python, torch, its libraries and the allocator's slack, beside the parameters.
CUDA_CONTEXT_MB = 1300.0  # A Jetson's GPU shares the system's memory: its CUDA context comes on top.
# Left free on top of the estimate: fragmentation, cuDNN's workspaces, what others start meanwhile.
MARGIN = 0.9
MB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Training's peak as fixed + per_image x batch (MB), for one process."""
    fixed_mb: float
    per_image_mb: float
    batch_size: int

    @property
    def total_mb(self):
        return self.fixed_mb + self.per_image_mb * self.batch_size


def estimate(model, n_params, n_trainable, batch_size, img_size, half, *, optimizer="adam", momentum=0.9,
             ema=False, workers=0, gpu=False):
    """The estimate for one training process. half: 16-bit autocast; n_trainable: the parameters
    that get gradients (all of them, or the fc alone with --freeze-backbone); gpu: the tensors are
    on a GPU of their own (the CPU-side base is not counted against its memory)."""
    frozen = n_trainable < n_params / 2  # --freeze-backbone: the backbone runs as in inference
    per_image = PER_IMAGE_MB.get(model, PER_IMAGE_MB["resnet34"]) * (img_size / 224) ** 2
    per_image *= FROZEN if frozen else HALF if half else 1.0
    state_bytes = 8 if optimizer in ("adam", "adamw") else (4 if momentum else 0)
    param_bytes = 4 * n_params + (4 + state_bytes) * n_trainable + (4 * n_params if ema else 0)
    # The data loader's decoded batches, float32: 4 prefetched per worker (in shared memory), or the one
    # the main process decodes.
    per_image += (4 * workers if workers else 1) * 3 * img_size * img_size * 4 / MB
    return Estimate((0 if gpu else BASE_MB) + param_bytes / MB, per_image, batch_size)


def read_meminfo(path="/proc/meminfo"):
    """{field: MB} of /proc/meminfo ({} where there is none: macOS, Windows)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    info = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            info[name] = int(parts[0]) / 1024  # kB
    return info


def is_integrated(device):
    """A GPU that shares the system's memory: a Jetson."""
    import torch
    props = torch.cuda.get_device_properties(device)
    return bool(getattr(props, "is_integrated", False)) or Path("/etc/nv_tegra_release").exists()


def free_memory(device):
    """(MB this run may still take, what that figure is, MB this process already holds of it).
    CPU or Jetson: MemAvailable + free swap (the process's own memory is already counted out of
    it); a desktop GPU: its free memory (torch.cuda.mem_get_info)."""
    import torch
    if device.type == "cuda" and not is_integrated(device):
        free, _ = torch.cuda.mem_get_info(device)
        return free / MB, f"free on {torch.cuda.get_device_name(device)}", torch.cuda.memory_allocated(device) / MB
    info = read_meminfo()
    if "MemAvailable" not in info:
        return None, "unknown", 0.0
    held = read_meminfo("/proc/self/status").get("VmRSS", 0.0)  # this process's resident memory
    if device.type == "cuda":  # a Jetson: what torch's tensors hold is in the shared memory too
        held += torch.cuda.memory_allocated(device) / MB
    return info["MemAvailable"] + info.get("SwapFree", 0.0), "MemAvailable + free swap", held


def fmt_mb(mb):
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


@dataclasses.dataclass(frozen=True)
class Check:
    """A run's estimate against what the machine has free."""
    est: Estimate
    free_mb: float  # None: unknown (no /proc/meminfo)
    where: str  # what free_mb is
    held_mb: float  # what this process already holds of it (counted in the estimate, not in free_mb)
    processes: int = 1  # training processes on this machine, sharing free_mb

    def needed_mb(self, batch_size=None):
        """What the run will still take from the free memory: its peak, less what this process
        holds already (torch, the model), for each process on this machine."""
        est = self.est if batch_size is None else dataclasses.replace(self.est, batch_size=batch_size)
        return max(0.0, est.total_mb - self.held_mb) * self.processes

    def fits(self, batch_size=None):
        return self.free_mb is None or self.needed_mb(batch_size) <= MARGIN * self.free_mb

    def fitting_batch(self, below=None):
        """The largest batch size that divides the run's (so --accum-steps keeps the images per
        optimizer step exactly), is at most `below`, and fits; None when not even 1 does."""
        b = self.est.batch_size
        return next((d for d in range(min(b, below or b), 0, -1) if b % d == 0 and self.fits(d)), None)


def check_training(s, env, net, processes=1):
    """The estimate of this run's peak (settings s, its Env, the model on its device) against
    what the machine has free."""
    n_params = sum(p.numel() for p in net.parameters())
    n_trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    gpu = env.device.type == "cuda" and not is_integrated(env.device)
    est = estimate(s.model, n_params, n_trainable, s.batch_size, s.img_size, env.amp_dtype is not None,
                   optimizer=s.opt, momentum=s.momentum, ema=s.model_ema, workers=s.workers, gpu=gpu)
    if env.device.type == "cuda" and not gpu:  # a Jetson: the process's peak includes the CUDA context
        est = dataclasses.replace(est, fixed_mb=est.fixed_mb + CUDA_CONTEXT_MB)
    free, where, held = free_memory(env.device)
    return Check(est, free, where, held, processes)


def advice(check, accum_steps, below=None):
    """A batch that fits, at the same images per optimizer step: (its flags, or None when not even
    batch 1 fits; the sentence that says so)."""
    fits = check.fitting_batch(below)
    if not fits:
        return None, ("not even --batch-size 1 fits: a smaller --model or --img-size, --freeze-backbone, more swap, "
                      "or fewer other programs running")
    flags = f"--batch-size {fits} --accum-steps {accum_steps * check.est.batch_size // fits}"
    return flags, f"{flags} fits (the same {check.est.batch_size * accum_steps} images per optimizer step)"


def out_of_memory_line(s, check, why, resumable):
    """The one line of a training run that ran out of memory: what happened, and a batch size that
    fits now (at most half of the one that did not), with the command that resumes from the last
    checkpoint when there is one."""
    flags, fits = advice(check, s.accum_steps, below=max(1, s.batch_size // 2))
    line = f"out of memory at --batch-size {s.batch_size} ({why}); "
    if resumable:
        line += f"{s.checkpoint} holds the run up to its last save; "
    line += fits
    if resumable and flags and s.batch_size > 1:
        line += f": python train.py --resume {s.checkpoint} {flags}"
    return line


def report(check, s, half):
    """Before the first step: one line with the estimate, or a warning naming a batch size that fits."""
    if check.free_mb is None:
        return
    what = (f"{s.model}, batch {s.batch_size}, {'16-bit' if half else 'fp32'}, {s.img_size} px"
            + (f", {check.processes} processes" if check.processes > 1 else ""))
    peak, need = check.est.total_mb * check.processes, check.needed_mb()
    if check.fits():
        print(f"memory: about {fmt_mb(peak)} at the peak ({what}), {fmt_mb(check.free_mb)} {check.where}")
        return
    _, fits = advice(check, s.accum_steps)
    print(f"warning: this run needs about {fmt_mb(peak)} at the peak ({what}: {fmt_mb(check.est.fixed_mb)} fixed + "
          f"{fmt_mb(check.est.per_image_mb)} per image), {fmt_mb(need)} more than it holds now, but "
          f"{fmt_mb(check.free_mb)} is {check.where}: it will not fit; {fits}", file=sys.stderr)


# ---------------------------------------------------------------- out-of-memory errors

OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate memory",
             "bad_alloc", "bad allocation")


def is_out_of_memory(e):
    """Whether an exception says that memory ran out: Python's MemoryError, torch's
    OutOfMemoryError (CUDA), the CPU allocator's RuntimeError ("DefaultCPUAllocator: can't allocate
    memory"), ONNX Runtime's failed allocations."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    if isinstance(e, RuntimeError) or type(e).__module__.startswith("onnxruntime"):
        text = str(e).lower()
        return any(w in text for w in OOM_WORDS)
    return False


def release_cached():
    """Give the memory a failed batch held back to the device (torch's cache), where torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class HalvingPredictor:
    """A predictor (uint8 NHWC batch -> probabilities) that, when memory runs out, halves its
    batch and goes on: the batch is run in parts of the size that worked, from then on. Batch 1
    that still fails raises the error."""

    def __init__(self, predictor):
        self.predictor, self.limit = predictor, None

    def __call__(self, batch):
        import numpy as np
        out, start = [], 0
        while start < len(batch):
            size = min(self.limit or len(batch), len(batch) - start)
            try:
                out.append(self.predictor(batch[start:start + size]))
            except Exception as e:
                if size == 1 or not is_out_of_memory(e):
                    raise
                self.limit = size // 2
                release_cached()
                print(f"note: out of memory at a batch of {size} images; going on with batches of {self.limit}",
                      file=sys.stderr)
                continue
            start += size
        return out[0] if len(out) == 1 else np.concatenate(out)
