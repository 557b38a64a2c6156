"""Sharing trained models on the Hugging Face Hub: push a run, load a model back, make a demo Space.

push_run() uploads a run folder (ONNX model and variants, PyTorch weights, config, labels, metrics,
a confusion-matrix image and a generated model card) to a model repo in one commit; pushing again
updates the same repo. download_model() fetches a pushed model.onnx for OnnxClassifier.
make_space() writes a standalone classify-only Gradio app for one model; push_space() uploads it.

Everything goes through huggingface_hub's own APIs (imported inside the functions, so importing this
module costs nothing). Failures surface as HubError with a plain message. The token comes from the
argument, else this machine's login (HF_TOKEN, else the cached one) unless the caller says
`use_login=False`, as an app shared with strangers does: its owner's login never acts for a
visitor. A token is never printed, logged, written to a file or put in a message. No gradio and no
torch imports here (BACKBONES is read lazily for the card).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from models.run_folder import (
    CONFIG,
    EXPERIMENT,
    HISTORY,
    METRICS,
    ONNX_VARIANTS,
    WEIGHTS,
    RunFolder,
    RunFolderError,
    RunRecord,
)

logger = logging.getLogger(__name__)

LICENSE = "apache-2.0"
DATASET_NAME = "user photos"
TAGS = ["image-classification", "onnx", "resnet", "transfer-learning", "transfer-studio"]
# What a push uploads from the run folder, besides the files it generates (labels, card, figure);
# those the run lacks (experiment.json of a run trained on its own) are left out. The history and the
# experiment record let a pulled run be compared with others (its curves, its series).
PUSHED_FILES = (*ONNX_VARIANTS.values(), CONFIG, METRICS, HISTORY, EXPERIMENT, WEIGHTS)
HF_PREFIX = "hf://"
TEMPLATE_DIR = Path(__file__).resolve().parent / "space_template"

# What a Hugging Face user access token looks like (hf_ + 34 letters and digits); never echoed.
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{30,}")

NO_TOKEN = (
    "No Hugging Face token: log in with `hf auth login`, set HF_TOKEN, "
    "or paste a token with write access (https://huggingface.co/settings/tokens)"
)
# Where this machine's login may not stand in (a shared app), only the caller's own token will do.
NO_OWN_TOKEN = "No Hugging Face token: give your own token with write access (https://huggingface.co/settings/tokens)"


class HubError(RuntimeError):
    """A Hub operation that failed; the message says why in plain words and never holds the token."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status the Hub answered, when there was one


# ---------------------------------------------------------------------------------------------
# Pushing a run


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
    commit_message: str | None = None,
    use_login: bool = True,
) -> str:
    """Upload a run folder to the model repo `repo_id` in one commit; returns the repo URL.

    The repo is created when missing and updated otherwise; ONNX variants from an earlier push that
    this run lacks are deleted in the same commit. A private push into an existing public repo is
    refused (create_repo keeps an existing repo's visibility). Without `token`, this machine's login
    is used unless `use_login` is False.
    """
    run = _check_run(run_dir)
    repo_id = check_repo_id(repo_id)
    token = resolve_token(token, use_login)
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors("push", repo_id, api.endpoint, token) as context:
        context["user"] = api.whoami(token=token).get("name")
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.model_info(repo_id)
        _check_visibility(info, private, repo_id)
        existing = {s.rfilename for s in (info.siblings or [])}
        with tempfile.TemporaryDirectory(prefix="hub-push-") as tmp:
            staging = stage_run(run.path, repo_id, Path(tmp))
            operations = [
                CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in sorted(staging.iterdir())
            ]
            # A variant left from an earlier push would not match this model: remove it.
            stale = [name for name in ONNX_VARIANTS.values() if name in existing and not (staging / name).exists()]
            operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
            api.create_commit(
                repo_id,
                operations=operations,
                commit_message=commit_message or _default_commit_message(run),
            )
    logger.info("Pushed %s to %s", run.path, url)
    return str(url)


def stage_run(run_dir: str | os.PathLike, repo_id: str, staging: str | os.PathLike) -> Path:
    """Write into `staging` exactly the files push_run uploads (large ones hard-linked when possible)."""
    run, staging = _check_run(run_dir), Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    for name in PUSHED_FILES:
        if run.file(name).is_file():
            _link_or_copy(run.file(name), staging / name)
    record, metrics, _ = _read_run(run)
    (staging / "labels.json").write_text(json.dumps(record.labels, indent=2) + "\n", encoding="utf-8")
    render_confusion_matrix(metrics, record.labels, staging / "confusion_matrix.png")
    (staging / "README.md").write_text(str(model_card(run.path, repo_id)), encoding="utf-8")
    return staging


