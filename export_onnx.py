"""Export trained weights to ONNX (dynamic batch) and check the file against PyTorch with ONNX Runtime;
with --int8, also an INT8 model for fast prediction on a CPU (or TensorRT), checked for accuracy.

    python export_onnx.py --model resnet34 --weights resNet34.pth --out resNet34.onnx
    python export_onnx.py --weights resNet34.pth --int8            # + resNet34.int8.onnx, for the CPU
    python export_onnx.py --weights resNet34.pth --int8 tensorrt   # + resNet34.int8-tensorrt.onnx
    trtexec --onnx=resNet34.onnx --fp16 --saveEngine=resNet34.engine     # on a Jetson / TensorRT

Input `input` (N, 3, H, W), normalised as in training; output `logits`, or `probs` with --softmax.
The file carries in its metadata what prediction needs: the class names, the input size, the mean
and std, the architecture, and the top-1 accuracy on <data-path>/val it was checked at (when that
folder is there). predict.py and batch_predict.py --onnx FILE need nothing else. <name>.labels.txt
and labels.txt beside it hold the class names, one per line, in output order, for trtexec and
DeepStream (labels.txt is left as it is when it holds another model's). The file is kept only when
ONNX Runtime's output matches PyTorch's.

--int8 is ONNX Runtime's static post-training quantization (QDQ, per-channel weights), calibrated on
--calib-images training images. The fp32 and the INT8 model are then measured on <data-path>/val
when there, and the INT8 file is kept only if it loses at most --max-drop points of top-1 accuracy.
Either both files are written or neither.
"""
from helpers import cli
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
import contextlib
import dataclasses
import itertools
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

from helpers import deploy, files, imaging, inference


def get_args_parser(add_help=True):
    p = cli.ArgumentParser(description="Export trained weights to ONNX and check the result", add_help=add_help)
    inference.add_model_args(p)
    p.add_argument("--out", default=None, help="ONNX file (default: the weights' name with .onnx)")
    cli.add_overwrite(p, "replace an existing ONNX file and its labels files")
    p.add_argument("--opset", type=cli.int_in(11), default=17, help="ONNX opset, 11 or more (default: %(default)s)")
    p.add_argument("--softmax", action="store_true", help="put the softmax in the graph: output probabilities")
    p.add_argument("--check-images", default="data/imgs", help="real images for the check, when there (default: %(default)s)")
    p.add_argument("--atol", type=cli.positive_float, default=1e-3,
                   help="largest difference allowed (default: %(default)s)")
    q = p.add_argument_group("INT8")
    q.add_argument("--int8", nargs="?", const="cpu", default=None, choices=("cpu", "tensorrt"),
                   help="also write an INT8 model beside the fp32 one: <out>.int8.onnx for ONNX Runtime on a CPU "
                        "(unsigned activations, its fastest), or with 'tensorrt' <out>.int8-tensorrt.onnx (symmetric "
                        "signed, what TensorRT's INT8 needs)")
    q.add_argument("--data-path", default="data_set/flower_data",
                   help="the data set: accuracy on its val/ (recorded in the files), INT8 calibration images from its "
                        "train/ (default: %(default)s)")
    q.add_argument("--calib-dir", default=None,
                   help="images to calibrate on, in <class>/ folders or not (default: <data-path>/train)")
    q.add_argument("--calib-images", type=cli.int_in(8), default=200,
                   help="how many, spread evenly over the classes; a few hundred at most (default: %(default)s)")
    q.add_argument("--max-drop", type=cli.non_negative_float, default=1.0,
                   help="largest loss of top-1 accuracy on val/, in points, for the INT8 file to be kept "
                        "(default: %(default)s)")
    q.add_argument("--keep-int8", action="store_true", help="keep the INT8 file whatever it loses")
    return p


if __name__ == "__main__":
    cli.check_args_first(get_args_parser())  # before torch loads (seconds): a mistyped flag is refused at once
try:
    import torch
except ImportError:  # a deployment machine (requirements-deploy.txt) predicts; exporting needs PyTorch
    sys.exit("error: export_onnx.py needs PyTorch (pip install -r requirements.txt); run it where the model was "
             "trained and copy the .onnx file and labels.txt to this machine")


