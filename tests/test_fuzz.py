"""Hostile input: the app never crashes, never writes outside its data folder, and reports what it skipped.

Three doors are fuzzed, each with property-based cases (Hypothesis) and a corpus of crafted files:

* the photo intake: `trainer.data.open_dataset` on folders and zips, and the app's own handler
  `ui.finetune.check_photos`, which may only ever answer with a result or a `gr.Error` carrying a message;
* the learning-rate formula language (`trainer.formula.parse_formula`) and the schedules API that
  uses it (`trainer.schedules.lr_curve`), which may only raise FormulaError / ScheduleError, fast;
* model files: `models.runtime.OnnxClassifier` and the app's classify path, which may only raise
  ModelLoadError for an unusable .onnx file.

Every case is counted per category. Any exception other than the door's user-facing error types
is a crash: it is recorded and fails its test. The last test asserts there were none and writes the
counts to test-output/fuzz_counts.json (and prints them).

The unit tests of each module (tests/test_data.py, tests/test_formula.py, tests/test_runtime.py) pin
the exact messages and limits; this module throws volume and hostility at the same doors.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import random
import shutil
import stat
import struct
import tempfile
import time
import unicodedata
import zipfile
import zlib
from collections import Counter
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from PIL import Image

from conftest import symlink_entry
from models.preprocess import PreprocessSpec
from models.runtime import ModelLoadError, OnnxClassifier
from trainer.config import ScheduleConfig
from trainer.data import MAX_ZIP_BYTES, DataError, extract_zip, is_hidden, open_dataset
from trainer.formula import MAX_LENGTH, FormulaError, parse_formula
from models.run_store import RunStore
from trainer.schedules import ScheduleError, lr_curve

REPO = Path(__file__).resolve().parents[1]
COUNTS_FILE = REPO / "test-output" / "fuzz_counts.json"

# Property tests write real files; a modest number of examples keeps the module well under a minute
# on two shared cores. The database is off so that a run's counts do not depend on earlier runs.
FAST = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------------
# Counting cases, and what a "clear message" is
# ---------------------------------------------------------------------------------------------

CASES: Counter = Counter()
CRASHES: list[str] = []


def assert_clear(message: str) -> None:
    """A message for a person: present, not a traceback, not a wall of text."""
    assert message and message.strip(), "empty error message"
    assert "Traceback" not in message and 'File "' not in message, message
    assert len(message) < 2000, message[:200]


def attempt(category: str, action, expected: tuple[type[BaseException], ...]):
    """Run one fuzz case: return its result, or the expected exception (its message checked).

    Any other exception is recorded as a crash and raised.
    """
    CASES[category] += 1
    try:
        return action()
    except expected as exc:
        assert_clear(exc.message if hasattr(exc, "message") else str(exc))
        return exc
    except AssertionError:
        raise  # a property of the case failed: the test reports it, it is not a crash of the code under test
    except Exception as exc:  # noqa: BLE001 -- the point of the module: nothing else may escape
        CRASHES.append(f"{category}: {type(exc).__name__}: {str(exc)[:200]}")
        raise


# ---------------------------------------------------------------------------------------------
# "Nothing written outside": snapshots of a folder tree
# ---------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """rel path -> (file type, size, mtime) for everything under root, symlinks not followed.

    Iterative: fuzz cases nest folders deeper than a recursive walk could go.
    """
    found, stack = {}, [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            st_ = entry.stat(follow_symlinks=False)
            kind = stat.S_IFMT(st_.st_mode)
            # A folder's own mtime moves whenever something inside it comes and goes; what came is listed itself.
            key = os.path.relpath(entry.path, root)
            found[key] = (kind, 0, 0) if kind == stat.S_IFDIR else (kind, st_.st_size, st_.st_mtime_ns)
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return found


def changed(before: dict, after: dict) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def assert_only_under(before: dict, after: dict, *allowed: str) -> None:
    outside = sorted(p for p in changed(before, after) if not any(p == a or p.startswith(a + os.sep) for a in allowed))
    assert not outside, f"written outside {allowed}: {outside[:5]}"


# ---------------------------------------------------------------------------------------------
# Files: real photos, and crafted hostile ones
# ---------------------------------------------------------------------------------------------

_unique = iter(range(10**9))


def png(size=(8, 8)) -> bytes:
    """A small real PNG, different from every other one made here (so no accidental duplicates)."""
    rng = np.random.default_rng(next(_unique))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(size=(16, 16)) -> bytes:
    rng = np.random.default_rng(next(_unique))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels with (almost) no pixel data: a bomb's shape, cheaply."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def gif_declaring(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + image + b"\x02\x02\x44\x01\x00;"


def bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 12, 0, 0, 54) + info + bytes(12)


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(jpeg())
    sof = data.index(b"\xff\xc0")  # baseline frame header: marker, length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


HUGE_IMAGES = {
    "png_100000x100000.png": png_declaring(100_000, 100_000),
    "png_1x64000001.png": png_declaring(1, 64_000_001),  # one pixel over the limit, in a thin strip
    "png_8000x8000_no_data.png": png_declaring(8000, 8000),  # exactly at the limit, its data missing
    "png_0x0.png": png_declaring(0, 0),
    "gif_65535x65535.gif": gif_declaring(65535, 65535),
    "bmp_100000x100000.bmp": bmp_declaring(100_000, 100_000),
    "bmp_negative_width.bmp": bmp_declaring(-5, 100_000),
    "jpeg_65500x65500.jpg": jpeg_declaring(65500, 65500),
}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def two_classes(root: Path, per_class: int = 2) -> Path:
    """The smallest usable dataset: classes a/ and b/ with real photos, so hostile extras are the only problem."""
    for label in ("a", "b"):
        for i in range(per_class):
            write(root / label / f"good_{i}.png", png())
    return root


def skipped(report: dict) -> dict[str, str]:
    return {item["path"]: item["reason"] for item in report["skipped"]}


def assert_accounted(report: dict, expected: set[str]) -> None:
    """Every visible file given is either used (in some split) or skipped with a reason; none vanish."""
    used = {rel for split in report["files"].values() for rel, _ in split}
    reasons = skipped(report)
    assert not used & reasons.keys()
    assert all(reason.strip() for reason in reasons.values())
    assert used | reasons.keys() == expected, sorted((used | reasons.keys()) ^ expected)[:5]


def zip_of(path: Path, entries) -> Path:
    """A zip of (name or ZipInfo, bytes) entries, written as given (no name cleaning)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


# ---------------------------------------------------------------------------------------------
# The app, with its run store inside this module's sandbox
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def app_module(sandbox):
    """The app's handlers with its run store under sandbox/store, so 'nothing outside its data folder' can be checked."""
    import gradio

    from models.serving import ModelServer
    from ui import classify, finetune, session

    saved = session.STORE, session.MODELS
    session.STORE = RunStore(sandbox / "store")
    session.MODELS = ModelServer(session.STORE)
    try:
        yield SimpleNamespace(check_photos=finetune.check_photos, classify_api=classify.classify_api,
                              classify=session.MODELS.classify, gr=gradio)
    finally:
        session.STORE, session.MODELS = saved


NO_CLASSES = [""] * 8 + [None] * 8


def local_request(session: str = "fuzz"):
    return SimpleNamespace(session_hash=session, client=SimpleNamespace(host="127.0.0.1"))


def check_photos(app, *args, request=None):
    """The app's 'Check photos' handler, called as Gradio calls it, with a local request.

    Where the request goes has changed (Gradio fills a gr.Request parameter by position), so it is
    passed the way the handler's signature asks for.
    """
    request = request or local_request()
    if next(iter(inspect.signature(app.check_photos).parameters)) == "request":
        return app.check_photos(request, *args)
    return app.check_photos(*args, request=request)


