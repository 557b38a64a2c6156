"""The learning-rate scheduler catalogue, create_scheduler(), and lr_curve() that runs the real torch scheduler.

One catalogue serves the studio tab, the CLI and training. Curves come from stepping the actual
`torch.optim.lr_scheduler` classes on a throwaway optimizer, never from re-implemented formulas.
"""

from __future__ import annotations

import inspect
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.optim import lr_scheduler

from trainer.config import STEP_PER, ScheduleConfig
from trainer.formula import FormulaError, parse_formula

WARMUP_START_FACTOR = 0.1  # the linear warm-up ramps from 10% of the LR to 100%
MAX_CURVE_STEPS = 1_000_000  # a curve longer than this is a typo, not a schedule


class ScheduleError(ValueError):
    """A schedule a user asked for is not valid; the message says which parameter and why."""


@dataclass(frozen=True)
class Param:
    """One constructor parameter of a torch scheduler, as the studio exposes it."""

    name: str
    kind: str  # "int", "float", "ints", "choice", "bool", "formula", "optional_int"
    help: str = ""
    low: float | None = None  # smallest allowed value
    low_open: bool = False  # True: `low` itself is not allowed
    high: float | None = None  # largest allowed value (inclusive)
    choices: tuple[str, ...] = ()
    # Parameters torch requires (no default) get one derived from the run: f(main_steps, lr).
    derive: Callable[[int, float], Any] | None = None
    counts_steps: bool = False  # counts scheduler steps: epochs, or batches when stepping per batch


@dataclass(frozen=True)
class SchedulerInfo:
    name: str
    summary: str
    params: tuple[Param, ...]
    per_batch_only: bool = False  # OneCycleLR and CyclicLR are defined over optimizer steps
    needs_metric: bool = False  # ReduceLROnPlateau steps on the validation loss, once per epoch
    warmup_allowed: bool = True
    lr_params: tuple[str, ...] = ()  # absolute learning rates, scaled per parameter group in training

    @property
    def cls(self) -> type:
        return getattr(lr_scheduler, self.name)

    def default(self, param: Param) -> Any:
        """torch's own default for `param`, or None where torch requires a value."""
        value = inspect.signature(self.cls).parameters[param.name].default
        return None if value is inspect.Parameter.empty else value


_POSITIVE = {"low": 0.0, "low_open": True}
_GAMMA = Param("gamma", "float", "multiplicative factor of LR decay", **_POSITIVE)
_ETA_MIN = Param("eta_min", "float", "minimum learning rate", low=0.0)
_CYCLE_MOMENTUM = Param("cycle_momentum", "bool", "also cycle momentum inversely to the LR")

