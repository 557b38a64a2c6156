"""The learning-rate schedules tab: pick a torch scheduler, set its parameters, see its curve and its code."""

from __future__ import annotations

import math

import gradio as gr
import pandas as pd

from trainer.config import ScheduleConfig
from trainer.schedules import CATALOGUE, ScheduleError, ValLossShape, lr_curve, schedule_code, scheduler_info

DEFAULT_SCHEDULER = "CosineAnnealingLR"


def schedule_from_fields(scheduler: str, lr, epochs, steps_per_epoch, warmup_epochs, step_per, param_values: dict) -> ScheduleConfig:
    """The studio's form values as a ScheduleConfig; blank parameter fields take their defaults."""
    params = {}
    for param in scheduler_info(scheduler).params:
        value = param_values.get((scheduler, param.name))
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if param.kind in ("int", "optional_int") and isinstance(value, float) and value.is_integer():
            value = int(value)
        params[param.name] = value
    return ScheduleConfig.from_dict({"scheduler": scheduler, "lr": lr, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                                     "params": params, "warmup_epochs": warmup_epochs or 0, "step_per": step_per})


def _whole(value, name: str) -> int:
    if value is None or float(value) != int(value):
        raise ScheduleError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def curve_frame(curves: list[tuple[str, list[float]]], log_scale: bool) -> pd.DataFrame:
    """Long-form table (step, lr, schedule) for gr.LinePlot; log scale plots log10(lr)."""
    rows = []
    for name, lrs in curves:
        for step, value in enumerate(lrs):
            y = math.log10(value) if log_scale else value
            if log_scale and value <= 0:
                continue
            rows.append((step, y, name))
    return pd.DataFrame(rows, columns=["step", "lr", "schedule"])


def describe(config: ScheduleConfig) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in config.params.items())
    warmup = f" + {config.warmup_epochs} warm-up" if config.warmup_epochs else ""
    return f"{config.scheduler}({shown}){warmup}"


def render_schedule(config: ScheduleConfig, shape: ValLossShape, compare: list[dict], log_scale: bool):
    """Curve plot data, val-loss plot data, code, a message, and the current curve, for one schedule."""
    curve = lr_curve(config, shape.curve(config.epochs) if scheduler_info(config.scheduler).needs_metric else None)
    curves = [(c["label"], c["lr"]) for c in compare] + [(f"current: {describe(config)}", curve.lr)]
    val_loss = None
    if curve.val_loss is not None:
        val_loss = pd.DataFrame({"epoch": range(1, len(curve.val_loss) + 1), "val_loss": curve.val_loss})
    steps = len(curve.lr)
    message = f"{steps:,} optimizer steps ({config.epochs} epochs x {config.steps_per_epoch}), stepping per {curve.step_per}. "
    message += f"LR from {curve.lr[0]:.4g} to {curve.lr[-1]:.4g} (max {max(curve.lr):.4g}). " + " ".join(curve.notes)
    return curve_frame(curves, log_scale), val_loss, schedule_code(config, curve.val_loss), message, curve.lr


def lr_curve_api(config: dict) -> dict:
    """API: a schedule config dict (scheduler, lr, epochs, steps_per_epoch, params, warmup_epochs, step_per,
    optional val_loss list for ReduceLROnPlateau) -> {"lr": [...]} with one value per optimizer step."""
    if not isinstance(config, dict):
        raise gr.Error("Send the schedule as a JSON object of fields (scheduler, lr, epochs, ...)")
    config = dict(config)
    val_loss = config.pop("val_loss", None)
    try:
        curve = lr_curve(ScheduleConfig.from_dict(config), val_loss)
    except (ScheduleError, ValueError, TypeError) as exc:
        raise gr.Error(str(exc)) from None
    result = {"lr": curve.lr}
    if curve.val_loss is not None:
        result["val_loss"] = curve.val_loss
    return result


def _param_component(info, param):
    default = info.default(param)
    label = f"{param.name}" + ("" if default is not None else " (blank: derived from the run)")
    common = {"label": label, "info": param.help, "elem_id": f"param-{info.name}-{param.name}"}
    if param.kind == "bool":
        return gr.Checkbox(value=bool(default), **common)
    if param.kind == "choice":
        return gr.Dropdown(choices=list(param.choices), value=default, **common)
    if param.kind in ("int", "float") and default is not None:
        return gr.Number(value=default, **common)
    placeholder = {"ints": "[30, 80]", "formula": "0.95 ** epoch"}.get(param.kind, "")
    return gr.Textbox(value="" if default is None else str(default), placeholder=placeholder, **common)


