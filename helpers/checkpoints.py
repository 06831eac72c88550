"""Checkpoints and resume: last.pth read and checked before any work, written atomically at the
end of every epoch and when a signal or a lost data-loader worker stops the run; the best weights;
and the files a run writes, checked and locked before the first write."""
import contextlib
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from helpers import classnames, cli, data, files, memory, reports, settings, stop, training, weights

KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "sums", "seconds", "best_acc", "history",
        "classes", "settings")


def read(path):
    """A training checkpoint, with everything a resumed run needs; refused in one line otherwise."""
    ckpt = weights.torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict):
        raise cli.UserError(f"{path} is not a training checkpoint")
    if "optimizer" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.get("model", ckpt).values()):
        raise cli.UserError(f"{path} is a plain weights file, not a training checkpoint: resume from the "
                            "last.pth written beside it, or start a new run from it with --weights")
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise cli.UserError(f"{path} is an incomplete checkpoint (no {', '.join(missing)}); it cannot be resumed")
    check_checkpoint_model(ckpt, path)
    saved = ckpt["settings"]
    if ckpt.get("img_size", saved.get("img_size")) != saved.get("img_size") or \
            ckpt.get("model_name", saved.get("model")) != saved.get("model"):
        raise cli.UserError(f"{path} is a damaged checkpoint: its image size or model contradicts its own settings; "
                            "it cannot be resumed")
    if not isinstance(ckpt["history"], list) or not all(isinstance(row, dict) for row in ckpt["history"]):
        raise cli.UserError(f"{path} is a damaged checkpoint (its history); it cannot be resumed")
    sums, best, epoch, step = ckpt["sums"], ckpt["best_acc"], ckpt["epoch"], ckpt["step"]
    train_images = ckpt["data"].get("train") if isinstance(ckpt.get("data"), dict) else None
    ok = (isinstance(sums, torch.Tensor) and tuple(sums.shape) == (3,)
          and type(best) in (int, float) and -1 <= best <= 1  # -1: no epoch yet; NaN fails too
          and type(epoch) is int and type(step) is int and epoch >= 0 and step >= 0
          and (type(train_images) is not int or step <= train_images))  # a step is a batch of one image or more
    if not ok:
        raise cli.UserError(f"{path} is a damaged checkpoint (its epoch, step, sums or best accuracy are out of "
                            "range); it cannot be resumed")
    return ckpt


def check_checkpoint_model(ckpt, path):
    """A checkpoint's weights are the model its own settings name, for its own classes (a file
    pieced together, or edited, would fail in load_state_dict with a page of size mismatches)."""
    name = ckpt["settings"].get("model") if isinstance(ckpt["settings"], dict) else None
    classes, state_dict = ckpt["classes"], ckpt["model"]
    if (name not in weights.model_lib.MODELS or not isinstance(classes, list) or not isinstance(state_dict, dict)
            or not all(isinstance(v, torch.Tensor) for v in state_dict.values())):
        raise cli.UserError(f"{path} is a damaged checkpoint (its model, its classes or its weights); it cannot be resumed")
    classnames.check_class_names(classes, f"{path}'s classes")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in weights.build_model(name, num_classes=len(classes)).state_dict().items()}
    if weights.non_finite(state_dict):
        raise cli.UserError(f"{path} holds NaN or infinite weights: the run diverged before it was saved; start again "
                            "with a lower --lr")
    if {k: tuple(v.shape) for k, v in state_dict.items()} != expected:
        other = weights.guess_architecture(state_dict)
        raise cli.UserError(f"{path} is a damaged checkpoint: its weights are {other or 'of an unknown model'}"
                            f"{'' if weights.num_classes_of(state_dict) == len(classes) else ' of another class count'}, "
                            f"but its settings say {name} for {len(classes)} classes; it cannot be resumed")


def check_same_data(ckpt, classes, fingerprint, s):
    """The resumed run reads the data set its checkpoint was trained on."""
    path = s.resume
    if ckpt["classes"] != classes:
        raise cli.UserError(f"{path} was trained on classes {ckpt['classes']}, but {s.data_path} has {classes}")
    saved = ckpt.get("data")
    if saved and saved != fingerprint:
        raise cli.UserError(f"the data set changed since {path} was saved ({saved['train']} train and {saved['val']} "
                            f"val images then, {fingerprint['train']} and {fingerprint['val']} now, or other files): "
                            f"a resumed run would not be the one it continues; start a new run from its weights "
                            f"(--weights {path}), or put the data back")


