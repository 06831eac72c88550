"""The figures: training curves, the confusion matrix, the error gallery, the split and the
prediction. Drawn without pyplot, so no display is needed; written atomically."""
import math
import os
import sys
from pathlib import Path

from helpers import files

FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # What matplotlib writes without extra packages.


def has_display():
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# Fonts that hold Chinese (and Japanese, Korean) glyphs: the tutorial's readers name classes in Chinese.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "Noto Sans CJK JP", "Noto Sans CJK TC")
_said = set()


def use_fonts_for(texts):
    """Before drawing `texts` that hold Chinese, Japanese or Korean characters, put a CJK font of the
    system's first. Without one, say once how to install one, and draw boxes without warnings."""
    import warnings

    import matplotlib
    from matplotlib import font_manager

    if all(ord(ch) < 0x2E80 for text in texts for ch in str(text)):  # No character of the CJK blocks.
        return
    have = {f.name for f in font_manager.fontManager.ttflist}
    found = [name for name in CJK_FONTS if name in have]
    if found:
        family = matplotlib.rcParams["font.sans-serif"]
        matplotlib.rcParams["font.sans-serif"] = found + [f for f in family if f not in found]
        matplotlib.rcParams["font.family"] = "sans-serif"
        return
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from (current )?font")
    if "cjk" not in _said:
        _said.add("cjk")
        print("note: no CJK font here, so Chinese class names show as boxes in the figures; install one "
              "(Debian/Ubuntu/JetPack: sudo apt install fonts-noto-cjk)", file=sys.stderr)


def new_figure(**kwargs):
    from matplotlib.figure import Figure  # no pyplot: works without a display

    return Figure(**kwargs)


def save_figure(fig, path, dpi=100):
    fmt = Path(path).suffix.lower().lstrip(".") or "png"
    # A JPEG names matplotlib too, as PNG, PDF and SVG do, so that files.check_report knows it next time.
    jpeg = {}
    if fmt in ("jpg", "jpeg"):
        from PIL import Image

        exif = Image.Exif()
        exif[0x0131] = "Matplotlib"  # EXIF's Software tag
        jpeg = {"pil_kwargs": {"exif": exif.tobytes()}}
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt, **jpeg)
    return path


TRAIN_VS_VAL = ("train: the mean over the epoch, on augmented crops, while the weights still change; val: the "
                "epoch's last weights on plain crops.\nSo train accuracy can sit below val accuracy.")


def plot_curves(history, path, note=None):
    """Loss and accuracy per epoch, and the note (demo_data.figure_note) on top when given. The loss is on a
    log scale: from scratch the first epoch's val loss can be ten times the rest, and a linear axis
    would flatten every later epoch."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    fig = new_figure(figsize=(10, 4.8))
    epochs = [h["epoch"] for h in history]
    for ax, key, name in zip(fig.subplots(1, 2), ("loss", "acc"), ("loss (log scale)", "accuracy")):
        for side in ("train", "val"):
            ax.plot(epochs, [h[f"{side}_{key}"] for h in history], "o-", label=side)
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    fig.axes[0].set_yscale("log")
    fig.axes[0].yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 0.5, 1, 2, 5: not 5x10^-1
    fig.axes[0].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    fig.axes[0].yaxis.set_minor_formatter(NullFormatter())
    fig.axes[1].set_ylim(0, 1.02)
    fig.text(0.5, 0.01, TRAIN_VS_VAL, ha="center", va="bottom", fontsize=8, color="dimgray")
    if note:
        fig.suptitle(note, color="firebrick")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95 if note else 1))
    return save_figure(fig, path)


def plot_confusion(conf, classes, path, what="validation", note=None):
    """conf: rows true class, columns predicted. Two panels: the counts, and each row divided by its
    class's images (recall on the diagonal), which shows a small class's errors. what: the images'
    set (validation, test, a folder's name), named in the titles."""
    import numpy as np

    conf = np.asarray(conf)
    n = len(classes)
    use_fonts_for(classes)
    support = conf.sum(axis=1, keepdims=True)
    normalized = np.divide(conf, support, out=np.zeros(conf.shape), where=support > 0)
    fig = new_figure(figsize=(2 * (1.2 + 0.8 * n), 1 + 0.7 * n))
    for ax, values, title, fmt in zip(fig.subplots(1, 2), (conf, normalized),
                                      (f"{what}: confusion matrix (images)", "row-normalised (recall on the diagonal)"),
                                      ("{:.0f}", "{:.2f}")):
        ax.imshow(values, cmap="Blues", vmin=0)
        ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
        ax.set_xticklabels(classes, rotation=45, ha="right")
        ax.set_yticklabels(classes)
        thresh = values.max() / 2
        for i in range(n):
            for j in range(n):
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center",
                        color="white" if values[i, j] > thresh else "black")
    if note:
        fig.suptitle(note, color="firebrick")
    fig.tight_layout(rect=(0, 0, 1, 0.93 if note else 1))
    return save_figure(fig, path)


