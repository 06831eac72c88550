"""Measure a model on a folder of class sub-folders: the per-class report, the confusion matrix and
the errors. Trained weights run with PyTorch; an ONNX file (fp32 or INT8) with ONNX Runtime only.

    python evaluate.py                                # <data-path>/test when there, else val/
    python evaluate.py data_set/flower_data/test --json test.json --csv test.csv
    python evaluate.py --onnx resNet34.int8.onnx      # PyTorch is not imported

val/ chose the best weights, so its accuracy is optimistic: split_data.py --test-rate 0.1 keeps a
test/ folder that training never reads, and this is the number to report.
"""
from helpers import cli
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from helpers import demo_data, files, imaging, inference, reports


def main(args):
    # Settle everything first: the folder and its classes, the model's classes, every output.
    folder = Path(args.folder) if args.folder else default_folder(args.data_path)
    files.need_dir(folder, "folder to evaluate", "give a folder of <class>/<images>, e.g. <data-path>/test")
    p = inference.settle(args)
    classes = p.classes
    paths, true, not_regular = folder_images(folder, classes, p.class_source)
    paths, true, left_out = leave_out_trained(folder, paths, true, Path(args.data_path) / "train", p)
    model_file = Path(p.model_file)
    out_dir = Path(args.output_dir or model_file.parent)
    confusion_png, errors_png = out_dir / f"{folder.name}_confusion_matrix.png", out_dir / f"{folder.name}_errors.png"
    outputs = {"confusion matrix": (confusion_png, None), "error gallery": (errors_png, None),
               "--json": (args.json, (".json",)), "--csv": (args.csv, (".csv",))}
    outputs = {what: (Path(path), suffixes) for what, (path, suffixes) in outputs.items() if path}
    for what, (path, suffixes) in outputs.items():  # cheap reports: replaced, but never among the images
        named = f"--output-dir's {what}" if args.output_dir else f"{what} (beside the model, unless --output-dir)"
        files.check_report(path, what if what.startswith("--") else named, suffixes=suffixes, images=[folder],
                           head=reports.PREDICTIONS_FIELDS)
    files.check_distinct({what: path for what, (path, _) in outputs.items()})
    empty = [c for i, c in enumerate(classes) if i not in set(true)]
    predictor, runs_on = inference.load_predictor(p)

    # Then act: every image, in batches decoded beside the model; the reports' folder held meanwhile
    # (a training run may be writing its own reports there).
    with files.locked(out_dir, "evaluate.py writing its reports"):
        print(f"evaluating {model_file} on {len(paths)} images of {folder} ({runs_on})")
        if left_out:
            named = ", ".join(map(str, left_out[:3])) + (" ..." if len(left_out) > 3 else "")
            print(f"warning: left out {len(left_out)} of the {len(left_out) + len(paths)} images of {folder}: "
                  f"{model_file} trained on them ({named}); the numbers below are on the other {len(paths)}",
                  file=sys.stderr)
        if empty:
            print(f"warning: {folder} has no images of {', '.join(empty)}: their recall is missing", file=sys.stderr)
        kept, probs, skipped = [], [], [str(p) for p in not_regular]
        for path in not_regular:
            print(f"skipped: {path} is not a regular file", file=sys.stderr)
        results = inference.predict_paths(paths, predictor, p)
        for i, (path, scores, error) in enumerate(tqdm(results, total=len(paths), file=sys.stdout, desc="evaluate")):
            if scores is None:
                skipped.append(str(path))
                tqdm.write(f"skipped: {error}", file=sys.stderr)
                continue
            kept.append(i)
            probs.append(scores)
        if not kept:
            raise cli.UserError(f"none of the {len(paths)} images of {folder} could be read")
        result = evaluation(np.stack(probs), np.asarray(true)[kept])
        m = reports.final_report(result, [str(paths[i]) for i in kept], classes, confusion_png=confusion_png,
                                 predictions_csv=args.csv, errors_png=errors_png, what=folder.name,
                                 note=demo_data.figure_note(folder.parent))
        if args.json:
            report = {"report": files.REPORT_MARK, **m, "images": len(kept), "skipped": len(skipped),
                      "left_out_as_trained_on": len(left_out), "model": str(model_file), "folder": str(folder)}
            files.atomic_write_text(args.json, json.dumps(report, indent=2, ensure_ascii=False))
            print(f"wrote {args.json}")
        return {**m, "images": len(kept), "skipped": skipped, "left_out_as_trained_on": [str(p) for p in left_out]}


