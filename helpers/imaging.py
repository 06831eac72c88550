"""Reading and preprocessing images, for training and prediction alike: 8-bit RGB, upright by its
EXIF orientation. A JPEG is decoded at 1/2, 1/4 or 1/8 scale when the crop allows it (Pillow's
draft()): measured, phone photos load much faster. No torch here: ONNX prediction runs without it."""
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, features

from helpers import cli

# Pillow warns on stderr about a damaged EXIF block, without naming the file; the photo decodes fine.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")


# Phone photos in AVIF (Pillow 11.3 and later) and HEIC (with pillow-heif) are always listed as
# images, so that one this Pillow cannot read is named with what to install, not silently left out.
CANNOT_READ = {}
if not ("avif" in features.modules and features.check_module("avif")):
    CANNOT_READ[".avif"] = "AVIF photos need Pillow 11.3 or later: pip install -U pillow"
try:
    import pillow_heif
    pillow_heif.register_heif_opener()
except ImportError:
    CANNOT_READ[".heic"] = CANNOT_READ[".heif"] = "HEIC/HEIF photos need pillow-heif: pip install pillow-heif"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# The most pixels one image may decode to, so that one hostile file cannot take the process's
# memory. A JPEG is measured after draft(), so a large phone photo decoded at reduced scale passes.
MAX_PIXELS = 24_000_000
# Pillow's own limit would refuse a large JPEG at open(), before draft() could shrink it.
Image.MAX_IMAGE_PIXELS = None


def is_image_file(path):
    """An image by its extension, any case; hidden files (macOS '._x.jpg') are not images."""
    name = os.path.basename(str(path))
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def walk_files(folder):
    """Every file below folder, sorted, hidden folders skipped. Links to folders are followed, but
    never into a folder twice, nor into one that holds `folder` (a link to '..' would loop)."""
    top = os.path.realpath(folder)
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen or (real != top and (top + os.sep).startswith(real + os.sep)):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files]
    return sorted(found)


def list_images(folder, recursive=False, not_regular=None):
    """Image files in a folder (and its sub-folders), sorted. A name that is not a regular file (a
    pipe, a device, a broken link) is left out, and added to `not_regular` when given."""
    folder = Path(folder)
    candidates = walk_files(folder) if recursive else sorted(folder.iterdir())
    images = []
    for p in candidates:
        if not is_image_file(p) or p.is_dir():
            continue
        if p.is_file():
            images.append(p)
        elif not_regular is not None:
            not_regular.append(p)
    return images


# ---------------------------------------------------------------- decoding

def save_image(img, path, **params):
    """img.save, in the format its name says. Encoded in memory and written by Python, because
    Pillow ignores a short write: on a full disk it would leave a cut-off file and no error."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise cli.UserError(f"cannot write image {path}: Pillow knows no format for its ending")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **(params if fmt == "JPEG" else {}))
    Path(path).write_bytes(buf.getvalue())


def open_image(path):
    """The image's header only (nothing decoded yet), or a UserError naming the file."""
    if not os.path.isfile(path):  # a pipe would block Image.open forever, a device never end
        raise cli.UserError(f"cannot read image {path}: not a regular file")
    needs = CANNOT_READ.get(os.path.splitext(str(path))[1].lower())
    if needs:
        raise cli.UserError(f"cannot read image {path}: {needs}")
    try:
        img = Image.open(path)
    except Exception as e:  # hostile files raise many kinds; all mean "not an image we can read"
        raise cli.UserError(f"cannot read image {path}: {cli.first_line(e)}") from None
    w, h = img.size
    # Checked on the declared size, before anything decodes. A baseline JPEG may still shrink 8 times
    # a side; a progressive one is decoded whole by libjpeg, whatever draft() asks.
    jpeg = img.format in ("JPEG", "MPO")
    progressive = jpeg and (img.info.get("progressive") or img.info.get("progression"))
    if w * h > MAX_PIXELS * (4 if progressive else 64 if jpeg else 1):
        img.close()
        raise _too_large(path, w, h, "a progressive JPEG is decoded whole" if progressive else "")
    return img


def _too_large(path, w, h, why=""):
    return cli.UserError(f"cannot read image {path}: {w}x{h} pixels is more than the {MAX_PIXELS // 1_000_000} MP "
                         f"allowed (a decompression bomb, or an image to downscale first{'; ' + why if why else ''})")


def oriented_size(img):
    """(width, height) as the image will be shown: EXIF rotations by 90 degrees swap them."""
    try:
        orientation = img.getexif().get(0x0112, 1)  # The EXIF orientation tag.
    except Exception:  # A broken EXIF block is ignored, as exif_transpose ignores it.
        orientation = 1
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def decode_rgb(img, shrink=1.0, path=None):
    """Decode an opened image into 8-bit RGB, upright. shrink: how many times smaller the caller can
    use it; a JPEG is then decoded at the largest scale (1/2, 1/4 or 1/8) that keeps that size."""
    path = path or getattr(img, "filename", "") or "image"
    try:
        if shrink >= 2:
            w, h = img.size
            img.draft(img.mode, (math.ceil(w / shrink), math.ceil(h / shrink)))
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise _too_large(path, w, h)
        img.load()
        # exif_transpose copies the whole image even when it has nothing to turn (a third of a small
        # photo's decoding): it is called only for an orientation to apply. _to_rgb makes the copy.
        if img.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except cli.UserError:
        raise
    except Exception as e:
        raise cli.UserError(f"cannot read image {path}: {cli.first_line(e)}") from None


