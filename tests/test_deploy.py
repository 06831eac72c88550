"""Deployment: the INT8 export, what an ONNX file carries (classes, size, accuracy), prediction
without PyTorch, the execution providers and TensorRT's engine cache, prediction that runs out of
memory, and the whole-process benchmark."""
import contextlib
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import batch_predict
import benchmark
import export_onnx
from helpers import cli, deploy, imaging, inference, memory
import predict
from conftest import ROOT, make_class_folders, parse, run_main
from test_errors import assert_one_line_error

ort = pytest.importorskip("onnxruntime")
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def export_args(tiny_run, out, *extra):
    return parse(export_onnx, ["--model", "resnet18", "--weights", tiny_run["weights"], "--class-indices",
                               tiny_run["classes"], "--img-size", "32", "--out", out, "--check-images",
                               tiny_run["data"] / "val" / "daisy", "--calib-dir", tiny_run["data"] / "train",
                               "--calib-images", "8", *extra])


def export_quietly(args):
    """export_onnx.main(args) and what it printed (module fixtures cannot use capsys)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        export_onnx.main(args)
    return out.getvalue()


@pytest.fixture(scope="module")
def int8_run(tiny_run, tmp_path_factory):
    """The tiny model exported as fp32 and CPU INT8, measured on a val/ of 18 images."""
    base = tmp_path_factory.mktemp("int8")
    make_class_folders(base / "data" / "val", per_class=6)
    printed = export_quietly(export_args(tiny_run, base / "m.onnx", "--int8", "--data-path", base / "data",
                                         "--max-drop", "100"))  # the tiny model's accuracy is a coin toss
    return {"fp32": base / "m.onnx", "int8": base / "m.int8.onnx", "val": base / "data" / "val", "printed": printed}


@pytest.fixture(scope="module")
def trt_run(tiny_run, tmp_path_factory):
    """The TensorRT flavour, with a data path that has no val/."""
    base = tmp_path_factory.mktemp("trt")
    printed = export_quietly(export_args(tiny_run, base / "m.onnx", "--int8", "tensorrt", "--data-path", base / "none"))
    return {"int8": base / "m.int8-tensorrt.onnx", "printed": printed}


def session(path):
    return ort.InferenceSession(str(path), providers=[CPU])


# ---------------------------------------------------------------- export_onnx.py --int8

def test_int8_predicts_like_fp32_and_both_accuracies_are_printed(int8_run, tiny_run):
    assert deploy.quantized_for(int8_run["int8"]) == "cpu"
    assert int8_run["int8"].stat().st_size < 0.4 * int8_run["fp32"].stat().st_size
    line = re.search(r"top-1 on (\d+) images of .*: fp32 ([\d.]+)%\s+INT8 ([\d.]+)%", int8_run["printed"])
    assert line and int(line[1]) == 18
    # The printed figures are the models' real top-1 on val/, through the --onnx prediction path.
    common = [int8_run["val"], "--recursive", "--img-size", "32", "--class-indices", tiny_run["classes"],
              "--batch-size", "4", "--workers", "0"]
    rows = {}
    for name in ("fp32", "int8"):
        rows[name], _ = batch_predict.main(parse(batch_predict, common + ["--onnx", int8_run[name]]))
    for name, printed in (("fp32", line[2]), ("int8", line[3])):
        correct = sum(path.split(os.sep)[-2] == pairs[0][0] for path, pairs in rows[name])
        assert float(printed) == pytest.approx(100 * correct / 18, abs=0.01)
    # INT8 gives nearly the same probabilities, hence mostly the same classes.
    assert [p for p, _ in rows["fp32"]] == [p for p, _ in rows["int8"]]
    same = sum(a[0][0] == b[0][0] for (_, a), (_, b) in zip(rows["fp32"], rows["int8"]))
    assert same >= 12
    x = imaging.normalize(inference.decode_batch(list(enumerate(sorted(int8_run["val"].rglob("*.jpg")))), 32)[1])
    probs = [deploy.softmax(session(int8_run[m]).run(None, {"input": x})[0]) for m in ("fp32", "int8")]
    # Per image, the largest change of any class's probability: small for nearly all images (calibrated
    # on 8 images, the 1-epoch model can leave one or two outside the calibrated ranges).
    change = np.abs(probs[0] - probs[1]).max(axis=1)
    assert (change < 0.03).sum() >= 16 and np.median(change) < 0.01
    assert (int8_run["fp32"].parent / "labels.txt").read_text().split() == ["daisy", "roses", "tulips"]


def test_tensorrt_flavour_is_symmetric_signed_and_missing_val_is_said(trt_run):
    import onnx

    assert "INT8 accuracy not measured" in trt_run["printed"]
    model = onnx.load(str(trt_run["int8"]))
    zero_points = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and all(zero_points[n.input[2]].dtype == np.int8 and not zero_points[n.input[2]].any()
                            for n in quantize)
    assert deploy.quantized_for(trt_run["int8"]) == "tensorrt"


def test_int8_flavour_is_read_without_the_onnx_package(int8_run, trt_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # a deployment machine: onnxruntime only
    assert deploy.quantized_for(int8_run["fp32"]) is None
    assert deploy.quantized_for(int8_run["int8"]) == "cpu"
    assert deploy.quantized_for(trt_run["int8"]) == "tensorrt"


# ---------------------------------------------------------------- what the ONNX file carries

def test_both_files_carry_classes_size_normalisation_architecture_and_accuracy(int8_run, tiny_run):
    from helpers import weights
    line = re.search(r"top-1 on (\d+) images of .*: fp32 ([\d.]+)%\s+INT8 ([\d.]+)%", int8_run["printed"])
    for name, printed in (("fp32", line[2]), ("int8", line[3])):
        meta = deploy.metadata(int8_run[name])
        assert meta == session(int8_run[name]).get_modelmeta().custom_metadata_map  # as ONNX Runtime reads it
        info = deploy.model_info(int8_run[name])
        assert info.classes == ["daisy", "roses", "tulips"] and info.img_size == 32 and info.architecture == "resnet18"
        assert info.mean == imaging.MEAN and info.std == imaging.STD and info.val_images == 18
        assert info.val_accuracy == pytest.approx(float(printed) / 100, abs=1e-4)  # the figure it was checked at
        assert meta["trained_on"] == weights.read_weights(tiny_run["weights"], "w")[1].trained_on  # reports.trained_on
    int8 = deploy.model_info(int8_run["int8"])
    assert int8.int8_for == "cpu" and int8.fp32_val_accuracy == pytest.approx(float(line[2]) / 100, abs=1e-4)
    assert deploy.model_info(int8_run["fp32"]).int8_for is None


def test_a_class_file_or_size_that_contradicts_the_file_is_refused_naming_both(int8_run, tiny_run, tmp_path):
    def resolve(*argv):
        return inference.settle(parse(batch_predict, ["--onnx", int8_run["fp32"], *argv]))

    swapped, fewer = tmp_path / "swapped.json", tmp_path / "fewer.json"
    swapped.write_text('{"0": "daisy", "1": "tulips", "2": "roses"}')
    fewer.write_text('{"0": "cat", "1": "dog"}')
    with pytest.raises(cli.UserError, match=r"swapped.json names class 1 'tulips' but .*m.onnx holds 'roses' there"):
        resolve("--class-indices", swapped)
    with pytest.raises(cli.UserError, match=r"lists 2 classes \(cat, dog\) but .*m.onnx holds 3 \(daisy, roses, tulips\)"):
        resolve("--class-indices", fewer)
    with pytest.raises(cli.UserError, match=r"--img-size 64 contradicts .*m.onnx, which was exported for 32 px"):
        resolve("--img-size", "64")
    p = resolve("--img-size", "32", "--class-indices", tiny_run["classes"])  # agreeing: fine
    assert p.classes == ["daisy", "roses", "tulips"] and p.img_size == 32
    res = run_main("batch_predict.py", int8_run["val"] / "daisy", "--onnx", int8_run["fp32"], "--img-size", "64")
    assert_one_line_error(res, "--img-size 64", "32 px")


def test_a_file_without_metadata_works_as_before(int8_run, tmp_path):
    import onnx
    model = onnx.load(str(int8_run["fp32"]))
    del model.metadata_props[:]  # a file exported before the metadata
    onnx.save(model, str(tmp_path / "old.onnx"))
    assert deploy.model_info(tmp_path / "old.onnx") is None
    (tmp_path / "labels.txt").write_text("daisy\nroses\ntulips\n")
    common = [int8_run["val"], "--recursive", "--onnx", tmp_path / "old.onnx", "--workers", "0"]
    with pytest.raises(cli.UserError, match="takes 32 px images; pass --img-size 32"):
        batch_predict.main(parse(batch_predict, common))
    old, _ = batch_predict.main(parse(batch_predict, common + ["--img-size", "32"]))
    new, _ = batch_predict.main(parse(batch_predict, [int8_run["val"], "--recursive", "--onnx", int8_run["fp32"],
                                                      "--workers", "0"]))
    assert old == new and len(old) == 18


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The system temp folder, private to the test, to see that nothing is left there."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_int8_losing_more_than_max_drop_writes_nothing_unless_kept(tiny_run, tmp_path, private_tmp, monkeypatch):
    make_class_folders(tmp_path / "data" / "val", per_class=2)
    # The quantization is the fixtures' (real) one; here only what is done with its measured loss.
    monkeypatch.setattr(export_onnx, "quantize_int8", lambda fp32, int8, *a: (shutil.copy(fp32, int8), (8, 0))[1])
    monkeypatch.setattr(export_onnx, "top1", lambda *a: ([90.0, 88.5], [100.0, 97.0], 6))
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(cli.UserError, match=r"INT8 loses 1.50 points .*--max-drop 1.0.*neither file was written"):
        export_onnx.main(export_args(tiny_run, out, "--int8", "--data-path", tmp_path / "data"))
    assert not out.parent.exists() and list(private_tmp.iterdir()) == []  # the folder made for it too
    export_onnx.main(export_args(tiny_run, out, "--int8", "--data-path", tmp_path / "data", "--keep-int8"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.txt", "m.int8.onnx", "m.labels.txt", "m.onnx"]
    assert list(private_tmp.iterdir()) == []


def test_ctrl_c_while_quantizing_leaves_nothing_behind(tiny_run, tmp_path, private_tmp, monkeypatch):
    import onnxruntime.quantization as q

    def interrupted(pre, int8, reader, **kwargs):
        assert os.path.isfile(pre)  # the pre-processed model exists, in the temp folder
        raise KeyboardInterrupt

    monkeypatch.setattr(q, "quantize_static", interrupted)
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(KeyboardInterrupt):
        export_onnx.main(export_args(tiny_run, out, "--int8", "--data-path", tmp_path / "none"))
    assert not out.parent.exists() and list(private_tmp.iterdir()) == []  # the folder made for it too


def test_int8_outputs_and_calibration_folder_are_checked_first(tiny_run, tmp_path):
    (tmp_path / "m.int8.onnx").write_bytes(b"mine")
    with pytest.raises(cli.UserError, match=r"m.int8.onnx already exists; --overwrite replaces it"):
        export_onnx.main(export_args(tiny_run, tmp_path / "m.onnx", "--int8"))
    args = export_args(tiny_run, tmp_path / "n.onnx", "--int8", "tensorrt", "--calib-dir", tmp_path / "nothing")
    with pytest.raises(cli.UserError, match="calibration folder not found"):
        export_onnx.main(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx"]
    assert (tmp_path / "m.int8.onnx").read_bytes() == b"mine"


def test_calibration_sample_is_fixed_and_spread_over_classes(tmp_path):
    make_class_folders(tmp_path, per_class=6, size=16)
    first = export_onnx.calibration_images(tmp_path, 7)
    assert first == export_onnx.calibration_images(tmp_path, 7) and len(set(first)) == 7
    assert sorted(sum(p.parent.name == c for p in first) for c in ("daisy", "roses", "tulips")) == [2, 2, 3]
    assert len(export_onnx.calibration_images(tmp_path, 100)) == 18


# ---------------------------------------------------------------- prediction without PyTorch

# Runs a script as `python script args` would, then lists the top-level modules it imported.
RUN_AND_LIST_MODULES = """
import runpy, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, {root!r})
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("MODULES", " ".join(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


def run_listing_modules(script, *argv):
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, "-c", RUN_AND_LIST_MODULES.format(root=str(ROOT)), str(ROOT / script),
                           *map(str, argv)], capture_output=True, text=True, env=env, timeout=300)


