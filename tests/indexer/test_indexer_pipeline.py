"""index_paths: bad inputs, incremental re-runs, duplicates, events, encoder refusal and failures."""

import os
import shutil

import pytest

from indexer import pipeline, sources
from indexer.errors import EncoderMismatchError
from indexer.pipeline import index_paths
from indexer.report import ALL_INDEXED, NOTHING_USABLE, SOME_FAILED, FileDone, FileStarted, PageDone, RunStarted
from tests.indexer.indexer_fakes import EMPTY_PDF, FakeEncoder, make_pdf, make_png


def reasons(report):
    return {os.path.basename(os.fsencode(p)).decode("utf-8", "replace"): r for p, r in report.failed}


def test_every_bad_input_gets_one_line_and_the_rest_is_indexed(tmp_path, store, encoder, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "good.pdf", 3, seed=1)
    make_pdf(docs / "enc.pdf", 2, seed=2, encrypt_password="pw")
    (docs / "empty.pdf").write_bytes(EMPTY_PDF)
    (docs / "text.pdf").write_text("I am not a PDF")
    good = (docs / "good.pdf").read_bytes()
    (docs / "broken.pdf").write_bytes(good[:120])
    make_pdf(docs / "locked.pdf", 1, seed=3)
    make_pdf(docs / "gone.pdf", 1, seed=4)
    make_pdf(docs / "huge.pdf", 1, seed=5, size=(18000, 36000))
    make_pdf(docs / "tiny.pdf", 1, seed=6, size=(3, 3))
    make_pdf(os.fsencode(str(docs)) + b"/r\xe9sum\xe9.pdf", 2, seed=7)
    make_png(docs / "scan.png", seed=8)
    real_open = sources._open_binary
    monkeypatch.setattr(sources, "_open_binary",
                        lambda p: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if p.endswith("locked.pdf") else real_open(p))
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, RunStarted):
            os.unlink(docs / "gone.pdf")  # listed, then gone before it is read

    report = index_paths(store, encoder, [docs, tmp_path / "nothing-here"], dpi=72, on_event=on_event)
    why = reasons(report)
    assert sorted(why) == ["broken.pdf", "empty.pdf", "enc.pdf", "gone.pdf", "locked.pdf", "nothing-here",
                           "text.pdf"]
    assert why["enc.pdf"].startswith("encrypted") and "--password" in why["enc.pdf"]
    assert why["empty.pdf"].startswith("empty") and why["text.pdf"].startswith("not a PDF")
    assert why["broken.pdf"].startswith("broken") and why["locked.pdf"].startswith("unreadable")
    assert why["gone.pdf"].startswith("vanished") and why["nothing-here"].startswith("not found")
    assert all("\n" not in r for r in why.values())
    added = {os.path.basename(p): n for p, n in report.added}
    assert added == {"good.pdf": 3, "huge.pdf": 1, "tiny.pdf": 1, os.fsdecode(b"r\xe9sum\xe9.pdf"): 2,
                     "scan.png": 1}
    assert report.outcome == SOME_FAILED and report.pages_added == 8 == store.stats().pages
    assert store.stats().failed_documents == 5  # gone.pdf is not kept, nothing-here never existed
    assert os.fsencode(store.pages_info(store.page_ids_of(os.fsdecode(os.fsencode(str(docs)) + b"/r\xe9sum\xe9.pdf"))
                                        [-1:])[0][0]).endswith(b"/r\xe9sum\xe9.pdf")
    done = [e for e in events if isinstance(e, (FileDone,))]
    assert done[-1].files_total == 12 and max(e.files_done for e in done) <= 12
    pages_done = [e.pages_done for e in events if isinstance(e, PageDone)]
    assert pages_done == list(range(1, 9))

    again = index_paths(store, encoder, [docs], dpi=72, password="pw")
    assert [os.path.basename(p) for p, _n in again.added] == ["enc.pdf"]
    assert len(again.skipped) == 5 and again.pages_encoded == 2


def test_outcomes(tmp_path, store, encoder):
    (tmp_path / "bad.pdf").write_text("nope")
    assert index_paths(store, encoder, [tmp_path / "bad.pdf"]).outcome == NOTHING_USABLE
    make_pdf(tmp_path / "ok.pdf", 1)
    assert index_paths(store, encoder, [tmp_path / "ok.pdf"], dpi=72).outcome == ALL_INDEXED


def test_incremental_reruns_skip_replace_and_remove(tmp_path, store, encoder):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    for i in range(4):
        make_pdf(docs / "sub" / f"d{i}.pdf", 2 + i, seed=i)
    first = index_paths(store, encoder, [docs], dpi=72, batch_size=3)
    assert first.pages_added == 2 + 3 + 4 + 5
    ids = {p: list(store.page_ids_of(p)) for p, _n in first.added}
    seen = encoder.images_seen

    second = index_paths(store, encoder, [docs], dpi=72)
    assert encoder.images_seen == seen and len(second.skipped) == 4 and not second.added
    assert {p: list(store.page_ids_of(p)) for p in ids} == ids

    make_pdf(docs / "sub" / "d1.pdf", 2, seed=50)  # changed content, fewer pages
    os.unlink(docs / "sub" / "d3.pdf")
    make_pdf(docs / "new.pdf", 1, seed=60)
    third = index_paths(store, encoder, [docs], dpi=72)
    assert sorted(os.path.basename(p) for p, _ in third.added) == ["d1.pdf", "new.pdf"]
    assert [os.path.basename(p) for p, n in third.removed] == ["d3.pdf"] and third.removed[0][1] == 5
    assert encoder.images_seen == seen + 3
    d1 = str(docs / "sub" / "d1.pdf")
    assert len(store.page_ids_of(d1)) == 2 and min(store.page_ids_of(d1)) > max(max(v) for v in ids.values())
    for name in ("d0.pdf", "d2.pdf"):
        assert list(store.page_ids_of(str(docs / "sub" / name))) == ids[str(docs / "sub" / name)]
    assert store.stats().pages == 2 + 2 + 4 + 1 and store.verify() == 9
    infos = store.pages_info(store.live_page_ids())
    assert len(set(infos)) == len(infos)  # no page stored twice


