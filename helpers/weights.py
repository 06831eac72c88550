"""Weight files: building a model of model.py, reading a file safely (weights_only), the classes and
input size a run's weights carry, the checks that a file fits the model, and torchvision's ImageNet files."""
import collections
import dataclasses
import re
import warnings
from pathlib import Path

import torch

import model as model_lib
from helpers import classnames, cli, downloads, files


def default_save_path(model_name):
    """The tutorial's ./resNet34.pth, following the model's name for the others."""
    return "./" + model_name.replace("resnet", "resNet").replace("resnext", "resNeXt") + ".pth"


def build_model(name, num_classes=1000, include_top=True):
    if name not in model_lib.MODELS:
        raise cli.UserError(f"unknown model {name!r}; choose one of {', '.join(model_lib.MODELS)}")
    return model_lib.MODELS[name](num_classes=num_classes, include_top=include_top)


def strip_wrapper_prefix(state_dict):
    """Keys saved from DistributedDataParallel or torch.compile start with 'module.' or '_orig_mod.'."""
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in state_dict.items()}


def torch_load(path, what):
    """torch.load with weights_only=True: a file of tensors loads, a pickle that runs code does not."""
    files.need_file(path, what)
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip (a pickle before torch 1.6): anything else is named before torch reads it.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        onnx = ("; it is an ONNX model, which predict.py, batch_predict.py, evaluate.py and video_predict.py "
                "run with --onnx") if files.model_kind(path) == "an ONNX model" else ""
        raise cli.UserError(f"{path} is not a PyTorch weights file (a .pth written by torch.save): "
                            f"it is neither a zip nor a pickle{onnx}")
    try:
        with warnings.catch_warnings():  # torch 2.0 warns about its own TypedStorage here, on stderr
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean "not a weights file"
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            reason = "it holds Python objects beyond tensors, and loading those could run code: refused"
        else:
            first = cli.first_line(e)
            reason = first if len(first) > 12 else "neither a zip nor a pickle of tensors"
        raise cli.UserError(f"{path} is not a PyTorch weights file: {reason}") from None


def read_state_dict(path, what="weights file"):
    return read_weights(path, what)[0]