def check_zip(app, archive: Path, category: str):
    """The 'Check photos' handler on an uploaded zip: its (state, markdown, grid) or the gr.Error it raised."""
    return attempt(
        category,
        lambda: check_photos(app, "Zip file", str(archive), "", 2, *NO_CLASSES),
        (app.gr.Error,),
    )


def case_dir(sandbox: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="case-", dir=sandbox))


# ---------------------------------------------------------------------------------------------
# Upload path: folders, property-based
# ---------------------------------------------------------------------------------------------

IMAGE_NAMES = st.sampled_from(["x.jpg", "x.jpeg", "x.png", "x.gif", "x.bmp", "x.webp", "x.tif", "x.TIFF", "x.JPG"])
# Random bodies, some behind a real format's magic bytes so that the format's own parser gets to choke on them.
HEADERS = [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP",
           b"II*\x00", b"MM\x00*"]


@FAST
@given(st.lists(st.tuples(IMAGE_NAMES, st.sampled_from(HEADERS), st.binary(max_size=600)), min_size=1, max_size=6))
def test_random_bytes_with_image_extensions_are_skipped_with_a_reason(sandbox, files):
    box = case_dir(sandbox)
    root = two_classes(box / "photos")
    expected = {f"{label}/good_{i}.png" for label in "ab" for i in range(2)}
    for n, (name, header, body) in enumerate(files):
        rel = f"{'ab'[n % 2]}/{n}_{name}"
        write(root / rel, header + body)
        expected.add(rel)
    before = snapshot(box)
    result = attempt("folder: random bytes", lambda: open_dataset(root, workdir=box / "work"), (DataError,))
    assert not isinstance(result, Exception), result  # the good photos always make a dataset
    assert_accounted(result.report, expected)
    assert_only_under(before, snapshot(box), "work")


@FAST
@given(st.sampled_from(["jpeg", "png", "gif", "webp", "bmp", "tiff"]), st.floats(0, 1, exclude_max=True),
       st.integers(8, 90))
def test_photos_truncated_at_any_point_are_skipped_or_used_never_fatal(sandbox, fmt, fraction, size):
    box = case_dir(sandbox)
    root = two_classes(box / "photos")
    buffer = io.BytesIO()
    rng = np.random.default_rng(next(_unique))
    Image.fromarray(rng.integers(0, 255, (size, size + 3, 3), dtype=np.uint8)).save(buffer, fmt.upper())
    whole = buffer.getvalue()
    cut = whole[: int(len(whole) * fraction)]
    rel = f"a/cut.{fmt}"
    write(root / rel, cut)
    before = snapshot(box)
    ds = attempt("folder: truncated photo", lambda: open_dataset(root, workdir=box / "work"), (DataError,))
    assert not isinstance(ds, Exception), ds
    assert_accounted(ds.report, {f"{label}/good_{i}.png" for label in "ab" for i in range(2)} | {rel})
    if rel in skipped(ds.report):
        assert skipped(ds.report)[rel]  # says why
    assert_only_under(before, snapshot(box), "work")


# A name is one path component: any printable text, but no separator or NUL (the OS refuses those).
NAME_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"), min_size=1, max_size=40
).filter(lambda s: s not in (".", "..") and len(s.encode()) <= 200)


@FAST
@given(st.lists(st.tuples(NAME_TEXT, NAME_TEXT, st.booleans()), min_size=1, max_size=5))
def test_any_unicode_folder_and_file_names_are_used_or_reported(sandbox, names):
    box = case_dir(sandbox)
    root = two_classes(box / "photos")
    expected = {f"{label}/good_{i}.png" for label in "ab" for i in range(2)}
    for folder, name, good in names:
        name = name + ".png"
        target = root / folder / name
        if target.exists() or target.parent.is_file():
            continue
        write(target, png() if good else b"not an image")
        if not (is_hidden(folder) or is_hidden(name)):  # hidden and system names are ignored, by design
            expected.add(f"{folder}/{name}")
    before = snapshot(box)
    ds = attempt("folder: unicode names", lambda: open_dataset(root, workdir=box / "work"), (DataError,))
    if isinstance(ds, Exception):
        # e.g. a name that is 'train': a different layout that these few files do not fill.
        return
    assert_accounted(ds.report, expected)
    json.loads((box / "work" / "data_report.json").read_text())  # the report on disk is valid JSON
    assert_only_under(before, snapshot(box), "work")


# ---------------------------------------------------------------------------------------------
# Upload path: folders, crafted corpus
# ---------------------------------------------------------------------------------------------


def test_images_declaring_huge_dimensions_are_skipped_quickly_without_decoding(sandbox):
    box = case_dir(sandbox)
    root = two_classes(box / "photos")
    for name, data in HUGE_IMAGES.items():
        write(root / "a" / name, data)
    before = snapshot(box)
    started = time.perf_counter()
    ds = attempt("folder: huge dimensions", lambda: open_dataset(root, workdir=box / "work"), (DataError,))
    CASES["folder: huge dimensions"] += len(HUGE_IMAGES) - 1
    assert time.perf_counter() - started < 10  # refused from the header, not decoded
    reasons = skipped(ds.report)
    assert set(reasons) == {f"a/{name}" for name in HUGE_IMAGES}
    for name in ("png_100000x100000.png", "png_1x64000001.png", "gif_65535x65535.gif", "bmp_100000x100000.bmp",
                 "jpeg_65500x65500.jpg"):
        assert "too large" in reasons[f"a/{name}"], (name, reasons[f"a/{name}"])
    assert_only_under(before, snapshot(box), "work")


def remove_deep(folder: Path) -> None:
    """Remove a tree of any depth, deepest first, without recursion."""
    order, stack = [], [str(folder)]
    while stack:
        current = stack.pop()
        order.append(current)
        for entry in os.scandir(current):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                os.unlink(entry.path)
    for path in reversed(order):
        os.rmdir(path)


def make_deep(folder: Path, depth: int) -> Path:
    """`depth` nested folders, made one level at a time (os.makedirs itself recurses per level)."""
    path = str(folder)
    os.makedirs(path, exist_ok=True)
    for _ in range(depth):
        path += "/d"
        os.mkdir(path)
    return Path(path)


@pytest.mark.parametrize("depth", [200, 1200])  # 1200: past Python's recursion limit, for any recursive walk
def test_folders_nested_hundreds_deep_are_skipped_as_too_deep_not_a_crash(sandbox, app_module, depth):
    box = case_dir(sandbox)
    root = two_classes(box / "photos")
    deep = make_deep(root / "a" / "deep", depth)
    write(deep / "x.png", png())
    write(deep / "notes.txt", b"notes")
    write(make_deep(root / "b" / "deep", 3) / "shallow.png", png())  # a few folders down is still its class
    before = snapshot(box)
    try:
        result = attempt(
            "folder: deep nesting",
            lambda: check_photos(app_module, "Folder on this computer", None, str(root), 2, *NO_CLASSES),
            (app_module.gr.Error,),
        )
        assert_only_under(before, snapshot(box), "work")
    finally:
        for label in "ab":
            remove_deep(root / label / "deep")  # shutil.rmtree recurses too: leave nothing it would choke on
    assert not isinstance(result, Exception), result  # the good photos still make a dataset
    report = result[0]["report"]
    rel = os.path.relpath(deep, root)
    assert_accounted(report, {f"{label}/good_{i}.png" for label in "ab" for i in range(2)}
                     | {"b/deep/d/d/d/shallow.png", f"{rel}/x.png", f"{rel}/notes.txt"})
    reasons = skipped(report)
    assert "nested too deeply" in reasons[f"{rel}/x.png"] and "nested too deeply" in reasons[f"{rel}/notes.txt"]


