"""What a strategy trains: the photos as batches, what is frozen, the parameter groups and the head's LR.

`linear-probe` computes the frozen backbone's features once and trains the head on them; `partial`
freezes the stem through layer3 and trains layer4 and the head (without augmentation the frozen part's
activations are computed once and cached, as the linear probe's features are); `finetune` trains the
head alone for head_epochs, then everything with the head at head_lr_mult x the LR; `full` trains
everything at one LR. Shared by fit and the LR finder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset as TorchDataset, DistributedSampler, TensorDataset

from models.preprocess import PreprocessSpec
from models.run_folder import RunFolder
from trainer.config import TrainConfig
from trainer.data import Dataset, ImageRecord, open_dataset
from trainer.distributed import World
from trainer.schedules import lr_curve, scheduler_info
from trainer.step import Autocast


def head_lr_multiplier(config: TrainConfig) -> float:
    """The head's LR over the backbone's: head_lr_mult in finetune, 1 otherwise."""
    return config.head_lr_mult if config.strategy == "finetune" else 1.0


def planned_head_lr(config: TrainConfig, steps_per_epoch: int) -> list[float] | None:
    """The head's LR at every optimizer step as planned (ReduceLROnPlateau depends on the run: None)."""
    if scheduler_info(config.schedule.scheduler).needs_metric:
        return None
    curve = lr_curve(replace(config.schedule, steps_per_epoch=steps_per_epoch))
    return [lr * head_lr_multiplier(config) for lr in curve.lr]


