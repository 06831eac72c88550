"""ONNX and TensorRT: what an ONNX file carries (ModelInfo), the ONNX Runtime session, its providers,
TensorRT's engine cache, and the export. torch is imported only by the export functions: --onnx
prediction needs only requirements-deploy.txt."""
import collections
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

from helpers import classnames, cli, files, imaging, memory

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
TRT, CPU = PROVIDERS["tensorrt"], PROVIDERS["cpu"]
META_VERSION = "1"
# Bounds on what is read from an ONNX file's metadata, checked before any of it is used: the file is
# input like any other, and one long name took minutes to draw. An export writes a few kB, and up to
# 1 MB more in `trained_on` (the train set's fingerprint).
META_MAX_BYTES = 4 * 2**20  # all keys and values together
META_MAX_CLASSES = 100_000  # ImageNet-21k has 21,843
META_MAX_FIELD = 200  # characters of each field read as a number, a list of three or a short name:
META_SMALL = ("metadata_version", "img_size", "resize", "mean", "std", "architecture", "val_accuracy", "val_images",
              "fp32_val_accuracy", "int8_for")
META_KEYS = ("metadata_version", "classes", "img_size")  # any of these says "export_onnx.py wrote it"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What export_onnx.py writes into an ONNX file's metadata: all that prediction needs, and the accuracy."""
    classes: list
    img_size: int
    mean: tuple = imaging.MEAN
    std: tuple = imaging.STD
    architecture: str = None
    val_accuracy: float = None  # top-1 on val/ as a fraction, when the export measured it
    val_images: int = None
    fp32_val_accuracy: float = None  # an INT8 file: the fp32 model's, on the same images
    int8_for: str = None  # an INT8 file: "cpu" or "tensorrt"
    trained_on: str = None  # the train set's fingerprint (reports.trained_on), for evaluate.py

    def to_metadata(self):
        """{key: text} for onnx.helper.set_model_props: plain text, JSON for the lists."""
        meta = {"metadata_version": META_VERSION, "classes": json.dumps(list(self.classes)),
                "img_size": str(self.img_size), "resize": str(int(round(self.img_size / 0.875))),
                "mean": json.dumps(list(self.mean)), "std": json.dumps(list(self.std))}
        for key in ("architecture", "val_accuracy", "val_images", "fp32_val_accuracy", "int8_for", "trained_on"):
            value = getattr(self, key)
            if value is not None:
                meta[key] = f"{value:.6f}" if isinstance(value, float) else str(value)
        return meta

    @classmethod
    def from_metadata(cls, meta, path):
        """The ModelInfo in a file's metadata, or None (an older export); damaged metadata is refused."""
        if not any(key in meta for key in META_KEYS):
            return None
        small = [k for k in META_SMALL if len(meta.get(k, "")) > META_MAX_FIELD]
        if small:  # int() of a long number takes quadratic time in Python 3.8, holding the interpreter
            raise cli.UserError(f"{path} holds damaged metadata ({small[0]} is {len(meta[small[0]])} characters "
                                "long); export it again with export_onnx.py")
        try:
            # Numbers among the classes are read as floats (a long int() takes minutes) and refused below.
            classes = json.loads(meta["classes"], parse_int=float, parse_constant=float)
            mean, std = (tuple(float(v) for v in json.loads(meta.get(k, json.dumps(d))))
                         for k, d in (("mean", imaging.MEAN), ("std", imaging.STD)))
            img_size = int(meta["img_size"])

            def number(key, kind):
                return kind(meta[key]) if key in meta else None
            resize = number("resize", int)  # only written for other programs, but damage all the same
            info = cls(classes=classes, img_size=img_size, mean=mean, std=std, architecture=meta.get("architecture"),
                       val_accuracy=number("val_accuracy", float), val_images=number("val_images", int),
                       fp32_val_accuracy=number("fp32_val_accuracy", float), int8_for=meta.get("int8_for"),
                       trained_on=meta.get("trained_on"))
        except (KeyError, ValueError, TypeError, RecursionError) as e:
            raise cli.UserError(f"{path} holds damaged metadata ({type(e).__name__}: {cli.first_line(e, 80)}); "
                                "export it again with export_onnx.py") from None
        if (not isinstance(classes, list) or not classes or len(mean) != 3 or len(std) != 3
                or not all(1e-3 <= s <= 1e3 for s in std) or not all(-1e3 <= m <= 1e3 for m in mean)
                or not 16 <= img_size <= 1024):
            raise cli.UserError(f"{path} holds damaged metadata (classes, img_size, mean or std out of range); "
                                "export it again with export_onnx.py")
        wrong = [key for key, bad in (
            ("metadata_version", meta.get("metadata_version", META_VERSION) != META_VERSION),
            ("int8_for", info.int8_for not in (None, "cpu", "tensorrt")),
            ("resize", resize is not None and not img_size <= resize <= 2 * img_size),
            ("val_accuracy", info.val_accuracy is not None and not 0 <= info.val_accuracy <= 1),
            ("fp32_val_accuracy", info.fp32_val_accuracy is not None and not 0 <= info.fp32_val_accuracy <= 1),
            ("val_images", info.val_images is not None and info.val_images < 1)) if bad]
        if wrong:
            raise cli.UserError(f"{path} holds damaged metadata ({wrong[0]} is {meta[wrong[0]]!r}, where "
                                f"metadata_version {META_VERSION} allows no such value); export it again with "
                                "export_onnx.py")
        if len(classes) > META_MAX_CLASSES:
            raise cli.UserError(f"{path} holds damaged metadata: {len(classes)} classes, more than "
                                f"{META_MAX_CLASSES:,}; export it again with export_onnx.py")
        classnames.check_class_names(classes, f"{path} holds damaged metadata")
        return info


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise cli.UserError("--onnx needs ONNX Runtime: pip install onnxruntime (onnxruntime-gpu on a GPU; "
                            "see requirements-deploy.txt)") from None
    return onnxruntime


