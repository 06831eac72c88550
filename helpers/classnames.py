"""The class names: the tutorial's class_indices.json, the labels.txt beside an ONNX file, and the
checks every class name passes, wherever it comes from."""
import codecs
import contextlib
import json
import os
import sys
import unicodedata
from pathlib import Path

from helpers import cli, files

# Where train.py writes the class names and the prediction scripts read them, as in the tutorial.
CLASS_INDICES = "./class_indices.json"


def class_indices_bytes(classes):
    """The tutorial's class_indices.json: {"0": "daisy", ...}, indent 4."""
    return json.dumps({str(i): c for i, c in enumerate(classes)}, indent=4).encode()


# A class name is a folder's name: 255 characters at most on every file system. Longer ones are refused
# (a class file or ONNX metadata made by hand): every figure, line and frame that shows one draws each of
# its characters, and matplotlib took seconds per 100,000, deaf to Ctrl-C and SIGTERM meanwhile.
MAX_CLASS_NAME = 255


def check_class_names(names, where):
    """Class names must be non-empty UTF-8 text on one line (lines of labels.txt, keys of JSON), at most
    MAX_CLASS_NAME characters, and no two may read the same (two Unicode forms, or spaces at their ends)."""
    bad = [c for c in names if not isinstance(c, str) or not c.strip() or any(ch in c for ch in "\n\r\t\x00")]
    if bad:
        raise cli.UserError(f"{where}: class names must be non-empty strings on one line, found {bad[0]!r}")
    # Control and format characters (an ESC sequence, a bidi override) would act on the terminal when
    # printed; only the joiners that Persian, Indic scripts and emoji need are kept.
    hidden = [c for c in names if any(unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\u200c\u200d" for ch in c)]
    if hidden:
        raise cli.UserError(f"{where}: the class name {hidden[0]!r} holds control or text-direction characters; "
                            "rename it")
    long = [c for c in names if len(c) > MAX_CLASS_NAME]
    if long:
        raise cli.UserError(f"{where}: a class name of {len(long[0])} characters ({long[0][:20]!r}...), more than "
                            f"the {MAX_CLASS_NAME} a folder's name may have")
    locale = codecs.lookup(sys.getfilesystemencoding()).name
    for c in names:
        # Outside Python's UTF-8 mode, a non-UTF-8 locale reads a UTF-8 folder name as other characters.
        with contextlib.suppress(UnicodeError):
            if locale != "utf-8" and c.encode(locale, "surrogateescape").decode("utf-8") != c:
                raise cli.UserError(f"{where}: the class name {os.fsencode(c).decode('utf-8')!r} is UTF-8, but this "
                                    f"locale reads file names as {locale}; run with PYTHONUTF8=1 or in a UTF-8 locale")
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:
            raise cli.UserError(f"{where}: the class name {os.fsencode(c)!r} is not valid UTF-8 text (a name from "
                                "an old zip or a network share?); rename the folder") from None
    seen = {}
    for c in names:
        key = unicodedata.normalize("NFC", c).strip()
        if key in seen:
            how = "are the same name, twice" if seen[key] == c else \
                "differ only by spaces at their ends" if seen[key].strip() == c.strip() else \
                "differ only in their Unicode form (NFC and NFD)"
            raise cli.UserError(f"{where}: the class names {seen[key]!r} and {c!r} {how}: they look like one class; "
                                "rename or merge the folders")
        seen[key] = c
    return names


def read_class_indices(path, given=False):
    """The class names, in index order, from class_indices.json. given: the path is --class-indices's."""
    files.need_file(path, "class-index file", "check the path given to --class-indices" if given else
              "train.py writes it; pass --class-indices to point at it")
    try:
        mapping = json.loads(Path(path).read_text(encoding="utf-8"))
        classes = [mapping[str(i)] for i in range(len(mapping))]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:
        raise cli.UserError(f"{path} is not a class-index file like {{\"0\": \"daisy\", ...}}: {e}") from None
    if not classes:
        raise cli.UserError(f"{path} lists no classes")
    return check_class_names(classes, str(path))


def read_labels(path):
    """Class names from the labels.txt written beside an ONNX file, one per line."""
    try:
        classes = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise cli.UserError(f"cannot read labels file {path}: {e}") from None
    if not classes:
        raise cli.UserError(f"{path} lists no classes")
    return check_class_names(classes, str(path))
