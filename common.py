"""What the scripts share: user errors, image reading and preprocessing, the class-index file,
weight files (reading, checking, downloading) and device / mixed-precision choice."""
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

import model as model_lib

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# torchvision's IMAGENET1K_V1 files; the hex after the dash starts the file's SHA-256.
IMAGENET_URLS = {
    name: "https://download.pytorch.org/models/" + fname
    for name, fname in {
        "resnet18": "resnet18-f37072fd.pth",
        "resnet34": "resnet34-b627a593.pth",
        "resnet50": "resnet50-0676ba61.pth",
        "resnet101": "resnet101-63fe2227.pth",
        "resnet152": "resnet152-394f9c45.pth",
        "resnext50_32x4d": "resnext50_32x4d-7cdf4587.pth",
        "resnext101_32x8d": "resnext101_32x8d-8ba56ff5.pth",
    }.items()
}


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""


def run_cli(main, parser):
    """Parse the command line and run main(args); a UserError ends the program with one line."""
    args = parser.parse_args()
    try:
        main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def need_file(path, what, hint=""):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}" + (f"; {hint}" if hint else ""))
    return path


def need_dir(path, what, hint=""):
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{what} not found: {path}" + (f"; {hint}" if hint else ""))
    return path


# ---------------------------------------------------------------- images

def is_image_file(path):
    return str(path).lower().endswith(IMG_EXTENSIONS)


def list_images(folder, recursive=False):
    """Image files in a folder, sorted so results come in a stable order."""
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and is_image_file(p.name))


def load_rgb(path):
    """Open any image as 8-bit RGB with its EXIF orientation applied.

    Handles what the tutorial crashed or mispredicted on: alpha (composited on white), palette,
    16-bit and 32-bit grayscale (scaled, not clipped), plain grayscale and CMYK.
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = img.convert("I")
        # 16-bit data would be clipped at 255 by a plain convert: scale to 8 bits first.
        img = img.point(lambda v: v * (1 / 256)) if img.getextrema()[1] > 255 else img
        img = img.convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def train_transform(img_size=224, auto_augment=False):
    from torchvision import transforms  # imported here: it costs prediction a second of start-up

    steps = [transforms.RandomResizedCrop(img_size), transforms.RandomHorizontalFlip()]
    if auto_augment:
        steps.append(transforms.TrivialAugmentWide())
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


class EvalTransform:
    """The tutorial's Resize(256), CenterCrop(224), ToTensor, Normalize, pixel for pixel as torchvision
    does them on a PIL image, without importing torchvision (a second of every prediction's
    start-up). The resize keeps the 0.875 ratio at any --img-size."""

    def __init__(self, img_size=224):
        self.size, self.resize = img_size, int(round(img_size / 0.875))
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __call__(self, img):
        w, h = img.size
        short, long = min(w, h), max(w, h)
        if short != self.resize:
            new_long = int(self.resize * long / short)
            img = img.resize((self.resize, new_long) if w <= h else (new_long, self.resize), Image.BILINEAR)
        w, h = img.size
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return x.sub_(self.mean).div_(self.std)


def eval_transform(img_size=224):
    return EvalTransform(img_size)


# ---------------------------------------------------------------- class-index file

def write_class_indices(path, classes):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({str(i): c for i, c in enumerate(classes)}, f, indent=4)


def read_class_indices(path):
    """The class names, in index order, from the tutorial's class_indices.json."""
    need_file(path, "class-index file", "train.py writes it; pass --class-indices to point at it")
    try:
        with open(path) as f:
            mapping = json.load(f)
        classes = [mapping[str(i)] for i in range(len(mapping))]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a class-index file like {{\"0\": \"daisy\", ...}}: {e}") from None
    if not classes:
        raise UserError(f"{path} lists no classes")
    return classes


# ---------------------------------------------------------------- weights

def default_save_path(model_name):
    """The tutorial's ./resNet34.pth, following the model's name for the others."""
    return "./" + model_name.replace("resnet", "resNet").replace("resnext", "resNeXt") + ".pth"


def build_model(name, num_classes=1000, include_top=True):
    if name not in model_lib.MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(model_lib.MODELS)}")
    return model_lib.MODELS[name](num_classes=num_classes, include_top=include_top)


