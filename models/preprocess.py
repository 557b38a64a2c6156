"""The preprocessing spec: resize, centre crop, mean/std, defined once.

Training, the run folder, the ONNX metadata and the torch-free runtime all use this one object.
This module imports no torch: the runtime preprocesses with PIL and numpy from the same spec.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import asdict, dataclass
from numbers import Integral, Real

import numpy as np
from PIL import Image

# torchvision's InterpolationMode values mapped to PIL's filters (torchvision resizes PIL images
# with exactly these filters, so the two paths agree to the pixel).
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

# A model file states its own preprocessing; this bound keeps a hostile or broken one from making
# the runtime resize every photo to gigapixels (100000 px on the short side is ~40 GB per photo).
MAX_RESIZE = 4096

# The resized photo's long side is kept to at most this many times `resize`: a 117-byte 1 x 8000 PNG would
# otherwise become 256 x 2,048,000 pixels (2 GB), a 1 x 100000 one 18 GiB. Only the centre of a longer
# strip is kept. Neither path looks further out: evaluation takes the centre crop, and training's
# RandomResizedCrop (trainer.task: scale >= 0.35, ratio >= 3/4) cannot place a crop in a strip longer
# than 3.8 : 1 and falls back to the same centre.
MAX_ASPECT = 4


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _three_numbers(field: str, value, positive: bool = False) -> tuple[float, float, float]:
    """`value` as 3 finite floats (one per RGB channel), or a ValueError naming `field`."""
    try:
        values = tuple(value)
    except TypeError:
        values = ()
    if len(values) != 3 or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{field} must be 3 numbers (one per RGB channel), got {_short(value)}")
    values = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{field} must be finite numbers, got {_short(value)}")
    if positive and not all(v > 0 for v in values):
        raise ValueError(f"{field} must be positive numbers, got {_short(value)}")
    return values


@dataclass(frozen=True)
class PreprocessSpec:
    """Shorter side resized to `resize`, centre crop of `crop`, then (x/255 - mean) / std."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self):
        # Specs also come from model files, which anyone can write: every field is checked here.
        if not isinstance(self.interpolation, str) or self.interpolation not in _PIL_FILTERS:
            raise ValueError(
                f"Unknown interpolation {_short(self.interpolation)}; choose from {sorted(_PIL_FILTERS)}"
            )
        for field in ("resize", "crop"):
            value = getattr(self, field)
            if not isinstance(value, Integral) or isinstance(value, bool):
                raise ValueError(f"{field} must be a whole number of pixels, got {_short(value)}")
            object.__setattr__(self, field, int(value))
        if not 0 < self.crop <= self.resize <= MAX_RESIZE:
            raise ValueError(
                f"crop ({self.crop}) and resize ({self.resize}) must satisfy 0 < crop <= resize <= {MAX_RESIZE}"
            )
        object.__setattr__(self, "mean", _three_numbers("mean", self.mean))
        object.__setattr__(self, "std", _three_numbers("std", self.std, positive=True))

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        """The spec `to_dict` wrote; ValueError (naming the field) or KeyError for anything else."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        return cls(
            resize=d["resize"],
            crop=d["crop"],
            mean=d["mean"],
            std=d["std"],
            interpolation=d.get("interpolation", "bilinear"),
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shorter-side resize, computed as torchvision does."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def resize_image(self, image: Image.Image) -> Image.Image:
        """Shorter side to `resize`, longer side at most MAX_ASPECT x `resize`; the step training caches once per image.

        Work and memory follow this output, never the full resize of a long strip: only the window kept
        is computed, on the full resize's grid and with Pillow's order of passes (horizontal first), so
        its centre crop is torchvision's Resize then CenterCrop to within one grey level with bilinear or
        bicubic (Pillow takes the window's bounds as floats; nearest may pick a neighbouring pixel).
        Photos up to MAX_ASPECT : 1 are resized exactly as torchvision does.
        """
        width, height = image.size
        size = self.resized_size(width, height)
        limit = MAX_ASPECT * self.resize
        resample = _PIL_FILTERS[self.interpolation]
        if max(size) <= limit:
            return image if size == image.size else image.resize(size, resample)
        # The window: `limit` pixels along the long side, placed so that its centre crop is the full one's.
        start = self._centre(max(size)) - self._centre(limit)
        if width > height:  # long side across: Pillow's first pass computes only the window's columns
            box = (start * width / size[0], 0, (start + limit) * width / size[0], height)
            return image.resize((limit, height), resample, box=box).resize((limit, size[1]), resample)
        scale = height / size[1]
        top, bottom = start * scale, (start + limit) * scale
        # The rows the window reads: bicubic, the widest filter, reaches 2 output pixels either side.
        margin = 2 * max(scale, 1) + 1
        first, last = max(0, math.floor(top - margin)), min(height, math.ceil(bottom + margin))
        rows = image.crop((0, first, width, last)).resize((size[0], last - first), resample)
        return rows.resize((size[0], limit), resample, box=(0, top - first, size[0], bottom - first))

    def _centre(self, length: int) -> int:
        """Offset of the centre crop along a side of `length` pixels, rounded as torchvision rounds it."""
        return round((length - self.crop) / 2.0)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centre crop, rounded as torchvision rounds it."""
        left, top = self._centre(width), self._centre(height)
        return left, top, left + self.crop, top + self.crop

    def normalize(self, hwc_uint8: np.ndarray) -> np.ndarray:
        """uint8 HWC (or NHWC) -> float32 CHW (or NCHW), scaled and normalised."""
        x = hwc_uint8.astype(np.float32) / np.float32(255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def to_array(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> the model's float32 input, shape (3, crop, crop). No torch."""
        resized = self.resize_image(image)
        cropped = resized.crop(self.crop_box(*resized.size))
        return self.normalize(np.asarray(cropped, dtype=np.uint8))

    def torch_eval_transform(self):
        """torchvision's own evaluation transform for this spec (the reference the runtime matches)."""
        from torchvision import transforms as T

        return T.Compose(
            [
                T.Resize(self.resize, interpolation=T.InterpolationMode(self.interpolation), antialias=True),
                T.CenterCrop(self.crop),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )


# Larger photos are refused before decoding: a 40-megapixel phone photo passes, a decompression
# bomb (a small file that declares gigapixels) does not.
MAX_PIXELS = 64_000_000
# Pillow's own guard, for every decoder in the process (Gradio's included): it raises only above twice
# this value (between once and twice it merely warns), so twice this is exactly MAX_PIXELS.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2


class UnreadableImage(ValueError):
    """A file that cannot be used as a photo; the message says why, in words, and names no server path."""


def load_rgb(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a photo (path or binary file) as 8-bit RGB: first frame, EXIF orientation applied, transparency on white."""
    from PIL import ImageOps, UnidentifiedImageError

    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        raise UnreadableImage(f"not an image ({'an empty file' if _is_empty(source) else 'unrecognised format'})") from None
    except Image.DecompressionBombError:
        raise UnreadableImage(f"too large (over {MAX_PIXELS:,} pixels)") from None
    except OSError as exc:
        raise UnreadableImage(f"cannot be opened ({exc.strerror or _shown_error(exc, source)})") from None
    except (SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"cannot be opened ({_shown_error(exc, source)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise UnreadableImage(f"too large ({width} x {height} pixels, the limit is {max_pixels:,})")
    if width == 0 or height == 0:
        raise UnreadableImage("has no pixels")
    try:
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except Image.DecompressionBombError:
        raise UnreadableImage(f"too large ({width} x {height} pixels)") from None
    except Exception as exc:  # noqa: BLE001
        # Pillow's decoders raise assorted exception types on hostile bytes (OSError, SyntaxError,
        # struct.error, IndexError...): each is this file's fault, not a bug here.
        raise UnreadableImage(f"truncated or corrupt ({_shown_error(exc, source)})") from None


def _is_empty(source) -> bool:
    if isinstance(source, (str, os.PathLike)):
        return os.path.getsize(source) == 0
    return isinstance(source, io.BytesIO) and source.getbuffer().nbytes == 0


def _shown_error(exc: Exception, source) -> str:
    """A decoder's error as one short line, the photo named by its base name only."""
    text = " ".join(str(exc).split())
    if isinstance(source, (str, os.PathLike)):
        text = text.replace(str(source), os.path.basename(source))
    return text[:100] if text else type(exc).__name__


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit greys scaled, transparency composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and integer greys: scale the 0..65535 range down instead of clipping at 255.
        grey = np.asarray(image, dtype=np.float64)
        scale = 257.0 if grey.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(grey / scale, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
