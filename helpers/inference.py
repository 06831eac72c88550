"""Prediction for every script that predicts: the model flags, settle() (settings made once), decoding
in a process pool, and the PyTorch predictor. helpers/deploy.py runs ONNX files.
torch is imported only where needed: prediction without it was measured to start much faster.
"""
import collections
import concurrent.futures.process
import dataclasses
import multiprocessing
import os
import unicodedata
from pathlib import Path

import numpy as np

from helpers import classnames, cli, deploy, files, imaging, memory, stop

# model.MODELS by name, kept here so that the ONNX path need not import torch (a test keeps them equal).
MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d")
DEFAULT_MODEL = "resnet34"
UNKNOWN = "unknown"


def add_model_args(p):
    """The flags every prediction script shares."""
    p.add_argument("--model", default=None, choices=MODEL_NAMES,
                   help="architecture (default: the one the weights were trained as, else resnet34)")
    p.add_argument("--weights", default=None, help="trained weights (default: ./resNet34.pth, after the model)")
    p.add_argument("--class-indices", default=None,
                   help="class-index file (default: the classes the weights or the ONNX file carry; for a file "
                        "without them, the class_indices.json or labels.txt beside it, else ./class_indices.json)")
    p.add_argument("--img-size", type=cli.img_size_arg, default=None,
                   help="crop size; images are resized to img-size/0.875 first (default: the size the weights or "
                        "the ONNX file were trained on, else 224)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    return p


def add_runtime_args(p):
    """How predict.py and batch_predict.py run the model."""
    # The same flags and settings as train.py's: --no-amp is --amp-dtype none.
    p.add_argument("--no-amp", dest="amp_dtype", action="store_const", const="none", default="auto",
                   help="run in fp32 (default: bf16/fp16 where the hardware has it)")
    p.add_argument("--channels-last", dest="channels_last", action="store_const", const=True, default="auto",
                   help="NHWC memory format even where auto leaves it off (default: auto, on where it is measured "
                        "to help: CPUs, GPUs with tensor cores)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False,
                   help="keep the NCHW memory format")
    p.add_argument("--onnx", default=None, metavar="PATH",
                   help="run this ONNX file with ONNX Runtime instead (PyTorch is then not imported)")
    p.add_argument("--provider", default="auto", choices=("auto",) + tuple(deploy.PROVIDERS),
                   help="ONNX Runtime execution provider; auto takes TensorRT, then CUDA, then CPU, "
                        "as ONNX Runtime offers them (default: %(default)s)")
    p.add_argument("--trt-cache", default=None, metavar="DIR",
                   help="TensorRT engine cache (default: <onnx file>.trt_cache/ beside it)")
    p.add_argument("--workers", type=cli.workers_arg, default=None,
                   help="decoding processes; 0 decodes in the main process (default: cpus - 1, at most 4)")
    return p


def add_min_prob_arg(p):
    p.add_argument("--min-prob", type=cli.float_in(0, 1), default=None, metavar="P",
                   help="report an image whose top probability is below P as 'unknown' (a classifier always picks "
                        "one of its classes, also for a photo of none of them) (default: off)")
    return p


def shown_class(name, prob, min_prob):
    """The class to report: the top one, or 'unknown' below --min-prob."""
    return UNKNOWN if min_prob is not None and prob < min_prob else name


# ---------------------------------------------------------------- settled once

@dataclasses.dataclass(frozen=True)
class Prediction:
    """What prediction runs with, made once by settle() before any work."""
    model: str  # the architecture PyTorch builds
    weights: str  # the trained weights; None with --onnx
    onnx: str  # the ONNX file; None with PyTorch
    classes: list
    class_source: str  # where the classes came from, for error lines
    img_size: int
    mean: tuple = imaging.MEAN
    std: tuple = imaging.STD
    device: str = "auto"
    amp_dtype: str = "auto"
    channels_last: object = "auto"
    provider: str = "auto"
    trt_cache: str = None
    batch_size: int = 16
    workers: int = None
    trained_on: str = None  # the fingerprint of the images the model trained on, when its file carries one
    metadata: dict = dataclasses.field(default=None, compare=False, repr=False)  # the ONNX file's
    session: object = dataclasses.field(default=None, compare=False, repr=False)  # its ONNX Runtime session

    @property
    def model_file(self):
        return self.onnx or self.weights


def settle(args, batch_size=None):
    """The checked Prediction of a script's flags. What the model file carries wins, and a flag that
    contradicts it is refused in one line; a file that carries nothing takes the flags, else the defaults."""
    flags = vars(args)
    onnx_file = flags.get("onnx")
    run = dict(device=flags.get("device", "auto"), amp_dtype=flags.get("amp_dtype", "auto"),
               channels_last=flags.get("channels_last", "auto"), provider=flags.get("provider", "auto"),
               trt_cache=flags.get("trt_cache"), batch_size=batch_size or flags.get("batch_size", 16),
               workers=flags.get("workers"))
    if onnx_file:  # the model first: a wrong --onnx is the problem to name, not a missing class file
        files.need_file(onnx_file, "ONNX file", "make it with export_onnx.py")
        session, meta = deploy.open_model(onnx_file, run["provider"])
        info = deploy.ModelInfo.from_metadata(meta, onnx_file)
        model_path, architecture = str(onnx_file), None
        run.update(onnx=model_path, weights=None, metadata=meta, session=session)
        if info:
            run.update(mean=info.mean, std=info.std)
    else:
        try:
            from helpers import weights  # it reads the weights with torch
        except ImportError:
            raise cli.UserError("prediction with PyTorch needs torch (pip install -r requirements.txt); on a machine "
                                "without it, predict with --onnx FILE (export_onnx.py makes it)") from None

        model_path = str(args.weights or weights.default_save_path(args.model or DEFAULT_MODEL))
        files.need_file(model_path, "trained weights", "train.py writes them; pass --weights to point at them")
        info = weights.read_weights(model_path, "trained weights")[1]
        architecture = info and info.architecture
        run.update(onnx=None, weights=model_path)
    if info:
        if args.img_size is not None and args.img_size != info.img_size:
            raise cli.UserError(f"--img-size {args.img_size} contradicts {model_path}, which was "
                                f"{'exported for' if onnx_file else 'trained on'} {info.img_size} px images; "
                                "leave --img-size out")
        if architecture and args.model and args.model != architecture:
            raise cli.UserError(f"--model {args.model} contradicts {model_path}, which holds {architecture} weights; "
                                "leave --model out")
        if args.class_indices:
            check_same_classes(classnames.read_class_indices(args.class_indices, given=True), args.class_indices, info.classes,
                               model_path)
        classes = info.classes
        source = f"{model_path} ({'its metadata' if onnx_file else 'what it was trained with'})"
    else:
        classes, source = classes_beside(args.class_indices, model_path, onnx_file)
    if len(classes) < 2:  # its softmax is 1.0 for every image, whatever --min-prob says
        raise cli.UserError(f"{source} holds one class ({classes[0]}): such a model calls every image "
                            f"{classes[0]} with probability 1; train it on two classes or more")
    return Prediction(model=args.model or architecture or DEFAULT_MODEL, classes=classes, class_source=source,
                      img_size=info.img_size if info else args.img_size or 224,
                      trained_on=info.trained_on if info else None, **run)


def classes_beside(class_indices, model_path, onnx_file):
    """(classes, source) for a model file that carries none: --class-indices, else the class file beside
    the model (not a ./class_indices.json that may be another run's), else ./class_indices.json."""
    if class_indices:
        return classnames.read_class_indices(class_indices, given=True), class_indices
    if onnx_file:
        for labels in (Path(onnx_file).with_suffix(".labels.txt"), Path(onnx_file).with_name("labels.txt")):
            if labels.exists():
                files.need_file(labels, "labels file")
                return classnames.read_labels(labels), str(labels)
    else:
        beside = Path(model_path).with_name("class_indices.json")
        if beside.is_file() and beside.resolve() != Path(classnames.CLASS_INDICES).resolve():
            return classnames.read_class_indices(beside), str(beside)
    return classnames.read_class_indices(classnames.CLASS_INDICES), classnames.CLASS_INDICES


def check_same_classes(given, source, held, model_path):
    """A class-index file given beside a model file that carries its classes must say the same."""
    if given == held:
        return

    def shown(names):
        return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    if len(given) != len(held):
        raise cli.UserError(f"{source} lists {len(given)} classes ({shown(given)}) but {model_path} holds "
                            f"{len(held)} ({shown(held)}); leave --class-indices out: the model file carries its own")
    i = next(i for i, (a, b) in enumerate(zip(given, held)) if a != b)
    forms = " (the same letters in two Unicode forms, NFC and NFD)" if \
        unicodedata.normalize("NFC", given[i]) == unicodedata.normalize("NFC", held[i]) else ""
    raise cli.UserError(f"{source} names class {i} {given[i]!r} but {model_path} holds {held[i]!r} there{forms}; leave "
                        "--class-indices out: the model file carries its own")


# ---------------------------------------------------------------- decoding

def decode_batch(paths, img_size):
    """(indices of the readable images, their crops as uint8 NHWC, [(index, error)])."""
    transform = imaging.EvalTransform(img_size)
    good, crops, errors = [], [], []
    for i, path in paths:
        try:
            with imaging.open_image(path) as img:
                crops.append(np.asarray(transform.resize_crop(img)))
            good.append(i)
        except cli.UserError as e:
            errors.append((i, str(e)))
    batch = np.stack(crops) if crops else np.zeros((0, img_size, img_size, 3), np.uint8)
    return good, batch, errors


def decode_batches(paths, img_size=224, batch_size=16, workers=None):
    """Yields (indices, uint8 NHWC batch, errors) for consecutive batches of paths, in order, decoded
    in a pool of processes at most two batches per worker ahead, so memory stays bounded."""
    # Not torch's DataLoader: prediction without torch was measured to start much faster.
    jobs = [[(i, paths[i]) for i in range(s, min(s + batch_size, len(paths)))] for s in range(0, len(paths), batch_size)]
    if workers is None:  # a process pool costs more than it saves for one batch
        workers = 0 if len(paths) <= batch_size else min(4, max(1, (os.cpu_count() or 2) - 1))
    if workers == 0:
        for job in jobs:
            yield decode_batch(job, img_size)
        return
    # concurrent.futures, not multiprocessing.Pool: a worker killed by the out-of-memory killer breaks
    # this pool with an error, where a Pool would wait for its lost batch for ever.
    before = set(multiprocessing.active_children())
    pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=stop.ignore_in_worker)
    pending = collections.deque()
    try:
        for job in jobs:
            pending.append(pool.submit(decode_batch, job, img_size))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except concurrent.futures.process.BrokenProcessPool:
        raise cli.UserError(f"a decoding process was killed (by the system's out-of-memory killer?); pass --workers 0 "
                            f"(it was {workers}) or a smaller --batch-size") from None
    except BaseException:  # a stop, an error, or no more batches wanted: the pool's processes end now, for
        # shutdown() would wait for the batches they decode (seconds for large images), and a stop acts within one.
        for child in set(multiprocessing.active_children()) - before:
            child.terminate()
        raise
    finally:  # done, stopped early or interrupted: the batches not started are dropped
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def predict_paths(paths, predictor, p):
    """Yields (path, class probabilities or None, error) for every path, in the order given."""
    for indices, batch, errors in decode_batches(paths, p.img_size, p.batch_size, p.workers):
        results = {i: (None, e) for i, e in errors}
        if indices:
            for i, probs in zip(indices, predictor(batch)):
                results[i] = (probs, "")
        for i in sorted(results):
            yield paths[i], results[i][0], results[i][1]


