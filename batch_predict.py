"""Predict every image in a folder, in batches, with trained weights (or an ONNX file).

    python batch_predict.py                          # data/imgs, batches of 5
    python batch_predict.py photos/ --recursive --topk 3 --csv out.csv
    python batch_predict.py photos/ --onnx resNet34.onnx
"""
import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from common import (IMG_EXTENSIONS, UserError, amp_dtype, autocast, build_model, default_save_path,
                    eval_transform, list_images, load_rgb, load_trained_weights, need_dir,
                    read_class_indices, read_state_dict, run_cli, select_device)
from model import MODELS


def add_model_args(p):
    """The flags predict.py and batch_predict.py share."""
    p.add_argument("--model", default="resnet34", choices=list(MODELS), help="architecture (default: %(default)s)")
    p.add_argument("--weights", default=None, help="trained weights (default: ./resNet34.pth, after the model)")
    p.add_argument("--class-indices", default="./class_indices.json", help="(default: %(default)s)")
    p.add_argument("--img-size", type=int, default=224, help="crop size; resize to img-size/0.875 (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--no-amp", action="store_true", help="run in fp32 (default: bf16/fp16 where the hardware has it)")
    p.add_argument("--no-channels-last", action="store_true", help="keep the NCHW memory format")
    p.add_argument("--onnx", default=None, metavar="PATH", help="run this ONNX file with ONNX Runtime instead")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cpus - 1, at most 4)")
    return p


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Predict every image of a folder", add_help=add_help)
    p.add_argument("folder", nargs="?", default="data/imgs", help="folder of images (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=5, help="images per batch (default: %(default)s)")
    p.add_argument("--recursive", action="store_true", help="include images in sub-folders")
    p.add_argument("--topk", type=int, default=1, help="classes to report per image (default: %(default)s)")
    p.add_argument("--csv", default=None, metavar="PATH", help="write path, top-k classes and probabilities")
    return add_model_args(p)


# ---------------------------------------------------------------- inference, shared with predict.py

class ImagePaths(Dataset):
    """Decodes and resizes in DataLoader workers; an unreadable file comes back as its error."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.transform(load_rgb(self.paths[i])), ""
        except UserError as e:
            return i, None, str(e)


def _collate(batch):
    good = [(i, t) for i, t, _ in batch if t is not None]
    errors = [(i, e) for i, t, e in batch if t is None]
    images = torch.stack([t for _, t in good]) if good else torch.empty(0)
    return [i for i, _ in good], images, errors


def load_predictor(args, num_classes):
    """A function from a batch of normalised images to class probabilities (float32, CPU)."""
    if args.onnx:
        return onnx_predictor(args.onnx, num_classes)
    device = select_device(args.device)
    weights = args.weights or default_save_path(args.model)
    net = build_model(args.model, num_classes=num_classes)
    load_trained_weights(net, args.model, read_state_dict(weights, "trained weights"), weights, args.class_indices)
    memory_format = torch.preserve_format if args.no_channels_last else torch.channels_last
    net = fold_batchnorm(net.eval()).to(device, memory_format=memory_format)
    amp = None if args.no_amp else amp_dtype(device)

    @torch.inference_mode()
    def predict(images):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        with autocast(device, amp):
            logits = net(images)
        return torch.softmax(logits.float(), dim=1).cpu()

    return predict


def fold_batchnorm(net):
    """Fold each eval-mode BatchNorm into the conv before it: the same function, one pass less
    over every activation (about 8% faster on a CPU)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for m in net.modules():
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            if isinstance(getattr(m, bn, None), nn.BatchNorm2d) and hasattr(m, conv):
                setattr(m, conv, fuse_conv_bn_eval(getattr(m, conv), getattr(m, bn)))
                setattr(m, bn, nn.Identity())
        if isinstance(getattr(m, "downsample", None), nn.Sequential) and len(m.downsample) == 2:
            m.downsample = nn.Sequential(fuse_conv_bn_eval(m.downsample[0], m.downsample[1]))
    return net


def onnx_predictor(path, num_classes):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("--onnx needs ONNX Runtime: pip install onnxruntime (onnxruntime-gpu on a GPU)") from None
    if not Path(path).is_file():
        raise UserError(f"ONNX file not found: {path}; make it with export_onnx.py")
    providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in ort.get_available_providers()]
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as e:
        raise UserError(f"{path} is not a usable ONNX model: {str(e).splitlines()[0]}") from None
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    if out.shape[-1] != num_classes:
        raise UserError(f"{path} outputs {out.shape[-1]} classes but the class-index file lists {num_classes}")

    def predict(images):
        y = torch.from_numpy(session.run([out.name], {inp.name: images.numpy()})[0])
        return y if out.name == "probs" else torch.softmax(y.float(), dim=1)

    return predict


