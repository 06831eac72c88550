"""Settings that train or predict nonsense without a word are refused in one line, before any work;
the lines that explain a refusal name the flag the user gave."""
import os

import pytest
import torch

from helpers import weights
from conftest import TINY_TRAIN, make_class_folders, run_main


def one_class_model(path):
    """Weights of a one-class resnet18 that carry their class, as train.py would have saved them."""
    net = weights.build_model("resnet18", num_classes=1)
    held = weights.TrainedWith(classes=["daisy"], img_size=32, architecture="resnet18")
    torch.save(weights.with_info(net.state_dict(), held), path)
    return path


@pytest.mark.parametrize("script", ["train.py", "split_data.py", "predict.py", "evaluate.py", "export_onnx.py",
                                    "load_weights.py"])
def test_one_class_is_refused_before_any_work(script, tmp_path):
    """A classifier of one class has loss 0 and accuracy 1, and calls every image that class."""
    photos = make_class_folders(tmp_path / "flower_photos", per_class=2, size=32, classes=("daisy",))
    if script == "train.py":
        make_class_folders(tmp_path / "train", per_class=2, size=32, classes=("daisy",))
        make_class_folders(tmp_path / "val", per_class=1, size=32, classes=("daisy",))
        argv = TINY_TRAIN + ["--data-path", tmp_path, "--save-path", tmp_path / "run" / "w.pth"]
    elif script == "split_data.py":
        argv = ["--data-path", tmp_path]
    elif script == "load_weights.py":
        argv = ["--num-classes", "1", "--model", "resnet18", "--weights", tmp_path / "none.pth"]
    else:
        model = ["--weights", one_class_model(tmp_path / "w.pth")]
        argv = {"predict.py": [photos / "daisy" / "daisy_0.jpg", "--save-fig", tmp_path / "p.png"] + model,
                "evaluate.py": [tmp_path / "flower_photos"] + model,
                "export_onnx.py": model + ["--out", tmp_path / "m.onnx"]}[script]
    before = sorted(tmp_path.rglob("*"))
    res = run_main(script, *argv)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert ("one class" in res.stderr and "two classes" in res.stderr) or "--num-classes" in res.stderr, res.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("flags, resumed", [(["--freeze-backbone"], False), (["--backbone-lr-scale", "0"], False),
                                            (["--backbone-lr-scale", "1e-12"], False), (["--freeze-backbone"], True)])
def test_a_head_over_a_frozen_random_backbone_is_refused(flags, resumed, tmp_path):
    """--weights none with the backbone frozen (or at learning rate 0) trains fc over random features;
    a resumed run's saved settings are checked the same way."""
    from conftest import parse, resolve
    import train
    from helpers import cli
    if resumed:
        settings = {"model": "resnet18", "weights": "none", "freeze_backbone": True}
        args, ckpt = parse(train, ["--resume", tmp_path / "last.pth"]), {"settings": settings, "epoch": 0, "step": 0}
    else:
        args, ckpt = parse(train, TINY_TRAIN + flags + ["--data-path", tmp_path]), None
    with pytest.raises(cli.UserError, match=f"{flags[0]}.* with --weights none would train only fc"):
        resolve(args, ckpt)
    if not resumed:  # from trained weights it is what the flag is for
        assert resolve(parse(train, TINY_TRAIN[:2] + flags + ["--data-path", tmp_path]), None).weights == "./resnet18-pre.pth"


@pytest.mark.parametrize("flags, on, offered", [
    ([], [], ["--class-weights auto or --balanced-sampler", "--select-by balanced_acc"]),
    (["--balanced-sampler"], ["--balanced-sampler"], ["--select-by balanced_acc"]),
    (["--class-weights", "auto", "--select-by", "macro_f1"], ["--class-weights auto", "--select-by macro_f1"], []),
    (["--class-weights", "auto", "--balanced-sampler"], None, None)])
