"""What a run reports, without PyTorch: history.csv, the predictions of a folder (Evaluation), the
per-class table, val_predictions.csv and the final report's figures; what a model trained on."""
import base64
import dataclasses
import hashlib
import os

import numpy as np

from helpers import cli, files, plots

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "val_macro_f1",
                  "val_acc_ema", "lr", "seconds", "images_per_s", "peak_mem_mb")
# The cheap reports a run writes into --output-dir; the next run replaces them.
PREDICTIONS_FIELDS = ("path", "true", "predicted", "prob", "correct")
RUN_REPORTS = ("history.csv", "curves.png", "confusion_matrix.png", "val_predictions.csv", "val_errors.png")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Every image's prediction, in the data set's order: index, true and predicted class, the
    predicted class's probability, the loss, and whether the true class is in the top five."""
    index: np.ndarray
    true: np.ndarray
    pred: np.ndarray
    prob: np.ndarray
    losses: np.ndarray
    in_top5: np.ndarray
    num_classes: int

    @property
    def loss(self):
        return float(self.losses.sum(dtype=np.float64)) / max(len(self.index), 1)

    @property
    def acc(self):
        return int((self.true == self.pred).sum()) / max(len(self.index), 1)

    @property
    def confusion(self):
        """Rows: the true class, columns: the predicted one."""
        n = self.num_classes
        return np.bincount(self.true * n + self.pred, minlength=n * n).reshape(n, n)

    def metrics(self, classes):
        return metrics(self.confusion, classes, self.in_top5)

    def score(self, select_by):
        """What "best weights" means (train.py --select-by): acc, balanced_acc or macro_f1."""
        if select_by == "acc":
            return self.acc
        m = self.metrics([str(i) for i in range(self.num_classes)])
        return m["balanced_accuracy"] if select_by == "balanced_acc" else m["macro"]["f1"]


def metrics(conf, classes, in_top5=None):
    """The per-class report of a confusion matrix (rows: true class), as scikit-learn's
    classification_report(labels=the model's classes, zero_division=0) computes it, with specificity,
    balanced accuracy and top-5 accuracy. A class with no images has no recall (None, not 0); the macro
    averages are over all the model's classes, where such a value counts as 0, and balanced accuracy
    (scikit-learn's too) is over the classes that have images."""
    conf = np.asarray(conf, dtype=np.int64)
    total = int(conf.sum())
    per_class = {}
    for i, name in enumerate(classes):
        tp, predicted, support = int(conf[i, i]), int(conf[:, i].sum()), int(conf[i].sum())
        fp, fn = predicted - tp, support - tp
        tn = total - tp - fp - fn
        per_class[name] = {
            "precision": tp / predicted if predicted else (0.0 if support else None),  # never predicted: 0
            "recall": tp / support if support else None,
            "f1": 2 * tp / (2 * tp + fp + fn) if support else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "support": support,
        }
    present = [c for c in per_class.values() if c["support"]]
    n_present = sum(c["support"] for c in present)

    def average(key, weighted):
        if not present:
            return None
        if weighted:
            return sum(c[key] * c["support"] for c in present) / n_present
        return sum(c[key] or 0.0 for c in per_class.values()) / len(per_class)

    top5 = None
    if len(classes) > 5 and in_top5 is not None:
        top5 = float(np.mean(in_top5)) if len(in_top5) else None
    return {
        "accuracy": int(np.trace(conf)) / total if total else None,
        "balanced_accuracy": sum(c["recall"] for c in present) / len(present) if present else None,
        "top5_accuracy": top5,
        "per_class": per_class,
        "macro": {k: average(k, False) for k in ("precision", "recall", "f1")},
        "weighted": {k: average(k, True) for k in ("precision", "recall", "f1")},
    }


def metrics_table(m):
    """The per-class table, then the overall numbers, as text (classification_report's layout)."""
    def cell(x, width=12):
        return f"{'-':>{width}}" if x is None else f"{x:>{width}.3f}"

    width = max([15] + [len(c) + 2 for c in m["per_class"]])
    lines = [f"{'class':<{width}}{'precision':>12}{'recall':>12}{'f1':>12}{'specificity':>12}{'images':>8}"]
    for name, c in m["per_class"].items():
        lines.append(f"{name:<{width}}{cell(c['precision'])}{cell(c['recall'])}{cell(c['f1'])}"
                     f"{cell(c['specificity'])}{c['support']:>8}")
    total = sum(c["support"] for c in m["per_class"].values())
    lines.append(f"{'accuracy':<{width}}{'':>24}{cell(m['accuracy'])}{'':>12}{total:>8}")
    lines.append(f"{'balanced acc.':<{width}}{'':>24}{cell(m['balanced_accuracy'])}")
    for key in ("macro", "weighted"):
        a = m[key]
        lines.append(f"{key + ' avg':<{width}}{cell(a['precision'])}{cell(a['recall'])}{cell(a['f1'])}")
    if m["top5_accuracy"] is not None:
        lines.append(f"{'top-5 accuracy':<{width}}{'':>24}{cell(m['top5_accuracy'])}")
    missing = [name for name, c in m["per_class"].items() if not c["support"]]
    if missing:
        lines.append(f"no images of {', '.join(missing)}: their recall is missing (-), not 0; the macro averages are "
                     f"over the model's {len(m['per_class'])} classes, where it counts as 0 (scikit-learn's labels=)")
    return "\n".join(lines)


