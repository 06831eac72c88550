"""Honest numbers: the three-way split, evaluate.py and its agreement with scikit-learn, train.py's
report as the same code, classes of different sizes, and --min-prob."""
import csv
import json
import shutil

import numpy as np
import pytest

import batch_predict
import evaluate
import predict
import split_data
import train
from helpers import cli, data as data_lib, files, training
from conftest import TINY_TRAIN, make_class_folders, parse, run_main

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# ---------------------------------------------------------------- split_data.py --test-rate

def test_test_rate_writes_three_sides_keeps_duplicates_on_one_and_leaves_the_default_split(tmp_path, capsys):
    src = make_class_folders(tmp_path / "flower_photos", per_class=20)
    for i in range(4):  # copies of one photo across the classes and within one
        shutil.copy(src / "daisy" / f"daisy_{i}.jpg", src / "roses" / f"copy_{i}.jpg")
        shutil.copy(src / "daisy" / f"daisy_{i}.jpg", src / "daisy" / f"again_{i}.jpg")
    plain = split_data.select_val(src, 0.1, 0)
    three = split_data.select_val(src, 0.1, 0, test_rate=0.2)
    for cla in plain:  # val is the tutorial's whatever the test rate; test comes out of train
        assert three[cla][1] == plain[cla][1] and plain[cla][2] == []
        assert sorted(three[cla][0] + three[cla][2]) == sorted(plain[cla][0]) and len(three[cla][2]) == 4
    split_data.main(parse(split_data, ["--data-path", tmp_path, "--test-rate", "0.2"]))
    out = capsys.readouterr().out
    assert out.splitlines()[-1].endswith(f"in {tmp_path / 'test'}, 3 classes")
    assert out.splitlines()[-4].split()[0] == "total" and len(out.splitlines()[-4].split()) == 4  # a test column
    digests = {}
    for side in ("train", "val", "test"):
        for f in (tmp_path / side).rglob("*.jpg"):
            digests.setdefault(files.file_sha256(f), set()).add(side)
    assert all(len(sides) == 1 for sides in digests.values())  # no photo on two sides
    # the default leaves no test/ and replaces an earlier one (its files were the split's)
    split_data.main(parse(split_data, ["--data-path", tmp_path, "--overwrite"]))
    assert not (tmp_path / "test").exists()
    with pytest.raises(cli.UserError, match="leave nothing for train"):
        split_data.main(parse(split_data, ["--data-path", tmp_path, "--val-rate", "0.5", "--test-rate", "0.5"]))


def test_train_never_reads_test(tmp_path, capsys):
    root = tmp_path / "data"
    make_class_folders(root / "flower_photos", per_class=10)
    split_data.main(parse(split_data, ["--data-path", root, "--test-rate", "0.3"]))
    (root / "test" / "daisy" / "not_an_image.jpg").write_bytes(b"broken")  # train would name it if it read test/
    res = train.main(parse(train, TINY_TRAIN + ["--data-path", root, "--save-path", tmp_path / "w.pth",
                                                "--class-indices", tmp_path / "ci.json"]))
    counts = {side: len(list((root / side).rglob("*.jpg"))) for side in ("train", "val")}
    assert f"using {counts['train']} images for training, {counts['val']} images for validation." in capsys.readouterr().out
    assert res["confusion"].sum() == counts["val"]
    with open(tmp_path / "val_predictions.csv") as f:
        assert all("/val/" in row["path"] for row in csv.DictReader(f))


# ---------------------------------------------------------------- evaluate.py

def evaluated(tiny_run, tmp_path, *extra):
    return evaluate.main(parse(evaluate, ["--data-path", tiny_run["data"], "--model", "resnet18", "--img-size", "32",
                                          "--weights", tiny_run["weights"], "--class-indices", tiny_run["classes"],
                                          "--workers", "0", "--output-dir", tmp_path, *extra]))


