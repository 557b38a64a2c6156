"""The classify tab: photos classified by an exported ONNX model through `models.serving`, and /classify.

A run serves its default exported model (its fastest within 1 point of fp32's validation accuracy,
chosen at export) unless the visitor picks another in "Exported model" (the API's `variant`); every
answer says which served.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd
from gradio import processing_utils

from models.runtime import VARIANT_NAMES, ModelLoadError, run_variants
from models.serving import IMAGENET, IMAGENET_ARCH, Classified
from ui import EXAMPLES, session
from ui.errors import refusal, user_errors

MODEL_SOURCES = ("A run trained here", "An uploaded .onnx file", "ImageNet ResNet-18")
RUN, ONNX_FILE, IMAGENET_MODEL = MODEL_SOURCES


class PhotoFile(gr.Image):
    """gr.Image that hands the handler the file as it was sent; the app opens it (models.preprocess.load_rgb).

    gr.Image would open and convert it first, before the app's checks: a decompression bomb costs its
    memory there, 16-bit greys lose their scale, and an unreadable file fails inside Gradio, so the
    visitor never sees why.
    """

    def get_block_name(self) -> str:
        return "image"  # the same component in the browser

    def preprocess(self, payload) -> str | None:
        if payload is None:
            return None
        if payload.path is None and payload.url and payload.url.startswith("data:"):
            return processing_utils.save_base64_to_cache(payload.url, self.GRADIO_CACHE)  # stored, not decoded
        return payload.path


def _photo_answer(results: list[dict], photo: str) -> list[dict]:
    """The predictions for one photo, or a gr.Error naming it (by its file name, never its path on the server)."""
    if "error" in results[0]:
        raise refusal(f"{Path(photo).name}: {results[0]['error']}")
    return results[0]["predictions"]


def _classify_in_tab(paths: list[str], source: str, run_id: str | None, onnx_file: str | None, top_k: int,
                     variant: str | None) -> Classified:
    if source == ONNX_FILE:
        ref, variant = onnx_file or "", None
    elif source == IMAGENET_MODEL:
        ref, variant = IMAGENET, None
    else:
        ref = run_id or ""
    with user_errors():
        # A file uploaded through the tab is a trusted path; typed paths are for local use only.
        return session.MODELS.classify(paths, ref, top_k, True, variant)


def served_by(answer: Classified) -> str:
    """Which of a run's models answered, for the tab: "Served by **INT8**, this run's default. " (nothing for a file)."""
    if not answer.variant:
        return ""
    if answer.variant == answer.default:
        return f"Served by **{VARIANT_NAMES[answer.variant]}**, this run's default. "
    return f"Served by **{VARIANT_NAMES[answer.variant]}**, as picked (this run's default is {VARIANT_NAMES[answer.default]}). "


def classify_photo(image: str | None, source: str, run_id: str | None, onnx_file: str | None, top_k: int,
                   variant: str | None = None):
    """Handler of Classify: (label scores for gr.Label, the model that served, provider and latency)."""
    if not image:
        raise refusal("Add a photo first (upload, webcam or paste)")
    answer = _classify_in_tab([image], source, run_id, onnx_file, top_k, variant)
    scores = {p["label"]: p["score"] for p in _photo_answer(answer.results, image)}
    return scores, (f"{served_by(answer)}Provider: `{answer.provider}`, {answer.latency_ms:.1f} ms for this photo "
                    "(preprocessing included).")


def classify_many(files: list[str] | None, source: str, run_id: str | None, onnx_file: str | None, top_k: int,
                  variant: str | None = None):
    """Handler of Classify all: (a table, a gallery with the top label, a message)."""
    if not files:
        raise refusal("Add some photos first")
    answer = _classify_in_tab(files, source, run_id, onnx_file, top_k, variant)
    results, provider, ms = answer.results, answer.provider, answer.latency_ms
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
    return pd.DataFrame(rows), gallery, f"{served_by(answer)}{len(files)} photos in {ms:.0f} ms on `{provider}`."


