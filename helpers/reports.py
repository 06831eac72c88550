"""What a training run writes about itself, without PyTorch: the history row of each epoch and
history.csv, the predictions of a folder of images (Evaluation), the per-class table,
val_predictions.csv, and the figures of the final report (confusion matrix, error gallery)."""
import dataclasses
from pathlib import Path

import numpy as np

from helpers import files, plots

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_acc_ema", "lr", "seconds",
                  "images_per_s", "peak_mem_mb")
# What a run writes into --output-dir: cheap reports, replaced by the next run.
RUN_REPORTS = ("history.csv", "curves.png", "confusion_matrix.png", "val_predictions.csv", "val_errors.png")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Every image's prediction, in the data set's order: its index in the data set, its true and
    predicted class, the predicted class's probability and the image's loss."""
    index: np.ndarray
    true: np.ndarray
    pred: np.ndarray
    prob: np.ndarray
    losses: np.ndarray
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


def history_row(epoch, *, train_loss, train_acc, val, val_ema, lr, seconds, seen, peak_mem_mb):
    """One epoch's line of history.csv (and of the run's returned history)."""
    row = {"epoch": epoch, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
           "val_loss": round(val.loss, 5), "val_acc": round(val.acc, 5), "lr": lr, "seconds": round(seconds, 2),
           "images_per_s": round(seen / max(seconds, 1e-9), 2), "peak_mem_mb": round(peak_mem_mb, 1)}
    if val_ema is not None:
        row["val_acc_ema"] = round(val_ema.acc, 5)
    return row


def write_history(history, path):
    with files.atomic_csv(path, HISTORY_FIELDS) as w:
        w.writerows([row.get(k, "") for k in HISTORY_FIELDS] for row in history)


def class_report(conf, classes):
    """Per-class precision, recall and (one-vs-rest) accuracy, as a printable table."""
    conf = np.asarray(conf)
    total = int(conf.sum())
    lines = [f"{'class':<15}{'precision':>10}{'recall':>10}{'accuracy':>10}{'images':>8}"]
    for i, name in enumerate(classes):
        tp = int(conf[i, i])
        predicted, actual = int(conf[:, i].sum()), int(conf[i].sum())
        tn = total - predicted - actual + tp
        lines.append(f"{name:<15}{tp / max(predicted, 1):>10.3f}{tp / max(actual, 1):>10.3f}"
                     f"{(tp + tn) / max(total, 1):>10.3f}{actual:>8}")
    lines.append(f"{'overall':<15}{'':>20}{int(conf.trace()) / max(total, 1):>10.3f}{total:>8}")
    return "\n".join(lines)


def final_report(result, samples, classes, out_dir):
    """The per-class table, confusion_matrix.png, val_predictions.csv and val_errors.png.
    samples: the data set's (path, class) list, which result.index points into."""
    out_dir = Path(out_dir)
    print(class_report(result.confusion, classes))
    plots.plot_confusion(result.confusion, classes, out_dir / "confusion_matrix.png")
    rows = list(zip(result.index.tolist(), result.true.tolist(), result.pred.tolist(), result.prob.tolist()))
    with files.atomic_csv(out_dir / "val_predictions.csv", ["path", "true", "predicted", "prob", "correct"]) as w:
        w.writerows([samples[i][0], classes[t], classes[p], f"{prob:.6f}", int(t == p)] for i, t, p, prob in rows)
    errors = [(prob, samples[i][0], classes[t], classes[p]) for i, t, p, prob in rows if t != p]
    plots.plot_errors(sorted(errors, key=lambda e: -e[0]), out_dir / "val_errors.png")
    print(f"wrote {out_dir / 'confusion_matrix.png'}, {out_dir / 'val_predictions.csv'} and "
          f"{out_dir / 'val_errors.png'} ({len(errors)} misclassified)")
