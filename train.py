"""Train a ResNet on <data-path>/train, validate on <data-path>/val (folders from split_data.py).

    python train.py                               # the tutorial: resnet34, ImageNet weights, 3 epochs
    python train.py --weights none --epochs 30    # from scratch
    python train.py --resume ./last.pth           # continue a run stopped by Ctrl-C, SIGTERM, SIGHUP or memory
    torchrun --nproc_per_node=2 train.py ...      # several GPUs (or CPU processes)

The tutorial's loop is here, in torchvision's order: main() settles the settings and checks every
input and output, builds the data, the model and the optimiser, then runs the epochs:
train_one_epoch(), evaluate() and the best-accuracy save. The machinery behind them (settings,
checkpoints, data, schedules, reports) lives in helpers/.
"""
from helpers import classnames, cli
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
import contextlib
import math
import sys
import time
from pathlib import Path

from helpers import imaging, inference, reports, settings  # no torch at load time: the parser below needs them


# ---------------------------------------------------------------- the command line

def get_args_parser(add_help=True):
    # Every default is settings.DEFAULTS's: the parser's are None, so that a resumed run can tell a
    # value the user gave (refused when it contradicts the run) from one left out.
    d = settings.DEFAULTS
    p = cli.ArgumentParser(description="Train a ResNet classifier (the flower tutorial's train.py)", add_help=add_help)
    g = p.add_argument_group("data, model and output")
    g.add_argument("--data-path", help=f"folder with train/ and val/ (default: {d.data_path})")
    g.add_argument("--model", choices=inference.MODEL_NAMES, help=f"architecture (default: {d.model})")
    g.add_argument("--weights", help="starting weights: a file (default: ./<model>-pre.pth), 'imagenet' to download "
                                     "torchvision's, or 'none' to train from scratch")
    g.add_argument("--epochs", type=cli.int_in(1, 100_000),
                   help=f"epochs in all (default: {d.epochs}; a resumed run keeps its own unless given: then the run "
                        "is extended or shortened)")
    g.add_argument("--batch-size", type=cli.batch_size_arg, help=f"images per step, per process (default: {d.batch_size})")
    g.add_argument("--lr", type=cli.float_in(0, 100, low_open=True), help=f"learning rate (default: {d.lr:g})")
    g.add_argument("--img-size", type=cli.img_size_arg,
                   help=f"train crop; val resizes to img-size/0.875 (default: {d.img_size})")
    g.add_argument("--workers", type=cli.workers_arg, help="data loader processes (default: min(cpus, batch, 8))")
    g.add_argument("--device", help=f"auto, cpu, cuda, cuda:N or mps (default: {d.device})")
    g.add_argument("--freeze-backbone", action="store_true", default=None, help="train only the new fc layer")
    g.add_argument("--save-path", help="best weights, a plain state_dict (default: ./resNet34.pth, after the model)")
    g.add_argument("--class-indices", help=f"class-index file to write (default: {d.class_indices})")
    g.add_argument("--seed", type=cli.seed_arg, help=f"random seed (default: {d.seed})")
    cli.add_overwrite(g, "replace the weights, checkpoint and class-index file of an earlier run")
    g.add_argument("--output-dir", help=f"{', '.join(reports.RUN_REPORTS)} (default: beside --save-path)")
    g = p.add_argument_group("resume")
    g.add_argument("--checkpoint", help="checkpoint written every epoch (default: last.pth beside --save-path)")
    g.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    g = p.add_argument_group("speed")
    g.add_argument("--amp-dtype", choices=("auto", "bf16", "fp16", "none"),
                   help=f"mixed precision: auto picks bf16 where supported, else fp16 on CUDA (default: {d.amp_dtype})")
    g.add_argument("--no-amp", dest="amp_dtype", action="store_const", const="none", help="train in fp32")
    g.add_argument("--channels-last", dest="channels_last", action="store_const", const=True,
                   help="NHWC memory format even where auto leaves it off (default: auto, on where it is measured "
                        "to help: CPUs, GPUs with tensor cores)")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False,
                   help="keep the NCHW memory format")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (torch 2.0+, not on Python 3.11 with torch 2.0)")
    g = p.add_argument_group("recipes")
    g.add_argument("--opt", choices=("adam", "adamw", "sgd"), help=f"optimizer (default: {d.opt})")
    g.add_argument("--momentum", type=cli.float_in(0, 1, high_open=True), help=f"SGD momentum (default: {d.momentum})")
    g.add_argument("--weight-decay", type=cli.float_in(0, 100), help=f"weight decay (default: {d.weight_decay:g})")
    g.add_argument("--norm-weight-decay", type=cli.float_in(0, 100),
                   help="weight decay of norm layers and biases (default: as --weight-decay; 0 is usual)")
    g.add_argument("--lr-scheduler", choices=("none", "cosine", "step"), help=f"(default: {d.lr_scheduler})")
    g.add_argument("--warmup-epochs", type=cli.non_negative_float,
                   help=f"linear warm-up epochs (default: {d.warmup_epochs:g})")
    g.add_argument("--lr-step-size", type=cli.int_in(1, 100_000), help="step scheduler: epochs per decay (default: epochs/3)")
    g.add_argument("--lr-gamma", type=cli.float_in(0, 1, low_open=True),
                   help=f"step scheduler: decay factor (default: {d.lr_gamma})")
    g.add_argument("--label-smoothing", type=cli.float_in(0, 1, high_open=True), help=f"(default: {d.label_smoothing:g})")
    g.add_argument("--auto-augment", nargs="?", const="ta", choices=imaging.TrainTransform.AUTO_AUGMENT,
                   help="ta: TrivialAugmentWide (what the bare flag picks), ra: RandAugment, aa: AutoAugment "
                        "(ImageNet policy) (default: off)")
    g.add_argument("--random-erase", type=cli.float_in(0, 1), help=f"probability of RandomErasing (default: {d.random_erase:g})")
    g.add_argument("--mixup-alpha", type=cli.non_negative_float,
                   help=f"mixup's Beta(alpha, alpha); 0 is off (default: {d.mixup_alpha:g})")
    g.add_argument("--cutmix-alpha", type=cli.non_negative_float,
                   help=f"cutmix's Beta(alpha, alpha); 0 is off (default: {d.cutmix_alpha:g})")
    g.add_argument("--backbone-lr-scale", type=cli.non_negative_float,
                   help=f"learning rate of the pretrained layers relative to the new fc (default: {d.backbone_lr_scale:g})")
    g.add_argument("--accum-steps", type=cli.int_in(1, 1024),
                   help="batches per optimizer step: the gradient of accum-steps x batch-size images at the memory "
                        f"of one batch (default: {d.accum_steps})")
    g.add_argument("--clip-grad-norm", type=cli.positive_float, help="clip the gradient norm to this (default: off)")
    g.add_argument("--model-ema", action="store_true", default=None,
                   help="keep an exponential moving average of the weights; validate both, keep the better")
    g.add_argument("--model-ema-decay", type=cli.float_in(0, 1, high_open=True),
                   help=f"EMA decay per optimizer step, warmed up as min(decay, (1+n)/(10+n)) (default: {d.model_ema_decay})")
    g = p.add_argument_group("classes of different sizes")
    g.add_argument("--class-weights", metavar="auto|FILE",
                   help="weigh the loss by class: auto (inverse class frequency, as scikit-learn's 'balanced') or "
                        "a JSON file of {class: weight} (default: off)")
    g.add_argument("--balanced-sampler", action="store_true", default=None,
                   help="draw each class equally often in every epoch (with replacement; seeded, resumable)")
    g.add_argument("--select-by", choices=("acc", "balanced_acc", "macro_f1"),
                   help=f"what the best weights are best at on val/ (default: {d.select_by}, the tutorial's)")
    g = p.add_argument_group("evaluation, several GPUs")
    g.add_argument("--eval-only", action="store_true", help="only evaluate --weights (default: --save-path) on val/")
    g.add_argument("--sync-bn", action="store_true", default=None, help="synchronised BatchNorm across GPUs (torchrun)")
    return p