# ---------------------------------------------------------------- the predictors

def load_predictor(p, torch_model=None, warm_up=False):
    """(predict, a line saying what runs it): predict maps a uint8 NHWC batch to class probabilities and
    halves its batch when memory runs out. torch_model: (net, device), when the caller needs the net too.
    warm_up: predict one black image first (TensorRT builds its engine, CUDA and oneDNN pick their kernels)."""
    if p.onnx:
        predictor, runs_on = deploy.predictor(p)
    else:
        predictor, runs_on = torch_predictor(p, *(torch_model or load_torch_model(p)))
    halving = memory.HalvingPredictor(predictor)

    def predict(batch):
        probs = halving(batch)
        if not np.isfinite(probs).all():  # weights that are numbers can still overflow: never "prob: nan"
            raise cli.UserError(overflow_line(p.model_file))
        return probs
    if warm_up:
        predict(np.zeros((1, p.img_size, p.img_size, 3), np.uint8))
    return predict, runs_on


def overflow_line(path):
    return (f"{path} gives NaN or infinite outputs (its weights overflow: the run that made them diverged); train "
            "again with a lower --lr")


def load_torch_model(p):
    """(net, device): the trained net in eval mode, BatchNorm folded, on the device."""
    from helpers import devices, weights

    device = devices.select_device(p.device)
    state_dict = weights.read_state_dict(p.weights, "trained weights")
    weights.check_num_classes(state_dict, len(p.classes), p.weights, p.class_source)
    net = weights.build_model(p.model, num_classes=len(p.classes))
    weights.load_trained_weights(net, p.model, state_dict, p.weights, p.class_source)
    net = fold_batchnorm(net.eval()).requires_grad_(False)  # prediction needs no weight gradients, Grad-CAM neither
    return net.to(device, memory_format=devices.memory_format(devices.channels_last(device, p.channels_last))), device


