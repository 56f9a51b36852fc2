"""The web page at `/` in a real browser: Debian's headless Chromium driven by Selenium through
/usr/bin/chromedriver, against the real server (uvicorn on 127.0.0.1, an ephemeral port) over an
index of generated PDFs made with the tiny jina-layout checkpoint.

Everything is done with the keyboard, as a person without a mouse would: type, Enter, Tab, arrow
keys, `h`, Escape. Pixels are checked, not just elements: every thumbnail is read back through a
canvas and compared with the same URL fetched here and with PyMuPDF's own rendering of that page.
Screenshots land in the test's tmp dir; with PAGELENS_SCREENSHOT=1 the README's
docs/screenshot-web.png is written again from this run.

No browser here: the test says so and skips; under CI=true (.ci/run installs chromium) it fails.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pagelens
from engine.testing import write_tiny_checkpoint

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
README_SHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot-web.png"
WAIT_S = 90  # a shared 2-core machine: the first search loads the model inside the server
HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">\u202egpj.pdf'


# ---- the browser, or a clear reason why not --------------------------------------------------------


def _no_browser(why: str):
    why = f"{why}; install it with `apt-get install chromium chromium-driver` (Debian), as .ci/run does"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def _chromium() -> str:
    for path in CHROMIUM:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium")
    if found is None:
        _no_browser("no Chromium binary (looked for " + ", ".join(CHROMIUM) + ")")
    return found


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _no_browser("selenium is not installed (pip install -e '.[test]')")
    binary = _chromium()
    if not os.access(CHROMEDRIVER, os.X_OK):
        _no_browser(f"no chromedriver at {CHROMEDRIVER}")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,860", "--force-color-profile=srgb", "--hide-scrollbars",
                "--disable-extensions", "--no-first-run", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


# ---- a small collection of pages that look like documents ------------------------------------------

PARAGRAPH = ("Revenue grew in every region in 2023, led by the north, where two new plants came online in "
             "the second quarter. Costs rose more slowly than sales, so the operating margin widened.")


def _text(page, rect, text, size=10, bold=False, align=0):
    import pymupdf

    page.insert_textbox(pymupdf.Rect(*rect), text, fontsize=size, fontname="hebo" if bold else "helv",
                        color=(0.1, 0.12, 0.15), align=align)


def _chart(doc, title, values, shift):
    import pymupdf

    page = doc.new_page(width=595, height=842)
    _text(page, (50, 50, 545, 90), title, 22, True)
    _text(page, (50, 100, 545, 170), PARAGRAPH, 11)
    x0, y0, w, h = 80, 230, 440, 300
    page.draw_line((x0, y0 + h), (x0 + w, y0 + h), color=(0.2, 0.2, 0.2), width=1.2)
    page.draw_line((x0, y0), (x0, y0 + h), color=(0.2, 0.2, 0.2), width=1.2)
    colours = [(0.12, 0.37, 1.0), (0.95, 0.55, 0.1), (0.1, 0.65, 0.45), (0.75, 0.2, 0.35)]
    bw = w / (len(values) * 1.6)
    for i, v in enumerate(values):
        bx = x0 + 20 + i * bw * 1.6
        page.draw_rect(pymupdf.Rect(bx, y0 + h - v * h, bx + bw, y0 + h), color=None, fill=colours[(i + shift) % 4])
        _text(page, (bx - 10, y0 + h + 6, bx + bw + 10, y0 + h + 24), f"Q{i + 1}", 10, align=1)
    for j in range(4):
        _text(page, (50, 610 + j * 30, 545, 640 + j * 30), PARAGRAPH[: 60 + 17 * j], 10)


def _table(doc, title, rows):
    import pymupdf

    page = doc.new_page(width=595, height=842)
    _text(page, (50, 50, 545, 90), title, 20, True)
    x0, y0, cw, rh = 60, 120, 118, 28
    for r, row in enumerate([["Item", "2022", "2023", "Change"], *rows]):
        y = y0 + r * rh
        if r == 0 or r % 2 == 0:
            fill = (0.88, 0.91, 0.97) if r == 0 else (0.96, 0.97, 0.98)
            page.draw_rect(pymupdf.Rect(x0, y, x0 + cw * 4, y + rh), color=None, fill=fill)
        for c, cell in enumerate(row):
            _text(page, (x0 + c * cw + 8, y + 8, x0 + (c + 1) * cw, y + rh), cell, 11, r == 0)
        page.draw_line((x0, y + rh), (x0 + cw * 4, y + rh), color=(0.7, 0.72, 0.76), width=0.6)
    for k in range(8):
        _text(page, (50, 460 + k * 34, 545, 500 + k * 34), PARAGRAPH[k * 9: k * 9 + 90], 10)


def _diagram(doc, title):
    import pymupdf

    page = doc.new_page(width=842, height=595)  # landscape
    _text(page, (40, 30, 800, 70), title, 22, True)
    for x, y, label in [(80, 150, "Mains 230 V"), (330, 150, "Fuse F1 10 A"), (580, 150, "Controller"),
                        (330, 360, "Relay K1"), (580, 360, "Motor M1")]:
        page.draw_rect(pymupdf.Rect(x, y, x + 180, y + 80), color=(0.1, 0.2, 0.5), fill=(0.9, 0.94, 1.0), width=1.5)
        _text(page, (x + 10, y + 30, x + 170, y + 70), label, 14, True, align=1)
    for a, b in [((260, 190), (330, 190)), ((510, 190), (580, 190)), ((670, 230), (670, 360)),
                 ((510, 400), (580, 400)), ((420, 230), (420, 360))]:
        page.draw_line(a, b, color=(0.8, 0.1, 0.1), width=2.5)
    _text(page, (40, 500, 800, 560), "Figure 3: wiring diagram of the pump controller.", 12)


def _clauses(doc, title, clauses):
    page = doc.new_page(width=595, height=842)
    _text(page, (50, 50, 545, 90), title, 20, True)
    for i, clause in enumerate(clauses):
        _text(page, (50, 110 + i * 78, 545, 180 + i * 78), f"{i + 1}. {clause}", 11)


def _save(doc, path: Path) -> str:
    path.write_bytes(doc.tobytes())
    doc.close()
    return str(path)


def build_pdfs(folder: Path) -> dict[str, str]:
    import pymupdf

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    doc = pymupdf.open()
    _chart(doc, "Annual report 2023", [0.45, 0.6, 0.72, 0.9], 0)
    _table(doc, "Revenue by region", [["North", "412", "498", "+21%"], ["South", "305", "331", "+9%"],
                                      ["East", "288", "301", "+5%"], ["West", "190", "236", "+24%"]])
    _chart(doc, "Costs and margin", [0.8, 0.7, 0.65, 0.5], 2)
    out["report"] = _save(doc, folder / "annual-report-2023.pdf")
    doc = pymupdf.open()
    _diagram(doc, "Pump controller: wiring")
    _clauses(doc, "Installation", ["Mount the controller on a vertical wall, away from water.",
                                   "Connect the motor to terminals U, V and W as in figure 3.",
                                   "Set the relay K1 delay to 2 seconds before the first start."])
    out["manual"] = _save(doc, folder / "pump-manual.pdf")
    doc = pymupdf.open()
    _clauses(doc, "Warranty terms", ["The warranty period is 24 months from the date of delivery.",
                                     "Wear parts (seals, filters, brushes) are not covered.",
                                     "Claims must be made in writing within 30 days."])
    _table(doc, "Service intervals", [["Filter", "6 mo", "12 mo", "-"], ["Seals", "12 mo", "24 mo", "-"]])
    out["warranty"] = _save(doc, folder / "warranty.pdf")
    return out


def _render(path: str, page_number: int, size: tuple[int, int]) -> np.ndarray:
    """PyMuPDF's own rendering of the page, at the size the server's picture has."""
    import pymupdf

    with pymupdf.open(path) as doc:
        page = doc[page_number - 1]
        zoom = size[0] / page.rect.width
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
        img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    return np.asarray(img.resize(size, Image.BILINEAR) if img.size != size else img, dtype=np.float32)


# ---- the server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """An index of three generated documents made with the tiny model, plus one document stored as
    bring-your-own embeddings without a patch grid (its heatmap is unavailable), served for real."""
    import uvicorn

    from indexer.render import DocumentPages
    from indexer.sources import read_source
    from pagelens.server import create_app

    root = tmp_path_factory.mktemp("web")
    tiny = str(write_tiny_checkpoint(root / "jina-v4-tiny"))
    docs = build_pdfs(root / "docs")
    legacy_doc = str(root / "legacy" / "old-scan.pdf")
    Path(legacy_doc).parent.mkdir()
    shutil.copyfile(docs["warranty"], legacy_doc)
    index_dir = root / "idx"
    with pagelens.Index.create(index_dir, model=tiny) as index:
        report = index.add([root / "docs"])
        assert report.outcome == "all_indexed" and report.pages_added == 7
        # As an index made before patch grids were recorded: the same vectors, no grid.
        with DocumentPages(read_source(legacy_doc), dpi=144, max_pixels=index.encoder.max_pixels) as pages:
            images = [p.image for p in pages]
        plain = [pagelens.Embedding(single=e.single, multi=e.multi) for e in index.encoder.encode_images(images)]
        legacy_ids = index.add_embeddings(legacy_doc, plain)

    app = create_app(str(index_dir), model=tiny)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="pagelens-web-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting (see the log above)"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield {"base": f"http://127.0.0.1:{port}", "docs": docs, "legacy": legacy_doc, "legacy_ids": legacy_ids,
               "index": str(index_dir), "tiny": tiny, "root": root}
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT_S) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _api_hits(site, query: str, k: int) -> list[dict]:
    status, _type, body = _get(f"{site['base']}/api/search?{urllib.parse.urlencode({'q': query, 'k': k})}")
    assert status == 200, body
    return json.loads(body)["hits"]


# ---- driving the page --------------------------------------------------------------------------------


def _wait(driver, condition, what: str, timeout: float = WAIT_S):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except TimeoutException:
        logs = [e["message"] for e in driver.get_log("browser")]
        pytest.fail(f"timed out waiting for {what}; browser console: {logs}")


def _keys(driver, *keys):
    """Key presses sent to whatever has the focus, as a keyboard would."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def _focused(driver):
    return driver.execute_script(
        "const e = document.activeElement; return e ? (e.id || (e.dataset.index !== undefined ? 'hit-' + e.dataset.index : e.tagName)) : null")


