"""models.hub against a fake Hub served over real HTTP on loopback (tests/hub_server.py).

huggingface_hub's own client does every request; nothing of it is mocked. Uploads use the plain
LFS transfer (HF_HUB_DISABLE_XET): the Xet path only runs against the real Hub.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_photos
from hub_server import FakeHub
from huggingface_hub import ModelCard, SpaceCard, constants

from models import hub
from models.hub import HubError
from models.runtime import OnnxClassifier
from trainer.config import ScheduleConfig, TrainConfig
from trainer.train import fit

# Shaped like real user access tokens (hf_ + 34 characters).
ALICE = "hf_AliceWriteToken0123456789abcdefXYZ"
BOB = "hf_BobReadOnlyToken0123456789abcdefXY"
UNKNOWN = "hf_NobodyKnowsThisToken0123456789abcd"
TOKENS = {ALICE: ("alice", "write"), BOB: ("bob", "read")}
REPO = "alice/colours"

# huggingface_hub's own LFS upload passes a file object as `data=`; httpx2 warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _isolate_hub_client(mp: pytest.MonkeyPatch, home: Path) -> None:
    """No real login, cache or endpoint leaks in: huggingface_hub reads these at import, so patch both."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        mp.delenv(name, raising=False)
    mp.setenv("HF_HUB_DISABLE_XET", "1")
    mp.setenv("HF_HOME", str(home))
    mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
    mp.setattr(constants, "HF_HUB_OFFLINE", False)  # loopback only: fine even where CI sets offline mode
    mp.setattr(constants, "HF_HOME", str(home))
    mp.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    mp.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    mp.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


@pytest.fixture(scope="module")
def module_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        _isolate_hub_client(mp, tmp_path_factory.mktemp("hf_home"))
        yield


