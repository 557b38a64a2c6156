"""Runs side by side on the fine-tune tab: the picker, the comparison (`trainer.compare`, drawn by
`trainer.compare_report`), the HTML report to download, and /compare for programs.

Only the visitor's own runs can be compared; a run trained elsewhere joins them first, from its zip or
from the Hub repository it was pushed to (`hf://user/name`). Experiments (`ui.finetune.run_experiment_ui`)
open their arms here when they end.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import gradio as gr

from models.run_folder import RunFolder, RunFolderError
from models.run_import import download_run, import_run_zip
from trainer.compare import Comparison, compare
from trainer.compare_report import f1_frame, figures, html_report, metrics_frame, settings_frame, summary_markdown
from ui import session
from ui.errors import in_place, plain, refusal, user_errors

MAX_COMPARED = 4
# The comparison's outputs on the page, in order (comparison_update's keys).
OUTPUTS = ("summary", "metrics", "loss", "accuracy", "lr", "confusion", "settings", "f1", "report")
REPORT = "comparison.html"


def choices(key: str) -> list[tuple[str, str]]:
    """The visitor's runs that have results, newest first, as (name, run id)."""
    return [(r.name(), r.run_id) for r in session.STORE.runs(key) if r.ending != "unfinished"]


def finished_runs(request: gr.Request = None, newest: str | None = None):
    """The picker's choices refreshed (the chosen runs stay chosen)."""
    return gr.update(choices=choices(session.visitor(request)))


def own_runs(run_ids, request: gr.Request | None) -> list[str]:
    """The folders of 2 to MAX_COMPARED of the visitor's finished runs; gr.Error says what is wrong with the choice."""
    ids = [run_ids] if isinstance(run_ids, str) else list(run_ids or [])
    ids = list(dict.fromkeys(ids))
    if len(ids) < 2:
        raise refusal("Pick at least two of your runs to compare")
    if len(ids) > MAX_COMPARED:
        raise refusal(f"Compare at most {MAX_COMPARED} runs at a time (you picked {len(ids)})")
    runs = {r.run_id: r for r in session.STORE.runs(session.visitor(request))}
    missing = [i for i in ids if i not in runs]
    if missing:
        raise refusal("Only your own runs can be compared; one of those is not yours, or it has been deleted")
    unfinished = [runs[i].name() for i in ids if not RunFolder(runs[i].path).has_results()]
    if unfinished:
        raise refusal(f"{unfinished[0]} has no results yet (still training, or stopped before writing them)")
    return [str(runs[i].path) for i in ids]


def add_run_zip(zip_path: str | None, chosen, request: gr.Request = None) -> tuple:
    """Handler of the run-zip upload: the run joins the visitor's runs and the comparison's choice.

    Answers (its message, the picker). The zip is one the app made ("Download the run"), from here or elsewhere.
    """
    if not zip_path:
        raise refusal("Choose the .zip of a run (as 'Download the run (zip)' saves it)")
    return _add_run(lambda dest: import_run_zip(zip_path, dest), chosen, request,
                    hide=str(Path(zip_path).parent) + os.sep)


def add_run_hub(ref: str | None, chosen, request: gr.Request = None) -> tuple:
    """Handler of 'Add' for a pushed run (hf://user/name): downloaded into the visitor's runs, then chosen.

    On a shared server only public repos can be reached: the server's own Hub login never acts for a visitor.
    """
    ref = (ref or "").strip()
    if not ref:
        raise refusal("Type the run's repository, as hf://user/name")
    return _add_run(lambda dest: download_run(ref, dest, endpoint=os.environ.get("HF_ENDPOINT") or None,
                                              use_login=not session.is_shared(request)), chosen, request)


def _add_run(bring, chosen, request: gr.Request | None, hide: str = "") -> tuple:
    """A run brought from elsewhere (`bring(dest)` fills a new run folder) as one of the visitor's, chosen for comparing."""
    key = session.visitor(request)
    session.ensure_room(key)
    run_id, path = session.STORE.new_run(key)
    try:
        with user_errors(RunFolderError):
            bring(path)
    except gr.Error as exc:
        shutil.rmtree(path, ignore_errors=True)
        raise refusal(exc.message.replace(hide, "") if hide else exc.message) from None
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    own = choices(key)
    ids = {run for _, run in own}
    picked = [i for i in ([chosen] if isinstance(chosen, str) else list(chosen or [])) if i in ids and i != run_id]
    picked = (picked + [run_id])[-MAX_COMPARED:]
    return f"Added {plain(RunFolder(path).summary())} to your runs.", gr.update(choices=own, value=picked)


