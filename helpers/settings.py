"""train.py's settings and checkpoints.

The settings are one frozen object, resolved once: the defaults (written once, in Settings below;
train.py's --help reads them from DEFAULTS), under what a resumed run saved, under what the user
gave. Every derived value (workers, paths, the device torchrun gives, where the starting weights
come from) is set here; nothing changes the object afterwards.

A checkpoint (last.pth) holds the model, the optimiser, the schedule, the run's state and its
settings. It is read and checked before any work, and written atomically at the end of every
epoch and when Ctrl-C, SIGTERM, SIGHUP or running out of memory stops the run.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import os
from pathlib import Path

import torch

from helpers import cli, devices, files, reports, training, weights

RUN = {"run": True}  # a field of how this run was started: not saved in a checkpoint, not resumed


@dataclasses.dataclass(frozen=True)
class Settings:
    # data, model, output
    data_path: str = "data_set/flower_data"
    model: str = "resnet34"
    weights: str = None  # a file, "imagenet" or "none" (None: ./<model>-pre.pth)
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    img_size: int = 224
    workers: int = None  # None: min(cpus, batch size, 8)
    device: str = "auto"
    freeze_backbone: bool = False
    save_path: str = None  # None: ./resNet34.pth, after the model
    class_indices: str = files.CLASS_INDICES
    seed: int = 0
    output_dir: str = None  # None: beside save_path
    checkpoint: str = None  # None: last.pth beside save_path
    # speed
    amp_dtype: str = "auto"  # auto, bf16, fp16 or none
    channels_last: object = "auto"  # "auto" (devices.channels_last), True or False
    compile: bool = False
    # recipes
    opt: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    norm_weight_decay: float = None  # None: as weight_decay
    lr_scheduler: str = "none"
    warmup_epochs: float = 0.0
    lr_step_size: int = None  # None: epochs // 3
    lr_gamma: float = 0.1
    label_smoothing: float = 0.0
    auto_augment: str = None
    random_erase: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    backbone_lr_scale: float = 1.0
    accum_steps: int = 1
    clip_grad_norm: float = None
    model_ema: bool = False
    model_ema_decay: float = 0.998
    sync_bn: bool = False
    # classes of different sizes
    class_weights: str = None  # None, "auto" or a JSON file of {class: weight}
    balanced_sampler: bool = False
    select_by: str = "acc"  # what "best weights" means: acc, balanced_acc or macro_f1
    # how this run was started
    resume: str = dataclasses.field(default=None, metadata=RUN)
    overwrite: bool = dataclasses.field(default=False, metadata=RUN)
    eval_only: bool = dataclasses.field(default=False, metadata=RUN)
    start: str = dataclasses.field(default="file", metadata=RUN)  # the starting weights: none, imagenet or file
    weights_given: bool = dataclasses.field(default=False, metadata=RUN)

    @property
    def evaluated_weights(self):
        """--eval-only's weights: --weights when a file was given, else the run's best weights."""
        return self.weights if self.weights_given and self.start == "file" else self.save_path


DEFAULTS = Settings()
SAVED = tuple(f.name for f in dataclasses.fields(Settings) if not f.metadata)
# What a resumed run keeps from its checkpoint; a flag giving another value is refused.
FIXED_ON_RESUME = ("data_path", "model", "batch_size", "lr", "img_size", "freeze_backbone", "seed", "opt", "momentum",
                   "weight_decay", "norm_weight_decay", "lr_scheduler", "warmup_epochs", "lr_step_size", "lr_gamma",
                   "label_smoothing", "auto_augment", "random_erase", "mixup_alpha", "cutmix_alpha",
                   "backbone_lr_scale", "accum_steps", "clip_grad_norm", "model_ema", "model_ema_decay", "sync_bn",
                   "class_weights", "balanced_sampler", "select_by")
# Where a run writes. A checkpoint keeps them relative to its own folder, so a resumed run writes
# beside the checkpoint it resumes (also from another folder, also a copied run), and nowhere else.
RUN_FILES = ("save_path", "checkpoint", "output_dir", "class_indices")
PATH_SETTINGS = ("data_path", "weights", "class_weights") + RUN_FILES


def flag(name):
    return "--" + name.replace("_", "-")


def resolve(args, parser, world, ckpt=None):
    """The run's settings, settled once: the defaults, under what a resumed run saved (`ckpt`),
    under what the user gave (the parser's defaults are None, so a given value can be told from a
    default). parser: train.py's, whose argument types check a checkpoint's saved settings."""
    given = {k: v for k, v in vars(args).items() if k in SAVED and v is not None}
    values = {k: getattr(DEFAULTS, k) for k in SAVED}
    if ckpt:
        saved = checked_settings(ckpt, args.resume, parser)
        rebatch = check_rebatch(given, saved, args.resume)
        for k in FIXED_ON_RESUME + ("weights",) + RUN_FILES:
            if k in rebatch:
                continue
            if k in given and k in saved and not same_setting(k, given[k], saved[k]):
                raise cli.UserError(f"{flag(k)} {given[k]} contradicts the resumed run's {saved[k]} ({args.resume}); "
                                    f"a resumed run keeps its settings and files: leave {flag(k)} out, or start a "
                                    "new run (a copy of the run's folder resumes into the copy)")
        values.update({k: saved[k] for k in FIXED_ON_RESUME + RUN_FILES + ("epochs", "weights") if k in saved})
    values.update(given)
    v = argparse.Namespace(**values)

    v.weights = v.weights or f"./{v.model}-pre.pth"
    start = v.weights.lower() if v.weights.lower() in ("none", "imagenet") else "file"
    v.save_path = v.save_path or weights.default_save_path(v.model)
    v.output_dir = v.output_dir or str(Path(v.save_path).parent)
    v.checkpoint = v.checkpoint or str(Path(v.save_path).parent / "last.pth")
    if v.workers is None:
        v.workers = devices.train_workers(v.device, v.batch_size, world.local_size)
    if v.lr_step_size is None:
        v.lr_step_size = max(1, v.epochs // 3)
    if world.distributed and torch.cuda.is_available() and v.device in ("auto", "cuda"):
        v.device = f"cuda:{world.local_rank}"  # torchrun: each process its own GPU

    if v.batch_size == 1 and not args.eval_only and training.last_map_size(v.img_size) == 1:
        raise cli.UserError(f"--batch-size 1 at --img-size {v.img_size}: the last BatchNorm layers would see one value "
                            "per channel, and cannot train on that; pass --batch-size 2 or more, or an --img-size "
                            "above 32")
    if ckpt and v.epochs < ckpt["epoch"] + (ckpt["step"] > 0):
        raise cli.UserError(f"--epochs {v.epochs}: the resumed run has already done {ckpt['epoch']} epochs")
    if (v.mixup_alpha or v.cutmix_alpha) and not training.mixup_available():
        import torchvision
        raise cli.UserError(f"--mixup-alpha/--cutmix-alpha need torchvision 0.16 or later (transforms.v2.MixUp); "
                            f"this is {torchvision.__version__}")
    if v.compile and devices.why_no_compile():
        raise cli.UserError(f"--compile: {devices.why_no_compile()}")
    return Settings(**vars(v), resume=args.resume, overwrite=args.overwrite, eval_only=args.eval_only, start=start,
                    weights_given="weights" in given)


def check_rebatch(given, saved, path):
    """A resumed run may take a smaller --batch-size (one that divides its own) when --accum-steps
    keeps the images per optimizer step: what a run that ran out of memory needs. Returns the
    names of the two settings when they change so, () when they are not given; refuses any other
    change."""
    if "batch_size" not in given and "accum_steps" not in given:
        return ()
    old_b, old_a = saved.get("batch_size", DEFAULTS.batch_size), saved.get("accum_steps", DEFAULTS.accum_steps)
    b, a = given.get("batch_size", old_b), given.get("accum_steps", old_a)
    if (b, a) == (old_b, old_a):
        return ()
    if b * a != old_b * old_a or old_b % b:
        hint = f" (--batch-size {old_b // 2} --accum-steps {old_a * 2}, say)" if old_b % 2 == 0 else ""
        raise cli.UserError(f"--batch-size {b} --accum-steps {a} contradicts the resumed run's --batch-size {old_b} "
                            f"--accum-steps {old_a} ({path}): a resumed run keeps its {old_b * old_a} images per "
                            f"optimizer step; a batch size that divides {old_b}, with --accum-steps making up the "
                            f"rest, can change{hint}")
    return ("batch_size", "accum_steps")


def same_setting(name, a, b):
    if name in PATH_SETTINGS and a is not None and b is not None:
        return Path(a).resolve() == Path(b).resolve()
    return a == b


# ---------------------------------------------------------------- checkpoints

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "sums", "seconds", "best_acc",
                   "history", "classes", "settings")


def read_checkpoint(path):
    """A training checkpoint, with everything a resumed run needs; refused in one line otherwise."""
    ckpt = weights.torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict):
        raise cli.UserError(f"{path} is not a training checkpoint")
    if "optimizer" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.get("model", ckpt).values()):
        raise cli.UserError(f"{path} is a plain weights file, not a training checkpoint: resume from the "
                            "last.pth written beside it, or start a new run from it with --weights")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
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


def checked_settings(ckpt, path, parser):
    """A resumed checkpoint's settings, each checked as its flag would be (a damaged or edited file
    must not reach the training loop), with the run's files found beside the checkpoint."""
    saved = dict(ckpt["settings"])
    for action in parser._actions:
        value = saved.get(action.dest)
        if action.dest not in SAVED or value is None or action.dest in PATH_SETTINGS:
            continue
        try:
            ok = value in action.choices if action.choices else (
                action.type(str(value)) == value if action.type else isinstance(value, (bool, str)))
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            ok = False
        if not ok:
            raise cli.UserError(f"{path} holds an invalid setting {flag(action.dest)} {value!r}; it cannot be resumed")
    for k in ("epoch", "step"):
        if not isinstance(ckpt[k], int) or ckpt[k] < 0:
            raise cli.UserError(f"{path} holds an invalid {k} {ckpt[k]!r}; it cannot be resumed")
    folder = Path(path).parent
    for k in RUN_FILES:
        if isinstance(saved.get(k), str):
            saved[k] = str(folder / saved[k])  # an absolute path stays as it is
    saved["checkpoint"] = str(path)
    return saved