def test_balancing_twice_is_refused_and_the_note_never_offers_a_flag_that_is_on(flags, on, offered, tmp_path):
    """The sampler draws each class equally often; auto weights then count a small class once more.
    The imbalance note says what is on, and offers only the rest."""
    from conftest import parse, resolve
    import train
    from helpers import cli, data
    args = parse(train, TINY_TRAIN + flags + ["--data-path", tmp_path])
    if on is None:
        with pytest.raises(cli.UserError, match="--balanced-sampler and --class-weights auto .* twice over"):
            resolve(args)
        return
    note = data.imbalance_note(resolve(args))
    advice = note.split(":", 2)[-1] if offered else ""
    assert all(flag in note for flag in on + offered), note
    assert not any(flag.split()[0] in advice for flag in on), note  # nothing that is on is offered


@pytest.mark.parametrize("weights", [{"daisy": 1e308, "roses": 1, "tulips": 1}, {"daisy": 1, "roses": 1e-300, "tulips": 1},
                                     {"daisy": 10 ** 400, "roses": 1, "tulips": 1}])  # JSON's whole numbers have no bound
def test_class_weights_that_overflow_the_loss_are_refused_before_any_work(weights, data, tmp_path):
    """1e308 is a finite float64, but the loss is summed in float32: it became NaN, blamed on --lr."""
    import json
    (tmp_path / "w.json").write_text(json.dumps(weights))
    out = tmp_path / "run"
    res = run_main("train.py", *TINY_TRAIN, "--data-path", data, "--class-weights", tmp_path / "w.json",
                   "--save-path", out / "w.pth", "--class-indices", out / "ci.json")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "the loss overflows float32" in res.stderr and "--lr" not in res.stderr, res.stderr
    assert not out.exists()


def test_a_loss_that_is_nan_before_any_step_names_the_starting_weights_not_the_lr(data, tmp_path):
    """Finite starting weights whose outputs overflow: the first loss is NaN before the learning rate acted."""
    sd = weights.build_model("resnet18", num_classes=3).state_dict()
    sd["layer4.1.bn2.weight"].fill_(3e38)
    torch.save(sd, tmp_path / "start.pth")
    out = tmp_path / "run"
    res = run_main("train.py", *TINY_TRAIN, "--data-path", data, "--weights", tmp_path / "start.pth",
                   "--save-path", out / "w.pth", "--class-indices", out / "ci.json")
    assert res.returncode == 1 and res.stderr.count("error:") == 1, res.stderr
    assert "at epoch 1, step 1" in res.stderr and "before the first optimizer step" in res.stderr, res.stderr
    assert f"the starting weights {tmp_path / 'start.pth'}" in res.stderr and "lower --lr" not in res.stderr


