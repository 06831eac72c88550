"""What a careless or hostile user tried, and what must happen: one line, nothing of theirs lost,
no unbounded memory or waiting."""
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

import batch_predict
import split_data
import train
from helpers import classnames, cli
from conftest import ROOT, TINY_TRAIN, at_training_batch, interrupted_run, make_class_folders, parse, run_main
from test_errors import assert_one_line_error


def model_args(tiny_run):
    return ["--model", "resnet18", "--img-size", "32", "--weights", tiny_run["weights"],
            "--class-indices", tiny_run["classes"], "--workers", "0"]


def test_reports_never_land_on_costly_files_inputs_links_or_devices(tiny_run, tmp_path):
    folder = tiny_run["data"] / "val" / "daisy"
    before = tiny_run["classes"].read_bytes()
    res = run_main("batch_predict.py", folder, "--csv", tiny_run["classes"], *model_args(tiny_run))
    assert_one_line_error(res, "must end in .csv")
    assert tiny_run["classes"].read_bytes() == before
    link = tmp_path / "p.csv"
    link.symlink_to("/dev/null")
    assert_one_line_error(run_main("batch_predict.py", folder, "--csv", link, *model_args(tiny_run)),
                          "link or a special file")
    img = tmp_path / "photo.png"
    shutil.copy(next(folder.iterdir()), tmp_path / "photo.jpg")
    Image.open(tmp_path / "photo.jpg").save(img)
    before = img.read_bytes()
    res = run_main("predict.py", img, "--save-fig", img, *model_args(tiny_run))
    assert_one_line_error(res, "also an input")
    assert img.read_bytes() == before
    assert_one_line_error(run_main("predict.py", img, "--save-fig", tmp_path / "f.bmp", *model_args(tiny_run)),
                          "must end in .png")


def test_a_run_s_outputs_may_not_be_one_file(data, tmp_path):
    for extra in (["--save-path", tmp_path / "a.pth", "--class-indices", tmp_path / "a.pth"],
                  ["--save-path", tmp_path / "w.pth", "--checkpoint", tmp_path / "w.pth"]):
        with pytest.raises(cli.UserError, match="same file"):
            train.main(parse(train, TINY_TRAIN + ["--data-path", data, *extra]))
    assert list(tmp_path.iterdir()) == []


def run_and_interrupt(data, out, at_batch):
    interrupted_run(parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", out / "best.pth", "--epochs", "2",
                                               "--batch-size", "4", "--class-indices", out / "ci.json"]), at_batch)


def test_a_resumed_run_writes_beside_its_checkpoint_and_nowhere_else(data, tmp_path, monkeypatch):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    monkeypatch.chdir(run)  # the run's paths are relative to here...
    run_and_interrupt(data, __import__("pathlib").Path("."), 3)
    monkeypatch.chdir(tmp_path)  # ...and it is resumed from elsewhere, as a copy
    shutil.copytree(run, tmp_path / "copy")
    original = {p.name: p.read_bytes() for p in run.iterdir()}
    res = train.main(parse(train, ["--resume", tmp_path / "copy" / "last.pth"]))
    assert len(res["history"]) == 2
    assert {p.name: p.read_bytes() for p in run.iterdir()} == original  # the original run untouched
    assert (tmp_path / "copy" / "best.pth").exists() and (tmp_path / "copy" / "history.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "runs"]  # nothing written where we stand
    other = tmp_path / "unrelated.pth"
    other.write_bytes(b"mine")
    with pytest.raises(cli.UserError, match="--save-path .*contradicts the resumed run"):
        train.main(parse(train, ["--resume", tmp_path / "copy" / "last.pth", "--epochs", "3", "--save-path", other]))
    assert other.read_bytes() == b"mine"


def test_a_damaged_checkpoint_setting_is_refused(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run["weights"].parent / "last.pth", weights_only=True)
    for key, value in (("batch_size", 0), ("lr", "fast"), ("opt", "rocket")):
        bad = dict(ckpt, settings=dict(ckpt["settings"], **{key: value}))
        torch.save(bad, tmp_path / "bad.pth")
        with pytest.raises(cli.UserError, match=f"invalid setting --{key.replace('_', '-')}"):
            train.main(parse(train, ["--resume", tmp_path / "bad.pth"]))


def test_split_refuses_a_link_to_a_folder_inside_train_and_deletes_nothing(tmp_path):
    make_class_folders(tmp_path / "flower_photos", per_class=4, classes=("a", "b"))
    split_data.main(parse(split_data, ["--data-path", tmp_path]))
    stuff = tmp_path / "my_stuff"
    stuff.mkdir()
    (stuff / "precious.txt").write_text("mine")
    (tmp_path / "train" / "a" / "x").symlink_to(stuff)
    before = sorted(str(p) for p in (tmp_path / "train").rglob("*"))
    with pytest.raises(cli.UserError, match="no split put there.*train/a/x"):
        split_data.main(parse(split_data, ["--data-path", tmp_path, "--overwrite"]))
    assert sorted(str(p) for p in (tmp_path / "train").rglob("*")) == before
    assert (stuff / "precious.txt").read_text() == "mine"


def test_pipes_and_device_links_named_like_images_are_skipped_and_named(tiny_run, tmp_path, capsys):
    src = make_class_folders(tmp_path / "flower_photos", per_class=4, classes=("a", "b"))
    os.mkfifo(src / "a" / "pipe.jpg")
    (src / "b" / "zero.jpg").symlink_to("/dev/zero")
    split = split_data.main(parse(split_data, ["--data-path", tmp_path, "--mode", "copy"]))
    out = capsys.readouterr().out
    assert "pipe.jpg: not a regular file" in out and "zero.jpg: not a regular file" in out
    assert sum(len(t) + len(v) for t, v, _ in split.values()) == 8
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(next((tiny_run["data"] / "val" / "daisy").iterdir()), folder / "ok.jpg")
    os.mkfifo(folder / "pipe.png")
    rows, skipped = batch_predict.main(parse(batch_predict, [folder] + model_args(tiny_run)))
    assert len(rows) == 1 and [p.name for p, _ in skipped] == ["pipe.png"]
    assert_one_line_error(run_main("predict.py", folder / "pipe.png", *model_args(tiny_run)), "not a regular file")


def test_a_round_link_in_a_class_folder_adds_no_images(data, tmp_path, capsys):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "train" / "daisy" / "loop").symlink_to("..")
    res = train.main(parse(train, TINY_TRAIN + ["--data-path", copy, "--save-path", tmp_path / "w.pth",
                                                "--class-indices", tmp_path / "ci.json"]))
    assert "using 18 images for training" in capsys.readouterr().out
    assert res["classes"] == ["daisy", "roses", "tulips"]


