"""trainer.config: each field declared once; the CLI flags, the form, config.json and the API follow from it."""

import argparse
import json
from dataclasses import dataclass

import gradio as gr
import pytest

from models.backbones import preprocessing_for
from models.run_folder import RunFolder
from trainer.__main__ import add_config_args, config_from_args
from trainer.config import ConfigError, RunConfig, ScheduleConfig, TrainConfig, config_fields, option
from ui.finetune import FORM_FIELDS, config_form, config_from_form


@dataclass
class WithDropout(TrainConfig):
    """TrainConfig with one field more, added in one place, as a contributor would add it."""

    dropout: float = option(0.0, label="Dropout", low=0.0, high=1.0, high_open=True, group="more",
                            help="dropout before the classification head")


def test_a_field_added_in_one_place_reaches_the_cli_the_form_config_json_and_the_api(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_args(parser, WithDropout, exclude=("steps_per_epoch",))
    assert "dropout before the classification head" in parser.format_help()
    from_cli = config_from_args(parser.parse_args(["--dropout", "0.25", "--epochs", "3"]), WithDropout)
    assert (from_cli.dropout, from_cli.epochs) == (0.25, 3)
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1.5"):
        config_from_args(parser.parse_args(["--dropout", "1.5"]), WithDropout)

    with gr.Blocks():
        form = config_form(WithDropout)
    assert isinstance(form["dropout"], gr.Number) and form["dropout"].label == "Dropout"
    values = {name: component.value for name, component in form.items()}
    from_form = config_from_form({**values, "dropout": 0.5}, cls=WithDropout)
    assert from_form.dropout == 0.5 and from_form.schedule == ScheduleConfig()

    folder = RunFolder(tmp_path).create()
    folder.write_config(RunConfig(from_cli, ["a", "b"], preprocessing_for("resnet18", 32)).to_record())
    assert json.loads((tmp_path / "config.json").read_text())["train"]["dropout"] == 0.25
    assert WithDropout.from_dict(folder.read_config().train) == from_cli

    from_api = WithDropout.from_dict({"dropout": "0.1", "lr": 0.05, "scheduler": "StepLR"})  # /train's dict
    assert (from_api.dropout, from_api.lr, from_api.schedule.scheduler) == (0.1, 0.05, "StepLR")


def test_the_cli_and_the_form_cover_the_same_training_fields():
    parser = argparse.ArgumentParser()
    add_config_args(parser, TrainConfig, exclude=("steps_per_epoch",))
    flags = {action.dest for action in parser._actions} - {"help"}
    assert flags == {f.name for f in config_fields(TrainConfig)} - {"steps_per_epoch"}
    # The server picks the device, not a visitor; the app trains in one process, so BatchNorm has nothing to sync.
    assert set(FORM_FIELDS) == flags - {"device", "sync_bn"}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 2.5}, "epochs must be a whole number, got 2.5"),
        ({"epochs": None}, "epochs is blank: give a whole number"),
        ({"lr": "fast"}, "lr must be a number, got 'fast'"),
        ({"lr": 0}, "lr must be positive, got 0.0"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"image_size": 5000}, "image_size must be at most 1024 pixels, got 5000"),
        ({"val_fraction": 1.0}, "val_fraction must be between 0 and 1, got 1.0"),
        ({"strategy": "everything"}, "Invalid strategy 'everything'. Choose one of: linear-probe, partial, finetune, full"),
        ({"scheduler": "Nope"}, "Invalid scheduler 'Nope'. Choose one of: StepLR, "),
        ({"nesterov": "maybe"}, "nesterov must be true or false, got 'maybe'"),
        ({"colour": "red"}, "Unknown TrainConfig field(s): colour"),
        ({"schedule": [1]}, "schedule must be a JSON object"),
    ],
)
def test_bad_values_are_refused_with_the_field_and_the_rule(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        TrainConfig.from_dict(values)


def test_flat_and_nested_forms_give_the_same_config():
    nested = TrainConfig.from_dict({"arch": "resnet34", "schedule": {"lr": 0.1, "epochs": 4, "scheduler": "StepLR"}})
    flat = TrainConfig.from_dict({"arch": "resnet34", "lr": 0.1, "epochs": 4, "scheduler": "StepLR"})
    assert nested == flat and TrainConfig.from_dict(nested.to_dict()) == nested
    assert TrainConfig.from_dict({"params": None}).schedule.params == {}  # an API client's null means none
