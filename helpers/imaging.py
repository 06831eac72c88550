"""Reading images and preprocessing them, for training and prediction alike.

Every image becomes 8-bit RGB with its EXIF orientation applied (the tutorial crashed or
mispredicted on alpha, grayscale, 16-bit and CMYK files). A JPEG is decoded at a reduced scale when
the crop that follows allows it (Pillow's draft(): libjpeg's DCT scaling by 1/2, 1/4 or 1/8), so a
12 MP phone photo is not decoded at full size only to be cropped to 224 px. An image whose decoded
size would exceed MAX_PIXELS is refused like any unreadable file, so one hostile file cannot take
the process's memory.

This module imports neither torch nor torchvision at load time: the ONNX prediction path runs
without them.
"""
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, features

from helpers import cli

# A phone photo with a damaged EXIF block decodes fine, but Pillow's TIFF reader (which parses EXIF)
# warns on stderr, two lines per image that name no file: not the user's business.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")


def _has(feature):
    try:
        with warnings.catch_warnings():  # an older Pillow warns "Unknown feature" on stderr
            warnings.simplefilter("ignore")
            return bool(features.check(feature))
    except (ValueError, KeyError):  # a Pillow that does not know the feature
        return False


def _heif_opener():
    try:
        import pillow_heif  # optional: iPhone photos (pip install pillow-heif)
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


# Phone photos: AVIF, which Pillow reads since 11.3, and HEIC/HEIF (iPhones), which it reads with the
# optional pillow-heif. They are always listed as images, so that one this Pillow cannot read is
# skipped and named with what to install, never silently left out.
CANNOT_READ = {}
if not _has("avif"):
    CANNOT_READ[".avif"] = "AVIF photos need Pillow 11.3 or later: pip install -U pillow"
if not _heif_opener():
    CANNOT_READ[".heic"] = CANNOT_READ[".heif"] = "HEIC/HEIF photos need pillow-heif: pip install pillow-heif"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Decoded pixels allowed per image: 24 MP (a 6000 x 4000 frame) is 72 MB as RGB, and an RGBA PNG of
# that size peaks near 400 MB while its alpha is composited. JPEGs are measured after draft(), so a
# 100 MP phone JPEG decoded at 1/4 or 1/8 passes; a PNG that declares 20000 x 20000 does not.
MAX_PIXELS = 24_000_000
# Pillow's own guard raises at open() for any declared size above 2x its limit, before draft()
# could shrink a JPEG: ours replaces it (checked in decode_rgb, after draft).
Image.MAX_IMAGE_PIXELS = None

EXIF_ORIENTATION = 0x0112


def is_image_file(path):
    """An image by its extension, any case; hidden files (macOS '._x.jpg') are not images."""
    name = os.path.basename(str(path))
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def walk_files(folder):
    """Every file below folder, sorted, following links to folders (a class may link in a folder of
    photos from elsewhere) but never into a folder twice, nor into one that holds the folder walked
    (a link to '..' would loop, or read the other classes' images as this one's); hidden folders are
    skipped."""
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
    """Image files in a folder (and its sub-folders), sorted. An image name that is not a regular
    file (a pipe, a device, a broken link) is left out, and added to `not_regular` when given: reading
    a pipe would wait forever, a link to /dev/zero would never end."""
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
    """img.save, in the format its name says, but checked: Pillow hands its encoder's buffer to
    write() and ignores a short write, so on a full disk it leaves a cut-off file and no error.
    Encoded in memory, then written by Python, which raises on a short write."""
    import io
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
    # Checked on the declared size, before anything decodes: a baseline JPEG may still shrink 8x a
    # side. A progressive one cannot: libjpeg keeps every DCT coefficient of the whole image (2 bytes
    # a sample, draft() or not), so a 38000 x 38000 one takes gigabytes to decode.
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
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block: ignored, as exif_transpose would
        orientation = 1
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def decode_rgb(img, shrink=1.0, path=None):
    """Decode an opened image into 8-bit RGB with its EXIF orientation applied.

    shrink: how many times smaller than its full size the caller can use the image; a JPEG is then
    decoded at the largest DCT scale (2, 4 or 8) not above it, so both sides stay at least
    full size / shrink.
    """
    path = path or getattr(img, "filename", "") or "image"
    try:
        if shrink >= 2:
            w, h = img.size
            img.draft(img.mode, (math.ceil(w / shrink), math.ceil(h / shrink)))
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise _too_large(path, w, h)
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except cli.UserError:
        raise
    except Exception as e:
        raise cli.UserError(f"cannot read image {path}: {cli.first_line(e)}") from None