def jpeg_declaring(path, width, height, progressive=False):
    """A tiny JPEG whose header says width x height (a real 8x8 image with its size bytes changed)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", progressive=progressive)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def test_a_progressive_jpeg_is_bounded_by_its_whole_size_not_its_draft(tmp_path):
    from helpers import imaging
    # 12000 x 12000 at 1/8 would be 2.25 MP: fine for a baseline JPEG, but libjpeg keeps a progressive
    # one's coefficients for the whole 144 MP (about 430 MB at 4:2:0) whatever the draft.
    baseline = jpeg_declaring(tmp_path / "baseline.jpg", 12000, 12000)
    progressive = jpeg_declaring(tmp_path / "progressive.jpg", 12000, 12000, progressive=True)
    imaging.open_image(baseline).close()
    with pytest.raises(cli.UserError, match="more than the 24 MP allowed.*a progressive JPEG is decoded whole"):
        imaging.open_image(progressive)
    small = tmp_path / "small.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(small, "JPEG", progressive=True)
    assert imaging.load_rgb(small).size == (64, 48)  # progressive photos of a normal size still read


def test_float_tiffs_are_scaled_not_black(tmp_path):
    from helpers import imaging
    for name, values in (("unit", np.linspace(0, 1, 32 * 32)), ("wide", np.linspace(-500, 3000, 32 * 32))):
        Image.fromarray(values.reshape(32, 32).astype(np.float32), mode="F").save(tmp_path / f"{name}.tif")
        pixels = np.asarray(imaging.load_rgb(tmp_path / f"{name}.tif"))
        assert pixels.min() == 0 and pixels.max() == 255, name


def test_a_huge_declared_jpeg_is_refused_before_decoding(tiny_run, tmp_path):
    bomb = jpeg_declaring(tmp_path / "big.jpg", 50000, 50000)  # 1/8 scale would still be 39 MP
    # ru_maxrss is the peak since the process began, and Linux carries the parent's across exec: a delta.
    code = ("import resource, sys; sys.path.insert(0, %r); from helpers.imaging import load_rgb; from helpers.cli import UserError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    load_rgb(%r, min_side=800)\nexcept UserError as e:\n    print(e)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)" % (str(ROOT), str(bomb)))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "more than the 24 MP allowed" in res.stdout
    assert int(res.stdout.split()[-1]) < 100 * 1024  # KiB: nothing decoded


def test_absurd_numbers_are_refused_before_anything_starts(tmp_path):
    for argv in (["--img-size", "100000"], ["--workers", "1000"], ["--lr", "inf"], ["--warmup-epochs", "inf"],
                 ["--seed", str(10 ** 23)], ["--batch-size", str(10 ** 9)], ["--clip-grad-norm", "nan"]):
        assert_one_line_error(run_main("train.py", *argv, cwd=tmp_path), argv[0])
    assert_one_line_error(run_main("predict.py", "--workers", "-1", cwd=tmp_path), "--workers")
    assert_one_line_error(run_main("benchmark.py", "--batch-size", "0", cwd=tmp_path), "--batch-size")
    assert_one_line_error(run_main("benchmark.py", "--predict-folder", ROOT / "README.md", cwd=tmp_path), "is a file")
    assert list(tmp_path.iterdir()) == []


def test_a_class_index_file_of_a_million_names_is_refused_before_building_a_model(tiny_run, tmp_path):
    huge = tmp_path / "ci.json"
    huge.write_text(json.dumps({str(i): f"c{i}" for i in range(10 ** 6)}))
    img = next((tiny_run["data"] / "val" / "daisy").iterdir())
    plain = tmp_path / "plain.pth"  # the tutorial's file, which carries no classes: its fc says how many
    torch.save(dict(torch.load(tiny_run["weights"], weights_only=True)), plain)
    start = time.perf_counter()
    res = run_main("predict.py", img, "--model", "resnet50", "--weights", plain, "--class-indices", huge)
    assert_one_line_error(res, "trained for 3 classes", "lists 1000000")
    res = run_main("predict.py", img, "--weights", tiny_run["weights"], "--class-indices", huge)
    assert_one_line_error(res, "lists 1000000 classes", "holds 3")
    assert time.perf_counter() - start < 60
    bad = tmp_path / "nl.json"
    bad.write_text(json.dumps({"0": "daisy\nroses", "1": "x", "2": "y"}))
    assert_one_line_error(run_main("predict.py", img, "--class-indices", bad, "--weights", tiny_run["weights"]),
                          "on one line")


def test_ctrl_c_while_torch_is_still_loading_is_one_line(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for script in ("train.py", "load_weights.py"):
        p = subprocess.Popen([sys.executable, str(ROOT / script)], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
                             text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(0.4)  # inside `import torch`, before run_cli (it takes seconds)
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=120)[1]
        assert p.returncode != 0
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error:"), err


def test_tar_members_that_are_devices_or_pipes_are_named(tmp_path):
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("flower_photos/daisy/p.jpg")
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(cli.UserError, match="is a device or a pipe"):
        split_data.main(parse(split_data, ["--data-path", data, "--download", "--url", archive, "--sha256", "none"]))
    assert list(data.iterdir()) == []


def test_an_onnx_model_of_another_input_type_is_one_line(tiny_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.INT64, ["batch", 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT64, ["batch", 3])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    res = run_main("batch_predict.py", tiny_run["data"] / "val" / "daisy", "--onnx", path)
    assert_one_line_error(res, "takes tensor(int64)")


# ---------------------------------------------------------------- round 2: what a second hostile user found

def run_with_file_size_limit(limit, script, *argv):
    """A script whose every file write beyond `limit` bytes fails, as on a full disk (no root needed)."""
    import resource

    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], env=env, capture_output=True,
                          text=True, timeout=600, preexec_fn=limit_writes)


def test_torch_save_on_a_full_disk_is_one_line_and_keeps_the_old_file(tiny_run, tmp_path):
    out = tmp_path / "deeper" / "adapted.pth"
    out.parent.mkdir()
    out.write_bytes(b"old")
    res = run_with_file_size_limit(1 << 20, "load_weights.py", "--model", "resnet18", "--weights",
                                   tiny_run["weights"], "--num-classes", "3", "--out", out, "--overwrite")
    assert_one_line_error(res, "disk full", "adapted.pth")
    assert out.read_bytes() == b"old" and os.listdir(out.parent) == ["adapted.pth"]
    # a folder made for the file goes again
    res = run_with_file_size_limit(1 << 20, "load_weights.py", "--model", "resnet18", "--weights",
                                   tiny_run["weights"], "--num-classes", "3", "--out", tmp_path / "new" / "a.pth")
    assert_one_line_error(res, "disk full")
    assert not (tmp_path / "new").exists()


def test_a_split_that_cannot_write_names_where_and_leaves_nothing(tmp_path):
    source = make_class_folders(tmp_path / "photos", per_class=4)
    res = run_with_file_size_limit(300, "split_data.py", "--source", source, "--data-path", tmp_path / "new" / "root",
                                   "--max-size", "32")
    assert_one_line_error(res, "cannot write", str(tmp_path / "new" / "root"))
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_outputs_through_a_link_are_still_one_file(data, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "alias").symlink_to("c")
    with pytest.raises(cli.UserError, match="same file"):
        train.main(parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", tmp_path / "c" / "w.pth",
                                              "--checkpoint", tmp_path / "alias" / "w.pth"]))
    assert list((tmp_path / "c").iterdir()) == []


def test_no_output_lands_among_the_images_or_on_the_starting_weights(data, tiny_run, tmp_path):
    photo = next((data / "train" / "daisy").iterdir())
    before = photo.read_bytes()
    listing = sorted(p.name for p in (data / "train" / "daisy").iterdir())
    base = TINY_TRAIN + ["--data-path", data, "--overwrite", "--class-indices", tmp_path / "ci.json"]
    for extra, words in ((["--save-path", photo], "inside"),
                         (["--save-path", tmp_path / "w.jpg"], "must end in .pth"),
                         (["--save-path", data / "train" / "daisy" / "w.pth"], "inside"),
                         (["--save-path", tmp_path / "w.pth", "--output-dir", data / "val"], "inside"),
                         (["--save-path", tmp_path / "w.pth", "--class-indices", data / "train" / "ci.json"], "inside")):
        with pytest.raises(cli.UserError, match=words):
            train.main(parse(train, base + extra))
    assert photo.read_bytes() == before and sorted(p.name for p in (data / "train" / "daisy").iterdir()) == listing
    start = tmp_path / "start.pth"
    shutil.copy(tiny_run["weights"], start)
    with pytest.raises(cli.UserError, match="also an input"):
        train.main(parse(train, base[:2] + ["--weights", start] + base[4:] + ["--save-path", start]))
    res = run_main("load_weights.py", "--model", "resnet18", "--weights", start, "--num-classes", "3",
                     "--out", start, "--overwrite")
    assert_one_line_error(res, "also an input")
    assert start.read_bytes() == tiny_run["weights"].read_bytes()


def test_files_that_are_not_weights_or_models_are_named_for_what_they_are(tiny_run, tmp_path):
    for name, content in (("m.onnx", b"\x08\x07\x12\x07pytorch"), ("ci.json", b'{"0": "a"}')):
        (tmp_path / name).write_bytes(content)
        res = run_main("train.py", *TINY_TRAIN, "--data-path", tiny_run["data"], "--resume", tmp_path / name)
        assert_one_line_error(res, "not a PyTorch weights file", "neither a zip nor a pickle")
    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)
    res = run_main("train.py", *TINY_TRAIN[:2], *TINY_TRAIN[4:], "--weights", fifo, "--data-path", tiny_run["data"],
                     "--save-path", tmp_path / "out.pth")
    assert_one_line_error(res, "not a regular file")
    img = next((tiny_run["data"] / "val" / "daisy").iterdir())
    assert_one_line_error(run_main("predict.py", img, "--onnx", tmp_path), "ONNX file", "is a folder")


def test_an_empty_value_is_refused_not_taken_for_the_default(tiny_run):
    img = next((tiny_run["data"] / "val" / "daisy").iterdir())
    for script, argv, flag in (("predict.py", [img, "--onnx", ""], "--onnx"),
                               ("train.py", ["--weights", ""], "--weights"),
                               ("batch_predict.py", [""], "folder")):
        res = run_main(script, *argv)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and f"{flag} is empty" in res.stderr, res.stderr


def test_class_folder_names_that_train_would_refuse_are_refused_by_the_split(tmp_path):
    source = make_class_folders(tmp_path / "photos", per_class=2, classes=("a", "b\nc"))
    with pytest.raises(cli.UserError, match="class names must be non-empty strings on one line"):
        split_data.main(parse(split_data, ["--source", source, "--data-path", tmp_path / "root"]))
    assert not (tmp_path / "root").exists()


def test_a_refused_download_leaves_no_new_folders(tmp_path):
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(cli.UserError):
        split_data.main(parse(split_data, ["--download", "--url", junk, "--sha256", "none",
                                           "--data-path", tmp_path / "new" / "deep" / "root"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.tgz"]


def test_a_corrupt_exif_block_is_not_stderr_noise(tiny_run, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    # EXIF of a phone photo cut short: the orientation, and a pointer to a sub-block past its end
    tiff = b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHII", 0x0112, 3, 1, 6) \
        + struct.pack("<HHII", 0x8769, 4, 1, 1000) + struct.pack("<I", 0)
    Image.new("RGB", (40, 40), "red").save(folder / "a.jpg", exif=b"Exif\x00\x00" + tiff)
    res = run_main("batch_predict.py", folder, *model_args(tiny_run))
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    assert "a.jpg" in res.stdout


def test_an_interrupted_benchmark_folder_is_not_left_half_made(tmp_path, monkeypatch):
    import benchmark

    def two_then_ctrl_c(folder, n):
        Image.new("RGB", (8, 8)).save(folder / "img_000.jpg")
        raise KeyboardInterrupt
    monkeypatch.setattr(benchmark, "make_images", two_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(parse(benchmark, ["--predict-folder", tmp_path / "a" / "imgs", "--device", "cpu"]))
    assert list(tmp_path.iterdir()) == []


def test_an_opset_beyond_what_torch_writes_is_one_line_before_exporting(tiny_run, tmp_path):
    pytest.importorskip("onnx")
    res = run_main("export_onnx.py", "--model", "resnet18", "--img-size", "32", "--weights", tiny_run["weights"],
                     "--class-indices", tiny_run["classes"], "--out", tmp_path / "m.onnx", "--opset", "99")
    assert_one_line_error(res, "--opset 99", "writes opsets up to")
    assert res.stdout == "" and list(tmp_path.iterdir()) == []


def test_a_name_too_long_for_its_temporary_sibling_is_refused_before_training(data, tmp_path):
    long_name = "w" * 245 + ".pth"  # fits the file system (249 bytes), its .name.XXXXXXXX.tmp.pth sibling does not
    with pytest.raises(cli.UserError, match="too long to be written safely"):
        train.main(parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", tmp_path / long_name,
                                              "--class-indices", tmp_path / "ci.json"]))
    assert list(tmp_path.iterdir()) == []  # refused before the first step, nothing written
    with pytest.raises(cli.UserError, match="longer than the 255 bytes"):
        batch_predict.main(parse(batch_predict, [data / "val" / "daisy", "--csv", tmp_path / ("p" * 300 + ".csv")]))


def test_temporaries_of_a_killed_run_are_removed_by_the_next_write_and_named(tmp_path, capsys):
    from helpers import files
    target = tmp_path / "w.pth"
    old = tmp_path / ".w.pth.k3j4h5g6.tmp.pth"  # what a kill -9 during torch.save leaves
    fresh = tmp_path / ".w.pth.a1b2c3d4.tmp.pth"  # another run may be writing this one now
    for p in (old, fresh):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    files.atomic_write_bytes(target, b"weights")
    assert target.read_bytes() == b"weights" and not old.exists() and fresh.exists()
    assert f"removed 1 temporary file(s) an interrupted run left beside {target}: {old.name}" in capsys.readouterr().err


def test_phone_formats_are_read_or_skipped_by_name_with_what_to_install(tiny_run, tmp_path, capsys):
    from helpers import imaging
    folder = tmp_path / "phone"
    shutil.copytree(tiny_run["data"] / "val" / "daisy", folder)
    (folder / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))  # an iPhone photo's start
    avif = folder / "IMG_0002.avif"
    if ".avif" not in imaging.CANNOT_READ:
        Image.new("RGB", (40, 40), (250, 250, 240)).save(avif)  # Pillow 11.3+ writes AVIF too
    else:
        avif.write_bytes(b"\x00\x00\x00\x1cftypavif" + bytes(64))
    rows, skipped = batch_predict.main(parse(batch_predict, [folder, "--model", "resnet18", "--img-size", "32",
                                                             "--weights", tiny_run["weights"], "--class-indices",
                                                             tiny_run["classes"], "--workers", "0"]))
    predicted = {os.path.basename(p) for p, _ in rows}
    said = {os.path.basename(str(p)): why for p, why in skipped}
    assert len(rows) + len(skipped) == len(list(folder.iterdir()))  # none left out without a word
    if ".heic" in imaging.CANNOT_READ:
        assert "pip install pillow-heif" in said["IMG_0001.HEIC"]
    if ".avif" in imaging.CANNOT_READ:
        assert "pip install -U pillow" in said["IMG_0002.avif"]
    else:
        assert "IMG_0002.avif" in predicted


# ---------------------------------------------------------------- round 3: what the weights were trained with

def class_lines(res, whole=False):
    return [line if whole else line.split()[1] for line in res.stdout.splitlines() if line.startswith("class: ")]


def test_trained_weights_carry_their_size_and_classes_and_prediction_uses_them(tiny_run, tmp_path):
    # The run trained resnet18 on 32 px images. In the current folder: another run's class file with
    # the same names in another order, which would relabel every image; nothing beside the weights.
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run["weights"], run / "w.pth")
    (tmp_path / "class_indices.json").write_text(json.dumps({"0": "tulips", "1": "roses", "2": "daisy"}))
    img = sorted((tiny_run["data"] / "val" / "roses").iterdir())[0]
    plain = run_main("predict.py", img, "--weights", run / "w.pth", "--save-fig", tmp_path / "a.png", cwd=tmp_path)
    told = run_main("predict.py", img, "--weights", run / "w.pth", "--save-fig", tmp_path / "b.png", "--model",
                      "resnet18", "--img-size", "32", "--class-indices", tiny_run["classes"], cwd=tmp_path)
    assert plain.returncode == 0 and told.returncode == 0, plain.stderr + told.stderr
    assert class_lines(plain) == ["daisy", "roses", "tulips"]
    # the same probabilities: 32 px, resnet18, the run's own classes
    assert class_lines(plain, whole=True) == class_lines(told, whole=True)
    # The tutorial's way still loads the file, with and without weights_only.
    for weights_only in (True, False):
        net = __import__("model").resnet18(num_classes=3)
        net.load_state_dict(torch.load(run / "w.pth", weights_only=weights_only))
    # last.pth carries the same record.
    res = run_main("predict.py", img, "--weights", tiny_run["weights"].parent / "last.pth", "--save-fig",
                     tmp_path / "c.png", cwd=tmp_path)
    assert res.returncode == 0 and class_lines(res, whole=True) == class_lines(plain, whole=True), res.stderr


@pytest.mark.parametrize("script", ["predict.py", "batch_predict.py", "evaluate.py", "export_onnx.py",
                                    "video_predict.py"])
def test_a_contradiction_of_what_the_weights_were_trained_with_is_one_line(tiny_run, tmp_path, script):
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({"0": "tulips", "1": "roses", "2": "daisy"}))
    img = sorted((tiny_run["data"] / "val" / "roses").iterdir())[0]
    first = {"predict.py": [img], "batch_predict.py": [img.parent], "evaluate.py": [tiny_run["data"] / "val"],
             "export_onnx.py": ["--out", tmp_path / "m.onnx"], "video_predict.py": [tmp_path / "clip.mp4"]}[script]
    if script == "video_predict.py":
        from test_video import color_frames, cv2, write_clip
        if cv2 is None:
            pytest.skip("OpenCV is not installed")
        write_clip(tmp_path / "clip.mp4", color_frames(per_color=1))
    before = sorted(tmp_path.iterdir())
    common = first + ["--weights", tiny_run["weights"]]
    for flags, words in ((["--img-size", "224"], ("--img-size 224 contradicts", "32 px")),
                         (["--class-indices", stale], ("names class 0 'tulips'", "'daisy'")),
                         (["--model", "resnet34"], ("--model resnet34 contradicts", "resnet18"))):
        assert_one_line_error(run_main(script, *common, *flags, cwd=tmp_path), *words)
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_export_and_evaluate_take_the_size_the_weights_were_trained_on(tiny_run, tmp_path):
    from helpers import deploy
    res = run_main("export_onnx.py", "--weights", tiny_run["weights"], "--out", tmp_path / "m.onnx",
                     "--data-path", tiny_run["data"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    info = deploy.model_info(tmp_path / "m.onnx")
    assert (info.img_size, info.classes, info.architecture) == (32, ["daisy", "roses", "tulips"], "resnet18")
    res = run_main("evaluate.py", tiny_run["data"] / "val", "--weights", tiny_run["weights"], "--output-dir",
                     tmp_path / "report", "--workers", "0", cwd=tmp_path)
    assert res.returncode == 0 and "accuracy" in res.stdout, res.stderr


def test_eval_only_refuses_another_size_than_the_weights_were_trained_on(tiny_run, tmp_path):
    res = run_main("train.py", "--eval-only", "--data-path", tiny_run["data"], "--weights", tiny_run["weights"],
                     "--model", "resnet18", "--workers", "0", "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert_one_line_error(res, "trained on 32 px images", "--img-size 32")


def test_a_damaged_record_of_what_weights_were_trained_with_is_one_line(tiny_run, tmp_path):
    from helpers import weights
    sd = torch.load(tiny_run["weights"], weights_only=True)
    sd._metadata[weights.INFO_KEY]["img_size"] = "32; rm -rf /"
    torch.save(sd, tmp_path / "w.pth")
    img = sorted((tiny_run["data"] / "val" / "roses").iterdir())[0]
    assert_one_line_error(run_main("predict.py", img, "--weights", tmp_path / "w.pth", cwd=tmp_path),
                          "damaged record")


# ---------------------------------------------------------------- round 3: failures outside the one-line net

def in_a_loader_worker(monkeypatch, action):
    """imaging.open_image runs action() instead when called in a data-loader worker (a forked process)."""
    from helpers import imaging
    parent, real = os.getpid(), imaging.open_image

    def open_image(path):
        if os.getpid() != parent:
            action()
        return real(path)
    monkeypatch.setattr(imaging, "open_image", open_image)


@pytest.mark.skipif(sys.platform != "linux", reason="the workers must be forked to inherit the patch")
def test_a_killed_data_loader_worker_is_one_line_and_keeps_the_last_step(data, tmp_path, monkeypatch):
    # What the kernel's out-of-memory killer does to a worker on a Jetson: SIGKILL, once training is under way.
    flag = tmp_path / "now"
    in_a_loader_worker(monkeypatch, lambda: flag.exists() and os.kill(os.getpid(), signal.SIGKILL))
    out = tmp_path / "run"
    args = TINY_TRAIN + ["--data-path", data, "--save-path", out / "w.pth", "--class-indices", out / "ci.json",
                         "--epochs", "3", "--batch-size", "4", "--workers", "2"]
    handle = at_training_batch(2, flag.touch)
    try:
        with pytest.raises(cli.UserError, match=r"a data-loader worker was (killed by signal Killed|lost) .*--workers 0; "
                                                r"saved .*last.pth at epoch \d, step \d+: python train.py --resume"):
            train.main(parse(train, args))
    finally:
        handle.remove()
    monkeypatch.undo()
    assert not __import__("multiprocessing").active_children()  # the other worker ended with the run
    result = train.main(parse(train, ["--resume", out / "last.pth", "--workers", "0"]))
    assert len(result["history"]) == 3 and (out / "w.pth").is_file()


@pytest.mark.skipif(sys.platform != "linux", reason="the workers must be forked to inherit the patch")
def test_shared_memory_too_small_for_the_workers_is_one_line_and_leaves_nothing(data, tmp_path, monkeypatch):
    # What a worker's batch meets in Docker's 64 MB /dev/shm (run for real under `unshare -m` with a
    # 256 KB tmpfs there, it gave this line too).
    def no_room():
        raise RuntimeError("unable to write to file </torch_123_456_0>: No space left on device (28)")
    in_a_loader_worker(monkeypatch, no_room)
    out = tmp_path / "new" / "run"
    with pytest.raises(cli.UserError, match=r"out of shared memory \(/dev/shm holds .*\): pass --workers 0, or .*"
                                            r"--shm-size"):
        train.main(parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", out / "w.pth", "--workers", "2",
                                              "--class-indices", out / "ci.json"]))
    assert list(tmp_path.iterdir()) == []  # the new folders and the class file are gone again


def test_batch_size_one_at_a_small_size_is_refused_before_training(data, tmp_path):
    res = run_main("train.py", *TINY_TRAIN, "--data-path", data, "--batch-size", "1", "--save-path", tmp_path / "w.pth")
    assert_one_line_error(res, "--batch-size 1 at --img-size 32", "--batch-size 2")
    assert list(tmp_path.iterdir()) == []
    from helpers import data as data_lib
    x = torch.zeros(1, 3, 33, 33)
    assert data_lib.last_map_size(33) == 2 and __import__("model").resnet18(num_classes=3)(x).shape == (1, 3)


def test_weights_with_a_broken_classifier_layer_are_one_line(tiny_run, tmp_path):
    sd = torch.load(tiny_run["weights"], weights_only=True)
    no_bias = dict(sd)
    del no_bias["fc.bias"]
    narrow = dict(sd)
    narrow["fc.weight"] = narrow["fc.weight"][:, :256]
    img = sorted((tiny_run["data"] / "val" / "roses").iterdir())[0]
    for name, broken in (("nobias.pth", no_bias), ("narrow.pth", narrow)):
        torch.save(broken, tmp_path / name)
        for script, first in (("predict.py", [img]), ("export_onnx.py", ["--out", tmp_path / "m.onnx"])):
            res = run_main(script, *first, "--weights", tmp_path / name, "--model", "resnet18", "--img-size", "32",
                             "--class-indices", tiny_run["classes"], cwd=tmp_path)
            assert_one_line_error(res, "no whole classifier layer", "[classes x 512]")
        # As starting weights, the backbone is what counts: the fc is made anew.
        run = tmp_path / name.replace(".pth", "_run")
        train.main(parse(train, TINY_TRAIN + ["--data-path", tiny_run["data"], "--weights", tmp_path / name,
                                              "--save-path", run / "w.pth", "--class-indices", run / "ci.json"]))


def test_a_checkpoint_whose_weights_are_not_its_own_model_is_one_line(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run["weights"].parent / "last.pth", weights_only=True)
    ckpt["model"] = __import__("model").resnet34(num_classes=3).state_dict()
    torch.save(ckpt, tmp_path / "last.pth")
    assert_one_line_error(run_main("train.py", "--resume", tmp_path / "last.pth", cwd=tmp_path),
                          "damaged checkpoint", "its weights are resnet34", "its settings say resnet18 for 3 classes")


# ---------------------------------------------------------------- round 3: what the first hostile round found

def overflowing(tiny_run, path):
    """Weights that are all numbers, whose outputs are not: bn1's scale near float32's largest."""
    sd = torch.load(tiny_run["weights"], weights_only=True)
    sd["bn1.weight"] = sd["bn1.weight"] * 3e38
    torch.save(sd, path)
    return path


def test_weights_whose_outputs_overflow_are_refused_not_predicted_as_nan(tiny_run, tmp_path):
    bad = overflowing(tiny_run, tmp_path / "w.pth")
    img = sorted((tiny_run["data"] / "val" / "roses").iterdir())[0]
    for script, first in (("predict.py", [img]), ("batch_predict.py", [img.parent, "--csv", tmp_path / "p.csv"]),
                          ("evaluate.py", [tiny_run["data"] / "val", "--output-dir", tmp_path / "rep"]),
                          ("export_onnx.py", ["--out", tmp_path / "m.onnx"])):
        res = run_main(script, *first, "--weights", bad, "--workers", "0", cwd=tmp_path) if script != "export_onnx.py" \
            else run_main(script, *first, "--weights", bad, cwd=tmp_path)
        assert_one_line_error(res, "NaN or infinite outputs", "lower --lr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]


def test_a_run_whose_val_loss_overflows_is_diverged_not_best(tiny_run, data, tmp_path):
    # Training normalises with each batch's statistics and stays finite; val uses BatchNorm's running
    # ones, which have overflowed (what SGD at --lr 100 does to them): its loss is NaN. The tutorial
    # would save these weights as the best.
    sd = torch.load(tiny_run["weights"], weights_only=True)
    sd["layer4.1.bn2.running_mean"].fill_(-3e38)
    sd["layer4.1.bn2.weight"].fill_(1e30)
    torch.save(sd, tmp_path / "start.pth")
    out = tmp_path / "run"
    with pytest.raises(cli.UserError, match=r"the val loss became (nan|inf) at epoch 1.*lower --lr"):
        train.main(parse(train, TINY_TRAIN + ["--data-path", data, "--weights", tmp_path / "start.pth", "--save-path",
                                              out / "w.pth", "--class-indices", out / "ci.json"]))
    assert not (out / "w.pth").exists()


def test_nan_starting_weights_are_refused_before_anything_is_written(tiny_run, tmp_path):
    sd = torch.load(tiny_run["weights"], weights_only=True)
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    out = tmp_path / "run"
    res = run_main("train.py", *TINY_TRAIN, "--data-path", tiny_run["data"], "--weights", tmp_path / "nan.pth",
                     "--save-path", out / "w.pth", "--class-indices", out / "ci.json")
    assert_one_line_error(res, "nan.pth holds NaN or infinite weights", "layer1.0.conv1.weight")
    assert not out.exists()


def test_a_val_folder_of_unreadable_images_is_refused_not_scored(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for img in (copy / "val").rglob("*.jpg"):
        img.write_bytes(b"not a picture")
    out = tmp_path / "run"
    with pytest.raises(cli.UserError, match=r"none of the \d+ images in .*val could be read"):
        train.main(parse(train, TINY_TRAIN + ["--data-path", copy, "--save-path", out / "w.pth",
                                              "--class-indices", out / "ci.json"]))
    assert not (out / "w.pth").exists()


def test_sigterm_and_sighup_stop_every_script_as_ctrl_c_does(tmp_path):
    # The mechanism every script runs under (cli.run_cli): the signal arrives while an atomic write's
    # temporary exists; the temporary goes, the target is untouched, one line, 128 + the signal.
    code = ("import os, signal, sys, time; sys.path.insert(0, sys.argv[1]); from helpers import cli, files\n"
            "def main(args):\n"
            "    with files.atomic_path(args.out) as tmp:\n"
            "        tmp.write_bytes(b'half'); os.kill(os.getpid(), getattr(signal, args.sig)); time.sleep(30)\n"
            "p = cli.ArgumentParser(); p.add_argument('out'); p.add_argument('sig'); cli.run_cli(main, p, sys.argv[2:])\n")
    for sig in ("SIGTERM", "SIGHUP"):
        target = tmp_path / "m.onnx"
        target.write_bytes(b"the user's model")
        res = subprocess.run([sys.executable, "-c", code, str(ROOT), str(target), sig], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 128 + getattr(signal, sig)
        assert res.stderr.strip().splitlines() == [f"error: interrupted ({sig}); files being written were left as "
                                                   "they were"]
        assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"] and target.read_bytes() == b"the user's model"


def test_sigterm_during_an_export_leaves_no_temporary(tiny_run, tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "export_onnx.py"), "--weights", tiny_run["weights"], "--out",
                             tmp_path / "m.onnx", "--check-images", tiny_run["data"] / "val"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not any(".tmp" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("the export ended before its temporary was seen")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1].startswith("error: interrupted (SIGTERM)"), err
    assert list(tmp_path.iterdir()) == []


def test_every_folder_a_run_writes_into_is_locked_and_no_lock_file_is_left(data, tmp_path):
    from helpers import files
    reports = tmp_path / "reports"
    reports.mkdir()
    argv = TINY_TRAIN + ["--data-path", data, "--save-path", tmp_path / "b" / "w.pth", "--output-dir", reports,
                         "--class-indices", tmp_path / "b" / "ci.json"]
    with files.locked(reports, "the first run"):  # another run writes its reports there
        with pytest.raises(cli.UserError, match=f"{reports} is in use by another run"):
            train.main(parse(train, argv))
    assert not (tmp_path / "b").exists()
    train.main(parse(train, argv))
    assert not [p for p in list(data.rglob(".lock")) + list(tmp_path.rglob(".lock"))]


# ---------------------------------------------------------------- round 3: names of any bytes, any locale

@pytest.mark.skipif(sys.platform != "linux", reason="a file name of any bytes: Linux file systems")
@pytest.mark.parametrize("locale_env", [{"LC_ALL": "C.UTF-8"},
                                        {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}])
def test_file_names_that_are_not_utf8_are_split_trained_on_predicted_and_written(tmp_path, locale_env):
    # Latin-1 names, as an old Windows zip or an SMB share gives them, beside Chinese ones; in a UTF-8
    # locale and in an ASCII one. Nothing may end in a UnicodeEncodeError after the work. Outside
    # Python's UTF-8 mode, a Chinese class folder is refused in one line that names PYTHONUTF8=1.
    photos = make_class_folders(tmp_path / "data" / "flower_photos", per_class=8, classes=("daisy", "roses", "郁金香"))
    for cls in ("daisy", "roses", "郁金香"):
        folder = os.fsencode(photos / cls)
        for i in range(8):  # every other one Latin-1, the others Chinese
            name = (b"caf\xe9_%d.jpg" if i % 2 else "花_%d.jpg".encode()) % i
            os.rename(photos / cls / f"{cls}_{i}.jpg", os.fsdecode(folder + b"/" + name))
    env = dict(os.environ, MPLBACKEND="Agg", **locale_env)
    env.pop("DISPLAY", None)

    def run(script, *argv):
        res = subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], env=env, capture_output=True,
                             timeout=600, cwd=tmp_path)
        assert res.returncode == 0 and b"Traceback" not in res.stderr, res.stderr.decode(errors="replace")
        return res
    data = tmp_path / "data"
    classes = ["daisy", "roses", "郁金香"]
    if locale_env.get("PYTHONUTF8") == "0":
        res = subprocess.run([sys.executable, str(ROOT / "split_data.py"), "--data-path", str(data)], env=env,
                             capture_output=True, timeout=600, cwd=tmp_path)
        assert res.returncode == 1 and res.stderr.count(b"\n") == 1 and b"PYTHONUTF8=1" in res.stderr, res.stderr
        os.rename(photos / "郁金香", photos / "tulips")
        classes[2] = "tulips"
    run("split_data.py", "--data-path", data, "--val-rate", "0.5")
    out = tmp_path / "run"
    run("train.py", *TINY_TRAIN, "--data-path", data, "--save-path", out / "w.pth", "--class-indices", out / "ci.json")
    written = (out / "val_predictions.csv").read_bytes()
    names = [os.fsencode(p.name) for p in (data / "val").rglob("*.jpg")]
    assert all(n in written for n in names) and any(b"\xe9" in n for n in names)  # each, under its name's bytes
    res = run("batch_predict.py", data / "val", "--recursive", "--weights", out / "w.pth", "--workers", "0",
              "--csv", tmp_path / "p.csv")
    rows = (tmp_path / "p.csv").read_bytes().splitlines()[1:]
    assert len(rows) == len(names) and b"caf\xe9_" in (tmp_path / "p.csv").read_bytes()
    assert b"caf\xe9_" in res.stdout
    run("evaluate.py", data / "val", "--weights", out / "w.pth", "--workers", "0", "--output-dir", tmp_path / "ev",
        "--csv", tmp_path / "ev.csv")
    assert b"caf\xe9_" in (tmp_path / "ev.csv").read_bytes()
    assert json.loads((out / "ci.json").read_text(encoding="utf-8")) == {str(i): c for i, c in enumerate(classes)}
    res = run("export_onnx.py", "--weights", out / "w.pth", "--out", tmp_path / "m.onnx", "--data-path", data)
    assert b"on 12 images" in res.stdout  # every val image, the Chinese class's too


def test_evaluate_refuses_a_test_folder_that_shares_images_with_train(tiny_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_run["data"] / "train", data / "train")
    common = ["--data-path", data, "--weights", tiny_run["weights"], "--workers", "0", "--output-dir", tmp_path / "rep"]
    (data / "test").symlink_to("train")  # a link to train/
    # The weights know what they trained on (reports.trained_on), wherever those images are now.
    assert_one_line_error(run_main("evaluate.py", *common), "all 21 images of", "trained on")
    (data / "test").unlink()
    for cls in (data / "train").iterdir():  # a copy of one image, under another name
        (data / "test" / cls.name).mkdir(parents=True)
        first = sorted(cls.iterdir())[0]
        shutil.copy(first, data / "test" / cls.name / "copy.jpg")
        os.link(sorted(cls.iterdir())[1], data / "test" / cls.name / "hard.jpg")
    assert_one_line_error(run_main("evaluate.py", *common), "all 6 images of", "trained on")
    assert not (tmp_path / "rep").exists()
    res = run_main("evaluate.py", data / "train", *common)  # asked for by name: measured, with a note
    assert res.returncode == 0 and "is the training folder" in res.stderr, res.stderr


def test_split_names_unreadable_files_and_leaves_them_out(tmp_path, capsys):
    root = tmp_path / "data"
    photos = make_class_folders(root / "flower_photos", per_class=6)
    (photos / "daisy" / "zero.jpg").write_bytes(b"")
    (photos / "roses" / "text.jpg").write_text("not a photo")
    split_data.main(parse(split_data, ["--data-path", root]))
    out = capsys.readouterr().out
    assert "zero.jpg" in out and "text.jpg" in out and "skipped" in out
    split = [p.name for side in ("train", "val") for p in (root / side).rglob("*.jpg")]
    assert len(split) == 18 and "zero.jpg" not in split and "text.jpg" not in split


def test_a_refused_resume_is_one_line_even_when_val_lost_a_class(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "run"
    train.main(parse(train, TINY_TRAIN + ["--data-path", copy, "--save-path", out / "w.pth", "--class-indices",
                                          out / "ci.json"]))
    for img in (copy / "val" / "roses").iterdir():
        img.unlink()
    res = run_main("train.py", "--resume", out / "last.pth", "--epochs", "2")
    assert_one_line_error(res, "the data set changed")


def test_a_killed_run_s_temporaries_go_at_the_next_run_that_holds_the_folder(data, tiny_run, tmp_path):
    # kill -9 leaves what nothing could remove; a run that holds the folder locked knows that no
    # other is writing there, whatever the temporaries' age.
    out = tmp_path / "run"
    out.mkdir()
    left = [out / ".w.pth.k3j4h5g6.tmp.pth", out / ".m.onnx.a1b2c3d4.tmp.onnx"]
    for p in left:
        p.write_bytes(b"partial")
    train.main(parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", out / "w.pth", "--class-indices",
                                          out / "ci.json"]))
    res = run_main("export_onnx.py", "--weights", out / "w.pth", "--out", out / "m.onnx", "--check-images",
                     data / "val" / "daisy")
    assert res.returncode == 0, res.stderr
    assert not any(p.exists() for p in left)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    split_root = tmp_path / "split"
    make_class_folders(split_root / "flower_photos", per_class=4)
    (split_root / ".split-deadbeef").mkdir()  # a killed split's partial copy, minutes old
    split_data.main(parse(split_data, ["--data-path", split_root]))
    assert not (split_root / ".split-deadbeef").exists()


# ---------------------------------------------------------------- round 3: what the second hostile round found

def test_eval_only_refuses_outputs_that_overflow_and_a_folder_another_run_holds(tiny_run, tmp_path):
    from helpers import files
    bad = overflowing(tiny_run, tmp_path / "ovf.pth")
    common = ["--eval-only", "--data-path", tiny_run["data"], "--model", "resnet18", "--img-size", "32", "--workers",
              "0"]
    res = run_main("train.py", *common, "--weights", bad, "--output-dir", tmp_path / "eo", cwd=tmp_path)
    assert_one_line_error(res, "NaN or infinite outputs")
    held = tmp_path / "running"
    held.mkdir()
    with files.locked(held, "a training run"):  # a training run writes its reports there
        with pytest.raises(cli.UserError, match="is in use by another run"):
            train.main(parse(train, common + ["--weights", tiny_run["weights"], "--output-dir", held]))
        import evaluate
        with pytest.raises(cli.UserError, match="is in use by another run"):
            evaluate.main(parse(evaluate, [tiny_run["data"] / "val", "--weights", tiny_run["weights"], "--output-dir",
                                           held, "--workers", "0"]))
    assert list(held.iterdir()) == []


@pytest.mark.skipif(sys.platform != "linux", reason="the workers must be forked to inherit the patch")
def test_a_killed_decoding_process_is_one_line(tiny_run, tmp_path, monkeypatch):
    from helpers import imaging
    parent, real = os.getpid(), imaging.open_image

    def open_image(path):
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path)
    monkeypatch.setattr(imaging, "open_image", open_image)
    folder = tmp_path / "imgs"
    for i, img in enumerate(sorted((tiny_run["data"] / "train").rglob("*.jpg"))[:12]):
        folder.mkdir(exist_ok=True)
        shutil.copy(img, folder / f"{i}.jpg")
    with pytest.raises(cli.UserError, match=r"a decoding process was killed .*--workers 0 \(it was 2\)"):
        batch_predict.main(parse(batch_predict, [folder, "--weights", tiny_run["weights"], "--workers", "2",
                                                 "--batch-size", "2"]))


def test_a_signal_while_the_temporary_is_made_leaves_nothing(tmp_path, monkeypatch):
    # The signal arrives just as the temporary is made, before the block that would remove the file.
    from helpers import files
    real = os.open

    def open_and_signal(path, *args, **kwargs):
        made = real(path, *args, **kwargs)
        if ".tmp" in os.fspath(path):
            os.kill(os.getpid(), signal.SIGINT)
        return made
    monkeypatch.setattr(os, "open", open_and_signal)
    # Python's own Ctrl-C handler, whatever pytest was started with: a background job (`make test &`)
    # starts with SIGINT ignored, and the signal would then never arrive.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            files.atomic_write_bytes(tmp_path / "m.onnx", b"model")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert list(tmp_path.iterdir()) == []


def test_a_record_that_contradicts_the_tensors_is_damaged_not_believed(tiny_run, tmp_path):
    from helpers import weights
    sd = torch.load(tiny_run["weights"], weights_only=True)
    sd._metadata[weights.INFO_KEY]["architecture"] = "resnet34"
    torch.save(sd, tmp_path / "w.pth")
    img = sorted((tiny_run["data"] / "val" / "roses").iterdir())[0]
    for extra in ([], ["--model", "resnet18"], ["--model", "resnet34"]):
        assert_one_line_error(run_main("predict.py", img, "--weights", tmp_path / "w.pth", *extra, cwd=tmp_path),
                              "is damaged", "says it holds resnet34 weights", "resnet18's")


def test_a_checkpoint_of_nan_weights_is_refused_at_resume(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run["weights"].parent / "last.pth", weights_only=True)
    ckpt["model"]["fc.bias"][0] = float("nan")
    torch.save(ckpt, tmp_path / "last.pth")
    assert_one_line_error(run_main("train.py", "--resume", tmp_path / "last.pth", cwd=tmp_path),
                          "holds NaN or infinite weights", "lower --lr")


# ---------------------------------------------------------------- round 3: what the third hostile round found

def test_the_third_round_s_edited_files_and_empty_results_are_one_line(tiny_run, tmp_path):
    import warnings
    from helpers import deploy, files, inference
    with warnings.catch_warnings():  # an ONNX file whose logits overflow: no numpy warning before the one line
        warnings.simplefilter("error")
        assert np.isnan(deploy.softmax(np.array([[np.inf, 1.0]], np.float32))).any()
    img = sorted((tiny_run["data"] / "val" / "roses").iterdir())[0]
    sd = torch.load(tiny_run["weights"], weights_only=True)
    cases = {"int.pth": (dict(sd, **{"fc.weight": sd["fc.weight"].long()}), "whole numbers where weights are fractions"),
             "extra.pth": (dict(sd, **{"fc.extra": torch.zeros(3)}), "and also fc.extra, which resnet18 has not"),
             "transposed.pth": (dict(sd, **{"fc.weight": sd["fc.weight"].t().contiguous()}),
                                "no whole classifier layer")}
    for name, (state_dict, words) in cases.items():
        torch.save(state_dict, tmp_path / name)
        assert_one_line_error(run_main("batch_predict.py", img.parent, "--weights", tmp_path / name, "--model",
                                         "resnet18", "--img-size", "32", "--class-indices", tiny_run["classes"],
                                         "--workers", "0", cwd=tmp_path), words)
    last = torch.load(tiny_run["weights"].parent / "last.pth", weights_only=True)
    for name, edit, words in (("size.pth", {"img_size": 64}, "contradicts its own settings"),
                              ("opt.pth", {"optimizer": {"state": {}, "param_groups": []}}, "its optimizer"),
                              ("hist.pth", {"history": "oops"}, "its history")):
        run = tmp_path / name.replace(".pth", "")
        run.mkdir()
        torch.save(dict(last, **edit), run / "last.pth")
        assert_one_line_error(run_main("train.py", "--resume", run / "last.pth", "--epochs", "2", cwd=tmp_path),
                              "damaged checkpoint", words)
        assert [p.name for p in run.iterdir()] == ["last.pth"]  # nothing written
    with pytest.raises(cli.UserError, match="'daisy' and 'daisy' are the same name, twice"):
        classnames.check_class_names(["daisy", "daisy"], "a record")
    with pytest.raises(cli.UserError, match="two Unicode forms, NFC and NFD"):
        inference.check_same_classes(["caf\u00e9"], "ci.json", ["cafe\u0301"], "w.pth")
    (tmp_path / "z.jpg").write_bytes(b"")
    (tmp_path / "t.jpg").write_text("hi")
    common = ["--weights", tiny_run["weights"], "--workers", "0"]
    res = run_main("predict.py", tmp_path / "z.jpg", tmp_path / "t.jpg", *common, "--save-fig", tmp_path / "f.png",
                     cwd=tmp_path)  # each skipped image named, then the error
    assert res.returncode != 0 and res.stderr.strip().splitlines()[-1] == "error: none of the 2 images could be read"
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(tmp_path / "z.jpg", folder / "z.jpg")
    res = run_main("batch_predict.py", folder, *common, "--csv", tmp_path / "p.csv", cwd=tmp_path)
    assert res.returncode != 0 and res.stderr.strip().splitlines()[-1].startswith("error: none of the 1 images")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "f.png").exists()


def test_the_fourth_round_s_edited_checkpoints_onnx_and_unreadable_folders_are_one_line(tiny_run, tmp_path):
    from helpers import deploy
    last = torch.load(tiny_run["weights"].parent / "last.pth", weights_only=True)
    for name, edit in (("sums", {"sums": torch.zeros(2)}), ("step", {"step": 10 ** 9}), ("best", {"best_acc": 7.0}),
                       ("nan", {"best_acc": float("nan")})):
        run = tmp_path / name
        run.mkdir()
        torch.save(dict(last, **edit), run / "last.pth")
        assert_one_line_error(run_main("train.py", "--resume", run / "last.pth", "--epochs", "2", cwd=tmp_path),
                              "damaged checkpoint", "out of range")
    meta = deploy.ModelInfo(classes=["a", "b"], img_size=32).to_metadata()
    for std in ("[1e-30, 1e-30, 1e-30]", "[-0.229, -0.224, -0.225]"):
        with pytest.raises(cli.UserError, match="damaged metadata"):
            deploy.ModelInfo.from_metadata(dict(meta, std=std), "m.onnx")
    bad = tmp_path / "bad"
    for side in ("train", "val"):
        for cls in ("daisy", "roses", "tulips"):
            (bad / side / cls).mkdir(parents=True)
            (bad / side / cls / "x.jpg").write_text(f"not a photo: {side} {cls}")
    res = run_main("train.py", "--eval-only", "--data-path", bad, "--weights", tiny_run["weights"], "--model",
                     "resnet18", "--img-size", "32", "--workers", "0", "--output-dir", tmp_path / "eo", cwd=tmp_path)
    assert res.returncode != 0 and res.stderr.strip().splitlines()[-1].startswith("error: none of the 3 images")
    res = run_main("export_onnx.py", "--weights", tiny_run["weights"], "--out", tmp_path / "m.onnx",
                     "--check-images", bad / "val" / "daisy", cwd=tmp_path)
    assert_one_line_error(res, "none of the images of --check-images")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "eo").exists()


def test_prediction_with_pytorch_on_a_machine_without_torch_is_one_line(tiny_run, tmp_path):
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; sys.path.insert(0, {root!r}); "
            "runpy.run_path(sys.argv[0], run_name='__main__')").format(root=str(ROOT))
    img = sorted((tiny_run["data"] / "val" / "roses").iterdir())[0]
    for script, first in (("predict.py", [img, "--save-fig", tmp_path / "f.png"]), ("batch_predict.py", [img.parent]),
                          ("evaluate.py", [tiny_run["data"] / "val", "--output-dir", tmp_path / "rep"])):
        res = subprocess.run([sys.executable, "-c", code, str(ROOT / script), *map(str, first), "--weights",
                              str(tiny_run["weights"])], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert_one_line_error(res, "needs torch", "--onnx FILE")
