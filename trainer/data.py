"""Photo intake for training: from a user's folder or .zip to labelled, validated train/val/test records.

This module owns everything between "the user gave us some photos" and "the trainer has records":
safe zip extraction, layout detection (class folders, or train/ + val|valid/ + test/), skipping of
unusable files with a reason, the seeded stratified validation split, duplicate and leakage
detection, and the data report (`data_report.json`). Every photo is decoded exactly once, with
`models.preprocess.load_rgb`; an optional `prepare` callable turns the decoded image into whatever
the trainer caches. No gradio, no torch.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import re
import shutil
import stat
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from PIL import Image

from models.atomic import write_json
from models.preprocess import MAX_PIXELS, UnreadableImage, load_rgb
from models.run_folder import DATA, DATA_REPORT

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

# Files and folders that operating systems and tools leave behind; never the user's photos.
SYSTEM_NAMES = {"__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini", "$recycle.bin", "system volume information"}

TRAIN_DIRS = {"train"}
VAL_DIRS = {"val", "valid", "validation"}
TEST_DIRS = {"test"}
SPLITS = ("train", "val", "test")

MAX_ZIP_BYTES = 2 * 1024**3
MAX_ZIP_FILES = 50_000
IMBALANCE_RATIO = 3.0

# Photos grouped by date or album sit a few folders below their class folder; anything deeper than
# this is skipped ("nested too deeply"), and zip entries with more path parts are not unpacked.
MAX_CLASS_DEPTH = 32
MAX_ZIP_PARTS = 64
# What Linux and macOS filesystems accept: one name, and a whole path.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095
MAX_CLASS_NAME = 100

_CHUNK = 1024 * 1024


class DataError(ValueError):
    """The photos given cannot be used as a dataset; the message tells the user what to fix."""


@dataclass
class ImageRecord:
    """One usable photo: where it is, its class index, its path relative to the dataset root."""

    path: Path
    label: int
    rel: str
    prepared: Any = None


@dataclass
class Dataset:
    """The usable photos of an upload, split, with the report describing what was found and skipped."""

    root: Path
    labels: list[str]
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]
    report: dict

    def summary(self) -> str:
        """A few human-readable lines for the CLI: classes and counts, skipped files, warnings."""
        r = self.report
        totals = r["totals"]
        lines = [
            f"Data: {r['layout']} layout, {len(self.labels)} classes; validation from {r['val_source']}",
            f"Images: {totals['train']} train, {totals['val']} val, {totals['test']} test",
        ]
        width = max(len(name) for name in self.labels)
        for name in self.labels:
            counts = " / ".join(f"{r['counts'][split][name]} {split}" for split in SPLITS)
            lines.append(f"  {name:<{width}}  {counts}")
        if r["skipped"]:
            lines.append(f"Skipped {len(r['skipped'])} file(s) that could not be used (listed in data_report.json)")
        if r["imbalance"]:
            lines.append(f"Warning: {r['imbalance']}")
        lines.extend(f"Warning: {w}" for w in r["warnings"])
        return "\n".join(lines)


def is_hidden(name: str) -> bool:
    """Dotfiles, dot-folders and OS clutter (__MACOSX, Thumbs.db, ...): ignored without a report."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


# ---------------------------------------------------------------------------------------------
# Zip extraction
# ---------------------------------------------------------------------------------------------


