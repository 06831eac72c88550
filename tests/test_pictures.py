"""The pictures that say what the model learned and where it fails: Grad-CAM (predict.py --cam), the
gallery of misclassified val images (train.py), and the split's duplicate check and balance chart
(split_data.py)."""
import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from helpers import gradcam, imaging, inference, plots
import model
import predict
import split_data
import train
from conftest import ROOT, TINY_TRAIN, make_class_folders, parse

# ---------------------------------------------------------------- Grad-CAM

CAM_SIZE = 64  # resnet18's layer4 is 2x2 at 64 px: one cell per quadrant
# A class for each colour, and one for none: without it "blue" could be learnt as "no red anywhere",
# evidence that lies nowhere in particular.
CLASSES = ("red", "blue", "none")
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def quadrant_image(rng, colour, quadrant):
    """Grey noise, one quadrant filled with the colour that decides the class (none: no quadrant).
    Drawn at the size EvalTransform resizes to (73 px for a 64 px crop), halved where the crop is;
    returns the image and the mask of its coloured quadrant."""
    side = imaging.EvalTransform(CAM_SIZE).resize
    grey = rng.integers(60, 190) + rng.integers(-20, 21, (side, side, 1))
    noise = grey.clip(0, 255).astype(np.uint8).repeat(3, axis=2)
    mask = np.zeros((side, side), np.uint8)
    half = side // 2
    ys = slice(0, half) if quadrant in (0, 1) else slice(half, side)
    xs = slice(0, half) if quadrant in (0, 2) else slice(half, side)
    if colour in COLOURS:
        noise[ys, xs] = COLOURS[colour]
        mask[ys, xs] = 255
    return Image.fromarray(noise), Image.fromarray(mask).convert("RGB")


def crop(img):
    return np.asarray(imaging.EvalTransform(CAM_SIZE).resize_crop(img))


def train_quadrant_model(rng, n=72, epochs=4):
    """resnet18 trained on the crops to tell a red quadrant from a blue one from none (a few CPU
    seconds)."""
    torch.manual_seed(0)
    labels = np.arange(n) % len(CLASSES)
    crops = [crop(quadrant_image(rng, CLASSES[c], rng.integers(0, 4))[0]) for c in labels]
    x, y = torch.from_numpy(imaging.normalize(np.stack(crops))), torch.from_numpy(labels)
    net = model.resnet18(num_classes=len(CLASSES))
    # fc starts at zero: no class has evidence anywhere to begin with, so what each learns in a few
    # steps is what tells it from the others (a random fc adds evidence all over the image).
    nn.init.zeros_(net.fc.weight)
    nn.init.zeros_(net.fc.bias)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(8):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    # After a few steps BatchNorm's running statistics are still mostly their starting values:
    # measure them once on the training crops, so that eval mode sees what training saw.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over what follows
    with torch.no_grad():
        net(x)
    return net.eval()


