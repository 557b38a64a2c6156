"""The failures a user can fix, turned into messages once for every tab; anything else is a bug and raises.

The core modules word their messages for the CLI and the config (`--weights none`, `batch_size`). Shown
on the page, a message names the form's controls instead ("Pretrained weights: none", "Batch size"),
translated through one table built from trainer.config's field labels, and is escaped so that every
character of it shows (a `<urlopen ...>` in it is text, not a tag).
"""

from __future__ import annotations

import contextlib
import functools
import html
import re

import gradio as gr

from models.backbones import WeightsUnavailable
from models.hub import HubError
from models.runtime import ModelLoadError
from trainer.config import ConfigError, TrainConfig, choices_of, config_fields
from trainer.data import DataError
from trainer.schedules import ScheduleError

USER_ERRORS = (DataError, ConfigError, ScheduleError, WeightsUnavailable, ModelLoadError, HubError)
# A CLI placeholder after a flag, as the form offers it: a weights file is an upload there.
FORM_VALUES = {"PATH": "file"}
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?: ([A-Z]+|[a-z0-9]+(?:[.-][a-z0-9]+)*))?")
_FIELD = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")  # names like batch_size: never plain words
_LEADING_FIELD = re.compile(r"^(Invalid )?([a-z]+)(?= must | is blank| ')")  # "lr must be", "Invalid strategy 'x'"
_MARKDOWN = re.compile(r"([\\`*_\[\]{}|~#])")


def refusal(message: str) -> gr.Error:
    """The error that answers a request the app refuses: the visitor's to fix, so no traceback in the server's log."""
    return gr.Error(message, print_exception=False)


@contextlib.contextmanager
def user_errors(*also: type[Exception]):
    """Raise gr.Error with the message of a user's mistake (USER_ERRORS and `also`) instead of the exception."""
    try:
        yield
    except USER_ERRORS + also as exc:
        raise refusal(str(exc)) from None


@functools.cache
def _form_labels() -> tuple[dict, dict]:
    """({CLI flag: field}, {field name: field}) for every training setting the form shows."""
    fields = [f for f in config_fields(TrainConfig) if f.metadata.get("group")]
    return ({(f.metadata.get("flag") or f.name).replace("_", "-"): f for f in fields}, {f.name: f for f in fields})


def in_form_words(message: str) -> str:
    """A core module's message as the page says it: each CLI flag and setting name becomes the form's label.

    `--weights none` reads "Pretrained weights: none" (the word after a flag is its value when the
    setting takes it), `batch_size must be ...` reads "Batch size" must be ...; other text is kept.
    """
    flags, names = _form_labels()

    def flag(match: re.Match) -> str:
        f = flags.get(match.group(1))
        if f is None:
            return match.group(0)
        value = match.group(2)
        if value and (value in FORM_VALUES or value in choices_of(f) or not choices_of(f) and not value.isupper()):
            return f"“{f.metadata['label']}: {FORM_VALUES.get(value, value)}”"
        return f"“{f.metadata['label']}”" + (f" {value}" if value else "")

    def name(match: re.Match) -> str:
        f = names.get(match.group(0))
        return f"“{f.metadata['label']}”" if f else match.group(0)

    def leading(match: re.Match) -> str:
        f = names.get(match.group(2))
        return f"{match.group(1) or ''}“{f.metadata['label']}”" if f else match.group(0)

    return _LEADING_FIELD.sub(leading, _FIELD.sub(name, _FLAG.sub(flag, message)))


def error_text(error: BaseException | str) -> str:
    """The whole message of a user's error (a gr.Error or one of USER_ERRORS), in the form's words."""
    message = error.message if isinstance(error, gr.Error) else str(error)
    return in_form_words(message)


def plain(text: str) -> str:
    """Text for a Markdown component, every character shown as written (no tags, no emphasis, no links)."""
    return _MARKDOWN.sub(r"\\\1", html.escape(text, quote=False))


def error_markdown(error: BaseException | str, title: str) -> str:
    """A user's error for the area next to what caused it: the title in bold, then the whole message."""
    return f"**{title}:** {plain(error_text(error))}"


def shown_in_place(error: BaseException | str) -> gr.Error:
    """The error to raise once its message is on the page next to its cause: the event still fails, and
    programs calling it get the message, but no popup repeats it."""
    return gr.Error(error_text(error), visible=False, print_exception=False)


def in_place(handler, outputs: int, at: int, title: str, working: str | None = None, on_error: dict | None = None):
    """`handler` (which answers or raises gr.Error) as a page event that shows its error in its output `at`.

    The page's event handler, a generator: first `working` in that output (when given), then the
    handler's answer; or its error's message there (and `on_error`'s {output: value} beside it), after
    which the event fails without a popup, and programs calling it still get the error. Wire it with
    show_progress_on a gr.State, so that no "Error" badge covers the message. It keeps the handler's
    signature and name (Gradio passes gr.Request by them, and names the endpoint after it).
    """
    def row(values: dict):
        answer = tuple(values.get(i, gr.skip()) for i in range(outputs))
        return answer if outputs > 1 else answer[0]

    @functools.wraps(handler)
    def page_event(*args, **kwargs):
        if working:
            yield row({at: working})
        try:
            answer = handler(*args, **kwargs)
        except gr.Error as exc:
            yield row({**(on_error or {}), at: error_markdown(exc, title)})
            raise shown_in_place(exc) from None
        yield answer

    return page_event
