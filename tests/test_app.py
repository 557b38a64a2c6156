"""The Gradio app: its tabs' handlers (ui/), and its API endpoints through gradio_client on a launched app."""

import json
import threading
import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import torch
from gradio_client import Client

import app
from conftest import served_app
from models.run_store import RunStore
from models.serving import ModelServer
from trainer.config import ConfigError, ScheduleConfig, TrainConfig
from trainer.schedules import ScheduleError, ValLossShape, lr_curve
from ui import classify, errors, finetune, folder_upload, schedules, session


@pytest.fixture(scope="module")
def client():
    with served_app() as url:
        yield Client(url, verbose=False)


def test_app_has_the_three_tabs():
    labels = [block.label for block in app.demo.blocks.values() if block.__class__.__name__ == "Tab"]
    assert labels == ["Learning-rate schedules", "Fine-tune", "Classify"]


def test_form_values_become_a_schedule_config_with_blank_fields_left_to_defaults():
    config = schedules.schedule_from_fields(
        "MultiStepLR", 0.1, 20.0, 5.0, 2.0, "batch",
        {("MultiStepLR", "milestones"): "[10, 40]", ("MultiStepLR", "gamma"): 0.5, ("StepLR", "step_size"): 3.0},
    )
    assert config == ScheduleConfig("MultiStepLR", 0.1, 20, 5, {"milestones": "[10, 40]", "gamma": 0.5}, 2, "batch")
    blank = schedules.schedule_from_fields("CosineAnnealingLR", 0.1, 10, 1, 0, "epoch", {("CosineAnnealingLR", "T_max"): ""})
    assert blank.params == {}


def test_render_overlays_compared_schedules_and_shows_code_and_val_loss():
    config = ScheduleConfig("ReduceLROnPlateau", 0.1, 12, 2, {"patience": 1})
    step = {"label": "step", "colour": schedules.COLOURS[0], "steps": [0, 23], "lr": [0.1, 0.1], "steps_per_epoch": 2,
            "epochs": 12, "warmup_epochs": 0, "per_batch": False}
    figure, val_figure, code, message, current, params = schedules.render_schedule(
        config, ValLossShape(plateau_epoch=4), [step], False)
    assert [t.name for t in figure.data] == ["step", "current: ReduceLROnPlateau(patience=1)"]
    assert [t.line.color for t in figure.data] == list(schedules.COLOURS[:2])  # the compared curve keeps its colour
    assert current["colour"] == schedules.COLOURS[1] and current["steps"][-1] == 23
    assert len(val_figure.data[0].y) == 12 and val_figure.data[1].x  # the loss, and where the LR was cut
    assert "ReduceLROnPlateau(optimizer" in code and "24 optimizer steps" in message and params["patience"] == 1


def test_log_scale_is_a_log_axis_over_the_true_learning_rates():
    figure = schedules.render_schedule(ScheduleConfig("ExponentialLR", 0.1, 5, 1, {"gamma": 0.1}), ValLossShape(), [],
                                       True)[0]
    assert figure.layout.yaxis.type == "log" and figure.layout.yaxis.title.text == "learning rate (log scale)"
    assert list(figure.data[0].y) == pytest.approx([0.1, 0.01, 0.001, 1e-4, 1e-5])


@pytest.mark.parametrize(
    "config",
    [ScheduleConfig("StepLR", 0.1, 100, 1000, {"step_size": 1}, 5, "batch"),  # a 5,000-step ramp, then a staircase
     ScheduleConfig("CyclicLR", 0.1, 100, 1000, {"step_size_up": 7}),  # a change at every step
     ScheduleConfig("ExponentialLR", 0.1, 100, 1000, {"gamma": 0.9}, 0, "batch")],  # 100,000 steps down
    ids=["warm-up-then-staircase", "cyclic", "smooth-decay"],
)
def test_long_curves_are_drawn_from_a_few_thousand_points_keeping_changes_and_extremes(config):
    lrs = lr_curve(config).lr
    steps, values = schedules.thin_curve(lrs)
    assert len(steps) <= schedules.MAX_POINTS and steps[0] == 0 and steps[-1] == len(lrs) - 1
    assert values.tolist() == [lrs[s] for s in steps]  # each drawn point is the LR at its step
    assert min(values) == min(lrs) and max(values) == max(lrs)
    # Drawn as a step line, each stretch with few changes is exact: here, the staircase after the warm-up.
    drawn = np.repeat(values[:-1], np.diff(steps)).tolist() + [values[-1]]
    if config.warmup_epochs:
        assert drawn[6000:] == lrs[6000:]


def test_blank_or_fractional_fields_say_which_field_and_why():
    for epochs, message in [(None, "epochs is blank: give a whole number"), (2.5, "epochs must be a whole number, got 2.5")]:
        with pytest.raises(ConfigError, match=message):
            schedules.schedule_from_fields("StepLR", 0.1, epochs, 10, 0, "epoch", {})
    with pytest.raises(ScheduleError, match="plateaus from epoch is blank: give a whole number"):
        schedules.loss_shape(2.0, 0.6, None, 0.0, 0)


def test_the_step_per_choice_says_what_a_step_is_for_the_scheduler():
    assert "Either way, counted in epochs: milestones." in schedules.step_per_help("MultiStepLR", 10.0)
    assert "the LR holds for the epoch's 10 batches" in schedules.step_per_help("MultiStepLR", 10.0)
    assert "applied per epoch: gamma" in schedules.step_per_help("ExponentialLR", 10)
    assert "counted in batches: total_steps (10 batches per epoch)" in schedules.step_per_help("OneCycleLR", 10)


def test_lr_curve_endpoint_through_gradio_client(client):
    result = client.predict(
        {"scheduler": "StepLR", "lr": 0.1, "epochs": 6, "steps_per_epoch": 2, "params": {"step_size": 2, "gamma": 0.5},
         "warmup_epochs": 0, "step_per": "epoch"},
        api_name="/lr_curve",
    )
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    expected = []
    for _ in range(6):
        expected += [optimizer.param_groups[0]["lr"]] * 2
        optimizer.step()
        scheduler.step()
    assert result["lr"] == expected