def test_onnx_prediction_imports_neither_torch_nor_torchvision_and_needs_only_the_file(int8_run, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(int8_run["val"] / "daisy", folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    alone = tmp_path / "models"  # the files alone: no labels.txt, no class_indices.json, no --img-size
    alone.mkdir()
    for name in ("fp32", "int8"):
        shutil.copy(int8_run[name], alone)
    batch = run_listing_modules("batch_predict.py", folder, "--onnx", alone / "m.int8.onnx",
                                "--batch-size", "2", "--workers", "2")  # decoded in a process pool
    one = run_listing_modules("predict.py", folder / "daisy_0.jpg", "--onnx", alone / "m.onnx",
                              "--save-fig", tmp_path / "p.png")
    for result in (batch, one):
        assert result.returncode == 0, result.stderr
        modules = result.stdout.rsplit("MODULES", 1)[1].split()
        assert "onnxruntime" in modules and "torch" not in modules and "torchvision" not in modules
    assert len(re.findall(r"^image: .*daisy_\d.jpg  class: \w+  prob: [\d.e-]+$", batch.stdout, re.M)) == 6
    assert "skipped: cannot read image" in batch.stderr and "(unreadable: " in batch.stdout
    assert "with ONNX Runtime (CPUExecutionProvider)" in batch.stdout
    assert len(re.findall(r"^class: \w+ +prob: ", one.stdout, re.M)) == 3 and (tmp_path / "p.png").is_file()


def test_evaluate_with_int8_onnx_imports_no_torch_and_reports_every_image(int8_run, tmp_path):
    res = run_listing_modules("evaluate.py", int8_run["val"], "--onnx", int8_run["int8"], "--img-size", "32",
                              "--json", tmp_path / "r.json", "--csv", tmp_path / "r.csv", "--output-dir", tmp_path)
    assert res.returncode == 0, res.stderr
    modules = res.stdout.rsplit("MODULES", 1)[1].split()
    assert "onnxruntime" in modules and "torch" not in modules and "torchvision" not in modules
    report = json.loads((tmp_path / "r.json").read_text())
    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert report["images"] == len(rows) == 18 and report["model"] == str(int8_run["int8"])
    assert report["accuracy"] == pytest.approx(sum(int(r["correct"]) for r in rows) / 18)
    assert (tmp_path / "val_confusion_matrix.png").is_file()


def test_numpy_preprocessing_equals_torchvision_and_the_torch_predictor_input(tiny_run, tmp_path, monkeypatch):
    import torch
    from torchvision import transforms

    from helpers import weights
    from helpers import imaging

    img_size = 224
    benchmark.make_images(tmp_path, 3)  # photo-sized JPEGs, 320-500 px
    Image.new("RGBA", (300, 200), (10, 200, 30, 128)).save(tmp_path / "alpha.png")
    make_class_folders(tmp_path, per_class=1, size=40, classes=("small",))  # smaller than the crop
    paths = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    indices, batch, errors = inference.decode_batch(list(enumerate(paths)), img_size)
    assert indices == [0, 1, 2, 3, 4] and not errors
    ours = imaging.normalize(batch)
    tv = transforms.Compose([transforms.Resize(int(round(img_size / 0.875))), transforms.CenterCrop(img_size),
                             transforms.ToTensor(), transforms.Normalize(imaging.MEAN, imaging.STD)])

    def rgb(path):  # what the tutorial did, with the alpha put on white as images.py does
        img = Image.open(path)
        if img.mode == "RGBA":
            img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
        return img.convert("RGB")

    torch.testing.assert_close(torch.from_numpy(ours), torch.stack([tv(rgb(p)) for p in paths]), rtol=0, atol=1e-5)

    # The PyTorch predictor, given the same uint8 batch, feeds its model the same tensor.
    seen = []
    build = weights.build_model

    def recording_build(*a, **k):
        net = build(*a, **k)
        net.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].float().cpu()))
        return net

    monkeypatch.setattr(weights, "build_model", recording_build)
    p = inference.Prediction(model="resnet18", weights=str(tiny_run["weights"]), onnx=None, classes=["a", "b", "c"],
                             class_source=str(tiny_run["classes"]), img_size=img_size, amp_dtype="none", device="cpu")
    predictor, _ = inference.load_predictor(p)
    predictor(batch)
    torch.testing.assert_close(seen[0], torch.from_numpy(ours), rtol=0, atol=1e-6)


