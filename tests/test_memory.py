"""Memory: the estimate before training, the warning that names a batch size that fits, and a run
that runs out of memory anyway (the allocation made to fail): one line with a batch size that
fits, and the run resumed from its last checkpoint with that batch size."""
import shutil

import numpy as np
import pytest
import torch

from helpers import cli, memory
import predict
import train
from conftest import TINY_TRAIN, at_training_batch, comparable, parse

CPU_ALLOCATOR = ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2359296 bytes. "
                 "Error code 12 (Cannot allocate memory)")


def run_args(data, out, *extra):
    return parse(train, TINY_TRAIN + ["--data-path", data, "--save-path", out / "best.pth", "--epochs", "2",
                                      "--batch-size", "4", "--accum-steps", "2", "--class-indices", out / "ci.json",
                                      *extra])


def test_out_of_memory_errors_are_known_by_their_words():
    for e in (MemoryError(), RuntimeError(CPU_ALLOCATOR), torch.cuda.OutOfMemoryError("CUDA out of memory. Tried"),
              RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                           "out of memory")):
        assert memory.is_out_of_memory(e)
    for e in (RuntimeError("shape mismatch"), ValueError("out of memory"), KeyboardInterrupt()):
        assert not memory.is_out_of_memory(e)


def test_the_estimate_grows_as_measured_and_free_memory_is_meminfo_s(tmp_path):
    def est(**kw):
        args = dict(model="resnet34", n_params=21_000_000, n_trainable=21_000_000, batch_size=16, img_size=224,
                    half=False)
        args.update(kw)
        return memory.estimate(args.pop("model"), args.pop("n_params"), args.pop("n_trainable"),
                               args.pop("batch_size"), args.pop("img_size"), args.pop("half"), **args)
    fp32 = est()
    assert fp32.per_image_mb == pytest.approx(memory.PER_IMAGE_MB["resnet34"], rel=0.15)  # + the loader's batches
    assert est(img_size=112).per_image_mb == pytest.approx(fp32.per_image_mb / 4, rel=0.05)  # (112/224)^2
    assert est(half=True).per_image_mb < 0.6 * fp32.per_image_mb
    frozen = est(n_trainable=2_000)  # --freeze-backbone: the backbone runs as in inference, without its gradients
    assert frozen.per_image_mb < 0.4 * fp32.per_image_mb and frozen.fixed_mb < fp32.fixed_mb
    assert est(optimizer="sgd", momentum=0).fixed_mb < fp32.fixed_mb < est(ema=True).fixed_mb
    assert est(gpu=True).fixed_mb == pytest.approx(fp32.fixed_mb - memory.BASE_MB)
    assert fp32.total_mb == fp32.fixed_mb + 16 * fp32.per_image_mb
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:        8000000 kB\nMemFree:          300000 kB\nMemAvailable:    2048000 kB\n"
                    "SwapTotal:       4096000 kB\nSwapFree:        1024000 kB\n")
    got = memory.read_meminfo(info)
    assert got["MemAvailable"] + got["SwapFree"] == 3000.0


def fake_machine(monkeypatch, free_mb, fixed_mb=100.0, per_image_mb=100.0):
    """A machine with free_mb free, on which a run takes fixed + per image x batch (and holds nothing yet)."""
    monkeypatch.setattr(memory, "estimate", lambda model, n, t, batch_size, *a, **k:
                        memory.Estimate(fixed_mb, per_image_mb, batch_size))
    monkeypatch.setattr(memory, "free_memory", lambda device: (free_mb, "MemAvailable + free swap", 0.0))


def test_a_run_that_will_not_fit_says_so_before_the_first_step(data, tmp_path, monkeypatch, capsys):
    fake_machine(monkeypatch, free_mb=400 / memory.MARGIN)  # batch 4 takes 500 MB, batch 2 300 MB
    handle = at_training_batch(1, lambda: print("FIRST STEP", file=__import__("sys").stderr))
    try:
        train.main(run_args(data, tmp_path, "--epochs", "1"))
    finally:
        handle.remove()
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning: this run needs")]
    assert len(warning) == 1 and err.index(warning[0]) < err.index("FIRST STEP")
    assert "needs about 500 MB at the peak (resnet18, batch 4, " in warning[0]
    assert "500 MB more than it holds now, but 444 MB is MemAvailable + free swap: it will not fit" in warning[0]
    assert warning[0].endswith("--batch-size 2 --accum-steps 4 fits (the same 8 images per optimizer step)")


