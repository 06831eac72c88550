"""The pieces train.py puts together: the run's environment (torchrun's processes, the device and
its precision), a stop (Ctrl-C, SIGTERM, SIGHUP) at the end of a step, the image folders and their resumable sampler, mixup
and cutmix, gradient accumulation, the optimiser's parameter groups, the learning-rate schedule, the
weights' moving average and the state of a run. Like torchvision's
references/classification/{sampler,transforms,utils}.py, each piece is small and can be tested on
its own."""
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets import ImageFolder

from helpers import cli, devices, files, imaging


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


def unwrap(model):
    """The plain model inside DistributedDataParallel and torch.compile's wrappers."""
    while isinstance(getattr(model, "module", None), nn.Module) or hasattr(model, "_orig_mod"):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


# ---------------------------------------------------------------- Ctrl-C, SIGTERM, SIGHUP: a stop at the end of a step

class Interrupted(Exception):
    """Raised at the end of an optimizer step after a stop signal: the run saves where it is."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)


class Diverged(Exception):
    """The training loss (or the val loss) became NaN or infinite: the weights are lost, and every
    later step too."""

    def __init__(self, loss, epoch, step, what="training loss"):
        super().__init__(f"the {what} became {loss} at epoch {epoch + 1}, step {step}")
        self.loss, self.epoch, self.step = loss, epoch, step


class Stop:
    """While active, the first Ctrl-C (SIGINT), SIGTERM (a job scheduler, `kill`, a shutdown) or
    SIGHUP (the closed SSH session or terminal) asks the run to stop after its current step; a
    checkpoint is then saved. A second one stops at once. One mechanism for the three: each is a
    request to end the run without losing its work."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self):
        self.signum = 0  # the signal that asked, 0: none

    @property
    def requested(self):
        return self.signum != 0

    @staticmethod
    def name(signum):
        return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name

    def _handler(self, signum, frame):
        if signum == getattr(signal, "SIGHUP", None):
            cli.quiet_closed_terminal()  # the terminal is gone: writing to it would fail (EIO) and end the run
        if self.requested:
            raise KeyboardInterrupt(self.name(signum))
        self.signum = signum
        print(f"\n{self.name(signum)}: stopping after this step and saving a checkpoint "
              f"({self.name(signum)} again to quit now)", file=sys.stderr)

    @contextlib.contextmanager
    def active(self):
        self.signum = 0
        previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.signum = 0

    def agreed(self, world, device):
        """The signal to stop for now (0: go on). Under torchrun every process gets its own signal
        (or only one of them does), at its own step: they agree (the largest number any of them got)
        so that none waits alone in an all-reduce, and each knows which signal it was."""
        if not world.distributed:
            return self.signum
        flag = torch.tensor([float(self.signum)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = int(flag.item())
        return self.signum


STOP = Stop()  # one per process: a signal has one handler


# ---------------------------------------------------------------- data


class ClassFolder(ImageFolder):
    """torchvision's ImageFolder with three changes:
    - items are asked for as (index, seed): the seed drives the sample's random augmentation, so a
      resumed run draws exactly the augmentations the uninterrupted run would have;
    - the loader only opens the file: the transform decodes it, at the scale its crop needs;
    - hidden files and folders are not read ('.ipynb_checkpoints', macOS '._x.jpg'), a class may be
      given (val/ takes train/'s), and an unreadable image is named and skipped: in training another
      image takes its place (every process keeps its batch size), in validation it is left out.
    """

    def __init__(self, root, transform, class_to_idx=None, replace_unreadable=False):
        self.given_class_to_idx = class_to_idx
        self.replace_unreadable = replace_unreadable
        self.warned = set()
        super().__init__(str(root), transform, loader=imaging.open_image, is_valid_file=imaging.is_image_file)

    def find_classes(self, directory):
        if self.given_class_to_idx is not None:
            return list(self.given_class_to_idx), dict(self.given_class_to_idx)
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise cli.UserError(f"{directory} has no class folders; run split_data.py first")
        return classes, {c: i for i, c in enumerate(classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=True):
        # By hand: torchvision walks into hidden folders and round links, reads pipes, and before
        # 0.17 refuses an empty class.
        samples = []
        for cls, idx in sorted(class_to_idx.items(), key=lambda kv: kv[1]):
            not_regular = []
            samples += [(str(p), idx) for p in imaging.list_images(os.path.join(directory, cls), True, not_regular)]
            for p in not_regular:
                print(f"warning: skipped: {p} is not a regular file", file=sys.stderr)
        return samples

    def __getitem__(self, item):
        index, seed = item
        for _ in range(10):
            path, target = self.samples[index]
            try:
                with imaging.open_image(path) as img, torch.random.fork_rng(devices=[]):
                    if seed is not None:
                        torch.manual_seed(seed)  # forked: the process's own random state is untouched
                    return self.transform(img), target, index
            except cli.UserError as e:
                if path not in self.warned:
                    self.warned.add(path)
                    print(f"warning: skipped: {e}", file=sys.stderr)
                if not self.replace_unreadable:
                    return None
                index = (index + 1) % len(self.samples)
        raise cli.UserError(f"10 unreadable images in a row in {self.root}; check the data set")


def train_folder(root, transform):
    """The train set: class folders with images in each, their names fit for files and figures."""
    train_set = ClassFolder(files.need_dir(root, "train folder", "run split_data.py first"), transform,
                            replace_unreadable=True)
    files.check_class_names(train_set.classes, str(root))
    empty = [c for i, c in enumerate(train_set.classes) if i not in set(train_set.targets)]
    if empty:
        raise cli.UserError(f"no images in the class folder(s) {', '.join(empty)} of {root}; "
                            "add images or remove the folder(s)")
    return train_set


def val_folder(root, train_set, transform):
    """The val set, with the train set's classes (val/ must hold no other); its .missing: the
    classes it has no image of."""
    files.need_dir(root, "val folder", "run split_data.py first")
    extra = sorted(set(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")) -
                   set(train_set.classes))
    if extra:
        raise cli.UserError(f"train/ and val/ under {Path(root).parent} hold different classes: "
                            f"{', '.join(extra)} only in val/")
    if os.path.realpath(root) == os.path.realpath(train_set.root):
        raise cli.UserError(f"{root} is {train_set.root} (a link to it): validation would grade the model on the "
                            "photos it trains on; run split_data.py to make a val/ of its own")
    val_set = ClassFolder(root, transform, class_to_idx=train_set.class_to_idx)
    if not len(val_set):
        raise cli.UserError(f"no images in {root}: split_data.py was run with --val-rate 0, or every val image had "
                            "a copy in train/ and moved there; run split_data.py again with a --val-rate above 0")
    check_apart(train_set, val_set)
    # Said by the caller once its checks have passed: a refused run ends in its one line alone.
    val_set.missing = [c for i, c in enumerate(train_set.classes) if i not in set(val_set.targets)]
    return val_set


def class_counts(dataset):
    """Images of each class of an ImageFolder, in class order."""
    counts = [0] * len(dataset.classes)
    for t in dataset.targets:
        counts[t] += 1
    return counts


def describe_balance(dataset, where):
    """The images of each class and the ratio of the largest class to the smallest; above 3, the
    flags that help."""
    counts = class_counts(dataset)
    ratio = max(counts) / max(min(counts), 1)
    text = (f"images per class in {where}: " + ", ".join(f"{c} {n}" for c, n in zip(dataset.classes, counts))
            + f" (largest/smallest: {ratio:.1f})")
    if ratio > 3:
        text += ("\nnote: the classes are imbalanced: --class-weights auto, --balanced-sampler or --select-by "
                 "balanced_acc may help the small ones (docs/training.md)")
    return text


def class_weights(choice, dataset):
    """The loss's class weights for --class-weights: None; 'auto', inverse class frequency normalised
    as scikit-learn's "balanced" (images / (classes x the class's images)); or a JSON file of
    {class: weight}, every class of the data set given a positive weight."""
    if choice is None:
        return None
    counts = class_counts(dataset)
    if choice == "auto":
        return torch.tensor([len(dataset.targets) / (len(counts) * n) for n in counts])
    path = files.need_file(choice, "class-weights file", "give --class-weights auto or a JSON file of {class: weight}")
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(given, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise cli.UserError(f"{path} is not a JSON file of {{class: weight}}: {cli.first_line(e)}") from None
    unknown = sorted(set(given) - set(dataset.classes))
    missing = [c for c in dataset.classes if c not in given]
    if unknown or missing:
        raise cli.UserError(f"{path} must give a weight to each class of the data set ({', '.join(dataset.classes)})"
                            + (f"; not classes of it: {', '.join(unknown)}" if unknown else "")
                            + (f"; missing: {', '.join(missing)}" if missing else ""))
    bad = [c for c, w in given.items() if isinstance(w, bool) or not isinstance(w, (int, float))
           or not math.isfinite(w) or w <= 0]
    if bad:
        raise cli.UserError(f"{path}: the weight of {bad[0]} must be a positive number, not {given[bad[0]]!r}")
    return torch.tensor([float(given[c]) for c in dataset.classes])


def check_apart(train_set, val_set):
    """val/ shares no image with train/ (files.shared_images)."""
    shared = files.shared_images([p for p, _ in train_set.samples], [p for p, _ in val_set.samples])
    if shared:
        val_path, train_path = shared[0]
        raise cli.UserError(f"{Path(val_set.root).name}/ shares {len(shared)} image(s) with train/ ({val_path} is "
                            f"{train_path}): validation would grade the model on photos it trains on; run "
                            "split_data.py again (it keeps copies on one side)")


def check_val(val, n_images, data_path, state):
    """An epoch's val result can select the best weights: some image was read (every unreadable one
    was named), and its loss is a number (finite weights whose outputs overflow have diverged too)."""
    if not len(val.index):
        raise cli.UserError(f"none of the {n_images} images in {data_path}/val could be read (each is named above); "
                            "replace them, or run split_data.py again")
    if not math.isfinite(val.loss):
        raise Diverged(val.loss, state.epoch, state.step, what="val loss")


def start_workers(*loaders):
    """Forks the loaders' persistent workers now, while this process is small. A worker forked
    later, from a process that holds the model, Adam's state and a training step's memory, shares
    those pages copy-on-write, and each page this process then writes is copied first: the val
    loader's worker, forked after an epoch of resnet34, cost 0.5 s that way on a 2-core CPU.
    DataLoader starts its workers only in iter(), and prefetches there: the sampler is emptied for
    that call, so that nothing is read now (and thrown away when the epoch's own iter() resets the
    workers), and the random state is put back, so that --seed's model weights stay the same."""
    for loader in loaders:
        if not (loader.num_workers and loader.persistent_workers):
            continue
        sampler = loader.sampler
        epoch, skip = sampler.epoch, sampler.skip
        sampler.set_epoch(epoch, skip=sampler.num_samples)  # an epoch with nothing left in it
        try:
            with torch.random.fork_rng(devices=[]):  # iter() draws the workers' base seed from it
                iter(loader)
        finally:
            sampler.set_epoch(epoch, skip)


def close_loaders(*loaders):
    """Ends the loaders' persistent workers now. Left to the interpreter's exit, they would be sent
    SIGTERM, which they ignore (cli.ignore_stop_signals), and waited for for ever: a run that ended
    in an error (a lost worker, out of memory) would hang after its one line. DataLoader has no
    public close; its iterator's _shutdown_workers is what its own __del__ calls."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def last_map_size(img_size):
    """The side of a ResNet's last feature map: the stem's stride-2 convolution and max-pool, then
    three stride-2 stages, each (n - 1) // 2 + 1. At 1, a batch of one image gives BatchNorm one
    value per channel ("Expected more than 1 value per channel when training")."""
    for _ in range(5):
        img_size = (img_size - 1) // 2 + 1
    return img_size


def loader_failure(e, workers):
    """The one line for a data-loader worker that died or could not hand over its batch, or None
    for any other error. The kernel's out-of-memory killer (a Jetson's usual end) kills a worker;
    a small /dev/shm (Docker's 64 MB) makes a worker fail to write its batch, or die of SIGBUS."""
    text = str(e)
    if not isinstance(e, RuntimeError) or "DataLoader worker" not in text:
        return None
    if "shared memory" in text or "Bus error" in text or ("No space left on device" in text and "torch_" in text):
        return (f"the data-loader workers ran out of shared memory ({shm_size()}; Docker's default is 64 MB): "
                "pass --workers 0, or give the container more (docker run --shm-size 1g)")
    if "killed by signal" in text or "exited unexpectedly" in text:
        how = re.search(r"killed by signal: ([^.]*)", text)
        return (f"a data-loader worker was {'killed by signal ' + how.group(1) if how else 'lost'} (by the system's "
                f"out-of-memory killer?); pass fewer --workers (it was {workers}), or --workers 0")
    return None


def shm_size():
    try:
        st = os.statvfs("/dev/shm")
        mb = st.f_blocks * st.f_frsize / 2**20
        return f"/dev/shm holds {mb:.0f} MB" if mb >= 1 else f"/dev/shm holds {mb * 1024:.0f} KB"
    except OSError:
        return "no /dev/shm"


def collate_skip_none(batch):
    """default_collate without the images that could not be read."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.utils.data.default_collate(batch)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed and epoch, sharded, padded) that also skips the samples an
    interrupted epoch already went through, and hands each sample the seed of its augmentation.
    balanced: each epoch draws len(dataset) samples with replacement, each class equally often
    (--balanced-sampler), by seed and epoch, then shards them as DistributedSampler does."""

    def __init__(self, dataset, world, shuffle, seed=0, balanced=False):
        super().__init__(dataset, num_replicas=world.size, rank=world.rank, shuffle=shuffle, seed=seed)
        self.skip = 0
        self.weights = None
        if balanced:
            counts = class_counts(dataset)
            self.weights = torch.tensor([1.0 / counts[t] for t in dataset.targets], dtype=torch.float64)

    def set_epoch(self, epoch, skip=0):
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        first = (self.seed + self.epoch) * len(self.dataset)
        if self.weights is None:
            for i in list(super().__iter__())[self.skip:]:
                yield i, (first + i if self.shuffle else None)
            return
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
        # An image drawn twice gets two augmentations: the seed follows the place in the draw.
        mine = list(range(self.rank, self.total_size, self.num_replicas))[self.skip:]
        for place in mine:
            yield drawn[place], first + place

    def __len__(self):
        return max(0, self.num_samples - self.skip)


def _transforms_v2():
    # torchvision 0.15 (v2 in beta) warns at length when v2 is imported: not the user's concern.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchvision.transforms import v2
    return v2


def mixup_available():
    return hasattr(_transforms_v2(), "MixUp")


def batch_mixer(s, num_classes):
    """torchvision's MixUp and/or CutMix (one of them per batch), or None."""
    if not (s.mixup_alpha or s.cutmix_alpha):
        return None
    v2 = _transforms_v2()
    mixers = ([v2.MixUp(alpha=s.mixup_alpha, num_classes=num_classes)] if s.mixup_alpha else []) + \
             ([v2.CutMix(alpha=s.cutmix_alpha, num_classes=num_classes)] if s.cutmix_alpha else [])
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def batch_seed(seed, epoch, step):
    """The seed of a batch's mixing: a resumed run mixes each batch as the uninterrupted one did."""
    return seed * 1_000_003 + epoch * 10_007 + step


def mix(mixer, images, labels, seed):
    """The batch mixed by `mixer` (drawn from its own seed, the process's random state untouched),
    with soft targets; or, without a mixer, the batch as it is."""
    if mixer is None:
        return images, labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mixer(images, labels)


def accumulation(step, accum_steps, n_batches):
    """(whether batch `step` of the epoch ends an optimizer step, how many batches that step has).
    With --accum-steps k the loss of each batch counts 1/k of a step of k batches; the last group
    of an epoch may be shorter."""
    first = step // accum_steps * accum_steps
    last = min(first + accum_steps, n_batches)
    return step + 1 == last, last - first


class LastStep:
    """Where running out of memory takes a run back to: the last finished optimizer step's batch
    count, the epoch's sums and the model's buffers. The buffers too: a batch that failed half-way
    through its forward pass has already moved the running statistics of the BatchNorm layers it
    went through, and the saved checkpoint must be the finished step's, for the resumed run to be
    the uninterrupted one. A copy of the buffers at each step: 0.08% of resnet34's bytes, 0.14 ms a step
    on a 2-core AMD EPYC."""

    def __init__(self, model, state, sums):
        self.buffers = list(unwrap(model).buffers())
        self.saved = [b.detach().clone() for b in self.buffers]
        self.step, self.sums = state.step, sums.clone()

    def mark(self, state, sums):
        copy = getattr(torch, "_foreach_copy_", None)  # one call for all (torch 2.1+)
        if copy is not None and self.buffers:  # (a model without buffers: nothing to copy)
            copy(self.saved, self.buffers)
        else:
            for saved, b in zip(self.saved, self.buffers):
                saved.copy_(b)
        self.step = state.step
        self.sums.copy_(sums)

    def restore(self, state):
        """Back to the mark: the buffers restored, state.step set; returns the sums."""
        with torch.no_grad():
            for saved, b in zip(self.saved, self.buffers):
                b.copy_(saved)
        state.step = self.step
        return self.sums.clone()


def add_to_sums(sums, loss, logits, labels, hard_labels=True):
    """The epoch's running sums (loss x images, correct, images), kept on the device: no wait for
    the GPU at each step. In place with Python numbers: a tensor made from one would be a blocking
    copy to the GPU. Under mixing there are no hard labels to count."""
    sums[0] += loss.detach().float() * len(labels)
    if hard_labels:
        sums[1] += (logits.argmax(1) == labels).sum()
    sums[2] += len(labels)


def parameter_groups(net, s):
    """The new fc at --lr, the pretrained layers at lr x --backbone-lr-scale; with
    --norm-weight-decay, norm layers and biases get that weight decay (usually 0)."""
    norm_params = {id(p) for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                   for p in m.parameters()}
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


def lr_factor(step, s, steps_per_epoch, anchor=None):
    """The learning rate's factor at an optimizer step: linear warm-up, then constant, cosine to
    zero, or step decay. anchor = (step, factor): where a resumed run changed --epochs, the cosine
    goes on from the factor it had there to zero at the new end, so the rate never jumps."""
    total = s.epochs * steps_per_epoch
    warmup = int(s.warmup_epochs * steps_per_epoch)
    if s.lr_scheduler == "cosine" and anchor and step >= anchor[0]:
        return anchor[1] * 0.5 * (1 + math.cos(math.pi * (step - anchor[0]) / max(1, total - anchor[0])))
    if step < warmup:
        return (step + 1) / warmup
    if s.lr_scheduler == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    if s.lr_scheduler == "step":
        return s.lr_gamma ** (step // (s.lr_step_size * steps_per_epoch))
    return 1.0


def build_scheduler(optimizer, s, steps_per_epoch, anchor=None):
    """Stepped every optimizer step, not every epoch: warm-up and cosine are smooth on small data."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, s, steps_per_epoch, anchor))


def continue_cosine(s, old_epochs, done, steps_per_epoch, anchor, verbose=True):
    """The cosine's anchor when a resumed run changes --epochs. Mid-schedule, the rate goes on from
    where it is down to zero at the new end: no jump. A schedule that had already ended (rate 0)
    goes on as if planned for the new length from the start: the rate rises once, and we say so."""
    now = lr_factor(done, dataclasses.replace(s, epochs=old_epochs), steps_per_epoch, anchor)
    if now > 1e-3:
        if verbose:
            print(f"note: --epochs {s.epochs}: the cosine schedule goes on from its current rate "
                  f"({now * s.lr:.3g}) to zero at epoch {s.epochs}")
        return (done, now)
    if verbose:
        print(f"note: --epochs {s.epochs}: the cosine schedule had ended; it goes on as if planned for {s.epochs} "
              f"epochs, so the rate rises from 0 to {lr_factor(done, s, steps_per_epoch) * s.lr:.3g}")
    return None


def ema_model(net, decay):
    """An exponential moving average of the weights and of the BatchNorm statistics (use_buffers),
    with the usual warm-up min(decay, (1 + n) / (10 + n)) so that short runs are not averaged
    towards their random start."""
    from torch.optim.swa_utils import AveragedModel

    def average(ema_p, p, n):
        d = min(decay, (1 + float(n)) / (10 + float(n)))
        return ema_p * d + p * (1 - d)

    return AveragedModel(net, avg_fn=average, use_buffers=True)


class RunState:
    """Where a run is: epochs done, batches done in the current epoch, the running sums and seconds of
    that epoch, the best accuracy, the history and the learning-rate anchor. All a checkpoint needs
    beyond the model and optimiser, to go on exactly where it stopped."""

    def __init__(self):
        self.epoch, self.step, self.seconds = 0, 0, 0.0
        # loss sum, correct, images: this epoch, this process (float32: MPS has no float64)
        self.sums = torch.zeros(3)
        self.best_acc = -1.0  # -1: the first epoch's weights are always kept
        self.history, self.lr_anchor = [], None

    def state_dict(self):
        return {"epoch": self.epoch, "step": self.step, "seconds": self.seconds, "sums": self.sums.cpu(),
                "best_acc": self.best_acc, "history": self.history, "lr_anchor": self.lr_anchor}

    def load_state_dict(self, d, batch_size=None):
        """batch_size: the resumed run's, when it changed (settings.resolve allows a divisor of the
        saved one, with --accum-steps keeping the images per optimizer step): the step, counted in
        batches, is then counted in the new ones."""
        self.epoch, self.step, self.seconds = d["epoch"], d["step"], d["seconds"]
        saved = d["settings"].get("batch_size", batch_size)
        if batch_size and saved != batch_size:
            self.step = self.step * saved // batch_size
        self.sums = d["sums"].float()
        self.best_acc, self.history, self.lr_anchor = d["best_acc"], list(d["history"]), d.get("lr_anchor")

    def next_epoch(self):
        self.epoch, self.step, self.seconds = self.epoch + 1, 0, 0.0
        self.sums = torch.zeros(3)
