"""The face at its edges: bad options are usage errors before anything loads, the model loads only
when something must be encoded, k hits always come back, bad embeddings are refused, output
cannot be hijacked by file names, and Ctrl-C / SIGTERM / a damaged catalogue end in one message."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from typer.testing import CliRunner

import pagelens
import pagelens.api
from indexer.report import FileDone, FileStarted, PageDone, RunStarted
from pagelens.cli import app
from tests.indexer.indexer_fakes import FakeEncoder, make_pdf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
runner = CliRunner()


class QueryFakeEncoder(FakeEncoder):
    """FakeEncoder that also embeds text queries, deterministically, from the text's bytes."""

    def encode_queries(self, texts, batch_size=8, show_progress_bar=None):
        out = []
        for text in texts:
            rng = np.random.default_rng(zlib.crc32(text.encode("utf-8")))
            s = rng.standard_normal(self.single_dim).astype(np.float32)
            m = rng.standard_normal((4, self.multi_dim)).astype(np.float32)
            out.append(pagelens.Embedding(s / np.linalg.norm(s), m / np.linalg.norm(m, axis=1, keepdims=True)))
        return out


@pytest.fixture
def loads(monkeypatch):
    """Replace the model loader: records each call and returns a QueryFakeEncoder."""
    calls = []

    def load(model, **kwargs):
        calls.append((model, kwargs))
        return QueryFakeEncoder()

    monkeypatch.setattr(pagelens.api, "_load_encoder", load)
    return calls


@pytest.fixture
def no_model(monkeypatch):
    def refuse(model, **kwargs):
        raise AssertionError(f"the model {model!r} was loaded")

    monkeypatch.setattr(pagelens.api, "_load_encoder", refuse)


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _emb(rng, tokens, single_dim=64, multi_dim=16):
    return pagelens.Embedding(_unit(rng.standard_normal(single_dim)), _unit(rng.standard_normal((tokens, multi_dim))))


@pytest.fixture(scope="module")
def byo_400(tmp_path_factory):
    """A bring-your-own index of 400 pages (40 documents of 10), more than the default shortlist."""
    rng = np.random.default_rng(11)
    idx = pagelens.Index.create(tmp_path_factory.mktemp("byo") / "idx", single_dim=64, multi_dim=16)
    for d in range(40):
        idx.add_embeddings(f"elsewhere/doc{d}.pdf", [_emb(rng, int(rng.integers(3, 7))) for _ in range(10)])
    idx.sync()
    yield idx
    idx.close()


# ---- 1. k and candidates -----------------------------------------------------------------------


def test_k_beyond_the_default_shortlist_gives_k_hits(byo_400):
    query = _emb(np.random.default_rng(5), 6)
    hits = byo_400.search_embedding(query, k=300)
    assert len(hits) == 300
    assert [h.rank for h in hits] == list(range(1, 301))
    assert len({h.page_id for h in hits}) == 300
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    exact = byo_400.search_embedding(query, k=300, exhaustive=True)
    assert [h.page_id for h in hits[:10]] == [h.page_id for h in exact[:10]]


def test_candidates_is_checked_and_raised_to_k(byo_400):
    query = _emb(np.random.default_rng(6), 5)
    for bad in (0, -5):
        with pytest.raises(pagelens.PagelensError, match="candidates"):
            byo_400.search_embedding(query, k=10, candidates=bad)
    with pytest.raises(pagelens.PagelensError, match="k must"):
        byo_400.search_embedding(query, k=0)
    for candidates in (1, 2, 9):
        assert len(byo_400.search_embedding(query, k=10, candidates=candidates)) == 10


def test_the_shortlist_is_never_smaller_than_k_whatever_the_generators_return(byo_400):
    retriever = byo_400._retrieval()
    q = _unit(np.random.default_rng(7).standard_normal((1, 16)))
    # one query token, 64 pooled neighbours: the pooled generator alone reaches at most 64 pages
    hits = retriever.search(q, None, k=150, candidates=100, generators=["pooled"], per_token=64)
    assert len(hits) == 150 and len({pid for pid, _ in hits}) == 150


# ---- 2. options are checked before anything loads ----------------------------------------------

