"""models.runtime: OnnxClassifier loading, validation, preprocessing parity, IO binding, threads, no torch."""

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from models import runtime
from models.preprocess import MAX_ASPECT, MAX_PIXELS, PreprocessSpec, UnreadableImage, load_rgb
from models.run_folder import ONNX_VARIANTS
from models.runtime import (ModelChoice, ModelLoadError, OnnxClassifier, cuda_status, resolve_model,
                            resolve_model_choice, run_variants, softmax)

REPO = Path(__file__).resolve().parents[1]
LABELS = ["cat", "dog", "fox"]
CROP = 64


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A random-weights ResNet-18 exported with its metadata (torch is only needed to build it)."""
    import torch

    from models.backbones import create_model, preprocessing_for
    from models.export import export_onnx

    torch.manual_seed(0)
    model = create_model("resnet18", len(LABELS), "none").eval()
    path = tmp_path_factory.mktemp("runtime") / "model.onnx"
    export_onnx(model, LABELS, preprocessing_for("resnet18", CROP), {"labels": LABELS}, path)
    return path


@pytest.fixture(scope="module")
def classifier(model_path):
    return OnnxClassifier(model_path, providers="cpu")


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients plus noise, so resizing and cropping change every pixel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 0 * x], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))


def save_photo(kind: str, folder: Path) -> Path:
    """One file per way a user's photo can arrive."""
    if kind == "landscape":
        image, name = photo(160, 90), "landscape.jpg"
    elif kind == "portrait":
        image, name = photo(90, 160), "portrait.png"
    elif kind == "square":
        image, name = photo(100, 100), "square.png"
    elif kind == "tiny":
        image, name = photo(10, 10), "tiny.png"
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: stored landscape, shown rotated 90 degrees clockwise
        path = folder / "rotated.jpg"
        photo(120, 80).save(path, exif=exif, quality=95)
        return path
    elif kind == "grayscale":
        image, name = photo(120, 100).convert("L"), "grey.png"
    elif kind == "rgba":
        image = photo(110, 130)
        image.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 110, dtype=np.uint8), (130, 1))))
        name = "alpha.png"
    elif kind == "palette":
        image, name = photo(140, 100).convert("P", palette=Image.Palette.ADAPTIVE), "palette.png"
    path = folder / name
    image.save(path)
    return path


PHOTO_KINDS = ["landscape", "portrait", "square", "tiny", "exif_rotated", "grayscale", "rgba", "palette"]
SPECS = {
    "resnet18-64": PreprocessSpec(resize=73, crop=64),
    "imagenet-224": PreprocessSpec(),
    "bicubic": PreprocessSpec(resize=80, crop=64, interpolation="bicubic"),
}


@pytest.mark.parametrize("spec_name", SPECS)
@pytest.mark.parametrize("kind", PHOTO_KINDS)
def test_runtime_preprocessing_matches_torchvision_eval_transform(tmp_path, kind, spec_name):
    spec = SPECS[spec_name]
    image = load_rgb(save_photo(kind, tmp_path))
    assert image.mode == "RGB"
    ours = spec.to_array(image)
    reference = spec.torch_eval_transform()(image).numpy()
    assert ours.shape == reference.shape == (3, spec.crop, spec.crop)
    assert ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 1e-5


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"resize": 5000, "crop": 224}, "resize"),  # over 4096: a model could make the runtime allocate GBs per photo
        ({"crop": 0}, "crop"),
        ({"crop": 300}, "crop"),  # over resize
        ({"resize": 256.0}, "resize"),
        ({"resize": True}, "resize"),
        ({"crop": "224"}, "crop"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"mean": (0.5,) * 4}, "mean"),
        ({"mean": "abc"}, "mean"),
        ({"mean": (float("nan"), 0.5, 0.5)}, "mean"),
        ({"std": (0, 1, 1)}, "std"),
        ({"std": (-0.2, 0.2, 0.2)}, "std"),
        ({"std": (float("inf"), 1, 1)}, "std"),
        ({"std": None}, "std"),
        ({"interpolation": "magic"}, "interpolation"),
        ({"interpolation": ["bilinear"]}, "interpolation"),
    ],
)
def test_preprocess_spec_refuses_a_bad_field_naming_it(fields, named):
    with pytest.raises(ValueError, match=named):
        PreprocessSpec(**fields)


