"""The fine-tune tab: photos in, a data report, the settings form, the LR finder, live training, results, your runs, sharing.

The settings form is derived from `trainer.config`'s fields (`config_form`); the scheduler's parameters
are the studio's own fields (`ui.schedules.scheduler_param_fields`). Training runs through
`trainer.stream.fit_events`, one at a time in the "training" queue slot; `ui.results` draws what a run
produced, live or reopened from its folder. A user's mistake shows next to what caused it (`ui.errors`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import gradio as gr

from models.job_slot import SlotAbandoned
from models.run_folder import RunFolder
from trainer.config import FORM_GROUPS, ConfigError, ScheduleConfig, TrainConfig, choices_of, config_fields, default_of
from trainer.compare import compare as compare_runs
from trainer.data import DataError, Dataset, assemble_class_folders, open_dataset, open_uploaded_folder
from trainer.experiment import (KINDS, ArmDone, ArmFailed, ArmStarts, ExperimentDone, SeriesPlanned, arms_for,
                                check_weights, duration_words, estimate, experiment_events)
from trainer.schedules import CATALOGUE, resolve
from trainer.stream import Done, Log, SweepDone, SweepStep
from ui.zerogpu import fit_events, sweep_events
from trainer.task import Cancelled, planned_head_lr
from trainer.train import STOPPED_WORDS, BatchEvent, EpochStats
from ui import EXAMPLES, SAMPLE_PHOTOS, compare, folder_upload, results, session
from ui.errors import error_markdown, in_place, plain, refusal, user_errors
from ui.limits import LIMITS
from ui.schedules import params_from_fields, scheduler_param_fields

MAX_CLASSES = 8  # class slots in the per-class upload
# "A folder of photos" is picked (or dropped) in the browser; "Folder on this computer" is a typed path on the server.
FOLDER_UPLOAD = "A folder of photos"
SOURCES = (FOLDER_UPLOAD, "Sample photos", "Zip file", "Photos per class", "Folder on this computer")
WEIGHT_CHOICES = ("imagenet", "none", "file")  # "file": the uploaded weights file
# The form's fields, every config field given a form row; the handlers receive FORM_INPUTS' values in this
# order, then those of the scheduler parameter fields (PARAM_KEYS), which stand for `params`.
FORM_FIELDS = tuple(f.name for f in config_fields(TrainConfig) if f.metadata.get("group"))
FORM_INPUTS = tuple(name for name in FORM_FIELDS if name != "params")
PARAM_KEYS = tuple((name, param.name) for name, info in CATALOGUE.items() for param in info.params)
SCHEDULE_INPUTS = tuple(f.name for f in config_fields(ScheduleConfig) if f.name in FORM_INPUTS)
GROUP_TITLES = {"model": "Model", "run": "Training", "data": "Optimizer, data and stopping", "schedule": "Schedule",
                "more": "More settings: momentum, weight decay, label smoothing, BatchNorm, precision"}
FOLDED = ("more",)  # groups in a closed accordion under the columns
COLUMN_WIDTH = 260  # px: narrower screens stack the groups' columns
# Settings that matter for one choice of another setting only; hidden otherwise (they keep their values).
SHOWN_WHEN = {"head_epochs": ("strategy", "finetune"), "head_lr_mult": ("strategy", "finetune"),
              "momentum": ("optimizer", "sgd"), "nesterov": ("optimizer", "sgd")}


# ---------------------------------------------------------------- the settings form


def config_form(cls: type = TrainConfig, custom: dict | None = None) -> dict[str, gr.components.Component]:
    """One component per form field of the config dataclass `cls`, from each field's metadata.

    A column per group, side by side (stacked on a phone), so every field sits on its own line and
    help texts of different lengths never push inputs out of line; FOLDED groups in accordions below.
    `custom` maps a field name to a function that builds its component(s) in place and returns the
    one whose value is the field's (None when the handlers read the field from components of their own).
    """
    custom = custom or {}
    fields = [f for f in config_fields(cls) if f.metadata.get("group")]
    groups = {group: [f for f in fields if f.metadata["group"] == group] for group in FORM_GROUPS}
    form = {}

    def build(members):
        for f in members:
            form[f.name] = custom[f.name]() if f.name in custom else _component(f)

    with gr.Row(equal_height=False):
        for group, members in groups.items():
            if members and group not in FOLDED:
                with gr.Column(min_width=COLUMN_WIDTH):
                    gr.Markdown(f"**{GROUP_TITLES.get(group, group)}**")
                    build(members)
    for group in FOLDED:
        if groups[group]:
            with gr.Accordion(GROUP_TITLES.get(group, group), open=False), gr.Row():
                build(groups[group])
    return form


def _component(f) -> gr.components.Component:
    meta, default, choices = f.metadata, default_of(f), choices_of(f)
    common = {"label": meta["label"], "info": meta["help"], "elem_id": f"ft-{f.name.replace('_', '-')}"}
    if choices:
        if len(choices) <= 4:
            return gr.Radio(list(choices), value=default, **common)
        return gr.Dropdown(list(choices), value=default, **common)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, **common)
    if isinstance(default, dict):
        return gr.Code(value=json.dumps(default), language="json", lines=2, label=f"{meta['label']} (JSON)",
                       elem_id=common["elem_id"])
    if isinstance(default, (int, float)):
        return gr.Number(value=default, precision=0 if isinstance(default, int) else None, **common)
    return gr.Textbox(value=default, **common)


def config_from_form(values: dict, weights_file: str | None = None, cls: type = TrainConfig):
    """The form's values as a config (the same fields as the CLI and config.json)."""
    values = dict(values)
    if values.get("weights") == "file":
        if not weights_file:
            raise ConfigError("Choose a weights file, or pick imagenet or none")
        values["weights"] = weights_file
    for f in config_fields(cls):
        if isinstance(default_of(f), dict) and isinstance(values.get(f.name), str):
            try:
                values[f.name] = json.loads(values[f.name] or "{}")
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{f.metadata['label']} must be JSON like {{\"T_max\": 10}}: {exc.msg}") from None
            if not isinstance(values[f.name], dict):
                raise ConfigError(f"{f.metadata['label']} must be a JSON object like {{\"T_max\": 10}}")
    return cls.from_dict(values)


def form_values(values) -> dict:
    """The settings as the handlers receive them (FORM_INPUTS, then PARAM_KEYS' fields), by config field name."""
    named = dict(zip(FORM_INPUTS, values))
    fields = dict(zip(PARAM_KEYS, values[len(FORM_INPUTS):]))
    return {**named, "params": params_from_fields(named["scheduler"], fields)}


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _label(key) -> str:
    return key[1] if isinstance(key, tuple) else next(f.metadata["label"] for f in config_fields(ScheduleConfig) if f.name == key)


def take_studio_schedule(studio: dict | None, *current):
    """'Use the studio's schedule': its scheduler, parameters, LR, epochs, warm-up and stepping into the form,
    and a line saying what that changed. `current`: the form's SCHEDULE_INPUTS, then its PARAM_KEYS fields."""
    keys = SCHEDULE_INPUTS + PARAM_KEYS
    if not studio:
        return *[gr.skip()] * len(keys), "Nothing to take yet: draw a schedule in the Learning-rate schedules tab first."
    config = ScheduleConfig.from_dict(studio)
    before = dict(zip(keys, current))
    after = {name: getattr(config, name) for name in SCHEDULE_INPUTS}
    after.update({key: config.params.get(key[1]) for key in PARAM_KEYS if key[0] == config.scheduler})
    changed = [f"{_label(key)} {'blank' if _blank(before[key]) else before[key]} → {'blank' if _blank(value) else value}"
               for key, value in after.items() if not (before[key] == value or _blank(before[key]) and _blank(value))]
    said = (f"Took the studio's schedule: {'; '.join(changed)}." if changed else
            f"The form already had the studio's schedule ({config.scheduler}).")
    said += " Blank parameters are derived from the run; steps per epoch come from your photos."
    return *(after.get(key, gr.skip()) for key in keys), plain(said)


def pick_scheduler(name: str) -> list:
    """The chosen scheduler's parameter fields shown; 'Step per' fixed for the schedulers that step one way only."""
    info = CATALOGUE[name]
    return [*(gr.update(visible=n == name) for n in CATALOGUE),
            gr.update(interactive=not (info.per_batch_only or info.needs_metric))]


# ---------------------------------------------------------------- photos


def open_photos(source: str, zip_file, folder: str, classes: dict[str, list], key: str, local_ok: bool,
                sent: tuple[list, list] | None = None) -> Dataset:
    """Check the photos a user gave (any of the five ways) and return the opened dataset.

    `sent`: a folder sent from the browser, as `folder_upload.sent_folder` accepted it (its files, the names left out).
    """
    session.STORE.expire()
    if source == FOLDER_UPLOAD:
        files, left_out = sent or ([], [])
        return open_uploaded_folder(files, session.fresh_upload_dir(key), left_out, max_bytes=folder_upload.max_bytes())
    if source == "Sample photos":
        return open_dataset(SAMPLE_PHOTOS)
    if source == "Zip file":
        if not zip_file:
            raise DataError("Choose a .zip of your photo folder first")
        return open_dataset(zip_file, workdir=session.fresh_upload_dir(key))
    if source == "Photos per class":
        named = {name.strip(): files for name, files in classes.items() if name.strip() or files}
        return open_dataset(assemble_class_folders(named, session.fresh_upload_dir(key) / "classes"))
    if not local_ok:
        raise DataError("Server folders can only be used when the app runs on your own machine; upload a zip instead")
    if not folder or not Path(folder).expanduser().is_dir():
        raise DataError(f"{folder!r} is not a folder on this computer")
    return open_dataset(Path(folder).expanduser())


def report_markdown(report: dict) -> str:
    """The data report as the page shows it: class names come from the upload, so they are shown as written
    (and paths in code spans)."""
    labels, counts = report["labels"], report["counts"]
    lines = [f"**{len(labels)} classes**, layout: {report['layout']}, validation: {report['val_source']}.", "",
             "| class | train | val | test |", "|---|---:|---:|---:|"]
    lines += [f"| {plain(name)} | {counts['train'][name]} | {counts['val'][name]} | {counts['test'][name]} |"
              for name in labels]
    if report["imbalance"]:
        lines += ["", f"**Imbalance:** {plain(report['imbalance'])}"]
    lines += [f"- {plain(warning)}" for warning in report["warnings"]]
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


def pick_source(choice, request: gr.Request):
    """The inputs of the chosen way to give photos: (zip upload, per-class rows, their buttons, folder path,
    folder picker)."""
    local_ok = session.is_local(request)
    per_class = choice == "Photos per class"
    return (gr.update(visible=choice == "Zip file"), gr.update(visible=per_class), gr.update(visible=per_class),
            gr.update(visible=choice == "Folder on this computer" and local_ok), gr.update(visible=choice == FOLDER_UPLOAD))


def set_class_count(count: int, delta: int):
    count = max(2, min(MAX_CLASSES, count + delta))
    return [count] + [gr.update(visible=i < count) for i in range(MAX_CLASSES)]


def check_photos(request: gr.Request, choice, zip_path, folder_path, count, *class_values):
    """Check the photos: (data state, report markdown, sample grid), or gr.Error saying what is wrong with them.

    `class_values`: the class names, their files, then (optional, last) the folder picker's value.
    The page runs it through `in_place`, which shows the error where the report goes. The request
    comes first: Gradio fills gr.Request parameters by position, never after *args.
    """
    names, files = class_values[:MAX_CLASSES], class_values[MAX_CLASSES:2 * MAX_CLASSES]
    picked = class_values[2 * MAX_CLASSES] if len(class_values) > 2 * MAX_CLASSES else None
    classes = {names[i] or "": files[i] or [] for i in range(int(count))}
    key = session.visitor(request)
    session.ensure_room(key)
    with user_errors():
        sent = folder_upload.sent_folder(picked, request) if choice == FOLDER_UPLOAD else None
        dataset = open_photos(choice, zip_path, folder_path, classes, key, session.is_local(request), sent)
    grid = sample_grid(dataset.report)
    state = {"path": str(dataset.root), "report": dataset.report}
    return state, report_markdown(dataset.report), gr.update(value=grid, visible=bool(grid))


# ---------------------------------------------------------------- training and its results

EPOCH_OUTPUTS = ("epoch_table", "loss_plot", "acc_plot", "lr_plot")  # results.epoch_update's keys
FINAL_OUTPUTS = ("metrics", "per_class", "confusion", "misclassified")  # results.final_update's keys
# The outputs of Train (and of Open, which shows a run the same way); "live" and "final" are the two results areas.
TRAIN_OUTPUTS = ("status", "live", *EPOCH_OUTPUTS, "final", *FINAL_OUTPUTS, "download", "run_id")
QUEUED = ("**Queued.** Trainings and LR sweeps run one at a time on this server; yours starts when those before it "
          "have ended (its place in the queue shows while it waits).")
ENDINGS = {None: "finished", **STOPPED_WORDS}  # how a run ended (metrics.json's "stopped"), as its status line says
# Visitors who pressed Cancel while their training or sweep waited; the oldest are forgotten past a bound,
# since a program can call Cancel from any number of sessions.
_cancelled_in_queue: dict[str, None] = {}
MAX_CANCELLED_REMEMBERED = 10_000


def _outputs(**values) -> tuple:
    """One answer of the train handler (or of Open): named outputs set, the rest left as they are."""
    return tuple(values.pop(name, gr.skip()) for name in TRAIN_OUTPUTS)


def _shown(epoch: dict, final: dict | None = None) -> dict:
    """Output values that show a run's results: the per-epoch part, and the final part when there is one."""
    values = {**epoch, "live": gr.update(visible=True)}
    if final:
        mistakes = final["misclassified"]
        values.update(final, final=gr.update(visible=True), misclassified=gr.update(value=mistakes, visible=bool(mistakes)))
    return values


def outcome(run_id: str, metrics: dict, epochs: int) -> str:
    """The status line of a run that has results: how it ended, after how many epochs, and the model it kept."""
    best, accuracy = metrics["best_epoch"], metrics["val"]["accuracy"]
    model = (f"the best model (epoch {best}, validation accuracy {accuracy:.1%})" if best else
             f"the model as it was (validation accuracy {accuracy:.1%})")
    ending = ENDINGS.get(metrics.get("stopped"), metrics.get("stopped"))
    return (f"**Training {ending}** after {metrics['epochs_run']} of {epochs} epoch{'s' if epochs != 1 else ''}; "
            f"{model} is kept as run `{run_id}`.")


def _data_path(data) -> str:
    if not data:
        raise refusal("Check your photos first (step 1): press 'Check photos'")
    return data["path"]


def _form_config(weights_file, values) -> TrainConfig:
    """The form's config, its schedule checked before a run folder is made or a photo decoded."""
    with user_errors():
        config = config_from_form(form_values(values), weights_file)
        resolve(config.schedule)
    return config


def bounded(config: TrainConfig, request: gr.Request | None, uploaded_weights: str | None) -> TrainConfig:
    """The config within what this server allows the visitor: epochs, minutes, and where weights may come from."""
    if LIMITS.max_epochs and config.epochs > LIMITS.max_epochs:
        raise refusal(f"This server trains at most {LIMITS.max_epochs} epochs per run; you asked for {config.epochs}. "
                      "Lower Epochs, or run the app on your own machine for longer trainings.")
    weights_named = config.weights not in WEIGHT_CHOICES[:2] and config.weights != uploaded_weights
    if weights_named and not session.is_local(request):
        # A server path would let a visitor probe the server's files or load another visitor's model.
        raise refusal("Give your own weights as an uploaded file (.safetensors or .pth); "
                      "paths on the server are not accepted here.")
    if LIMITS.max_train_minutes and not 0 < config.max_minutes <= LIMITS.max_train_minutes:
        config = replace(config, max_minutes=LIMITS.max_train_minutes)
    return config


def training_events(data_path: str, config: TrainConfig, key: str, stop: threading.Event,
                    photos: tuple[int, int] | None = None):
    """fit_events for a new run of this visitor: yields (run id, event or None); a full disk becomes a message.

    `photos` (train, val), when the checked photos' report has counted them, sizes a ZeroGPU Space's GPU time.
    """
    session.ensure_room(key)
    run_id, run_dir = session.STORE.new_run(key)
    try:
        with user_errors():
            for event in fit_events(data_path, config, run_dir, stop, photos):
                yield run_id, event
    except OSError as exc:
        raise gr.Error(f"Training stopped: the run folder could not be written ({exc.strerror or exc})") from None


def _job_starts(request: gr.Request) -> tuple:
    """A training, sweep or experiment joins the queue: (Train, Find, Open, Run the experiment, Cancel). The first
    four wait for it (Open would cover its results); Cancel works until it ends."""
    _cancelled_in_queue.pop(session.visitor(request), None)
    return *[gr.update(interactive=False)] * 4, gr.update(interactive=True)


def train_starts(request: gr.Request) -> tuple:
    """Train pressed: (status, progress bar, per-epoch results, final results, *busy); the last
    run's results go, the bar's place (where the queue and the progress show) opens."""
    return QUEUED, gr.update(visible=True), gr.update(visible=False), gr.update(visible=False), *_job_starts(request)


def finder_starts(request: gr.Request) -> tuple:
    """'Find a learning rate' pressed: (its message, its chart, 'Use the suggested LR', *busy)."""
    return QUEUED, gr.update(visible=False), gr.update(interactive=False), *_job_starts(request)


def job_ends() -> tuple:
    """(Train, Find, Open, Run the experiment, Cancel) once the job has ended, however it ended."""
    return *[gr.update(interactive=True)] * 4, gr.update(interactive=False)


def train_ends() -> tuple:
    """(*busy, progress bar) once the training or experiment has ended: the bar's place closes."""
    return *job_ends(), gr.update(visible=False)


def _left_the_queue(key: str) -> bool:
    """Whether the visitor cancelled this job while it waited in the queue (it then ends before it starts)."""
    return _cancelled_in_queue.pop(key, False) is None


def find_lr(request: gr.Request, data, weights_file, *values):
    """Handler of the LR finder, a generator: (its chart, its message, the suggested LR, the 'use' button)."""
    def said(text):
        return gr.skip(), text, gr.skip(), gr.skip()

    key = session.visitor(request)
    if _left_the_queue(key):
        yield said("The LR sweep was cancelled before it started.")
        return
    try:
        path = _data_path(data)
        config = bounded(_form_config(weights_file, values), request, weights_file)
        session.ensure_room(key)
    except gr.Error as exc:
        yield said(error_markdown(exc, "Cannot sweep"))
        return
    stop = session.STOP_FLAGS.start(key)  # Cancel stops the sweep too
    try:
        with user_errors(ValueError):
            for event in sweep_events(path, config, session.fresh_upload_dir(key), stop):
                if isinstance(event, Log):
                    yield said(f"_{plain(event.message)}_")
                elif isinstance(event, SweepStep):
                    yield said(f"_Sweeping: step {event.step + 1}, LR {event.lr:.1e}, smoothed loss {event.loss:.3f}_")
                elif isinstance(event, SweepDone):
                    figure, text = results.finder_update(event.result)
                    yield gr.update(value=figure, visible=True), text, event.result.suggested_lr, gr.update(interactive=True)
                else:  # a heartbeat: gives Gradio the chance to close this handler when the page has gone
                    yield said(gr.skip())
    except (Cancelled, SlotAbandoned):
        yield said("The LR sweep was cancelled.")
    except gr.Error as exc:
        yield said(error_markdown(exc, "The LR sweep stopped"))
    finally:
        session.STOP_FLAGS.finish(key, stop)


def train_model(request: gr.Request, data, weights_file, *values, progress=gr.Progress()):
    """Handler of Train, a generator: every phase in the status line, the epochs as they end (table, curves,
    LR used over planned), then the results; a user's mistake in the status line.

    Gradio closes a generator handler whose page has gone (at its next yield, hence the heartbeats);
    closing it stops the training after the current batch.
    """
    key = session.visitor(request)
    if _left_the_queue(key):
        yield _outputs(status="**Cancelled** while it waited in the queue; nothing was trained.")
        return
    try:
        path = _data_path(data)
        config = bounded(_form_config(weights_file, values), request, weights_file)
    except gr.Error as exc:
        yield _outputs(status=error_markdown(exc, "Cannot train"))
        return
    stop = session.STOP_FLAGS.start(key)
    history: list[EpochStats] = []
    planned, done = None, 0.0  # done: the share of the planned batches trained, for the progress bar
    try:
        totals = data["report"]["totals"]
        for run_id, event in training_events(path, config, key, stop, (totals["train"], totals["val"])):
            if isinstance(event, Log):  # a phase: loading photos, computing features, evaluating, exporting
                message = event.message.splitlines()[0]
                progress(done, desc=message)
                yield _outputs(status=f"_{plain(message)}_")
            elif isinstance(event, BatchEvent):
                if planned is None:
                    planned = planned_head_lr(config, event.batches)
                done = (event.epoch * event.batches + event.batch + 1) / (event.batches * config.epochs)
                progress(done, desc=f"epoch {event.epoch + 1}/{config.epochs}, loss {event.loss:.3f}")
            elif isinstance(event, EpochStats):
                history.append(event)
                yield _outputs(status=f"Epoch {event.epoch}/{config.epochs}: validation accuracy {event.val_acc:.1%}",
                               **_shown(results.epoch_update(history, planned)))
            elif isinstance(event, Done):
                result = event.result
                progress(done, desc="Packing the run folder for download")
                archive = session.STORE.zip_run(result.run_dir)
                yield _outputs(status=outcome(run_id, result.metrics, config.epochs),
                               **_shown(results.epoch_update(history, planned),
                                        results.final_update(result, Path(data["report"]["root"]))),
                               download=gr.update(value=str(archive), visible=True), run_id=run_id)
            else:  # a heartbeat: gives Gradio the chance to close this handler when the page has gone
                yield _outputs()
    except (Cancelled, SlotAbandoned):
        yield _outputs(status="**Cancelled** before the first epoch finished; nothing was kept.")
    except gr.Error as exc:
        yield _outputs(status=error_markdown(exc, "Training failed"))
    finally:
        session.STOP_FLAGS.finish(key, stop)


def cancel_training(request: gr.Request = None) -> str:
    """Handler of Cancel: the visitor's training or sweep stops after its current batch (or leaves the queue)."""
    key = session.visitor(request)
    if session.STOP_FLAGS.stop(key):
        return "Stopping after the current batch; the best model so far is kept."
    _cancelled_in_queue[key] = None  # job_starts forgets it when the next one is queued
    while len(_cancelled_in_queue) > MAX_CANCELLED_REMEMBERED:
        del _cancelled_in_queue[next(iter(_cancelled_in_queue))]
    return "Cancelled: it leaves the queue without training."


def train_api(zip_path: str, config: dict, weights_file: str | None = None, request: gr.Request = None):
    """API: train on a zipped photo folder with a config dict (the CLI's fields), a generator of progress dicts.

    The last one holds the run id and the metrics. Give your own weights as `weights_file` (with
    "weights": "file" in the config). A caller that goes away stops its training.
    """
    if not zip_path:
        raise refusal("Send the photos as a .zip file")
    config = dict(config or {}) if isinstance(config, dict) else config
    if isinstance(config, dict) and config.get("weights") == "file":
        if not weights_file:
            raise refusal('"weights": "file" needs the weights file sent as weights_file')
        config["weights"] = weights_file
    with user_errors():
        train_config = TrainConfig.from_dict(config or {})
    train_config = bounded(train_config, request, weights_file)
    key = session.visitor(request)
    stop = session.STOP_FLAGS.start(key)
    progress = {"status": "starting"}
    try:
        for run_id, event in training_events(zip_path, train_config, key, stop):
            if isinstance(event, Log):
                progress = {"run_id": run_id, "status": event.message.splitlines()[0]}
            elif isinstance(event, EpochStats):
                progress = {"run_id": run_id, "status": "training", "epoch": event.epoch,
                            "epochs": train_config.epochs, "val_acc": event.val_acc, "val_loss": event.val_loss}
            elif isinstance(event, Done):
                progress = {"run_id": run_id, "status": "finished", "metrics": event.result.metrics}
            elif event is not None:
                continue
            yield progress
    except (Cancelled, SlotAbandoned):
        yield {"status": "cancelled before the first epoch finished; nothing was kept"}
    finally:
        session.STOP_FLAGS.finish(key, stop)


# ---------------------------------------------------------------- experiments

# The outputs of an experiment: the training's (its current run live), then the comparison's when it ends.
EXPERIMENT_OUTPUTS = (*TRAIN_OUTPUTS, "compare_runs", "compare_box", "compare_area",
                      *(f"compare_{name}" for name in compare.OUTPUTS))


def _experiment_outputs(**values) -> tuple:
    return tuple(values.pop(name, gr.skip()) for name in EXPERIMENT_OUTPUTS)


def series_bounded(config: TrainConfig, arms: int) -> TrainConfig:
    """A series gets the time of one training on a server that limits it: each of its runs an equal share."""
    if not LIMITS.max_train_minutes:
        return config
    return replace(config, max_minutes=min(config.max_minutes, LIMITS.max_train_minutes / arms))


def plan_experiment(request: gr.Request, data, weights_file, kind, *values) -> tuple:
    """What an experiment will train, and for how long, before it starts: (its plan, the Run button)."""
    try:
        config = bounded(_form_config(weights_file, values), request, weights_file)
        with user_errors():
            arms = arms_for(kind, config)
    except gr.Error as exc:
        return error_markdown(exc, "Cannot plan this experiment"), gr.update(interactive=False)
    names = ", ".join(f"**{plain(arm.name)}**" for arm in arms)
    lines = [f"**{KINDS[kind].title}:** {KINDS[kind].question}.",
             f"{len(arms)} runs: {names}; every other setting as in the form ({config.arch}, {config.strategy}, "
             f"{config.epochs} epochs, LR {config.lr:g}). Same photos, split and seed in every run, so only "
             f"this choice differs."]
    try:  # pretrained weights the runs need are loaded now, so a machine without them says so before anything trains
        with user_errors():
            check_weights(arms)
    except gr.Error as exc:
        lines.append(error_markdown(exc, "The pretrained run cannot start" if kind == "pretrained" else
                                    "These runs cannot start") + " Choose a weights file under Pretrained weights"
                     + (", or run another experiment." if kind == "pretrained" else ", or none."))
        return "\n\n".join(lines), gr.update(interactive=False)
    if LIMITS.max_train_minutes:
        lines.append(f"This server gives an experiment the time of one training ({LIMITS.max_train_minutes:g} minutes): "
                     f"each run stops after {series_bounded(config, len(arms)).max_minutes:.3g} minutes, keeping its "
                     "best model.")
    if data:
        totals = data["report"]["totals"]
        seconds = estimate(arms, totals["train"], totals["val"])
        lines.append(f"On your {totals['train']} training and {totals['val']} validation photos: "
                     f"**{duration_words(seconds)}** on this server (from a measured step time), if nothing else "
                     "is training.")
    else:
        lines.append("Check your photos (step 1) to see how long it will take.")
    # While this visitor's job runs the button stays as that job left it (it waits for the job to end).
    busy = session.STOP_FLAGS.running(session.visitor(request))
    return "\n\n".join(lines), gr.skip() if busy else gr.update(interactive=True)


def run_experiment_ui(request: gr.Request, data, weights_file, kind, *values, progress=gr.Progress()):
    """Handler of 'Run the experiment', a generator: "run 2 of 4" with the current run's live curves, then
    the arms side by side in the comparison. Cancel (or leaving the page) ends the series; finished runs stay."""
    key = session.visitor(request)
    if _left_the_queue(key):
        yield _experiment_outputs(status="**Cancelled** while it waited in the queue; nothing was trained.")
        return
    try:
        path = _data_path(data)
        config = bounded(_form_config(weights_file, values), request, weights_file)
        with user_errors():
            config = series_bounded(config, len(arms_for(kind, config)))
        session.ensure_room(key)
    except gr.Error as exc:
        yield _experiment_outputs(status=error_markdown(exc, "Cannot run the experiment"))
        return
    stop = session.STOP_FLAGS.start(key)
    history: list[EpochStats] = []
    arm, planned, seconds, started, lines = None, None, None, time.monotonic(), []

    def said(text: str) -> str:
        head = f"**Run {arm.index} of {arm.of}: {plain(arm.arm.name)}.** " if arm else ""
        return "\n\n".join([*lines, head + text])

    def new_run_dir(index, _arm):
        session.ensure_room(key)
        return session.STORE.new_run(key)[1]

    try:
        with user_errors():
            for event in experiment_events(path, kind, config, new_run_dir, stop=stop):
                if isinstance(event, SeriesPlanned):
                    seconds = event.seconds
                    yield _experiment_outputs(status=said(f"_{len(event.arms)} runs, {duration_words(seconds)}_"))
                elif isinstance(event, ArmStarts):
                    arm, history, planned = event, [], None
                    yield _experiment_outputs(status=said("_Starting_"), live=gr.update(visible=False),
                                              final=gr.update(visible=False))
                elif isinstance(event, Log):
                    message = event.message.splitlines()[0]
                    progress(((arm.index - 1) / arm.of) if arm else 0, desc=message)
                    yield _experiment_outputs(status=said(f"_{plain(message)}_"))
                elif isinstance(event, BatchEvent):
                    if planned is None:
                        planned = planned_head_lr(arm.arm.config, event.batches)
                    within = (event.epoch * event.batches + event.batch + 1) / (event.batches * config.epochs)
                    progress((arm.index - 1 + within) / arm.of,
                             desc=f"run {arm.index} of {arm.of} ({arm.arm.name}): epoch {event.epoch + 1}/{config.epochs}")
                elif isinstance(event, EpochStats):
                    history.append(event)
                    yield _experiment_outputs(
                        status=said(f"Epoch {event.epoch}/{config.epochs}: validation accuracy {event.val_acc:.1%}"),
                        **_shown(results.epoch_update(history, planned)))
                elif isinstance(event, ArmDone):
                    accuracy = event.result.metrics["val"]["accuracy"]
                    ending = f" ({ENDINGS[event.result.stopped]})" if event.result.stopped else ""
                    lines.append(f"Run {event.index} ({plain(event.arm.name)}): validation accuracy {accuracy:.1%}{ending}.")
                    yield _experiment_outputs(status=said("_Done_"), run_id=event.result.run_dir.name)
                elif isinstance(event, ArmFailed):
                    lines.append(f"Run {event.index} ({plain(event.arm.name)}) failed: {plain(event.message)}")
                    yield _experiment_outputs(status=said("_Failed_"))
                elif isinstance(event, ExperimentDone):
                    arm = None
                    yield _experiment_done(event, lines, time.monotonic() - started, seconds, key)
                else:  # a heartbeat: gives Gradio the chance to close this handler when the page has gone
                    yield _experiment_outputs()
    except (Cancelled, SlotAbandoned):
        yield _experiment_outputs(status=said("**Cancelled**; the runs that finished before are kept."))
    except gr.Error as exc:
        yield _experiment_outputs(status=error_markdown(exc, "The experiment stopped"))
    finally:
        session.STOP_FLAGS.finish(key, stop)


def _experiment_done(done: ExperimentDone, lines: list[str], took: float, estimated: float | None, key: str) -> tuple:
    """The experiment's last answer: how it went against the estimate, and its finished runs side by side."""
    ended = "cancelled" if done.stopped else "finished"
    timing = f"in {duration_words(took).removeprefix('about ')}" + (
        f" (estimated {duration_words(estimated)})" if estimated else "")
    head = f"**Experiment {ended}** {timing}: {len(done.run_dirs)} run{'s' if len(done.run_dirs) != 1 else ''} finished."
    if len(done.run_dirs) < 2:
        return _experiment_outputs(status="\n\n".join([head, *lines, "Fewer than two runs finished: nothing to compare."]))
    ids = [path.name for path in done.run_dirs]
    shown = compare.comparison_update(compare_runs(done.run_dirs), key)
    return _experiment_outputs(status="\n\n".join([head, *lines, "They are side by side under **5. Compare runs**."]),
                               compare_runs=gr.update(choices=compare.choices(key), value=ids),
                               compare_box=gr.update(open=True), compare_area=gr.update(visible=True),
                               live=gr.update(visible=False), **{f"compare_{k}": v for k, v in shown.items()})


# ---------------------------------------------------------------- your runs


def open_run(run_id: str | None, request: gr.Request = None) -> tuple:
    """Handler of 'Open': one of the visitor's runs in the results areas, as when its training ended.

    Answers (the runs panel's message, *TRAIN_OUTPUTS).
    """
    if not run_id:
        raise refusal("Choose one of your runs first")
    run = next((r for r in session.STORE.runs(session.visitor(request)) if r.run_id == run_id), None)
    if run is None:
        raise refusal("That run is not one of yours, or it has been deleted")
    folder = RunFolder(run.path)
    if not folder.is_finished():
        raise refusal("This run has no results: it is still training, or it stopped before writing them")
    shown = results.run_update(run.path)
    epochs = TrainConfig.from_dict(folder.read_config().train).epochs
    archive = session.STORE.zip_run(run.path)
    return "", *_outputs(status=outcome(run_id, folder.read_metrics(), epochs),
                         **_shown({k: shown[k] for k in EPOCH_OUTPUTS}, {k: shown[k] for k in FINAL_OUTPUTS}),
                         download=gr.update(value=str(archive), visible=True))


def delete_run(run_id: str | None, request: gr.Request = None) -> str:
    """Handler of 'Delete this run' (and /delete_run): one of the visitor's own runs, gone from disk."""
    if not run_id:
        raise refusal("Choose one of your runs first")
    with user_errors(ValueError):
        session.STORE.delete_run(session.visitor(request), run_id)
    return f"Run `{run_id}` deleted."


# ---------------------------------------------------------------- sharing


def _hub_endpoint() -> str | None:
    # Read at call time (huggingface_hub reads HF_ENDPOINT once, at import).
    return os.environ.get("HF_ENDPOINT") or None


def push_to_hub(run_id: str | None, repo_id: str, private: bool, token: str, oauth_token: gr.OAuthToken | None = None,
                request: gr.Request = None):
    """Handler of Push: as the visitor (the token typed here, else their sign-in); on loopback, else this computer's login."""
    from models.hub import push_run

    if not run_id:
        raise refusal("Train a model first (or pick one of this session's runs)")
    token = session.hub_token(token, oauth_token, request)
    with user_errors(ValueError):
        url = push_run(session.STORE.find(run_id), (repo_id or "").strip(), token=token, private=bool(private),
                       endpoint=_hub_endpoint(), use_login=not session.is_shared(request))
    return f"Pushed to [{url}]({url})", gr.update(value="")  # the token box is cleared after use


def make_space_for_run(run_id: str | None, repo_id: str, private: bool, token: str,
                       oauth_token: gr.OAuthToken | None = None, request: gr.Request = None):
    """Handler of 'Make a Space': the classify-only app as a zip, pushed as a Space when a repo is named (as push_to_hub)."""
    from models.hub import make_space, push_space

    if not run_id:
        raise refusal("Train a model first (or pick one of this session's runs)")
    push_as = session.hub_token(token, oauth_token, request) if (repo_id or "").strip() else None
    with user_errors(ValueError):
        run = RunFolder(session.STORE.find(run_id))
        folder = make_space(run.path, run.space_dir, examples=EXAMPLES[:3])
    archive = shutil.make_archive(str(run.path / f"{run_id}-space"), "zip", folder)
    message = "Space app written: unzip and run `python app.py`, or upload it as a Gradio Space."
    if (repo_id or "").strip():
        with user_errors(ValueError):
            url = push_space(run.path, repo_id.strip(), token=push_as, private=bool(private), endpoint=_hub_endpoint(),
                             use_login=not session.is_shared(request))
        message = f"Space pushed to [{url}]({url})"
    return message, gr.update(value=archive, visible=True), gr.update(value="")


def token_box(request: gr.Request):
    """The token box's label for the running server (build time knows only GRADIO_SERVER_NAME, not the launch's address)."""
    return gr.update(label=session.hub_token_label(request))


# ---------------------------------------------------------------- layout and wiring


def _field(name: str):
    return next(f for f in config_fields(TrainConfig) if f.name == name)


def _weights_inputs(holder: dict):
    """The weights field: imagenet / none / file, with the file upload under it (kept in `holder`)."""
    def build():
        weights = gr.Radio(list(WEIGHT_CHOICES), value=TrainConfig().weights, label=_field("weights").metadata["label"],
                           info="ImageNet (torch hub cache), none (random init), or a weights file", elem_id="ft-weights")
        holder["file"] = gr.File(label="Weights file (.safetensors or .pth)", file_types=[".safetensors", ".pth", ".pt"],
                                 visible=False, elem_id="ft-weights-file")
        return weights
    return build


def _scheduler_inputs(holder: dict):
    """The scheduler field, under 'Use the studio's schedule' and the line saying what that changed."""
    def build():
        holder["take"] = gr.Button("Use the schedule drawn in the studio tab", size="md", elem_id="ft-take-schedule")
        holder["taken"] = gr.Markdown(elem_id="ft-take-schedule-message")
        return _component(_field("scheduler"))
    return build


def _params_inputs(holder: dict):
    """The scheduler's parameters: the studio's own fields, one group per scheduler (kept in `holder`).

    A parameter torch requires, left blank, is derived from the run; its field says how.
    """
    def build():
        holder["groups"], holder["params"] = scheduler_param_fields(_field("scheduler").default, id_prefix="ft-param")
        for (scheduler, name), field in holder["params"].items():
            param = next(p for p in CATALOGUE[scheduler].params if p.name == name)
            if param.derive:
                field.placeholder = f"blank: {param.derived}"
    return build


def finetune_tab(current_schedule: gr.State, runs_changed: gr.State):
    data_state = gr.State(None)  # {"path": folder to train from, "report": data report}
    no_badge = gr.State(None)  # show_progress_on of events whose errors show in place: no "Error" badge over them
    gr.Markdown("Give photos (one folder per class), check them, pick a strategy and a schedule, and train. "
                "Training runs one at a time; you will see your place in the queue.")
    with gr.Accordion("1. Photos", open=True):
        source = gr.Radio(list(SOURCES), value="Sample photos", label="Where are the photos?", elem_id="ft-source")
        picker = folder_upload.folder_picker(visible=False, elem_id="ft-folder")
        zip_file = gr.File(label="A .zip of your folder (class subfolders, or train/ val/ test/)", file_types=[".zip"],
                           visible=False, elem_id="ft-zip")
        with gr.Group(visible=False) as per_class_box:
            class_count = gr.State(2)
            class_rows, class_names, class_files = [], [], []
            for i in range(MAX_CLASSES):
                with gr.Row(visible=i < 2) as row:
                    class_names.append(gr.Textbox(label=f"Class {i + 1} name", scale=1, min_width=160,
                                                  elem_id=f"ft-class-{i}"))
                    class_files.append(gr.File(label="Its photos", file_count="multiple", file_types=["image"], scale=3,
                                               min_width=200, elem_id=f"ft-class-files-{i}"))
                class_rows.append(row)
        with gr.Row(visible=False) as class_buttons:
            add_class = gr.Button("+ Add a class", size="md", elem_id="ft-add-class")
            remove_class = gr.Button("− Remove the last class", size="md", elem_id="ft-remove-class")
        folder = gr.Textbox(label="Folder on this computer", placeholder="/home/me/photos/food", visible=False)
        check = gr.Button("Check photos", variant="secondary", elem_id="ft-check")
        report_md = gr.Markdown(elem_id="ft-report")
        samples = gr.Gallery(label="Sample photos per class", columns=8, height=220, visible=False)
    holder: dict = {}
    with gr.Accordion("2. Settings", open=True):
        form = config_form(TrainConfig, custom={"weights": _weights_inputs(holder), "scheduler": _scheduler_inputs(holder),
                                                "params": _params_inputs(holder)})
    weights_file, param_groups, params = holder["file"], holder["groups"], holder["params"]
    for name, (control, value) in SHOWN_WHEN.items():
        form[name].visible = form[control].value == value
    with gr.Accordion("3. Learning-rate finder", open=False):
        gr.Markdown("An exponential LR sweep on your photos (as fastai's `lr_find`); it stops when the loss diverges.")
        with gr.Row():
            find_button = gr.Button("Find a learning rate", elem_id="ft-find-lr")
            use_lr = gr.Button("Use the suggested LR", interactive=False, elem_id="ft-use-lr")
        finder_md = gr.Markdown(elem_id="ft-finder-message")
        finder_plot = gr.Plot(label="LR finder", show_label=False, visible=False, elem_id="ft-finder-plot")
        suggested = gr.State(None)
    with gr.Accordion("4. Experiments: the tutorials' comparisons on your photos, one click each", open=False) as exp_box:
        gr.Markdown("Several runs on the photos you checked that differ in one choice, one after another in the "
                    "training queue; when they end they open side by side under '5. Compare runs'.")
        kind = gr.Radio([(k.title, name) for name, k in KINDS.items()], value="schedules", label="Experiment",
                        elem_id="ft-exp-kind")
        plan_md = gr.Markdown(elem_id="ft-exp-plan")
        run_exp = gr.Button("Run the experiment", variant="primary", elem_id="ft-run-exp")
    with gr.Row():
        train = gr.Button("Train", variant="primary", scale=4, elem_id="ft-train")
        cancel = gr.Button("Cancel", interactive=False, scale=1, min_width=110, elem_id="ft-cancel")
    status = gr.Markdown(elem_id="ft-status")
    # Where Gradio draws the training's progress bar and, before it starts, its place in the queue.
    progress_bar = gr.Markdown(visible=False, min_height=70, elem_id="ft-progress")
    with gr.Column(visible=False) as live:  # shown from the first epoch on
        epoch_table = gr.Dataframe(label="Epochs", interactive=False, elem_id="ft-epoch-table")
        with gr.Row():
            loss_plot = gr.Plot(label="Loss", show_label=False, min_width=320, elem_id="ft-loss-plot")
            acc_plot = gr.Plot(label="Accuracy", show_label=False, min_width=320, elem_id="ft-acc-plot")
            lr_plot = gr.Plot(label="Head LR: used over planned", show_label=False, min_width=320, elem_id="ft-lr-plot")
    with gr.Column(visible=False) as final:  # shown when a training has ended
        metrics_md = gr.Markdown(elem_id="ft-metrics")
        with gr.Row():
            per_class = gr.Dataframe(label="Per class (validation)", interactive=False, min_width=320, elem_id="ft-per-class")
            confusion = gr.Plot(label="Confusion matrix (validation)", min_width=320, elem_id="ft-confusion")
        wrong = gr.Gallery(label="The most confident mistakes (validation)", columns=6, height=260, elem_id="ft-mistakes")
        download = gr.DownloadButton("Download the run (zip)", elem_id="ft-download")
    with gr.Accordion("5. Compare runs", open=False) as compare_box:
        comparing = compare.compare_section(runs_changed)
    with gr.Accordion("6. Share: push to the Hugging Face Hub, or make a Space", open=False):
        with gr.Row():
            share_run = gr.Dropdown(label="Run", choices=[])
            repo_id = gr.Textbox(label="Repository", placeholder="your-name/food-classifier")
            private = gr.Checkbox(value=False, label="Private")
        with gr.Row():
            token = gr.Textbox(label=session.hub_token_label(), type="password")
            if session.hub_sign_in():
                gr.LoginButton()
        with gr.Row():
            push = gr.Button("Push the model")
            space = gr.Button("Make a Space from this run")
        share_md = gr.Markdown()
        space_zip = gr.DownloadButton("Download the Space app (zip)", visible=False)
    with gr.Accordion("7. Your runs", open=False) as runs_box:  # opened on page load when the visitor has runs
        with gr.Row():
            own_run = gr.Dropdown(label="Run", choices=[], scale=3, elem_id="ft-own-run")
            open_button = gr.Button("Open", variant="primary", scale=1, min_width=100, elem_id="ft-open-run")
            delete = gr.Button("Delete this run", variant="stop", scale=1, min_width=140, elem_id="ft-delete-run")
        runs_md = gr.Markdown(elem_id="ft-runs-message")

    # -- wiring
    settings = [weights_file, *(form[name] for name in FORM_INPUTS), *(params[key] for key in PARAM_KEYS)]
    schedule_fields = [*(form[name] for name in SCHEDULE_INPUTS), *(params[key] for key in PARAM_KEYS)]
    source.change(pick_source, source, [zip_file, per_class_box, class_buttons, folder, picker], queue=False)
    form["weights"].change(lambda w: gr.update(visible=w == "file"), form["weights"], weights_file, queue=False)
    for control in {control for control, _ in SHOWN_WHEN.values()}:
        shown = [name for name, (c, _) in SHOWN_WHEN.items() if c == control]
        form[control].change(lambda value, shown=shown: [gr.update(visible=value == SHOWN_WHEN[n][1]) for n in shown],
                             form[control], [form[n] for n in shown], queue=False, api_visibility="private")
    form["scheduler"].change(pick_scheduler, form["scheduler"], [*param_groups.values(), form["step_per"]], queue=False,
                             api_visibility="private")
    add_class.click(lambda c: set_class_count(c, 1), class_count, [class_count, *class_rows], queue=False)
    remove_class.click(lambda c: set_class_count(c, -1), class_count, [class_count, *class_rows], queue=False)
    check_inputs = [source, zip_file, folder, class_count, *class_names, *class_files, picker]  # as check_photos
    # A failed check leaves no photos to train from: the report area says why, the grid goes.
    check_on_page = in_place(check_photos, 3, at=1, title="Cannot use these photos", working="_Checking the photos…_",
                             on_error={0: None, 2: gr.update(visible=False)})
    check.click(check_on_page, check_inputs, [data_state, report_md, samples], api_visibility="private",
                show_progress_on=[no_badge])
    # A zip is the whole dataset: its report comes as soon as it is uploaded.
    zip_file.upload(check_on_page, check_inputs, [data_state, report_md, samples], api_visibility="private",
                    show_progress_on=[no_badge])
    # So is a folder: its report comes as soon as its photos have been sent (the page sets the picker's value).
    picker.change(check_on_page, check_inputs, [data_state, report_md, samples], api_visibility="private",
                  show_progress_on=[no_badge])
    holder["take"].click(take_studio_schedule, [current_schedule, *schedule_fields], [*schedule_fields, holder["taken"]],
                         queue=False, api_visibility="private")

    busy = [train, find_button, open_button, run_exp, cancel]  # as _job_starts' answer
    find_button.click(finder_starts, None, [finder_md, finder_plot, use_lr, *busy], queue=False, api_visibility="private").then(
        find_lr, [data_state, *settings], [finder_plot, finder_md, suggested, use_lr], concurrency_limit=1,
        concurrency_id="training", api_visibility="private", show_progress_on=[finder_md]
    ).then(job_ends, None, busy, queue=False, api_visibility="private")
    use_lr.click(lambda v: v, suggested, form["lr"], queue=False)
    train_outputs = [status, live, epoch_table, loss_plot, acc_plot, lr_plot, final, metrics_md, per_class, confusion, wrong,
                     download, runs_changed]  # as TRAIN_OUTPUTS
    # The previous run's results go as soon as a new one is queued; its place in the queue shows in the bar's place.
    train.click(train_starts, None, [status, progress_bar, live, final, *busy], queue=False, api_visibility="private").then(
        train_model, [data_state, *settings], train_outputs, concurrency_limit=1, concurrency_id="training",
        api_visibility="private", show_progress_on=[progress_bar]
    ).then(train_ends, None, [*busy, progress_bar], queue=False, api_visibility="private")
    experiment_outputs = [*train_outputs, comparing["runs"], compare_box, comparing["area"],
                          *(comparing[name] for name in compare.OUTPUTS)]  # as EXPERIMENT_OUTPUTS
    plan_inputs = [data_state, weights_file, kind, *settings[1:]]
    for trigger in (kind.change, exp_box.expand, data_state.change):
        trigger(plan_experiment, plan_inputs, [plan_md, run_exp], concurrency_limit=1, concurrency_id="plan",
                api_visibility="private", show_progress_on=[plan_md])
    run_exp.click(train_starts, None, [status, progress_bar, live, final, *busy], queue=False,
                  api_visibility="private").then(
        run_experiment_ui, plan_inputs, experiment_outputs, concurrency_limit=1,
        concurrency_id="training", api_visibility="private", show_progress_on=[progress_bar]
    ).then(train_ends, None, [*busy, progress_bar], queue=False, api_visibility="private")
    # Queued (so the request carries the browser session), in its own slot: it never waits behind training.
    cancel.click(cancel_training, None, status, concurrency_id="cancel", concurrency_limit=None, show_progress="hidden")
    runs_changed.change(session.run_choices, runs_changed, share_run)
    # Undocumented endpoints: programs (and the tests) call the share panel as the page does.
    share_run.focus(session.run_choices, None, share_run, api_name="share_runs", api_visibility="undocumented")
    push.click(in_place(push_to_hub, 2, at=0, title="Cannot push", working="_Pushing to the Hub…_"),
               [share_run, repo_id, private, token], [share_md, token], api_name="push_to_hub",
               api_visibility="undocumented", show_progress_on=[no_badge])
    space.click(in_place(make_space_for_run, 3, at=0, title="Cannot make the Space", working="_Writing the Space…_"),
                [share_run, repo_id, private, token], [share_md, space_zip, token], api_name="make_space",
                api_visibility="undocumented", show_progress_on=[no_badge])
    gr.on(None, token_box, None, token, queue=False, api_visibility="private")  # on page load

    runs_changed.change(session.run_choices, runs_changed, own_run)
    # After a reload the newest run is one click away: its panel opens with it chosen.
    runs_changed.change(lambda newest: gr.update(open=True) if newest else gr.skip(), runs_changed, runs_box, queue=False,
                        api_visibility="private")
    own_run.focus(session.run_choices, None, own_run, api_name="own_runs", api_visibility="private")
    open_button.click(in_place(open_run, 1 + len(train_outputs), at=0, title="Cannot open this run",
                               working="_Opening the run…_"),
                      own_run, [runs_md, *train_outputs], api_name="open_run", api_visibility="private",
                      show_progress_on=[no_badge])
    delete.click(in_place(delete_run, 1, at=0, title="Cannot delete this run"), own_run, runs_md, api_name="delete_own_run",
                 api_visibility="private", show_progress_on=[no_badge]).then(
        session.newest_run, None, runs_changed, api_visibility="private")

    # /train for programs: a zip and the CLI's fields as a dict; hidden components keep uploads validated.
    api_zip = gr.File(visible=False, file_types=[".zip"])
    api_config = gr.JSON(visible=False)
    api_weights = gr.File(visible=False, file_types=[".safetensors", ".pth", ".pt"])
    api_result = gr.JSON(visible=False)
    gr.Button(visible=False).click(train_api, [api_zip, api_config, api_weights], api_result, api_name="train",
                                   concurrency_limit=1, concurrency_id="training")
    api_run_id = gr.Textbox(visible=False)
    gr.Button(visible=False).click(delete_run, api_run_id, gr.Markdown(visible=False), api_name="delete_run")