def new_session(path, providers):
    """An ONNX Runtime session of the file, or one line saying why there is none."""
    if files.model_kind(path) == "PyTorch weights":  # ONNX Runtime would only say that protobuf parsing failed
        raise cli.UserError(f"{path} is not an ONNX model: it is PyTorch weights (a .pth written by torch.save); "
                            "pass it with --weights, or make an ONNX file of it with export_onnx.py")
    ort = import_onnxruntime()
    ort.set_default_logger_severity(3)  # its warnings are not the user's business: errors come as one line
    options = ort.SessionOptions()
    # Without spinning, ONNX Runtime's threads leave the cores to the decoding processes between
    # operators; this was measured to make whole runs faster.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:
        raise cli.UserError(f"{path} is not a usable ONNX model: {cli.first_line(e)}") from None


def read_metadata(session, path):
    """The metadata of a session's ONNX file as {key: text}, or one line saying that it is damaged or
    larger than an export writes (META_MAX_BYTES)."""
    try:
        meta = session.get_modelmeta().custom_metadata_map
    except UnicodeDecodeError as e:  # ONNX Runtime gives its bytes to Python as UTF-8 text
        raise cli.UserError(f"{path} holds damaged metadata (bytes that are not UTF-8 text: {e.reason} at "
                            f"byte {e.start}); export it again with export_onnx.py") from None
    try:
        import onnx
    except ImportError:  # ONNX Runtime gives a dict, the last of a repeated key: only onnx sees the list
        onnx = None
    if onnx is not None:
        try:
            keys = collections.Counter(p.key for p in onnx.load(str(path), load_external_data=False).metadata_props)
        except Exception as e:
            raise cli.UserError(f"{path} is not a usable ONNX model: {cli.first_line(e)}") from None
        twice = sorted(k for k, n in keys.items() if n > 1)
        if twice:
            raise cli.UserError(f"{path} holds damaged metadata ({twice[0][:80]!r} is there {keys[twice[0]]} times); "
                                "export it again with export_onnx.py")
    size = sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in meta.items())
    if size > META_MAX_BYTES:
        raise cli.UserError(f"{path} holds damaged metadata: {size / 2**20:.1f} MB of text, more than the "
                            f"{META_MAX_BYTES // 2**20} MB an export writes; export it again with export_onnx.py")
    return meta


