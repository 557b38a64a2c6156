"""A photo folder into the Fine-tune tab two ways, timed as a person waits: picked with the folder picker,
and the same folder as a zip. From choosing the files to the data report on the page, in Chromium.

    python bench/bench_folder_upload.py                            # ../shared/data/food4, 5 rounds each
    python bench/bench_folder_upload.py ../shared/data/hotdog --rounds 5

The app runs in this process on a free loopback port, with its own temporary data and upload folders;
the browser is Debian's Chromium through Playwright. Each round uses a fresh page; a first round warms the
app up (imports, first decodes) and is not counted. The zip is made once
beforehand (a person zips their folder before uploading it; the time that takes is printed apart). Prints
each round, the medians, the picker's own line (how long the photos took to send) and whether both ways
gave the same report. Exit status 1 when they differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 300_000
SETTLE_MS = 3_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zip_of(folder: Path, archive: Path) -> Path:
    """The folder zipped as a file manager zips it: entries start with the folder's name, photos stored as they are."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder.parent).as_posix())
    return archive


def open_tab(browser, url: str, source: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#ft-source").get_by_label(source, exact=True).check()
    return page


def until_report(page, files: Path, input_selector: str) -> tuple[float, str]:
    """Seconds from giving the files to the report's table on the page, and the report's text."""
    started = time.perf_counter()
    page.locator(input_selector).set_input_files(str(files))
    page.locator("#ft-report table").wait_for()
    seconds = time.perf_counter() - started
    # What a report sets off (the sample grid's copies, the experiment plan) ends before the next round starts.
    page.wait_for_timeout(SETTLE_MS)
    return seconds, page.locator("#ft-report").inner_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(ROOT.parent / "shared" / "data" / "food4"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = Path(args.folder).resolve()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not folder.is_dir() or not chromium:
        raise SystemExit(f"needs the folder {folder} and Chromium (apt-get install chromium)")

    work = Path(tempfile.mkdtemp(prefix="bench-folder-upload-"))
    os.environ["TRANSFER_STUDIO_DATA_DIR"] = str(work / "data")
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    photos = [p for p in folder.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in photos)
    started = time.perf_counter()
    archive = zip_of(folder, work / f"{folder.name}.zip")
    zipping = time.perf_counter() - started
    print(f"{folder}: {len(photos)} files, {size / 2**20:.1f} MB; zipped in {zipping:.2f} s "
          f"({archive.stat().st_size / 2**20:.1f} MB)")

    import app  # after the environment is set: the app's folders are this run's
    from playwright.sync_api import sync_playwright

    app.demo.queue(default_concurrency_limit=4)
    _, url, _ = app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    times = {"folder picker": [], "zip": []}
    reports, sent_lines = {}, []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            for round_ in range(args.rounds + 1):  # round 0 warms up
                page = open_tab(browser, url, "A folder of photos")
                by_folder, reports["folder picker"] = until_report(page, folder, "#ft-folder input[type=file]")
                sent = page.locator("#ft-folder .ts-status").inner_text()
                page.close()
                page = open_tab(browser, url, "Zip file")
                by_zip, reports["zip"] = until_report(page, archive, "#ft-zip input[type=file]")
                page.close()
                print(f"round {round_ or 'warm-up'}: folder picker {by_folder:.2f} s, zip {by_zip:.2f} s  ({sent})")
                if round_:
                    times["folder picker"].append(by_folder)
                    times["zip"].append(by_zip)
                    sent_lines.append(sent)
            browser.close()
    finally:
        app.demo.close()
        shutil.rmtree(work, ignore_errors=True)
    print("\nfrom giving the files to the data report on the page (median of "
          f"{args.rounds}):")
    for way, seconds in times.items():
        print(f"  {way:<14} {statistics.median(seconds):6.2f} s   (each: {', '.join(f'{s:.2f}' for s in seconds)})")
    same = reports["folder picker"] == reports["zip"]
    print(f"same report both ways: {'yes' if same else 'NO'}")
    if not same:
        print(f"--- folder picker\n{reports['folder picker']}\n--- zip\n{reports['zip']}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
