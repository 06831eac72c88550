"""Check before acting: nothing of the user's lost, one line for every bad input (issue 7).

Each test makes a script refuse or meet a bad input and then checks what is on disk."""
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import batch_predict
from helpers import checkpoints, cli, plots
import export_onnx
import load_weights
import model
import predict
import split_data
import train
from conftest import ROOT, TINY_TRAIN, interrupted_run, make_class_folders, parse, run_main
from test_errors import assert_one_line_error


def snapshot(folder):
    """Every file under folder with its bytes and time: a refused run must leave it equal."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def split_root(tmp_path):
    root = tmp_path / "flower_data"
    make_class_folders(root / "flower_photos", per_class=5, classes=("daisy", "roses"))
    return root


# ---------------------------------------------------------------- data loss

def test_split_refuses_a_source_inside_train_or_val_and_the_reverse(split_root):
    split_data.main(parse(split_data, ["--data-path", split_root]))
    before = snapshot(split_root)
    for source in (split_root / "train", split_root / "val" / "daisy"):
        with pytest.raises(cli.UserError, match="overlap"):
            split_data.main(parse(split_data, ["--data-path", split_root, "--source", source, "--overwrite"]))
    # the other direction: train/ and val/ would land inside the source
    with pytest.raises(cli.UserError, match="overlap"):
        split_data.main(parse(split_data, ["--data-path", split_root / "flower_photos", "--overwrite",
                                           "--source", split_root / "flower_photos"]))
    assert snapshot(split_root) == before


def test_split_overwrite_removes_only_its_own_files_also_copies(split_root):
    args = ["--data-path", split_root, "--mode", "copy"]
    split_data.main(parse(split_data, args))
    mine = split_root / "val" / "roses" / "my_own.png"
    Image.new("RGB", (8, 8)).save(mine)
    before = snapshot(split_root)
    with pytest.raises(cli.UserError, match="1 file.*no split put there.*my_own.png"):
        split_data.main(parse(split_data, args + ["--overwrite"]))
    assert snapshot(split_root) == before
    mine.unlink()
    split_data.main(parse(split_data, args + ["--overwrite"]))  # its own copies (listed in .split.json) go
    assert len(list((split_root / "train").rglob("*.jpg"))) + len(list((split_root / "val").rglob("*.jpg"))) == 10


def test_split_refuses_train_as_a_symlink(split_root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (split_root / "train").symlink_to(elsewhere)
    with pytest.raises(cli.UserError, match="symbolic link"):
        split_data.main(parse(split_data, ["--data-path", split_root, "--overwrite"]))
    assert (elsewhere / "keep.txt").read_text() == "mine"


def test_refused_and_eval_only_runs_keep_the_earlier_class_index_file(tiny_run, tmp_path):
    classes = tiny_run["classes"]
    before = classes.read_bytes()
    other = tmp_path / "other"
    make_class_folders(other / "train", per_class=2, classes=("ants", "bees"))
    make_class_folders(other / "val", per_class=1, classes=("ants", "bees"))
    base = TINY_TRAIN + ["--data-path", other, "--class-indices", classes]
    # refused: the earlier run's weights are there
    with pytest.raises(cli.UserError, match="earlier run"):
        train.main(parse(train, base + ["--save-path", tiny_run["weights"]]))
    # refused: a class-index file of other classes would be replaced
    with pytest.raises(cli.UserError, match="class_indices.json already exists.*--overwrite"):
        train.main(parse(train, base + ["--save-path", tmp_path / "new" / "w.pth"]))
    assert not (tmp_path / "new").exists()
    # --eval-only never writes it
    train.main(parse(train, ["--data-path", tiny_run["data"], "--model", "resnet18", "--img-size", "32",
                             "--workers", "0", "--eval-only", "--weights", tiny_run["weights"],
                             "--class-indices", classes, "--output-dir", tmp_path / "ev"]))
    assert classes.read_bytes() == before


def test_load_weights_and_export_refuse_to_replace_files(tiny_run, tmp_path):
    src = tmp_path / "resnet18-pre.pth"
    torch.save(model.resnet18().state_dict(), src)
    out = tmp_path / "adapted.pth"
    out.write_bytes(b"my earlier file")
    res = run_main("load_weights.py", "--model", "resnet18", "--weights", src, "--out", out)
    assert_one_line_error(res, "already exists", "--overwrite")
    assert out.read_bytes() == b"my earlier file"
    load_weights.main(parse(load_weights, ["--model", "resnet18", "--weights", src, "--out", out, "--overwrite"]))
    torch.load(out, weights_only=True)

    pytest.importorskip("onnxruntime")
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "labels.txt").write_text("my own labels\n")
    (folder / "m.labels.txt").write_text("my own labels\n")
    args = ["--model", "resnet18", "--weights", tiny_run["weights"], "--class-indices", tiny_run["classes"],
            "--img-size", "32", "--out", folder / "m.onnx", "--check-images", tmp_path / "none"]
    with pytest.raises(cli.UserError, match="m.labels.txt already exists"):  # the model's own labels file
        export_onnx.main(parse(export_onnx, args))
    assert not (folder / "m.onnx").exists()
    (folder / "m.labels.txt").unlink()
    # labels.txt of other classes is left as it is: the model's names are in its own file and in it.
    export_onnx.main(parse(export_onnx, args))
    assert (folder / "labels.txt").read_text() == "my own labels\n"
    assert (folder / "m.labels.txt").read_text().split() == ["daisy", "roses", "tulips"]
    before = snapshot(folder)
    with pytest.raises(cli.UserError, match="m.onnx already exists.*--overwrite"):
        export_onnx.main(parse(export_onnx, args))
    assert snapshot(folder) == before


def test_a_failed_onnx_check_keeps_no_file(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    args = ["--model", "resnet18", "--weights", tiny_run["weights"], "--class-indices", tiny_run["classes"],
            "--img-size", "32", "--out", tmp_path / "m.onnx", "--atol", "1e-12"]
    with pytest.raises(cli.UserError, match="differs from PyTorch.*not kept"):
        export_onnx.main(parse(export_onnx, args))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- hostile images

def bomb_png(path, side=30000):
    """A tiny PNG that declares side x side pixels (Pillow refuses or decodes gigabytes)."""
    import struct
    import zlib
    raw = zlib.compress(b"\x00" * (side + 1) * 1, 9)  # one row; the rest is missing

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_skipped_and_named(tiny_run, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(sorted((tiny_run["data"] / "val").rglob("*.jpg"))):
        shutil.copy(p, folder / f"ok_{i}.jpg")
    bomb_png(folder / "bomb.png")
    rows, skipped = batch_predict.main(parse(batch_predict, [
        folder, "--model", "resnet18", "--img-size", "32", "--weights", tiny_run["weights"],
        "--class-indices", tiny_run["classes"], "--workers", "0"]))
    assert len(rows) == 3 and [p.name for p, _ in skipped] == ["bomb.png"]
    assert "bomb.png" in capsys.readouterr().err
    # in training, the epoch goes on without it
    data = tmp_path / "data"
    shutil.copytree(tiny_run["data"] / "train", data / "train")
    shutil.copytree(tiny_run["data"] / "val", data / "val")
    bomb_png(data / "train" / "daisy" / "bomb.png")
    res = train.main(parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", tmp_path / "w" / "w.pth",
                                                "--class-indices", tmp_path / "w" / "ci.json"]))
    assert len(res["history"]) == 1
    assert "skipped" in capsys.readouterr().err


def test_an_extreme_aspect_ratio_costs_little_memory(tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 20000), (10, 200, 30)).save(strip)
    code = ("import resource, sys; sys.path.insert(0, %r); from helpers.imaging import EvalTransform, TrainTransform, open_image;"
            "import numpy as np; before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "x = EvalTransform(112)(open_image(%r)); y = TrainTransform(112)(open_image(%r));"
            "print(x.shape, tuple(y.shape), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)"
            % (str(ROOT), str(strip), str(strip)))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    shape, grown_kib = res.stdout.rsplit(" ", 1)[0], int(res.stdout.split()[-1])
    assert "(3, 112, 112)" in shape
    assert grown_kib < 200 * 1024  # the whole strip resized to a short side of 128 would be 2.5 GB


# ---------------------------------------------------------------- wrong results

def test_epochs_0_and_other_out_of_range_numbers_are_one_line_errors(tmp_path):
    for argv in (["--epochs", "0"], ["--lr", "-1"], ["--workers", "-2"], ["--label-smoothing", "1.5"],
                 ["--img-size", "0"], ["--batch-size", "0"], ["--batch-size", "x"]):
        res = run_main("train.py", *argv, cwd=tmp_path)
        assert_one_line_error(res, argv[0])
        assert res.returncode == 2
    assert_one_line_error(run_main("export_onnx.py", "--opset", "5", cwd=tmp_path), "--opset")
    assert_one_line_error(run_main("batch_predict.py", "--topk", "0", cwd=tmp_path), "--topk")
    assert_one_line_error(run_main("split_data.py", "--val-rate", "1", cwd=tmp_path), "--val-rate")
    assert list(tmp_path.iterdir()) == []


def small_run(data, out, *extra):
    return parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", out / "best.pth", "--batch-size", "4",
                                      "--class-indices", out / "ci.json", *extra])


def test_resume_refuses_a_contradicting_flag_and_names_both_values(data, tmp_path):
    interrupted_run(small_run(data, tmp_path, "--epochs", "2"), 3)
    ckpt = tmp_path / "last.pth"
    before = snapshot(tmp_path)
    with pytest.raises(cli.UserError, match=r"--data-path .*elsewhere contradicts the resumed run's .*flower_data"):
        train.main(parse(train, ["--resume", ckpt, "--data-path", tmp_path / "elsewhere"]))
    with pytest.raises(cli.UserError, match=r"--lr 0.5 contradicts the resumed run's 0.001"):
        train.main(parse(train, ["--resume", ckpt, "--lr", "0.5"]))
    assert snapshot(tmp_path) == before
    # the same value again is no contradiction; --workers may change
    res = train.main(parse(train, ["--resume", ckpt, "--lr", "0.001", "--workers", "0",
                                   "--data-path", str(data) + "/"]))
    assert len(res["history"]) == 2


def test_an_interrupted_epoch_keeps_its_seconds(data, tmp_path):
    interrupted_run(small_run(data, tmp_path, "--epochs", "1"), 3)
    saved = torch.load(tmp_path / "last.pth", weights_only=True)
    assert saved["step"] == 3 and saved["seconds"] > 0  # the time of the steps done before Ctrl-C
    res = train.main(parse(train, ["--resume", tmp_path / "last.pth"]))
    row = res["history"][0]
    assert row["seconds"] > saved["seconds"]
    assert row["images_per_s"] * row["seconds"] == pytest.approx(18, rel=0.02)  # all 18 images, over all the time


def test_extending_a_cosine_run_never_jumps_mid_schedule(data, tmp_path, capsys, monkeypatch):
    interrupted_run(small_run(data, tmp_path, "--epochs", "3", "--lr-scheduler", "cosine"), 6)  # 5 steps an epoch: in epoch 2 of 3
    ckpt = torch.load(tmp_path / "last.pth", weights_only=True)
    lr_at_stop = ckpt["optimizer"]["param_groups"][0]["lr"]
    lrs = []  # the rate of each optimizer step: the schedule steps right after the optimizer
    step = torch.optim.lr_scheduler.LRScheduler.step

    def recording_step(self, *a, **k):
        if self.last_epoch >= 0:  # not the scheduler's own first step, when it is made
            lrs.append(self.optimizer.param_groups[0]["lr"])
        return step(self, *a, **k)
    monkeypatch.setattr(torch.optim.lr_scheduler.LRScheduler, "step", recording_step)
    train.main(parse(train, ["--resume", tmp_path / "last.pth", "--epochs", "6"]))
    assert "goes on from its current rate" in capsys.readouterr().out
    assert lrs[0] == pytest.approx(lr_at_stop)
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), lrs  # never rises
    assert lrs[-1] < 0.05 * lrs[0]  # and still ends near zero


def _agree(rank, path, results):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    from helpers import stop, training
    if rank == 1:
        stop.request(signal.SIGTERM)  # the signal reached only the second process
    world = training.World(rank, 2)
    results.put((rank, training.stop_signal(world, torch.device("cpu"))))
    # Hand the answer over now and leave without tearing gloo down: on torch 2.0 a process may
    # block in destroy_process_group once its peer has gone, which is not what this test is about.
    results.close()
    results.join_thread()
    os._exit(0)


def test_processes_agree_on_a_signal_that_reached_only_one(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_agree, args=(r, tmp_path / "rendezvous", results)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert got == {0: signal.SIGTERM, 1: signal.SIGTERM}  # both stop, and both know why


def test_workers_0_leaves_the_global_random_state_alone(tiny_run):
    from helpers import data, imaging
    ds = data.ClassFolder(tiny_run["data"] / "train", imaging.TrainTransform(32))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    ds[(0, 42)]
    assert torch.equal(torch.get_rng_state(), state)
    a, b = ds[(1, 7)][0], ds[(1, 7)][0]
    assert torch.equal(a, b)  # the sample's own seed decides its augmentation


def test_a_finished_script_leaves_its_objects_to_the_end_of_the_process(monkeypatch):
    # After main returns, run_cli freezes the garbage collector: the interpreter's exit skips its last
    # pass over every object (0.55 s with torch loaded). Not on failure: that path is not timed.
    frozen = []
    monkeypatch.setattr(cli.gc, "freeze", lambda: frozen.append(True))
    cli.run_cli(lambda args: None, cli.ArgumentParser(), [])
    assert frozen == [True]

    def refused(args):
        raise cli.UserError("no")
    with pytest.raises(SystemExit):
        cli.run_cli(refused, cli.ArgumentParser(), [])
    assert frozen == [True]


# ---------------------------------------------------------------- one line, not a traceback

def test_outputs_into_missing_folders_are_made_onto_folders_refused_before_any_work(tiny_run, tmp_path):
    m = ["--model", "resnet18", "--img-size", "32", "--weights", tiny_run["weights"],
         "--class-indices", tiny_run["classes"], "--workers", "0"]
    folder = tiny_run["data"] / "val" / "daisy"
    res = run_main("batch_predict.py", folder, "--csv", tmp_path, *m)
    assert_one_line_error(res, "is a folder")
    assert "image:" not in res.stdout  # refused before predicting anything
    rows, _ = batch_predict.main(parse(batch_predict, [folder, "--csv", tmp_path / "new" / "deeper" / "p.csv"] + m))
    assert len((tmp_path / "new" / "deeper" / "p.csv").read_text().splitlines()) == len(rows) + 1
    img = next(folder.iterdir())
    assert_one_line_error(run_main("predict.py", img, "--save-fig", tmp_path, *m), "is a folder")
    assert_one_line_error(run_main("train.py", *TINY_TRAIN, "--data-path", tiny_run["data"],
                                     "--save-path", tmp_path, "--class-indices", tmp_path / "ci.json"), "is a folder")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_main("train.py", *TINY_TRAIN, "--data-path", tiny_run["data"],
                                     "--save-path", blocker / "w.pth"), "is a file, not a folder")
    assert blocker.read_text() == "x"


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux's read-only /sys")
def test_read_only_destinations_are_one_line_errors(tiny_run, tmp_path):
    m = ["--model", "resnet18", "--img-size", "32", "--weights", tiny_run["weights"],
         "--class-indices", tiny_run["classes"], "--workers", "0"]
    res = run_main("batch_predict.py", tiny_run["data"] / "val" / "daisy", "--csv", "/sys/kernel/p.csv", *m)
    assert_one_line_error(res, "cannot write the --csv file", "/sys/kernel")
    assert_one_line_error(run_main("train.py", *TINY_TRAIN, "--data-path", tiny_run["data"],
                                     "--save-path", "/sys/kernel/w.pth"), "cannot write")


def test_a_full_disk_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "best.pth"
    target.write_bytes(b"the old weights")

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(cli.UserError, match="disk is full.*best.pth"):
        checkpoints.save({"x": 1}, target)
    assert target.read_bytes() == b"the old weights" and [p.name for p in tmp_path.iterdir()] == ["best.pth"]


def test_ctrl_c_during_the_final_report_is_one_line(data, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(plots, "plot_confusion", interrupted)
    argv = [str(a) for a in TINY_TRAIN + ["--data-path", data, "--save-path", tmp_path / "w.pth",
                                          "--class-indices", tmp_path / "ci.json"]]
    with pytest.raises(SystemExit) as stop:
        cli.run_cli(train.main, train.get_args_parser(), argv)
    assert stop.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: interrupted") and "Traceback" not in "\n".join(err)
    assert (tmp_path / "w.pth").exists() and not list(tmp_path.glob(".*tmp*"))


def test_a_last_batch_of_one_image_trains(tmp_path):
    data = tmp_path / "data"
    make_class_folders(data / "train", per_class=3, classes=("a", "b", "c"))  # 9 images, batches of 4: 4, 4, 1
    make_class_folders(data / "val", per_class=1, classes=("a", "b", "c"))
    res = train.main(parse(train, TINY_TRAIN + ["--data-path", data, "--batch-size", "4",
                                                "--save-path", tmp_path / "w.pth", "--class-indices", tmp_path / "c.json"]))
    assert len(res["history"]) == 1


def test_bad_class_index_files_and_checkpoints(tiny_run, tmp_path):
    bad = tmp_path / "ci.json"
    bad.write_text(json.dumps({"0": 1, "1": ["x"], "2": "tulips"}))
    img = next((tiny_run["data"] / "val" / "daisy").iterdir())
    assert_one_line_error(run_main("predict.py", img, "--class-indices", bad, "--weights", tiny_run["weights"]),
                          "non-empty strings")
    ckpt = torch.load(tiny_run["weights"].parent / "last.pth", weights_only=True)
    del ckpt["optimizer"]["state"], ckpt["scheduler"]
    broken = tmp_path / "broken.pth"
    torch.save(ckpt, broken)
    assert_one_line_error(run_main("train.py", "--resume", broken), "incomplete checkpoint", "scheduler")


def test_truncated_archive_and_url_as_a_plain_path(tmp_path):
    from test_download import make_flowers_tgz
    data = tmp_path / "data"
    data.mkdir()
    whole = tmp_path / "flowers.tgz"
    make_flowers_tgz(whole, tmp_path)
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    weights = tmp_path / "weights.pth"  # the user's own files: never "delete it"
    weights.write_bytes(b"PK\x03\x04 not a tar")
    for given in (cut, weights):
        res = run_main("split_data.py", "--data-path", data, "--download", "--url", given, "--sha256", "none")
        assert_one_line_error(res, f"{given} is not a tar archive")
        assert "delete" not in res.stderr and "download" not in res.stderr
    assert weights.exists() and cut.exists() and sorted(p.name for p in data.iterdir()) == []  # the user's file kept, nothing half-made
    res = run_main("split_data.py", "--data-path", data, "--download", "--url", tmp_path / "nothing.tgz")
    assert_one_line_error(res, "neither a URL", "nor an existing file")
    split_data.main(parse(split_data, ["--data-path", data, "--download", "--url", whole, "--sha256", "none"]))
    assert (data / "train" / "daisy").is_dir()


def test_a_truncated_download_is_not_kept(tmp_path):
    from test_download import make_flowers_tgz
    import functools
    import http.server
    import threading
    www = tmp_path / "www"
    www.mkdir()
    make_flowers_tgz(tmp_path / "whole.tgz", tmp_path)
    (www / "flower_photos.tgz").write_bytes((tmp_path / "whole.tgz").read_bytes()[:3000])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    data = tmp_path / "data"
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/flower_photos.tgz"
        with pytest.raises(cli.UserError, match="download .* not a complete tar archive.*run again"):
            split_data.main(parse(split_data, ["--data-path", data, "--download", "--url", url, "--sha256", "none"]))
    finally:
        httpd.shutdown()
    assert not data.exists()  # the broken download is gone (never reused as "the user's own"), its folder too


# ---------------------------------------------------------------- confusing cases

def test_hidden_files_sub_folders_and_notebook_checkpoints(tmp_path, capsys):
    src = tmp_path / "flower_photos"
    make_class_folders(src, per_class=4, classes=("a", "b"))
    (src / "a" / "._a_0.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (src / "a" / "2019").mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(src / "a" / "2019" / "old.jpg")
    (src / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (40, 40)).save(src / ".ipynb_checkpoints" / "x.jpg")
    split = split_data.main(parse(split_data, ["--data-path", tmp_path, "--val-rate", "0.25"]))
    assert sorted(split) == ["a", "b"]
    assert "2019/old.jpg" in split["a"][0] + split["a"][1]
    assert not any(f.startswith("._") for t, v, _ in split.values() for f in t + v)
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    res = train.main(parse(train, TINY_TRAIN + ["--data-path", tmp_path, "--save-path", tmp_path / "r" / "w.pth",
                                                "--class-indices", tmp_path / "r" / "ci.json"]))
    assert res["classes"] == ["a", "b"]
    assert "using 7 images for training" in capsys.readouterr().out  # 9 images, 2 in val; sub-folder included


def test_a_class_with_one_image_is_warned_about_and_still_trains(tmp_path, capsys):
    src = tmp_path / "flower_photos"
    make_class_folders(src, per_class=6, classes=("a", "b"))
    make_class_folders(src, per_class=1, classes=("rare",))
    split_data.main(parse(split_data, ["--data-path", tmp_path]))
    assert "class rare has 1 image(s) and none in val/" in capsys.readouterr().out
    res = train.main(parse(train, TINY_TRAIN + ["--data-path", tmp_path, "--save-path", tmp_path / "r" / "w.pth",
                                                "--class-indices", tmp_path / "r" / "ci.json"]))
    assert res["classes"] == ["a", "b", "rare"]
    assert "val/ has no images of rare" in capsys.readouterr().err


def test_an_archive_with_several_top_level_entries(tmp_path):
    src = make_class_folders(tmp_path / "src", per_class=3, classes=("daisy", "roses"))
    archive = tmp_path / "flat.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for d in ("daisy", "roses"):
            tar.add(src / d, arcname=d)  # classes at the archive's top level
        info = tarfile.TarInfo("LICENSE.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"lic"))
    data = tmp_path / "data"
    data.mkdir()
    split_data.main(parse(split_data, ["--data-path", data, "--download", "--url", archive, "--sha256", "none"]))
    assert sorted(p.name for p in (data / "flower_photos").iterdir() if p.is_dir()) == ["daisy", "roses"]


def test_predict_on_a_folder_says_use_batch_predict(tmp_path):
    assert_one_line_error(run_main("predict.py", tmp_path), "is a folder", "batch_predict.py")


def test_labels_beside_the_onnx_file_win_over_a_stale_class_index_file(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    out, _ = export_onnx.main(parse(export_onnx, [
        "--model", "resnet18", "--weights", tiny_run["weights"], "--class-indices", tiny_run["classes"],
        "--img-size", "32", "--out", tmp_path / "m" / "m.onnx", "--check-images", tmp_path / "none"]))
    (tmp_path / "class_indices.json").write_text(json.dumps({"0": "stale0", "1": "stale1", "2": "stale2"}))
    res = run_main("batch_predict.py", tiny_run["data"] / "val" / "daisy", "--onnx", out, "--img-size", "32",
                     cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "stale" not in res.stdout and "class: " in res.stdout


def test_predict_many_images_with_a_bad_one_in_a_single_batch_keeps_the_others(tiny_run, tmp_path):
    good = sorted((tiny_run["data"] / "val").rglob("*.jpg"))[:2]
    bad = bomb_png(tmp_path / "b.png")
    results = predict.main(parse(predict, good + [bad, "--model", "resnet18", "--img-size", "32",
                                                  "--weights", tiny_run["weights"], "--class-indices", tiny_run["classes"],
                                                  "--save-fig", tmp_path / "f.png", "--workers", "0"]))
    assert [r[0] for r in results] == [str(p) for p in good]
    assert np.isclose(sum(results[0][2]), 1, atol=1e-3)


def test_a_diverged_run_stops_in_one_line_keeping_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    calls = [0]
    real_forward = torch.nn.CrossEntropyLoss.forward

    def forward(self, logits, target):  # the loss of epoch 2's second batch onwards is NaN
        calls[0] += 1
        loss = real_forward(self, logits, target)
        return loss * float("nan") if calls[0] > 6 else loss
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", forward)
    args = parse(train, TINY_TRAIN + ["--data-path", data, "--batch-size", "4", "--epochs", "3",
                                      "--save-path", tmp_path / "w.pth", "--class-indices", tmp_path / "ci.json"])
    with pytest.raises(cli.UserError, match=r"loss became nan at epoch 2, step \d: training diverged; lower --lr "
                                            r"\(it is 0.001\) and train again \(.*last.pth holds the last good epoch\)"):
        train.main(args)
    ckpt = torch.load(tmp_path / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    best = torch.load(tmp_path / "w.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point())
    # NaN weights are refused by prediction and export, whoever made them
    broken = {k: v * float("nan") if v.is_floating_point() else v for k, v in best.items()}
    torch.save(broken, tmp_path / "nan.pth")
    img = next((data / "val" / "daisy").iterdir())
    for script, argv in ((predict, [img, "--save-fig", tmp_path / "p.png"]), (export_onnx, ["--out", tmp_path / "m.onnx"])):
        with pytest.raises(cli.UserError, match="holds NaN or infinite weights .*diverged; train again with a lower --lr"):
            script.main(parse(script, argv + ["--model", "resnet18", "--img-size", "32", "--weights", tmp_path / "nan.pth",
                                              "--class-indices", tmp_path / "ci.json"]))
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("how", ["link", "hard links", "a copy of one"])
def test_a_val_that_shares_images_with_train_is_refused(tmp_path, how):
    make_class_folders(tmp_path / "d" / "train", per_class=4)
    if how == "link":
        os.symlink(tmp_path / "d" / "train", tmp_path / "d" / "val")
    else:
        make_class_folders(tmp_path / "d" / "val", per_class=2, size=48)  # other photos
        source = tmp_path / "d" / "train" / "roses" / "roses_1.jpg"
        target = tmp_path / "d" / "val" / "roses" / "same.jpg"
        os.link(source, target) if how == "hard links" else shutil.copy(source, target)
    with pytest.raises(cli.UserError, match="(shares 1 image|is .*train .a link to it.).*grade the model on"):
        train.main(parse(train, TINY_TRAIN + ["--data-path", tmp_path / "d", "--save-path", tmp_path / "w.pth",
                                              "--class-indices", tmp_path / "ci.json"]))
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "ci.json").exists()


def test_resuming_after_the_data_set_changed_is_refused_then_goes_on_once_it_is_back(tmp_path):
    data = tmp_path / "d"
    make_class_folders(data / "train", per_class=4)
    make_class_folders(data / "val", per_class=1)
    args = parse(train, TINY_TRAIN + ["--data-path", data, "--batch-size", "4", "--epochs", "2",
                                      "--save-path", tmp_path / "run" / "w.pth", "--class-indices", tmp_path / "ci.json"])
    assert interrupted_run(args, 2) == 130
    added = data / "train" / "daisy" / "new.jpg"
    shutil.copy(data / "val" / "daisy" / "daisy_0.jpg", tmp_path / "new.jpg")
    make_class_folders(tmp_path / "more", per_class=1, size=52, classes=("daisy",))
    shutil.copy(tmp_path / "more" / "daisy" / "daisy_0.jpg", added)
    resume = parse(train, ["--resume", tmp_path / "run" / "last.pth", "--workers", "0"])
    with pytest.raises(cli.UserError, match=r"the data set changed since .*last.pth was saved \(12 train and 3 val "
                                            r"images then, 13 and 3 now"):
        train.main(resume)
    added.unlink()
    assert len(train.main(resume)["history"]) == 2


def test_a_second_run_into_the_same_folder_and_a_split_under_a_training_run_are_refused(data, tmp_path):
    from helpers import files
    out = tmp_path / "run"
    argv = TINY_TRAIN + ["--data-path", data, "--save-path", out / "w.pth", "--class-indices", out / "ci.json"]
    out.mkdir()
    with files.locked(out, "the first run"):  # what a first train.py holds while it trains
        with pytest.raises(cli.UserError, match=f"{out} is in use by another run"):
            train.main(parse(train, argv))
    assert sorted(p.name for p in out.iterdir()) == []  # refused before its first write; no .lock left
    with files.locked(data, "a training run reading it", shared=True):  # a training run reads the data
        with pytest.raises(cli.UserError, match=f"{data} is in use by another run"):
            split_data.main(parse(split_data, ["--data-path", data, "--val-rate", "0.25", "--overwrite"]))
    assert train.main(parse(train, argv))["history"] and not (out / ".lock").exists()