@pytest.mark.parametrize(
    "config,message",
    [
        ({"scheduler": "StepLR", "lr": 10**400}, "lr must be a number, got 1000000"),
        ({"scheduler": "StepLR", "params": {"step_size": 10**1000}},
         "StepLR: step_size must be a finite number no larger than about 1.8e308"),
        ({"scheduler": "MultiStepLR", "params": {"milestones": list(range(1, 100_001))}},
         "MultiStepLR: milestones can have at most 1,000 values, got 100,000"),
        ({"scheduler": "LambdaLR", "epochs": 1000, "steps_per_epoch": 1000, "step_per": "batch",
          "params": {"lr_lambda": "+".join(["sin(epoch)**2"] * 30)}},
         "LambdaLR: lr_lambda has 179 parts to evaluate at 1,000,001 steps"),
        ({"scheduler": "ExponentialLR", "epochs": 5, "params": {"gamma": 1e300}},
         "ExponentialLR: the learning rate becomes inf at step 2 (epoch 3)"),
        ({"scheduler": "ReduceLROnPlateau", "epochs": 3, "val_loss": "abc"},
         "val_loss must be a list of numbers, one per epoch, got 'abc'"),
    ],
    ids=["lr-10e400", "step_size-10e1000", "100k-milestones", "heavy-formula-1M-steps", "gamma-1e300", "val_loss-text"],
)
def test_lr_curve_endpoint_bounds_the_work_and_answers_overflows_with_a_message(client, config, message):
    started = time.perf_counter()
    with pytest.raises(Exception) as info:
        client.predict(config, api_name="/lr_curve")
    assert message in str(info.value)
    assert time.perf_counter() - started < 10  # refused up front: no minutes of work, no gigabytes


def test_a_visitor_s_refused_request_leaves_no_traceback_in_the_server_log(client, capfd):
    capfd.readouterr()
    for config in ({"scheduler": "MultiStepLR", "params": {"milestones": [5, 2]}}, [1, 2], {"lr": 10**400}):
        with pytest.raises(Exception, match="milestones|JSON object|lr must be"):
            client.predict(config, api_name="/lr_curve")
    with pytest.raises(Exception, match="Send a photo"):
        client.predict(None, "imagenet", 3, api_name="/classify")
    logged = capfd.readouterr()
    assert "Traceback" not in logged.out + logged.err, logged.err[-2000:]


def test_lr_curve_endpoint_answers_bad_parameters_with_their_message(client):
    with pytest.raises(Exception, match="milestones must be strictly increasing"):
        client.predict({"scheduler": "MultiStepLR", "params": {"milestones": [5, 2]}}, api_name="/lr_curve")
    with pytest.raises(Exception, match="epochs must be a whole number, got 2.5"):
        client.predict({"scheduler": "StepLR", "epochs": 2.5}, api_name="/lr_curve")
    with pytest.raises(Exception, match="Send the schedule as a JSON object of fields"):
        client.predict([1, 2], api_name="/lr_curve")


# ---------------------------------------------------------------- the fine-tune tab's handlers

from types import SimpleNamespace  # noqa: E402

from conftest import ASSETS, write_photos, zip_folder  # noqa: E402


def request(session: str):
    return SimpleNamespace(session_hash=session, client=SimpleNamespace(host="127.0.0.1"))


NO_CLASSES = [""] * finetune.MAX_CLASSES + [None] * finetune.MAX_CLASSES


def form(weights_file=None, params=None, **overrides):
    """The settings' values as the tab hands them over (the weights file, the form's fields, then the scheduler
    parameter fields, blank unless `params` gives {(scheduler, name): value}): a tiny model that trains in seconds."""
    flat = {**TrainConfig().to_dict(), **TrainConfig().schedule.to_dict()}
    flat.update(weights="none", strategy="full", batch_size=8, image_size=32, head_epochs=1, optimizer="adamw",
                augment="none", lr=1e-3, epochs=3)
    flat.update(overrides)
    return [weights_file, *(flat[name] for name in finetune.FORM_INPUTS),
            *((params or {}).get(key) for key in finetune.PARAM_KEYS)]


@pytest.fixture(scope="module")
def sample_zip(tmp_path_factory):
    return str(zip_folder(ASSETS / "sample", tmp_path_factory.mktemp("zip") / "sample.zip"))


def test_checking_the_sample_zip_shows_the_report_and_a_grid(sample_zip):
    state, report, grid = finetune.check_photos(request("zip"), "Zip file", sample_zip, "", 2, *NO_CLASSES)
    assert "| hotdog |" in report and "| not\\_hotdog |" in report  # class names are shown as written
    assert state["report"]["labels"] == ["hotdog", "not_hotdog"]
    assert len(grid["value"]) == 8 and {caption for _, caption in grid["value"]} == {"hotdog", "not_hotdog"}


def test_per_class_upload_builds_class_folders(tmp_path):
    write_photos(tmp_path, per_class=4)
    names = ["Red berries", "Blue sky"] + [""] * (finetune.MAX_CLASSES - 2)
    files = [sorted(str(p) for p in (tmp_path / c).iterdir()) for c in ("red", "blue")] + [None] * (finetune.MAX_CLASSES - 2)
    state, report, _ = finetune.check_photos(request("per-class"), "Photos per class", None, "", 2, *names, *files)
    assert state["report"]["labels"] == ["Blue sky", "Red berries"]
    assert sum(state["report"]["totals"].values()) == 8


def test_bad_uploads_answer_with_a_message(tmp_path):
    not_zip = tmp_path / "photos.zip"
    not_zip.write_text("not a zip")
    with pytest.raises(gr.Error, match="zip"):
        finetune.check_photos(request("bad"), "Zip file", str(not_zip), "", 2, *NO_CLASSES)
    with pytest.raises(gr.Error, match="has no photos"):
        names = ["only"] + [""] * (finetune.MAX_CLASSES - 1)
        finetune.check_photos(request("bad"), "Photos per class", None, "", 2, *names, *([None] * finetune.MAX_CLASSES))


