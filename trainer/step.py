"""One optimizer step, shared by fit and the LR finder: the device, mixed precision, the optimizer, the step."""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import ConfigError, TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA GPU is available; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda" and x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


class Autocast:
    """bf16 autocast where the GPU supports it, else fp16 with a grad scaler; nothing on CPU."""

    def __init__(self, device: torch.device):
        self.enabled = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)
        self.device = device

    def __call__(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.enabled)


def create_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def train_step(module: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, autocast: Autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward under autocast, backward through the grad scaler, one optimizer step; returns (loss, logits)."""
    with autocast():
        logits = module(x)
        loss = criterion(logits.float(), y)  # the loss in fp32 whatever the autocast dtype
    optimizer.zero_grad(set_to_none=True)
    autocast.scaler.scale(loss).backward()
    autocast.scaler.step(optimizer)
    autocast.scaler.update()
    return loss.detach(), logits.detach()
