"""Train a ResNet on <data-path>/train, validate on <data-path>/val (folders from split_data.py).

    python train.py                               # the tutorial: resnet34, ImageNet weights, 3 epochs
    python train.py --weights none --epochs 30    # from scratch
    python train.py --resume ./last.pth           # continue an interrupted run
    torchrun --nproc_per_node=2 train.py ...      # several GPUs (or CPU processes)
"""
import argparse
import csv
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.folder import find_classes, make_dataset
from tqdm import tqdm

from common import (UserError, amp_dtype, autocast, build_model, default_save_path, eval_transform,
                    imagenet_weights, is_image_file, load_pretrained, load_rgb, load_trained_weights,
                    need_dir, read_state_dict, run_cli, select_device, train_transform,
                    write_class_indices)
from model import MODELS

# Settings a resumed run takes from its checkpoint; the rest (paths of devices, workers) may change.
RESUMED_ARGS = ("data_path", "model", "weights", "batch_size", "lr", "img_size", "freeze_backbone",
                "save_path", "class_indices", "seed", "checkpoint", "output_dir", "no_amp", "amp_dtype",
                "no_channels_last", "opt", "momentum", "weight_decay", "lr_scheduler", "warmup_epochs",
                "lr_step_size", "lr_gamma", "label_smoothing", "auto_augment", "backbone_lr_scale",
                "sync_bn")


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Train a ResNet classifier (the flower tutorial's train.py)",
                                add_help=add_help)
    p.add_argument("--data-path", default="data_set/flower_data", help="folder with train/ and val/ (default: %(default)s)")
    p.add_argument("--model", default="resnet34", choices=list(MODELS), help="architecture (default: %(default)s)")
    p.add_argument("--weights", default=None,
                   help="starting weights: a file (default: ./<model>-pre.pth), 'imagenet' to download "
                        "torchvision's, or 'none' to train from scratch")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 3; a resumed run keeps its own)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step, per process (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default: %(default)s)")
    p.add_argument("--img-size", type=int, default=224, help="train crop; val resizes to img-size/0.875 (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="data loader processes (default: min(cpus, batch, 8))")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--freeze-backbone", action="store_true", help="train only the new fc layer")
    p.add_argument("--save-path", default=None, help="best weights, a plain state_dict (default: ./resNet34.pth, after the model)")
    p.add_argument("--class-indices", default="./class_indices.json", help="class-index file to write (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the weights and checkpoint of an earlier run")
    p.add_argument("--output-dir", default=None,
                   help="history.csv, curves.png, confusion_matrix.png (default: beside --save-path)")
    # resume
    p.add_argument("--checkpoint", default=None, help="checkpoint written every epoch (default: last.pth beside --save-path)")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue the run saved in this checkpoint")
    # speed
    p.add_argument("--no-amp", action="store_true", help="train in fp32 (default: bf16/fp16 where the hardware has it)")
    p.add_argument("--amp-dtype", default="auto", choices=("auto", "bf16", "fp16"),
                   help="mixed-precision type: auto picks bf16 where supported, else fp16 on CUDA (default: %(default)s)")
    p.add_argument("--no-channels-last", action="store_true", help="keep the NCHW memory format")
    # recipes
    p.add_argument("--opt", default="adam", choices=("adam", "adamw", "sgd"), help="optimizer (default: %(default)s)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default: %(default)s)")
    p.add_argument("--lr-scheduler", default="none", choices=("none", "cosine", "step"), help="(default: %(default)s)")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up epochs (default: %(default)s)")
    p.add_argument("--lr-step-size", type=int, default=None, help="step scheduler: epochs per decay (default: epochs/3)")
    p.add_argument("--lr-gamma", type=float, default=0.1, help="step scheduler: decay factor (default: %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="(default: %(default)s)")
    p.add_argument("--auto-augment", action="store_true", help="add TrivialAugmentWide to the train transform")
    p.add_argument("--backbone-lr-scale", type=float, default=1.0,
                   help="learning rate of the pretrained layers relative to the new fc (default: %(default)s)")
    # evaluation, multi-GPU
    p.add_argument("--eval-only", action="store_true", help="only evaluate --weights (default: --save-path) on val/")
    p.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm across processes (torchrun)")
    return p


# ---------------------------------------------------------------- data

class ImageFolderDataset(Dataset):
    """torchvision's ImageFolder layout, read with load_rgb (RGB, EXIF orientation).

    Indices come as (index, seed) from EpochSampler: each sample's augmentation is seeded by its
    own seed, so a resumed run draws exactly the augmentations the uninterrupted run would have.
    An unreadable image is named on stderr and left out of its batch.
    """

    def __init__(self, root, transform):
        root = need_dir(root, "image folder", "run split_data.py first")
        try:
            self.classes, self.class_to_idx = find_classes(root)
            self.samples = make_dataset(root, self.class_to_idx, is_valid_file=lambda p: is_image_file(p))
        except FileNotFoundError as e:
            raise UserError(f"{root}: {e}".replace("Found no valid file for the classes",
                                                   "no images in the class folder(s)")) from None
        self.root, self.transform = root, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        index, seed = item
        path, target = self.samples[index]
        try:
            img = load_rgb(path)
        except UserError as e:
            print(f"warning: skipped: {e}", file=sys.stderr)
            return None
        if seed is not None:
            torch.manual_seed(seed)
            random.seed(seed)
        return self.transform(img), target


def collate_skip_none(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.utils.data.default_collate(batch)


class EpochSampler(Sampler):
    """Shuffles with a generator seeded by (seed, epoch), shards across processes (padding as
    DistributedSampler does when `pad`), and can skip the samples already seen in an epoch."""

    def __init__(self, n, shuffle, seed=0, rank=0, world_size=1, pad=True):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip=0):
        self.epoch, self.skip = epoch, skip

    def _indices(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.world_size > 1:
            order += order[: (-len(order)) % self.world_size]
        return order[self.rank::self.world_size][self.skip:]

    def __iter__(self):
        base = (self.seed * 100_003 + self.epoch) * self.n
        for i in self._indices():
            yield i, (base + i if self.shuffle else None)

    def __len__(self):
        return len(self._indices())


def _ignore_sigint(_):
    # Ctrl-C is the main process's to handle: it saves a checkpoint at the end of the step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset, sampler, args, device):
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                      pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
                      worker_init_fn=_ignore_sigint, collate_fn=collate_skip_none,
                      prefetch_factor=4 if args.workers > 0 else None)


# ---------------------------------------------------------------- optimisation

def build_optimizer(model, args):
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("fc.")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("fc.")]
    groups = [{"params": head, "lr": args.lr}]
    if body:
        groups.append({"params": body, "lr": args.lr * args.backbone_lr_scale})
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    cls = torch.optim.AdamW if args.opt == "adamw" else torch.optim.Adam
    return cls(groups, lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(optimizer, args, steps_per_epoch):
    """Per-step factor: linear warm-up, then constant, cosine to zero, or step decay."""
    total = args.epochs * steps_per_epoch
    warmup = int(args.warmup_epochs * steps_per_epoch)
    step_size = (args.lr_step_size or max(1, args.epochs // 3)) * steps_per_epoch

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        if args.lr_scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        if args.lr_scheduler == "step":
            return args.lr_gamma ** (step // step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Interrupted(Exception):
    pass


STOP = {"requested": False}


def _on_sigint(signum, frame):
    if STOP["requested"]:  # a second Ctrl-C stops at once
        raise KeyboardInterrupt
    STOP["requested"] = True
    print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to quit now)",
          file=sys.stderr)


def train_one_epoch(model, loader, criterion, optimizer, scheduler, scaler, device, epoch, args, amp, progress):
    """One pass over the (remaining) train batches. `progress` holds the step count and running
    sums so that a Ctrl-C between steps can be saved and resumed exactly."""
    model.train()
    memory_format = torch.preserve_format if args.no_channels_last else torch.channels_last
    sums = progress["sums"].to(device)  # loss sum, correct, seen: on the device, no per-step sync
    bar = tqdm(loader, file=sys.stdout, disable=not args.is_main, desc=f"train epoch[{epoch + 1}/{args.epochs}]")
    start = last_shown = time.perf_counter()
    for images, labels in bar:
        if len(labels):
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(images)
                loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            sums += torch.stack([loss.detach().float() * len(labels),
                                 (logits.argmax(1) == labels).sum().float(),
                                 torch.tensor(float(len(labels)), device=device)])
        scheduler.step()
        progress["step"] += 1
        progress["sums"] = sums
        # loss.item() waits for the GPU: only when the bar is redrawn, not every step.
        if args.is_main and len(labels) and time.perf_counter() - last_shown > 0.5:
            bar.desc = f"train epoch[{epoch + 1}/{args.epochs}] loss:{loss.item():.3f}"
            last_shown = time.perf_counter()
        if STOP["requested"]:
            raise Interrupted
    progress["seconds"] += time.perf_counter() - start
    if args.distributed:
        dist.all_reduce(sums)
    loss_sum, correct, seen = sums.tolist()
    return loss_sum / max(seen, 1), correct / max(seen, 1), seen


@torch.inference_mode()
def evaluate(model, loader, device, num_classes, args, amp, desc="valid"):
    """Val loss, accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    model.eval()
    memory_format = torch.preserve_format if args.no_channels_last else torch.channels_last
    conf = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    for images, labels in tqdm(loader, file=sys.stdout, disable=not args.is_main, desc=desc):
        if not len(labels):
            continue
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        conf += torch.bincount(labels * num_classes + logits.argmax(1), minlength=num_classes ** 2)
        if STOP["requested"]:
            raise Interrupted
    if args.distributed:
        dist.all_reduce(conf)
        dist.all_reduce(loss_sum)
    conf = conf.view(num_classes, num_classes).cpu()
    n = int(conf.sum())
    return loss_sum.item() / max(n, 1), conf.trace().item() / max(n, 1), conf


# ---------------------------------------------------------------- files

def atomic_save(obj, path):
    """Write to a temporary file, then rename: a kill at any moment leaves the old file whole."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s")


def write_history(history, out_dir):
    tmp = Path(out_dir) / "history.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, Path(out_dir) / "history.csv")


def plot_curves(history, path):
    from matplotlib.figure import Figure  # no pyplot: works without a display

    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [h["val_acc"] for h in history], "o-", label="val")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_confusion(conf, classes, path):
    from matplotlib.figure import Figure

    n = len(classes)
    fig = Figure(figsize=(1.2 + 0.8 * n, 1 + 0.7 * n))
    ax = fig.subplots()
    ax.imshow(conf.numpy(), cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title="confusion matrix")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    thresh = conf.max().item() / 2
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(conf[i, j]), ha="center", va="center",
                    color="white" if conf[i, j] > thresh else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


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


