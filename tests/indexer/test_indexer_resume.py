"""A long document commits in chunks: an interrupted run keeps them and the next run resumes after
them, encoding nothing twice, with the same result as an uninterrupted run."""

import numpy as np
import pytest

from indexer.pipeline import index_paths
from indexer.store import Store
from tests.indexer.indexer_fakes import FakeEncoder, make_pdf


class StopAt(FakeEncoder):
    """Ctrl-C once ``limit`` images have been encoded."""

    def __init__(self, limit=None):
        super().__init__()
        self.limit = limit

    def encode_images(self, images, batch_size=8, show_progress_bar=None):
        if self.limit is not None and self.images_seen + len(images) > self.limit:
            raise KeyboardInterrupt
        return super().encode_images(images, batch_size=batch_size, show_progress_bar=show_progress_bar)


def new_store(path, encoder):
    s = Store.create(path, identity=encoder.identity, single_dim=encoder.single_dim, multi_dim=encoder.multi_dim)
    s.checkpoint_pages = 3
    return s


def test_interrupted_long_document_resumes_where_it_stopped(tmp_path):
    (tmp_path / "docs").mkdir()
    pdf = make_pdf(tmp_path / "docs" / "long.pdf", pages=11, seed=5)
    short = make_pdf(tmp_path / "docs" / "short.pdf", pages=2, seed=6)
    enc = StopAt(limit=8)  # batches of 2: pages 1-8 encoded, Ctrl-C on 9-10
    s = new_store(tmp_path / "idx", enc)
    with pytest.raises(KeyboardInterrupt):
        index_paths(s, enc, [pdf, short], batch_size=2)
    assert s.partial_documents() == {pdf: (s.partial_documents()[pdf][0], 6)}  # chunks of 3: pages 1-6 kept
    assert len(s.live_page_ids()) == 0  # the partial document is invisible to search
    again = StopAt()
    report = index_paths(s, again, [pdf, short], batch_size=2)
    assert report.resumed == [(pdf, 6)] and report.outcome == "all_indexed"
    assert again.images_seen == 5 + 2  # pages 7-11 of the long one, both of the short one
    assert dict(report.added) == {pdf: 11, short: 2}
    assert s.partial_documents() == {} and s.check_integrity().ok
    ids = s.page_ids_of(pdf)
    assert len(ids) == 11
    # the same vectors as an uninterrupted run
    fresh = new_store(tmp_path / "fresh", FakeEncoder())
    index_paths(fresh, FakeEncoder(), [pdf], batch_size=2)
    for a, b in zip(s.multi_vectors(ids), fresh.multi_vectors(fresh.page_ids_of(pdf))):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(s.single_vectors(ids), fresh.single_vectors(fresh.page_ids_of(pdf)))
    s.close()
    fresh.close()


def test_changed_file_starts_over_instead_of_resuming(tmp_path):
    pdf = make_pdf(tmp_path / "long.pdf", pages=9, seed=1)
    enc = StopAt(limit=4)
    s = new_store(tmp_path / "idx", enc)
    with pytest.raises(KeyboardInterrupt):
        index_paths(s, enc, [pdf], batch_size=2)
    assert list(s.partial_documents().values())[0][1] == 3
    make_pdf(tmp_path / "long.pdf", pages=5, seed=2)  # new content at the same path
    again = StopAt()
    report = index_paths(s, again, [pdf], batch_size=2)
    assert report.resumed == [] and again.images_seen == 5
    assert len(s.page_ids_of(pdf)) == 5 and len(s.live_page_ids()) == 5
    s.close()
