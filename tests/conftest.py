"""Shared fixtures: tiny generated data sets and one tiny trained model, all on the CPU."""
import contextlib
import gc
import importlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import warnings

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["MPLBACKEND"] = "Agg"  # scripts run in this process (run_main) draw as they would with no display
os.environ.pop("DISPLAY", None)

from helpers import cli, demo_data  # noqa: E402
import split_data  # noqa: E402
import train  # noqa: E402

# Under pytest-xdist each worker gets its share of the cores: more threads than cores only wait on each other.
torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
FILTERS_AT_IMPORT = list(warnings.filters)  # with those the helpers set when they were imported

# Small and fast: resnet18 at 32 px. TINY_TRAIN is what a test adds its own paths to.
TINY_TRAIN = ["--model", "resnet18", "--weights", "none", "--img-size", "32", "--epochs", "1",
              "--batch-size", "8", "--workers", "0", "--lr", "1e-3"]


def parse(module, argv):
    return module.get_args_parser().parse_args([str(a) for a in argv])


def resolve(args, ckpt=None):
    """train.py's settings for parsed args, as main() resolves them (one process)."""
    from helpers import settings, training
    return settings.resolve(args, train.get_args_parser(), training.World(), ckpt)


def run_script(script, *argv, cwd=None):
    """Run a script as a user would; returns the CompletedProcess (text)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def run_main(script, *argv, cwd=None):
    """Run a script's main() in this process, the way its `python script.py` line runs it, and return
    the same CompletedProcess (exit code, stdout, stderr) as run_script. It saves the seconds of
    starting Python and importing torch again. Tests of signals, locks held by another process,
    start-up and machines without torch still need run_script."""
    module = importlib.import_module(Path(script).stem)
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    code, here = 0, os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # As in a new process: the filters that the code set when it was imported (pytest drops
            # them after collecting), and any other warning shown once, on stderr.
            warnings.filters[:] = FILTERS_AT_IMPORT
            warnings.simplefilter("default", append=True)
            warnings.showwarning = lambda *w, **_: sys.stderr.write(warnings.formatwarning(*w[:4]))
            try:
                cli.run_cli(module.main, module.get_args_parser(), [str(a) for a in argv])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(here)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        gc.unfreeze()  # run_cli freezes the collector once main is done; here the process goes on
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


def make_class_folders(root, per_class=6, size=40, classes=("daisy", "roses", "tulips")):
    """<root>/<class>/*.jpg of synthetic flowers."""
    import random
    import zlib
    # Drawn from the folder's name: train/ and val/ made by two calls hold other pictures (a copy in
    # both would be refused as val sharing images with train).
    rng = random.Random(zlib.crc32(Path(root).name.encode()))
    for c in classes:
        (Path(root) / c).mkdir(parents=True, exist_ok=True)
        kind = c if c in demo_data.CLASSES else demo_data.CLASSES[hash(c) % 5]
        for i in range(per_class):
            demo_data.draw_image(kind, rng, size).save(Path(root) / c / f"{c}_{i}.jpg")
    return Path(root)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """split_data + one epoch of train.py on 3 tiny classes; what predict tests start from."""
    base = tmp_path_factory.mktemp("tiny")
    data_root = base / "flower_data"
    make_class_folders(data_root / "flower_photos", per_class=8)
    split_data.main(parse(split_data, ["--data-path", data_root]))
    out = base / "run"
    result = train.main(parse(train, TINY_TRAIN + ["--data-path", data_root, "--save-path", out / "resNet18.pth",
                                                   "--class-indices", out / "class_indices.json"]))
    return {"base": base, "data": data_root, "weights": out / "resNet18.pth",
            "classes": out / "class_indices.json", "result": result}


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """3 classes of 8 images split at 0.25: 18 train images (5 batches of 4, the last of 2), 6 val.
    Only read by the tests: each writes its run elsewhere."""
    root = tmp_path_factory.mktemp("small") / "flower_data"
    make_class_folders(root / "flower_photos", per_class=8)
    split_data.main(parse(split_data, ["--data-path", root, "--val-rate", "0.25"]))
    return root


def interrupt_at_batch(n, sig=signal.SIGINT):
    """A real signal (SIGINT as Ctrl-C sends it, SIGTERM, SIGHUP) during the forward pass of the n-th
    training batch: the run stops after the optimizer step that batch belongs to. Returns the hook's
    handle.

    A module hook, not an optimizer-step hook: on torch 2.0, once torch.compile has run in the
    process, optimizer step hooks no longer fire."""
    return at_training_batch(n, lambda: os.kill(os.getpid(), sig))


def at_training_batch(n, action):
    """action() during the forward pass of the n-th training batch; returns the hook's handle."""
    import model
    count = [0]

    def hook(module, inputs):
        if isinstance(module, model.ResNet) and module.training:
            count[0] += 1
            if count[0] == n:
                action()
    return torch.nn.modules.module.register_module_forward_pre_hook(hook)


def interrupted_run(args, at_batch, sig=signal.SIGINT):
    """train.main(args), stopped by a signal (Ctrl-C's SIGINT unless told) during its at_batch-th
    training batch; the exit code (128 + the signal's number)."""
    handle = interrupt_at_batch(at_batch, sig)
    try:
        with pytest.raises(SystemExit) as stop:
            train.main(args)
    finally:
        handle.remove()
    return stop.value.code


def comparable(history):
    """A run's history without what depends on the machine's speed and memory."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s", "peak_mem_mb")} for h in history]