def test_preprocess_spec_accepts_its_limits_and_numpy_numbers_and_round_trips():
    spec = PreprocessSpec(resize=np.int64(4096), crop=4096, mean=np.zeros(3), std=[1, 2, 3])
    assert (spec.resize, spec.mean, spec.std) == (4096, (0.0, 0.0, 0.0), (1.0, 2.0, 3.0))
    assert type(spec.resize) is int and PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="must be a JSON object"):
        PreprocessSpec.from_dict([256, 224])


def test_exif_orientation_is_applied_before_preprocessing(tmp_path):
    assert load_rgb(save_photo("exif_rotated", tmp_path)).size == (80, 120)


def test_importing_and_using_the_runtime_does_not_import_torch(model_path, tmp_path):
    image = save_photo("square", tmp_path)
    code = (
        "import sys, models.runtime as r\n"
        f"print(r.OnnxClassifier({str(model_path)!r}).predict([{str(image)!r}])[0][0][0])\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    label, torch_imported = result.stdout.split()
    assert label in LABELS and torch_imported == "False"


def test_predict_preprocesses_with_the_stored_spec(classifier, tmp_path):
    paths = [save_photo(kind, tmp_path) for kind in ("landscape", "portrait", "rgba")]
    arrays = np.stack([classifier.spec.to_array(load_rgb(p)) for p in paths])
    expected = softmax(classifier.predict_arrays(arrays))
    for top, probabilities in zip(classifier.predict(paths, top_k=3), expected):
        assert [label for label, _ in top] == [LABELS[i] for i in np.argsort(-probabilities)]
        np.testing.assert_allclose([score for _, score in top], np.sort(probabilities)[::-1], rtol=1e-6)


def test_predict_accepts_pil_images_in_any_mode(classifier):
    image = photo(90, 70)
    expected = classifier.predict([image])
    assert classifier.predict([image.convert("RGBA")]) == expected  # opaque alpha on white: same pixels
    assert len(classifier.predict([image.convert("L")])[0]) == 3


def test_top_k_is_sorted_and_clipped_to_the_number_of_labels(classifier):
    (top1,), (top_all,) = classifier.predict([photo(80, 80)], top_k=1), classifier.predict([photo(80, 80)], top_k=50)
    assert len(top1) == 1 and len(top_all) == len(LABELS)
    scores = [score for _, score in top_all]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-6)
    assert top1[0] == top_all[0]


def test_predict_files_answers_every_path_in_order_with_errors_in_place(classifier, tmp_path):
    good = save_photo("square", tmp_path)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    results = classifier.predict_files([good, bad, tmp_path / "missing.png", good], top_k=2)
    assert [r["path"] for r in results] == [str(good), str(bad), str(tmp_path / "missing.png"), str(good)]
    assert "not an image" in results[1]["error"] and "cannot be opened" in results[2]["error"]
    assert results[0]["predictions"] == results[3]["predictions"] and len(results[0]["predictions"]) == 2


def test_io_binding_gives_the_same_logits_as_plain_run(model_path):
    batch = np.random.default_rng(0).standard_normal((4, 3, CROP, CROP), dtype=np.float32)
    plain = OnnxClassifier(model_path, providers="cpu", use_io_binding=False)
    bound = OnnxClassifier(model_path, providers="cpu", use_io_binding=True)
    assert bound.use_io_binding and not plain.use_io_binding
    np.testing.assert_array_equal(bound.predict_arrays(batch), plain.predict_arrays(batch))