def data_fingerprint(train_set, val_set):
    """What a run trained on: the images of train/ and val/ (their names and sizes), so that a
    resumed run can tell that the data set changed under it (exact resume would silently break)."""
    h = hashlib.sha256()
    for ds in (train_set, val_set):
        for path, target in ds.samples:
            with contextlib.suppress(OSError):
                h.update(f"{os.path.relpath(path, ds.root)}\0{target}\0{os.path.getsize(path)}\n".encode("utf-8",
                                                                                                      "surrogateescape"))
    return {"train": len(train_set), "val": len(val_set), "sha256": h.hexdigest()}


def check_same_data(ckpt, fingerprint, path):
    saved = ckpt.get("data")
    if saved and saved != fingerprint:
        raise cli.UserError(f"the data set changed since {path} was saved ({saved['train']} train and {saved['val']} "
                            f"val images then, {fingerprint['train']} and {fingerprint['val']} now, or other files): "
                            f"a resumed run would not be the one it continues; start a new run from its weights "
                            f"(--weights {path}), or put the data back")


def checkpoint(s, state, *, model, optimizer, scheduler, scaler, ema, classes, data):
    """What last.pth holds: all a resumed run needs to go on exactly where this one is."""
    saved = {k: getattr(s, k) for k in SAVED}
    folder = os.path.abspath(os.path.dirname(s.checkpoint))
    for k in RUN_FILES:  # relative to the checkpoint: see RUN_FILES
        try:
            saved[k] = os.path.relpath(os.path.abspath(getattr(s, k)), folder)
        except ValueError:  # another drive (Windows): absolute
            saved[k] = os.path.abspath(getattr(s, k))
    return {**state.state_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "classes": classes, "model_name": s.model,
            "img_size": s.img_size, "settings": saved, "data": data}


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