def extract_zip(
    zip_path, dest, max_bytes: int = MAX_ZIP_BYTES, max_files: int = MAX_ZIP_FILES, skipped: list | None = None
) -> Path:
    """Extract an uploaded zip into `dest` (absent or empty) and return the dataset root inside it.

    The whole archive is checked before anything is written; a refused archive leaves no trace.
    Sizes are counted while extracting too, because the declared sizes are written by the uploader.
    Entries that cannot be unpacked on their own (a name too long, nested too deeply) are left out
    and appended to `skipped` as {"path", "reason"}, paths as in the zip.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"extract_zip needs an empty destination folder, {dest} is not one")
    name = zip_path.name
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise DataError(f"{name} is not a valid .zip file (it may be damaged or another format)") from None
    except NotImplementedError:
        # e.g. a 'version needed to extract' above what Python's zipfile reads.
        raise DataError(f"{name} {_UNSUPPORTED}") from None
    left_out: list[dict] = []
    with archive:
        root = dest.resolve()  # once: every entry is checked against it as a string
        members = _checked_members(archive, name, max_bytes, max_files, root, left_out)
        if not members and left_out:
            first = left_out[0]
            raise DataError(f"None of the files in {name} can be unpacked ({first['reason']}: {_shown(first['path'])})")
        if not members:
            raise DataError(f"{name} is empty: it contains no files")
        created = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        try:
            _extract_members(archive, members, root, name, max_bytes)
        except BaseException:
            # A half-extracted upload must not be mistaken for a dataset later.
            _empty_folder(dest, remove=created)
            raise
    if skipped is not None:
        skipped.extend(left_out)
    return find_root(dest)


_UNSUPPORTED = "uses a zip feature this app cannot unpack; re-create the zip with a standard tool"
_FILE = object()  # a file's node in _checked_members' tree of names (folders are dicts)


def _shown(text: str, limit: int = 80) -> str:
    """A name from an upload as a short, printable quote for a message."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else quoted[: limit - 4] + "...'"


