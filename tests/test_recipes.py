"""The timm/torchvision recipe flags of train.py: each runs, resumes exactly where it applies, and
changes what it claims to (gradient accumulation, EMA, mixup/cutmix, clipping, norm weight decay,
auto augment, random erasing, compile)."""
import argparse
import csv
import dataclasses
import math
import random
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from helpers import cli, data as data_lib, demo_data, devices, imaging, optim, training
import model
import train
from conftest import ROOT, TINY_TRAIN, comparable, interrupted_run, parse, resolve, run_main

CPU = torch.device("cpu")


def run_args(data, out, *extra):
    return parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", out / "best.pth", "--epochs", "2",
                                      "--batch-size", "4", "--class-indices", out / "ci.json", *extra])


def load(path):
    return torch.load(path, weights_only=True)


def check_resumes_exactly(data, tmp_path, extra, stop_at_batch):
    """An uninterrupted run and one stopped by Ctrl-C during batch `stop_at_batch`, then resumed: the same history, best accuracy
    and best weights. Returns both results and the interrupted run's checkpoint."""
    full = train.main(run_args(data, tmp_path / "a", *extra))
    assert interrupted_run(run_args(data, tmp_path / "b", *extra), stop_at_batch) == 130
    ckpt = load(tmp_path / "b" / "last.pth")
    resumed = train.main(parse(train, ["--resume", tmp_path / "b" / "last.pth", "--workers", "0"]))
    assert len(resumed["history"]) == len(full["history"])
    for r, f in zip(comparable(resumed["history"]), comparable(full["history"])):
        assert r == pytest.approx(f, rel=1e-3, abs=1e-4, nan_ok=True)
    assert resumed["best_acc"] == full["best_acc"]
    a, b = load(tmp_path / "a" / "best.pth"), load(tmp_path / "b" / "best.pth")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    return full, resumed, ckpt


# ---------------------------------------------------------------- --accum-steps

def tiny_net():
    # No BatchNorm: its batch statistics are the one thing accumulation cannot reproduce.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def one_epoch(batches, accum_steps, clip_grad_norm=None, scaler=None, on_step=None):
    """train.train_one_epoch on tiny_net with plain SGD; returns the net and its optimizer steps."""
    net = tiny_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    if on_step:
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: on_step(net))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    s = argparse.Namespace(accum_steps=accum_steps, seed=0, epochs=1, clip_grad_norm=clip_grad_norm)
    env = training.Env(training.World(), CPU)
    loader = [(x, y, torch.arange(len(y))) for x, y in batches]
    step = training.Step(nn.CrossEntropyLoss(), optimizer, scheduler, scaler or devices.grad_scaler(CPU, None), s, env,
                         training.RunState())
    train.train_one_epoch(net, loader, step)
    return net, scheduler.last_epoch


def assert_same_weights(a, b):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=k)


def test_accumulation_equals_one_batch_of_the_group_size():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 3, 8, 8, generator=g), torch.randint(0, 3, (12,), generator=g)
    # 3 batches of 4 in groups of 2: one step on 8 images, then one on the last 4 (a shorter group)
    accumulated, steps = one_epoch([(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])], accum_steps=2)
    reference, ref_steps = one_epoch([(x[:8], y[:8]), (x[8:], y[8:])], accum_steps=1)
    assert steps == ref_steps == 2
    assert_same_weights(accumulated, reference)
    # the comparison can tell: three steps of 4 end elsewhere
    unaccumulated, _ = one_epoch([(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])], accum_steps=1)
    assert not torch.allclose(unaccumulated[-1].weight, reference[-1].weight, atol=1e-4)


def test_accumulation_counts_optimizer_steps_stops_at_one_and_resumes_exactly(data, tmp_path, capsys):
    steps = [0]
    from torch.optim.optimizer import register_optimizer_step_post_hook
    counter = register_optimizer_step_post_hook(lambda *a: steps.__setitem__(0, steps[0] + 1))
    extra = ["--accum-steps", "2", "--lr-scheduler", "cosine", "--warmup-epochs", "0.5"]
    try:
        # Ctrl-C during batch 8 = epoch 2, batch 3 of 5, the first of a group of 2: the run stops
        # after batch 4, at the optimizer step.
        full, resumed, ckpt = check_resumes_exactly(data, tmp_path, extra, 8)
    finally:
        counter.remove()
    assert (ckpt["epoch"], ckpt["step"]) == (1, 4)
    assert "gradient accumulation: 2 batches" in capsys.readouterr().out
    # 5 batches an epoch in groups of 2: ceil(5 / 2) = 3 optimizer steps, 6 in the 2 epochs
    assert steps[0] == 6 + 5 + 1  # the full run, the stopped one, the resumed one
    def cosine(step, steps_per_epoch):  # the cosine after a warm-up of int(0.5 x steps_per_epoch) steps
        warmup = int(0.5 * steps_per_epoch)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (2 * steps_per_epoch - warmup)))
    for epoch, row in enumerate(full["history"], 1):
        assert row["lr"] == pytest.approx(1e-3 * cosine(3 * epoch, steps_per_epoch=3))
    assert full["history"][0]["lr"] != pytest.approx(1e-3 * cosine(5, steps_per_epoch=5))


