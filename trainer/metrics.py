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
