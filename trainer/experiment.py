"""The tutorials' experiments: a series of runs on the same photos that differ in one choice.

Each kind turns the user's settings into arms (schedules, strategies, pretrained vs scratch, head LR
x1 vs x10). Every arm is a normal run folder trained by `fit` on one opened dataset with the same
seed, so the split, the batches and the head's initialisation are the same and only the choice
differs; each arm's experiment.json says which series it belongs to. `estimate` says before
starting how long the series will take, from the photo count and a measured step time.
"""

from __future__ import annotations

import functools
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from models.run_folder import RunFolder
from trainer.config import ConfigError, TrainConfig
from trainer.schedules import scheduler_info
from trainer.train import FitResult, fit

SCHEDULERS = ("StepLR", "CosineAnnealingLR", "ReduceLROnPlateau", "ExponentialLR")
HEAD_LR_MULTS = (1.0, 10.0)


@dataclass(frozen=True)
class Arm:
    name: str  # what the comparison calls it
    config: TrainConfig


@dataclass(frozen=True)
class Kind:
    title: str
    question: str  # what the experiment shows, for the page and the report
    arms: Callable[[TrainConfig], list[Arm]]


def _schedule_arms(base: TrainConfig) -> list[Arm]:
    arms = []
    for name in SCHEDULERS:
        warmup = base.schedule.warmup_epochs if scheduler_info(name).warmup_allowed else 0
        schedule = replace(base.schedule, scheduler=name, params={}, warmup_epochs=warmup)
        arms.append(Arm(name, replace(base, schedule=schedule)))
    return arms


def _strategy_arms(base: TrainConfig) -> list[Arm]:
    return [Arm("linear-probe", replace(base, strategy="linear-probe")),
            Arm("finetune (head LR x10)", replace(base, strategy="finetune", head_lr_mult=10.0)),
            Arm("full", replace(base, strategy="full"))]


def _pretrained_arms(base: TrainConfig) -> list[Arm]:
    pretrained = base.weights if base.weights != "none" else "imagenet"
    name = "pretrained (ImageNet)" if pretrained == "imagenet" else f"pretrained ({Path(pretrained).name})"
    return [Arm(name, replace(base, weights=pretrained)), Arm("from scratch", replace(base, weights="none"))]


def _head_lr_arms(base: TrainConfig) -> list[Arm]:
    return [Arm(f"head LR x{mult:g}", replace(base, strategy="finetune", head_lr_mult=mult)) for mult in HEAD_LR_MULTS]


KINDS: dict[str, Kind] = {
    "schedules": Kind("Schedules", "StepLR vs cosine vs ReduceLROnPlateau vs exponential decay, same epochs and base LR",
                      _schedule_arms),
    "strategies": Kind("Strategies", "a frozen backbone (linear probe) vs head first then everything at head LR x10 "
                                     "vs everything from the start", _strategy_arms),
    "pretrained": Kind("Pretrained vs scratch", "the same network and training, from pretrained weights and from "
                                                "random ones", _pretrained_arms),
    "head-lr": Kind("Head LR x1 vs x10", "finetune with the head at the backbone's LR, and at ten times it",
                    _head_lr_arms),
}


def arms_for(kind: str, base: TrainConfig) -> list[Arm]:
    """The arms of an experiment of `kind` from the user's settings, each config validated."""
    if kind not in KINDS:
        raise ConfigError(f"Unknown experiment {kind!r}. Choose one of: {', '.join(KINDS)}")
    arms = KINDS[kind].arms(base)
    for arm in arms:
        arm.config.validate()
    return arms


def check_weights(arms: list[Arm]) -> None:
    """Load every pretrained backbone the arms need, before any training: WeightsUnavailable says how to get it."""
    from models.backbones import create_model

    for weights, arch in {(arm.config.weights, arm.config.arch) for arm in arms if arm.config.weights != "none"}:
        create_model(arch, 2, weights)


# ---------------------------------------------------------------- how long it will take


# Pixels timed per pass (four photos of 224 px): small photos are timed in larger batches, as they train.
TIMED_PIXELS = 4 * 224 * 224