def classify_api(image: str, model: str, top_k: float, request: gr.Request, variant: str | None = None) -> dict:
    """API: a photo, a model reference (run id, hf://user/name, "imagenet", or a path when local), top_k, and
    for a run which of its exported models ("fp32", "fp16", "int8"; blank: the run's default).

    Answers {"predictions", "provider", "latency_ms", "variant"}: "variant" is the run's model that served,
    null for a single model file."""
    if not image:
        raise refusal("Send a photo")
    with user_errors():
        answer = session.MODELS.classify([image], model, int(top_k or 5), session.is_local(request), variant)
    return {"predictions": _photo_answer(answer.results, image), "provider": answer.provider,
            "latency_ms": round(answer.latency_ms, 3), "variant": answer.variant}


def variant_choices(source: str, run_id: str | None):
    """When the run changes: its exported models to pick from, labelled with their export figures, the default
    selected ("INT8 · val 53% · 199 img/s (3.2x fp32) · default"); hidden for anything but a run."""
    hidden = gr.update(choices=[], value=None, visible=False)
    if source != RUN or not run_id:
        return hidden
    try:
        variants = run_variants(session.STORE.find(run_id))
    except ValueError:  # not a run of this store (any more)
        return hidden
    if not variants:
        return hidden
    fp32 = next((v.images_per_s for v in variants if v.name == "fp32"), None)
    choices = [(v.label(fp32) + (" · default" if v.default else ""), v.name) for v in variants]
    return gr.update(choices=choices, value=next(v.name for v in variants if v.default), visible=True)


def prepare_imagenet() -> None:
    """Export the ImageNet classifier now (at start), so a first classify never waits behind a training."""
    from models.backbones import WeightsUnavailable

    try:
        session.MODELS.imagenet_model()
    except (WeightsUnavailable, ModelLoadError) as exc:
        print(f"The ImageNet classifier is not available yet: {exc}", flush=True)


def imagenet_available() -> bool:
    """Whether the ImageNet classifier can be served here: exported already, or its weights are in torch's cache.

    Decided from the files alone: a page handler never starts an export or a download.
    """
    from models.backbones import imagenet_cache_path

    return session.MODELS.imagenet_path.is_file() or imagenet_cache_path(IMAGENET_ARCH).is_file()


def models_message(runs: int, imagenet: bool, local: bool) -> str:
    """Which models there are, and what to do when there is none (`local`: the person runs this server)."""
    if runs:
        yours = f"You have {runs} run{'s' if runs > 1 else ''} (newest first); an .onnx file made by this app works too."
    elif imagenet:
        yours = "No run of yours yet: train one in the **Fine-tune** tab, or upload an .onnx file made by this app."
    else:
        yours = ("**No model is ready yet.** Train one in the **Fine-tune** tab (its sample photos are ready to use), "
                 "or upload an .onnx file made by this app.")
    if imagenet:
        return f"{yours} The ImageNet ResNet-18 (1,000 everyday classes) is ready."
    missing = ("The ImageNet ResNet-18 is not available here: this server has no copy of its weights "
               "(torchvision downloads them once, when the server is online).")
    if local:  # the person at this machine can fix it; a visitor from elsewhere is never shown server paths
        from models.backbones import imagenet_cache_path

        weights = imagenet_cache_path(IMAGENET_ARCH)
        missing += f" To use it offline, copy `{weights.name}` into `{weights.parent}`, then reload this page."
    return f"{yours}\n\n{missing}"


