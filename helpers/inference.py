"""Prediction, shared by predict.py, batch_predict.py, export_onnx.py and benchmark.py: the model
flags, the class names and input size (from an ONNX file's metadata when it has them), decoding in
a process pool, the PyTorch and the ONNX Runtime predictors (TensorRT's engine cache keyed to the
model's content), BatchNorm folding and the ONNX export.

torch is imported inside the functions that need it, never at the top: with --onnx, prediction
runs on a machine that has only onnxruntime, pillow and numpy (requirements-deploy.txt).
"""
import collections
import concurrent.futures.process
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import unicodedata
from pathlib import Path

import numpy as np

from helpers import cli, files, imaging, memory, stop

# model.MODELS, by name: kept here so that the ONNX path need not import torch (a test keeps the
# two lists equal).
MODEL_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d")
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


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
    p.add_argument("--provider", default="auto", choices=("auto",) + tuple(PROVIDERS),
                   help="ONNX Runtime execution provider; auto takes TensorRT, then CUDA, then CPU, "
                        "as ONNX Runtime offers them (default: %(default)s)")
    p.add_argument("--trt-cache", default=None, metavar="DIR",
                   help="TensorRT engine cache (default: <onnx file>.trt_cache/ beside it)")
    p.add_argument("--workers", type=cli.workers_arg, default=None,
                   help="decoding processes; 0 decodes in the main process (default: cpus - 1, at most 4)")
    return p


UNKNOWN = "unknown"


def add_min_prob_arg(p):
    """--min-prob: a classifier always picks one of its classes, even for a photo of none of them."""
    p.add_argument("--min-prob", type=cli.float_in(0, 1), default=None, metavar="P",
                   help="report an image whose top probability is below P as 'unknown' (a classifier always picks "
                        "one of its classes, also for a photo of none of them) (default: off)")
    return p


def shown_class(name, prob, min_prob):
    """The class to report: the top one, or 'unknown' below --min-prob."""
    return UNKNOWN if min_prob is not None and prob < min_prob else name


def default_weights(args):
    from helpers import weights

    return args.weights or weights.default_save_path(args.model or DEFAULT_MODEL)


DEFAULT_MODEL = "resnet34"


def resolve_classes(args):
    """Class names and where they came from; also settles args.img_size and args.model (None: not
    given).

    The model file first: what it carries is used, and a --class-indices, --img-size or --model that
    contradicts it is refused in one line naming both. An ONNX file that export_onnx.py made carries
    its classes and input size (ModelInfo); the weights that train.py saves carry their classes,
    input size and architecture (weights.TrainedWith). A file that carries none (the tutorial's own
    .pth, an older export) works as before: --class-indices, else the class file beside the model
    (the labels.txt that export_onnx.py wrote, the class_indices.json of the weights' run), which wins
    over a ./class_indices.json that may be another run's; and --img-size (default 224)."""
    onnx_file = getattr(args, "onnx", None)
    if onnx_file:  # the model first: a wrong --onnx is the problem to name, not a missing class file
        files.need_file(onnx_file, "ONNX file", "make it with export_onnx.py")
        info = model_info(onnx_file)
        held = info and (info.classes, info.img_size, None)
        model_path = onnx_file
    else:
        need_torch()  # the weights are read with torch: without it, one line, not an ImportError
        from helpers import weights

        model_path = default_weights(args)
        files.need_file(model_path, "trained weights", "train.py writes them; pass --weights to point at them")
        info = weights.read_weights(model_path, "trained weights")[1]
        held = info and (info.classes, info.img_size, info.architecture)
    if held:
        classes, img_size, architecture = held
        if args.img_size is not None and args.img_size != img_size:
            raise cli.UserError(f"--img-size {args.img_size} contradicts {model_path}, which was "
                                f"{'exported for' if onnx_file else 'trained on'} {img_size} px images; "
                                "leave --img-size out")
        if architecture and args.model and args.model != architecture:
            raise cli.UserError(f"--model {args.model} contradicts {model_path}, which holds {architecture} weights; "
                                "leave --model out")
        args.img_size, args.model = img_size, args.model or architecture or DEFAULT_MODEL
        if args.class_indices:
            check_same_classes(files.read_class_indices(args.class_indices), args.class_indices, classes, model_path)
        return classes, f"{model_path} ({'its metadata' if onnx_file else 'what it was trained with'})"
    args.model = args.model or DEFAULT_MODEL
    if args.img_size is None:
        args.img_size = 224
    if args.class_indices:
        return files.read_class_indices(args.class_indices), args.class_indices
    if onnx_file:
        for labels in (Path(onnx_file).with_suffix(".labels.txt"), Path(onnx_file).with_name("labels.txt")):
            if labels.exists():
                files.need_file(labels, "labels file")
                return files.read_labels(labels), str(labels)
    else:  # the class file that the weights' run wrote beside them, before one here that may be another run's
        beside = Path(model_path).with_name("class_indices.json")
        if beside.is_file() and beside.resolve() != Path(files.CLASS_INDICES).resolve():
            return files.read_class_indices(beside), str(beside)
    return files.read_class_indices(files.CLASS_INDICES), files.CLASS_INDICES


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