@functools.lru_cache(maxsize=32)
def image_seconds(arch: str, image_size: int, batch_size: int = 32, device: str = "cpu",
                  precision: str = "auto") -> tuple[float, float]:
    """Measured seconds per photo for (a forward pass, a forward and backward pass) of `arch` on `device`.

    Computed as training computes (`precision`'s autocast and memory format), on a batch as large as
    training's where that stays quick (the cost per photo of small photos falls with the batch).
    Weights do not change the time, so a random model is timed.
    """
    import torch

    from models.backbones import create_model
    from trainer.step import Autocast, resolve_device

    target = resolve_device(device)
    autocast = Autocast(target, precision)
    model = autocast.prepare(create_model(arch, 10, "none").to(target))
    batch = max(1, min(batch_size, TIMED_PIXELS // (image_size * image_size)))
    x = autocast.to_device(torch.randn(batch, 3, image_size, image_size))
    timings = []
    for backward in (False, True):
        elapsed = []
        for _ in range(4):  # the first pass pays for allocation and kernel selection; the fastest of the rest
            started = time.perf_counter()
            if backward:
                model.train()
                with autocast():
                    loss = model(x).float().sum()
                loss.backward()
            else:
                model.eval()
                with torch.inference_mode(), autocast():
                    model(x)
            if target.type == "cuda":
                torch.cuda.synchronize()
            elapsed.append(time.perf_counter() - started)
        timings.append(min(elapsed[1:]) / batch)
    return timings[0], timings[1]


# ONNX export and its parity check take about this long beyond evaluating the validation photos.
EXPORT_SECONDS = 4.0


def arm_seconds(config: TrainConfig, train: int, val: int, forward: float, backward: float) -> float:
    """Estimated seconds for one arm: `train` and `val` photos, `forward`/`backward` seconds per photo."""
    evaluate = val * forward
    if config.strategy == "linear-probe":  # features once; the head's epochs cost next to nothing
        epochs = (train + val) * forward
    else:
        head = config.head_epochs if config.strategy == "finetune" else 0
        head = min(head, config.epochs)
        epochs = head * (train * forward + evaluate) + (config.epochs - head) * (train * backward + evaluate)
    return epochs + 2 * evaluate + EXPORT_SECONDS


def estimate(arms: list[Arm], train: int, val: int) -> float:
    """Estimated seconds for the whole series on this machine."""
    from trainer.step import resolve_device

    total = 0.0
    for arm in arms:
        config = arm.config
        forward, backward = image_seconds(config.arch, config.image_size, config.batch_size,
                                          resolve_device(config.device).type, config.precision)
        total += arm_seconds(config, train, val, forward, backward)
    return total


def duration_words(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} seconds"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60):.0f} minutes"
    return f"about {seconds / 3600:.1f} hours"


# ---------------------------------------------------------------- running it


@dataclass
class SeriesPlanned:
    arms: list[Arm]
    train: int  # photos
    val: int
    seconds: float  # the estimate


@dataclass
class ArmStarts:
    index: int  # 1-based
    of: int
    arm: Arm
    run_dir: Path


@dataclass
class ArmDone:
    index: int
    arm: Arm
    result: FitResult


@dataclass
class ArmFailed:
    index: int
    arm: Arm
    message: str  # why, in words (a loss that diverged at this arm's settings, say)


@dataclass
class ExperimentDone:
    kind: str
    series: str
    run_dirs: list[Path]  # the arms trained to the end (all of them unless cancelled or failed)
    stopped: str | None  # None, or "cancelled"
    failed: list[ArmFailed]


def new_series() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def run_experiment(data, kind: str, base: TrainConfig, run_dir_for: Callable[[int, Arm], Path],
                   workdir: Path | None = None, emit: Callable[[object], None] = lambda event: None,
                   should_stop: Callable[[], bool] = lambda: False,
                   log: Callable[[str], None] = lambda message: None, export: bool = True) -> ExperimentDone:
    """Train every arm of the experiment on `data` (opened once), in order; emits ArmStarts, fit's events, ArmDone.

    `data` is a folder, a .zip (extracted into `workdir`) or an opened Dataset; `run_dir_for(index, arm)`
    names each arm's run folder; `export` as fit's (every arm ships model.onnx unless it is False). A stop request ends the series after the current arm's batch: the arms
    already finished are kept (and the current one too, as fit keeps a cancelled run with its best epoch).
    """
    from models.backbones import preprocessing_for
    from trainer.task import Cancelled, load_data

    arms = arms_for(kind, base)
    check_weights(arms)
    series = new_series()
    spec = preprocessing_for(base.arch, base.image_size)  # every arm shares the backbone and the image size
    log("Loading the photos once for every run of the experiment")
    dataset = load_data(data, base, spec, workdir)
    emit(SeriesPlanned(arms, len(dataset.train), len(dataset.val), estimate(arms, len(dataset.train), len(dataset.val))))
    done: list[Path] = []
    failed: list[ArmFailed] = []
    stopped = None
    for index, arm in enumerate(arms, start=1):
        if should_stop():
            stopped = "cancelled"
            break
        run_dir = Path(run_dir_for(index, arm))
        emit(ArmStarts(index, len(arms), arm, run_dir))
        try:
            result = fit(dataset, arm.config, run_dir, overwrite=True, on_batch=emit, on_epoch=emit,
                         should_stop=should_stop, log=log, export=export)
        except Cancelled:
            stopped = "cancelled"
            break
        except ConfigError as exc:  # this arm's settings failed (its loss diverged, say): the others still teach
            failed.append(ArmFailed(index, arm, str(exc)))
            emit(failed[-1])
            continue
        RunFolder(run_dir).write_experiment({"series": series, "kind": kind, "arm": arm.name, "index": index,
                                             "of": len(arms)})
        emit(ArmDone(index, arm, result))
        if result.stopped == "cancelled":
            stopped = "cancelled"
            break
        done.append(run_dir)
    if failed and not done and stopped is None:
        raise ConfigError(f"Every run of the experiment failed; the first: {failed[0].message}")
    return ExperimentDone(kind, series, done, stopped, failed)


def experiment_events(data, kind: str, base: TrainConfig, run_dir_for: Callable[[int, Arm], Path],
                      workdir: Path | None = None, stop=None, heartbeat: float | None = None) -> Iterator[object | None]:
    """run_experiment as a stream (trainer.stream): the series holds the job slot from its first arm to its last."""
    import threading

    from trainer.stream import HEARTBEAT_SECONDS, Log, stream

    def work(emit, stop):
        return run_experiment(data, kind, base, run_dir_for, workdir, emit, stop.is_set,
                              log=lambda message: emit(Log(message)))

    return stream(work, stop or threading.Event(), f"experiment-{kind}", heartbeat or HEARTBEAT_SECONDS)
