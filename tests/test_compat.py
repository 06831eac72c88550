"""What keeps the scripts running on the oldest supported Python and on a machine without torch."""
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
