"""fit(): fine-tune a ResNet on a photo folder and write the run folder, exported to ONNX.

The strategies and parameter groups are `trainer.task`'s, the optimizer step `trainer.step`'s, the
run folder's files `models.run_folder`'s. Progress leaves through callbacks; a stop flag is checked
every batch, and a stopped run keeps its best model so far.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from models.atomic import replace_file
from models.backbones import create_model, preprocessing_for
from models.metrics import classification_report
from models.run_folder import RunFolder
from trainer.config import ConfigError, RunConfig, TrainConfig
from trainer.data import Dataset
from trainer.schedules import create_scheduler, resolve
from trainer.step import Autocast, create_optimizer, resolve_device, to_device, train_step
from trainer.task import Task, build_task, class_weights, eval_inputs, load_data


@dataclass
class BatchEvent:
    epoch: int  # 0-based
    batch: int  # 0-based, within the epoch
    batches: int  # batches per epoch
    loss: float
    lr: float  # the head's LR for this step


@dataclass
class EpochStats:
    epoch: int  # 1-based, as people count
    phase: str  # "head" (backbone frozen) or "all"
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: list[float]  # the head's LR at every optimizer step of the epoch
    seconds: float


@dataclass
class FitResult:
    run_dir: Path
    labels: list[str]
    metrics: dict
    history: list[EpochStats]
    stopped: str | None  # None, "early-stopping", "cancelled" or "time limit"
    predictions: dict = field(default_factory=dict)  # split -> [(rel path, true, predicted, confidence)]


def prepare_run_dir(out: str | Path, overwrite: bool) -> RunFolder:
    """An empty run folder; a non-empty one is refused unless `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} is not empty; choose another --out or pass --overwrite")
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return RunFolder(out).create()


def _evaluate(module: nn.Module, loader: DataLoader, criterion, device, autocast) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(mean loss, targets, predictions, confidences) over a loader."""
    module.eval()
    total, losses, targets, preds, confs = 0, 0.0, [], [], []
    with torch.inference_mode(), autocast():
        for x, y in loader:
            logits = module(to_device(x, device)).float()
            y = y.to(device)
            losses += criterion(logits, y).item() * len(y)
            total += len(y)
            prob = logits.softmax(dim=1)
            conf, pred = prob.max(dim=1)
            targets.append(y.cpu().numpy())
            preds.append(pred.cpu().numpy())
            confs.append(conf.cpu().numpy())
    return losses / max(total, 1), np.concatenate(targets), np.concatenate(preds), np.concatenate(confs)


def _freeze_for_epoch(model: nn.Module, task: Task, config: TrainConfig, epoch: int) -> bool:
    """Freeze or unfreeze the backbone for this epoch of finetune's head phase; returns whether it is frozen."""
    frozen = bool(task.backbone) and config.strategy == "finetune" and epoch < config.head_epochs
    for p in task.backbone:
        p.requires_grad_(not frozen)
    task.module.train()
    if frozen:  # keep BatchNorm statistics of the pretrained backbone while only the head learns
        for name, module in model.named_modules():
            if not name.startswith("fc") and isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return frozen


def fit(
    data,
    config: TrainConfig,
    out: str | Path,
    overwrite: bool = False,
    on_batch: Callable[[BatchEvent], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] = lambda message: None,
    export: bool = True,
) -> FitResult:
    """Train per `config` on `data` (a folder, a .zip, or an opened Dataset) and write the run folder `out`.

    A run that fails before it is finished leaves no half-written folder: one it created is removed.
    """
    config.validate()
    resolve(config.schedule)  # refuse a bad schedule before any photo is decoded
    created = not Path(out).exists()
    run = prepare_run_dir(out, overwrite)
    try:
        return _fit(data, config, run, on_batch, on_epoch, should_stop or (lambda: False), log, export)
    except BaseException:
        if not run.is_finished():
            shutil.rmtree(run.path, ignore_errors=True)
            if not created:
                run.path.mkdir()
        raise


def _fit(data, config: TrainConfig, run: RunFolder, on_batch, on_epoch, should_stop, log, export) -> FitResult:
    deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else float("inf")
    device = resolve_device(config.device)
    spec = preprocessing_for(config.arch, config.image_size)
    data = load_data(data, config, spec, run.path)
    log(data.summary())
    if not data.val:
        raise ConfigError("No validation photos: every class needs at least 2 photos (or give a val/ folder)")
    labels = data.labels
    run_config = RunConfig(train=config, labels=labels, preprocessing=spec)
    run.write_config(run_config.to_record())

    torch.manual_seed(config.seed)
    model = create_model(config.arch, len(labels), config.weights).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    autocast = Autocast(device)
    task = build_task(model, data, config, spec, device, autocast, log, should_stop)
    weight = class_weights(data.train, len(labels)).to(device) if config.class_weighted else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss()
    optimizer = create_optimizer(config, task.groups)
    stepper = create_scheduler(optimizer, replace(config.schedule, steps_per_epoch=len(task.train_loader)))
    head_group = optimizer.param_groups[-1]

    history: list[EpochStats] = []
    best_state, best_key, best_epoch, stale, stopped = None, None, 0, 0, None
    for epoch in range(config.epochs):
        frozen = _freeze_for_epoch(model, task, config, epoch)
        started = time.perf_counter()
        seen, correct, loss_sum, lrs = 0, 0, 0.0, []
        for batch, (x, y) in enumerate(task.train_loader):
            if should_stop():
                stopped = "cancelled"
                break
            if time.monotonic() > deadline:
                stopped = "time limit"
                break
            x, y = to_device(x, device), y.to(device)
            lrs.append(head_group["lr"])
            loss, logits = train_step(task.module, x, y, criterion, optimizer, autocast)
            stepper.after_batch()
            if not math.isfinite(loss.item()):
                raise ConfigError(f"The loss became {loss.item()} at epoch {epoch + 1}: the learning rate {config.lr} is too high")
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            if on_batch:
                on_batch(BatchEvent(epoch, batch, len(task.train_loader), loss.item(), lrs[-1]))
        if stopped:
            break
        val_loss, val_t, val_p, _ = _evaluate(task.module, task.eval_loaders["val"], eval_criterion, device, autocast)
        stepper.after_epoch(val_loss)
        stats = EpochStats(epoch + 1, "head" if frozen or config.strategy == "linear-probe" else "all",
                           loss_sum / max(seen, 1), correct / max(seen, 1), val_loss,
                           float((val_t == val_p).mean()), lrs, time.perf_counter() - started)
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
        key = (stats.val_acc, -stats.val_loss)
        if best_key is None or key > best_key:
            best_key, best_epoch, stale = key, stats.epoch, 0
            best_state = copy.deepcopy(task.module.state_dict())
        else:
            stale += 1
            if config.patience and stale >= config.patience:
                stopped = "early-stopping"
                break

    if best_state is not None:
        task.module.load_state_dict(best_state)
    log(_evaluating(stopped, history, best_epoch, config, data))
    result = _finish(run, model, task, data, labels, history, best_epoch, stopped, eval_criterion, device, autocast)
    if export:
        _export(run, model, run_config, data, result, log)
    return result


# How a training that did not run every epoch ended (FitResult.stopped), in words: the log's and the app's.
STOPPED_WORDS = {"cancelled": "cancelled", "time limit": "stopped at the time limit",
                "early-stopping": "stopped early (no better validation accuracy)"}


def _evaluating(stopped: str | None, history: list[EpochStats], best_epoch: int, config: TrainConfig, data) -> str:
    """The log line once the epochs are over: how training ended (the seconds after it are evaluation and export)."""
    counted = len(history) if not stopped else config.epochs  # "done: 1 epoch", "cancelled after 1 of 2 epochs"
    ended = f"{STOPPED_WORDS[stopped]} after {len(history)} of {counted}" if stopped else f"done: {counted}"
    model = f"the best model (epoch {best_epoch})" if best_epoch else "the model as it is"
    photos = f"{len(data.val)} validation" + (f" and {len(data.test)} test" if data.test else "")
    return f"Training {ended} epoch{'s' if counted != 1 else ''}. Evaluating {model} on {photos} photos"


def _finish(run: RunFolder, model, task, data, labels, history, best_epoch, stopped, criterion, device, autocast) -> FitResult:
    """Evaluate the kept model on validation (and test) photos and write the weights, history and metrics."""
    from safetensors.torch import save_file

    metrics = {"best_epoch": best_epoch, "epochs_run": len(history), "stopped": stopped}
    predictions = {}
    for split, loader in task.eval_loaders.items():
        loss, targets, preds, confs = _evaluate(task.module, loader, criterion, device, autocast)
        metrics[split] = classification_report(targets, preds, labels, loss)
        records = getattr(data, split)
        predictions[split] = [(r.rel, int(t), int(p), float(c)) for r, t, p, c in zip(records, targets, preds, confs)]
    metrics["test"] = metrics.get("test")
    metrics["note"] = (
        "Validation photos chose the best epoch, so validation accuracy is optimistic; "
        + ("the test split was never used for selection." if metrics["test"] else "add a test/ folder for an unbiased figure.")
    )
    state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    replace_file(run.weights, lambda tmp: save_file(state, str(tmp)))
    run.write_history([vars(h) for h in history])
    run.write_predictions(predictions)
    run.write_metrics(metrics)
    return FitResult(run.path, labels, metrics, history, stopped, predictions)


def _export(run: RunFolder, model: nn.Module, run_config: RunConfig, data: Dataset, result: FitResult, log) -> None:
    """Every finished training ships model.onnx, exported from the model in memory; a failed check is recorded."""
    from models.export import ExportError, export_model

    log(f"Exporting to ONNX, then checking that it gives PyTorch's answers on {len(data.val)} validation photos")
    inputs, targets = eval_inputs(data.val, run_config.preprocessing)
    try:
        result.metrics["export"] = export_model(model, run_config.to_record(), run.path, inputs, targets,
                                                source="validation photos")
    except ExportError as exc:
        log(f"ONNX export failed: {exc}")
        result.metrics["export"] = {"ok": False, "error": str(exc)}
        run.merge_metrics(export=result.metrics["export"])