if __name__ == "__main__":
    cli.check_args_first(get_args_parser())  # before torch loads (seconds): a mistyped flag is refused at once
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from helpers import checkpoints, data, demo_data, devices, files, memory, optim, plots, stop, training, weights


def main(args):
    # 1. Settle everything before the first side effect: the settings (once), the data, every file.
    world = training.World.from_env()
    ckpt = checkpoints.read(args.resume) if args.resume else None
    s = settings.resolve(args, get_args_parser(), world, ckpt)
    with training.environment(s, world) as env, contextlib.ExitStack() as held:  # env: processes, device, precision
        if world.is_main:
            print(f"using {env.device} device.")
        torch.manual_seed(s.seed)
        train_set, val_set, train_sampler, train_loader, val_loader = load_data(s, env)
        classes, fingerprint = train_set.classes, data.fingerprint(train_set, val_set)
        if ckpt:
            checkpoints.check_same_data(ckpt, classes, fingerprint, s)
        start_weights = read_start_weights(s) if not ckpt and not s.eval_only else None
        class_weights = data.class_weights(s.class_weights, train_set)
        checkpoints.check_run_files(s, classes, resumed=ckpt is not None)
        if world.is_main:
            data.describe(train_set, val_set, s.workers, s)
        if s.eval_only:  # its reports' folder held: a training run may be writing there
            if world.is_main:
                held.enter_context(files.made_dirs(s.output_dir))
                held.enter_context(files.locked(s.output_dir, "--eval-only writing its reports"))
            return evaluate_only(s, env, val_set, val_loader, classes)
        held.enter_context(checkpoints.locked(s, world))  # no other run writes here, nor re-splits the data

        # 2. The model, its optimiser and schedule: from a checkpoint, or from the starting weights.
        model, model_without_ddp = build_model(s, env, len(classes), ckpt, start_weights)
        ema = optim.ema_model(model_without_ddp, s.model_ema_decay) if s.model_ema else None
        state = training.RunState()
        if ckpt:
            state.load_state_dict(ckpt, batch_size=s.batch_size)  # the batch size may change (same images per step)
        optimizer, scheduler, scaler = build_optimizer(s, env, model_without_ddp, ema, len(train_loader), state, ckpt)
        if world.is_main:
            if ckpt:
                print(f"resumed from {s.resume}: epoch {state.epoch + 1}, step {state.step}, "
                      f"best val_accuracy {max(state.best_acc, 0):.3f}")
            print(f"mixed precision: {devices.dtype_name(env.amp_dtype)}, channels-last: "
                  f"{'on' if env.memory_format == torch.channels_last else 'off'}"
                  + (f", gradient accumulation: {s.accum_steps} batches" if s.accum_steps > 1 else ""))
            if not Path(s.class_indices).exists():  # removed again if the run fails before it saves anything
                held.push(files.removed_on_failure(s.class_indices, unless=(s.checkpoint, s.save_path)))
            files.atomic_write_bytes(s.class_indices, classnames.class_indices_bytes(classes))  # the first write
            memory.report(memory.check_training(s, env, model_without_ddp, world.local_size), s,
                          half=env.amp_dtype is not None)

        # 3. The epochs: train, validate, keep the best weights (the tutorial's save), save a checkpoint.
        criterion = nn.CrossEntropyLoss(weight=class_weights.to(env.device) if class_weights is not None else None,
                                        label_smoothing=s.label_smoothing)
        step = training.Step(criterion, optimizer, scheduler, scaler, s, env, state, ema,
                             mixer=data.batch_mixer(s, len(classes)))
        trained_with = weights.TrainedWith(classes=classes, img_size=s.img_size, architecture=s.model,
                                           trained_on=reports.trained_on(p for p, _ in train_set.samples))
        parts = dict(model=model_without_ddp, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema,
                     classes=classes, fingerprint=fingerprint, trained_on=trained_with.trained_on)
        best_val = None  # the val predictions of the best weights, when this run saved them
        with checkpoints.saved_on_failure(s, state, env, parts):  # a signal, out of memory, a lost worker, NaN
            while state.epoch < s.epochs:
                devices.reset_peak_memory(env.device)
                train_sampler.set_epoch(state.epoch, skip=state.step * s.batch_size)
                train_loss, train_acc, seen = train_one_epoch(model, train_loader, step)
                desc = f"valid epoch[{state.epoch + 1}/{s.epochs}]"
                val = evaluate(model_without_ddp, val_loader, env, desc)
                training.check_val(val, len(val_set), s.data_path, state)  # images read, a loss that is a number
                val_ema = evaluate(ema.module, val_loader, env, desc + " ema") if ema is not None else None
                # "Best" is the tutorial's accuracy, or --select-by; the better of the model and its EMA.
                use_ema = val_ema is not None and val_ema.score(s.select_by) > val.score(s.select_by)
                best_net, now = (ema.module, val_ema) if use_ema else (model_without_ddp, val)
                val_accurate = now.score(s.select_by)
                if val_accurate > state.best_acc:  # the tutorial's best-accuracy save
                    state.best_acc, best_val = val_accurate, now
                    if world.is_main:
                        checkpoints.save_best(best_net, trained_with, s.save_path, state)  # torch.save, atomically
                state.history.append(reports.history_row(
                    state.epoch + 1, train_loss=train_loss, train_acc=train_acc, val=val, val_ema=val_ema,
                    lr=optimizer.param_groups[0]["lr"], seconds=state.seconds, seen=seen,
                    peak_mem_mb=devices.peak_memory_mb(env.device)))
                state.next_epoch()
                if world.is_main:
                    print(f"[epoch {state.epoch}] train_loss: {train_loss:.3f}  val_accuracy: {val.acc:.3f}"
                          + (f"  ema_val_accuracy: {val_ema.acc:.3f}" if val_ema else "")
                          + f"  ({state.history[-1]['images_per_s']:.1f} images/s)")
                    checkpoints.save(checkpoints.checkpoint(s, state, **parts), s.checkpoint)
                    reports.write_history(state.history, Path(s.output_dir) / "history.csv")
                    plots.plot_curves(state.history, Path(s.output_dir) / "curves.png",
                                      note=demo_data.figure_note(s.data_path))
        if world.is_main:
            print("Finished Training")

        # 4. The report, on the best weights' val predictions (those of the epoch that saved them).
        # Only when an earlier run saved them (a resumed run that never beat its best) are they read back.
        result = best_val
        if result is None:
            if world.distributed:
                dist.barrier()  # the best weights are on disk before the other processes read them
            model_without_ddp.load_state_dict(weights.read_state_dict(s.save_path))
            result = evaluate(model_without_ddp, val_loader, env, "best weights")
        if world.is_main:
            best = "val_accuracy" if s.select_by == "acc" else f"val {s.select_by}"
            print(f"best {best}: {state.best_acc:.3f}, weights in {s.save_path}")
            report(result, val_set, classes, s.output_dir)
        if world.distributed:  # every collective ends before the process group goes: torch 2.0's gloo can
            dist.barrier()     # otherwise hang in its teardown, freeing the last all_gather's tensors
        return {"best_acc": state.best_acc, "history": state.history, "classes": classes,
                "confusion": result.confusion, "settings": s}


