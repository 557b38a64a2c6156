"""A photo classifier fine-tuned with Transfer Studio, served with ONNX Runtime.

Standalone: needs only gradio, onnxruntime, numpy and pillow. The class names and the
preprocessing (resize, centre crop, mean/std) are read from model.onnx's own metadata, the
values the model was trained with, so this file works unchanged for any Transfer Studio model.
"""

import json
import math
from pathlib import Path

import gradio as gr
import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
TITLE = "__TITLE__"
TOP_K = 5
# Pillow refuses images over twice this many pixels when it opens them, before decoding (a small file can
# declare gigapixels); Gradio opens every uploaded photo with Pillow.
Image.MAX_IMAGE_PIXELS = 32_000_000
# The resized photo's long side stays within this many times `resize`; only the centre of a longer strip
# is resized (a 1 x 8000 pixel PNG would otherwise become 256 x 2,048,000 pixels). As in training.
MAX_ASPECT = 4

session = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
metadata = session.get_modelmeta().custom_metadata_map
LABELS = json.loads(metadata["labels"])
PREP = json.loads(metadata["preprocessing"])
# The same filters torchvision uses for these interpolation names (training resized with them).
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}[PREP.get("interpolation", "bilinear")]


def centre(length: int) -> int:
    """Offset of the centre crop along a side of `length` pixels, rounded as torchvision rounds it."""
    return round((length - PREP["crop"]) / 2.0)


def preprocess(image: Image.Image) -> np.ndarray:
    """Shorter side to `resize`, centre crop of `crop`, then (x / 255 - mean) / std, as a 1x3xHxW batch."""
    image = image.convert("RGB")
    width, height = image.size
    resize, crop = PREP["resize"], PREP["crop"]
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    limit = MAX_ASPECT * resize
    if max(size) > limit:
        # Resize only a window of `limit` pixels around the centre, on the full resize's grid, horizontal
        # pass first as Pillow does (the same steps as PreprocessSpec.resize_image in Transfer Studio).
        start = centre(max(size)) - centre(limit)
        if width > height:
            left, right = start * width / size[0], (start + limit) * width / size[0]
            image = image.resize((limit, height), RESAMPLE, box=(left, 0, right, height))
            size = (limit, size[1])
            image = image.resize(size, RESAMPLE)
        else:
            scale = height / size[1]
            y0, y1 = start * scale, (start + limit) * scale
            margin = 2 * max(scale, 1) + 1  # the rows bicubic, the widest filter, reads
            first, last = max(0, math.floor(y0 - margin)), min(height, math.ceil(y1 + margin))
            image = image.crop((0, first, width, last)).resize((size[0], last - first), RESAMPLE)
            size = (size[0], limit)
            image = image.resize(size, RESAMPLE, box=(0, y0 - first, size[0], y1 - first))
    elif size != image.size:
        image = image.resize(size, RESAMPLE)
    left, top = centre(size[0]), centre(size[1])
    image = image.crop((left, top, left + crop, top + crop))
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(PREP["mean"], np.float32)) / np.asarray(PREP["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def predict(image: Image.Image | None) -> dict[str, float]:
    """A photo -> {label: probability} for the TOP_K most likely classes (empty when there is no photo)."""
    if image is None:
        return {}
    logits = session.run(["logits"], {"input": preprocess(image)})[0][0].astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    top = np.argsort(-probabilities, kind="stable")[:TOP_K]
    return {LABELS[i]: float(probabilities[i]) for i in top}


EXAMPLES = sorted(str(p) for p in (HERE / "examples").glob("*") if p.is_file())

demo = gr.Interface(
    fn=predict,
    inputs=gr.Image(type="pil", label="Photo"),
    outputs=gr.Label(num_top_classes=TOP_K, label="Prediction"),
    examples=EXAMPLES or None,
    cache_examples=False,
    title=TITLE,
    description="Classes: " + ", ".join(LABELS),
    flagging_mode="never",
)

if __name__ == "__main__":
    # Example photos live next to this file, wherever it is started from.
    demo.launch(allowed_paths=[str(HERE / "examples")])
