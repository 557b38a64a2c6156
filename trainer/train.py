"""fit(): fine-tune a ResNet on a photo folder and write the run folder, exported to ONNX.

The strategies and parameter groups are `trainer.task`'s, the optimizer step `trainer.step`'s, the
run folder's files `models.run_folder`'s. Progress leaves through callbacks; a stop flag is checked
every batch, and a stopped run keeps its best model so far. Under torchrun the same loop runs in
every process with DistributedDataParallel (`trainer.distributed`); the first process writes the run.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from models.atomic import replace_file
from models.backbones import create_model, preprocessing_for
from models.metrics import classification_report
from models.run_folder import RunFolder, publish_run
from trainer import distributed
from trainer.config import ConfigError, RunConfig, TrainConfig
from trainer.data import Dataset
from trainer.distributed import World
from trainer.schedules import create_scheduler, resolve
from trainer.step import Autocast, create_optimizer, resolve_device, train_step
from trainer.task import Task, build_task, class_weights, eval_inputs, is_padding, load_data


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


def check_run_dir(out: str | Path, overwrite: bool) -> Path:
    """Where a run may be written: a non-empty folder is refused unless `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; choose another --out or pass --overwrite")
    return out


def prepare_run_dir(out: str | Path, overwrite: bool) -> RunFolder:
    """An empty folder at `out` (a non-empty one is emptied only with `overwrite`)."""
    out = check_run_dir(out, overwrite)
    if out.is_dir():
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return RunFolder(out).create()


@contextmanager
def _unfinished_run(out: Path, world: World):
    """The folder a run is written in until it is finished: next to `out` on the first process, private elsewhere.

    Whatever ends the run early (an error, Ctrl-C, torchrun's SIGTERM) removes it; a SIGKILL leaves
    only this hidden folder, never a half-written `out`.
    """
    if world.main:
        path = out.parent / f".{out.name}.unfinished"
        shutil.rmtree(path, ignore_errors=True)  # left by a killed run
        path.mkdir(parents=True)
    else:
        path = Path(tempfile.mkdtemp(prefix=f"rank{world.rank}-"))
    try:
        yield RunFolder(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _evaluate(module: nn.Module, loader: DataLoader, criterion, device, autocast, world: World) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(mean loss, targets, predictions, confidences) over a split, each process evaluating its shard."""
    module.eval()
    rows = []
    with torch.inference_mode(), autocast():
        for x, y in loader:
            logits = module(autocast.to_device(x)).float()
            y = y.to(device)
            losses = criterion(logits, y)
            conf, pred = logits.softmax(dim=1).max(dim=1)
            rows.extend(zip(losses.tolist(), y.tolist(), pred.tolist(), conf.tolist()))
    losses, targets, preds, confs = (np.array(column) for column in zip(*world.gather_shards(rows)))
    return float(losses.mean()), targets.astype(np.int64), preds.astype(np.int64), confs


def _synchronised(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module that takes the training steps: wrapped in DDP across processes, as it is in one."""
    if world.size == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _freeze_for_epoch(model: nn.Module, task: Task, config: TrainConfig, epoch: int) -> bool:
    """Freeze or unfreeze the backbone for this epoch of finetune's head phase; returns whether it is frozen."""
    frozen = bool(task.backbone) and config.strategy == "finetune" and epoch < config.head_epochs
    for p in task.backbone:
        p.requires_grad_(not frozen)
    task.module.train()
    if task.frozen is not None:
        task.frozen.eval()
    if frozen or config.freeze_bn:  # keep the backbone's BatchNorm statistics as loaded
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

    The run is written under a temporary name and appears at `out` only when finished (replacing what
    `overwrite` allowed to replace), so a run that fails or is killed leaves no half-written folder.
    Under torchrun every process trains its share and only the first one writes, reports and calls back.
    """
    config.validate()
    resolve(config.schedule)  # refuse a bad schedule before any photo is decoded
    device = resolve_device(config.device)
    if config.sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn synchronises BatchNorm between GPUs; DistributedDataParallel supports "
                          "SyncBatchNorm on CUDA only. Leave it off on CPU (or freeze BatchNorm with --freeze-bn)")
    world = distributed.current()
    out = check_run_dir(out, overwrite)
    if not world.main:
        on_batch, on_epoch, log = None, None, lambda message: None
    with _unfinished_run(out, world) as run:
        result = _fit(data, config, run, device, world, on_batch, on_epoch, should_stop or (lambda: False), log, export)
        if world.main:
            publish_run(run.path, out)
    result.run_dir = out
    return result


def _fit(data, config: TrainConfig, run: RunFolder, device: torch.device, world: World, on_batch, on_epoch,
         should_stop, log, export) -> FitResult:
    deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else float("inf")
    spec = preprocessing_for(config.arch, config.image_size)
    data = load_data(data, config, spec, run.path, world)
    log(data.summary())
    if not data.val:
        raise ConfigError("No validation photos: every class needs at least 2 photos (or give a val/ folder)")
    labels = data.labels
    autocast = Autocast(device, config.precision)
    run_config = RunConfig(train=config, labels=labels, preprocessing=spec,
                           trained_on={**world.describe(), "device": device.type, "precision": autocast.name})
    if world.main:
        run.write_config(run_config.to_record())

    torch.manual_seed(config.seed)
    model = create_model(config.arch, len(labels), config.weights).to(device)
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = autocast.prepare(model)
    # Processes compute cached features for shards of unequal length, so they cannot agree on a stop per batch
    # there: under torchrun a stop waits for the first training batch.
    task = build_task(model, data, config, spec, device, autocast, log, should_stop if world.size == 1 else lambda: False,
                      world)
    weight = class_weights(data.train, len(labels)).to(device) if config.class_weighted else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss(reduction="none")  # per photo, so shards average as one split
    optimizer = create_optimizer(config, task.groups)
    stepper = create_scheduler(optimizer, replace(config.schedule, steps_per_epoch=len(task.train_loader)))
    head_group = optimizer.param_groups[-1]

    history: list[EpochStats] = []
    best_state, best_key, best_epoch, stale, stopped = None, None, 0, 0, None
    stepping, stepping_frozen = None, None
    for epoch in range(config.epochs):
        frozen = _freeze_for_epoch(model, task, config, epoch)
        if stepping is None or frozen != stepping_frozen:  # DDP syncs the gradients of what trains in this phase
            stepping, stepping_frozen = _synchronised(task.module, world, device), frozen
        task.train_loader.sampler.set_epoch(epoch)
        started = time.perf_counter()
        seen, correct, loss_sum, lrs = 0, 0, 0.0, []
        for batch, (x, y) in enumerate(task.train_loader):
            cancelled, late = world.any(should_stop(), time.monotonic() > deadline)
            if cancelled or late:
                stopped = "cancelled" if cancelled else "time limit"
                break
            x, y = autocast.to_device(x), y.to(device)
            lrs.append(head_group["lr"])
            loss, logits = train_step(stepping, x, y, criterion, optimizer, autocast)
            stepper.after_batch()
            if world.any(not math.isfinite(loss.item()))[0]:
                raise ConfigError(f"The loss became {loss.item()} at epoch {epoch + 1}: the learning rate {config.lr} is too high")
            counted = ~is_padding(task.train_loader, world, batch, len(y)).to(device)
            seen += int(counted.sum())
            correct += int(((logits.argmax(1) == y) & counted).sum())
            loss_sum += loss.item() * int(counted.sum())
            if on_batch:
                on_batch(BatchEvent(epoch, batch, len(task.train_loader), loss.item(), lrs[-1]))
        if stopped:
            break
        val_loss, val_t, val_p, _ = _evaluate(task.module, task.eval_loaders["val"], eval_criterion, device, autocast,
                                              world)
        stepper.after_epoch(val_loss)
        loss_sum, correct, seen = world.sum(loss_sum, correct, seen)
        stats = EpochStats(epoch + 1, _phase(config, frozen),
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
    result = _finish(run, model, task, data, labels, history, best_epoch, stopped, eval_criterion, device, autocast,
                     world)
    if export and world.main:
        _export(run, model, run_config, data, result, log)
    return result


def _phase(config: TrainConfig, frozen: bool) -> str:
    """What trained in an epoch, for the epoch tables: "head", "layer4+head" or "all"."""
    if frozen or config.strategy == "linear-probe":
        return "head"
    return "layer4+head" if config.strategy == "partial" else "all"


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


def _finish(run: RunFolder, model, task, data, labels, history, best_epoch, stopped, criterion, device, autocast,
            world: World) -> FitResult:
    """Evaluate the kept model on validation (and test) photos and write the weights, history and metrics."""
    from safetensors.torch import save_file

    metrics = {"best_epoch": best_epoch, "epochs_run": len(history), "stopped": stopped}
    predictions = {}
    for split, loader in task.eval_loaders.items():
        loss, targets, preds, confs = _evaluate(task.module, loader, criterion, device, autocast, world)
        metrics[split] = classification_report(targets, preds, labels, loss)
        records = getattr(data, split)
        predictions[split] = [(r.rel, int(t), int(p), float(c)) for r, t, p, c in zip(records, targets, preds, confs)]
    metrics["test"] = metrics.get("test")
    metrics["note"] = (
        "Validation photos chose the best epoch, so validation accuracy is optimistic; "
        + ("the test split was never used for selection." if metrics["test"] else "add a test/ folder for an unbiased figure.")
    )
    if not world.main:
        return FitResult(run.path, labels, metrics, history, stopped, predictions)
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
