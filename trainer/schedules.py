"""The learning-rate scheduler catalogue, create_scheduler(), and lr_curve() that runs the real torch scheduler.

One catalogue serves the studio tab, the CLI and training. Curves come from stepping the actual
`torch.optim.lr_scheduler` classes on a throwaway optimizer, never from re-implemented formulas.

Parameters that count time count epochs, whichever way the scheduler steps: stepping per batch
keeps the curve and smooths it. resolve() is the one place that turns them into torch's units
(a count of epochs times the batches per epoch, a factor per epoch into its per-batch root), so
the studio, the CLI, the API and training all read a schedule the same way.
"""

from __future__ import annotations

import inspect
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch.optim import lr_scheduler

from trainer.config import STEP_PER, ScheduleConfig
from trainer.formula import Formula, FormulaError, epoch_text, parse_formula

WARMUP_START_FACTOR = 0.1  # the linear warm-up ramps from 10% of the LR to 100%
# Limits on one curve, so that one request cannot take a server's memory or minutes of its CPU.
MAX_CURVE_STEPS = 1_000_000  # optimizer steps; a curve longer than this is a typo, not a schedule (~4 s)
MAX_LIST_ITEMS = 1_000  # milestones; more is a typo
MAX_FORMULA_WORK = 20_000_000  # formula parts x steps evaluated per check (~2 s on one core)


class ScheduleError(ValueError):
    """A schedule a user asked for is not valid; the message says which parameter and why."""


@dataclass(frozen=True)
class RunLength:
    """The part of a run the main scheduler covers (after the warm-up), for parameters derived from it."""

    epochs: int
    batches: int  # optimizer steps: epochs x steps per epoch
    lr: float


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
    # "epochs": counts epochs, times the batches per epoch when stepping per batch;
    # "per epoch": a factor applied once per epoch, its per-batch root when stepping per batch;
    # "batches": counts optimizer steps (the schedulers that always step per batch).
    unit: str = ""
    # Parameters torch requires (no default) get one derived from the run, described in words by `derived`...
    derive: Callable[[RunLength], Any] | None = None
    derived: str = ""
    suggest: Any = None  # ...or, where nothing about the run matters, this one.


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
        """torch's own default for `param`, our suggestion where torch requires a value, or None."""
        value = inspect.signature(self.cls).parameters[param.name].default
        return param.suggest if value is inspect.Parameter.empty else value


