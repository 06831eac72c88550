"""Train a ResNet on <data-path>/train, validate on <data-path>/val (folders from split_data.py).

    python train.py                               # the tutorial: resnet34, ImageNet weights, 3 epochs
    python train.py --weights none --epochs 30    # from scratch
    python train.py --resume ./last.pth           # continue an interrupted run
    torchrun --nproc_per_node=2 train.py ...      # several GPUs (or CPU processes)

main() reads top to bottom: settle the settings and check every input and output, then build the
data, the model and the optimiser, restore a checkpoint, run the epochs (each ends in a save), and
report on the best weights.
"""
import cli  # noqa: F401  first of all: a Ctrl-C while torch loads then ends in one line (cli.py)
import argparse
import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cli import (ArgumentParser, UserError, atomic_path, atomic_write_bytes, batch_size_arg, check_class_names,
                 check_distinct, check_output, check_outside, check_writable_dir, class_indices_bytes, float_in, img_size_arg, int_in,
                 need_dir, need_file, non_negative_float, positive_float, run_cli, seed_arg, workers_arg)
from device import (amp_dtype, autocast, compile_supported, dtype_name, grad_scaler, memory_format,
                    peak_memory_mb, reset_peak_memory, select_device)
from images import EvalTransform, TrainTransform
from model import MODELS
from plots import plot_confusion, plot_curves, plot_errors
from training import (ResumableSampler, RunState, TrainFolder, World, batch_mixer, build_optimizer, build_scheduler,
                      collate_skip_none, ema_model, ignore_sigint, lr_factor, mixup_available)
from weights import (build_model, default_save_path, imagenet_cache_path, imagenet_url, imagenet_weights,
                     load_pretrained, load_trained_weights, read_state_dict, torch_load)

# Every flag's default. The parser's defaults are None, so that a value the user gave can be told
# from a default: a resumed run keeps its own settings and refuses a flag that contradicts them.
DEFAULTS = {
    "data_path": "data_set/flower_data", "model": "resnet34", "weights": None, "epochs": 3, "batch_size": 16,
    "lr": 1e-4, "img_size": 224, "workers": None, "device": "auto", "freeze_backbone": False, "save_path": None,
    "class_indices": "./class_indices.json", "seed": 0, "output_dir": None, "checkpoint": None,
    "amp_dtype": "auto", "channels_last": True, "compile": False,
    "opt": "adam", "momentum": 0.9, "weight_decay": 0.0, "norm_weight_decay": None, "lr_scheduler": "none",
    "warmup_epochs": 0.0, "lr_step_size": None, "lr_gamma": 0.1, "label_smoothing": 0.0, "auto_augment": None,
    "random_erase": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "backbone_lr_scale": 1.0, "accum_steps": 1,
    "clip_grad_norm": None, "model_ema": False, "model_ema_decay": 0.998, "sync_bn": False,
}
# What a resumed run keeps from its checkpoint; a flag giving another value is refused.
FIXED_ON_RESUME = ("data_path", "model", "batch_size", "lr", "img_size", "freeze_backbone", "seed", "opt", "momentum",
                   "weight_decay", "norm_weight_decay", "lr_scheduler", "warmup_epochs", "lr_step_size", "lr_gamma",
                   "label_smoothing", "auto_augment", "random_erase", "mixup_alpha", "cutmix_alpha",
                   "backbone_lr_scale", "accum_steps", "clip_grad_norm", "model_ema", "model_ema_decay", "sync_bn")
# Where a run writes. A checkpoint keeps them relative to its own folder, so a resumed run writes
# beside the checkpoint it resumes (also from another folder, also a copied run), and nowhere else.
RUN_FILES = ("save_path", "checkpoint", "output_dir", "class_indices")
PATH_SETTINGS = ("data_path", "weights") + RUN_FILES