def _excerpt(exc: BaseException, limit: int = 120) -> str:
    """An exception's text as a short, printable excerpt (zipfile's can hold kilobytes of raw bytes)."""
    text = "".join(ch if ch.isprintable() else " " for ch in " ".join(str(exc).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fs_bytes(text: str) -> int:
    try:
        return len(os.fsencode(text))
    except UnicodeError:  # a lone surrogate: no filesystem name can hold it
        return MAX_PATH_BYTES + 1


def _checked_members(
    archive: zipfile.ZipFile, name: str, max_bytes: int, max_files: int, dest: Path, skipped: list
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Refuse unsafe archives outright; return the (entry, safe relative path) pairs worth extracting."""
    infos = archive.infolist()
    if len(infos) > max_files:
        raise DataError(f"{name} holds {len(infos):,} entries; the limit is {max_files:,}")
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise DataError(f"{name} would unpack to {declared:,} bytes; the limit is {max_bytes:,}")
    room = MAX_PATH_BYTES - _fs_bytes(str(dest)) - 1
    members = []
    tree: dict = {}  # the kept names as nested folders, to find clashes before anything is written
    for info in infos:
        # Some Windows tools write backslashes; treat them as separators so they cannot hide a `..`.
        entry = info.filename.replace("\\", "/")
        parts = [p for p in entry.split("/") if p not in ("", ".")]
        if entry.startswith("/") or re.match(r"^[A-Za-z]:", entry) or ".." in parts:
            raise DataError(f"{name} is unsafe: the entry {_shown(info.filename)} points outside its folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"{name} is unsafe: the entry {_shown(info.filename)} is a symbolic link")
        if info.flag_bits & 0x1:
            raise DataError(f"{name} is password-protected; upload an unencrypted zip")
        if info.is_dir() or not parts or any(is_hidden(p) for p in parts):
            continue
        rel = "/".join(parts)
        if len(parts) > MAX_ZIP_PARTS:
            skipped.append({"path": rel, "reason": f"nested too deeply (more than {MAX_ZIP_PARTS} folders)"})
            continue
        if any(_fs_bytes(p) > MAX_NAME_BYTES for p in parts):
            skipped.append({"path": rel, "reason": "name too long"})
            continue
        if _fs_bytes(rel) > room:
            skipped.append({"path": rel, "reason": "path too long"})
            continue
        node = tree
        for depth, part in enumerate(parts[:-1], 1):
            node = node.setdefault(part, {})
            if node is _FILE:
                clash = "/".join(parts[:depth])
                raise DataError(f"{name} holds both a file and a folder named {_shown(clash)}; rename one of them")
        existing = node.get(parts[-1])
        if existing is _FILE:
            raise DataError(f"{name} holds two files named {_shown(rel)}; rename or remove one of them")
        if existing is not None:
            raise DataError(f"{name} holds both a file and a folder named {_shown(rel)}; rename one of them")
        node[parts[-1]] = _FILE
        members.append((info, PurePosixPath(*parts)))
    return members


def _extract_members(archive, members, dest: Path, name: str, max_bytes: int) -> None:
    written = 0
    prefix = os.path.join(dest, "")
    for info, rel in members:
        target = dest.joinpath(*rel.parts)
        # Belt and braces over the name checks (relative, no `..`, no links in the archive, a fresh
        # folder): the joined path must stay under dest. A string check, so deep entries stay cheap.
        if not os.path.normpath(target).startswith(prefix):
            raise DataError(f"{name} is unsafe: the entry {_shown(info.filename)} points outside its folder")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "xb") as out:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise DataError(f"{name} unpacks to more than the limit of {max_bytes:,} bytes")
                    out.write(chunk)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 -- sorted into messages below; nothing else may escape
            raise _unpack_error(name, info, exc) from None


def _unpack_error(name: str, info: zipfile.ZipInfo, exc: Exception) -> DataError:
    """What went wrong unpacking one entry, in words, with at most a short excerpt of the library's text."""
    if isinstance(exc, NotImplementedError):  # e.g. a compression method zipfile does not have
        return DataError(f"{name} {_UNSUPPORTED} ({_excerpt(exc)})")
    if isinstance(exc, RuntimeError) and "encrypted" in str(exc):
        return DataError(f"{name} is password-protected; upload an unencrypted zip")
    if isinstance(exc, OSError) and exc.errno is not None:
        # The filesystem refused (the archive itself was read fine): say which way.
        if exc.errno == errno.ENOSPC:
            return DataError(f"There is not enough disk space to unpack {name}")
        if exc.errno == errno.ENAMETOOLONG:
            return DataError(f"{name} holds a name too long for this computer: {_shown(info.filename)}")
        return DataError(f"{name} cannot be unpacked here: {exc.strerror or _excerpt(exc)} ({_shown(info.filename)})")
    # Bad CRC or compressed data (zlib, lzma and bz2 raise their own errors), a cut-off archive, headers
    # that disagree: zipfile's text can quote kilobytes of raw bytes, so only its start is kept.
    return DataError(f"{name} is damaged and cannot be unpacked ({_excerpt(exc)})")


def _empty_folder(folder: Path, remove: bool) -> None:
    if remove:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def find_root(folder) -> Path:
    """Descend through single wrapper folders (`food/` in `food/train/...`) to the dataset root."""
    root = Path(folder)
    for _ in range(MAX_CLASS_DEPTH):  # a chain of lone folders ends somewhere sensible
        entries = _sorted_entries(root)
        if len(entries) != 1 or not entries[0].is_dir(follow_symlinks=False):
            return root
        inner = Path(entries[0].path)
        if inner.name.lower() in TRAIN_DIRS | VAL_DIRS | TEST_DIRS:
            return root
        # A lone folder of photos is a single class, not a wrapper: stop so the class count error names it.
        if not any(e.is_dir(follow_symlinks=False) for e in _sorted_entries(inner)):
            return root
        root = inner
    return root


# ---------------------------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    rel: str
    label: str
    split: str


class _Scan:
    """What a walk of the dataset root found: candidate images per split, classes, skipped files."""

    def __init__(self, root: Path):
        self.root = root
        self.candidates: list[_Candidate] = []
        self.labels: list[str] = []  # class folder names found under train/ (or the root)
        self.skipped: list[dict] = []

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"path": path, "reason": reason})

    def rel(self, path: str) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def class_folders(self, folder: Path, split: str, known: set[str] | None = None) -> None:
        """Every visible subfolder of `folder` is a class; loose files there are reported.

        With `known` (val/ and test/), a class that train/ lacks is skipped: the model cannot predict it.
        """
        for entry in _sorted_entries(folder):
            if entry.is_symlink():
                self.skip(self.rel(entry.path), "symbolic link")
            elif entry.is_dir(follow_symlinks=False):
                if known is not None and entry.name not in known:
                    self.skip_tree(entry.path, f"class '{entry.name}' is not in train/")
                    continue
                if known is None:
                    self.labels.append(entry.name)
                self._walk_class(entry.path, entry.name, split)
            else:
                self.skip(self.rel(entry.path), "not inside a class folder")

    def _walk_class(self, folder: str, label: str, split: str) -> None:
        # Subfolders inside a class folder are still that class (e.g. photos grouped by date).
        for entry, depth in self._walk(folder):
            rel = self.rel(entry.path)
            if entry.is_symlink():
                self.skip(rel, "symbolic link")
            elif depth > MAX_CLASS_DEPTH:
                self.skip(rel, f"nested too deeply (more than {MAX_CLASS_DEPTH} folders inside its class folder)")
            elif not entry.is_file(follow_symlinks=False):
                self.skip(rel, "not a regular file")
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                self.skip(rel, "not an image file type")
            else:
                self.candidates.append(_Candidate(rel, label, split))

    def skip_tree(self, folder: str, reason: str) -> None:
        for entry, _ in self._walk(folder):
            self.skip(self.rel(entry.path), reason)

    def _walk(self, folder: str) -> Iterator[tuple[os.DirEntry, int]]:
        """Every visible entry below `folder` that is not a folder, with how many folders down it is.

        Iterative, so no depth of nesting can exhaust the stack; links are not followed. A folder that
        cannot be listed (e.g. its path is longer than the system allows) is skipped with the reason.
        """
        stack = [(folder, 0)]
        while stack:
            current, depth = stack.pop()
            try:
                entries = _sorted_entries(current)
            except OSError as exc:
                self.skip(self.rel(current), f"folder cannot be read ({exc.strerror or type(exc).__name__})")
                continue
            stack.extend((e.path, depth + 1) for e in reversed(entries) if e.is_dir(follow_symlinks=False))
            yield from ((e, depth) for e in entries if not e.is_dir(follow_symlinks=False))


def _sorted_entries(folder) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not is_hidden(e.name)), key=lambda e: e.name)