def train_one_epoch(model, loader, step):
    """The epoch's remaining batches. Every --accum-steps batches the optimizer steps; after that a
    stop signal (agreed by all processes) raises stop.Interrupted, with `step.state` holding exactly
    what was done. Returns the epoch's train loss, accuracy and images."""
    s, env, state, optimizer, scaler = step.settings, step.env, step.state, step.optimizer, step.scaler
    model.train()
    sums = state.sums.to(env.device)  # loss x images, correct, images: summed on the device, no wait for the GPU
    n_batches = state.step + len(loader)
    bar = tqdm(loader, file=sys.stdout, disable=not env.world.is_main, initial=state.step, total=n_batches,
               desc=f"train epoch[{state.epoch + 1}/{s.epochs}]")
    start = time.perf_counter()
    last_shown = start - 1  # the first loss is read at once: a NaN there is not the learning rate's doing
    try:
        for images, labels, _ in bar:
            images = images.to(env.device, non_blocking=True, memory_format=env.memory_format)
            labels = labels.to(env.device, non_blocking=True)
            images, targets = data.mix(step.mixer, images, labels, s.seed, state.epoch, state.step)
            # Every accum_steps batches make one optimizer step; the epoch's last group may be shorter.
            first = state.step - state.step % s.accum_steps
            group = min(s.accum_steps, n_batches - first)
            last_of_group = state.step + 1 == first + group
            if state.step == first:
                optimizer.zero_grad(set_to_none=True)
            # Under torchrun, gradients are exchanged only on the batch that ends a step.
            with model.no_sync() if env.world.distributed and not last_of_group else contextlib.nullcontext():
                with devices.autocast(env.device, env.amp_dtype):
                    logits = model(images)
                    loss = step.criterion(logits, targets)
                scaler.scale(loss / group).backward()  # each batch counts 1/group of the step
            if last_of_group:
                if s.clip_grad_norm:
                    scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                    nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                step.scheduler.step()
                if step.ema is not None:
                    step.ema.update_parameters(model)
            sums[0] += loss.detach().float() * len(labels)
            sums[1] += (logits.argmax(1) == labels).sum() if step.mixer is None else 0  # mixed: no hard labels
            sums[2] += len(labels)
            state.step += 1
            # loss.item() waits for the GPU: only when the bar is redrawn, not every step.
            if env.world.is_main and time.perf_counter() - last_shown > 0.5:
                shown = loss.item()
                if not math.isfinite(shown) and not env.world.distributed:  # torchrun: all see it at the end
                    raise training.Diverged(shown, state.epoch, state.step)
                bar.set_description(f"train epoch[{state.epoch + 1}/{s.epochs}] loss:{shown:.3f}", refresh=False)
                last_shown = time.perf_counter()
            if last_of_group:
                signum = training.stop_signal(env.world, env.device)
                if signum:
                    raise stop.Interrupted(signum)
    finally:
        state.seconds += time.perf_counter() - start
        state.sums = sums.cpu()
        bar.close()
    totals = sums.clone()
    if env.world.distributed:
        dist.all_reduce(totals)
    loss_sum, correct, seen = totals.tolist()
    if not math.isfinite(loss_sum):  # every process has the same all-reduced sum: all stop together
        raise training.Diverged(loss_sum, state.epoch, state.step)
    train_acc = correct / max(seen, 1) if step.mixer is None else float("nan")
    return loss_sum / max(seen, 1), train_acc, seen