@pytest.mark.parametrize("use_io_binding", [False, True])
def test_concurrent_predictions_from_8_threads_are_all_correct(model_path, use_io_binding):
    classifier = OnnxClassifier(model_path, providers="cpu", intra_op_threads=1, use_io_binding=use_io_binding)
    images = [photo(60 + 7 * i, 90 - 3 * i, seed=i) for i in range(16)]
    sequential = [classifier.predict([image])[0] for image in images]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda image: classifier.predict([image])[0], images * 3))
    assert concurrent == sequential * 3


def test_model_bytes_load_like_the_file(model_path, classifier):
    from_bytes = OnnxClassifier(model_path.read_bytes(), providers="cpu")
    assert from_bytes.labels == classifier.labels and from_bytes.config == {"labels": LABELS}
    image = photo(70, 70)
    assert from_bytes.predict([image]) == classifier.predict([image])


def test_predict_arrays_rejects_a_wrongly_shaped_batch(classifier):
    with pytest.raises(ValueError, match=r"Expected a batch of shape \(N, 3, 64, 64\)"):
        classifier.predict_arrays(np.zeros((1, 3, 32, 32), np.float32))


def test_cpu_provider_and_auto_choice(model_path):
    assert OnnxClassifier(model_path, providers="cpu").provider == "CPUExecutionProvider"
    usable, reason = cuda_status()
    expected = "CUDAExecutionProvider" if usable else "CPUExecutionProvider"
    assert OnnxClassifier(model_path, providers="auto").provider == expected
    if not usable:
        with pytest.raises(ModelLoadError, match="CUDA was requested but cannot be used"):
            OnnxClassifier(model_path, providers="cuda")
    with pytest.raises(ValueError, match="Choose one of: auto, cpu, cuda"):
        OnnxClassifier(model_path, providers="tpu")


