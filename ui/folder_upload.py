"""A folder of photos from the visitor's computer, class subfolders kept: the picker, its page script, its checks.

Gradio's own directory upload sends each file under its base name, losing the class folders. Here the
browser's folder picker (or a dropped folder) is read by a page script (`folder_upload.js`, run by the
gr.HTML component) that sends the photos through Gradio's upload route, several batches at a time, and
hands the server each photo's path inside the chosen folder with the server path Gradio gave it.
`sent_folder` accepts only files Gradio's upload route wrote; `trainer.data.open_uploaded_folder` then
lays them out under the visitor's upload folder with a zip's checks and opens them as a zip is opened.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from trainer.data import IMAGE_EXTENSIONS, MAX_ZIP_BYTES, MAX_ZIP_FILES, SYSTEM_NAMES, DataError, check_folder_bounds
from ui.limits import LIMITS

SCRIPT = Path(__file__).with_name("folder_upload.js")
NOTHING_CHOSEN = "Choose a folder of photos first: press 'Choose a folder', or drop the folder on the box"
NOT_WHOLE = "The folder did not arrive whole; choose it again"
NOT_UPLOADED = "The folder's files were not uploaded through this page; choose the folder again"

# What the page script needs from the server's rules rides on the template (props given to gr.HTML do not reach a
# script whose component starts hidden): which files are photos, and the hidden system files' names.
TEMPLATE = """
<div class="ts-folder" data-photo-types="{types}" data-system-names="{system}">
  <input type="file" webkitdirectory multiple hidden>
  <div class="ts-drop">
    <button type="button" class="ts-choose">Choose a folder</button>
    <span class="ts-hint">or drop it here. One subfolder per class (food/ramen/*.jpg), or train/ and val/ (and
      test/) folders holding them. Only the photos are sent; the report lists the other files.</span>
  </div>
  <progress max="1" value="0" hidden></progress>
  <div class="ts-status" aria-live="polite"></div>
</div>
"""
CSS = """
.ts-folder { margin: 0 -12px; }  /* the side padding of an HTML block (--block-padding); line up with the form */
.ts-drop { display: flex; flex-wrap: wrap; align-items: center; gap: 12px 16px; padding: 16px;
           border: 2px dashed var(--border-color-primary); border-radius: var(--radius-lg);
           background: var(--block-background-fill); }
.ts-drop.ts-over { border-color: var(--color-accent); background: var(--color-accent-soft); }
.ts-choose { padding: var(--button-large-padding); border-radius: var(--button-large-radius);
             border: 1px solid var(--button-secondary-border-color); background: var(--button-secondary-background-fill);
             color: var(--button-secondary-text-color); font-weight: var(--button-large-text-weight); cursor: pointer; }
.ts-choose:hover { background: var(--button-secondary-background-fill-hover); }
.ts-hint { flex: 1 1 260px; color: var(--body-text-color-subdued); font-size: var(--text-md); }
progress { display: block; width: 100%; height: 8px; margin-top: 10px; border: none; border-radius: 4px;
           appearance: none; -webkit-appearance: none; background: var(--border-color-primary); }
progress[hidden] { display: none; }
progress::-webkit-progress-bar { background: var(--border-color-primary); border-radius: 4px; }
progress::-webkit-progress-value { background: var(--color-accent); border-radius: 4px; }
progress::-moz-progress-bar { background: var(--color-accent); border-radius: 4px; }
.ts-status { margin-top: 6px; min-height: 1.4em; }
"""


def max_bytes() -> int:
    """The most bytes of photos one folder may send: the upload limit (TRANSFER_STUDIO_MAX_UPLOAD), as for a zip."""
    return min(LIMITS.max_upload_bytes or MAX_ZIP_BYTES, MAX_ZIP_BYTES)


def folder_limits(_=None) -> dict:
    """What the page asks before sending a folder (a server function of the picker): the most files and bytes."""
    return {"max_files": MAX_ZIP_FILES, "max_bytes": max_bytes()}


def folder_picker(**kwargs) -> gr.HTML:
    """The picker: a 'Choose a folder' button and a drop box; its value is what the page sent (see `sent_folder`)."""
    template = TEMPLATE.format(types="|".join(sorted(IMAGE_EXTENSIONS)), system="|".join(sorted(SYSTEM_NAMES)))
    return gr.HTML(None, html_template=template, css_template=CSS, js_on_load=SCRIPT.read_text(),
                   server_functions=[folder_limits], **kwargs)


def _count(value) -> int:
    """A count the page sent (files, bytes), 0 when it is not one."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return int(value) if number and 0 < value < 2**63 else 0


def _uploads(request: gr.Request | None) -> set[str]:
    """The paths of every file Gradio's upload route wrote for the app serving this request."""
    app = getattr(getattr(request, "request", None), "app", None)
    blocks = app.get_blocks() if hasattr(app, "get_blocks") else None
    if blocks is None:
        from gradio.context import LocalContext

        blocks = LocalContext.blocks.get(None)
    return getattr(blocks, "upload_file_set", set())


def sent_folder(value, request: gr.Request | None) -> tuple[list[tuple[str, str]], list[str]]:
    """The folder the page sent, as ([(path inside the folder, uploaded file)], [names left out]).

    The page names its uploads by their paths on this server, so a path it sends is taken only when
    Gradio's upload route wrote that very file, inside Gradio's upload folder: a forged one would read
    any file of the server. A folder the page found over the limits arrives without files, and is
    refused here in the same words as one that was sent.
    """
    if not isinstance(value, dict) or "files" not in value:
        raise DataError(NOTHING_CHOSEN)
    files, left_out, name = value.get("files"), value.get("left_out"), value.get("name")
    pairs = isinstance(files, list) and all(
        isinstance(f, list) and len(f) == 2 and all(isinstance(part, str) for part in f) for f in files)
    if not pairs or not isinstance(left_out, list) or not all(isinstance(n, str) for n in left_out):
        raise DataError(NOT_WHOLE)
    name = name[:100] if isinstance(name, str) and name else "The upload"  # a folder's name, at most 255 bytes
    # The page's own counts can only refuse: the files that arrived are counted again when they are stored.
    check_folder_bounds(name, max(_count(value.get("count")), len(files) + len(left_out)), _count(value.get("bytes")),
                        MAX_ZIP_FILES, max_bytes())
    uploads = _uploads(request)
    folder = os.path.join(os.path.realpath(get_upload_folder()), "")
    for _, path in files:
        if path not in uploads or not os.path.realpath(path).startswith(folder):
            raise DataError(NOT_UPLOADED)
    return [(rel, path) for rel, path in files], list(left_out)
