"""The learning-rate schedules tab: pick a torch scheduler, set its parameters, see its curve and its code.

The chart is plotly through gr.Plot (Gradio ships plotly.js, so it works offline): a true log axis,
hover that reads the LR at a step, epoch boundaries when stepping per batch, and comparison curves
that keep the colour they were drawn in. Each curve is drawn from at most MAX_POINTS points
(thin_curve keeps every change of the LR and the exact extremes); /lr_curve returns every step.
"""

from __future__ import annotations

import math

import gradio as gr
import numpy as np

from trainer.config import ScheduleConfig
from trainer.formula import Formula
from trainer.schedules import (
    CATALOGUE,
    LRCurve,
    ScheduleError,
    ValLossShape,
    lr_curve,
    schedule_code,
    scheduler_info,
)
from ui.errors import USER_ERRORS, refusal, user_errors

DEFAULT_SCHEDULER = "CosineAnnealingLR"
MAX_POINTS = 4_000  # drawn per curve: finer than a chart's pixels, and quick to send and draw
HOVER_GRID = 1_000  # points always kept at even spacing, so hover finds a point wherever the mouse is
# Plotly's own palette. A curve keeps its colour when it joins the comparison; the next current
# curve takes the next colour, so no two curves on the chart share one.
COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff", "#fecb52")
MAX_COMPARED = len(COLOURS) - 1
MAX_EPOCH_LINES = 30  # epoch boundaries marked; every k-th epoch on longer runs