def test_cam_peak_falls_in_the_quadrant_that_decides_the_class(tmp_path):
    rng = np.random.default_rng(0)
    net = train_quadrant_model(rng)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    (tmp_path / "ci.json").write_text(json.dumps(dict(enumerate(CLASSES))))
    paths, truth, regions = [], [], []
    for i in range(24):  # each colour in each quadrant, 3 times
        colour, quadrant = ("red", "blue")[i % 2], (i // 2) % 4
        img, mask = quadrant_image(rng, colour, quadrant)
        img.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
        truth.append(colour)
        regions.append(crop(mask)[..., 0] > 127)  # the quadrant, where the model's crop has it
    (tmp_path / "broken.png").write_bytes(b"not a png")  # skipped: the maps stay with their images
    paths.insert(5, tmp_path / "broken.png")
    common = ["--model", "resnet18", "--img-size", CAM_SIZE, "--weights", tmp_path / "w.pth", "--class-indices",
              tmp_path / "ci.json", "--workers", "0", "--device", "cpu", "--batch-size", "5"]
    results = predict.main(parse(predict, paths + common + ["--cam", "--save-fig", tmp_path / "cam.png"]))
    plain = predict.main(parse(predict, paths + common + ["--save-fig", tmp_path / "plain.png"]))
    assert [r[0] for r in results] == [r[0] for r in plain] == [str(p) for p in paths if p.name != "broken.png"]
    for r, p in zip(results, plain):  # --cam adds the map and changes no prediction
        assert r[1] == p[1] and np.array_equal(r[2], p[2]) and p[3] is None
    assert [r[1] for r in results].count("red") >= 6  # not one class for everything
    assert np.mean([r[1] == t for r, t in zip(results, truth)]) >= 0.9
    hits = []
    for (_, _, _, heat), region in zip(results, regions):
        assert heat.shape == (CAM_SIZE, CAM_SIZE) and heat.min() >= 0 and heat.max() == pytest.approx(1)
        hits.append(region[np.unravel_index(heat.argmax(), heat.shape)])
    # A quadrant at random would be right 1 time in 4; models trained from 10 seeds scored 0.82-1.0
    # on 40 images each.
    assert np.mean(hits) >= 0.75, hits
    fig = Image.open(tmp_path / "cam.png")
    assert fig.size[0] >= 4 * 300 and fig.size[1] >= 6 * 300  # 24 panels, 4 a row


@pytest.mark.parametrize("name", list(model.MODELS))
def test_cam_runs_on_every_architecture_folded_channels_last_and_under_autocast(name):
    torch.manual_seed(0)
    net = model.MODELS[name](num_classes=3).eval().requires_grad_(False)
    x = torch.randn(3, 3, 64, 64)
    plain = gradcam.grad_cam(net, x, [0, 1, 2])
    assert plain.shape == (3, 64, 64) and plain.dtype == np.float32 and plain.min() >= 0 and plain.max() <= 1
    # Random weights may hold no evidence at all for a class (an all-0 map), but not for all three.
    assert any(m.max() == pytest.approx(1) and m.min() < 1 for m in plain)
    fast = inference.fold_batchnorm(net).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # predict.py's CPU autocast: the map stays fp32
        folded = gradcam.grad_cam(fast, x.contiguous(memory_format=torch.channels_last), [0, 1, 2])
    assert np.abs(folded - plain).max() < 1e-3
    assert np.array_equal(gradcam.grad_cam(net, x), gradcam.grad_cam(net, x, net(x).argmax(1)))  # the top class


def test_cam_hooks_are_removed_and_weights_get_no_gradient():
    net = model.resnet18(num_classes=2).eval()
    gradcam.grad_cam(net, torch.randn(1, 3, 64, 64))
    assert not net.layer4._forward_hooks
    assert all(p.grad is None for p in net.parameters())


def test_cam_with_onnx_is_one_line_error_and_predict_imports_no_torch(tmp_path):
    code = ("import sys, predict\n"
            "from helpers.cli import UserError\n"
            f"args = predict.get_args_parser().parse_args(['x.jpg', '--cam', '--onnx', {str(tmp_path / 'm.onnx')!r}])\n"
            "try:\n    predict.main(args)\nexcept UserError as e:\n    print(e)\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    assert out[0].startswith("--cam needs PyTorch") and "--onnx" in out[0] and out[1] == "False"
    res = subprocess.run([sys.executable, str(ROOT / "predict.py"), "x.jpg", "--cam", "--onnx", "m.onnx"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode != 0 and res.stderr.strip().splitlines() == [f"error: {out[0]}"]


def test_show_or_save_draws_each_heatmap_over_its_image(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=100: drawn.append(fig) or path)
    images = [np.zeros((30, 40, 3), np.uint8), Image.new("RGB", (50, 20))]
    heat = np.linspace(0, 1, 16).reshape(4, 4)
    plots.show_or_save(images, ["a", "b"], tmp_path / "f.png", heatmaps=[heat, None])
    plots.show_or_save(images, ["a", "b"], tmp_path / "g.png")  # the callers before --cam
    with_heat, without = [[ax.get_images() for ax in fig.axes[:2]] for fig in drawn]
    assert [len(i) for i in with_heat] == [2, 1] and [len(i) for i in without] == [1, 1]
    overlay = with_heat[0][1]
    assert np.array_equal(overlay.get_array(), heat) and 0 < overlay.get_alpha() < 1
    assert overlay.get_extent() == [-0.5, 39.5, 29.5, -0.5]  # stretched over the 40x30 image


# ---------------------------------------------------------------- the error gallery

@pytest.fixture(scope="module")
def gallery_run(tmp_path_factory):
    """train.py --eval-only of random weights on 12 val images: several are misclassified."""
    base = tmp_path_factory.mktemp("gallery")
    make_class_folders(base / "flower_photos", per_class=10)
    split_data.main(parse(split_data, ["--data-path", base, "--val-rate", "0.4"]))
    torch.manual_seed(1)
    torch.save(model.resnet18(num_classes=3).state_dict(), base / "random.pth")
    return base


def direct_predictions(data, weights):
    """What the weights predict for each val image, computed here without train.py."""
    net = model.resnet18(num_classes=3)
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    classes = sorted(p.name for p in (data / "val").iterdir())
    paths = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    with torch.no_grad():
        x = torch.from_numpy(np.stack([imaging.EvalTransform(32)(Image.open(p).convert("RGB")) for p in paths]))
        probs = torch.softmax(net(x), 1)
    return {p: (classes[i], prob) for p, i, prob in zip(paths, probs.argmax(1).tolist(), probs.max(1).values.tolist())}


def test_gallery_lists_exactly_the_misclassified_val_images(gallery_run, tmp_path, capsys, monkeypatch):
    figures = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=100: figures.append(fig) or save(fig, path, dpi))
    out_dir = tmp_path / "reports"
    train.main(parse(train, TINY_TRAIN + ["--data-path", gallery_run, "--eval-only", "--weights",
                                          gallery_run / "random.pth", "--output-dir", out_dir, "--no-amp"]))
    printed = capsys.readouterr().out
    with open(out_dir / "val_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    direct = direct_predictions(gallery_run, gallery_run / "random.pth")
    assert sorted(r["path"] for r in rows) == sorted(direct)  # every val image, once
    for r in rows:
        assert r["true"] == Path(r["path"]).parent.name
        predicted, prob = direct[r["path"]]
        assert r["predicted"] == predicted and float(r["prob"]) == pytest.approx(prob, abs=1e-4)
        assert r["correct"] == str(int(r["true"] == r["predicted"]))
    wrong = [r for r in rows if r["correct"] == "0"]
    assert 0 < len(wrong) < len(rows)
    assert f"({len(wrong)} misclassified)" in printed
    # the gallery: one panel per mistake, the most confident first, with true and predicted class
    gallery = figures[-1]
    titles = [t.get_text() for ax in gallery.axes for t in ax.texts]  # each panel's words
    ranked = sorted(wrong, key=lambda r: -float(r["prob"]))
    assert titles == [f"true: {r['true']}\npred: {r['predicted']} ({float(r['prob']):.2f})" for r in ranked]
    assert Image.open(out_dir / "val_errors.png").size[0] > 100
    assert (out_dir / "confusion_matrix.png").exists()


def test_gallery_shows_at_most_32_and_says_so(tmp_path, monkeypatch):
    img = tmp_path / "x.png"
    Image.new("RGB", (20, 20), (0, 128, 0)).save(img)
    errors = [(1 - i / 100, str(img), "a", "b") for i in range(40)]
    assert Image.open(plots.plot_errors(errors, tmp_path / "e.png")).size[0] > 100
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=100: drawn.append(fig) or path)
    plots.plot_errors(errors, tmp_path / "e.png")
    plots.plot_errors([], tmp_path / "none.png")
    assert len([t for ax in drawn[0].axes for t in ax.texts]) == 32
    assert "32 most confident of 40" in drawn[0]._suptitle.get_text()
    assert drawn[1]._suptitle.get_text() == "no misclassified validation images"


# ---------------------------------------------------------------- the leak-free split

def digests(folder):
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).rglob("*") if p.is_file()}


def make_duplicates(src):
    """Three classes of 10 distinct images, then byte-identical copies under other names: three
    within daisy, one across daisy and roses (a labelling error)."""
    make_class_folders(src, per_class=10)
    for i in range(3):
        for copy in range(2):
            (src / "daisy" / f"again_{i}_{copy}.jpg").write_bytes((src / "daisy" / f"daisy_{i}.jpg").read_bytes())
    (src / "roses" / "looks_like_a_rose.jpg").write_bytes((src / "daisy" / "daisy_5.jpg").read_bytes())


def test_duplicates_never_straddle_train_and_val(tmp_path, capsys):
    src = tmp_path / "flower_photos"
    make_duplicates(src)
    groups = split_data.find_duplicates(src, split_data.select_val(src, 0.3, 0))
    assert sorted(len(g) for g in groups) == [2, 3, 3, 3]
    straddled = 0
    for seed in range(6):
        # the plain selection would have leaked for some seeds: the test can fail
        plain = split_data.select_val(src, 0.3, seed)
        straddled += any(len({f in plain[c][1] for c, f in g}) > 1 for g in groups)
        root = tmp_path / f"seed{seed}"
        split_data.main(parse(split_data, ["--data-path", root, "--source", src, "--val-rate", "0.3",
                                           "--seed", seed]))
        assert not digests(root / "train") & digests(root / "val")
        assert len(list((root / "train").rglob("*.jpg"))) + len(list((root / "val").rglob("*.jpg"))) == 37
    assert straddled
    out = capsys.readouterr().out
    assert "found 11 byte-identical images in 4 groups" in out
    cross = [line for line in out.splitlines() if line.startswith("warning: the same image is in several classes")]
    assert len(cross) == 6 and all("daisy/daisy_5.jpg" in line and "roses/looks_like_a_rose.jpg" in line
                                   for line in cross)


def test_split_without_duplicates_is_select_val_with_table_and_chart(tmp_path, capsys):
    src = make_class_folders(tmp_path / "flower_photos", per_class=12, classes=("a", "bb", "c"))
    # Empty files are all alike, but no copies of a photo: they are left where the selection puts them
    # (test_split's 3306/364 check splits empty files).
    (src / "a" / "empty_1.jpg").touch()
    (src / "bb" / "empty_2.jpg").touch()
    expected = split_data.select_val(src, 0.25, 3)
    split_data.main(parse(split_data, ["--data-path", tmp_path, "--val-rate", "0.25", "--seed", "3"]))
    for cla, (train_files, val_files, _) in expected.items():
        assert sorted(p.name for p in (tmp_path / "train" / cla).iterdir()) == sorted(train_files)
        assert sorted(p.name for p in (tmp_path / "val" / cla).iterdir()) == sorted(val_files)
    out = capsys.readouterr().out
    assert "byte-identical" not in out
    table = out[out.index("class "):].splitlines()
    assert table[1].split() == ["a", str(len(expected["a"][0])), str(len(expected["a"][1]))]
    assert table[4].split() == ["total", str(sum(len(t) for t, _, _ in expected.values())),
                                str(sum(len(v) for _, v, _ in expected.values()))]
    chart = Image.open(tmp_path / "split.png")
    assert chart.size[0] > 300 and f"wrote {tmp_path / 'split.png'}" in out



def test_chinese_class_names_get_a_cjk_font_or_one_note_and_no_glyph_warnings(tmp_path, monkeypatch, capsys):
    import types
    import warnings

    import matplotlib
    from matplotlib import font_manager
    names = ["雏菊", "玫瑰", "郁金香"]
    monkeypatch.setattr(plots, "_said", set())
    monkeypatch.setattr(font_manager.fontManager, "ttflist",
                        [f for f in font_manager.fontManager.ttflist if f.name not in plots.CJK_FONTS])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.plot_confusion(np.eye(3, dtype=int), names, tmp_path / "a.png")
        plots.plot_split({n: (["x"] * 3, ["y"], []) for n in names}, tmp_path / "b.png")
    assert not [w for w in caught if "Glyph" in str(w.message)]
    err = capsys.readouterr().err
    assert err.count("no CJK font here") == 1 and "fonts-noto-cjk" in err  # said once, not per figure
    # where the system has one, it is put first
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [types.SimpleNamespace(name="WenQuanYi Zen Hei")])
    monkeypatch.setitem(matplotlib.rcParams, "font.sans-serif", ["DejaVu Sans"])
    monkeypatch.setitem(matplotlib.rcParams, "font.family", list(matplotlib.rcParams["font.family"]))
    plots.use_fonts_for(names)
    assert matplotlib.rcParams["font.sans-serif"][:2] == ["WenQuanYi Zen Hei", "DejaVu Sans"]


