"""Transfer Studio: the Gradio app. Wiring only: each tab calls into `trainer/` and `models/`.

`demo` is built at import (Spaces and tests import it); it launches only under `__main__`.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pandas as pd

from models.backbones import WeightsUnavailable
from models.runtime import ModelLoadError, OnnxClassifier, resolve_model
from trainer.config import ARCHS, AUGMENTS, OPTIMIZERS, STRATEGIES, ConfigError, ScheduleConfig, TrainConfig
from trainer.data import DataError, Dataset, assemble_class_folders, open_dataset
from trainer.metrics import confusion_figure
from trainer.runs import RunStore
from trainer.schedules import CATALOGUE, ScheduleError, ValLossShape, lr_curve, schedule_code, scheduler_info
from trainer.train import EpochStats, FitResult, fit

# Mistakes a user can fix; anything else is a bug and raises.
USER_ERRORS = (DataError, ConfigError, ScheduleError, WeightsUnavailable)

# ---------------------------------------------------------------- schedules tab: functions


def schedule_from_fields(scheduler: str, lr, epochs, steps_per_epoch, warmup_epochs, step_per, param_values: dict) -> ScheduleConfig:
    """The studio's form values as a ScheduleConfig; blank parameter fields take their defaults."""
    info = scheduler_info(scheduler)
    params = {}
    for param in info.params:
        value = param_values.get((scheduler, param.name))
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if param.kind in ("int", "optional_int") and isinstance(value, float) and value.is_integer():
            value = int(value)
        params[param.name] = value
    return ScheduleConfig(
        scheduler=scheduler,
        lr=float(lr) if lr is not None else math.nan,
        epochs=_whole(epochs, "epochs"),
        steps_per_epoch=_whole(steps_per_epoch, "steps per epoch"),
        params=params,
        warmup_epochs=_whole(warmup_epochs or 0, "warm-up epochs"),
        step_per=step_per,
    )


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


# ---------------------------------------------------------------- schedules tab: layout and wiring


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
            scheduler = gr.Dropdown(list(CATALOGUE), value="CosineAnnealingLR", label="Scheduler", elem_id="sched-scheduler")
            summary = gr.Markdown(CATALOGUE["CosineAnnealingLR"].summary)
            lr = gr.Number(value=0.1, label="Base LR")
            with gr.Row():
                epochs = gr.Number(value=30, precision=0, label="Epochs")
                steps_per_epoch = gr.Number(value=10, precision=0, label="Steps per epoch")
            with gr.Row():
                warmup = gr.Number(value=0, precision=0, label="Warm-up epochs")
                step_per = gr.Radio(["epoch", "batch"], value="epoch", label="Step the scheduler per")
            groups, fields = {}, {}
            for name, info in CATALOGUE.items():
                with gr.Group(visible=name == "CosineAnnealingLR") as group:
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


# ---------------------------------------------------------------- fine-tune tab: functions

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_PHOTOS = ASSETS / "sample"
MAX_CLASSES = 8  # class slots in the per-class upload
SOURCES = ("Sample photos", "Zip file", "Photos per class", "Folder on this computer")
ON_SPACE = bool(os.environ.get("SPACE_ID"))
# Runs expire after TRANSFER_STUDIO_RUN_HOURS (on a shared Space, a day unless set; locally, never unless set).
STORE = RunStore(max_age_hours=float(os.environ.get("TRANSFER_STUDIO_RUN_HOURS") or (24 if ON_SPACE else 0)) or None)
STOP_FLAGS: dict[str, threading.Event] = {}  # per browser session: set by Cancel, read by fit every batch


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def _local_folders_allowed(request: gr.Request | None) -> bool:
    """Typing a server path is for a person running the app on their own machine, never a Space or a share link."""
    host = (getattr(request, "client", None) and request.client.host) or "127.0.0.1"
    return not ON_SPACE and host in ("127.0.0.1", "::1", "localhost")


def open_photos(source: str, zip_file, folder: str, classes: dict[str, list], session: str, local_ok: bool) -> Dataset:
    """Check the photos a user gave (any of the four ways) and return the opened dataset."""
    STORE.expire()
    if source == "Sample photos":
        return open_dataset(SAMPLE_PHOTOS)
    if source == "Zip file":
        if not zip_file:
            raise DataError("Choose a .zip of your photo folder first")
        return open_dataset(zip_file, workdir=STORE.upload_dir(session))
    if source == "Photos per class":
        named = {name.strip(): files for name, files in classes.items() if name.strip() or files}
        return open_dataset(assemble_class_folders(named, STORE.upload_dir(session) / "classes"))
    if not local_ok:
        raise DataError("Server folders can only be used when the app runs on your own machine; upload a zip instead")
    if not folder or not Path(folder).expanduser().is_dir():
        raise DataError(f"{folder!r} is not a folder on this computer")
    return open_dataset(Path(folder).expanduser())