def test_ten_thousand_tiny_files_are_all_accounted_for_in_reasonable_time(sandbox, app_module):
    """10,000 1x1 photos in two classes, one in ten corrupt, uploaded as a zip through the app's handler."""
    box = case_dir(sandbox)
    archive = box / "many.zip"
    bad = set()
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(10_000):
            name = f"{'ab'[i % 2]}/{i:05d}.png"
            if i % 10 == 9:
                zf.writestr(name, b"\x89PNG\r\n\x1a\n broken")
                bad.add(name)
            else:
                buffer = io.BytesIO()
                Image.new("RGB", (1, 1), (i % 256, i // 256, 7)).save(buffer, "PNG")  # distinct pixels
                zf.writestr(name, buffer.getvalue())
    before = snapshot(box)
    started = time.perf_counter()
    result = check_zip(app_module, archive, "zip: 10,000 tiny files")
    elapsed = time.perf_counter() - started
    print(f"\n10,000 tiny files through check_photos: {elapsed:.1f} s")
    assert elapsed < 60
    state, markdown, _ = result
    report = state["report"]
    assert sum(report["totals"].values()) == 9_000
    assert set(skipped(report)) == bad and len(bad) == 1_000
    assert "Skipped 1000 file(s)" in markdown and "and 980 more" in markdown
    assert_only_under(before, snapshot(box))  # the zip is extracted into the app's store, not beside it
    # Later cases snapshot the whole sandbox: do not make them walk these 10,000 files.
    shutil.rmtree(Path(state["path"]).parent)
    shutil.rmtree(box)


def test_unicode_and_very_long_names_are_kept_and_reported(sandbox):
    box = case_dir(sandbox)
    root = two_classes(box / "photos")
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    same = png()
    names = {
        f"a/{nfc}.png": same,  # NFC and NFD spellings are two files on Linux, identical here
        f"a/{nfd}.png": same,
        "a/" + "é" * 125 + ".png": png(),  # 254 bytes: just under the 255-byte limit
        "b/" + "x" * 251 + ".png": png(),  # 255 bytes exactly
        "b/\u202egnp.exe.png": png(),  # right-to-left override: renders as 'png.exe' reversed
        "b/שלום עולם.png": png(),
        "b/🌭🌭.png": png(),
        "b/line\nbreak.png": png(),
        "b/back\\slash.png": png(),
        "b/ leading space.png": png(),
        "b/zero\u200bwidth.png": png(),
        "🌭 emoji class/photo.png": png(),
        "\u202eRTL class/photo.png": png(),
    }
    for rel, data in names.items():
        write(root / rel, data)
    undecodable = os.fsencode(str(root / "b")) + b"/\xff\xfe-latin1-\xe9.png"
    with open(undecodable, "wb") as f:  # a name that is not UTF-8 at all (surrogate-escaped in Python)
        f.write(png())
    before = snapshot(box)
    ds = attempt("folder: unicode names", lambda: open_dataset(root, workdir=box / "work"), (DataError,))
    CASES["folder: unicode names"] += len(names)
    expected = set(names) | {f"{label}/good_{i}.png" for label in "ab" for i in range(2)}
    expected.add(os.fsdecode(undecodable)[len(str(root)) + 1 :])
    assert_accounted(ds.report, expected)
    assert not ds.report["skipped"]
    assert {"🌭 emoji class", "\u202eRTL class"} <= set(ds.labels)
    assert [sorted(group["paths"]) for group in ds.report["duplicates"]] == [sorted([f"a/{nfc}.png", f"a/{nfd}.png"])]
    json.loads((box / "work" / "data_report.json").read_text())
    assert_only_under(before, snapshot(box), "work")


def test_symlinks_and_special_files_in_folders_are_skipped_never_followed(sandbox):
    box = case_dir(sandbox)
    root = two_classes(box / "photos")
    outside = box / "outside"
    write(outside / "secret.png", png())
    write(outside / "more" / "secret2.png", png())
    links = {
        "a/secret.png": outside / "secret.png",  # a file outside
        "a/outside_dir": outside / "more",  # a folder outside
        "b/dangling.png": box / "nowhere.png",
        "b/loop.png": root / "b" / "loop.png",  # points at itself
        "linked_class": outside,  # a whole class folder outside
    }
    for rel, target in links.items():
        os.symlink(target, root / rel)
    os.mkfifo(root / "b" / "pipe.png")  # reading it would block forever
    before = snapshot(box)
    ds = attempt("folder: symlinks", lambda: open_dataset(root, workdir=box / "work"), (DataError,))
    CASES["folder: symlinks"] += len(links)
    reasons = skipped(ds.report)
    assert {rel: reasons.get(rel) for rel in links} == {rel: "symbolic link" for rel in links}
    assert reasons["b/pipe.png"] == "not a regular file"
    assert ds.labels == ["a", "b"]
    assert not any("secret" in rel for split in ds.report["files"].values() for rel, _ in split)
    assert_only_under(before, snapshot(box), "work")


@pytest.mark.parametrize(
    "names",
    [["../escape", "b"], ["a/b", "c"], ["", "b"], [".hidden", "b"], ["train", "b"], ["A", "a"], ["a\x00b", "c"],
     ["tab\there", "b"], ["\u202eevil", "b"], ["🌭", "not 🌭"], ["  ", "b"], ["only"],
     ["é" * 128, "b"], ["🌭" * 64, "b"], ["x" * 300, "b"], ["x" * 100, "é" * 100]],  # the last: just within limits
)
def test_per_class_upload_with_hostile_class_names_answers_with_a_message_or_works(sandbox, app_module, names):
    box = case_dir(sandbox)
    photo = str(write(box / "p.png", png()))
    padded = names + [""] * (8 - len(names))
    files = [[photo]] * len(names) + [None] * (8 - len(names))
    before = snapshot(sandbox)
    result = attempt(
        "per-class: hostile class names",
        lambda: check_photos(app_module, "Photos per class", None, "", len(names), *padded, *files),
        (app_module.gr.Error,),
    )
    if not isinstance(result, Exception):
        assert sorted(result[0]["report"]["labels"]) == sorted(n.strip() for n in names)
    assert_only_under(before, snapshot(sandbox), "store")


# ---------------------------------------------------------------------------------------------
# Upload path: zips
# ---------------------------------------------------------------------------------------------

SLIP_NAMES = [
    "../x_{t}.jpg",
    "../../../../../../../../../../x_{t}.jpg",
    "/tmp/x_{t}.jpg",
    "/x_{t}.jpg",
    "C:\\x_{t}.jpg",
    "C:/x_{t}.jpg",
    "c:x_{t}.jpg",
    "a/../../x_{t}.jpg",
    "a/./../../x_{t}.jpg",
    "..\\..\\x_{t}.jpg",
    "a\\..\\..\\x_{t}.jpg",
    "a//..//..//x_{t}.jpg",
    "\\\\server\\share\\x_{t}.jpg",
]


@pytest.mark.parametrize("pattern", SLIP_NAMES)
def test_zip_slip_entries_are_refused_and_nothing_lands_outside(sandbox, app_module, pattern):
    box = case_dir(sandbox)
    token = box.name
    entry = pattern.format(t=token)
    archive = zip_of(box / "slip.zip", [("a/1.png", png()), ("b/1.png", png()), (entry, png())])
    before = snapshot(sandbox)
    result = check_zip(app_module, archive, "zip: slip")
    assert isinstance(result, app_module.gr.Error) and "outside" in result.message, result
    assert_only_under(before, snapshot(sandbox), "store")
    # Wherever the entry would have landed (resolved from any folder the app extracts into), it is not there.
    for base in [sandbox / "store" / "fuzz" / "uploads" / "x" / "data", Path("/"), Path("/tmp"), Path.cwd()]:
        assert not (base / entry.replace("\\", "/")).resolve().exists()
    assert not list(Path("/tmp").glob(f"x_{token}*")) and not Path(f"/x_{token}.jpg").exists()
    # And the library call refuses it too, before writing anything.
    refused = attempt("zip: slip", lambda: open_dataset(archive, workdir=box / "work"), (DataError,))
    assert isinstance(refused, DataError) and not (box / "work" / "data").exists()


def test_symlink_entries_in_zips_are_refused_and_nothing_lands_outside(sandbox, app_module):
    box = case_dir(sandbox)
    outside = box / "outside"
    outside.mkdir()
    cases = [
        [(symlink_entry("a/passwd.png"), b"/etc/passwd")],
        [(symlink_entry("a/up"), str(outside).encode()), ("a/up/planted.png", png())],  # write through the link
        [(symlink_entry("b"), b"../../../.."), ("b/planted.png", png())],
        [(symlink_entry("a/rel.png"), b"../../outside/planted.png")],
    ]
    for n, entries in enumerate(cases):
        archive = zip_of(box / f"link{n}.zip", [("a/1.png", png()), ("b/1.png", png()), *entries])
        before = snapshot(sandbox)
        result = check_zip(app_module, archive, "zip: symlink entries")
        assert isinstance(result, app_module.gr.Error) and "symbolic link" in result.message, result
        assert_only_under(before, snapshot(sandbox), "store")
        assert list(outside.iterdir()) == []


def _raw_entries(source: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The compressed bytes of one entry, read from its local header."""
    with open(source.filename, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        return f.read(info.compress_size)


def clone_entry_zip(source: Path, dest: Path, copies: int) -> Path:
    """A zip holding `copies` of source's first entry (its compressed bytes reused): a big bomb, built cheaply."""
    with zipfile.ZipFile(source) as zf:
        info = zf.infolist()[0]
        raw = _raw_entries(zf, info)
    local, central = bytearray(), bytearray()
    for n in range(copies):
        name = f"a/zeros_{n}.png".encode()
        offset = len(local)
        fields = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0x21, info.CRC, info.compress_size, info.file_size,
                             len(name), 0)  # version, flags, deflate, time, date, crc, sizes, name length
        local += b"PK\x03\x04" + fields + name + raw
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, offset) + name
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, copies, copies, len(central), len(local), 0)
    dest.write_bytes(bytes(local + central + end))
    return dest


