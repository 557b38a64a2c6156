"""Tests for trainer/data.py: photo intake from folders and zips, with real image files made by PIL."""

from __future__ import annotations

import io
import itertools
import json
import os
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import symlink_entry
from models.preprocess import MAX_ASPECT, PreprocessSpec
from trainer import data as data_module
from trainer.data import (
    DataError,
    Dataset,
    assemble_class_folders,
    extract_zip,
    open_dataset,
    open_uploaded_folder,
    size_words,
    write_report,
)

_counter = itertools.count()


def image_bytes(fmt: str = "PNG", size=(24, 24), mode: str = "RGB", **save) -> bytes:
    """A small image whose pixels differ from every other one made here (so no accidental duplicates)."""
    rng = np.random.default_rng(next(_counter))
    w, h = size
    channels = {"RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4}.get(mode, 1)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        shape = (h, w, channels) if channels > 1 else (h, w)
        array = rng.integers(0, 255, shape, dtype=np.uint8)
        base = Image.fromarray(array, {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels])
        image = base.convert("CMYK") if mode == "CMYK" else base.convert("P") if mode == "P" else base
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def write_image(path: Path, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP"}.get(
        path.suffix.lower(), "PNG"
    )
    path.write_bytes(image_bytes(fmt, **kwargs))
    return path


def make_classes(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for name, n in counts.items():
        for i in range(n):
            write_image(root / name / f"{name}_{i:02d}{ext}")
    return root


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's shape without its bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def rels(records) -> list[str]:
    return [r.rel for r in records]


def skipped_reasons(ds: Dataset) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in ds.report["skipped"]}


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


def test_class_folders_layout_splits_into_train_and_val(tmp_path):
    make_classes(tmp_path / "photos", {"cat": 5, "dog": 5})
    ds = open_dataset(tmp_path / "photos")
    assert ds.labels == ["cat", "dog"]
    assert ds.report["layout"] == "class folders"
    assert ds.report["val_source"] == "split (20%, seed 0)"
    assert ds.report["counts"]["val"] == {"cat": 1, "dog": 1}
    assert ds.report["counts"]["train"] == {"cat": 4, "dog": 4}
    assert ds.test == []
    assert all(ds.labels[r.label] == r.rel.split("/")[0] for r in ds.train + ds.val)
    assert all(r.path == ds.root / r.rel and r.path.is_file() for r in ds.train + ds.val)
    assert rels(ds.train) == sorted(rels(ds.train))


def test_train_val_layout_uses_the_val_folder_for_validation(tmp_path):
    make_classes(tmp_path / "train", {"a": 3, "b": 3})
    make_classes(tmp_path / "val", {"a": 1, "b": 2})
    ds = open_dataset(tmp_path)
    assert ds.report["layout"] == "train/val"
    assert ds.report["val_source"] == "folder"
    assert ds.report["counts"]["train"] == {"a": 3, "b": 3}
    assert ds.report["counts"]["val"] == {"a": 1, "b": 2}
    assert all(r.rel.startswith("val/") for r in ds.val)


def test_train_valid_test_layout_keeps_test_separate(tmp_path):
    make_classes(tmp_path / "train", {"a": 3, "b": 3})
    make_classes(tmp_path / "valid", {"a": 1, "b": 1})
    make_classes(tmp_path / "test", {"a": 2, "b": 2})
    ds = open_dataset(tmp_path)
    assert ds.report["layout"] == "train/valid/test"
    assert ds.report["totals"] == {"train": 6, "val": 2, "test": 4}
    assert all(r.rel.startswith("test/") for r in ds.test)
    assert ds.report["files"]["test"][0] == ["test/a/a_00.png", "a"]


def test_train_test_layout_splits_validation_from_train_only(tmp_path):
    make_classes(tmp_path / "train", {"a": 10, "b": 10})
    make_classes(tmp_path / "test", {"a": 4, "b": 4})
    ds = open_dataset(tmp_path, val_fraction=0.3)
    assert ds.report["layout"] == "train/test"
    assert ds.report["val_source"] == "split (30%, seed 0)"
    assert ds.report["counts"]["val"] == {"a": 3, "b": 3}
    assert all(r.rel.startswith("train/") for r in ds.train + ds.val)
    assert sorted(rels(ds.test)) == sorted(r for r in tree(tmp_path) if r.startswith("test/") and r.endswith(".png"))


def test_val_class_missing_from_train_is_skipped_and_missing_val_class_warned(tmp_path):
    make_classes(tmp_path / "train", {"a": 2, "b": 2, "c": 2})
    make_classes(tmp_path / "val", {"a": 1, "b": 1, "zebra": 1})
    ds = open_dataset(tmp_path)
    assert ds.labels == ["a", "b", "c"]
    assert skipped_reasons(ds) == {"val/zebra/zebra_00.png": "class 'zebra' is not in train/"}
    assert any("'c'" in w for w in ds.report["warnings"])


def test_both_val_and_valid_folders_are_ambiguous(tmp_path):
    make_classes(tmp_path / "train", {"a": 2, "b": 2})
    make_classes(tmp_path / "val", {"a": 1, "b": 1})
    make_classes(tmp_path / "valid", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="keep one validation folder"):
        open_dataset(tmp_path)


def test_folders_beside_train_and_val_are_reported_not_used(tmp_path):
    make_classes(tmp_path / "train", {"a": 2, "b": 2})
    make_classes(tmp_path / "val", {"a": 1, "b": 1})
    write_image(tmp_path / "extras" / "x.png")
    (tmp_path / "README.md").write_text("dataset card")
    ds = open_dataset(tmp_path)
    assert skipped_reasons(ds) == {
        "extras/x.png": "outside train/, val/ and test/",
        "README.md": "not inside a class folder",
    }


@pytest.mark.parametrize("inner", ["train-val", "class-folders"])
def test_zip_with_a_wrapper_folder_is_descended(tmp_path, inner):
    src = tmp_path / "src" / "food"
    if inner == "train-val":
        make_classes(src / "train", {"hotdog": 2, "not hotdog": 2})
        make_classes(src / "val", {"hotdog": 1, "not hotdog": 1})
    else:
        make_classes(src, {"hotdog": 3, "not hotdog": 3})
    archive = tmp_path / "food.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "src").rglob("*")):
            zf.write(path, path.relative_to(tmp_path / "src").as_posix())
        zf.writestr("__MACOSX/food/._hotdog", b"junk")
        zf.writestr("food/.DS_Store", b"junk")
    ds = open_dataset(archive, workdir=tmp_path / "run")
    assert ds.root == (tmp_path / "run" / "data" / "food").resolve()
    assert ds.labels == ["hotdog", "not hotdog"]
    assert ds.report["skipped"] == []
    assert ds.report["val_source"] == ("folder" if inner == "train-val" else "split (20%, seed 0)")
    assert not (tmp_path / "run" / "data" / "__MACOSX").exists()
    assert json.loads((tmp_path / "run" / "data_report.json").read_text())["labels"] == ds.labels


def test_reopening_a_zip_in_the_same_workdir_replaces_the_previous_extraction(tmp_path):
    make_classes(tmp_path / "src", {"a": 2, "b": 2})
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "src").rglob("*.png")):
            zf.write(path, path.relative_to(tmp_path / "src").as_posix())
    first = open_dataset(archive, workdir=tmp_path / "run")
    second = open_dataset(archive, workdir=tmp_path / "run")
    assert first.report["files"] == second.report["files"]