def metadata(path):
    """An ONNX file's metadata as {key: value}, read by ONNX Runtime on the CPU."""
    return read_metadata(new_session(path, [CPU]), path)


def model_info(path):
    """The ModelInfo of an ONNX file, or None when it carries none."""
    return ModelInfo.from_metadata(metadata(path), path)


def open_model(path, provider):
    """(session or None, metadata) of an ONNX file. With TensorRT the session is made later by
    predictor(): its options need the input size and INT8 flavour that the metadata holds."""
    names = provider_names(provider)
    if TRT in names:
        return None, metadata(path)
    session = new_session(path, names)
    return session, read_metadata(session, path)


def provider_names(provider):
    """The providers asked for (with the CPU after them), or the best that ONNX Runtime offers (auto)."""
    available = import_onnxruntime().get_available_providers()
    if provider == "auto":
        return [PROVIDERS[p] for p in ("tensorrt", "cuda", "cpu") if PROVIDERS[p] in available]
    if PROVIDERS[provider] not in available:
        raise cli.UserError(f"--provider {provider}: this onnxruntime offers {', '.join(available)}; install "
                            "onnxruntime-gpu (built with TensorRT for --provider tensorrt) or use --provider cpu")
    return [PROVIDERS[provider]] + ([CPU] if provider != "cpu" else [])


def quantized_for(path, meta=None):
    """None for a float model; for a QDQ INT8 model, "tensorrt" when every QuantizeLinear is signed
    (TensorRT runs those), else "cpu" (unsigned activations, which TensorRT cannot run)."""
    flavour = (metadata(path) if meta is None else meta).get("int8_for")
    if flavour in ("cpu", "tensorrt"):  # what export_onnx.py --int8 wrote
        return flavour
    try:
        import onnx
    except ImportError:  # a deployment machine may have onnxruntime only: the graph cannot be read
        return "tensorrt" if b"QuantizeLinear" in Path(path).read_bytes() else None
    graph = onnx.load(str(path), load_external_data=False).graph
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    if not quantize:
        return None
    zero_types = {t.name: t.data_type for t in graph.initializer}

    def zero_point_type(node):  # no zero point means uint8, says the ONNX standard
        return zero_types.get(node.input[2]) if len(node.input) > 2 and node.input[2] else onnx.TensorProto.UINT8

    return "cpu" if any(zero_point_type(n) == onnx.TensorProto.UINT8 for n in quantize) else "tensorrt"


def onnx_providers(provider, path, trt_cache=None, img_size=None, max_batch=None, meta=None):
    """The provider list for ONNX Runtime, with TensorRT's options: fp16, INT8 for a QDQ model, one
    shape profile for every batch up to max_batch, and an engine cache named by the model's content."""
    names = provider_names(provider)
    int8 = quantized_for(path, meta) if TRT in names else None
    if int8 == "cpu":
        why = (f"{path} is the CPU flavour of INT8 (unsigned activations), which TensorRT cannot run; "
               "export_onnx.py --int8 tensorrt makes one it can")
        if provider == "tensorrt":
            raise cli.UserError(why + ", or use the fp32 file")
        names.remove(TRT)
        print(f"note: {why}; using {names[0]}", file=sys.stderr)
    if TRT not in names:
        return names
    options = {"trt_fp16_enable": True, "trt_int8_enable": int8 == "tensorrt"}  # QDQ scales: no calibration table
    if img_size and max_batch:
        # Without a range TensorRT builds a new engine for every new batch size (the last, partial one).
        shape = f"x3x{img_size}x{img_size}"
        options.update(trt_profile_min_shapes=f"input:1{shape}", trt_profile_opt_shapes=f"input:{max_batch}{shape}",
                       trt_profile_max_shapes=f"input:{max_batch}{shape}")
    root = Path(trt_cache or Path(path).with_suffix(".trt_cache"))
    options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_engine_folder(path, root, options)),
                   # Tactic timings depend on the GPU and the layers, not the weights: one for every model here.
                   trt_timing_cache_enable=True, trt_timing_cache_path=str(root))
    return [(TRT, options) if name == TRT else name for name in names]