def _scan(root: Path) -> tuple[_Scan, str, dict[str, Path]]:
    """Detect the layout and walk it. Returns the scan, the layout name and the split folders used."""
    scan = _Scan(root)
    entries = _sorted_entries(root)
    dirs = {e.name.lower(): e for e in entries if e.is_dir(follow_symlinks=False)}
    if "train" not in dirs:
        scan.class_folders(root, "train")
        return scan, "class folders", {}

    vals = sorted(n for n in dirs if n in VAL_DIRS)
    if len(vals) > 1:
        raise DataError(f"Found both {' and '.join(v + '/' for v in vals)}; keep one validation folder")
    folders = {"train": Path(dirs["train"].path)}
    if vals:
        folders["val"] = Path(dirs[vals[0]].path)
    if "test" in dirs:
        folders["test"] = Path(dirs["test"].path)
    used = {p.name for p in folders.values()}
    for entry in entries:
        if entry.name in used:
            continue
        if entry.is_symlink():
            scan.skip(entry.name, "symbolic link")
        elif entry.is_dir(follow_symlinks=False):
            scan.skip_tree(entry.path, "outside train/, val/ and test/")
        else:
            scan.skip(entry.name, "not inside a class folder")

    scan.class_folders(folders["train"], "train")
    if not scan.labels:
        raise DataError("train/ has no class folders: put each class's photos in its own subfolder of train/")
    known = set(scan.labels)
    for split in ("val", "test"):
        if split in folders:
            scan.class_folders(folders[split], split, known)
    layout = "/".join(p.name for p in folders.values())
    return scan, layout, folders


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _decode(path: Path, prepare: Callable | None, max_pixels: int) -> tuple[str | None, Any, str | None]:
    """(content hash, prepared value, None) for a usable photo, (None, None, reason) otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, None, f"cannot be read ({exc.strerror or exc})"
    try:
        image = load_rgb(io.BytesIO(data), max_pixels=max_pixels)
    except UnreadableImage as exc:
        return None, None, str(exc)
    except Exception as exc:  # noqa: BLE001
        # PIL's format plugins raise assorted exception types on hostile bytes; one bad upload
        # must cost its own file, never the whole intake.
        return None, None, f"truncated or corrupt ({type(exc).__name__})"
    digest = hashlib.blake2b(data, digest_size=20).hexdigest()
    return digest, (prepare(image) if prepare is not None else None), None


# ---------------------------------------------------------------------------------------------
# Splitting, duplicates, report
# ---------------------------------------------------------------------------------------------


def _stratified_split(
    records: list[ImageRecord], digests: dict[str, str], fraction: float, seed: int, labels: list[str]
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Per class: a seeded shuffle, then round(n * fraction) images to val, kept in [1, n-1] when n >= 2.

    Identical photos are moved as one group, so the split itself does not create train/val leakage
    unless every group is larger than the validation share.
    """
    train, val = [], []
    for index, name in enumerate(labels):
        groups: dict[str, list[ImageRecord]] = {}
        for r in records:
            if r.label == index:
                groups.setdefault(digests[r.rel], []).append(r)
        order = list(groups.values())
        # Seeding per class keeps a class's split unchanged when other classes are added or removed.
        random.Random(f"{seed}:{name}").shuffle(order)
        n = sum(len(group) for group in order)
        target = min(max(int(n * fraction + 0.5), 1), n - 1) if n >= 2 else 0
        class_val, class_train = [], []
        for group in order:
            (class_val if len(class_val) + len(group) <= target else class_train).extend(group)
        if target and not class_val:
            # Better one split duplicate group (reported as leakage) than a class with no validation.
            class_val, class_train = class_train[:target], class_train[target:]
        val.extend(class_val)
        train.extend(class_train)
    by_rel = lambda r: r.rel  # noqa: E731
    return sorted(train, key=by_rel), sorted(val, key=by_rel)


