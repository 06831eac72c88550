import os

import pytest

import split_data
from helpers import cli
from conftest import make_class_folders, parse

TUTORIAL_COUNTS = {"daisy": 633, "dandelion": 898, "roses": 641, "sunflowers": 699, "tulips": 799}


def test_flower_counts_give_the_tutorials_3306_364(tmp_path):
    import io
    from PIL import Image
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1)).save(tiny, "JPEG")  # readable: the split leaves out what it cannot read
    src = tmp_path / "flower_photos"
    for cla, n in TUTORIAL_COUNTS.items():
        (src / cla).mkdir(parents=True)
        for i in range(n):
            (src / cla / f"{i:05d}.jpg").write_bytes(tiny.getvalue())
    (src / "LICENSE.txt").touch()
    split = split_data.select_val(src, 0.1, 0)
    assert sum(len(t) for t, v, _ in split.values()) == 3306
    assert sum(len(v) for t, v, _ in split.values()) == 364


def test_split_is_deterministic_and_complete(tmp_path):
    src = make_class_folders(tmp_path / "flower_photos", per_class=10)
    a = split_data.select_val(src, 0.2, seed=0)
    b = split_data.select_val(src, 0.2, seed=0)
    c = split_data.select_val(src, 0.2, seed=1)
    assert a == b and a != c
    for cla, (train, val, _) in a.items():
        assert len(val) == 2 and not set(train) & set(val)
        assert sorted(train + val) == sorted(os.listdir(src / cla))


def test_only_images_of_any_case_are_split(tmp_path):
    src = tmp_path / "flower_photos"
    make_class_folders(src, per_class=4, classes=("a", "b"))
    (src / "a" / "UPPER.JPG").write_bytes((src / "a" / "a_0.jpg").read_bytes())
    (src / "a" / "notes.txt").write_text("not an image")
    (src / "a" / "Thumbs.db").write_bytes(b"\0")
    split_data.main(parse(split_data, ["--data-path", tmp_path, "--val-rate", "0.25"]))
    train_files = sorted(os.listdir(tmp_path / "train" / "a")) + sorted(os.listdir(tmp_path / "val" / "a"))
    assert "UPPER.JPG" in train_files and "notes.txt" not in train_files and "Thumbs.db" not in train_files
    assert len(train_files) == 5


def test_existing_split_is_refused_then_replaced_with_overwrite_and_nothing_else_removed(tmp_path, capsys):
    make_class_folders(tmp_path / "flower_photos", per_class=5)
    keep = tmp_path / "my_notes.txt"
    keep.write_text("mine")
    args = ["--data-path", tmp_path]
    split_data.main(parse(split_data, args))
    assert "processing done!" in capsys.readouterr().out
    stray = tmp_path / "train" / "daisy" / "stray.jpg"
    stray.write_bytes(b"x")
    with pytest.raises(cli.UserError, match="already exists.*--overwrite"):
        split_data.main(parse(split_data, args))
    assert stray.exists()  # refusing touched nothing
    # a file the split did not put there is never removed: the run is refused and names it
    with pytest.raises(cli.UserError, match="no split put there.*stray.jpg"):
        split_data.main(parse(split_data, args + ["--overwrite"]))
    assert stray.read_bytes() == b"x" and len(list((tmp_path / "train" / "daisy").iterdir())) == 5
    stray.unlink()
    split_data.main(parse(split_data, args + ["--force"]))  # the old name of --overwrite
    assert keep.read_text() == "mine"
    assert len(list((tmp_path / "flower_photos" / "daisy").iterdir())) == 5  # sources untouched


def test_progress_lines_and_links(tmp_path, capsys):
    make_class_folders(tmp_path / "flower_photos", per_class=10, classes=("daisy", "roses"))
    split_data.main(parse(split_data, ["--data-path", tmp_path]))
    out = capsys.readouterr().out
    assert "[roses] processing [10/10]" in out and out.rstrip().splitlines()[-2] == "processing done!"
    linked = next((tmp_path / "train" / "roses").iterdir())
    assert os.stat(linked).st_nlink == 2  # hard link: no copy of the data set