def _tiles(driver) -> list[dict]:
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#results button.hit')).map((b) => ({
            index: Number(b.dataset.index), pageId: Number(b.dataset.pageId),
            name: b.querySelector('.name').textContent, page: b.querySelector('.page').textContent,
            score: b.querySelector('.score').textContent, src: b.querySelector('img').getAttribute('src'),
            imgs: b.querySelectorAll('img').length}));""")


def _image_loaded(driver, css: str) -> bool:
    return driver.execute_script(
        "const i = document.querySelector(arguments[0]); return !!i && i.complete && i.naturalWidth > 0;", css)


def _canvas_pixels(driver, element) -> np.ndarray:
    """The picture the browser decoded, read back through a canvas (same origin, so readable)."""
    data = driver.execute_script("""
        const img = arguments[0];
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0);
        return c.toDataURL('image/png');""", element)
    raw = base64.b64decode(data.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.float32)


def _served_pixels(site, src: str) -> np.ndarray:
    status, ctype, body = _get(site["base"] + src)
    assert status == 200 and ctype.startswith("image/png"), (src, status, body[:200])
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.float32)


def _shoot(driver, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot {path}"
    return path


def _search_from_box(driver, query: str):
    from selenium.webdriver.common.keys import Keys

    assert _focused(driver) == "q", "the search box has the focus (autofocus)"
    _keys(driver, query, Keys.ENTER)


def _viewer(driver) -> dict:
    return driver.execute_script("""
        const $ = (id) => document.getElementById(id), img = $('viewer-img'), t = $('heatmap-toggle');
        return {open: $('viewer').open, title: $('viewer-title').textContent, meta: $('viewer-meta').textContent,
                src: img.getAttribute('src'), mode: img.dataset.mode, loaded: img.complete && img.naturalWidth > 0,
                pressed: t.getAttribute('aria-pressed'), toggleDisabled: t.disabled, toggle: t.textContent,
                status: $('viewer-status').textContent, pdfHref: $('pdf-link').href, pdfText: $('pdf-link').textContent,
                options: Array.from($('token').options).map((o) => [o.value, o.textContent]),
                token: $('token').value, tokenDisabled: $('token').disabled};""")


# ---- the tests ---------------------------------------------------------------------------------------


def test_search_open_heatmap_word_pdf_close_with_the_keyboard(site, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    driver, base = browser, site["base"]
    query = "revenue by region"
    expected = _api_hits(site, query, 20)
    assert len(expected) == 9  # every page: 7 indexed with the model, 2 brought without a grid

    driver.get(base + "/")
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", "the page to load")
    assert driver.title == "pagelens"
    _search_from_box(driver, query)
    _wait(driver, lambda d: len(_tiles(d)) == len(expected), "the result thumbnails")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query) == {"q": [query]}

    tiles = _tiles(driver)
    # The grid shows the API's hits, in its order, with their names, pages and scores.
    assert [t["pageId"] for t in tiles] == [h["page_id"] for h in expected]
    assert [t["name"] for t in tiles] == [h["name"] for h in expected]
    assert [t["page"] for t in tiles] == [f"page {h['page']}" for h in expected]
    assert [float(t["score"]) for t in tiles] == pytest.approx([h["score"] for h in expected], abs=0.006)
    assert all(urllib.parse.urlsplit(t["src"]).path == h["image_url"] for t, h in zip(tiles, expected))

    # Every thumbnail really loaded, and shows its own page: the pixels the browser decoded are the
    # bytes the server sends for that URL, and they are PyMuPDF's rendering of that page of that file.
    paths = {h["page_id"]: (h["path"], h["page"]) for h in expected}
    # The grid-less document is a copy of another: pages are told apart by content, not by path.
    looks = {pid: (Path(p).read_bytes(), n) for pid, (p, n) in paths.items()}
    elements = driver.find_elements("css selector", "#results button.hit img")
    for tile, element in zip(tiles, elements):
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        _wait(driver, lambda d, e=element: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", e),
              f"thumbnail {tile['index']} to load")
        shown = _canvas_pixels(driver, element)
        assert shown.shape[1] == 320, "thumbnails are asked for at ?width=320"
        assert shown.std() > 10, f"thumbnail {tile['index']} is blank"
        np.testing.assert_allclose(shown, _served_pixels(site, tile["src"]), atol=3)
        size = (shown.shape[1], shown.shape[0])
        own = np.abs(shown - _render(*paths[tile["pageId"]], size)).mean()
        assert own < 0.5, f"thumbnail {tile['index']} differs from PyMuPDF's page by {own:.2f} per channel"
        others = [np.abs(shown - _render(p, n, size)).mean() for pid, (p, n) in paths.items()
                  if looks[pid] != looks[tile["pageId"]]]
        assert own < min(others), "a thumbnail looks more like another page than its own"
    driver.execute_script("window.scrollTo(0, 0)")
    _shoot(driver, tmp_path, "1-results")

    # Keyboard only: Tab from the box reaches the button, then the first result; arrows move.
    driver.find_element("id", "q").click()
    _keys(driver, Keys.TAB)
    assert driver.execute_script("return document.activeElement.type") == "submit"
    _keys(driver, Keys.TAB)
    assert _focused(driver) == "hit-0"
    _keys(driver, Keys.ARROW_RIGHT)
    assert _focused(driver) == "hit-1"
    _keys(driver, Keys.ARROW_LEFT, Keys.ARROW_RIGHT)
    assert _focused(driver) == "hit-1"

    # Open a page that has a heatmap (indexed with the model) with Enter.
    target = next(i for i, h in enumerate(expected) if h["path"] != site["legacy"])
    for _ in range(abs(target - 1)):
        _keys(driver, Keys.ARROW_RIGHT if target > 1 else Keys.ARROW_LEFT)
    assert _focused(driver) == f"hit-{target}"
    hit = expected[target]
    _keys(driver, Keys.ENTER)
    _wait(driver, lambda d: _viewer(d)["mode"] == "heatmap" and _viewer(d)["loaded"], "the large view with its heatmap")
    view = _viewer(driver)
    assert view["title"] == hit["name"] and f"page {hit['page']}" in view["meta"]
    assert view["pressed"] == "true" and not view["toggleDisabled"] and view["status"] == ""
    heat_src = urllib.parse.urlsplit(view["src"])
    heat_params = urllib.parse.parse_qs(heat_src.query)
    assert heat_src.path == f"/api/pages/{hit['page_id']}/heatmap"
    assert heat_params["q"] == [query] and 32 <= int(heat_params["width"][0]) <= 2000 and "token" not in heat_params
    large = driver.find_element("id", "viewer-img")
    heat_pixels = _canvas_pixels(driver, large)
    np.testing.assert_allclose(heat_pixels, _served_pixels(site, view["src"]), atol=3)
    _shoot(driver, tmp_path, "2-heatmap")

    # `h` shows the plain page at the same width: another picture, really loaded.
    _keys(driver, "h")
    _wait(driver, lambda d: _viewer(d)["mode"] == "page" and _viewer(d)["loaded"], "the plain page")
    view = _viewer(driver)
    plain_src = urllib.parse.urlsplit(view["src"])
    assert plain_src.path == f"/api/pages/{hit['page_id']}/image"
    assert urllib.parse.parse_qs(plain_src.query)["width"] == heat_params["width"]
    assert view["pressed"] == "false" and view["toggle"] == "Heatmap: off"
    plain_pixels = _canvas_pixels(driver, large)
    assert plain_pixels.shape == heat_pixels.shape
    assert np.abs(plain_pixels - heat_pixels).mean() > 2, "the heatmap view looks like the plain page"
    own = np.abs(plain_pixels - _render(hit["path"], hit["page"], (plain_pixels.shape[1], plain_pixels.shape[0]))).mean()
    assert own < 0.5, "the large view is not PyMuPDF's rendering of the page"
    _shoot(driver, tmp_path, "3-plain")
    _keys(driver, "h")
    _wait(driver, lambda d: _viewer(d)["mode"] == "heatmap" and _viewer(d)["loaded"], "the heatmap again")

    # The query words come from the heatmap's JSON; choosing one asks for that token's heatmap.
    status, _t, body = _get(f"{base}/api/pages/{hit['page_id']}/heatmap?{urllib.parse.urlencode({'q': query, 'format': 'json'})}")
    assert status == 200
    tokens = json.loads(body)["tokens"]
    assert tokens, "a text query has tokens"
    view = _viewer(driver)
    assert view["options"][0] == ["", "all words"] and view["token"] == ""
    assert [int(v) for v, _label in view["options"][1:]] == [t["index"] for t in tokens]
    assert all(label.startswith(t["text"].strip() or f"token {t['index']}") for (_v, label), t in zip(view["options"][1:], tokens))
    driver.find_element("id", "token").send_keys(Keys.ARROW_DOWN)  # keyboard on the focused select
    _wait(driver, lambda d: _viewer(d)["token"] != "" and _viewer(d)["loaded"]
          and "token=" in _viewer(d)["src"], "the heatmap of one query word")
    view = _viewer(driver)
    chosen = urllib.parse.parse_qs(urllib.parse.urlsplit(view["src"]).query)
    assert chosen["token"] == [view["token"]] == [str(tokens[0]["index"])] and view["mode"] == "heatmap"
    np.testing.assert_allclose(_canvas_pixels(driver, large), _served_pixels(site, view["src"]), atol=3)
    _shoot(driver, tmp_path, "4-one-word")

    # The PDF link opens the original file at the page.
    pdf = urllib.parse.urlsplit(view["pdfHref"])
    assert f"{pdf.scheme}://{pdf.netloc}" == base and pdf.fragment == f"page={hit['page']}"
    assert pdf.path == f"/api/pages/{hit['page_id']}/pdf" and view["pdfText"] == f"Open PDF at page {hit['page']}"
    status, ctype, body = _get(f"{base}{pdf.path}")
    assert status == 200 and ctype.startswith("application/pdf") and body == Path(hit["path"]).read_bytes()

    # Right arrow moves to the next result inside the view (Tab first: on the select, arrows pick
    # words); Escape closes it and the focus is back on the result last shown.
    _keys(driver, Keys.TAB)
    assert _focused(driver) == "pdf-link"
    _keys(driver, Keys.ARROW_RIGHT)
    _wait(driver, lambda d: _viewer(d)["title"] == expected[target + 1]["name"]
          and f"result {target + 2} of" in _viewer(d)["meta"] and _viewer(d)["loaded"], "the next result")
    _keys(driver, Keys.ESCAPE)
    _wait(driver, lambda d: not _viewer(d)["open"], "the view to close")
    assert _focused(driver) == f"hit-{target + 1}"
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []

    if os.environ.get("PAGELENS_SCREENSHOT") == "1":
        _readme_screenshot(driver, base, query, tmp_path)


def _readme_screenshot(driver, base, query, tmp_path):
    """The README's picture: the results grid above, a page open on its heatmap below."""
    from selenium.webdriver.common.keys import Keys

    driver.set_window_size(1280, 720)
    driver.get(f"{base}/?{urllib.parse.urlencode({'q': query})}")
    _wait(driver, lambda d: len(_tiles(d)) > 0 and d.execute_script(
        "return Array.from(document.querySelectorAll('#results img')).slice(0, 6).every((i) => i.complete && i.naturalWidth > 0)"),
        "thumbnails for the README")
    driver.execute_script("document.activeElement.blur()")  # no focus ring in the picture
    time.sleep(0.3)
    grid = Image.open(_shoot(driver, tmp_path, "readme-grid")).convert("RGB")
    driver.execute_script("document.querySelector('#results button.hit').focus()")
    _keys(driver, Keys.ENTER)
    _wait(driver, lambda d: _viewer(d)["loaded"] and _viewer(d)["mode"] == "heatmap", "the heatmap for the README")
    driver.execute_script("document.activeElement.blur()")
    time.sleep(0.3)
    view = Image.open(_shoot(driver, tmp_path, "readme-view")).convert("RGB")
    picture = Image.new("RGB", (grid.width, grid.height + 8 + view.height), (200, 204, 210))
    picture.paste(grid, (0, 0))
    picture.paste(view, (0, grid.height + 8))
    picture.save(README_SHOT, optimize=True)


