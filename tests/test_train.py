"""Training a user can trust: resume, mixed precision, metrics, recipes, several processes."""
import csv
import dataclasses
import os
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

import batch_predict
from helpers import cli, devices, optim, reports, stop
import model
import split_data
import train
from conftest import ROOT, TINY_TRAIN, comparable, interrupted_run, parse


def run_args(data, out, *extra):
    return parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", out / "best.pth", "--epochs", "3",
                                      "--batch-size", "4", "--class-indices", out / "ci.json", *extra])


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    """The uninterrupted run that the stopped and resumed ones must equal."""
    out = tmp_path_factory.mktemp("full")
    return out, train.main(run_args(data, out))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_stopped_then_resumed_run_equals_uninterrupted(full_run, data, tmp_path, capsys, sig):
    out, full = full_run
    assert interrupted_run(run_args(data, tmp_path / "b"), 7, sig) == 128 + sig  # 5 steps an epoch: stops in epoch 2
    err = capsys.readouterr().err
    name = stop.name(sig)
    assert f"{name}: stopping after this step" in err and f"stopped by {name}: saved" in err
    assert f"python train.py --resume {tmp_path / 'b' / 'last.pth'}" in err
    ckpt = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)
    assert ckpt["classes"] == ["daisy", "roses", "tulips"] and ckpt["model_name"] == "resnet18"
    # resumed with another worker count: the same result all the same
    resumed = train.main(parse(train, ["--resume", tmp_path / "b" / "last.pth", "--workers", "2"]))
    assert len(resumed["history"]) == len(full["history"])
    for r, f in zip(comparable(resumed["history"]), comparable(full["history"])):
        assert r == pytest.approx(f, rel=1e-3, abs=1e-4)
    assert resumed["best_acc"] == full["best_acc"] and len(resumed["history"]) == 3
    a = torch.load(out / "best.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "best.pth", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())


def test_a_closed_terminal_stops_the_run_at_a_step_with_its_checkpoint(data, tmp_path):
    """The SSH session to the board closes: the kernel hangs up the terminal and sends SIGHUP to the
    run and its data-loader workers. The workers live on, the run writes no more to the gone
    terminal (that would fail), saves its step and ends; the checkpoint resumes."""
    import fcntl
    import pty
    import select
    import termios
    master, slave = pty.openpty()
    cmd = [sys.executable, str(ROOT / "train.py")] + [str(a) for a in TINY_TRAIN] + [
        "--data-path", str(data), "--epochs", "100", "--batch-size", "4", "--workers", "2",
        "--save-path", str(tmp_path / "best.pth"), "--class-indices", str(tmp_path / "ci.json")]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # the run's terminal
                            env=dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg"))
    os.close(slave)
    seen = b""
    try:
        while b"[epoch 1]" not in seen:  # the terminal shows the first epoch; then the session is closed
            ready, _, _ = select.select([master], [], [], 300)
            assert ready, seen[-2000:]
            seen += os.read(master, 65536)
    except OSError:
        pytest.fail(f"the run ended early: {seen[-2000:]!r}")
    finally:
        os.close(master)  # the hang-up
    assert proc.wait(timeout=300) == 128 + signal.SIGHUP
    ckpt = torch.load(tmp_path / "last.pth", weights_only=True)
    assert ckpt["epoch"] >= 1 and not list(tmp_path.glob(".*.tmp*"))  # written whole
    resumed = train.main(parse(train, ["--resume", tmp_path / "last.pth", "--epochs", ckpt["epoch"] + 1,
                                       "--workers", "0"]))
    assert len(resumed["history"]) == ckpt["epoch"] + 1


def test_history_curves_and_confusion_matrix(data, tmp_path):
    res = train.main(run_args(data, tmp_path, "--epochs", "2"))
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == set(reports.HISTORY_FIELDS) and float(rows[0]["images_per_s"]) > 0
    for png in ("curves.png", "confusion_matrix.png"):
        with Image.open(tmp_path / png) as im:
            im.verify()
    assert res["confusion"].sum().item() == 6  # the val set's size
    ev = train.main(parse(train, ["--data-path", data, "--model", "resnet18", "--img-size", "32", "--workers", "0",
                                  "--eval-only", "--weights", tmp_path / "best.pth",
                                  "--output-dir", tmp_path / "ev", "--class-indices", tmp_path / "ci.json"]))
    assert ev["confusion"].sum().item() == 6 and (tmp_path / "ev" / "confusion_matrix.png").exists()
    assert ev["val_acc"] == pytest.approx(res["best_acc"])
    # The run's report reuses the best epoch's val predictions: the same as evaluating its weights again.
    assert (ev["confusion"] == res["confusion"]).all()
    assert "precision" in reports.metrics_table(reports.metrics(ev["confusion"], ev["classes"]))


def test_mixed_precision_runs_on_cpu_and_matches_fp32_accuracy(tmp_path, capsys):
    if devices.amp_dtype(torch.device("cpu")) is None:
        pytest.skip("this CPU has no native bf16")
    root = tmp_path / "demo"
    split_data.main(parse(split_data, ["--data-path", root, "--demo", "--demo-per-class", "80",
                                       "--demo-imgs", tmp_path / "imgs"]))
    common_args = ["--data-path", root, "--model", "resnet18", "--weights", "none", "--img-size", "64",
                   "--epochs", "4", "--lr", "1e-3", "--batch-size", "16", "--workers", "0",
                   "--class-indices", tmp_path / "ci.json"]
    amp = train.main(parse(train, common_args + ["--save-path", tmp_path / "amp.pth"]))
    assert "mixed precision: bfloat16" in capsys.readouterr().out
    fp32 = train.main(parse(train, common_args + ["--save-path", tmp_path / "fp32" / "w.pth", "--no-amp"]))
    assert amp["best_acc"] > 0.5 and fp32["best_acc"] > 0.5  # chance is 0.2
    assert amp["best_acc"] >= fp32["best_acc"] - 0.15


def test_recipes_schedulers_and_param_groups(data, tmp_path):
    args = run_args(data, tmp_path, "--opt", "sgd", "--lr", "0.1", "--lr-scheduler", "cosine", "--warmup-epochs", "1",
                    "--label-smoothing", "0.1", "--auto-augment", "--backbone-lr-scale", "0.1", "--weight-decay", "1e-4")
    res = train.main(args)
    lrs = [h["lr"] for h in res["history"]]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.0, abs=1e-9)  # warm-up peak, cosine end
    net = model.resnet18(num_classes=3)
    args = dataclasses.replace(res["settings"], opt="adamw", lr=1.0)  # the run's settings, resolved
    groups = optim.build_optimizer(net, args).param_groups
    assert [g["lr"] for g in groups] == [1.0, 0.1] and len(groups[0]["params"]) == 2  # fc: weight, bias
    args = dataclasses.replace(args, lr_scheduler="step", warmup_epochs=0, epochs=4, lr_step_size=2)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    sched = optim.build_scheduler(opt, args, steps_per_epoch=1)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_freeze_backbone_trains_only_fc(data, tmp_path):
    torch.manual_seed(0)
    start = tmp_path / "start.pth"
    torch.save(model.resnet18().state_dict(), start)
    train.main(run_args(data, tmp_path, "--epochs", "1", "--weights", start, "--freeze-backbone"))
    before, after = torch.load(start, weights_only=True), torch.load(tmp_path / "best.pth", weights_only=True)
    torch.testing.assert_close(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])
    assert after["fc.weight"].shape == (3, 512)


