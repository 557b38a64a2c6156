"""The fine-tune tab: photos in, a data report, the settings form, the LR finder, live training, results, sharing.

The settings form is derived from `trainer.config`'s fields (`config_form`); training runs through
`trainer.stream.fit_events`, one at a time in the "training" queue slot.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pandas as pd

from models.job_slot import SlotAbandoned
from models.metrics import confusion_figure
from models.run_folder import RunFolder
from trainer.config import FORM_GROUPS, ConfigError, ScheduleConfig, TrainConfig, choices_of, config_fields, default_of
from trainer.data import DataError, Dataset, assemble_class_folders, open_dataset
from trainer.stream import Done, Log, SweepDone, SweepStep, fit_events, sweep_events
from trainer.task import Cancelled, planned_head_lr
from trainer.train import BatchEvent, EpochStats, FitResult
from ui import EXAMPLES, SAMPLE_PHOTOS, session
from ui.errors import user_errors
from ui.limits import LIMITS

MAX_CLASSES = 8  # class slots in the per-class upload
SOURCES = ("Sample photos", "Zip file", "Photos per class", "Folder on this computer")
WEIGHT_CHOICES = ("imagenet", "none", "file")  # "file": the uploaded weights file
# The form's fields, in the order handlers receive their values: every config field given a form row.
FORM_FIELDS = tuple(f.name for f in config_fields(TrainConfig) if f.metadata.get("group"))
SCHEDULE_FIELDS = tuple(f.name for f in config_fields(ScheduleConfig) if f.name in FORM_FIELDS)
GROUP_TITLES = {"more": "More settings: momentum, weight decay, label smoothing"}


# ---------------------------------------------------------------- the settings form


def config_form(cls: type = TrainConfig, custom: dict | None = None) -> dict[str, gr.components.Component]:
    """One component per form field of the config dataclass `cls`, a row per group, from each field's metadata.

    `custom` maps a field name to a function that builds its component(s) in place and returns the
    one whose value is the field's.
    """
    custom = custom or {}
    fields = [f for f in config_fields(cls) if f.metadata.get("group")]
    form = {}
    for group in FORM_GROUPS:
        members = [f for f in fields if f.metadata["group"] == group]
        if not members:
            continue
        holder = gr.Accordion(GROUP_TITLES[group], open=False) if group in GROUP_TITLES else contextlib.nullcontext()
        with holder, gr.Row():
            for f in members:
                form[f.name] = custom[f.name]() if f.name in custom else _component(f)
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


def take_studio_schedule(current):
    """The studio tab's schedule into the form's schedule fields."""
    if not current:
        return [gr.skip()] * len(SCHEDULE_FIELDS)
    config = ScheduleConfig.from_dict(current).to_dict()
    return tuple(json.dumps(config[name]) if isinstance(config[name], dict) else config[name] for name in SCHEDULE_FIELDS)


# ---------------------------------------------------------------- photos


def open_photos(source: str, zip_file, folder: str, classes: dict[str, list], key: str, local_ok: bool) -> Dataset:
    """Check the photos a user gave (any of the four ways) and return the opened dataset."""
    session.STORE.expire()
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


def pick_source(choice, request: gr.Request):
    local_ok = session.is_local(request)
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
    key = session.visitor(request)
    session.ensure_room(key)
    with user_errors():
        dataset = open_photos(choice, zip_path, folder_path, classes, key, session.is_local(request))
    grid = sample_grid(dataset.report)
    state = {"path": str(dataset.root), "report": dataset.report}
    return state, report_markdown(dataset.report), gr.update(value=grid, visible=bool(grid))


# ---------------------------------------------------------------- training and its results


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


def _data_path(data) -> str:
    if not data:
        raise gr.Error("Check your photos first (step 1): press 'Check photos'")
    return data["path"]


def _form_config(weights_file, values) -> TrainConfig:
    with user_errors():
        return config_from_form(dict(zip(FORM_FIELDS, values)), weights_file)


def bounded(config: TrainConfig, request: gr.Request | None, uploaded_weights: str | None) -> TrainConfig:
    """The config within what this server allows the visitor: epochs, minutes, and where weights may come from."""
    if LIMITS.max_epochs and config.epochs > LIMITS.max_epochs:
        raise gr.Error(f"This server trains at most {LIMITS.max_epochs} epochs per run; you asked for {config.epochs}. "
                       "Lower Epochs, or run the app on your own machine for longer trainings.", print_exception=False)
    weights_named = config.weights not in WEIGHT_CHOICES[:2] and config.weights != uploaded_weights
    if weights_named and not session.is_local(request):
        # A server path would let a visitor probe the server's files or load another visitor's model.
        raise gr.Error("Give your own weights as an uploaded file (.safetensors or .pth); "
                       "paths on the server are not accepted here.", print_exception=False)
    if LIMITS.max_train_minutes and not 0 < config.max_minutes <= LIMITS.max_train_minutes:
        config = replace(config, max_minutes=LIMITS.max_train_minutes)
    return config


def training_events(data_path: str, config: TrainConfig, key: str, stop: threading.Event):
    """fit_events for a new run of this visitor: yields (run id, event or None); a full disk becomes a message."""
    session.ensure_room(key)
    run_id, run_dir = session.STORE.new_run(key)
    try:
        with user_errors():
            for event in fit_events(data_path, config, run_dir, stop):
                yield run_id, event
    except OSError as exc:
        raise gr.Error(f"Training stopped: the run folder could not be written ({exc.strerror or exc})") from None


def find_lr(request: gr.Request, data, weights_file, *values):
    """Handler of the LR finder, a generator: (plot data, message, suggested LR, enable the 'use' button)."""
    path = _data_path(data)
    key = session.visitor(request)
    config = bounded(_form_config(weights_file, values), request, weights_file)
    session.ensure_room(key)
    stop = session.STOP_FLAGS.start(key)  # Cancel stops the sweep too
    try:
        with user_errors(ValueError):
            for event in sweep_events(path, config, session.fresh_upload_dir(key), stop):
                if isinstance(event, Log):
                    yield gr.skip(), f"_{event.message}_", gr.skip(), gr.skip()
                elif isinstance(event, SweepStep):
                    yield gr.skip(), f"_Sweeping: step {event.step + 1}, LR {event.lr:.1e}_", gr.skip(), gr.skip()
                elif isinstance(event, SweepDone):
                    result = event.result
                    frame = pd.DataFrame({"log10 lr": [math.log10(v) for v in result.lr], "loss": result.loss})
                    text = f"**Suggested LR: {result.suggested_lr:.2e}** (rule: {result.rule}); swept {len(result.lr)} steps."
                    yield frame, text, result.suggested_lr, gr.update(interactive=True)
                else:  # a heartbeat: gives Gradio the chance to close this handler when the page has gone
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
    except (Cancelled, SlotAbandoned):
        yield gr.skip(), "The LR sweep was cancelled.", gr.skip(), gr.skip()
    finally:
        session.STOP_FLAGS.finish(key, stop)


TRAIN_OUTPUTS = ("status", "epoch_table", "loss_plot", "acc_plot", "lr_plot", "metrics", "per_class", "confusion",
                 "misclassified", "download", "run_id")


def _outputs(**values) -> tuple:
    """One yield of the train handler: named outputs set, the rest left as they are."""
    return tuple(values.pop(name, gr.skip()) for name in TRAIN_OUTPUTS)


def train_model(request: gr.Request, data, weights_file, *values, progress=gr.Progress()):
    """Handler of Train, a generator: streams epochs (table, curves, LR used over planned), then the results.

    Gradio closes a generator handler whose page has gone (at its next yield, hence the heartbeats);
    closing it stops the training after the current batch.
    """
    path = _data_path(data)
    config = bounded(_form_config(weights_file, values), request, weights_file)
    key = session.visitor(request)
    stop = session.STOP_FLAGS.start(key)
    history: list[EpochStats] = []
    planned = None
    try:
        for run_id, event in training_events(path, config, key, stop):
            if isinstance(event, Log):
                yield _outputs(status=f"_{event.message.splitlines()[0]}_")
            elif isinstance(event, BatchEvent):
                if planned is None:
                    planned = planned_head_lr(config, event.batches)
                done = event.epoch * event.batches + event.batch + 1
                progress(done / (event.batches * config.epochs),
                         desc=f"epoch {event.epoch + 1}/{config.epochs}, loss {event.loss:.3f}")
            elif isinstance(event, EpochStats):
                history.append(event)
                table, loss, acc = history_frames(history)
                yield _outputs(status=f"Epoch {event.epoch}/{config.epochs}: val accuracy {event.val_acc:.1%}",
                               epoch_table=table, loss_plot=loss, acc_plot=acc, lr_plot=lr_frame(planned, history))
            elif isinstance(event, Done):
                result = event.result
                yield _outputs(
                    status=f"Run `{run_id}` finished.",
                    metrics=metrics_markdown(result),
                    per_class=per_class_frame(result.metrics["val"]),
                    confusion=confusion_figure([("Validation", result.metrics["val"]["confusion_matrix"])], result.labels),
                    misclassified=misclassified(result, Path(data["report"]["root"])),
                    download=gr.update(value=str(session.STORE.zip_run(result.run_dir)), visible=True),
                    run_id=run_id,
                )
            else:  # a heartbeat: gives Gradio the chance to close this handler when the page has gone
                yield _outputs()
    except (Cancelled, SlotAbandoned):
        yield _outputs(status="Cancelled before the first epoch finished; nothing was kept.")
    finally:
        session.STOP_FLAGS.finish(key, stop)


def cancel_training(request: gr.Request = None) -> str:
    if not session.STOP_FLAGS.stop(session.visitor(request)):
        return "Nothing is training in this session."
    return "Stopping after the current batch; the best model so far is kept."


def train_api(zip_path: str, config: dict, weights_file: str | None = None, request: gr.Request = None):
    """API: train on a zipped photo folder with a config dict (the CLI's fields), a generator of progress dicts.

    The last one holds the run id and the metrics. Give your own weights as `weights_file` (with
    "weights": "file" in the config). A caller that goes away stops its training.
    """
    if not zip_path:
        raise gr.Error("Send the photos as a .zip file")
    config = dict(config or {}) if isinstance(config, dict) else config
    if isinstance(config, dict) and config.get("weights") == "file":
        if not weights_file:
            raise gr.Error('"weights": "file" needs the weights file sent as weights_file')
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


def delete_run(run_id: str | None, request: gr.Request = None) -> str:
    """Handler of 'Delete this run' (and /delete_run): one of the visitor's own runs, gone from disk."""
    if not run_id:
        raise gr.Error("Choose one of your runs first", print_exception=False)
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
        raise gr.Error("Train a model first (or pick one of this session's runs)")
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
        raise gr.Error("Train a model first (or pick one of this session's runs)")
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


def _weights_inputs(holder: dict):
    """The weights field: imagenet / none / file, with the file upload beside it (kept in `holder`)."""
    def build():
        weights = gr.Radio(list(WEIGHT_CHOICES), value=TrainConfig().weights, label="Pretrained weights", elem_id="ft-weights",
                           info="ImageNet (torch hub cache), none (random init), or a weights file")
        holder["file"] = gr.File(label="Weights file (.safetensors or .pth)", file_types=[".safetensors", ".pth", ".pt"],
                                 visible=False)
        return weights
    return build


def finetune_tab(current_schedule: gr.State, runs_changed: gr.State):
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
    weights_holder: dict = {}
    with gr.Accordion("2. Settings", open=True):
        form = config_form(TrainConfig, custom={"weights": _weights_inputs(weights_holder)})
        take_schedule = gr.Button("Use the schedule from the studio tab", size="sm")
    weights_file = weights_holder["file"]
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
            token = gr.Textbox(label=session.hub_token_label(), type="password")
            if session.hub_sign_in():
                gr.LoginButton()
        with gr.Row():
            push = gr.Button("Push the model")
            space = gr.Button("Make a Space from this run")
        share_md = gr.Markdown()
        space_zip = gr.DownloadButton("Download the Space app (zip)", visible=False)
    with gr.Accordion("5. Your runs", open=False):
        with gr.Row():
            own_run = gr.Dropdown(label="Run", choices=[], elem_id="ft-own-run")
            delete = gr.Button("Delete this run", variant="stop", size="sm", elem_id="ft-delete-run")
        delete_md = gr.Markdown(elem_id="ft-delete-message")

    # -- wiring
    settings = [weights_file, *(form[name] for name in FORM_FIELDS)]  # as the handlers zip them with FORM_FIELDS
    source.change(pick_source, source, [zip_file, per_class_box, folder], queue=False)
    form["weights"].change(lambda w: gr.update(visible=w == "file"), form["weights"], weights_file, queue=False)
    add_class.click(lambda c: set_class_count(c, 1), class_count, [class_count, *class_rows], queue=False)
    remove_class.click(lambda c: set_class_count(c, -1), class_count, [class_count, *class_rows], queue=False)
    check_inputs = [source, zip_file, folder, class_count, *class_names, *class_files]
    check.click(check_photos, check_inputs, [data_state, report_md, samples], api_visibility="private")
    # A zip is the whole dataset: its report comes as soon as it is uploaded.
    zip_file.upload(check_photos, check_inputs, [data_state, report_md, samples], api_visibility="private")
    take_schedule.click(take_studio_schedule, current_schedule, [form[name] for name in SCHEDULE_FIELDS], queue=False)
    find_button.click(find_lr, [data_state, *settings], [finder_plot, finder_md, suggested, use_lr], concurrency_limit=1,
                      concurrency_id="training", api_visibility="private")
    use_lr.click(lambda v: v, suggested, form["lr"], queue=False)
    train_outputs = [status, epoch_table, loss_plot, acc_plot, lr_plot, metrics_md, per_class, confusion, wrong,
                     download, runs_changed]
    train.click(train_model, [data_state, *settings], train_outputs, concurrency_limit=1, concurrency_id="training",
                api_visibility="private", show_progress_on=[status])
    # Queued (so the request carries the browser session), in its own slot: it never waits behind training.
    cancel.click(cancel_training, None, status, concurrency_id="cancel", concurrency_limit=None)
    runs_changed.change(session.run_choices, runs_changed, share_run)
    # Undocumented endpoints: programs (and the tests) call the share panel as the page does.
    share_run.focus(session.run_choices, None, share_run, api_name="share_runs", api_visibility="undocumented")
    push.click(push_to_hub, [share_run, repo_id, private, token], [share_md, token], api_name="push_to_hub",
               api_visibility="undocumented")
    space.click(make_space_for_run, [share_run, repo_id, private, token], [share_md, space_zip, token],
                api_name="make_space", api_visibility="undocumented")
    gr.on(None, token_box, None, token, queue=False, api_visibility="private")  # on page load

    runs_changed.change(session.run_choices, runs_changed, own_run)
    own_run.focus(session.run_choices, None, own_run, api_name="own_runs", api_visibility="private")
    delete.click(delete_run, own_run, delete_md, api_name="delete_own_run", api_visibility="private").then(
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
