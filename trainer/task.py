"""What a strategy trains: the photos as batches, what is frozen, the parameter groups and the head's LR.

`linear-probe` computes the frozen backbone's features once and trains the head on them; `finetune`
trains the head alone for head_epochs, then everything with the head at head_lr_mult x the LR;
`full` trains everything at one LR. Shared by fit and the LR finder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset as TorchDataset, TensorDataset

from models.preprocess import PreprocessSpec
from models.run_folder import RunFolder
from trainer.config import TrainConfig
from trainer.data import Dataset, ImageRecord, open_dataset
from trainer.schedules import lr_curve, scheduler_info
from trainer.step import Autocast, to_device


def head_lr_multiplier(config: TrainConfig) -> float:
    """The head's LR over the backbone's: head_lr_mult in finetune, 1 otherwise."""
    return config.head_lr_mult if config.strategy == "finetune" else 1.0


def planned_head_lr(config: TrainConfig, steps_per_epoch: int) -> list[float] | None:
    """The head's LR at every optimizer step as planned (ReduceLROnPlateau depends on the run: None)."""
    if scheduler_info(config.schedule.scheduler).needs_metric:
        return None
    curve = lr_curve(replace(config.schedule, steps_per_epoch=steps_per_epoch))
    return [lr * head_lr_multiplier(config) for lr in curve.lr]


def load_data(data, config: TrainConfig, spec: PreprocessSpec, workdir: Path | None) -> Dataset:
    """Open the photos once (a folder, a .zip extracted into `workdir`, or an opened Dataset as it is).

    Each photo is decoded and resized to the spec's shorter side, then cached; the data report lands
    in `workdir` when there is one (open_dataset writes it for what it opens).
    """
    if isinstance(data, Dataset):
        if workdir is not None:
            RunFolder(workdir).write_data_report(data.report)
        return data
    return open_dataset(
        data,
        workdir=workdir,
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


def eval_inputs(records: list[ImageRecord], spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """(NCHW float32 inputs, label indices) of photos, preprocessed exactly as evaluation and serving do."""
    images = CachedImages(records, spec)
    return np.stack([images[i][0].numpy() for i in range(len(images))]), np.array([r.label for r in records])


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


def class_weights(records: list[ImageRecord], num_classes: int) -> torch.Tensor:
    """Inverse class frequency, for a loss that counts every class alike."""
    counts = np.bincount([r.label for r in records], minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class Task:
    """What one strategy trains: the module run on each batch, its loaders and its parameter groups."""

    module: nn.Module
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    groups: list[dict]
    backbone: list[nn.Parameter]


class Cancelled(Exception):
    """Stopped before training began (while features were being computed): there is nothing to keep."""


def _features(backbone: nn.Module, loader: DataLoader, device: torch.device, autocast: Autocast,
              should_stop: Callable[[], bool]) -> tuple:
    backbone.eval()
    feats, labels = [], []
    with torch.inference_mode(), autocast():
        for x, y in loader:
            if should_stop():
                raise Cancelled("Cancelled before the first epoch; nothing was kept")
            feats.append(backbone(to_device(x, device)).float().cpu())
            labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def build_task(model: nn.Module, data: Dataset, config: TrainConfig, spec: PreprocessSpec,
               device: torch.device, autocast: Autocast, log: Callable[[str], None],
               should_stop: Callable[[], bool] = lambda: False) -> Task:
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
                cached[split] = TensorDataset(*_features(model, loader, device, autocast, should_stop))
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
    return Task(
        module=model,
        train_loader=_loader(train_set, config.batch_size, True, config.seed, device),
        eval_loaders={
            s: _loader(CachedImages(r, spec), config.batch_size, False, config.seed, device) for s, r in splits.items() if r
        },
        groups=[
            {"params": backbone_params, "lr": config.lr},
            {"params": list(model.fc.parameters()), "lr": config.lr * head_lr_multiplier(config)},
        ],
        backbone=backbone_params,
    )