def _to_rgb(img):
    """Any mode to RGB: alpha put on white, 16-bit and float images scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = img.convert("I")
        img = img.point(lambda v: v * (1 / 256)) if img.getextrema()[1] > 255 else img
        img = img.convert("L")
    elif img.mode == "F":
        # Scientific TIFFs: 0..1 is scaled to 0..255 (a plain convert makes it black), another range stretched.
        lo, hi = img.getextrema()
        if 0 <= lo and hi <= 1:
            img = img.point(lambda v: v * 255)
        elif hi > 255 or lo < 0:
            img = img.point(lambda v: (v - lo) * (255 / max(hi - lo, 1e-12)))
        img = img.convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_rgb(path, min_side=None, max_side=None):
    """Open and decode a file. min_side: a JPEG may be decoded smaller while both sides keep at
    least that size; max_side: the result is shrunk to fit (a figure's panel needs no more)."""
    with open_image(path) as img:
        shrink = min(oriented_size(img)) / min_side if min_side else 1.0
        rgb = decode_rgb(img, shrink, path)
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.BILINEAR)
    return rgb


# ---------------------------------------------------------------- preprocessing

class EvalTransform:
    """torchvision's Resize(img_size / 0.875), CenterCrop, ToTensor and Normalize, in NumPy: the
    same pixels (tested), without torch, whose import was measured to cost prediction most of its
    start-up. A large JPEG is drafted first, and a panorama has only its crop's box resized."""

    def __init__(self, img_size=224):
        self.size, self.resize = img_size, int(round(img_size / 0.875))

    def __call__(self, img):
        """img: an image from open_image() (decoded here) or an RGB image; returns (3, H, W) float32."""
        return normalize(np.asarray(self.resize_crop(img), dtype=np.uint8)[None])[0]

    def resize_crop(self, img):
        """The resized and cropped RGB image, before ToTensor + Normalize."""
        if getattr(img, "tile", None) or img.mode != "RGB":
            img = decode_rgb(img, min(oriented_size(img)) / self.resize)
        w, h = img.size
        # torchvision's Resize(int): the short side to `resize`, the long side truncated.
        new_w, new_h = (self.resize, int(self.resize * h / w)) if w <= h else (int(self.resize * w / h), self.resize)
        top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
        if new_w * new_h <= 16 * self.resize ** 2:  # any usual aspect ratio: torchvision's own steps
            return img.resize((new_w, new_h), Image.BILINEAR).crop((left, top, left + self.size, top + self.size))
        # A panorama or a strip: only the crop's box is resized, since the whole could take gigabytes.
        # Pillow takes the box in 32-bit floats, so a pixel may differ by one level from the above.
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy)
        return img.resize((self.size, self.size), Image.BILINEAR, box=box)


def normalize(batch, mean=MEAN, std=STD):
    """uint8 NHWC crops to the model's float32 NCHW input: ToTensor and Normalize as one multiply-add,
    (x / 255 - mean) / std = x * scale - shift. mean and std: an ONNX file's own, when it holds others."""
    mean, std = np.asarray(mean, dtype=np.float64).reshape(3, 1, 1), np.asarray(std, dtype=np.float64).reshape(3, 1, 1)
    x = batch.transpose(0, 3, 1, 2).astype(np.float32, order="C")  # NCHW: one copy
    x *= (1 / (255 * std)).astype(np.float32)
    x -= (mean / std).astype(np.float32)
    return x


class TrainTransform:
    """torchvision's RandomResizedCrop, RandomHorizontalFlip (and auto augment), ToTensor, Normalize
    (and RandomErasing), with its random draws. The crop is drawn before decoding, so a JPEG is
    decoded only as large as the crop needs; otherwise the pixels equal torchvision's (tested)."""

    # torchvision's policies by their short names; AutoAugment's default policy is ImageNet's.
    AUTO_AUGMENT = {"ta": "TrivialAugmentWide", "ra": "RandAugment", "aa": "AutoAugment"}

    def __init__(self, img_size=224, auto_augment=None, random_erase=0.0):
        from torchvision import transforms  # Imported here: prediction does not need it.

        self.size = img_size
        self.crop = transforms.RandomResizedCrop(img_size)
        after = [transforms.RandomHorizontalFlip()]
        if auto_augment:
            after.append(getattr(transforms, self.AUTO_AUGMENT[auto_augment])())
        after += [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
        if random_erase > 0:
            after.append(transforms.RandomErasing(p=random_erase))
        self.after = transforms.Compose(after)

    def __call__(self, img):
        import torch

        w, h = oriented_size(img)
        # torchvision's own draw on a tensor without data: the same random numbers, no pixels.
        top, left, ch, cw = self.crop.get_params(torch.empty((3, h, w), device="meta"),
                                                 self.crop.scale, self.crop.ratio)
        if getattr(img, "tile", None) or img.mode != "RGB":
            img = decode_rgb(img, min(cw, ch) / self.size)
        if img.size == (w, h):
            img = img.crop((left, top, left + cw, top + ch)).resize((self.size, self.size), Image.BILINEAR)
        else:  # Drafted: the same box, in the smaller image's coordinates.
            sx, sy = img.width / w, img.height / h
            box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
            img = img.resize((self.size, self.size), Image.BILINEAR, box=box)
        return self.after(img)
