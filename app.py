"""Transfer Studio: builds the Gradio app from its tabs (`ui/`) and launches it.

`demo` is built at import (Spaces and tests import it); it launches only under `__main__`.
"""

from __future__ import annotations

import os
import threading

import gradio as gr

from ui import session
from ui.classify import classify_tab, prepare_imagenet
from ui.finetune import finetune_tab
from ui.limits import ON_SPACE, limits_from
from ui.schedules import lr_curve_api, schedules_tab


def build_app() -> gr.Blocks:
    # On a Space, Gradio's upload cache is swept hourly of files older than two hours (handlers copy what they keep).
    with gr.Blocks(title="Transfer Studio", delete_cache=(3600, 7200) if ON_SPACE else None) as demo:
        gr.Markdown("# Transfer Studio\nTransfer learning on your own photos: schedules, fine-tuning, serving.")
        current_schedule = gr.State(None)  # the studio's schedule, for the fine-tune form to take over
        runs_changed = gr.State(None)  # the newest run id; the classify tab refreshes its picker on change
        with gr.Tabs():
            with gr.Tab("Learning-rate schedules", id="schedules"):
                draw_schedule = schedules_tab(current_schedule)
            with gr.Tab("Fine-tune", id="finetune"):
                finetune_tab(current_schedule, runs_changed)
            with gr.Tab("Classify", id="classify"):
                classify_tab(runs_changed)
        # The browser keeps its visitor token across reloads and restarts, so its runs stay its own.
        visitor_token = gr.BrowserState(None, storage_key=session.BROWSER_KEY, secret=session.browser_secret())
        demo.load(session.claim_visitor, visitor_token, visitor_token, api_visibility="private").then(
            session.newest_run, None, runs_changed, api_visibility="private")
        demo.load(*draw_schedule, api_visibility="private")
        gr.api(lr_curve_api, api_name="lr_curve")
    return demo


demo = build_app()


def launch_options() -> dict:
    """Where and how the app listens; the environment overrides each default."""
    return {
        "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        "server_port": int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        # Uploads beyond this are refused by Gradio before they reach the app (photo zips are the big ones).
        "max_file_size": limits_from(os.environ, ON_SPACE).max_upload,
    }


def main() -> None:
    threading.Thread(target=prepare_imagenet, name="imagenet-export", daemon=True).start()
    # Training and the LR finder share one slot ("training", limit 1); classification runs 4 at a time.
    demo.queue(default_concurrency_limit=4).launch(**launch_options())


if __name__ == "__main__":
    main()