def _duplicates(splits: dict[str, list[ImageRecord]], digests: dict[str, str]) -> tuple[list[dict], list[dict]]:
    groups: dict[str, list[tuple[str, str]]] = {}
    for split, records in splits.items():
        for r in records:
            groups.setdefault(digests[r.rel], []).append((r.rel, split))
    duplicates, cross = [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        paths = sorted(rel for rel, _ in members)
        duplicates.append({"paths": paths})
        in_splits = sorted({split for _, split in members}, key=SPLITS.index)
        if len(in_splits) > 1:
            cross.append({"paths": paths, "splits": in_splits})
    key = lambda d: d["paths"][0]  # noqa: E731
    return sorted(duplicates, key=key), sorted(cross, key=key)


def _imbalance(counts: dict[str, int]) -> str | None:
    largest = max(counts, key=lambda k: (counts[k], k))
    smallest = min(counts, key=lambda k: (counts[k], k))
    if counts[largest] < IMBALANCE_RATIO * counts[smallest]:
        return None
    return (
        f"classes are imbalanced: '{largest}' has {counts[largest]} training images but '{smallest}' "
        f"only {counts[smallest]} ({counts[largest] / counts[smallest]:.1f}x); consider adding photos "
        f"or class-weighted loss"
    )


def write_report(report: dict, path) -> None:
    """Write the report as JSON atomically (a crash never leaves half a report)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)


def open_dataset(
    source,
    workdir=None,
    val_fraction: float = 0.2,
    seed: int = 0,
    prepare: Callable[[Image.Image], Any] | None = None,
    max_pixels: int = MAX_PIXELS,
    world=None,
) -> Dataset:
    """Open a folder or .zip of photos as a Dataset; bad files are skipped and reported, never fatal.

    A zip is extracted afresh into `workdir/data` (workdir is required for zips). When `workdir` is
    given the report is also written to `workdir/data_report.json`. Each photo is decoded once; with
    `prepare`, its result is kept on the record as `prepared`. With `world` (a trainer.distributed.World),
    each process decodes its shard of the photos and receives the others'.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"The validation fraction must be between 0 and 1, got {val_fraction}")
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source} does not exist")
    unpacked: list[dict] = []  # zip entries left out, paths as in the zip
    try:
        if source.is_dir():
            root = find_root(source.resolve())
        else:
            if workdir is None:
                raise ValueError("open_dataset needs a workdir to extract a zip into")
            dest = Path(workdir) / DATA
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            root = extract_zip(source, dest, skipped=unpacked).resolve()
        scan, layout, folders = _scan(root)
    except OSError as exc:  # e.g. the folder given cannot be listed
        raise DataError(f"{source.name} cannot be read: {exc.strerror or _excerpt(exc)}") from None
    if unpacked:
        inside = root.relative_to(dest.resolve()).as_posix() + "/" if root != dest.resolve() else ""
        for item in unpacked:
            path = item["path"]
            scan.skip(path[len(inside) :] if inside and path.startswith(inside) else path, item["reason"])
    if not scan.candidates:
        raise DataError(
            f"No photos found in {source.name}. Expected one folder per class with photos "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}), or train/ and val/ folders that contain them"
        )
    labels = sorted(scan.labels)
    if len(labels) < 2:
        found = f"only one class ('{labels[0]}')" if labels else "no class folders"
        raise DataError(f"Found {found}; at least 2 classes are needed, each in its own folder")

    scan.candidates.sort(key=lambda c: c.rel)
    mine = world.shard(scan.candidates) if world else scan.candidates
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda c: _decode(root / c.rel, prepare, max_pixels), mine))
    if world:
        results = world.gather_shards(results)

    index = {name: i for i, name in enumerate(labels)}
    splits: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}
    digests: dict[str, str] = {}
    for cand, (digest, prepared, reason) in zip(scan.candidates, results):
        if reason is not None:
            scan.skip(cand.rel, reason)
            continue
        digests[cand.rel] = digest
        splits[cand.split].append(ImageRecord(root / cand.rel, index[cand.label], cand.rel, prepared))

    if not source.is_dir():  # what a zip held besides usable photos is listed in the report, not kept on disk
        _keep_only(dest.resolve(), {r.path for records in splits.values() for r in records})
    if not digests:
        raise DataError(f"None of the {len(scan.candidates)} image files could be read; see the skipped list for why")
    empty = [name for name in labels if not any(r.label == index[name] for r in splits["train"])]
    if empty:
        where = "train/" if folders else "its folder"
        names = ", ".join(f"'{n}'" for n in empty)
        raise DataError(f"Class {names} has no usable photos in {where}; add photos or remove the folder")

    if "val" in folders:
        val_source = "folder"
    else:
        splits["train"], splits["val"] = _stratified_split(splits["train"], digests, val_fraction, seed, labels)
        val_source = f"split ({val_fraction:.0%}, seed {seed})"

    duplicates, cross = _duplicates(splits, digests)
    counts = {split: {name: 0 for name in labels} for split in SPLITS}
    for split, records in splits.items():
        for r in records:
            counts[split][labels[r.label]] += 1
    warnings = []
    missing_val = [name for name in labels if counts["val"][name] == 0]
    if missing_val:
        warnings.append(f"no validation images for {', '.join(repr(n) for n in missing_val)}")
    if duplicates:
        warnings.append(f"{len(duplicates)} group(s) of identical photos")
    if cross:
        warnings.append(f"{len(cross)} photo(s) appear in more than one split (train/val/test leakage)")

    report = {
        "root": str(root),
        "source": source.name,  # the zip or folder as the person named it: how they recognise the run
        "layout": layout,
        "labels": labels,
        "counts": counts,
        "totals": {split: len(splits[split]) for split in SPLITS},
        "skipped": sorted(scan.skipped, key=lambda s: s["path"]),
        "duplicates": duplicates,
        "cross_split_duplicates": cross,
        "imbalance": _imbalance(counts["train"]),
        "warnings": warnings,
        "val_source": val_source,
        "files": {split: [[r.rel, labels[r.label]] for r in splits[split]] for split in SPLITS},
        # The photos' contents in one digest: runs whose photos share names but not pixels are told apart.
        "photos_digest": hashlib.sha256("".join(sorted(digests.values())).encode()).hexdigest(),
    }
    if workdir is not None:
        write_report(report, Path(workdir) / DATA_REPORT)
    return Dataset(root, labels, splits["train"], splits["val"], splits["test"], report)