def checkpoint(s, state, *, model, optimizer, scheduler, scaler, ema, classes, fingerprint, trained_on=None):
    """What last.pth holds: all a resumed run needs to go on exactly where this one is."""
    saved = {k: getattr(s, k) for k in settings.SAVED}
    folder = os.path.abspath(os.path.dirname(s.checkpoint))
    for k in settings.RUN_FILES:  # relative to the checkpoint: see settings.RUN_FILES
        try:
            saved[k] = os.path.relpath(os.path.abspath(getattr(s, k)), folder)
        except ValueError:  # another drive (Windows): absolute
            saved[k] = os.path.abspath(getattr(s, k))
    return {**state.state_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "classes": classes, "model_name": s.model,
            "img_size": s.img_size, "settings": saved, "data": fingerprint, "trained_on": trained_on}


def restore(ckpt, path, *, optimizer, scheduler, scaler, ema):
    """The optimiser, schedule, grad scaler and EMA of a resumed run, as its checkpoint has them; a
    part that does not fit its run (an edited file) is one line, not torch's page."""
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError, IndexError) as e:
        raise cli.UserError(f"{path} is a damaged checkpoint: its optimizer, schedule, grad scaler or EMA does not fit the run "
                            f"({type(e).__name__}: {cli.first_line(e, 80)}); it cannot be resumed") from None


def save(obj, path):
    """torch.save, atomically (files.atomic_path)."""
    with files.atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_best(net, trained_with, path, state):
    """The tutorial's torch.save of the best weights: atomically, with the classes and size that
    prediction must use. NaN weights score by chance, so they are never the best."""
    best = net.state_dict()
    if weights.non_finite(best):
        raise training.Diverged("nan", state.epoch, state.step)
    save(weights.with_info(best, trained_with), path)


@contextlib.contextmanager
def saved_on_failure(s, state, env, parts):
    """Around the epochs. A stop signal (taken at the end of an optimizer step) saves the run where it
    is and exits; a lost data-loader worker saves the last finished step; out of memory and
    divergence save nothing: the last checkpoint is the last good epoch. Each ends in one line."""
    world, started = env.world, (state.epoch, state.step)
    try:
        with stop.deferred("stopping after this step and saving a checkpoint"):
            yield
    except stop.Interrupted as e:
        if world.is_main:
            save(checkpoint(s, state, **parts), s.checkpoint)
            print(f"stopped by {stop.name(e.signum)}: saved {s.checkpoint} at epoch {state.epoch + 1}, step "
                  f"{state.step}; resume with:\n  python train.py --resume {s.checkpoint}", file=sys.stderr)
        if world.distributed:
            dist.barrier()  # every process agreed to stop: the last collective ends before the teardown
        sys.exit(128 + e.signum)
    except training.Diverged as e:
        kept = f"{s.checkpoint} holds the last good epoch" if Path(s.checkpoint).exists() else "nothing was saved"
        raise cli.UserError(f"{e}: {divergence_cause(s, e, env)} ({kept})") from None
    except Exception as e:
        lost_worker = data.loader_failure(e, s.workers)
        if not lost_worker and not memory.is_out_of_memory(e):
            raise
        traceback.clear_frames(e.__traceback__)  # the failed step's tensors and the loaders' workers go now
        memory.release_cached()
        if lost_worker:  # it failed between two batches: the model is that of the last batch
            saved = world.is_main and (state.epoch, state.step) != started and state.step % s.accum_steps == 0
            if saved:
                save(checkpoint(s, state, **parts), s.checkpoint)
            raise cli.UserError(lost_worker + (f"; saved {s.checkpoint} at epoch {state.epoch + 1}, step {state.step}: "
                                               f"python train.py --resume {s.checkpoint} --workers 0" if saved else ""))
        check = memory.check_training(s, env, parts["model"], world.local_size)
        # Only this run's own checkpoint can be resumed: a last.pth left by an earlier run is another run.
        raise cli.UserError(memory.out_of_memory_line(s, check, cli.first_line(e, 120),
                                                      resumable=state.epoch > started[0] or bool(s.resume))) from None


