"""Serving an exported model with ONNX Runtime: OnnxClassifier, execution-provider choice, model references.

A run folder serves one of its exported variants (fp32, fp16, INT8): the one its export chose
(metrics.json["export"]["served"]: the fastest within 1 point of fp32's validation accuracy) unless
the caller picks another; a run exported before that choice was recorded serves fp32.

Imports no torch (directly or through another module): a server needs only onnxruntime, numpy and
PIL. Preprocessing is the PreprocessSpec stored in the .onnx file's metadata, the one training used.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.preprocess import PreprocessSpec, UnreadableImage, load_rgb, to_rgb
from models.run_folder import METRICS, ONNX_VARIANTS, RunFolder, RunFolderError

# The metadata_props keys every exported model carries (models.export writes them).
METADATA_KEYS = ("labels", "preprocessing", "config")
INPUT_NAME = "input"
LOGITS_NAME = "logits"
PROVIDER_CHOICES = ("auto", "cpu", "cuda")

# HEURISTIC: EXHAUSTIVE would benchmark conv algorithms again for every new batch size a server sees.
CUDA_PROVIDER_OPTIONS = {
    "device_id": 0,
    "cudnn_conv_algo_search": "HEURISTIC",
    "prefer_nhwc": "1",
    "do_copy_in_default_stream": "1",
}


# A photo classifier is a feed-forward graph. What one never holds is refused before ONNX Runtime sees the
# file: operators that carry subgraphs (Loop, If, Scan...) run for as long as their author likes (a
# 707-byte Loop of 20M steps held a CPU for 22 s), weights in other files would be read from wherever the
# file says, and sizes far beyond a ResNet-152 (240 MB, ~500 nodes in fp32, ~1,500 in INT8) only cost memory.
MAX_MODEL_BYTES = 1024 * 1024 * 1024
MAX_NODES = 20_000


class ModelLoadError(ValueError):
    """A model that cannot be served; the message says which file and what is wrong with it."""


# How variants are named to people: "INT8 · val 53% · 199 img/s (3.2x fp32)".
VARIANT_NAMES = {"fp32": "fp32", "fp16": "fp16", "int8": "INT8"}


@dataclass(frozen=True)
class RunVariant:
    """One exported model of a run folder, with the figures its export recorded (None where it recorded none)."""

    name: str  # a key of ONNX_VARIANTS: "fp32", "fp16", "int8"
    path: Path
    accuracy: float | None  # on the validation inputs the export was checked on
    images_per_s: float | None  # measured at export, on the machine that exported it
    default: bool  # the one the run serves unless another is picked

    def label(self, fp32_images_per_s: float | None = None) -> str:
        """For pickers: "INT8 · val 53% · 199 img/s (3.2x fp32)", "fp32 · val 54% · 62 img/s"."""
        parts = [VARIANT_NAMES[self.name]]
        if self.accuracy is not None:
            parts.append(f"val {self.accuracy:.0%}")
        if self.images_per_s:
            speed = f"{self.images_per_s:.0f} img/s"
            if self.name != "fp32" and fp32_images_per_s:
                speed += f" ({self.images_per_s / fp32_images_per_s:.1f}x fp32)"
            parts.append(speed)
        return " · ".join(parts)


@dataclass(frozen=True)
class ModelChoice:
    """The .onnx file a reference resolved to, and for a run folder which of its variants that is."""

    path: Path
    variant: str | None = None  # None: a single .onnx file, served as it is
    default: str | None = None  # the run's default variant


def run_variants(run_dir: str | os.PathLike) -> list[RunVariant]:
    """A run folder's exported models whose files exist, fp32 first, with their export figures.

    The default is the variant the export chose (metrics.json["export"]["served"]); fp32 for a run
    exported before that choice was recorded, or whose chosen file is gone.
    """
    run = RunFolder(run_dir)
    try:
        export = (run.read_metrics() if run.file(METRICS).is_file() else {}).get("export") or {}
        records = export.get("variants") or {}
    except (RunFolderError, AttributeError):  # unreadable figures do not stop the model being served
        export, records = {}, {}
    present = [name for name in ONNX_VARIANTS if run.onnx(name).is_file()]
    default = export.get("served") if export.get("served") in present else "fp32"
    variants = []
    for name in present:
        record = records.get(name) if isinstance(records.get(name), dict) else {}
        speed = record.get("speed") if isinstance(record.get("speed"), dict) else {}
        accuracy, images_per_s = record.get("accuracy"), speed.get("images_per_s")
        variants.append(RunVariant(
            name, run.onnx(name),
            accuracy if isinstance(accuracy, (int, float)) else None,
            images_per_s if isinstance(images_per_s, (int, float)) else None,
            name == default,
        ))
    return variants


def choose_run_variant(run_dir: str | os.PathLike, variant: str | None = None, name: str | None = None) -> ModelChoice:
    """The run folder's default variant, or `variant` when given; ModelLoadError naming the run (`name`) if absent."""
    name = name or str(run_dir)
    variants = {v.name: v for v in run_variants(run_dir)}
    if "fp32" not in variants:
        fp32 = RunFolder(run_dir).onnx()
        raise ModelLoadError(f"{name} has no exported model yet ({fp32.name})")
    default = next(v.name for v in variants.values() if v.default)
    variant = (variant or "").strip().lower() or default  # "INT8", as pickers show it, names int8
    if variant not in ONNX_VARIANTS:
        raise ModelLoadError(f"Invalid variant {variant!r}. Choose one of: {', '.join(ONNX_VARIANTS)}")
    if variant not in variants:
        raise ModelLoadError(f"{name} has no {VARIANT_NAMES[variant]} model ({ONNX_VARIANTS[variant]}); "
                             f"its models: {', '.join(variants)}")
    return ModelChoice(variants[variant].path, variant, default)


