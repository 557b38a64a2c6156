"""The app as a person uses it: Debian's Chromium, driven by Playwright, against the app on loopback.

Skipped (with the reason) where Chromium or Playwright is missing, as on a user's Mac; under CI=true
a missing browser fails instead. Each journey saves a screenshot under test-output/browser/.
"""

import base64
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import ASSETS, served_app, write_photos, zip_folder
from trainer.data import size_words
from ui import folder_upload
from ui.limits import LOCAL_DEFAULTS, Limits

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


@pytest.fixture(scope="module")
def url():
    with served_app(concurrency=4) as local_url:
        yield local_url


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
    wait_for_text(page, "#sched-message", "StepLR: step_size must be at least 1, got -3")
    assert "Traceback" not in page.content()


# The chart's traces as plotly drew them: name, colour, and the length of the SVG path of its line.
DRAWN = """() => {
    const chart = document.querySelector('#sched-plot .js-plotly-plot');
    if (!chart || !chart.data) return [];
    const lines = [...chart.querySelectorAll('.scatterlayer .trace')].map(t => t.querySelector('path.js-line'));
    return chart.data.map((trace, i) => ({name: trace.name, colour: trace.line.color, dash: trace.line.dash || '',
                                          path: ((lines[i] && lines[i].getAttribute('d')) || '').length,
                                          points: trace.x.length, yaxis: chart.layout.yaxis.type}));
}"""


def drawn_series(page, *names: str) -> list[dict]:
    """Wait until the chart shows exactly these curves (each name's start), each with a visible line; return them."""
    page.wait_for_function(
        f"""names => {{
            const drawn = ({DRAWN})().filter(t => t.name && !t.name.startsWith('epoch boundary'));
            return drawn.length === names.length && names.every((n, i) => drawn[i].name.startsWith(n) && drawn[i].path > 10);
        }}""",
        arg=list(names),
    )
    return [t for t in page.evaluate(DRAWN) if not t["name"].startswith("epoch boundary")]


