"""Reports that replace only their own kind, what the weights were trained on, and macro averages over
the model's classes."""
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import classnames, files, reports, sources, video
from conftest import TINY_TRAIN, make_class_folders, run_main

cv2 = sources.cv2


def refused(result, path, before):
    """One `error:` line naming the file, which is left as it was."""
    assert result.returncode != 0 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result
    assert "is not a" in result.stderr and str(path) in result.stderr
    assert path.read_bytes() == before


# ---------------------------------------------------------------- reports replace only their own kind

def test_a_report_path_on_a_file_that_is_not_that_report_is_refused_in_every_script(tiny_run, tmp_path):
    data, photo = tiny_run["data"], next(tiny_run["data"].rglob("*.jpg"))
    model = ["--weights", tiny_run["weights"]]
    evaluate = ["evaluate.py", data / "val", *model, "--data-path", data, "--output-dir", tmp_path / "figs"]
    victims = {"class_indices.json": tiny_run["classes"].read_bytes(),
               ".split.json": (data / ".split.json").read_bytes(),
               "labels.csv": b"path,label\nmine.jpg,daisy\n", "photo.jpg": photo.read_bytes(),
               "curves.png": photo.read_bytes()}
    v = {name: tmp_path / ("record" if name == ".split.json" else "") / name for name in victims}
    for name, content in victims.items():  # a split record in a folder of its own, the others' reports above it
        v[name].parent.mkdir(exist_ok=True)
        v[name].write_bytes(content)
    for flag, name in (("--json", "class_indices.json"), ("--json", ".split.json"), ("--csv", "labels.csv")):
        refused(run_main(*evaluate, flag, v[name]), v[name], victims[name])
    refused(run_main("batch_predict.py", data / "val" / "daisy", *model, "--csv", v["labels.csv"]),
            v["labels.csv"], victims["labels.csv"])
    refused(run_main("predict.py", photo, *model, "--save-fig", v["photo.jpg"]), v["photo.jpg"], victims["photo.jpg"])
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
    assert run_main(*evaluate, "--json", tmp_path / "e.json", "--csv", tmp_path / "e.csv").returncode == 0
    assert run_main("predict.py", photo, *model, "--save-fig", tmp_path / "p.jpg").returncode == 0
    for name in ("e.json", "e.csv", "p.jpg", "figs/val_confusion_matrix.png", "figs/val_errors.png"):
        head = reports.PREDICTIONS_FIELDS if name.endswith(".csv") else None
        assert files.check_report(tmp_path / name, name, head=head) == tmp_path / name  # what the next run checks


def test_a_report_replaces_only_its_own_kind_and_never_goes_among_the_images(tiny_run, tmp_path):
    data, run = tiny_run["data"], tiny_run["weights"].parent
    photo, model = next(data.rglob("*.jpg")), ["--weights", tiny_run["weights"]]
    history = tmp_path / "history.csv"
    shutil.copy(run / "history.csv", history)
    theirs = tmp_path / "theirs.csv"
    theirs.write_bytes(b"path,class,prob,note\nmine.jpg,daisy,1,ok\n")
    for path in (history, theirs):  # a CSV of another kind: training's record, a file of the user's
        before = path.read_bytes()
        refused(run_main("evaluate.py", data / "val", *model, "--data-path", data, "--output-dir", tmp_path / "f",
                         "--csv", path), path, before)
        refused(run_main("batch_predict.py", data / "val" / "daisy", *model, "--csv", path), path, before)
    # Among the images of a split (below .split.json), or of the folder read: one line naming the flag.
    for argv, flag in ((["predict.py", photo, *model, "--save-fig", data / "train" / "daisy" / "fig.png"], "--save-fig"),
                       (["predict.py", photo, *model, "--save-fig", data / "flower_photos" / "daisy" / "f.png"], "--save-fig"),
                       (["batch_predict.py", tmp_path / "f", *model, "--csv", tmp_path / "f" / "p.csv"], "--csv"),
                       (["evaluate.py", data / "val", *model, "--data-path", data, "--output-dir", tmp_path / "f",
                         "--json", data / "val" / "e.json"], "--json")):
        (tmp_path / "f").mkdir(exist_ok=True)
        shutil.copy(photo, tmp_path / "f" / "a.jpg")
        result = run_main(*argv)
        assert result.returncode != 0 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert flag in result.stderr and "give a path outside" in result.stderr, result.stderr
    for path in (data / "train" / "daisy" / "fig.png", data / "flower_photos" / "daisy" / "f.png",
                 data / "val" / "e.json", tmp_path / "f" / "p.csv"):
        assert not path.exists()


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
    shutil.copy(tiny_run["weights"].parent / "history.csv", tmp_path / "history.csv")  # training's record
    before = (tmp_path / "history.csv").read_bytes()
    refused(run_main("video_predict.py", tmp_path / "ours.mp4", *model, "--csv", tmp_path / "history.csv"),
            tmp_path / "history.csv", before)