def final_report(conf, classes, out_dir, is_main):
    if is_main:
        print(class_report(conf, classes))
        plot_confusion(conf, classes, Path(out_dir) / "confusion_matrix.png")
        print(f"wrote {Path(out_dir) / 'confusion_matrix.png'}")


# ---------------------------------------------------------------- setup

def init_distributed(args):
    args.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    args.rank = int(os.environ.get("RANK", "0"))
    args.world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    args.is_main = args.rank == 0
    if args.distributed:
        use_cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
        if use_cuda:
            args.device = f"cuda:{args.local_rank}"
            torch.cuda.set_device(args.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")


def read_checkpoint(path):
    if not Path(path).is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "optimizer" not in ckpt or "model" not in ckpt:
        raise UserError(f"{path} is a plain weights file, not a training checkpoint: resume from the "
                        "last.pth written beside it, or start a new run from it with --weights")
    return ckpt


def resolve_args(args):
    """Fill the defaults that depend on other settings; on --resume, take the run's own settings."""
    ckpt = None
    if args.resume:
        ckpt = read_checkpoint(args.resume)
        for k in RESUMED_ARGS:
            setattr(args, k, ckpt["args"].get(k, getattr(args, k)))
        args.epochs = args.epochs or ckpt["args"]["epochs"]
    args.epochs = args.epochs or 3
    args.save_path = args.save_path or default_save_path(args.model)
    args.output_dir = args.output_dir or str(Path(args.save_path).parent)
    args.checkpoint = args.checkpoint or str(Path(args.save_path).parent / "last.pth")
    if args.workers is None:
        args.workers = min(os.cpu_count() or 1, args.batch_size if args.batch_size > 1 else 0, 8)
    for name in ("epochs", "batch_size", "img_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    return ckpt


def initial_weights(model, args):
    if args.weights is None:
        args.weights = f"./{args.model}-pre.pth"
    if args.weights.lower() == "none":
        if args.is_main:
            print("training from scratch (use more than 20 epochs)")
        return
    if args.weights.lower() == "imagenet":
        path = imagenet_weights(args.model, progress=args.is_main)
    else:
        path = args.weights
        if not Path(path).is_file():
            raise UserError(f"weights file not found: {path}; pass --weights imagenet to download "
                            f"torchvision's ImageNet {args.model} file, --weights PATH for another file, "
                            "or --weights none to train from scratch (then use more than 20 epochs)")
    load_pretrained(model, args.model, read_state_dict(path), path, verbose=args.is_main)


def main(args):
    STOP["requested"] = False
    init_distributed(args)
    try:
        return _main(args)
    finally:
        if args.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _main(args):
    ckpt = resolve_args(args)
    device = select_device(args.device)
    if args.is_main:
        print(f"using {device} device.")
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    data = need_dir(args.data_path, "data folder", "run split_data.py first")
    train_set = ImageFolderDataset(data / "train", train_transform(args.img_size, args.auto_augment))
    val_set = ImageFolderDataset(data / "val", eval_transform(args.img_size))
    classes = train_set.classes
    if val_set.classes != classes:
        raise UserError(f"train/ and val/ under {data} hold different classes: {classes} vs {val_set.classes}")
    if ckpt and ckpt["classes"] != classes:
        raise UserError(f"{args.resume} was trained on classes {ckpt['classes']}, but {data} has {classes}")
    if args.is_main:
        write_class_indices(args.class_indices, classes)
        print(f"using {len(train_set)} images for training, {len(val_set)} images for validation.")
        print(f"Using {args.workers} dataloader workers every process")

    train_sampler = EpochSampler(len(train_set), True, args.seed, args.rank, args.world_size)
    val_sampler = EpochSampler(len(val_set), False, rank=args.rank, world_size=args.world_size, pad=False)
    train_loader = make_loader(train_set, train_sampler, args, device)
    val_loader = make_loader(val_set, val_sampler, args, device)
    args.steps_per_epoch = len(train_loader)

    amp = None if args.no_amp else {"auto": amp_dtype(device), "bf16": torch.bfloat16,
                                     "fp16": torch.float16}[args.amp_dtype]
    net = build_model(args.model, num_classes=len(classes))
    out_dir = Path(args.output_dir)

    if args.eval_only:
        path = args.weights if args.weights not in (None, "none", "imagenet") else args.save_path
        load_trained_weights(net, args.model, read_state_dict(path), path, "the data set")
        net.to(device, memory_format=torch.preserve_format if args.no_channels_last else torch.channels_last)
        val_loss, val_acc, conf = evaluate(net, val_loader, device, len(classes), args, amp)
        if args.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            print(f"{path}: val_loss: {val_loss:.3f}  val_accuracy: {val_acc:.3f}")
        final_report(conf, classes, out_dir, args.is_main)
        return {"val_acc": val_acc, "confusion": conf, "classes": classes}

    if not ckpt:
        existing = [p for p in (args.save_path, args.checkpoint) if Path(p).exists()]
        if existing and not args.overwrite:
            raise UserError(f"{existing[0]} is there from an earlier run; --resume {args.checkpoint} "
                            "continues it, --overwrite replaces it, --save-path writes elsewhere")
        initial_weights(net, args)
    if args.freeze_backbone:
        for name, p in net.named_parameters():
            p.requires_grad = name.startswith("fc.")
    net.to(device, memory_format=torch.preserve_format if args.no_channels_last else torch.channels_last)
    model = net
    if args.distributed:
        if args.sync_bn and device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        elif args.sync_bn and args.is_main:
            print("note: --sync-bn works on CUDA only; ignored on this device")
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = build_optimizer(net, args)
    scheduler = build_scheduler(optimizer, args, args.steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    if args.is_main:
        print(f"mixed precision: {'off (fp32)' if amp is None else str(amp).replace('torch.', '')}, "
              f"channels-last: {'off' if args.no_channels_last else 'on'}")

    start_epoch, best_acc, history = 0, -1.0, []  # -1: the first epoch's weights are always kept
    progress = {"step": 0, "sums": torch.zeros(3), "seconds": 0.0}
    if ckpt:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_acc, history = ckpt["epoch"], ckpt["best_acc"], ckpt["history"]
        progress = {"step": ckpt["step"], "sums": ckpt["sums"], "seconds": ckpt["seconds"]}
        if args.is_main:
            print(f"resumed from {args.resume}: epoch {start_epoch + 1}, step {progress['step']}, "
                  f"best val_accuracy {max(best_acc, 0):.3f}")

    def checkpoint(epoch):
        return {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "step": progress["step"], "sums": progress["sums"].cpu(),
                "seconds": progress["seconds"], "best_acc": best_acc, "history": history,
                "classes": classes, "model_name": args.model, "img_size": args.img_size,
                "args": {k: v for k, v in vars(args).items() if k in RESUMED_ARGS + ("epochs",)}}

    if args.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        Path(args.save_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    previous_handler = signal.signal(signal.SIGINT, _on_sigint)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, args.epochs):
            train_sampler.set_epoch(epoch, skip=progress["step"] * args.batch_size)
            train_loss, train_acc, seen = train_one_epoch(model, train_loader, criterion, optimizer, scheduler,
                                                          scaler, device, epoch, args, amp, progress)
            val_loss, val_acc, _ = evaluate(net, val_loader, device, len(classes), args, amp,
                                            desc=f"valid epoch[{epoch + 1}/{args.epochs}]")
            seconds = progress["seconds"]
            history.append({"epoch": epoch + 1, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
                            "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5),
                            "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 2),
                            "images_per_s": round(seen / max(seconds, 1e-9), 2)})
            progress = {"step": 0, "sums": torch.zeros(3), "seconds": 0.0}
            if args.is_main:
                print(f"[epoch {epoch + 1}] train_loss: {train_loss:.3f}  val_accuracy: {val_acc:.3f}"
                      f"  ({history[-1]['images_per_s']:.1f} images/s)")
                if val_acc > best_acc:
                    best_acc = val_acc
                    atomic_save(net.state_dict(), args.save_path)
                atomic_save(checkpoint(epoch + 1), args.checkpoint)
                write_history(history, out_dir)
                plot_curves(history, out_dir / "curves.png")
            best_acc = max(best_acc, val_acc)
    except Interrupted:
        if args.is_main:
            atomic_save(checkpoint(epoch), args.checkpoint)
            print(f"saved {args.checkpoint} at epoch {epoch + 1}, step {progress['step']}; resume with:\n"
                  f"  python train.py --resume {args.checkpoint}", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    if args.is_main:
        print("Finished Training")
    if args.distributed:
        dist.barrier()  # the best weights are on disk before the other processes read them
    if not Path(args.save_path).is_file():
        return {"best_acc": best_acc, "history": history, "classes": classes}
    net.load_state_dict(read_state_dict(args.save_path))
    _, _, conf = evaluate(net, val_loader, device, len(classes), args, amp, desc="best weights")
    if args.is_main:
        print(f"best val_accuracy: {best_acc:.3f}, weights in {args.save_path}")
    final_report(conf, classes, out_dir, args.is_main)
    return {"best_acc": best_acc, "history": history, "classes": classes, "confusion": conf}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