def test_a_failed_check_shows_in_the_report_area_and_the_event_fails_without_a_popup(tmp_path):
    not_zip = tmp_path / "photos.zip"
    not_zip.write_text("not a zip")
    on_page = errors.in_place(finetune.check_photos, 3, at=1, title="Cannot use these photos", working="_Checking_",
                              on_error={0: None, 2: gr.update(visible=False)})
    shown = []
    with pytest.raises(gr.Error) as raised:
        for answer in on_page(request("bad-page"), "Zip file", str(not_zip), "", 2, *NO_CLASSES):
            shown.append(answer)
    assert not raised.value.visible and "is not a valid .zip file" in raised.value.message  # programs still hear it
    working, failed = shown
    assert working[1] == "_Checking_"
    assert failed[0] is None and failed[2]["visible"] is False  # no photos left to train from, no stale grid
    assert failed[1].startswith("**Cannot use these photos:** ") and "is not a valid .zip file" in failed[1]


@pytest.mark.parametrize(
    "picked, said",
    [
        (None, folder_upload.NOTHING_CHOSEN),  # Check pressed before a folder was chosen
        ("food", folder_upload.NOTHING_CHOSEN),
        ({"files": "all", "left_out": []}, folder_upload.NOT_WHOLE),
        ({"files": [["food/a/1.jpg", 7]], "left_out": []}, folder_upload.NOT_WHOLE),
        ({"files": [], "left_out": None}, folder_upload.NOT_WHOLE),
        ({"files": [["food/a/1.jpg", "/etc/hostname"]], "left_out": []}, folder_upload.NOT_UPLOADED),
        ({"name": "food", "files": [], "left_out": [], "count": 50_001}, "food holds 50,001 files; one upload may hold "
         "at most 50,000. Choose a folder with fewer files"),
        ({"files": [], "left_out": [], "bytes": "lots", "count": float("inf")}, "The upload holds no files"),
    ],
)
def test_a_folder_value_the_page_did_not_make_answers_with_a_message(picked, said):
    with pytest.raises(gr.Error) as refused:
        finetune.check_photos(request("folder"), finetune.FOLDER_UPLOAD, None, "", 2, *NO_CLASSES, picked)
    assert refused.value.message == said


def test_server_folders_are_refused_when_the_request_is_not_local(tmp_path):
    remote = SimpleNamespace(session_hash="remote", client=SimpleNamespace(host="203.0.113.9"))
    with pytest.raises(gr.Error, match="own machine"):
        finetune.check_photos(remote, "Folder on this computer", None, str(tmp_path), 2, *NO_CLASSES)


def test_lr_finder_handler_suggests_an_lr_for_the_form(tmp_path):
    state, _, _ = finetune.check_photos(request("finder"), "Folder on this computer", None, str(write_photos(tmp_path)), 2,
                                        *NO_CLASSES)
    outputs = list(finetune.find_lr(request("finder"), state, *form(strategy="linear-probe")))
    assert any(str(text).startswith("_Sweeping: step") for _, text, _, _ in outputs)  # progress while it sweeps
    chart, text, suggested, use = outputs[-1]
    assert chart["visible"] and len(chart["value"].data[0].x) > 10
    assert suggested > 0 and use["interactive"] and ("valley" in text or "No clear answer" in text)


def collect(generator) -> list[dict]:
    """Every answer of the train handler, by output name."""
    return [dict(zip(finetune.TRAIN_OUTPUTS, answer)) for answer in generator]


def statuses(answers: list[dict]) -> list[str]:
    return [a["status"] for a in answers if isinstance(a["status"], str)]


def test_training_says_each_phase_streams_epochs_then_shows_results_and_a_download(tmp_path):
    state, _, _ = finetune.check_photos(request("train"), "Folder on this computer", None, str(write_photos(tmp_path)), 2,
                                        *NO_CLASSES)
    answers = collect(finetune.train_model(request("train"), state, *form(epochs=3)))
    said, final = statuses(answers), answers[-1]
    epochs = [a for a in answers if isinstance(a["status"], str) and a["status"].startswith("Epoch ")]
    assert [len(e["epoch_table"]) for e in epochs] == [1, 2, 3] and all(e["live"]["visible"] for e in epochs)
    planned, used = epochs[-1]["lr_plot"].data
    assert (planned.name, used.name) == ("planned", "used") and list(used.y) == list(planned.y)  # the plan, as used
    # The seconds after the last epoch are phases of their own, said as they happen.
    after = said[said.index(epochs[-1]["status"]) + 1:]
    assert after[0] == "_Training done: 3 epochs. Evaluating the best model (epoch " + after[0].split("(epoch ")[1]
    assert after[0].endswith(" on 6 validation photos_")
    assert after[1] == "_Exporting to ONNX, then checking that it gives PyTorch's answers on 6 validation photos_"
    assert final["status"].startswith("**Training finished** after 3 of 3 epochs; the best model (epoch ")
    assert final["status"].endswith(f"is kept as run `{final['run_id']}`.")
    assert final["final"]["visible"] and "Validation accuracy" in final["metrics"] and "ONNX export" in final["metrics"]
    assert list(final["per_class"]["class"]) == ["blue", "green", "red"]
    assert final["confusion"].axes[0].get_title().startswith("Validation (")
    for path, _ in final["misclassified"]["value"]:
        assert Path(path).is_file()
    archive = Path(final["download"]["value"])
    names = zipfile.ZipFile(archive).namelist()
    assert f"{final['run_id']}/model.onnx" in names and f"{final['run_id']}/config.json" in names
    assert [r.run_id for r in session.STORE.runs("train")] == [final["run_id"]]