@pytest.fixture(scope="module")
def zeros_zip(sandbox) -> Path:
    """200 MB of zeros as one deflated entry (about 200 KB), written streaming so memory stays small."""
    path = sandbox / "zeros.zip"
    chunk = bytes(1 << 22)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("a/zeros.png", "w") as entry:
            for _ in range(50):
                entry.write(chunk)
    return path


def test_zip_bomb_that_understates_its_sizes_stops_at_the_limit_and_leaves_nothing(sandbox, zeros_zip):
    box = case_dir(sandbox)
    liar = box / "liar.zip"
    raw = bytearray(zeros_zip.read_bytes())
    # Claim 1,000 bytes unpacked in the local and central headers, so the declared total passes the limit.
    # Python's zipfile stops inflating at the declared size and then finds the CRC wrong; extract_zip's own
    # byte count is the second line of defence (tests/test_data.py exercises it with a lying reader).
    raw[22:26] = struct.pack("<I", 1000)
    central = raw.index(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", 1000)
    liar.write_bytes(bytes(raw))
    (box / "out").mkdir()
    before = snapshot(box)
    started = time.perf_counter()
    result = attempt("zip: bomb", lambda: extract_zip(liar, box / "out" / "dest", max_bytes=10_000_000), (DataError,))
    assert isinstance(result, DataError) and ("damaged" in str(result) or "limit" in str(result)), result
    assert time.perf_counter() - started < 5  # stopped early, not after inflating 200 MB
    assert snapshot(box) == before


def test_zip_bomb_past_the_app_limit_is_refused_by_the_app_with_a_message(sandbox, app_module, zeros_zip):
    box = case_dir(sandbox)
    copies = MAX_ZIP_BYTES // zipfile.ZipFile(zeros_zip).infolist()[0].file_size + 1
    bomb = clone_entry_zip(zeros_zip, box / "bomb.zip", copies)  # ~2.2 GB declared, ~2 MB on disk
    assert bomb.stat().st_size < 5_000_000
    before = snapshot(sandbox)
    started = time.perf_counter()
    result = check_zip(app_module, bomb, "zip: bomb")
    assert isinstance(result, app_module.gr.Error) and "would unpack to" in result.message, result
    assert time.perf_counter() - started < 5
    assert_only_under(before, snapshot(sandbox), "store")


def _patched(data: bytes, local_offset: int, central_offset: int, at: int, value: bytes) -> bytes:
    out = bytearray(data)
    out[local_offset + at : local_offset + at + len(value)] = value
    out[central_offset + at + 2 : central_offset + at + 2 + len(value)] = value  # central has 2 more leading bytes
    return bytes(out)


def malformed_zips(box: Path) -> dict[str, Path]:
    """Archives broken in the ways uploads break: each must be refused with a message, never a crash."""
    good = [("a/1.png", png()), ("b/1.png", png())]
    made = {}
    made["duplicate entry names"] = zip_of(box / "dup.zip", good + [("a/1.png", png())])
    made["file and folder of one name"] = zip_of(box / "clash.zip",
                                                 good + [("a/x.png", png()), ("a/x.png/y.png", png())])
    made["only folders"] = zip_of(box / "dirs.zip", [("a/", b""), ("b/", b"")])
    made["only hidden files"] = zip_of(box / "hidden.zip", [("__MACOSX/a/._1.png", b"x"), ("a/.DS_Store", b"x")])
    made["empty file"] = write(box / "empty.zip", b"")
    made["not a zip"] = write(box / "text.zip", b"PK\x03\x04 but not really a zip at all")
    made["truncated zip"] = write(box / "cut.zip", zip_of(box / "whole.zip", good).read_bytes()[:-30])
    plain = zip_of(box / "plain.zip", good).read_bytes()
    central = plain.index(b"PK\x01\x02")
    made["encrypted flag"] = write(box / "enc.zip", _patched(plain, 0, central, 6, struct.pack("<H", 1)))
    made["unsupported method"] = write(box / "ppmd.zip", _patched(plain, 0, central, 8, struct.pack("<H", 98)))
    crc = bytearray(plain)
    crc[40] ^= 0xFF  # inside the first (stored) entry's data: a CRC mismatch on reading
    made["bad CRC"] = write(box / "crc.zip", bytes(crc))
    many = box / "many_entries.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(50_001):
            zf.writestr(f"a/{i}.png", b"")
    made["50,001 entries"] = many
    return made


def test_malformed_zips_are_refused_with_a_message(sandbox, app_module):
    box = case_dir(sandbox)
    outcomes = {}
    for kind, archive in malformed_zips(box).items():
        before = snapshot(sandbox)
        result = check_zip(app_module, archive, "zip: malformed")
        assert_only_under(before, snapshot(sandbox), "store")
        outcomes[kind] = result.message if isinstance(result, app_module.gr.Error) else "accepted"
    print("\n" + "\n".join(f"  {kind}: {message}" for kind, message in outcomes.items()))
    assert all(message != "accepted" for message in outcomes.values()), outcomes
    assert "password" in outcomes["encrypted flag"] and "50,001 entries" in outcomes["50,001 entries"]
    assert "two files named 'a/1.png'" in outcomes["duplicate entry names"]
    assert "both a file and a folder named 'a/x.png'" in outcomes["file and folder of one name"]


def test_a_zip_with_a_corrupted_name_length_is_refused_with_a_short_message(sandbox, app_module):
    box = case_dir(sandbox)
    data = bytearray(zip_of(box / "w.zip", [("a/1.png", png()), ("b/1.png", png())]).read_bytes())
    data[26:28] = struct.pack("<H", 1024)  # the first local header's file-name length
    result = check_zip(app_module, write(box / "bad.zip", bytes(data)), "zip: corrupted")
    # zipfile's own text quotes the raw bytes it read (here ~4 KB, up to 64 KB); the user sees words.
    assert isinstance(result, app_module.gr.Error) and "damaged" in result.message
    assert len(result.message) < 300 and result.message.isprintable(), result.message


def test_a_zip_declaring_a_future_format_version_is_refused_with_a_message(sandbox, app_module):
    box = case_dir(sandbox)
    data = bytearray(zip_of(box / "w.zip", [("a/1.png", png()), ("b/1.png", png())]).read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 6 : central + 8] = struct.pack("<H", 204)  # version needed to extract: '20.4'
    result = check_zip(app_module, write(box / "future.zip", bytes(data)), "zip: corrupted")
    assert isinstance(result, app_module.gr.Error) and "zip feature this app cannot unpack" in result.message


def test_zip_entries_too_long_or_too_deep_to_unpack_are_skipped_and_listed(sandbox, app_module):
    box = case_dir(sandbox)
    long_name = "a/" + "é" * 200 + ".png"  # 405 bytes: no filesystem takes it
    deep_name = "b/" + "d/" * 70 + "x.png"
    archive = zip_of(box / "long.zip", [("a/1.png", png()), ("b/1.png", png()), (long_name, png()),
                                        (deep_name, png())])
    before = snapshot(sandbox)
    result = check_zip(app_module, archive, "zip: long and deep names")
    assert_only_under(before, snapshot(sandbox), "store")
    assert not isinstance(result, Exception), result
    reasons = skipped(result[0]["report"])
    assert reasons[long_name] == "name too long" and "nested too deeply" in reasons[deep_name]


ZIP_NAME_PARTS = st.sampled_from(["a", "b", "A", "train", "val", "test", "..", ".", "", ".hidden", "__MACOSX", "é",
                                  "e\u0301", "🌭", "\u202e", "x" * 120, "C:", "\\", " ", "con", "a.png"])
ZIP_NAMES = st.lists(ZIP_NAME_PARTS, min_size=1, max_size=5).map("/".join).map(lambda n: n + ".png")
ZIP_BODIES = st.one_of(st.builds(png), st.binary(max_size=200), st.builds(lambda: png()[:40]))


@FAST
@given(st.lists(st.tuples(ZIP_NAMES, ZIP_BODIES), min_size=1, max_size=8), st.booleans())
def test_any_zip_of_hostile_names_gives_a_result_or_a_message_and_stays_inside(sandbox, app_module, entries, base):
    box = case_dir(sandbox)
    good = [("a/good.png", png()), ("b/good.png", png())] if base else []
    with zipfile.ZipFile(box / "upload.zip", "w") as zf:
        for name, data in good + entries:
            try:
                zf.writestr(name, data)
            except UnicodeEncodeError:
                continue
    before = snapshot(sandbox)
    result = check_zip(app_module, box / "upload.zip", "zip: random names")
    assert_only_under(before, snapshot(sandbox), "store")
    if not isinstance(result, Exception):
        state, markdown, _ = result
        report = state["report"]
        assert sum(report["totals"].values()) >= 1 and len(report["labels"]) >= 2
        for item in report["skipped"][:20]:  # the markdown lists the first 20, each with its reason
            assert item["reason"] and f"- `{item['path']}`: {item['reason']}" in markdown


@FAST
@given(st.lists(st.tuples(ZIP_NAMES, ZIP_BODIES), min_size=1, max_size=8), st.lists(ZIP_NAMES, max_size=3),
       st.booleans())
def test_any_folder_sent_with_hostile_names_gives_a_result_or_a_message_and_stays_inside(sandbox, entries, left_out,
                                                                                         base):
    """The folder picker's path (trainer.data.open_uploaded_folder): the names come from the page, so anything."""
    from trainer.data import open_uploaded_folder

    box = case_dir(sandbox)
    good = [("a/good.png", png()), ("b/good.png", png())] if base else []
    files = []
    for i, (name, data) in enumerate(good + entries):
        upload = box / "uploads" / str(i) / "photo.png"
        upload.parent.mkdir(parents=True)
        upload.write_bytes(data)
        files.append((name, upload))
    before = snapshot(sandbox)
    result = attempt("folder: random names", lambda: open_uploaded_folder(files, box / "run", left_out), (DataError,))
    assert_only_under(before, snapshot(sandbox), str((box / "run").relative_to(sandbox)))
    if not isinstance(result, Exception):
        assert sum(result.report["totals"].values()) >= 1 and len(result.labels) >= 2
        assert all(item["reason"] for item in result.report["skipped"])


@FAST
@given(st.floats(0, 1, exclude_max=True), st.integers(0, 2**32 - 1))
def test_a_zip_truncated_or_corrupted_anywhere_gives_a_result_or_a_message(sandbox, app_module, fraction, seed):
    box = case_dir(sandbox)
    whole = zip_of(box / "w.zip", [("a/1.png", png()), ("a/2.png", png()), ("b/1.png", png()), ("b/2.png", png())])
    data = bytearray(whole.read_bytes())
    rng = random.Random(seed)
    if seed % 2:
        data = data[: int(len(data) * fraction)]
    else:
        for _ in range(1 + seed % 5):
            data[rng.randrange(len(data))] = rng.randrange(256)
    write(box / "bad.zip", bytes(data))
    before = snapshot(sandbox)
    check_zip(app_module, box / "bad.zip", "zip: corrupted")
    assert_only_under(before, snapshot(sandbox), "store")


# ---------------------------------------------------------------------------------------------
# The formula language, from a grammar that mixes allowed and forbidden Python
# ---------------------------------------------------------------------------------------------

FUNCTIONS = {"abs": 1, "atan": 1, "ceil": 1, "cos": 1, "cosh": 1, "exp": 1, "floor": 1, "log": 2, "log10": 1,
             "log2": 1, "max": 3, "min": 2, "pow": 2, "round": 1, "sin": 1, "sinh": 1, "sqrt": 1, "tan": 1, "tanh": 1}
ALLOWED_LEAF = st.one_of(
    st.just("epoch"),
    st.sampled_from(["pi", "e", "tau"]),
    st.integers(0, 10**6).map(str),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False).map(repr),
)
FORBIDDEN_LEAF = st.sampled_from(
    ["__import__", "__builtins__", "os", "sys", "self", "x", "print", "open", "eval", "exec", "True", "None", "...",
     "'text'", "b'x'", "1j", "1e400", "9" * 330, "globals()", "__class__", "breakpoint"]
)
LEAF = st.one_of(ALLOWED_LEAF.map(lambda t: (t, True)), FORBIDDEN_LEAF.map(lambda t: (t, False)))


