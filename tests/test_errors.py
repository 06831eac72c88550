"""Bad input ends in one clear line and a non-zero exit, never a traceback."""
import json
import shutil

import pytest
import torch

import batch_predict
import load_weights
import model
import predict
import train
from helpers import cli, downloads
from conftest import TINY_TRAIN, make_class_folders, parse, run_main, run_script


def assert_one_line_error(res, *words):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_missing_image_file_and_folder(tmp_path):
    assert_one_line_error(run_main("predict.py", tmp_path / "nope.jpg"), "image not found", "nope.jpg")
    assert_one_line_error(run_main("batch_predict.py", tmp_path / "nodir"), "image folder not found")
    assert_one_line_error(run_main("train.py", "--data-path", tmp_path / "nodata"), "not found", "split_data.py")
    assert_one_line_error(run_main("split_data.py", "--data-path", tmp_path / "x"), "--download", "--demo")


def test_missing_weights_and_class_file_say_what_to_do(tiny_run, tmp_path):
    img = next((tiny_run["data"] / "val" / "daisy").iterdir())
    # --class-indices given: never advised again, in any script that reads it.
    for argv in (["predict.py", img], ["batch_predict.py", img.parent], ["export_onnx.py", "--out", tmp_path / "m.onnx"],
                 ["evaluate.py", img.parent.parent, "--output-dir", tmp_path]):
        res = run_main(*argv, "--class-indices", tmp_path / "none.json", "--weights", tiny_run["weights"])
        assert_one_line_error(res, "class-index file not found", "check the path given to --class-indices")
        assert "pass --class-indices" not in res.stderr
    assert_one_line_error(run_main("predict.py", img, cwd=tmp_path), "trained weights not found: resNet34.pth",
                          "train.py writes them")
    assert_one_line_error(run_main("predict.py", img, "--class-indices", tiny_run["classes"],
                                     "--weights", tmp_path / "none.pth"), "trained weights not found")
    # train.py's default ImageNet file is missing: how to get it, or how to train without it
    res = run_main("train.py", "--data-path", tiny_run["data"], "--save-path", tmp_path / "w.pth", cwd=tmp_path)
    assert_one_line_error(res, "resnet34-pre.pth", "--weights imagenet", "--weights none")