def test_cancel_mid_training_says_cancelled_keeps_the_best_model_and_the_app_answers(tmp_path):
    state, _, _ = finetune.check_photos(request("cancel"), "Folder on this computer", None, str(write_photos(tmp_path)), 2,
                                        *NO_CLASSES)
    generator = finetune.train_model(request("cancel"), state, *form(epochs=30))
    answers = []
    for answer in generator:
        answers.append(dict(zip(finetune.TRAIN_OUTPUTS, answer)))
        if isinstance(answers[-1]["epoch_table"], pd.DataFrame):  # the first epoch has finished
            assert finetune.cancel_training(request("cancel")) == "Stopping after the current batch; the best model so far is kept."
            break
    answers += collect(generator)
    said, final = statuses(answers), answers[-1]
    epochs_run = json.loads((session.STORE.find(final["run_id"]) / "metrics.json").read_text())["epochs_run"]
    assert f"_Training cancelled after {epochs_run} of 30 epochs. Evaluating the best model (epoch " in "".join(said)
    assert final["status"].startswith(f"**Training cancelled** after {epochs_run} of 30 epochs; the best model (epoch ")
    assert "Cancelled: the best model so far was kept." in final["metrics"]
    run = session.STORE.find(final["run_id"])
    assert json.loads((run / "metrics.json").read_text())["stopped"] == "cancelled" and epochs_run < 30
    assert (run / "model.safetensors").is_file()
    assert schedules.render_schedule(ScheduleConfig(), ValLossShape(), [], False)[4]  # the app still computes


def test_cancel_while_waiting_in_the_queue_ends_the_training_before_it_starts(tmp_path):
    state = {"path": str(write_photos(tmp_path)), "report": {}}
    finetune.train_starts(request("queued"))
    assert finetune.cancel_training(request("queued")) == "Cancelled: it leaves the queue without training."
    (answer,) = collect(finetune.train_model(request("queued"), state, *form()))
    assert answer["status"] == "**Cancelled** while it waited in the queue; nothing was trained."
    assert session.STORE.runs("queued") == []
    train, find, open_run, experiment, cancel = finetune.train_starts(request("queued"))[4:]  # the next Train press starts afresh
    assert [b["interactive"] for b in (train, find, open_run, cancel)] == [False, False, False, True]
    assert [b["interactive"] for b in finetune.job_ends()] == [True, True, True, True, False]


def test_studio_schedule_carries_over_and_the_form_says_what_changed():
    studio = ScheduleConfig("StepLR", 0.05, 7, 3, {"step_size": 2}, 1, "batch").to_dict()
    keys = finetune.SCHEDULE_INPUTS + finetune.PARAM_KEYS
    current = {"scheduler": "CosineAnnealingLR", "lr": 0.01, "epochs": 7, "warmup_epochs": 0, "step_per": "epoch"}
    *values, said = finetune.take_studio_schedule(studio, *(current.get(key) for key in keys))
    taken = {key: value for key, value in zip(keys, values) if not isinstance(value, dict)}  # gr.skip() is a dict
    assert taken == {"scheduler": "StepLR", "lr": 0.05, "epochs": 7, "warmup_epochs": 1, "step_per": "batch",
                     ("StepLR", "step_size"): 2, ("StepLR", "gamma"): None}
    assert said == ("Took the studio's schedule: LR scheduler CosineAnnealingLR → StepLR; Learning rate 0.01 → 0.05; "
                    "Warm-up epochs 0 → 1; Step per epoch → batch; step\\_size blank → 2. Blank parameters are derived "
                    "from the run; steps per epoch come from your photos.")
    *_, again = finetune.take_studio_schedule(studio, *values)
    assert again.startswith("The form already had the studio's schedule (StepLR).")
    *_, nothing = finetune.take_studio_schedule(None, *values)
    assert nothing.startswith("Nothing to take yet: draw a schedule in the Learning-rate schedules tab first")


@pytest.mark.parametrize(
    "overrides, said",
    [
        ({"batch_size": 0}, "**Cannot train:** “Batch size” must be at least 1, got 0"),
        ({"scheduler": "StepLR", "params": {("StepLR", "step_size"): -3}},
         "**Cannot train:** StepLR: step\\_size must be at least 1, got -3"),
        ({"weights": "file"}, "**Cannot train:** Choose a weights file, or pick imagenet or none"),
    ],
    ids=["batch-size-0", "step-size-minus-3", "weights-file-missing"],
)
def test_bad_settings_show_their_message_in_the_form_s_words_in_the_status_line(tmp_path, overrides, said):
    state = {"path": str(write_photos(tmp_path)), "report": {}}
    (answer,) = collect(finetune.train_model(request("bad-settings"), state, *form(**overrides)))
    assert answer["status"] == said
    assert session.STORE.runs("bad-settings") == []


def test_training_without_checked_photos_says_what_to_do_first():
    (answer,) = collect(finetune.train_model(request("bad-settings"), None, *form()))
    assert answer["status"] == "**Cannot train:** Check your photos first (step 1): press 'Check photos'"


def test_imagenet_weights_offline_show_the_whole_message_with_the_form_s_labels(tmp_path, monkeypatch):
    import socket
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights: torch hub would download them

    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    state = {"path": str(write_photos(tmp_path / "photos")), "report": {"totals": {"train": 28, "val": 8, "test": 0}}}
    said = statuses(collect(finetune.train_model(request("offline"), state, *form(weights="imagenet"))))[-1]
    checkpoint = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert said == (
        "**Training failed:** ImageNet weights for resnet18 could not be loaded (URLError: &lt;urlopen error \\[Errno -2\\] "
        "Name or service not known&gt;). Connect to the internet once so torchvision can download "
        "https://download.pytorch.org/models/resnet18-f37072fd.pth into the torch hub cache "
        f"({errors.plain(str(checkpoint))}), or copy that file there, or pass a local weights file "
        "(“Pretrained weights: file”, .safetensors or .pth), or train from scratch with “Pretrained weights: none”.")