# ---------------------------------------------------------------- what the model trained on

def copy_tree(src, dest):
    shutil.copytree(src, dest, copy_function=shutil.copy)  # copies, not links: other bytes on disk, same content
    return dest


def test_a_re_split_after_training_is_caught_by_what_the_weights_and_onnx_file_trained_on(tiny_run, tmp_path):
    # The newcomer's path: the model trained on the plain split, then split_data.py --test-rate 0.1 --overwrite.
    root = tmp_path / "flower_data"
    copy_tree(tiny_run["data"] / "flower_photos", root / "flower_photos")
    assert run_main("split_data.py", "--data-path", root).returncode == 0
    assert run_main("split_data.py", "--data-path", root, "--test-rate", "0.1", "--overwrite").returncode == 0
    test = sorted((root / "test").rglob("*.jpg"))
    assert test and not any(files.shared_images(sorted((root / "train").rglob("*.jpg")), test))  # today's check: clean
    res = run_main("evaluate.py", "--weights", tiny_run["weights"], "--data-path", root)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res
    assert f"all {len(test)} images of {root / 'test'} are images that {tiny_run['weights']} trained on" in res.stderr
    # An ONNX file carries the same record under one metadata key (export_onnx.py's is checked in test_deploy.py).
    from helpers import weights
    held = weights.read_weights(tiny_run["weights"], "weights")[1]
    onnx = tiny_onnx(tmp_path / "m.onnx", held)
    res = run_main("evaluate.py", "--onnx", onnx, "--data-path", root)
    assert res.returncode == 1 and f"are images that {onnx} trained on" in res.stderr, res