def get_args_parser(add_help=True):
    p = ArgumentParser(description="Train a ResNet classifier (the flower tutorial's train.py)", add_help=add_help)
    p.add_argument("--data-path", help="folder with train/ and val/ (default: data_set/flower_data)")
    p.add_argument("--model", choices=list(MODELS), help="architecture (default: resnet34)")
    p.add_argument("--weights",
                   help="starting weights: a file (default: ./<model>-pre.pth), 'imagenet' to download "
                        "torchvision's, or 'none' to train from scratch")
    p.add_argument("--epochs", type=int_in(1, 100_000), help="epochs in all (default: 3; a resumed run keeps its own "
                                                       "unless given: then the run is extended or shortened)")
    p.add_argument("--batch-size", type=batch_size_arg, help="images per step, per process (default: 16)")
    p.add_argument("--lr", type=non_negative_float, help="learning rate (default: 1e-4)")
    p.add_argument("--img-size", type=img_size_arg, help="train crop; val resizes to img-size/0.875 (default: 224)")
    p.add_argument("--workers", type=workers_arg, help="data loader processes (default: min(cpus, batch, 8))")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--freeze-backbone", action="store_true", default=None, help="train only the new fc layer")
    p.add_argument("--save-path", help="best weights, a plain state_dict (default: ./resNet34.pth, after the model)")
    p.add_argument("--class-indices", help="class-index file to write (default: ./class_indices.json)")
    p.add_argument("--seed", type=seed_arg, help="random seed (default: 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the weights, checkpoint and class-index file of an earlier run")
    p.add_argument("--output-dir", help="history.csv, curves.png, confusion_matrix.png, val_errors.png, "
                                        "val_predictions.csv (default: beside --save-path)")
    # resume
    p.add_argument("--checkpoint", help="checkpoint written every epoch (default: last.pth beside --save-path)")
    p.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    # speed
    p.add_argument("--amp-dtype", choices=("auto", "bf16", "fp16", "none"),
                   help="mixed precision: auto picks bf16 where supported, else fp16 on CUDA (default: auto)")
    p.add_argument("--no-amp", dest="amp_dtype", action="store_const", const="none", help="train in fp32")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False,
                   help="keep the NCHW memory format")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (torch 2.0+, "
                                                                        "not on Python 3.11 with torch 2.0)")
    # recipes
    p.add_argument("--opt", choices=("adam", "adamw", "sgd"), help="optimizer (default: adam)")
    p.add_argument("--momentum", type=float_in(0, 1, high_open=True), help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=non_negative_float, help="weight decay (default: 0)")
    p.add_argument("--norm-weight-decay", type=non_negative_float,
                   help="weight decay of norm layers and biases (default: as --weight-decay; 0 is usual)")
    p.add_argument("--lr-scheduler", choices=("none", "cosine", "step"), help="(default: none)")
    p.add_argument("--warmup-epochs", type=non_negative_float, help="linear warm-up epochs (default: 0)")
    p.add_argument("--lr-step-size", type=int_in(1, 100_000), help="step scheduler: epochs per decay (default: epochs/3)")
    p.add_argument("--lr-gamma", type=float_in(0, 1, low_open=True), help="step scheduler: decay factor (default: 0.1)")
    p.add_argument("--label-smoothing", type=float_in(0, 1, high_open=True), help="(default: 0)")
    p.add_argument("--auto-augment", nargs="?", const="ta", choices=TrainTransform.AUTO_AUGMENT,
                   help="ta: TrivialAugmentWide (what the bare flag picks), ra: RandAugment, aa: AutoAugment "
                        "(ImageNet policy) (default: off)")
    p.add_argument("--random-erase", type=float_in(0, 1), help="probability of RandomErasing (default: 0)")
    p.add_argument("--mixup-alpha", type=non_negative_float, help="mixup's Beta(alpha, alpha); 0 is off (default: 0)")
    p.add_argument("--cutmix-alpha", type=non_negative_float, help="cutmix's Beta(alpha, alpha); 0 is off (default: 0)")
    p.add_argument("--backbone-lr-scale", type=non_negative_float,
                   help="learning rate of the pretrained layers relative to the new fc (default: 1)")
    p.add_argument("--accum-steps", type=int_in(1, 1024),
                   help="batches per optimizer step: the gradient of accum-steps x batch-size images at the memory "
                        "of one batch (default: 1)")
    p.add_argument("--clip-grad-norm", type=positive_float, help="clip the gradient norm to this (default: off)")
    p.add_argument("--model-ema", action="store_true", default=None,
                   help="keep an exponential moving average of the weights; validate both, keep the better")
    p.add_argument("--model-ema-decay", type=float_in(0, 1, high_open=True),
                   help="EMA decay per optimizer step, warmed up as min(decay, (1+n)/(10+n)) (default: 0.998)")
    # evaluation, multi-GPU
    p.add_argument("--eval-only", action="store_true", help="only evaluate --weights (default: --save-path) on val/")
    p.add_argument("--sync-bn", action="store_true", default=None, help="synchronised BatchNorm across GPUs (torchrun)")
    return p


# ---------------------------------------------------------------- settings

def init_distributed(device_name):
    """The World from torchrun's environment, with its process group started; and the device name
    each process uses (its own GPU under torchrun)."""
    world = World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                  int(os.environ.get("LOCAL_RANK", "0")))
    if world.distributed:
        use_cuda = torch.cuda.is_available() and device_name in (None, "auto", "cuda")
        if use_cuda:
            device_name = f"cuda:{world.local_rank}"
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world, device_name


def flag(name):
    return "--" + name.replace("_", "-")


def read_checkpoint(path):
    ckpt = torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} is not a training checkpoint")
    if "optimizer" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.get("model", ckpt).values()):
        raise UserError(f"{path} is a plain weights file, not a training checkpoint: resume from the "
                        "last.pth written beside it, or start a new run from it with --weights")
    needed = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "sums", "seconds", "best_acc", "history", "classes")
    missing = [k for k in needed if k not in ckpt] + ([] if "settings" in ckpt or "args" in ckpt else ["settings"])
    if missing:
        raise UserError(f"{path} is an incomplete checkpoint (no {', '.join(missing)}); it cannot be resumed")
    return ckpt


