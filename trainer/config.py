"""Typed configuration shared by the UI, the CLI and the run folder's `config.json`.

Each field is declared once, here, with its help text, its choices and its bounds in the field's
metadata (`option()`). The CLI flags (`trainer.__main__`) and the fine-tune form (`ui.finetune`)
are derived from `config_fields()`; `validate()` checks the declared bounds. Adding a field here
adds it everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Callable

from models.preprocess import PreprocessSpec
from models.run_folder import RunRecord

ARCHS = ("resnet18", "resnet34", "resnet50")
STRATEGIES = ("linear-probe", "partial", "finetune", "full")
OPTIMIZERS = ("sgd", "adamw")
AUGMENTS = ("none", "flip-crop", "trivialaugment")
STEP_PER = ("epoch", "batch")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
# Rows of the fine-tune form, in the order the page shows them; "more" sits in a closed accordion.
FORM_GROUPS = ("model", "run", "data", "schedule", "more")
MAX_IMAGE_SIZE = 1024


class ConfigError(ValueError):
    """A configuration value a user gave is not acceptable; the message says which and why."""


def option(
    default: Any = MISSING,
    *,
    help: str,
    label: str,
    default_factory: Callable[[], Any] | Any = MISSING,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = (),
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    unit: str = "",
    group: str | None = None,
    flag: str | None = None,
) -> Any:
    """A config field with what the CLI, the form and validation need to know about it.

    `choices` may be a function (the scheduler catalogue is only known to trainer.schedules);
    `group` is the form row (None: not in the form); `flag` overrides the CLI flag's name.
    """
    if group is not None and group not in FORM_GROUPS:
        raise ValueError(f"Unknown form group {group!r}")
    metadata = {"help": help, "label": label, "choices": choices, "low": low, "low_open": low_open, "high": high,
                "high_open": high_open, "unit": unit, "group": group, "flag": flag}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def choices_of(f: Field) -> tuple[str, ...]:
    choices = f.metadata.get("choices", ())
    return tuple(choices() if callable(choices) else choices)


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def flag_of(f: Field) -> str:
    """The CLI flag of a config field: --batch-size for batch_size (or the field's own `flag`)."""
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def fit_command(config: "TrainConfig", data: str, out: str) -> str:
    """The `python -m trainer fit` command line that trains `config` again: the flags that differ from the defaults."""
    import shlex

    words = ["python", "-m", "trainer", "fit", str(data), "--out", str(out)]
    values = {**vars(config), **vars(config.schedule)}
    for f in config_fields(TrainConfig):
        value, default = values[f.name], default_of(f)
        if f.name == "steps_per_epoch" or value == default:
            continue
        if isinstance(default, bool):
            words.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
        elif isinstance(default, dict):
            for key, item in sorted(value.items()):
                words += [flag_of(f), f"{key}={_param_text(item)}"]
        else:
            words += [flag_of(f), str(value)]
    return shlex.join(words)


def _param_text(value: Any) -> str:
    """A --param value as the CLI reads it back: JSON, except text that is not JSON (a formula, a mode) as it is."""
    import json

    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value)


def _scheduler_names() -> tuple[str, ...]:
    from trainer.schedules import CATALOGUE

    return tuple(CATALOGUE)


