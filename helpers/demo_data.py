"""SYNTHETIC demo flowers drawn with Pillow, so that the whole pipeline runs without the real data.

Each class keeps the look of its namesake (petals, colour, centre); the rest varies from a seed.
Accuracy on these cartoons says the code works, not how a model does on flowers.
"""
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from helpers import imaging

CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
NOTE = ("SYNTHETIC DEMO DATA drawn by helpers/demo_data.py, not photographs. "
        "Replace this folder with the real flower_photos (split_data.py --download) for real results.\n")
MARKER = "SYNTHETIC_DEMO_DATA.txt"  # in flower_photos/, beside the class folders
SIZE_RANGE = (96, 160)  # the side of each picture, in pixels


def _jitter(rng, rgb, amount=25):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _background(rng, size):
    top = _jitter(rng, rng.choice([(110, 160, 220), (90, 140, 70), (60, 100, 50), (150, 130, 100)]), 30)
    bottom = _jitter(rng, rng.choice([(60, 120, 50), (40, 90, 40), (120, 100, 70), (80, 130, 90)]), 30)
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        t = y / (size - 1)
        draw.line([(0, y), (size, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    for _ in range(rng.randint(5, 25)):  # leaves and grass blades as clutter
        x, y = rng.randrange(size), rng.randrange(size)
        r = rng.randint(2, max(3, size // 10))
        draw.ellipse([x - r, y - r // 2, x + r, y + r // 2], fill=_jitter(rng, (50, 110, 40), 35))
    return img


def _petal(draw, cx, cy, angle, length, width, fill, round_tip=True):
    """A petal from the centre outwards, as a polygon, so that it can be rotated."""
    pts = []
    for i in range(16):
        t = 2 * math.pi * i / 16
        px = (math.cos(t) + 1) / 2 * length
        py = math.sin(t) * width / 2 * (1 if round_tip else (1 - px / length))
        pts.append((cx + px * math.cos(angle) - py * math.sin(angle),
                    cy + px * math.sin(angle) + py * math.cos(angle)))
    draw.polygon(pts, fill=fill)


def _flower(draw, rng, kind, cx, cy, r):
    rot = rng.uniform(0, 2 * math.pi)
    if kind == "daisy":  # many thin white petals, small yellow centre
        n = rng.randint(14, 22)
        for i in range(n):
            _petal(draw, cx, cy, rot + 2 * math.pi * i / n, r, r * 0.22, _jitter(rng, (245, 245, 240), 10))
        c = r * rng.uniform(0.22, 0.3)
        draw.ellipse([cx - c, cy - c, cx + c, cy + c], fill=_jitter(rng, (240, 200, 30), 20))
    elif kind == "dandelion":  # dense fringe of narrow yellow rays, no visible centre
        for layer, scale in ((0, 1.0), (1, 0.75), (2, 0.5)):
            n = rng.randint(28, 40)
            for i in range(n):
                _petal(draw, cx, cy, rot + layer * 0.1 + 2 * math.pi * i / n, r * scale, r * 0.1,
                       _jitter(rng, (250, 215 - 25 * layer, 20), 15), round_tip=False)
    elif kind == "roses":  # red/pink cup of overlapping round petals, spiralling in
        base = rng.choice([(200, 20, 40), (230, 80, 120), (170, 10, 30), (240, 150, 170)])
        for i in range(5):
            s = r * (1 - i * 0.17)
            shade = _jitter(rng, tuple(int(c * (1 - 0.08 * i)) for c in base), 12)
            for j in range(5):
                a = rot + j * 2 * math.pi / 5 + i * 0.6
                ox, oy = math.cos(a) * s * 0.25, math.sin(a) * s * 0.25
                draw.ellipse([cx + ox - s * 0.6, cy + oy - s * 0.6, cx + ox + s * 0.6, cy + oy + s * 0.6],
                             fill=shade, outline=tuple(int(c * 0.7) for c in shade))
    elif kind == "sunflowers":  # yellow pointed petals around a large dark-brown disc
        n = rng.randint(16, 24)
        for i in range(n):
            _petal(draw, cx, cy, rot + 2 * math.pi * i / n, r, r * 0.28, _jitter(rng, (250, 190, 10), 15),
                   round_tip=False)
        c = r * rng.uniform(0.45, 0.55)
        draw.ellipse([cx - c, cy - c, cx + c, cy + c], fill=_jitter(rng, (90, 50, 20), 15))
        for _ in range(int(c)):
            x, y = cx + rng.uniform(-c, c) * 0.7, cy + rng.uniform(-c, c) * 0.7
            draw.point((x, y), fill=(50, 30, 10))
    elif kind == "tulips":  # upright cup of 3 tall petals on a green stem
        colour = _jitter(rng, rng.choice([(220, 30, 60), (240, 120, 180), (150, 40, 160),
                                          (250, 200, 40), (245, 100, 30)]), 15)
        draw.line([(cx, cy), (cx + rng.uniform(-r, r) * 0.3, cy + r * 2.2)], fill=(40, 120, 40),
                  width=max(2, int(r * 0.15)))
        draw.ellipse([cx - r * 0.55, cy - r * 0.9, cx + r * 0.55, cy + r * 0.6], fill=colour)
        for dx in (-0.35, 0.35):
            _petal(draw, cx + dx * r, cy + r * 0.5, -math.pi / 2 + dx * 0.6, r * 1.2, r * 0.5,
                   _jitter(rng, colour, 10))
        darker = tuple(int(c * 0.85) for c in colour)
        _petal(draw, cx, cy + r * 0.5, -math.pi / 2, r * 1.25, r * 0.45, darker)


def _distractors(draw, rng, size):
    """Petal-coloured blobs in the background, so colour alone does not give the class away."""
    for _ in range(rng.randint(0, 6)):
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randint(2, max(3, size // 12))
        colour = rng.choice([(245, 245, 240), (250, 200, 20), (200, 20, 40), (240, 120, 180), (90, 50, 20)])
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_jitter(rng, colour, 30))


def draw_image(kind, rng, size, clear=False):
    """One training picture; clear: one large flower, not blurred, as the training set often has it
    (the demo's example pictures show the classes, not their hardest cases)."""
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    _distractors(draw, rng, size)
    for _ in range(1 if clear else rng.choice([1, 1, 1, 2, 3])):
        r = size * rng.uniform(0.25 if clear else 0.1, 0.33)
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6), rng.uniform(r * 0.6, size - r * 0.6)
        _flower(draw, rng, kind, cx, cy, r)
    if rng.random() < 0.5 and not clear:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    return ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2) if clear else rng.uniform(0.6, 1.3))


def make_demo_dataset(root, per_class=120, seed=0, size_range=SIZE_RANGE):
    """Write <root>/<class>/<n>.jpg and a note that says the data is synthetic."""
    root = Path(root)
    rng = random.Random(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = rng.randint(*size_range)
            imaging.save_image(draw_image(kind, rng, size), root / kind / f"{kind}_{i:04d}.jpg", quality=90)
    (root / MARKER).write_text(NOTE, encoding="utf-8")
    return root


def figure_note(data_path):
    """The note on the figures of a data folder (train.py's --data-path) that holds these demo
    flowers, else None: a figure shown without its folder still says what it shows."""
    return "SYNTHETIC demo data, not photographs" if (Path(data_path) / "flower_photos" / MARKER).is_file() else None


def make_demo_images(folder, seed=1234, size_range=SIZE_RANGE):
    """One clear picture per class for predict.py and batch_predict.py, drawn by the training
    pictures' generator (new ones: another seed); a file already there is kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for kind in CLASSES:
        path = folder / f"{kind}.jpg"
        img = draw_image(kind, rng, rng.randint(*size_range), clear=True)
        if not path.exists():
            imaging.save_image(img, path, quality=90)
            written.append(path)
    return written


def make_clip(path, frames=300, size=(640, 480), fps=30):
    """A video of demo flowers, a new kind every second, each panned slowly. Written as mp4v, which
    pip's OpenCV writes without extra libraries."""
    import numpy as np

    from helpers import sources
    cv2 = sources.need_cv2()
    rng = random.Random(2)
    w, h = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        if i % fps == 0:
            scene = np.asarray(draw_image(CLASSES[i // fps % 5], rng, w + fps))
        top = (scene.shape[0] - h) // 2
        out.write(cv2.cvtColor(np.ascontiguousarray(scene[top:top + h, i % fps:i % fps + w]), cv2.COLOR_RGB2BGR))
    out.release()
    return Path(path)