def test_evaluate_json_and_csv_agree_with_scikit_learn(tiny_run, tmp_path, capsys):
    folder = make_class_folders(tmp_path / "test", per_class=7, size=48)
    (folder / "roses" / "broken.jpg").write_bytes(b"not a jpeg")
    evaluated(tiny_run, tmp_path / "out", folder, "--json", tmp_path / "r.json", "--csv", tmp_path / "r.csv")
    out, err = capsys.readouterr()
    assert "skipped: cannot read image" in err and "precision" in out and "balanced acc." in out
    report = json.loads((tmp_path / "r.json").read_text())
    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report["images"] == 21 and report["skipped"] == 1
    assert report["folder"] == str(folder) and report["model"] == str(tiny_run["weights"])
    true, pred = [r["true"] for r in rows], [r["predicted"] for r in rows]
    assert all(int(r["correct"]) == (r["true"] == r["predicted"]) for r in rows)
    classes = ["daisy", "roses", "tulips"]
    ref = sklearn_metrics.classification_report(true, pred, labels=classes, output_dict=True, zero_division=0)
    for c in classes:
        for k in ("precision", "recall", "f1"):
            assert report["per_class"][c][k] == pytest.approx(ref[c][k if k != "f1" else "f1-score"]), (c, k)
        assert report["per_class"][c]["support"] == ref[c]["support"] == 7
    for avg in ("macro", "weighted"):
        for k in ("precision", "recall", "f1"):
            assert report[avg][k] == pytest.approx(ref[f"{avg} avg"][k if k != "f1" else "f1-score"])
    assert report["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(true, pred))
    assert report["balanced_accuracy"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(true, pred))
    spec = sklearn_metrics.multilabel_confusion_matrix(true, pred, labels=classes)
    for c, ((tn, fp), _) in zip(classes, spec):
        assert report["per_class"][c]["specificity"] == pytest.approx(tn / (tn + fp))
    assert report["top5_accuracy"] is None  # three classes
    assert (tmp_path / "out" / "test_confusion_matrix.png").is_file() and (tmp_path / "out" / "test_errors.png").is_file()


def test_a_model_class_without_images_has_its_recall_missing_and_an_unknown_folder_class_is_refused(tiny_run, tmp_path,
                                                                                                    capsys):
    folder = make_class_folders(tmp_path / "test", per_class=4, classes=("daisy", "tulips"))
    res = evaluated(tiny_run, tmp_path, folder, "--json", tmp_path / "r.json")
    assert "no images of roses" in capsys.readouterr().err
    roses = json.loads((tmp_path / "r.json").read_text())["per_class"]["roses"]
    assert roses["recall"] is None and roses["f1"] is None and roses["support"] == 0
    assert res["balanced_accuracy"] == pytest.approx(np.mean([res["per_class"][c]["recall"] for c in ("daisy", "tulips")]))
    make_class_folders(folder, per_class=1, classes=("lilies",))
    with pytest.raises(cli.UserError, match="lilies that the model does not know"):
        evaluated(tiny_run, tmp_path, folder)


def test_the_default_folder_is_test_then_val_and_train_reports_the_same_numbers(tiny_run, tmp_path, capsys):
    assert evaluate.default_folder(tiny_run["data"]) == tiny_run["data"] / "val"  # tiny_run has no test/
    res = evaluated(tiny_run, tmp_path)
    table = capsys.readouterr().out
    ev = train.main(parse(train, ["--data-path", tiny_run["data"], "--model", "resnet18", "--img-size", "32",
                                  "--workers", "0", "--eval-only", "--weights", tiny_run["weights"],
                                  "--output-dir", tmp_path / "ev", "--class-indices", tiny_run["classes"]]))
    train_table = capsys.readouterr().out
    assert ev["val_acc"] == pytest.approx(res["accuracy"])
    # one report: the same per-class table, line for line
    start = table.index("class ")
    assert table[start:table.index("wrote ", start)] in train_table


def test_evaluate_refuses_bad_outputs_before_predicting(tiny_run, tmp_path):
    res = run_main("evaluate.py", "--data-path", tiny_run["data"], "--weights", tiny_run["weights"],
                     "--class-indices", tiny_run["classes"], "--model", "resnet18", "--json", tmp_path / "r.txt")
    assert res.returncode == 1 and res.stderr.strip() == f"error: the --json {tmp_path / 'r.txt'} must end in .json"
    res = run_main("evaluate.py", tmp_path / "nowhere", "--class-indices", tiny_run["classes"])
    assert res.returncode == 1 and "folder to evaluate not found" in res.stderr and res.stderr.count("\n") == 1


# ---------------------------------------------------------------- classes of different sizes

def imbalanced(root):
    make_class_folders(root / "train", per_class=12, classes=("daisy", "roses"))
    make_class_folders(root / "train", per_class=3, classes=("tulips",))
    make_class_folders(root / "val", per_class=2)
    return root


def test_class_weights_auto_are_scikit_learns_balanced_and_a_file_is_checked(tmp_path):
    from sklearn.utils.class_weight import compute_class_weight
    ds = data_lib.ClassFolder(imbalanced(tmp_path) / "train", None)
    auto = data_lib.class_weights("auto", ds)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=np.asarray(ds.targets))
    assert auto.tolist() == pytest.approx(ref.tolist())
    good = tmp_path / "w.json"
    good.write_text(json.dumps({"daisy": 1, "roses": 1, "tulips": 4.5}))
    assert data_lib.class_weights(good, ds).tolist() == [1.0, 1.0, 4.5]
    for bad, words in (({"daisy": 1, "roses": 1}, "missing: tulips"), ({"daisy": 1, "roses": 1, "tulips": 1, "x": 2},
                       "not classes of it: x"), ({"daisy": 1, "roses": -1, "tulips": 1}, "roses must be a positive")):
        good.write_text(json.dumps(bad))
        with pytest.raises(cli.UserError, match=words):
            data_lib.class_weights(good, ds)


