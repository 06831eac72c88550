"""Split <data-path>/flower_photos/<class>/ into <data-path>/train and <data-path>/val (and test/).

    python split_data.py                 # the tutorial's split: 10% of each class to val, seed 0
    python split_data.py --download      # fetch and unpack the flower photos first
    python split_data.py --demo          # synthetic demo flowers, when there is no real data
    python split_data.py --max-size 320  # resized copies instead of links, for slow storage
    python split_data.py --test-rate 0.1 # also a test/ that training never reads, for evaluate.py

The source is only read. An earlier split is replaced only with --overwrite, and only its own files are
removed; the new split is built in a temporary folder and moved into place once complete.
"""
from helpers import classnames, cli, downloads
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
import argparse
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageOps

from helpers import demo_data, files, imaging, plots, stop

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
MANIFEST = files.SPLIT_RECORD  # Beside train/ and val/: the size and time of every file the split wrote.
JUNK = {".DS_Store", "Thumbs.db", "desktop.ini"}  # File browsers make these; they are not the user's work.
SIDES = ("train", "val", "test")
NO_SOURCE = "put <class>/<images> there, or run with --download (flowers) or --demo (synthetic)"


def get_args_parser(add_help=True):
    p = cli.ArgumentParser(description="Split a <class>/<images> folder into train/ and val/", add_help=add_help)
    p.add_argument("--data-path", default="data_set/flower_data",
                   help="folder of flower_photos/<class>/, train/ and val/: train.py's --data-path (default: %(default)s)")
    p.add_argument("--data-root", dest="data_path", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # its old name
    p.add_argument("--source", help="the <class>/<images> folder to split (default: <data-path>/flower_photos)")
    p.add_argument("--val-rate", type=cli.float_in(0, 1, high_open=True), default=0.1,
                   help="share of each class for val (default: %(default)s)")
    p.add_argument("--test-rate", type=cli.float_in(0, 1, high_open=True), default=0.0,
                   help="share of each class for test/, which train.py never reads, for evaluate.py (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the selection (default: %(default)s)")
    cli.add_overwrite(p, "replace an earlier split's train/ and val/ (only the files it put there are removed)")
    p.add_argument("--mode", choices=("link", "copy", "symlink"), default="link",
                   help="hard link (no extra disk; a copy across file systems), copy or symlink (default: %(default)s)")
    p.add_argument("--max-size", type=cli.int_in(32), default=None, metavar="N",
                   help="write upright copies with a shorter side of at most N px, for slow storage and phone photos")
    p.add_argument("--download", action="store_true", help="download and unpack the flower photos first")
    p.add_argument("--url", default=FLOWERS_URL, help="archive to download, or a local archive (default: the flowers)")
    p.add_argument("--sha256", default=None,
                   help="expected SHA-256 of the archive (default: the flowers' own; 'none' skips the check)")
    p.add_argument("--demo", action="store_true",
                   help="generate SYNTHETIC demo flowers (and data/imgs examples) when there is no real data")
    p.add_argument("--demo-per-class", type=cli.positive_int, default=120, help="demo images per class (default: %(default)s)")
    p.add_argument("--demo-imgs", default="data/imgs", help="where --demo puts example images (default: %(default)s)")
    return p


def class_images(source):
    """{class: sorted image paths relative to the class folder}; unreadable images are named and left out."""
    source = Path(source)
    classes = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise cli.UserError(f"{source} has no class folders; it must hold <class>/<images>")
    classnames.check_class_names(classes, f"the class folders of {source}")  # train.py would refuse them later
    if len(classes) < 2:  # train.py would refuse it after the split
        raise cli.UserError(f"{source} has one class folder ({classes[0]}): a classifier needs two classes or more; "
                            "add a folder of images for each other class")
    found, unreadable = {}, []
    for cla in classes:
        not_regular, images = [], []
        for p in imaging.list_images(source / cla, True, not_regular):
            try:  # Only the header is read, so a bomb or a text file named .jpg costs nothing.
                imaging.open_image(p).close()
                images.append(p.relative_to(source / cla).as_posix())
            except cli.UserError as e:
                unreadable.append(str(e))
        unreadable += [f"{p}: not a regular file (a pipe, a device or a broken link)" for p in not_regular]
        if not images:
            raise cli.UserError(f"class folder {source / cla} has no images (looked for "
                                f"{' '.join(imaging.IMG_EXTENSIONS)}, sub-folders included); add images or remove the folder")
        found[cla] = images
    for line in unreadable[:10]:
        print(f"warning: skipped: {line}")
    if len(unreadable) > 10:
        print(f"warning: skipped {len(unreadable) - 10} more unreadable images")
    return found


def share(n, rate):  # At least one image of a class, or its accuracy cannot be measured.
    return max(int(n * rate), 1 if rate > 0 and n > 1 else 0)


def select_val(source, val_rate=0.1, seed=0, test_rate=0.0):
    """The tutorial's selection: one seed, then random.sample of each sorted class in turn.
    Test images are drawn afterwards from the rest, so val/ is the tutorial's at any test rate.
    Returns {class: (train_files, val_files, test_files)}."""
    rng = random.Random(seed)
    found = class_images(source)
    val = {cla: set(rng.sample(images, k=share(len(images), val_rate))) for cla, images in found.items()}
    split = {}
    for cla, images in found.items():
        rest = [f for f in images if f not in val[cla]]
        test = set(rng.sample(rest, k=min(share(len(images), test_rate), len(rest) - 1))) if test_rate else set()
        split[cla] = ([f for f in rest if f not in test], [f for f in images if f in val[cla]],
                      [f for f in rest if f in test])
    return split


def find_duplicates(source, split):
    """Groups of byte-identical images, as lists of (class, file). Only files whose size occurs
    twice are hashed, so a folder without duplicates costs one stat per file."""
    by_size, by_digest = defaultdict(list), defaultdict(list)
    for cla, sides in split.items():
        for f in sum(sides, []):
            size = (Path(source) / cla / f).stat().st_size
            if size:
                by_size[size].append((cla, f))
    for members in by_size.values():
        if len(members) > 1:
            for cla, f in members:
                by_digest[files.file_sha256(Path(source) / cla / f)].append((cla, f))
    return [sorted(g) for g in by_digest.values() if len(g) > 1]


def keep_duplicates_together(split, groups):
    """Move each group of copies whole to the first side (train, val, test) that holds one of them:
    otherwise val or test would grade the model on a photo it trained on. Returns (class, file, side left)."""
    moved = []
    for group in groups:
        home = min(side for cla, f in group for side in range(3) if f in split[cla][side])
        for cla, f in group:
            for side in range(home + 1, 3):
                if f in split[cla][side]:
                    split[cla][side].remove(f)
                    split[cla][home].append(f)
                    moved.append((cla, f, SIDES[side]))
    return moved


def earlier_split_files(target, source):
    """(files an earlier split put in `target`, files it did not). A file is the split's when it is
    a link to its source image, or when the manifest lists it with the same size and time."""
    target = Path(target)
    try:
        manifest = json.loads((target.parent / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    ours, foreign = [], []
    for root, dirs, names in os.walk(target):  # Links to folders are not followed: they are foreign.
        foreign += [Path(root) / d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in names:
            f = Path(root) / name
            rel = f.relative_to(target).as_posix()
            st = os.lstat(f)
            try:
                same = os.path.samefile(Path(source) / rel, f)
            except OSError:
                same = False
            listed = manifest.get(f"{target.name}/{rel}") == [st.st_size, st.st_mtime_ns]
            (ours if name in JUNK or same or listed else foreign).append(f)
    return ours, foreign


def check_targets(targets, source, overwrite):
    """Before any work: refuse links, files and overlaps with the source, and an earlier split without
    --overwrite or with files it did not put there. Returns the earlier split's files."""
    src = Path(source).resolve()
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
    to_remove = []
    for t in existing:
        ours, foreign = earlier_split_files(t, source)
        if foreign:
            names = ", ".join(str(f) for f in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise cli.UserError(f"{t} holds {len(foreign)} file(s) that no split put there ({names}); move them out "
                                "and run again: nothing was changed")
        to_remove += ours
    return to_remove


def resized_copy(job):
    """(src, dst, where, max_size): an upright copy whose shorter side is at most max_size. An image
    that cannot be read is copied as it is; returns why, or ''. A full disk fails the whole split."""
    src, dst, where, max_size = job
    try:
        try:
            img = imaging.load_rgb(src, min_side=max_size)  # A large JPEG is decoded at reduced scale.
        except (cli.UserError, OSError, ValueError) as e:
            shutil.copy2(src, dst)  # Training will name it again.
            return str(e)
        if min(img.size) > max_size:
            img = ImageOps.scale(img, max_size / min(img.size), Image.LANCZOS)
        imaging.save_image(img, dst, quality=95)
        return ""
    except (OSError, ValueError) as e:
        raise cli.UserError(f"cannot write {where}: {getattr(e, 'strerror', None) or e}") from None


def write_split(source, out_root, split, mode="link", max_size=None):
    """Build train/ and val/ (and test/) in a temporary folder under out_root; return that folder."""
    tmp = Path(tempfile.mkdtemp(prefix=".split-", dir=out_root))
    try:
        jobs = []
        for cla, sides in split.items():
            side_of = {name: side for side, names in zip(SIDES, sides) for name in names}
            for side in sides_of(split):
                (tmp / side / cla).mkdir(parents=True)  # Made even for a class with no val image.
            for index, name in enumerate(sorted(side_of)):
                src, dst = source / cla / name, tmp / side_of[name] / cla / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if max_size:
                    jobs.append((src, dst, out_root / dst.relative_to(tmp), max_size))
                else:
                    try:
                        place(src, dst, mode)
                    except OSError as e:
                        raise cli.UserError(f"cannot write {out_root / dst.relative_to(tmp)}: {e.strerror or e}") from None
                print(f"\r[{cla}] processing [{index + 1}/{len(side_of)}]", end="", flush=True)
            print()
        if jobs:
            print(f"resizing {len(jobs)} images to a shorter side of at most {max_size} px")
            # Starting a pool of processes costs more than resizing a few images in this one.
            few = len(jobs) <= 64
            with contextlib.nullcontext() if few else multiprocessing.Pool(os.cpu_count() or 1,
                                                                          initializer=stop.ignore_in_worker) as pool:
                for warning in map(resized_copy, jobs) if few else pool.imap(resized_copy, jobs, chunksize=8):
                    if warning:
                        print(f"warning: copied as it is: {warning}")
        return tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def place(src, dst, mode):
    if mode == "symlink":
        return os.symlink(os.path.abspath(src), dst)
    if mode == "link":
        try:
            return os.link(src, dst)
        except OSError:
            pass  # Another file system, or one without hard links: copy instead.
    shutil.copy2(src, dst)


def remove_stale_folders(out_root):
    """Remove the partial folders that killed splits and downloads left: the caller holds the folder
    locked, so no other run is writing one."""
    stale = [d for prefix in (".split-", ".unpack-") for d in Path(out_root).glob(prefix + "*")
             if d.is_dir() and not d.is_symlink()]
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    if stale:
        print(f"note: removed {len(stale)} partial folder(s) that interrupted runs left in {out_root}: "
              + ", ".join(d.name for d in stale[:3]))


def sides_of(split):  # train and val, and test when the split has one.
    return SIDES if any(test for _, _, test in split.values()) else SIDES[:2]


def report(split, groups, moved, out_root):
    """Duplicates, classes without val images, the balance table and split.png; then the
    tutorial's last line and the counts."""
    if groups:
        left = ", ".join(f"{n} from {side}" for side in SIDES[1:] for n in [sum(m[2] == side for m in moved)] if n)
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
    sides = sides_of(split)
    counts = [sum(len(names[i]) for names in split.values()) for i in range(len(sides))]
    print(f"{'class':<20}" + "".join(f"{side:>8}" for side in sides))
    for cla, names in split.items():
        print(f"{cla:<20}" + "".join(f"{len(n):>8}" for n in names[:len(sides)]))
    print(f"{'total':<20}" + "".join(f"{n:>8}" for n in counts))
    print(f"wrote {plots.plot_split(split, out_root / 'split.png')}")
    print("processing done!")
    rest = "".join(f", {n} in {out_root / side}" for side, n in zip(sides[1:], counts[1:]))
    print(f"{counts[0]} images in {out_root / 'train'}{rest}, {len(split)} classes")


def safe_extract(archive, dest, downloaded=False):
    """Unpack a tar archive, refusing any member that would land outside dest (../, absolute paths,
    links that point out, devices). Reading every member header also refuses a truncated archive.
    downloaded: the script fetched it (and deletes it); otherwise it is the user's own file, kept."""
    dest = Path(dest).resolve()
    try:
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if m.isdev() or m.isfifo():
                    raise cli.UserError(f"{archive}: member {m.name!r} is a device or a pipe; nothing was unpacked")
                target = (dest / m.name).resolve()
                link = (target.parent if m.issym() else dest) / m.linkname if m.issym() or m.islnk() else target
                if os.path.isabs(m.name) or any(p != dest and dest not in p.parents for p in (target, link.resolve())):
                    raise cli.UserError(f"{archive}: member {m.name!r} would land outside the data folder; "
                                        "nothing was unpacked")
            # Python's own check of links, where it has one (3.8.17+, 3.12).
            tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except getattr(tarfile, "FilterError", ()) as e:
        raise cli.UserError(f"{archive}: {cli.first_line(e)}; nothing was unpacked") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if downloaded:
            raise cli.UserError(f"the download {archive} is not a complete tar archive ({cli.first_line(e)}); "
                                "run again to download it again") from None
        raise cli.UserError(f"{archive} is not a tar archive, or not a complete one ({cli.first_line(e)}); give "
                            "the flowers' .tgz to --url") from None


def download_flowers(data_root, url, sha256):
    photos = data_root / "flower_photos"
    if photos.is_dir():
        print(f"{photos} is already there; not downloading")
        return
    if url.startswith("file://"):  # A local archive is read where it is, and kept.
        archive, downloaded = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)), False
    else:
        archive = data_root / downloads.url_file_name(url)
        downloaded = not archive.is_file()  # An archive the user put there is theirs: it stays.
    try:
        if downloaded:
            print(f"downloading {url}")
            downloads.download(url, archive, sha256=sha256)
        # Unpacked into a temporary folder, then moved, so a failure never leaves a half-filled flower_photos.
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=data_root))
        try:
            safe_extract(archive, tmp, downloaded)
            dirs = [e for e in tmp.iterdir() if e.is_dir() and not e.name.startswith(".")]
            os.replace(dirs[0] if len(dirs) == 1 else tmp, photos)  # Its one top folder, or its class folders.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if downloaded and archive.exists():
            archive.unlink()  # Ours: unpacked, or broken, and never to be taken later for the user's own.
    print(f"unpacked to {photos}")


def make_demo(source, per_class, seed, imgs_dir):
    if not (source / demo_data.MARKER).exists():
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
        raise cli.UserError("--download unpacks into <data-path>/flower_photos; leave out --source")
    targets = [data_root / side for side in SIDES]
    to_remove = check_targets(targets, source, args.overwrite)
    files.check_writable_dir(data_root, "split")
    files.check_report(data_root / "split.png", "split figure")
    if args.download and (source / demo_data.MARKER).exists():  # else "already there", and cartoons split as flowers
        raise cli.UserError(f"{source} holds the SYNTHETIC demo flowers; delete that folder and run again to download "
                            "the real ones (make demo keeps its own in data_set/demo)")
    if args.download:
        url = downloads.as_url(args.url)
        sha = None if (args.sha256 or "").lower() == "none" else (
            args.sha256 or (FLOWERS_SHA256 if args.url == FLOWERS_URL else None))
    if args.demo:
        if source.exists() and not (source / demo_data.MARKER).exists():
            raise cli.UserError(f"{source} already holds a data set; --demo will not write into it "
                                "(use --data-path for another folder)")
        files.check_writable_dir(args.demo_imgs, "demo images")
    split = None  # With --download or --demo, the images are not there yet.
    if not (args.download or args.demo):
        split = select_val(files.need_dir(source, "image folder", NO_SOURCE), args.val_rate, args.seed, args.test_rate)

    # Then act, holding the folder: no other split or download writes there, and no training reads it.
    with files.made_dirs(data_root), files.locked(data_root, "a split, or a training run reading it"):
        remove_stale_folders(data_root)
        if args.download:
            download_flowers(data_root, url, sha)
        if args.demo:
            make_demo(source, args.demo_per_class, args.seed, args.demo_imgs)
        split = split or select_val(source, args.val_rate, args.seed, args.test_rate)
        groups = find_duplicates(source, split)
        moved = keep_duplicates_together(split, groups)
        tmp = write_split(source, data_root, split, args.mode, args.max_size)
        try:
            # The manifest is written first: a full disk fails here, before the earlier split is touched.
            placed = [(f, os.lstat(f)) for f in tmp.rglob("*") if not f.is_dir()]
            files.atomic_write_text(tmp / MANIFEST, json.dumps(
                {f.relative_to(tmp).as_posix(): [st.st_size, st.st_mtime_ns] for f, st in placed}))
            for f in to_remove:
                os.remove(f)
            for t in targets:
                if t.exists():
                    for root, _, _ in os.walk(t, topdown=False):
                        os.rmdir(root)  # Empty now: every file in it was the earlier split's.
                if (tmp / t.name).exists():
                    os.replace(tmp / t.name, t)
            os.replace(tmp / MANIFEST, data_root / MANIFEST)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    report(split, groups, moved, data_root)
    return split


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