CATALOGUE: dict[str, SchedulerInfo] = {
    info.name: info
    for info in [
        SchedulerInfo(
            "StepLR",
            "Decays the LR by gamma every step_size steps.",
            (
                Param("step_size", "int", "period of LR decay", low=1, derive=lambda n, lr: max(1, n // 3), counts_steps=True),
                _GAMMA,
            ),
        ),
        SchedulerInfo(
            "MultiStepLR",
            "Decays the LR by gamma at each milestone.",
            (
                Param(
                    "milestones",
                    "ints",
                    "increasing step indices, e.g. [30, 80]",
                    low=1,
                    derive=lambda n, lr: sorted({max(1, n // 2), max(1, 3 * n // 4)}),
                    counts_steps=True,
                ),
                _GAMMA,
            ),
        ),
        SchedulerInfo(
            "ExponentialLR",
            "Multiplies the LR by gamma every step.",
            (Param("gamma", "float", "multiplicative factor of LR decay", derive=lambda n, lr: 0.9, **_POSITIVE),),
        ),
        SchedulerInfo(
            "CosineAnnealingLR",
            "Cosine from the LR down to eta_min over T_max steps.",
            (
                Param("T_max", "int", "steps to reach eta_min", low=1, derive=lambda n, lr: n, counts_steps=True),
                _ETA_MIN,
            ),
        ),
        SchedulerInfo(
            "CosineAnnealingWarmRestarts",
            "Cosine annealing that restarts every T_0 steps (SGDR), periods growing by T_mult.",
            (
                Param("T_0", "int", "steps until the first restart", low=1, derive=lambda n, lr: max(1, n // 3), counts_steps=True),
                Param("T_mult", "int", "factor by which the period grows after a restart", low=1),
                _ETA_MIN,
            ),
        ),
        SchedulerInfo(
            "ReduceLROnPlateau",
            "Multiplies the LR by factor when the validation loss stops improving for patience epochs.",
            (
                Param("mode", "choice", "min: lower metric is better", choices=("min", "max")),
                Param("factor", "float", "LR multiplier on a plateau", low=0.0, low_open=True, high=0.999999),
                Param("patience", "int", "epochs without improvement before reducing", low=0),
                Param("threshold", "float", "minimum change that counts as an improvement", low=0.0),
                Param("threshold_mode", "choice", "rel: relative threshold, abs: absolute", choices=("rel", "abs")),
                Param("cooldown", "int", "epochs to wait after a reduction", low=0),
                Param("min_lr", "float", "lower bound on the LR", low=0.0),
                Param("eps", "float", "smallest LR change that is applied", low=0.0),
            ),
            needs_metric=True,
            warmup_allowed=False,
        ),
        SchedulerInfo(
            "LambdaLR",
            "LR = initial LR x f(epoch), f a formula you type.",
            (Param("lr_lambda", "formula", "factor as a formula in epoch, e.g. 0.95 ** epoch", derive=lambda n, lr: "0.95 ** epoch"),),
        ),
        SchedulerInfo(
            "MultiplicativeLR",
            "LR = previous LR x f(epoch), f a formula you type.",
            (Param("lr_lambda", "formula", "factor per step as a formula in epoch, e.g. 0.95", derive=lambda n, lr: "0.95"),),
        ),
        SchedulerInfo(
            "OneCycleLR",
            "The 1cycle policy: warm up to max_lr, then anneal far below the start.",
            (
                Param("max_lr", "float", "peak learning rate (defaults to the LR)", derive=lambda n, lr: lr, **_POSITIVE),
                Param("total_steps", "int", "length of the cycle in batches (defaults to the run)", low=1, derive=lambda n, lr: n),
                Param("pct_start", "float", "fraction of the cycle spent increasing the LR", low=0.0, low_open=True, high=0.999999),
                Param("anneal_strategy", "choice", "annealing shape", choices=("cos", "linear")),
                _CYCLE_MOMENTUM,
                Param("base_momentum", "float", "lowest momentum", low=0.0),
                Param("max_momentum", "float", "highest momentum", low=0.0),
                Param("div_factor", "float", "initial LR = max_lr / div_factor", **_POSITIVE),
                Param("final_div_factor", "float", "final LR = initial LR / final_div_factor", **_POSITIVE),
                Param("three_phase", "bool", "annihilate the LR in a third phase"),
            ),
            per_batch_only=True,
            warmup_allowed=False,
            lr_params=("max_lr",),
        ),
        SchedulerInfo(
            "CyclicLR",
            "Cycles the LR between base_lr and max_lr (triangular, triangular2, exp_range).",
            (
                Param("base_lr", "float", "lower LR boundary (defaults to LR / 10)", derive=lambda n, lr: lr / 10, **_POSITIVE),
                Param("max_lr", "float", "upper LR boundary (defaults to the LR)", derive=lambda n, lr: lr, **_POSITIVE),
                Param("step_size_up", "int", "batches in the increasing half of a cycle", low=1),
                Param("step_size_down", "optional_int", "batches in the decreasing half (empty: same as up)", low=1),
                Param("mode", "choice", "cycle policy", choices=("triangular", "triangular2", "exp_range")),
                Param("gamma", "float", "exp_range decay per batch", **_POSITIVE),
                Param("scale_mode", "choice", "scale per cycle or per iteration", choices=("cycle", "iterations")),
                _CYCLE_MOMENTUM,
                Param("base_momentum", "float", "lowest momentum", low=0.0),
                Param("max_momentum", "float", "highest momentum", low=0.0),
            ),
            per_batch_only=True,
            lr_params=("base_lr", "max_lr"),
        ),
        SchedulerInfo(
            "LinearLR",
            "Linearly changes the LR factor from start_factor to end_factor over total_iters steps.",
            (
                Param("start_factor", "float", "factor at the first step", low=0.0, low_open=True, high=1.0),
                Param("end_factor", "float", "factor after total_iters steps", low=0.0, high=1.0),
                Param("total_iters", "int", "steps of the linear change", low=1, counts_steps=True),
            ),
        ),
        SchedulerInfo(
            "ConstantLR",
            "Multiplies the LR by factor for total_iters steps, then uses the LR.",
            (
                Param("factor", "float", "factor during the first total_iters steps", low=0.0, high=1.0),
                Param("total_iters", "int", "steps at the reduced LR", low=0, counts_steps=True),
            ),
        ),
        SchedulerInfo(
            "PolynomialLR",
            "Polynomial decay of the LR to zero over total_iters steps.",
            (
                Param("total_iters", "int", "steps of the decay", low=1, counts_steps=True),
                Param("power", "float", "power of the polynomial", low=0.0),
            ),
        ),
    ]
}


def scheduler_info(name: str) -> SchedulerInfo:
    if name not in CATALOGUE:
        raise ScheduleError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(CATALOGUE)}")
    return CATALOGUE[name]


def step_per(config: ScheduleConfig) -> str:
    """Whether the scheduler steps per "epoch" or per "batch" for this config."""
    info = scheduler_info(config.scheduler)
    if info.per_batch_only:
        return "batch"
    if info.needs_metric:
        return "epoch"
    return config.step_per


def scheduler_steps(config: ScheduleConfig) -> tuple[int, int]:
    """(warm-up steps, main scheduler steps) in scheduler steps."""
    unit = config.steps_per_epoch if step_per(config) == "batch" else 1
    warmup = config.warmup_epochs * unit
    return warmup, config.epochs * unit - warmup


@dataclass(frozen=True)
class ResolvedSchedule:
    """A validated schedule: the config plus every constructor argument, defaults filled in."""

    config: ScheduleConfig
    info: SchedulerInfo
    kwargs: dict[str, Any]
    step_per: str
    warmup_steps: int


def resolve(config: ScheduleConfig) -> ResolvedSchedule:
    """Validate a schedule and fill in its parameters; raises ScheduleError with a readable message."""
    info = scheduler_info(config.scheduler)
    _check_run_length(config, info)
    known = {p.name: p for p in info.params}
    unknown = sorted(set(config.params) - set(known))
    if unknown:
        raise ScheduleError(
            f"{info.name} has no parameter {', '.join(unknown)}. Its parameters: {', '.join(known) or 'none'}"
        )
    warmup_steps, main_steps = scheduler_steps(config)
    kwargs = {}
    for param in info.params:
        value = config.params.get(param.name)
        if value is None or value == "":
            value = param.derive(main_steps, config.lr) if param.derive else info.default(param)
        kwargs[param.name] = _check_value(info.name, param, value)
    for param in info.params:
        if param.kind == "formula":
            _check_formula(info.name, kwargs[param.name], main_steps, config.lr)
    if info.name == "OneCycleLR" and kwargs["total_steps"] < main_steps:
        raise ScheduleError(
            f"OneCycleLR: total_steps ({kwargs['total_steps']}) must cover the run's {main_steps} batches "
            f"({config.epochs} epochs x {config.steps_per_epoch} steps per epoch)"
        )
    return ResolvedSchedule(config, info, kwargs, step_per(config), warmup_steps)


def _check_formula(scheduler: str, formula, steps: int, lr: float) -> None:
    """Evaluate the formula over the whole run now, so a bad epoch is reported before training."""
    factor = 1.0  # MultiplicativeLR multiplies the factors up; LambdaLR applies each one alone
    for epoch in range(steps + 1):
        try:
            value = formula(epoch)
        except FormulaError as exc:
            raise ScheduleError(f"{scheduler}: lr_lambda: {exc}") from None
        if value < 0:
            raise ScheduleError(f"{scheduler}: lr_lambda gives {value:g} at epoch {epoch}; an LR factor cannot be negative")
        if scheduler == "LambdaLR":
            factor = value
        elif epoch > 0:  # MultiplicativeLR applies its first factor at the first step
            factor *= value
        if not math.isfinite(lr * factor):
            raise ScheduleError(f"{scheduler}: lr_lambda makes the learning rate overflow at epoch {epoch}")


def _check_run_length(config: ScheduleConfig, info: SchedulerInfo) -> None:
    for name in ("epochs", "steps_per_epoch"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScheduleError(f"{name} must be a whole number of at least 1, got {value!r}")
    if config.epochs * config.steps_per_epoch > MAX_CURVE_STEPS:
        raise ScheduleError(f"epochs x steps_per_epoch must be at most {MAX_CURVE_STEPS:,}")
    if not (isinstance(config.lr, (int, float)) and math.isfinite(config.lr) and config.lr > 0):
        raise ScheduleError(f"lr must be a positive number, got {config.lr!r}")
    if config.step_per not in STEP_PER:
        raise ScheduleError(f"step_per must be one of {', '.join(STEP_PER)}, got {config.step_per!r}")
    if not isinstance(config.warmup_epochs, int) or config.warmup_epochs < 0:
        raise ScheduleError(f"warmup_epochs must be a whole number of at least 0, got {config.warmup_epochs!r}")
    if config.warmup_epochs:
        if not info.warmup_allowed:
            raise ScheduleError(f"{info.name} cannot have a warm-up in front of it; set warmup_epochs to 0")
        if config.warmup_epochs >= config.epochs:
            raise ScheduleError(
                f"warmup_epochs ({config.warmup_epochs}) must be less than epochs ({config.epochs})"
            )


def _check_value(scheduler: str, param: Param, value: Any) -> Any:
    where = f"{scheduler}: {param.name}"
    if param.kind == "formula":
        try:
            return parse_formula(str(value))
        except FormulaError as exc:
            raise ScheduleError(f"{where}: {exc}") from None
    if param.kind == "choice":
        if value not in param.choices:
            raise ScheduleError(f"{where} must be one of {', '.join(param.choices)}, got {value!r}")
        return value
    if param.kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ScheduleError(f"{where} must be true or false, got {value!r}")
        return value
    if param.kind == "ints":
        items = _as_int_list(where, value)
        for item in items:
            _check_range(where, param, item)
        if any(b <= a for a, b in zip(items, items[1:])):
            raise ScheduleError(f"{where} must be strictly increasing, got {items}")
        if not items:
            raise ScheduleError(f"{where} needs at least one value")
        return items
    if param.kind == "optional_int" and value is None:
        return None
    number = _as_number(where, value, whole=param.kind in ("int", "optional_int"))
    _check_range(where, param, number)
    return number


def _as_int_list(where: str, value: Any) -> list[int]:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text if text.startswith("[") else f"[{text}]")
        except json.JSONDecodeError:
            raise ScheduleError(f"{where} must be a list of whole numbers like [30, 80], got {text!r}") from None
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [_as_number(where, v, whole=True) for v in value]


def _as_number(where: str, value: Any, whole: bool) -> int | float:
    if isinstance(value, bool):
        raise ScheduleError(f"{where} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            raise ScheduleError(f"{where} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScheduleError(f"{where} must be a finite number, got {value!r}")
    if whole:
        if float(value) != int(value):
            raise ScheduleError(f"{where} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _check_range(where: str, param: Param, value: float) -> None:
    if param.low is not None and (value < param.low or (param.low_open and value == param.low)):
        bound = f"greater than {param.low:g}" if param.low_open else f"at least {param.low:g}"
        raise ScheduleError(f"{where} must be {bound}, got {value}")
    if param.high is not None and value > param.high:
        limit = "less than 1" if param.high == 0.999999 else f"at most {param.high:g}"
        raise ScheduleError(f"{where} must be {limit}, got {value}")


class LRStepper:
    """Steps a torch scheduler at the right moments: after each batch, or after each epoch."""

    def __init__(self, scheduler, resolved: ResolvedSchedule):
        self.scheduler = scheduler
        self.per_batch = resolved.step_per == "batch"
        self.needs_metric = resolved.info.needs_metric

    def after_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, val_loss: float | None = None) -> None:
        if self.needs_metric:
            self.scheduler.step(val_loss)
        elif not self.per_batch:
            self.scheduler.step()


def create_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig) -> LRStepper:
    """The torch scheduler for `config` on `optimizer`, with the optional linear warm-up in front.

    Absolute learning rates (max_lr, base_lr) are given for the base LR and scaled per parameter
    group, so a head group at 10x the backbone LR keeps its ratio under OneCycleLR and CyclicLR.
    """
    resolved = resolve(config)
    kwargs = dict(resolved.kwargs)
    ratios = [group["lr"] / config.lr for group in optimizer.param_groups]
    for name in resolved.info.lr_params:
        kwargs[name] = [kwargs[name] * r for r in ratios] if len(ratios) > 1 else kwargs[name]
    warmup = None
    if resolved.warmup_steps:
        warmup = lr_scheduler.LinearLR(
            optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=resolved.warmup_steps
        )
    main = resolved.info.cls(optimizer, **kwargs)
    if warmup is not None:
        main = lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[resolved.warmup_steps])
    return LRStepper(main, resolved)


@dataclass
class ValLossShape:
    """A made-up validation-loss curve to drive ReduceLROnPlateau in the studio."""

    start: float = 2.0  # loss at epoch 0
    plateau: float = 0.6  # level the loss flattens out at
    plateau_epoch: int = 8  # epoch from which it stops improving
    noise: float = 0.0  # relative noise, e.g. 0.02 = 2%
    seed: int = 0

    def curve(self, epochs: int) -> list[float]:
        rng = random.Random(self.seed)
        values = []
        for epoch in range(epochs):
            t = min(epoch, self.plateau_epoch) / max(self.plateau_epoch, 1)
            base = self.plateau + (self.start - self.plateau) * (1 - t) ** 2
            values.append(base * (1 + self.noise * rng.gauss(0.0, 1.0)))
        return values


@dataclass
class LRCurve:
    lr: list[float]  # one value per optimizer step: epochs x steps_per_epoch
    val_loss: list[float] | None = None  # per epoch, when the scheduler is driven by it
    step_per: str = "epoch"
    notes: list[str] = field(default_factory=list)


def lr_curve(config: ScheduleConfig, val_loss: list[float] | None = None) -> LRCurve:
    """The LR at every optimizer step, read off the real torch scheduler stepped as training would."""
    resolved = resolve(config)
    if resolved.info.needs_metric:
        val_loss = list(val_loss) if val_loss is not None else ValLossShape().curve(config.epochs)
        if len(val_loss) < config.epochs:
            raise ScheduleError(f"val_loss has {len(val_loss)} values; ReduceLROnPlateau needs one per epoch ({config.epochs})")
    else:
        val_loss = None
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr, momentum=0.9)
    stepper = create_scheduler(optimizer, config)
    # torch warns when a scheduler steps before the optimizer ever has; one (gradient-free) step settles it.
    optimizer.step()
    group = optimizer.param_groups[0]
    lrs: list[float] = []
    for epoch in range(config.epochs):
        if stepper.per_batch:
            for _ in range(config.steps_per_epoch):
                lrs.append(group["lr"])
                stepper.after_batch()
        else:
            lrs.extend([group["lr"]] * config.steps_per_epoch)
        stepper.after_epoch(val_loss[epoch] if val_loss is not None else None)
    notes = []
    if resolved.step_per != config.step_per:
        notes.append(f"{resolved.info.name} always steps per {resolved.step_per}.")
    return LRCurve([float(v) for v in lrs], val_loss, resolved.step_per, notes)


def schedule_code(config: ScheduleConfig, val_loss: list[float] | None = None) -> str:
    """PyTorch code that reproduces the schedule; running it gives the same `lrs` as lr_curve()."""
    resolved = resolve(config)
    imports = ["import torch"]
    args = []
    for name, value in resolved.kwargs.items():
        if hasattr(value, "python_source"):
            if value.names_used():
                imports.append(f"from math import {', '.join(value.names_used())}")
            value = f"lambda epoch: {value.python_source()}"
        else:
            value = repr(value)
        args.append(f"{name}={value}")
    sched = "torch.optim.lr_scheduler"
    lines = [
        *imports,
        "",
        "model = torch.nn.Linear(1, 1)",
        f"optimizer = torch.optim.SGD(model.parameters(), lr={config.lr!r}, momentum=0.9)",
    ]
    main = f"{sched}.{resolved.info.name}(optimizer{''.join(', ' + a for a in args)})"
    if resolved.warmup_steps:
        lines += [
            f"warmup = {sched}.LinearLR(optimizer, start_factor={WARMUP_START_FACTOR}, end_factor=1.0, "
            f"total_iters={resolved.warmup_steps})",
            f"main = {main}",
            f"scheduler = {sched}.SequentialLR(optimizer, [warmup, main], milestones=[{resolved.warmup_steps}])",
        ]
    else:
        lines.append(f"scheduler = {main}")
    if resolved.info.needs_metric:
        curve = lr_curve(config, val_loss).val_loss
        lines.append(f"val_loss = {curve!r}  # your validation loss, one per epoch")
    per_batch = resolved.step_per == "batch"
    lines += [
        "",
        "lrs = []",
        f"for epoch in range({config.epochs}):",
        f"    for batch in range({config.steps_per_epoch}):",
        '        lrs.append(optimizer.param_groups[0]["lr"])',
        "        optimizer.step()  # after loss.backward() in real training",
    ]
    if per_batch:
        lines.append("        scheduler.step()")
    elif resolved.info.needs_metric:
        lines.append("    scheduler.step(val_loss[epoch])")
    else:
        lines.append("    scheduler.step()")
    return "\n".join(lines) + "\n"

