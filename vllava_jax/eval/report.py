"""A self-contained HTML page (thumbnails inlined as JPEG data URIs) showing the first samples:
a few frames of each video or the image, the question, the answer, the prediction and its verdict."""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
from etils import epath
from PIL import Image

from vllava_jax.errors import VllavaError
from vllava_jax.processing.image import load_image
from vllava_jax.processing.video import read_frames

THUMB_HEIGHT = 96


def _data_uri(image: Image.Image) -> str:
    image = image.convert("RGB")
    width = max(1, round(image.width * THUMB_HEIGHT / image.height))
    buf = io.BytesIO()
    image.resize((width, THUMB_HEIGHT), Image.BILINEAR).save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnails(path: str | None, kind: str, frames: int) -> list[str]:
    """Data URIs of `frames` uniformly sampled frames (one for an image); none when unreadable."""
    if path is None:
        return []
    try:
        if kind == "video":
            return [_data_uri(Image.fromarray(np.asarray(f))) for f in read_frames(path, frames)]
        return [_data_uri(load_image(path))]
    except VllavaError:
        return []


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"<td>{html.escape(text)}</td>"


def write_report(path: epath.Path, title: str, metrics: dict, records: list[dict], verdicts: list[dict],
                 media_kind: str, max_samples: int = 24, frames: int = 4) -> None:
    rows = []
    for record, verdict in list(zip(records, verdicts))[:max_samples]:
        images = "".join(f'<img src="{uri}">' for uri in thumbnails(record["media"], media_kind, frames))
        if not images:
            images = f"<em>missing or unreadable: {html.escape(record['media_name'])}</em>"
        rows.append(f"<tr><td>{images}</td>{_cell(record['id'])}{_cell(record['question'])}"
                    f"{_cell(record['answer'])}{_cell(record['pred'])}{_cell(verdict)}</tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} td{{vertical-align:top;padding:4px;border-bottom:1px solid #ddd}}
img{{margin-right:2px}} pre{{background:#f6f6f6;padding:8px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<pre>{html.escape(json.dumps(metrics, indent=2))}</pre>
<p>First {len(rows)} of {len(records)} questions.</p>
<table><tr><th>{media_kind}</th><th>id</th><th>question</th><th>answer</th><th>prediction</th><th>verdict</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    path.write_text(page)
