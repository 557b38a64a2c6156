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


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU computes bfloat16 itself (elsewhere bf16 is emulated, and slower than fp32)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


class Autocast:
    """How the model computes on its device: the autocast dtype, the grad scaler, the memory format.

    `auto` is bfloat16 on GPUs that support it (float16 with a grad scaler on older ones) and on CPUs
    with native bfloat16, where channels_last lets oneDNN use it; float32 elsewhere. `fp32` turns it off.
    """

    def __init__(self, device: torch.device, precision: str = "auto"):
        self.device = device
        if precision == "fp32":
            self.dtype = None
        elif device.type == "cuda":
            if precision == "bf16" and not torch.cuda.is_bf16_supported():
                raise ConfigError("This GPU has no bfloat16; use --precision auto (float16) or fp32")
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.dtype = torch.bfloat16 if precision == "bf16" or cpu_has_native_bf16() else None
        self.enabled = self.dtype is not None
        self.channels_last = device.type == "cuda" or self.enabled
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)

    @property
    def name(self) -> str:
        """What the run's config records: "bfloat16", "float16" or "float32"."""
        return str(self.dtype or torch.float32).removeprefix("torch.")

    def __call__(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.enabled)

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return x.to(self.device, non_blocking=True)


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
