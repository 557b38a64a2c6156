"""The failures a user can fix, turned into messages once for every tab; anything else is a bug and raises."""

from __future__ import annotations

import contextlib

import gradio as gr

from models.backbones import WeightsUnavailable
from models.hub import HubError
from models.runtime import ModelLoadError
from trainer.config import ConfigError
from trainer.data import DataError
from trainer.schedules import ScheduleError

USER_ERRORS = (DataError, ConfigError, ScheduleError, WeightsUnavailable, ModelLoadError, HubError)


@contextlib.contextmanager
def user_errors(*also: type[Exception]):
    """Raise gr.Error with the message of a user's mistake (USER_ERRORS and `also`) instead of the exception."""
    try:
        yield
    except USER_ERRORS + also as exc:
        raise gr.Error(str(exc)) from None