@pytest.mark.parametrize(
    "message, said",
    [
        ("train from scratch with --weights none.", "train from scratch with “Pretrained weights: none”."),
        ("a local weights file (--weights PATH, .safetensors or .pth)",
         "a local weights file (“Pretrained weights: file”, .safetensors or .pth)"),
        ("try --strategy full or --epochs 5", "try “Strategy: full” or “Epochs: 5”"),
        ("image_size must be at most 1024 pixels, got 5000", "“Image size (crop, px)” must be at most 1024 pixels, got 5000"),
        ("lr must be positive, got 0.0", "“Learning rate” must be positive, got 0.0"),
        ("Invalid optimizer 'rmsprop'. Choose one of: sgd, adamw", "Invalid “Optimizer” 'rmsprop'. Choose one of: sgd, adamw"),
        ("OneCycleLR cannot have a warm-up in front of it; set warmup_epochs to 0",
         "OneCycleLR cannot have a warm-up in front of it; set “Warm-up epochs” to 0"),
        ("choose another --out or pass --overwrite", "choose another --out or pass --overwrite"),  # not form settings
        ("3 epochs of StepLR: step_size must be at least 1", "3 epochs of StepLR: step_size must be at least 1"),
    ],
)
def test_messages_on_the_page_name_the_form_s_controls_not_cli_flags(message, said):
    assert errors.in_form_words(message) == said


def test_train_endpoint_through_gradio_client(client, sample_zip):
    from gradio_client import handle_file

    config = {"weights": "none", "strategy": "full", "optimizer": "adamw", "lr": 1e-3, "epochs": 2, "image_size": 32,
              "batch_size": 8, "augment": "none"}
    result = client.predict(handle_file(sample_zip), config, api_name="/train")
    assert result["metrics"]["val"]["count"] == 8
    run = session.STORE.find(result["run_id"])
    assert json.loads((run / "config.json").read_text())["train"]["schedule"]["epochs"] == 2


def test_compare_endpoint_answers_a_client_s_own_runs_as_json(client, sample_zip):
    from gradio_client import handle_file

    config = {"weights": "none", "strategy": "full", "optimizer": "adamw", "epochs": 1, "image_size": 32,
              "batch_size": 8, "augment": "none"}
    ids = [client.predict(handle_file(sample_zip), {**config, "lr": lr}, api_name="/train")["run_id"] for lr in (1e-3, 1e-2)]
    compared = client.predict(ids, api_name="/compare")
    assert [run["id"] for run in compared["runs"]] == ids and [run["name"] for run in compared["runs"]] == [
        "lr 0.001", "lr 0.01"]
    assert compared["settings"] == [{"setting": "lr", "values": [0.001, 0.01]}]
    assert compared["data"]["same"] is True
    accuracy = next(row for row in compared["metrics"] if row["key"] == "val_accuracy")["values"]
    assert accuracy == [json.loads((session.STORE.find(i) / "metrics.json").read_text())["val"]["accuracy"] for i in ids]
    stranger = Client(client.src, verbose=False)
    with pytest.raises(Exception, match="Only your own runs can be compared"):
        stranger.predict(ids, api_name="/compare")
    with pytest.raises(Exception, match="Pick at least two of your runs to compare"):
        client.predict(ids[:1], api_name="/compare")


def test_an_experiment_plan_names_its_runs_and_says_before_starting_when_imagenet_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    state, _, _ = finetune.check_photos(request("plan"), "Folder on this computer", None, str(write_photos(tmp_path)), 2,
                                        *NO_CLASSES)
    plan, button = finetune.plan_experiment(request("plan"), state, *form(epochs=2)[:1], "schedules", *form(epochs=2)[1:])
    assert plan.startswith("**Schedules:** StepLR vs cosine vs ReduceLROnPlateau vs exponential decay")
    assert "4 runs: **StepLR**, **CosineAnnealingLR**, **ReduceLROnPlateau**, **ExponentialLR**" in plan
    assert "On your 30 training and 6 validation photos: **about" in plan and button["interactive"] is True
    values = form(epochs=2, weights="imagenet")
    plan, button = finetune.plan_experiment(request("plan"), state, values[0], "pretrained", *values[1:])
    assert "**The pretrained run cannot start:** ImageNet weights for resnet18 could not be loaded" in plan
    assert plan.endswith("Choose a weights file under Pretrained weights, or run another experiment.")
    assert button["interactive"] is False
    plan, button = finetune.plan_experiment(request("plan"), state, values[0], "schedules", *values[1:])
    assert "**These runs cannot start:** ImageNet weights for resnet18 could not be loaded" in plan
    assert plan.endswith("Choose a weights file under Pretrained weights, or none.") and button["interactive"] is False


def test_a_downloaded_run_zip_joins_the_visitor_s_runs_and_the_comparison(tmp_path):
    from ui import compare

    state, _, _ = finetune.check_photos(request("zipper"), "Folder on this computer", None, str(write_photos(tmp_path)), 2,
                                        *NO_CLASSES)
    live = collect(finetune.train_model(request("zipper"), state, *form(epochs=1)))[-1]
    archive = live["download"]["value"]
    message, picker = compare.add_run_zip(archive, [live["run_id"]], request("zip-receiver"))
    added = session.STORE.runs("zip-receiver")
    assert len(added) == 1 and message == f"Added {errors.plain(added[0].summary)} to your runs."
    assert picker["value"] == [added[0].run_id]  # the giver's run id is not the receiver's: only their own stays
    assert (added[0].path / "model.onnx").is_file() and not (added[0].path / "data").exists()
    not_a_run = tmp_path / "photos.zip"
    with zipfile.ZipFile(not_a_run, "w") as archive_file:
        archive_file.writestr("red/a.txt", "not a run")
    with pytest.raises(gr.Error) as refused:
        compare.add_run_zip(str(not_a_run), [], request("zip-receiver"))
    assert refused.value.message == "photos.zip is not a run downloaded from Transfer Studio: it has no config.json"
    assert len(session.STORE.runs("zip-receiver")) == 1


