"""ResNet backbones: create_model(), pretrained-weights resolution, and the preprocessing they expect."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv_models

from models.preprocess import PreprocessSpec


@dataclass(frozen=True)
class Backbone:
    builder: str  # torchvision.models function name
    weights: str  # torchvision weights enum member: Class.MEMBER
    hub_copy: str  # the same ImageNet weights on the Hugging Face Hub (model cards' base_model)


BACKBONES = {
    "resnet18": Backbone("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "timm/resnet18.tv_in1k"),
    "resnet34": Backbone("resnet34", "ResNet34_Weights.IMAGENET1K_V1", "timm/resnet34.tv_in1k"),
    "resnet50": Backbone("resnet50", "ResNet50_Weights.IMAGENET1K_V2", "timm/resnet50.tv2_in1k"),
}


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be had; the message says how to provide them."""


def _backbone(arch: str) -> Backbone:
    if arch not in BACKBONES:
        raise ValueError(f"Unknown arch {arch!r}. Choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[arch]


def imagenet_weights(arch: str):
    """torchvision's weights enum member for `arch` (reading it downloads nothing)."""
    return tv_models.get_weight(_backbone(arch).weights)


def preprocessing_for(arch: str, image_size: int = 224) -> PreprocessSpec:
    """The weights' own eval transform, scaled to `image_size` (resize = size x 256/224 for V1 weights)."""
    transforms = imagenet_weights(arch).transforms()
    crop, resize = transforms.crop_size[0], transforms.resize_size[0]
    return PreprocessSpec(
        resize=int(round(image_size * resize / crop)),
        crop=image_size,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation=transforms.interpolation.value,
    )


def imagenet_cache_path(arch: str) -> Path:
    """Where torch's hub cache keeps the ImageNet checkpoint for `arch`."""
    url = imagenet_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's weights API (torch hub cache, else a download)."""
    weights = imagenet_weights(arch)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, socket errors, SSL, hash mismatch: all mean "not available"
        raise WeightsUnavailable(
            f"ImageNet weights for {arch} could not be loaded ({type(exc).__name__}: {exc}). "
            f"Connect to the internet once so torchvision can download {weights.url} into the torch hub cache "
            f"({imagenet_cache_path(arch)}), or copy that file there, or pass a local weights file "
            f"(--weights PATH, .safetensors or .pth), or train from scratch with --weights none."
        ) from None


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file, or a torch checkpoint loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"Weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailable(f"Weights file {path.name} could not be read safely: {exc}") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"Weights file {path.name} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def create_model(arch: str, num_classes: int, weights: str | Path = "imagenet") -> nn.Module:
    """A torchvision ResNet with a new `num_classes` head.

    `weights`: "imagenet" (torchvision's weights, never a silent fallback), "none" (random init,
    an explicit choice), or a path to a state dict (its `fc` is dropped when the class count differs).
    """
    model: nn.Module = getattr(tv_models, _backbone(arch).builder)(weights=None)
    if str(weights) == "imagenet":
        model.load_state_dict(load_imagenet_state_dict(arch))
    elif str(weights) != "none":
        _load_backbone(model, load_weights_file(weights), arch)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith("fc.") and v.shape != expected[k].shape)}
    missing = [k for k in expected if k not in state and not k.startswith("fc.")]
    wrong = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if missing or wrong:
        detail = f"missing {missing[:3]}" if missing else f"wrong shapes for {wrong[:3]}"
        raise WeightsUnavailable(f"The weights file does not fit {arch}: {detail}")
    model.load_state_dict(state, strict=False)


def create_imagenet_classifier(arch: str) -> tuple[nn.Module, list[str]]:
    """The pretrained ResNet with its own 1000-class ImageNet head, and the class names."""
    model: nn.Module = getattr(tv_models, _backbone(arch).builder)(weights=None)
    model.load_state_dict(load_imagenet_state_dict(arch))
    return model, list(imagenet_weights(arch).meta["categories"])
