"""The optimiser and its schedule: parameter groups, the learning-rate schedule from
torch.optim.lr_scheduler (stepped at every optimizer step), and the weights' moving average."""
import math
import warnings

import torch
import torch.nn as nn
from torch.optim import lr_scheduler

# torch 2.0's SequentialLR steps the next schedule with an epoch number, and warns about its own call.
warnings.filterwarnings("ignore", message="The epoch parameter in `scheduler.step", category=UserWarning)


def parameter_groups(net, s):
    """The new fc at --lr, the pretrained layers at lr x --backbone-lr-scale; with
    --norm-weight-decay, norm layers and biases get that weight decay (usually 0)."""
    norm_types = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)
    norm_params = {id(p) for m in net.modules() if isinstance(m, norm_types) for p in m.parameters()}
    groups = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        head = name.startswith("fc.")
        no_decay = s.norm_weight_decay is not None and (id(p) in norm_params or name.endswith(".bias"))
        key = (not head, no_decay)  # the head's groups first
        if key not in groups:
            groups[key] = {"params": [], "lr": s.lr * (1.0 if head else s.backbone_lr_scale),
                           "weight_decay": s.norm_weight_decay if no_decay else s.weight_decay}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(net, s):
    groups = parameter_groups(net, s)
    if s.opt == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    cls = torch.optim.AdamW if s.opt == "adamw" else torch.optim.Adam
    return cls(groups, lr=s.lr, weight_decay=s.weight_decay)


def build_scheduler(optimizer, s, steps_per_epoch, restart=None):
    """The schedule, stepped at every optimizer step (smooth on small data sets): a linear warm-up,
    then constant, cosine to zero or step decay. restart: the optimizer step at which a resumed run
    changed --epochs; from there a cosine goes from the rate it had down to zero at the new end."""
    total = s.epochs * steps_per_epoch
    if restart is not None:
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - restart))
    warmup = int(s.warmup_epochs * steps_per_epoch)
    if s.lr_scheduler == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    elif s.lr_scheduler == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=s.lr_step_size * steps_per_epoch, gamma=s.lr_gamma)
    else:
        main = lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if warmup < 1:
        return main
    # From lr / warmup at the first step up to lr at step `warmup - 1`.
    warm = lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=max(1, warmup - 1))
    return lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])


def restart_cosine(optimizer, s, done, steps_per_epoch, verbose=True):
    """A resumed run changed --epochs of a cosine schedule: from optimizer step `done` the rate goes
    down to zero at the new end (build_scheduler's restart). A schedule that had ended first rises
    to the rate the new length has at this step; we say so."""
    lr = optimizer.param_groups[0]["lr"]
    if lr > 1e-3 * s.lr:
        if verbose:
            print(f"note: --epochs {s.epochs}: the cosine schedule goes on from its current rate ({lr:.3g}) "
                  f"to zero at epoch {s.epochs}")
        return
    warmup = int(s.warmup_epochs * steps_per_epoch)
    factor = 0.5 * (1 + math.cos(math.pi * (done - warmup) / max(1, s.epochs * steps_per_epoch - warmup)))
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    if verbose:
        print(f"note: --epochs {s.epochs}: the cosine schedule had ended; the rate rises from 0 to "
              f"{factor * s.lr:.3g} and goes down to zero at epoch {s.epochs}")


def ema_model(net, decay):
    """An exponential moving average of the weights and of the BatchNorm statistics (use_buffers),
    warmed up as min(decay, (1 + n) / (10 + n)) so that short runs are not averaged towards their
    random start."""
    from torch.optim.swa_utils import AveragedModel

    def average(ema_p, p, n):
        d = min(decay, (1 + float(n)) / (10 + float(n)))
        return ema_p * d + p * (1 - d)

    return AveragedModel(net, avg_fn=average, use_buffers=True)