def evaluate(net, loader, env, desc="valid"):
    """Every val image's prediction (reports.Evaluation: loss, accuracy, confusion matrix), gathered
    from all processes, each image once and in the data set's order."""
    rows = predict_rows(net, loader, env, desc)
    if env.world.distributed:  # outside inference_mode: torch 2.0's all_gather_object fails inside it
        gathered = [None] * env.world.size
        dist.all_gather_object(gathered, rows)
        rows = {k: np.concatenate([g[k] for g in gathered]) for k in rows}
    # DistributedSampler repeats a few images to even out the processes: each image counts once.
    index, first = np.unique(rows["index"], return_index=True)
    return reports.Evaluation(index=index, true=rows["true"][first], pred=rows["pred"][first],
                              prob=rows["prob"][first], losses=rows["loss"][first], in_top5=rows["top5"][first],
                              num_classes=len(loader.dataset.classes))


@torch.inference_mode()
def predict_rows(net, loader, env, desc):
    """This process's share of the val images: index, true class, predicted class, its probability
    and the loss, as NumPy arrays. Kept on the device until the end: no wait for the GPU per batch."""
    net.eval()
    batches = []
    for images, labels, indices in tqdm(loader, file=sys.stdout, disable=not env.world.is_main, desc=desc):
        if not len(labels):
            continue
        images = images.to(env.device, non_blocking=True, memory_format=env.memory_format)
        with devices.autocast(env.device, env.amp_dtype):
            logits = net(images).float()
        labels_on_device = labels.to(env.device)
        prob, pred = torch.softmax(logits, dim=1).max(1)
        loss = nn.functional.cross_entropy(logits, labels_on_device, reduction="none")
        top5 = (logits.topk(min(5, logits.shape[1]), dim=1).indices == labels_on_device[:, None]).any(1)
        batches.append((indices, labels, pred, prob, loss, top5))
        if stop.requested() and not env.world.distributed:
            raise stop.Interrupted(stop.requested())
    names = ("index", "true", "pred", "prob", "loss", "top5")
    if not batches:
        return {k: np.zeros(0, {"prob": np.float32, "loss": np.float32, "top5": bool}.get(k, np.int64)) for k in names}
    return {k: torch.cat(column).cpu().numpy() for k, column in zip(names, zip(*batches))}