def show_or_save(images, titles, save_path, heatmaps=None, alpha=0.45):
    """One titled panel per image, in a window on a display unless save_path is given; returns the
    path written, or None. heatmaps: None, or one map in [0, 1] (or None) per image, stretched over it."""
    import numpy as np

    use_fonts_for(titles)
    cols = min(len(images), 4)
    rows = math.ceil(len(images) / cols)
    window = not save_path and has_display()
    if window:
        import matplotlib.pyplot as plt
        fig = plt.figure(figsize=(4 * cols, 4 * rows))
    else:
        fig = new_figure(figsize=(4 * cols, 4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img, title) in enumerate(zip(axes.flat, images, titles)):
        ax.imshow(img)
        if heatmaps is not None and heatmaps[i] is not None:
            h, w = np.asarray(img).shape[:2]
            ax.imshow(heatmaps[i], cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear",
                      extent=(-0.5, w - 0.5, h - 0.5, -0.5))  # The image's own pixel edges.
        ax.set_title(title)
    fig.tight_layout()
    if window:
        plt.show()
        return None
    return save_figure(fig, save_path)


def plot_errors(errors, path, max_panels=32, what="validation", note=None):
    """The misclassified images: errors = [(prob, image path, true class, predicted class)], the
    most confident mistakes first."""
    import numpy as np
    from PIL import ImageOps

    from helpers import imaging

    shown = errors[:max_panels]
    use_fonts_for([e[2] for e in shown] + [e[3] for e in shown])
    cols = min(8, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    # All panels are drawn into one array on one axes: measured, this is much faster than an axes each.
    cell, words, top = 220, 40, 60 if note else 40  # Pixels: an image's square, its two lines of words, the title.
    canvas = np.full((rows * (cell + words), cols * cell, 3), 255, np.uint8)
    height = canvas.shape[0] + top
    fig = new_figure(figsize=(canvas.shape[1] / 100, height / 100))
    ax = fig.add_axes((0, 0, 1, canvas.shape[0] / height))
    ax.axis("off")
    for k, (prob, image, true, pred) in enumerate(shown):
        r, c = divmod(k, cols)
        ax.text(c * cell + cell / 2, r * (cell + words) + words - 2, f"true: {true}\npred: {pred} ({prob:.2f})",
                ha="center", va="bottom", fontsize=8, color="firebrick")
        try:
            img = np.asarray(ImageOps.contain(imaging.load_rgb(image, min_side=cell), (cell - 10, cell - 10)))
        except Exception:  # An image gone since validation keeps only its words.
            continue
        y = r * (cell + words) + words + (cell - img.shape[0]) // 2
        x = c * cell + (cell - img.shape[1]) // 2
        canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
    ax.imshow(canvas, interpolation="nearest")  # imshow copies the array, so it comes after the panels.
    more = f" (the {len(shown)} most confident of {len(errors)})" if len(errors) > len(shown) else ""
    title = f"misclassified {what} images{more}" if errors else f"no misclassified {what} images"
    fig.suptitle(f"{title}\n{note}" if note else title, y=1 - 8 / height, va="top")
    return save_figure(fig, path)


def plot_split(split, path):
    """Images per class on each side, as stacked bars: split = {class: (train, val, test files)}."""
    import numpy as np

    classes = list(split)
    use_fonts_for(classes)
    x = np.arange(len(classes))
    fig = new_figure(figsize=(max(5, 0.7 * len(classes) + 2), 4))
    ax = fig.subplots()
    bottom = np.zeros(len(classes))
    for side, i in (("train", 0), ("val", 1), ("test", 2)):
        counts = np.array([len(sides[i]) if len(sides) > i else 0 for sides in split.values()])
        if side == "test" and not counts.any():
            break  # No test/: the tutorial's two bars.
        ax.bar(x, counts, bottom=bottom, label=f"{side} ({counts.sum()})")
        bottom += counts
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
    ax.set(ylabel="images", title="images per class", ylim=(0, 1.2 * max(bottom.max(), 1)))
    ax.legend(loc="upper right", ncol=3)  # In the headroom above the bars, never over them.
    fig.tight_layout()
    return save_figure(fig, path)