# ---------------------------------------------------------------- what an ONNX file carries

META_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What export_onnx.py writes into an ONNX file's metadata (metadata_props): all that
    prediction needs beside the file, and where it was checked."""
    classes: list
    img_size: int
    mean: tuple = imaging.MEAN
    std: tuple = imaging.STD
    architecture: str = None
    val_accuracy: float = None  # top-1 on val/ when the export measured it (a fraction), else None
    val_images: int = None
    fp32_val_accuracy: float = None  # an INT8 file: the fp32 model's, on the same images
    int8_for: str = None  # an INT8 file: "cpu" or "tensorrt"

    def to_metadata(self):
        """{key: text} for onnx.helper.set_model_props: plain text, JSON for the lists."""
        meta = {"metadata_version": META_VERSION, "classes": json.dumps(list(self.classes)),
                "img_size": str(self.img_size), "resize": str(int(round(self.img_size / 0.875))),
                "mean": json.dumps(list(self.mean)), "std": json.dumps(list(self.std))}
        for key in ("architecture", "val_accuracy", "val_images", "fp32_val_accuracy", "int8_for"):
            value = getattr(self, key)
            if value is not None:
                meta[key] = f"{value:.6f}" if isinstance(value, float) else str(value)
        return meta

    @classmethod
    def from_metadata(cls, meta, path):
        """The ModelInfo in a file's metadata; None when it has none (a file made before export_onnx.py
        wrote it, or elsewhere); a UserError naming the file when it is damaged."""
        if "classes" not in meta:
            return None
        try:
            classes = json.loads(meta["classes"])
            mean, std = (tuple(float(v) for v in json.loads(meta.get(k, json.dumps(d))))
                         for k, d in (("mean", imaging.MEAN), ("std", imaging.STD)))
            img_size = int(meta["img_size"])

            def number(key, kind):
                return kind(meta[key]) if key in meta else None
            info = cls(classes=classes, img_size=img_size, mean=mean, std=std, architecture=meta.get("architecture"),
                       val_accuracy=number("val_accuracy", float), val_images=number("val_images", int),
                       fp32_val_accuracy=number("fp32_val_accuracy", float), int8_for=meta.get("int8_for"))
        except (KeyError, ValueError, TypeError, RecursionError) as e:
            raise cli.UserError(f"{path} holds damaged metadata ({type(e).__name__}: {cli.first_line(e, 80)}); "
                                "export it again with export_onnx.py") from None
        if (not isinstance(classes, list) or not classes or len(mean) != 3 or len(std) != 3
                or not all(1e-3 <= s <= 1e3 for s in std) or not all(-1e3 <= m <= 1e3 for m in mean)
                or not 16 <= img_size <= 1024):
            raise cli.UserError(f"{path} holds damaged metadata (classes, img_size, mean or std out of range); "
                                "export it again with export_onnx.py")
        files.check_class_names(classes, f"{path}'s metadata")
        return info


def model_info(path):
    """The ModelInfo of an ONNX file, or None when it carries none."""
    return ModelInfo.from_metadata(read_metadata(path), path)


def read_metadata(path):
    """An ONNX file's metadata_props as {key: value}, read without the onnx package and without
    loading the model: ModelProto's top-level fields are walked in the file and the graph (all but
    a few bytes of it) is skipped over. ONNX Runtime's InferenceSession(...).get_modelmeta() gives
    the same map (a test checks it) but loads the whole model first: 0.12-0.28 s for resnet34 here,
    against a one-image --onnx prediction of 0.6-0.75 s. {} for a file that is not ONNX."""
    props = {}
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while f.tell() < size:
                tag = _varint(f)
                field, wire = tag >> 3, tag & 7
                if wire == 0:
                    _varint(f)
                elif wire in (1, 5):
                    f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
                elif wire == 2:
                    n = _varint(f)
                    if field == 14:  # metadata_props: StringStringEntryProto {1: key, 2: value}
                        entry = _fields(f.read(n))
                        props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
                    else:
                        f.seek(n, os.SEEK_CUR)
                else:
                    return {}  # groups, or not protobuf at all
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return props


def _varint(f):
    shift = value = 0
    while True:
        byte = f.read(1)
        if not byte or shift > 63:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7


def _fields(data):
    """The length-delimited fields of a small message, by number."""
    import io
    f, out = io.BytesIO(data), {}
    while f.tell() < len(data):
        tag = _varint(f)
        if tag & 7 != 2:
            raise ValueError("unexpected field")
        n = _varint(f)
        out[tag >> 3] = f.read(n)
    return out


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


def default_workers(n_images, batch_size):
    # A process pool costs more than it saves for one batch.
    return 0 if n_images <= batch_size else min(4, max(1, (os.cpu_count() or 2) - 1))


def decode_batches(paths, img_size=224, batch_size=16, workers=None):
    """Yields (indices, uint8 NHWC batch, errors) for consecutive batches of paths, in order.
    Batches are decoded in a pool of processes, at most two per worker ahead of the consumer, so
    memory stays bounded however many images there are."""
    jobs = [[(i, paths[i]) for i in range(s, min(s + batch_size, len(paths)))] for s in range(0, len(paths), batch_size)]
    if workers is None:
        workers = default_workers(len(paths), batch_size)
    if workers == 0:
        for job in jobs:
            yield decode_batch(job, img_size)
        return
    # concurrent.futures, not multiprocessing.Pool: a worker killed by the kernel (the out-of-memory
    # killer, on a Jetson) breaks this pool with an error, where a Pool waits for its lost batch for
    # ever; and a result that cannot be sent back comes back as its error, not as a page of pixels.
    pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=stop.ignore_in_worker)
    pending = collections.deque()
    try:
        for job in jobs:
            pending.append(pool.submit(decode_batch, job, img_size))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except concurrent.futures.process.BrokenProcessPool:  # from a result, or from the next submit
        raise cli.UserError(f"a decoding process was killed (by the system's out-of-memory killer?); pass --workers 0 "
                            f"(it was {workers}) or a smaller --batch-size") from None
    finally:  # done, stopped early, Ctrl-C: the batches not started are dropped, not decoded
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def softmax(logits):
    with np.errstate(all="ignore"):  # logits that overflowed give NaN here, which the caller refuses in one line
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def predict_paths(paths, predictor, img_size=224, batch_size=16, workers=None):
    """Yields (path, class probabilities or None, error) for every path, in the order given.
    (load_predictor's predictors halve their batch when memory runs out.)"""
    for indices, batch, errors in decode_batches(paths, img_size, batch_size, workers):
        results = {i: (None, e) for i, e in errors}
        if indices:
            for i, p in zip(indices, predictor(batch)):
                results[i] = (p, "")
        for i in sorted(results):
            yield paths[i], results[i][0], results[i][1]


# ---------------------------------------------------------------- the predictors

def load_predictor(args, num_classes, class_source=None, torch_model=None):
    """A function from a uint8 NHWC batch to float32 class probabilities, and a one-line
    description of what runs it; after resolve_classes (which settles args.img_size). When memory
    runs out, the function halves its batch and goes on (memory.HalvingPredictor). torch_model:
    (net, device) from load_torch_model, when the caller needs the net too (predict.py --cam), so
    the weights are read once."""
    if args.onnx:
        predictor, runs_on = onnx_predictor(args.onnx, num_classes, args.img_size, args.provider, args.trt_cache,
                                            getattr(args, "batch_size", 16))
    else:
        predictor, runs_on = torch_predictor(args, *(torch_model or load_torch_model(args, num_classes, class_source)))
    halving = memory.HalvingPredictor(predictor)
    model_path = args.onnx or default_weights(args)

    def predict(batch):
        probs = halving(batch)
        if not np.isfinite(probs).all():  # weights that are numbers can still overflow: never "prob: nan"
            raise cli.UserError(overflow_line(model_path))
        return probs
    return predict, runs_on


def overflow_line(path):
    """Weights that are all numbers whose outputs are not: the line of prediction, export, --eval-only."""
    return (f"{path} gives NaN or infinite outputs (its weights overflow: the run that made them diverged); train "
            "again with a lower --lr")


def need_torch():
    """Prediction with PyTorch on a machine that has none: one line that says what to do instead."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise cli.UserError("prediction with PyTorch needs torch (pip install -r requirements.txt); on a machine "
                            "without it, predict with --onnx FILE (export_onnx.py makes it)") from None


def load_torch_model(args, num_classes, class_source=None):
    """The trained net as prediction runs it: BatchNorm folded, in eval mode, on --device,
    channels-last where devices.channels_last says (--channels-last, --no-channels-last). Returns (net, device)."""
    need_torch()
    from helpers import devices, weights

    device = devices.select_device(args.device)
    weights_path = default_weights(args)
    state_dict = weights.read_state_dict(weights_path, "trained weights")
    weights.check_num_classes(state_dict, num_classes, weights_path, class_source)
    net = weights.build_model(args.model, num_classes=num_classes)
    weights.load_trained_weights(net, args.model, state_dict, weights_path, class_source)
    net = fold_batchnorm(net.eval()).requires_grad_(False)  # prediction needs no weight gradients, Grad-CAM neither
    fmt = devices.memory_format(devices.channels_last(device, args.channels_last))
    return net.to(device, memory_format=fmt), device


def torch_predictor(args, net, device):
    import torch

    from helpers import devices

    fmt = devices.memory_format(devices.channels_last(device, args.channels_last))
    dtype = devices.amp_dtype(device, args.amp_dtype)
    mean = torch.tensor(imaging.MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(imaging.STD, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def predict(batch):
        # NHWC uint8 to the device, then permuted: the float NCHW view is channels-last already.
        x = torch.from_numpy(batch).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = x.sub_(mean).div_(std).contiguous(memory_format=fmt)
        with devices.autocast(device, dtype):
            logits = net(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    return predict, f"PyTorch on {device}, mixed precision {devices.dtype_name(dtype)}"


def fold_batchnorm(net):
    """Fold each eval-mode BatchNorm into the conv before it: the same function, one pass less
    over every activation (about 8% faster on a CPU)."""
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


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise cli.UserError("--onnx needs ONNX Runtime: pip install onnxruntime (onnxruntime-gpu on a GPU; "
                        "see requirements-deploy.txt)") from None
    return onnxruntime


# export_onnx.py --int8 records which flavour it made in the model's metadata ("int8_for": "cpu" or
# "tensorrt"). This is that entry as protobuf writes it (key, then value), for a machine without the
# onnx package, where the graph cannot be read.
INT8_MARK = {flavour: b"\n\x08int8_for\x12" + bytes([len(flavour)]) + flavour.encode() for flavour in ("cpu", "tensorrt")}


def quantized_for(model_path):
    """None for a float model; for a QDQ INT8 model, "tensorrt" when every QuantizeLinear is signed
    (TensorRT runs those), else "cpu" (unsigned activations: ONNX Runtime's fast CPU flavour, which
    TensorRT cannot run)."""
    flavour = read_metadata(model_path).get("int8_for")
    if flavour in ("cpu", "tensorrt"):  # what export_onnx.py --int8 wrote
        return flavour
    try:
        import onnx
    except ImportError:  # a deployment machine may have onnxruntime only: read the bytes
        data = Path(model_path).read_bytes()
        if b"QuantizeLinear" not in data:
            return None
        return "cpu" if INT8_MARK["cpu"] in data else "tensorrt"
    graph = onnx.load(str(model_path), load_external_data=False).graph
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    if not quantize:
        return None
    zero_types = {t.name: t.data_type for t in graph.initializer}

    def zero_point_type(node):  # no zero point means uint8, says the ONNX standard
        return zero_types.get(node.input[2]) if len(node.input) > 2 and node.input[2] else onnx.TensorProto.UINT8

    unsigned = any(zero_point_type(n) == onnx.TensorProto.UINT8 for n in quantize)
    return "cpu" if unsigned else "tensorrt"


def onnx_providers(provider, model_path, trt_cache=None, img_size=None, max_batch=None):
    """The provider list for ONNX Runtime: the one asked for, or the best it offers (auto).
    img_size and max_batch give TensorRT its input range, so it builds one engine for every batch.
    TensorRT's engines are kept in a folder of the cache named by the model's content and these
    options (trt_engine_folder): a model exported again under the same name never meets the
    engine of the one before."""
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if provider == "auto":
        names = [PROVIDERS[p] for p in ("tensorrt", "cuda", "cpu") if PROVIDERS[p] in available]
    else:
        if PROVIDERS[provider] not in available:
            raise cli.UserError(f"--provider {provider}: this onnxruntime offers {', '.join(available)}; install "
                            "onnxruntime-gpu (built with TensorRT for --provider tensorrt) or use --provider cpu")
        names = [PROVIDERS[provider]] + (["CPUExecutionProvider"] if provider != "cpu" else [])
    trt = PROVIDERS["tensorrt"]
    int8 = quantized_for(model_path) if trt in names else None  # read only where it matters: it costs a parse
    if int8 == "cpu":
        why = (f"{model_path} is the CPU flavour of INT8 (unsigned activations), which TensorRT cannot run; "
               "export_onnx.py --int8 tensorrt makes one it can")
        if provider == "tensorrt":
            raise cli.UserError(why + ", or use the fp32 file")
        names.remove(trt)
        print(f"note: {why}; using {names[0]}", file=sys.stderr)
    providers = []
    for name in names:
        if name != trt:
            providers.append(name)
            continue
        options = {
            "trt_fp16_enable": True,
            "trt_int8_enable": int8 == "tensorrt",  # the QDQ scales come from the model: no calibration table
        }
        if img_size and max_batch:
            # Without a range TensorRT builds a new engine whenever a batch is larger or smaller than
            # any before (the last, partial one): minutes each on a Jetson.
            shape = f"x3x{img_size}x{img_size}"
            options.update(trt_profile_min_shapes=f"input:1{shape}", trt_profile_opt_shapes=f"input:{max_batch}{shape}",
                           trt_profile_max_shapes=f"input:{max_batch}{shape}")
        root = Path(trt_cache or Path(model_path).with_suffix(".trt_cache"))
        options.update({
            "trt_engine_cache_enable": True,  # the engine is built once, then loaded (seconds, not minutes)
            "trt_engine_cache_path": str(trt_engine_folder(model_path, root, options)),
            # Tactic timings depend on the GPU and the layers, not the weights: shared by every model in the cache.
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(root),
        })
        providers.append((name, options))
    return providers


ENGINE_FOLDER = re.compile(r"^[0-9a-f]{16}$")  # the cache folders trt_engine_folder makes: nothing else is pruned
ENGINE_MARK = "model.json"


def content_key(model_path, options):
    """(sha256 of the file's bytes, sha256 of those and the TensorRT options that shape an engine)."""
    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    content = h.hexdigest()
    return content, hashlib.sha256((content + json.dumps(options, sort_keys=True)).encode()).hexdigest()


def trt_engine_folder(model_path, root, options):
    """The folder of `root` for this model's TensorRT engines: named by a hash of the file's bytes
    and of the options (fp16, int8, the shape profile). ONNX Runtime names an engine by the model's
    file name, its input and node names and the library versions, not by its weights: given one
    folder for every version of a file, it would load the engine of a model exported before under
    the same name. The same file finds its folder, and its engine, again.

    Each folder holds model.json (the model's path, its hash, the options). Folders of models that
    are gone, and of this file's former contents, are removed here (pruned): a Jetson's storage is
    small and engines are tens of MB. Hashing costs about 0.1-0.3 s for resnet34's 85 MB."""
    content, key = content_key(model_path, options)
    folder = Path(root) / key[:16]
    me = os.path.realpath(model_path)
    try:
        if not (folder / ENGINE_MARK).is_file():
            folder.mkdir(parents=True, exist_ok=True)
            files.atomic_write_text(folder / ENGINE_MARK, json.dumps(
                {"model": me, "sha256": content, "options": options}, indent=2) + "\n")
        prune_engine_folders(root, folder, me, content)
    except OSError as e:
        raise cli.UserError(f"cannot keep TensorRT's engine cache in {folder}: {cli.describe_os_error(e)}; "
                            "--trt-cache DIR keeps it elsewhere") from None
    return folder


def prune_engine_folders(root, keep, model, content):
    """Remove the engine folders of `root` whose model is gone, or is `model` with other content."""
    for entry in sorted(Path(root).iterdir()):
        if entry == keep or not ENGINE_FOLDER.match(entry.name) or not (entry / ENGINE_MARK).is_file():
            continue
        try:
            mark = json.loads((entry / ENGINE_MARK).read_text(encoding="utf-8"))
            owner, built_from = mark["model"], mark["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to judge
        if not os.path.exists(owner):
            why = f"{owner} is gone"
        elif owner == model and built_from != content:
            why = f"built for an earlier {Path(model).name}"
        else:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        print(f"note: removed the TensorRT engine cache {entry} ({why})", file=sys.stderr)


def onnx_predictor(path, num_classes, img_size, provider="auto", trt_cache=None, batch_size=16):
    """Like torch_predictor, with ONNX Runtime: PyTorch is not imported. The input is normalised
    with the mean and std the file holds (the ImageNet ones for a file without metadata)."""
    ort = import_onnxruntime()
    files.need_file(path, "ONNX file", "make it with export_onnx.py")
    info = model_info(path)
    mean, std = (info.mean, info.std) if info else (imaging.MEAN, imaging.STD)
    providers = onnx_providers(provider, path, trt_cache, img_size, batch_size)
    ort.set_default_logger_severity(3)  # its warnings are not the user's business: errors come as one line
    try:
        options = ort.SessionOptions()
        # ONNX Runtime's threads spin between operators by default, taking the cores that the decoding
        # processes need: 20% less CPU time and 10-20% faster whole runs here without it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:
        raise cli.UserError(f"{path} is not a usable ONNX model: {cli.first_line(e)}") from None
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    if inp.type != "tensor(float)" or len(inp.shape) != 4:
        raise cli.UserError(f"{path} takes {inp.type} of {len(inp.shape)} dimensions; export_onnx.py's models take "
                        "float images (N, 3, H, W)")
    if isinstance(out.shape[-1], int) and out.shape[-1] != num_classes:
        raise cli.UserError(f"{path} outputs {out.shape[-1]} classes but the class names list {num_classes}")
    if isinstance(inp.shape[-1], int) and inp.shape[-1] != img_size:
        raise cli.UserError(f"{path} takes {inp.shape[-1]} px images; pass --img-size {inp.shape[-1]}")
    probs = out.name == "probs"

    def predict(batch):
        try:
            y = session.run([out.name], {inp.name: imaging.normalize(batch, mean, std)})[0]
        except Exception as e:  # ONNX Runtime's own errors: a model of another shape than it says
            if memory.is_out_of_memory(e):
                raise  # the HalvingPredictor around this one halves the batch
            raise cli.UserError(f"{path}: ONNX Runtime failed: {cli.first_line(e, 200)}") from None
        if y.ndim != 2 or y.shape[1] != num_classes:
            raise cli.UserError(f"{path} gave outputs of shape {y.shape}, not (images, {num_classes} classes)")
        return y if probs else softmax(y.astype(np.float32))

    return predict, f"ONNX Runtime ({', '.join(session.get_providers())})"


# ---------------------------------------------------------------- ONNX export

def max_onnx_opset():
    """The newest opset the installed torch's TorchScript exporter writes (None: unknown). Asked
    before exporting: torch prints its whole graph to stdout when given one beyond it."""
    from torch.onnx import _constants  # private, but the exporter's own limit; guarded below

    return getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", None))


def export_onnx(net, out, img_size, opset=17, output_name="logits"):
    """torch.onnx.export with a dynamic batch, input `input`, output `output_name`."""
    import inspect
    import warnings

    import torch

    net.eval()
    example = torch.randn(1, 3, img_size, img_size)
    # The TorchScript exporter: it needs no onnxscript and gives the plain graph TensorRT expects.
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, str(out), input_names=["input"], output_names=[output_name],
                          dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, **kwargs)
