"""The data: the image folders of train/ and val/, their resumable sampler, the batch collation,
mixup and cutmix, and the one line for a data-loader worker that failed. Like torchvision's
references/classification/{sampler,transforms}.py, each piece can be tested on its own."""
import contextlib
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path

import torch
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets import ImageFolder

from helpers import classnames, cli, files, imaging


class ClassFolder(ImageFolder):
    """torchvision's ImageFolder, with items asked for as (index, seed): the seed drives the sample's
    augmentation, so a resumed run draws the augmentations the uninterrupted run would have. The
    transform decodes the file at the scale its crop needs. Hidden files are not read, val/ takes
    train/'s classes, and an unreadable image is named and skipped (in training another takes its place)."""

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
                with imaging.open_image(path) as img, seeded(seed):
                    return self.transform(img), target, index
            except cli.UserError as e:
                if path not in self.warned:
                    self.warned.add(path)
                    print(f"warning: skipped: {e}", file=sys.stderr)
                if not self.replace_unreadable:
                    return None
                index = (index + 1) % len(self.samples)
        raise cli.UserError(f"10 unreadable images in a row in {self.root}; check the data set")


@contextlib.contextmanager
def seeded(seed):
    """The CPU's default generator seeded for the block, and put back as it was after it (the
    process's own random state is untouched); seed None: the block draws as it is. The transforms,
    mixup and cutmix draw from this generator alone. torch.manual_seed would also queue the lazy
    seeding of CUDA, XPU and MTIA, which formats the Python stack for every image."""
    if seed is None:
        yield
        return
    generator = torch.default_generator
    saved = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(saved)


def train_folder(root, transform, check_readable=True):
    """The train set: class folders with images in each, their names fit for files and figures;
    check_readable: one image of each class can be decoded (not needed to evaluate only)."""
    train_set = ClassFolder(files.need_dir(root, "train folder", "run split_data.py first"), transform,
                            replace_unreadable=True)
    classnames.check_class_names(train_set.classes, str(root))
    if len(train_set.classes) < 2:  # one class: loss 0, accuracy 1, and every image that class
        raise cli.UserError(f"{root} has one class folder ({train_set.classes[0]}): a classifier needs two classes "
                            "or more; add a folder of images for each other class")
    empty = [c for i, c in enumerate(train_set.classes) if i not in set(train_set.targets)]
    if empty:
        raise cli.UserError(f"no images in the class folder(s) {', '.join(empty)} of {root}; "
                            "add images or remove the folder(s)")
    # Each class's first image that decodes, at 1/8 scale for a JPEG: one small decode per healthy class.
    # A class of unreadable images only would be skipped all epoch, and the model trained on the others.
    readable, why = set(), {}
    for path, target in train_set.samples if check_readable else []:
        if target not in readable:
            try:
                imaging.load_rgb(path, min_side=1)
                readable.add(target)
            except cli.UserError as e:
                why.setdefault(target, e)
    if why.keys() - readable:
        first = min(why.keys() - readable)
        raise cli.UserError(f"no image of the class {train_set.classes[first]} in {root} can be read "
                            f"({train_set.targets.count(first)} tried; {why[first]}); replace them or remove the folder")
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
    shared = files.shared_images([p for p, _ in train_set.samples], [p for p, _ in val_set.samples])
    if shared:
        raise cli.UserError(f"{Path(root).name}/ shares {len(shared)} image(s) with train/ ({shared[0][0]} is "
                            f"{shared[0][1]}): validation would grade the model on photos it trains on; run "
                            "split_data.py again (it keeps copies on one side)")
    val_set.missing = [c for i, c in enumerate(train_set.classes) if i not in set(val_set.targets)]
    return val_set


def class_counts(dataset):
    """Images of each class of an ImageFolder, in class order."""
    return torch.bincount(torch.tensor(dataset.targets, dtype=torch.long), minlength=len(dataset.classes)).tolist()


CLASS_WEIGHT_RANGE = (1e-6, 1e6)


