"""One run on tiny generated data: split, train, predict and batch predict; `make demo` and what it prints."""
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import batch_predict
import model
import predict
from conftest import ROOT, parse, run_main, run_script


def model_args(tiny_run):
    return ["--model", "resnet18", "--img-size", "32", "--weights", tiny_run["weights"],
            "--class-indices", tiny_run["classes"], "--workers", "0"]


def test_training_writes_tutorial_files(tiny_run):
    assert json.loads(tiny_run["classes"].read_text()) == {"0": "daisy", "1": "roses", "2": "tulips"}
    # the tutorial's own predict code: a plain state_dict into resnet(num_classes), strict
    net = model.resnet18(num_classes=3)
    net.load_state_dict(torch.load(tiny_run["weights"], map_location="cpu", weights_only=True))
    assert len(tiny_run["result"]["history"]) == 1


def make_predict_folder(tiny_run, folder):
    folder.mkdir()
    src = sorted((tiny_run["data"] / "val").rglob("*.jpg"))
    for i, p in enumerate(src[:3]):
        shutil.copy(p, folder / f"photo_{i}.JPG")  # upper-case extension
    rgb = Image.open(src[0]).convert("RGB")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    rgb.convert("L").save(folder / "gray.jpg")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)).save(folder / "deep16.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (folder / "readme.txt").write_text("not an image")
    return folder


def test_batch_predict_every_image_once_sorted_with_csv(tiny_run, tmp_path, capsys):
    folder = make_predict_folder(tiny_run, tmp_path / "imgs")  # 7 readable images, batch 3: partial last batch
    rows, skipped = batch_predict.main(parse(batch_predict, [folder, "--batch-size", "3", "--topk", "2",
                                                             "--csv", tmp_path / "p.csv"] + model_args(tiny_run)))
    out, err = capsys.readouterr()
    readable = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png") and p.name != "corrupt.jpg")
    assert [r[0] for r in rows] == readable
    lines = [line for line in out.splitlines() if line.startswith("image: ")]
    assert len(lines) == 7 and lines[0].startswith(f"image: {readable[0]}  class: ")
    assert "corrupt.jpg" in err and [str(p) for p, _ in skipped] == [str(folder / "corrupt.jpg")]
    assert "predicted 7 images, skipped 1" in out
    with open(tmp_path / "p.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["path"] for r in table] == readable
    assert all(r["class"] in ("daisy", "roses", "tulips") and 0 <= float(r["prob"]) <= 1 for r in table)
    assert set(table[0]) == {"path", "class", "prob", "class_2", "prob_2"}


def test_predict_prints_every_class_and_saves_figure_headless(tiny_run, tmp_path):
    img = sorted((tiny_run["data"] / "val" / "roses").iterdir())[0]
    res = run_script("predict.py", img, "--save-fig", tmp_path / "fig.png", *model_args(tiny_run), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("class: ")]
    assert [line.split()[1] for line in lines] == ["daisy", "roses", "tulips"]
    assert lines[0].startswith("class: daisy        prob: ")
    assert abs(sum(float(line.split("prob:")[1]) for line in lines) - 1) < 0.01
    assert Image.open(tmp_path / "fig.png").size[0] > 100
    # no display and no --save-fig: written to predict.png, never a crash
    res = run_main("predict.py", img, *model_args(tiny_run), cwd=tmp_path)
    assert res.returncode == 0 and (tmp_path / "predict.png").exists(), res.stderr


def test_predict_several_images_in_one_batch(tiny_run, tmp_path, capsys):
    folder = make_predict_folder(tiny_run, tmp_path / "imgs")
    paths = [folder / "alpha.png", folder / "gray.jpg", folder / "corrupt.jpg"]
    results = predict.main(parse(predict, paths + ["--save-fig", tmp_path / "f.png"] + model_args(tiny_run)))
    out, err = capsys.readouterr()
    assert [r[0] for r in results] == [str(p) for p in paths[:2]] and "corrupt.jpg" in err
    assert out.count("class: daisy") == 2


def test_the_class_file_beside_the_weights_wins_over_a_stale_one_here(tiny_run, tmp_path):
    # A run's weights elsewhere, with its class_indices.json beside them; in the current folder, another
    # run's file with the same names in another order, which would relabel every image. The weights are
    # a plain state_dict, as the tutorial saves it: they do not carry their classes.
    run = tmp_path / "run"
    run.mkdir()
    torch.save(dict(torch.load(tiny_run["weights"], weights_only=True)), run / "w.pth")
    shutil.copy(tiny_run["classes"], run / "class_indices.json")
    here = tmp_path / "here"
    here.mkdir()
    (here / "class_indices.json").write_text(json.dumps({"0": "tulips", "1": "roses", "2": "daisy"}))
    img = sorted((tiny_run["data"] / "val" / "roses").iterdir())[0]
    common = [img, "--model", "resnet18", "--img-size", "32", "--weights", run / "w.pth", "--save-fig", tmp_path / "f.png"]
    res = run_main("predict.py", *common, cwd=here)
    assert res.returncode == 0, res.stderr
    assert [line.split()[1] for line in res.stdout.splitlines() if line.startswith("class: ")] == ["daisy", "roses", "tulips"]
    # Given explicitly, the stale file is used: the user asked for it.
    res = run_main("predict.py", *common, "--class-indices", here / "class_indices.json", cwd=here)
    assert [line.split()[1] for line in res.stdout.splitlines() if line.startswith("class: ")] == ["tulips", "roses", "daisy"]


def test_make_demo_then_every_command_it_prints_works_as_printed(tmp_path, monkeypatch):
    """The newcomer's path: `make demo` (tiny here: 4 images a class, one epoch at 32 px), then each
    command of its "what now" block, as printed. make runs with a stand-in python that records each
    command; each runs then, in order, in this process (run_main: the same exit code and output as
    the printed line, without importing torch nine times)."""
    venv, log = tmp_path / "venv", tmp_path / "commands.jsonl"
    (venv / "bin").mkdir(parents=True)
    (tmp_path / "record.py").write_text(f"import json, sys\nwith open({str(log)!r}, 'a') as f:\n"
                                        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n")
    (venv / "bin" / "python").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                                         f"{shlex.quote(str(tmp_path / 'record.py'))} \"$@\"\n")
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".run-deps").touch()  # the environment is there: make installs nothing
    tiny = "--model resnet18 --weights none --img-size 32 --epochs 1 --batch-size 16 --workers 0"
    res = subprocess.run(["make", "--no-print-directory", "demo", f"VENV={venv}", f"DATA={tmp_path / 'none'}",
                          f"DEMO_DATA={tmp_path / 'data'}", f"DEMO_OUT={tmp_path / 'demo'}",
                          f"DEMO_IMGS={tmp_path / 'imgs'}", "DEMO_PER_CLASS=4", f"DEMO_ARGS={tiny}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    made = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[0] for c in made] == ["split_data.py", "train.py", "predict.py", "batch_predict.py"]
    what_now = res.stdout[res.stdout.index("== what now"):]
    printed = [shlex.split(line) for line in what_now.splitlines() if line.strip().startswith(f"{venv}/bin/")]
    assert [c for c in printed if c[0] != f"{venv}/bin/python"] == [[f"{venv}/bin/pip", "install", "onnx",
                                                                      "onnxruntime"]]  # CI has them (requirements-test.txt)
    printed = [c[1:] for c in printed if c[0] == f"{venv}/bin/python"]
    assert [c[0] for c in printed] == ["predict.py", "batch_predict.py", "evaluate.py", "export_onnx.py",
                                      "batch_predict.py"]
    from matplotlib.text import Text

    from helpers import plots
    words, save = {}, plots.save_figure  # every figure's words, by the script that drew it
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=100: words.setdefault(script, []).append(
        " ".join(t.get_text() for t in fig.findobj(Text))) or save(fig, path, dpi))
    outputs = []
    for script, *argv in made + printed:
        out = run_main(script, *argv, cwd=ROOT)
        assert out.returncode == 0 and "error" not in out.stderr.lower(), (script, argv, out.stdout + out.stderr)
        outputs.append(out.stdout)
    assert "SYNTHETIC" in outputs[0] and "more than 20" not in outputs[1]
    assert len(words["train.py"]) == 3 and len(words["evaluate.py"]) == 2  # curves, confusion matrix, errors
    assert all("SYNTHETIC" in w for w in words["train.py"] + words["evaluate.py"])
    assert {p.name for p in (tmp_path / "demo").iterdir()} >= {
        "resNet18.pth", "curves.png", "confusion_matrix.png", "val_errors.png", "predict.png", "predictions.csv",
        "val_confusion_matrix.png", "resNet18.onnx"}
