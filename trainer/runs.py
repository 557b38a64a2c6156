"""Run folders under one data directory: new ids, each session's runs, lookup by id, expiry, zipping.

Layout: `<data_dir>/<session>/<run_id>/` for runs and `<data_dir>/<session>/uploads/` for photos
being checked before training. Run ids are random and unguessable, so an id alone finds a run
(the API hands them out), while listings stay per session.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "TRANSFER_STUDIO_DATA_DIR"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A zipped upload is extracted into the run's data/ folder; the download leaves those photos out.
EXCLUDED_FROM_DOWNLOAD = ("data",)


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or Path.cwd() / "runs").resolve()


@dataclass
class RunInfo:
    run_id: str
    path: Path
    created: float
    summary: str  # one line for pickers: arch, strategy, accuracy


class RunStore:
    def __init__(self, root: str | Path | None = None, max_age_hours: float | None = None):
        self.root = Path(root).resolve() if root else default_data_dir()
        self.max_age_seconds = None if not max_age_hours else max_age_hours * 3600

    def session_dir(self, session: str) -> Path:
        if not _ID.match(session or ""):
            raise ValueError("invalid session id")
        return self.root / session

    def new_run(self, session: str) -> tuple[str, Path]:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)
        path = self.session_dir(session) / run_id
        path.mkdir(parents=True)
        return run_id, path

    def upload_dir(self, session: str) -> Path:
        """A fresh folder for photos being checked (the previous check's photos are replaced)."""
        path = self.session_dir(session) / "uploads" / secrets.token_hex(4)
        path.mkdir(parents=True)
        return path

    def runs(self, session: str) -> list[RunInfo]:
        """This session's finished runs, newest first."""
        folder = self.session_dir(session)
        found = [self._info(p) for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file()] if folder.is_dir() else []
        return sorted(found, key=lambda r: r.created, reverse=True)

    def find(self, run_id: str) -> Path:
        """The folder of a run id from any session; ValueError when there is none."""
        if not _ID.match(run_id or ""):
            raise ValueError(f"{run_id!r} is not a run id")
        for match in self.root.glob(f"*/{run_id}"):
            if (match / "config.json").is_file():
                return match
        raise ValueError(f"No run with id {run_id!r}")

    def expire(self) -> list[Path]:
        """Delete session folders untouched for longer than max_age; returns what was removed."""
        if not self.max_age_seconds or not self.root.is_dir():
            return []
        cutoff = time.time() - self.max_age_seconds
        removed = []
        for session in self.root.iterdir():
            if session.is_dir() and _newest_mtime(session) < cutoff:
                shutil.rmtree(session, ignore_errors=True)
                removed.append(session)
        return removed

    def zip_run(self, run_dir: Path) -> Path:
        """The run folder as `<run_id>.zip` next to it (photos extracted from an upload left out)."""
        run_dir = Path(run_dir)
        archive = run_dir.parent / f"{run_dir.name}.zip"
        tmp = archive.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(run_dir.rglob("*")):
                rel = path.relative_to(run_dir)
                if path.is_file() and rel.parts[0] not in EXCLUDED_FROM_DOWNLOAD and not path.name.startswith("."):
                    zf.write(path, f"{run_dir.name}/{rel.as_posix()}")
        os.replace(tmp, archive)
        return archive

    @staticmethod
    def _info(path: Path) -> RunInfo:
        config = json.loads((path / "config.json").read_text())
        summary = f"{config['train']['arch']} {config['train']['strategy']}, {len(config['labels'])} classes"
        metrics_path = path / "metrics.json"
        if metrics_path.is_file():
            accuracy = json.loads(metrics_path.read_text()).get("val", {}).get("accuracy")
            if accuracy is not None:
                summary += f", val acc {accuracy:.1%}"
        else:
            summary += ", unfinished"
        return RunInfo(path.name, path, path.stat().st_mtime, summary)


def _newest_mtime(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