@dataclass
class ScheduleConfig:
    """A learning-rate schedule: which torch scheduler, its parameters, and how it is stepped.

    Parameters that count time (step_size, milestones, T_max, T_0, total_iters) count epochs after
    the warm-up, and ExponentialLR's gamma and MultiplicativeLR's factor apply per epoch, whichever
    way the scheduler steps: `step_per="batch"` draws the same schedule smoothed over the batches
    (trainer.schedules.resolve converts). OneCycleLR and CyclicLR always step per batch and count
    batches. Run folders written before this rule read the same fields; their history.json keeps
    the LR each one actually used.
    """

    scheduler: str = option("CosineAnnealingLR", label="LR scheduler", choices=_scheduler_names, group="schedule",
                            help="a torch.optim.lr_scheduler class")
    lr: float = option(0.01, label="Learning rate", low=0.0, low_open=True, group="run",
                       help="base learning rate (the backbone's; the head's is head_lr_mult x this in finetune)")
    epochs: int = option(10, label="Epochs", low=1, group="run", help="passes over the training photos")
    steps_per_epoch: int = option(1, label="Steps per epoch", low=1,
                                  help="optimizer steps per epoch (training derives it from the photos)")
    params: dict[str, Any] = option(default_factory=dict, label="Scheduler parameters", group="schedule",
                                    flag="param",
                                    help="scheduler parameter, JSON when possible, counting epochs: "
                                         "milestones=[3,6] gamma=0.5 lr_lambda='0.95 ** epoch'")
    warmup_epochs: int = option(0, label="Warm-up epochs", low=0, group="schedule",
                                help="linear warm-up epochs in front of the scheduler")
    step_per: str = option("epoch", label="Step per", choices=STEP_PER, group="schedule",
                           help="step the scheduler after every epoch, or after every batch for the same "
                                "schedule made smooth (its parameters still count epochs)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScheduleConfig":
        return _build(cls, d)


@dataclass
class TrainConfig:
    """Everything that decides a fine-tuning run, apart from the data itself."""

    arch: str = option("resnet18", label="Backbone", choices=ARCHS, group="model", help="the torchvision ResNet")
    weights: str = option("imagenet", label="Pretrained weights", group="model",
                          help="imagenet, none, or a .safetensors/.pth path")
    strategy: str = option("linear-probe", label="Strategy", choices=STRATEGIES, group="model",
                           help="linear-probe: frozen backbone; partial: layer4 and the head; "
                                "finetune: head first, then all; full: all")
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = option(32, label="Batch size", low=1, group="run", help="photos per optimizer step")
    head_epochs: int = option(2, label="Head-only epochs", low=0, group="run",
                              help="finetune: epochs training only the head before unfreezing")
    head_lr_mult: float = option(10.0, label="Head LR multiplier", low=0.0, low_open=True, group="run",
                                 help="finetune: head LR = this x backbone LR")
    optimizer: str = option("sgd", label="Optimizer", choices=OPTIMIZERS, group="data", help="sgd or adamw")
    momentum: float = option(0.9, label="Momentum (SGD)", low=0.0, group="more", help="SGD momentum")
    nesterov: bool = option(False, label="Nesterov momentum", group="more", help="SGD with Nesterov momentum")
    weight_decay: float = option(1e-4, label="Weight decay", low=0.0, group="more", help="L2 penalty")
    label_smoothing: float = option(0.0, label="Label smoothing", low=0.0, high=1.0, high_open=True, group="more",
                                    help="cross-entropy label smoothing")
    class_weighted: bool = option(False, label="Class-weighted loss", group="data",
                                  help="weight the loss by inverse class frequency")
    augment: str = option("flip-crop", label="Augmentation", choices=AUGMENTS, group="data",
                          help="random crops and flips of the training photos, or none")
    image_size: int = option(224, label="Image size (crop, px)", low=32, high=MAX_IMAGE_SIZE, unit=" pixels",
                             group="run", help="side of the square crop the model sees")
    val_fraction: float = option(0.2, label="Validation fraction", low=0.0, low_open=True, high=1.0, high_open=True,
                                 group="data", help="share of photos held out when there is no val/ folder")
    seed: int = option(0, label="Seed", group="data", help="seeds the split, the head's initialisation and the batches")
    patience: int = option(0, label="Early-stopping patience", low=0, group="data",
                           help="stop after this many epochs without a better val accuracy; 0 = off")
    max_minutes: float = option(0.0, label="Time limit (minutes)", low=0.0, group="data",
                                help="stop training after this many minutes, keeping the best model; 0 = no limit")
    freeze_bn: bool = option(False, label="Freeze BatchNorm statistics", group="more",
                             help="keep every BatchNorm layer's running statistics as loaded (eval mode): "
                                  "steadier with small batches")
    sync_bn: bool = option(False, label="Synchronise BatchNorm across GPUs",
                           help="torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)")
    precision: str = option("auto", label="Precision", choices=PRECISIONS, group="more",
                            help="auto: bfloat16 autocast on GPUs that have it (else float16) and on CPUs with "
                                 "native bfloat16 (AVX512-BF16 or AMX), float32 elsewhere; fp32: never; "
                                 "bf16: also where emulated")
    device: str = option("auto", label="Device", choices=DEVICES, help="where to train: auto picks CUDA when there is a GPU")

    @property
    def lr(self) -> float:
        return self.schedule.lr

    @property
    def epochs(self) -> int:
        return self.schedule.epochs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Accepts the nested form of `config.json` or the CLI's flat fields (lr, epochs, scheduler, ...)."""
        if not isinstance(d, dict):
            raise ConfigError(f"A training config must be a JSON object of fields, got {type(d).__name__}")
        d = dict(d)
        schedule = d.pop("schedule", None) or {}
        if not isinstance(schedule, dict):
            raise ConfigError(f"schedule must be a JSON object of fields, got {type(schedule).__name__}")
        schedule = dict(schedule)
        for name in (f.name for f in fields(ScheduleConfig)):
            if name in d:
                schedule[name] = d.pop(name)
        config = _build(cls, d)
        config.schedule = ScheduleConfig.from_dict(schedule)
        config.validate()
        return config

    def validate(self) -> None:
        for owner in (self, self.schedule):
            for f in fields(owner):
                if f.metadata:
                    _check_field(f, getattr(owner, f.name))
        if not self.weights:
            raise ConfigError("weights must be 'imagenet', 'none' or the path of a weights file")


def config_fields(cls: type = TrainConfig) -> list[Field]:
    """The fields a user sets, nested schedule fields flattened in place (their names are unique)."""
    flat = []
    for f in fields(cls):
        if dataclasses.is_dataclass(default_of(f)):
            flat.extend(config_fields(type(default_of(f))))
        else:
            flat.append(f)
    return flat


def _build(cls, d: dict):
    if not isinstance(d, dict):
        raise ConfigError(f"A {cls.__name__} must be a JSON object of fields, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"Unknown {cls.__name__} field(s): {', '.join(unknown)}. Known: {', '.join(known)}")
    return cls(**{name: _coerce(name, value, default_of(known[name])) for name, value in d.items()})


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", dict: "a JSON object"}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """JSON and form values arrive as str/int/float; bring them to the field's type."""
    kind = type(default)
    if value is None and kind is dict:
        return {}
    if value is None or (isinstance(value, str) and not value.strip() and kind is not str):
        raise ConfigError(f"{name} is blank: give {_KINDS.get(kind, kind.__name__)}")
    try:
        if kind is dict:
            if not isinstance(value, dict):
                raise ValueError
            return value
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, (bool, int)):
                raise ValueError
            return bool(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) else value
            if not isinstance(number, (int, float)) or not math.isfinite(number) or number != int(number):
                raise ValueError
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be {_KINDS.get(kind, kind.__name__)}, got {_shown(value)}") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_field(f: Field, value: Any) -> None:
    meta, name = f.metadata, f.name
    choices = choices_of(f)
    if choices and value not in choices:
        raise ConfigError(f"Invalid {name} {_shown(value)}. Choose one of: {', '.join(choices)}")
    low, high = meta["low"], meta["high"]
    too_low = low is not None and (value < low or (meta["low_open"] and value == low))
    too_high = high is not None and (value > high or (meta["high_open"] and value == high))
    if not (too_low or too_high):
        return
    if low is not None and high is not None and (meta["low_open"] or meta["high_open"]):
        bound = f"between {low:g} and {high:g}" if meta["low_open"] and meta["high_open"] else f"in [{low:g}, {high:g})"
    elif too_low:
        bound = "positive" if meta["low_open"] and low == 0 else (
            f"greater than {low:g}" if meta["low_open"] else f"at least {low:g}{meta['unit']}")
    else:
        bound = f"at most {high:g}{meta['unit']}"
    raise ConfigError(f"{name} must be {bound}, got {value}")


@dataclass
class RunConfig:
    """A run's configuration with types: the training config, the class names, the preprocessing.

    The run folder stores it as a `models.run_folder.RunRecord` (training config as a dict, since
    models/ knows nothing of trainer/); `from_dict` reads a config.json back into types.
    """

    train: TrainConfig
    labels: list[str]
    preprocessing: PreprocessSpec
    trained_on: dict = field(default_factory=dict)  # processes (torchrun's world size), backend, precision

    def to_record(self) -> RunRecord:
        return RunRecord(list(self.labels), self.preprocessing, self.train.to_dict(), dict(self.trained_on))

    def to_dict(self) -> dict:
        return self.to_record().to_dict()

    @classmethod
    def from_record(cls, record: RunRecord) -> "RunConfig":
        return cls(TrainConfig.from_dict(record.train), list(record.labels), record.preprocessing, dict(record.trained_on))

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        try:
            record = RunRecord.from_dict(d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"Not a run configuration ({type(exc).__name__}: {exc})") from None
        return cls.from_record(record)
