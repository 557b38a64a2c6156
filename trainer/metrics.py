"""Classification metrics from predictions: accuracy, loss, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

import numpy as np


def classification_report(targets, predictions, labels: list[str], loss: float | None = None) -> dict:
    """Everything the UI, metrics.json and the model card show for one split."""
    targets = np.asarray(targets, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)  # rows: true class, columns: predicted class
    np.add.at(confusion, (targets, predictions), 1)
    true_pos = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    support = confusion.sum(axis=1).astype(float)
    precision = np.divide(true_pos, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros(n), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    return {
        "accuracy": float(true_pos.sum() / max(len(targets), 1)),
        "loss": None if loss is None else float(loss),
        "count": int(len(targets)),
        "per_class": [
            {"label": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        ],
        "macro_f1": float(f1.mean()) if n else 0.0,
        "confusion_matrix": confusion.tolist(),
    }


def confusion_figure(matrix, labels: list[str], title: str = "Confusion matrix"):
    """A matplotlib figure of the confusion matrix (rows: true class, columns: predicted), counts in cells."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and Spaces
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    size = 2.0 + 0.6 * len(labels)
    figure = Figure(figsize=(size + 1, size))
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        axes.text(col, row, int(count), ha="center", va="center", color="white" if count > threshold else "black")
    figure.tight_layout()
    return figure
