"""What this deployment lets one visitor use: epochs, training minutes, disk, upload size.

Each limit is an environment variable. On a Space the defaults are tight (a free CPU Space is
shared by every visitor, with 2 cores and 50 GB of disk); on one's own machine there are none
unless set. `0` switches a limit off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ON_SPACE = bool(os.environ.get("SPACE_ID"))


@dataclass(frozen=True)
class Limits:
    max_epochs: int  # per run; 0 = only the config's own bound
    max_train_minutes: float  # per training, LR sweep included; the run stops and keeps its best model
    visitor_disk_mb: float  # one visitor's runs and uploads together
    total_disk_mb: float  # every visitor's runs and uploads together
    max_upload: str  # per file, enforced by Gradio before any handler runs; and per folder sent with the
    # folder picker (ui/folder_upload.py), all its photos together
    run_hours: float  # runs untouched this long are deleted

    @property
    def max_upload_bytes(self) -> int:
        """max_upload in bytes, read as Gradio reads launch(max_file_size=...) ("500mb": 500 * 2**20); 0: off."""
        from gradio.utils import _parse_file_size

        return 0 if self.max_upload.strip() == "0" else _parse_file_size(self.max_upload)


SPACE_DEFAULTS = Limits(max_epochs=30, max_train_minutes=20, visitor_disk_mb=1024, total_disk_mb=20 * 1024,
                        max_upload="500mb", run_hours=24)
LOCAL_DEFAULTS = Limits(max_epochs=0, max_train_minutes=0, visitor_disk_mb=0, total_disk_mb=0,
                        max_upload="1gb", run_hours=0)
ENV = {
    "max_epochs": "TRANSFER_STUDIO_MAX_EPOCHS",
    "max_train_minutes": "TRANSFER_STUDIO_MAX_TRAIN_MINUTES",
    "visitor_disk_mb": "TRANSFER_STUDIO_VISITOR_DISK_MB",
    "total_disk_mb": "TRANSFER_STUDIO_TOTAL_DISK_MB",
    "max_upload": "TRANSFER_STUDIO_MAX_UPLOAD",
    "run_hours": "TRANSFER_STUDIO_RUN_HOURS",
}


def limits_from(environ, on_space: bool) -> Limits:
    """The limits the environment sets, each unset one from the Space's or the local defaults."""
    defaults = SPACE_DEFAULTS if on_space else LOCAL_DEFAULTS
    values = {}
    for name, variable in ENV.items():
        default = getattr(defaults, name)
        raw = (environ.get(variable) or "").strip()
        try:
            values[name] = type(default)(raw) if raw else default
        except ValueError:
            raise SystemExit(f"{variable}={raw!r} is not a number") from None
    return Limits(**values)


LIMITS = limits_from(os.environ, ON_SPACE)
