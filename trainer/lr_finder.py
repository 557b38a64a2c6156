"""The LR finder (as fastai's lr_find): an exponential LR sweep that stops when the loss diverges."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from models.backbones import create_model, preprocessing_for
from trainer.config import TrainConfig
from trainer.step import Autocast, create_optimizer, resolve_device, train_step
from trainer.task import build_task, load_data

SMOOTHING = 0.98  # exponential moving average of the loss, debiased, as fastai smooths it
DIVERGED = 4.0  # stop once the smoothed loss is this many times its best value
RULE = "valley: the middle of the longest stretch where the smoothed loss keeps falling (fastai's default)"
CLEAR_DROP = 0.1  # below this relative fall of the smoothed loss, the sweep shows no LR that learns faster


@dataclass
class LRFinderResult:
    lr: list[float]
    loss: list[float]  # smoothed loss at each LR
    suggested_lr: float
    rule: str = RULE
    clear: bool = True  # False: the loss hardly fell anywhere (flat, then diverging), so the suggestion is a guess

    def to_dict(self) -> dict:
        return {"lr": self.lr, "loss": self.loss, "suggested_lr": self.suggested_lr, "rule": self.rule,
                "clear": self.clear}


def falls_clearly(losses: list[float]) -> bool:
    """Whether the smoothed loss falls by CLEAR_DROP of its start somewhere in the sweep."""
    return losses[0] > 0 and (losses[0] - min(losses)) / losses[0] >= CLEAR_DROP


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's valley rule: longest decreasing run of the loss, then a point 2/3 of the way down it."""
    n = len(losses)
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    return lrs[min(n - 1, start + int(third) + int(third / 2))]


def lr_find(
    data,
    config: TrainConfig,
    iterations: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    workdir=None,
    on_step: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LRFinderResult:
    """Sweep the base LR from start_lr to end_lr over `iterations` optimizer steps on a fresh model.

    The sweep trains what the strategy trains first: the head alone for linear-probe and finetune
    (on cached features for linear-probe, so it takes seconds), everything for full. Parameter
    groups keep their ratio (the head at head_lr_mult x), so the suggestion is the base LR.
    """
    if iterations < 5:
        raise ValueError(f"The LR finder needs at least 5 iterations, got {iterations}")
    if not 0 < start_lr < end_lr:
        raise ValueError("start_lr must be positive and below end_lr")
    device = resolve_device(config.device)
    spec = preprocessing_for(config.arch, config.image_size)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        dataset = load_data(data, config, spec, Path(tmp))
        torch.manual_seed(config.seed)
        autocast = Autocast(device, config.precision)
        model = autocast.prepare(create_model(config.arch, len(dataset.labels), config.weights).to(device))
        task = build_task(model, dataset, config, spec, device, autocast, log=lambda m: None)
    frozen = config.strategy == "finetune" and config.head_epochs > 0
    for p in task.backbone:
        p.requires_grad_(not frozen)
    optimizer = create_optimizer(config, task.groups)
    ratios = [group["lr"] / config.lr for group in optimizer.param_groups]
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    task.module.train()
    if task.frozen is not None:
        task.frozen.eval()
    lrs, losses, average, best = [], [], 0.0, math.inf
    batches = iter(task.train_loader)
    for step in range(iterations):
        if should_stop and should_stop():
            break
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(task.train_loader)
            x, y = next(batches)
        lr = start_lr * (end_lr / start_lr) ** (step / (iterations - 1))
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        loss, _ = train_step(task.module, autocast.to_device(x), y.to(device), criterion, optimizer, autocast)
        value = loss.item()
        if not math.isfinite(value):
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        if on_step:
            on_step(step, lr, smoothed)
        best = min(best, smoothed)
        if smoothed > DIVERGED * best:
            break
    if len(lrs) < 3:
        raise ValueError("The loss diverged at once; lower start_lr")
    return LRFinderResult(lrs, losses, valley(lrs, losses), clear=falls_clearly(losses))