def evaluate_only(s, env, val_set, val_loader, classes):
    """--eval-only: the per-class report of --weights (or the run's best weights) on val/."""
    path = s.evaluated_weights
    state_dict, held = weights.read_weights(path, "trained weights")
    weights.check_trained_with(held, path, img_size=s.img_size, classes=classes, data_path=s.data_path)
    net = weights.build_model(s.model, num_classes=len(classes))
    weights.load_trained_weights(net, s.model, state_dict, path, "the data set")
    net.to(env.device, memory_format=env.memory_format)
    result = evaluate(net, val_loader, env)
    if not len(result.index):
        raise cli.UserError(f"none of the {len(val_set)} images in {s.data_path}/val could be read (each is named above)")
    if not math.isfinite(result.loss):
        raise cli.UserError(inference.overflow_line(path))
    if env.world.is_main:
        print(f"{path}: val_loss: {result.loss:.3f}  val_accuracy: {result.acc:.3f}")
        report(result, val_set, classes, s.output_dir)
    return {"val_acc": result.acc, "confusion": result.confusion, "classes": classes}


def report(result, val_set, classes, out_dir):
    """evaluate.py's report, on val/: the per-class table, the confusion matrix, val_predictions.csv
    and the gallery of errors."""
    out = Path(out_dir)
    return reports.final_report(result, [path for path, _ in val_set.samples], classes,
                                confusion_png=out / "confusion_matrix.png", predictions_csv=out / "val_predictions.csv",
                                errors_png=out / "val_errors.png", note=demo_data.figure_note(Path(val_set.root).parent))