def test_same_content_at_two_paths_shares_vectors(tmp_path, store, encoder):
    make_pdf(tmp_path / "a.pdf", 3, seed=1)
    shutil.copy(tmp_path / "a.pdf", tmp_path / "b.pdf")
    report = index_paths(store, encoder, [tmp_path], dpi=72)
    assert report.duplicates == [(str(tmp_path / "b.pdf"), str(tmp_path / "a.pdf"))]
    assert report.pages_encoded == 3 and report.pages_added == 6 and store.dead_bytes() == 0
    store.remove_document(str(tmp_path / "a.pdf"))
    assert len(store.multi_vectors(store.page_ids_of(str(tmp_path / "b.pdf")))) == 3


def test_different_encoder_is_refused(tmp_path, store):
    make_pdf(tmp_path / "a.pdf", 1)
    with pytest.raises(EncoderMismatchError):
        index_paths(store, FakeEncoder(revision="fake-2"), [tmp_path / "a.pdf"])
    assert store.stats().pages == 0


def test_batches_span_documents_and_events_are_ordered(tmp_path, store, encoder):
    for i in range(3):
        make_pdf(tmp_path / f"d{i}.pdf", 3, seed=i)
    events = []
    index_paths(store, encoder, [tmp_path], dpi=72, batch_size=4, on_event=events.append)
    assert encoder.calls == 3  # 9 pages in batches of 4, across document boundaries
    kinds = [(type(e).__name__, os.path.basename(getattr(e, "path", ""))) for e in events
             if isinstance(e, (FileStarted, FileDone))]
    assert kinds == [("FileStarted", "d0.pdf"), ("FileDone", "d0.pdf"), ("FileStarted", "d1.pdf"),
                     ("FileDone", "d1.pdf"), ("FileStarted", "d2.pdf"), ("FileDone", "d2.pdf")]


def test_encoder_failure_mid_run_keeps_finished_documents_and_resumes(tmp_path, store):
    for i in range(4):
        make_pdf(tmp_path / f"d{i}.pdf", 3, seed=i)

    class Dying(FakeEncoder):
        def encode_images(self, images, batch_size=8, show_progress_bar=None):
            if self.images_seen >= 6:
                raise MemoryError("out of memory")
            return super().encode_images(images, batch_size, show_progress_bar)

    with pytest.raises(MemoryError):
        index_paths(store, Dying(), [tmp_path], dpi=72, batch_size=2)
    assert [os.path.basename(d.path) for d in store.documents()] == ["d0.pdf", "d1.pdf"]
    enc = FakeEncoder()
    report = index_paths(store, enc, [tmp_path], dpi=72)
    assert len(report.skipped) == 2 and enc.images_seen == 6 and store.stats().pages == 12


def test_render_thread_stays_bounded(tmp_path, store, encoder, monkeypatch):
    make_pdf(tmp_path / "long.pdf", 40, seed=3)
    alive = {"max_q": 0}
    real_queue = pipeline.queue.Queue

    class Spy(real_queue):
        def put(self, item, *a, **k):
            super().put(item, *a, **k)
            alive["max_q"] = max(alive["max_q"], self.qsize())

    monkeypatch.setattr(pipeline.queue, "Queue", Spy)
    slow = FakeEncoder(delay=0.002)
    index_paths(store, slow, [tmp_path], dpi=72, batch_size=4)
    assert alive["max_q"] <= 4 and store.stats().pages == 40


def test_a_codec_trains_after_a_document_only_past_the_early_mark_and_at_the_end_otherwise(tmp_path, encoder,
                                                                                             monkeypatch):
    """Mid-run (after each document) a codec trains only once Store.train_early_tokens are stored,
    so it learns from more than the first documents; a smaller first run trains at its end."""
    from indexer.store import Store

    for name in ("a.pdf", "b.pdf", "c.pdf"):
        make_pdf(tmp_path / name, 2, seed=len(name) + ord(name[0]))
    paths = [tmp_path / n for n in ("a.pdf", "b.pdf", "c.pdf")]
    for early, expect_mid_run in ((10 ** 9, False), (1, True)):
        s = Store.create(tmp_path / f"pq-{early}", identity=encoder.identity, single_dim=encoder.single_dim,
                         multi_dim=encoder.multi_dim, compression="pq-16")
        monkeypatch.setattr(Store, "train_min_tokens", 1)
        monkeypatch.setattr(Store, "train_early_tokens", early)
        trained_after = []
        real = Store.maybe_train_codec

        def spy(self, **kw):
            converted = real(self, **kw)
            trained_after.append((kw.get("early", False), converted))
            return converted

        monkeypatch.setattr(Store, "maybe_train_codec", spy)
        assert index_paths(s, encoder, paths, dpi=72).outcome == ALL_INDEXED
        monkeypatch.setattr(Store, "maybe_train_codec", real)
        mid_run = [c for e, c in trained_after if e]
        assert len(mid_run) == 3  # asked after every document
        assert (sum(mid_run) > 0) == expect_mid_run  # trained mid-run only past the early mark
        assert s.stats().raw_pages == 0 and s.token_codebook() is not None  # trained by the end either way
        s.close()
