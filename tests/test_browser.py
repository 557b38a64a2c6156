"""The app as a person uses it: Debian's Chromium, driven by Playwright, against the app on loopback.

Skipped (with the reason) where Chromium or Playwright is missing, as on a user's Mac; under CI=true
a missing browser fails instead. Each journey saves a screenshot under test-output/browser/.
"""

import os
import shutil
from pathlib import Path

import pytest

from conftest import ASSETS, served_app, write_photos, zip_folder

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
