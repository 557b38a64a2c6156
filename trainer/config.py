"""Typed configuration shared by the UI, the CLI and the run folder's `config.json`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

ARCHS = ("resnet18", "resnet34", "resnet50")
STRATEGIES = ("linear-probe", "finetune", "full")
OPTIMIZERS = ("sgd", "adamw")
AUGMENTS = ("none", "flip-crop", "trivialaugment")
STEP_PER = ("epoch", "batch")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A configuration value a user gave is not acceptable; the message says which and why."""


@dataclass
class ScheduleConfig:
    """A learning-rate schedule: which torch scheduler, its parameters, and how it is stepped.

    Step-counting parameters (step_size, milestones, T_max, T_0, total_iters) count scheduler
    steps: epochs when `step_per="epoch"`, batches when `step_per="batch"`.
    """

    scheduler: str = "CosineAnnealingLR"
    lr: float = 0.01
    epochs: int = 10
    steps_per_epoch: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    warmup_epochs: int = 0
    step_per: str = "epoch"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScheduleConfig":
        return _build(cls, d)


@dataclass
class TrainConfig:
    """Everything that decides a fine-tuning run, apart from the data itself."""

    arch: str = "resnet18"
    weights: str = "imagenet"  # "imagenet", "none", or a path to a weights file
    strategy: str = "linear-probe"
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(lr=0.01, epochs=10))
    batch_size: int = 32
    head_epochs: int = 2  # finetune: epochs with the backbone frozen before it is unfrozen
    head_lr_mult: float = 10.0  # finetune/full: head LR = head_lr_mult x backbone LR
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    class_weighted: bool = False
    augment: str = "flip-crop"
    image_size: int = 224
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 0  # early stopping after this many epochs without a better val accuracy; 0 = off
    device: str = "auto"

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
        d = dict(d)
        schedule = dict(d.pop("schedule", None) or {})
        for name in (f.name for f in fields(ScheduleConfig)):
            if name in d:
                schedule[name] = d.pop(name)
        config = _build(cls, d)
        config.schedule = ScheduleConfig.from_dict(schedule) if schedule else ScheduleConfig()
        config.validate()
        return config

    def validate(self) -> None:
        _choice("arch", self.arch, ARCHS)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("augment", self.augment, AUGMENTS)
        _choice("device", self.device, DEVICES)
        _choice("step_per", self.schedule.step_per, STEP_PER)
        if not self.weights:
            raise ConfigError("weights must be 'imagenet', 'none' or the path of a weights file")
        _at_least("batch_size", self.batch_size, 1)
        _at_least("epochs", self.schedule.epochs, 1)
        _at_least("image_size", self.image_size, 32)
        if self.image_size > 1024:
            raise ConfigError(f"image_size must be at most 1024 pixels, got {self.image_size}")
        _at_least("head_epochs", self.head_epochs, 0)
        _at_least("patience", self.patience, 0)
        if not self.schedule.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.schedule.lr}")
        if not self.head_lr_mult > 0:
            raise ConfigError(f"head_lr_mult must be positive, got {self.head_lr_mult}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ConfigError("weight_decay and momentum must not be negative")


def _build(cls, d: dict):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"Unknown {cls.__name__} field(s): {', '.join(unknown)}. Known: {', '.join(known)}")
    kwargs = {}
    for name, value in d.items():
        default = getattr(cls(), name)
        kwargs[name] = _coerce(name, value, default)
    return cls(**kwargs)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """JSON and form values arrive as str/int/float; bring them to the field's type."""
    if isinstance(default, (dict, ScheduleConfig)) or value is None and default is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {type(default).__name__}, got {value!r}") from None


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"Invalid {name} {value!r}. Choose one of: {', '.join(choices)}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, got {value}")


@dataclass
class RunConfig:
    """What a run folder's `config.json` holds; the ONNX export embeds the same facts."""

    train: TrainConfig
    labels: list[str]
    preprocessing: dict  # models.preprocess.PreprocessSpec.to_dict()

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "preprocessing": self.preprocessing, "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return cls(train=TrainConfig.from_dict(d["train"]), labels=list(d["labels"]), preprocessing=d["preprocessing"])