def predict_paths(paths, predict, img_size=224, batch_size=5, workers=None):
    """Yields (path, probabilities or None, error) for every path, in the order given."""
    if workers is None:
        # Worker start-up costs more than it saves for a single batch.
        workers = 0 if len(paths) <= batch_size else min(4, max(1, (os.cpu_count() or 2) - 1))
    loader = DataLoader(ImagePaths(paths, eval_transform(img_size)), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate, pin_memory=torch.cuda.is_available())
    for indices, images, errors in loader:
        results = {i: (None, e) for i, e in errors}
        if indices:
            for i, p in zip(indices, predict(images)):
                results[i] = (p, "")
        for i in sorted(results):
            yield paths[i], results[i][0], results[i][1]


def classes_for(args):
    """Class names from class_indices.json, or the labels.txt written beside an ONNX file."""
    labels = Path(args.onnx).with_name("labels.txt") if args.onnx else None
    if labels and labels.is_file() and not Path(args.class_indices).is_file():
        return labels.read_text().splitlines()
    return read_class_indices(args.class_indices)


# ---------------------------------------------------------------- the script

def main(args):
    if args.batch_size < 1 or args.topk < 1:
        raise UserError("--batch-size and --topk must be at least 1")
    folder = need_dir(args.folder, "image folder")
    paths = list_images(folder, args.recursive)
    if not paths:
        raise UserError(f"no images in {folder} (looked for {' '.join(IMG_EXTENSIONS)}"
                        f"{'' if args.recursive else '; --recursive looks in sub-folders'})")
    classes = classes_for(args)
    predict = load_predictor(args, len(classes))
    topk = min(args.topk, len(classes))
    rows, skipped = [], []
    start = time.perf_counter()
    for path, probs, error in predict_paths(paths, predict, args.img_size, args.batch_size, args.workers):
        if probs is None:
            skipped.append((path, error))
            print(f"skipped: {error}", file=sys.stderr)
            continue
        top_p, top_i = probs.topk(topk)
        pairs = [(classes[i], p) for i, p in zip(top_i.tolist(), top_p.tolist())]
        line = f"image: {path}  class: {pairs[0][0]}  prob: {pairs[0][1]:.3}"
        if topk > 1:
            line += "  (" + ", ".join(f"{c}: {p:.3}" for c, p in pairs[1:]) + ")"
        print(line)
        rows.append((str(path), pairs))
    seconds = time.perf_counter() - start
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path"] + [h for k in range(1, topk + 1)
                                   for h in ((f"class_{k}", f"prob_{k}") if k > 1 else ("class", "prob"))])
            for path, pairs in rows:
                w.writerow([path] + [x for c, p in pairs for x in (c, f"{p:.6f}")])
    print(f"predicted {len(rows)} images, skipped {len(skipped)}"
          f"{' (unreadable: ' + ', '.join(str(p) for p, _ in skipped) + ')' if skipped else ''}"
          f", {len(rows) / max(seconds, 1e-9):.1f} images/s" + (f"; wrote {args.csv}" if args.csv else ""))
    return rows, skipped


if __name__ == "__main__":
    run_cli(main, get_args_parser())