def test_weights_imagenet_uses_the_hub_cache_and_checks_its_hash(data, tmp_path, monkeypatch):
    from helpers import files, weights
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    ref = model.resnet18().state_dict()
    torch.save(ref, hub / "file.pth")
    name = f"resnet18-{files.file_sha256(hub / 'file.pth')[:8]}.pth"  # torch.hub's convention
    (hub / "file.pth").rename(hub / "checkpoints" / name)
    monkeypatch.setattr(weights, "imagenet_url", lambda m: f"https://download.pytorch.org/models/{name}")
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        train.main(run_args(data, tmp_path, "--epochs", "1", "--weights", "imagenet", "--freeze-backbone"))
        got = torch.load(tmp_path / "best.pth", weights_only=True)
        torch.testing.assert_close(got["layer2.0.conv1.weight"], ref["layer2.0.conv1.weight"])
        # a wrong file copied there by hand under the real name is refused, before anything is written
        torch.save(model.resnet18().state_dict(), hub / "checkpoints" / name)
        with pytest.raises(cli.UserError, match=f"{name} is not the file its name says"):
            train.main(run_args(data, tmp_path / "again", "--epochs", "1", "--weights", "imagenet"))
        assert not (tmp_path / "again").exists()
    finally:
        torch.hub.set_dir(old)


def test_two_gloo_processes_train_and_save(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py")] + [str(a) for a in TINY_TRAIN] + [
        "--device", "cpu", "--data-path", str(data), "--epochs", "2", "--batch-size", "3", "--sync-bn",
        "--save-path", str(tmp_path / "ddp.pth"), "--class-indices", str(tmp_path / "ci.json")]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stdout.count("Finished Training") == 1  # printed by rank 0 only
    assert "using 18 images for training" in res.stdout
    rows, skipped = batch_predict.main(parse(batch_predict, [
        data / "val" / "roses", "--model", "resnet18", "--img-size", "32", "--weights", tmp_path / "ddp.pth",
        "--class-indices", tmp_path / "ci.json", "--workers", "0"]))
    assert len(rows) == 2 and not skipped