def _grammar(children, forbidden_too: bool = True):
    both = st.tuples(children, children)
    ok = lambda *parts: all(p[1] for p in parts)  # noqa: E731
    allowed = st.one_of(
        # Allowed constructs: allowed only if their parts are.
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), children).map(
            lambda t: (f"({t[0][0]} {t[1]} {t[2][0]})", ok(t[0], t[2]))),
        st.tuples(st.sampled_from(["-", "+", "not "]), children).map(lambda t: (f"({t[0]}{t[1][0]})", t[1][1])),
        st.tuples(children, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), children).map(
            lambda t: (f"({t[0][0]} {t[1]} {t[2][0]})", ok(t[0], t[2]))),
        st.tuples(children, st.sampled_from(["and", "or"]), children).map(
            lambda t: (f"({t[0][0]} {t[1]} {t[2][0]})", ok(t[0], t[2]))),
        st.tuples(children, children, children).map(lambda t: (f"({t[0][0]} if {t[1][0]} else {t[2][0]})", ok(*t))),
        st.sampled_from(sorted(FUNCTIONS)).flatmap(
            lambda name: st.lists(children, min_size=FUNCTIONS[name], max_size=FUNCTIONS[name]).map(
                lambda args: (f"{name}({', '.join(a[0] for a in args)})", ok(*args)))),
    )
    forbidden = st.one_of(
        # Forbidden constructs, each wrapping or mixing allowed parts.
        st.tuples(children, st.sampled_from(["&", "|", "^", "<<", ">>", "@"])).flatmap(
            lambda t: children.map(lambda c: (f"({t[0][0]} {t[1]} {c[0]})", False))),
        children.map(lambda c: (f"(~{c[0]})", False)),
        st.tuples(children, st.sampled_from(["is", "is not", "in", "not in"]), children).map(
            lambda t: (f"({t[0][0]} {t[1]} {t[2][0]})", False)),
        st.tuples(children, st.sampled_from(["__class__", "__mro__", "__subclasses__", "__globals__", "__dict__",
                                             "real", "hex", "__bases__", "__reduce__"])).map(
            lambda t: (f"({t[0][0]}).{t[1]}", False)),
        st.tuples(st.sampled_from(["__import__", "getattr", "eval", "exec", "open", "type", "vars", "compile",
                                   "setattr", "epoch", "pi"]), children).map(lambda t: (f"{t[0]}({t[1][0]})", False)),
        both.map(lambda t: (f"({t[0][0]})[{t[1][0]}]", False)),
        both.map(lambda t: (f"({t[0][0]})[{t[1][0]}:]", False)),
        children.map(lambda c: (f"(lambda x: {c[0]})", False)),
        both.map(lambda t: (f"(lambda: {t[0][0]})()", False)),
        both.map(lambda t: (f"[{t[0][0]} for x in ({t[1][0]},)]", False)),
        both.map(lambda t: (f"{{{t[0][0]}: {t[1][0]} for x in ()}}", False)),
        children.map(lambda c: (f"sum({c[0]} for x in ())", False)),
        children.map(lambda c: (f"f'{{{c[0]}}}'", False)),
        children.map(lambda c: (f"(x := {c[0]})", False)),
        both.map(lambda t: (f"({t[0][0]}, {t[1][0]})", False)),
        both.map(lambda t: (f"[{t[0][0]}, {t[1][0]}]", False)),
        both.map(lambda t: (f"{{{t[0][0]}, {t[1][0]}}}", False)),
        both.map(lambda t: (f"min({t[0][0]}, {t[1][0]}, key=abs)", False)),
        children.map(lambda c: (f"min(*{c[0]})", False)),
        children.map(lambda c: (f"max(**{c[0]})", False)),
        children.map(lambda c: (f"(yield {c[0]})", False)),
        children.map(lambda c: (f"(await {c[0]})", False)),
        children.map(lambda c: (f"abs({c[0]}, {c[0]})", False)),  # a known function, the wrong number of arguments
        children.map(lambda c: (f"min({c[0]})", False)),
        children.map(lambda c: (f"({c[0]})()", False)),
    )
    return st.one_of(allowed, forbidden) if forbidden_too else allowed


