"""Predict every image in a folder, in batches, with trained weights (or an ONNX file).

    python batch_predict.py                          # data/imgs, batches of 5
    python batch_predict.py photos/ --recursive --topk 3 --csv out.csv
    python batch_predict.py photos/ --onnx resNet34.onnx   # ONNX Runtime, no PyTorch; nothing else beside the file

Unreadable files are skipped and named; the other images are all predicted.
"""
from helpers import cli
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
import sys
import time

import numpy as np

from helpers import files, imaging, inference


def get_args_parser(add_help=True):
    p = cli.ArgumentParser(description="Predict every image of a folder", add_help=add_help)
    p.add_argument("folder", nargs="?", default="data/imgs", help="folder of images (default: %(default)s)")
    p.add_argument("--batch-size", type=cli.batch_size_arg, default=5, help="images per batch (default: %(default)s)")
    p.add_argument("--recursive", action="store_true", help="include images in sub-folders")
    p.add_argument("--topk", type=cli.positive_int, default=1, help="classes to report per image (default: %(default)s)")
    p.add_argument("--csv", default=None, metavar="PATH",
                   help="also write path, top-k classes and probabilities here (replaces only an earlier report)")
    inference.add_model_args(p)
    inference.add_min_prob_arg(p)
    return inference.add_runtime_args(p)


def csv_header(topk, min_prob=None):
    """path, [prediction: the class reported, or unknown below --min-prob,] then the top-k classes
    and their probabilities."""
    return (["path"] + (["prediction"] if min_prob is not None else [])
            + [h for k in range(1, topk + 1) for h in ((f"class_{k}", f"prob_{k}") if k > 1 else ("class", "prob"))])


def main(args):
    # Settle everything first: the folder, the images, the classes, the CSV's place, the model.
    folder = files.need_dir(args.folder, "image folder")
    not_regular = []
    paths = imaging.list_images(folder, args.recursive, not_regular)
    if not paths:
        raise cli.UserError(f"no images in {folder} (looked for {' '.join(imaging.IMG_EXTENSIONS)}"
                        f"{'' if args.recursive else '; --recursive looks in sub-folders'})")
    if args.csv:  # its path now; what it may replace once the classes give its header
        files.check_output(args.csv, "--csv file", overwrite=True, suffixes=(".csv",))
    p = inference.settle(args)
    classes = p.classes
    topk = min(args.topk, len(classes))
    if args.csv:
        files.check_report(args.csv, "--csv file", suffixes=(".csv",), images=[folder],
                           head=csv_header(topk, args.min_prob))
    predictor, runs_on = inference.load_predictor(p)

    rows, reported, skipped = [], [], []  # reported: the class or 'unknown'
    for path in not_regular:
        skipped.append((path, f"{path} is not a regular file"))
        print(f"skipped: {path} is not a regular file", file=sys.stderr)
    start = time.perf_counter()
    for path, probs, error in inference.predict_paths(paths, predictor, p):
        if probs is None:
            skipped.append((path, error))
            print(f"skipped: {error}", file=sys.stderr)
            continue
        top = np.argsort(-probs, kind="stable")[:topk]
        pairs = [(classes[i], float(probs[i])) for i in top]
        shown = inference.shown_class(*pairs[0], args.min_prob)
        line = f"image: {path}  class: {shown}  prob: {pairs[0][1]:.3}"
        if shown != pairs[0][0]:  # below --min-prob
            line += f"  (top: {pairs[0][0]})"
        if topk > 1:
            line += "  (" + ", ".join(f"{c}: {p:.3}" for c, p in pairs[1:]) + ")"
        print(line)
        rows.append((str(path), pairs))
        reported.append(shown)
    seconds = time.perf_counter() - start
    if not rows:  # every image skipped (each named above): no CSV of nothing, no exit 0
        raise cli.UserError(f"none of the {len(paths) + len(not_regular)} images in {folder} could be read")
    if args.csv:
        with files.atomic_csv(args.csv, csv_header(topk, args.min_prob)) as w:
            for (path, pairs), shown in zip(rows, reported):
                prediction = [shown] if args.min_prob is not None else []
                w.writerow([path] + prediction + [x for c, p in pairs for x in (c, f"{p:.6f}")])
    print(f"predicted {len(rows)} images, skipped {len(skipped)}"
          f"{' (unreadable: ' + ', '.join(str(p) for p, _ in skipped) + ')' if skipped else ''}"
          f", {len(rows) / max(seconds, 1e-9):.1f} images/s with {runs_on}" + (f"; wrote {args.csv}" if args.csv else ""))
    return rows, skipped


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