def test_a_run_opens_again_in_the_results_areas_for_its_owner_only(tmp_path):
    state, _, _ = finetune.check_photos(request("reopen"), "Folder on this computer", None, str(write_photos(tmp_path)), 2,
                                        *NO_CLASSES)
    live = collect(finetune.train_model(request("reopen"), state, *form(epochs=2)))[-1]
    message, *answer = finetune.open_run(live["run_id"], request("reopen"))
    opened = dict(zip(finetune.TRAIN_OUTPUTS, answer))
    assert message == "" and opened["status"] == live["status"]
    assert opened["live"]["visible"] and opened["final"]["visible"] and opened["metrics"] == live["metrics"]
    assert opened["epoch_table"].equals(live["epoch_table"]) and len(opened["loss_plot"].data) == 2
    assert Path(opened["download"]["value"]).is_file()
    with pytest.raises(gr.Error, match="That run is not one of yours, or it has been deleted"):
        finetune.open_run(live["run_id"], request("someone-else"))
    with pytest.raises(gr.Error, match="Choose one of your runs first"):
        finetune.open_run(None, request("reopen"))


# ---------------------------------------------------------------- the classify tab and /classify

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import re  # noqa: E402
import shutil  # noqa: E402

from gradio_client import handle_file  # noqa: E402

from models.run_folder import ONNX_VARIANTS  # noqa: E402
from models.runtime import VARIANT_NAMES, OnnxClassifier  # noqa: E402

OLD_RUN = Path(__file__).resolve().parent / "fixtures" / "old-run"
# The end of the Classify tab's answer for one photo; it starts with the run's model that served ("Served by ...").
PROVIDER_AND_LATENCY = r"Provider: `CPUExecutionProvider`, \d+\.\d ms for this photo \(preprocessing included\)\."


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through the tab's own training path: (run id, photo folder)."""
    photos = write_photos(tmp_path_factory.mktemp("classify") / "photos")
    state, _, _ = finetune.check_photos(request("clf"), "Folder on this computer", None, str(photos), 2, *NO_CLASSES)
    final = dict(zip(finetune.TRAIN_OUTPUTS, list(finetune.train_model(request("clf"), state, *form(epochs=4)))[-1]))
    return final["run_id"], photos


def served_model(run_id: str) -> tuple[str, Path]:
    """The variant a run's export chose to serve by default, and its file."""
    run = session.STORE.find(run_id)
    served = json.loads((run / "metrics.json").read_text())["export"]["served"]
    return served, run / ONNX_VARIANTS[served]


@pytest.fixture(scope="module")
def variants_run(trained):
    """A copy of the trained run whose export recorded fp32 at 90% and 100 img/s, INT8 at 89% and 300 img/s,
    and chose INT8 (figures fixed, so the picker's labels are known): (run id, photo folder)."""
    run_id, path = session.STORE.new_run("clf-variants")
    shutil.copytree(session.STORE.find(trained[0]), path, dirs_exist_ok=True)
    if not (path / "model.int8.onnx").is_file():  # its INT8 missed its check: the fp32 file stands in
        shutil.copy(path / "model.onnx", path / "model.int8.onnx")
    metrics = json.loads((path / "metrics.json").read_text())
    variants = metrics["export"]["variants"]
    variants["fp32"].update(accuracy=0.9, speed={"images_per_s": 100.0})
    variants["int8"] = {"file": "model.int8.onnx", "passed": True, "accuracy": 0.89, "speed": {"images_per_s": 300.0}}
    metrics["export"]["served"] = "int8"
    (path / "metrics.json").write_text(json.dumps(metrics))
    return run_id, trained[1]


@pytest.fixture(scope="module")
def old_run_id():
    """tests/fixtures/old-run as an export before this one left it: model.onnx and model.int8.onnx with their
    accuracy, no speeds and no choice of the model to serve (random weights: only which file serves matters)."""
    from models.backbones import create_model
    from models.export import export_onnx
    from models.run_folder import RunFolder

    run_id, path = session.STORE.new_run("clf-old")
    shutil.copytree(OLD_RUN, path, dirs_exist_ok=True)
    record = RunFolder(path).read_config()
    torch.manual_seed(0)
    export_onnx(create_model("resnet18", 3, "none").eval(), record.labels, record.preprocessing, record.train,
                path / "model.onnx")
    shutil.copy(path / "model.onnx", path / "model.int8.onnx")
    RunFolder(path).merge_metrics(export={"opset": 20, "variants": {
        "fp32": {"file": "model.onnx", "passed": True, "accuracy": 1.0},
        "int8": {"file": "model.int8.onnx", "passed": True, "accuracy": 1.0, "accuracy_change": 0.0}}})
    return run_id


def test_classify_tab_answers_top_k_with_provider_and_latency(trained):
    run_id, photos = trained
    photo = str(photos / "red" / "red_00.jpg")
    scores, info = classify.classify_photo(photo, classify.MODEL_SOURCES[0], run_id, None, 2)
    assert len(scores) == 2 and sum(scores.values()) <= 1.0 + 1e-6
    served, path = served_model(run_id)  # a training exports INT8 too; the faster within 1 point serves
    assert max(scores, key=scores.get) == OnnxClassifier(path).predict([photo], top_k=1)[0][0][0]
    assert re.fullmatch(rf"Served by \*\*{VARIANT_NAMES[served]}\*\*, this run's default\. {PROVIDER_AND_LATENCY}", info)


def test_classifying_many_photos_lists_unreadable_ones(trained, tmp_path):
    run_id, photos = trained
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    files = [str(photos / "green" / "green_01.jpg"), str(bad), str(photos / "blue" / "blue_02.jpg")]
    table, gallery, message = classify.classify_many(files, classify.MODEL_SOURCES[0], run_id, None, 3)
    assert list(table["photo"]) == ["green_01.jpg", "broken.jpg", "blue_02.jpg"]
    assert "unreadable" in table["also"][1] and len(gallery) == 2 and "3 photos" in message