def set_field(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    field.fill(str(value))
    field.press("Tab")


def test_schedule_chart_redraws_every_change_and_keeps_comparison_colours(page):
    drawn_series(page, "current: CosineAnnealingLR(T_max=30)")
    set_field(page, "param-CosineAnnealingLR-eta_min", 0.01)
    drawn_series(page, "current: CosineAnnealingLR(T_max=30, eta_min=0.01)")
    pick(page, "#sched-scheduler", "StepLR")
    drawn_series(page, "current: StepLR(step_size=10)")
    set_field(page, "param-StepLR-step_size", 5)
    drawn_series(page, "current: StepLR(step_size=5)")
    page.locator("#sched-add").click()
    step, current = drawn_series(page, "StepLR(step_size=5)", "current: StepLR(step_size=5)")
    assert step["colour"] != current["colour"]
    pick(page, "#sched-scheduler", "MultiStepLR")
    drawn_series(page, "StepLR(step_size=5)", "current: MultiStepLR(milestones=[15, 22])")  # derived, shown
    assert page.locator("#param-MultiStepLR-milestones textarea").get_attribute("placeholder").startswith("[15, 22]")
    set_field(page, "param-MultiStepLR-milestones", "10, 20")
    drawn_series(page, "StepLR(step_size=5)", "current: MultiStepLR(milestones=[10, 20])")
    wait_for_text(page, "#sched-message", "LR from 0.1 to 0.001 ")
    set_field(page, "sched-warmup", 2)
    drawn_series(page, "StepLR(step_size=5)", "current: MultiStepLR(milestones=[10, 20]) + 2 warm-up")
    choose(page, "sched-step-per", "batch")
    kept, _ = drawn_series(page, "StepLR(step_size=5)", "current: MultiStepLR(milestones=[10, 20]) per batch + 2 warm-up")
    assert kept["colour"] == step["colour"]  # a compared curve keeps its colour through every redraw
    assert "counted in epochs: milestones" in text_of(page, "#sched-step-per")
    wait_for_text(page, "#sched-message", "stepping per batch. LR from 0.01 to 0.001 ")  # the same schedule, smooth
    pick(page, "#sched-scheduler", "LambdaLR")
    set_field(page, "param-LambdaLR-lr_lambda", "lambda epoch: 0.9 ** epoch")
    drawn_series(page, "StepLR(step_size=5)", "current: LambdaLR(lr_lambda=0.9 ** epoch) per batch + 2 warm-up")
    set_field(page, "param-LambdaLR-lr_lambda", "0.9 ** epoch +")
    wait_for_text(page, "#sched-message", "Cannot draw")
    assert text_of(page, "#sched-message") == (
        "Cannot draw this schedule: LambdaLR: lr_lambda: could not parse the formula: invalid syntax")
    stale = drawn_series(page, "StepLR(step_size=5)", "last drawn: LambdaLR(lr_lambda=0.9 ** epoch)")[1]
    assert stale["dash"] == "dash"
    page.locator("#sched-log input").check()
    page.wait_for_function("() => document.querySelector('#sched-plot .js-plotly-plot').layout.yaxis.type === 'log'")
    drawn_series(page, "StepLR(step_size=5)", "last drawn: LambdaLR(lr_lambda=0.9 ** epoch)")
    assert "Traceback" not in page.content()


def test_plateau_default_reduces_the_lr_and_marks_where(page):
    drawn_series(page, "current: CosineAnnealingLR")
    pick(page, "#sched-scheduler", "ReduceLROnPlateau")
    drawn_series(page, "current: ReduceLROnPlateau()")
    wait_for_text(page, "#sched-message", "LR from 0.1 to 0.001 ")  # two reductions with torch's defaults
    reduced = page.evaluate("() => document.querySelector('#sched-val-plot .js-plotly-plot').data[1].x")
    assert reduced == [17, 28]


def test_a_long_per_batch_curve_draws_quickly_from_a_few_thousand_points(page):
    drawn_series(page, "current: CosineAnnealingLR")
    set_field(page, "sched-epochs", 100)
    set_field(page, "sched-steps", 1000)
    choose(page, "sched-step-per", "batch")
    (curve,) = drawn_series(page, "current: CosineAnnealingLR(T_max=100) per batch")
    assert curve["points"] <= 4000
    wait_for_text(page, "#sched-message", "100,000 optimizer steps")
    wait_for_text(page, "#sched-message", "Drawn from")


# Every text the fine-tune tab's status line showed, recorded in the page (a phase lasts a second or two).
RECORD_STATUS = """() => {
    window.statusSeen = [];
    const status = document.querySelector('#ft-status');
    const record = () => {
        const text = (status.querySelector('[data-testid="markdown"]') || {innerText: ''}).innerText.trim();
        if (text && window.statusSeen.at(-1) !== text) window.statusSeen.push(text);
    };
    new MutationObserver(record).observe(status, {subtree: true, childList: true, characterData: true});
}"""
# A plotly chart in a gr.Plot with something drawn in it: a line, or (one epoch) its markers.
CHART_DRAWN = """id => {
    const chart = document.querySelector(`#${id} .js-plotly-plot`);
    if (!chart) return false;
    const lines = [...chart.querySelectorAll('.scatterlayer path.js-line')].filter(p => (p.getAttribute('d') || '').length > 10);
    return lines.length > 0 || chart.querySelectorAll('.scatterlayer path.point').length > 0;
}"""
RESULTS = ("#ft-epoch-table", "#ft-loss-plot", "#ft-acc-plot", "#ft-lr-plot", "#ft-metrics", "#ft-per-class", "#ft-confusion",
           "#ft-download")


def status_text(page) -> str:
    return text_of(page, '#ft-status [data-testid="markdown"]')


def charts_drawn(page, *ids: str) -> None:
    for elem_id in ids:
        page.wait_for_function(CHART_DRAWN, arg=elem_id)


def visible(page, selector: str) -> bool:
    return page.locator(selector).is_visible()


def test_finetune_journey_upload_check_train_and_see_each_phase_and_the_results(page, tmp_path):
    small_training_settings(page, epochs=2)
    # Before anything happens: no empty results areas, and nothing to cancel.
    assert not any(visible(page, selector) for selector in RESULTS)
    assert page.locator("#ft-train").is_enabled() and not page.locator("#ft-cancel").is_enabled()
    check_folder(page, ASSETS / "sample", tmp_path)
    report = text_of(page, "#ft-report")
    assert "hotdog" in report and "not_hotdog" in report
    # The per-class upload, Teachable-Machine style: its buttons are buttons.
    write_photos(tmp_path, per_class=4)
    choose(page, "ft-source", "Photos per class")
    page.get_by_role("button", name="+ Add a class").wait_for()  # waits until the source switch has shown it
    for i, name in enumerate(("red", "blue")):
        page.locator(f"#ft-class-{i} textarea, #ft-class-{i} input").first.fill(f"{name} things")
        page.locator(f"#ft-class-files-{i} input[type=file]").set_input_files(
            sorted(str(p) for p in (tmp_path / name).iterdir()))
    page.locator("#ft-class-files-1").filter(has_text="blue_03").wait_for()
    page.locator("#ft-check").click()
    wait_for_text(page, "#ft-report", "red things")
    page.evaluate(RECORD_STATUS)
    page.locator("#ft-train").click()
    page.wait_for_function("() => document.querySelector('#ft-train').disabled")  # no second training meanwhile
    assert page.locator("#ft-cancel").is_enabled()
    wait_for_text(page, "#ft-status", "Training finished")
    assert re.fullmatch(r"Training finished after 2 of 2 epochs; the best model \(epoch [12], validation accuracy "
                        r"\d+\.\d%\) is kept as run \d{8}-\d{6}-[0-9a-f]{8}\.", status_text(page)), status_text(page)
    seen = page.evaluate("() => window.statusSeen")
    assert seen[0].startswith("Queued. Trainings and LR sweeps run one at a time on this server")
    assert any(re.fullmatch(r"Training done: 2 epochs\. Evaluating the best model \(epoch [12]\) on \d+ validation photos", s)
               for s in seen), seen
    assert any(s.startswith("Exporting to ONNX, then checking that it gives PyTorch's answers on ") for s in seen), seen
    page.wait_for_function("() => document.querySelector('#ft-cancel').disabled")  # nothing left to cancel
    assert page.locator("#ft-train").is_enabled()
    metrics = text_of(page, "#ft-metrics")
    assert "Validation accuracy" in metrics and "ONNX export" in metrics
    charts_drawn(page, "ft-loss-plot", "ft-acc-plot", "ft-lr-plot")
    page.locator("#ft-confusion img, #ft-confusion svg, #ft-confusion canvas").first.wait_for()
    assert visible(page, "#ft-download")


def test_settings_show_only_what_applies_and_the_studio_schedule_says_what_it_changed(page):
    page.get_by_role("tab", name="Learning-rate schedules").click()
    pick(page, "#sched-scheduler", "StepLR")
    set_field(page, "param-StepLR-step_size", 5)
    wait_for_text(page, "#sched-code", "step_size=5")
    page.get_by_role("tab", name="Fine-tune").click()
    # linear-probe and SGD (the defaults): no finetune-only fields; momentum under "More settings".
    assert not visible(page, "#ft-head-epochs") and not visible(page, "#ft-head-lr-mult")
    choose(page, "ft-strategy", "finetune")
    page.locator("#ft-head-epochs").wait_for()
    assert visible(page, "#ft-head-lr-mult")
    page.get_by_text("More settings: momentum, weight decay, label smoothing, BatchNorm, precision").click()
    page.locator("#ft-momentum").wait_for()
    choose(page, "ft-optimizer", "adamw")
    page.locator("#ft-momentum").wait_for(state="hidden")
    assert not visible(page, "#ft-nesterov")
    # The scheduler's parameters are the studio's own fields, only the chosen scheduler's.
    assert visible(page, "#ft-param-CosineAnnealingLR-T_max") and not visible(page, "#ft-param-StepLR-step_size")
    page.locator("#ft-take-schedule").click()
    wait_for_text(page, "#ft-take-schedule-message", "Took the studio's schedule")
    assert text_of(page, "#ft-take-schedule-message") == (
        "Took the studio's schedule: LR scheduler CosineAnnealingLR → StepLR; Learning rate 0.01 → 0.1; "
        "Epochs 10 → 30; step_size blank → 5. Blank parameters are derived from the run; steps per epoch come "
        "from your photos.")
    page.locator("#ft-param-StepLR-step_size").wait_for()
    assert not visible(page, "#ft-param-CosineAnnealingLR-T_max")
    assert page.locator("#ft-param-StepLR-step_size textarea, #ft-param-StepLR-step_size input").first.input_value() == "5"
    assert page.locator("#ft-epochs input").input_value() == "30"


def test_the_lr_finder_draws_its_sweep_and_its_suggestion_goes_into_the_form(page):
    small_training_settings(page, epochs=1)
    page.locator("#ft-check").click()  # the sample photos
    wait_for_text(page, "#ft-report", "hotdog")
    page.get_by_text("3. Learning-rate finder", exact=True).click()
    assert not visible(page, "#ft-finder-plot") and not page.locator("#ft-use-lr").is_enabled()
    page.locator("#ft-find-lr").click()
    page.wait_for_function("() => /^(Suggested LR|No clear answer)/.test("
                           "document.querySelector('#ft-finder-message').innerText.trim())")
    said = text_of(page, "#ft-finder-message")
    charts_drawn(page, "ft-finder-plot")
    suggested = page.evaluate("() => document.querySelector('#ft-finder-plot .js-plotly-plot').data[1].x[0]")
    assert f"{suggested:.1e}" in said or f"{suggested:.2e}" in said, said
    page.locator("#ft-use-lr").click()
    page.wait_for_function("lr => Number(document.querySelector('#ft-lr input').value) === lr", arg=suggested)
    page.wait_for_function("() => document.querySelector('#ft-cancel').disabled")  # the sweep is over


def test_cancel_journey_says_cancelled_keeps_the_best_model_and_a_waiting_page_sees_its_place(page, browser, url, tmp_path):
    small_training_settings(page, epochs=200)
    check_folder(page, write_photos(tmp_path / "photos"), tmp_path)
    page.locator("#ft-train").click()
    wait_for_text(page, "#ft-status", "Epoch 1/200")
    # A second visitor presses Train meanwhile: they see that they wait, and their place.
    other = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    other.set_default_timeout(TIMEOUT_MS)
    other.goto(url)
    other.get_by_role("tab", name="Fine-tune").click()
    other.locator("#ft-train").click()
    wait_for_text(other, "#ft-progress", "queue: 1/1")
    assert status_text(other).startswith("Queued. Trainings and LR sweeps run one at a time on this server")
    other.locator("#ft-cancel").click()
    wait_for_text(other, "#ft-status", "Cancelled: it leaves the queue without training.")
    page.locator("#ft-cancel").click()
    wait_for_text(page, "#ft-status", "is kept as run")
    assert re.fullmatch(r"Training cancelled after \d+ of 200 epochs; the best model \(epoch \d+, validation accuracy "
                        r"\d+\.\d%\) is kept as run \S+\.", status_text(page)), status_text(page)
    wait_for_text(page, "#ft-metrics", "Cancelled: the best model so far was kept.")
    # The waiting page's turn came: it ends at once, saying so, and trains nothing.
    wait_for_text(other, "#ft-status", "Cancelled while it waited in the queue; nothing was trained.")
    assert not visible(other, "#ft-epoch-table")
    other.context.close()
    page.get_by_role("tab", name="Learning-rate schedules").click()
    pick(page, "#sched-scheduler", "ExponentialLR")
    wait_for_text(page, "#sched-message", "LR from 0.1 to")


def test_classify_journey_from_a_fresh_page_to_the_model_just_trained(page, tmp_path, monkeypatch):
    from models.backbones import imagenet_cache_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # offline: no ImageNet weights (the app runs in-process)
    page.reload()
    page.get_by_role("tab", name="Classify").click()
    # Before any click: what there is, and what to do.
    wait_for_text(page, "#clf-models", "No model is ready yet.")
    weights = imagenet_cache_path("resnet18")
    imagenet = ("The ImageNet ResNet-18 is not available here: this server has no copy of its weights (torchvision "
                f"downloads them once, when the server is online). To use it offline, copy {weights.name} into "
                f"{weights.parent}, then reload this page.")
    assert text_of(page, "#clf-models") == ("No model is ready yet. Train one in the Fine-tune tab (its sample photos "
                                            f"are ready to use), or upload an .onnx file made by this app.\n\n{imagenet}")
    assert page.locator("#clf-source label").all_inner_texts() == [
        "A run trained here (none yet)", "An uploaded .onnx file", "ImageNet ResNet-18 (not available here)"]
    assert page.locator("#clf-source").get_by_label("An uploaded .onnx file", exact=True).is_checked()
    assert page.locator("#clf-onnx").is_visible() and not page.locator("#clf-run").is_visible()

    small_training_settings(page, epochs=2)
    check_folder(page, write_photos(tmp_path / "photos"), tmp_path)  # photos.zip
    page.locator("#ft-train").click()
    wait_for_text(page, "#ft-status", "finished")
    page.get_by_role("tab", name="Classify").click()
    wait_for_text(page, "#clf-models", "You have 1 run")
    assert text_of(page, "#clf-models") == (
        f"You have 1 run (newest first); an .onnx file made by this app works too.\n\n{imagenet}")
    # The run by its name (the zip's, backbone and strategy, accuracy, time), selected, and the list opens on one click.
    name = page.locator("#clf-run input").input_value()
    assert re.fullmatch(r"photos · resnet18 full · val \d{1,3}% · \d\d:\d\d", name), name
    page.locator("#clf-run input").click()
    assert page.get_by_role("option").all_inner_texts() == [f"✓\n{name}"]  # the one run, ticked as selected
    page.keyboard.press("Escape")
    page.locator("#clf-image input[type=file]").set_input_files(str(tmp_path / "photos" / "red" / "red_00.jpg"))
    page.locator("#clf-image img").wait_for()
    page.locator("#clf-classify").click()
    wait_for_text(page, "#clf-info", "Provider")
    labels = text_of(page, "#clf-label")
    assert all(name in labels for name in ("red", "green", "blue"))


def no_popup_or_badge(page) -> bool:
    """No toast and no red "Error" badge: a message stays where it was shown."""
    return page.locator('[data-testid="toast-body"]').count() == 0 and page.get_by_text("Error", exact=True).count() == 0


def test_a_bad_upload_shows_its_whole_message_in_the_report_area(page, tmp_path):
    page.get_by_role("tab", name="Fine-tune").click()
    not_a_zip = tmp_path / "photos.zip"
    not_a_zip.write_text("these are not photos")
    choose(page, "ft-source", "Zip file")
    page.locator("#ft-zip input[type=file]").set_input_files(str(not_a_zip))
    wait_for_text(page, "#ft-report", "Cannot use these photos")
    report = text_of(page, "#ft-report")
    assert report.startswith("Cannot use these photos: ") and "is not a valid .zip file" in report, report
    page.wait_for_timeout(6_000)  # longer than a popup would have stayed
    assert text_of(page, "#ft-report") == report and no_popup_or_badge(page)
    assert "Traceback" not in page.content()


# ---------------------------------------------------------------- a folder of photos, picked or dropped

def pick_folder(page, folder: Path) -> None:
    """Choose a folder with the browser's folder picker, as a person does (Playwright gives the input a directory)."""
    page.get_by_role("tab", name="Fine-tune").click()
    choose(page, "ft-source", "A folder of photos")
    page.locator("#ft-folder .ts-choose").wait_for()
    page.locator("#ft-folder input[type=file]").set_input_files(str(folder))


def photo_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.jpg"))


def sent_line(photos: int, folder: Path, left_out: int = 0) -> str:
    """The picker's line once a folder is sent, its seconds as a pattern."""
    tail = rf"; {left_out} other file{'s' if left_out != 1 else ''} not sent \(the report lists them\)\." if left_out else r"\."
    return rf"Sent {photos} photos \({re.escape(size_words(photo_bytes(folder)))}\) from {folder.name} in \d+\.\d s{tail}"


def uploaded_names() -> set[str]:
    """The names of every file Gradio's upload route has stored in this test session."""
    return {p.name for p in Path(os.environ["GRADIO_TEMP_DIR"]).rglob("*") if p.is_file()}


def test_a_picked_folder_keeps_its_class_folders_and_a_train_val_layout_works_as_well(page, tmp_path):
    food = write_photos(tmp_path / "food", per_class=5, classes=("red", "green", "blue"))
    pick_folder(page, food)
    wait_for_text(page, "#ft-report", "layout: class folders")
    assert text_of(page, "#ft-report") == (
        "3 classes, layout: class folders, validation: split (20%, seed 0).\n\n"
        "class\ttrain\tval\ttest\nblue\t4\t1\t0\ngreen\t4\t1\t0\nred\t4\t1\t0")
    assert re.fullmatch(sent_line(15, food), text_of(page, "#ft-folder .ts-status"))
    page.locator("#ft-check").click()  # checking again takes the folder already sent
    wait_for_text(page, "#ft-report", "layout: class folders")

    split = tmp_path / "food-split"
    write_photos(split / "train", per_class=4, classes=("red", "blue"))
    write_photos(split / "val", per_class=2, classes=("red", "blue"), seed=1)
    write_photos(split / "test", per_class=1, classes=("red", "blue"), seed=2)
    page.locator("#ft-folder input[type=file]").set_input_files(str(split))
    wait_for_text(page, "#ft-report", "layout: train/val/test")
    assert text_of(page, "#ft-report") == (
        "2 classes, layout: train/val/test, validation: folder.\n\n"
        "class\ttrain\tval\ttest\nblue\t4\t2\t1\nred\t4\t2\t1")
    assert re.fullmatch(sent_line(14, split), text_of(page, "#ft-folder .ts-status"))
    page.locator("#ft-folder progress").wait_for(state="hidden")  # the bar goes once the folder is sent
    assert "Traceback" not in page.content()


def test_a_picked_folder_s_junk_is_not_sent_and_the_report_lists_it_with_reasons(page, tmp_path):
    holiday = write_photos(tmp_path / "holiday", per_class=6, classes=("red", "blue"))
    (holiday / "holiday-notes.txt").write_text("which is which")
    (holiday / "red" / "holiday-readme.md").write_text("# red")
    (holiday / "blue" / "holiday-broken.jpg").write_text("not a photo, whatever its name says")
    (holiday / ".DS_Store").write_bytes(b"\0\1")
    (holiday / "Thumbs.db").write_bytes(b"\0\2")
    (holiday / "__MACOSX" / "red").mkdir(parents=True)
    (holiday / "__MACOSX" / "red" / "._holiday-red.jpg").write_bytes(b"\0\3")
    pick_folder(page, holiday)
    wait_for_text(page, "#ft-report", "Skipped 3 file(s)")
    assert text_of(page, "#ft-report") == (
        "2 classes, layout: class folders, validation: split (20%, seed 0).\n\n"
        "class\ttrain\tval\ttest\nblue\t5\t1\t0\nred\t5\t1\t0\n\n"
        "Skipped 3 file(s):\n\n"
        "blue/holiday-broken.jpg: not an image (unrecognised format)\n"
        "holiday-notes.txt: not inside a class folder\n"
        "red/holiday-readme.md: not an image file type")
    # The broken .jpg travelled (only decoding can tell); the rest never left the browser.
    assert re.fullmatch(sent_line(13, holiday, left_out=2), text_of(page, "#ft-folder .ts-status"))
    sent = uploaded_names()
    assert "holiday-broken.jpg" in sent
    assert not sent & {"holiday-notes.txt", "holiday-readme.md", ".DS_Store", "Thumbs.db", "._holiday-red.jpg"}


def test_a_picked_folder_without_photos_sends_nothing_and_the_report_says_what_it_expected(page, tmp_path):
    notes = tmp_path / "notes"
    (notes / "2024").mkdir(parents=True)
    (notes / "2024" / "todo.txt").write_text("buy a camera")
    (notes / "readme.md").write_text("# notes")
    pick_folder(page, notes)
    wait_for_text(page, "#ft-report", "Cannot use these photos")
    assert text_of(page, "#ft-report") == (
        "Cannot use these photos: No photos found in notes. Expected one folder per class with photos "
        "(.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp), or train/ and val/ folders that contain them")
    assert text_of(page, "#ft-folder .ts-status") == "No photos found in notes; nothing was sent."


# A dropped folder, as the browser's drop event hands it over: entries to walk (a folder's reader gives its
# entries a few at a time, then an empty list). Hidden folders must not be walked: .git's reader throws.
DROP = """tree => {
    const bytes = b64 => Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    const entry = (node, parent) => {
        const fullPath = `${parent}/${node.name}`;
        if (node.data !== undefined) {
            return {isFile: true, isDirectory: false, name: node.name, fullPath,
                    file: ok => ok(new File([bytes(node.data)], node.name))};
        }
        const children = node.children.map(child => entry(child, fullPath));
        let read = 0;
        return {isFile: false, isDirectory: true, name: node.name, fullPath, createReader: () => {
            if (node.name === '.git') throw new Error('a hidden folder was walked');
            return {readEntries: (ok) => setTimeout(() => { ok(children.slice(read, read + 2)); read += 2; }, 0)};
        }};
    };
    const root = entry(tree, '');
    const drop = new Event('drop', {bubbles: true, cancelable: true});
    Object.defineProperty(drop, 'dataTransfer', {value: {items: [{kind: 'file', webkitGetAsEntry: () => root}], files: []}});
    document.querySelector('#ft-folder .ts-drop').dispatchEvent(drop);
}"""


def as_dropped(folder: Path) -> dict:
    """A folder as DROP builds its entries: names, children, and each file's bytes (base64)."""
    if folder.is_file():
        return {"name": folder.name, "data": base64.b64encode(folder.read_bytes()).decode()}
    return {"name": folder.name, "children": [as_dropped(child) for child in sorted(folder.iterdir())]}


def test_a_dropped_folder_is_walked_and_checked_as_a_picked_one(page, tmp_path):
    dropped = write_photos(tmp_path / "dropped", per_class=5, classes=("red", "blue"))
    write_photos(dropped / "red" / "2024-summer", per_class=2, classes=("red",), seed=4)  # deeper, still red
    (dropped / "dropped-list.txt").write_text("to sort")
    (dropped / ".git").mkdir()
    (dropped / ".git" / "HEAD").write_text("ref: refs/heads/main")
    page.get_by_role("tab", name="Fine-tune").click()
    choose(page, "ft-source", "A folder of photos")
    page.locator("#ft-folder .ts-drop").wait_for()
    page.evaluate(DROP, as_dropped(dropped))
    wait_for_text(page, "#ft-report", "Skipped 1 file(s)")
    assert text_of(page, "#ft-report") == (
        "2 classes, layout: class folders, validation: split (20%, seed 0).\n\n"
        "class\ttrain\tval\ttest\nblue\t4\t1\t0\nred\t6\t1\t0\n\n"
        "Skipped 1 file(s):\n\ndropped-list.txt: not inside a class folder")
    assert re.fullmatch(sent_line(12, dropped, left_out=1), text_of(page, "#ft-folder .ts-status"))


def test_a_folder_over_the_upload_limit_is_not_sent_and_the_report_says_why(page, tmp_path, monkeypatch):
    monkeypatch.setattr(folder_upload, "LIMITS", Limits(**{**vars(LOCAL_DEFAULTS), "max_upload": "4kb"}))
    big = write_photos(tmp_path / "big", per_class=3, classes=("red", "blue"))
    for photo in big.rglob("*.jpg"):
        photo.rename(photo.with_name(f"big-{photo.name}"))
    pick_folder(page, big)
    wait_for_text(page, "#ft-report", "Cannot use these photos")
    size = size_words(photo_bytes(big))
    assert text_of(page, "#ft-report") == (
        f"Cannot use these photos: big holds {size} of photos; one upload may hold at most 4 KB. "
        "Choose a folder with fewer or smaller photos")
    assert text_of(page, "#ft-folder .ts-status") == (
        f"Not sent: 6 files, {size} of photos in big is more than one upload may hold here.")
    assert not {name for name in uploaded_names() if name.startswith("big-")}  # not one photo travelled


def test_imagenet_weights_offline_say_the_whole_message_with_the_form_s_labels(page, tmp_path, monkeypatch):
    import socket
    import urllib.error

    import torch

    from models.backbones import imagenet_cache_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the app runs in-process: no cached weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    small_training_settings(page, epochs=1)
    choose(page, "ft-weights", "imagenet")
    page.locator("#ft-check").click()
    wait_for_text(page, "#ft-report", "hotdog")
    page.locator("#ft-train").click()
    wait_for_text(page, "#ft-status", "Training failed")
    assert status_text(page) == (
        "Training failed: ImageNet weights for resnet18 could not be loaded (URLError: <urlopen error [Errno -2] Name or "
        "service not known>). Connect to the internet once so torchvision can download "
        "https://download.pytorch.org/models/resnet18-f37072fd.pth into the torch hub cache "
        f"({imagenet_cache_path('resnet18')}), or copy that file there, or pass a local weights file "
        "(“Pretrained weights: file”, .safetensors or .pth), or train from scratch with “Pretrained weights: none”.")
    page.wait_for_timeout(6_000)
    assert no_popup_or_badge(page) and status_text(page).startswith("Training failed: ImageNet weights")
    assert page.locator("#ft-train").is_enabled() and not page.locator("#ft-cancel").is_enabled()


def test_a_reloaded_page_keeps_its_runs_and_opens_the_newest_in_one_click(page, tmp_path):
    small_training_settings(page, epochs=1)
    page.locator("#ft-check").click()  # the sample photos
    wait_for_text(page, "#ft-report", "hotdog")
    page.locator("#ft-train").click()
    wait_for_text(page, "#ft-status", "Training finished")
    trained = status_text(page)
    page.reload()
    page.get_by_role("tab", name="Fine-tune").click()
    # "7. Your runs" opens by itself with the newest run chosen; nothing else is on show.
    page.locator("#ft-open-run").wait_for()
    name = page.locator("#ft-own-run input").input_value()
    assert name.startswith("sample · resnet18 full · val ")
    assert not any(visible(page, selector) for selector in RESULTS)
    page.get_by_role("tab", name="Classify").click()
    page.locator("#clf-run input").click()
    assert name in page.get_by_role("option").all_inner_texts()[0]
    page.keyboard.press("Escape")
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#ft-open-run").click()
    wait_for_text(page, "#ft-status", "Training finished")
    assert status_text(page) == trained
    assert "Validation accuracy" in text_of(page, "#ft-metrics")
    charts_drawn(page, "ft-loss-plot", "ft-acc-plot", "ft-lr-plot")
    page.locator("#ft-confusion img, #ft-confusion svg, #ft-confusion canvas").first.wait_for()
    assert page.locator("#ft-epoch-table tbody tr").count() == 1 and visible(page, "#ft-download")


# The visible controls and texts of the page that stick out of the window or overlap one another (one inside
# the other is not overlapping: a label holds its input; nor is Gradio's floating label badge on a block's frame).
CROWDED = """() => {
    const shown = [...document.querySelectorAll('button, input:not([type=file]):not([type=hidden]), textarea, '
                   + 'label:not([data-testid="block-label"]), [data-testid="block-info"], [data-testid="markdown"] p, '
                   + 'h1, h2')].filter(e => {
        const r = e.getBoundingClientRect(), s = getComputedStyle(e);
        return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.opacity !== '0';
    });
    const name = e => `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''} "${(e.innerText || e.value || '').slice(0, 30)}"`;
    const problems = [];
    if (document.documentElement.scrollWidth > innerWidth) problems.push(`page scrolls sideways: ${document.documentElement.scrollWidth}px`);
    for (const e of shown) {
        const r = e.getBoundingClientRect();
        if (r.left < -1 || r.right > innerWidth + 1) problems.push(`cut: ${name(e)} ${Math.round(r.left)}..${Math.round(r.right)}`);
    }
    for (let i = 0; i < shown.length; i++) for (let j = i + 1; j < shown.length; j++) {
        const a = shown[i], b = shown[j];
        if (a.contains(b) || b.contains(a)) continue;
        const p = a.getBoundingClientRect(), q = b.getBoundingClientRect();
        const w = Math.min(p.right, q.right) - Math.max(p.left, q.left), h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
        if (w > 2 && h > 2) problems.push(`overlap: ${name(a)} and ${name(b)}`);
    }
    return problems;
}"""


def test_at_phone_width_nothing_on_the_fine_tune_tab_overlaps_or_is_cut(page):
    page.get_by_role("tab", name="Fine-tune").click()  # at phone width the tabs fold into a menu
    page.set_viewport_size({"width": 390, "height": 844})
    for section in ("3. Learning-rate finder", "7. Your runs", "5. Compare runs"):
        page.get_by_text(section, exact=True).click()
    page.get_by_text("More settings: momentum, weight decay, label smoothing, BatchNorm, precision").click()
    choose(page, "ft-source", "A folder of photos")
    page.locator("#ft-folder .ts-choose").wait_for()
    page.wait_for_timeout(500)
    assert page.evaluate(CROWDED) == []
    choose(page, "ft-source", "Photos per class")
    choose(page, "ft-strategy", "finetune")
    page.locator("#ft-head-epochs").wait_for()
    page.wait_for_timeout(500)
    assert page.evaluate(CROWDED) == []


# Lines drawn per trace name in a plotly chart: {name: count of lines with a real path}.
LINES_BY_NAME = """id => {
    const chart = document.querySelector(`#${id} .js-plotly-plot`);
    if (!chart) return {};
    const counts = {};
    for (const trace of chart.querySelectorAll('.scatterlayer .trace')) {
        const name = trace.__data__ && trace.__data__[0] && trace.__data__[0].trace.name;
        const line = trace.querySelector('path.js-line');
        if (name && line && (line.getAttribute('d') || '').length > 10) counts[name] = (counts[name] || 0) + 1;
    }
    return counts;
}"""


TABLE_ROWS = """id => [...document.querySelectorAll(`#${id} [role=row]`)]
    .map(row => [...row.querySelectorAll('[role=gridcell]')].map(cell => cell.innerText.trim()))
    .filter(cells => cells.some(text => text))"""


def table_rows(page, elem_id: str) -> list[list[str]]:
    """The cells of a Dataframe's rows as shown, once it shows some."""
    page.wait_for_function(f"() => ({TABLE_ROWS})('{elem_id}').length > 0")
    return page.evaluate(TABLE_ROWS, elem_id)


def test_experiment_journey_two_arms_run_one_after_the_other_and_open_side_by_side(page, tmp_path):
    small_training_settings(page, epochs=2)
    page.locator("#ft-check").click()  # the sample photos
    wait_for_text(page, "#ft-report", "hotdog")
    page.get_by_text("4. Experiments: the tutorials' comparisons on your photos, one click each", exact=True).click()
    choose(page, "ft-exp-kind", "Head LR x1 vs x10")
    wait_for_text(page, "#ft-exp-plan", "2 runs: head LR x1, head LR x10")
    plan = text_of(page, "#ft-exp-plan")
    assert re.search(r"On your \d+ training and \d+ validation photos: about \d+ (seconds|minutes) on this server", plan), plan
    page.evaluate(RECORD_STATUS)
    page.locator("#ft-run-exp").click()
    page.wait_for_function("() => document.querySelector('#ft-train').disabled")
    wait_for_text(page, "#ft-status", "Experiment finished")
    seen = page.evaluate("() => window.statusSeen")
    assert any(s.startswith("Run 1 of 2: head LR x1. Epoch 1/2: validation accuracy") for s in seen), seen
    assert any("Run 2 of 2: head LR x10. Epoch 2/2: validation accuracy" in s for s in seen), seen
    said = status_text(page)
    assert re.match(r"Experiment finished in \d+ (seconds|minutes) \(estimated about \d+ (seconds|minutes)\): 2 runs finished\.",
                    said), said
    # The comparison opened by itself: both arms chosen, their curves drawn one colour each, the tables filled.
    chosen = page.locator("#cmp-runs .token").all_inner_texts()
    assert len(chosen) == 2 and "head LR x1 ·" in chosen[0] and "head LR x10 ·" in chosen[1], chosen
    summary = text_of(page, "#cmp-summary")
    assert "Comparing 2 runs: head LR x1, head LR x10." in summary
    assert "Same photos and the same train/validation split in every run, seed 0" in summary
    for chart in ("cmp-loss", "cmp-accuracy"):
        page.wait_for_function(f"() => Object.keys(({LINES_BY_NAME})('{chart}')).length === 4")
        assert page.evaluate(LINES_BY_NAME, chart) == {"head LR x1 (training)": 1, "head LR x1 (validation)": 1,
                                                       "head LR x10 (training)": 1, "head LR x10 (validation)": 1}
    page.wait_for_function(f"() => Object.keys(({LINES_BY_NAME})('cmp-lr')).length === 2")
    assert page.locator("#cmp-confusion .heatmaplayer image").count() == 2
    assert table_rows(page, "cmp-settings") == [["Head LR multiplier", "1.0", "10.0"]]
    metrics = {row[0]: row[1:] for row in table_rows(page, "cmp-metrics")}
    assert re.fullmatch(r"\d+\.\d%", metrics["validation accuracy"][0]), metrics
    assert re.fullmatch(r"\d+\.\d% \([+-]\d+\.\d pt\)", metrics["validation accuracy"][1]), metrics
    assert [row[0] for row in table_rows(page, "cmp-f1")] == ["hotdog", "not_hotdog"]
    assert visible(page, "#cmp-report")
