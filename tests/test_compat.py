"""What keeps the scripts running on the oldest supported Python and on a machine without torch."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

from helpers import inference
import model
from conftest import ROOT


def test_every_file_parses_as_python_3_8():
    """JetPack 5 ships Python 3.8: vermin finds any syntax, library call or annotation of a later one."""
    vermin = Path(sys.executable).with_name("vermin")
    files = sorted(str(p) for folder in (ROOT, ROOT / "helpers", ROOT / "tests") for p in folder.glob("*.py"))
    res = subprocess.run([str(vermin), "-t=3.8-", "--violations", "--eval-annotations", "--no-tips", *files],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_torch_free_list_of_models_is_model_py_s():
    assert list(inference.MODEL_NAMES) == list(model.MODELS)


SCRIPTS = ("train", "predict", "batch_predict", "evaluate", "export_onnx", "load_weights", "benchmark",
           "split_data", "video_predict")


def test_a_mistyped_flag_is_refused_before_torch_loads_and_never_read_as_a_longer_flag():
    """`--epoch 3` is an error (argparse would read it as --epochs), said before torch's seconds of
    loading: torch is blocked here, so a script that imported it first would fail on the import."""
    mistyped = {}
    for name in SCRIPTS:
        usage = importlib.import_module(name).get_args_parser().format_usage()
        mistyped[name] = next(f for f in re.findall(r"--[a-z-]+", usage) if len(f) > 6)[:-1]  # --data-pat, say
    code = ("import runpy, sys\n"
            "sys.modules['torch'] = None  # import torch now fails\n"
            f"for name, flag in {mistyped!r}.items():\n"
            "    sys.argv = [name + '.py', flag, '1']\n"
            "    try:\n"
            "        runpy.run_path(name + '.py', run_name='__main__')\n"
            "    except SystemExit as e:\n"
            "        print(name, e.code, flush=True)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == [w for name in SCRIPTS for w in (name, "2")], res.stdout + res.stderr
    for name, flag in mistyped.items():
        assert f"error: unrecognized arguments: {flag}" in res.stderr