def thin_curve(lrs, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most about `max_points` (step, lr) points that draw like the whole curve as a step line.

    Every step where the LR changes is kept while they fit, so a staircase is exact, plus a few evenly
    spaced steps for hover to land on. Past that, the steps are cut into stretches; each keeps its
    first and last points and its lowest and highest ones, and a stretch with at most two changes
    keeps those too: the staircase parts stay exact, a smooth curve keeps its envelope, and the
    curve's minimum and maximum are always drawn. Every point kept is the LR at its step.
    """
    y = np.asarray(lrs, dtype=float)
    n = len(y)
    changes = np.flatnonzero(y[1:] != y[:-1]) + 1  # the first step at each new value
    grid = np.arange(0, n, max(1, n // HOVER_GRID))
    if len(changes) + len(grid) + 1 <= max_points:
        keep = np.unique(np.concatenate((grid, changes, [n - 1])))
        return keep, y[keep]
    width = math.ceil(n / (max_points // 6))  # six points per stretch at most
    starts = np.arange(0, n, width)
    stretches = np.pad(y, (0, len(starts) * width - n), mode="edge").reshape(len(starts), width)
    few_changes = np.bincount(changes // width, minlength=len(starts)) <= 2
    keep = np.concatenate((
        starts,
        np.minimum(starts + width, n) - 1,
        np.minimum(starts + stretches.argmin(axis=1), n - 1),
        np.minimum(starts + stretches.argmax(axis=1), n - 1),
        changes[few_changes[changes // width]],
    ))
    keep = np.unique(keep)
    return keep, y[keep]


def params_from_fields(scheduler: str, param_values: dict) -> dict:
    """The scheduler's parameters from its fields ({(scheduler, name): value}); blank fields are left out (defaults)."""
    params = {}
    for param in scheduler_info(scheduler).params:
        value = param_values.get((scheduler, param.name))
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if param.kind in ("int", "optional_int") and isinstance(value, float) and value.is_integer():
            value = int(value)
        params[param.name] = value
    return params


def schedule_from_fields(scheduler: str, lr, epochs, steps_per_epoch, warmup_epochs, step_per, param_values: dict) -> ScheduleConfig:
    """The studio's form values as a ScheduleConfig; blank parameter fields take their defaults."""
    params = params_from_fields(scheduler, param_values)
    return ScheduleConfig.from_dict({"scheduler": scheduler, "lr": lr, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                                     "params": params, "warmup_epochs": warmup_epochs, "step_per": step_per})


def loss_shape(start, level, plateau_epoch, noise, seed) -> ValLossShape:
    """The made-up validation loss from its form fields; a blank or wrong field says which."""
    return ValLossShape(_number(start, "loss start"), _number(level, "plateau level"),
                        _number(plateau_epoch, "plateaus from epoch", whole=True), _number(noise, "noise"),
                        _number(seed, "seed", whole=True))


def _number(value, name: str, whole: bool = False) -> int | float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ScheduleError(f"{name} is blank: give {'a whole number' if whole else 'a number'}")
    if not math.isfinite(float(value)):
        raise ScheduleError(f"{name} must be a finite number, got {value}")
    if whole and not float(value).is_integer():
        raise ScheduleError(f"{name} must be a whole number, got {value}")
    return int(value) if whole else float(value)


def _shown(value) -> str:
    return value.python_source() if isinstance(value, Formula) else str(value)


def describe(curve: LRCurve) -> str:
    """A legend name: the scheduler with the parameters torch requires and those not at torch's default."""
    resolved = curve.resolved
    chosen = {p.name for p in resolved.info.params
              if p.derive or p.suggest is not None or resolved.params[p.name] != resolved.info.default(p)}
    shown = ", ".join(f"{name}={_shown(v)}" for name, v in resolved.params.items() if name in chosen)
    per_batch = " per batch" if resolved.step_per == "batch" and not resolved.info.per_batch_only else ""
    warmup = f" + {resolved.config.warmup_epochs} warm-up" if resolved.config.warmup_epochs else ""
    return f"{resolved.info.name}({shown}){per_batch}{warmup}"


def drawn_curve(curve: LRCurve, colour: str) -> dict:
    """What the chart needs of a curve (thinned), kept in the page's state for the comparison."""
    steps, lrs = thin_curve(curve.lr)
    config = curve.resolved.config
    return {"label": describe(curve), "colour": colour, "steps": steps.tolist(), "lr": lrs.tolist(),
            "steps_per_epoch": config.steps_per_epoch, "epochs": config.epochs,
            "warmup_epochs": config.warmup_epochs, "per_batch": curve.step_per == "batch"}


def lr_figure(compare: list[dict], current: dict | None, log_scale: bool):
    """The chart: every compared curve in its own colour, the current one on top (grey and dashed when
    stale: the last curve drawn, while the settings now in the form cannot be drawn)."""
    import plotly.graph_objects as go  # only when a chart is drawn, so `import app` stays quick

    figure = go.Figure()
    for entry in [*compare, *([current] if current else [])]:
        is_current, stale = entry is current, entry.get("stale", False)
        prefix = ("last drawn: " if stale else "current: ") if is_current else ""
        line = {"color": "#aaa", "dash": "dash"} if stale else {"color": entry["colour"]}
        figure.add_trace(go.Scatter(
            x=entry["steps"], y=entry["lr"], mode="lines", name=prefix + entry["label"],
            line={**line, "shape": "hv", "width": 2.5 if is_current else 1.5},
            customdata=[s // entry["steps_per_epoch"] + 1 for s in entry["steps"]],
            hovertemplate="LR %{y:.4~g} (epoch %{customdata})",
        ))
    figure.update_layout(
        template="plotly_white", height=400, margin={"l": 70, "r": 20, "t": 40, "b": 40}, showlegend=True,
        hovermode="x unified", legend={"orientation": "h", "x": 0, "y": -0.18, "yanchor": "top"},
        xaxis={"title": {"text": "optimizer step"}, "rangemode": "tozero", "hoverformat": ","},
        yaxis={"title": {"text": "learning rate" + (" (log scale)" if log_scale else "")},
               "type": "log" if log_scale else "linear", "exponentformat": "e"},
    )
    if current:
        _mark_epochs(figure, current)
    return figure


def _mark_epochs(figure, current: dict) -> None:
    """Shade the warm-up; when stepping per batch, dot the epoch boundaries (named in the legend)."""
    spe, epochs = current["steps_per_epoch"], current["epochs"]
    if current["warmup_epochs"]:
        figure.add_vrect(x0=0, x1=current["warmup_epochs"] * spe, fillcolor="#888", opacity=0.12, line_width=0,
                         annotation_text="warm-up", annotation_position="top left")
    if not current["per_batch"] or spe == 1:
        return
    every = math.ceil(epochs / MAX_EPOCH_LINES)
    boundaries = list(range(every, epochs, every))
    figure.update_layout(shapes=[*figure.layout.shapes, *(
        {"type": "line", "xref": "x", "yref": "paper", "x0": e * spe, "x1": e * spe, "y0": 0, "y1": 1,
         "line": {"color": "#999", "width": 1, "dash": "dot"}, "layer": "below"} for e in boundaries)])
    figure.add_scatter(x=[None], y=[None], mode="lines", line={"color": "#999", "width": 1, "dash": "dot"},
                       name="epoch boundary" + (f" (every {every} epochs)" if every > 1 else ""), hoverinfo="skip")


def val_loss_figure(curve: LRCurve):
    """The validation loss fed to ReduceLROnPlateau, with a mark at each epoch after which it cut the LR."""
    import plotly.graph_objects as go

    spe = curve.resolved.config.steps_per_epoch
    per_epoch = curve.lr[::spe]
    epochs = list(range(1, len(curve.val_loss) + 1))
    cuts = [e for e in range(1, len(per_epoch)) if per_epoch[e] < per_epoch[e - 1]]  # epoch e (0-based) runs lower
    figure = go.Figure([
        go.Scatter(x=epochs, y=curve.val_loss, mode="lines+markers", name="validation loss", line={"color": COLOURS[0]}),
        go.Scatter(x=cuts, y=[curve.val_loss[e - 1] for e in cuts], mode="markers", name="LR reduced after this epoch",
                   marker={"color": COLOURS[1], "size": 11, "symbol": "x"}),
    ])
    figure.update_layout(template="plotly_white", height=260, margin={"l": 70, "r": 20, "t": 50, "b": 40},
                         xaxis={"title": {"text": "epoch"}}, yaxis={"title": {"text": "validation loss"}},
                         legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"})
    return figure


def step_per_help(scheduler: str, steps_per_epoch) -> str:
    """What one scheduler step is, next to the epoch/batch choice."""
    info = scheduler_info(scheduler)
    whole = isinstance(steps_per_epoch, (int, float)) and float(steps_per_epoch).is_integer()
    batches = f"{int(steps_per_epoch)} batches" if whole else "its batches"

    def named(unit: str) -> str:
        return ", ".join(p.name for p in info.params if p.unit == unit)

    if info.per_batch_only:
        return f"{info.name} always steps after every batch; counted in batches: {named('batches')} ({batches} per epoch)."
    if info.needs_metric:
        return f"{info.name} steps once per epoch, on that epoch's validation loss."
    kept = []
    if named("epochs"):
        kept.append(f"counted in epochs: {named('epochs')}")
    if named("per epoch"):
        kept.append(f"applied per epoch: {named('per epoch')}")
    if any(p.kind == "formula" for p in info.params):
        kept.append("the formula's epoch is fractional per batch")
    return (f"epoch: one scheduler step per epoch, the LR holds for the epoch's {batches}. "
            f"batch: a step after every batch, the same schedule made smooth. Either way, "
            f"{'; '.join(kept) or 'no parameter changes'}.")


def render_schedule(config: ScheduleConfig, shape: ValLossShape, compare: list[dict], log_scale: bool):
    """For one schedule: the chart, the val-loss chart (or None), the code, a message, the drawn current
    curve, and every parameter with its default filled in."""
    curve = lr_curve(config, shape.curve(config.epochs) if scheduler_info(config.scheduler).needs_metric else None)
    current = drawn_curve(curve, COLOURS[len(compare) % len(COLOURS)])
    lrs = curve.lr
    message = (f"**{len(lrs):,} optimizer steps** ({config.epochs} epochs x {config.steps_per_epoch}), "
               f"stepping per {curve.step_per}. LR from {lrs[0]:.4g} to {lrs[-1]:.4g} "
               f"(lowest {min(lrs):.4g}, highest {max(lrs):.4g}). " + " ".join(curve.notes))
    if len(lrs) > MAX_POINTS:
        message += (f" Drawn from {len(current['steps']):,} of the {len(lrs):,} points, keeping the LR's changes "
                    "where they fit and each stretch's lowest and highest; /lr_curve and the CLI give every step.")
    if log_scale and min(lrs) <= 0:
        message += " Steps where the LR is 0 cannot be drawn on a log scale."
    val_figure = val_loss_figure(curve) if curve.val_loss is not None else None
    return lr_figure(compare, current, log_scale), val_figure, schedule_code(curve), message, current, curve.resolved.params


def lr_curve_api(config: dict) -> dict:
    """API: a schedule config dict (scheduler, lr, epochs, steps_per_epoch, params, warmup_epochs, step_per,
    optional val_loss list for ReduceLROnPlateau) -> {"lr": [...]} with one value per optimizer step.

    Parameters count epochs (see trainer.config.ScheduleConfig); trainer.schedules bounds the work.
    """
    if not isinstance(config, dict):
        raise refusal("Send the schedule as a JSON object of fields (scheduler, lr, epochs, ...)")
    config = dict(config)
    val_loss = config.pop("val_loss", None)
    with user_errors():
        curve = lr_curve(ScheduleConfig.from_dict(config), val_loss)
    result = {"lr": curve.lr}
    if curve.val_loss is not None:
        result["val_loss"] = curve.val_loss
    return result


def _param_component(info, param, id_prefix: str):
    default = info.default(param)
    unit = f" ({param.unit})" if param.unit else ""
    common = {"label": f"{param.name}{unit}", "info": param.help, "elem_id": f"{id_prefix}-{info.name}-{param.name}"}
    if param.kind == "bool":
        return gr.Checkbox(value=bool(default), **common)
    if param.kind == "choice":
        return gr.Dropdown(choices=list(param.choices), value=default, **common)
    if param.kind in ("int", "float") and default is not None:
        return gr.Number(value=default, **common)
    # Blank text takes the default; a derived one shows in the placeholder, updated with the run.
    placeholder = {"ints": "[30, 80]", "formula": "0.95 ** epoch", "optional_int": "same as step_size_up"}.get(param.kind, "")
    return gr.Textbox(value="" if default is None else str(default), placeholder=placeholder, **common)


def scheduler_param_fields(selected: str, id_prefix: str = "param") -> tuple[dict, dict]:
    """Every scheduler's parameter fields, a group per scheduler (only `selected`'s visible), torch's defaults filled in.

    Returns ({scheduler: its group}, {(scheduler, parameter): its field}); `params_from_fields` reads the
    fields back. `id_prefix` starts each field's elem_id, unique per page (the fine-tune form reuses them).
    """
    groups, fields = {}, {}
    for name, info in CATALOGUE.items():
        with gr.Group(visible=name == selected) as group:
            for param in info.params:
                fields[(name, param.name)] = _param_component(info, param, id_prefix)
        groups[name] = group
    return groups, fields


def schedules_tab(current_schedule: gr.State):
    """The studio; returns the (fn, inputs, outputs) that draws it, for the page's load event."""
    gr.Markdown(
        "Pick a PyTorch LR scheduler, set its parameters, and see the learning rate at every optimizer step. "
        "The curve comes from stepping the real `torch.optim.lr_scheduler` class. Counts such as step_size "
        "and milestones are in epochs, whichever way the scheduler steps."
    )
    shape = ValLossShape()
    with gr.Row():
        with gr.Column(scale=1):
            scheduler = gr.Dropdown(list(CATALOGUE), value=DEFAULT_SCHEDULER, label="Scheduler", elem_id="sched-scheduler")
            summary = gr.Markdown(CATALOGUE[DEFAULT_SCHEDULER].summary)
            lr = gr.Number(value=0.1, label="Base LR", elem_id="sched-lr")
            with gr.Row():
                epochs = gr.Number(value=30, step=1, label="Epochs", elem_id="sched-epochs")
                steps_per_epoch = gr.Number(value=10, step=1, label="Steps (batches) per epoch", elem_id="sched-steps")
            warmup = gr.Number(value=0, step=1, label="Warm-up epochs", elem_id="sched-warmup")
            step_per = gr.Radio(["epoch", "batch"], value="epoch", label="Step the scheduler per",
                                info=step_per_help(DEFAULT_SCHEDULER, 10), elem_id="sched-step-per")
            groups, fields = scheduler_param_fields(DEFAULT_SCHEDULER)
            with gr.Accordion("Validation loss that drives ReduceLROnPlateau", visible=False) as plateau_box:
                with gr.Row():
                    loss_start = gr.Number(value=shape.start, label="loss start")
                    loss_plateau = gr.Number(value=shape.plateau, label="plateau level")
                with gr.Row():
                    plateau_epoch = gr.Number(value=shape.plateau_epoch, step=1, label="plateaus from epoch")
                    noise = gr.Number(value=shape.noise, label="noise (relative)")
                    seed = gr.Number(value=shape.seed, step=1, label="seed")
        with gr.Column(scale=2):
            message = gr.Markdown(elem_id="sched-message")
            log_scale = gr.Checkbox(value=False, label="Log scale", elem_id="sched-log")
            plot = gr.Plot(label="Learning rate per optimizer step", elem_id="sched-plot")
            val_plot = gr.Plot(label="Validation loss fed to ReduceLROnPlateau", visible=False, elem_id="sched-val-plot")
            with gr.Row():
                add = gr.Button("Add to comparison", elem_id="sched-add")
                clear = gr.Button("Clear comparison", elem_id="sched-clear")
            code = gr.Code(language="python", label="PyTorch code for this schedule", elem_id="sched-code")
    compare = gr.State([])
    current = gr.State(None)  # the drawn current curve, which "Add to comparison" keeps
    field_keys = list(fields)
    param_of = {(name, p.name): p for name, info in CATALOGUE.items() for p in info.params}
    derived = [key for key in field_keys if param_of[key].derive]

    def update(name, lr_, epochs_, steps_, warmup_, step_per_, start, level, k, noise_, seed_, log_, compare_, current_,
               *values):
        help_text = gr.update(info=step_per_help(name, steps_), interactive=not (
            CATALOGUE[name].per_batch_only or CATALOGUE[name].needs_metric))
        try:
            config = schedule_from_fields(name, lr_, epochs_, steps_, warmup_, step_per_, dict(zip(field_keys, values)))
            figure, val_figure, code_, text, drawn, params = render_schedule(
                config, loss_shape(start, level, k, noise_, seed_), compare_, log_)
        except USER_ERRORS as exc:  # the last curve drawn stays, greyed, until the form can be drawn again
            stale = {**current_, "stale": True} if current_ else None
            skipped = [gr.skip()] * (len(outputs) - 7)
            return (lr_figure(compare_, stale, log_), gr.skip(), gr.skip(), f"**Cannot draw this schedule:** {exc}",
                    help_text, gr.skip(), stale, *skipped)
        # A blank field's placeholder shows the value the run gives it now.
        placeholders = [gr.update(placeholder=f"{_shown(params[key[1]])} ({param_of[key].derived})")
                        if key[0] == name else gr.skip() for key in derived]
        val_update = gr.update(value=val_figure, visible=val_figure is not None)
        return figure, val_update, code_, text, help_text, config.to_dict(), drawn, *placeholders

    def pick(name):
        info = CATALOGUE[name]
        return [gr.update(visible=n == name) for n in groups] + [info.summary, gr.update(visible=info.needs_metric)]

    def add_current(compare_, current_, log_):
        if current_ is None:
            return compare_, current_, gr.skip()
        if len(compare_) >= MAX_COMPARED:
            gr.Warning(f"A comparison holds at most {MAX_COMPARED} curves: clear it to start another")
            return compare_, current_, gr.skip()
        compare_ = [*compare_, {**current_, "stale": False}]
        current_ = {**current_, "colour": COLOURS[len(compare_)]}
        return compare_, current_, lr_figure(compare_, current_, log_)

    def clear_compare(current_, log_):
        current_ = {**current_, "colour": COLOURS[0]} if current_ else None
        return [], current_, lr_figure([], current_, log_)

    inputs = [scheduler, lr, epochs, steps_per_epoch, warmup, step_per, loss_start, loss_plateau, plateau_epoch,
              noise, seed, log_scale, compare, current, *fields.values()]
    outputs = [plot, val_plot, code, message, step_per, current_schedule, current, *(fields[key] for key in derived)]
    scheduler.change(pick, scheduler, [*groups.values(), summary, plateau_box], queue=False)
    redraw_on = [c for c in inputs if c not in (compare, current, log_scale)]
    # One event for every field: a change while a curve is computed waits, then draws the latest values.
    gr.on([c.change for c in redraw_on], update, inputs, outputs, show_progress="full", show_progress_on=[message],
          api_visibility="private")
    log_scale.change(lambda c, cur, log_: lr_figure(c, cur, log_), [compare, current, log_scale], plot,
                     api_visibility="private")
    add.click(add_current, [compare, current, log_scale], [compare, current, plot], api_visibility="private")
    clear.click(clear_compare, [current, log_scale], [compare, current, plot], api_visibility="private")
    return update, inputs, outputs