def test_classify_without_a_model_or_photo_says_what_to_do(trained):
    with pytest.raises(gr.Error, match="Choose a model"):
        classify.classify_photo(str(trained[1] / "red" / "red_00.jpg"), classify.MODEL_SOURCES[0], None, None, 3)
    with pytest.raises(gr.Error, match="Add a photo"):
        classify.classify_photo(None, classify.MODEL_SOURCES[0], trained[0], None, 3)


def test_runs_of_one_session_are_not_listed_in_another(trained):
    names = {value: name for name, value in session.run_choices(request("clf"))["choices"]}
    assert names[trained[0]].startswith("photos · resnet18 full · val ")  # trained from the folder "photos"
    assert session.run_choices(request("someone-else"))["choices"] == []


@pytest.fixture
def own_server(tmp_path, monkeypatch) -> RunStore:
    """The app's runs and models in an empty store of their own, and no ImageNet weights in torch's cache."""
    store = RunStore(tmp_path / "data")
    monkeypatch.setattr(session, "STORE", store)
    monkeypatch.setattr(session, "MODELS", ModelServer(store))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return store


def test_run_pickers_select_the_newest_run_that_finished_normally(own_server):
    from test_run_store import finished_run, started_at

    older = started_at(own_server, finished_run(own_server, "v", accuracy=0.9), "090000")
    cancelled = started_at(own_server, finished_run(own_server, "v", "cancelled", accuracy=0.5), "100000")
    picker = session.run_choices(request("v"))
    assert picker["choices"] == [("a, b · resnet18 full · val 50% · 10:00 (cancelled)", cancelled),
                                 ("a, b · resnet18 full · val 90% · 09:00", older)]
    assert picker["value"] == older and session.newest_run(request("v")) == cancelled
    own_server.delete_run("v", older)
    assert session.run_choices(request("v"))["value"] == cancelled  # a cancelled run when there is nothing else
    training = finished_run(own_server, "v")
    (own_server.find(training) / "metrics.json").unlink()  # still training: no model to classify with yet
    assert session.run_choices(request("v"))["value"] == cancelled
    own_server.delete_run("v", cancelled)
    assert session.run_choices(request("v"))["value"] is None
    own_server.delete_run("v", training)
    assert session.newest_run(request("v")) == ""  # not the page's initial None: a page load refreshes the pickers


def test_classify_tab_without_runs_or_imagenet_weights_says_what_to_do(own_server):
    from models.backbones import imagenet_cache_path

    source, run_picker, onnx_file, message = classify.available_models(request("newcomer"))
    assert source["value"] == classify.ONNX_FILE and onnx_file["visible"] and not run_picker["visible"]
    assert source["choices"] == [("A run trained here (none yet)", classify.RUN), (classify.ONNX_FILE, classify.ONNX_FILE),
                                 ("ImageNet ResNet-18 (not available here)", classify.IMAGENET_MODEL)]
    advice = ("**No model is ready yet.** Train one in the **Fine-tune** tab (its sample photos are ready to use), "
              "or upload an .onnx file made by this app.\n\nThe ImageNet ResNet-18 is not available here: this server "
              "has no copy of its weights (torchvision downloads them once, when the server is online).")
    weights = imagenet_cache_path("resnet18")
    assert message == f"{advice} To use it offline, copy `{weights.name}` into `{weights.parent}`, then reload this page."
    elsewhere = SimpleNamespace(session_hash="newcomer", client=SimpleNamespace(host="203.0.113.9"))
    assert classify.available_models(elsewhere)[3] == advice  # a visitor from elsewhere sees no server path
    assert not session.MODELS.imagenet_path.exists()  # deciding started no export


def test_classify_tab_starts_with_the_visitors_run_else_imagenet_when_it_can_be_loaded(own_server):
    from models.backbones import imagenet_cache_path
    from test_run_store import finished_run

    cached = imagenet_cache_path("resnet18")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"the checkpoint")  # only its presence counts: nothing is loaded to decide
    source, run_picker, _, message = classify.available_models(request("v"))
    assert source["value"] == classify.IMAGENET_MODEL and not run_picker["visible"]
    assert source["choices"][2] == (classify.IMAGENET_MODEL, classify.IMAGENET_MODEL)  # no "(not available here)"
    assert message == ("No run of yours yet: train one in the **Fine-tune** tab, or upload an .onnx file made by this "
                       "app. The ImageNet ResNet-18 (1,000 everyday classes) is ready.")
    run_id = finished_run(own_server, "v")
    source, run_picker, onnx_file, message = classify.available_models(request("v"))
    assert source["value"] == classify.RUN and run_picker["visible"] and not onnx_file["visible"]
    assert run_picker["value"] == run_id and message.startswith("You have 1 run (newest first); an .onnx file")
    cached.unlink()
    session.MODELS.imagenet_path.write_bytes(b"exported")  # an export made earlier serves without the weights
    assert classify.imagenet_available()


def test_classify_endpoint_through_gradio_client(client, trained):
    run_id, photos = trained
    photo = str(photos / "blue" / "blue_03.jpg")
    result = client.predict(handle_file(photo), run_id, 3, api_name="/classify")
    served, path = served_model(run_id)
    assert [p["label"] for p in result["predictions"]] == [
        label for label, _ in OnnxClassifier(path).predict([photo], top_k=3)[0]]
    assert result["provider"] == "CPUExecutionProvider" and result["latency_ms"] > 0
    assert result["variant"] == served and set(result) == {"predictions", "provider", "latency_ms", "variant"}


