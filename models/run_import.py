"""Bringing a run trained elsewhere back into a run folder: a downloaded run zip, or a run pushed to the Hub.

import_run_zip() unpacks a zip made by RunStore.zip_run (or the same files at the zip's root) and keeps
only the run folder's own files: photos, a Space folder or anything else in the zip is never written.
download_run() fetches `hf://user/name` with huggingface_hub's snapshot_download, with the token rules
of models.hub.download_model. Both check that what arrived is a finished run, and leave nothing behind
when it is not: RunFolderError (or HubError for the Hub) says why in plain words.

No torch, no gradio and no trainer imports: the photo-zip extractor in trainer/data.py is not reused.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path

from models.run_folder import (
    CONFIG,
    DATA_REPORT,
    EXPERIMENT,
    HISTORY,
    METRICS,
    ONNX_VARIANTS,
    PREDICTIONS,
    WEIGHTS,
    RunFolder,
    RunFolderError,
)

# A ResNet-50 run with every ONNX variant is about 260 MB; this leaves room without inviting a bomb.
MAX_RUN_ZIP_BYTES = 600 * 1024**2
MAX_RUN_ZIP_ENTRIES = 200
# The run folder's own files: only these are unpacked from a zip.
RUN_FILES = frozenset(
    {CONFIG, METRICS, HISTORY, DATA_REPORT, PREDICTIONS, EXPERIMENT, WEIGHTS, *ONNX_VARIANTS.values()}
)
# What a comparison or a classification needs from a pushed run (the rest of a push is the model card's).
HUB_FILES = (CONFIG, METRICS, HISTORY, EXPERIMENT, WEIGHTS, ONNX_VARIANTS["fp32"])

_CHUNK = 1024 * 1024
_NOT_A_ZIP = "is not a valid .zip file (it may be damaged or another format)"


# ---------------------------------------------------------------------------------------------
# A run zip


def import_run_zip(zip_path: str | os.PathLike, dest: Path) -> Path:
    """Unpack the run zip `zip_path` so that `dest` (absent or empty) becomes the run folder; returns `dest`.

    RunFolderError when the zip is unsafe, damaged, or not a finished run; nothing is left in `dest` then.
    ValueError when `dest` is not an empty folder.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    _check_empty(dest)
    name = zip_path.name
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        raise RunFolderError(f"{name} {_NOT_A_ZIP}") from None
    created = not dest.exists()
    with archive:
        members = _run_members(archive, name)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            _extract(archive, members, dest, name)
            check_imported_run(dest, name, need_weights=True)
        except BaseException:
            # A half-written or unusable folder must not be listed as a run later.
            _clear(dest, remove=created)
            raise
    return dest