def test_the_address_opens_with_results_and_back_forward_work(site, browser):
    from selenium.webdriver.common.keys import Keys

    driver, base = browser, site["base"]
    first, second = "wiring diagram of the pump", "warranty period"
    driver.get(f"{base}/?{urllib.parse.urlencode({'q': first, 'k': 3})}")
    want = [h["page_id"] for h in _api_hits(site, first, 3)]
    _wait(driver, lambda d: [t["pageId"] for t in _tiles(d)] == want, "results for the query in the address")
    assert driver.find_element("id", "q").get_attribute("value") == first
    assert driver.title.startswith(first)

    box = driver.find_element("id", "q")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(second, Keys.ENTER)
    want2 = [h["page_id"] for h in _api_hits(site, second, 20)]
    _wait(driver, lambda d: [t["pageId"] for t in _tiles(d)] == want2, "results for the second query")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query) == {"q": [second]}

    driver.back()
    _wait(driver, lambda d: [t["pageId"] for t in _tiles(d)] == want, "the first results again after Back")
    assert driver.find_element("id", "q").get_attribute("value") == first
    driver.forward()
    _wait(driver, lambda d: [t["pageId"] for t in _tiles(d)] == want2, "the second results after Forward")
    assert driver.find_element("id", "q").get_attribute("value") == second

    # An error from the API is shown as its text (the server strips more than a browser does, so
    # this query reaches it and is refused); one over the length limit is refused before sending.
    driver.get(f"{base}/?q=%1F")
    _wait(driver, lambda d: d.find_element("id", "status").get_attribute("data-kind") == "error", "the API's error")
    status, _t, body = _get(f"{base}/api/search?q=%1F")
    error = json.loads(body)["error"]
    assert status == 400 and driver.find_element("id", "status").text.splitlines() == [error["message"], error["hint"]]
    assert _tiles(driver) == []
    driver.get(f"{base}/?{urllib.parse.urlencode({'q': 'x' * 1001})}")
    _wait(driver, lambda d: "the limit is 1000" in d.find_element("id", "status").text, "the length limit")
    driver.get(f"{base}/?{urllib.parse.urlencode({'q': second})}")
    _wait(driver, lambda d: [t["pageId"] for t in _tiles(d)] == want2, "the second results again")
    box = driver.find_element("id", "q")

    # Clearing the box and pressing Enter goes back to the empty page, with the address to match.
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE, Keys.ENTER)
    _wait(driver, lambda d: _tiles(d) == [], "the results to clear")
    assert urllib.parse.urlsplit(driver.current_url).query == ""