# Half the formulas come from the allowed grammar alone (so evaluation is fuzzed as much as refusal),
# half from the grammar with forbidden Python mixed in anywhere.
EXPRESSION = st.one_of(
    st.recursive(ALLOWED_LEAF.map(lambda t: (t, True)), lambda c: _grammar(c, forbidden_too=False), max_leaves=14),
    st.recursive(LEAF, _grammar, max_leaves=14),
)
# An allowed formula is only refused for the language's size limits (length, parts, nesting, number size).
LIMIT_MESSAGES = ("too long", "nested too deeply", "could not parse", "(too large)")

FORMULA_SETTINGS = settings(max_examples=300, deadline=timedelta(milliseconds=500), database=None,
                            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def evaluate_or_refuse(text: str, allowed: bool) -> None:
    """Parse `text`; an allowed one must evaluate to a finite float or a FormulaError naming the epoch."""
    try:
        formula = parse_formula(text)
    except FormulaError as exc:
        assert_clear(str(exc))
        if allowed:  # the documented grammar is only refused for its size limits
            assert any(m in str(exc) for m in LIMIT_MESSAGES), (text, str(exc))
        return
    assert allowed, f"a forbidden construct was accepted: {text!r}"
    for epoch in (0, 1, 5, 1000):
        try:
            value = formula(epoch)
        except FormulaError as exc:
            assert f"epoch {epoch}" in str(exc)
            continue
        assert type(value) is float and math.isfinite(value)


@FORMULA_SETTINGS
@given(EXPRESSION)
def test_formula_from_a_python_grammar_evaluates_only_if_allowed_else_formula_error(expression):
    text, allowed = expression
    category = "formula: grammar, allowed" if allowed else "formula: grammar, forbidden"
    attempt(category, lambda: evaluate_or_refuse(text, allowed), (FormulaError,))


HUGE_POWER_TEMPLATES = ["{a} ** {b}", "{a} ** {b} ** {c}", "pow({a}, {b})", "exp({b})", "epoch ** {b}", "({a}) ** -{b}",
                        "-{a} ** 0.5", "(-{a}) ** (1 / {c})", "{a} ** {b} % {c}", "round({a} ** {b})", "{a}e{b}",
                        "floor({a} ** {b} - {a} ** {b})", "cosh({b}) - sinh({b})", "log({a} ** {b})", "{a} // 0.0"]


@FORMULA_SETTINGS
@given(st.sampled_from(HUGE_POWER_TEMPLATES), st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 999))
def test_huge_exponents_fail_fast_with_formula_error_or_evaluate(template, a, b, c):
    text = template.format(a=a, b=b, c=c)
    attempt("formula: huge exponents", lambda: evaluate_or_refuse(text, True) if len(text) <= MAX_LENGTH else None,
            (FormulaError,))


@FORMULA_SETTINGS
@given(st.sampled_from(["(", "-(", "abs(", "not (", "((", "[", "min(1, ", "(1 if epoch else "]), st.integers(1, 1200))
def test_deeply_nested_parentheses_fail_fast_with_formula_error_or_evaluate(opener, depth):
    closer = "]" if opener == "[" else ")" * opener.count("(")
    text = opener * depth + "epoch" + closer * depth
    allowed = opener != "["
    attempt("formula: deep nesting", lambda: evaluate_or_refuse(text, allowed), (FormulaError,))


@settings(max_examples=150, deadline=timedelta(milliseconds=1500), database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(EXPRESSION, st.text(max_size=120).map(lambda t: (t, None))),
       st.sampled_from(["LambdaLR", "MultiplicativeLR"]))
def test_lambda_schedules_with_hostile_formulas_raise_only_schedule_error(expression, scheduler):
    text, _ = expression
    config = ScheduleConfig(scheduler=scheduler, params={"lr_lambda": text}, epochs=5)
    curve = attempt("schedule: lr_lambda", lambda: lr_curve(config), (ScheduleError,))
    if scheduler == "LambdaLR" and not isinstance(curve, Exception):
        # Each factor is checked finite and non-negative before training, so each LR is too.
        assert len(curve.lr) == 5 and all(math.isfinite(v) and v >= 0 for v in curve.lr)


@pytest.mark.parametrize(
    "value", [None, 0, -1, 1e400, [1, 2], {"a": 1}, b"0.9", True, "", "   ", "\x00", "0.9\n__import__('os')"]
)
def test_lambda_schedule_with_a_non_text_or_odd_value_raises_only_schedule_error(value):
    config = ScheduleConfig(scheduler="LambdaLR", params={"lr_lambda": value}, epochs=5)
    attempt("schedule: lr_lambda", lambda: lr_curve(config), (ScheduleError,))


def test_multiplicative_schedule_whose_lr_overflows_is_refused():
    config = ScheduleConfig(scheduler="MultiplicativeLR", params={"lr_lambda": "1e300"}, epochs=5)
    curve = attempt("schedule: lr_lambda", lambda: lr_curve(config), (ScheduleError,))
    assert isinstance(curve, ScheduleError), curve.lr


# ---------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------

LABELS = ["cat", "dog", "fox"]
CROP = 8