def read_state_dict(path, what="weights file"):
    """A state_dict from a plain weights file or from a training checkpoint (its 'model')."""
    need_file(path, what)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean "not a weights file"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a PyTorch weights file: {reason}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state_dict of tensors")
    # Files saved from DistributedDataParallel or torch.compile carry a prefix.
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in obj.items()}


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def guess_architecture(state_dict):
    """The model in model.py whose parameter names and shapes (fc aside) match, or None."""
    found = {k: s for k, s in _shapes(state_dict).items() if not k.startswith("fc.")}
    for name in model_lib.MODELS:
        with torch.device("meta"):
            ref = _shapes(build_model(name).state_dict())
        if {k: s for k, s in ref.items() if not k.startswith("fc.")} == found:
            return name
    return None


def check_architecture(net, model_name, state_dict, path):
    """One line naming what was expected and what was found, when a file is of another model."""
    ref = _shapes(net.state_dict())
    found = _shapes(state_dict)
    backbone_ok = all(found.get(k) == s for k, s in ref.items() if not k.startswith("fc."))
    extra = [k for k in found if k not in ref]
    if backbone_ok and not extra:
        return
    other = guess_architecture(state_dict)
    what = f"{other} weights" if other else "weights of an unknown model"
    hint = f"pass --model {other}" if other else "check the file"
    raise UserError(f"{path} holds {what}, but --model is {model_name}; {hint}")


def num_classes_of(state_dict):
    w = state_dict.get("fc.weight")
    return None if w is None else w.shape[0]


def load_trained_weights(model, model_name, state_dict, path, class_file=None):
    """Load trained weights whose class count must match the model's (from class_indices.json)."""
    check_architecture(model, model_name, state_dict, path)
    n_file, n_model = num_classes_of(state_dict), model.fc.out_features
    if n_file != n_model:
        source = f"{class_file} lists" if class_file else "the model has"
        raise UserError(f"{path} was trained for {n_file} classes but {source} {n_model}; "
                        "use the class_indices.json written by the same training run")
    model.load_state_dict(state_dict)
    return model


def load_pretrained(model, model_name, state_dict, path, verbose=True):
    """Start from pretrained weights: the backbone loads, an fc of another class count is dropped
    (the tutorial's second way: strict=False without fc.*)."""
    check_architecture(model, model_name, state_dict, path)
    if num_classes_of(state_dict) != model.fc.out_features:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if verbose:
        print(f"loaded {path}: missing keys {missing}, unexpected keys {unexpected}")
    return model


# ---------------------------------------------------------------- downloads

def sha256_of(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(url, dest, sha256=None, progress=True):
    """Fetch url to dest, checking the SHA-256 (a full digest or its start).

    Bytes go to a temporary file beside dest, renamed only once complete and checked, so an
    interrupted or corrupt download never looks like a finished file.
    """
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        digest = h.hexdigest()
        if sha256 and not digest.startswith(sha256.lower()):
            raise UserError(f"checksum mismatch for {url}: expected SHA-256 {sha256}..., got {digest}; "
                            "the file was not kept (a broken download or a wrong --url)")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"could not download {url}: {getattr(e, 'reason', e)}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def imagenet_weights(model_name, url=None, progress=True):
    """Path of torchvision's ImageNet file for the model in the torch hub cache, downloaded and
    hash-checked if it is not there yet."""
    if model_name not in IMAGENET_URLS:
        raise UserError(f"no ImageNet weights known for {model_name!r}")
    url = url or IMAGENET_URLS[model_name]
    fname = url.rsplit("/", 1)[-1]
    dest = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if dest.is_file():
        return dest
    m = re.search(r"-([a-f0-9]{6,})\.", fname)  # torch.hub's naming: name-<sha256 prefix>.pth
    try:
        return download(url, dest, sha256=m.group(1) if m else None, progress=progress)
    except UserError as e:
        raise UserError(f"{e}. Offline? Fetch {url} on another machine and put it at {dest}, "
                        "or pass --weights PATH") from None


# ---------------------------------------------------------------- device and precision

def select_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps asked for, but MPS is not available; use --device cpu")
    return device


def amp_dtype(device):
    """The autocast dtype the hardware runs natively, or None (then fp32 is faster)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        except (AttributeError, RuntimeError):
            native = False
        return torch.bfloat16 if native else None
    return None


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
