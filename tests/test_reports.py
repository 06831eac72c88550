"""Reports that replace only their own kind, what the weights were trained on, and macro averages over
the model's classes."""
import shutil

import pytest
from PIL import Image

from helpers import files, sources, video
from conftest import TINY_TRAIN, make_class_folders, run_main

cv2 = sources.cv2


def refused(result, path, before):
    """One `error:` line naming the file, which is left as it was."""
    assert result.returncode != 0 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result
    assert "is not a" in result.stderr and str(path) in result.stderr
    assert path.read_bytes() == before


# ---------------------------------------------------------------- reports replace only their own kind

def test_a_report_path_on_a_file_that_is_not_that_report_is_refused_in_every_script(tiny_run, tmp_path):
    weights, data = tiny_run["weights"], tiny_run["data"]
    model = ["--weights", weights]
    victims = {"class_indices.json": tiny_run["classes"].read_bytes(), ".split.json": (data / ".split.json").read_bytes(),
               "labels.csv": b"path,label\nmine.jpg,daisy\n", "photo.jpg": next(data.rglob("*.jpg")).read_bytes(),
               "curves.png": next(data.rglob("*.jpg")).read_bytes()}
    for name, content in victims.items():
        (tmp_path / name).write_bytes(content)
    v = {name: tmp_path / name for name in victims}
    for flag, name in (("--json", "class_indices.json"), ("--json", ".split.json"), ("--csv", "labels.csv")):
        refused(run_main("evaluate.py", data / "val", *model, "--data-path", data, "--json", tmp_path / "e.json", flag, v[name]),
                v[name], victims[name])
    refused(run_main("batch_predict.py", data / "val" / "daisy", *model, "--csv", v["labels.csv"]),
            v["labels.csv"], victims["labels.csv"])
    refused(run_main("predict.py", next(data.rglob("*.jpg")), *model, "--save-fig", v["photo.jpg"]),
            v["photo.jpg"], victims["photo.jpg"])
    # A report folder: train.py's curves.png there is a photo of the user's (a PNG that matplotlib did not draw).
    Image.open(v["curves.png"]).save(v["curves.png"])
    victims["curves.png"] = v["curves.png"].read_bytes()
    refused(run_main("train.py", *TINY_TRAIN, "--data-path", data, "--save-path", tmp_path / "run" / "w.pth",
                     "--output-dir", tmp_path), v["curves.png"], victims["curves.png"])
    root = make_class_folders(tmp_path / "split" / "flower_photos", per_class=2).parent
    shutil.copy(v["curves.png"], root / "split.png")
    refused(run_main("split_data.py", "--data-path", root), root / "split.png", victims["curves.png"])
    assert not (root / "train").exists()

    # Their own reports, from an earlier run, they replace.
    for _ in range(2):
        ok = run_main("evaluate.py", data / "val", *model, "--data-path", data, "--json", tmp_path / "e.json", "--csv", tmp_path / "e.csv",
                      "--output-dir", tmp_path / "figs")
        assert ok.returncode == 0, ok.stderr
        ok = run_main("predict.py", next(data.rglob("*.jpg")), *model, "--save-fig", tmp_path / "p.jpg")
        assert ok.returncode == 0, ok.stderr
    for name in ("e.json", "e.csv", "p.jpg", "figs/val_confusion_matrix.png"):
        assert files.is_our_report(tmp_path / name), name


@pytest.mark.skipif(cv2 is None, reason="OpenCV is not installed (pip install -r requirements-video.txt)")
def test_video_reports_are_marked_and_a_video_of_the_users_is_refused(tiny_run, tmp_path):
    import numpy as np

    frame = np.full((48, 64, 3), 128, np.uint8)
    for name in ("ours.mp4", "ours.avi"):
        with video.video_writer(tmp_path / name, (64, 48), 10) as write:
            for _ in range(3):
                write(frame)
        cap = cv2.VideoCapture(str(tmp_path / name))
        assert [cap.read()[0] for _ in range(4)] == [True, True, True, False]  # the mark is skipped by readers
        assert files.is_our_report(tmp_path / name)
    theirs = tmp_path / "theirs.mp4"
    out = cv2.VideoWriter(str(theirs), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for _ in range(3):
        out.write(frame)
    out.release()
    before = theirs.read_bytes()
    model = ["--weights", tiny_run["weights"], "--no-show"]
    refused(run_main("video_predict.py", tmp_path / "ours.mp4", *model, "--save", theirs), theirs, before)
    (tmp_path / "mine.csv").write_text("frame,label\n")
    refused(run_main("video_predict.py", tmp_path / "ours.mp4", *model, "--csv", tmp_path / "mine.csv"),
            tmp_path / "mine.csv", b"frame,label\n")
