"""ONNX export checked against PyTorch, --onnx predictions, and the benchmark script."""
import sys

import numpy as np
import pytest

import batch_predict
import benchmark
import export_onnx
from helpers import cli
from conftest import parse

ort = pytest.importorskip("onnxruntime")


def export_args(tiny_run, out, *extra):
    return parse(export_onnx, ["--model", "resnet18", "--weights", tiny_run["weights"], "--class-indices",
                               tiny_run["classes"], "--img-size", "32", "--out", out,
                               "--check-images", tiny_run["data"] / "val" / "daisy", *extra])


def test_export_matches_pytorch_with_dynamic_batch(tiny_run, tmp_path, capsys):
    out, worst = export_onnx.main(export_args(tiny_run, tmp_path / "m.onnx"))
    assert worst < 1e-3
    assert "images of" in capsys.readouterr().out  # real images were checked too
    assert (tmp_path / "labels.txt").read_text().split() == ["daisy", "roses", "tulips"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for n in (1, 5):  # dynamic batch dimension
        assert session.run(None, {"input": np.random.randn(n, 3, 32, 32).astype(np.float32)})[0].shape == (n, 3)


def test_softmax_in_graph_and_onnx_predictions_equal_pytorch(tiny_run, tmp_path, capsys):
    onnx_path, _ = export_onnx.main(export_args(tiny_run, tmp_path / "p.onnx", "--softmax"))
    folder = tiny_run["data"] / "val"
    common = [folder, "--recursive", "--model", "resnet18", "--img-size", "32", "--class-indices", tiny_run["classes"],
              "--batch-size", "4", "--workers", "0"]
    torch_rows, _ = batch_predict.main(parse(batch_predict, common + ["--weights", tiny_run["weights"], "--no-amp"]))
    onnx_rows, _ = batch_predict.main(parse(batch_predict, common + ["--onnx", onnx_path]))
    assert len(torch_rows) == len(onnx_rows) == len(list(folder.rglob("*.jpg")))
    for (p1, t), (p2, o) in zip(torch_rows, onnx_rows):
        assert p1 == p2 and t[0][0] == o[0][0] and t[0][1] == pytest.approx(o[0][1], abs=1e-4)


def test_export_without_onnx_says_how_to_install(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(cli.UserError, match="pip install onnx onnxruntime"):
        export_onnx.main(export_args(tiny_run, tmp_path / "m.onnx"))


def test_benchmark_prints_every_path_with_ratios(capsys):
    report = benchmark.main(parse(benchmark, ["--model", "resnet18", "--img-size", "32", "--batch-size", "2",
                                              "--steps", "1", "--warmup", "1", "--device", "cpu"]))
    out = capsys.readouterr().out
    paths = {(r["task"], r["path"]) for r in report["results"]}
    assert ("train", "fp32") in paths and ("inference", "onnxruntime (CPU)") in paths
    assert all(r["images_per_s"] > 0 for r in report["results"])
    assert "ratio" in out and "1.00x" in out