def available_models(request: gr.Request):
    """Page load and every change of the visitor's runs: the model sources, the one to start with, the message.

    Starts with the visitor's runs when they have one, else the ImageNet model when it can be loaded here,
    else the .onnx upload; a source with nothing behind it says so in its label.
    """
    runs = session.run_choices(request)
    count, imagenet = len(runs["choices"]), imagenet_available()
    start = RUN if count else IMAGENET_MODEL if imagenet else ONNX_FILE
    labels = {RUN: RUN if count else f"{RUN} (none yet)", ONNX_FILE: ONNX_FILE,
              IMAGENET_MODEL: IMAGENET_MODEL if imagenet else f"{IMAGENET_MODEL} (not available here)"}
    return (gr.update(choices=[(labels[s], s) for s in MODEL_SOURCES], value=start),
            {**runs, "visible": start == RUN}, gr.update(visible=start == ONNX_FILE),
            models_message(count, imagenet, session.is_local(request)))


def classify_tab(runs_changed: gr.State) -> None:
    gr.Markdown("Classify photos with an exported ONNX model, served by ONNX Runtime (CUDA when there is a GPU).")
    models_md = gr.Markdown(elem_id="clf-models")
    with gr.Row(equal_height=True):
        # Chosen on page load (available_models), from what this visitor and this server have.
        source = gr.Radio(list(MODEL_SOURCES), value=None, label="Model", elem_id="clf-source")
        # Half the page: room for a run's whole name ("food4 · resnet18 finetune · val 87% · 10:44 (cancelled)").
        run_id = gr.Dropdown(label="Your run", choices=[], allow_custom_value=False, visible=False, elem_id="clf-run")
        variant = gr.Dropdown(label="Exported model", choices=[], allow_custom_value=False, visible=False,
                              info="Default: the fastest within 1 point of fp32's accuracy", elem_id="clf-variant")
        onnx_file = gr.File(label=".onnx model (made by this app)", file_types=[".onnx"], visible=False, height=140,
                            elem_id="clf-onnx")
    with gr.Row():
        with gr.Column(scale=1):
            image = PhotoFile(type="filepath", sources=["upload", "webcam", "clipboard"], label="Photo", height=320,
                              elem_id="clf-image")
            classify = gr.Button("Classify", variant="primary", elem_id="clf-classify")
            gr.Examples(EXAMPLES, inputs=image, label="Example photos")
        with gr.Column(scale=1):
            top_k = gr.Slider(1, 10, value=5, step=1, label="Top-k")
            scores = gr.Label(label="Top classes", elem_id="clf-label")
            info = gr.Markdown(elem_id="clf-info")
    with gr.Accordion("Many photos at once", open=False):
        many = gr.File(file_count="multiple", file_types=["image"], label="Photos")
        classify_all = gr.Button("Classify all")
        many_info = gr.Markdown()
        table = gr.Dataframe(interactive=False)
        gallery = gr.Gallery(columns=6, height=260)

    model_inputs = [source, run_id, onnx_file, top_k, variant]
    source.change(lambda s: (gr.update(visible=s == RUN), gr.update(visible=s == ONNX_FILE)),
                  source, [run_id, onnx_file], queue=False)
    # Also when a page load or a training sets the run: the picker then lists that run's exported models.
    gr.on([source.change, run_id.change], variant_choices, [source, run_id], variant, queue=False,
          api_visibility="private")
    # On page load and after a training or a delete (session.newest_run); never on focus, which races the opening click.
    runs_changed.change(available_models, None, [source, run_id, onnx_file, models_md], api_visibility="private")
    classify.click(classify_photo, [image, *model_inputs], [scores, info], concurrency_limit=4,
                   concurrency_id="classify", api_visibility="private")
    classify_all.click(classify_many, [many, *model_inputs], [table, gallery, many_info], concurrency_limit=4,
                       concurrency_id="classify", api_visibility="private")

    api_image = PhotoFile(type="filepath", visible=False)
    api_model = gr.Textbox(visible=False)
    api_top_k = gr.Number(value=5, visible=False)
    api_variant = gr.Textbox(value="", visible=False)  # blank: the run's default
    api_result = gr.JSON(visible=False)
    gr.Button(visible=False).click(classify_api, [api_image, api_model, api_top_k, api_variant], api_result,
                                   api_name="classify", concurrency_limit=4, concurrency_id="classify")