def _run_members(archive: zipfile.ZipFile, name: str) -> dict[str, zipfile.ZipInfo]:
    """Refuse unsafe archives outright; return the run files worth unpacking, by their name in the run folder."""
    infos = archive.infolist()
    if len(infos) > MAX_RUN_ZIP_ENTRIES:
        raise RunFolderError(
            f"{name} holds {len(infos):,} entries; a run zip holds a few files (the limit is {MAX_RUN_ZIP_ENTRIES})"
        )
    files: dict[tuple[str, ...], zipfile.ZipInfo] = {}
    for info in infos:
        # Some Windows tools write backslashes: they are separators too, so they cannot hide a `..`.
        entry = info.filename.replace("\\", "/")
        parts = tuple(p for p in entry.split("/") if p not in ("", "."))
        if entry.startswith("/") or re.match(r"^[A-Za-z]:", entry) or ".." in parts:
            raise RunFolderError(f"{name} is unsafe: the entry {info.filename!r} points outside its folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise RunFolderError(f"{name} is unsafe: the entry {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise RunFolderError(f"{name} is password-protected; use the zip as Transfer Studio made it")
        if info.is_dir() or not parts:
            continue
        if parts in files:
            shown = "/".join(parts)
            raise RunFolderError(f"{name} holds two files named {shown!r}; it was not made by Transfer Studio")
        files[parts] = info

    prefix = _run_prefix(files, name)
    members = {parts[-1]: info for parts, info in files.items() if parts[:-1] == prefix and parts[-1] in RUN_FILES}
    # Entries left out are never read, so only the sizes of those unpacked count.
    declared = sum(info.file_size for info in members.values())
    if declared > MAX_RUN_ZIP_BYTES:
        raise RunFolderError(f"{name} would unpack to {declared:,} bytes; the limit is {MAX_RUN_ZIP_BYTES:,}")
    return members


def _run_prefix(files: dict[tuple[str, ...], zipfile.ZipInfo], name: str) -> tuple[str, ...]:
    """The folder of the zip that holds config.json: its root, or its one top folder (`<run_id>/`)."""
    found = sorted(parts[:-1] for parts in files if parts[-1] == CONFIG and len(parts) <= 2)
    if not found:
        raise RunFolderError(f"{name} is not a run downloaded from Transfer Studio: it has no {CONFIG}")
    if len(found) > 1 and len(found[0]) == len(found[1]):
        raise RunFolderError(f"{name} holds more than one run; add them one zip at a time")
    return found[0]  # the root's () sorts before any folder


def _extract(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], dest: Path, name: str) -> None:
    # The declared sizes are written by whoever made the zip: count what is really unpacked as well.
    written = 0
    for filename, info in members.items():
        try:
            with archive.open(info) as src, open(dest / filename, "xb") as out:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > MAX_RUN_ZIP_BYTES:
                        raise RunFolderError(f"{name} unpacks to more than the limit of {MAX_RUN_ZIP_BYTES:,} bytes")
                    out.write(chunk)
        except RunFolderError:
            raise
        except OSError as exc:  # the disk refused (full, read-only): the zip itself may be fine
            raise RunFolderError(f"{name} cannot be unpacked here: {exc.strerror or exc}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError) as exc:
            # A bad CRC, cut-off data, an unknown compression method: zipfile's own words are too raw to show.
            problem = f"{type(exc).__name__} in {filename}"
            raise RunFolderError(f"{name} is damaged and cannot be unpacked ({problem})") from None


# ---------------------------------------------------------------------------------------------
# A run on the Hugging Face Hub


def download_run(
    ref: str, dest: Path, token: str | None = None, endpoint: str | None = None, use_login: bool = True
) -> Path:
    """Download the run pushed to `ref` (`hf://user/name` or `user/name`) so that `dest` becomes its run folder.

    Without `token`, this machine's login is used unless `use_login` is False (a visitor of a shared
    app): then only public repos are reachable. HubError when the Hub refuses or cannot be reached,
    RunFolderError when the repo holds no Transfer Studio run, ValueError when `dest` is not an empty
    folder; nothing is left in `dest` after a failure.
    """
    from models import hub

    repo_id = hub.parse_hub_ref(ref) or hub.check_repo_id(ref)
    dest = Path(dest)
    _check_empty(dest)
    from huggingface_hub import HfApi, constants, snapshot_download

    # False, not None: huggingface_hub reads the cached login itself when given None.
    token = (token or "").strip() or (hub._login_token() if use_login else False)
    created = not dest.exists()
    try:
        with hub._hub_errors("download", repo_id, endpoint or constants.ENDPOINT, token or None):
            # The Hub's own listing says how big the files are: a repo too large for a run is refused unread.
            listed = HfApi(endpoint=endpoint, token=token).list_repo_tree(repo_id)
            size = sum(getattr(entry, "size", 0) or 0 for entry in listed if entry.path in HUB_FILES)
        if size > MAX_RUN_ZIP_BYTES:
            raise RunFolderError(f"hf://{repo_id} holds {size:,} bytes of run files; a run here may hold at most "
                                 f"{MAX_RUN_ZIP_BYTES:,}")
        with hub._hub_errors("download", repo_id, endpoint or constants.ENDPOINT, token or None):
            snapshot_download(repo_id, local_dir=dest, allow_patterns=list(HUB_FILES), token=token, endpoint=endpoint)
        # huggingface_hub keeps its download bookkeeping there; it is no part of a run folder.
        shutil.rmtree(dest / ".cache", ignore_errors=True)
        # Pushes made before the history was pushed have no curves, and very old ones no weights.
        check_imported_run(dest, f"hf://{repo_id}", need_weights=False)
    except BaseException:
        _clear(dest, remove=created)
        raise
    return dest


# ---------------------------------------------------------------------------------------------
# Checking what arrived


def check_imported_run(path: Path, name: str, need_weights: bool = True) -> None:
    """RunFolderError, in a user's words, unless `path` holds a finished run (config, metrics and the weights)."""
    run = RunFolder(path)
    not_a_run = f"{name} is not a run downloaded from Transfer Studio"
    if not run.has_config():
        raise RunFolderError(f"{not_a_run}: it has no {CONFIG}")
    if not run.file(METRICS).is_file():
        raise RunFolderError(f"{not_a_run}: it has no {METRICS} (its training never finished)")
    if need_weights and not run.weights.is_file():
        raise RunFolderError(f"{not_a_run}: it has no {WEIGHTS} (the trained weights)")
    try:
        run.read_config()
        kinds = [(run.read_metrics(), dict, METRICS), (run.read_history(), list, HISTORY)]
        if run.file(EXPERIMENT).is_file():
            kinds.append((run.read_experiment(), dict, EXPERIMENT))
    except RunFolderError as exc:
        # Its message names the file by its full path here; the user knows it by its name in the run.
        raise RunFolderError(f"{name} is damaged: {str(exc).replace(str(run.path) + os.sep, '')}") from None
    for value, kind, filename in kinds:
        if not isinstance(value, kind):
            raise RunFolderError(f"{name} is damaged: {filename} does not hold what a run writes there")


def _check_empty(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"A run is imported into an empty folder; {dest} is not one")


def _clear(folder: Path, remove: bool) -> None:
    """Remove what an import wrote: the whole folder when the import created it, else its contents."""
    if remove:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir() if folder.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