@pytest.fixture(autouse=True)
def hub_env(module_env, monkeypatch, tmp_path):
    _isolate_hub_client(monkeypatch, tmp_path / "hf_home")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub_run")
    config = TrainConfig(weights="none", strategy="linear-probe", optimizer="adamw", image_size=32, batch_size=8,
                         augment="none", schedule=ScheduleConfig(lr=1e-3, epochs=2))
    fit(write_photos(root / "photos"), config, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = write_photos(tmp_path_factory.mktemp("new_photos"), per_class=2, seed=7)
    return sorted(folder.rglob("*.jpg"))


@pytest.fixture(scope="module")
def fake_hub():
    with FakeHub(TOKENS) as server:
        yield server


@pytest.fixture(scope="module")
def pushed(module_env, run_dir, fake_hub) -> str:
    return hub.push_run(run_dir, REPO, token=ALICE, endpoint=fake_hub.url)


def copy_run(run_dir: Path, dest: Path) -> Path:
    """A private copy of the run folder (hard links: the model files are tens of megabytes)."""
    shutil.copytree(run_dir, dest, copy_function=os.link, ignore=shutil.ignore_patterns("data"))
    return dest


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_requests(server: FakeHub, name: str) -> list[dict]:
    bodies = [json.loads(r.body) for r in server.requests if r.path == "/api/repos/create"]
    return [b for b in bodies if b["name"] == name]


# ---------------------------------------------------------------------------------------------
# Pushing


def test_push_uploads_the_run_folder_in_one_commit(pushed, fake_hub, run_dir):
    repo = fake_hub.repo(REPO)
    assert pushed == f"{fake_hub.url}/{REPO}"
    # No experiment.json: this run was trained on its own, not as an arm of an experiment.
    # Training exports INT8 too; it ships when it passed its check (on these random 32 px models it may not).
    int8 = {"model.int8.onnx"} if (run_dir / "model.int8.onnx").is_file() else set()
    assert set(repo.files) == {"model.onnx", "config.json", "labels.json", "metrics.json", "history.json",
                               "model.safetensors", "README.md", "confusion_matrix.png"} | int8
    assert len(repo.commits) == 1
    assert repo.files["model.onnx"] == (run_dir / "model.onnx").read_bytes()
    assert repo.files["model.safetensors"] == (run_dir / "model.safetensors").read_bytes()
    assert json.loads(repo.files["config.json"]) == json.loads((run_dir / "config.json").read_text())
    assert json.loads(repo.files["metrics.json"]) == json.loads((run_dir / "metrics.json").read_text())
    assert json.loads(repo.files["history.json"]) == json.loads((run_dir / "history.json").read_text())
    assert json.loads(repo.files["labels.json"]) == ["blue", "green", "red"]
    assert repo.files["confusion_matrix.png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert {"model.onnx", "model.safetensors"} <= repo.lfs  # large files went through the LFS batch API
    assert create_requests(fake_hub, "colours")[0]["visibility"] == "public"


def test_model_card_has_hub_metadata_and_the_training_story(pushed, fake_hub, run_dir, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_bytes(fake_hub.repo(REPO).files["README.md"])
    card = ModelCard.load(readme)
    metrics = json.loads((run_dir / "metrics.json").read_text())

    assert card.data.pipeline_tag == "image-classification"
    assert card.data.library_name == "onnx"
    assert card.data.license == "apache-2.0"
    assert {"image-classification", "onnx", "resnet", "transfer-learning", "transfer-studio"} <= set(card.data.tags)
    assert card.data.base_model is None  # trained from random initialisation: no base model to cite
    results = {(r.dataset_split, r.metric_type): r for r in card.data.eval_results}
    accuracy = results[("validation", "accuracy")]
    assert accuracy.task_type == "image-classification" and accuracy.dataset_name == "user photos"
    assert accuracy.metric_value == pytest.approx(metrics["val"]["accuracy"], abs=1e-4)
    assert results[("validation", "f1")].metric_value == pytest.approx(metrics["val"]["macro_f1"], abs=1e-4)
    assert not any(split == "test" for split, _ in results)  # this run has no test split

    text = card.text
    assert "| blue | 10 | 2 |" in text  # photos per class and split, from data_report.json
    assert "ResNet-18" in text and "linear probe" in text and "AdamW" in text and "CosineAnnealingLR" in text
    assert "centre crop 32 x 32" in text
    assert "![Confusion matrix](confusion_matrix.png)" in text
    for row in metrics["val"]["per_class"]:
        assert f"| {row['label']} | {100 * row['precision']:.1f}% | {100 * row['recall']:.1f}% |" in text


def test_model_card_cites_the_imagenet_base_model_and_test_results(run_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "metrics.json", "data_report.json"):
        shutil.copy(run_dir / name, run / name)
    config = json.loads((run / "config.json").read_text())
    config["train"]["weights"] = "imagenet"
    (run / "config.json").write_text(json.dumps(config))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"] = {**metrics["val"], "accuracy": 0.5}
    (run / "metrics.json").write_text(json.dumps(metrics))

    card = hub.model_card(run, "alice/pretrained")

    assert card.data.base_model == "timm/resnet18.tv_in1k"
    assert "https://huggingface.co/timm/resnet18.tv_in1k" in card.text
    splits = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert splits[("test", "accuracy")] == 0.5
    assert "Per class, test:" in card.text


def test_usage_snippet_in_the_card_runs_as_written(pushed, fake_hub, run_dir, photos, tmp_path):
    text = fake_hub.repo(REPO).files["README.md"].decode()
    snippet = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    photo = next(p for p in photos if p.parent.name == "red")
    shutil.copy(photo, tmp_path / "photo.jpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=fake_hub.url, HF_HOME=str(tmp_path / "fresh_home"), HF_HUB_DISABLE_XET="1")

    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    expected = OnnxClassifier(run_dir / "model.onnx", providers="cpu").predict([photo], top_k=3)[0]
    assert [line.split(":")[0] for line in lines] == [label for label, _ in expected]
    assert float(lines[0].split(": ")[1].rstrip("%")) == pytest.approx(100 * expected[0][1], abs=0.06)


def test_the_token_never_leaks(run_dir, fake_hub, caplog, capsys, monkeypatch):
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # huggingface_hub logs every request as curl
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    first = len(fake_hub.requests)

    hub.push_run(run_dir, "alice/leak-check", token=ALICE, endpoint=fake_hub.url)
    with pytest.raises(HubError) as refused:
        hub.push_run(run_dir, "alice/leak-check", token=BOB, endpoint=fake_hub.url)

    secret = {ALICE, BOB}
    assert not any(t in str(refused.value) for t in secret)
    uploaded = fake_hub.repo("alice/leak-check").files
    assert not any(t.encode() in data for t in secret for data in uploaded.values())
    assert not any(t.encode() in p.read_bytes() for t in secret for p in run_dir.rglob("*") if p.is_file())
    assert "Request" in caplog.text  # the debug log was on, and it holds no token
    assert not any(t in caplog.text for t in secret)
    out, err = capsys.readouterr()
    assert not any(t in out + err for t in secret)
    requests = fake_hub.requests[first:]
    assert not any(t.encode() in r.body for t in secret for r in requests)
    assert not any(t in r.path for t in secret for r in requests)
    sent = [(k, v) for r in requests for k, v in r.headers if any(t in v for t in secret)]
    assert sent and all(k.lower() == "authorization" for k, _ in sent)


def test_pushing_again_updates_the_same_repo_and_drops_stale_variants(run_dir, fake_hub, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    shutil.copy(run / "model.onnx", run / "model.int8.onnx")  # stands in for an exported variant
    hub.push_run(run, "alice/twice", token=ALICE, endpoint=fake_hub.url)
    assert "model.int8.onnx" in fake_hub.repo("alice/twice").files

    (run / "model.int8.onnx").unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["val"]["accuracy"] = 0.875
    (run / "metrics.json").unlink()  # a hard link: replace the file, not the shared content
    (run / "metrics.json").write_text(json.dumps(metrics))
    url = hub.push_run(run, "alice/twice", token=ALICE, endpoint=fake_hub.url, commit_message="Better model")

    repo = fake_hub.repo("alice/twice")
    assert url == f"{fake_hub.url}/alice/twice"
    assert [c["summary"] for c in repo.commits][1:] == ["Better model"]
    assert "model.int8.onnx" not in repo.files
    assert json.loads(repo.files["metrics.json"])["val"]["accuracy"] == 0.875
    assert "| validation | 6 | 87.5% |" in repo.files["README.md"].decode()
    assert repo.files["model.onnx"] == (run_dir / "model.onnx").read_bytes()
    assert "model.onnx" not in repo.commits[1]["paths"]  # unchanged: not sent again


def test_private_flag_reaches_create_and_hides_the_repo(run_dir, fake_hub, tmp_path):
    hub.push_run(run_dir, "alice/secret", token=ALICE, private=True, endpoint=fake_hub.url)

    assert create_requests(fake_hub, "secret")[0]["visibility"] == "private"
    assert fake_hub.repo("alice/secret").private
    with pytest.raises(HubError, match="alice/secret was not found"):
        hub.download_model("alice/secret", endpoint=fake_hub.url)  # anonymous
    assert hub.download_model("alice/secret", token=ALICE, endpoint=fake_hub.url).read_bytes() == (
        run_dir / "model.onnx"
    ).read_bytes()


def test_private_push_into_an_existing_public_repo_is_refused(pushed, run_dir, fake_hub):
    with pytest.raises(HubError, match=f"{REPO} already exists and is public"):
        hub.push_run(run_dir, REPO, token=ALICE, private=True, endpoint=fake_hub.url)
    assert len(fake_hub.repo(REPO).commits) == 1


@pytest.mark.parametrize("source", ["HF_TOKEN", "cached login"])
def test_token_comes_from_hf_token_or_the_cached_login(source, run_dir, fake_hub, monkeypatch):
    if source == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", ALICE)
    else:
        Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
        Path(constants.HF_TOKEN_PATH).write_text(ALICE)
    hub.push_run(run_dir, f"alice/from-{source.replace(' ', '-').lower()}", endpoint=fake_hub.url)
    assert fake_hub.requests[-1].path.endswith("/commit/main")


# ---------------------------------------------------------------------------------------------
# Failures, in plain words


def test_no_token_is_refused_before_any_request(run_dir, fake_hub):
    before = len(fake_hub.requests)
    with pytest.raises(HubError, match=r"No Hugging Face token: log in with `hf auth login`, set HF_TOKEN"):
        hub.push_run(run_dir, "alice/x", endpoint=fake_hub.url)
    assert len(fake_hub.requests) == before


def test_without_the_machines_login_only_the_callers_own_token_is_used(run_dir, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)  # this machine is logged in, as a shared server's owner would be
    before = len(fake_hub.requests)
    with pytest.raises(HubError, match=r"No Hugging Face token: give your own token") as refused:
        hub.push_run(run_dir, "alice/not-as-the-server", endpoint=fake_hub.url, use_login=False)
    with pytest.raises(HubError, match=r"No Hugging Face token: give your own token"):
        hub.push_space(run_dir, "alice/not-as-the-server", token="  ", endpoint=fake_hub.url, use_login=False)
    assert len(fake_hub.requests) == before and "alice" not in str(refused.value)

    with pytest.raises(HubError, match=r"'bob' cannot push there"):  # the caller's own token, never Alice's
        hub.push_run(run_dir, "alice/as-bob", token=BOB, endpoint=fake_hub.url, use_login=False)


def test_bad_token_is_401(run_dir, fake_hub):
    with pytest.raises(HubError, match=r"rejected the token \(401 Unauthorized\)") as failure:
        hub.push_run(run_dir, "alice/x", token=UNKNOWN, endpoint=fake_hub.url)
    assert failure.value.status == 401
    assert UNKNOWN not in str(failure.value)


@pytest.mark.parametrize(("token", "repo_id", "user"), [(BOB, "alice/x", "bob"), (ALICE, "carol/x", "alice")])
def test_pushing_without_rights_is_403(token, repo_id, user, run_dir, fake_hub):
    with pytest.raises(HubError, match=rf"No permission to write to {repo_id} \(403 Forbidden\): '{user}'") as failure:
        hub.push_run(run_dir, repo_id, token=token, endpoint=fake_hub.url)
    assert failure.value.status == 403
    assert token not in str(failure.value)
    assert ("model", repo_id) not in fake_hub.repos


def test_read_only_token_cannot_update_an_existing_repo(pushed, run_dir, fake_hub):
    with pytest.raises(HubError, match=rf"No permission to write to {REPO} \(403 Forbidden\)"):
        hub.push_run(run_dir, REPO, token=BOB, endpoint=fake_hub.url)
    assert len(fake_hub.repo(REPO).commits) == 1


@pytest.mark.parametrize("repo_id", ["not a repo id!!", "noslash", "alice/x/y", "alice/x--y", "/x", "alice/"])
def test_invalid_repo_names_are_refused(repo_id, run_dir, fake_hub):
    before = len(fake_hub.requests)
    with pytest.raises(HubError, match=r"is not a valid repository name: use the form user/name"):
        hub.push_run(run_dir, repo_id, token=ALICE, endpoint=fake_hub.url)
    assert len(fake_hub.requests) == before


def test_network_down_says_so(run_dir):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(HubError) as failure:
        hub.push_run(run_dir, "alice/x", token=ALICE, endpoint=endpoint)
    assert str(failure.value) == f"Could not reach the Hugging Face Hub at {endpoint}: check your connection"


def test_run_folder_without_model_onnx_must_be_exported_first(run_dir, fake_hub, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "metrics.json", "model.safetensors"):
        os.link(run_dir / name, run / name)
    with pytest.raises(HubError, match="has no model.onnx: export it first"):
        hub.push_run(run, "alice/x", token=ALICE, endpoint=fake_hub.url)


# ---------------------------------------------------------------------------------------------
# Loading back


def test_downloaded_model_classifies_like_the_local_run(pushed, fake_hub, run_dir, photos):
    path = hub.download_model(hub.parse_hub_ref(f"hf://{REPO}"), endpoint=fake_hub.url)

    assert path.name == "model.onnx" and path.read_bytes() == (run_dir / "model.onnx").read_bytes()
    remote = OnnxClassifier(path, providers="cpu")
    local = OnnxClassifier(run_dir / "model.onnx", providers="cpu")
    assert remote.labels == local.labels
    for theirs, ours in zip(remote.predict(photos, top_k=3), local.predict(photos, top_k=3), strict=True):
        assert [label for label, _ in theirs] == [label for label, _ in ours]
        assert [score for _, score in theirs] == pytest.approx([score for _, score in ours], abs=1e-6)


def test_download_of_a_missing_repo_or_revision_fails_plainly(pushed, fake_hub):
    with pytest.raises(HubError, match="alice/nothing-here was not found"):
        hub.download_model("alice/nothing-here", endpoint=fake_hub.url)
    with pytest.raises(HubError, match="has no revision 'v2'"):
        hub.download_model(REPO, endpoint=fake_hub.url, revision="v2")


def test_hf_references_load_through_the_predict_cli(pushed, fake_hub, run_dir, photos, tmp_path):
    # huggingface_hub reads HF_ENDPOINT at import, so a fresh process is pointed at the fake Hub.
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_HOME": str(tmp_path / "cli_home"), "HF_HUB_DISABLE_XET": "1"}
    done = subprocess.run([sys.executable, "-m", "models", "predict", f"hf://{REPO}", str(photos[0]), "--json"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    local = OnnxClassifier(run_dir / "model.onnx", providers="cpu").predict([photos[0]], top_k=1)[0][0][0]
    assert json.loads(done.stdout)[0]["predictions"][0]["label"] == local


def test_parse_hub_ref():
    assert hub.parse_hub_ref("hf://alice/colours") == "alice/colours"
    assert hub.parse_hub_ref("hf://alice/colours/") == "alice/colours"
    assert hub.parse_hub_ref("runs/model.onnx") is None
    assert hub.parse_hub_ref(Path("hf:/x")) is None
    with pytest.raises(HubError, match="not a valid repository name"):
        hub.parse_hub_ref("hf://noslash")


# ---------------------------------------------------------------------------------------------
# A Space for the model


def test_make_space_writes_an_app_that_runs_standalone(run_dir, photos, tmp_path):
    dest = hub.make_space(run_dir, tmp_path / "space", title="Colour demo", examples=[photos[0]])

    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "app.py", "examples", "model.onnx",
                                                      "requirements.txt"]
    assert (dest / "model.onnx").read_bytes() == (run_dir / "model.onnx").read_bytes()
    requirements = [line.split(">")[0] for line in (dest / "requirements.txt").read_text().splitlines()
                    if line and not line.startswith("#")]
    assert requirements == ["onnxruntime", "numpy", "pillow"]
    card = SpaceCard.load(dest / "README.md")
    assert card.data.sdk == "gradio"
    assert card.data.app_file == "app.py" and card.data.title == "Colour demo"
    assert {"emoji", "colorFrom", "colorTo", "license"} <= set(card.data.to_dict())
    source = (dest / "app.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+(models|trainer|app)\b", source, re.MULTILINE)

    # Import it as the Space would (module level builds `demo`, launching only under __main__), then classify.
    probe = f"""
import json, sys
sys.path.insert(0, {str(dest)!r})
from PIL import Image
import gradio as gr
import app
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("models", "trainer"))
result = app.predict(Image.open({str(photos[-1])!r}))
print(json.dumps({{"ours": ours, "blocks": isinstance(app.demo, gr.Blocks), "title": app.TITLE,
                  "gradio": gr.__version__, "examples": app.EXAMPLES, "result": result,
                  "none": app.predict(None)}}))
"""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ours"] == [] and out["blocks"] and out["title"] == "Colour demo" and out["none"] == {}
    assert len(out["examples"]) == 1
    assert card.data.sdk_version == out["gradio"]  # the installed gradio.__version__
    expected = OnnxClassifier(run_dir / "model.onnx", providers="cpu").predict([photos[-1]], top_k=5)[0]
    assert list(out["result"]) == [label for label, _ in expected]
    assert list(out["result"].values()) == pytest.approx([score for _, score in expected], abs=1e-5)


def test_push_space_uploads_a_gradio_space(run_dir, fake_hub):
    url = hub.push_space(run_dir, "alice/colours-demo", token=ALICE, endpoint=fake_hub.url)

    assert url == f"{fake_hub.url}/spaces/alice/colours-demo"
    space = fake_hub.repo("alice/colours-demo", "space")
    assert space.sdk == "gradio" and not space.private
    assert {"app.py", "model.onnx", "requirements.txt", "README.md"} == set(space.files)
    assert space.files["model.onnx"] == (run_dir / "model.onnx").read_bytes()
    assert "title: colours-demo" in space.files["README.md"].decode()
    create = create_requests(fake_hub, "colours-demo")[0]
    assert create["type"] == "space" and create["sdk"] == "gradio"
    assert any(r.path.startswith("/api/spaces/alice/colours-demo/commit/") for r in fake_hub.requests)


def test_push_cli_prints_the_link_and_never_the_token(run_dir, fake_hub, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_HOME": str(tmp_path / "cli_home"), "HF_HUB_DISABLE_XET": "1",
           "HF_TOKEN": ALICE}
    done = subprocess.run([sys.executable, "-m", "models", "push", str(run_dir), "alice/from-cli", "--private"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "alice/from-cli" in done.stdout and ALICE not in done.stdout + done.stderr
    assert "model.onnx" in fake_hub.repo("alice/from-cli").files and fake_hub.repo("alice/from-cli").private
    bad = subprocess.run([sys.executable, "-m", "models", "push", str(run_dir), "alice/x"], capture_output=True,
                         text=True, env={**env, "HF_TOKEN": "hf_not_a_real_token_000000"}, timeout=120,
                         check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "hf_not_a_real" not in bad.stderr


# ---------------------------------------------------------------------------------------------
# The fine-tune tab's share panel


def test_share_panel_pushes_a_run_and_makes_a_space(run_dir, fake_hub, monkeypatch, tmp_path):
    import gradio as gr

    from ui import finetune, session

    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    run_id, path = session.STORE.new_run("share-panel")
    shutil.rmtree(path)
    copy_run(run_dir, path)
    message, token_box = finetune.push_to_hub(run_id, "alice/from-the-tab", False, ALICE)
    assert f"{fake_hub.url}/alice/from-the-tab" in message and token_box["value"] == ""
    assert "model.onnx" in fake_hub.repo("alice/from-the-tab").files
    message, space_zip, _ = finetune.make_space_for_run(run_id, "alice/tab-space", False, ALICE)
    assert "Space pushed" in message and Path(space_zip["value"]).is_file()
    assert fake_hub.repo("alice/tab-space", "space").sdk == "gradio"
    assert ALICE not in "".join(p.read_text(errors="ignore") for p in path.rglob("*") if p.is_file())
    with pytest.raises(gr.Error, match="not a valid repository name|use the form user/name"):
        finetune.push_to_hub(run_id, "no slash here", False, ALICE)


def test_a_run_folder_written_before_the_run_folder_module_still_pushes(fake_hub, tmp_path):
    import torch
    from safetensors.torch import save_file

    from models.backbones import create_model
    from models.export import export_run

    run = tmp_path / "old-run"
    shutil.copytree(Path(__file__).resolve().parent / "fixtures" / "old-run", run)
    torch.manual_seed(0)
    save_file(create_model("resnet18", 3, "none").state_dict(), str(run / "model.safetensors"))
    export_run(run)
    hub.push_run(run, "alice/old-run", token=ALICE, endpoint=fake_hub.url)
    repo = fake_hub.repo("alice/old-run")
    assert {"model.onnx", "config.json", "labels.json", "README.md", "confusion_matrix.png"} <= set(repo.files)
    assert json.loads(repo.files["labels.json"]) == ["blue", "green", "red"]
