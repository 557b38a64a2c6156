"""Benchmark of the schedules tab in Chromium: first page, tab switches, and long per-batch curves drawn.

    python bench/schedule_chart.py                 # launches the app in-process on a free loopback port
    python bench/schedule_chart.py --repeats 7 --epochs 100 --steps 1000
    python bench/schedule_chart.py --url http://127.0.0.1:7860/

1. First page: from navigation until the default curve's line is in the chart's SVG; for the server's first
   visitor (the process computes its first curve) and for a later one (a new browser context: no cache).
2. Tab switch: Fine-tune shown (its Train button visible), then back to the schedules tab with its line drawn.
3. Long curve: --epochs x --steps per-batch CosineAnnealingLR (100,000 steps by default), redrawn --repeats
   times by alternating T_max between the whole run and one epoch less; each time from the change in the
   page until plotly has drawn the new curve (the trace's name and its last step, read in the page on each
   animation frame). The server's share (torch stepping, thinning, the figure) is measured in-process too.
   Target: under 1 s per redraw on 2 cores.

Uses Debian's Chromium through Playwright, as the browser tests do; traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000
# Resolves to performance.now() once the chart's first trace has `name` in its name, ends at step `last`, and
# has a drawn line; false before (Playwright polls it on every animation frame).
DRAWN = """([name, last]) => {
    const chart = document.querySelector('#sched-plot .js-plotly-plot');
    const trace = chart && chart.data && chart.data.find(t => t.name.startsWith('current: '));
    const line = chart && chart.querySelector('.scatterlayer .trace path.js-line');
    const drawn = trace && trace.name.includes(name) && trace.x[trace.x.length - 1] === last
        && line && (line.getAttribute('d') || '').length > 10;
    return drawn ? performance.now() : false;
}"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app already running (default: launch one in-process)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1000, help="batches per epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    return parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_field(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    field.fill(str(value))
    field.press("Tab")


def timed_redraw(page, action, name: str, last: int) -> float:
    """Seconds from `action` in the page until the chart shows the curve named `name` ending at step `last`."""
    started = page.evaluate("performance.now()")
    action()
    done = page.wait_for_function(DRAWN, arg=[name, last], polling="raf", timeout=TIMEOUT_MS).json_value()
    return (done - started) / 1000


def server_share(epochs: int, steps: int, repeats: int) -> list[float]:
    """Seconds the handler's work takes in-process: torch stepping, thinning, figure, code."""
    from trainer.config import ScheduleConfig
    from trainer.schedules import ValLossShape
    from ui.schedules import render_schedule

    config = ScheduleConfig("CosineAnnealingLR", 0.1, epochs, steps, {}, step_per="batch")
    render_schedule(config, ValLossShape(), [], False)  # imports and first-call set-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        render_schedule(config, ValLossShape(), [], False)
        times.append(time.perf_counter() - started)
    return times


def opened(browser, url: str) -> tuple:
    """(page, seconds) for a new visitor, with a browser cache of its own, until the default curve is drawn."""
    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_function(DRAWN, arg=["CosineAnnealingLR", 299], polling="raf")
    return page, time.perf_counter() - started


def run(args: argparse.Namespace, url: str) -> None:
    from playwright.sync_api import sync_playwright

    last = args.epochs * args.steps - 1
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        _, first_page = opened(browser, url)
        page, next_page = opened(browser, url)

        started = time.perf_counter()
        page.get_by_role("tab", name="Fine-tune").click()
        page.locator("#ft-train").wait_for(state="visible")
        to_finetune = time.perf_counter() - started
        started = time.perf_counter()
        page.get_by_role("tab", name="Learning-rate schedules").click()
        page.locator("#sched-plot .scatterlayer .trace path.js-line").first.wait_for(state="visible")
        back = time.perf_counter() - started

        set_field(page, "sched-epochs", args.epochs)
        set_field(page, "sched-steps", args.steps)
        page.wait_for_function(DRAWN, arg=["CosineAnnealingLR", last], polling="raf")
        first_long = timed_redraw(page, lambda: page.locator("#sched-step-per").get_by_label("batch", exact=True).check(),
                                  "per batch", last)
        redraws = []
        for i in range(args.repeats):
            t_max = args.epochs - 1 - i % 2
            redraws.append(timed_redraw(page, lambda t=t_max: set_field(page, "param-CosineAnnealingLR-T_max", t),
                                        f"T_max={t_max})", last))
        points = page.evaluate("() => document.querySelector('#sched-plot .js-plotly-plot').data[0].x.length")
        browser.close()

    server = server_share(args.epochs, args.steps, args.repeats)
    steps = args.epochs * args.steps
    print(f"first page, to the default curve drawn:        {first_page:.2f} s (the server's first visitor), "
          f"{next_page:.2f} s (a later one)")
    print(f"tab switch to Fine-tune / back with its chart: {to_finetune:.2f} s / {back:.2f} s")
    print(f"{args.epochs} x {args.steps} per-batch curve ({steps:,} steps, drawn from {points:,} points):")
    print(f"  switch epoch -> batch:                       {first_long:.2f} s")
    print(f"  change T_max, {args.repeats} times:                  median {statistics.median(redraws):.2f} s, "
          f"max {max(redraws):.2f} s  (target < 1 s)")
    print(f"  of which the server's work (in-process):     median {statistics.median(server):.2f} s")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.url:
        run(args, args.url)
        return 0
    import app

    app.demo.queue(default_concurrency_limit=4)
    _, url, _ = app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        run(args, url)
    finally:
        app.demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