def divergence_cause(s, e, env):
    """Why a run diverged, where it can be told. A loss that is not a number before the first optimizer
    step cannot come from the learning rate: the starting weights (or fp16) overflow on these images."""
    if e.what == "training loss" and e.epoch == 0 and e.step <= s.accum_steps and not s.resume:
        start = {"none": "random starting weights", "imagenet": f"the ImageNet {s.model} weights"}.get(
            s.start, f"the starting weights {s.weights}")
        fp16 = "; or fp16 overflows: try --amp-dtype bf16 or --no-amp" if env.amp_dtype == torch.float16 else ""
        return (f"it was not a number before the first optimizer step, so --lr is not the cause: the model's outputs "
                f"overflow with {start} on these images; check them, or start from other weights{fp16}")
    return f"training diverged; lower --lr (it is {s.lr:g}) and train again"


# ---------------------------------------------------------------- the run's files

@contextlib.contextmanager
def locked(s, world):
    """For the run: the folders it writes into held exclusively (a second run with the same
    --save-path, --checkpoint, --output-dir or class file folder is refused, not mixed with this
    one's files), and the data folder shared (split_data.py cannot re-split it under the run)."""
    folders = [Path(s.save_path).parent, Path(s.checkpoint).parent, Path(s.output_dir), Path(s.class_indices).parent]
    written = list(dict.fromkeys(os.path.realpath(f) for f in folders)) if world.is_main else []
    with contextlib.ExitStack() as stack:
        for folder in written:
            stack.enter_context(files.made_dirs(folder))
            stack.enter_context(files.locked(folder, f"a training run writing {s.save_path}"))
        if os.path.realpath(s.data_path) not in written:
            stack.enter_context(files.locked(s.data_path, "a training run reading it", shared=True))
        yield


def check_run_files(s, classes, resumed):
    """Before any work: every file the run writes can be written, no two are the same file, and none
    that cost training is replaced without --overwrite (a resumed run's own files are its to replace)."""
    image_folders = [Path(s.data_path) / "train", Path(s.data_path) / "val"]
    # Each named by its flag; the paths given first, so that the reports' folder, beside --save-path
    # unless --output-dir is given, is not blamed for --save-path.
    given = [] if s.eval_only else [(s.save_path, "--save-path"), (s.checkpoint, "--checkpoint"),
                                    (s.class_indices, "--class-indices")]
    for path, flag in given + [(s.output_dir, "--output-dir (beside --save-path unless given)")]:
        files.check_outside(path, image_folders, flag)
    files.check_writable_dir(s.output_dir, "reports")
    written = {name: Path(s.output_dir) / name for name in reports.RUN_REPORTS}
    for name, path in written.items():
        head = reports.HISTORY_FIELDS if name == "history.csv" else reports.PREDICTIONS_FIELDS
        files.check_report(path, name, head=head)
    if s.eval_only:
        return
    files.check_distinct({"--save-path": s.save_path, "--checkpoint": s.checkpoint, "--class-indices": s.class_indices,
                          **{f"--output-dir's {name}": path for name, path in written.items()}})
    mine = resumed or s.overwrite
    # The starting weights are an input: a run never writes over them, --overwrite or not.
    start = [s.weights] if s.start == "file" and not resumed else []
    for path, what in ((s.save_path, "best weights"), (s.checkpoint, "checkpoint")):
        files.check_output(path, what, overwrite=True, suffixes=(".pth", ".pt"), inputs=start)
        if Path(path).exists() and not mine:
            # --resume is offered only when there is a checkpoint to resume.
            resume = f"--resume {s.checkpoint} continues it, " if Path(s.checkpoint).is_file() else ""
            beside = path == s.save_path or Path(s.checkpoint) == Path(s.save_path).parent / "last.pth"
            raise cli.UserError(f"{path} is there from an earlier run; {resume}--overwrite replaces it, "
                                f"{'--save-path' if beside else '--checkpoint'} writes elsewhere")
    files.check_output(s.class_indices, "class-index file", overwrite=s.overwrite,
                       same_content=classnames.class_indices_bytes(classes))