ENGINE_FOLDER = re.compile(r"^[0-9a-f]{16}$")  # the cache folders trt_engine_folder makes: nothing else is pruned
ENGINE_MARK = "model.json"


def trt_engine_folder(path, root, options):
    """The folder of `root` for this model's engines, named by a hash of the file and the options (ONNX
    Runtime names an engine by the file's name only). Folders of gone or older models are removed."""
    content = files.file_sha256(path)
    key = hashlib.sha256((content + json.dumps(options, sort_keys=True)).encode()).hexdigest()
    folder, me = Path(root) / key[:16], os.path.realpath(path)
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


def softmax(logits):
    with np.errstate(all="ignore"):  # logits that overflowed give NaN here, which the caller refuses in one line
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def predictor(p):
    """(predict, a line saying what runs it): ONNX Runtime's predictor for an inference.Prediction."""
    path, n = p.onnx, len(p.classes)
    session = p.session or new_session(path, onnx_providers(p.provider, path, p.trt_cache, p.img_size,
                                                            p.batch_size, p.metadata))
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    if inp.type != "tensor(float)" or len(inp.shape) != 4:
        raise cli.UserError(f"{path} takes {inp.type} of {len(inp.shape)} dimensions; export_onnx.py's models take "
                            "float images (N, 3, H, W)")
    if isinstance(inp.shape[-1], int) and inp.shape[-1] != p.img_size:
        raise cli.UserError(f"{path} takes {inp.shape[-1]} px images; pass --img-size {inp.shape[-1]}")

    def predict(batch):
        try:
            y = session.run([out.name], {inp.name: imaging.normalize(batch, p.mean, p.std)})[0]
        except Exception as e:  # ONNX Runtime's own errors: a model of another shape than it says
            if memory.is_out_of_memory(e):
                raise  # memory.HalvingPredictor halves the batch
            raise cli.UserError(f"{path}: ONNX Runtime failed: {cli.first_line(e, 200)}") from None
        if y.ndim != 2 or y.shape[1] != n:
            raise cli.UserError(f"{path} gave outputs of shape {y.shape}, not (images, {n} classes)")
        return y if out.name == "probs" else softmax(y.astype(np.float32))

    return predict, f"ONNX Runtime ({', '.join(session.get_providers())})"


def _torchscript():
    # The TorchScript exporter: it needs no onnxscript and gives the plain graph TensorRT expects.
    import inspect

    import torch
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def newest_opset(asked):
    """The newest opset, up to `asked`, that this torch exports. torch keeps its limit private, so a
    one-layer model is tried at each opset, with stdout (where torch prints failures) sent to /dev/null."""
    import contextlib
    import io
    import warnings

    import torch

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), warnings.catch_warnings():
            os.dup2(null.fileno(), 1)
            warnings.simplefilter("ignore")
            for opset in range(asked, 6, -1):
                try:
                    torch.onnx.export(torch.nn.ReLU(), torch.zeros(1, 1), io.BytesIO(), opset_version=opset,
                                      **_torchscript())
                    return opset
                except (RuntimeError, ValueError):
                    continue
        return None
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(net, out, img_size, opset=17, output_name="logits"):
    """torch.onnx.export with a dynamic batch, input `input`, output `output_name`."""
    import warnings

    import torch

    net.eval()
    example = torch.randn(1, 3, img_size, img_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, str(out), input_names=["input"], output_names=[output_name],
                          dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, **_torchscript())
