"""Export trained weights to ONNX (dynamic batch) and check the file against PyTorch with ONNX Runtime.

    python export_onnx.py --model resnet34 --weights resNet34.pth --out resNet34.onnx
    trtexec --onnx=resNet34.onnx --fp16 --saveEngine=resNet34.engine     # on a Jetson / TensorRT

Input `input` (N, 3, H, W), normalised as in training; output `logits`, or `probs` with --softmax.
labels.txt beside the file holds the class names, one per line, in output order. The file is kept
only when ONNX Runtime's output matches PyTorch's.
"""
from pathlib import Path

import numpy as np
import torch

from cli import (ArgumentParser, UserError, atomic_path, atomic_write_bytes, check_output, float_in, int_at_least,
                 read_class_indices, run_cli)
from images import EvalTransform, list_images, load_rgb
from inference import add_model_args, default_weights, export_onnx
from weights import build_model, load_trained_weights, read_state_dict


def get_args_parser(add_help=True):
    p = ArgumentParser(description="Export trained weights to ONNX and check the result", add_help=add_help)
    add_model_args(p)
    p.add_argument("--out", default=None, help="ONNX file (default: the weights' name with .onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ONNX file and labels.txt")
    p.add_argument("--opset", type=int_at_least(11), default=17, help="ONNX opset, 11 or more (default: %(default)s)")
    p.add_argument("--softmax", action="store_true", help="put the softmax in the graph: output probabilities")
    p.add_argument("--check-images", default="data/imgs", help="real images for the check, when there (default: %(default)s)")
    p.add_argument("--atol", type=float_in(0, None, low_open=True), default=1e-3,
                   help="largest difference allowed (default: %(default)s)")
    return p


class WithSoftmax(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


def import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    return onnx, onnxruntime


def check_inputs(img_size, folder):
    """Random inputs, and up to 8 real images of `folder` when there, for the comparison."""
    g = torch.Generator().manual_seed(0)
    inputs = [("random", torch.randn(3, 3, img_size, img_size, generator=g))]
    transform, real = EvalTransform(img_size), []
    for p in list_images(folder) if Path(folder).is_dir() else []:
        try:
            real.append(torch.from_numpy(transform(load_rgb(p))))
        except UserError:
            continue  # an unreadable file is no reason to fail the export
        if len(real) == 8:
            break
    if real:
        inputs.append((f"{len(real)} images of {folder}", torch.stack(real)))
    return inputs


def compare_with_pytorch(net, onnx_path, inputs, atol):
    """Largest |ONNX Runtime - PyTorch| over the inputs; raises if beyond atol."""
    _, ort = import_onnx()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for name, x in inputs:
        with torch.inference_mode():
            ref = net(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        diff = float(np.abs(got - ref).max())
        worst = max(worst, diff)
        print(f"check {name}: batch {x.shape[0]}, largest difference {diff:.2e}")
    if worst > atol:
        raise UserError(f"ONNX output differs from PyTorch by {worst:.2e} (> --atol {atol}); the export is wrong "
                        "and was not kept")
    return worst


def main(args):
    onnx, _ = import_onnx()
    # Settle everything first: weights, classes, both outputs.
    weights = default_weights(args)
    classes = read_class_indices(args.class_indices or "./class_indices.json")
    state_dict = read_state_dict(weights, "trained weights")
    out = Path(args.out or Path(weights).with_suffix(".onnx"))
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out}: give a file name ending in .onnx")
    labels = out.parent / "labels.txt"
    labels_text = ("\n".join(classes) + "\n").encode()
    check_output(out, "ONNX file", overwrite=args.overwrite)
    check_output(labels, "labels file", overwrite=args.overwrite, same_content=labels_text)
    net = build_model(args.model, num_classes=len(classes))
    load_trained_weights(net, args.model, state_dict, weights, args.class_indices or "./class_indices.json")
    net = (WithSoftmax(net) if args.softmax else net).eval()
    inputs = check_inputs(args.img_size, args.check_images)

    # Export to a temporary file; it becomes `out` only once ONNX Runtime agrees with PyTorch.
    with atomic_path(out) as tmp:
        export_onnx(net, tmp, args.img_size, args.opset, "probs" if args.softmax else "logits")
        onnx.checker.check_model(onnx.load(str(tmp)))
        worst = compare_with_pytorch(net, tmp, inputs, args.atol)
    atomic_write_bytes(labels, labels_text)
    print(f"exported {out} (opset {args.opset}, dynamic batch) and {labels}")
    print(f"ONNX Runtime matches PyTorch (largest difference {worst:.2e})")
    return out, worst


if __name__ == "__main__":
    run_cli(main, get_args_parser())