def test_a_page_without_heatmap_says_reindex_and_still_shows(site, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    driver, base = browser, site["base"]
    query = "service intervals"
    hits = _api_hits(site, query, 20)
    target = next(i for i, h in enumerate(hits) if h["page_id"] in site["legacy_ids"])
    driver.get(f"{base}/?{urllib.parse.urlencode({'q': query})}")
    _wait(driver, lambda d: len(_tiles(d)) == len(hits), "the results")
    driver.execute_script("document.querySelectorAll('#results button.hit')[arguments[0]].focus()", target)
    _keys(driver, " ")  # Space opens, as Enter does
    _wait(driver, lambda d: _viewer(d)["open"] and _viewer(d)["status"] != "" and _viewer(d)["loaded"],
          "the view with its notice")
    view = _viewer(driver)
    assert "re-index to see heatmaps" in view["status"]
    assert view["toggleDisabled"] and view["tokenDisabled"] and view["mode"] == "page"
    assert urllib.parse.urlsplit(view["src"]).path == f"/api/pages/{hits[target]['page_id']}/image"
    _keys(driver, "h")  # does nothing: there is no heatmap to show
    time.sleep(0.3)
    assert _viewer(driver)["mode"] == "page"
    shown = _canvas_pixels(driver, driver.find_element("id", "viewer-img"))
    own = np.abs(shown - _render(site["legacy"], hits[target]["page"], (shown.shape[1], shown.shape[0]))).mean()
    assert own < 0.5, "the page itself still shows"
    _shoot(driver, tmp_path, "no-heatmap")
    _keys(driver, Keys.ESCAPE)
    _wait(driver, lambda d: not _viewer(d)["open"], "the view to close")


def test_api_strings_are_text_errors_are_shown_and_narrow_screens_fit(site, browser, tmp_path):
    """A file named like markup is shown as its name, never run; a file that went missing shows the
    API's message in its tile; at phone width nothing overflows sideways."""
    driver, base = browser, site["base"]
    root = Path(site["root"])
    hostile = root / "hostile"
    hostile.mkdir(exist_ok=True)
    hostile_pdf = hostile / HOSTILE_NAME
    shutil.copyfile(site["docs"]["manual"], hostile_pdf)
    moved = Path(site["docs"]["warranty"])
    aside = moved.with_name("moved-away.pdf")
    with pagelens.Index.open(site["index"], model=site["tiny"], writable=True) as writer:  # as another process would
        writer.add([hostile])
    moved.rename(aside)
    try:
        query = "controller"
        hits = _api_hits(site, query, 20)  # the server sees the new pages without a restart
        assert any(h["name"] == HOSTILE_NAME for h in hits)
        driver.set_window_size(400, 860)
        # The server lets browsers keep a page's picture for a minute; this visit must ask again.
        driver.execute_cdp_cmd("Network.clearBrowserCache", {})
        driver.get(f"{base}/?{urllib.parse.urlencode({'q': query})}")
        _wait(driver, lambda d: len(_tiles(d)) == len(hits), "the results")
        tiles = _tiles(driver)
        evil = next(t for t in tiles if t["pageId"] == next(h["page_id"] for h in hits if h["name"] == HOSTILE_NAME))
        assert evil["name"] == '<img src=x onerror="window.__pwned=1">\\u202egpj.pdf'  # the bidi override shown, not obeyed
        assert evil["imgs"] == 1
        assert driver.execute_script("return window.__pwned === undefined && document.querySelectorAll('img[src=x]').length === 0")

        gone = [t for t in tiles if any(h["page_id"] == t["pageId"] and h["path"] == str(moved) for h in hits)]
        assert gone, "the moved file's pages are still in the index"
        for t in gone:
            driver.execute_script("document.querySelectorAll('#results button.hit')[arguments[0]].scrollIntoView()", t["index"])
        errors = _wait(driver, lambda d: d.execute_script(
            "const e = Array.from(document.querySelectorAll('.thumb-error')).map((x) => x.textContent);"
            " return e.length >= arguments[0] ? e : null;", len(gone)), "the missing file's error in its tiles")
        status, _t, body = _get(base + gone[0]["src"])
        assert status == 404 and json.loads(body)["error"]["code"] == "file_missing"
        assert json.loads(body)["error"]["message"] in errors

        assert driver.execute_script("return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        widths = driver.execute_script(
            "return Array.from(document.querySelectorAll('#results button.hit')).map((b) => b.getBoundingClientRect().right)")
        assert max(widths) <= 400
        driver.execute_script("window.scrollTo(0, 0)")
        _shoot(driver, tmp_path, "narrow")
        driver.execute_script("document.querySelector('#results button.hit').click()")
        _wait(driver, lambda d: _viewer(d)["open"] and _viewer(d)["loaded"], "the view at phone width")
        assert driver.execute_script(
            "const r = document.getElementById('viewer').getBoundingClientRect(); return r.left >= 0 && r.right <= 400")
        assert driver.execute_script(
            "const r = document.getElementById('pdf-link').getBoundingClientRect(); return r.right <= 400 && r.width > 0")
        _shoot(driver, tmp_path, "narrow-view")
        driver.execute_script("document.getElementById('viewer').close()")
    finally:
        aside.rename(moved)
        driver.set_window_size(1280, 860)
        with pagelens.Index.open(site["index"], model=site["tiny"], writable=True) as writer:
            writer.remove([hostile])