def test_out_of_memory_in_training_goes_back_to_the_last_checkpoint_and_names_a_batch_that_fits(data, tmp_path):
    full = train.main(run_args(data, tmp_path / "full"))

    def fail():
        raise RuntimeError(CPU_ALLOCATOR)

    # 5 batches of 4 an epoch, 2 to a step: batch 9 is the second of epoch 2's second step. Nothing is
    # saved then: the run goes back to its last checkpoint, the end of epoch 1.
    handle = at_training_batch(9, fail)
    try:
        with pytest.raises(cli.UserError) as stop:
            train.main(run_args(data, tmp_path / "b"))
    finally:
        handle.remove()
    ckpt = tmp_path / "b" / "last.pth"
    line = str(stop.value)
    assert line.startswith("out of memory at --batch-size 4 (DefaultCPUAllocator: can't allocate memory")
    assert f"{ckpt} holds the run up to its last save; --batch-size 2 --accum-steps 4 fits (the same 8 images" in line
    assert line.endswith(f"python train.py --resume {ckpt} --batch-size 2 --accum-steps 4") and "\n" not in line
    assert (torch.load(ckpt, weights_only=True)["epoch"], torch.load(ckpt, weights_only=True)["step"]) == (1, 0)
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    # Resumed as it was: exactly the uninterrupted run.
    resumed = train.main(parse(train, ["--resume", ckpt]))
    for r, f in zip(comparable(resumed["history"]), comparable(full["history"])):
        assert r == pytest.approx(f, rel=1e-3, abs=1e-4)
    # Resumed with the batch size named: epoch 2's images, in smaller batches, the same step count.
    with pytest.raises(cli.UserError, match=r"--batch-size 3 --accum-steps 2 contradicts .*keeps its 8 images"):
        train.main(parse(train, ["--resume", tmp_path / "c" / "last.pth", "--batch-size", "3"]))
    smaller = train.main(parse(train, ["--resume", tmp_path / "c" / "last.pth", "--batch-size", "2",
                                       "--accum-steps", "4"]))
    assert len(smaller["history"]) == 2 and smaller["settings"].batch_size == 2
    row = smaller["history"][1]
    assert row["images_per_s"] * row["seconds"] == pytest.approx(18, rel=0.02)  # every image of the epoch, once
    assert torch.load(tmp_path / "c" / "last.pth", weights_only=True)["scheduler"]["last_epoch"] == \
        torch.load(ckpt, weights_only=True)["scheduler"]["last_epoch"]  # as many optimizer steps


def test_out_of_memory_at_the_first_step_saves_nothing_and_still_names_a_batch(data, tmp_path):
    def fail():
        raise MemoryError

    handle = at_training_batch(1, fail)
    try:
        with pytest.raises(cli.UserError, match=r"^out of memory at --batch-size 4 \(MemoryError\); --batch-size 2 "):
            train.main(run_args(data, tmp_path))
    finally:
        handle.remove()
    assert not (tmp_path / "last.pth").exists()


def test_predict_with_pytorch_halves_its_batch_when_memory_runs_out(tiny_run, monkeypatch, capsys):
    from helpers import weights
    build = weights.build_model

    def small_memory(*a, **k):  # a net whose forward cannot allocate for more than one image
        net = build(*a, **k)

        def hook(module, inputs):
            if len(inputs[0]) > 1:
                raise RuntimeError(CPU_ALLOCATOR)
        net.register_forward_pre_hook(hook)
        return net

    images = sorted((tiny_run["data"] / "val").rglob("*.jpg"))[:3]
    argv = [*images, "--model", "resnet18", "--weights", tiny_run["weights"], "--class-indices", tiny_run["classes"],
            "--img-size", "32", "--device", "cpu", "--save-fig", tiny_run["base"] / "p.png", "--workers", "0"]
    expected = predict.main(parse(predict, argv))
    monkeypatch.setattr(weights, "build_model", small_memory)
    capsys.readouterr()
    got = predict.main(parse(predict, argv))
    assert [r[:2] for r in got] == [r[:2] for r in expected]
    np.testing.assert_allclose(np.stack([r[2] for r in got]), np.stack([r[2] for r in expected]), atol=1e-3)
    err = capsys.readouterr().err
    assert "out of memory at a batch of 3 images; going on with batches of 1" in err