def metadata_model(path: Path, input_shape, metadata: dict) -> Path:
    """A tiny valid ONNX classifier (global average pool) with the given input shape and metadata."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def ours(crop=CROP) -> dict:
    return {
        "labels": json.dumps(LABELS),
        "preprocessing": json.dumps(PreprocessSpec(resize=73, crop=crop).to_dict()),
        "config": json.dumps({}),
    }


def make_bad_file(kind: str, folder: Path, good: Path) -> Path:
    if kind == "missing":
        return folder / "nope.onnx"
    if kind == "folder":
        return folder
    if kind == "truncated":
        (folder / "cut.onnx").write_bytes(good.read_bytes()[:5000])
        return folder / "cut.onnx"
    if kind == "random_bytes":
        (folder / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
        return folder / "noise.onnx"
    if kind == "future_ir_version":
        path = metadata_model(folder / "future.onnx", ["N", 3, CROP, CROP], ours())
        model = onnx.load(str(path))
        model.ir_version = 99
        onnx.save(model, str(path))
        return path
    if kind == "no_metadata":
        return metadata_model(folder / "plain.onnx", ["N", 3, CROP, CROP], {})
    if kind == "no_config":
        partial = {k: v for k, v in ours().items() if k != "config"}
        return metadata_model(folder / "partial.onnx", ["N", 3, CROP, CROP], partial)
    if kind == "malformed_metadata":
        return metadata_model(folder / "bad_json.onnx", ["N", 3, CROP, CROP], {**ours(), "labels": "[cat"})
    if kind == "wrong_input_shape":
        return metadata_model(folder / "small.onnx", ["N", 3, 32, 32], ours())
    if kind == "one_channel":
        return metadata_model(folder / "grey.onnx", ["N", 1, CROP, CROP], ours())
    if kind in ("absurd_resize", "two_channel_mean"):
        change = {"resize": 100_000} if kind == "absurd_resize" else {"mean": [0.5, 0.5]}
        spec = json.dumps({**PreprocessSpec(resize=73, crop=CROP).to_dict(), **change})
        return metadata_model(folder / f"{kind}.onnx", ["N", 3, CROP, CROP], {**ours(), "preprocessing": spec})
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "nope.onnx does not exist"),
        ("folder", "is a folder; pass its .onnx file"),
        ("truncated", "cut.onnx is not an ONNX model, or it is truncated"),
        ("random_bytes", "noise.onnx is not an ONNX model, or it is truncated"),
        ("future_ir_version", "cannot be loaded by ONNX Runtime: Unsupported model IR version: 99"),
        ("no_metadata", "lacks the 'labels', 'preprocessing', 'config' metadata: it was not exported by Transfer Studio"),
        ("no_config", "lacks the 'config' metadata"),
        ("malformed_metadata", "has malformed metadata"),
        ("wrong_input_shape", r"input of shape \['N', 3, 32, 32\], but its preprocessing produces \['N', 3, 64, 64\]"),
        ("one_channel", r"input of shape \['N', 1, 64, 64\]"),
        ("absurd_resize", r"malformed metadata: 'preprocessing': .*resize \(100000\) must satisfy .* <= 4096"),
        ("two_channel_mean", r"malformed metadata: 'preprocessing': .*mean must be 3 numbers"),
    ],
)
def test_unusable_model_files_raise_model_load_error_with_clear_text(model_path, tmp_path, kind, message):
    with pytest.raises(ModelLoadError, match=message):
        OnnxClassifier(make_bad_file(kind, tmp_path, model_path), providers="cpu")


def test_a_valid_tiny_model_with_our_metadata_loads(tmp_path):
    classifier = OnnxClassifier(metadata_model(tmp_path / "tiny.onnx", ["N", 3, CROP, CROP], ours()), providers="cpu")
    assert classifier.labels == LABELS and classifier.spec.crop == CROP


def test_resolve_model_accepts_files_and_run_folders(tmp_path, model_path):
    assert resolve_model(model_path) == model_path
    assert resolve_model(model_path.parent) == model_path
    assert resolve_model(str(model_path)) == model_path
    with pytest.raises(ModelLoadError, match="has no model.onnx; export the run first"):
        resolve_model(tmp_path)
    with pytest.raises(ModelLoadError, match="not a valid repository name"):
        resolve_model("hf://noslash")
    with pytest.raises(ModelLoadError, match="No model at"):
        resolve_model(tmp_path / "nothing")


def test_an_existing_path_wins_over_a_hub_reference(tmp_path, model_path, monkeypatch):
    # "hf://someone" is also the relative path hf:/someone; when that exists, it is what the user meant.
    local = tmp_path / "hf:" / "someone" / "model.onnx"
    local.parent.mkdir(parents=True)
    local.write_bytes(model_path.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert resolve_model("hf://someone/model.onnx") == Path("hf://someone/model.onnx")
    assert OnnxClassifier(resolve_model("hf://someone"), providers="cpu").labels == LABELS


# ---------------------------------------------------------------------------------------------
# A run folder's variants: the one its export chose, or the one picked


def run_with_variants(folder: Path, export: dict | None, names=("fp32", "int8")) -> Path:
    """A run folder whose variants' files are tiny real classifiers, and `export` as metrics.json's export record."""
    folder.mkdir()
    for name in names:
        classifier_model(folder / ONNX_VARIANTS[name])
    (folder / "metrics.json").write_text(json.dumps({"val": {"accuracy": 0.5}, **({"export": export} if export else {})}))
    return folder


# What an export records now: each variant's accuracy and speed, and the one served by default.
RECORDED = {"variants": {"fp32": {"passed": True, "accuracy": 0.54, "speed": {"images_per_s": 62.0}},
                         "int8": {"passed": True, "accuracy": 0.53, "speed": {"images_per_s": 199.0}}},
            "served": "int8"}


def test_a_run_folder_serves_the_variant_its_export_chose_unless_another_is_picked(tmp_path):
    run = run_with_variants(tmp_path / "run", RECORDED)
    assert resolve_model(run) == run / "model.int8.onnx"
    assert resolve_model_choice(run) == ModelChoice(run / "model.int8.onnx", "int8", "int8")
    assert resolve_model_choice(run, variant="fp32") == ModelChoice(run / "model.onnx", "fp32", "int8")
    assert resolve_model_choice(run, variant="INT8") == resolve_model_choice(run)  # as pickers show it
    assert [(v.name, v.label(62.0), v.default) for v in run_variants(run)] == [
        ("fp32", "fp32 · val 54% · 62 img/s", False), ("int8", "INT8 · val 53% · 199 img/s (3.2x fp32)", True)]
    refusals = {
        "fp16": f"{run} has no fp16 model (model.fp16.onnx); its models: fp32, int8",
        "int4": "Invalid variant 'int4'. Choose one of: fp32, fp16, int8",
    }
    for variant, message in refusals.items():
        with pytest.raises(ModelLoadError, match=f"^{re.escape(message)}$"):
            resolve_model_choice(run, variant=variant)
    single = run / "model.int8.onnx"
    assert resolve_model_choice(single) == ModelChoice(single)  # a file is served as it is
    with pytest.raises(ModelLoadError, match=f"^{re.escape(str(single))} is a single model, served as it is; "):
        resolve_model_choice(single, variant="fp32")


@pytest.mark.parametrize("case", ["never exported with figures", "exported before speeds", "chosen file gone",
                                  "unreadable metrics"])
def test_a_run_whose_export_chose_nothing_serves_fp32(tmp_path, case):
    before = {"variants": {"fp32": {"passed": True, "accuracy": 1.0}, "int8": {"passed": True, "accuracy": 1.0}}}
    export = {"never exported with figures": None, "exported before speeds": before,
              "chosen file gone": RECORDED, "unreadable metrics": None}[case]
    run = run_with_variants(tmp_path / "run", export, ("fp32",) if case == "chosen file gone" else ("fp32", "int8"))
    if case == "unreadable metrics":
        (run / "metrics.json").write_text("{not json")
    assert resolve_model_choice(run) == ModelChoice(run / "model.onnx", "fp32", "fp32")
    labels = [v.label() for v in run_variants(run)]
    assert labels == {"never exported with figures": ["fp32", "INT8"], "exported before speeds": ["fp32 · val 100%",
                      "INT8 · val 100%"], "chosen file gone": ["fp32 · val 54% · 62 img/s"],
                      "unreadable metrics": ["fp32", "INT8"]}[case]


# ---------------------------------------------------------------------------------------------
# Long strips: the work follows the output, not the full resize


@pytest.mark.parametrize("spec_name", ["resnet18-64", "bicubic"])
@pytest.mark.parametrize("size", [(9, 400), (400, 9), (1, 300), (3, 1001), (1001, 3), (82, 3664)])
def test_a_long_strip_is_resized_only_around_its_centre_and_matches_torchvision_within_a_grey_level(size, spec_name):
    spec = SPECS[spec_name]
    image = photo(*size)
    resized = spec.resize_image(image)
    assert min(resized.size) == spec.resize and max(resized.size) == MAX_ASPECT * spec.resize
    ours = spec.to_array(image)
    reference = spec.torch_eval_transform()(image).numpy()
    one_grey_level = 1 / 255 / min(spec.std)
    assert np.abs(ours - reference).max() <= one_grey_level + 1e-5


def test_a_photo_up_to_the_aspect_limit_is_resized_whole():
    spec = SPECS["resnet18-64"]
    image = photo(50, 50 * MAX_ASPECT)
    assert spec.resize_image(image).size == spec.resized_size(*image.size) == (spec.resize, spec.resize * MAX_ASPECT)


def test_a_117_byte_1_by_8000_png_costs_milliseconds(tmp_path):
    # Resized whole, this strip became 256 x 2,048,000 pixels: 5 s and 2 GB for one photo.
    classifier = OnnxClassifier(classifier_model(tmp_path / "imagenet-sized.onnx", crop=224, resize=256), providers="cpu")
    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 8000), (200, 30, 30)).save(path, optimize=True)
    assert path.stat().st_size < 200
    started = time.perf_counter()
    (result,) = classifier.predict_files([path])
    assert "predictions" in result and time.perf_counter() - started < 1.0


# ---------------------------------------------------------------------------------------------
# Photos that cannot be used: reasons in words, no server path


def photo_file(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a photo")
    elif kind == "truncated":
        photo(64, 64).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "bomb":  # an RGBA PNG declaring 12000 x 12000 pixels; Pillow refuses it before decoding a byte
        photo(12, 12).convert("RGBA").save(path)
        data = bytearray(path.read_bytes())
        data[16:24] = (12000).to_bytes(4, "big") * 2
        data[29:33] = __import__("zlib").crc32(bytes(data[12:29])).to_bytes(4, "big")
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "kind, reason",
    [("empty", "not an image (an empty file)"), ("text", "not an image (unrecognised format)"),
     ("truncated", "truncated or corrupt"), ("bomb", f"too large (over {MAX_PIXELS:,} pixels)")],
)
def test_an_unusable_photo_is_refused_with_its_reason_and_no_server_path(tmp_path, kind, reason):
    with pytest.raises(UnreadableImage) as refused:
        load_rgb(photo_file(kind, tmp_path))
    assert str(refused.value).startswith(reason) and str(tmp_path) not in str(refused.value)


def test_pillow_refuses_what_is_over_the_apps_pixel_limit_when_it_opens_a_file():
    # Pillow raises only above twice MAX_IMAGE_PIXELS (once to twice: a warning); Gradio decodes with it too.
    assert 2 * Image.MAX_IMAGE_PIXELS == MAX_PIXELS


def test_a_16_bit_grey_photo_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((20, 30), 40_000, dtype=np.uint16)).save(path)
    assert load_rgb(path).getpixel((0, 0)) == (155, 155, 155)  # 40000 / 257


# ---------------------------------------------------------------------------------------------
# Models no photo classifier needs: refused before ONNX Runtime runs them


def classifier_model(path: Path, extra_nodes=(), initializers=(), functions=(), opsets=(), crop=CROP, resize=73) -> Path:
    """A classifier with our metadata: logits = the input's channel means, plus what `extra_nodes` make of "extra"."""
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"])]
    if extra_nodes:
        nodes += [*extra_nodes, helper.make_node("Add", ["flat", "extra"], ["logits"])]
    else:
        nodes.append(helper.make_node("Identity", ["flat"], ["logits"]))
    graph = helper.make_graph(
        nodes, "classifier", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, crop, crop])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], list(initializers),
    )
    model = helper.make_model(graph, functions=list(functions), ir_version=10,
                              opset_imports=[helper.make_opsetid("", 17), *opsets])
    spec = PreprocessSpec(resize=resize, crop=crop)
    for key, value in {"labels": json.dumps(LABELS), "preprocessing": json.dumps(spec.to_dict()), "config": "{}"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def scalar(name: str, value: float) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [], [value])