def test_empty_folder_and_empty_class_folder(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_main("batch_predict.py", tmp_path / "empty"), "no images in")
    data = tmp_path / "data"
    make_class_folders(data / "train", per_class=2, classes=("a", "b"))
    make_class_folders(data / "val", per_class=1, classes=("a", "b"))
    (data / "train" / "c").mkdir()
    (data / "val" / "c").mkdir()
    with pytest.raises(cli.UserError, match="no images in the class folder"):
        train.main(parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", tmp_path / "w.pth"]))


def test_weights_with_another_class_count(tiny_run, tmp_path):
    five = tmp_path / "five.json"
    five.write_text(json.dumps({str(i): f"c{i}" for i in range(5)}))
    img = next((tiny_run["data"] / "val" / "daisy").iterdir())
    res = run_main("predict.py", img, "--model", "resnet18", "--weights", tiny_run["weights"],
                     "--class-indices", five)
    assert_one_line_error(res, "five.json lists 5 classes", "holds 3 (daisy, roses, tulips)")
    # Weights that carry no classes (the tutorial's plain state_dict): their fc says how many.
    torch.save(dict(torch.load(tiny_run["weights"], weights_only=True)), tmp_path / "plain.pth")
    res = run_main("predict.py", img, "--model", "resnet18", "--weights", tmp_path / "plain.pth",
                     "--class-indices", five)
    assert_one_line_error(res, "trained for 3 classes", "lists 5")


def test_weights_of_another_architecture(tiny_run, tmp_path):
    r34 = tmp_path / "r34.pth"
    torch.save(model.resnet34(num_classes=3).state_dict(), r34)
    with pytest.raises(cli.UserError, match="holds resnet34 weights, but --model is resnet18; pass --model resnet34"):
        batch_predict.main(parse(batch_predict, [tiny_run["data"] / "val" / "daisy", "--model", "resnet18",
                                                 "--weights", r34, "--class-indices", tiny_run["classes"]]))
    res = run_main("load_weights.py", "--model", "resnet50", "--weights", r34)
    assert_one_line_error(res, "resnet34 weights", "--model is resnet50")
    junk = tmp_path / "junk.pth"
    junk.write_text("this is not a weights file")
    assert_one_line_error(run_main("load_weights.py", "--weights", junk), "not a PyTorch weights file")


def test_load_weights_both_ways_agree(tmp_path, capsys):
    src = tmp_path / "resnet18-pre.pth"
    torch.save(model.resnet18().state_dict(), src)
    nets = [load_weights.main(parse(load_weights, ["--model", "resnet18", "--weights", src, "--way", w,
                                                   "--num-classes", "4"])) for w in ("1", "2")]
    assert "missing keys: ['fc.weight', 'fc.bias']" in capsys.readouterr().out
    for net in nets:
        assert net.fc.out_features == 4
        torch.testing.assert_close(net.layer4[1].conv2.weight, nets[0].layer4[1].conv2.weight)


def test_resume_from_plain_weights_file_explains(tiny_run):
    with pytest.raises(cli.UserError, match="plain weights file, not a training checkpoint"):
        train.main(parse(train, ["--resume", tiny_run["weights"]]))


def test_refuses_to_overwrite_an_earlier_run(tiny_run, tmp_path):
    with pytest.raises(cli.UserError, match="earlier run.*--resume.*--overwrite"):
        train.main(parse(train, TINY_TRAIN + ["--data-path", tiny_run["data"], "--save-path", tiny_run["weights"]]))
    # Weights alone, with no checkpoint beside them: --resume is not offered, there is nothing to resume.
    shutil.copy(tiny_run["weights"], tmp_path / "w.pth")
    with pytest.raises(cli.UserError, match="earlier run; --overwrite replaces it") as refused:
        train.main(parse(train, TINY_TRAIN + ["--data-path", tiny_run["data"], "--save-path", tmp_path / "w.pth"]))
    assert "--resume" not in str(refused.value)


def test_predict_corrupt_single_image(tiny_run, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(cli.UserError, match="cannot read image"):
        predict.main(parse(predict, [bad, "--model", "resnet18", "--weights", tiny_run["weights"],
                                     "--class-indices", tiny_run["classes"]]))


def test_one_folder_one_flag_and_overwrite_the_one_overwrite_flag():
    import export_onnx
    import split_data
    # split_data.py's folder is train.py's --data-path; --data-root stays as a hidden alias
    assert parse(split_data, ["--data-root", "d"]).data_path == parse(split_data, ["--data-path", "d"]).data_path == "d"
    assert parse(split_data, []).data_path == train.settings.DEFAULTS.data_path
    for script in (split_data, train, load_weights, export_onnx):
        text = script.get_args_parser().format_help()
        assert "--overwrite" in text and "--force" not in text and "--data-root" not in text, script.__name__
        assert parse(script, ["--force"]).overwrite is True and parse(script, []).overwrite is False


def test_no_amp_and_no_channels_last_are_the_same_settings_in_training_and_prediction():
    for script in (train, predict, batch_predict):
        args = parse(script, ["--no-amp", "--no-channels-last"])
        assert (args.amp_dtype, args.channels_last) == ("none", False), script.__name__
    assert (parse(predict, []).amp_dtype, parse(predict, []).channels_last) == ("auto", "auto")
    for script in (train, predict, batch_predict):
        assert parse(script, ["--channels-last"]).channels_last is True, script.__name__


def test_channels_last_by_default_where_it_is_measured_to_help(monkeypatch):
    import torch
    from helpers import devices
    cpu, gpu, mps = torch.device("cpu"), torch.device("cuda", 0), torch.device("mps")
    assert devices.channels_last(cpu) is True and devices.channels_last(mps) is False
    assert devices.channels_last(cpu, False) is False and devices.channels_last(mps, True) is True
    for capability, tensor_cores in (((5, 3), False), ((6, 2), False), ((7, 2), True), ((8, 7), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert devices.channels_last(gpu) is tensor_cores, capability  # Nano, TX2: off; Xavier, Orin, H100: on


def test_workers_leave_the_cores_to_the_model_when_it_trains_on_the_cpu(monkeypatch):
    from helpers import devices
    for cores, on_cpu, on_gpu in ((1, 1, 1), (2, 1, 2), (4, 2, 4), (16, 8, 8)):
        monkeypatch.setattr(devices.os, "cpu_count", lambda c=cores: c)
        assert devices.train_workers("cpu", 16) == on_cpu, cores
        assert devices.train_workers("cuda", 16) == devices.train_workers("cuda:1", 16) == on_gpu, cores  # the tutorial's
    assert devices.train_workers("cpu", 16, processes=4) == 2  # torchrun on 16 cores: 4 each, half of them
    assert devices.train_workers("cpu", 1) == devices.train_workers("cuda", 1) == 0  # the tutorial's batch of one
    assert train.settings.resolve(parse(train, ["--device", "cpu"]), train.get_args_parser(),
                                  train.training.World.from_env()).workers == 8


@pytest.mark.parametrize("argv", [["--lr", "0"], ["--lr", "-0"], ["--lr", "1e-400"], ["--lr", "1e300"],
                                  ["--weight-decay", "1e300"], ["--norm-weight-decay", "-1"]])
def test_a_learning_rate_that_trains_nothing_or_overflows_is_refused_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(train, argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.count("\n") == 0 and err.startswith(f"error: argument {argv[0]}: must be in")


def test_a_download_s_cache_name_drops_the_url_s_query(tmp_path, monkeypatch):
    from helpers import files, weights
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(cli.UserError) as e:  # nothing listens on port 9: the offline advice
        weights.imagenet_weights("resnet18", url="http://127.0.0.1:9/resnet18-f37072fd.pth?x=1", progress=False)
    assert f"put it at {tmp_path / 'checkpoints' / 'resnet18-f37072fd.pth'}," in str(e.value), e.value
    assert downloads.url_file_name("https://h/a/flower_photos.tgz?dl=1#top") == "flower_photos.tgz"  # split_data.py's
