"""Split <data-path>/flower_photos/<class>/ images into <data-path>/train and <data-path>/val (and test/).

    python split_data.py                 # the tutorial's split: 10% of each class to val, seed 0
    python split_data.py --download      # fetch and unpack the flower photos first
    python split_data.py --demo          # synthetic demo flowers, when there is no real data
    python split_data.py --max-size 320  # resized copies instead of links, for slow storage
    python split_data.py --test-rate 0.1 # also a test/ that training never reads, for evaluate.py

What it promises about your files: the source folder is only read. An existing train/ and val/ are
replaced only with --overwrite, and then only the files an earlier split put there are removed;
any other file found in them stops the run, named, before anything changes. The new split is built
in a temporary folder and moved into place once complete.
"""
from helpers import cli
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
import argparse
import json
import multiprocessing
import os
import random
import shutil
import tarfile
import tempfile
import time
from collections import defaultdict
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

from helpers import demo_data, files, imaging, plots, stop

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
MANIFEST = ".split.json"  # beside train/ and val/: what the split put there, with sizes and times
JUNK = {".DS_Store", "Thumbs.db", "desktop.ini"}  # made by file browsers: not the user's work


def get_args_parser(add_help=True):
    p = cli.ArgumentParser(description="Split a <class>/<images> folder into train/ and val/", add_help=add_help)
    p.add_argument("--data-path", default="data_set/flower_data",
                   help="folder holding flower_photos/<class>/, where train/ and val/ go: train.py's --data-path "
                        "(default: %(default)s)")
    p.add_argument("--data-root", dest="data_path", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # its old name
    p.add_argument("--source", default=None,
                   help="the <class>/<images> folder to split (default: <data-path>/flower_photos)")
    p.add_argument("--val-rate", type=cli.float_in(0, 1, high_open=True), default=0.1,
                   help="share of each class for val (default: %(default)s)")
    p.add_argument("--test-rate", type=cli.float_in(0, 1, high_open=True), default=0.0,
                   help="share of each class for test/, which train.py never reads: evaluate.py's honest number "
                        "(default: %(default)s, the tutorial's train/val split exactly)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the selection (default: %(default)s)")
    cli.add_overwrite(p, "replace an earlier split's train/ and val/ (only the files it put there are removed)")
    p.add_argument("--mode", choices=("link", "copy", "symlink"), default="link",
                   help="how images reach train/ and val/: hard link (no extra disk; falls back to copy "
                        "across file systems), copy, or symlink (default: %(default)s)")
    p.add_argument("--max-size", type=cli.int_in(32), default=None, metavar="N",
                   help="write resized copies whose shorter side is at most N px (EXIF rotation applied), "
                        "instead of links: for slow storage and large phone photos (default: off)")
    p.add_argument("--download", action="store_true", help="download and unpack the flower photos first")
    p.add_argument("--url", default=FLOWERS_URL, help="archive to download, or a local archive (default: the TensorFlow flowers)")
    p.add_argument("--sha256", default=None,
                   help="expected SHA-256 of the archive (default: the flowers' own; 'none' skips the check)")
    p.add_argument("--demo", action="store_true",
                   help="generate SYNTHETIC demo flowers (and data/imgs examples) when there is no real data")
    p.add_argument("--demo-per-class", type=cli.positive_int, default=120, help="demo images per class (default: %(default)s)")
    p.add_argument("--demo-imgs", default="data/imgs", help="where --demo puts example images (default: %(default)s)")
    return p


# ---------------------------------------------------------------- the selection

def class_images(source):
    """{class: sorted image paths relative to the class folder}, sub-folders included, hidden
    files and folders left out."""
    source = Path(source)
    classes = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise cli.UserError(f"{source} has no class folders; it must hold <class>/<images>")
    files.check_class_names(classes, f"the class folders of {source}")  # train.py would refuse them later
    found, unreadable = {}, []
    for cla in classes:
        not_regular = []
        images = []
        for p in imaging.list_images(source / cla, True, not_regular):
            try:  # the header only: an empty file, a text file named .jpg, a bomb is named, not split
                imaging.open_image(p).close()
            except cli.UserError as e:
                unreadable.append(str(e))
                continue
            images.append(p.relative_to(source / cla).as_posix())
        for p in not_regular:
            print(f"warning: skipped {p}: not a regular file (a pipe, a device or a broken link)")
        if not images:
            raise cli.UserError(f"class folder {source / cla} has no images (looked for "
                                f"{' '.join(imaging.IMG_EXTENSIONS)}, sub-folders included); add images or remove the folder")
        found[cla] = images
    for line in unreadable[:10]:
        print(f"warning: skipped: {line}")
    if len(unreadable) > 10:
        print(f"warning: skipped {len(unreadable) - 10} more unreadable images")
    return found


SIDES = ("train", "val", "test")


def share(n, rate):
    k = int(n * rate)
    return 1 if k == 0 and rate > 0 and n > 1 else k  # every class in val (and test), or it cannot be measured


def select_val(source, val_rate=0.1, seed=0, test_rate=0.0):
    """The tutorial's selection: one random.seed, then random.sample of each class in turn. Classes
    and files are sorted first, so the split is the same on every machine. With test_rate, each
    class's test images are drawn after its val images, from the rest: test_rate 0 draws nothing
    more, so train/ and val/ are the tutorial's exactly.
    Returns {class: (train_files, val_files, test_files)}."""
    rng = random.Random(seed)
    found = class_images(source)
    val = {cla: set(rng.sample(images, k=share(len(images), val_rate))) for cla, images in found.items()}
    split = {}
    for cla, images in found.items():  # after every class's val: the tutorial's val whatever the test rate
        rest = [f for f in images if f not in val[cla]]
        test = set(rng.sample(rest, k=min(share(len(images), test_rate), len(rest) - 1))) if test_rate else set()
        split[cla] = ([f for f in rest if f not in test], [f for f in images if f in val[cla]],
                      [f for f in rest if f in test])
    return split


def find_duplicates(source, split):
    """Groups of byte-identical images, as lists of (class, file). Only files of a size seen twice
    are hashed, so a folder without duplicates costs one stat per file."""
    by_size = defaultdict(list)
    for cla, sides in split.items():
        for f in sum(sides, []):
            size = (Path(source) / cla / f).stat().st_size
            if size:
                by_size[size].append((cla, f))
    by_digest = defaultdict(list)
    for members in by_size.values():
        if len(members) > 1:
            for cla, f in members:
                by_digest[files.file_sha256(Path(source) / cla / f)].append((cla, f))
    return [sorted(g) for g in by_digest.values() if len(g) > 1]


def keep_duplicates_together(split, groups):
    """Copies of one image never straddle train, val and test (val or test would grade the model on
    a photo it trained on): a group goes whole to the first side holding a copy of it, in the order
    train, val, test. Returns the (class, file, side it left) of the files moved."""
    moved = []
    for group in groups:
        home = min(side for cla, f in group for side in range(3) if f in split[cla][side])
        for cla, f in group:
            for side in range(home + 1, 3):
                if f in split[cla][side]:
                    split[cla][side].remove(f)
                    split[cla][home].append(f)
                    moved.append((cla, f, SIDES[side]))
    for sides in split.values():
        for names in sides:
            names.sort()
    return moved


# ---------------------------------------------------------------- the old split and the new

def read_manifest(out_root):
    try:
        return json.loads((Path(out_root) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def earlier_split_files(target, source):
    """(files an earlier split put in `target`, files it did not). A file is the split's when it is
    its source image itself (a hard link or symlink to it), or when the split's manifest lists it
    with its size and time unchanged (copies and resized copies)."""
    target, manifest = Path(target), read_manifest(Path(target).parent)
    ours, foreign = [], []
    for root, dirs, names in os.walk(target):  # links to folders are not followed: they are foreign
        foreign += [Path(root) / d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in names:
            f = Path(root) / name
            rel = f.relative_to(target).as_posix()
            if name in JUNK:
                ours.append(f)
                continue
            src = Path(source) / rel
            st = os.lstat(f)
            try:
                same = src.exists() and os.path.samefile(src, f)
            except OSError:
                same = False
            if same or manifest.get(f"{target.name}/{rel}") == [st.st_size, st.st_mtime_ns]:
                ours.append(f)
            else:
                foreign.append(f)
    return ours, foreign


def check_targets(targets, source, overwrite):
    """Before any work: train/ and val/ do not overlap the source, are not links, and an earlier
    split there is replaced only with --overwrite and only when it holds nothing else.
    Returns the files to remove."""
    src = Path(source).resolve()
    to_remove = []
    for t in targets:
        if t.is_symlink():
            raise cli.UserError(f"{t} is a symbolic link; remove the link yourself or choose another --data-path")
        r = t.resolve()
        if r == src or src in r.parents or r in src.parents:
            raise cli.UserError(f"{t} and the source folder {source} overlap; the split would overwrite its own "
                            "source: choose another --data-path or --source")
        if t.exists() and not t.is_dir():
            raise cli.UserError(f"{t} is a file; the split needs that name for a folder")
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise cli.UserError(f"{existing[0]} already exists; pass --overwrite to replace train/ and val/ "
                        "(only the files an earlier split put there are removed)")
    for t in existing:
        ours, foreign = earlier_split_files(t, source)
        if foreign:
            names = ", ".join(str(f) for f in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise cli.UserError(f"{t} holds {len(foreign)} file(s) that no split put there ({names}); move them out "
                            "and run again: nothing was changed")
        to_remove += ours
    return to_remove


def remove_earlier_split(targets, paths):
    for f in paths:
        os.remove(f)
    for t in targets:
        for root, _, _ in os.walk(t, topdown=False):  # the deepest folders first
            os.rmdir(root)  # empty now: its files were all the split's


def _place(src, dst, mode):
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
        return
    if mode == "link":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system or no hard links: copy instead
    shutil.copy2(src, dst)


def resized_copy(job):
    """(src, dst, max_size): a copy whose shorter side is at most max_size, upright; an image already
    small enough is copied as it is. Returns an error text or ''."""
    src, dst, max_size = job
    try:
        img = imaging.load_rgb(src, min_side=max_size)  # a large JPEG is decoded at reduced scale already
        if min(img.size) > max_size:
            scale = max_size / min(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
        warning = ""
    except (cli.UserError, OSError, ValueError) as e:
        img, warning = None, str(e)  # unreadable here: copied as it is; training will name it
    try:
        if img is None:
            shutil.copy2(src, dst)
        else:
            imaging.save_image(img, dst, quality=95)
    except (OSError, ValueError) as e:  # a full disk: the whole split fails, naming where it wrote
        return "", getattr(e, "strerror", None) or str(e)
    return warning, ""


def write_split(source, out_root, split, mode="link", max_size=None, workers=None):
    """train/ and val/ (and test/) built in a temporary folder under out_root, then moved into place."""
    source, out_root = Path(source), Path(out_root)
    tmp = Path(tempfile.mkdtemp(prefix=".split-", dir=out_root))
    try:
        jobs = []
        for cla, sides in split.items():
            side_of = {name: side for side, names in zip(SIDES, sides) for name in names}
            for index, name in enumerate(sorted(side_of)):
                side, num = side_of[name], len(side_of)
                dst = tmp / side / cla / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if max_size:
                    jobs.append((source / cla / name, dst, max_size))
                else:
                    try:
                        _place(source / cla / name, dst, mode)
                    except OSError as e:  # the new split is removed whole (below); say where it failed
                        raise cli.UserError(f"cannot write {out_root / side / cla / name}: {e.strerror or e}") from None
                print(f"\r[{cla}] processing [{index + 1}/{num}]", end="", flush=True)
            print()
        if jobs:
            print(f"resizing {len(jobs)} images to a shorter side of at most {max_size} px")
            with multiprocessing.Pool(workers or os.cpu_count() or 1, initializer=stop.ignore_in_worker) as pool:
                for (_, dst, _), (warning, error) in zip(jobs, pool.imap(resized_copy, jobs, chunksize=8)):
                    if error:
                        raise cli.UserError(f"cannot write {out_root / dst.relative_to(tmp)}: {error}")
                    if warning:
                        print(f"warning: copied as it is: {warning}")
        for side in sides_of(split):
            for cla in split:
                (tmp / side / cla).mkdir(parents=True, exist_ok=True)  # a class with no val image too
        return tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sides_of(split):
    """train and val, and test when the split has one."""
    return SIDES if any(test for _, _, test in split.values()) else SIDES[:2]


def balance_table(split):
    sides = sides_of(split)
    lines = [f"{'class':<20}" + "".join(f"{side:>8}" for side in sides)]
    for cla, names in split.items():
        lines.append(f"{cla:<20}" + "".join(f"{len(n):>8}" for n in names[:len(sides)]))
    lines.append(f"{'total':<20}" + "".join(f"{sum(len(n[i]) for n in split.values()):>8}" for i in range(len(sides))))
    return "\n".join(lines)


def split_dataset(source, out_root, *, val_rate=0.1, seed=0, overwrite=False, mode="link", max_size=None,
                  to_remove=None, split=None, test_rate=0.0):
    """Select (unless `split` is given), keep duplicates together, build the new split beside the
    old, then swap them."""
    source = files.need_dir(source, "image folder",
                      "put <class>/<images> there, or run with --download (flowers) or --demo (synthetic)")
    out_root = Path(out_root)
    targets = [out_root / side for side in SIDES]
    if to_remove is None:
        to_remove = check_targets(targets, source, overwrite)
    split = split or select_val(source, val_rate, seed, test_rate)
    files.check_writable_dir(out_root, "split")
    groups = find_duplicates(source, split)
    moved = keep_duplicates_together(split, groups)

    with files.made_dirs(out_root), files.locked(out_root, "a split, or a training run reading it"):
        tmp = write_split(source, out_root, split, mode, max_size)
        try:
            # The manifest is written beside the new split and moved with it: a full disk fails here,
            # before anything of the earlier split is touched.
            write_manifest(tmp, split)
            remove_earlier_split([t for t in targets if t.exists()], to_remove)
            for t in targets:
                if (tmp / t.name).exists():  # test/ only with --test-rate
                    os.replace(tmp / t.name, t)
            os.replace(tmp / MANIFEST, out_root / MANIFEST)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        remove_stale_folders(out_root)  # while the folder is held: another split cannot be writing one
    report(split, groups, moved, out_root)
    return split


def remove_stale_folders(out_root):
    """The partial copies that killed splits and downloads left (.split-*, .unpack-*): a split's
    removed when this split holds the folder locked (no other can be writing one), others once older
    than any split lasts; named when newer (a download may be unpacking one)."""
    found = [d for prefix in (".split-", ".unpack-") for d in Path(out_root).glob(prefix + "*")
             if d.is_dir() and not d.is_symlink()]
    held = files.holds(out_root)
    stale = [d for d in found if (held and d.name.startswith(".split-")) or time.time() - d.stat().st_mtime > 6 * 3600]
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    if stale:
        print(f"note: removed {len(stale)} partial folder(s) that interrupted runs left in {out_root}: "
              + ", ".join(d.name for d in stale[:3]))
    recent = [d.name for d in found if d not in stale]
    if recent:
        print(f"note: {out_root} holds partial folder(s) of another or an interrupted split: {', '.join(recent[:3])}; "
              "remove them when no split is running")


def write_manifest(out_root, split):
    """Size and time of every file placed, so a later --overwrite knows them for the split's own
    (a rename keeps both)."""
    entries = {}
    for cla, sides in split.items():
        for side, names in zip(SIDES, sides):
            for name in names:
                st = os.lstat(Path(out_root) / side / cla / name)
                entries[f"{side}/{cla}/{name}"] = [st.st_size, st.st_mtime_ns]
    files.atomic_write_text(Path(out_root) / MANIFEST, json.dumps(entries))


def report(split, groups, moved, out_root):
    """Duplicates, classes without val images, the balance table and split.png; then the
    tutorial's last line and the counts."""
    if groups:
        left = ", ".join(f"{sum(m[2] == side for m in moved)} from {side}" for side in SIDES[1:] if any(m[2] == side for m in moved))
        print(f"found {sum(len(g) for g in groups)} byte-identical images in {len(groups)} groups; each group is kept "
              f"on one side of the split ({len(moved)} moved{': ' + left if left else ''})")
        across = [g for g in groups if len({cla for cla, _ in g}) > 1]
        for g in across[:5]:
            print("warning: the same image is in several classes (a labelling error?): "
                  + " = ".join(f"{cla}/{f}" for cla, f in g[:4]) + (" = ..." if len(g) > 4 else ""))
        if len(across) > 5:
            print(f"warning: ... and {len(across) - 5} more images in several classes")
    for cla, (train, val, _) in split.items():
        if not val:
            why = " (its val images had copies in train/ and moved there)" if any(m[0] == cla for m in moved) else ""
            print(f"warning: class {cla} has {len(train)} image(s) and none in val/{why}: its accuracy cannot be "
                  "measured")
    print(balance_table(split))
    print(f"wrote {plots.plot_split(split, out_root / 'split.png')}")
    print("processing done!")
    counts = [sum(len(sides[i]) for sides in split.values()) for i in range(3)]
    rest = "".join(f", {n} in {out_root / side}" for side, n in list(zip(sides_of(split), counts))[1:])
    print(f"{counts[0]} images in {out_root / 'train'}{rest}, {len(split)} classes")


# ---------------------------------------------------------------- getting the data

def safe_extract(archive, dest):
    """Unpack a tar archive, refusing any member that would land outside dest (../, absolute
    paths, links pointing out, devices). A truncated or corrupt archive is refused too: reading
    every member header reads the whole compressed stream."""
    dest = Path(dest).resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                target = (dest / m.name).resolve()
                bad = (os.path.isabs(m.name) or (target != dest and dest not in target.parents)
                       or (m.issym() and os.path.isabs(m.linkname)))
                if m.issym() or m.islnk():
                    link_target = (target.parent / m.linkname).resolve() if m.issym() else (dest / m.linkname).resolve()
                    bad = bad or dest not in link_target.parents
                if m.isdev() or m.isfifo():
                    raise cli.UserError(f"{archive}: member {m.name!r} is a device or a pipe; nothing was unpacked")
                if bad:
                    raise cli.UserError(f"{archive}: member {m.name!r} would land outside the data folder; "
                                    "nothing was unpacked")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, **kwargs)
    except getattr(tarfile, "FilterError", ()) as e:  # Python's own check of links (3.8.17+, 3.12)
        raise cli.UserError(f"{archive}: {cli.first_line(e)}; nothing was unpacked") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        reason = cli.first_line(e)
        raise cli.UserError(f"{archive} is not a complete tar archive ({reason}); delete it and download again") from None


def unpacked_root(folder):
    """The data set's folder inside an unpacked archive: its one top-level folder (flower_photos/),
    or the archive's top level itself when that holds several class folders."""
    dirs = [e for e in folder.iterdir() if e.is_dir() and not e.name.startswith(".")]
    return dirs[0] if len(dirs) == 1 else folder


def download_flowers(data_root, url=FLOWERS_URL, sha256=FLOWERS_SHA256):
    data_root = Path(data_root)
    photos = data_root / "flower_photos"
    if photos.is_dir():
        print(f"{photos} is already there; not downloading")
        return photos
    if url.startswith("file://"):
        archive = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        downloaded = False  # a local archive: read where it is, and kept
    else:
        archive = data_root / url.rsplit("/", 1)[-1]
        downloaded = not archive.is_file()  # an archive the user put there is theirs: it stays
    try:
        if downloaded:
            print(f"downloading {url}")
            files.download(url, archive, sha256=sha256)
        # Unpacked into a temporary folder, then moved: a failure never leaves a half-filled flower_photos.
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=data_root))
        try:
            safe_extract(archive, tmp)
            os.replace(unpacked_root(tmp), photos)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if downloaded and archive.exists():
            archive.unlink()  # ours: unpacked, or broken (never reused as "the user's own" later)
    print(f"unpacked to {photos}")
    return photos


def check_demo(source, imgs_dir):
    marker = Path(source) / "SYNTHETIC_DEMO_DATA.txt"
    if Path(source).exists() and not marker.exists():
        raise cli.UserError(f"{source} already holds a data set; --demo will not write into it "
                        "(use --data-root for another folder)")
    files.check_writable_dir(imgs_dir, "demo images")


def make_demo(source, per_class, seed, imgs_dir):
    source = Path(source)
    if not (source / "SYNTHETIC_DEMO_DATA.txt").exists():
        print(f"generating SYNTHETIC demo flowers ({per_class} per class) in {source}")
        demo_data.make_demo_dataset(source, per_class=per_class, seed=seed)
    else:
        print(f"using the SYNTHETIC demo flowers already in {source}")
    for p in demo_data.make_demo_images(imgs_dir):
        print(f"wrote demo image {p}")
    print("note: demo data is drawn by helpers/demo_data.py, not photographs; accuracy on it only shows the code works")


def main(args):
    # Settle everything first: flags, paths, what an earlier split left, the archive's address.
    data_root = Path(args.data_path)
    source = Path(args.source) if args.source else data_root / "flower_photos"
    if args.download and args.demo:
        raise cli.UserError("--download and --demo exclude each other")
    if args.val_rate + args.test_rate >= 1:
        raise cli.UserError(f"--val-rate {args.val_rate} and --test-rate {args.test_rate} leave nothing for train/")
    if args.download and args.source:
        raise cli.UserError("--download unpacks into <data-root>/flower_photos; leave out --source")
    targets = [data_root / side for side in SIDES]
    to_remove = check_targets(targets, source, args.overwrite)
    files.check_writable_dir(data_root, "split")
    url = sha = None
    if args.download:
        url = files.as_url(args.url)
        sha = None if (args.sha256 or "").lower() == "none" else (
            args.sha256 or (FLOWERS_SHA256 if args.url == FLOWERS_URL else None))
    if args.demo:
        check_demo(source, args.demo_imgs)
    split = None  # with --download or --demo, the images are not there yet
    if not (args.download or args.demo):
        split = select_val(files.need_dir(source, "image folder", "put <class>/<images> there, or run with --download "
                                                            "(flowers) or --demo (synthetic)"), args.val_rate, args.seed,
                           args.test_rate)
    # Then act.
    if args.download:
        with files.made_dirs(data_root):
            download_flowers(data_root, url, sha)
    if args.demo:
        make_demo(source, args.demo_per_class, args.seed, args.demo_imgs)
    return split_dataset(source, data_root, val_rate=args.val_rate, seed=args.seed, overwrite=args.overwrite,
                         mode=args.mode, max_size=args.max_size, to_remove=to_remove, split=split,
                         test_rate=args.test_rate)


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