def test_the_metadata_driven_onnx_input_equals_the_training_eval_transform(int8_run, tmp_path, monkeypatch):
    """--onnx FILE alone: the size and the normalisation come from the file, and the tensor ONNX
    Runtime is given is the training's eval transform of the image (and follows a file's own mean and std)."""
    import onnx
    paths = sorted(int8_run["val"].rglob("*.jpg"))[:5]
    fed, real = [], ort.InferenceSession

    class Recording:
        def __init__(self, *a, **k):
            self.session = real(*a, **k)

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run(self, names, feeds):
            fed.append(next(iter(feeds.values())))
            return self.session.run(names, feeds)

    def metadata_path_input(model_path):
        p = inference.settle(parse(batch_predict, ["--onnx", model_path, "--workers", "0", "--batch-size", "8"]))
        assert p.img_size == 32 and "metadata" in p.class_source
        predictor, _ = inference.load_predictor(p)
        list(inference.predict_paths(paths, predictor, p))
        return fed[-1]

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    eval_transform = np.stack([imaging.EvalTransform(32)(imaging.load_rgb(p)) for p in paths])  # train.py's val
    np.testing.assert_allclose(metadata_path_input(int8_run["fp32"]), eval_transform, rtol=0, atol=1e-6)
    model = onnx.load(str(int8_run["fp32"]))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    onnx.helper.set_model_props(model, {**deploy.metadata(int8_run["fp32"]), "mean": json.dumps(mean),
                                        "std": json.dumps(std)})
    onnx.save(model, str(tmp_path / "own.onnx"))
    crops = np.stack([np.asarray(imaging.EvalTransform(32).resize_crop(imaging.load_rgb(p))) for p in paths])
    own = (crops.transpose(0, 3, 1, 2) / 255 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    np.testing.assert_allclose(metadata_path_input(tmp_path / "own.onnx"), own, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- execution providers

@pytest.fixture
def offered(monkeypatch):
    """Pretend that ONNX Runtime offers these providers."""
    def offer(*names):
        monkeypatch.setattr(ort, "get_available_providers", lambda: list(names))
    return offer


def test_auto_takes_tensorrt_then_cuda_then_cpu_with_fp16_and_int8_for_qdq(int8_run, trt_run, offered, tmp_path):
    offered(CPU, CUDA, TRT)
    fp32 = deploy.onnx_providers("auto", int8_run["fp32"], None, 224, 16)
    assert [p if isinstance(p, str) else p[0] for p in fp32] == [TRT, CUDA, CPU]
    options = fp32[0][1]
    assert options["trt_fp16_enable"] is True and options["trt_int8_enable"] is False
    assert options["trt_engine_cache_enable"] is True
    cache = int8_run["fp32"].with_suffix(".trt_cache")
    assert Path(options["trt_engine_cache_path"]).parent == cache and options["trt_timing_cache_path"] == str(cache)
    assert options["trt_profile_min_shapes"] == "input:1x3x224x224"
    assert options["trt_profile_max_shapes"] == options["trt_profile_opt_shapes"] == "input:16x3x224x224"
    qdq = deploy.onnx_providers("tensorrt", trt_run["int8"], tmp_path / "cache", 224, 8)
    assert qdq[0][0] == TRT and qdq[1] == CPU
    assert qdq[0][1]["trt_int8_enable"] is True and qdq[0][1]["trt_fp16_enable"] is True
    assert Path(qdq[0][1]["trt_engine_cache_path"]).parent == tmp_path / "cache"
    assert deploy.onnx_providers("cuda", trt_run["int8"]) == [CUDA, CPU]


def test_tensorrt_is_not_given_the_cpu_int8_model(int8_run, offered, capsys):
    offered(TRT, CUDA, CPU)
    assert deploy.onnx_providers("auto", int8_run["int8"]) == [CUDA, CPU]
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "TensorRT cannot run" in note[0] and "--int8 tensorrt" in note[0]
    with pytest.raises(cli.UserError, match="TensorRT cannot run.*--int8 tensorrt"):
        deploy.onnx_providers("tensorrt", int8_run["int8"])


def test_cpu_only_onnxruntime_gives_cpu_or_a_one_line_error(int8_run, offered):
    offered("AzureExecutionProvider", CPU)
    assert deploy.onnx_providers("auto", int8_run["fp32"]) == [CPU]
    with pytest.raises(cli.UserError, match="--provider tensorrt: this onnxruntime offers"):
        deploy.onnx_providers("tensorrt", int8_run["fp32"])


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_provider_cuda_without_it_is_one_line_on_stderr(int8_run, tiny_run):
    result = run_main("predict.py", next(int8_run["val"].rglob("*.jpg")), "--onnx", int8_run["fp32"],
                        "--img-size", "32", "--provider", "cuda")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: --provider cuda: this onnxruntime offers") and result.stderr.count("\n") == 1


def test_a_re_exported_model_never_meets_the_engine_of_the_one_before(tiny_run, tmp_path, offered, monkeypatch,
                                                                      capsys):
    """The stale-engine sequence (export, predict, retrain, export --overwrite under the same name,
    predict) with TensorRT faked: each session's options are recorded, the CPU runs it."""
    import torch
    offered(TRT, CUDA, CPU)
    given, real = [], ort.InferenceSession

    def recording(path, options=None, providers=None, **kwargs):
        if isinstance(providers[0], tuple):
            given.append(providers[0][1])
        return real(path, options, providers=[CPU])

    monkeypatch.setattr(ort, "InferenceSession", recording)
    folder, imgs = tmp_path / "models", tiny_run["data"] / "val"
    retrained = {k: v.clone() for k, v in torch.load(tiny_run["weights"], weights_only=True).items()}
    retrained["fc.bias"] += torch.tensor([0.0, 0.0, 30.0])  # another model: it says tulips to everything
    torch.save(retrained, tmp_path / "retrained.pth")  # a plain dict: it carries no classes of its own
    others = tmp_path / "others.json"
    others.write_text('{"0": "iris", "1": "lily", "2": "rose"}')

    def export(name, *extra):
        export_quietly(export_args(tiny_run, folder / name, "--check-images", tmp_path / "none", *extra))

    def predict_with(name, *extra):
        rows, _ = batch_predict.main(parse(batch_predict, [imgs, "--recursive", "--onnx", folder / name,
                                                           "--workers", "0", *extra]))
        return [pairs for _, pairs in rows], Path(given[-1]["trt_engine_cache_path"])

    export("m.onnx")
    before, cache = predict_with("m.onnx")
    assert cache.parent == folder / "m.trt_cache" and (cache / "model.json").is_file()
    assert predict_with("m.onnx")[1] == cache  # the same file: the same cache, its engine loaded again
    assert predict_with("m.onnx", "--batch-size", "3")[1] != cache  # another shape profile: another engine
    # A second model in the same folder: labels.txt stays the first one's, each predicts its own names.
    export("n.onnx", "--weights", tmp_path / "retrained.pth", "--class-indices", others)
    assert (folder / "labels.txt").read_text().split() == ["daisy", "roses", "tulips"]
    assert (folder / "n.labels.txt").read_text().split() == ["iris", "lily", "rose"]
    assert {pairs[0][0] for pairs in predict_with("n.onnx")[0]} == {"rose"}
    # Retrained, exported again under the same name: another cache, the old one pruned, new predictions.
    export("m.onnx", "--weights", tmp_path / "retrained.pth", "--overwrite")
    after, fresh = predict_with("m.onnx")
    assert fresh.parent == cache.parent and fresh != cache and not cache.exists()
    assert "built for an earlier m.onnx" in capsys.readouterr().err
    assert {pairs[0][0] for pairs in after} == {"tulips"} and after != before
    # One cache for several models (--trt-cache): a model that is gone loses its folder, the others keep theirs.
    shared = ["--trt-cache", tmp_path / "shared"]
    kept, gone = predict_with("m.onnx", *shared)[1], predict_with("n.onnx", *shared)[1]
    (folder / "n.onnx").unlink()
    assert predict_with("m.onnx", *shared)[1] == kept and kept.exists() and not gone.exists()
    assert json.loads((kept / "model.json").read_text())["model"] == os.path.realpath(folder / "m.onnx")


def test_prediction_that_runs_out_of_memory_halves_its_batch_and_goes_on(int8_run, monkeypatch, capsys):
    common = [int8_run["val"], "--recursive", "--onnx", int8_run["fp32"], "--batch-size", "5", "--workers", "0"]
    expected, _ = batch_predict.main(parse(batch_predict, common))
    real = ort.InferenceSession
    failure = getattr(ort.capi.onnxruntime_pybind11_state, "RuntimeException", RuntimeError)

    class Small:  # a session whose allocation fails above 2 images, as ONNX Runtime's does
        def __init__(self, *a, **k):
            self.session = real(*a, **k)

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run(self, names, feeds):
            if len(next(iter(feeds.values()))) > 2:
                raise failure("Failed to allocate memory for requested buffer of size 61440")
            return self.session.run(names, feeds)

    monkeypatch.setattr(ort, "InferenceSession", Small)
    capsys.readouterr()
    rows, skipped = batch_predict.main(parse(batch_predict, common))
    assert [r[0] for r in rows] == [r[0] for r in expected] and not skipped
    for (_, got), (_, want) in zip(rows, expected):
        assert got[0][0] == want[0][0] and got[0][1] == pytest.approx(want[0][1], abs=1e-5)
    err = capsys.readouterr().err
    assert err.count("out of memory") == 1 and "a batch of 5 images; going on with batches of 2" in err


def test_halving_stops_at_one_image_and_lets_other_errors_through():
    def fails(batch):
        raise MemoryError
    with pytest.raises(MemoryError):
        memory.HalvingPredictor(fails)(np.zeros((4, 8, 8, 3), np.uint8))
    broken = memory.HalvingPredictor(lambda batch: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        broken(np.zeros((4, 8, 8, 3), np.uint8))
    assert broken.limit is None


# ---------------------------------------------------------------- benchmark.py --predict-folder

def test_make_images_is_deterministic_and_photo_sized(tmp_path):
    benchmark.make_images(tmp_path / "a", 3)
    benchmark.make_images(tmp_path / "b", 3)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) == 3
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert all(320 <= side <= 500 for side in Image.open(tmp_path / "a" / name).size)


def test_predict_folder_runs_every_path_with_valid_commands_and_ratios(tmp_path, monkeypatch, capsys):
    """The commands are checked against each script's own parser; the processes themselves are run
    by the other tests (and by the lead's benchmark), which keeps this one fast."""
    commands, exports = [], []

    def fake_timed(cmd):
        cmd = [str(c) for c in cmd]
        (exports if cmd[0].endswith("export_onnx.py") else commands).append(cmd)
        return (4.0 if cmd[0].endswith("tutorial_predict.py") else 1.0), ""

    monkeypatch.setattr(benchmark, "timed", fake_timed)
    report = benchmark.main(parse(benchmark, ["--predict-folder", tmp_path / "imgs", "--predict-images", "4",
                                              "--model", "resnet18", "--repeats", "3", "--device", "cpu"]))
    assert len(list((tmp_path / "imgs").glob("*.jpg"))) == 4
    parsers = {"export_onnx.py": export_onnx, "batch_predict.py": batch_predict, "predict.py": predict,
               "tutorial_predict.py": bench_script("tutorial_predict")}
    for cmd in exports + commands:
        args = parse(parsers[os.path.basename(cmd[0])], cmd[1:])
        assert getattr(args, "onnx", None) or args.model == "resnet18"  # an ONNX file holds its architecture
    assert "--int8" in exports[0] and len(exports) == 1
    onnx_runs = [c for c in commands if "--onnx" in c]
    assert {os.path.basename(c[c.index("--onnx") + 1]) for c in onnx_runs} == {"m.onnx", "m.int8.onnx"}
    assert len(commands) == 4 + 4 * 3  # four folder runs, four one-image paths three times
    rows = {(r["task"], r["path"]): r for r in report["results"]}
    assert rows[("4 images", "tutorial loop (fp32, one by one, batch 5)")]["ratio"] == 1.0
    assert rows[("4 images", "batch_predict.py --onnx INT8 (batch 16)")]["ratio"] == 4.0
    assert rows[("one image", "predict.py --onnx INT8")]["seconds"] == 1.0
    out = capsys.readouterr().out
    assert "4.00x" in out and "one image" in out and "seconds" in out


def bench_script(name):
    """A script of bench/ as a module: its parser checks the commands benchmark.py gives it."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_baselines_predict_a_folder_and_one_image(tmp_path, capsys):
    import json

    import torch

    from helpers import weights
    benchmark.make_images(tmp_path / "imgs", 5)
    torch.save(weights.build_model("resnet18", num_classes=5).state_dict(), tmp_path / "w.pth")
    (tmp_path / "class_indices.json").write_text(json.dumps({str(i): f"c{i}" for i in range(5)}))
    tutorial = bench_script("tutorial_predict")
    common = ["--model", "resnet18", "--weights", tmp_path / "w.pth", "--device", "cpu"]
    tutorial.main(parse(tutorial, [tmp_path / "imgs"] + common))
    assert len(re.findall(r"^image: .*img_00\d.jpg  class: c\d  prob: ", capsys.readouterr().out, re.M)) == 5
    tutorial.main(parse(tutorial, [tmp_path / "imgs" / "img_000.jpg"] + common))
    assert len(re.findall(r"^class: c\d +prob: ", capsys.readouterr().out, re.M)) == 5
    assert (tmp_path / "tutorial_predict.png").is_file()


# ---------------------------------------------------------------- damaged, oversized and misplaced model files

def tiny_onnx(path, meta):
    """A 3-class ONNX model of 32 px (each class: the mean of one colour), with `meta` as its metadata:
    made in milliseconds, without torch."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["input"], ["pool"]),
                               helper.make_node("Flatten", ["pool"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the floor's onnxruntime reads
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def red_image(path):
    Image.new("RGB", (40, 40), (250, 10, 10)).save(path)
    return path


def test_damaged_metadata_of_any_kind_is_one_line_never_ignored(tmp_path):
    """A byte that is not UTF-8, or a lost classes key, is damage: never the labels.txt beside the file
    (here in reverse order) and 224 px instead, which ended in a misleading 'pass --img-size 32'."""
    img = red_image(tmp_path / "red.png")
    meta = deploy.ModelInfo(classes=["red", "green", "blue"], img_size=32).to_metadata()
    good = tiny_onnx(tmp_path / "good.onnx", meta).read_bytes()
    at = good.index(b'"red"') + 1
    (tmp_path / "bytes.onnx").write_bytes(good[:at] + b"\xff" + good[at + 1:])  # one byte, same length
    tiny_onnx(tmp_path / "keyless.onnx", {k: v for k, v in meta.items() if k != "classes"})
    (tmp_path / "labels.txt").write_text("blue\ngreen\nred\n")
    for name, words in (("bytes.onnx", "not UTF-8"), ("keyless.onnx", "'classes'")):
        res = run_main("predict.py", img, "--onnx", tmp_path / name, "--save-fig", tmp_path / "f.png")
        assert_one_line_error(res, f"{name} holds damaged metadata", words)
        assert "--img-size" not in res.stderr
    res = run_main("predict.py", img, "--onnx", tmp_path / "good.onnx", "--save-fig", tmp_path / "f.png")
    assert res.returncode == 0 and res.stdout.startswith("class: red ")


def test_a_repeated_key_an_unknown_version_and_a_field_of_the_wrong_kind_are_damage(tmp_path):
    """ONNX Runtime gives the metadata as a dict, keeping the last of two `classes`; a version this
    program never wrote, or a field that does not parse to its kind, is damage too, never used silently."""
    import onnx

    img = red_image(tmp_path / "red.png")
    meta = deploy.ModelInfo(classes=["red", "green", "blue"], img_size=32).to_metadata()
    twice = onnx.load(str(tiny_onnx(tmp_path / "twice.onnx", meta)))
    onnx.helper.set_model_props(twice, dict(meta, note=""))
    twice.metadata_props[-1].key, twice.metadata_props[-1].value = "classes", json.dumps(["blue", "green", "red"])
    onnx.save(twice, str(tmp_path / "twice.onnx"))
    cases = {"twice": "'classes' is there 2 times", "version": "metadata_version is '99'",
             "int8": "int8_for is 'banana'", "resize": "resize", "accuracy": "val_accuracy is '7'"}
    edits = {"version": {"metadata_version": "99"}, "int8": {"int8_for": "banana"}, "resize": {"resize": "abc"},
             "accuracy": {"val_accuracy": "7"}}
    for name, words in cases.items():
        path = tmp_path / f"{name}.onnx"
        if name in edits:
            tiny_onnx(path, dict(meta, **edits[name]))
        res = run_main("predict.py", img, "--onnx", path, "--save-fig", tmp_path / "f.png")
        assert_one_line_error(res, f"{name}.onnx holds damaged metadata", words)
    assert not (tmp_path / "f.png").exists()


def test_metadata_beyond_its_bounds_is_refused_at_once_and_a_long_name_nowhere_takes_time(tmp_path):
    """A 100 kB class name took seconds to draw (matplotlib lays out every character, in C, deaf to
    signals); the metadata, one name and the number of classes are bounded, and trained_on's 1 MB fits."""
    import time

    img = red_image(tmp_path / "red.png")
    meta = deploy.ModelInfo(classes=["red", "green", "blue"], img_size=32).to_metadata()
    cases = {"name": (dict(meta, classes=json.dumps(["r" * 100_000, "g", "b"])), "a class name of 100000 characters"),
             "total": (dict(meta, note="x" * (5 * 2**20)), "5.0 MB of text"),
             "count": (dict(meta, classes=json.dumps([f"c{i}" for i in range(100_001)])), "100001 classes"),
             "number": (dict(meta, img_size="3" * 5000), "img_size is 5000 characters")}
    start = time.perf_counter()
    for name, (edited, words) in cases.items():
        res = run_main("predict.py", img, "--onnx", tiny_onnx(tmp_path / f"{name}.onnx", edited), "--save-fig",
                       tmp_path / "f.png")
        assert_one_line_error(res, "holds damaged metadata", words)
    assert time.perf_counter() - start < 5 and not (tmp_path / "f.png").exists()
    # The same bound for the names of a class-index file and of a labels.txt.
    (tmp_path / "ci.json").write_text(json.dumps({"0": "r" * 300, "1": "g", "2": "b"}))
    tiny_onnx(tmp_path / "plain.onnx", {})  # an export from before the metadata: labels.txt beside it
    (tmp_path / "labels.txt").write_text("r" * 300 + "\ng\nb\n")
    for flags in (["--class-indices", tmp_path / "ci.json"], []):
        res = run_main("predict.py", img, "--onnx", tmp_path / "plain.onnx", "--img-size", "32", *flags)
        assert_one_line_error(res, "a class name of 300 characters")
    with_fingerprint = tiny_onnx(tmp_path / "fp.onnx", dict(meta, trained_on="f" * 2**20))
    res = run_main("predict.py", img, "--onnx", with_fingerprint, "--save-fig", tmp_path / "f.png")
    assert res.returncode == 0 and res.stdout.startswith("class: red ")


def test_a_pth_given_to_onnx_and_an_onnx_file_given_to_weights_are_named_for_what_they_are(tmp_path):
    import torch

    img = red_image(tmp_path / "red.png")
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "w.pth")
    onnx_file = tiny_onnx(tmp_path / "m.onnx", deploy.ModelInfo(classes=["r", "g", "b"], img_size=32).to_metadata())
    for script, first in (("predict.py", [img, "--save-fig", tmp_path / "f.png"]), ("batch_predict.py", [tmp_path]),
                          ("evaluate.py", [tmp_path])):
        assert_one_line_error(run_main(script, *first, "--onnx", tmp_path / "w.pth", cwd=tmp_path),
                              "w.pth is not an ONNX model: it is PyTorch weights", "pass it with --weights")
    for script, first in (("predict.py", [img, "--save-fig", tmp_path / "f.png"]), ("export_onnx.py", [])):
        assert_one_line_error(run_main(script, *first, "--weights", onnx_file, cwd=tmp_path),
                              "m.onnx is not a PyTorch weights file", "it is an ONNX model", "with --onnx")


def test_sigterm_acts_within_a_second_while_large_images_are_decoded(tmp_path):
    """The decoding processes are ended, not waited for: the pool's shutdown would wait for the batch
    being decoded (here about 2 s on 2 cores)."""
    import signal
    import time

    folder = tmp_path / "big"
    folder.mkdir()
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(folder / "0.png", compress_level=1)
    for i in range(1, 12):  # slow to decode, quick to make
        shutil.copy(folder / "0.png", folder / f"{i}.png")
    onnx_file = tiny_onnx(tmp_path / "m.onnx", deploy.ModelInfo(classes=["r", "g", "b"], img_size=32).to_metadata())
    proc = subprocess.Popen([sys.executable, str(ROOT / "batch_predict.py"), str(folder), "--onnx", str(onnx_file),
                             "--workers", "1", "--batch-size", "12"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        deadline = time.perf_counter() + 30
        while not children.read_text().split() and time.perf_counter() < deadline:  # the decoding process
            time.sleep(0.05)
        time.sleep(0.3)
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.perf_counter() - start
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and err.strip() == "error: interrupted (SIGTERM); files being " \
        "written were left as they were" and out == ""
    assert took < 1.5, took  # a second, and room for a loaded machine