def test_benchmark_predict_folder_skips_and_names_an_unreadable_image(tmp_path, monkeypatch):
    """The tutorial's loop, one of the timed runs, stopped at it: the benchmark ended after its first run."""
    import benchmark
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (50 * i, 90, 30)).save(folder / f"{i}.jpg")
    (folder / "bad.jpg").write_text("not a picture")
    runs, seen = [], set()

    def timed(cmd):  # what each run would read, when it runs
        runs.append(cmd)
        for a in map(str, cmd[1:]):
            seen.update(os.listdir(a) if os.path.isdir(a) else [os.path.basename(a)] if a.endswith(".jpg") else [])
        return 1.0, ""
    monkeypatch.setattr(benchmark, "timed", timed)
    res = run_main("benchmark.py", "--predict-folder", folder, "--no-onnx", "--repeats", "1", "--model", "resnet18",
                   "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "skipped: cannot read image" in res.stderr and "bad.jpg" in res.stderr
    assert "3 images" in res.stdout and len(runs) == 4
    assert seen == {"0.jpg", "1.jpg", "2.jpg"}  # every run reads the readable images only


@pytest.mark.parametrize("flag", ["--save-path", "--checkpoint", "--class-indices", "--output-dir"])
def test_an_output_inside_the_images_names_the_flag_that_was_given(flag, data, tmp_path):
    """--save-path inside val/ was refused with a line about --output-dir, a flag the user never gave."""
    out = tmp_path / "run"
    paths = {"--save-path": out / "w.pth", "--checkpoint": out / "last.pth", "--class-indices": out / "ci.json",
             "--output-dir": out}
    paths[flag] = data / "val" / "daisy" / ("" if flag == "--output-dir" else paths[flag].name)
    if flag == "--save-path":  # the checkpoint and the reports follow it there
        del paths["--checkpoint"], paths["--output-dir"]
    argv = [a for f, p in paths.items() for a in (f, p)]
    res = run_main("train.py", *TINY_TRAIN, "--data-path", data, *argv)
    assert res.returncode == 1 and res.stderr.startswith(f"error: the {flag} ") and "inside" in res.stderr, res.stderr
    assert not out.exists()


def test_a_shortened_flag_is_refused_and_never_names_a_hidden_old_name(tmp_path):
    """split_data.py --data was "ambiguous: --data-path, --data-root", naming a hidden alias."""
    for short in ("--data", "--d"):
        res = run_main("split_data.py", short, tmp_path / "none")
        assert res.returncode == 2 and f"unrecognized arguments: {short}" in res.stderr, res.stderr
        assert "--data-root" not in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_evaluate_names_output_dir_for_its_pictures_inside_the_folder(data, tmp_path):
    net = weights.build_model("resnet18", num_classes=3)
    held = weights.TrainedWith(classes=["daisy", "roses", "tulips"], img_size=32, architecture="resnet18")
    torch.save(weights.with_info(net.state_dict(), held), tmp_path / "w.pth")
    res = run_main("evaluate.py", data / "val", "--weights", tmp_path / "w.pth", "--output-dir", data / "val" / "out")
    assert res.returncode == 1 and res.stderr.startswith("error: the --output-dir's confusion matrix "), res.stderr
    assert not (data / "val" / "out").exists()


@pytest.mark.parametrize("epochs, advised", [("3", True), ("30", False)])
def test_from_scratch_advises_more_epochs_only_when_there_are_few(epochs, advised, tmp_path, capsys):
    """A hint never asks for what is already done (as the imbalance note never offers a flag that is on)."""
    import types
    from conftest import parse, resolve
    import train
    s = resolve(parse(train, TINY_TRAIN + ["--epochs", epochs, "--data-path", tmp_path]))
    env = types.SimpleNamespace(world=types.SimpleNamespace(is_main=True, distributed=False), device=torch.device("cpu"),
                                memory_format=torch.contiguous_format)
    train.build_model(s, env, 3, None)
    out = capsys.readouterr().out
    assert "training from scratch" in out and ("more than 20" in out) == advised, out


def test_an_earlier_checkpoint_names_the_flag_that_moves_it(data, tmp_path):
    """--checkpoint given: --save-path does not move it, so the line must not offer --save-path."""
    (tmp_path / "ck").mkdir()
    torch.save({}, tmp_path / "ck" / "last.pth")
    res = run_main("train.py", *TINY_TRAIN, "--data-path", data, "--save-path", tmp_path / "run" / "w.pth",
                   "--class-indices", tmp_path / "run" / "ci.json", "--checkpoint", tmp_path / "ck" / "last.pth")
    assert res.returncode == 1 and "is there from an earlier run" in res.stderr, res.stderr
    assert "--checkpoint writes elsewhere" in res.stderr and "--save-path" not in res.stderr, res.stderr


def test_a_class_whose_every_image_is_unreadable_is_refused_before_training(tmp_path):
    """Its images were each skipped during the epoch, and the model trained on the other classes alone;
    one decodable image per class is checked before any work."""
    make_class_folders(tmp_path / "train", per_class=3, size=32)
    make_class_folders(tmp_path / "val", per_class=1, size=32)
    for jpg in (tmp_path / "train" / "roses").iterdir():
        jpg.write_bytes(jpg.read_bytes()[:300])  # the header reads, the pixels do not
    res = run_main("train.py", *TINY_TRAIN, "--data-path", tmp_path, "--save-path", tmp_path / "run" / "w.pth",
                   cwd=tmp_path)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "no image of the class roses" in res.stderr and "3 tried" in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()
