"""Offline demo of the whole flow: generated PDFs, a tiny random checkpoint, `pagelens index`, `pagelens search`.

The tiny model has random weights, so rankings show the mechanics, not relevance. With real weights,
run `make demo PDFS=folder QUERY="..."` instead.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pymupdf

from engine.testing import write_tiny_checkpoint

TOPICS = [
    ("Quarterly revenue", "Revenue grew 12% in Q3, led by the northern region."),
    ("Wiring diagram", "Connect the red lead to terminal A and the black lead to ground."),
    ("Warranty", "The warranty period is 24 months from the date of purchase."),
]


def write_pdfs(folder: Path) -> None:
    for i, (title, body) in enumerate(TOPICS):
        doc = pymupdf.open()
        for p in range(2):
            page = doc.new_page()
            page.insert_text((72, 96), f"{title} - page {p + 1}", fontsize=24)
            page.insert_text((72, 140), body, fontsize=12)
            page.draw_rect(pymupdf.Rect(72, 200 + 40 * i, 300, 400 + 60 * p), color=(i / 3, 0.2, 1 - i / 3), fill=(i / 3, 0.5, p))
        doc.save(folder / f"doc{i + 1}.pdf")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="pagelens-demo-"))
    pdfs = work / "pdfs"
    pdfs.mkdir()
    write_pdfs(pdfs)
    model = write_tiny_checkpoint(work / "tiny-jina-v4")
    index = work / "index"
    cli = [sys.executable, "-m", "pagelens.cli"]
    subprocess.run(cli + ["index", str(pdfs), "--index", str(index), "--model", str(model)], check=True)
    subprocess.run(cli + ["info", "--index", str(index)], check=True)
    subprocess.run(cli + ["search", "warranty period", "--index", str(index), "-k", "3"], check=True)
    print(f"\nEverything is under {work}")


if __name__ == "__main__":
    main()