def read_weights(path, what="weights file"):
    """(state_dict, TrainedWith or None) of a plain weights file or of a training checkpoint's 'model'."""
    obj = torch_load(path, what)
    held = trained_with(obj, path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise cli.UserError(f"{path} does not hold a state_dict of tensors")
    state_dict = strip_wrapper_prefix(obj)
    # The record and the tensors must agree, or neither can be believed.
    if held and held.architecture and _backbone(state_dict) != _model_backbone(held.architecture):
        other = guess_architecture(state_dict)
        raise cli.UserError(f"{path} is damaged: it says it holds {held.architecture} weights, but its tensors are "
                            f"{other or 'of an unknown model'}'s; use the weights train.py wrote")
    return state_dict, held


# ---------------------------------------------------------------- what trained weights carry

# A run's weights carry the classes, input size and architecture they were trained with, in the
# state_dict's _metadata beside torch's module versions: torch.save and torch.load keep it, and
# load_state_dict ignores it, so the tutorial's net.load_state_dict(torch.load(path)) still works.
INFO_KEY = "flower_classification"


@dataclasses.dataclass(frozen=True)
class TrainedWith:
    classes: list
    img_size: int
    architecture: str = None
    trained_on: str = None  # the train set's fingerprint (reports.trained_on), for evaluate.py


def with_info(state_dict, held):
    """The state_dict, carrying `held` (a TrainedWith) in its _metadata."""
    if not isinstance(getattr(state_dict, "_metadata", None), dict):
        state_dict = collections.OrderedDict(state_dict)
        state_dict._metadata = collections.OrderedDict()
    state_dict._metadata[INFO_KEY] = {"version": 1, "classes": list(held.classes), "img_size": int(held.img_size),
                                      "architecture": held.architecture, "trained_on": held.trained_on}
    return state_dict


def trained_with(obj, path):
    """What a weights file or a checkpoint says it was trained with, or None (the tutorial's files).
    A damaged record is refused: it can be neither trusted nor ignored."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "classes" in obj:  # a checkpoint
        raw = {"classes": obj.get("classes"), "img_size": obj.get("img_size"), "architecture": obj.get("model_name"),
               "trained_on": obj.get("trained_on")}
    else:
        raw = (getattr(obj, "_metadata", None) or {}).get(INFO_KEY)
        if raw is None:
            return None
    classes, img_size, arch, trained_on = (raw.get(k) if isinstance(raw, dict) else None
                                           for k in ("classes", "img_size", "architecture", "trained_on"))
    if (not isinstance(classes, list) or not classes or type(img_size) is not int or not 16 <= img_size <= 1024
            or arch not in (None, *model_lib.MODELS) or not isinstance(trained_on, (str, type(None)))):
        raise cli.UserError(f"{path} holds a damaged record of what it was trained with (classes, image size, "
                            "architecture); use the weights file train.py wrote")
    classnames.check_class_names(classes, f"{path}'s record of its classes")
    return TrainedWith(classes=classes, img_size=img_size, architecture=arch, trained_on=trained_on)


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _backbone(state_dict):
    return {k: s for k, s in _shapes(state_dict).items() if not k.startswith("fc.")}


def _model_backbone(name):
    with torch.device("meta"):  # shapes without memory
        return _backbone(build_model(name).state_dict())


def guess_architecture(state_dict):
    """The model in model.py whose parameter names and shapes (fc aside) match, or None."""
    found = _backbone(state_dict)
    return next((name for name in model_lib.MODELS if _model_backbone(name) == found), None)


def check_architecture(net, model_name, state_dict, path):
    """One line naming what was expected and what was found, when a file is of another model."""
    ref = _shapes(net.state_dict())
    found = _shapes(state_dict)
    backbone_ok = all(found.get(k) == s for k, s in ref.items() if not k.startswith("fc."))
    extra = [k for k in found if k not in ref]
    if backbone_ok and not extra:
        return
    other = guess_architecture(state_dict)
    if backbone_ok and other in (None, model_name):  # the model's own weights, and more (resnet34's hold resnet18's)
        raise cli.UserError(f"{path} holds {model_name} weights and also {', '.join(extra[:3])}, which {model_name} has "
                            "not: it was edited, or is another repo's variant; use the weights train.py wrote")
    what = f"{other} weights" if other else "weights of an unknown model"
    hint = f"pass --model {other}" if other else "check the file"
    raise cli.UserError(f"{path} holds {what}, but --model is {model_name}; {hint}")


def num_classes_of(state_dict):
    w = state_dict.get("fc.weight")
    return None if w is None or w.dim() != 2 else w.shape[0]


def check_head(state_dict, in_features, path):
    """fc.weight of [classes, in_features] and fc.bias of [classes] (load_state_dict's own error is a page)."""
    w, b = state_dict.get("fc.weight"), state_dict.get("fc.bias")
    if (w is None or b is None or w.dim() != 2 or in_features not in (None, w.shape[1])
            or tuple(b.shape) != (w.shape[0],)):
        def shape(x):
            return "missing" if x is None else "x".join(map(str, x.shape))
        raise cli.UserError(f"{path} holds no whole classifier layer of this model (fc.weight {shape(w)}, fc.bias "
                            f"{shape(b)}; it needs [classes x {in_features or 'features'}] and [classes]): use the weights train.py "
                            "wrote, or check --model")


def check_num_classes(state_dict, num_classes, path, class_source=None):
    """One output per class name; checked before the model is built (a million names are no model to build)."""
    n, bias = num_classes_of(state_dict), state_dict.get("fc.bias")
    if n is None or (bias is not None and tuple(bias.shape) != (n,)):  # no fc, or a transposed or edited one
        check_head(state_dict, None, path)
    if n != num_classes:
        source = f"{class_source} lists" if class_source else "the model has"
        raise cli.UserError(f"{path} was trained for {n} classes but {source} {num_classes}; "
                            "use the class_indices.json written by the same training run")


def non_finite(state_dict):
    """The names of the tensors holding NaN or infinity."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def check_trained_with(held, path, *, img_size, classes, data_path):
    """--eval-only measures the weights at the size and on the classes they were trained with, or not at all."""
    if held and held.img_size != img_size:
        raise cli.UserError(f"{path} was trained on {held.img_size} px images, not --img-size {img_size}: "
                            f"pass --img-size {held.img_size}")
    if held and held.classes != classes:
        raise cli.UserError(f"{path} was trained on the classes {held.classes}, but {data_path} has {classes}")


def check_finite(state_dict, path):
    bad = non_finite(state_dict)
    if bad:
        raise cli.UserError(f"{path} holds NaN or infinite weights ({bad[0]}{' and more' if len(bad) > 1 else ''}): "
                            "the run that made them diverged; train again with a lower --lr")


def load_trained_weights(net, model_name, state_dict, path, class_source=None):
    """Trained weights of the model's architecture and class count, and numbers, loaded into net."""
    check_architecture(net, model_name, state_dict, path)
    check_head(state_dict, net.fc.in_features, path)
    check_num_classes(state_dict, net.fc.out_features, path, class_source)
    ints = [k for k, v in net.state_dict().items() if v.is_floating_point() and not state_dict[k].is_floating_point()]
    if ints:  # load_state_dict would copy them in, truncated: every image the same class
        raise cli.UserError(f"{path} holds whole numbers where weights are fractions ({ints[0]} is "
                            f"{state_dict[ints[0]].dtype}): it was edited or damaged; use the weights train.py wrote")
    check_finite(state_dict, path)
    net.load_state_dict(state_dict)
    return net


def load_backbone(net, state_dict):
    """The tutorial's second way: every weight but fc's, with strict=False. Returns (missing, unexpected)."""
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    return net.load_state_dict(backbone, strict=False)


def load_pretrained(net, model_name, state_dict, path, verbose=True):
    """Starting weights: the backbone loads; an fc of another class count is dropped."""
    check_architecture(net, model_name, state_dict, path)
    head = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.startswith("fc.")}
    if all(k in state_dict and tuple(state_dict[k].shape) == s for k, s in head.items()):
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
    else:
        missing, unexpected = load_backbone(net, state_dict)
    if verbose:
        print(f"loaded {path}: missing keys {missing}, unexpected keys {unexpected}")
    return net


# ---------------------------------------------------------------- ImageNet files

def imagenet_url(model_name):
    """torchvision's IMAGENET1K_V1 file for the model (the V2 files want another val resize)."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(model_name).IMAGENET1K_V1.url
    except (ValueError, KeyError, AttributeError):
        raise cli.UserError(f"no ImageNet weights known for {model_name!r}") from None


def imagenet_cache_path(url):
    return Path(torch.hub.get_dir()) / "checkpoints" / downloads.url_file_name(url)


def hash_prefix(path):
    """The start of the SHA-256 that torch.hub's file names carry (resnet34-b627a593.pth)."""
    m = re.search(r"-([a-f0-9]{6,})\.", Path(path).name)
    return m.group(1) if m else None


def check_hash_prefix(path):
    """A file copied into the hub cache by hand (the offline way) must match the hash its name promises."""
    expected = hash_prefix(path)
    if expected and not files.file_sha256(path).startswith(expected):
        raise cli.UserError(f"{path} is not the file its name says (its SHA-256 does not start with {expected}): "
                            "a wrong or damaged copy")
    return Path(path)


def read_imagenet(model_name, url=None, progress=True):
    """The state_dict of torchvision's ImageNet file for the model (or of --url's), from the torch hub
    cache, downloaded first when it is not there. A download that fails its checks (the hash its name
    promises, a weights file, of this model) is deleted, so a later good file of the same name is not
    refused for it; a cached copy that fails them is named, to be deleted."""
    url = url or imagenet_url(model_name)
    dest = imagenet_cache_path(url)
    downloaded = not dest.is_file()
    path = imagenet_weights(model_name, url, progress) if downloaded else dest
    try:
        if not downloaded:  # a download's hash was checked as it came
            check_hash_prefix(path)
        state_dict = read_state_dict(path)
        with torch.device("meta"):  # shapes without memory
            net = build_model(model_name)
        check_architecture(net, model_name, state_dict, path)
        return state_dict
    except cli.UserError as e:
        if downloaded:
            path.unlink(missing_ok=True)
            raise cli.UserError(f"{e}. The download from {url} was deleted") from None
        raise cli.UserError(f"{e}. It is a copy in the torch hub cache: delete it (it is downloaded again), or put "
                            "the right file there") from None


def imagenet_weights(model_name, url=None, progress=True):
    """torchvision's ImageNet file in the torch hub cache, downloaded and hash-checked when it is not there."""
    url = url or imagenet_url(model_name)
    dest = imagenet_cache_path(url)
    if dest.is_file():
        return check_hash_prefix(dest)
    try:
        return downloads.download(url, dest, sha256=hash_prefix(dest), progress=progress)
    except cli.UserError as e:
        raise cli.UserError(f"{e}. Offline? Fetch {url} on another machine and put it at {dest}, "
                        "or pass --weights PATH") from None
