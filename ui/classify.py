"""The classify tab: photos classified by an exported ONNX model through `models.serving`, and /classify."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from models.serving import IMAGENET
from ui import EXAMPLES, session
from ui.errors import user_errors

MODEL_SOURCES = ("A run trained here", "An uploaded .onnx file", "ImageNet ResNet-18")


def _ref_from_tab(source: str, run_id: str | None, onnx_file: str | None) -> str:
    if source == "An uploaded .onnx file":
        return onnx_file or ""
    return IMAGENET if source == "ImageNet ResNet-18" else (run_id or "")


def classify_photo(image: str | None, source: str, run_id: str | None, onnx_file: str | None, top_k: int):
    """Handler of Classify: (label scores for gr.Label, provider and latency)."""
    if not image:
        raise gr.Error("Add a photo first (upload, webcam or paste)")
    with user_errors():
        # A file uploaded through the tab is a trusted path; typed paths are for local use only.
        results, provider, ms = session.MODELS.classify_files([image], _ref_from_tab(source, run_id, onnx_file), top_k, True)
    if "error" in results[0]:
        raise gr.Error(results[0]["error"])
    scores = {p["label"]: p["score"] for p in results[0]["predictions"]}
    return scores, f"Provider: `{provider}`, {ms:.1f} ms for this photo (preprocessing included)."


def classify_many(files: list[str] | None, source: str, run_id: str | None, onnx_file: str | None, top_k: int):
    """Handler of Classify all: (a table, a gallery with the top label, a message)."""
    if not files:
        raise gr.Error("Add some photos first")
    with user_errors():
        results, provider, ms = session.MODELS.classify_files(files, _ref_from_tab(source, run_id, onnx_file), top_k, True)
    rows, gallery = [], []
    for item in results:
        name = Path(item["path"]).name
        if "error" in item:
            rows.append({"photo": name, "top label": None, "score": None, "also": item["error"]})
            continue
        top, *rest = item["predictions"]
        rows.append({"photo": name, "top label": top["label"], "score": round(top["score"], 4),
                     "also": ", ".join(f"{p['label']} {p['score']:.2f}" for p in rest)})
        gallery.append((item["path"], f"{top['label']} ({top['score']:.0%})"))
    return pd.DataFrame(rows), gallery, f"{len(files)} photos in {ms:.0f} ms on `{provider}`."


def classify_api(image: str, model: str, top_k: float, request: gr.Request) -> dict:
    """API: a photo, a model reference (run id, hf://user/name, "imagenet", or a path when local) and top_k."""
    if not image:
        raise gr.Error("Send a photo")
    with user_errors():
        results, provider, ms = session.MODELS.classify_files([image], model, int(top_k or 5), session.is_local(request))
    if "error" in results[0]:
        raise gr.Error(results[0]["error"])
    return {"predictions": results[0]["predictions"], "provider": provider, "latency_ms": round(ms, 3)}


def classify_tab(runs_changed: gr.State) -> None:
    gr.Markdown("Classify photos with an exported ONNX model, served by ONNX Runtime (CUDA when there is a GPU).")
    with gr.Row():
        with gr.Column(scale=1):
            source = gr.Radio(list(MODEL_SOURCES), value=MODEL_SOURCES[0], label="Model", elem_id="clf-source")
            run_id = gr.Dropdown(label="Run trained in this session", choices=[], allow_custom_value=False, elem_id="clf-run")
            onnx_file = gr.File(label=".onnx model (made by this app)", file_types=[".onnx"], visible=False)
            top_k = gr.Slider(1, 10, value=5, step=1, label="Top-k")
        with gr.Column(scale=2):
            image = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="Photo", height=320,
                             elem_id="clf-image")
            classify = gr.Button("Classify", variant="primary", elem_id="clf-classify")
            gr.Examples(EXAMPLES, inputs=image, label="Example photos")
        with gr.Column(scale=2):
            scores = gr.Label(label="Top classes", elem_id="clf-label")
            info = gr.Markdown(elem_id="clf-info")
    with gr.Accordion("Many photos at once", open=False):
        many = gr.File(file_count="multiple", file_types=["image"], label="Photos")
        classify_all = gr.Button("Classify all")
        many_info = gr.Markdown()
        table = gr.Dataframe(interactive=False)
        gallery = gr.Gallery(columns=6, height=260)

    model_inputs = [source, run_id, onnx_file, top_k]
    source.change(lambda s: (gr.update(visible=s == MODEL_SOURCES[0]), gr.update(visible=s == MODEL_SOURCES[1])),
                  source, [run_id, onnx_file], queue=False)
    runs_changed.change(session.run_choices, runs_changed, run_id)
    run_id.focus(session.run_choices, None, run_id)
    classify.click(classify_photo, [image, *model_inputs], [scores, info], concurrency_limit=4,
                   concurrency_id="classify", api_visibility="private")
    classify_all.click(classify_many, [many, *model_inputs], [table, gallery, many_info], concurrency_limit=4,
                       concurrency_id="classify", api_visibility="private")

    api_image = gr.Image(type="filepath", visible=False)
    api_model = gr.Textbox(visible=False)
    api_top_k = gr.Number(value=5, visible=False)
    api_result = gr.JSON(visible=False)
    gr.Button(visible=False).click(classify_api, [api_image, api_model, api_top_k], api_result, api_name="classify",
                                   concurrency_limit=4, concurrency_id="classify")