def import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise cli.UserError("ONNX export needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    return onnx, onnxruntime


def check_inputs(img_size, folder):
    """Random inputs, and up to 8 real images of `folder` when there, for the comparison."""
    g = torch.Generator().manual_seed(0)
    inputs = [("random", torch.randn(3, 3, img_size, img_size, generator=g))]
    transform, real = imaging.EvalTransform(img_size), []
    for p in imaging.list_images(folder) if Path(folder).is_dir() else []:
        try:
            real.append(torch.from_numpy(transform(imaging.load_rgb(p))))
        except cli.UserError:
            continue  # an unreadable file is no reason to fail the export
        if len(real) == 8:
            break
    if real:
        inputs.append((f"{len(real)} images of {folder}", torch.stack(real)))
    elif Path(folder).is_dir() and imaging.list_images(folder):
        raise cli.UserError(f"none of the images of --check-images {folder} could be read: the export would be checked "
                            "on random inputs only; give a folder of photos")
    return inputs


def compare_with_pytorch(net, onnx_path, inputs, atol, weights_path):
    """Largest |ONNX Runtime - PyTorch| over the inputs; raises if beyond atol."""
    session = deploy.new_session(onnx_path, [deploy.CPU])
    worst = 0.0
    for name, x in inputs:
        with torch.inference_mode():
            ref = net(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        if not np.isfinite(ref).all():  # NaN compares false with everything: no difference would show
            raise cli.UserError(inference.overflow_line(weights_path) + "; nothing was exported")
        diff = float(np.abs(got - ref).max())
        worst = max(worst, diff)
        print(f"check {name}: batch {x.shape[0]}, largest difference {diff:.2e}")
    if not worst <= atol:  # a NaN compares false with everything: "not <=" catches it
        raise cli.UserError(f"ONNX output differs from PyTorch by {worst:.2e} (> --atol {atol}); the export is wrong "
                        "and was not kept")
    return worst


# ---------------------------------------------------------------- INT8

def int8_path(out, flavour):
    return out.with_name(out.stem + (".int8.onnx" if flavour == "cpu" else ".int8-tensorrt.onnx"))


def calibration_images(folder, n):
    """Up to n images of folder, the same ones every run: each class folder shuffled with a fixed
    seed, then taken in turn, so every class is represented even when n is small."""
    folder = files.need_dir(folder, "calibration folder", "--calib-dir points at training images, "
                                                    "or --data-path at a data set with train/")
    by_class = {}
    for p in imaging.list_images(folder, recursive=True):
        by_class.setdefault(p.parent, []).append(p)
    if not by_class:
        raise cli.UserError(f"no images in {folder} to calibrate the INT8 model on (--calib-dir)")
    queues = [by_class[k] for k in sorted(by_class)]
    for i, paths in enumerate(queues):
        random.Random(i).shuffle(paths)
    taken_in_turn = [p for group in itertools.zip_longest(*queues) for p in group if p is not None]
    return taken_in_turn[:n]


def val_images(folder, classes):
    """(paths, class indices) of an ImageFolder-like val/ (<class>/<images>), for the classes the
    model knows; ([], []) when there is no such folder."""
    paths, labels = [], []
    for i, name in enumerate(classes):
        if (Path(folder) / name).is_dir():
            found = imaging.list_images(Path(folder) / name, recursive=True)
            paths += found
            labels += [i] * len(found)
    if paths:  # a folder the model has no class for is left out, and said so: the figure is on the others
        other = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
                       and e.name not in classes)
        missing = [c for c in classes if not (Path(folder) / c).is_dir()]
        if other or missing:
            print(f"note: the accuracy leaves out {folder}'s folder(s) {', '.join(other) or '-'} (not classes of the "
                  f"model) and has no folder for {', '.join(missing) or '-'}")
    return paths, labels


class CalibrationImages:
    """ONNX Runtime's CalibrationDataReader: batches of 8 images, decoded as prediction decodes them."""

    def __init__(self, paths, img_size):
        self.batches = inference.decode_batches(paths, img_size, batch_size=8)
        self.used = self.skipped = 0

    def get_next(self):
        for _, batch, errors in self.batches:
            self.skipped += len(errors)
            if len(batch):
                self.used += len(batch)
                return {"input": imaging.normalize(batch)}
        if not self.used:
            raise cli.UserError("none of the calibration images could be read (--calib-dir)")
        return None


def quantize_int8(fp32, int8, paths, img_size, flavour):
    """Static INT8 quantization (QDQ, per-channel weights, min-max ranges) of fp32 into int8. "cpu":
    unsigned activations (ONNX Runtime's fastest on a CPU); "tensorrt": symmetric signed, as TensorRT needs."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    signed = flavour == "tensorrt"
    reader = CalibrationImages(paths, img_size)
    with tempfile.TemporaryDirectory(prefix="export_onnx.") as tmp:  # the pre-processed model: removed whatever happens
        pre = Path(tmp) / "pre.onnx"
        # Always: it folds the Identity nodes that make ONNX Runtime 1.32's quantized model slow.
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(int8), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=False, activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": signed, "WeightSymmetric": True})
    return reader.used, reader.skipped


def write_metadata(path, info):
    """The file's metadata_props become info's (deploy.ModelInfo): what prediction reads back."""
    import onnx
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, info.to_metadata())
    onnx.save(model, str(path))


def top1(models, paths, labels, img_size):
    """Top-1 accuracy in percent of each ONNX file on the images (decoded once for all), and how
    often their top classes agree with the first model's."""
    sessions = [deploy.new_session(m, [deploy.CPU]) for m in models]
    correct, agree, seen = [0] * len(models), [0] * len(models), 0
    for indices, batch, _ in inference.decode_batches(paths, img_size, batch_size=16):
        if not indices:
            continue
        x, truth = imaging.normalize(batch), np.asarray([labels[i] for i in indices])
        tops = [s.run(None, {"input": x})[0].argmax(axis=1) for s in sessions]
        for k, top in enumerate(tops):
            correct[k] += int((top == truth).sum())
            agree[k] += int((top == tops[0]).sum())
        seen += len(indices)
    return [100 * c / max(seen, 1) for c in correct], [100 * a / max(seen, 1) for a in agree], seen


def check_accuracy(fp32, int8, val_dir, p, args):
    """(fp32 top-1, INT8 top-1, images) on val/, printed side by side, or Nones without a val/. INT8 that
    loses more than --max-drop points is refused (unless --keep-int8)."""
    paths, labels = val_images(val_dir, p.classes)
    if not paths:
        print(f"no {val_dir} with folders named after the classes: {'fp32 and INT8 ' if int8 else ''}accuracy not "
              "measured")
        return None, None, None
    accs, agree, seen = top1([fp32] + ([int8] if int8 else []), paths, labels, p.img_size)
    if not int8:
        print(f"top-1 on {seen} images of {val_dir}: fp32 {accs[0]:.2f}%")
        return accs[0] / 100, None, seen
    (acc32, acc8), same = accs, agree[1]
    drop = acc32 - acc8
    print(f"top-1 on {seen} images of {val_dir}: fp32 {acc32:.2f}%   INT8 {acc8:.2f}%   ({-drop:+.2f} points; "
          f"same class for {same:.1f}% of the images)")
    if drop > args.max_drop and not args.keep_int8:
        raise cli.UserError(f"INT8 loses {drop:.2f} points of top-1 (more than --max-drop {args.max_drop}), so neither "
                        "file was written; try more --calib-images, or --keep-int8 to keep it anyway")
    return acc32 / 100, acc8 / 100, seen


# ---------------------------------------------------------------- main

def main(args):
    onnx, _ = import_onnx()
    # Settle everything first: weights, classes, every output, the calibration images.
    p = inference.settle(args)
    classes = p.classes
    out = Path(args.out or Path(p.weights).with_suffix(".onnx"))
    if out.suffix.lower() != ".onnx":
        raise cli.UserError(f"--out {out}: give a file name ending in .onnx")
    newest = deploy.newest_opset(args.opset)
    if newest != args.opset:
        raise cli.UserError(f"--opset {args.opset}: this torch ({torch.__version__}) writes opsets up to {newest}")
    labels_text = ("\n".join(classes) + "\n").encode()
    own_labels = out.with_suffix(".labels.txt")  # this model's alone
    labels = out.parent / "labels.txt"  # trtexec's and DeepStream's habit: shared by the models of a folder
    files.check_output(out, "ONNX file", overwrite=args.overwrite)
    if args.int8:
        out8 = files.check_output(int8_path(out, args.int8), "INT8 ONNX file", overwrite=args.overwrite)
        calib = calibration_images(args.calib_dir or Path(args.data_path) / "train", args.calib_images)
    files.check_output(own_labels, "labels file", overwrite=args.overwrite, same_content=labels_text)
    # A labels.txt of other classes (another model's, or yours) is left as it is: this model's are in
    # its own labels file and in its metadata.
    other = labels.is_file() and not labels.is_symlink() and not args.overwrite and labels.read_bytes() != labels_text
    shared_labels = None if other else files.check_output(labels, "labels file", overwrite=args.overwrite,
                                                          same_content=labels_text)
    net, _ = inference.load_torch_model(dataclasses.replace(p, device="cpu", channels_last=False))
    net = torch.nn.Sequential(net, torch.nn.Softmax(dim=1)) if args.softmax else net
    inputs = check_inputs(p.img_size, args.check_images)

    # Export to a temporary file; it becomes `out` only once ONNX Runtime agrees with PyTorch (and,
    # with --int8, the INT8 file passed too), with what prediction needs in its metadata.
    info = deploy.ModelInfo(classes=classes, img_size=p.img_size, architecture=p.model, trained_on=p.trained_on)
    # The folder is held while the model files are written, so that no other export writes there.
    with files.locked(out.parent, f"an export writing {out}"), files.atomic_path(out) as tmp:
        try:
            deploy.export_onnx(net, tmp, p.img_size, args.opset, "probs" if args.softmax else "logits")
        except (RuntimeError, ValueError) as e:  # torch's own errors, as one line
            raise cli.UserError(f"torch.onnx.export failed with --opset {args.opset}: "
                                f"{cli.first_line(e, 200)}") from None
        onnx.checker.check_model(onnx.load(str(tmp)))
        worst = compare_with_pytorch(net, tmp, inputs, args.atol, p.weights)
        with files.atomic_path(out8) if args.int8 else contextlib.nullcontext() as tmp8:
            if args.int8:
                print(f"calibrating INT8 ({args.int8}) on {len(calib)} images...", flush=True)
                used, skipped = quantize_int8(tmp, tmp8, calib, p.img_size, args.int8)
                print(f"calibrated on {used} images" + (f" ({skipped} unreadable, skipped)" if skipped else ""))
            acc32, acc8, seen = check_accuracy(tmp, tmp8, Path(args.data_path) / "val", p, args)
            write_metadata(tmp, dataclasses.replace(info, val_accuracy=acc32, val_images=seen))
            if args.int8:
                write_metadata(tmp8, dataclasses.replace(info, val_accuracy=acc8, val_images=seen,
                                                         fp32_val_accuracy=acc32, int8_for=args.int8))
    files.atomic_write_bytes(own_labels, labels_text)
    if shared_labels:
        files.atomic_write_bytes(shared_labels, labels_text)
    print(f"exported {out} (opset {args.opset}, dynamic batch; classes, input size and accuracy in its metadata), "
          f"{own_labels}" + (f" and {labels}" if shared_labels else ""))
    if not shared_labels:
        print(f"note: {labels} holds other classes (another model's?) and was left as it is; this model's are in "
              f"{own_labels} and in {out} itself")
    print(f"ONNX Runtime matches PyTorch (largest difference {worst:.2e})")
    if args.int8:
        mb = out8.stat().st_size / 2**20
        print(f"exported {out8} (INT8 for {'TensorRT' if args.int8 == 'tensorrt' else 'ONNX Runtime on a CPU'}, "
              f"{mb:.1f} MB against {out.stat().st_size / 2**20:.1f} MB)")
    return out, worst


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
