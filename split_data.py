"""Split <data-root>/flower_photos/<class>/ images into <data-root>/train and <data-root>/val.

    python split_data.py                 # the tutorial's split: 10% of each class to val, seed 0
    python split_data.py --download      # fetch and unpack the flower photos first
    python split_data.py --demo          # synthetic demo flowers, when there is no real data
"""
import argparse
import os
import random
import shutil
import tarfile
import tempfile
from pathlib import Path

import demo_data
from common import UserError, download, is_image_file, need_dir, run_cli

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Split a <class>/<images> folder into train/ and val/",
                                add_help=add_help)
    p.add_argument("--data-root", default="data_set/flower_data",
                   help="folder holding flower_photos/<class>/ (default: %(default)s)")
    p.add_argument("--source", default=None,
                   help="the <class>/<images> folder to split (default: <data-root>/flower_photos)")
    p.add_argument("--val-rate", type=float, default=0.1, help="share of each class for val (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the selection (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace existing train/ and val/ (nothing else is removed)")
    p.add_argument("--mode", choices=("link", "copy", "symlink"), default="link",
                   help="how images reach train/ and val/: hard link (no extra disk; falls back to copy "
                        "across file systems), copy, or symlink (default: %(default)s)")
    p.add_argument("--download", action="store_true", help="download and unpack the flower photos first")
    p.add_argument("--url", default=FLOWERS_URL, help="archive to download (default: the TensorFlow flowers)")
    p.add_argument("--sha256", default=None,
                   help="expected SHA-256 of the archive (default: the flowers' own; 'none' skips the check)")
    p.add_argument("--demo", action="store_true",
                   help="generate SYNTHETIC demo flowers (and data/imgs examples) when there is no real data")
    p.add_argument("--demo-per-class", type=int, default=120, help="demo images per class (default: %(default)s)")
    p.add_argument("--demo-imgs", default="data/imgs", help="where --demo puts example images (default: %(default)s)")
    return p


def select_val(source, val_rate=0.1, seed=0):
    """The tutorial's selection: one random.seed, then random.sample of each class in turn.

    Classes and files are sorted first, so the split is the same on every machine.
    Returns {class: (train_files, val_files)}.
    """
    source = Path(source)
    rng = random.Random(seed)
    classes = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{source} has no class folders; it must hold <class>/<images>")
    split = {}
    for cla in classes:
        images = sorted(f.name for f in (source / cla).iterdir() if f.is_file() and is_image_file(f.name))
        if not images:
            raise UserError(f"class folder {source / cla} has no images "
                            f"(looked for {', '.join(e[1:] for e in ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.gif', '.tif'))}); "
                            "add images or remove the folder")
        k = int(len(images) * val_rate)
        if k == 0 and val_rate > 0 and len(images) > 1:
            k = 1  # every class must be in val, or validation cannot see it
        val = set(rng.sample(images, k=k))
        split[cla] = ([f for f in images if f not in val], [f for f in images if f in val])
    return split


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


def split_dataset(source, out_root, val_rate=0.1, seed=0, force=False, mode="link"):
    source = need_dir(source, "image folder",
                      "put <class>/<images> there, or run with --download (flowers) or --demo (synthetic)")
    out_root = Path(out_root)
    targets = [out_root / "train", out_root / "val"]
    for t in targets:
        if t.resolve() == source.resolve() or source.resolve() in t.resolve().parents:
            raise UserError(f"{t} would overwrite the source folder {source}")
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists; pass --force to replace train/ and val/ "
                        "(nothing else is removed)")
    split = select_val(source, val_rate, seed)
    for t in existing:
        shutil.rmtree(t)
    n_train = n_val = 0
    for cla, (train_files, val_files) in split.items():
        for t in targets:
            (t / cla).mkdir(parents=True)
        num = len(train_files) + len(val_files)
        val_set = set(val_files)
        for index, name in enumerate(sorted(train_files + val_files)):
            _place(source / cla / name, targets[name in val_set] / cla / name, mode)
            print(f"\r[{cla}] processing [{index + 1}/{num}]", end="")
        print()
        n_train += len(train_files)
        n_val += len(val_files)
    print("processing done!")
    print(f"{n_train} images in {targets[0]}, {n_val} in {targets[1]}, {len(split)} classes")
    return split


def safe_extract(archive, dest):
    """Unpack a tar archive, refusing any member that would land outside dest (../, absolute
    paths, links pointing out, devices)."""
    dest = Path(dest).resolve()
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{archive} is not a readable tar archive: {e}") from None
    with tar:
        for m in tar.getmembers():
            target = (dest / m.name).resolve()
            bad = (os.path.isabs(m.name) or (target != dest and dest not in target.parents)
                   or m.isdev() or (m.issym() and os.path.isabs(m.linkname)))
            if m.issym() or m.islnk():
                link_target = (target.parent / m.linkname).resolve() if m.issym() else (dest / m.linkname).resolve()
                bad = bad or dest not in link_target.parents
            if bad:
                raise UserError(f"{archive}: member {m.name!r} would land outside {dest}; nothing was unpacked")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, **kwargs)


def download_flowers(data_root, url=FLOWERS_URL, sha256=FLOWERS_SHA256):
    data_root = Path(data_root)
    photos = data_root / "flower_photos"
    if photos.is_dir():
        print(f"{photos} is already there; not downloading")
        return photos
    archive = data_root / url.rsplit("/", 1)[-1]
    downloaded = not archive.is_file()  # an archive the user put there is theirs: it stays
    if downloaded:
        print(f"downloading {url}")
        download(url, archive, sha256=sha256)
    # Unpack into a temporary folder, then move: a failure never leaves a half-filled flower_photos.
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=data_root))
    try:
        safe_extract(archive, tmp)
        entries = [e for e in tmp.iterdir() if not e.name.startswith(".")]
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        os.replace(top, photos)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if downloaded:
        archive.unlink()
    print(f"unpacked to {photos}")
    return photos


def make_demo(source, per_class, seed, imgs_dir):
    source = Path(source)
    marker = source / "SYNTHETIC_DEMO_DATA.txt"
    if source.exists() and not marker.exists():
        raise UserError(f"{source} already holds a data set; --demo will not write into it "
                        "(use --data-root for another folder)")
    if not marker.exists():
        print(f"generating SYNTHETIC demo flowers ({per_class} per class) in {source}")
        demo_data.make_demo_dataset(source, per_class=per_class, seed=seed)
    else:
        print(f"using the SYNTHETIC demo flowers already in {source}")
    for p in demo_data.make_demo_images(imgs_dir):
        print(f"wrote demo image {p}")
    print("note: demo data is drawn by demo_data.py, not photographs; accuracy on it only shows the code works")


def main(args):
    data_root = Path(args.data_root)
    source = Path(args.source) if args.source else data_root / "flower_photos"
    if not 0 <= args.val_rate < 1:
        raise UserError(f"--val-rate must be in [0, 1), got {args.val_rate}")
    if args.download and args.demo:
        raise UserError("--download and --demo exclude each other")
    if args.download:
        data_root.mkdir(parents=True, exist_ok=True)
        sha = None if (args.sha256 or "").lower() == "none" else (
            args.sha256 or (FLOWERS_SHA256 if args.url == FLOWERS_URL else None))
        download_flowers(data_root, args.url, sha)
    if args.demo:
        make_demo(source, args.demo_per_class, args.seed, args.demo_imgs)
    return split_dataset(source, data_root, args.val_rate, args.seed, args.force, args.mode)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
