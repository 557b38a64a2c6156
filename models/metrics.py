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


def confusion_figure(panels: list[tuple[str, list[list[int]]]], labels: list[str]):
    """A matplotlib figure of one or more confusion matrices [(title, matrix)]: rows true, columns predicted.

    Built without pyplot (no global state, safe in worker threads); the UI shows it, the Hub gets a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    side = min(14.0, max(4.0, 0.45 * n + 2.5))
    figure = Figure(figsize=(side * max(1, len(panels)), side), layout="constrained")
    FigureCanvasAgg(figure)
    font = max(5, min(10, int(120 / max(n, 1))))
    for index, (title, matrix) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        matrix = np.asarray(matrix)
        axes.imshow(matrix, cmap="Blues")
        peak = matrix.max(initial=0) or 1
        if n <= 30:  # numbers in the cells stay readable up to about this many classes
            for (row, col), count in np.ndenumerate(matrix):
                colour = "white" if count > peak / 2 else "black"
                axes.text(col, row, str(int(count)), ha="center", va="center", color=colour, fontsize=font)
        # Slanted column labels do not run into each other, whatever their length.
        slant = n > 4 or max(map(len, labels), default=0) > 6
        axes.set_xticks(range(n), labels, rotation=40 if slant else 0, ha="right" if slant else "center",
                        rotation_mode="anchor", fontsize=font)
        axes.set_yticks(range(n), labels, fontsize=font)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{title} ({int(matrix.sum())} photos)")
    return figure