def load_data(data, config: TrainConfig, spec: PreprocessSpec, workdir: Path | None, world: World = World()) -> Dataset:
    """Open the photos once (a folder, a .zip extracted into `workdir`, or an opened Dataset as it is).

    Each photo is decoded and resized to the spec's shorter side, then cached (each process decodes
    its shard and receives the rest); the data report lands in `workdir` when there is one.
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
        world=world,
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


def _train_loader(dataset, config: TrainConfig, world: World, device: torch.device) -> DataLoader:
    """Batches of this process's share of a seeded shuffle of the whole set (call sampler.set_epoch each epoch).

    The shuffle depends on the seed and epoch only, so N processes with batch B see, step by step,
    the photos one process with batch N x B sees. The sampler pads the last step by repeating photos.
    """
    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=config.seed)
    return _loader(dataset, config.batch_size, config.seed, device, sampler=sampler)


def _loader(dataset, batch_size: int, seed: int, device: torch.device, sampler=None) -> DataLoader:
    # Photos are decoded and cached up front, so workers only pay off where a GPU waits on augmentation.
    workers = min(8, (os.cpu_count() or 1) - 1) if device.type == "cuda" and len(dataset) else 0
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")


def is_padding(loader: DataLoader, world: World, batch: int, size: int) -> torch.Tensor:
    """Which photos of a training batch are the sampler's repeats (counted once in the epoch's figures)."""
    first = batch * loader.batch_size
    positions = world.rank + world.size * torch.arange(first, first + size)
    return positions >= len(loader.dataset)


def class_weights(records: list[ImageRecord], num_classes: int) -> torch.Tensor:
    """Inverse class frequency, for a loss that counts every class alike."""
    counts = np.bincount([r.label for r in records], minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class Task:
    """What one strategy trains: the module run on each batch, its loaders and its parameter groups.

    The train loader gives this process its share of every epoch; the eval loaders give it its shard
    of each split (`World.gather_shards` puts the splits back together).
    """

    module: nn.Module
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    groups: list[dict]
    backbone: list[nn.Parameter]  # what finetune unfreezes after its head epochs
    frozen: nn.Module | None = None  # run at every step but never trained: kept in eval mode


# The frozen part's cached activations (partial at 224 px: 200 KB a photo) stay below this; beyond it
# the frozen part runs at every step instead, which costs time, not memory.
MAX_CACHED_BYTES = 2 * 1024**3


class Cancelled(Exception):
    """Stopped before training began (while features were being computed): there is nothing to keep."""


def _features(backbone: nn.Module, loader: DataLoader, device: torch.device, autocast: Autocast,
              should_stop: Callable[[], bool]) -> list[torch.Tensor]:
    backbone.eval()
    feats = []
    with torch.inference_mode(), autocast():
        for x, _ in loader:
            if should_stop():
                raise Cancelled("Cancelled before the first epoch; nothing was kept")
            feats.extend(backbone(autocast.to_device(x)).float().cpu())
    return feats


def build_task(model: nn.Module, data: Dataset, config: TrainConfig, spec: PreprocessSpec,
               device: torch.device, autocast: Autocast, log: Callable[[str], None],
               should_stop: Callable[[], bool] = lambda: False, world: World = World()) -> Task:
    splits = {"val": data.val, "test": data.test}
    backbone_params = [p for name, p in model.named_parameters() if not name.startswith("fc.")]

    def photo_eval_loaders() -> dict[str, DataLoader]:
        return {s: _loader(CachedImages(world.shard(r), spec), config.batch_size, config.seed, device)
                for s, r in splits.items() if r}

    def cached_task(frozen: nn.Module, trained: nn.Module, what: str) -> Task:
        """Train `trained` on `frozen`'s outputs, computed once for every photo."""
        frozen.eval()
        cached = {}
        for split, records in {"train": data.train, **splits}.items():
            if records:  # each process computes its shard; every process gets them all
                log(f"computing {split} {what} once ({len(records)} photos)")
                loader = _loader(CachedImages(world.shard(records), spec), config.batch_size, config.seed, device)
                outputs = world.gather_shards(_features(frozen, loader, device, autocast, should_stop))
                cached[split] = TensorDataset(torch.stack(outputs), torch.tensor([r.label for r in records]))
        cpu = torch.device("cpu")
        return Task(
            module=trained,
            train_loader=_train_loader(cached["train"], config, world, cpu),
            eval_loaders={s: _loader(_shard_of(cached[s], world), config.batch_size, config.seed, cpu)
                          for s in splits if s in cached},
            groups=[{"params": [p for p in trained.parameters() if p.requires_grad], "lr": config.lr}],
            backbone=[],
        )

    if config.strategy == "linear-probe":
        for p in backbone_params:
            p.requires_grad_(False)
        head = model.fc
        model.fc = nn.Identity()
        try:
            return cached_task(model, head, "features")
        finally:
            model.fc = head
    if config.strategy == "partial":
        trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3)
        for p in trunk.parameters():
            p.requires_grad_(False)
        trunk.eval()  # its BatchNorm statistics stay as loaded
        top = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(1), model.fc)
        photos = len(data.train) + len(data.val) + len(data.test)
        if config.augment == "none" and photos * _output_bytes(trunk, spec, device) <= MAX_CACHED_BYTES:
            return cached_task(trunk, top, "layer3 activations")
        log("the stem through layer3 runs at every step: " + (
            "augmentation changes the photos each epoch (choose augmentation none to compute it once)"
            if config.augment != "none" else "its activations for so many photos would not fit in memory"))
        train_set = CachedImages(data.train, spec, train_augmentation(config.augment, spec))
        return Task(
            module=model,
            train_loader=_train_loader(train_set, config, world, device),
            eval_loaders=photo_eval_loaders(),
            groups=[{"params": list(top.parameters()), "lr": config.lr}],
            backbone=[],
            frozen=trunk,
        )
    train_set = CachedImages(data.train, spec, train_augmentation(config.augment, spec))
    return Task(
        module=model,
        train_loader=_train_loader(train_set, config, world, device),
        eval_loaders=photo_eval_loaders(),
        groups=[
            {"params": backbone_params, "lr": config.lr},
            {"params": list(model.fc.parameters()), "lr": config.lr * head_lr_multiplier(config)},
        ],
        backbone=backbone_params,
    )


def _shard_of(features: TensorDataset, world: World) -> TensorDataset:
    return TensorDataset(*(tensor[world.rank :: world.size] for tensor in features.tensors))


def _output_bytes(module: nn.Module, spec: PreprocessSpec, device: torch.device) -> int:
    """Bytes of one photo's output of `module`, kept as float32."""
    with torch.inference_mode():
        return module(torch.zeros(1, 3, spec.crop, spec.crop, device=device)).numel() * 4