def history_row(epoch, *, train_loss, train_acc, val, val_ema, lr, seconds, seen, peak_mem_mb):
    """One epoch's line of history.csv (and of the run's returned history)."""
    m = val.metrics([str(i) for i in range(val.num_classes)])
    row = {"epoch": epoch, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
           "val_loss": round(val.loss, 5), "val_acc": round(val.acc, 5),
           "val_balanced_acc": round(m["balanced_accuracy"] or 0.0, 5), "val_macro_f1": round(m["macro"]["f1"] or 0.0, 5),
           "lr": lr, "seconds": round(seconds, 2), "images_per_s": round(seen / max(seconds, 1e-9), 2),
           "peak_mem_mb": round(peak_mem_mb, 1)}
    if val_ema is not None:
        row["val_acc_ema"] = round(val_ema.acc, 5)
    return row


def write_history(history, path):
    with files.atomic_csv(path, HISTORY_FIELDS) as w:
        w.writerows([row.get(k, "") for k in HISTORY_FIELDS] for row in history)


def final_report(result, paths, classes, *, confusion_png, predictions_csv, errors_png, what="validation",
                 note=None):
    """The report of train.py and evaluate.py: the per-class table, the confusion matrix, a CSV of
    every prediction and the gallery of errors. paths: the image of each index. what: the images' set,
    named in the figures' titles, with the note (demo_data.figure_note) when given. Returns the metrics."""
    m = result.metrics(classes)
    print(metrics_table(m))
    plots.plot_confusion(result.confusion, classes, confusion_png, what=what, note=note)
    rows = list(zip(result.index.tolist(), result.true.tolist(), result.pred.tolist(), result.prob.tolist()))
    if predictions_csv:
        with files.atomic_csv(predictions_csv, PREDICTIONS_FIELDS) as w:
            w.writerows([paths[i], classes[t], classes[p], f"{prob:.6f}", int(t == p)] for i, t, p, prob in rows)
    errors = [(prob, paths[i], classes[t], classes[p]) for i, t, p, prob in rows if t != p]
    plots.plot_errors(sorted(errors, key=lambda e: -e[0]), errors_png, what=what, note=note)
    written = [str(p) for p in (confusion_png, predictions_csv, errors_png) if p]
    print(f"wrote {', '.join(written[:-1])} and {written[-1]} ({len(errors)} misclassified)")
    return m


# ---------------------------------------------------------------- what a model trained on

# The weights, the checkpoint and the ONNX file carry `trained_on`: a short hash of each training image's
# content, sorted, in base64 after a version. 6 bytes each: 100,000 images take 800 kB of text, and an
# image the model never saw matches one of them by chance with odds of about 1 in 3 billion.
TRAINED_ON_VERSION = "v1:"
HASH_BYTES = 6
PART = 1 << 14  # the first and the last 16 kB of a file (all of an image of up to 32 kB)


def content_hash(path):
    """6 bytes of BLAKE2b over an image's size, its first and its last 16 kB: a copy of the file,
    wherever it lives, has the same; reading a 12 MP photo whole would make train.py's start slow."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.blake2b(size.to_bytes(8, "little") + f.read(PART), digest_size=HASH_BYTES)
        if size > 2 * PART:
            f.seek(size - PART)
        h.update(f.read(PART))
    return h.digest()


def trained_on(paths):
    """The fingerprint of a train set's images (train.py), unreadable ones left out."""
    hashes = set()
    for path in paths:
        try:
            hashes.add(content_hash(path))
        except OSError:
            pass
    return TRAINED_ON_VERSION + base64.b64encode(b"".join(sorted(hashes))).decode("ascii")


def seen_in_training(fingerprint, paths, model_file):
    """The paths among `paths` whose content is in a model's `trained_on` fingerprint."""
    try:
        if not fingerprint.startswith(TRAINED_ON_VERSION):
            raise ValueError("unknown version")
        raw = base64.b64decode(fingerprint[len(TRAINED_ON_VERSION):], validate=True)
        if len(raw) % HASH_BYTES:
            raise ValueError("a partial hash")
    except (ValueError, AttributeError) as e:
        raise cli.UserError(f"{model_file} holds a damaged record of the images it trained on ({e}); use the file "
                            "that train.py or export_onnx.py wrote") from None
    known = {raw[i:i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES)}
    seen = []
    for path in paths:
        try:
            if content_hash(path) in known:
                seen.append(path)
        except OSError:
            pass  # unreadable: prediction skips and names it
    return seen