def default_folder(data_path):
    """test/ when split_data.py --test-rate made one, else val/."""
    test = Path(data_path) / "test"
    return test if test.is_dir() else Path(data_path) / "val"


def leave_out_trained(folder, paths, true, train, p):
    """(paths, true, left out): the honest number is measured on photos the model never trained on.
    A model that knows what it trained on (train.py's weights and checkpoints, export_onnx.py's files)
    has those photos left out, named, wherever they are (a re-split after training, copies elsewhere);
    it scores the rest, so that the number is the honest one, and refuses a folder with nothing left.
    Older files are checked against --data-path's train/ instead. train/ itself, asked for by name,
    is evaluated whole, with a note."""
    if os.path.abspath(folder) == os.path.abspath(train):
        print(f"note: {folder} is the training folder: this is the accuracy on photos the model trained on",
              file=sys.stderr)
        return paths, true, []
    if p.trained_on is None:
        check_apart_from_train(folder, paths, train)
        return paths, true, []
    seen = set(reports.seen_in_training(p.trained_on, paths, p.model_file))
    if len(seen) == len(paths):
        raise cli.UserError(f"all {len(paths)} images of {folder} are images that {p.model_file} trained on (a "
                            "re-split after training, or copies): its accuracy there says nothing about new photos; "
                            "train again on the new train/, or evaluate a folder of photos it never saw")
    kept = [i for i, path in enumerate(paths) if path not in seen]
    return [paths[i] for i in kept], [true[i] for i in kept], sorted(seen)


def check_apart_from_train(folder, paths, train):
    """For a model file that does not say what it trained on: a folder that shares images with
    --data-path's train/ (a link to it, hard links, copies) is refused."""
    if not train.is_dir():
        return
    if folder.resolve() == train.resolve():
        raise cli.UserError(f"{folder} is {train} (through a link): the accuracy would be measured on photos the model "
                            "trained on; make a test split with split_data.py --test-rate")
    shared = files.shared_images(imaging.list_images(train, True, []), paths)
    if shared:
        raise cli.UserError(f"{folder} shares {len(shared)} image(s) with {train} ({shared[0][0]} is {shared[0][1]}): "
                            "the accuracy would be measured on photos the model trained on; run split_data.py "
                            "--test-rate again (it keeps copies on one side)")


def folder_images(folder, classes, class_source):
    """The folder's images and their class indices in the model's class list, matched by name. A
    folder class the model does not know is refused: its images could only be counted wrong."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise cli.UserError(f"{folder} has no class folders; it must hold <class>/<images>")
    unknown = [c for c in names if c not in classes]
    if unknown:
        raise cli.UserError(f"{folder} has class folder(s) {', '.join(unknown)} that the model does not know "
                            f"(its classes, from {class_source}: {', '.join(classes)})")
    paths, true, not_regular = [], [], []
    for name in names:
        found = imaging.list_images(folder / name, True, not_regular)
        paths += found
        true += [classes.index(name)] * len(found)
    if not paths:
        raise cli.UserError(f"no images in the class folders of {folder}")
    return paths, true, not_regular


def evaluation(probs, true):
    """reports.Evaluation from the probabilities of each image and its true class."""
    pred = probs.argmax(1)
    p_true = probs[np.arange(len(true)), true]
    top5 = (np.argsort(-probs, axis=1, kind="stable")[:, :5] == true[:, None]).any(1)
    return reports.Evaluation(index=np.arange(len(true)), true=true, pred=pred, prob=probs.max(1),
                              losses=-np.log(np.maximum(p_true, np.finfo(np.float32).tiny)), in_top5=top5,
                              num_classes=probs.shape[1])


def get_args_parser(add_help=True):
    p = cli.ArgumentParser(description="Measure a model on a folder of <class>/<images>", add_help=add_help)
    p.add_argument("folder", nargs="?", default=None,
                   help="folder of class sub-folders (default: <data-path>/test when there, else <data-path>/val)")
    p.add_argument("--data-path", default="data_set/flower_data", help="train.py's data folder (default: %(default)s)")
    p.add_argument("--batch-size", type=cli.batch_size_arg, default=16, help="images per batch (default: %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write every number here (replaces only an earlier report)")
    p.add_argument("--csv", default=None, metavar="PATH",
                   help="also write path,true,predicted,prob,correct for every image (replaces only an earlier report)")
    p.add_argument("--output-dir", default=None,
                   help="where <folder>_confusion_matrix.png and <folder>_errors.png go (default: beside the model)")
    inference.add_model_args(p)
    return inference.add_runtime_args(p)


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