# ---------------------------------------------------------------- the builders

def load_data(s, env):
    """The train and val sets (checked: classes, images) and their samplers and loaders."""
    root = files.need_dir(s.data_path, "data folder", "run split_data.py first")
    train_set = data.train_folder(root / "train", imaging.TrainTransform(s.img_size, s.auto_augment, s.random_erase),
                                  check_readable=not s.eval_only)
    val_set = data.val_folder(root / "val", train_set, imaging.EvalTransform(s.img_size))
    train_sampler = data.ResumableSampler(train_set, env.world, shuffle=True, seed=s.seed, balanced=s.balanced_sampler)
    val_sampler = data.ResumableSampler(val_set, env.world, shuffle=False)
    # The workers live for one pass over a loader (not persistent): they end with it, also when the run fails.
    common = dict(batch_size=s.batch_size, num_workers=s.workers, pin_memory=env.device.type == "cuda",
                  worker_init_fn=stop.ignore_in_worker, collate_fn=data.collate_skip_none,
                  prefetch_factor=4 if s.workers > 0 else None)
    # A last batch of one image fails in BatchNorm at small sizes: it is left out of the epoch.
    train_loader = DataLoader(train_set, sampler=train_sampler, drop_last=len(train_sampler) % s.batch_size == 1,
                              **common)
    val_loader = DataLoader(val_set, sampler=val_sampler, **common)
    return train_set, val_set, train_sampler, train_loader, val_loader