def class_weights(choice, dataset):
    """The loss's class weights for --class-weights: None; 'auto', scikit-learn's "balanced" (images /
    (classes x the class's images)); or a JSON file giving every class a positive weight."""
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
           or (isinstance(w, float) and not math.isfinite(w)) or w <= 0]  # a whole number of 400 digits is one
    if bad:
        raise cli.UserError(f"{path}: the weight of {bad[0]} must be a positive number, not {given[bad[0]]!r}")
    # The loss is summed in float32: beyond these bounds it overflows (NaN), or a class counts for nothing.
    extreme = [c for c, w in given.items() if not CLASS_WEIGHT_RANGE[0] <= w <= CLASS_WEIGHT_RANGE[1]]
    if extreme:
        w = given[extreme[0]]
        shown = f"{float(w):g}" if w < 1e308 else "over 1e308"
        raise cli.UserError(f"{path}: the weight of {extreme[0]} is {shown}; each weight must be from "
                            f"{CLASS_WEIGHT_RANGE[0]:g} to {CLASS_WEIGHT_RANGE[1]:g}, or the loss overflows float32 "
                            "(only their ratios count: 1 for the largest class, say)")
    return torch.tensor([float(given[c]) for c in dataset.classes])


def last_map_size(img_size):
    """The side of a ResNet's last feature map (five halvings). At 1, a batch of one image gives
    BatchNorm one value per channel, and training fails."""
    for _ in range(5):
        img_size = (img_size - 1) // 2 + 1
    return img_size


def loader_failure(e, workers):
    """The one line for a data-loader worker that died (the kernel's out-of-memory killer) or could
    not hand over its batch (a small /dev/shm, Docker's 64 MB), or None for any other error."""
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
    """DistributedSampler that also skips what an interrupted epoch already went through, and hands
    each sample the seed of its augmentation. balanced (--balanced-sampler): each epoch draws
    len(dataset) samples with replacement, each class equally often, then shards them."""

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


def mix(mixer, images, labels, seed, epoch, step):
    """The batch mixed by `mixer`, with soft targets; or, without a mixer, the batch as it is. Each
    batch has its own seed, so a resumed run mixes it as the uninterrupted run did."""
    if mixer is None:
        return images, labels
    with seeded(seed * 1_000_003 + epoch * 10_007 + step):
        return mixer(images, labels)


def describe(train_set, val_set, workers, s):
    """What the run reads: the images of each set, the classes' balance, a class val/ lacks. s: the
    run's settings, so that the note on imbalanced classes offers only what is not on already."""
    print(f"using {len(train_set)} images for training, {len(val_set)} images for validation.")
    counts = class_counts(train_set)
    ratio = max(counts) / max(min(counts), 1)
    print("images per class in train/: " + ", ".join(f"{c} {n}" for c, n in zip(train_set.classes, counts))
          + f" (largest/smallest: {ratio:.1f})")
    if ratio > 3:
        print(imbalance_note(s))
    if val_set.missing:
        print(f"warning: val/ has no images of {', '.join(val_set.missing)}: their accuracy cannot be measured",
              file=sys.stderr)
    print(f"loading images with {workers} worker process{'' if workers == 1 else 'es'} (per training process)"
          if workers else "loading images in the training process itself (--workers 0)")


def imbalance_note(s):
    """The note for classes of different sizes: what is on, and only what is not on as advice. The
    sampler and auto weights each make up for the sizes: one of the two, never both (settings refuses that)."""
    on = [name for name, is_on in ((f"--class-weights {s.class_weights}", s.class_weights),
                                   ("--balanced-sampler", s.balanced_sampler),
                                   (f"--select-by {s.select_by}", s.select_by != "acc")) if is_on]
    balancing = s.class_weights or s.balanced_sampler
    offer = [] if balancing else ["--class-weights auto or --balanced-sampler (one of the two)"]
    offer += ["--select-by balanced_acc"] if s.select_by == "acc" else []
    return ("note: the classes are imbalanced" + (f" ({', '.join(on)}: on)" if on else "")
            + (f": {', and '.join(offer)} may help the small ones (docs/training.md)" if offer else ""))


def fingerprint(train_set, val_set):
    """The names and sizes of the images of train/ and val/: a resumed run refuses a data set that
    changed under it, since exact resume would silently break."""
    h = hashlib.sha256()
    for ds in (train_set, val_set):
        for path, target in ds.samples:
            with contextlib.suppress(OSError):
                line = f"{os.path.relpath(path, ds.root)}\0{target}\0{os.path.getsize(path)}\n"
                h.update(line.encode("utf-8", "surrogateescape"))
    return {"train": len(train_set), "val": len(val_set), "sha256": h.hexdigest()}