# ---------------------------------------------------------------- the run's files

@contextlib.contextmanager
def locked(s, world):
    """For the run: the folders it writes into held exclusively (a second run with the same
    --save-path, --checkpoint, --output-dir or class file folder is refused, not mixed with this
    one's files), and the data folder shared (split_data.py cannot re-split it under the run)."""
    # Every folder the run writes into: the weights', the checkpoint's, the reports', the class file's.
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
    files.check_outside(s.output_dir, image_folders, "--output-dir")
    files.check_writable_dir(s.output_dir, "reports")
    written = {name: Path(s.output_dir) / name for name in reports.RUN_REPORTS}
    for name, path in written.items():
        files.check_output(path, name)
    if s.eval_only:
        return
    files.check_distinct({"--save-path": s.save_path, "--checkpoint": s.checkpoint, "--class-indices": s.class_indices,
                          **{f"--output-dir's {name}": path for name, path in written.items()}})
    mine = resumed or s.overwrite
    # The starting weights are an input: a run never writes over them, --overwrite or not.
    start = [s.weights] if s.start == "file" and not resumed else []
    for path, what in ((s.save_path, "best weights"), (s.checkpoint, "checkpoint")):
        files.check_outside(path, image_folders, what)
        files.check_output(path, what, suffixes=(".pth", ".pt"), inputs=start)
        if Path(path).exists() and not mine:
            raise cli.UserError(f"{path} is there from an earlier run; --resume {s.checkpoint} continues it, "
                                "--overwrite replaces it, --save-path writes elsewhere")
    files.check_outside(s.class_indices, image_folders, "class-index file")
    files.check_output(s.class_indices, "class-index file", overwrite=s.overwrite,
                       same_content=files.class_indices_bytes(classes))