def _keep_only(folder: Path, keep: set[Path]) -> None:
    for dirpath, _, files in os.walk(folder, topdown=False):
        for name in files:
            path = Path(dirpath, name)
            if path not in keep:
                path.unlink()
        if dirpath != str(folder) and not os.listdir(dirpath):
            os.rmdir(dirpath)


def assemble_class_folders(classes: dict[str, list], dest) -> Path:
    """Copy {class name: [uploaded files]} into dest/<class>/ (the Teachable-Machine-style UI) and return dest.

    Class names become folder names, so they are checked: non-empty, at most 100 characters, no path
    separators or `..`, not hidden, not a train/val/test folder name, and unique ignoring case.
    """
    cleaned: dict[str, list[Path]] = {}
    seen: set[str] = set()
    for raw, files in classes.items():
        name = str(raw).strip()
        if not name:
            raise DataError("A class has an empty name; give every class a name")
        try:
            size = len(os.fsencode(name))
        except UnicodeError:
            raise DataError(f"Class name {_shown(name)} holds characters no folder name can hold") from None
        if len(name) > MAX_CLASS_NAME or size > MAX_NAME_BYTES:
            raise DataError(
                f"Class name {_shown(name)} is too long: class names can have at most {MAX_CLASS_NAME} characters "
                f"({MAX_NAME_BYTES} bytes as UTF-8)"
            )
        if "/" in name or "\\" in name or ".." in name or any(ord(ch) < 32 for ch in name):
            raise DataError(f"Class name {name!r} cannot contain '/', '\\', '..' or control characters")
        if is_hidden(name):
            raise DataError(f"Class name {name!r} is not allowed (it would be treated as a hidden or system file)")
        if name.lower() in TRAIN_DIRS | VAL_DIRS | TEST_DIRS:
            raise DataError(f"Class name {name!r} is reserved for train/val/test folders; please rename the class")
        if name.lower() in seen:
            raise DataError(f"Two classes are named {name!r} (names must differ, ignoring case)")
        seen.add(name.lower())
        if not files:
            raise DataError(f"Class '{name}' has no photos; add some or remove the class")
        cleaned[name] = [Path(f) for f in files]
    if len(cleaned) < 2:
        raise DataError("At least 2 classes are needed")

    dest = Path(dest)
    created = not dest.exists()
    try:
        for name, files in cleaned.items():
            folder = dest / name
            folder.mkdir(parents=True, exist_ok=True)
            for src in files:
                if not src.is_file():
                    raise DataError(f"The uploaded file {_shown(src.name)} for class '{name}' is missing")
                # A leading dot would make the copy a hidden file, which scanning ignores.
                shutil.copyfile(src, _unique_path(folder, src.name.lstrip(".") or "photo"))
    except (OSError, DataError) as exc:
        if created:  # leave no half-assembled dataset behind
            shutil.rmtree(dest, ignore_errors=True)
        if isinstance(exc, DataError):
            raise
        if exc.errno == errno.ENOSPC:
            raise DataError("There is not enough disk space to store the uploaded photos") from None
        raise DataError(
            f"The photos for class '{name}' could not be stored: {exc.strerror or _excerpt(exc)}"
        ) from None
    return dest


