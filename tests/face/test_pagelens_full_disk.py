"""A disk that fills up while indexing: one clear message (exit 4), finished documents kept, and
search and info still work on the full disk."""

import json
import os

import pytest
from typer.testing import CliRunner

from engine.testing import write_tiny_checkpoint
from pagelens.cli import app
from tests.indexer.indexer_fakes import make_pdf
from tests.mounts import mount, unmount

runner = CliRunner()


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount("-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt))
    yield mnt
    unmount(mnt)


def test_disk_full_while_indexing_then_read_on_the_full_disk(tmp_path, small_disk):
    tiny = str(write_tiny_checkpoint(tmp_path / "tiny"))
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        make_pdf(docs / f"d{i:02d}.pdf", pages=4, seed=i, size=(300, 400))
    index = str(small_disk / "idx")
    result = runner.invoke(app, ["index", str(docs), "--index", index, "--model", tiny])
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    text = result.output.lower()
    assert ("full" in text or "no space" in text) and "kept" in text, result.output
    info = runner.invoke(app, ["info", "--index", index, "--json"])
    assert info.exit_code == 0, info.output
    pages = json.loads(info.stdout)["pages"]
    assert pages > 0  # the documents finished before the disk filled are there
    hits = runner.invoke(app, ["search", "doc 1 page 2", "--index", index, "--json", "-k", "3"])
    assert hits.exit_code == 0, hits.output
    assert len(json.loads(hits.stdout)) == min(3, pages)
    verify = runner.invoke(app, ["verify", "--index", index])
    assert verify.exit_code == 0, verify.output
    assert os.path.isdir(index)


@pytest.mark.parametrize("message", ["database or disk is full", "disk I/O error"])
def test_sqlite_disk_errors_say_disk_full_not_damage(tmp_path, monkeypatch, message):
    import sqlite3

    import pagelens.api

    def full(*args, **kwargs):
        raise sqlite3.OperationalError(message)

    monkeypatch.setattr(pagelens.api.Index, "open_or_create", classmethod(lambda cls, *a, **k: full()))
    result = runner.invoke(app, ["index", str(tmp_path), "--index", str(tmp_path / "idx")])
    assert result.exit_code == 4 and "Traceback" not in result.output
    assert "disk is full or failing" in result.output and "kept" in result.output
