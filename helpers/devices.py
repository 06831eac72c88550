"""The device and its precision: which device, which autocast dtype, channels-last, the grad
scaler, peak memory. Calls that changed since torch 2.0 (JetPack 5) are guarded here, in one place."""
import contextlib
import os
import sys

import torch

from helpers import cli


def select_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise cli.UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise cli.UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise cli.UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise cli.UserError("--device mps asked for, but MPS is not available; use --device cpu")
    return device


def train_workers(device_name, batch_size, processes=1):
    """train.py's data-loader workers: the tutorial's min(cpu_count, batch_size, 8). On the CPU the
    workers share the cores with the model, and a worker decodes far faster than the CPU trains:
    half the cores (at least one) keep the model fed and leave it the rest."""
    if batch_size <= 1:
        return 0
    on_cpu = device_name == "cpu" or (device_name == "auto" and select_device("auto").type == "cpu")
    if not on_cpu:
        return min(os.cpu_count() or 1, batch_size, 8)
    cores = (os.cpu_count() or 1) // max(1, processes)  # torchrun on the CPU: each process its share
    return max(1, min(cores // 2, batch_size, 8))


def amp_dtype(device, choice="auto"):
    """The autocast dtype for `choice` (auto, bf16, fp16, none); auto takes what the hardware runs
    natively, or None (then fp32 is faster)."""
    if choice != "auto":
        return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16_native() else None
    return None


def cpu_bf16_native():
    """Whether this CPU computes bf16 natively (AVX-512 BF16, AMX; oneDNN's own test). Without it,
    autocast only adds conversions: fp32 is the ceiling."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def dtype_name(dtype):
    return "off (fp32)" if dtype is None else str(dtype).replace("torch.", "")


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device, dtype):
    """A GradScaler for fp16 on CUDA, a disabled one otherwise. torch.amp.GradScaler(device)
    appeared in torch 2.3; torch 2.0-2.2 have torch.cuda.amp.GradScaler only."""
    enabled = dtype == torch.float16 and device.type == "cuda"
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def channels_last(device, choice="auto"):
    """Whether to run NHWC (channels-last): True or False as given, or "auto": where it was measured
    to help (docs/benchmarks.md): CPUs (oneDNN), and CUDA GPUs with tensor cores (compute capability
    7.0 and later), whose layout it is. Not older GPUs (cuDNN converts to NCHW and back), nor MPS."""
    if choice in (True, False):
        return choice
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (7, 0)
    return False


def memory_format(channels_last):
    """channels-last (NHWC) runs convolutions faster with cuDNN and oneDNN, above all with amp."""
    return torch.channels_last if channels_last else torch.contiguous_format


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device):
    """CUDA: the most memory tensors held since the last reset. CPU: the process's peak resident
    memory since it started (the OS keeps no resettable figure)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def why_no_compile():
    """Why torch.compile cannot run here, or None when it can."""
    if sys.version_info >= (3, 11) and torch.__version__ < "2.1":
        return f"torch {torch.__version__} cannot compile on Python 3.11 (torch 2.1 or later can)"
    if sys.version_info >= (3, 12) and torch.__version__ < "2.4":
        return f"torch {torch.__version__} cannot compile on Python 3.12 (torch 2.4 or later can)"
    return None