def read_start_weights(s):
    """Before any work: the starting weights file is there (or can be downloaded). Returns the
    file's state_dict (read now, not after the first writes, and not read again), or None."""
    if s.start == "imagenet":
        cached = weights.imagenet_cache_path(weights.imagenet_url(s.model))  # refuses a model without them
        if cached.is_file():
            return weights.read_imagenet(s.model)
        files.check_writable_dir(cached.parent, "ImageNet weights")  # downloaded when the model is built
        return None
    if s.start == "none":
        return None
    files.need_file(s.weights, "weights file", f"pass --weights imagenet to download torchvision's ImageNet {s.model} "
                    "file, --weights PATH for another file, or --weights none to train from scratch (then use "
                    "more than 20 epochs)")
    state_dict = weights.read_state_dict(s.weights)
    weights.check_finite(state_dict, s.weights)  # refused now, not after an epoch that ends in NaN
    return state_dict


def build_model(s, env, num_classes, ckpt, start_weights=None):
    """The model with its weights (the checkpoint's, or the starting ones) on the device, frozen where
    asked; wrapped for DistributedDataParallel and torch.compile where that applies. Returns the
    model to train and the plain one (what is saved)."""
    model = weights.build_model(s.model, num_classes=num_classes)
    if ckpt:
        model.load_state_dict(ckpt["model"])
    elif s.start == "none":
        if env.world.is_main:  # the advice is for photos: the demo's cartoons need fewer epochs
            few = s.epochs <= 20 and not demo_data.figure_note(s.data_path)
            print("training from scratch" + (f" for {s.epochs} epochs: photos need more than 20 from scratch (or "
                                             "--weights imagenet)" if few else ""))
    else:
        path = s.weights if s.start == "file" else weights.imagenet_cache_path(weights.imagenet_url(s.model))
        state_dict = start_weights
        if state_dict is None:  # ImageNet weights not in the hub cache yet
            state_dict = weights.read_imagenet(s.model, progress=env.world.is_main)
        weights.load_pretrained(model, s.model, state_dict, path, verbose=env.world.is_main)
    if s.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("fc.")
    model.to(env.device, memory_format=env.memory_format)
    model_without_ddp = model
    if env.world.distributed:
        if s.sync_bn and env.device.type == "cuda":
            model_without_ddp = nn.SyncBatchNorm.convert_sync_batchnorm(model_without_ddp)
        elif s.sync_bn and env.world.is_main:
            print("note: --sync-bn works on CUDA only; ignored on this device")
        model = nn.parallel.DistributedDataParallel(
            model_without_ddp, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if s.compile:
        model = torch.compile(model)
    return model, model_without_ddp


def build_optimizer(s, env, model, ema, batches_per_epoch, state, ckpt):
    """The optimiser, the per-step schedule and the grad scaler; a resumed run's as its checkpoint
    has them, with a cosine schedule continued where the run changed --epochs."""
    optimizer = optim.build_optimizer(model, s)
    # The loader's length is a whole epoch's, also when resuming in the middle of one: the sampler
    # skips nothing until set_epoch.
    steps_per_epoch = math.ceil(batches_per_epoch / s.accum_steps)
    scheduler = optim.build_scheduler(optimizer, s, steps_per_epoch, state.lr_restart)
    scaler = devices.grad_scaler(env.device, env.amp_dtype)
    if ckpt:
        checkpoints.restore(ckpt, s.resume, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema)
        if ckpt["settings"]["epochs"] != s.epochs and s.lr_scheduler == "cosine":
            state.lr_restart = state.epoch * steps_per_epoch + math.ceil(state.step / s.accum_steps)
            optim.restart_cosine(optimizer, s, state.lr_restart, steps_per_epoch, verbose=env.world.is_main)
            scheduler = optim.build_scheduler(optimizer, s, steps_per_epoch, state.lr_restart)
    return optimizer, scheduler, scaler


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