_POSITIVE = {"low": 0.0, "low_open": True}
_EPOCHS = {"unit": "epochs", "low": 1}
_GAMMA = Param("gamma", "float", "multiplicative factor of LR decay", **_POSITIVE)
_ETA_MIN = Param("eta_min", "float", "minimum learning rate", low=0.0)
_CYCLE_MOMENTUM = Param("cycle_momentum", "bool", "also cycle momentum inversely to the LR")
_THIRD = {"derive": lambda run: max(1, run.epochs // 3), "derived": "a third of the run"}

CATALOGUE: dict[str, SchedulerInfo] = {
    info.name: info
    for info in [
        SchedulerInfo(
            "StepLR",
            "Decays the LR by gamma every step_size epochs.",
            (Param("step_size", "int", "epochs between decays", **_EPOCHS, **_THIRD), _GAMMA),
        ),
        SchedulerInfo(
            "MultiStepLR",
            "Decays the LR by gamma at each milestone.",
            (
                Param(
                    "milestones",
                    "ints",
                    "increasing epochs (after the warm-up) at which to decay, e.g. [30, 80]",
                    **_EPOCHS,
                    derive=lambda run: sorted({max(1, run.epochs // 2), max(1, 3 * run.epochs // 4)}),
                    derived="half and three quarters of the run",
                ),
                _GAMMA,
            ),
        ),
        SchedulerInfo(
            "ExponentialLR",
            "Multiplies the LR by gamma every epoch.",
            (Param("gamma", "float", "factor applied to the LR each epoch", unit="per epoch", suggest=0.9, **_POSITIVE),),
        ),
        SchedulerInfo(
            "CosineAnnealingLR",
            "Cosine from the LR down to eta_min over T_max epochs.",
            (
                Param("T_max", "int", "epochs to reach eta_min", **_EPOCHS, derive=lambda run: run.epochs,
                      derived="the whole run"),
                _ETA_MIN,
            ),
        ),
        SchedulerInfo(
            "CosineAnnealingWarmRestarts",
            "Cosine annealing that restarts every T_0 epochs (SGDR), periods growing by T_mult.",
            (
                Param("T_0", "int", "epochs until the first restart", **_EPOCHS, **_THIRD),
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
            (Param("lr_lambda", "formula", "factor of the LR as a formula in epoch, e.g. 0.95 ** epoch",
                   suggest="0.95 ** epoch"),),
        ),
        SchedulerInfo(
            "MultiplicativeLR",
            "LR = previous LR x f(epoch) each epoch, f a formula you type.",
            (Param("lr_lambda", "formula", "factor applied each epoch, as a formula in epoch, e.g. 0.95",
                   unit="per epoch", suggest="0.95"),),
        ),
        SchedulerInfo(
            "OneCycleLR",
            "The 1cycle policy: warm up to max_lr, then anneal far below the start.",
            (
                Param("max_lr", "float", "peak learning rate", derive=lambda run: run.lr, derived="the base LR",
                      **_POSITIVE),
                Param("total_steps", "int", "length of the cycle in batches", low=1, unit="batches",
                      derive=lambda run: run.batches, derived="the run's batches"),
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
                Param("base_lr", "float", "lower LR boundary", derive=lambda run: run.lr / 10,
                      derived="a tenth of the base LR", **_POSITIVE),
                Param("max_lr", "float", "upper LR boundary", derive=lambda run: run.lr, derived="the base LR",
                      **_POSITIVE),
                Param("step_size_up", "int", "batches in the increasing half of a cycle", low=1, unit="batches"),
                Param("step_size_down", "optional_int", "batches in the decreasing half (empty: same as up)", low=1,
                      unit="batches"),
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
            "Linearly changes the LR factor from start_factor to end_factor over total_iters epochs.",
            (
                Param("start_factor", "float", "factor at the first step", low=0.0, low_open=True, high=1.0),
                Param("end_factor", "float", "factor after total_iters epochs", low=0.0, high=1.0),
                Param("total_iters", "int", "epochs of the linear change", **_EPOCHS),
            ),
        ),
        SchedulerInfo(
            "ConstantLR",
            "Multiplies the LR by factor for total_iters epochs, then uses the LR.",
            (
                Param("factor", "float", "factor during the first total_iters epochs", low=0.0, high=1.0),
                Param("total_iters", "int", "epochs at the reduced LR", low=0, unit="epochs"),
            ),
        ),
        SchedulerInfo(
            "PolynomialLR",
            "Polynomial decay of the LR to zero over total_iters epochs.",
            (
                Param("total_iters", "int", "epochs of the decay", **_EPOCHS),
                Param("power", "float", "power of the polynomial", low=0.0),
            ),
        ),
    ]
}


def scheduler_info(name: str) -> SchedulerInfo:
    if name not in CATALOGUE:
        raise ScheduleError(f"Unknown scheduler {_shown(name)}. Choose one of: {', '.join(CATALOGUE)}")
    return CATALOGUE[name]


def step_per(config: ScheduleConfig) -> str:
    """Whether the scheduler steps per "epoch" or per "batch" for this config."""
    info = scheduler_info(config.scheduler)
    if info.per_batch_only:
        return "batch"
    if info.needs_metric:
        return "epoch"
    return config.step_per


class EpochFormula:
    """A formula in epochs, called by torch with the scheduler's step count.

    Stepping per batch, step k is epoch k / steps_per_epoch; a factor applied each epoch
    (MultiplicativeLR) becomes its steps_per_epoch-th root per batch.
    """

    def __init__(self, formula: Formula, steps_per_epoch: int, per_epoch_factor: bool):
        self.formula = formula
        self.steps_per_epoch = steps_per_epoch
        self.per_epoch_factor = per_epoch_factor

    def __call__(self, step: int) -> float:
        epoch = step / self.steps_per_epoch
        value = self.formula(epoch)
        if value < 0:
            raise FormulaError(f"it gives {value:g} at epoch {epoch_text(epoch)}; an LR factor cannot be negative")
        return value ** (1 / self.steps_per_epoch) if self.per_epoch_factor else value


@dataclass(frozen=True)
class ResolvedSchedule:
    """A validated schedule: the config, every parameter as the user counts it, and torch's arguments."""

    config: ScheduleConfig
    info: SchedulerInfo
    params: dict[str, Any]  # defaults filled in; counts in epochs (batches for per-batch-only schedulers)
    kwargs: dict[str, Any]  # the torch constructor's arguments, counted in scheduler steps
    step_per: str
    steps_per_epoch: int  # scheduler steps per epoch: 1, or the batches per epoch when stepping per batch

    @property
    def warmup_steps(self) -> int:
        return self.config.warmup_epochs * self.steps_per_epoch


def resolve(config: ScheduleConfig) -> ResolvedSchedule:
    """Validate a schedule and fill in its parameters; raises ScheduleError with a readable message."""
    info = scheduler_info(config.scheduler)
    _check_run_length(config, info)
    if not isinstance(config.params, dict):
        raise ScheduleError(f"params must be an object of parameter names and values, got {_shown(config.params)}")
    known = {p.name: p for p in info.params}
    unknown = [str(name)[:40] for name in config.params if name not in known]
    if unknown:
        more = f" and {len(unknown) - 5:,} more" if len(unknown) > 5 else ""
        raise ScheduleError(
            f"{info.name} has no parameter {', '.join(sorted(unknown[:5]))}{more}. "
            f"Its parameters: {', '.join(known) or 'none'}"
        )
    per = step_per(config)
    steps_per_epoch = config.steps_per_epoch if per == "batch" else 1
    main_epochs = config.epochs - config.warmup_epochs
    run = RunLength(main_epochs, main_epochs * config.steps_per_epoch, config.lr)
    params, kwargs = {}, {}
    for param in info.params:
        value = config.params.get(param.name)
        if value is None or value == "":
            value = param.derive(run) if param.derive else info.default(param)
        params[param.name] = _check_value(info.name, param, value)
        kwargs[param.name] = _in_scheduler_steps(param, params[param.name], steps_per_epoch)
    for param in info.params:
        if param.kind == "formula":
            _check_formula(info.name, kwargs[param.name], main_epochs * steps_per_epoch, config.lr)
    if info.name == "OneCycleLR" and kwargs["total_steps"] < run.batches:
        raise ScheduleError(
            f"OneCycleLR: total_steps ({kwargs['total_steps']}) must cover the run's {run.batches} batches "
            f"({config.epochs} epochs x {config.steps_per_epoch} steps per epoch)"
        )
    return ResolvedSchedule(config, info, params, kwargs, per, steps_per_epoch)


def _in_scheduler_steps(param: Param, value: Any, steps_per_epoch: int) -> Any:
    """`value` as torch counts it: per scheduler step rather than per epoch."""
    if param.kind == "formula":
        return EpochFormula(value, steps_per_epoch, per_epoch_factor=param.unit == "per epoch")
    if steps_per_epoch == 1 or value is None:
        return value
    if param.unit == "per epoch":
        return value ** (1 / steps_per_epoch)
    if param.unit == "epochs":
        return [v * steps_per_epoch for v in value] if param.kind == "ints" else value * steps_per_epoch
    return value


def _check_formula(scheduler: str, factor: EpochFormula, steps: int, lr: float) -> None:
    """Evaluate the formula over the whole run now, so a bad epoch is reported before training."""
    if factor.formula.size * (steps + 1) > MAX_FORMULA_WORK:
        raise ScheduleError(
            f"{scheduler}: lr_lambda has {factor.formula.size} parts to evaluate at {steps + 1:,} steps, more than "
            f"{MAX_FORMULA_WORK:,} parts x steps: shorten the formula, or step per epoch"
        )
    product = 1.0  # MultiplicativeLR multiplies the factors up; LambdaLR applies each one alone
    for step in range(steps + 1):
        try:
            value = factor(step)
        except FormulaError as exc:
            raise ScheduleError(f"{scheduler}: lr_lambda: {exc}") from None
        if scheduler == "LambdaLR":
            product = value
        elif step > 0:  # MultiplicativeLR applies its first factor at the first step
            product *= value
        if not math.isfinite(lr * product):
            epoch = epoch_text(step / factor.steps_per_epoch)
            raise ScheduleError(f"{scheduler}: lr_lambda makes the learning rate overflow at epoch {epoch}")


def _check_run_length(config: ScheduleConfig, info: SchedulerInfo) -> None:
    for name in ("epochs", "steps_per_epoch"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScheduleError(f"{name} must be a whole number of at least 1, got {_shown(value)}")
    if config.epochs * config.steps_per_epoch > MAX_CURVE_STEPS:
        raise ScheduleError(f"epochs x steps_per_epoch must be at most {MAX_CURVE_STEPS:,}")
    if not (isinstance(config.lr, (int, float)) and _finite(config.lr) and config.lr > 0):
        raise ScheduleError(f"lr must be a positive number, got {_shown(config.lr)}")
    if config.step_per not in STEP_PER:
        raise ScheduleError(f"step_per must be one of {', '.join(STEP_PER)}, got {_shown(config.step_per)}")
    if not isinstance(config.warmup_epochs, int) or config.warmup_epochs < 0:
        raise ScheduleError(f"warmup_epochs must be a whole number of at least 0, got {_shown(config.warmup_epochs)}")
    if config.warmup_epochs:
        if not info.warmup_allowed:
            raise ScheduleError(f"{info.name} cannot have a warm-up in front of it; set warmup_epochs to 0")
        if config.warmup_epochs >= config.epochs:
            raise ScheduleError(
                f"warmup_epochs ({config.warmup_epochs}) must be less than epochs ({config.epochs})"
            )


def _check_value(scheduler: str, param: Param, value: Any) -> Any:
    """`value` checked and typed as the parameter's kind."""
    where = f"{scheduler}: {param.name}"
    whole = param.kind in ("int", "optional_int", "ints")
    if param.kind == "formula":
        try:
            return parse_formula(str(value))
        except FormulaError as exc:
            raise ScheduleError(f"{where}: {exc}") from None
    if param.kind == "choice":
        if value not in param.choices:
            raise ScheduleError(f"{where} must be one of {', '.join(param.choices)}, got {_shown(value)}")
        return value
    if param.kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ScheduleError(f"{where} must be true or false, got {_shown(value)}")
        return value
    if param.kind == "ints":
        items = _as_list(where, value)
        if not items:
            raise ScheduleError(f"{where} needs at least one value")
        items = [_as_number(where, item, whole) for item in items]
        for item in items:
            _check_range(where, param, item)
        if any(b <= a for a, b in pairwise(items)):
            raise ScheduleError(f"{where} must be strictly increasing, got {_shown(items)}")
        return items
    if param.kind == "optional_int" and value is None:
        return None
    number = _as_number(where, value, whole)
    _check_range(where, param, number)
    return number


def _as_list(where: str, value: Any) -> list:
    """A list of at most MAX_LIST_ITEMS from a list, one number, or text like "30, 80" or "[30, 80]"."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 20 * MAX_LIST_ITEMS:  # longer text cannot hold an allowed list; refuse it unparsed
            raise ScheduleError(f"{where} can have at most {MAX_LIST_ITEMS:,} values")
        try:
            value = json.loads(text if text.startswith("[") else f"[{text}]")
        except (json.JSONDecodeError, RecursionError):
            raise ScheduleError(f"{where} must be a list of numbers like [30, 80], got {_shown(text)}") from None
    if not isinstance(value, (list, tuple)):
        value = [value]
    if len(value) > MAX_LIST_ITEMS:
        raise ScheduleError(f"{where} can have at most {MAX_LIST_ITEMS:,} values, got {len(value):,}")
    return list(value)


def _as_number(where: str, value: Any, whole: bool) -> int | float:
    """A finite int (when `whole`) or float from a number or its text."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise ScheduleError(f"{where} must be a number, got {_shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScheduleError(f"{where} must be a number, got {_shown(value)}")
    if not _finite(value):
        raise ScheduleError(f"{where} must be a finite number no larger than about 1.8e308, got {_shown(value)}")
    if whole and not float(value).is_integer():
        raise ScheduleError(f"{where} must be a whole number, got {_shown(value)}")
    return int(value) if whole else float(value)


def _finite(value: float) -> bool:
    """True when `value` is a float that is not inf or nan (a huge int does not fit a float)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_range(where: str, param: Param, value: float) -> None:
    if param.low is not None and (value < param.low or (param.low_open and value == param.low)):
        bound = f"greater than {param.low:g}" if param.low_open else f"at least {param.low:g}"
        raise ScheduleError(f"{where} must be {bound}, got {value:g}")
    if param.high is not None and value > param.high:
        limit = "less than 1" if param.high == 0.999999 else f"at most {param.high:g}"
        raise ScheduleError(f"{where} must be {limit}, got {value:g}")


def _shown(value: Any) -> str:
    """A short quote of a value a user sent, for a message (a million-digit number stays readable)."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python will print
        return "a number too large to print"
    return text if len(text) <= 60 else text[:57] + "..."


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
    return _create(optimizer, resolve(config))


def _create(optimizer: torch.optim.Optimizer, resolved: ResolvedSchedule) -> LRStepper:
    kwargs = dict(resolved.kwargs)
    ratios = [group["lr"] / resolved.config.lr for group in optimizer.param_groups]
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
    """A made-up validation-loss curve to drive ReduceLROnPlateau in the studio.

    It falls to `plateau` by `plateau_epoch` and stays there, so with torch's defaults (patience 10)
    a 30-epoch run shows two reductions; noise makes some later epochs count as improvements.
    """

    start: float = 2.0  # loss at epoch 0
    plateau: float = 0.6  # level the loss flattens out at
    plateau_epoch: int = 5  # epoch from which it stops improving
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
    resolved: ResolvedSchedule
    val_loss: list[float] | None = None  # per epoch, when the scheduler is driven by it

    @property
    def step_per(self) -> str:
        return self.resolved.step_per

    @property
    def notes(self) -> list[str]:
        if self.resolved.step_per != self.resolved.config.step_per:
            return [f"{self.resolved.info.name} always steps per {self.resolved.step_per}."]
        return []


def lr_curve(config: ScheduleConfig, val_loss: list[float] | None = None) -> LRCurve:
    """The LR at every optimizer step, read off the real torch scheduler stepped as training would."""
    resolved = resolve(config)
    if resolved.info.needs_metric:
        val_loss = _check_val_loss(val_loss, config.epochs) if val_loss is not None else ValLossShape().curve(config.epochs)
    else:
        val_loss = None
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr, momentum=0.9)
    stepper = _create(optimizer, resolved)
    # torch warns when a scheduler steps before the optimizer ever has; one (gradient-free) step settles it.
    optimizer.step()
    group = optimizer.param_groups[0]
    lrs: list[float] = []
    append, step_batch = lrs.append, stepper.after_batch  # bound once: this loop runs up to a million times
    for epoch in range(config.epochs):
        if stepper.per_batch:
            for _ in range(config.steps_per_epoch):
                append(group["lr"])
                step_batch()
        else:
            lrs.extend([group["lr"]] * config.steps_per_epoch)
        stepper.after_epoch(val_loss[epoch] if val_loss is not None else None)
    lrs = [float(v) for v in lrs]
    if not all(map(math.isfinite, lrs)):
        step = next(i for i, v in enumerate(lrs) if not math.isfinite(v))
        raise ScheduleError(
            f"{resolved.info.name}: the learning rate becomes {lrs[step]} at step {step:,} (epoch "
            f"{step // config.steps_per_epoch + 1}), past the largest number a float holds (about 1.8e308); "
            "lower the LR or the factors that raise it"
        )
    return LRCurve(lrs, resolved, val_loss)


def _check_val_loss(val_loss: Any, epochs: int) -> list[float]:
    if not isinstance(val_loss, (list, tuple)):
        raise ScheduleError(f"val_loss must be a list of numbers, one per epoch, got {_shown(val_loss)}")
    if len(val_loss) != epochs:
        raise ScheduleError(f"val_loss has {len(val_loss):,} values; ReduceLROnPlateau needs one per epoch ({epochs})")
    return [_as_number(f"val_loss[{i}]", v, whole=False) for i, v in enumerate(val_loss)]


def schedule_code(curve: LRCurve) -> str:
    """PyTorch code that reproduces `curve`; running it gives the same `lrs`."""
    resolved, config = curve.resolved, curve.resolved.config
    per_batch = resolved.step_per == "batch"
    spe = resolved.steps_per_epoch
    imports, definitions, args, notes = ["import torch"], [], [], []
    for param in resolved.info.params:
        value, given = resolved.kwargs[param.name], resolved.params[param.name]
        if param.kind == "formula":
            if given.names_used():
                imports.append(f"from math import {', '.join(given.names_used())}")
            if spe == 1:
                text = f"lambda epoch: {given.python_source()}"
            else:
                definitions = ["", "", "def factor(epoch):  # lr_lambda as written, in epochs",
                               f"    return {given.python_source()}"]
                root = f" ** (1 / {spe})" if value.per_epoch_factor else ""
                text = f"lambda step: factor(step / {spe}){root}"
        elif value != given and param.unit == "per epoch":
            text = f"{given!r} ** (1 / {spe})"  # the factor per epoch, spread over its batches
        else:
            if value != given:
                notes.append(f"{param.name} {given} epochs = {value} batches")
            text = repr(value)
        args.append(f"{param.name}={text}")
    sched = "torch.optim.lr_scheduler"
    lines = [*imports, *definitions, ""]
    if definitions:
        lines.append("")
    lines += [
        "model = torch.nn.Linear(1, 1)",
        f"optimizer = torch.optim.SGD(model.parameters(), lr={config.lr!r}, momentum=0.9)",
    ]
    if notes:
        lines.append(f"# Stepped per batch, {spe} per epoch: {'; '.join(notes)}")
    main = f"{sched}.{resolved.info.name}(optimizer{''.join(', ' + a for a in args)})"
    if resolved.warmup_steps:
        lines += [
            (f"warmup = {sched}.LinearLR(optimizer, start_factor={WARMUP_START_FACTOR}, end_factor=1.0, "
             f"total_iters={resolved.warmup_steps})"),
            f"main = {main}",
            f"scheduler = {sched}.SequentialLR(optimizer, [warmup, main], milestones=[{resolved.warmup_steps}])",
        ]
    else:
        lines.append(f"scheduler = {main}")
    if resolved.info.needs_metric:
        lines.append(f"val_loss = {curve.val_loss!r}  # your validation loss, one per epoch")
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
