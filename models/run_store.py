"""Many run folders under one data directory: new ids, each visitor's runs, lookup by id, expiry, zipping.

Layout: `<data_dir>/<visitor>/<run_id>/` for runs and `<data_dir>/<visitor>/uploads/` for photos
being checked before training. Run ids are random and unguessable, so an id alone finds a run
(the API hands them out), while listings stay per visitor. What is inside one run folder is
`models.run_folder`'s business.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from models.run_folder import RunFolder, RunFolderError

DATA_DIR_ENV = "TRANSFER_STUDIO_DATA_DIR"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ID_TIME = "%Y%m%d-%H%M%S"  # a run id starts with when its training started, in the server's local time
UPLOADS = "uploads"
# How a run's name says its training ended (RunFolder.ending); runs that ran to the end say nothing.
_ENDING_TAGS = {"early-stopping": "stopped early", "time limit": "time limit", "cancelled": "cancelled",
                "unfinished": "unfinished"}


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or Path.cwd() / "runs").resolve()


@dataclass
class RunInfo:
    run_id: str
    path: Path
    created: float  # when its training started, seconds since the epoch
    summary: str  # RunFolder.summary(): "food4 · resnet18 finetune · val 87%"
    ending: str | None  # RunFolder.ending(): None when every epoch ran

    @property
    def finished_normally(self) -> bool:
        """Ran every epoch or stopped early by its own rule: neither cancelled, cut by the time limit, nor unfinished."""
        return self.ending in (None, "early-stopping")

    def name(self, now: float | None = None) -> str:
        """How a person recognises the run: "food4 · resnet18 finetune · val 87% · 10:44 (cancelled)".

        The time is the start of its training: the hour alone on the day of `now`, with the date before.
        """
        started, today = time.localtime(self.created), time.localtime(time.time() if now is None else now)
        clock = time.strftime("%H:%M" if started[:3] == today[:3] else "%b %d %H:%M", started)
        tag = _ENDING_TAGS.get(self.ending, self.ending)
        return f"{self.summary} · {clock}" + (f" ({tag})" if tag else "")


class RunStore:
    def __init__(self, root: str | Path | None = None, max_age_hours: float | None = None):
        self.root = Path(root).resolve() if root else default_data_dir()
        self.max_age_seconds = None if not max_age_hours else max_age_hours * 3600

    def visitor_dir(self, visitor: str) -> Path:
        if not _ID.match(visitor or ""):
            raise ValueError("invalid visitor id")
        return self.root / visitor

    def new_run(self, visitor: str) -> tuple[str, Path]:
        run_id = f"{time.strftime(_ID_TIME)}-{secrets.token_hex(4)}"
        path = self.visitor_dir(visitor) / run_id
        path.mkdir(parents=True)
        return run_id, path

    def upload_dir(self, visitor: str, replace: bool = True) -> Path:
        """A fresh folder for photos being checked.

        With `replace`, the visitor's earlier uploads are deleted, except those a run of theirs was
        trained from (its report points into them: re-export and the mistakes gallery read them).
        """
        uploads = self.visitor_dir(visitor) / UPLOADS
        if replace and uploads.is_dir():
            used = {self._upload_of(run.path, uploads) for run in self.runs(visitor)}
            for old in uploads.iterdir():
                if old.name not in used:
                    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        path = uploads / secrets.token_hex(4)
        path.mkdir(parents=True)
        return path

    @staticmethod
    def _upload_of(run_dir: Path, uploads: Path) -> str | None:
        try:
            root = Path(RunFolder(run_dir).read_data_report()["root"])
        except (RunFolderError, KeyError, TypeError):
            return None
        return root.relative_to(uploads).parts[0] if root.is_relative_to(uploads) and root != uploads else None

    def delete_run(self, visitor: str, run_id: str) -> None:
        """Delete one of this visitor's runs (another visitor's id is not found)."""
        if not _ID.match(run_id or "") or run_id == UPLOADS:
            raise ValueError(f"{run_id!r} is not a run id")
        path = self.visitor_dir(visitor) / run_id
        if not path.is_dir() or not RunFolder(path).has_config():
            raise ValueError("That run is not one of yours (it may have been deleted or expired)")
        shutil.rmtree(path)
        path.with_name(f"{run_id}.zip").unlink(missing_ok=True)

    def usage(self, visitor: str | None = None) -> int:
        """Bytes on disk under one visitor's folder, or under the whole store."""
        folder = self.visitor_dir(visitor) if visitor else self.root
        total = 0
        for dirpath, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:  # removed while counting
                    pass
        return total

    def runs(self, visitor: str) -> list[RunInfo]:
        """This visitor's runs (those training or interrupted included), newest first."""
        folder = self.visitor_dir(visitor)
        found = [self._info(p) for p in folder.iterdir()
                 if p.is_dir() and not p.name.startswith(".") and RunFolder(p).has_config()] if folder.is_dir() else []
        return sorted((info for info in found if info), key=lambda r: r.created, reverse=True)

    def find(self, run_id: str) -> Path:
        """The folder of a run id from any visitor; ValueError when there is none."""
        if not _ID.match(run_id or ""):
            raise ValueError(f"{run_id!r} is not a run id")
        for match in self.root.glob(f"*/{run_id}"):
            if RunFolder(match).has_config():
                return match
        raise ValueError(f"No run with id {run_id!r}")

    def expire(self) -> list[Path]:
        """Delete visitor folders untouched for longer than max_age; returns what was removed."""
        if not self.max_age_seconds or not self.root.is_dir():
            return []
        cutoff = time.time() - self.max_age_seconds
        removed = []
        for visitor in self.root.iterdir():
            if visitor.is_dir() and _newest_mtime(visitor) < cutoff:
                shutil.rmtree(visitor, ignore_errors=True)
                removed.append(visitor)
        return removed

    def zip_run(self, run_dir: Path) -> Path:
        """The run folder as `<run_id>.zip` next to it (photos extracted from an upload left out)."""
        run = RunFolder(run_dir)
        archive = run.path.parent / f"{run.name}.zip"
        tmp = archive.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in run.shared_files():
                zf.write(path, f"{run.name}/{path.relative_to(run.path).as_posix()}")
        os.replace(tmp, archive)
        return archive

    @staticmethod
    def _info(path: Path) -> RunInfo | None:
        run = RunFolder(path)
        try:
            summary, ending = run.summary(), run.ending()
        except RunFolderError:  # a damaged folder is left out of pickers, not a reason to fail the listing
            return None
        try:
            created = time.mktime(time.strptime(run.name[:15], _ID_TIME))
        except ValueError:  # a run folder renamed by hand: when it last changed will do
            created = path.stat().st_mtime
        return RunInfo(run.name, path, created, summary, ending)


def _newest_mtime(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