def report_markdown(report: dict) -> str:
    labels, counts = report["labels"], report["counts"]
    lines = [f"**{len(labels)} classes**, layout: {report['layout']}, validation: {report['val_source']}.", "",
             "| class | train | val | test |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {counts['train'][name]} | {counts['val'][name]} | {counts['test'][name]} |" for name in labels]
    if report["imbalance"]:
        lines += ["", f"**Imbalance:** {report['imbalance']}"]
    lines += [f"- {warning}" for warning in report["warnings"]]
    if report["skipped"]:
        lines += ["", f"**Skipped {len(report['skipped'])} file(s):**"]
        lines += [f"- `{item['path']}`: {item['reason']}" for item in report["skipped"][:20]]
        if len(report["skipped"]) > 20:
            lines.append(f"- ... and {len(report['skipped']) - 20} more (see data_report.json)")
    if report["duplicates"]:
        lines += ["", f"**{len(report['duplicates'])} group(s) of identical photos**, e.g. " +
                  ", ".join(f"`{p}`" for p in report["duplicates"][0]["paths"][:3])]
    return "\n".join(lines)


def sample_grid(report: dict, per_class: int = 4) -> list[tuple[str, str]]:
    root, shown, grid = Path(report["root"]), {}, []
    for rel, label in report["files"]["train"]:
        if shown.get(label, 0) < per_class:
            shown[label] = shown.get(label, 0) + 1
            grid.append((str(root / rel), label))
    return grid


def train_config_from_form(form: dict, schedule: ScheduleConfig) -> TrainConfig:
    """The fine-tune form as a TrainConfig (the same fields as the CLI and config.json)."""
    return TrainConfig.from_dict({**form, "schedule": schedule.to_dict()})


def schedule_from_form(scheduler: str, params_json: str, lr, epochs, warmup, step_per) -> ScheduleConfig:
    try:
        params = json.loads(params_json or "{}")
    except json.JSONDecodeError as exc:
        raise ScheduleError(f"Scheduler parameters must be JSON like {{\"T_max\": 10}}: {exc.msg}") from None
    if not isinstance(params, dict):
        raise ScheduleError('Scheduler parameters must be a JSON object like {"T_max": 10}')
    return ScheduleConfig(scheduler=scheduler, lr=float(lr), epochs=_whole(epochs, "epochs"), params=params,
                          warmup_epochs=_whole(warmup or 0, "warm-up epochs"), step_per=step_per)


