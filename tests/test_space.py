"""Space readiness: the README's front matter, requirements.txt, and how the app launches and stores runs."""

import re
import tomllib
from pathlib import Path

import gradio
import yaml

import app
from ui import session

ROOT = Path(__file__).resolve().parent.parent


def front_matter_and_body() -> tuple[dict, str]:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    assert match, "README.md must start with the Space front matter"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_readme_front_matter_configures_a_gradio_space_with_login():
    meta, _ = front_matter_and_body()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == gradio.__version__
    assert meta["hf_oauth"] is True and set(meta["hf_oauth_scopes"]) == {"write-repos", "manage-repos"}
    assert {"title", "emoji", "colorFrom", "colorTo", "license"} <= set(meta)


def test_readme_first_section_is_the_two_setup_commands():
    _, body = front_matter_and_body()
    first = body.split("\n## ")[1]
    assert first.startswith("Start")
    commands = re.findall(r"```bash\n(.*?)\n```", first, re.S)
    assert commands == ['pip install -e . && python app.py', 'pip install -e ".[test]" && python -m pytest']


def test_pinned_gradio_matches_the_space_sdk_version():
    meta, _ = front_matter_and_body()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"gradio>={meta['sdk_version'].rsplit('.', 1)[0]}" in "".join(dependencies)


def test_requirements_txt_covers_every_runtime_dependency():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=;\s]", d, maxsplit=1)[0].lower() for d in dependencies}
    names -= {"gradio", "onnxruntime-gpu"}  # the Space's SDK brings gradio; a CPU Space takes plain onnxruntime
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0].isalpha()]
    assert {re.split(r"[<>=\s]", line, maxsplit=1)[0].lower() for line in lines} == names


def test_launch_listens_on_loopback_unless_the_environment_says_otherwise(monkeypatch):
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "TRANSFER_STUDIO_MAX_UPLOAD"):
        monkeypatch.delenv(name, raising=False)
    assert app.launch_options() == {"server_name": "127.0.0.1", "server_port": 7860, "max_file_size": "1gb"}
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7000")
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_UPLOAD", "200mb")
    assert app.launch_options() == {"server_name": "0.0.0.0", "server_port": 7000, "max_file_size": "200mb"}


def test_runs_live_under_the_data_directory_from_the_environment():
    import os

    assert session.STORE.root == Path(os.environ["TRANSFER_STUDIO_DATA_DIR"]).resolve()