def resolve_model(ref: str | os.PathLike, hub_login: bool = True) -> Path:
    """The .onnx file a model reference names: an .onnx path, or a run folder (its default variant)."""
    return resolve_model_choice(ref, hub_login).path


def resolve_model_choice(ref: str | os.PathLike, hub_login: bool = True, variant: str | None = None) -> ModelChoice:
    """The .onnx file a model reference names, and which variant of a run folder it is.

    A run folder serves its default variant, or `variant`; anything else is served as it is, and
    naming a variant for it is an error. An existing path always wins; `hf://user/name` downloads
    the repo's model.onnx (cached by huggingface_hub), with this machine's Hub login only when `hub_login`.
    """
    path = Path(ref)
    if path.is_dir():
        model = RunFolder(path).onnx()
        if not model.is_file():
            raise ModelLoadError(f"{path} has no {model.name}; export the run first: python -m models export {path}")
        return choose_run_variant(path, variant)
    if not path.is_file() and not str(ref).startswith("hf://"):
        raise ModelLoadError(f"No model at {ref}: expected an .onnx file or a run folder")
    if (variant or "").strip():
        raise ModelLoadError(f"{ref} is a single model, served as it is; a variant picks one of a run folder's models")
    if path.is_file():
        return ModelChoice(path)
    from models.hub import HubError, download_model

    try:
        return ModelChoice(download_model(str(ref), use_login=hub_login))
    except HubError as exc:
        raise ModelLoadError(str(exc)) from None


