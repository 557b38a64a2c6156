"""The Gradio interface: one module per tab, the per-visitor state, and the user-facing error messages."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SAMPLE_PHOTOS = ASSETS / "sample"  # a small hotdog / not-hotdog set: the Fine-tune tab's default photos
EXAMPLES = sorted(str(p) for p in (ASSETS / "examples").glob("*.jpg"))  # the Classify tab's example photos