# ---------------------------------------------------------------- --model-ema

def test_model_ema_validated_saved_and_resumed(data, tmp_path):
    extra = ["--model-ema", "--model-ema-decay", "0.9"]
    full, resumed, ckpt = check_resumes_exactly(data, tmp_path, extra, 7)
    assert ckpt["ema"] is not None and (ckpt["epoch"], ckpt["step"]) == (1, 2)
    assert all(0 <= h["val_acc_ema"] <= 1 for h in full["history"])
    assert full["best_acc"] == pytest.approx(max(max(h["val_acc"], h["val_acc_ema"]) for h in full["history"]),
                                             abs=1e-5)
    with open(tmp_path / "a" / "history.csv") as f:
        assert all(r["val_acc_ema"] != "" for r in csv.DictReader(f))
    last = load(tmp_path / "a" / "last.pth")
    ema = last["ema"]
    assert ema["n_averaged"].item() == 10  # one update per optimizer step: 5 an epoch
    raw = last["model"]
    assert not torch.equal(ema["module.layer1.0.conv1.weight"], raw["layer1.0.conv1.weight"])
    # the EMA's BatchNorm statistics follow the model's (use_buffers): not the initial 0 and 1
    mean, var = ema["module.bn1.running_mean"], ema["module.bn1.running_var"]
    assert mean.abs().sum() > 0 and not torch.allclose(var, torch.ones_like(var))
    assert not torch.equal(mean, raw["bn1.running_mean"])  # averaged, not copied
    ends = load(tmp_path / "b" / "last.pth")["ema"]
    for k in ema:
        torch.testing.assert_close(ema[k], ends[k], rtol=1e-3, atol=1e-4)


def test_the_better_of_model_and_ema_is_saved(data, tmp_path, monkeypatch):
    # Three epochs whose val accuracies (model, EMA) are chosen: the EMA wins, then the model, then
    # neither beats the best. What each validation saw, and what best.pth held, are recorded.
    accuracies = iter([0.5, 0.75, 0.9, 0.8, 0.6, 0.85])
    seen, best_before, evaluations = [], [], []
    real_evaluate = train.evaluate

    def evaluate(net, loader, env, desc="valid"):
        if not desc.endswith("ema") and (tmp_path / "best.pth").exists():
            best_before.append(load(tmp_path / "best.pth"))
        seen.append({k: v.clone() for k, v in net.state_dict().items()})
        real = real_evaluate(net, loader, env, desc)  # a real evaluation, whose accuracy is chosen
        evaluations.append(real)
        chosen = type("Chosen", (type(real),), {"acc": property(lambda self, acc=next(accuracies): acc)})
        return chosen(**{f.name: getattr(real, f.name) for f in dataclasses.fields(real)})

    monkeypatch.setattr(train, "evaluate", evaluate)
    res = train.main(run_args(data, tmp_path, "--model-ema", "--epochs", "3"))
    res_best = load(tmp_path / "best.pth")
    model_1, ema_1, model_2, ema_2, model_3, ema_3 = seen

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert same(best_before[0], ema_1) and not same(best_before[0], model_1)  # the EMA won epoch 1
    assert same(best_before[1], model_2) and not same(best_before[1], ema_2)  # the model won epoch 2
    assert same(res_best, model_2)  # neither beat 0.9 in epoch 3: nothing saved
    # The final report is that of the best weights (model_2's val predictions), not evaluated again.
    assert len(seen) == 6 and (res["confusion"] == evaluations[2].confusion).all()
    assert res["best_acc"] == 0.9 and res["history"][0]["val_acc_ema"] == 0.75
    assert load(tmp_path / "last.pth")["ema"]["n_averaged"].item() == 15  # 5 optimizer steps an epoch


# ---------------------------------------------------------------- --mixup-alpha, --cutmix-alpha

