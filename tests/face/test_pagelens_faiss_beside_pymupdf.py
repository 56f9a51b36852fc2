"""FAISS and PyMuPDF in one process, in the order pagelens uses them (render, then cluster and save).

PyMuPDF's SWIG proxy for std::vector<float> once broke faiss.Kmeans after a page was rendered."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import numpy as np, pymupdf
doc = pymupdf.open(); page = doc.new_page(); page.insert_text((50, 50), "x"); page.get_pixmap(dpi=72)
from scoring.faiss_io import spherical_kmeans
from scoring.prefilter import SinglePrefilter
x = np.random.default_rng(0).standard_normal((4000, 16)).astype(np.float32)
c = spherical_kmeans(x, 32, niter=4)
assert c.shape == (32, 16) and np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
p = SinglePrefilter(16)
p.add(np.arange(100, dtype=np.int64) * 3, x[:100] / np.linalg.norm(x[:100], axis=1, keepdims=True))
q = SinglePrefilter.from_bytes(p.to_bytes()) if hasattr(SinglePrefilter, "from_bytes") else p
assert sorted(q.ids().tolist()) == list(range(0, 300, 3))
print("ok")
"""


def test_clustering_and_index_io_after_rendering_a_pdf_page():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