def _to_rgb(img):
    """Alpha composited on white, palette, 16/32-bit grayscale scaled (not clipped), CMYK, L."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = img.convert("I")
        # 16-bit data would be clipped at 255 by a plain convert: scale to 8 bits first.
        img = img.point(lambda v: v * (1 / 256)) if img.getextrema()[1] > 255 else img
        img = img.convert("L")
    elif img.mode == "F":
        # 32-bit float (scientific TIFFs): 0..1 is scaled to 0..255, another range stretched to it;
        # a plain convert would clip 0..1 to black.
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
    """Open and decode a file; with min_side, a JPEG may be decoded smaller while both of its
    sides stay at least min_side (or its full size, when smaller); with max_side, the result is
    shrunk to fit it (for pictures: a figure panel needs no more)."""
    with open_image(path) as img:
        shrink = min(oriented_size(img)) / min_side if min_side else 1.0
        rgb = decode_rgb(img, shrink, path)
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.BILINEAR)
    return rgb


# ---------------------------------------------------------------- preprocessing

class EvalTransform:
    """torchvision's Resize(img_size / 0.875) + CenterCrop(img_size) + ToTensor + Normalize, as a
    float32 NumPy array (3, H, W), without importing torch: ONNX prediction runs without it, and
    `import torch, torchvision` costs 2.8-2.9 s of start-up here against 0.12 s for NumPy and Pillow
    (measured 2026-11-30), most of predict.py --onnx's one-second budget.

    The same pixels as torchvision (tested). Two changes keep memory and time bounded: a JPEG larger
    than needed is drafted first, so its short side stays at least the resize target (a photo no
    bigger than that is unchanged); and an image of extreme aspect ratio has only its crop's box
    resized, not the whole (a 1x20000 strip resized whole to a short side of 128 is 2.5 GB).
    """

    def __init__(self, img_size=224):
        self.size, self.resize = img_size, int(round(img_size / 0.875))

    def __call__(self, img):
        """img: an image from open_image() (decoded here) or an RGB image."""
        return to_normalized_array(self.resize_crop(img))

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
        # A panorama or a 1x20000 strip: only the crop's box is resized (the whole would take GBs).
        # Pillow takes the box in 32-bit floats, so a pixel may differ by one level from the above.
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy)
        return img.resize((self.size, self.size), Image.BILINEAR, box=box)


def normalize(batch, mean=MEAN, std=STD):
    """uint8 NHWC crops to the model's float32 NCHW input: ToTensor + Normalize in NumPy (equal to
    torchvision's to 1e-6). mean and std: an ONNX file's own, when it holds others."""
    scale, shift = (SCALE, SHIFT) if (tuple(mean), tuple(std)) == (MEAN, STD) else scale_shift(mean, std)
    x = batch.transpose(0, 3, 1, 2).astype(np.float32, order="C")  # NCHW: one copy
    x *= scale
    x -= shift
    return x


def scale_shift(mean, std):
    """ToTensor + Normalize as one multiply-add: (x / 255 - mean) / std = x * scale - shift."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    return (1 / (255 * std)).astype(np.float32).reshape(3, 1, 1), (mean / std).astype(np.float32).reshape(3, 1, 1)


SCALE, SHIFT = scale_shift(MEAN, STD)


def to_normalized_array(img):
    """One RGB image: (3, H, W) float32."""
    return normalize(np.asarray(img, dtype=np.uint8)[None])[0]


class TrainTransform:
    """RandomResizedCrop(img_size) + RandomHorizontalFlip (+ auto augment) + ToTensor + Normalize
    (+ RandomErasing), with torchvision's random draws, on an image from open_image().

    The crop is drawn before decoding, from the image's size, so a JPEG is decoded at the largest
    scale that still gives the crop at least img_size pixels a side. For a photo decoded at full
    size the pixels equal torchvision's RandomResizedCrop (tested); a drafted one differs only by
    the JPEG's own downscaling.
    """

    AUTO_AUGMENT = ("ta", "ra", "aa")

    def __init__(self, img_size=224, auto_augment=None, random_erase=0.0):
        from torchvision import transforms  # here, not at import: prediction does not need it

        self.size = img_size
        self.crop = transforms.RandomResizedCrop(img_size)
        after = [transforms.RandomHorizontalFlip()]
        if auto_augment == "ta":
            after.append(transforms.TrivialAugmentWide())
        elif auto_augment == "ra":
            after.append(transforms.RandAugment())
        elif auto_augment == "aa":
            after.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET))
        elif auto_augment:
            raise ValueError(f"unknown auto augment {auto_augment!r}")
        after += [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
        if random_erase > 0:
            after.append(transforms.RandomErasing(p=random_erase))
        self.after = transforms.Compose(after)

    def __call__(self, img):
        import torch

        w, h = oriented_size(img)
        # torchvision's own draw, on a shape-only tensor: the same random numbers, no pixels.
        top, left, ch, cw = self.crop.get_params(torch.empty((3, h, w), device="meta"),
                                                 self.crop.scale, self.crop.ratio)
        if getattr(img, "tile", None) or img.mode != "RGB":
            img = decode_rgb(img, min(cw, ch) / self.size)
        if img.size == (w, h):
            img = img.crop((left, top, left + cw, top + ch)).resize((self.size, self.size), Image.BILINEAR)
        else:  # drafted: the same box, in the smaller image's coordinates
            sx, sy = img.width / w, img.height / h
            box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
            img = img.resize((self.size, self.size), Image.BILINEAR, box=box)
        return self.after(img)
