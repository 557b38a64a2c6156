"""fit(): fine-tune a pretrained ResNet on a photo folder and write the run folder. Also lr_find().

Strategies: `linear-probe` (frozen backbone, features computed once and cached, only the head
trains), `finetune` (head-only epochs, then everything with the head at head_lr_mult x the LR),
`full` (everything at one LR). Progress leaves through callbacks; a stop flag is checked every batch.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset as TorchDataset, TensorDataset

from models.atomic import write_json
from models.backbones import create_model, preprocessing_for
from models.preprocess import PreprocessSpec
from trainer.config import ConfigError, RunConfig, TrainConfig
from trainer.data import Dataset, ImageRecord, open_dataset, write_report
from trainer.metrics import classification_report
from trainer.schedules import create_scheduler, resolve



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
    stopped: str | None  # None, "early-stopping" or "cancelled"
    predictions: dict = field(default_factory=dict)  # split -> [(rel path, true, predicted, confidence)]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA GPU is available; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def prepare_run_dir(out: str | Path, overwrite: bool) -> Path:
    """An empty run folder; a non-empty one is refused unless `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} is not empty; choose another --out or pass --overwrite")
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_data(data, config: TrainConfig, spec: PreprocessSpec, run_dir: Path) -> Dataset:
    """Open the photos once: each is decoded and resized to the spec's shorter side, then cached.

    A zip is extracted into the run folder's `data/`; the report lands in `data_report.json`.
    """
    if isinstance(data, Dataset):
        write_report(data.report, run_dir / "data_report.json")
        return data
    return open_dataset(
        data,
        workdir=run_dir,
        val_fraction=config.val_fraction,
        seed=config.seed,
        prepare=lambda image: np.array(spec.resize_image(image), dtype=np.uint8),
    )


class CachedImages(TorchDataset):
    """Cached resized uint8 photos; the eval path is the spec's crop + normalize (same as the runtime)."""

    def __init__(self, records: list[ImageRecord], spec: PreprocessSpec, augment=None):
        self.records, self.spec, self.augment = records, spec, augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = record.prepared
        if self.augment is None:
            left, top, right, bottom = self.spec.crop_box(image.shape[1], image.shape[0])
            x = torch.from_numpy(self.spec.normalize(image[top:bottom, left:right]))
        else:
            x = self.augment(torch.from_numpy(image).permute(2, 0, 1))
        return x, record.label


def train_augmentation(name: str, spec: PreprocessSpec):
    """Augmentation presets on the cached resized photo; None means the eval transform."""
    if name == "none":
        return None
    from torchvision.transforms import v2 as T

    steps = [T.RandomResizedCrop(spec.crop, scale=(0.35, 1.0), antialias=True), T.RandomHorizontalFlip()]
    if name == "trivialaugment":
        steps.append(T.TrivialAugmentWide())
    return T.Compose([*steps, T.ToDtype(torch.float32, scale=True), T.Normalize(spec.mean, spec.std)])


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device) -> DataLoader:
    # Photos are decoded and cached up front, so workers only pay off where a GPU waits on augmentation.
    workers = min(8, (os.cpu_count() or 1) - 1) if device.type == "cuda" else 0
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")


def _class_weights(records: list[ImageRecord], num_classes: int) -> torch.Tensor:
    counts = np.bincount([r.label for r in records], minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def create_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


class Autocast:
    """bf16 autocast where the GPU supports it, else fp16 with a grad scaler; nothing on CPU."""

    def __init__(self, device: torch.device):
        self.enabled = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)
        self.device = device

    def __call__(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.enabled)


@dataclass
class Task:
    """What one strategy trains: the module run on each batch, its loaders and its parameter groups."""

    module: nn.Module
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    groups: list[dict]
    backbone: list[nn.Parameter]


def _features(backbone: nn.Module, loader: DataLoader, device: torch.device, autocast: Autocast) -> tuple:
    backbone.eval()
    feats, labels = [], []
    with torch.inference_mode(), autocast():
        for x, y in loader:
            feats.append(backbone(to_device(x, device)).float().cpu())
            labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda" and x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def build_task(model: nn.Module, data: Dataset, config: TrainConfig, spec: PreprocessSpec,
                device: torch.device, autocast: Autocast, log: Callable[[str], None]) -> Task:
    splits = {"val": data.val, "test": data.test}
    backbone_params = [p for name, p in model.named_parameters() if not name.startswith("fc.")]
    if config.strategy == "linear-probe":
        head = model.fc
        model.fc = nn.Identity()
        cached = {}
        for split, records in {"train": data.train, **splits}.items():
            if records:
                log(f"computing {split} features once ({len(records)} photos)")
                loader = _loader(CachedImages(records, spec), config.batch_size, False, config.seed, device)
                cached[split] = TensorDataset(*_features(model, loader, device, autocast))
        model.fc = head
        gen_loader = lambda ds, shuffle: DataLoader(  # noqa: E731
            ds, batch_size=config.batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(config.seed)
        )
        for p in backbone_params:
            p.requires_grad_(False)
        return Task(
            module=head,
            train_loader=gen_loader(cached["train"], True),
            eval_loaders={s: gen_loader(cached[s], False) for s in splits if s in cached},
            groups=[{"params": list(head.parameters()), "lr": config.lr}],
            backbone=[],
        )
    train_set = CachedImages(data.train, spec, train_augmentation(config.augment, spec))
    head_mult = config.head_lr_mult if config.strategy == "finetune" else 1.0
    return Task(
        module=model,
        train_loader=_loader(train_set, config.batch_size, True, config.seed, device),
        eval_loaders={
            s: _loader(CachedImages(r, spec), config.batch_size, False, config.seed, device) for s, r in splits.items() if r
        },
        groups=[
            {"params": backbone_params, "lr": config.lr},
            {"params": list(model.fc.parameters()), "lr": config.lr * head_mult},
        ],
        backbone=backbone_params,
    )


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
    """Train per `config` on `data` (a folder, a .zip, or an opened Dataset) and write the run folder `out`."""
    config.validate()
    resolve(config.schedule)  # refuse a bad schedule before any photo is decoded
    run_dir = prepare_run_dir(out, overwrite)
    device = resolve_device(config.device)
    spec = preprocessing_for(config.arch, config.image_size)
    data = load_data(data, config, spec, run_dir)
    log(data.summary())
    if not data.val:
        raise ConfigError("No validation photos: every class needs at least 2 photos (or give a val/ folder)")
    labels = data.labels
    run_config = RunConfig(train=config, labels=labels, preprocessing=spec.to_dict())
    write_json(run_dir / "config.json", run_config.to_dict())

    torch.manual_seed(config.seed)
    model = create_model(config.arch, len(labels), config.weights).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    autocast = Autocast(device)
    task = build_task(model, data, config, spec, device, autocast, log)
    weight = _class_weights(data.train, len(labels)).to(device) if config.class_weighted else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss()
    optimizer = create_optimizer(config, task.groups)
    schedule = replace(config.schedule, steps_per_epoch=len(task.train_loader))
    stepper = create_scheduler(optimizer, schedule)
    head_group = optimizer.param_groups[-1]

    history: list[EpochStats] = []
    best_state, best_key, best_epoch, stale, stopped = None, None, 0, 0, None
    for epoch in range(config.epochs):
        frozen = bool(task.backbone) and config.strategy == "finetune" and epoch < config.head_epochs
        for p in task.backbone:
            p.requires_grad_(not frozen)
        started = time.perf_counter()
        task.module.train()
        if frozen:  # keep BatchNorm statistics of the pretrained backbone while only the head learns
            for name, module in model.named_modules():
                if not name.startswith("fc") and isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        seen, correct, loss_sum, lrs = 0, 0, 0.0, []
        for batch, (x, y) in enumerate(task.train_loader):
            if should_stop and should_stop():
                stopped = "cancelled"
                break
            x, y = to_device(x, device), y.to(device)
            lrs.append(head_group["lr"])
            with autocast():
                logits = task.module(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            autocast.scaler.scale(loss).backward()
            autocast.scaler.step(optimizer)
            autocast.scaler.update()
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
    result = _finish(run_dir, model, task, data, labels, history, best_epoch, stopped, eval_criterion, device, autocast)
    if export:
        _export(run_dir, data, spec, result, log)
    return result


def _finish(run_dir, model, task, data, labels, history, best_epoch, stopped, criterion, device, autocast) -> FitResult:
    """Evaluate the kept model on validation (and test) photos and write the run folder's files."""
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
    tmp = run_dir / ".model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, run_dir / "model.safetensors")
    write_json(run_dir / "history.json", [vars(h) for h in history])
    write_json(run_dir / "metrics.json", metrics)
    return FitResult(run_dir, labels, metrics, history, stopped, predictions)


def _export(run_dir: Path, data: Dataset, spec: PreprocessSpec, result: FitResult, log) -> None:
    """Every finished training ships model.onnx; a failed parity check is recorded, not hidden."""
    from models.export import ExportError, export_run

    inputs = np.stack([CachedImages(data.val, spec)[i][0].numpy() for i in range(len(data.val))])
    targets = np.array([r.label for r in data.val])
    try:
        result.metrics["export"] = export_run(run_dir, inputs, targets)
    except ExportError as exc:
        log(f"ONNX export failed: {exc}")
        result.metrics["export"] = {"ok": False, "error": str(exc)}
        write_json(run_dir / "metrics.json", result.metrics)
