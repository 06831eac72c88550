"""Files: inputs and outputs checked before any work, reports recognised, atomic writes, locks on
folders, and copies of training images found."""
import contextlib
import csv
import errno
import functools
import glob
import hashlib
import json
import os
import re
import secrets
import struct
import sys
import tempfile
import time
from pathlib import Path

from helpers import cli

# ---------------------------------------------------------------- inputs

def need_file(path, what, hint=""):
    path, hint = Path(path), f"; {hint}" if hint else ""
    if path.is_dir():
        raise cli.UserError(f"{what} {path} is a folder, not a file{hint}")
    if path.exists() and not path.is_file():
        raise cli.UserError(f"{what} {path} is not a regular file (a device, a pipe or a socket)")
    if not path.is_file():
        raise cli.UserError(f"{what} not found: {path}{hint}")
    return path


# ONNX files are protobuf: field 1 (ir_version, a small number), then one of the next fields of ModelProto.
ONNX_HEAD = re.compile(rb"\x08[\x01-\x1f][\x12\x1a\x22\x28\x32\x3a\x42\x72]", re.S)


def model_kind(path):
    """What a model file's first bytes say it is: "PyTorch weights" (torch.save's zip or pickle), "an ONNX
    model", or None; so that a file given to the wrong flag is named for what it is."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "PyTorch weights"
    return "an ONNX model" if ONNX_HEAD.match(head) else None


def need_dir(path, what, hint=""):
    path, hint = Path(path), f"; {hint}" if hint else ""
    if path.exists() and not path.is_dir():
        raise cli.UserError(f"{what} {path} is a file, not a folder{hint}")
    if not path.is_dir():
        raise cli.UserError(f"{what} not found: {path}{hint}")
    return path


# ---------------------------------------------------------------- outputs

def missing_dirs(folder):
    """`folder` and those of its parents that do not exist yet, the deepest first."""
    missing, probe = [], Path(folder)
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    return missing


def existing_ancestor(folder):
    missing = missing_dirs(folder)
    return missing[-1].parent if missing else Path(folder)


def check_writable_dir(folder, what="output"):
    """The folder, or its first existing parent, takes new files. A real file is tried, because
    os.access says yes to root on a read-only mount."""
    probe = existing_ancestor(folder)
    if not probe.is_dir():
        raise cli.UserError(f"cannot write the {what} in {folder}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise cli.UserError(f"cannot write the {what} in {folder}: {e.strerror or e} ({probe})") from None


def check_output(path, what, overwrite=False, flag="--overwrite", same_content=None, suffixes=None, inputs=()):
    """Check, before any work, that `path` can be written. overwrite=False refuses an existing file
    unless it holds `same_content` already. inputs: files of the run, which it must not write over.
    A cheap report is checked with check_report instead."""
    path = Path(path)
    check_name_fits(path, what)
    if path.is_dir():
        raise cli.UserError(f"the {what} {path} is a folder; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise cli.UserError(f"the {what} {path} must end in {' or '.join(suffixes)}")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise cli.UserError(f"{path} is a link or a special file, not a regular file; give another path for the {what}")
    for source in inputs:
        if path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise cli.UserError(f"the {what} {path} is also an input of this run; give another path")
    if path.exists() and not overwrite:
        if same_content is not None and path.read_bytes() == same_content:
            return path
        raise cli.UserError(f"{path} already exists; {flag} replaces it, or choose another path for the {what}")
    check_writable_dir(path.parent, what)
    return path


def check_report(path, what, suffixes=None, inputs=(), head=None, images=()):
    """check_output for a cheap report (CSV, JSON, figure, video): it replaces an earlier report of its
    kind that these scripts wrote, and nothing else (weights, class indices, the split record, a photo,
    the user's own CSV, a CSV of another kind). head: the header of the CSV about to be written; a CSV
    replaces only a CSV with this very header. images: the folders of images this run reads; no report
    goes inside them, nor inside the image folders beside a split record (SPLIT_FOLDERS)."""
    check_outside(path, images, what)
    parent = Path(os.path.realpath(path)).parent
    for folder in (parent, *parent.parents):
        if folder.name in SPLIT_FOLDERS and (folder.parent / SPLIT_RECORD).exists():
            raise cli.UserError(f"the {what} {path} would be written among the images of {folder} (they would be "
                                "trained on); give a path outside it")
    path = check_output(path, what, overwrite=True, suffixes=suffixes, inputs=inputs)
    if path.exists() and not is_our_report(path, head):
        raise cli.UserError(f"{path} is there and is not a report of this kind that this script wrote (weights, "
                            "class indices, the split record, training's history.csv, a file of yours?), so the "
                            f"{what} will not replace it; give another path, or move that file away first")
    return path


SPLIT_RECORD = ".split.json"  # split_data.py's record, beside the train/ and val/ it wrote
SPLIT_FOLDERS = ("flower_photos", "train", "val", "test")  # the folders of images beside it


# The first columns of every CSV the scripts write (history.csv, predictions, video frames). atomic_csv
# writes no other, so that check_report knows each of them again.
CSV_HEADS = (("epoch", "train_loss", "train_acc"), ("path", "true", "predicted"), ("path", "class", "prob"),
             ("path", "prediction", "class"), ("frame", "time_s", "class"), ("frame", "time_s", "prediction"))
REPORT_MARK = "resnet flowers: report"  # evaluate.py's JSON holds {"report": REPORT_MARK}; videos end in it


def is_our_report(path, head=None):
    """Whether `path` is a report of its suffix's kind that these scripts wrote: a CSV headed `head`
    exactly (one of CSV_HEADS), a JSON object marked {"report": REPORT_MARK}, a video ending in the mark (mark_video), a
    figure that names matplotlib (PNG's Software, PDF's Creator, SVG's metadata; plots.save_figure's JPEG)."""
    suffix, window = Path(path).suffix.lower(), 1 << 16
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            first = f.read(window)
            f.seek(max(0, size - window))
            tail = f.read()
            if suffix == ".json" and size < (64 << 20):
                f.seek(0)
                return json.loads(f.read().decode("utf-8")).get("report") == REPORT_MARK
    except (OSError, ValueError, AttributeError, RecursionError):  # unreadable, not JSON, not an object
        return False
    if suffix == ".csv":
        header = next(csv.reader([first.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")]), [])
        return head is not None and header == list(head)
    if suffix in (".mp4", ".avi"):
        return tail.rstrip(b"\0").endswith(REPORT_MARK.encode())
    return suffix in (".png", ".jpg", ".jpeg", ".pdf", ".svg") and b"matplotlib" in (first + tail).lower()


def mark_video(path):
    """End a finished MP4 or AVI with REPORT_MARK, in a box or chunk that players skip (MP4's `free`,
    AVI's `JUNK`), so that the next run knows the file as its own report."""
    mark = REPORT_MARK.encode()
    mark += b"\0" * (len(mark) % 2)  # RIFF chunks have an even size
    box = struct.pack(">I4s", 8 + len(mark), b"free") if Path(path).suffix.lower() == ".mp4" else \
        struct.pack("<4sI", b"JUNK", len(mark))
    with open(path, "ab") as f:
        f.write(box + mark)


def check_name_fits(path, what):
    """The name and its temporary sibling's (atomic_path) fit the file system: found now, not after
    an epoch of training."""
    path = Path(path)
    try:
        longest = os.pathconf(existing_ancestor(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    for name in [path.name] + [d.name for d in missing_dirs(path.parent)]:
        if len(os.fsencode(name)) > longest:
            raise cli.UserError(f"the {what} {path}: the name {name[:40]}... is longer than the {longest} bytes a "
                                "file name may have here; give a shorter one")
    overhead = len(".XXXXXXXX.tmp") + len(os.fsencode(path.suffix)) + 1  # atomic_path's `.name.XXXXXXXX.tmp.suffix`
    if len(os.fsencode(path.name)) + overhead > longest:
        raise cli.UserError(f"the {what} {path}: its name is too long to be written safely (the temporary file "
                            f"beside it would exceed {longest} bytes); give a name of at most "
                            f"{longest - overhead} bytes")


STALE_SECONDS = 15 * 60  # No atomic write lasts that long, so an older temporary is an interrupted run's.


def remove_stale_temporaries(path):
    """Remove and name the temporaries that a killed run left beside `path` (kill -9, a power cut): all
    of them in a folder this process holds locked, elsewhere only old ones (another run may write the others)."""
    path = Path(path)
    stale, held = [], os.path.realpath(path.parent) in _HELD
    for p in path.parent.glob(glob.escape(f".{path.name}.") + "*" + glob.escape(f".tmp{path.suffix}")):
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink() and (held or time.time() - p.stat().st_mtime > STALE_SECONDS):
                p.unlink()
                stale.append(p.name)
    if stale:
        print(f"note: removed {len(stale)} temporary file(s) an interrupted run left beside {path}: "
              f"{', '.join(stale[:3])}{' ...' if len(stale) > 3 else ''}", file=sys.stderr)


def check_distinct(paths):
    """Refuses two outputs ({flag: path}) that are one file, even through a link."""
    seen = {}
    for flag, path in paths.items():
        key = os.path.realpath(path)
        if key in seen:
            raise cli.UserError(f"{seen[key]} and {flag} are the same file ({path}); give each its own path")
        seen[key] = flag


def check_outside(path, folders, what):
    """Refuses an output inside a folder of images this run reads (it would be trained on next time)."""
    real = Path(os.path.realpath(path))
    for folder in folders:
        inside = Path(os.path.realpath(folder))
        if real == inside or inside in real.parents:
            raise cli.UserError(f"the {what} {path} would be written inside {folder}, which holds the images; "
                            "give a path outside it")


@contextlib.contextmanager
def made_dirs(folder):
    """Make `folder` and its missing parents; if the block fails, remove those that are still empty."""
    folder = Path(folder)
    new = missing_dirs(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for d in new:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def removed_on_failure(path, unless=()):
    """An __exit__ for ExitStack.push: when the block fails while none of `unless` exists, `path` is
    removed, so a run that failed before it saved anything leaves nothing behind."""
    def exit_(kind, value, tb):
        if kind is not None and not any(os.path.lexists(p) for p in unless):
            with contextlib.suppress(OSError):
                os.unlink(path)
        return False
    return exit_


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` with the same suffix; renamed onto `path` when the
    block ends without error, removed otherwise (disk full, Ctrl-C, a bug)."""
    path = Path(path)
    # The name is chosen before the file exists, so that `finally` removes it whenever a signal comes.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}"
    with made_dirs(path.parent):
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask's usual permissions
            yield tmp
            os.replace(tmp, path)
            remove_stale_temporaries(path)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise cli.UserError(f"the disk is full (or the file too large for it) while writing {path}; "
                                "it was left as it was") from None
            raise cli.UserError(f"cannot write {path}: {cli.describe_os_error(e)}") from None
        except RuntimeError as e:  # torch.save's report of a full disk, in words that changed between versions
            if not any(words in str(e) for words in ("write", "iostream error", "unexpected pos")):
                raise
            raise cli.UserError(f"cannot write {path} (is the disk full?); it was left as it was") from None
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_csv(path, header):
    """A csv.writer with its header written, renamed onto `path` at the end (atomic_path). UTF-8 in any
    locale; a file name that is not UTF-8 is written as the bytes it is."""
    if tuple(header[:3]) not in CSV_HEADS:
        raise ValueError(f"add the CSV header {header[:3]} to files.CSV_HEADS, so that check_report knows it")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        yield writer


# ---------------------------------------------------------------- locks and copies

_HELD = set()  # The folders this process holds locked exclusively: no other run writes there.


@contextlib.contextmanager
def locked(folder, what, shared=False):
    """Hold `folder` for the block, exclusively (one writer) or shared (readers, no writer). flock on
    the folder ends with the process, whatever kills it, and leaves no file. Windows runs unlocked."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (ImportError, OSError):
        yield
        return
    key = os.path.realpath(folder)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            if not shared:
                _HELD.add(key)
        except BlockingIOError:
            raise cli.UserError(f"{folder} is in use by another run, so this one ({what}) cannot go on; wait for "
                                "the other to end, or choose another folder") from None
        except OSError:  # This file system has no locks (some network mounts).
            pass
        yield
    finally:
        _HELD.discard(key)
        os.close(fd)


def shared_images(train_paths, other_paths):
    """[(other path, train path)] for the images of other_paths that are also training images: the same
    file (a link) or the same bytes (a copy). Only files of a size found on both sides are hashed."""
    def stats(paths):
        return {p: os.stat(p) for p in paths if os.path.exists(p)}
    train, shared, by_size = stats(train_paths), [], {}
    inodes = {(st.st_dev, st.st_ino): p for p, st in train.items()}
    for p, st in train.items():
        if st.st_size:  # Empty files are alike, and unreadable anyway.
            by_size.setdefault(st.st_size, []).append(p)
    digest = functools.lru_cache(maxsize=None)(file_sha256)
    for p, st in stats(other_paths).items():
        same = inodes.get((st.st_dev, st.st_ino))
        if same is None:
            same = next((q for q in by_size.get(st.st_size, ()) if digest(q) == digest(p)), None)
        if same is not None:
            shared.append((p, same))
    return shared


def file_sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