def _unique_path(folder: Path, filename: str) -> Path:
    # Uploads from different phones often share names (IMG_0001.jpg); keep them all.
    stem, suffix = os.path.splitext(filename)
    # Names near the filesystem's limit are shortened, to leave room for the "_N" counter.
    while stem and _fs_bytes(stem + suffix) > MAX_NAME_BYTES - 8:
        stem = stem[:-1]
    if not stem:
        stem, suffix = "photo", suffix[:16]
    candidate = folder / f"{stem}{suffix}"
    n = 1
    while candidate.exists():
        candidate = folder / f"{stem}_{n}{suffix}"
        n += 1
    return candidate


# ---------------------------------------------------------------------------------------------
# A folder sent file by file (the browser's folder picker)
# ---------------------------------------------------------------------------------------------


def check_folder_bounds(name: str, files: int, size: int, max_files: int = MAX_ZIP_FILES,
                        max_bytes: int = MAX_ZIP_BYTES) -> None:
    """Refuse a folder with more files, or more bytes of photos, than one upload may hold."""
    if files > max_files:
        raise DataError(f"{name} holds {files:,} files; one upload may hold at most {max_files:,}. "
                        "Choose a folder with fewer files")
    if size > max_bytes:
        raise DataError(f"{name} holds {size_words(size)} of photos; one upload may hold at most "
                        f"{size_words(max_bytes)}. Choose a folder with fewer or smaller photos")