def checked_settings(ckpt, path):
    """A resumed checkpoint's settings, each checked as its flag would be (a damaged or edited file
    must not reach the training loop), with the run's files found beside the checkpoint."""
    saved = dict(settings_of(ckpt))
    for action in get_args_parser()._actions:
        value = saved.get(action.dest)
        if action.dest not in DEFAULTS or value is None or action.dest in PATH_SETTINGS:
            continue
        try:
            ok = value in action.choices if action.choices else (
                action.type(str(value)) == value if action.type else isinstance(value, (bool, str)))
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            ok = False
        if not ok:
            raise UserError(f"{path} holds an invalid setting {flag(action.dest)} {value!r}; it cannot be resumed")
    for k in ("epoch", "step"):
        if not isinstance(ckpt[k], int) or ckpt[k] < 0:
            raise UserError(f"{path} holds an invalid {k} {ckpt[k]!r}; it cannot be resumed")
    folder = Path(path).parent
    for k in RUN_FILES:
        if isinstance(saved.get(k), str):
            saved[k] = str(folder / saved[k])  # an absolute path stays as it is
    saved["checkpoint"] = str(path)
    return saved


def settings_of(ckpt):
    """A checkpoint's settings; those of the previous version ('args') are translated."""
    if "settings" in ckpt:
        return ckpt["settings"]
    old = dict(ckpt["args"])
    old["auto_augment"] = "ta" if old.pop("auto_augment", False) else None
    old["amp_dtype"] = "none" if old.pop("no_amp", False) else old.get("amp_dtype", "auto")
    old["channels_last"] = not old.pop("no_channels_last", False)
    return {k: v for k, v in old.items() if k in DEFAULTS}


def same_setting(name, a, b):
    if name in PATH_SETTINGS and a is not None and b is not None:
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def resolve_settings(args, ckpt=None):
    """The run's settings, settled once: the defaults, under what a resumed run saved, under what the
    user gave. A given value that contradicts the resumed run is refused, naming both."""
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    base = dict(DEFAULTS)
    if ckpt:
        saved = checked_settings(ckpt, args.resume)
        for k in FIXED_ON_RESUME + ("weights",) + RUN_FILES:
            if k in given and k in saved and not same_setting(k, given[k], saved[k]):
                raise UserError(f"{flag(k)} {given[k]} contradicts the resumed run's {saved[k]} ({args.resume}); "
                                f"a resumed run keeps its settings and files: leave {flag(k)} out, or start a new "
                                "run (a copy of the run's folder resumes into the copy)")
        base.update({k: saved[k] for k in FIXED_ON_RESUME + RUN_FILES + ("epochs", "weights") if k in saved})
    s = argparse.Namespace(**{**base, **given})
    s.resume, s.overwrite, s.eval_only = args.resume, args.overwrite, args.eval_only
    s.weights_given = "weights" in given
    s.weights = s.weights or f"./{s.model}-pre.pth"
    s.save_path = s.save_path or default_save_path(s.model)
    s.output_dir = s.output_dir or str(Path(s.save_path).parent)
    s.checkpoint = s.checkpoint or str(Path(s.save_path).parent / "last.pth")
    if s.workers is None:
        s.workers = min(os.cpu_count() or 1, s.batch_size if s.batch_size > 1 else 0, 8)
    if s.lr_step_size is None:
        s.lr_step_size = max(1, s.epochs // 3)
    if ckpt and s.epochs < ckpt["epoch"] + (ckpt["step"] > 0):
        raise UserError(f"--epochs {s.epochs}: the resumed run has already done {ckpt['epoch']} epochs")
    if (s.mixup_alpha or s.cutmix_alpha) and not mixup_available():
        import torchvision
        raise UserError(f"--mixup-alpha/--cutmix-alpha need torchvision 0.16 or later (transforms.v2.MixUp); "
                        f"this is {torchvision.__version__}")
    if s.compile and compile_supported():
        raise UserError(f"--compile: {compile_supported()}")
    return s


# ---------------------------------------------------------------- data

def load_data(s, world, device):
    """The train and val sets (checked: classes, images) and their samplers and loaders."""
    root = need_dir(s.data_path, "data folder", "run split_data.py first")
    train_set = TrainFolder(need_dir(root / "train", "train folder", "run split_data.py first"),
                            TrainTransform(s.img_size, s.auto_augment, s.random_erase), replace_unreadable=True)
    classes = check_class_names(train_set.classes, str(root / "train"))
    empty = [c for i, c in enumerate(classes) if i not in set(train_set.targets)]
    if empty:
        raise UserError(f"no images in the class folder(s) {', '.join(empty)} of {root / 'train'}; "
                        "add images or remove the folder(s)")
    val_dir = need_dir(root / "val", "val folder", "run split_data.py first")
    extra = sorted(set(e.name for e in os.scandir(val_dir) if e.is_dir() and not e.name.startswith(".")) - set(classes))
    if extra:
        raise UserError(f"train/ and val/ under {root} hold different classes: {', '.join(extra)} only in val/")
    val_set = TrainFolder(val_dir, EvalTransform(s.img_size), class_to_idx=train_set.class_to_idx)
    if not len(val_set):
        raise UserError(f"no images in {val_dir}; run split_data.py with a --val-rate above 0")
    missing = [c for i, c in enumerate(classes) if i not in set(val_set.targets)]
    if missing and world.is_main:
        print(f"warning: val/ has no images of {', '.join(missing)}: their accuracy cannot be measured", file=sys.stderr)

    train_sampler = ResumableSampler(train_set, world, shuffle=True, seed=s.seed)
    val_sampler = ResumableSampler(val_set, world, shuffle=False)
    common = dict(batch_size=s.batch_size, num_workers=s.workers, pin_memory=device.type == "cuda",
                  persistent_workers=s.workers > 0, worker_init_fn=ignore_sigint, collate_fn=collate_skip_none,
                  prefetch_factor=4 if s.workers > 0 else None)
    # A last batch of one image fails in BatchNorm at small sizes: it is left out of the epoch.
    train_loader = DataLoader(train_set, sampler=train_sampler, drop_last=len(train_sampler) % s.batch_size == 1,
                              **common)
    val_loader = DataLoader(val_set, sampler=val_sampler, **common)
    return train_set, val_set, train_sampler, train_loader, val_loader


# ---------------------------------------------------------------- model and optimisation

def initial_weights(net, s, world, state_dict=None):
    """ImageNet or a file's weights into the new model (or none: from scratch). state_dict: the
    file's, as check_initial_weights read it."""
    if s.weights.lower() == "none":
        if world.is_main:
            print("training from scratch (use more than 20 epochs)")
        return
    if s.weights.lower() == "imagenet":
        path = imagenet_weights(s.model, progress=world.is_main)
        state_dict = read_state_dict(path)
    else:
        path = s.weights
    load_pretrained(net, s.model, state_dict, path, verbose=world.is_main)


def check_initial_weights(s):
    """Before any work: the starting weights file is there (or can be downloaded). Returns the
    file's state_dict (read now, not after the first writes, and not read again), or None."""
    if s.weights.lower() == "imagenet":
        cached = imagenet_cache_path(imagenet_url(s.model))  # a model without ImageNet weights is refused here
        if not cached.is_file():
            check_writable_dir(cached.parent, "ImageNet weights")
    if s.weights.lower() in ("none", "imagenet"):
        return None
    need_file(s.weights, "weights file", f"pass --weights imagenet to download torchvision's ImageNet {s.model} "
              "file, --weights PATH for another file, or --weights none to train from scratch (then use more "
              "than 20 epochs)")
    return read_state_dict(s.weights)


# ---------------------------------------------------------------- training and evaluation

class Interrupted(Exception):
    pass


STOP = {"requested": False}


def _on_sigint(signum, frame):
    if STOP["requested"]:  # a second Ctrl-C stops at once
        raise KeyboardInterrupt
    STOP["requested"] = True
    print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to quit now)", file=sys.stderr)