BAD_INDEX_OPTIONS = [
    (["--dpi", "0"], "--dpi"),
    (["--batch-size", "0"], "--batch-size"),
    (["--max-pixels", "0"], "--max-pixels"),
    (["--search-dim", "0"], "--search-dim"),
    (["--task", "retreival"], "retrieval, text-matching, code"),
    (["--dtype", "foo"], "float32, bfloat16 or float16"),
    (["--device", "gpu0"], "cpu, cuda"),
]


@pytest.mark.parametrize("option, says", BAD_INDEX_OPTIONS, ids=[o[0][0] for o in BAD_INDEX_OPTIONS])
def test_bad_index_options_are_usage_errors_before_the_model_loads(tmp_path, no_model, option, says):
    make_pdf(tmp_path / "a.pdf", pages=1)
    result = _invoke("index", tmp_path / "a.pdf", "--index", tmp_path / "idx", *option)
    assert result.exit_code == 2, result.output
    assert option[0] in result.output and says in result.output
    assert not (tmp_path / "idx").exists()


def test_cuda_without_cuda_is_a_usage_error(tmp_path, no_model, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    make_pdf(tmp_path / "a.pdf", pages=1)
    result = _invoke("index", tmp_path / "a.pdf", "--index", tmp_path / "idx", "--device", "cuda")
    assert result.exit_code == 2 and "--device" in result.output and "CUDA is not available" in result.output
    assert not (tmp_path / "idx").exists()


BAD_SEARCH = [
    (["q", "-k", "0"], "-k"),
    (["q", "--candidates", "0"], "--candidates"),
    (["q", "--candidates", "-5"], "--candidates"),
    ([""], "the query is empty"),
    (["  \t "], "the query is empty"),
    (["q", "--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("args, says", BAD_SEARCH, ids=["k0", "cand0", "cand-5", "empty", "blank", "device"])
def test_bad_search_arguments_are_usage_errors_before_the_model_loads(tmp_path, no_model, args, says):
    pagelens.Index.create(tmp_path / "idx", encoder=FakeEncoder()).close()
    result = _invoke("search", *args, "--index", tmp_path / "idx")
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_checking_options_imports_no_torch(tmp_path):
    code = (
        "import sys; from typer.testing import CliRunner; from pagelens.cli import app; "
        f"r = CliRunner().invoke(app, ['index', 'x.pdf', '--index', {str(tmp_path / 'idx')!r}, '--dtype', 'foo']); "
        "print(r.exit_code, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["2", "False"]


def test_the_cli_dtype_names_are_the_loaders():
    from engine.loader import _DTYPES
    from pagelens.cli import DTYPES

    assert set(DTYPES) == set(_DTYPES)


# ---- 3. the model loads only when something must be encoded ------------------------------------


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, pagelens.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_rerun_with_nothing_new_never_loads_the_model(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(2):
        make_pdf(docs / f"d{i}.pdf", pages=2, seed=i)
    with pagelens.Index.create(tmp_path / "idx", encoder=FakeEncoder()) as idx:
        idx.add([docs])
    calls = []
    monkeypatch.setattr(pagelens.api, "_load_encoder", lambda model, **kw: calls.append(model) or FakeEncoder())
    again = _invoke("index", docs, "--index", tmp_path / "idx", "--json")
    assert again.exit_code == 0, again.output
    assert len(json.loads(again.stdout)["skipped"]) == 2 and calls == []
    make_pdf(docs / "new.pdf", pages=3, seed=9)  # now something must be encoded: loaded once
    more = _invoke("index", docs, "--index", tmp_path / "idx", "--json")
    assert more.exit_code == 0, more.output
    assert json.loads(more.stdout)["pages_encoded"] == 3 and calls == ["fake"]


def test_searching_an_empty_index_never_loads_the_model(tmp_path, no_model):
    pagelens.Index.create(tmp_path / "idx", encoder=FakeEncoder()).close()
    result = _invoke("search", "anything", "--index", tmp_path / "idx", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    plain = _invoke("search", "anything", "--index", tmp_path / "idx")
    assert plain.exit_code == 0 and "No pages in the index yet" in plain.output
    with pagelens.Index.open(tmp_path / "idx") as idx:
        assert idx.search_batch(["a", "b"]) == [[], []]


def test_an_index_built_with_another_model_is_still_refused_when_the_model_loads(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "a.pdf", pages=1)
    with pagelens.Index.create(tmp_path / "idx", encoder=FakeEncoder()) as idx:
        idx.add([docs])
    make_pdf(docs / "b.pdf", pages=1, seed=3)
    monkeypatch.setattr(pagelens.api, "_load_encoder", lambda model, **kw: FakeEncoder(revision="fake-2"))
    result = _invoke("index", docs, "--index", tmp_path / "idx")
    assert result.exit_code == 4 and "fake-2" in result.output


# ---- 4. progress: model loading is announced, one ETA for the run ------------------------------


def test_model_loading_is_announced_except_with_json_or_quiet(tmp_path, loads):
    make_pdf(tmp_path / "a.pdf", pages=2)
    plain = _invoke("index", tmp_path / "a.pdf", "--index", tmp_path / "i1", "--model", "some/model")
    assert plain.exit_code == 0 and "loading model some/model ..." in plain.stderr
    for flag in ("--json", "--quiet"):
        quiet = _invoke("index", tmp_path / "a.pdf", "--index", tmp_path / f"i{flag}", "--model", "m", flag)
        assert quiet.exit_code == 0 and "loading model" not in quiet.output
    found = _invoke("search", "a page", "--index", tmp_path / "i1")
    assert found.exit_code == 0 and "loading model" in found.stderr and "loading model" not in found.stdout
    as_json = _invoke("search", "a page", "--index", tmp_path / "i1", "--json")
    assert "loading model" not in as_json.output and len(json.loads(as_json.stdout)) == 2


def test_one_eta_covers_the_whole_run_not_the_current_file():
    import io

    from pagelens.progress import Eta, _lines

    now = [0.0]
    stream = io.StringIO()
    on_event = _lines(stream, clock=lambda: now[0])
    on_event(RunStarted(files_total=4))
    on_event(FileStarted("/d/a.pdf", 10))
    for i in range(10):
        now[0] += 1.0  # one page a second
        on_event(PageDone("/d/a.pdf", i + 1, 10, i + 1))
    on_event(FileDone("/d/a.pdf", 10, files_done=1, files_total=4))
    # 3 files ahead at the 10 pages a file seen so far, at 1 page/s: 30 s, not the 0 s left in a.pdf
    assert "[1/4] indexed /d/a.pdf (10 pages), about 30s left" in stream.getvalue()

    eta = Eta(clock=lambda: now[0])
    for event in (RunStarted(3), FileStarted("/d/a.pdf", 4)):
        eta.update(event)
    now[0] += 2.0
    eta.update(PageDone("/d/a.pdf", 1, 4, 2))  # mid-file: 2 left here + 2 files x 4 pages, at 1 page/s
    assert eta.seconds_left() == pytest.approx(10.0)


# ---- 5. NaN, inf, float16 overflow and empty multi-vectors --------------------------------------


def test_bad_embeddings_are_refused_naming_the_page(tmp_path):
    rng = np.random.default_rng(2)
    idx = pagelens.Index.create(tmp_path / "byo", single_dim=64, multi_dim=16)
    good = _emb(rng, 4)
    nan_single = pagelens.Embedding(np.full(64, np.nan, np.float32), good.multi)
    inf_multi = pagelens.Embedding(good.single, np.where(np.eye(4, 16) > 0, np.inf, good.multi).astype(np.float32))
    too_big = pagelens.Embedding(good.single, (good.multi * 1e6).astype(np.float32))  # finite, but inf in float16
    empty = pagelens.Embedding(good.single, np.zeros((0, 16), np.float32))
    for bad, says in ((nan_single, "NaN or infinite"), (inf_multi, "NaN or infinite"), (too_big, "65504"),
                      (empty, "no token vectors")):
        with pytest.raises(pagelens.PagelensError, match=says) as err:
            idx.add_embeddings("report.pdf", [good, bad])
        assert "page 2 of report.pdf" in str(err.value)
    assert idx.info().pages == 0  # nothing of a refused document is stored
    idx.add_embeddings("report.pdf", [good])
    assert idx.search_embedding(good, k=1)[0].page == 1


def test_bad_query_embeddings_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    idx = pagelens.Index.create(tmp_path / "byo", single_dim=64, multi_dim=16)
    idx.add_embeddings("a.pdf", [_emb(rng, 4) for _ in range(3)])
    q = _emb(rng, 3)
    nan = pagelens.Embedding(q.single, np.full((3, 16), np.nan, np.float32))
    empty = pagelens.Embedding(q.single, np.zeros((0, 16), np.float32))
    with pytest.raises(pagelens.PagelensError, match="query embedding has NaN"):
        idx.search_embedding(nan)
    with pytest.raises(pagelens.PagelensError, match="query embedding has no token vectors"):
        idx.search_embedding(empty, exhaustive=True)
    with pytest.raises(pagelens.PagelensError, match="query embedding 2 has no token vectors"):
        idx.search_embeddings([q, empty])
    assert len(idx.search_embedding(q, k=3)) == 3
    idx.close()


def test_the_encoder_output_is_checked_before_it_is_stored(tmp_path, monkeypatch):
    class NanEncoder(FakeEncoder):
        def embed(self, img):
            e = super().embed(img)
            return pagelens.Embedding(e.single, np.full_like(e.multi, np.nan))

    from pagelens.errors import EncoderOutputError

    make_pdf(tmp_path / "a.pdf", pages=2)
    with pagelens.Index.create(tmp_path / "idx", encoder=NanEncoder()) as idx:
        try:
            report = idx.add([tmp_path / "a.pdf"])
        except EncoderOutputError as error:  # a pipeline that stops the run on an encoder's bad output
            reason = error.message
        else:  # one that fails the document holding the page and goes on
            assert [path for path, _ in report.failed] == [str(tmp_path / "a.pdf")]
            reason = report.failed[0][1]
        assert "NaN or infinite" in reason
        assert idx.info().pages == 0


# ---- 6-7. text that is not UTF-8, and file names holding control characters ---------------------


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    from engine.testing import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-edges")
    tiny = str(write_tiny_checkpoint(root / "jina-v4-tiny"))
    docs = root / "docs"
    docs.mkdir()
    make_pdf(docs / "plain.pdf", pages=1, seed=1, size=(300, 400))
    evil = make_pdf(docs / "evil\n\x1b[31mred.pdf", pages=1, seed=2, size=(300, 400))
    index = str(root / "idx")
    result = runner.invoke(app, ["index", str(docs), "--index", index, "--model", tiny])
    assert result.exit_code == 0, result.output
    return index, evil, result


def test_a_query_that_is_not_utf8_is_read_with_replacement(tiny_index):
    index, _evil, _ = tiny_index
    result = _invoke("search", "caf\udcff", "--index", index, "--json")  # what argv holds for b"caf\xff"
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 2
    with pagelens.Index.open(index) as idx:
        same = idx.search("caf\ufffd", k=2)
    assert [(h["path"], h["page"]) for h in json.loads(result.stdout)] == [(h.path, h.page) for h in same]


def test_control_characters_in_file_names_are_escaped_in_plain_output_only(tiny_index):
    index, evil, indexed = tiny_index
    escaped = evil.replace("\n", "\\n").replace("\x1b", "\\x1b")
    assert "\x1b" not in indexed.output and escaped in indexed.stderr  # progress lines
    plain = _invoke("search", "red", "--index", index, "-k", "2")
    assert plain.exit_code == 0
    assert "\x1b" not in plain.stdout and escaped in plain.stdout
    assert len(plain.stdout.strip().splitlines()) == 2  # one line per hit: the newline did not split one
    as_json = _invoke("search", "red", "--index", index, "-k", "2", "--json")
    assert evil in {h["path"] for h in json.loads(as_json.stdout)}  # JSON keeps the exact name


def test_failure_lines_escape_control_characters(tmp_path, loads):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "good.pdf", pages=1)
    (docs / "bro\x1b[2Jken\n.pdf").write_bytes(b"%PDF-1.7\nnot really")
    result = _invoke("index", docs, "--index", tmp_path / "idx", "--model", "m")
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "bro\\x1b[2Jken\\n.pdf" in result.output
    assert json.loads(_invoke("index", docs, "--index", tmp_path / "idx", "--json").stdout)["failed"][0]["path"] == str(
        docs / "bro\x1b[2Jken\n.pdf"
    )


def test_json_output_keeps_paths_that_are_not_utf8_exactly(tmp_path, loads):
    docs = tmp_path / "docs"
    docs.mkdir()
    name = os.fsdecode(b"r\xe9sum\xe9.pdf")  # a Latin-1 file name: lone surrogates in Python
    make_pdf(os.path.join(os.fsencode(docs), b"r\xe9sum\xe9.pdf"), pages=1)
    result = _invoke("index", docs, "--index", tmp_path / "idx", "--model", "m", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"][0]["path"] == str(docs / name)
    plain = _invoke("search", "x", "--index", tmp_path / "idx")
    assert plain.exit_code == 0 and "r\\udce9sum\\udce9.pdf" in plain.stdout


# ---- 8. Ctrl-C and SIGTERM ---------------------------------------------------------------------

SLOW_CLI = (
    "import os, sys, time; sys.path.insert(0, {root!r}); import pagelens.api as api; "
    "from tests.indexer.indexer_fakes import FakeEncoder; "
    "api._load_encoder = lambda model, **kw: (time.sleep(float(os.environ['LOAD_S'])), FakeEncoder(delay=0.15))[1]; "
    "from pagelens.cli import main; sys.argv = ['pagelens'] + sys.argv[1:]; main()"
)


def _slow_index(docs, index, load_s=0.0):
    env = {**os.environ, "LOAD_S": str(load_s)}
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI.format(root=ROOT), "index", str(docs), "--index", str(index),
         "--model", "m", "--batch-size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )


def _wait_for(proc, needle, timeout=60):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never came: {''.join(seen)}")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_run_cleanly_and_the_next_run_resumes(tmp_path, sig, code):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(8):
        make_pdf(docs / f"d{i}.pdf", pages=3, seed=i)
    index = tmp_path / "idx"
    proc = _slow_index(docs, index)
    _wait_for(proc, "indexed")  # the first document is committed
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Interrupted: the index holds every document finished so far; run the same command to resume." in err
    assert "Traceback" not in err
    with pagelens.Index.open(index) as idx:
        done = idx.info().documents
    assert 1 <= done < 8
    resumed = _slow_index(docs, index)
    _out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert sum("] unchanged " in line for line in err.splitlines()) == done
    assert f"{8 - done} added" in err


def test_sigterm_while_the_model_loads_is_the_same_clean_stop(tmp_path):
    make_pdf(tmp_path / "a.pdf", pages=1)
    proc = _slow_index(tmp_path / "a.pdf", tmp_path / "idx", load_s=30)
    _wait_for(proc, "loading model")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Interrupted:" in err and "Traceback" not in err


# ---- 9. a damaged catalogue, or anything unexpected, is one message -----------------------------


def _byo(tmp_path):
    rng = np.random.default_rng(4)
    with pagelens.Index.create(tmp_path / "idx", single_dim=64, multi_dim=16) as idx:
        idx.add_embeddings("a.pdf", [_emb(rng, 4) for _ in range(3)])
    return tmp_path / "idx"


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_a_damaged_catalogue_is_one_message_with_a_hint(tmp_path, damage):
    index = _byo(tmp_path)
    catalogue = index / "catalogue.sqlite"
    data = catalogue.read_bytes()
    catalogue.write_bytes(data[:100] if damage == "truncated" else bytes(b ^ 0xFF for b in data[:16]) + data[16:])
    for command in (["info"], ["search", "x"], ["verify"], ["remove", "a.pdf"]):
        result = _invoke(*command, "--index", index)
        assert result.exit_code == 4, (command, result.output)
        assert "Error:" in result.output and "Hint:" in result.output and "catalogue" in result.output


def test_sqlite_errors_that_reach_the_cli_name_the_catalogue_and_verify(tmp_path, monkeypatch):
    import indexer.store

    def broken(*args, **kwargs):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(indexer.store.Store, "open", classmethod(lambda cls, *a, **k: broken()))
    index = _byo(tmp_path)
    result = _invoke("info", "--index", index)
    assert result.exit_code == 4
    assert "Error: the index catalogue cannot be read (DatabaseError: database disk image is malformed)" in result.output
    assert f"Hint: run `pagelens verify --index {index}`" in result.output


def test_an_unexpected_exception_is_one_message_not_a_traceback(tmp_path, monkeypatch):
    index = _byo(tmp_path)
    monkeypatch.setattr(pagelens.api.Index, "info", lambda self: (_ for _ in ()).throw(TypeError("boom")))
    result = _invoke("info", "--index", index)
    assert result.exit_code == 4
    assert "Error: unexpected failure: TypeError: boom" in result.output and "PAGELENS_DEBUG=1" in result.output


# ---- 10. two runs creating the same index at once ----------------------------------------------


def test_a_create_that_loses_the_race_opens_the_index_instead(tmp_path, loads, monkeypatch):
    import indexer.errors
    import indexer.store

    real = indexer.store.Store.create

    def racing(cls, directory, **kwargs):
        real(directory, **kwargs).close()  # another process creates it between our check and our create
        return real(directory, **kwargs)

    monkeypatch.setattr(indexer.store.Store, "create", classmethod(racing))
    make_pdf(tmp_path / "a.pdf", pages=2)
    with pagelens.Index.open_or_create(tmp_path / "idx", model="m") as idx:
        assert idx.add([tmp_path / "a.pdf"]).pages_added == 2
    assert len(loads) == 1
    with pytest.raises(indexer.errors.IndexExistsError):
        pagelens.Index.create(tmp_path / "idx", model="m")
    assert len(loads) == 1  # refused before loading the model


def test_create_refuses_an_index_found_only_under_the_store_lock(tmp_path, loads, monkeypatch):
    import indexer.errors

    pagelens.Index.create(tmp_path / "idx", encoder=FakeEncoder()).close()
    real, looks = pagelens.api._is_index_dir, []

    def first_look_misses(directory):  # the early check runs before the other process's manifest lands
        looks.append(directory)
        return len(looks) > 1 and real(directory)

    monkeypatch.setattr(pagelens.api, "_is_index_dir", first_look_misses)
    with pytest.raises(indexer.errors.IndexExistsError):
        pagelens.Index.create(tmp_path / "idx", encoder=FakeEncoder())
    looks.clear()
    with pagelens.Index.open_or_create(tmp_path / "idx") as idx:
        assert idx.info().documents == 0


def test_two_runs_creating_one_index_at_once_never_say_it_already_exists(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        make_pdf(docs / f"d{i}.pdf", pages=2, seed=i)
    runs = [_slow_index(docs, tmp_path / "idx", load_s=0.3) for _ in range(2)]
    outcomes = [(proc.wait(timeout=120), proc.stderr.read()) for proc in runs]
    for code, err in outcomes:
        assert "already holds an index" not in err and "Traceback" not in err, err
        assert code == 0 or (code == 4 and "being written by another process" in err), err
    assert 0 in [code for code, _ in outcomes]
    with pagelens.Index.open(tmp_path / "idx") as idx:
        assert idx.info().documents == 3


def test_the_terminal_bar_escapes_file_names_and_announces_the_model():
    import io

    from indexer.report import FileFailed
    from pagelens.progress import progress_reporter
    from pagelens.results import ModelLoading

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    with progress_reporter(stream=screen) as on_event:
        on_event(ModelLoading("some/model"))
        on_event(RunStarted(2))
        on_event(FileStarted("/d/[bold]a\x1b[2J.pdf", 1))
        on_event(PageDone("/d/[bold]a\x1b[2J.pdf", 1, 1, 1))
        on_event(FileDone("/d/[bold]a\x1b[2J.pdf", 1, files_done=1, files_total=2))
        on_event(FileFailed("/d/b\n[red]x.pdf", "broken: no\x1b[0m", files_done=2, files_total=2))
    text = screen.getvalue()
    assert "loading model some/model ..." in text
    assert "[bold]a\\x1b[2J.pdf" in text and "\x1b[2J" not in text
    assert "b\\n[red]x.pdf" in text and "broken: no\\x1b[0m" in text