def comparison_update(comparison: Comparison, key: str) -> dict:
    """The comparison's outputs: the lines above it, the tables, the figures, and the report file to download."""
    report = session.STORE.visitor_dir(key) / "comparison" / REPORT
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(html_report(comparison), encoding="utf-8")
    drawn = figures(comparison)
    return {"summary": summary_markdown(comparison), "metrics": metrics_frame(comparison),
            "loss": drawn["loss"], "accuracy": drawn["accuracy"], "lr": drawn["lr"], "confusion": drawn["confusion"],
            "settings": settings_frame(comparison), "f1": f1_frame(comparison),
            "report": gr.update(value=str(report), visible=True)}


def show_comparison(run_ids, request: gr.Request = None) -> tuple:
    """Handler of Compare: (its message, the comparison area shown, *OUTPUTS) for the chosen runs."""
    paths = own_runs(run_ids, request)
    with user_errors(RunFolderError):
        comparison = compare(paths)
    shown = comparison_update(comparison, session.visitor(request))
    return "", gr.update(visible=True), *(shown[name] for name in OUTPUTS)


def compare_api(run_ids: list[str], request: gr.Request = None) -> dict:
    """API: two to four of your runs (their ids, as /train answers them) compared, as JSON.

    The settings that differ, final metrics with their differences from the first run, per-class F1,
    whether the runs saw the same photos and split, each run's history and the command that trains it again.
    """
    paths = own_runs(run_ids, request)
    with user_errors(RunFolderError):
        return compare(paths).to_dict()


def compare_section(runs_changed: gr.State) -> dict:
    """The comparison area of the fine-tune tab; returns its components by name (the picker as "runs")."""
    no_badge = gr.State(None)
    parts: dict = {}
    gr.Markdown("Pick two to four of your runs: their curves overlaid, the settings that differ, the final figures "
                "with their differences, per-class F1 and the confusion matrices side by side.")
    with gr.Row():
        parts["runs"] = gr.Dropdown(label="Runs to compare", choices=[], multiselect=True, max_choices=MAX_COMPARED,
                                    scale=4, elem_id="cmp-runs")
        parts["button"] = gr.Button("Compare", variant="primary", scale=1, min_width=110, elem_id="cmp-compare")
    with gr.Accordion("Add a run trained elsewhere: its zip, or the Hub repository it was pushed to", open=False):
        with gr.Row(equal_height=False):
            parts["zip"] = gr.File(label="Run zip (as 'Download the run' saves it)", file_types=[".zip"], height=120,
                                   elem_id="cmp-run-zip")
            with gr.Column():
                parts["hub"] = gr.Textbox(label="Pushed run", placeholder="hf://user/name", elem_id="cmp-run-hub")
                parts["add"] = gr.Button("Add", elem_id="cmp-add-hub")
    parts["message"] = gr.Markdown(elem_id="cmp-message")
    with gr.Column(visible=False) as parts["area"]:
        parts["summary"] = gr.Markdown(elem_id="cmp-summary")
        parts["metrics"] = gr.Dataframe(label="Final metrics (differences from the first run)", interactive=False,
                                        elem_id="cmp-metrics")
        with gr.Row():
            parts["loss"] = gr.Plot(show_label=False, min_width=320, elem_id="cmp-loss")
            parts["accuracy"] = gr.Plot(show_label=False, min_width=320, elem_id="cmp-accuracy")
        with gr.Row():
            parts["lr"] = gr.Plot(show_label=False, min_width=320, elem_id="cmp-lr")
            parts["settings"] = gr.Dataframe(label="Settings that differ", interactive=False, min_width=320,
                                             elem_id="cmp-settings")
        parts["confusion"] = gr.Plot(show_label=False, elem_id="cmp-confusion")
        parts["f1"] = gr.Dataframe(label="F1 per class (validation), with the change from the first run",
                                   interactive=False, elem_id="cmp-f1")
        parts["report"] = gr.DownloadButton("Download the comparison (HTML report)", visible=False, elem_id="cmp-report")

    outputs = [parts["area"], *(parts[name] for name in OUTPUTS)]
    runs_changed.change(finished_runs, runs_changed, parts["runs"], api_visibility="private")
    parts["runs"].focus(finished_runs, None, parts["runs"], api_visibility="private")
    parts["button"].click(in_place(show_comparison, 1 + len(outputs), at=0, title="Cannot compare",
                                   working="_Comparing…_"),
                          parts["runs"], [parts["message"], *outputs], api_visibility="private",
                          show_progress_on=[no_badge])
    parts["zip"].upload(in_place(add_run_zip, 2, at=0, title="Cannot add this run", working="_Adding the run…_"),
                        [parts["zip"], parts["runs"]], [parts["message"], parts["runs"]], api_visibility="private",
                        show_progress_on=[no_badge])
    parts["add"].click(in_place(add_run_hub, 2, at=0, title="Cannot add this run", working="_Downloading the run…_"),
                       [parts["hub"], parts["runs"]], [parts["message"], parts["runs"]], api_visibility="private",
                       show_progress_on=[no_badge])
    api_ids = gr.JSON(visible=False)
    gr.Button(visible=False).click(compare_api, api_ids, gr.JSON(visible=False), api_name="compare")
    return parts