def available_threads() -> int:
    """CPU cores this process may use (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(usable, reason): whether ONNX Runtime's CUDA provider can run here, checked without error logs.

    Asking ORT for CUDA on a machine without a driver logs errors before it falls back, so the
    driver and a device are checked first through libcuda itself.
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA execution provider (install onnxruntime-gpu)"
    try:
        libcuda = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False, "no NVIDIA driver found (libcuda could not be loaded)"
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return False, "the NVIDIA driver reports no usable GPU"
    if hasattr(ort, "preload_dlls"):
        # Finds the CUDA/cuDNN libraries that pip's nvidia-* wheels (torch's) installed. It prints
        # warnings to stdout, which must stay clean for `predict --json`.
        with contextlib.redirect_stdout(sys.stderr):
            ort.preload_dlls()
    return True, ""


def _providers_for(choice: str) -> list:
    if choice not in PROVIDER_CHOICES:
        raise ValueError(f"Invalid providers {choice!r}. Choose one of: {', '.join(PROVIDER_CHOICES)}")
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    usable, reason = cuda_status()
    if usable:
        return [("CUDAExecutionProvider", dict(CUDA_PROVIDER_OPTIONS)), "CPUExecutionProvider"]
    if choice == "cuda":
        raise ModelLoadError(f"CUDA was requested but cannot be used: {reason}")
    return ["CPUExecutionProvider"]


def _ort_message(exc: Exception) -> str:
    """ORT's error text without its error-code prefix and C++ source location."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .*? failed:)?", "", str(exc).strip())
    return re.sub(r"\S+\.(?:cc|h):\d+ \S+\(.*?\) ", "", text)


