"""The app as a person uses it: Debian's Chromium, driven by Playwright, against the app on loopback.

Skipped (with the reason) where Chromium or Playwright is missing, as on a user's Mac; under CI=true
a missing browser fails instead. Each journey saves a screenshot under test-output/browser/.
"""

import os
import shutil
import socket
from pathlib import Path

import pytest

import app
from conftest import ASSETS, write_photos, zip_folder

SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root in a container, Chromium needs --no-sandbox; the rest keeps it off the (closed) network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000


def _missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if not CHROMIUM:
        return "Chromium is not installed (Debian: apt-get install chromium)"
    return None


if _missing():
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI: {_missing()}", pytrace=False)
    pytest.skip(_missing(), allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    app.demo.queue(default_concurrency_limit=4)
    _, local_url, _ = app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                      quiet=True)
    try:
        yield local_url
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, url, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_for_text(page, selector: str, text: str) -> None:
    page.locator(selector).filter(has_text=text).wait_for()


def pick(page, dropdown: str, value: str) -> None:
    box = page.locator(f"{dropdown} input")
    box.click()
    box.fill(value)
    page.keyboard.press("Enter")


def set_number(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input")
    field.fill(str(value))
    field.press("Tab")


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id}").get_by_label(option, exact=True).check()


def small_training_settings(page, epochs: int) -> None:
    page.get_by_role("tab", name="Fine-tune").click()
    choose(page, "ft-weights", "none")
    choose(page, "ft-strategy", "full")
    choose(page, "ft-optimizer", "adamw")
    choose(page, "ft-augment", "none")
    set_number(page, "ft-epochs", epochs)
    set_number(page, "ft-image-size", 32)
    set_number(page, "ft-batch-size", 8)
    set_number(page, "ft-lr", 0.001)


def check_folder(page, folder: Path, tmp_path: Path) -> None:
    """Give photos as a zip, the main path a user takes."""
    choose(page, "ft-source", "Zip file")
    page.locator("#ft-zip input[type=file]").set_input_files(str(zip_folder(folder, tmp_path / f"{folder.name}.zip")))
    page.locator("#ft-report table").wait_for()  # the report comes on upload, without pressing Check


def test_schedules_journey_compare_two_schedulers_and_see_a_bad_parameter(page):
    wait_for_text(page, "#sched-message", "LR from 0.1 to 0.0002739")  # the default cosine schedule
    pick(page, "#sched-scheduler", "StepLR")
    wait_for_text(page, "#sched-message", "LR from 0.1 to 0.001 ")  # step_size derived: 30 epochs / 3
    page.get_by_role("button", name="Add to comparison").click()
    pick(page, "#sched-scheduler", "OneCycleLR")
    wait_for_text(page, "#sched-message", "stepping per batch")
    assert "OneCycleLR always steps per batch" in text_of(page, "#sched-message")
    pick(page, "#sched-scheduler", "StepLR")
    wait_for_text(page, "#sched-message", "stepping per epoch")
    field = page.locator("#param-StepLR-step_size textarea")
    field.fill("5")
    field.press("Enter")
    wait_for_text(page, "#sched-code", "step_size=5")
    field.fill("-3")
    field.press("Enter")
    wait_for_text(page, "#sched-message", "step_size must be at least 1, got -3")
    assert "Traceback" not in page.content()


def test_finetune_journey_upload_check_train_and_see_results(page, tmp_path):
    small_training_settings(page, epochs=2)
    check_folder(page, ASSETS / "sample", tmp_path)
    report = text_of(page, "#ft-report")
    assert "hotdog" in report and "not_hotdog" in report
    # The per-class upload, Teachable-Machine style.
    write_photos(tmp_path, per_class=4)
    choose(page, "ft-source", "Photos per class")
    for i, name in enumerate(("red", "blue")):
        page.locator(f"#ft-class-{i} textarea, #ft-class-{i} input").first.fill(f"{name} things")
        page.locator(f"#ft-class-files-{i} input[type=file]").set_input_files(
            sorted(str(p) for p in (tmp_path / name).iterdir()))
    page.locator("#ft-class-files-1").filter(has_text="blue_03").wait_for()
    page.locator("#ft-check").click()
    wait_for_text(page, "#ft-report", "red things")
    page.locator("#ft-train").click()
    wait_for_text(page, "#ft-status", "finished")
    metrics = text_of(page, "#ft-metrics")
    assert "Validation accuracy" in metrics and "ONNX export" in metrics
    page.locator("#ft-confusion img, #ft-confusion svg, #ft-confusion canvas").first.wait_for()


def test_cancel_journey_stops_training_keeps_the_best_model_and_stays_responsive(page, tmp_path):
    small_training_settings(page, epochs=200)
    check_folder(page, write_photos(tmp_path / "photos"), tmp_path)
    page.locator("#ft-train").click()
    wait_for_text(page, "#ft-status", "Epoch 1/200")
    page.locator("#ft-cancel").click()
    wait_for_text(page, "#ft-metrics", "Stopped: cancelled; the best model so far was kept")
    page.get_by_role("tab", name="Learning-rate schedules").click()
    pick(page, "#sched-scheduler", "ExponentialLR")
    wait_for_text(page, "#sched-message", "LR from 0.1 to")


def test_classify_journey_with_the_model_just_trained(page, tmp_path):
    small_training_settings(page, epochs=2)
    check_folder(page, write_photos(tmp_path / "photos"), tmp_path)
    page.locator("#ft-train").click()
    wait_for_text(page, "#ft-status", "finished")
    page.get_by_role("tab", name="Classify").click()
    page.locator("#clf-run input").click()
    page.get_by_role("option").first.click()
    page.locator("#clf-image input[type=file]").set_input_files(str(tmp_path / "photos" / "red" / "red_00.jpg"))
    page.locator("#clf-image img").wait_for()
    page.locator("#clf-classify").click()
    wait_for_text(page, "#clf-info", "Provider")
    labels = text_of(page, "#clf-label")
    assert all(name in labels for name in ("red", "green", "blue"))


def test_bad_upload_shows_its_message(page, tmp_path):
    page.get_by_role("tab", name="Fine-tune").click()
    not_a_zip = tmp_path / "photos.zip"
    not_a_zip.write_text("these are not photos")
    choose(page, "ft-source", "Zip file")
    page.locator("#ft-zip input[type=file]").set_input_files(str(not_a_zip))
    page.locator("#ft-zip").filter(has_text="photos.zip").wait_for()
    page.locator("#ft-check").click()
    page.get_by_text("is not a valid .zip file").first.wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