def size_words(size: int) -> str:
    """A number of bytes as a person reads it: 512 bytes, 3.4 KB, 27.1 MB, 1.5 GB (powers of 1024, as Gradio's)."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


class _SentFiles:
    """Files sent one by one, listed as a zip's entries, so that _checked_members checks their names as a zip's."""

    def __init__(self, infos: list[zipfile.ZipInfo]):
        self._infos = infos

    def infolist(self) -> list[zipfile.ZipInfo]:
        return self._infos


def _top_folder(names) -> str | None:
    """The folder every name is inside ('food' for food/ramen/a.jpg, food/sushi/b.jpg), None when there is none."""
    tops = set()
    for name in names:
        parts = [p for p in str(name).replace("\\", "/").split("/") if p not in ("", ".")]
        if len(parts) < 2:
            return None
        tops.add(parts[0])
    return tops.pop() if len(tops) == 1 else None


def open_uploaded_folder(files, workdir, left_out=(), max_files: int = MAX_ZIP_FILES, max_bytes: int = MAX_ZIP_BYTES,
                         **options) -> Dataset:
    """Open a folder that arrived file by file as open_dataset opens the same folder zipped.

    `files` pairs each photo's path inside the chosen folder, as the browser gives it ("food/ramen/a.jpg"),
    with the uploaded file that holds it; `left_out` names the files the sender did not send (not photos).
    They are written under `workdir/data` with a zip's checks and bounds: a name that climbs out refuses the
    whole folder, as do clashing names and too many files or bytes; a name too long or nested too deeply is
    skipped with the reason. The left-out names are written as empty files, so the report gives each the
    reason a zip's entry gets, then everything but the usable photos is removed, as from a zip. The dataset
    is the chosen folder (the report's source names it); the report is also written to
    `workdir/data_report.json`. `options` go to open_dataset.
    """
    sent = [(str(rel), Path(src)) for rel, src in files]
    left_out = [str(rel) for rel in left_out]
    name = _top_folder([rel for rel, _ in sent] + left_out) or "The upload"
    sizes = []
    for rel, src in sent:
        try:
            info = os.lstat(src)
        except OSError:
            info = None
        if info is None or not stat.S_ISREG(info.st_mode):
            raise DataError(f"The uploaded file for {_shown(rel)} is gone (uploads are kept for a while only); "
                            "choose the folder again")
        sizes.append(info.st_size)
    check_folder_bounds(name, len(sent) + len(left_out), sum(sizes), max_files, max_bytes)

    dest = Path(workdir) / DATA
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    root = dest.resolve()
    infos, sources = [], {}
    for (rel, src), size in zip(sent, sizes):
        info = zipfile.ZipInfo(rel)
        info.file_size = size
        infos.append(info)
        sources[id(info)] = src
    infos += [zipfile.ZipInfo(rel) for rel in left_out]
    skipped: list[dict] = []
    members = _checked_members(_SentFiles(infos), name, max_bytes, max_files, root, skipped)
    if not members and skipped:
        first = skipped[0]
        raise DataError(f"None of the files in {name} can be stored ({first['reason']}: {_shown(first['path'])})")
    if not members:
        raise DataError(f"{name} holds no files")
    _write_sent_files(members, sources, root, name)

    top = _top_folder(rel.as_posix() for _, rel in members)
    dataset = open_dataset(root / top if top else root, **options)
    _keep_only(root, {r.path for records in (dataset.train, dataset.val, dataset.test) for r in records})
    if skipped:
        inside = dataset.root.relative_to(root).as_posix() + "/" if dataset.root != root else ""
        for item in skipped:
            path = item["path"]
            item["path"] = path[len(inside):] if inside and path.startswith(inside) else path
        dataset.report["skipped"] = sorted(dataset.report["skipped"] + skipped, key=lambda s: s["path"])
    write_report(dataset.report, Path(workdir) / DATA_REPORT)
    return dataset


def _write_sent_files(members, sources: dict, root: Path, name: str) -> None:
    """Copy each sent file to its checked path under root (a left-out name becomes an empty file); all or nothing."""
    prefix = os.path.join(root, "")
    try:
        for info, rel in members:
            target = root.joinpath(*rel.parts)
            # As for a zip's entries: whatever the name checks let through, the path must stay under root.
            if not os.path.normpath(target).startswith(prefix):
                raise DataError(f"{name} is unsafe: the entry {_shown(info.filename)} points outside the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = sources.get(id(info))
            if src is None:
                open(target, "xb").close()
            else:
                shutil.copyfile(src, target)
    except (OSError, DataError) as exc:
        shutil.rmtree(root, ignore_errors=True)  # no half-written dataset is mistaken for a checked one later
        if isinstance(exc, DataError):
            raise
        if exc.errno == errno.ENOSPC:
            raise DataError("There is not enough disk space to store the uploaded photos") from None
        raise DataError(f"The photos of {name} could not be stored: {exc.strerror or _excerpt(exc)}") from None