def tiny_onnx(path, held):
    """A 3-class "model" (the mean of each colour channel), carrying held's record as export_onnx.py writes it."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from helpers import deploy
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
                               helper.make_node("Flatten", ["pooled"], ["logits"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime 1.16 reads
    info = deploy.ModelInfo(classes=held.classes, img_size=held.img_size, trained_on=held.trained_on)
    helper.set_model_props(model, info.to_metadata())
    onnx.save(model, str(path))
    return path


def test_evaluate_leaves_out_the_model_s_own_images_elsewhere_and_never_blames_another_train_set(tiny_run, tmp_path):
    import evaluate
    from conftest import parse

    data = tiny_run["data"]
    # A folder elsewhere: the val images (never trained on) and copies of two training images.
    folder = copy_tree(data / "val", tmp_path / "elsewhere")
    trained = sorted((data / "train" / "roses").glob("*.jpg"))[:2]
    for i, path in enumerate(trained):
        shutil.copy(path, folder / "roses" / f"renamed_{i}.jpg")
    val = len(list((data / "val").rglob("*.jpg")))
    # --data-path names another data set, whose train/ shares a photo with the folder but not with the model.
    other = tmp_path / "other"
    (other / "train" / "daisy").mkdir(parents=True)
    shutil.copy(next((data / "val" / "daisy").glob("*.jpg")), other / "train" / "daisy" / "same.jpg")
    result = evaluate.main(parse(evaluate, [folder, "--weights", tiny_run["weights"], "--data-path", other,
                                            "--output-dir", tmp_path / "reports"]))
    assert result["images"] == val
    assert sorted(result["left_out_as_trained_on"]) == [str(folder / "roses" / f"renamed_{i}.jpg") for i in range(2)]
    # Weights that do not say what they trained on keep today's check against --data-path's train/.
    import torch
    plain = tmp_path / "plain.pth"
    torch.save(dict(torch.load(tiny_run["weights"])), plain)
    res = run_main("evaluate.py", folder, "--weights", plain, "--class-indices", tiny_run["classes"], "--data-path",
                   other, "--output-dir", tmp_path / "reports")
    assert res.returncode == 1 and "shares 1 image(s) with" in res.stderr, res


# ---------------------------------------------------------------- macro averages over the model's classes

@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # scikit-learn's, about tulips
def test_macro_averages_are_over_the_model_s_classes_as_scikit_learn_s_labels():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from helpers import reports

    classes = ["daisy", "roses", "tulips", "lilies"]  # tulips: no images, but predicted; lilies: neither
    true = [0] * 5 + [1] * 4
    pred = [0, 0, 0, 1, 2, 1, 1, 0, 2]
    result = reports.Evaluation(index=None, true=np.array(true), pred=np.array(pred), prob=None, losses=None,
                                in_top5=None, num_classes=len(classes))
    m = result.metrics(classes)
    ref = sklearn_metrics.classification_report(true, pred, labels=range(len(classes)), target_names=classes,
                                                output_dict=True, zero_division=0)
    for avg in ("macro", "weighted"):
        for k in ("precision", "recall", "f1"):
            assert m[avg][k] == pytest.approx(ref[f"{avg} avg"][k if k != "f1" else "f1-score"]), (avg, k)
    assert m["balanced_accuracy"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(true, pred))
    assert m["per_class"]["tulips"]["recall"] is None and m["per_class"]["tulips"]["support"] == 0
    table = reports.metrics_table(m)
    assert "macro avg" in table and "over the model's 4 classes" in table and "tulips, lilies" in table


def test_class_names_with_control_or_direction_characters_are_refused_from_every_source(tiny_run, tmp_path):
    import json

    import torch

    from helpers import cli, weights
    bad = ["daisy\x1b[2J", "ro\u202eses", "tulips"]  # clears the screen; turns the line around
    photo = next(tiny_run["data"].rglob("*.jpg"))
    (tmp_path / "c.json").write_text(json.dumps({str(i): c for i, c in enumerate(bad)}))
    (tmp_path / "labels.txt").write_text("\n".join(bad[1:]))
    for read, path in ((classnames.read_class_indices, "c.json"), (classnames.read_labels, "labels.txt")):
        with pytest.raises(cli.UserError, match="control or text-direction"):
            read(tmp_path / path)
    state = torch.load(tiny_run["weights"], map_location="cpu")
    state._metadata[weights.INFO_KEY]["classes"] = bad
    torch.save(state, tmp_path / "w.pth")
    result = run_main("predict.py", photo, "--weights", tmp_path / "w.pth", "--save-fig", tmp_path / "p.png")
    assert result.returncode != 0 and "control or text-direction" in result.stderr, result
    assert "\x1b" not in result.stdout + result.stderr and "\u202e" not in result.stdout + result.stderr
    from helpers import deploy
    meta = deploy.ModelInfo(classes=bad, img_size=32, trained_on=None).to_metadata()
    with pytest.raises(cli.UserError, match="control or text-direction"):  # what an ONNX file's metadata holds
        deploy.ModelInfo.from_metadata(meta, "m.onnx")
    assert classnames.check_class_names(["\u06af\u0644\u200c\u0633\u0631\u062e"], "x")  # Persian needs the joiner
