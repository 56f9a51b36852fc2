"""Subprocess for the derived-structures kill test: keeps adding bring-your-own documents and
syncing the search structures until killed."""

import sys

import numpy as np

sys.path.insert(0, sys.argv[2])
import pagelens  # noqa: E402

index = pagelens.Index.open(sys.argv[1], writable=True)
rng = np.random.default_rng(int(sys.argv[3]))
for d in range(1000):
    pages = []
    for _ in range(int(rng.integers(1, 6))):
        s = rng.standard_normal(64).astype(np.float32)
        m = rng.standard_normal((int(rng.integers(4, 40)), 16)).astype(np.float32)
        pages.append(pagelens.Embedding(s / np.linalg.norm(s), m / np.linalg.norm(m, axis=1, keepdims=True)))
    index.add_embeddings(f"doc-{sys.argv[3]}-{d}.pdf", pages)
    if d % 3 == 2:
        index.remove([f"doc-{sys.argv[3]}-{d - 2}.pdf"])
    index.sync()
    print(d, flush=True)
