"""A comparison drawn: overlaid curves, the LR each run used, confusion matrices side by side, the tables,
and the whole of it as one self-contained HTML file.

The figures are plotly's (the page shows them in gr.Plot; the report embeds plotly.js once, so it
opens offline); the tables are pandas frames (gr.Dataframe on the page, HTML in the report). One
colour per run everywhere: training dashed, validation solid.
"""

from __future__ import annotations

import html
import time

import pandas as pd

from trainer.compare import Comparison

COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")
PERCENT = {"val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1"}


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def base_figure(title: str, x_title: str, y_title: str, height: int = 320):
    """An empty chart in the app's style (a run's results and a comparison look alike)."""
    import plotly.graph_objects as go  # only when a chart is drawn, so importing the app stays quick

    figure = go.Figure()
    figure.update_layout(title={"text": title, "x": 0.02}, template="plotly_white", height=height,
                         margin={"l": 60, "r": 16, "t": 44, "b": 40}, hovermode="x unified",
                         legend={"orientation": "h", "y": -0.22})
    figure.update_xaxes(title=x_title)
    figure.update_yaxes(title=y_title)
    return figure


def curves_figure(comparison: Comparison, metric: str):
    """Training (dashed) and validation (solid) loss or accuracy per epoch, one colour per run."""
    import plotly.graph_objects as go

    accuracy = metric == "accuracy"
    figure = base_figure("Accuracy per epoch" if accuracy else "Loss per epoch", "epoch", metric)
    key = "acc" if accuracy else "loss"
    for index, run in enumerate(comparison.runs):
        epochs = [row["epoch"] for row in run.history]
        for split, dash in (("train", "dash"), ("val", "solid")):
            figure.add_trace(go.Scatter(
                x=epochs, y=[row[f"{split}_{key}"] for row in run.history], mode="lines+markers",
                name=f"{run.name} ({'validation' if split == 'val' else 'training'})", legendgroup=run.name,
                line={"color": colour(index), "dash": dash}, marker={"size": 5}))
    if accuracy:
        figure.update_yaxes(tickformat=".0%", range=[0, 1.02])
    else:
        figure.update_yaxes(tickformat=".3g", rangemode="tozero")
    figure.update_xaxes(tick0=1, dtick=max(1, max((len(r.history) for r in comparison.runs), default=1) // 10))
    return figure


def lr_figure(comparison: Comparison):
    """The head's LR at every optimizer step each run actually used, against epochs, on a log axis."""
    import plotly.graph_objects as go

    figure = base_figure("Learning rate used (head)", "epoch", "learning rate")
    for index, run in enumerate(comparison.runs):
        xs, ys = [], []
        for row in run.history:
            steps = row.get("lr") or []
            xs += [row["epoch"] - 1 + step / len(steps) for step in range(len(steps))]
            ys += steps
        if ys:  # the last step's LR holds to the end of its epoch
            xs.append(run.history[-1]["epoch"])
            ys.append(ys[-1])
        figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=run.name, line={"color": colour(index), "shape": "hv"}))
    figure.update_yaxes(type="log", exponentformat="e")
    return figure


