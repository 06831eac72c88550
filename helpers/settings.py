"""train.py's settings: one frozen object, resolved once, before any side effect: the defaults
(Settings below), under what a resumed run saved, under what the user gave. Every derived value
(workers, paths, torchrun's device, the starting weights) is set here, and never changed after."""
import argparse
import contextlib
import dataclasses
import io
from pathlib import Path

from helpers import classnames, cli, files

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
    class_indices: str = classnames.CLASS_INDICES
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
# Where a run writes. A checkpoint keeps them relative to its own folder, so a resumed run writes
# beside the checkpoint it resumes (also from another folder, also a copied run), and nowhere else.
RUN_FILES = ("save_path", "checkpoint", "output_dir", "class_indices")
# A resumed run may change how it runs; the rest it keeps from its checkpoint (another value is refused).
FIXED_ON_RESUME = tuple(k for k in SAVED if k not in ("epochs", "weights", "workers", "device", "amp_dtype",
                                                      "channels_last", "compile") + RUN_FILES)
PATH_SETTINGS = ("data_path", "weights", "class_weights") + RUN_FILES


def flag(name):
    return "--" + name.replace("_", "-")


def resolve(args, parser, world, ckpt=None):
    """The run's settings, settled once: the defaults, under what a resumed run saved (`ckpt`),
    under what the user gave (the parser's defaults are None, so a given value can be told from a
    default). parser: train.py's, whose argument types check a checkpoint's saved settings."""
    # Imported here, not at the top: train.py builds its parser from DEFAULTS before torch loads.
    import torch

    from helpers import data, devices, weights
    given = {k: v for k, v in vars(args).items() if k in SAVED and v is not None}
    values = {k: getattr(DEFAULTS, k) for k in SAVED}
    if ckpt:
        saved = checked_settings(ckpt, args.resume, parser)
        rebatch = check_rebatch(given, saved, args.resume)
        for k in FIXED_ON_RESUME + ("weights",) + RUN_FILES:
            if k not in rebatch and k in given and k in saved and not same_setting(k, given[k], saved[k]):
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

    if v.batch_size == 1 and not args.eval_only and data.last_map_size(v.img_size) == 1:
        raise cli.UserError(f"--batch-size 1 at --img-size {v.img_size}: the last BatchNorm layers would see one value "
                            "per channel, and cannot train on that; pass --batch-size 2 or more, or an --img-size "
                            "above 32")
    if v.balanced_sampler and v.class_weights == "auto":
        raise cli.UserError("--balanced-sampler and --class-weights auto each make up for the classes' sizes, and "
                            "together count a small class twice over (a class 3x smaller would weigh 9x); pass one "
                            "of the two (a --class-weights FILE of your own costs may go with the sampler)")
    # A scale below 1e-6 moves the backbone's weights by nothing a float32 keeps: it is frozen too.
    frozen = ("--freeze-backbone" if v.freeze_backbone else
              f"--backbone-lr-scale {v.backbone_lr_scale:g}" if v.backbone_lr_scale < 1e-6 else None)
    if start == "none" and frozen and not args.eval_only:  # also a resumed run's saved settings
        raise cli.UserError(f"{frozen} with --weights none would train only fc, over a backbone of random weights "
                            f"that never learns; start from trained weights (--weights imagenet or a file), or leave "
                            f"{frozen.split()[0]} out")
    if ckpt and v.epochs < ckpt["epoch"] + (ckpt["step"] > 0):
        raise cli.UserError(f"--epochs {v.epochs}: the resumed run has already done {ckpt['epoch']} epochs")
    if (v.mixup_alpha or v.cutmix_alpha) and not data.mixup_available():
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


def checked_settings(ckpt, path, parser):
    """A resumed checkpoint's settings, each checked as its flag would be (a damaged or edited file
    must not reach the training loop), with the run's files found beside the checkpoint."""
    saved = dict(ckpt["settings"])
    for k, value in saved.items():
        if k not in SAVED or value is None or k in PATH_SETTINGS:
            continue
        if k == "channels_last":
            ok = value is True or value is False or value == "auto"
        elif isinstance(getattr(DEFAULTS, k), bool):
            ok = isinstance(value, bool)
        else:
            ok = parses(parser, k, value)
        if not ok:
            raise cli.UserError(f"{path} holds an invalid setting {flag(k)} {value!r}; it cannot be resumed")
    folder = Path(path).parent
    for k in RUN_FILES:
        if isinstance(saved.get(k), str):
            saved[k] = str(folder / saved[k])  # an absolute path stays as it is
    saved["checkpoint"] = str(path)
    return saved


def parses(parser, name, value):
    """Whether the flag of setting `name`, given `value` on the command line, reads it back unchanged."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the parser's own one-line error is not the user's
            return getattr(parser.parse_args([flag(name), str(value)]), name) == value
    except SystemExit:
        return False