# ---------------------------------------------------------------------------------------------
# The model card


def model_card(run_dir: str | os.PathLike, repo_id: str):
    """The run's huggingface_hub.ModelCard: Hub metadata, what and how it was trained, results, usage."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    record, metrics, report = _read_run(RunFolder(run_dir))
    train, name = record.train, repo_id.split("/")[-1]

    eval_results = []
    for split, split_name in (("val", "validation"), ("test", "test")):
        result = metrics.get(split)
        if not result:
            continue
        for metric, key, pretty in (("accuracy", "accuracy", "Accuracy"), ("f1", "macro_f1", "Macro F1")):
            if result.get(key) is None:
                continue
            eval_results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image Classification",
                    dataset_type="imagefolder",
                    dataset_name=DATASET_NAME,
                    dataset_split=split_name,
                    metric_type=metric,
                    metric_name=f"{pretty} ({split_name})",
                    metric_value=round(float(result[key]), 4),
                    metric_args={"average": "macro"} if metric == "f1" else None,
                )
            )
    data = ModelCardData(
        library_name="onnx",
        pipeline_tag="image-classification",
        license=LICENSE,
        tags=list(TAGS),
        base_model=_base_model(train),
        model_name=name,
        eval_results=eval_results or None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
    )
    body = _card_body(name, repo_id, record, metrics, report)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _base_model(train: dict) -> str | None:
    # Only ImageNet starts have a public base model; random or local-file weights have none to cite.
    if train.get("weights") != "imagenet":
        return None
    from models.backbones import BACKBONES

    backbone = BACKBONES.get(train.get("arch"))
    return backbone.hub_copy if backbone else None


STRATEGY_WORDS = {
    "linear-probe": "linear probe: the backbone stays frozen, only the new classification head is trained",
    "finetune": "fine-tuning: the head alone first, then every layer (head at a higher learning rate)",
    "full": "full training: every layer trained at one learning rate",
}


def _card_body(name: str, repo_id: str, record: RunRecord, metrics: dict, report: dict) -> str:
    train, labels, prep = record.train, list(record.labels), record.preprocessing
    arch = train.get("arch", "resnet")
    lines = [
        f"# {name}",
        "",
        f"An image classifier for {len(labels)} classes ({', '.join(labels)}), fine-tuned from a torchvision "
        f"{_arch_words(arch)} with Transfer Studio. `model.onnx` is self-contained: its class names and "
        "preprocessing are stored in its metadata, so ONNX Runtime, NumPy and Pillow are enough to run it.",
        "",
        "## Training data",
        "",
    ]
    counts = report.get("counts") or {}
    if counts:
        splits = [s for s in ("train", "val", "test") if sum(counts.get(s, {}).values())]
        total = sum(sum(counts[s].values()) for s in splits)
        lines += [
            f"{total} of the user's own photos ({DATASET_NAME}), one folder per class:",
            "",
            "| class | " + " | ".join(_split_word(s) for s in splits) + " |",
            "|---|" + "---:|" * len(splits),
        ]
        for label in labels:
            lines.append(f"| {_md(label)} | " + " | ".join(str(counts[s].get(label, 0)) for s in splits) + " |")
    else:
        lines.append(f"The user's own photos ({DATASET_NAME}) of {len(labels)} classes.")

    schedule = train.get("schedule") or {}
    params = ", ".join(f"{k}={v}" for k, v in (schedule.get("params") or {}).items())
    stepped = f"stepped per {schedule.get('step_per', 'epoch')}"
    warmup = f", {schedule['warmup_epochs']} warm-up epoch(s)" if schedule.get("warmup_epochs") else ""
    lines += [
        "",
        "## Training",
        "",
        f"- Backbone: {_arch_words(arch)} (torchvision), {_weights_words(train)}",
        f"- Strategy: {STRATEGY_WORDS.get(train.get('strategy'), train.get('strategy'))}",
        f"- Optimizer: {_optimizer_words(train)}",
        f"- Schedule: {schedule.get('scheduler')}"
        + (f" ({params})" if params else "")
        + f", learning rate {schedule.get('lr')}, {schedule.get('epochs')} epochs{warmup}, {stepped}",
        f"- Epochs run: {metrics.get('epochs_run')}, best epoch {metrics.get('best_epoch')} (chosen on validation)"
        + (f", stopped by {metrics['stopped']}" if metrics.get("stopped") else ""),
        f"- Input: shorter side resized to {prep.resize} px ({prep.interpolation}), "
        f"centre crop {prep.crop} x {prep.crop}, ImageNet mean/std normalisation",
        f"- Batch size {train.get('batch_size')}, augmentation: {train.get('augment')}"
        + (f", label smoothing {train['label_smoothing']}" if train.get("label_smoothing") else "")
        + (", class-weighted loss" if train.get("class_weighted") else ""),
        "",
        "## Results",
        "",
        "| split | photos | accuracy | macro F1 |",
        "|---|---:|---:|---:|",
    ]
    evaluated = [(s, metrics[s]) for s in ("val", "test") if metrics.get(s)]
    for split, result in evaluated:
        lines.append(
            f"| {_split_word(split)} | {result.get('count', '')} | {_pct(result.get('accuracy'))} | "
            f"{_pct(result.get('macro_f1'))} |"
        )
    for split, result in evaluated:
        lines += [
            "",
            f"Per class, {_split_word(split)}:",
            "",
            "| class | precision | recall | F1 | photos |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {_md(row['label'])} | {_pct(row['precision'])} | {_pct(row['recall'])} | {_pct(row['f1'])} | "
            f"{row['support']} |"
            for row in result.get("per_class", [])
        ]
    lines += ["", "![Confusion matrix](confusion_matrix.png)", ""]
    if metrics.get("note"):
        lines += [f"Note: {metrics['note']}", ""]

    # Only variants that passed their check exist on disk (a failed one is deleted at export).
    variants = {k: v for k, v in (((metrics.get("export") or {}).get("variants")) or {}).items() if v.get("passed")}
    lines += [
        "## Files",
        "",
        f"- `model.onnx`: the model (float32 input `input` of shape [N, 3, {prep.crop}, {prep.crop}], "
        "outputs `logits` and `probabilities`; labels, preprocessing and training config in its metadata)",
    ]
    if "fp16" in variants:
        lines.append("- `model.fp16.onnx`: float16 weights and compute, for GPUs (same input and outputs)")
    if "int8" in variants:
        lines.append("- `model.int8.onnx`: INT8 quantized, for faster CPU inference (same input and outputs)")
    lines += [
        f"- `model.safetensors`: the PyTorch weights (torchvision `{arch}` with a {len(labels)}-class `fc`)",
        "- `config.json`: the training configuration; `labels.json`: the class names in output order",
        "- `metrics.json`: every evaluation figure; `confusion_matrix.png`: the image above",
        "- `history.json`: the losses, accuracies and learning rate of every epoch",
        "",
        "## Usage",
        "",
        "```bash",
        "pip install onnxruntime numpy pillow huggingface_hub",
        "```",
        "",
        "```python",
        usage_snippet(repo_id),
        "```",
        "",
    ]
    return "\n".join(lines)


def usage_snippet(repo_id: str) -> str:
    """Python that downloads the pushed model.onnx and prints the top-3 classes of photo.jpg (no other deps)."""
    return f'''import json

import numpy as np
import onnxruntime as ort
from huggingface_hub import hf_hub_download
from PIL import Image, ImageOps

path = hf_hub_download({json.dumps(repo_id)}, "model.onnx")  # a private repo needs `hf auth login` first
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
labels = json.loads(meta["labels"])
prep = json.loads(meta["preprocessing"])  # resize, crop, mean, std, interpolation

image = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB")
# Shorter side to prep["resize"], then a centre crop of prep["crop"], as in training.
w, h = image.size
r = prep["resize"]
size = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
resample = getattr(Image.Resampling, prep.get("interpolation", "bilinear").upper())
image = image.resize(size, resample)
c = prep["crop"]
left, top = int(round((size[0] - c) / 2)), int(round((size[1] - c) / 2))
image = image.crop((left, top, left + c, top + c))
x = (np.asarray(image, dtype=np.float32) / 255 - np.float32(prep["mean"])) / np.float32(prep["std"])
x = x.transpose(2, 0, 1)[None].astype(np.float32)  # HWC -> a batch of one CHW image

logits = session.run(["logits"], {{"input": x}})[0][0]
probs = np.exp(logits - logits.max())
probs /= probs.sum()
for i in np.argsort(-probs)[:3]:
    print(f"{{labels[i]}}: {{probs[i]:.1%}}")'''


def render_confusion_matrix(metrics: dict, labels: list[str], path: str | os.PathLike) -> Path:
    """A PNG of the validation (and test) confusion matrices, as the app draws them."""
    from models.metrics import confusion_figure

    panels = [(_split_word(s), metrics[s]["confusion_matrix"]) for s in ("val", "test")
              if (metrics.get(s) or {}).get("confusion_matrix")]
    path = Path(path)
    confusion_figure(panels, labels).savefig(path, format="png", dpi=100)
    return path


# ---------------------------------------------------------------------------------------------
# Loading back


def parse_hub_ref(ref) -> str | None:
    """`hf://user/name` -> "user/name"; None when `ref` is not a Hub reference. HubError if it names no valid repo."""
    if not isinstance(ref, str) or not ref.startswith(HF_PREFIX):
        return None
    return check_repo_id(ref[len(HF_PREFIX) :].strip("/"))


def download_model(
    repo_id: str, token: str | None = None, endpoint: str | None = None, revision: str | None = None,
    use_login: bool = True,
) -> Path:
    """The local path of `repo_id`'s model.onnx, downloaded into (or found in) the Hugging Face cache.

    Without `use_login` (a visitor of a shared app) only public repos are reachable: the machine's
    login would let a stranger read its owner's private models.
    """
    repo_id = parse_hub_ref(repo_id) or check_repo_id(repo_id)
    from huggingface_hub import constants, hf_hub_download

    # No token is fine for a public repo; the cached login (or HF_TOKEN) is used when there is one.
    # False, not None: huggingface_hub reads the cached login itself when given None.
    token = token or (_login_token() if use_login else False)
    with _hub_errors("download", repo_id, endpoint or constants.ENDPOINT, token, revision=revision):
        # A pushed repo holds the run folder's files under their own names.
        return Path(hf_hub_download(repo_id, ONNX_VARIANTS["fp32"], revision=revision, token=token, endpoint=endpoint))


# ---------------------------------------------------------------------------------------------
# A Gradio Space for one model


def make_space(run_dir: str | os.PathLike, dest: str | os.PathLike, title: str | None = None, examples=()) -> Path:
    """Write a standalone classify-only Gradio app for the run's model into `dest`; returns `dest`.

    `dest` gets app.py (gradio + onnxruntime + numpy + pillow only), model.onnx, requirements.txt,
    README.md with the Space front matter, and `examples/` when example photos are given.
    """
    from huggingface_hub import SpaceCard, SpaceCardData

    run = _check_run(run_dir)
    record, metrics, _ = _read_run(run)
    labels = list(record.labels)
    title = (title or "Photo classifier").strip() or "Photo classifier"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.onnx(), dest / "model.onnx")
    app = (TEMPLATE_DIR / "app.py").read_text(encoding="utf-8")
    (dest / "app.py").write_text(app.replace('"__TITLE__"', json.dumps(title), 1), encoding="utf-8")
    (dest / "requirements.txt").write_text(
        "# gradio itself comes from the Space's sdk_version (README.md)\n"
        "onnxruntime>=1.17\nnumpy\npillow\n",
        encoding="utf-8",
    )
    if examples:
        folder = dest / "examples"
        folder.mkdir(exist_ok=True)
        for i, example in enumerate(examples):
            example = Path(example)
            shutil.copyfile(example, folder / f"{i:02d}_{_safe_name(example.name)}")

    card_data = SpaceCardData(
        title=title[:60],
        emoji="📷",
        colorFrom="blue",
        colorTo="green",
        sdk="gradio",
        sdk_version=_gradio_version(),
        app_file="app.py",
        pinned=False,
        license=LICENSE,
        short_description=f"Classifies photos: {', '.join(labels)}"[:60],
        tags=["image-classification", "onnx", "transfer-studio"],
    )
    accuracy = (metrics.get("val") or {}).get("accuracy")
    body = "\n".join(
        [
            f"# {title}",
            "",
            f"Classifies a photo into one of {len(labels)} classes: {', '.join(labels)}.",
            f"A torchvision {_arch_words(record.arch)} fine-tuned with Transfer Studio"
            + (f" ({_pct(accuracy)} validation accuracy)" if accuracy is not None else "")
            + ", served by ONNX Runtime on CPU.",
            "",
            "Run it locally: `pip install gradio onnxruntime numpy pillow && python app.py`",
            "",
        ]
    )
    SpaceCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}").save(dest / "README.md")
    return dest


def push_space(
    run_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
    use_login: bool = True,
) -> str:
    """Make the Space folder for the run and upload it to the Gradio Space `repo_id`; returns the Space URL.

    Without `token`, this machine's login is used unless `use_login` is False.
    """
    run = _check_run(run_dir)
    repo_id = check_repo_id(repo_id)
    token = resolve_token(token, use_login)
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors("push", repo_id, api.endpoint, token) as context:
        context["user"] = api.whoami(token=token).get("name")
        url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        _check_visibility(api.repo_info(repo_id, repo_type="space"), private, repo_id)
        with tempfile.TemporaryDirectory(prefix="hub-space-") as tmp:
            folder = make_space(run.path, Path(tmp) / "space", title=repo_id.split("/")[-1])
            operations = [
                CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                for p in sorted(folder.rglob("*"))
                if p.is_file()
            ]
            api.create_commit(
                repo_id, repo_type="space", operations=operations, commit_message="Upload the classifier demo"
            )
    return str(url)


# ---------------------------------------------------------------------------------------------
# Tokens, names, run folders, errors


def resolve_token(token: str | None = None, use_login: bool = True) -> str:
    """The token to push with: the argument, else (with `use_login`) HF_TOKEN or the cached login; HubError if none."""
    token = (token or "").strip() or (_login_token() if use_login else None)
    if not token:
        raise HubError(NO_TOKEN if use_login else NO_OWN_TOKEN)
    return token


def _login_token() -> str | None:
    # huggingface_hub's own resolution: HF_TOKEN (and HUGGING_FACE_HUB_TOKEN), then the token file.
    from huggingface_hub import get_token

    return get_token()


def check_repo_id(repo_id) -> str:
    """`repo_id` if it is a valid "user/name" repo id (huggingface_hub's own rules), else HubError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = repo_id.strip() if isinstance(repo_id, str) else repo_id
    rule = "use the form user/name (letters, digits, '-', '_' and '.'; no '--' or '..'; at most 96 characters)"
    if not isinstance(text, str) or text.count("/") != 1 or not all(text.split("/")):
        raise HubError(f"{_shown(repo_id)} is not a valid repository name: {rule}")
    try:
        validate_repo_id(text)
    except HFValidationError:
        raise HubError(f"{_shown(repo_id)} is not a valid repository name: {rule}") from None
    return text


def _shown(value) -> str:
    # A repo id is echoed in messages; one that looks like a token (someone pasted it in the wrong
    # field) is not.
    text = repr(value)
    return "The repository name" if _TOKEN_LIKE.search(text) else text


def _check_run(run_dir) -> RunFolder:
    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise HubError(f"Run folder {run.path} does not exist")
    if not run.has_config() or not run.file(METRICS).is_file():
        raise HubError(f"{run.path} is not a finished run folder ({CONFIG} and {METRICS} are missing)")
    if not run.onnx().is_file():
        raise HubError(f"{run.path} has no {run.onnx().name}: export it first (python -m models export {run.path})")
    return run


def _read_run(run: RunFolder) -> tuple[RunRecord, dict, dict]:
    """(config, metrics, data report) of a run folder; HubError when one cannot be read."""
    try:
        return run.read_config(), run.read_metrics(), run.read_data_report()
    except RunFolderError as exc:
        raise HubError(str(exc)) from None


def _check_visibility(info, private: bool, repo_id: str) -> None:
    # create_repo(exist_ok=True) keeps an existing repo's visibility: never upload to a public repo
    # when the user asked for a private one. (The reverse is fine: a private repo stays private.)
    if private and info.private is False:
        raise HubError(
            f"{repo_id} already exists and is public, but a private upload was asked for: make it private in "
            "its settings on the Hub first, or choose another name"
        )


def _link_or_copy(source: Path, target: Path) -> None:
    # Model files are tens of megabytes: a hard link stages them for free where the filesystem allows.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@contextlib.contextmanager
def _hub_errors(action: str, repo_id: str, endpoint: str, token: str | None, revision: str | None = None):
    """Turn huggingface_hub and network exceptions into HubError with a plain, token-free message."""
    context: dict = {}
    try:
        yield context
    except HubError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one plain message
        message, status = _explain(exc, action, repo_id, endpoint, context.get("user"), revision)
        logger.debug("Hub %s of %s failed: %s", action, repo_id, _scrub(f"{type(exc).__name__}: {exc}", token))
        raise HubError(_scrub(message, token), status) from None


def _explain(exc, action, repo_id, endpoint, user, revision) -> tuple[str, int | None]:
    from huggingface_hub import errors
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # huggingface_hub 1.0 renamed the remote "file not found" error (before: EntryNotFoundError).
    RemoteEntryNotFoundError = getattr(errors, "RemoteEntryNotFoundError", None) or errors.EntryNotFoundError

    chain = list(_causes(exc))
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return "The Hugging Face Hub cannot be used: offline mode is on (unset HF_HUB_OFFLINE)", None
    if any(isinstance(e, _transport_errors()) for e in chain):
        return f"Could not reach the Hugging Face Hub at {endpoint}: check your connection", None
    http = next((e for e in chain if isinstance(e, HfHubHTTPError) and e.response is not None), None)
    if http is not None:
        status = http.response.status_code
        server = (http.server_message or "").strip().rstrip(".")
        # The Hub also answers 401 for a private or missing repo (RepositoryNotFoundError): not a token problem.
        if status == 401 and not isinstance(http, RepositoryNotFoundError):
            access = " with write access" if action == "push" else ""
            return (
                "The Hugging Face Hub rejected the token (401 Unauthorized): it is invalid, expired or revoked. "
                f"Create a token{access} at https://huggingface.co/settings/tokens and log in again",
                status,
            )
        if status == 403:
            who = f"'{user}'" if user else "this token"
            if action == "push":
                return (
                    f"No permission to write to {repo_id} (403 Forbidden): {who} cannot push there. Push to your "
                    "own namespace (your-user-name/model-name) or an organisation where you have write access, "
                    "with a token that has write access (read-only tokens cannot push)",
                    status,
                )
            return f"No permission to read {repo_id} (403 Forbidden): {who} has no access to it", status
        if isinstance(http, RevisionNotFoundError):
            return f"{repo_id} has no revision {revision!r} on {endpoint}", status
        if isinstance(http, RemoteEntryNotFoundError):
            return f"{repo_id} has no model.onnx: it was not pushed by Transfer Studio", status
        if isinstance(http, RepositoryNotFoundError) or status == 404:
            return (
                f"Repository {repo_id} was not found on {endpoint} (or it is private and this token cannot see it)",
                status,
            )
        detail = f": {server}" if server else ""
        if status == 429 or status >= 500:
            return f"The Hugging Face Hub is unavailable ({status}){detail}; try again in a minute", status
        return f"The Hugging Face Hub refused the {action} ({status}){detail}", status
    if any(isinstance(e, LocalEntryNotFoundError) for e in chain):
        return f"Could not reach the Hugging Face Hub at {endpoint}: check your connection", None
    return f"The {action} to the Hugging Face Hub failed: {type(exc).__name__}: {exc}", None


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub 1.x+ talks through httpx2 (earlier through httpx); their TransportError covers
    # refused connections, DNS failures and timeouts.
    classes: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            classes.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


def _scrub(text: str, token: str | None) -> str:
    if token and len(token) >= 4:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("***", text)


# ---------------------------------------------------------------------------------------------
# Small words


def _default_commit_message(run: RunFolder) -> str:
    record = _read_run(run)[0]
    return f"Upload {record.arch} classifier ({len(record.labels)} classes) from Transfer Studio"


def _arch_words(arch: str) -> str:
    return re.sub(r"^resnet", "ResNet-", arch)


def _weights_words(train: dict) -> str:
    weights = train.get("weights")
    if weights == "imagenet":
        base = _base_model(train)
        return "starting from ImageNet weights" + (f" ([{base}](https://huggingface.co/{base}))" if base else "")
    if weights == "none":
        return "trained from random initialisation (no pretrained weights)"
    return "starting from weights in a local file"  # the path is the user's business, not the card's


def _optimizer_words(train: dict) -> str:
    if train.get("optimizer") == "sgd":
        extra = f"SGD, momentum {train.get('momentum')}" + (" (Nesterov)" if train.get("nesterov") else "")
    else:
        extra = "AdamW"
    return f"{extra}, weight decay {train.get('weight_decay')}"


def _split_word(split: str) -> str:
    return {"val": "validation"}.get(split, split)


def _pct(value) -> str:
    return "" if value is None else f"{100 * float(value):.1f}%"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[-80:] or "example"


def _gradio_version() -> str:
    # The installed gradio's version, read without importing gradio (slow, and not needed here).
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradio")
    except PackageNotFoundError:
        raise HubError("gradio is not installed: the Space's sdk_version is the installed gradio version") from None