def test_the_exported_model_picker_lists_a_run_s_models_with_its_default_selected(variants_run, old_run_id):
    picker = classify.variant_choices(classify.RUN, variants_run[0])
    assert picker["choices"] == [("fp32 · val 90% · 100 img/s", "fp32"),
                                 ("INT8 · val 89% · 300 img/s (3.0x fp32) · default", "int8")]
    assert picker["value"] == "int8" and picker["visible"]
    old = classify.variant_choices(classify.RUN, old_run_id)  # exported before speeds were measured: fp32 serves
    assert old["choices"] == [("fp32 · val 100% · default", "fp32"), ("INT8 · val 100%", "int8")]
    assert old["value"] == "fp32" and old["visible"]
    for source, run_id in ((classify.ONNX_FILE, variants_run[0]), (classify.RUN, None), (classify.RUN, "no-such-run")):
        hidden = classify.variant_choices(source, run_id)
        assert (hidden["choices"], hidden["value"], hidden["visible"]) == ([], None, False)


def test_classify_tab_serves_the_run_s_default_or_the_model_picked_and_says_which(variants_run, old_run_id):
    run_id, photos = variants_run
    photo = str(photos / "red" / "red_00.jpg")
    default = rf"Served by \*\*INT8\*\*, this run's default\. {PROVIDER_AND_LATENCY}"
    assert re.fullmatch(default, classify.classify_photo(photo, classify.RUN, run_id, None, 3)[1])
    assert re.fullmatch(default, classify.classify_photo(photo, classify.RUN, run_id, None, 3, "int8")[1])
    picked = r"Served by \*\*fp32\*\*, as picked \(this run's default is INT8\)\. "
    assert re.fullmatch(picked + PROVIDER_AND_LATENCY, classify.classify_photo(photo, classify.RUN, run_id, None, 3, "fp32")[1])
    message = classify.classify_many([photo], classify.RUN, run_id, None, 3, "fp32")[2]
    assert re.fullmatch(picked + r"1 photos in \d+ ms on `CPUExecutionProvider`\.", message)
    old_photo = str(OLD_RUN / "data" / "red" / "red_00.jpg")
    info = classify.classify_photo(old_photo, classify.RUN, old_run_id, None, 3)[1]
    assert re.fullmatch(rf"Served by \*\*fp32\*\*, this run's default\. {PROVIDER_AND_LATENCY}", info)
    # An uploaded file is served as it is, whatever the picker held for a run.
    onnx_file = str(session.STORE.find(run_id) / "model.int8.onnx")
    assert re.fullmatch(PROVIDER_AND_LATENCY, classify.classify_photo(photo, classify.ONNX_FILE, run_id, onnx_file, 3, "fp32")[1])
    with pytest.raises(gr.Error) as refused:
        classify.classify_photo(photo, classify.RUN, run_id, None, 3, "fp16")
    assert refused.value.message == f"Run {run_id} has no fp16 model (model.fp16.onnx); its models: fp32, int8"


def test_classify_endpoint_serves_the_run_s_default_or_the_variant_asked_for_and_names_it(client, variants_run, old_run_id):
    run_id, photos = variants_run
    photo = handle_file(str(photos / "green" / "green_01.jpg"))
    answered = {asked: client.predict(photo, run_id, 2, asked, api_name="/classify")["variant"]
                for asked in ("", "fp32", "int8")}
    assert answered == {"": "int8", "fp32": "fp32", "int8": "int8"}
    old = client.predict(handle_file(str(OLD_RUN / "data" / "blue" / "blue_00.jpg")), old_run_id, 2, api_name="/classify")
    assert old["variant"] == "fp32" and len(old["predictions"]) == 2
    refusals = {(run_id, "int4"): "Invalid variant 'int4'. Choose one of: fp32, fp16, int8",
                ("imagenet", "int8"): "imagenet is a single model, served as it is; a variant picks one of a run's models"}
    for (model, asked), message in refusals.items():
        with pytest.raises(Exception, match=f"^{re.escape(message)}$"):
            client.predict(photo, model, 2, asked, api_name="/classify")


def test_many_concurrent_classify_calls_all_answer_correctly(client, trained):
    run_id, photos = trained
    paths = sorted(str(p) for p in photos.rglob("*.jpg"))[:16]
    expected = [top[0][0] for top in OnnxClassifier(served_model(run_id)[1]).predict(paths, top_k=1)]

    def call(path):
        return client.predict(handle_file(path), run_id, 1, api_name="/classify")["predictions"][0]["label"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, paths)) == expected


def test_classify_endpoint_refuses_unknown_models(client, trained):
    with pytest.raises(Exception, match="No model at|Unknown model"):
        client.predict(handle_file(str(trained[1] / "red" / "red_00.jpg")), "no-such-run", 3, api_name="/classify")


def test_imagenet_default_model_is_exported_once_from_the_cached_weights(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    from models.backbones import imagenet_cache_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(session, "MODELS", ModelServer(RunStore(tmp_path / "data")))
    imagenet_cache_path("resnet18").parent.mkdir(parents=True)
    torch.save(resnet18(weights=None).state_dict(), imagenet_cache_path("resnet18"))
    scores, info = classify.classify_photo(str(ASSETS / "examples" / "hotdog.jpg"), "ImageNet ResNet-18", None, None, 5)
    assert len(scores) == 5
    assert len(OnnxClassifier(tmp_path / "data" / "imagenet-resnet18.onnx").labels) == 1000


def test_closing_the_page_mid_training_stops_that_training(tmp_path):
    state, _, _ = finetune.check_photos(request("closed-tab"), "Folder on this computer", None, str(write_photos(tmp_path)), 2,
                                   *NO_CLASSES)
    generator = finetune.train_model(request("closed-tab"), state, *form(epochs=200))
    for output in generator:
        if isinstance(dict(zip(finetune.TRAIN_OUTPUTS, output))["epoch_table"], pd.DataFrame):  # an epoch has ended
            break
    generator.close()  # what Gradio does when the browser goes away
    deadline = time.time() + 60
    while time.time() < deadline and any(t.name.startswith("fit-") for t in threading.enumerate()):
        time.sleep(0.2)
    (run,) = session.STORE.runs("closed-tab")
    assert json.loads((run.path / "metrics.json").read_text())["stopped"] == "cancelled"
