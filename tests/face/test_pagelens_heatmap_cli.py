"""`pagelens show` end to end with the tiny jina-layout checkpoint: the real encoder records grids,
the command writes the hit's page with its heatmap, and refuses cleanly what it cannot show."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import pagelens
from engine.testing import write_tiny_checkpoint
from pagelens.cli import app
from pagelens.heatmap import show
from tests.indexer.indexer_fakes import make_pdf

runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("show")
    tiny = str(write_tiny_checkpoint(root / "jina-v4-tiny"))
    docs = root / "docs"
    docs.mkdir()
    paths = [make_pdf(docs / f"doc{i}.pdf", pages=2, seed=i, size=(300, 400)) for i in range(2)]
    index = str(root / "idx")
    result = runner.invoke(app, ["index", str(docs), "--index", index, "--model", tiny, "--json"])
    assert result.exit_code == 0, result.output
    return root, paths, index


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_show_writes_the_hits_page_with_its_heatmap(built, tmp_path):
    _root, paths, index = built
    out = tmp_path / "hit.png"
    result = _invoke("show", "doc 1 page 2", "--index", index, "-o", out, "--width", 360, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["output"] == str(out) and data["path"] in paths and data["rank"] == 1
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (360, 480)  # the page's own 3:4 rectangle at --width
        written = np.asarray(img.convert("RGB"))
    heat = data["heatmap"]
    assert np.array(heat["patch_scores"]).shape == (heat["rows"], heat["cols"])
    assert "".join(t["text"] for t in heat["tokens"]) == "Query: doc 1 page 2"  # the tokenizer's own strings
    for t in heat["tokens"]:
        assert 0 <= t["best"][0] < heat["rows"] and 0 <= t["best"][1] < heat["cols"]
    # the file is the Python function's picture: the page rendered from the file, heatmap over it
    with pagelens.Index.open(index) as idx:
        shown = show(idx, "doc 1 page 2", width=360)
        assert shown.hit.page_id == data["page_id"]
        np.testing.assert_array_equal(written, np.asarray(shown.image))
        assert not np.array_equal(np.asarray(shown.page), np.asarray(shown.image))  # something was drawn
        page = idx.page(shown.hit.page_id)
        grid_rows, grid_cols = shown.heatmap.rows, shown.heatmap.cols
    assert page.heatmap and (grid_rows, grid_cols) == (heat["rows"], heat["cols"])
    plain = _invoke("show", "doc 1 page 2", "--index", index, "-o", tmp_path / "plain.png", "--rank", 2)
    assert plain.exit_code == 0 and "page" in plain.stdout and str(tmp_path / "plain.png") in plain.stdout


def test_one_token_and_its_bounds(built, tmp_path):
    _root, _paths, index = built
    one = _invoke("show", "wiring", "--index", index, "-o", tmp_path / "t.png", "--token", 1, "--json")
    assert one.exit_code == 0, one.output
    data = json.loads(one.stdout)["heatmap"]
    assert data["token"] == 1
    best = data["tokens"][1]["best"]
    scores = np.array(data["patch_scores"])
    assert scores[best[0], best[1]] == pytest.approx(scores.max(), abs=1e-5)  # token 1's own map
    too_far = _invoke("show", "wiring", "--index", index, "-o", tmp_path / "x.png", "--token", 999)
    assert too_far.exit_code == 4 and "token must be an integer from 0 to" in too_far.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args,code,words", [
    (["--rank", "0"], 2, "at least 1"),
    (["--width", "10"], 2, "32 to 2000"),
    (["--width", "5000"], 2, "32 to 2000"),
    (["--token", "-1"], 2, "at least 0"),
    (["--rank", "99"], 4, "no hit at rank 99"),
])
def test_bad_options_are_clean_errors(built, tmp_path, args, code, words):
    _root, _paths, index = built
    result = _invoke("show", "doc 0", "--index", index, "-o", tmp_path / "n.png", *args)
    assert result.exit_code == code, result.output
    assert words in result.output
    assert not (tmp_path / "n.png").exists()


def test_an_empty_query_and_a_missing_index_are_errors(built, tmp_path):
    assert _invoke("show", "  ", "--index", built[2]).exit_code == 2
    missing = _invoke("show", "x", "--index", tmp_path / "nowhere", "-o", tmp_path / "n.png")
    assert missing.exit_code == 4 and "no pagelens index" in missing.output
    unwritable = _invoke("show", "doc 0", "--index", built[2], "-o", tmp_path / "no" / "such" / "dir.png")
    assert unwritable.exit_code == 4 and "cannot write" in unwritable.output


def test_a_changed_or_moved_file_is_refused_never_shown(built, tmp_path):
    root, paths, index = built
    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    first = json.loads(_invoke("search", "doc 0 page 1", "--index", copy, "-k", "1", "--json").stdout)[0]
    target = first["path"]
    saved = open(target, "rb").read()
    try:
        with open(target, "ab") as fh:
            fh.write(b"\n% changed\n")
        changed = _invoke("show", "doc 0 page 1", "--index", copy, "-o", tmp_path / "c.png")
        assert changed.exit_code == 4, changed.output
        assert "changed since it was indexed" in changed.output and "re-index" in changed.output
        shutil.move(target, target + ".moved")
        gone = _invoke("show", "doc 0 page 1", "--index", copy, "-o", tmp_path / "c.png")
        assert gone.exit_code == 4 and "gone" in gone.output
        assert not (tmp_path / "c.png").exists()
    finally:
        if not __import__("os").path.exists(target):
            shutil.move(target + ".moved", target)
        with open(target, "wb") as fh:
            fh.write(saved)


def test_an_index_made_before_grids_says_reindex(built, tmp_path):
    _root, _paths, index = built
    old = tmp_path / "old"
    shutil.copytree(index, old)
    db = sqlite3.connect(old / "catalogue.sqlite")
    for column in ("grid_offset", "grid_rows", "grid_cols", "box_x0", "box_y0", "box_x1", "box_y1"):
        db.execute(f"ALTER TABLE pages DROP COLUMN {column}")
    db.execute("DELETE FROM schema_migrations WHERE version = 3")
    db.commit()
    db.close()
    assert _invoke("search", "doc 0", "--index", old, "--json").exit_code == 0  # still searches
    result = _invoke("show", "doc 0", "--index", old, "-o", tmp_path / "o.png")
    assert result.exit_code == 4
    assert "indexed without a patch grid: re-index to see heatmaps" in result.output
    assert "pagelens remove" in result.output and "pagelens index" in result.output
    assert not (tmp_path / "o.png").exists()