needs_mixup = pytest.mark.skipif(not data_lib.mixup_available(), reason="torchvision < 0.16 has no v2.MixUp")


@needs_mixup
def test_mixup_and_cutmix_mix_images_and_targets_and_the_loss_takes_soft_targets():
    mixer = data_lib.batch_mixer(argparse.Namespace(mixup_alpha=0.4, cutmix_alpha=1.0), num_classes=3)
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    logits = torch.randn(8, 3)
    for seed in range(4):
        torch.manual_seed(seed)
        mixed, targets = mixer(images.clone(), labels)
        assert mixed.shape == images.shape and not torch.equal(mixed, images)
        assert targets.shape == (8, 3) and torch.allclose(targets.sum(1), torch.ones(8))
        assert (targets.max(1).values < 1).any()  # soft: two classes share a row
        expected = -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
        torch.testing.assert_close(nn.CrossEntropyLoss()(logits, targets), expected)


@needs_mixup
def test_mixup_cutmix_run_resume_exactly_and_leave_train_accuracy_out(data, tmp_path):
    extra = ["--mixup-alpha", "0.4", "--cutmix-alpha", "1.0"]
    full, _, _ = check_resumes_exactly(data, tmp_path, extra, 7)
    assert all(math.isnan(h["train_acc"]) for h in full["history"])
    assert all(h["train_loss"] > 0 for h in full["history"])
    with open(tmp_path / "a" / "history.csv") as f:
        assert [r["train_acc"] for r in csv.DictReader(f)] == ["nan", "nan"]


def test_mixup_refused_in_one_line_without_torchvision_mixup(data, tmp_path, monkeypatch):
    monkeypatch.setattr(data_lib, "mixup_available", lambda: False)
    with pytest.raises(cli.UserError, match="need torchvision 0.16 or later"):
        resolve(run_args(data, tmp_path, "--cutmix-alpha", "1.0"))


@pytest.mark.skipif(data_lib.mixup_available(), reason="this torchvision has v2.MixUp (the floor venv has not)")
def test_mixup_refused_by_the_script_on_old_torchvision(data, tmp_path):
    res = run_main("train.py", *TINY_TRAIN, "--data-path", data, "--save-path", tmp_path / "w.pth",
                     "--class-indices", tmp_path / "ci.json", "--mixup-alpha", "0.2")
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: --mixup-alpha"), res.stderr
    assert not list(tmp_path.iterdir())  # refused before any write


# ---------------------------------------------------------------- --clip-grad-norm

def grad_norm(params):
    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    return torch.cat(grads).norm().item()


def test_clip_grad_norm_applies_after_unscaling():
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(4, 3, 8, 8, generator=g) * 10, torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]
    raw, clipped = [], []
    one_epoch(batches, 1, on_step=lambda net: raw.append(grad_norm(net.parameters())))
    assert min(raw) > 1e-3
    # A scaler at 1024 (where this torch has one for the CPU): clipping the scaled gradients would
    # leave them 1024 times too small.
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if hasattr(torch.amp, "GradScaler") else None
    one_epoch(batches, 1, clip_grad_norm=1e-3, scaler=scaler,
              on_step=lambda net: clipped.append(grad_norm(net.parameters())))
    assert clipped == pytest.approx([1e-3] * 3, rel=1e-4)


def test_clip_grad_norm_and_norm_weight_decay_in_a_run(data, tmp_path):
    norms = []

    def hook(optimizer, args, kwargs):
        norms.append(grad_norm(p for g in optimizer.param_groups for p in g["params"]))
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    handle = register_optimizer_step_pre_hook(hook)
    try:
        train.main(run_args(data, tmp_path, "--epochs", "1", "--clip-grad-norm", "0.05", "--opt", "adamw",
                            "--weight-decay", "0.05", "--norm-weight-decay", "0"))
    finally:
        handle.remove()
    assert norms == pytest.approx([0.05] * 5, rel=1e-3)  # a fresh resnet18's gradients are far larger
    ckpt = load(tmp_path / "last.pth")
    assert sorted(g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]) == [0.0, 0.0, 0.05, 0.05]
    assert ckpt["ema"] is None
    with open(tmp_path / "history.csv") as f:
        assert [r["val_acc_ema"] for r in csv.DictReader(f)] == [""]


# ---------------------------------------------------------------- --norm-weight-decay

def decay_of(net, argv):
    s = resolve(parse(train, ["--model", "resnet18", "--opt", "adamw", *argv]))
    groups = optim.build_optimizer(net, s).param_groups
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in net.named_parameters()}