def history_frames(history: list[EpochStats]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The per-epoch table, and the loss and accuracy curves in long form."""
    table = pd.DataFrame([{"epoch": h.epoch, "phase": h.phase, "train loss": round(h.train_loss, 4),
                           "train acc": round(h.train_acc, 4), "val loss": round(h.val_loss, 4),
                           "val acc": round(h.val_acc, 4), "lr": h.lr[0] if h.lr else None,
                           "seconds": round(h.seconds, 1)} for h in history])
    loss = pd.DataFrame([(h.epoch, v, split) for h in history for split, v in (("train", h.train_loss), ("val", h.val_loss))],
                        columns=["epoch", "loss", "split"])
    acc = pd.DataFrame([(h.epoch, v, split) for h in history for split, v in (("train", h.train_acc), ("val", h.val_acc))],
                       columns=["epoch", "accuracy", "split"])
    return table, loss, acc


def lr_frame(planned: list[float] | None, history: list[EpochStats]) -> pd.DataFrame:
    """The head's LR actually used at every step, over the planned curve."""
    rows = [(step, lr, "planned") for step, lr in enumerate(planned or [])]
    used = [lr for h in history for lr in h.lr]
    rows += [(step, lr, "used") for step, lr in enumerate(used)]
    return pd.DataFrame(rows, columns=["step", "lr", "curve"])


def planned_head_lr(config: TrainConfig, steps_per_epoch: int) -> list[float] | None:
    """The schedule's curve for the head group (ReduceLROnPlateau depends on the run, so it has none)."""
    if scheduler_info(config.schedule.scheduler).needs_metric:
        return None
    mult = config.head_lr_mult if config.strategy == "finetune" else 1.0
    curve = lr_curve(replace(config.schedule, steps_per_epoch=steps_per_epoch))
    return [lr * mult for lr in curve.lr]


def misclassified(result: FitResult, root: Path, limit: int = 24) -> list[tuple[str, str]]:
    wrong = [p for p in result.predictions.get("val", []) if p[1] != p[2]]
    wrong.sort(key=lambda p: -p[3])  # most confident mistakes first: the instructive ones
    return [(str(root / rel), f"predicted {result.labels[pred]} ({conf:.0%}), true {result.labels[true]}")
            for rel, true, pred, conf in wrong[:limit]]


def metrics_markdown(result: FitResult) -> str:
    m = result.metrics
    lines = [f"**Validation accuracy {m['val']['accuracy']:.1%}** (loss {m['val']['loss']:.4f}, "
             f"{m['val']['count']} photos), best epoch {m['best_epoch']} of {m['epochs_run']}."]
    if m["test"]:
        lines.append(f"**Test accuracy {m['test']['accuracy']:.1%}** ({m['test']['count']} photos, never used for selection).")
    if result.stopped:
        lines.append(f"Stopped: {result.stopped}; the best model so far was kept.")
    export = m.get("export") or {}
    fp32 = (export.get("variants") or {}).get("fp32")
    if fp32:
        lines.append(f"ONNX export: max logit difference {fp32['max_abs_logit_diff']:.1e}, "
                     f"top-1 agreement {fp32['top1_agreement']:.1%}{'' if fp32['passed'] else ' (FAILED its check)'}.")
    elif export.get("error"):
        lines.append(f"ONNX export failed: {export['error']}")
    lines.append(f"_{m['note']}_")
    return "\n\n".join(lines)


def per_class_frame(split_metrics: dict) -> pd.DataFrame:
    return pd.DataFrame(split_metrics["per_class"]).round(4)


class TrainingFailed(Exception):
    """What fit raised in its thread, for the generator to turn into a gr.Error."""


def run_training(data_path: str, config: TrainConfig, session: str, stop: threading.Event):
    """Run fit in a thread; yield ("log", str), ("batch", BatchEvent), ("epoch", EpochStats), then ("done", (run_id, FitResult))."""
    run_id, run_dir = STORE.new_run(session)
    events: queue.Queue = queue.Queue()

    def work():
        try:
            result = fit(data_path, config, run_dir, overwrite=True, on_batch=lambda e: events.put(("batch", e)),
                         on_epoch=lambda s: events.put(("epoch", s)), should_stop=stop.is_set,
                         log=lambda message: events.put(("log", message)))
            events.put(("done", (run_id, result)))
        except USER_ERRORS as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            events.put(("error", str(exc)))
        except OSError as exc:  # a full disk or a vanished folder: the machine's problem, said in words
            events.put(("error", f"Training stopped: the run folder could not be written ({exc.strerror or exc})"))
        except BaseException as exc:  # a bug: hand it to the handler, which must not wait forever
            events.put(("crash", exc))
            raise

    thread = threading.Thread(target=work, name=f"fit-{run_id}", daemon=True)
    thread.start()
    while True:
        kind, payload = events.get()
        if kind == "error":
            raise TrainingFailed(payload)
        if kind == "crash":
            raise payload
        yield kind, payload
        if kind == "done":
            return


def pick_source(choice, request: gr.Request):
    local_ok = _local_folders_allowed(request)
    return (gr.update(visible=choice == "Zip file"), gr.update(visible=choice == "Photos per class"),
            gr.update(visible=choice == "Folder on this computer" and local_ok))


def set_class_count(count: int, delta: int):
    count = max(2, min(MAX_CLASSES, count + delta))
    return [count] + [gr.update(visible=i < count) for i in range(MAX_CLASSES)]


def check_photos(request: gr.Request, choice, zip_path, folder_path, count, *class_values):
    """Handler of 'Check photos': (data state, report markdown, sample grid).

    The request comes first: Gradio fills gr.Request parameters by position, never after *args.
    """
    names, files = class_values[:MAX_CLASSES], class_values[MAX_CLASSES:]
    classes = {names[i] or "": files[i] or [] for i in range(int(count))}
    try:
        dataset = open_photos(choice, zip_path, folder_path, classes, _session(request), _local_folders_allowed(request))
    except DataError as exc:
        raise gr.Error(str(exc)) from None
    grid = sample_grid(dataset.report)
    state = {"path": str(dataset.root), "report": dataset.report}
    return state, report_markdown(dataset.report), gr.update(value=grid, visible=bool(grid))


def form_config(arch, weights, weights_file, strategy, batch_size, image_size, head_lr_mult, head_epochs, optimizer,
                augment, class_weighted, patience, val_fraction, seed, scheduler, params, lr, epochs, warmup, step_per):
    """The settings form, in the order the tab lists its fields, as a TrainConfig."""
    if weights == "file":
        if not weights_file:
            raise ConfigError("Choose a weights file, or pick imagenet or none")
        weights = weights_file
    values = dict(zip(TRAIN_FIELDS, (arch, weights, strategy, batch_size, image_size, head_lr_mult, head_epochs,
                                     optimizer, augment, class_weighted, patience, val_fraction, seed)))
    return train_config_from_form(values, schedule_from_form(scheduler, params, lr, epochs, warmup, step_per))


def _data_path(data) -> str:
    if not data:
        raise gr.Error("Check your photos first (step 1): press 'Check photos'")
    return data["path"]


def find_lr(request: gr.Request, data, *form, progress=gr.Progress()):
    """Handler of the LR finder: (plot data, message, suggested LR, enable the 'use' button)."""
    from trainer.lr_finder import lr_find

    path = _data_path(data)
    session = _session(request)
    stop = STOP_FLAGS[session] = threading.Event()  # Cancel stops the sweep too
    try:
        config = form_config(*form)
        result = lr_find(path, config, workdir=STORE.upload_dir(session), should_stop=stop.is_set,
                         on_step=lambda i, lr, loss: progress((i + 1) / 100, desc=f"LR {lr:.1e}"))
    except USER_ERRORS + (ValueError,) as exc:
        raise gr.Error(str(exc)) from None
    finally:
        if STOP_FLAGS.get(session) is stop:
            del STOP_FLAGS[session]
    frame = pd.DataFrame({"log10 lr": [math.log10(v) for v in result.lr], "loss": result.loss})
    text = f"**Suggested LR: {result.suggested_lr:.2e}** (rule: {result.rule}); swept {len(result.lr)} steps."
    return frame, text, result.suggested_lr, gr.update(interactive=True)


TRAIN_OUTPUTS = ("status", "epoch_table", "loss_plot", "acc_plot", "lr_plot", "metrics", "per_class", "confusion",
                 "misclassified", "download", "run_id")


def _outputs(**values) -> tuple:
    """One yield of the train handler: named outputs set, the rest left as they are."""
    return tuple(values.pop(name, gr.skip()) for name in TRAIN_OUTPUTS)


def train_model(request: gr.Request, data, *form, progress=gr.Progress()):
    """Handler of Train, a generator: streams epochs (table, curves, LR used over planned), then the results."""
    path = _data_path(data)
    try:
        config = form_config(*form)
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from None
    session = _session(request)
    stop = STOP_FLAGS[session] = threading.Event()
    history: list[EpochStats] = []
    planned = None
    try:
        for kind, payload in run_training(path, config, session, stop):
            if kind == "log":
                yield _outputs(status=f"_{payload.splitlines()[0]}_")
            elif kind == "batch":
                if planned is None:
                    planned = planned_head_lr(config, payload.batches)
                done = payload.epoch * payload.batches + payload.batch + 1
                progress(done / (payload.batches * config.epochs),
                         desc=f"epoch {payload.epoch + 1}/{config.epochs}, loss {payload.loss:.3f}")
            elif kind == "epoch":
                history.append(payload)
                table, loss, acc = history_frames(history)
                yield _outputs(status=f"Epoch {payload.epoch}/{config.epochs}: val accuracy {payload.val_acc:.1%}",
                               epoch_table=table, loss_plot=loss, acc_plot=acc, lr_plot=lr_frame(planned, history))
            else:
                run_id, result = payload
                yield _outputs(
                    status=f"Run `{run_id}` finished.",
                    metrics=metrics_markdown(result),
                    per_class=per_class_frame(result.metrics["val"]),
                    confusion=confusion_figure([("Validation", result.metrics["val"]["confusion_matrix"])], result.labels),
                    misclassified=misclassified(result, Path(data["report"]["root"])),
                    download=gr.update(value=str(STORE.zip_run(result.run_dir)), visible=True),
                    run_id=run_id,
                )
    except TrainingFailed as exc:
        raise gr.Error(str(exc)) from None
    finally:
        # A closed tab ends this generator early: stop its training too (the best model so far is kept).
        stop.set()
        if STOP_FLAGS.get(session) is stop:
            del STOP_FLAGS[session]


def cancel_training(request: gr.Request = None) -> str:
    flag = STOP_FLAGS.get(_session(request))
    if flag is None:
        return "Nothing is training in this session."
    flag.set()
    return "Stopping after the current batch; the best model so far is kept."


def take_studio_schedule(current):
    if not current:
        return [gr.skip()] * 6
    config = ScheduleConfig.from_dict(current)
    return config.scheduler, json.dumps(config.params), config.lr, config.epochs, config.warmup_epochs, config.step_per


def _hub_endpoint() -> str | None:
    # Read at call time (huggingface_hub reads HF_ENDPOINT once, at import).
    return os.environ.get("HF_ENDPOINT") or None


def push_to_hub(run_id: str | None, repo_id: str, private: bool, token: str, oauth_token: gr.OAuthToken | None = None):
    """Handler of Push: the token typed here, else the Space login, else HF_TOKEN or the cached login."""
    from models.hub import HubError, push_run

    if not run_id:
        raise gr.Error("Train a model first (or pick one of this session's runs)")
    token = (token or "").strip() or (oauth_token.token if oauth_token else None)
    try:
        url = push_run(STORE.find(run_id), (repo_id or "").strip(), token=token, private=bool(private),
                       endpoint=_hub_endpoint())
    except (HubError, ValueError) as exc:
        raise gr.Error(str(exc)) from None
    return f"Pushed to [{url}]({url})", gr.update(value="")  # the token box is cleared after use


def make_space_for_run(run_id: str | None, repo_id: str, private: bool, token: str,
                       oauth_token: gr.OAuthToken | None = None):
    """Handler of 'Make a Space': the classify-only app as a zip, pushed as a Space when a repo is named."""
    from models.hub import HubError, make_space, push_space

    if not run_id:
        raise gr.Error("Train a model first (or pick one of this session's runs)")
    run_dir = STORE.find(run_id)
    folder = make_space(run_dir, run_dir / "space", examples=EXAMPLES[:3])
    archive = shutil.make_archive(str(run_dir / f"{run_id}-space"), "zip", folder)
    message = "Space app written: unzip and run `python app.py`, or upload it as a Gradio Space."
    if (repo_id or "").strip():
        token = (token or "").strip() or (oauth_token.token if oauth_token else None)
        try:
            url = push_space(run_dir, repo_id.strip(), token=token, private=bool(private), endpoint=_hub_endpoint())
        except (HubError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        message = f"Space pushed to [{url}]({url})"
    return message, gr.update(value=archive, visible=True), gr.update(value="")


# ---------------------------------------------------------------- fine-tune tab: layout and wiring

TRAIN_FIELDS = ("arch", "weights", "strategy", "batch_size", "image_size", "head_lr_mult", "head_epochs", "optimizer",
                "augment", "class_weighted", "patience", "val_fraction", "seed")


def finetune_tab(current_schedule: gr.State, runs_changed: gr.State):
    defaults = TrainConfig()
    data_state = gr.State(None)  # {"path": folder to train from, "report": data report}
    gr.Markdown("Give photos (one folder per class), check them, pick a strategy and a schedule, and train. "
                "Training runs one at a time; you will see your place in the queue.")
    with gr.Accordion("1. Photos", open=True):
        source = gr.Radio(list(SOURCES), value="Sample photos", label="Where are the photos?", elem_id="ft-source")
        zip_file = gr.File(label="A .zip of your folder (class subfolders, or train/ val/ test/)", file_types=[".zip"],
                           visible=False, elem_id="ft-zip")
        with gr.Group(visible=False) as per_class_box:
            class_count = gr.State(2)
            class_rows, class_names, class_files = [], [], []
            for i in range(MAX_CLASSES):
                with gr.Row(visible=i < 2) as row:
                    class_names.append(gr.Textbox(label=f"Class {i + 1} name", scale=1, elem_id=f"ft-class-{i}"))
                    class_files.append(gr.File(label="Its photos", file_count="multiple", file_types=["image"], scale=3,
                                               elem_id=f"ft-class-files-{i}"))
                class_rows.append(row)
            with gr.Row():
                add_class = gr.Button("Add a class", size="sm")
                remove_class = gr.Button("Remove the last class", size="sm")
        folder = gr.Textbox(label="Folder on this computer", placeholder="/home/me/photos/food", visible=False)
        check = gr.Button("Check photos", variant="secondary", elem_id="ft-check")
        report_md = gr.Markdown(elem_id="ft-report")
        samples = gr.Gallery(label="Sample photos per class", columns=8, height=220, visible=False)
    with gr.Accordion("2. Settings", open=True):
        with gr.Row():
            arch = gr.Dropdown(list(ARCHS), value=defaults.arch, label="Backbone")
            weights = gr.Radio(["imagenet", "none", "file"], value=defaults.weights, label="Pretrained weights", elem_id="ft-weights",
                               info="ImageNet (torch hub cache), none (random init), or a weights file")
            weights_file = gr.File(label="Weights file (.safetensors or .pth)", file_types=[".safetensors", ".pth", ".pt"],
                                   visible=False)
            strategy = gr.Radio(list(STRATEGIES), value=defaults.strategy, label="Strategy", elem_id="ft-strategy",
                                info="linear-probe: frozen backbone; finetune: head first, then all; full: all")
        with gr.Row():
            epochs = gr.Number(value=defaults.epochs, precision=0, label="Epochs", elem_id="ft-epochs")
            batch_size = gr.Number(value=defaults.batch_size, precision=0, label="Batch size", elem_id="ft-batch-size")
            image_size = gr.Number(value=defaults.image_size, precision=0, label="Image size (crop, px)", elem_id="ft-image-size")
            lr = gr.Number(value=defaults.lr, label="Learning rate (backbone / base)", elem_id="ft-lr")
            head_lr_mult = gr.Number(value=defaults.head_lr_mult, label="Head LR multiplier (finetune)")
            head_epochs = gr.Number(value=defaults.head_epochs, precision=0, label="Head-only epochs (finetune)")
        with gr.Row():
            optimizer = gr.Radio(list(OPTIMIZERS), value=defaults.optimizer, label="Optimizer", elem_id="ft-optimizer")
            augment = gr.Radio(list(AUGMENTS), value=defaults.augment, label="Augmentation", elem_id="ft-augment")
            class_weighted = gr.Checkbox(value=defaults.class_weighted, label="Class-weighted loss")
            patience = gr.Number(value=defaults.patience, precision=0, label="Early-stopping patience (0 = off)")
            val_fraction = gr.Number(value=defaults.val_fraction, label="Validation fraction (no val/ folder)")
            seed = gr.Number(value=defaults.seed, precision=0, label="Seed")
        with gr.Row():
            scheduler = gr.Dropdown(list(CATALOGUE), value=defaults.schedule.scheduler, label="LR scheduler")
            params = gr.Code(value="{}", language="json", label="Scheduler parameters (JSON)", lines=2)
            warmup = gr.Number(value=0, precision=0, label="Warm-up epochs")
            step_per = gr.Radio(["epoch", "batch"], value="epoch", label="Step per")
            take_schedule = gr.Button("Use the schedule from the studio tab", size="sm")
    with gr.Accordion("3. Learning-rate finder", open=False):
        gr.Markdown("An exponential LR sweep on your photos (as fastai's `lr_find`); it stops when the loss diverges.")
        with gr.Row():
            find_button = gr.Button("Find a learning rate")
            use_lr = gr.Button("Use the suggested LR", interactive=False)
        finder_md = gr.Markdown()
        finder_plot = gr.LinePlot(x="log10 lr", y="loss", title="Smoothed loss against the learning rate", height=260)
        suggested = gr.State(None)
    with gr.Row():
        train = gr.Button("Train", variant="primary", elem_id="ft-train")
        cancel = gr.Button("Cancel", variant="stop", elem_id="ft-cancel")
    status = gr.Markdown(elem_id="ft-status")
    epoch_table = gr.Dataframe(label="Epochs", interactive=False)
    with gr.Row():
        loss_plot = gr.LinePlot(x="epoch", y="loss", color="split", title="Loss", height=260)
        acc_plot = gr.LinePlot(x="epoch", y="accuracy", color="split", title="Accuracy", height=260)
        lr_plot = gr.LinePlot(x="step", y="lr", color="curve", title="Head LR: used over planned", height=260)
    metrics_md = gr.Markdown(elem_id="ft-metrics")
    with gr.Row():
        per_class = gr.Dataframe(label="Per class (validation)", interactive=False)
        confusion = gr.Plot(label="Confusion matrix (validation)", elem_id="ft-confusion")
    wrong = gr.Gallery(label="Misclassified validation photos", columns=6, height=260)
    download = gr.DownloadButton("Download the run (zip)", visible=False)
    with gr.Accordion("4. Share: push to the Hugging Face Hub, or make a Space", open=False):
        with gr.Row():
            share_run = gr.Dropdown(label="Run (this session)", choices=[])
            repo_id = gr.Textbox(label="Repository", placeholder="your-name/food-classifier")
            private = gr.Checkbox(value=False, label="Private")
        with gr.Row():
            token = gr.Textbox(label="Token with write access (optional: your login or HF_TOKEN is used otherwise)",
                               type="password")
            if ON_SPACE:
                gr.LoginButton()
        with gr.Row():
            push = gr.Button("Push the model")
            space = gr.Button("Make a Space from this run")
        share_md = gr.Markdown()
        space_zip = gr.DownloadButton("Download the Space app (zip)", visible=False)

    # -- wiring
    form = [arch, weights, weights_file, strategy, batch_size, image_size, head_lr_mult, head_epochs, optimizer, augment,
            class_weighted, patience, val_fraction, seed, scheduler, params, lr, epochs, warmup, step_per]
    source.change(pick_source, source, [zip_file, per_class_box, folder], queue=False)
    weights.change(lambda w: gr.update(visible=w == "file"), weights, weights_file, queue=False)
    add_class.click(lambda c: set_class_count(c, 1), class_count, [class_count, *class_rows], queue=False)
    remove_class.click(lambda c: set_class_count(c, -1), class_count, [class_count, *class_rows], queue=False)
    check_inputs = [source, zip_file, folder, class_count, *class_names, *class_files]
    check.click(check_photos, check_inputs, [data_state, report_md, samples], api_visibility="private")
    # A zip is the whole dataset: its report comes as soon as it is uploaded.
    zip_file.upload(check_photos, check_inputs, [data_state, report_md, samples], api_visibility="private")
    take_schedule.click(take_studio_schedule, current_schedule, [scheduler, params, lr, epochs, warmup, step_per],
                        queue=False)
    find_button.click(find_lr, [data_state, *form], [finder_plot, finder_md, suggested, use_lr], concurrency_limit=1,
                      concurrency_id="training", api_visibility="private")
    use_lr.click(lambda v: v, suggested, lr, queue=False)
    train_outputs = [status, epoch_table, loss_plot, acc_plot, lr_plot, metrics_md, per_class, confusion, wrong,
                     download, runs_changed]
    train.click(train_model, [data_state, *form], train_outputs, concurrency_limit=1, concurrency_id="training",
                api_visibility="private", show_progress_on=[status])
    # Queued (so the request carries the browser session), in its own slot: it never waits behind training.
    cancel.click(cancel_training, None, status, concurrency_id="cancel", concurrency_limit=None)
    runs_changed.change(run_choices, runs_changed, share_run)
    share_run.focus(run_choices, None, share_run)
    push.click(push_to_hub, [share_run, repo_id, private, token], [share_md, token], api_visibility="private")
    space.click(make_space_for_run, [share_run, repo_id, private, token], [share_md, space_zip, token],
                api_visibility="private")

    # /train for programs: a zip and the CLI's fields as a dict; hidden components keep uploads validated.
    api_zip = gr.File(visible=False, file_types=[".zip"])
    api_config = gr.JSON(visible=False)
    api_result = gr.JSON(visible=False)
    gr.Button(visible=False).click(train_api, [api_zip, api_config], api_result, api_name="train",
                                   concurrency_limit=1, concurrency_id="training")


def train_api(zip_path: str, config: dict, request: gr.Request) -> dict:
    """API: train on a zipped photo folder with a config dict (the CLI's fields); returns the run id and metrics."""
    if not zip_path:
        raise gr.Error("Send the photos as a .zip file")
    try:
        train_config = TrainConfig.from_dict(config or {})
        for kind, payload in run_training(zip_path, train_config, _session(request), threading.Event()):
            if kind == "done":
                run_id, result = payload
                return {"run_id": run_id, "metrics": result.metrics}
    except (TrainingFailed, ConfigError, ScheduleError) as exc:
        raise gr.Error(str(exc)) from None


# ---------------------------------------------------------------- classify tab: functions

EXAMPLES = sorted(str(p) for p in (ASSETS / "examples").glob("*.jpg"))
MODEL_SOURCES = ("A run trained here", "An uploaded .onnx file", "ImageNet ResNet-18")
IMAGENET = "imagenet"  # the model reference of the default ImageNet classifier
_classifiers: dict[tuple[str, float], OnnxClassifier] = {}
_classifiers_lock = threading.Lock()


def imagenet_model() -> Path:
    """The torchvision ImageNet ResNet-18 exported once to ONNX, so the tab works before any training."""
    from models.backbones import create_imagenet_classifier, preprocessing_for
    from models.export import export_onnx

    path = STORE.root / "imagenet-resnet18.onnx"
    with _classifiers_lock:
        if not path.is_file():
            model, labels = create_imagenet_classifier("resnet18")
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(model, labels, preprocessing_for("resnet18"), {"source": "torchvision ImageNet weights"}, path)
    return path


def model_path(ref: str, local_paths: bool) -> Path:
    """The .onnx file for a model reference: a run id, "imagenet", hf://user/name, or (locally) a path."""
    ref = (ref or "").strip()
    if not ref:
        raise ModelLoadError("Choose a model: train one in the Fine-tune tab, upload an .onnx file, or pick ImageNet")
    if ref == IMAGENET:
        return imagenet_model()
    if ref.startswith("hf://"):
        return resolve_model(ref)
    try:
        return resolve_model(STORE.find(ref))
    except ValueError:
        pass
    if not local_paths:
        raise ModelLoadError(f"Unknown model {ref!r}: give a run id from this app, or hf://user/name")
    return resolve_model(ref)


def classifier(path: Path) -> OnnxClassifier:
    """One shared session per model file (ONNX Runtime sessions are thread-safe); reloaded when the file changes."""
    key = (str(path), path.stat().st_mtime)
    with _classifiers_lock:
        if key not in _classifiers:
            _classifiers[key] = OnnxClassifier(path)
        return _classifiers[key]


def classify_files(paths: list[str], ref: str, top_k: int, local_paths: bool) -> tuple[list[dict], str, float]:
    """(per-photo results in order, provider, latency in ms) for photos on disk."""
    model = classifier(model_path(ref, local_paths))
    started = time.perf_counter()
    results = model.predict_files(paths, top_k=int(top_k))
    return results, model.provider, (time.perf_counter() - started) * 1000


def _ref_from_tab(source: str, run_id: str | None, onnx_file: str | None) -> str:
    if source == "An uploaded .onnx file":
        return onnx_file or ""
    return IMAGENET if source == "ImageNet ResNet-18" else (run_id or "")


def classify_photo(image: str | None, source: str, run_id: str | None, onnx_file: str | None, top_k: int):
    """Handler of Classify: (label scores for gr.Label, provider and latency)."""
    if not image:
        raise gr.Error("Add a photo first (upload, webcam or paste)")
    try:
        # A file uploaded through the tab is a trusted path; typed paths are for local use only.
        results, provider, ms = classify_files([image], _ref_from_tab(source, run_id, onnx_file), top_k, True)
    except (ModelLoadError, WeightsUnavailable) as exc:
        raise gr.Error(str(exc)) from None
    if "error" in results[0]:
        raise gr.Error(results[0]["error"])
    scores = {p["label"]: p["score"] for p in results[0]["predictions"]}
    return scores, f"Provider: `{provider}`, {ms:.1f} ms for this photo (preprocessing included)."


def classify_many(files: list[str] | None, source: str, run_id: str | None, onnx_file: str | None, top_k: int):
    """Handler of Classify all: (a table, a gallery with the top label, a message)."""
    if not files:
        raise gr.Error("Add some photos first")
    try:
        results, provider, ms = classify_files(files, _ref_from_tab(source, run_id, onnx_file), top_k, True)
    except (ModelLoadError, WeightsUnavailable) as exc:
        raise gr.Error(str(exc)) from None
    rows, gallery = [], []
    for item in results:
        name = Path(item["path"]).name
        if "error" in item:
            rows.append({"photo": name, "top label": None, "score": None, "also": item["error"]})
            continue
        top, *rest = item["predictions"]
        rows.append({"photo": name, "top label": top["label"], "score": round(top["score"], 4),
                     "also": ", ".join(f"{p['label']} {p['score']:.2f}" for p in rest)})
        gallery.append((item["path"], f"{top['label']} ({top['score']:.0%})"))
    return pd.DataFrame(rows), gallery, f"{len(files)} photos in {ms:.0f} ms on `{provider}`."


def run_choices(request: gr.Request = None, newest: str | None = None):
    runs = STORE.runs(_session(request))
    choices = [(f"{r.run_id}: {r.summary}", r.run_id) for r in runs]
    return gr.update(choices=choices, value=newest or (choices[0][1] if choices else None))


def classify_api(image: str, model: str, top_k: float, request: gr.Request) -> dict:
    """API: a photo, a model reference (run id, hf://user/name, "imagenet", or a path when local) and top_k."""
    if not image:
        raise gr.Error("Send a photo")
    try:
        results, provider, ms = classify_files([image], model, int(top_k or 5), _local_folders_allowed(request))
    except (ModelLoadError, WeightsUnavailable) as exc:
        raise gr.Error(str(exc)) from None
    if "error" in results[0]:
        raise gr.Error(results[0]["error"])
    return {"predictions": results[0]["predictions"], "provider": provider, "latency_ms": round(ms, 3)}


def classify_tab(runs_changed: gr.State) -> None:
    gr.Markdown("Classify photos with an exported ONNX model, served by ONNX Runtime (CUDA when there is a GPU).")
    with gr.Row():
        with gr.Column(scale=1):
            source = gr.Radio(list(MODEL_SOURCES), value=MODEL_SOURCES[0], label="Model", elem_id="clf-source")
            run_id = gr.Dropdown(label="Run trained in this session", choices=[], allow_custom_value=False, elem_id="clf-run")
            onnx_file = gr.File(label=".onnx model (made by this app)", file_types=[".onnx"], visible=False)
            top_k = gr.Slider(1, 10, value=5, step=1, label="Top-k")
        with gr.Column(scale=2):
            image = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="Photo", height=320,
                             elem_id="clf-image")
            classify = gr.Button("Classify", variant="primary", elem_id="clf-classify")
            gr.Examples(EXAMPLES, inputs=image, label="Example photos")
        with gr.Column(scale=2):
            scores = gr.Label(label="Top classes", elem_id="clf-label")
            info = gr.Markdown(elem_id="clf-info")
    with gr.Accordion("Many photos at once", open=False):
        many = gr.File(file_count="multiple", file_types=["image"], label="Photos")
        classify_all = gr.Button("Classify all")
        many_info = gr.Markdown()
        table = gr.Dataframe(interactive=False)
        gallery = gr.Gallery(columns=6, height=260)

    model_inputs = [source, run_id, onnx_file, top_k]
    source.change(lambda s: (gr.update(visible=s == MODEL_SOURCES[0]), gr.update(visible=s == MODEL_SOURCES[1])),
                  source, [run_id, onnx_file], queue=False)
    runs_changed.change(run_choices, runs_changed, run_id)
    run_id.focus(run_choices, None, run_id)
    classify.click(classify_photo, [image, *model_inputs], [scores, info], concurrency_limit=4,
                   concurrency_id="classify", api_visibility="private")
    classify_all.click(classify_many, [many, *model_inputs], [table, gallery, many_info], concurrency_limit=4,
                       concurrency_id="classify", api_visibility="private")

    api_image = gr.Image(type="filepath", visible=False)
    api_model = gr.Textbox(visible=False)
    api_top_k = gr.Number(value=5, visible=False)
    api_result = gr.JSON(visible=False)
    gr.Button(visible=False).click(classify_api, [api_image, api_model, api_top_k], api_result, api_name="classify",
                                   concurrency_limit=4, concurrency_id="classify")


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Transfer Studio") as demo:
        gr.Markdown("# Transfer Studio\nTransfer learning on your own photos: schedules, fine-tuning, serving.")
        current_schedule = gr.State(None)
        runs_changed = gr.State(None)  # the newest run id; the classify tab refreshes its picker on change
        with gr.Tabs():
            with gr.Tab("Learning-rate schedules", id="schedules"):
                draw_schedule = schedules_tab(current_schedule)
            with gr.Tab("Fine-tune", id="finetune"):
                finetune_tab(current_schedule, runs_changed)
            with gr.Tab("Classify", id="classify"):
                classify_tab(runs_changed)
        demo.load(*draw_schedule, api_visibility="private")
        gr.api(lr_curve_api, api_name="lr_curve")
    return demo


demo = build_app()


def launch_options() -> dict:
    """Where and how the app listens; the environment overrides each default."""
    return {
        "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        "server_port": int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        # Uploads beyond this are refused by Gradio before they reach the app (photo zips are the big ones).
        "max_file_size": os.environ.get("TRANSFER_STUDIO_MAX_UPLOAD", "1gb"),
    }


def main() -> None:
    # Training and the LR finder share one slot ("training", limit 1); classification runs 4 at a time.
    demo.queue(default_concurrency_limit=4).launch(**launch_options())


if __name__ == "__main__":
    main()