def _shown(text: str, limit: int = 40) -> str:
    """Text from a file, printable and short, quoted."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _excerpt(exc: BaseException, limit: int = 120) -> str:
    """An exception as a short, printable line: its type and the start of its text."""
    text = "".join(ch if ch.isprintable() else " " for ch in " ".join(str(exc).split()))
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class OnnxClassifier:
    """An exported classifier: labels, preprocessing and config read from the .onnx file itself.

    Safe to share between threads: InferenceSession.run is thread-safe and each IO-binding call
    makes its own binding.
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        providers: str = "auto",
        intra_op_threads: int | None = None,
        use_io_binding: bool | None = None,
        name: str | None = None,
        warmup_limit_s: float | None = None,
    ):
        """`name`: how messages call the file (default: its path as given; a server names it by base name).
        `warmup_limit_s`: refuse a model whose first photo takes longer (None: no limit, for one's own models)."""
        import onnxruntime as ort

        self.name = name or ("the model bytes" if isinstance(model, bytes) else str(model))
        if not isinstance(model, bytes):
            path = Path(model)
            if path.is_dir():
                raise ModelLoadError(f"{self.name} is a folder; pass its .onnx file (resolve_model finds it)")
            if not path.is_file():
                raise ModelLoadError(f"Model file {self.name} does not exist")
            # A path, not its bytes: a session made from bytes keeps ~1 model size more memory for its life.
            model = str(path)
        self._check_graph(model)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads or available_threads()
        options.log_severity_level = 3  # errors only: no provider-fallback or node-placement warnings
        provider_list = _providers_for(providers)
        try:
            self.session = ort.InferenceSession(model, options, providers=provider_list)
        except Exception as exc:  # ORT raises InvalidProtobuf, Fail, InvalidGraph... for unusable files
            if type(exc).__name__ == "InvalidProtobuf":
                raise ModelLoadError(f"{self.name} is not an ONNX model, or it is truncated") from None
            raise ModelLoadError(f"{self.name} cannot be loaded by ONNX Runtime: {_ort_message(exc)}") from None
        self.provider = self.session.get_providers()[0]
        if providers == "cuda" and self.provider != "CUDAExecutionProvider":
            raise ModelLoadError("CUDA was requested but ONNX Runtime could not start its CUDA provider")
        self.labels, self.spec, self.config = self._read_metadata()
        self._check_signature()
        self._check_runs(warmup_limit_s)
        self.use_io_binding = self.provider == "CUDAExecutionProvider" if use_io_binding is None else use_io_binding
        self._device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self._device_id = CUDA_PROVIDER_OPTIONS["device_id"] if self._device == "cuda" else 0

    def _too_big(self, size: int) -> str:
        return f"{self.name} is {size / 2**20:,.0f} MB; models over {MAX_MODEL_BYTES / 2**20:,.0f} MB are refused"

    def _check_graph(self, model: str | bytes) -> None:
        """Refuse, before ONNX Runtime loads it, what no photo classifier holds (see MAX_MODEL_BYTES)."""
        import onnx
        from google.protobuf.message import DecodeError

        size = len(model) if isinstance(model, bytes) else os.path.getsize(model)
        if size > MAX_MODEL_BYTES:
            raise ModelLoadError(self._too_big(size))
        try:
            proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(model, load_external_data=False)
        except (DecodeError, RuntimeError, ValueError):
            raise ModelLoadError(f"{self.name} is not an ONNX model, or it is truncated") from None
        nodes = [node for function in proto.functions for node in function.node]
        nodes += proto.graph.node
        if len(nodes) > MAX_NODES:
            raise ModelLoadError(f"{self.name} has {len(nodes):,} operators; models over {MAX_NODES:,} are refused")
        for node in nodes:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise ModelLoadError(
                    f"{self.name} uses {_shown(node.op_type)}, a control-flow operator; a photo classifier needs none"
                )
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            raise ModelLoadError(f"{self.name} keeps its weights in other files; export the model as one file")

    def _read_metadata(self) -> tuple[list[str], PreprocessSpec, dict]:
        try:
            # ONNX Runtime decodes the values here: bytes that are not UTF-8 fail in this call.
            meta = dict(self.session.get_modelmeta().custom_metadata_map)
        except Exception as exc:  # noqa: BLE001 -- any failure to read it means the file is unusable
            raise ModelLoadError(f"{self.name} has unreadable metadata ({_excerpt(exc)})") from None
        missing = [key for key in METADATA_KEYS if key not in meta]
        if missing:
            raise ModelLoadError(
                f"{self.name} lacks the {', '.join(repr(k) for k in missing)} metadata: it was not exported by "
                "Transfer Studio (python -m models export RUN_DIR writes it)"
            )
        parsed = {}
        for key in METADATA_KEYS:
            try:
                parsed[key] = json.loads(meta[key])
                if key == "preprocessing":
                    parsed[key] = PreprocessSpec.from_dict(parsed[key])
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise ModelLoadError(f"{self.name} has malformed metadata: {key!r}: {_excerpt(exc)}") from None
        labels, spec, config = parsed["labels"], parsed["preprocessing"], parsed["config"]
        if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
            raise ModelLoadError(f"{self.name}: the 'labels' metadata must be a non-empty list of names")
        if len(set(labels)) != len(labels):
            raise ModelLoadError(f"{self.name}: the 'labels' metadata repeats a name")
        if not isinstance(config, dict):
            raise ModelLoadError(f"{self.name}: the 'config' metadata must be a JSON object")
        if isinstance(config.get("train"), dict) and "labels" in config:
            config = config["train"]  # files exported before 2026-12 nested the whole config.json here
        return labels, spec, config

    def _check_signature(self) -> None:
        try:
            # Names and symbolic dimensions are decoded here: bytes that are not UTF-8 fail in these calls.
            inputs = [(i.name, i.type, list(i.shape)) for i in self.session.get_inputs()]
            outputs = {o.name: list(o.shape) for o in self.session.get_outputs()}
        except Exception as exc:  # noqa: BLE001 -- any failure to read it means the file is unusable
            message = f"{self.name} has an unreadable input or output signature ({_excerpt(exc)})"
            raise ModelLoadError(message) from None
        expected = ["N", 3, self.spec.crop, self.spec.crop]
        if len(inputs) != 1 or inputs[0][:2] != (INPUT_NAME, "tensor(float)"):
            found = [(name, kind) for name, kind, _ in inputs]
            raise ModelLoadError(f"{self.name} should take one float32 input named {INPUT_NAME!r}, found {found}")
        shape = inputs[0][2]
        if len(shape) != 4 or shape[1:] != expected[1:]:
            raise ModelLoadError(
                f"{self.name} takes input of shape {shape}, but its preprocessing produces {expected} "
                f"(crop {self.spec.crop})"
            )
        if LOGITS_NAME not in outputs:
            raise ModelLoadError(f"{self.name} has no {LOGITS_NAME!r} output (outputs: {sorted(outputs)})")
        logits = outputs[LOGITS_NAME]
        if len(logits) != 2:
            raise ModelLoadError(
                f"{self.name} has a {LOGITS_NAME!r} output of shape {logits}; logits must be [batch, classes]"
            )
        classes = logits[-1]
        if isinstance(classes, int) and classes != len(self.labels):
            raise ModelLoadError(f"{self.name} outputs {classes} classes but its metadata lists {len(self.labels)} labels")

    def _check_runs(self, limit_s: float | None) -> None:
        """One inference on a blank photo: a damaged graph can load and still fail in every run.

        It doubles as the warm-up, so the first request does not pay for ORT's lazy initialisation.
        With `limit_s`, ORT is told to stop the run after that many seconds and the model is refused.
        """
        import onnxruntime as ort

        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failure becomes this ModelLoadError, not an error log as well
        blank = np.zeros((1, 3, self.spec.crop, self.spec.crop), dtype=np.float32)
        timer = threading.Timer(limit_s, setattr, (quiet, "terminate", True)) if limit_s else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            logits = self.session.run([LOGITS_NAME], {INPUT_NAME: blank}, quiet)[0]
        except Exception as exc:  # noqa: BLE001 -- ORT raises Fail, RuntimeException... for a graph that cannot run
            if quiet.terminate:
                raise ModelLoadError(
                    f"{self.name} takes longer than {limit_s:g} s to classify one photo; this server refuses it"
                ) from None
            raise ModelLoadError(f"{self.name} loads but fails to run: {_ort_message(exc)}") from None
        finally:
            if timer:
                timer.cancel()
        if logits.shape != (1, len(self.labels)):  # the class count can be symbolic in the signature
            raise ModelLoadError(
                f"{self.name} outputs logits of shape {list(logits.shape)} for one photo but its metadata lists "
                f"{len(self.labels)} labels"
            )

    def preprocess(self, image: Image.Image | str | os.PathLike) -> np.ndarray:
        """A PIL image or a photo's path -> the (3, crop, crop) float32 input; UnreadableImage if unusable."""
        if isinstance(image, Image.Image):
            image = image if image.mode == "RGB" else to_rgb(image)
        else:
            image = load_rgb(image)
        return self.spec.to_array(image)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed NCHW float32 inputs -> logits, shape (N, num_classes)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        expected = (3, self.spec.crop, self.spec.crop)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(f"Expected a batch of shape (N, {', '.join(map(str, expected))}), got {batch.shape}")
        if not self.use_io_binding:
            return self.session.run([LOGITS_NAME], {INPUT_NAME: batch})[0]
        import onnxruntime as ort

        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(batch, self._device, self._device_id))
        binding.bind_output(LOGITS_NAME, self._device, self._device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def predict(self, images, top_k: int = 5, batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """PIL images or paths -> for each, the top_k (label, probability) pairs, most likely first."""
        images = list(images)
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            logits = self.predict_arrays(np.stack([self.preprocess(image) for image in chunk]))
            results.extend(self._top_k(softmax(logits), top_k))
        return results

    def predict_files(self, paths, top_k: int = 5, batch_size: int = 32) -> list[dict]:
        """For each path, in order: {"path", "predictions": [{"label", "score"}]} or {"path", "error"}."""
        paths = [str(p) for p in paths]
        results: list[dict] = []
        for start in range(0, len(paths), batch_size):
            chunk = [{"path": p} for p in paths[start : start + batch_size]]
            arrays = []
            for entry in chunk:
                try:
                    arrays.append(self.preprocess(entry["path"]))
                except UnreadableImage as exc:
                    entry["error"] = f"unreadable image: {exc}"
            readable = [entry for entry in chunk if "error" not in entry]
            if readable:
                probabilities = softmax(self.predict_arrays(np.stack(arrays)))
                for entry, top in zip(readable, self._top_k(probabilities, top_k)):
                    entry["predictions"] = [{"label": label, "score": score} for label, score in top]
            results.extend(chunk)
        return results

    def _top_k(self, probabilities: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
        k = max(1, min(top_k, len(self.labels)))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.labels[i], float(row[i])) for i in idx] for row, idx in zip(probabilities, order)]
