"""Export trained weights to ONNX (dynamic batch), check it against PyTorch with ONNX Runtime.

    python export_onnx.py --model resnet34 --weights resNet34.pth --out resNet34.onnx
    trtexec --onnx=resNet34.onnx --fp16 --saveEngine=resNet34.engine     # on a Jetson / TensorRT

Input `input` (N, 3, H, W), normalised as in training; output `logits`, or `probs` with --softmax.
labels.txt beside the file holds the class names, one per line, in output order.
"""
import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from common import (UserError, build_model, default_save_path, eval_transform, list_images, load_rgb,
                    load_trained_weights, read_class_indices, read_state_dict, run_cli)
from model import MODELS


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Export trained weights to ONNX and check the result", add_help=add_help)
    p.add_argument("--model", default="resnet34", choices=list(MODELS), help="architecture (default: %(default)s)")
    p.add_argument("--weights", default=None, help="trained weights (default: ./resNet34.pth, after the model)")
    p.add_argument("--class-indices", default="./class_indices.json", help="(default: %(default)s)")
    p.add_argument("--img-size", type=int, default=224, help="input size of the check and the example shape (default: %(default)s)")
    p.add_argument("--out", default=None, help="ONNX file (default: the weights' name with .onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--softmax", action="store_true", help="put the softmax in the graph: output probabilities")
    p.add_argument("--check-images", default="data/imgs", help="real images for the check, when there (default: %(default)s)")
    p.add_argument("--atol", type=float, default=1e-3, help="largest difference allowed (default: %(default)s)")
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


def export(net, out, img_size, opset, output_name):
    net.eval()
    example = torch.randn(1, 3, img_size, img_size)
    # The TorchScript exporter: it needs no onnxscript and gives the plain graph TensorRT expects.
    kwargs = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, example, str(out), input_names=["input"], output_names=[output_name],
                          dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, **kwargs)


def check(net, out, inputs, atol):
    """Largest |ONNX Runtime - PyTorch| over the inputs; raises if beyond atol."""
    _, ort = import_onnx()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for name, x in inputs:
        with torch.inference_mode():
            ref = net(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        diff = float(np.abs(got - ref).max())
        worst = max(worst, diff)
        print(f"check {name}: batch {x.shape[0]}, largest difference {diff:.2e}")
    if worst > atol:
        raise UserError(f"ONNX output differs from PyTorch by {worst:.2e} (> --atol {atol}); the export is wrong")
    return worst


def main(args):
    onnx, _ = import_onnx()
    weights = args.weights or default_save_path(args.model)
    classes = read_class_indices(args.class_indices)
    net = build_model(args.model, num_classes=len(classes))
    load_trained_weights(net, args.model, read_state_dict(weights, "trained weights"), weights, args.class_indices)
    net = (WithSoftmax(net) if args.softmax else net).eval()
    out = Path(args.out or Path(weights).with_suffix(".onnx"))
    out.parent.mkdir(parents=True, exist_ok=True)
    export(net, out, args.img_size, args.opset, "probs" if args.softmax else "logits")
    onnx.checker.check_model(onnx.load(str(out)))
    (out.parent / "labels.txt").write_text("\n".join(classes) + "\n")
    print(f"exported {out} (opset {args.opset}, dynamic batch) and {out.parent / 'labels.txt'}")

    torch.manual_seed(0)
    inputs = [("random", torch.randn(3, 3, args.img_size, args.img_size))]
    tf, real = eval_transform(args.img_size), []
    for p in list_images(args.check_images) if Path(args.check_images).is_dir() else []:
        try:
            real.append(tf(load_rgb(p)))
        except UserError:
            continue  # an unreadable file is no reason to fail the export
        if len(real) == 8:
            break
    if real:
        inputs.append((f"{len(real)} images of {args.check_images}", torch.stack(real)))
    worst = check(net, out, inputs, args.atol)
    print(f"ONNX Runtime matches PyTorch (largest difference {worst:.2e})")
    return out, worst


if __name__ == "__main__":
    run_cli(main, get_args_parser())