def stop_requested(world, device):
    """Whether to stop now. Under torchrun every process gets its own Ctrl-C, at its own step: they
    agree (any of them asked) so that none waits alone in an all-reduce."""
    if not world.distributed:
        return STOP["requested"]
    flag_ = torch.tensor([float(STOP["requested"])], device=device)
    dist.all_reduce(flag_, op=dist.ReduceOp.MAX)
    return bool(flag_.item())


def train_one_epoch(model, params, loader, criterion, optimizer, scheduler, scaler, ema, mixer, state, s, ctx):
    """The epoch's remaining batches. Every --accum-steps batches the optimizer steps; after each
    optimizer step a Ctrl-C (agreed by all processes) ends the epoch with Interrupted, `state`
    then holding exactly what was done."""
    device, world, fmt, amp = ctx["device"], ctx["world"], ctx["memory_format"], ctx["amp_dtype"]
    model.train()
    sums = state.sums.to(device)  # loss sum, correct, seen: summed on the device, no per-step sync
    n_batches = len(loader) + state.step
    bar = tqdm(loader, file=sys.stdout, disable=not world.is_main, initial=state.step, total=n_batches,
               desc=f"train epoch[{state.epoch + 1}/{s.epochs}]")
    start = last_shown = time.perf_counter()
    try:
        for images, labels, _ in bar:
            images = images.to(device, non_blocking=True, memory_format=fmt)
            labels = labels.to(device, non_blocking=True)
            targets = labels
            if mixer is not None:
                with torch.random.fork_rng(devices=[]):  # mixing drawn from the batch's own seed: resumable
                    torch.manual_seed(s.seed * 1_000_003 + state.epoch * 10_007 + state.step)
                    images, targets = mixer(images, labels)
            # Accumulation: the loss of each batch counts 1/k of a step of k batches (the last group
            # of an epoch may be shorter).
            group_end = min((state.step // s.accum_steps + 1) * s.accum_steps, n_batches)
            group = group_end - (state.step // s.accum_steps) * s.accum_steps
            update = state.step + 1 == group_end
            sync = contextlib.nullcontext() if update or not world.distributed else model.no_sync()
            with sync:
                with autocast(device, amp):
                    logits = model(images)
                    loss = criterion(logits, targets)
                scaler.scale(loss / group).backward()
            if update:
                if s.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(params, s.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(ctx["model_without_ddp"])
            # In place with Python numbers: a tensor made from one would be a blocking copy to the GPU.
            sums[0] += loss.detach().float() * len(labels)
            if mixer is None:  # no hard labels to count under mixing
                sums[1] += (logits.argmax(1) == labels).sum()
            sums[2] += len(labels)
            state.step += 1
            # loss.item() waits for the GPU: only when the bar is redrawn, not every step.
            if world.is_main and time.perf_counter() - last_shown > 0.5:
                bar.set_description(f"train epoch[{state.epoch + 1}/{s.epochs}] loss:{loss.item():.3f}", refresh=False)
                last_shown = time.perf_counter()
            if update and stop_requested(world, device):
                raise Interrupted
    finally:
        state.seconds += time.perf_counter() - start
        state.sums = sums.cpu()
        bar.close()
    totals = sums.clone()
    if world.distributed:
        dist.all_reduce(totals)
    loss_sum, correct, seen = totals.tolist()
    train_acc = correct / max(seen, 1) if mixer is None else float("nan")  # no hard labels under mixing
    return loss_sum / max(seen, 1), train_acc, seen


@torch.inference_mode()
def predict_rows(net, loader, ctx, desc, interruptible):
    """One row per val image of this process: index, true class, predicted class, probability, loss."""
    device, world = ctx["device"], ctx["world"]
    net.eval()
    indices_, true_, outputs = [], [], []
    for images, labels, indices in tqdm(loader, file=sys.stdout, disable=not world.is_main, desc=desc):
        if not len(labels):
            continue
        indices_.append(indices)
        true_.append(labels)
        images = images.to(device, non_blocking=True, memory_format=ctx["memory_format"])
        labels = labels.to(device, non_blocking=True)
        with autocast(device, ctx["amp_dtype"]):
            logits = net(images).float()
        prob, pred = torch.softmax(logits, dim=1).max(1)
        loss = nn.functional.cross_entropy(logits, labels, reduction="none")
        outputs.append(torch.stack([pred.float(), prob, loss], 1))  # kept on the device: no sync per batch
        if interruptible and not world.distributed and STOP["requested"]:
            raise Interrupted
    if not outputs:
        return torch.zeros(0, 5, dtype=torch.float64)
    return torch.cat([torch.stack([torch.cat(indices_), torch.cat(true_)], 1).double(),
                      torch.cat(outputs).cpu().double()], 1)


def evaluate(net, loader, num_classes, ctx, desc="valid", interruptible=True):
    """Every val image's prediction: loss, accuracy, the confusion matrix (rows: true class, columns:
    predicted) and per-image records (index, true, predicted, probability), gathered from all
    processes with DistributedSampler's padding removed."""
    world = ctx["world"]
    rows = predict_rows(net, loader, ctx, desc, interruptible)
    if world.distributed:  # outside inference_mode: torch 2.0's all_gather_object fails inside it
        gathered = [None] * world.size
        dist.all_gather_object(gathered, rows.numpy())
        rows = torch.from_numpy(np.concatenate(gathered))
    # DistributedSampler repeats a few images to even out the processes: each image counts once,
    # in the data set's order.
    first_row = {}
    for row, index in enumerate(rows[:, 0].to(torch.int64).tolist()):
        first_row.setdefault(index, row)
    rows = rows[[first_row[i] for i in sorted(first_row)]]
    true, pred = rows[:, 1].to(torch.int64), rows[:, 2].to(torch.int64)
    conf = torch.bincount(true * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)
    n = len(rows)
    return {"loss": rows[:, 4].sum().item() / max(n, 1), "acc": (true == pred).sum().item() / max(n, 1),
            "confusion": conf, "index": rows[:, 0].to(torch.int64).tolist(), "true": true.tolist(), "pred": pred.tolist(),
            "prob": rows[:, 3].tolist()}


# ---------------------------------------------------------------- reports and files

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_acc_ema", "lr", "seconds",
                  "images_per_s", "peak_mem_mb")


def write_history(history, path):
    import csv
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def class_report(conf, classes):
    """Per-class precision, recall and (one-vs-rest) accuracy, as a printable table."""
    total = conf.sum().item()
    lines = [f"{'class':<15}{'precision':>10}{'recall':>10}{'accuracy':>10}{'images':>8}"]
    for i, name in enumerate(classes):
        tp = conf[i, i].item()
        predicted, actual = conf[:, i].sum().item(), conf[i].sum().item()
        tn = total - predicted - actual + tp
        lines.append(f"{name:<15}{tp / max(predicted, 1):>10.3f}{tp / max(actual, 1):>10.3f}"
                     f"{(tp + tn) / max(total, 1):>10.3f}{actual:>8}")
    lines.append(f"{'overall':<15}{'':>20}{conf.trace().item() / max(total, 1):>10.3f}{total:>8}")
    return "\n".join(lines)


def write_val_predictions(result, samples, classes, path):
    import csv
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "predicted", "prob", "correct"])
        for i, t, p, prob in zip(result["index"], result["true"], result["pred"], result["prob"]):
            w.writerow([samples[i][0], classes[t], classes[p], f"{prob:.6f}", int(t == p)])


def final_report(result, val_set, classes, out_dir):
    """The per-class table, confusion_matrix.png, val_predictions.csv and val_errors.png."""
    out_dir = Path(out_dir)
    print(class_report(result["confusion"], classes))
    plot_confusion(result["confusion"].numpy(), classes, out_dir / "confusion_matrix.png")
    write_val_predictions(result, val_set.samples, classes, out_dir / "val_predictions.csv")
    errors = [(prob, val_set.samples[i][0], classes[t], classes[p])
              for i, t, p, prob in zip(result["index"], result["true"], result["pred"], result["prob"]) if t != p]
    plot_errors(sorted(errors, key=lambda e: -e[0]), out_dir / "val_errors.png")
    print(f"wrote {out_dir / 'confusion_matrix.png'}, {out_dir / 'val_predictions.csv'} and "
          f"{out_dir / 'val_errors.png'} ({len(errors)} misclassified)")


REPORTS = ("history.csv", "curves.png", "confusion_matrix.png", "val_predictions.csv", "val_errors.png")


def check_run_outputs(s, classes, ckpt):
    """Before any work: every file the run writes can be written, no two are the same file, and none
    that cost training is replaced without --overwrite (a resumed run's own files are its to replace)."""
    image_folders = [Path(s.data_path) / "train", Path(s.data_path) / "val"]
    check_outside(s.output_dir, image_folders, "--output-dir")
    check_writable_dir(s.output_dir, "reports")
    reports = {name: Path(s.output_dir) / name for name in REPORTS}
    for name, path in reports.items():
        check_output(path, name)
    if s.eval_only:
        return
    check_distinct({"--save-path": s.save_path, "--checkpoint": s.checkpoint, "--class-indices": s.class_indices,
                    **{f"--output-dir's {name}": path for name, path in reports.items()}})
    mine = bool(ckpt) or s.overwrite
    # The starting weights are an input: a run never writes over them, --overwrite or not.
    start = [s.weights] if s.weights.lower() not in ("none", "imagenet") and not ckpt else []
    for path, what in ((s.save_path, "best weights"), (s.checkpoint, "checkpoint")):
        check_outside(path, image_folders, what)
        check_output(path, what, suffixes=(".pth", ".pt"), inputs=start)
        if Path(path).exists() and not mine:
            raise UserError(f"{path} is there from an earlier run; --resume {s.checkpoint} continues it, "
                            "--overwrite replaces it, --save-path writes elsewhere")
    check_outside(s.class_indices, image_folders, "class-index file")
    check_output(s.class_indices, "class-index file", overwrite=s.overwrite, same_content=class_indices_bytes(classes))


def checkpoint_dict(s, state, model_without_ddp, optimizer, scheduler, scaler, ema, classes):
    settings = {k: getattr(s, k) for k in DEFAULTS}
    folder = os.path.abspath(os.path.dirname(s.checkpoint))
    for k in RUN_FILES:  # relative to the checkpoint: see RUN_FILES
        try:
            settings[k] = os.path.relpath(os.path.abspath(getattr(s, k)), folder)
        except ValueError:  # another drive (Windows): absolute
            settings[k] = os.path.abspath(getattr(s, k))
    return {**state.state_dict(), "model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "classes": classes, "model_name": s.model,
            "img_size": s.img_size, "settings": settings}


def save(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------- the run

def main(args):
    STOP["requested"] = False
    world, device_name = init_distributed(args.device)
    try:
        return run(args, world, device_name)
    finally:
        if world.distributed and dist.is_initialized():
            dist.destroy_process_group()


def run(args, world, device_name=None):
    # 1. Settle: the settings, then every input and output, before the first side effect.
    ckpt = read_checkpoint(args.resume) if args.resume else None
    s = resolve_settings(args, ckpt)
    s.device = device_name or s.device
    device = select_device(s.device)
    if world.is_main:
        print(f"using {device} device.")
    torch.manual_seed(s.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_set, val_set, train_sampler, train_loader, val_loader = load_data(s, world, device)
    classes = train_set.classes
    if ckpt and ckpt["classes"] != classes:
        raise UserError(f"{args.resume} was trained on classes {ckpt['classes']}, but {s.data_path} has {classes}")
    start_weights = check_initial_weights(s) if not ckpt and not s.eval_only else None
    check_run_outputs(s, classes, ckpt)
    if world.is_main:
        print(f"using {len(train_set)} images for training, {len(val_set)} images for validation.")
        print(f"Using {s.workers} dataloader workers every process")
    ctx = {"device": device, "world": world, "memory_format": memory_format(s.channels_last),
           "amp_dtype": amp_dtype(device, s.amp_dtype)}

    if s.eval_only:
        return evaluate_only(s, build_model(s.model, num_classes=len(classes)), val_set, val_loader, classes, ctx)

    # 2. The model, its optimiser and schedule: from a checkpoint, or from the starting weights.
    state = RunState()
    if ckpt:
        state.load_state_dict(ckpt)
    model, model_without_ddp = build_network(s, len(classes), world, ctx, ckpt, start_weights)
    ema = ema_model(model_without_ddp, s.model_ema_decay) if s.model_ema else None
    optimizer, scheduler, scaler = build_optimisation(s, model_without_ddp, len(train_loader), state, ckpt, world, ctx)
    if ckpt:
        restore(ckpt, optimizer, scheduler, scaler, ema, args.resume, state, world)
    if world.is_main:
        print(f"mixed precision: {dtype_name(ctx['amp_dtype'])}, channels-last: {'on' if s.channels_last else 'off'}"
              + (f", gradient accumulation: {s.accum_steps} batches" if s.accum_steps > 1 else ""))
        atomic_write_bytes(s.class_indices, class_indices_bytes(classes))  # the first write

    # 3. The epochs; each ends in a save.
    criterion = nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
    train_epochs(s, state, world, ctx, model, model_without_ddp, ema, train_sampler, train_loader, val_loader,
                 criterion, optimizer, scheduler, scaler, classes)

    # 4. The best weights, evaluated once more for the report.
    if world.distributed:
        dist.barrier()  # the best weights are on disk before the other processes read them
    model_without_ddp.load_state_dict(read_state_dict(s.save_path))
    result = evaluate(model_without_ddp, val_loader, len(classes), ctx, "best weights", interruptible=False)
    if world.is_main:
        print(f"best val_accuracy: {state.best_acc:.3f}, weights in {s.save_path}")
        final_report(result, val_set, classes, s.output_dir)
    return {"best_acc": state.best_acc, "history": state.history, "classes": classes, "confusion": result["confusion"],
            "settings": s}


def build_network(s, num_classes, world, ctx, ckpt, start_weights=None):
    """The model with its weights (the checkpoint's, or the starting ones) on the device, frozen where
    asked; wrapped for DistributedDataParallel and torch.compile where that applies. Returns the
    model to train and the plain one (what is saved)."""
    model_without_ddp = build_model(s.model, num_classes=num_classes)
    if ckpt:
        model_without_ddp.load_state_dict(ckpt["model"])
    else:
        initial_weights(model_without_ddp, s, world, start_weights)
    if s.freeze_backbone:
        for name, p in model_without_ddp.named_parameters():
            p.requires_grad = name.startswith("fc.")
    device = ctx["device"]
    model_without_ddp.to(device, memory_format=ctx["memory_format"])
    model = model_without_ddp
    if world.distributed:
        if s.sync_bn and device.type == "cuda":
            model_without_ddp = nn.SyncBatchNorm.convert_sync_batchnorm(model_without_ddp)
        elif s.sync_bn and world.is_main:
            print("note: --sync-bn works on CUDA only; ignored on this device")
        model = nn.parallel.DistributedDataParallel(model_without_ddp,
                                                    device_ids=[device.index] if device.type == "cuda" else None)
    ctx["model_without_ddp"] = model_without_ddp
    if s.compile:
        model = torch.compile(model)
    return model, model_without_ddp


def build_optimisation(s, model_without_ddp, batches_per_epoch, state, ckpt, world, ctx):
    """The optimiser, the per-step schedule (continued where a resumed run changed --epochs) and the
    grad scaler."""
    optimizer = build_optimizer(model_without_ddp, s)
    # Optimizer steps in a whole epoch: the sampler skips nothing until set_epoch, so the loader's
    # length is the whole epoch's even when resuming in the middle of one.
    steps_per_epoch = math.ceil(batches_per_epoch / s.accum_steps)
    if ckpt and s.epochs != settings_of(ckpt).get("epochs", s.epochs) and s.lr_scheduler == "cosine":
        state.lr_anchor = continue_cosine(s, settings_of(ckpt)["epochs"], ckpt["scheduler"]["last_epoch"],
                                          steps_per_epoch, state.lr_anchor, world)
    scheduler = build_scheduler(optimizer, s, steps_per_epoch, state.lr_anchor)
    return optimizer, scheduler, grad_scaler(ctx["device"], ctx["amp_dtype"])


def restore(ckpt, optimizer, scheduler, scaler, ema, path, state, world):
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    if world.is_main:
        print(f"resumed from {path}: epoch {state.epoch + 1}, step {state.step}, "
              f"best val_accuracy {max(state.best_acc, 0):.3f}")


def train_epochs(s, state, world, ctx, model, model_without_ddp, ema, train_sampler, train_loader, val_loader,
                 criterion, optimizer, scheduler, scaler, classes):
    """Train and validate until --epochs; each epoch ends in a save. Ctrl-C saves where the run is
    and prints how to go on."""
    device = ctx["device"]
    params = [p for p in model_without_ddp.parameters() if p.requires_grad]
    mixer = batch_mixer(s, len(classes))
    previous_handler = signal.signal(signal.SIGINT, _on_sigint)
    try:
        while state.epoch < s.epochs:
            reset_peak_memory(device)
            train_sampler.set_epoch(state.epoch, skip=state.step * s.batch_size)
            train_loss, train_acc, seen = train_one_epoch(model, params, train_loader, criterion, optimizer,
                                                          scheduler, scaler, ema, mixer, state, s, ctx)
            desc = f"valid epoch[{state.epoch + 1}/{s.epochs}]"
            val = evaluate(model_without_ddp, val_loader, len(classes), ctx, desc)
            val_ema = evaluate(ema.module, val_loader, len(classes), ctx, desc + " ema") if ema is not None else None
            end_of_epoch(s, state, world, device, optimizer, scheduler, scaler, ema, model_without_ddp, classes,
                         train_loss, train_acc, seen, val, val_ema)
    except Interrupted:
        if world.is_main:
            save(checkpoint_dict(s, state, model_without_ddp, optimizer, scheduler, scaler, ema, classes), s.checkpoint)
            print(f"saved {s.checkpoint} at epoch {state.epoch + 1}, step {state.step}; resume with:\n"
                  f"  python train.py --resume {s.checkpoint}", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    if world.is_main:
        print("Finished Training")


def continue_cosine(s, old_epochs, done, steps_per_epoch, anchor, world):
    """The cosine's anchor when a resumed run changes --epochs. Mid-schedule, the rate goes on from
    where it is down to zero at the new end: no jump. A schedule that had already ended (rate 0)
    goes on as if planned for the new length from the start: the rate rises once, and we say so."""
    old = argparse.Namespace(**{**vars(s), "epochs": old_epochs})
    now = lr_factor(done, old, steps_per_epoch, anchor)
    if now > 1e-3:
        if world.is_main:
            print(f"note: --epochs {s.epochs}: the cosine schedule goes on from its current rate "
                  f"({now * s.lr:.3g}) to zero at epoch {s.epochs}")
        return (done, now)
    if world.is_main:
        print(f"note: --epochs {s.epochs}: the cosine schedule had ended; it goes on as if planned for {s.epochs} "
              f"epochs, so the rate rises from 0 to {lr_factor(done, s, steps_per_epoch) * s.lr:.3g}")
    return None


def end_of_epoch(s, state, world, device, optimizer, scheduler, scaler, ema, model_without_ddp, classes,
                 train_loss, train_acc, seen, val, val_ema):
    """The epoch's line and history row; the best weights (raw or EMA) if they beat the best so far;
    the checkpoint, history.csv and curves.png."""
    row = {"epoch": state.epoch + 1, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
           "val_loss": round(val["loss"], 5), "val_acc": round(val["acc"], 5),
           "lr": optimizer.param_groups[0]["lr"],
           "seconds": round(state.seconds, 2), "images_per_s": round(seen / max(state.seconds, 1e-9), 2),
           "peak_mem_mb": round(peak_memory_mb(device), 1)}
    if val_ema:
        row["val_acc_ema"] = round(val_ema["acc"], 5)
    state.history.append(row)
    use_ema = val_ema is not None and val_ema["acc"] > val["acc"]
    acc = val_ema["acc"] if use_ema else val["acc"]
    improved = acc > state.best_acc
    state.best_acc = max(state.best_acc, acc)
    state.next_epoch()
    if not world.is_main:
        return
    print(f"[epoch {row['epoch']}] train_loss: {train_loss:.3f}  val_accuracy: {val['acc']:.3f}"
          + (f"  ema_val_accuracy: {val_ema['acc']:.3f}" if val_ema else "")
          + f"  ({row['images_per_s']:.1f} images/s)")
    if improved:
        save((ema.module if use_ema else model_without_ddp).state_dict(), s.save_path)
    save(checkpoint_dict(s, state, model_without_ddp, optimizer, scheduler, scaler, ema, classes), s.checkpoint)
    write_history(state.history, Path(s.output_dir) / "history.csv")  # cheap reports: replaced
    plot_curves(state.history, Path(s.output_dir) / "curves.png")


def evaluate_only(s, net, val_set, val_loader, classes, ctx):
    path = s.weights if s.weights_given and s.weights.lower() not in ("none", "imagenet") else s.save_path
    load_trained_weights(net, s.model, read_state_dict(path), path, "the data set")
    net.to(ctx["device"], memory_format=ctx["memory_format"])
    result = evaluate(net, val_loader, len(classes), ctx, interruptible=False)
    if ctx["world"].is_main:
        print(f"{path}: val_loss: {result['loss']:.3f}  val_accuracy: {result['acc']:.3f}")
        final_report(result, val_set, classes, s.output_dir)
    return {"val_acc": result["acc"], "confusion": result["confusion"], "classes": classes}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