def test_image_extensions_are_matched_in_any_case(tmp_path):
    write_image(tmp_path / "a" / "one.JPG")
    write_image(tmp_path / "a" / "two.Jpeg")
    write_image(tmp_path / "b" / "three.PNG")
    write_image(tmp_path / "b" / "four.webp")
    write_image(tmp_path / "b" / "five.BMP")
    write_image(tmp_path / "b" / "six.gif")
    write_image(tmp_path / "b" / "seven.TIFF", fmt="TIFF")
    ds = open_dataset(tmp_path)
    assert ds.report["skipped"] == []
    assert sum(ds.report["totals"].values()) == 7


def test_images_in_subfolders_of_a_class_belong_to_that_class(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    write_image(tmp_path / "a" / "2023" / "deep.png")
    ds = open_dataset(tmp_path)
    labels = dict(ds.report["files"]["train"] + ds.report["files"]["val"])
    assert labels["a/2023/deep.png"] == "a"


def test_photos_more_than_32_folders_inside_their_class_are_skipped_as_nested_too_deeply(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    at_limit = "a/" + "d/" * data_module.MAX_CLASS_DEPTH + "ok.png"
    too_deep = "a/" + "d/" * (data_module.MAX_CLASS_DEPTH + 1) + "deep.png"
    write_image(tmp_path / at_limit)
    write_image(tmp_path / too_deep)
    ds = open_dataset(tmp_path)
    assert at_limit in rels(ds.train + ds.val)
    assert skipped_reasons(ds) == {too_deep: "nested too deeply (more than 32 folders inside its class folder)"}


def test_a_folder_whose_path_is_too_long_to_list_is_skipped_with_its_reason(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    # 25 folders of 200 characters: past the 4096-byte path limit, so they can only be made relative to each other.
    fd = os.open(tmp_path / "a", os.O_RDONLY)
    try:
        for _ in range(25):
            os.mkdir("n" * 200, dir_fd=fd)
            fd, parent = os.open("n" * 200, os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
        os.close(os.open("lost.png", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    finally:
        os.close(fd)
    ds = open_dataset(tmp_path)
    [(path, reason)] = skipped_reasons(ds).items()
    assert path.startswith("a/" + "n" * 200 + "/") and reason == "folder cannot be read (File name too long)"
    assert sum(ds.report["totals"].values()) == 4


# ---------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction, per_class_val", [(0.2, 2), (0.3, 3), (0.5, 5)])
def test_split_is_stratified_with_the_requested_fraction(tmp_path, fraction, per_class_val):
    make_classes(tmp_path, {"a": 10, "b": 10, "c": 10})
    ds = open_dataset(tmp_path, val_fraction=fraction)
    assert ds.report["counts"]["val"] == dict.fromkeys("abc", per_class_val)
    assert ds.report["counts"]["train"] == dict.fromkeys("abc", 10 - per_class_val)
    assert set(rels(ds.train)).isdisjoint(rels(ds.val))


def test_split_is_repeatable_for_a_seed_and_changes_with_the_seed(tmp_path):
    make_classes(tmp_path, {"a": 12, "b": 12})
    first = open_dataset(tmp_path, seed=3)
    again = open_dataset(tmp_path, seed=3)
    assert rels(first.val) == rels(again.val) and rels(first.train) == rels(again.train)
    others = {tuple(rels(open_dataset(tmp_path, seed=s).val)) for s in range(4, 8)}
    assert others - {tuple(rels(first.val))}


def test_every_class_with_two_images_keeps_one_for_val_and_one_for_train(tmp_path):
    make_classes(tmp_path, {"big": 20, "pair": 2, "single": 1})
    for fraction in (0.05, 0.9):
        ds = open_dataset(tmp_path, val_fraction=fraction)
        assert ds.report["counts"]["val"]["pair"] == 1
        assert ds.report["counts"]["train"]["pair"] == 1
        assert ds.report["counts"]["train"]["single"] == 1
        assert ds.report["counts"]["val"]["single"] == 0
        assert 1 <= ds.report["counts"]["val"]["big"] <= 19
    assert any("'single'" in w for w in ds.report["warnings"])


def test_split_keeps_identical_photos_on_the_same_side(tmp_path):
    make_classes(tmp_path, {"a": 8, "b": 8})
    copy = (tmp_path / "a" / "a_00.png").read_bytes()
    for i in range(3):
        (tmp_path / "a" / f"copy_{i}.png").write_bytes(copy)
    for seed in range(6):
        ds = open_dataset(tmp_path, seed=seed)
        assert ds.report["cross_split_duplicates"] == []
        assert ds.report["counts"]["val"]["a"] >= 1


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_validation_fraction_outside_0_1_is_refused(tmp_path, fraction):
    make_classes(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(DataError, match="between 0 and 1"):
        open_dataset(tmp_path, val_fraction=fraction)


# ---------------------------------------------------------------------------------------------
# Bad, hidden and odd files
# ---------------------------------------------------------------------------------------------


def test_every_kind_of_bad_file_is_skipped_with_its_reason(tmp_path):
    make_classes(tmp_path, {"a": 3, "b": 3})
    bad = tmp_path / "a"
    (bad / "zero.jpg").write_bytes(b"")
    jpeg = image_bytes("JPEG", size=(40, 40))
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = image_bytes("PNG", size=(40, 40))
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    (bad / "random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (bad / "text.png").write_text("this is not a picture")
    (bad / "bomb.png").write_bytes(png_declaring(20000, 20000))
    (bad / "notes.txt").write_text("shopping list")
    ds = open_dataset(tmp_path)
    reasons = skipped_reasons(ds)
    assert set(reasons) == {f"a/{n}" for n in ("zero.jpg", "truncated.jpg", "truncated.png", "random.jpg",
                                                  "text.png", "bomb.png", "notes.txt")}
    assert "not an image" in reasons["a/zero.jpg"]
    assert "not an image" in reasons["a/random.jpg"]
    assert "not an image" in reasons["a/text.png"]
    assert "truncated" in reasons["a/truncated.jpg"]
    assert "truncated" in reasons["a/truncated.png"]
    assert "too large" in reasons["a/bomb.png"]
    assert reasons["a/notes.txt"] == "not an image file type"
    assert sum(ds.report["totals"].values()) == 6


def test_images_over_the_pixel_limit_are_skipped(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    write_image(tmp_path / "a" / "huge.png", size=(40, 40))
    ds = open_dataset(tmp_path, max_pixels=24 * 24)
    assert "too large" in skipped_reasons(ds)["a/huge.png"]


def test_hidden_and_system_files_are_ignored_silently(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "a" / "._a_00.png").write_bytes(b"AppleDouble junk")
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "b" / "desktop.ini").write_text("[.ShellClassInfo]")
    write_image(tmp_path / "a" / ".ipynb_checkpoints" / "a_00-checkpoint.png")
    write_image(tmp_path / "__MACOSX" / "a" / "x.png")
    write_image(tmp_path / ".hidden_class" / "x.png")
    ds = open_dataset(tmp_path)
    assert ds.labels == ["a", "b"]
    assert ds.report["skipped"] == []
    assert sum(ds.report["totals"].values()) == 4


def test_symlinks_are_not_followed_out_of_the_root(tmp_path):
    outside = make_classes(tmp_path / "outside", {"secret": 2})
    root = make_classes(tmp_path / "root", {"a": 2, "b": 2})
    os.symlink(outside / "secret" / "secret_00.png", root / "a" / "link.png")
    os.symlink(outside / "secret", root / "linked_class")
    ds = open_dataset(root)
    assert ds.labels == ["a", "b"]
    assert skipped_reasons(ds) == {"a/link.png": "symbolic link", "linked_class": "symbolic link"}
    assert all(r.path.resolve().is_relative_to(root.resolve()) for r in ds.train + ds.val)


def test_loose_files_next_to_class_folders_are_reported(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    write_image(tmp_path / "stray.png")
    ds = open_dataset(tmp_path)
    assert skipped_reasons(ds) == {"stray.png": "not inside a class folder"}


def test_exif_orientation_and_image_modes_arrive_as_rgb(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "rotated.jpg").write_bytes(image_bytes("JPEG", size=(30, 20), exif=exif.tobytes()))
    write_image(tmp_path / "a" / "grey.png", mode="L")
    write_image(tmp_path / "a" / "grey_alpha.png", mode="LA")
    write_image(tmp_path / "b" / "palette.gif", mode="P")
    write_image(tmp_path / "b" / "rgba.png", mode="RGBA")
    write_image(tmp_path / "b" / "cmyk.jpg", mode="CMYK")
    write_image(tmp_path / "b" / "deep.png", mode="I;16")
    ds = open_dataset(tmp_path, prepare=lambda im: (im.mode, im.size))
    prepared = {r.rel: r.prepared for r in ds.train + ds.val}
    assert len(prepared) == 7 and ds.report["skipped"] == []
    assert {mode for mode, _ in prepared.values()} == {"RGB"}
    assert prepared["a/rotated.jpg"][1] == (20, 30)


def test_prepare_is_called_once_per_usable_image_and_stored(tmp_path):
    make_classes(tmp_path, {"a": 4, "b": 5})
    (tmp_path / "a" / "broken.png").write_bytes(b"nope")
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def prepare(image):
        with lock:
            calls.append(image.size)
        return image.resize((8, 8))

    ds = open_dataset(tmp_path, prepare=prepare)
    records = ds.train + ds.val + ds.test
    assert len(calls) == len(records) == 9
    assert all(isinstance(r.prepared, Image.Image) and r.prepared.size == (8, 8) for r in records)


def test_without_prepare_images_are_still_validated_and_not_kept(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "b" / "fake.jpg").write_text("not a jpeg")
    ds = open_dataset(tmp_path)
    assert "b/fake.jpg" in skipped_reasons(ds)
    assert all(r.prepared is None for r in ds.train + ds.val)


def test_a_1_by_8000_photo_is_cached_at_most_4_to_1_after_the_training_resize(tmp_path):
    # Resized whole, this 117-byte PNG became 256 x 2,048,000 pixels (2 GB) in the training cache.
    spec = PreprocessSpec()
    make_classes(tmp_path, {"a": 2, "b": 2})
    Image.new("RGB", (1, 8000), (200, 30, 30)).save(tmp_path / "a" / "strip.png", optimize=True)
    ds = open_dataset(tmp_path, prepare=lambda image: np.asarray(spec.resize_image(image)))  # as trainer.task caches
    prepared = {r.rel: r.prepared for r in ds.train + ds.val}
    assert prepared["a/strip.png"].shape == (MAX_ASPECT * 256, 256, 3)
    assert prepared["a/a_00.png"].shape == (256, 256, 3)


# ---------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------


def test_fewer_than_two_classes_is_an_error(tmp_path):
    make_classes(tmp_path / "photos", {"cat": 3})
    (tmp_path / "photos" / "loose.txt").write_text("x")
    with pytest.raises(DataError, match="at least 2 classes"):
        open_dataset(tmp_path / "photos")


def test_a_class_with_no_usable_image_is_named(tmp_path):
    make_classes(tmp_path, {"cat": 3, "dog": 0})
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="'dog'"):
        open_dataset(tmp_path)


def test_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DataError, match="No photos found"):
        open_dataset(tmp_path / "empty")


def test_a_missing_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")


def test_an_empty_zip_is_an_error(tmp_path):
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("__MACOSX/._x", b"junk")
    with pytest.raises(DataError, match="empty"):
        open_dataset(archive, workdir=tmp_path / "run")


@pytest.mark.parametrize("content", [b"just some text", b"PK\x03\x04 broken", b""])
def test_a_file_that_is_not_a_zip_is_an_error(tmp_path, content):
    archive = tmp_path / "photos.zip"
    archive.write_bytes(content)
    with pytest.raises(DataError, match="not a valid .zip"):
        open_dataset(archive, workdir=tmp_path / "run")


def test_a_zip_needs_a_workdir(tmp_path):
    archive = tmp_path / "photos.zip"
    zipfile.ZipFile(archive, "w").close()
    with pytest.raises(ValueError, match="workdir"):
        open_dataset(archive)


def test_a_corrupt_zip_member_is_an_error_and_leaves_nothing(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/x.png", image_bytes(size=(40, 40)))
        zf.writestr("b/y.png", image_bytes(size=(40, 40)))
    raw = bytearray(archive.read_bytes())
    raw[60:90] = bytes(30)  # inside the first member's compressed data
    archive.write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match="damaged|not a valid"):
        extract_zip(archive, out / "dest")
    assert tree(out) == set()


def test_a_zip_needing_a_newer_zip_version_is_refused_in_words(tmp_path):
    archive = _zip_with(tmp_path, [])
    raw = bytearray(archive.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 6 : central + 8] = struct.pack("<H", 204)  # 'version needed to extract' 20.4: zipfile refuses it
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="uses a zip feature this app cannot unpack; re-create the zip"):
        open_dataset(archive, workdir=tmp_path / "run")


def test_a_damaged_zip_is_refused_with_a_short_printable_message(tmp_path):
    archive = _zip_with(tmp_path, [("good/two.png", image_bytes())])
    raw = bytearray(archive.read_bytes())
    raw[26:28] = struct.pack("<H", 3000)  # first local header's name length: zipfile quotes 3 KB of bytes
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="is damaged and cannot be unpacked") as caught:
        extract_zip(archive, tmp_path / "dest")
    assert len(str(caught.value)) < 250 and str(caught.value).isprintable()


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(
    "entries, message",
    [
        ([("good/ok.png", b"again")], "holds two files named 'good/ok.png'"),
        ([("good\\ok.png", b"again")], "holds two files named 'good/ok.png'"),  # the same name, Windows-style
        ([("good/ok.png/x.png", b"x")], "holds both a file and a folder named 'good/ok.png'"),
        ([("bad/x", b"x"), ("bad/x/y.png", b"y")], "holds both a file and a folder named 'bad/x'"),
    ],
)
def test_clashing_zip_entry_names_are_refused_naming_them_before_anything_is_written(tmp_path, entries, message):
    archive = _zip_with(tmp_path, entries)
    with pytest.raises(DataError, match=message):
        extract_zip(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_zip_entries_with_a_name_too_long_or_nested_too_deeply_are_skipped_and_reported(tmp_path):
    src = make_classes(tmp_path / "src" / "wrapper", {"a": 2, "b": 2})
    long_name = "wrapper/a/" + "é" * 128 + ".png"  # 260 bytes: over any filesystem's 255
    deep_name = "wrapper/b/" + "d/" * 63 + "x.png"  # 66 parts
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*.png")):
            zf.write(path, path.relative_to(src.parent).as_posix())
        zf.writestr(long_name, image_bytes())
        zf.writestr(deep_name, image_bytes())
    ds = open_dataset(archive, workdir=tmp_path / "run")
    assert ds.root.name == "wrapper" and sum(ds.report["totals"].values()) == 4
    assert skipped_reasons(ds) == {  # paths inside the dataset root, as for every skipped file
        long_name.removeprefix("wrapper/"): "name too long",
        deep_name.removeprefix("wrapper/"): "nested too deeply (more than 64 folders)",
    }


def test_a_zip_whose_every_file_is_skipped_says_why(tmp_path):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/" + "x" * 300 + ".png", image_bytes())
    with pytest.raises(DataError, match=r"None of the files in upload.zip can be unpacked \(name too long: 'a/xxx"):
        extract_zip(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# ---------------------------------------------------------------------------------------------
# Zip safety
# ---------------------------------------------------------------------------------------------


def _zip_with(tmp_path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good/ok.png", image_bytes())
        for info, payload in entries:
            zf.writestr(info, payload)
    return archive


@pytest.mark.parametrize(
    "entry, message",
    [
        ("../evil.jpg", "outside"),
        ("good/../../evil.jpg", "outside"),
        ("..\\evil.jpg", "outside"),
        ("/tmp/evil.jpg", "outside"),
        ("C:/evil.jpg", "outside"),
        ("c:evil.jpg", "outside"),
        (symlink_entry("good/link.jpg"), "symbolic link"),
    ],
)
def test_unsafe_zip_entries_are_refused_before_anything_is_written(tmp_path, entry, message):
    archive = _zip_with(tmp_path, [(entry, b"evil")])
    out = tmp_path / "out"
    out.mkdir()
    before = tree(tmp_path)
    with pytest.raises(DataError, match=message):
        extract_zip(archive, out / "dest")
    assert tree(tmp_path) == before
    assert not (out / "dest").exists()


def test_too_many_zip_entries_are_refused(tmp_path):
    archive = _zip_with(tmp_path, [(f"good/{i}.png", b"x") for i in range(5)])
    with pytest.raises(DataError, match="entries"):
        extract_zip(archive, tmp_path / "dest", max_files=3)
    assert not (tmp_path / "dest").exists()


def test_too_many_declared_bytes_are_refused(tmp_path):
    archive = _zip_with(tmp_path, [("good/big.png", bytes(5000))])
    with pytest.raises(DataError, match="limit"):
        extract_zip(archive, tmp_path / "dest", max_bytes=4000)
    assert not (tmp_path / "dest").exists()


def test_a_zip_that_understates_its_sizes_is_refused_and_cleaned_up(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/bomb.png", bytes(200_000))
    raw = bytearray(archive.read_bytes())
    # Rewrite the declared uncompressed size to 10 bytes in both the local and the central header.
    raw[22:26] = struct.pack("<I", 10)
    central = raw.index(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", 10)
    archive.write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError):
        extract_zip(archive, out / "dest", max_bytes=1000)
    assert tree(out) == set()


def test_bytes_are_counted_while_extracting_not_taken_from_headers(tmp_path, monkeypatch):
    archive = _zip_with(tmp_path, [("good/second.png", b"tiny")])
    real_open = zipfile.ZipFile.open

    def lying_open(self, info, *args, **kwargs):
        # A decompressor that produces far more than the entry declared.
        real_open(self, info, *args, **kwargs).close()
        return io.BytesIO(bytes(50_000))

    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match="more than"):
        extract_zip(archive, out / "dest", max_bytes=10_000)
    assert tree(out) == set()


def test_extract_zip_writes_only_inside_dest_and_skips_hidden_entries(tmp_path):
    archive = _zip_with(tmp_path, [("good/.DS_Store", b"x"), ("__MACOSX/good/._ok.png", b"x"), ("bad/x.png", b"y")])
    dest = tmp_path / "out" / "dest"
    root = extract_zip(archive, dest)
    assert root == dest
    assert tree(tmp_path / "out") == {"dest", "dest/good", "dest/good/ok.png", "dest/bad", "dest/bad/x.png"}


def test_extract_zip_refuses_a_non_empty_destination(tmp_path):
    archive = _zip_with(tmp_path, [])
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="empty destination"):
        extract_zip(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# Duplicates, imbalance, report
# ---------------------------------------------------------------------------------------------


def test_duplicate_photos_are_grouped(tmp_path):
    make_classes(tmp_path, {"a": 3, "b": 3})
    photo = (tmp_path / "a" / "a_00.png").read_bytes()
    (tmp_path / "a" / "again.png").write_bytes(photo)
    (tmp_path / "b" / "mislabelled.png").write_bytes(photo)
    (tmp_path / "a" / "nested").mkdir()
    (tmp_path / "a" / "nested" / "third.png").write_bytes(photo)
    ds = open_dataset(tmp_path)
    copies = ["a/a_00.png", "a/again.png", "a/nested/third.png", "b/mislabelled.png"]
    assert ds.report["duplicates"] == [{"paths": copies}]
    assert sum(ds.report["totals"].values()) == 9  # each copy counted once
    assert any("identical" in w for w in ds.report["warnings"])


def test_the_same_photo_in_train_and_val_is_reported_as_leakage(tmp_path):
    make_classes(tmp_path / "train", {"a": 2, "b": 2})
    make_classes(tmp_path / "val", {"a": 1, "b": 1})
    make_classes(tmp_path / "test", {"a": 1, "b": 1})
    (tmp_path / "val" / "a" / "leak.png").write_bytes((tmp_path / "train" / "a" / "a_01.png").read_bytes())
    (tmp_path / "test" / "b" / "leak.png").write_bytes((tmp_path / "train" / "b" / "b_00.png").read_bytes())
    ds = open_dataset(tmp_path)
    assert ds.report["cross_split_duplicates"] == [
        {"paths": ["test/b/leak.png", "train/b/b_00.png"], "splits": ["train", "test"]},
        {"paths": ["train/a/a_01.png", "val/a/leak.png"], "splits": ["train", "val"]},
    ]
    assert any("leakage" in w for w in ds.report["warnings"])
    assert "leakage" in ds.summary()


def test_imbalance_is_warned_when_the_largest_class_has_three_times_the_smallest(tmp_path):
    make_classes(tmp_path / "train", {"many": 6, "few": 2})
    make_classes(tmp_path / "val", {"many": 1, "few": 1})
    ds = open_dataset(tmp_path)
    assert "'many' has 6" in ds.report["imbalance"] and "'few'" in ds.report["imbalance"]
    assert "imbalanced" in ds.summary()
    (tmp_path / "train" / "many" / "many_00.png").unlink()
    assert open_dataset(tmp_path).report["imbalance"] is None


def test_report_has_every_key_and_is_written_as_json(tmp_path):
    make_classes(tmp_path / "photos", {"a": 3, "b": 3})
    (tmp_path / "photos" / "a" / "notes.txt").write_text("x")
    ds = open_dataset(tmp_path / "photos", workdir=tmp_path / "run")
    written = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert written == ds.report
    assert set(written) >= {"root", "layout", "labels", "counts", "totals", "skipped", "duplicates",
                            "cross_split_duplicates", "imbalance", "val_source", "files", "warnings"}
    assert written["skipped"] == [{"path": "a/notes.txt", "reason": "not an image file type"}]
    assert sorted(p for p, _ in written["files"]["train"] + written["files"]["val"]) == sorted(
        f"{c}/{c}_{i:02d}.png" for c in "ab" for i in range(3)
    )
    assert os.listdir(tmp_path / "run") == ["data_report.json"]


def test_write_report_is_atomic_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "data_report.json"
    write_report({"labels": ["a", "b"]}, path)
    with pytest.raises(TypeError):
        write_report({"labels": object()}, path)
    assert json.loads(path.read_text()) == {"labels": ["a", "b"]}
    assert os.listdir(tmp_path) == ["data_report.json"]


def test_summary_lists_counts_per_class_and_skipped_files(tmp_path):
    make_classes(tmp_path, {"cat": 5, "dog": 5})
    (tmp_path / "cat" / "x.txt").write_text("x")
    text = open_dataset(tmp_path).summary()
    assert "cat" in text and "4 train / 1 val / 0 test" in text
    assert "Skipped 1 file" in text


# ---------------------------------------------------------------------------------------------
# Teachable-Machine-style uploads
# ---------------------------------------------------------------------------------------------


def test_assemble_class_folders_copies_uploads_and_keeps_colliding_names(tmp_path):
    uploads = tmp_path / "uploads"
    cats = [write_image(uploads / "phone1" / "IMG_0001.jpg"), write_image(uploads / "phone2" / "IMG_0001.jpg")]
    dogs = [write_image(uploads / "phone1" / "IMG_0002.png"), write_image(uploads / ".tmp" / ".IMG_0003.png")]
    dest = assemble_class_folders({" cat ": cats, "dog": dogs}, tmp_path / "assembled")
    assert dest == tmp_path / "assembled"
    assert tree(dest) == {
        "cat", "cat/IMG_0001.jpg", "cat/IMG_0001_1.jpg", "dog", "dog/IMG_0002.png", "dog/IMG_0003.png"
    }
    ds = open_dataset(dest)
    assert ds.labels == ["cat", "dog"] and sum(ds.report["totals"].values()) == 4


@pytest.mark.parametrize(
    "names, message",
    [
        (["", "dog"], "empty name"),
        (["   ", "dog"], "empty name"),
        (["a/b", "dog"], "cannot contain"),
        (["a\\b", "dog"], "cannot contain"),
        (["..", "dog"], "cannot contain"),
        ([".hidden", "dog"], "hidden"),
        (["Thumbs.db", "dog"], "hidden"),
        (["train", "dog"], "reserved"),
        (["Cat", "cat "], "Two classes"),
        (["cat"], "At least 2"),
        (["x" * 101, "dog"], "too long: class names can have at most 100 characters"),
        (["é" * 128, "dog"], "too long"),  # 128 characters, 256 bytes: one over the filesystem's limit
        (["🌭" * 64, "dog"], "too long"),  # 64 characters, but 256 bytes
        (["a\udc00b", "dog"], "no folder name can hold"),  # a lone surrogate
    ],
)
def test_assemble_class_folders_refuses_bad_class_names(tmp_path, names, message):
    photo = write_image(tmp_path / "p.png")
    with pytest.raises(DataError, match=message):
        assemble_class_folders({name: [photo] for name in names}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_assemble_class_folders_accepts_names_at_the_limits_and_shortens_long_file_names(tmp_path):
    photo = write_image(tmp_path / "uploads" / ("p" * 250 + ".png"))  # 254 bytes: no room for a "_1"
    classes = {"x" * 100: [photo, photo], "é" * 100: [photo]}  # 100 characters; 200 bytes
    dest = assemble_class_folders(classes, tmp_path / "out")
    copies = sorted(p.name for p in (dest / ("x" * 100)).iterdir())
    assert len(copies) == 2 and all(len(name.encode()) <= 255 for name in copies)
    assert sorted(open_dataset(dest).labels) == sorted(classes)


def test_assemble_class_folders_turns_a_filesystem_error_into_a_data_error_and_cleans_up(tmp_path, monkeypatch):
    photo = write_image(tmp_path / "p.png")

    def refuse(src, dst):
        raise OSError(36, "File name too long", str(dst))

    monkeypatch.setattr(data_module.shutil, "copyfile", refuse)
    with pytest.raises(DataError, match="The photos for class 'cat' could not be stored: File name too long"):
        assemble_class_folders({"cat": [photo], "dog": [photo]}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_assemble_class_folders_refuses_a_class_without_files(tmp_path):
    photo = write_image(tmp_path / "p.png")
    with pytest.raises(DataError, match="'dog' has no photos"):
        assemble_class_folders({"cat": [photo], "dog": []}, tmp_path / "out")


def test_decoding_uses_a_thread_pool_sized_to_the_cpu_count(tmp_path, monkeypatch):
    make_classes(tmp_path, {"a": 2, "b": 2})
    sizes = []
    real = data_module.ThreadPoolExecutor

    def spy(max_workers=None, **kwargs):
        sizes.append(max_workers)
        return real(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(data_module, "ThreadPoolExecutor", spy)
    monkeypatch.setattr(data_module.os, "cpu_count", lambda: 3)
    open_dataset(tmp_path)
    assert sizes == [3]


# ---------------------------------------------------------------------------------------------
# A folder sent file by file (the browser's folder picker)
# ---------------------------------------------------------------------------------------------


def sent_as_the_page_sends(chosen: Path, uploads: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """The folder as the page sends it: each photo copied to an upload of its own (as Gradio's upload route
    stores it, under its base name), paired with its path from the chosen folder's name on; hidden files
    never sent, other files named only."""
    files, left_out = [], []
    for path in sorted(chosen.rglob("*")):
        rel = path.relative_to(chosen.parent).as_posix()
        if not path.is_file() or any(data_module.is_hidden(part) for part in rel.split("/")):
            continue
        if path.suffix.lower() in data_module.IMAGE_EXTENSIONS:
            upload = uploads / f"{len(files)}" / path.name
            upload.parent.mkdir(parents=True)
            upload.write_bytes(path.read_bytes())
            files.append((rel, upload))
        else:
            left_out.append(rel)
    return files, left_out


@pytest.mark.parametrize("layout", ["class-folders", "train-val-test"])
def test_a_folder_sent_file_by_file_opens_as_the_same_folder_zipped(tmp_path, layout):
    food = tmp_path / "src" / "food"
    if layout == "class-folders":
        make_classes(food, {"ramen": 5, "sushi": 4}, ".jpg")
    else:
        for split, n in (("train", 4), ("val", 2), ("test", 1)):
            make_classes(food / split, {"ramen": n, "sushi": n}, ".jpg")
    (food / "notes.txt").write_text("shopping list")
    (food / "ramen" if layout == "class-folders" else food / "train" / "ramen").joinpath("readme.md").write_text("#")
    (food / ".DS_Store").write_bytes(b"\0")
    (food / "sushi" if layout == "class-folders" else food / "val" / "sushi").joinpath("broken.jpg").write_text("x")
    zipped = open_dataset(zip_folder_of(food, tmp_path / "food.zip"), workdir=tmp_path / "zip-run")
    files, left_out = sent_as_the_page_sends(food, tmp_path / "uploads")
    sent = open_uploaded_folder(files, tmp_path / "folder-run", left_out)
    assert {k: v for k, v in sent.report.items() if k not in ("root", "source")} == \
           {k: v for k, v in zipped.report.items() if k not in ("root", "source")}
    assert sent.report["source"] == "food" and sent.root == (tmp_path / "folder-run" / "data" / "food").resolve()
    assert len(sent.report["skipped"]) == 3  # notes.txt, readme.md, broken.jpg; .DS_Store is ignored, as in a zip
    # Only the usable photos stay on disk (the left-out names were written empty, for the scan, then removed).
    kept = {p.relative_to(sent.root).as_posix() for p in sent.root.rglob("*") if p.is_file()}
    assert kept == {rel for split in sent.report["files"].values() for rel, _ in split}
    assert json.loads((tmp_path / "folder-run" / "data_report.json").read_text())["source"] == "food"


def zip_folder_of(folder: Path, archive: Path) -> Path:
    """A zip of `folder` as a file manager makes it: entries start with the folder's name."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder.parent).as_posix())
    return archive


def sent_photos(tmp_path: Path, rels: list[str]) -> list[tuple[str, Path]]:
    files = []
    for i, rel in enumerate(rels):
        upload = write_image(tmp_path / "uploads" / str(i) / "photo.png")
        files.append((rel, upload))
    return files


GOOD = ["food/a/1.png", "food/a/2.png", "food/b/1.png", "food/b/2.png"]


@pytest.mark.parametrize("rel, named", [("food/../../evil.png", "food"), ("food\\..\\..\\evil.png", "food"),
                                        ("../evil.png", "The upload"), ("/tmp/evil.png", "The upload"),
                                        ("C:/evil.png", "The upload")])  # named: the folder all names are in, if any
def test_a_sent_name_that_climbs_out_refuses_the_folder_before_anything_is_written(tmp_path, rel, named):
    files = sent_photos(tmp_path, GOOD + [rel])
    before = tree(tmp_path)
    with pytest.raises(DataError) as refused:
        open_uploaded_folder(files, tmp_path / "run" / "upload")
    assert str(refused.value) == f"{named} is unsafe: the entry {rel!r} points outside its folder"
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "rels, left_out, message",
    [
        (GOOD + ["food/a/1.png"], [], "food holds two files named 'food/a/1.png'; rename or remove one of them"),
        (GOOD, ["food/a/1.png"], "food holds two files named 'food/a/1.png'; rename or remove one of them"),
        (GOOD + ["food/a/1.png/x.png"], [], "food holds both a file and a folder named 'food/a/1.png'; rename one of them"),
    ],
)
def test_clashing_sent_names_refuse_the_folder(tmp_path, rels, left_out, message):
    with pytest.raises(DataError) as refused:
        open_uploaded_folder(sent_photos(tmp_path, rels), tmp_path / "run", left_out)
    assert str(refused.value) == message
    assert not (tmp_path / "run" / "data").exists()


def test_sent_names_too_long_or_nested_too_deeply_are_skipped_with_the_reason(tmp_path):
    long_name = "food/a/" + "é" * 128 + ".png"  # 260 bytes: over any filesystem's 255
    deep_name = "food/b/" + "d/" * 63 + "x.png"  # 66 parts
    ds = open_uploaded_folder(sent_photos(tmp_path, GOOD + [long_name, deep_name]), tmp_path / "run")
    assert sum(ds.report["totals"].values()) == 4
    assert skipped_reasons(ds) == {  # paths inside the dataset root, as for every skipped file
        long_name.removeprefix("food/"): "name too long",
        deep_name.removeprefix("food/"): "nested too deeply (more than 64 folders)",
    }


def test_too_many_files_or_bytes_in_a_sent_folder_are_refused_in_words(tmp_path):
    files = sent_photos(tmp_path, GOOD)
    with pytest.raises(DataError) as refused:
        open_uploaded_folder(files, tmp_path / "run", ["food/notes.txt"], max_files=4)
    assert str(refused.value) == "food holds 5 files; one upload may hold at most 4. Choose a folder with fewer files"
    size = sum(path.stat().st_size for _, path in files)
    with pytest.raises(DataError) as refused:
        open_uploaded_folder(files, tmp_path / "run", max_bytes=size - 1)
    assert str(refused.value) == (f"food holds {size_words(size)} of photos; one upload may hold at most "
                                  f"{size_words(size - 1)}. Choose a folder with fewer or smaller photos")
    assert not (tmp_path / "run").exists()


def test_a_sent_file_gone_from_the_uploads_says_to_choose_the_folder_again(tmp_path):
    files = sent_photos(tmp_path, GOOD)
    files[1][1].unlink()
    with pytest.raises(DataError) as refused:
        open_uploaded_folder(files, tmp_path / "run")
    assert str(refused.value) == ("The uploaded file for 'food/a/2.png' is gone (uploads are kept for a while only); "
                                  "choose the folder again")


def test_a_sent_folder_with_no_photos_says_what_it_expected(tmp_path):
    with pytest.raises(DataError, match=r"^No photos found in food\. Expected one folder per class"):
        open_uploaded_folder([], tmp_path / "run", ["food/a/notes.txt", "food/b/list.txt"])


@pytest.mark.parametrize("size, words", [(0, "0 bytes"), (1023, "1023 bytes"), (1024, "1 KB"), (1536, "1.5 KB"),
                                         (27 * 2**20 + 2**19, "27.5 MB"), (500 * 2**20, "500 MB"), (2**31, "2 GB")])
def test_sizes_are_said_in_the_unit_a_person_reads(size, words):
    assert size_words(size) == words