def confusion_figure(comparison: Comparison):
    """Each run's validation confusion matrix, side by side (rows true class, columns predicted)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    runs = comparison.runs
    figure = make_subplots(rows=1, cols=len(runs), subplot_titles=[run.name for run in runs], horizontal_spacing=0.08)
    for index, run in enumerate(runs, start=1):
        matrix = (run.metrics.get("val") or {}).get("confusion_matrix") or []
        figure.add_trace(go.Heatmap(z=matrix, x=run.labels, y=run.labels, colorscale="Blues", showscale=False,
                                    text=matrix, texttemplate="%{text}", hovertemplate="true %{y}<br>predicted %{x}"
                                    "<br>%{z} photos<extra>" + html.escape(run.name) + "</extra>"), row=1, col=index)
        figure.update_yaxes(autorange="reversed", row=1, col=index)
        figure.update_xaxes(title="predicted", row=1, col=index)
    figure.update_yaxes(title="true", row=1, col=1)
    longest = max((len(label) for run in runs for label in run.labels), default=4)
    side = max(260, 40 * max(len(run.labels) for run in runs) + 6 * longest + 80)
    figure.update_layout(template="plotly_white", height=side, margin={"l": 60 + 5 * longest, "r": 16, "t": 50, "b": 60},
                         title={"text": "Confusion matrices (validation)", "x": 0.02})
    return figure


def figures(comparison: Comparison) -> dict:
    """Every figure of a comparison by name: loss, accuracy, lr, confusion."""
    return {"loss": curves_figure(comparison, "loss"), "accuracy": curves_figure(comparison, "accuracy"),
            "lr": lr_figure(comparison), "confusion": confusion_figure(comparison)}


# ---------------------------------------------------------------- tables


def _cell(key: str, value, delta) -> str:
    """A figure as the tables show it, its difference from the first run after it (accuracy and F1 in points)."""
    if value is None:
        return "–"
    if key in PERCENT:
        text, change = f"{value:.1%}", delta is not None and f"{delta * 100:+.1f} pt"
    elif key == "val_loss":
        text, change = f"{value:.4f}", delta is not None and f"{delta:+.4f}"
    else:
        text, change = f"{value:g}" if isinstance(value, float) else str(value), delta is not None and f"{delta:+g}"
    return f"{text} ({change})" if change else text


def metrics_frame(comparison: Comparison) -> pd.DataFrame:
    """Final figures, one column per run; after the first, each value with its difference from the first run."""
    rows = []
    for row in comparison.metrics():
        cells = {"metric": row["metric"]}
        for run, value, delta in zip(comparison.runs, row["values"], row["deltas"]):
            cells[run.name] = _cell(row["key"], value, delta)
        rows.append(cells)
    return pd.DataFrame(rows)


def setting_words(name: str) -> str:
    """A setting as the form labels it ("Head LR multiplier"); a scheduler parameter by its torch name."""
    from trainer.config import config_fields

    if name.startswith("param "):
        return f"{name.removeprefix('param ')} (scheduler parameter)"
    labels = {f.name: f.metadata.get("label") for f in config_fields()}
    return labels.get(name) or {"photos": "Photos", "classes": "Classes"}.get(name, name)


def settings_frame(comparison: Comparison) -> pd.DataFrame:
    """Only the settings that differ, one column per run."""
    rows = [{"setting": setting_words(row["setting"]), **{run.name: "–" if value is None else str(value)
                                           for run, value in zip(comparison.runs, row["values"])}}
            for row in comparison.settings()]
    return pd.DataFrame(rows, columns=["setting", *comparison.names])


def f1_frame(comparison: Comparison) -> pd.DataFrame:
    """Validation F1 per class, one column per run, each after the first with its change."""
    rows = []
    for row in comparison.per_class_f1():
        cells = {"class": row["class"]}
        for run, value, delta in zip(comparison.runs, row["values"], row["deltas"]):
            cells[run.name] = _cell("val_macro_f1", value, delta)
        rows.append(cells)
    return pd.DataFrame(rows, columns=["class", *comparison.names])


def summary_markdown(comparison: Comparison) -> str:
    """The lines above the comparison: which runs, whether the comparison is fair, the experiment's question."""
    from trainer.experiment import KINDS

    data = comparison.data()
    flag = "" if data["same"] else "**Not like for like.** " if data["same"] is False else "**Unknown data.** "
    lines = [f"Comparing {len(comparison.runs)} runs: " + ", ".join(f"**{html.escape(n)}**" for n in comparison.names) + ".",
             flag + html.escape(data["note"])]
    kinds = {(run.experiment or {}).get("kind") for run in comparison.runs}
    if len(kinds) == 1 and (kind := kinds.pop()) in KINDS:
        lines.append(f"Experiment: {KINDS[kind].title} ({KINDS[kind].question}).")
    return "\n\n".join(lines)


# ---------------------------------------------------------------- the report


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; }
th { background: #f5f5f7; }
.flag { background: #fff4e5; border-left: 4px solid #ffa15a; padding: 0.5em 0.8em; }
.fair { background: #eefaf4; border-left: 4px solid #00cc96; padding: 0.5em 0.8em; }
pre { background: #f5f5f7; padding: 0.7em; overflow-x: auto; font-size: 0.85em; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; margin-right: 0.3em; }
"""


def html_report(comparison: Comparison) -> str:
    """The comparison as one HTML file: figures (plotly.js embedded once), tables and the commands that reproduce each run."""
    from plotly.offline import get_plotlyjs

    from trainer.experiment import KINDS

    data = comparison.data()
    runs = "".join(f'<li><span class="swatch" style="background:{colour(i)}"></span><b>{html.escape(run.name)}</b>'
                   f" <small>({html.escape(run.path.name)})</small></li>" for i, run in enumerate(comparison.runs))
    kinds = {(run.experiment or {}).get("kind") for run in comparison.runs}
    kind = kinds.pop() if len(kinds) == 1 else None
    question = f"<p>Experiment: {html.escape(KINDS[kind].title)}: {html.escape(KINDS[kind].question)}.</p>" if kind in KINDS else ""
    charts = "".join(
        f"<div class='figure'>{figure.to_html(full_html=False, include_plotlyjs=False, div_id=f'figure-{name}')}</div>"
        for name, figure in figures(comparison).items())
    commands = "".join(f"<h3>{html.escape(run.name)}</h3><pre>{html.escape(run.command())}</pre>" for run in comparison.runs)
    settings = settings_frame(comparison)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Comparison: {html.escape(' vs '.join(comparison.names))}</title>
<style>{_STYLE}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body>
<h1>Transfer Studio: {html.escape(' vs '.join(comparison.names))}</h1>
<p><small>Written {time.strftime('%Y-%m-%d %H:%M')} by Transfer Studio.</small></p>
{question}<ul>{runs}</ul>
<p class="{'fair' if data['same'] else 'flag'}">{html.escape(data['note'])}</p>
<h2>Final metrics</h2>
<p>Differences are from the first run ({html.escape(comparison.names[0])}); accuracy and F1 differences in percentage points.</p>
{metrics_frame(comparison).to_html(index=False, escape=True)}
<h2>Curves</h2>
{charts}
<h2>Settings that differ</h2>
{settings.to_html(index=False, escape=True) if len(settings) else '<p>None: the runs differ only by chance.</p>'}
<h2>F1 per class (validation)</h2>
{f1_frame(comparison).to_html(index=False, escape=True)}
<h2>Reproduce each run</h2>
{commands}
</body></html>
"""