def test_balanced_sampler_draws_classes_equally_is_seeded_and_sharded(tmp_path):
    ds = data_lib.ClassFolder(imbalanced(tmp_path) / "train", None)
    one = data_lib.ResumableSampler(ds, training.World(), shuffle=True, seed=3, balanced=True)
    one.set_epoch(0)
    drawn = [i for i, _ in one]
    assert len(drawn) == len(ds) == 27
    counts = np.bincount([ds.targets[i] for i in drawn], minlength=3)
    assert counts.min() >= 4  # tulips (3 images of 27) drawn like the others, about 9 times
    one.set_epoch(0)
    assert [i for i, _ in one] == drawn  # seeded by seed and epoch
    one.set_epoch(1)
    assert [i for i, _ in one] != drawn
    shards = []
    for rank in range(2):
        s = data_lib.ResumableSampler(ds, training.World(rank, 2), shuffle=True, seed=3, balanced=True)
        s.set_epoch(0)
        shards.append(list(s))
    assert len(shards[0]) == len(shards[1]) == 14  # 27 padded to 28, split in two
    seeds = [seed for shard in shards for _, seed in shard]
    assert len(set(seeds)) == 28  # every place of the draw once, in one shard or the other


def test_imbalance_flags_resume_exactly_and_select_by_picks_its_metric(tmp_path, capsys):
    from test_recipes import check_resumes_exactly
    data = imbalanced(tmp_path / "data")
    (tmp_path / "costs.json").write_text('{"daisy": 1, "roses": 1, "tulips": 2}')  # auto is refused with the sampler
    extra = ["--class-weights", tmp_path / "costs.json", "--balanced-sampler", "--select-by", "balanced_acc"]
    full, _, ckpt = check_resumes_exactly(data, tmp_path, extra, 5)
    out = capsys.readouterr().out
    assert "images per class in train/: daisy 12, roses 12, tulips 3 (largest/smallest: 4.0)" in out
    assert "costs.json, --balanced-sampler, --select-by balanced_acc: on)\n" in out  # the ratio is above 3
    assert ckpt["settings"]["select_by"] == "balanced_acc" and ckpt["settings"]["balanced_sampler"] is True
    assert full["best_acc"] == pytest.approx(max(h["val_balanced_acc"] for h in full["history"]), abs=1e-5)
    with open(tmp_path / "a" / "history.csv") as f:
        row = next(csv.DictReader(f))
    assert {"val_balanced_acc", "val_macro_f1"} <= set(row)


# ---------------------------------------------------------------- --min-prob

def test_min_prob_reports_unknown_and_keeps_the_real_class_beside_it(tiny_run, tmp_path, capsys):
    model = ["--model", "resnet18", "--img-size", "32", "--weights", tiny_run["weights"],
             "--class-indices", tiny_run["classes"], "--workers", "0"]
    folder = tiny_run["data"] / "val" / "daisy"
    rows, _ = batch_predict.main(parse(batch_predict, [folder, *model, "--min-prob", "1", "--csv", tmp_path / "u.csv"]))
    out = capsys.readouterr().out
    assert out.count("class: unknown") == len(rows) > 0 and "(top: " in out
    with open(tmp_path / "u.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["prediction"] for r in got] == ["unknown"] * len(rows)
    assert [r["class"] for r in got] == [pairs[0][0] for _, pairs in rows]  # the real top class, beside it
    batch_predict.main(parse(batch_predict, [folder, *model, "--min-prob", "0", "--csv", tmp_path / "k.csv"]))
    with open(tmp_path / "k.csv") as f:
        assert all(r["prediction"] == r["class"] for r in csv.DictReader(f))
    image = next(folder.iterdir())
    predict.main(parse(predict, [image, *model, "--min-prob", "1", "--save-fig", tmp_path / "p.png"]))
    out = capsys.readouterr().out
    assert "prediction: unknown (the top class, " in out
    predict.main(parse(predict, [image, *model, "--save-fig", tmp_path / "q.png"]))
    assert "prediction: unknown" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse(batch_predict, ["--min-prob", "1.5"])