def schedules_tab(current_schedule: gr.State):
    """The studio; returns the (fn, inputs, outputs) that draws it, for the page's load event."""
    gr.Markdown(
        "Pick a PyTorch LR scheduler, set its parameters, and see the learning rate at every optimizer step. "
        "The curve comes from stepping the real `torch.optim.lr_scheduler` class."
    )
    with gr.Row():
        with gr.Column(scale=1):
            scheduler = gr.Dropdown(list(CATALOGUE), value=DEFAULT_SCHEDULER, label="Scheduler", elem_id="sched-scheduler")
            summary = gr.Markdown(CATALOGUE[DEFAULT_SCHEDULER].summary)
            lr = gr.Number(value=0.1, label="Base LR")
            with gr.Row():
                epochs = gr.Number(value=30, precision=0, label="Epochs")
                steps_per_epoch = gr.Number(value=10, precision=0, label="Steps per epoch")
            with gr.Row():
                warmup = gr.Number(value=0, precision=0, label="Warm-up epochs")
                step_per = gr.Radio(["epoch", "batch"], value="epoch", label="Step the scheduler per")
            groups, fields = {}, {}
            for name, info in CATALOGUE.items():
                with gr.Group(visible=name == DEFAULT_SCHEDULER) as group:
                    for param in info.params:
                        fields[(name, param.name)] = _param_component(info, param)
                groups[name] = group
            with gr.Accordion("Validation loss that drives ReduceLROnPlateau", visible=False) as plateau_box:
                with gr.Row():
                    loss_start = gr.Number(value=2.0, label="start")
                    loss_plateau = gr.Number(value=0.6, label="plateau level")
                with gr.Row():
                    plateau_epoch = gr.Number(value=10, precision=0, label="plateaus from epoch")
                    noise = gr.Number(value=0.02, label="noise (relative)")
                    seed = gr.Number(value=0, precision=0, label="seed")
        with gr.Column(scale=2):
            message = gr.Markdown(elem_id="sched-message")
            log_scale = gr.Checkbox(value=False, label="Log scale (plots log10 of the LR)")
            plot = gr.LinePlot(x="step", y="lr", color="schedule", title="Learning rate per optimizer step", elem_id="sched-plot",
                               x_title="optimizer step", y_title="learning rate", height=360)
            val_plot = gr.LinePlot(x="epoch", y="val_loss", title="Validation loss fed to ReduceLROnPlateau",
                                   height=220, visible=False)
            with gr.Row():
                add = gr.Button("Add to comparison")
                clear = gr.Button("Clear comparison")
            code = gr.Code(language="python", label="PyTorch code for this schedule", elem_id="sched-code")
    compare = gr.State([])
    field_keys = list(fields)

    def update(name, lr_, epochs_, steps_, warmup_, step_per_, start, level, k, noise_, seed_, log_, compare_, *values):
        try:
            config = schedule_from_fields(name, lr_, epochs_, steps_, warmup_, step_per_, dict(zip(field_keys, values)))
            shape = ValLossShape(float(start), float(level), _whole(k, "plateau epoch"), float(noise_), _whole(seed_, "seed"))
            frame, val_loss, code_, text, lrs = render_schedule(config, shape, compare_, log_)
        except (ScheduleError, ValueError, TypeError) as exc:
            return gr.skip(), gr.skip(), gr.skip(), f"**Cannot draw this schedule:** {exc}", gr.skip(), gr.skip()
        return (frame, gr.update(value=val_loss, visible=val_loss is not None), code_, text, config.to_dict(),
                {"label": describe(config), "lr": lrs})

    def pick(name):
        info = CATALOGUE[name]
        return [gr.update(visible=n == name) for n in groups] + [info.summary, gr.update(visible=info.needs_metric)]

    def add_current(compare_, current):
        return compare_ + [current] if current else compare_

    inputs = [scheduler, lr, epochs, steps_per_epoch, warmup, step_per, loss_start, loss_plateau, plateau_epoch,
              noise, seed, log_scale, compare, *fields.values()]
    current_curve = gr.State(None)
    outputs = [plot, val_plot, code, message, current_schedule, current_curve]
    scheduler.change(pick, scheduler, [*groups.values(), summary, plateau_box], queue=False)
    for component in inputs:
        if component is not compare:
            component.change(update, inputs, outputs, show_progress="hidden", api_visibility="private")
    add.click(add_current, [compare, current_curve], compare, api_visibility="private").then(
        update, inputs, outputs, api_visibility="private")
    clear.click(lambda: [], None, compare, api_visibility="private").then(update, inputs, outputs, api_visibility="private")
    return update, inputs, outputs