def test_norm_weight_decay_zero_spares_norm_layers_and_biases():
    net = model.resnet18(num_classes=3)
    norm = {f"{m_name}.{p_name}" for m_name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)
            for p_name, _ in m.named_parameters()}
    assert len(norm) == 2 * 20  # 20 BatchNorm layers in resnet18, weight and bias each
    decay = decay_of(net, ["--weight-decay", "0.05", "--norm-weight-decay", "0"])
    for name, wd in decay.items():
        assert wd == (0.0 if name in norm or name == "fc.bias" else 0.05), name
    assert decay["conv1.weight"] == decay["layer2.0.downsample.0.weight"] == decay["fc.weight"] == 0.05
    # without the flag, every parameter has --weight-decay (the tutorial's behaviour)
    assert set(decay_of(net, ["--weight-decay", "0.05"]).values()) == {0.05}


# ---------------------------------------------------------------- --auto-augment, --random-erase

@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "daisy.jpg"
    demo_data.draw_image("daisy", random.Random(0), 96).save(path)
    return path


def transformed(photo, transform, seed):
    torch.manual_seed(seed)
    with imaging.open_image(photo) as img:
        return transform(img)


@pytest.mark.parametrize("choice", ["ta", "ra", "aa"])
def test_auto_augment_changes_the_train_images(photo, choice):
    plain, augmented = imaging.TrainTransform(32), imaging.TrainTransform(32, auto_augment=choice)
    changed = [not torch.equal(transformed(photo, plain, seed), transformed(photo, augmented, seed))
               for seed in range(6)]
    assert sum(changed) >= 3  # the policy may draw an identity now and then


def test_random_erase_blanks_a_rectangle(photo):
    plain, erased = imaging.TrainTransform(32), imaging.TrainTransform(32, random_erase=1.0)
    a, b = transformed(photo, plain, 0), transformed(photo, erased, 0)
    differ = (a != b).any(0)
    assert differ.any()
    rows, cols = differ.any(1).nonzero()[:, 0], differ.any(0).nonzero()[:, 0]
    box = b[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert (box == 0).all()  # one rectangle of RandomErasing's value 0, after Normalize


def test_augment_flags_run_and_are_kept_for_resume(data, tmp_path):
    # One run for both: the tests above show each policy on the very transform the run uses.
    res = train.main(run_args(data, tmp_path, "--epochs", "1", "--auto-augment", "ra", "--random-erase", "0.5"))
    assert len(res["history"]) == 1
    saved = load(tmp_path / "last.pth")["settings"]
    assert (saved["auto_augment"], saved["random_erase"]) == ("ra", 0.5)
    assert train.get_args_parser().parse_args(["--auto-augment"]).auto_augment == "ta"  # the bare flag


# ---------------------------------------------------------------- --compile

@pytest.mark.skipif(devices.why_no_compile() is not None, reason=str(devices.why_no_compile()))
def test_compile_runs_and_its_checkpoint_loads_into_a_plain_model(data, tmp_path):
    # torch.compile's default backend (inductor) takes minutes on a small CPU: the aot_eager backend
    # goes through the same capture (forward and backward graphs, the wrapper module) in seconds.
    # bench/gpu_check.sh times the real one. In a process of its own: on torch 2.0, compiling patches
    # torch for the rest of the process (optimizer hooks stop firing).
    code = f"""
import sys, torch
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
import train
from conftest import TINY_TRAIN, parse
calls, real = [], torch.compile
torch.compile = lambda net, **kw: calls.append(net) or real(net, backend="aot_eager")
argv = TINY_TRAIN + ["--data-path", {str(data)!r}, "--save-path", {str(tmp_path / "best.pth")!r}, "--epochs", "1",
                     "--batch-size", "6", "--class-indices", {str(tmp_path / "ci.json")!r}, "--compile"]
train.main(parse(train, argv))  # batch 6: three full batches, one graph
print("compiled", len(calls))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "compiled 1" in res.stdout
    for weights in (load(tmp_path / "best.pth"), load(tmp_path / "last.pth")["model"]):
        assert not any(k.startswith("_orig_mod.") for k in weights)
        model.resnet18(num_classes=3).load_state_dict(weights)  # strict


def test_compile_refused_in_one_line_where_unsupported(data, tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "why_no_compile", lambda: "torch 2.0.1 cannot compile on Python 3.11")
    with pytest.raises(cli.UserError, match="--compile: torch 2.0.1 cannot compile"):
        resolve(run_args(data, tmp_path, "--compile"))
    resolve(run_args(data, tmp_path))  # not asked for: no check
