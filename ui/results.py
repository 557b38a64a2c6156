"""What a training produced, as a person reads it: the epoch table, the loss, accuracy and LR charts, the
metrics, per-class figures, the confusion matrix, the most confident mistakes, and the LR finder's curve.

Built from plain records (history.json rows, metrics.json, predictions.json), so a live run and a run
reopened from its folder look the same. Charts are plotly figures for gr.Plot (Gradio ships plotly.js).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.metrics import confusion_figure
from models.run_folder import RunFolder
from trainer.compare_report import base_figure
from trainer.config import RunConfig
from trainer.lr_finder import LRFinderResult
from trainer.task import planned_head_lr
from trainer.train import STOPPED_WORDS, EpochStats, FitResult

TRAIN, VAL, PLANNED, USED = "#636efa", "#ef553b", "#b0b0b0", "#00cc96"
HEIGHT = 280  # a run's charts sit three in a row
MISTAKES_SHOWN = 24


def _rows(history: list[EpochStats | dict]) -> list[dict]:
    return [vars(h) if isinstance(h, EpochStats) else h for h in history]


def epoch_table(history: list[EpochStats | dict]) -> pd.DataFrame:
    """One row per epoch, numbers rounded as people read them; the LR is the head's at the epoch's start."""
    return pd.DataFrame([{
        "epoch": row["epoch"], "phase": row["phase"],
        "train loss": f"{row['train_loss']:.4f}", "train acc": f"{row['train_acc']:.1%}",
        "val loss": f"{row['val_loss']:.4f}", "val acc": f"{row['val_acc']:.1%}",
        "lr": f"{row['lr'][0]:.3g}" if row["lr"] else "", "seconds": f"{row['seconds']:.1f}",
    } for row in _rows(history)])


def curves_figure(history: list[EpochStats | dict], metric: str):
    """Train (dashed) and validation (solid) loss or accuracy per epoch, with markers so one epoch shows."""
    import plotly.graph_objects as go

    rows = _rows(history)
    epochs = [row["epoch"] for row in rows]
    accuracy = metric == "accuracy"
    figure = base_figure("Accuracy" if accuracy else "Loss", "epoch", metric, HEIGHT)
    for split, colour, dash in (("train", TRAIN, "dash"), ("val", VAL, "solid")):
        values = [row[f"{split}_{'acc' if accuracy else 'loss'}"] for row in rows]
        figure.add_trace(go.Scatter(x=epochs, y=values, name="validation" if split == "val" else split,
                                    mode="lines+markers", line={"color": colour, "dash": dash}))
    figure.update_xaxes(tickmode="linear", tick0=1, dtick=max(1, len(epochs) // 10), range=[0.5, max(epochs, default=1) + 0.5])
    if accuracy:
        figure.update_yaxes(tickformat=".0%", range=[0, 1.02])
    else:
        figure.update_yaxes(tickformat=".3g", rangemode="tozero")
    return figure


def lr_figure(planned: list[float] | None, used: list[float], steps_per_epoch: int | None = None):
    """The head's LR at every optimizer step: the plan as a wide grey band, what was used drawn over it."""
    import plotly.graph_objects as go

    figure = base_figure("Head LR: used over planned", "optimizer step", "learning rate", HEIGHT)
    if planned:
        figure.add_trace(go.Scatter(x=list(range(len(planned))), y=planned, name="planned", mode="lines",
                                    line={"color": PLANNED, "width": 7, "shape": "hv"}, opacity=0.6))
    figure.add_trace(go.Scatter(x=list(range(len(used))), y=used, name="used", mode="lines",
                                line={"color": USED, "width": 2, "shape": "hv"}))
    if steps_per_epoch and steps_per_epoch > 1:
        for epoch in range(1, len(used) // steps_per_epoch + 1):
            figure.add_vline(x=epoch * steps_per_epoch, line={"color": "#dddddd", "width": 1, "dash": "dot"})
    # From zero, so a constant LR sits inside the chart instead of at the middle of an arbitrary range.
    top = max([*(planned or []), *used], default=0) or 1.0
    figure.update_yaxes(tickformat=".2g", exponentformat="e", range=[0, top * 1.15])
    return figure


def epoch_update(history: list[EpochStats | dict], planned: list[float] | None) -> dict:
    """The live outputs after an epoch: the table and the three charts."""
    rows = _rows(history)
    used = [lr for row in rows for lr in row["lr"]]
    return {
        "epoch_table": epoch_table(rows),
        "loss_plot": curves_figure(rows, "loss"),
        "acc_plot": curves_figure(rows, "accuracy"),
        "lr_plot": lr_figure(planned, used, len(rows[0]["lr"]) if rows else None),
    }


def metrics_markdown(metrics: dict) -> str:
    """The final figures in words, the honest caveats included."""
    val = metrics["val"]
    lines = [f"**Validation accuracy {val['accuracy']:.1%}** (loss {val['loss']:.4f}, {val['count']} photos), "
             f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}."]
    if metrics.get("test"):
        test = metrics["test"]
        lines.append(f"**Test accuracy {test['accuracy']:.1%}** ({test['count']} photos, never used for selection).")
    if metrics.get("stopped"):
        ended = STOPPED_WORDS.get(metrics["stopped"], metrics["stopped"])
        lines.append(f"{ended[0].upper()}{ended[1:]}: the best model so far was kept.")
    export = metrics.get("export") or {}
    fp32 = (export.get("variants") or {}).get("fp32")
    if fp32:
        lines.append(f"ONNX export: max logit difference {fp32['max_abs_logit_diff']:.1e}, "
                     f"top-1 agreement {fp32['top1_agreement']:.1%}{'' if fp32['passed'] else ' (FAILED its check)'}.")
    elif export.get("error"):
        lines.append(f"ONNX export failed: {export['error']}")
    if metrics.get("note"):
        lines.append(f"_{metrics['note']}_")
    return "\n\n".join(lines)


def per_class_frame(split_metrics: dict) -> pd.DataFrame:
    return pd.DataFrame([{
        "class": row["label"], "precision": f"{row['precision']:.1%}", "recall": f"{row['recall']:.1%}",
        "F1": f"{row['f1']:.1%}", "photos": row["support"],
    } for row in split_metrics["per_class"]])


def mistakes(predictions: list, labels: list[str], photo_root: Path, limit: int = MISTAKES_SHOWN) -> list[tuple[str, str]]:
    """The most confident wrong validation predictions (the instructive ones), captioned true label first."""
    wrong = sorted((p for p in predictions if p[1] != p[2]), key=lambda p: -p[3])
    return [(str(photo_root / rel), f"true {labels[true]}, predicted {labels[pred]} {conf:.0%}")
            for rel, true, pred, conf in wrong[:limit] if (photo_root / rel).is_file()]


def _final(metrics: dict, labels: list[str], predictions: dict, photo_root: Path) -> dict:
    return {
        "metrics": metrics_markdown(metrics),
        "per_class": per_class_frame(metrics["val"]),
        "confusion": confusion_figure([("Validation", metrics["val"]["confusion_matrix"])], labels),
        "misclassified": mistakes(predictions.get("val", []), labels, photo_root),
    }


def final_update(result: FitResult, photo_root: Path) -> dict:
    """The outputs once a training has finished: metrics, per class, confusion matrix, mistakes."""
    return _final(result.metrics, result.labels, result.predictions, photo_root)


def run_update(run_dir: Path) -> dict:
    """Every result output of a finished run, read back from its folder."""
    run = RunFolder(run_dir)
    config = RunConfig.from_record(run.read_config())
    history = run.read_history()
    steps = len(history[0]["lr"]) if history and history[0]["lr"] else None
    planned = planned_head_lr(config.train, steps) if steps else None
    report = run.read_data_report()
    photo_root = run.photo_root(report) if report else run.data_dir
    return {**epoch_update(history, planned),
            **_final(run.read_metrics(), config.labels, run.read_predictions(), photo_root)}


def finder_update(result: LRFinderResult):
    """(the smoothed loss against the LR on a log axis with the suggestion marked, the words under it)."""
    import plotly.graph_objects as go

    figure = base_figure("LR finder: smoothed loss against the learning rate", "learning rate", "smoothed loss", HEIGHT)
    figure.add_trace(go.Scatter(x=result.lr, y=result.loss, name="loss", mode="lines", line={"color": TRAIN}))
    suggested_loss = result.loss[min(range(len(result.lr)), key=lambda i: abs(result.lr[i] - result.suggested_lr))]
    figure.add_trace(go.Scatter(x=[result.suggested_lr], y=[suggested_loss], mode="markers+text",
                                name="suggested", text=[f"{result.suggested_lr:.1e}"], textposition="top center",
                                marker={"color": VAL, "size": 12, "symbol": "diamond"}))
    figure.update_xaxes(type="log", exponentformat="e")
    figure.update_layout(hovermode="closest")
    swept = f"Swept {len(result.lr)} steps from {result.lr[0]:.0e} to {result.lr[-1]:.0e}."
    if not result.clear:
        text = (f"**No clear answer:** the loss hardly fell anywhere in the sweep, so {result.suggested_lr:.1e} is a "
                f"guess. Check the photos and labels, try another strategy, or keep the current LR. {swept}")
    else:
        text = f"**Suggested LR: {result.suggested_lr:.2e}** ({result.rule}). {swept}"
    return figure, text