def torch_predictor(p, net, device):
    import torch

    from helpers import devices

    fmt = devices.memory_format(devices.channels_last(device, p.channels_last))
    dtype = devices.amp_dtype(device, p.amp_dtype)
    mean = torch.tensor(p.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(p.std, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def predict(batch):
        # uint8 NHWC goes to the device first, then is permuted: the float NCHW view is channels-last already.
        x = torch.from_numpy(batch).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = x.sub_(mean).div_(std).contiguous(memory_format=fmt)
        with devices.autocast(device, dtype):
            logits = net(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    return predict, f"PyTorch on {device}, mixed precision {devices.dtype_name(dtype)}"


def fold_batchnorm(net):
    """Each eval-mode BatchNorm folded into the conv before it: one pass less over every activation."""
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for m in net.modules():
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            if isinstance(getattr(m, bn, None), nn.BatchNorm2d) and hasattr(m, conv):
                setattr(m, conv, fuse_conv_bn_eval(getattr(m, conv), getattr(m, bn)))
                setattr(m, bn, nn.Identity())
        if isinstance(getattr(m, "downsample", None), nn.Sequential) and len(m.downsample) == 2:
            m.downsample = nn.Sequential(fuse_conv_bn_eval(m.downsample[0], m.downsample[1]))
    return net