def counting_loop(output: str, iterations: int) -> onnx.NodeProto:
    """A Loop adding 1 to a number `iterations` times: a few hundred bytes that can keep a CPU busy for minutes."""
    body = helper.make_graph(
        [helper.make_node("Add", ["total_in", "one"], ["total_out"]), helper.make_node("Identity", ["go_in"], ["go_out"])],
        "count",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("go_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("total_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("go_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("total_out", TensorProto.FLOAT, [])],
        [scalar("one", 1.0)],
    )
    trips = helper.make_node("Constant", [], [f"{output}_trips"], value=helper.make_tensor("t", TensorProto.INT64, [], [iterations]))
    go = helper.make_node("Constant", [], [f"{output}_go"], value=helper.make_tensor("g", TensorProto.BOOL, [], [True]))
    zero = helper.make_node("Constant", [], [f"{output}_zero"], value=scalar("z", 0.0))
    loop = helper.make_node("Loop", [f"{output}_trips", f"{output}_go", f"{output}_zero"], [output], body=body)
    return [trips, go, zero, loop]


def loop_model(path: Path, iterations: int = 20_000_000, **spec) -> Path:
    return classifier_model(path, counting_loop("extra", iterations), **spec)


def if_model(path: Path) -> Path:
    branch = helper.make_graph([helper.make_node("Constant", [], ["v"], value=scalar("c", 0.0))], "branch", [],
                               [helper.make_tensor_value_info("v", TensorProto.FLOAT, [])])
    cond = helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    return classifier_model(path, [cond, helper.make_node("If", ["cond"], ["extra"], then_branch=branch, else_branch=branch)])


def loop_in_a_function_model(path: Path) -> Path:
    function = helper.make_function("hostile", "count", [], ["out"], counting_loop("out", 20_000_000), [helper.make_opsetid("", 17)])
    return classifier_model(path, [helper.make_node("count", [], ["extra"], domain="hostile")], functions=[function],
                            opsets=[helper.make_opsetid("hostile", 1)])


def slow_model(path: Path, convs: int = 400, channels: int = 256, crop: int = 128) -> Path:
    """Only ordinary operators, one shared weight: 2.4 MB that take half a minute for one photo on two cores."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.05, shape).astype(np.float32), name) for name, shape in
               [("w_in", (channels, 3, 3, 3)), ("w", (channels, channels, 3, 3)), ("w_out", (3, channels, 1, 1))]]
    nodes = [helper.make_node("Conv", ["input", "w_in"], ["x0"], pads=[1, 1, 1, 1])]
    nodes += [helper.make_node("Conv", [f"x{i}", "w"], [f"x{i + 1}"], pads=[1, 1, 1, 1]) for i in range(convs)]
    nodes += [helper.make_node("Conv", [f"x{convs}", "w_out"], ["y"]), helper.make_node("ReduceMean", ["y"], ["m"], axes=[2, 3], keepdims=0),
              helper.make_node("Mul", ["m", "zero"], ["extra"])]
    return classifier_model(path, nodes, [*weights, scalar("zero", 0.0)], crop=crop, resize=crop)


@pytest.mark.parametrize("build, operator", [(loop_model, "Loop"), (if_model, "If"), (loop_in_a_function_model, "Loop")])
def test_a_model_with_a_control_flow_operator_is_refused_before_it_runs(tmp_path, build, operator):
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=f"hostile.onnx uses '{operator}', a control-flow operator"):
        OnnxClassifier(build(tmp_path / "hostile.onnx"), providers="cpu")
    assert time.perf_counter() - started < 2


def test_a_model_with_weights_in_another_file_is_refused(tmp_path):
    path = classifier_model(tmp_path / "split.onnx", [helper.make_node("Mul", ["flat", "w"], ["extra"])],
                            [numpy_helper.from_array(np.ones(3, np.float32), "w")])
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    with pytest.raises(ModelLoadError, match="split.onnx keeps its weights in other files"):
        OnnxClassifier(path, providers="cpu")


def test_models_over_the_size_and_operator_limits_are_refused(tmp_path, monkeypatch):
    path = classifier_model(tmp_path / "big.onnx")
    monkeypatch.setattr(runtime, "MAX_NODES", 2)
    with pytest.raises(ModelLoadError, match="big.onnx has 3 operators; models over 2 are refused"):
        OnnxClassifier(path, providers="cpu")
    monkeypatch.setattr(runtime, "MAX_MODEL_BYTES", 100)
    for model in (path, path.read_bytes()):
        with pytest.raises(ModelLoadError, match=r"MB; models over 0 MB are refused"):
            OnnxClassifier(model, providers="cpu")


def test_a_model_slower_than_the_warm_up_limit_is_refused_in_about_that_time(tmp_path):
    path = slow_model(tmp_path / "slow.onnx")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="slow.onnx takes longer than 0.3 s to classify one photo"):
        OnnxClassifier(path, providers="cpu", warmup_limit_s=0.3)
    assert time.perf_counter() - started < 5  # unbounded, its first photo takes half a minute on two cores


def test_messages_name_the_model_as_the_caller_says(tmp_path, model_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(model_path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match=r"^cut.onnx is not an ONNX model, or it is truncated$"):
        OnnxClassifier(cut, providers="cpu", name="cut.onnx")