def test_empty_class_folder_and_missing_source_are_one_line_errors(tmp_path):
    make_class_folders(tmp_path / "flower_photos", per_class=3, classes=("a",))
    (tmp_path / "flower_photos" / "empty").mkdir()
    with pytest.raises(cli.UserError, match="empty has no images"):
        split_data.main(parse(split_data, ["--data-path", tmp_path]))
    assert not (tmp_path / "train").exists()
    with pytest.raises(cli.UserError, match="not found.*--download.*--demo"):
        split_data.main(parse(split_data, ["--data-path", tmp_path / "nothing"]))


def test_demo_makes_labelled_synthetic_data_and_example_images(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "daisy.jpg").write_bytes(b"user's own file")
    split_data.main(parse(split_data, ["--data-path", tmp_path / "d", "--demo", "--demo-per-class", "10",
                                       "--demo-imgs", imgs]))
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out
    assert (tmp_path / "d" / "flower_photos" / "SYNTHETIC_DEMO_DATA.txt").exists()
    assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir()) == sorted(
        ["daisy", "dandelion", "roses", "sunflowers", "tulips"])
    assert (imgs / "daisy.jpg").read_bytes() == b"user's own file"  # never overwritten
    assert (imgs / "tulips.jpg").stat().st_size > 1000
    # --download never takes the demo's cartoons for the flowers it would have downloaded
    with pytest.raises(cli.UserError, match="holds the SYNTHETIC demo flowers; delete that folder"):
        split_data.main(parse(split_data, ["--data-path", tmp_path / "d", "--download", "--overwrite"]))
    # --demo never writes into a real data set
    real = tmp_path / "real"
    make_class_folders(real / "flower_photos", per_class=2, classes=("x",))
    with pytest.raises(cli.UserError, match="already holds a data set"):
        split_data.main(parse(split_data, ["--data-path", real, "--demo", "--demo-imgs", imgs]))


def test_max_size_writes_upright_resized_copies_that_overwrite_can_remove(tmp_path, capsys):
    from PIL import Image

    from test_images import photo
    src = tmp_path / "flower_photos"
    for cla in ("a", "b"):
        (src / cla).mkdir(parents=True)
        for i in range(4):
            photo(src / cla / f"{i}.jpg", (1200, 900), orientation=6)  # shown as 900 x 1200
        Image.new("RGB", (60, 50), (9, 9, 9)).save(src / cla / "small.png")
    args = ["--data-path", tmp_path, "--max-size", "100", "--val-rate", "0.25"]
    split_data.main(parse(split_data, args))
    placed = sorted((tmp_path / "train").rglob("*.*")) + sorted((tmp_path / "val").rglob("*.*"))
    assert len(placed) == 10
    for p in placed:
        assert os.stat(p).st_nlink == 1  # copies, not links to the originals
        with Image.open(p) as img:
            assert img.size == ((100, 133) if p.suffix == ".jpg" else (60, 50))  # upright, shorter side 100
    before = {p.name: p.stat().st_size for p in (src / "a").iterdir()}
    split_data.main(parse(split_data, args + ["--overwrite"]))  # its own resized copies are its to replace
    assert {p.name: p.stat().st_size for p in (src / "a").iterdir()} == before


@pytest.mark.parametrize("names, words", [(("caf\u00e9", "cafe\u0301"), "Unicode form"),
                                          (("roses", "roses "), "spaces at their ends")])
def test_class_folders_that_read_the_same_are_refused(tmp_path, names, words):
    for name in names:
        make_class_folders(tmp_path / "flower_photos", per_class=2, classes=(name,))
    with pytest.raises(cli.UserError, match=words):
        split_data.main(parse(split_data, ["--data-path", tmp_path]))
    assert not (tmp_path / "train").exists()


def test_a_class_name_that_is_not_utf8_is_refused_before_any_work(tmp_path):
    src = tmp_path / "flower_photos"
    make_class_folders(src, per_class=2, classes=("daisy",))
    os.rename(src / "daisy", os.path.join(os.fsencode(src), b"marguerite-\xe9"))  # Latin-1, from an old zip
    with pytest.raises(cli.UserError, match=r"is not valid UTF-8 text.*rename the folder"):
        split_data.main(parse(split_data, ["--data-path", tmp_path]))
    assert not (tmp_path / "train").exists()
