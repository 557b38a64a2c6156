"""A photo classifier fine-tuned with Transfer Studio, served with ONNX Runtime.

Standalone: needs only gradio, onnxruntime, numpy and pillow. The class names and the
preprocessing (resize, centre crop, mean/std) are read from model.onnx's own metadata, the
values the model was trained with, so this file works unchanged for any Transfer Studio model.
"""

import json
from pathlib import Path

import gradio as gr
import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
TITLE = "__TITLE__"
TOP_K = 5

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


def preprocess(image: Image.Image) -> np.ndarray:
    """Shorter side to `resize`, centre crop of `crop`, then (x / 255 - mean) / std, as a 1x3xHxW batch."""
    image = image.convert("RGB")
    width, height = image.size
    resize, crop = PREP["resize"], PREP["crop"]
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    if size != image.size:
        image = image.resize(size, RESAMPLE)
    left = int(round((size[0] - crop) / 2.0))
    top = int(round((size[1] - crop) / 2.0))
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