@pytest.fixture(scope="module")
def real_model(sandbox) -> Path:
    """A random-weights ResNet-18 for 3 classes at 32 px, exported once with its metadata (about 45 MB)."""
    import torch

    from models.backbones import create_model, preprocessing_for
    from models.export import export_onnx

    torch.manual_seed(0)
    path = sandbox / "models" / "resnet18.onnx"
    path.parent.mkdir()
    model = create_model("resnet18", 3, "none")
    export_onnx(model, LABELS, preprocessing_for("resnet18", 32), {"arch": "resnet18"}, path)
    return path


def our_metadata(**overrides) -> dict[str, str]:
    meta = {
        "labels": json.dumps(LABELS),
        "preprocessing": json.dumps(PreprocessSpec(resize=10, crop=CROP).to_dict()),
        "config": json.dumps({"arch": "tiny"}),
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


def tiny_model(input_shape=("N", 3, CROP, CROP), metadata: dict | None = None, input_type=TensorProto.FLOAT,
               logits_shape=("N", 3), extra_input=False, output_name="logits", scalar_logits=False) -> bytes:
    """A valid tiny classifier (global average pool of the 3 channels), built with onnx.helper."""
    first = "input"
    nodes = []
    if input_type != TensorProto.FLOAT:  # a graph ONNX Runtime accepts: cast, then pool
        nodes.append(helper.make_node("Cast", ["input"], ["as_float"], to=TensorProto.FLOAT))
        first = "as_float"
    nodes += [helper.make_node("GlobalAveragePool", [first], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat" if scalar_logits else output_name])]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(logits_shape))]
    if scalar_logits:
        nodes.append(helper.make_node("ReduceMean", ["flat"], [output_name], keepdims=0))
        outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [])]
    inputs = [helper.make_tensor_value_info("input", input_type, list(input_shape))]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N"]))
    return onnx_file(helper.make_graph(nodes, "tiny", inputs, outputs), metadata)


def onnx_file(graph, metadata: dict | None = None) -> bytes:
    """The bytes of a model file holding `graph` and our metadata (or `metadata` when given)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    for key, value in (our_metadata() if metadata is None else metadata).items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


CLASSIFIER_INPUT = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, CROP, CROP])


def conv_model(kernel_shape: list[int]) -> bytes:
    """A 3x3 convolution then pooling, its kernel_shape attribute set independently of its weights.

    A flipped bit in a real model's kernel_shape makes such a file: it loads, and every run fails.
    """
    weights = helper.make_tensor("W", TensorProto.FLOAT, [3, 3, 3, 3], [0.1] * 81)
    nodes = [helper.make_node("Conv", ["input", "W"], ["conv"], kernel_shape=kernel_shape, pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["logits"])]
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    return onnx_file(helper.make_graph(nodes, "conv", [CLASSIFIER_INPUT], [logits], [weights]))


def run_time_classes_model() -> bytes:
    """Logits whose class count depends on the pixels (2 + the brightest value): no signature can state it.

    A blank photo gets 3 x 2 = 6 columns, while the metadata lists 3 labels.
    """
    constants = [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
                 helper.make_tensor("one_dim", TensorProto.INT64, [1], [1]),
                 helper.make_tensor("row", TensorProto.INT64, [1], [1])]
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("ReduceMax", ["input"], ["brightest"], keepdims=0),
             helper.make_node("Add", ["brightest", "two"], ["count"]),
             helper.make_node("Cast", ["count"], ["count_int"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["count_int", "one_dim"], ["column_repeats"]),
             helper.make_node("Concat", ["row", "column_repeats"], ["repeats"], axis=0),
             helper.make_node("Tile", ["flat", "repeats"], ["logits"])]
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "classes"])
    return onnx_file(helper.make_graph(nodes, "run_time_classes", [CLASSIFIER_INPUT], [logits], constants))


def non_utf8(data: bytes, marker: bytes) -> bytes:
    """`data` with `marker` (a same-length placeholder) replaced by bytes that are not UTF-8."""
    assert data.count(marker) == 1
    return data.replace(marker, b"\xff\xfe" + marker[2:])


PHOTO = Image.new("RGB", (13, 11), (200, 40, 40))


def load_and_predict(model: bytes | Path):
    """Load a model file; if it loads, classify one photo with it (a model may load but fail to run)."""
    classifier = OnnxClassifier(model, providers="cpu")
    top = classifier.predict([PHOTO], top_k=3)[0]
    assert [label for label, _ in top] and all(label in classifier.labels for label, _ in top)
    return classifier


@settings(max_examples=20, deadline=None, database=None)
@given(st.floats(0, 1, exclude_max=True))
def test_real_model_truncated_anywhere_raises_model_load_error(real_model, fraction):
    data = real_model.read_bytes()
    cut = data[: int(len(data) * fraction)]
    result = attempt("onnx: truncated", lambda: load_and_predict(cut), (ModelLoadError,))
    assert isinstance(result, ModelLoadError), "a truncated model loaded"
    assert str(result).startswith("the model bytes ")


@settings(max_examples=20, deadline=None, database=None)
@given(st.integers(0, 2**31), st.integers(0, 7), st.booleans())
def test_real_model_with_a_flipped_bit_in_its_graph_or_metadata_loads_or_raises_model_load_error(
    real_model, at, bit, tail
):
    data = bytearray(real_model.read_bytes())
    # The graph's nodes come first and the metadata last; the weights between them are only numbers.
    where = len(data) - 1 - at % 4096 if tail else at % 100_000
    data[where] ^= 1 << bit
    attempt("onnx: flipped", lambda: load_and_predict(bytes(data)), (ModelLoadError,))


@settings(max_examples=400, deadline=None, database=None)
@given(st.data())
def test_tiny_model_with_any_bytes_flipped_or_cut_loads_or_raises_model_load_error(data):
    model = bytearray(tiny_model())
    if data.draw(st.booleans(), label="truncate"):
        model = model[: data.draw(st.integers(0, len(model) - 1), label="cut")]
    else:
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            model[data.draw(st.integers(0, len(model) - 1), label="at")] ^= data.draw(st.integers(1, 255), label="mask")
    attempt("onnx: flipped", lambda: load_and_predict(bytes(model)), (ModelLoadError,))


BAD_MODELS = {
    # name: (model bytes, words the ModelLoadError must contain)
    "no metadata": (lambda: tiny_model(metadata={}), "lacks the 'labels', 'preprocessing', 'config' metadata"),
    "no labels": (lambda: tiny_model(metadata=our_metadata(labels=None)), "lacks the 'labels' metadata"),
    "labels not JSON": (lambda: tiny_model(metadata=our_metadata(labels="[cat")), "malformed metadata"),
    "labels not a list": (lambda: tiny_model(metadata=our_metadata(labels='{"a": 1}')), "must be a non-empty list"),
    "labels empty": (lambda: tiny_model(metadata=our_metadata(labels="[]")), "must be a non-empty list"),
    "labels not names": (lambda: tiny_model(metadata=our_metadata(labels="[1, 2, 3]")), "must be a non-empty list"),
    "labels repeated": (lambda: tiny_model(metadata=our_metadata(labels='["a", "a", "b"]')), "repeats a name"),
    "labels count wrong": (lambda: tiny_model(metadata=our_metadata(labels='["a", "b"]')), "outputs 3 classes"),
    "conv kernel disagrees with its weights": (lambda: conv_model(kernel_shape=[1, 3]), "loads but fails to run"),
    "class count known only at run time, and wrong": (run_time_classes_model,
                                                      "outputs logits of shape [1, 6] for one photo"),
    "preprocessing not JSON": (lambda: tiny_model(metadata=our_metadata(preprocessing="{resize")), "malformed"),
    "preprocessing keys missing": (lambda: tiny_model(metadata=our_metadata(preprocessing='{"crop": 8}')), "malformed"),
    "preprocessing a list": (lambda: tiny_model(metadata=our_metadata(preprocessing="[1]")), "malformed"),
    "crop over resize": (lambda: tiny_model(metadata=our_metadata(
        preprocessing=json.dumps({**PreprocessSpec(10, 8).to_dict(), "resize": 4}))), "malformed"),
    "unknown interpolation": (lambda: tiny_model(metadata=our_metadata(
        preprocessing=json.dumps({**PreprocessSpec(10, 8).to_dict(), "interpolation": "magic"}))), "malformed"),
    "resize not a number": (lambda: tiny_model(metadata=our_metadata(
        preprocessing=json.dumps({**PreprocessSpec(10, 8).to_dict(), "resize": "big"}))), "malformed"),
    "config not JSON": (lambda: tiny_model(metadata=our_metadata(config="{'a'")), "malformed"),
    "config not an object": (lambda: tiny_model(metadata=our_metadata(config="[]")), "must be a JSON object"),
    "wrong input size": (lambda: tiny_model(input_shape=("N", 3, 32, 32)), "takes input of shape ['N', 3, 32, 32]"),
    "one channel": (lambda: tiny_model(input_shape=("N", 1, CROP, CROP)), "takes input of shape ['N', 1, 8, 8]"),
    "rank 3 input": (lambda: tiny_model(input_shape=(3, CROP, CROP)), "takes input of shape [3, 8, 8]"),
    "int64 input": (lambda: tiny_model(input_type=TensorProto.INT64), "one float32 input named 'input'"),
    "two inputs": (lambda: tiny_model(extra_input=True), "one float32 input named 'input'"),
    "no logits output": (lambda: tiny_model(output_name="scores"), "has no 'logits' output"),
    "random bytes": (lambda: np.random.default_rng(0).bytes(4096), "is not an ONNX model, or it is truncated"),
    "empty file": (lambda: b"", "cannot be loaded"),
    "an ONNX file of zeros": (lambda: bytes(1000), "is not an ONNX model, or it is truncated"),
    "future IR version": (lambda: _with(ir_version=99), "Unsupported model IR version: 99"),
    "unknown opset domain": (lambda: _with(opset=("com.evil", 1)), "cannot be loaded"),
}


def _with(ir_version=None, opset=None) -> bytes:
    model = onnx.load_from_string(tiny_model())
    if ir_version is not None:
        model.ir_version = ir_version
    if opset is not None:
        model.opset_import.append(helper.make_opsetid(*opset))
        model.graph.node[0].domain = opset[0]
    return model.SerializeToString()


@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_unusable_model_file_raises_model_load_error_naming_the_file_directly_and_through_the_app(
    sandbox, app_module, kind
):
    build, words = BAD_MODELS[kind]
    path = sandbox / "models" / "bad" / f"{kind.replace(' ', '_')}.onnx"
    write(path, build())
    direct = attempt("onnx: metadata and shape", lambda: load_and_predict(path), (ModelLoadError,))
    assert isinstance(direct, ModelLoadError), f"{kind}: loaded"
    assert str(direct).startswith(str(path)) and words in str(direct), str(direct)
    photo = write(sandbox / "models" / "photo.png", png())
    via_app = attempt("onnx: via the app", lambda: app_module.classify([str(photo)], str(path), 3, True),
                      (ModelLoadError,))
    # Through the app the model is named by its file name: a server path means nothing to a visitor.
    assert isinstance(via_app, ModelLoadError) and str(via_app) == str(direct).replace(str(path), path.name)
    # The API answers a person's request with the same words, as a gr.Error.
    api = attempt("onnx: via the app", lambda: app_module.classify_api(str(photo), str(path), 3, local_request()),
                  (app_module.gr.Error,))
    assert isinstance(api, app_module.gr.Error) and api.message == str(via_app)


def test_the_real_model_loads_and_the_app_classifies_with_it(sandbox, app_module, real_model):
    """The control case: the fuzzed model itself is fine, so refusals above are about the damage."""
    photo = write(sandbox / "models" / "photo.png", png((40, 30)))
    results = app_module.classify([str(photo)], str(real_model), 3, True).results
    expected = OnnxClassifier(real_model, providers="cpu").predict([str(photo)], top_k=3)[0]
    assert [p["label"] for p in results[0]["predictions"]] == [label for label, _ in expected]
    assert [p["score"] for p in results[0]["predictions"]] == pytest.approx([score for _, score in expected], abs=1e-6)


def with_preprocessing(**changes) -> bytes:
    """The tiny model, its preprocessing metadata changed (json writes nan and inf as NaN and Infinity)."""
    spec = {**PreprocessSpec(10, CROP).to_dict(), **changes}
    return tiny_model(metadata=our_metadata(preprocessing=json.dumps(spec)))


HOSTILE_MODELS = {
    # name: (model bytes, words the ModelLoadError must contain)
    "non-UTF-8 metadata value": (
        lambda: non_utf8(tiny_model(metadata=our_metadata(config=json.dumps({"note": "MARKER_XYZ"}))), b"MARKER_XYZ"),
        "unreadable metadata"),
    "non-UTF-8 input dimension name": (
        lambda: non_utf8(tiny_model(input_shape=("BATCH_DIM_Q", 3, CROP, CROP)), b"BATCH_DIM_Q"),
        "unreadable input or output signature"),
    "logits of rank 0": (lambda: tiny_model(scalar_logits=True), "logits must be [batch, classes]"),
    "mean of four numbers": (lambda: with_preprocessing(mean=[0.5] * 4), "mean must be 3 numbers"),
    "std of zero": (lambda: with_preprocessing(std=[0, 1, 1]), "std must be positive"),
    "NaN mean": (lambda: with_preprocessing(mean=[math.nan, 0, 0]), "mean must be finite"),
    "infinite resize": (lambda: with_preprocessing(resize=math.inf), "resize must be a whole number"),
    "interpolation a list": (lambda: with_preprocessing(interpolation=["bilinear"]), "Unknown interpolation"),
    "config nested 100,000 deep": (lambda: tiny_model(metadata=our_metadata(config="[" * 100_000)), "'config'"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_MODELS))
def test_model_with_hostile_text_or_shapes_raises_model_load_error(kind):
    build, words = HOSTILE_MODELS[kind]
    result = attempt("onnx: metadata and shape", lambda: load_and_predict(build()), (ModelLoadError,))
    assert isinstance(result, ModelLoadError) and words in str(result), result


def test_model_declaring_an_absurd_resize_is_refused_at_load_not_at_the_first_photo():
    # Loaded at 100000 px, its first photo would be resized to about 100000 x 133000 pixels (~40 GB).
    spec = {**PreprocessSpec(10, CROP).to_dict(), "resize": 100_000}
    data = tiny_model(metadata=our_metadata(preprocessing=json.dumps(spec)))
    # Only loaded, never run: running it is the memory blow-up this case is about.
    result = attempt("onnx: metadata and shape", lambda: OnnxClassifier(data, providers="cpu"), (ModelLoadError,))
    assert isinstance(result, ModelLoadError), f"loaded with resize {result.spec.resize}"
    assert "resize (100000)" in str(result) and "4096" in str(result), result


# ---------------------------------------------------------------------------------------------
# The tally
# ---------------------------------------------------------------------------------------------


def test_zz_no_fuzz_case_crashed_and_counts_are_written(capsys):
    """Runs last in the module (pytest keeps file order): the summary of every case above."""
    summary = {
        "cases": dict(sorted(CASES.items())),
        "total_cases": sum(CASES.values()),
        "crashes": len(CRASHES),
        "crash_examples": CRASHES[:20],
    }
    COUNTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    COUNTS_FILE.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    with capsys.disabled():  # shown with or without -s
        print(f"\nfuzz cases: {summary['total_cases']}, crashes: {len(CRASHES)}")
        for category, count in summary["cases"].items():
            print(f"  {category}: {count}")
    assert summary["total_cases"] > 0
    assert CRASHES == []
