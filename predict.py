"""Predict one image (or a few) and show it with its top class.

    python predict.py                         # data/imgs/daisy.jpg, as in the tutorial
    python predict.py a.jpg b.png --save-fig result.png
Without a display the figure is written as a PNG (predict.png unless --save-fig says otherwise).
"""
import argparse
import math
import os
import sys

from batch_predict import add_model_args, classes_for, load_predictor, predict_paths
from common import UserError, load_rgb, need_file, run_cli


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Predict the class of images", add_help=add_help)
    p.add_argument("images", nargs="*", default=["data/imgs/daisy.jpg"], help="image files (default: data/imgs/daisy.jpg)")
    p.add_argument("--save-fig", default=None, metavar="PATH", help="write the figure here instead of showing it")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default: %(default)s)")
    return add_model_args(p)


def has_display():
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def show_or_save(images, titles, save_path):
    """One panel per image, titled with its top class; shown on a display, else written as PNG."""
    import matplotlib
    if save_path or not has_display():
        matplotlib.use("Agg")  # no window, no crash without a display
    import matplotlib.pyplot as plt

    cols = min(len(images), 4)
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        ax.imshow(img)
        ax.set_title(title)
    fig.tight_layout()
    if save_path or not has_display():
        path = save_path or "predict.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(f"figure saved to {path}")
        return path
    plt.show()
    return None


def main(args):
    for path in args.images:
        need_file(path, "image", "pass the image to predict, e.g. python predict.py photo.jpg")
    classes = classes_for(args)
    predict = load_predictor(args, len(classes))
    shown, titles, results = [], [], []
    for path, probs, error in predict_paths(list(args.images), predict, args.img_size, args.batch_size, args.workers):
        if probs is None:
            if len(args.images) == 1:
                raise UserError(error)
            print(f"skipped: {error}", file=sys.stderr)
            continue
        if len(args.images) > 1:
            print(f"image: {path}")
        for i, p in enumerate(probs.tolist()):
            print(f"class: {classes[i]:10}   prob: {p:.3}")
        best = int(probs.argmax())
        titles.append(f"class: {classes[best]}   prob: {probs[best].item():.3}")
        shown.append(load_rgb(path))
        results.append((path, classes[best], probs))
    if shown:
        show_or_save(shown, titles, args.save_fig)
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