def test_predict_on_many_images_caps_the_figure_and_predicts_them_all(tiny_run, tmp_path, capsys, monkeypatch):
    import predict
    images = sorted(make_class_folders(tmp_path / "many", per_class=12, size=36).rglob("*.jpg"))
    assert len(images) == 36 > predict.MAX_PANELS
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=100: drawn.append(len(fig.axes)) or path)
    results = predict.main(parse(predict, [*images, "--model", "resnet18", "--img-size", "32", "--weights",
                                           tiny_run["weights"], "--class-indices", tiny_run["classes"],
                                           "--save-fig", tmp_path / "p.png", "--workers", "0"]))
    assert len(results) == len(images) and drawn == [predict.MAX_PANELS]
    assert f"the figure shows the first 32 of {len(images)} images; batch_predict.py" in capsys.readouterr().out


def test_figures_name_their_set_and_note_and_the_loss_axis_is_not_owned_by_the_first_epoch(tmp_path, monkeypatch):
    """evaluate.py's test/ figures say "test"; a note (the demo's "SYNTHETIC") is on every figure; the
    loss is on a log scale, so a first epoch at 20 does not flatten the later ones near 0.5."""
    from matplotlib.text import Text
    figures = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=100: figures.setdefault(Path(path).name, fig))
    plots.plot_confusion(np.eye(3, dtype=int), ["a", "b", "c"], tmp_path / "c.png", what="test", note="NOTE")
    plots.plot_errors([(0.9, str(tmp_path / "gone.jpg"), "a", "b")], tmp_path / "e.png", what="test", note="NOTE")
    history = [{"epoch": e, "train_loss": 1.5 / e, "val_loss": 20.0 if e == 1 else 0.5, "train_acc": 0.5,
                "val_acc": 0.6} for e in (1, 2, 3)]
    plots.plot_curves(history, tmp_path / "curves.png", note="NOTE")
    words = {name: " ".join(t.get_text() for t in fig.findobj(Text)) for name, fig in figures.items()}
    assert "test: confusion matrix" in words["c.png"] and "misclassified test images" in words["e.png"]
    assert all("NOTE" in w for w in words.values()) and "train accuracy can sit below val" in words["curves.png"]
    assert figures["curves.png"].axes[0].get_yscale() == "log"
