// pagelens web page: plain JavaScript, no framework, no build step. It talks to its own server only
// (docs/http-api.md) and never puts a string from the API into the page as HTML: every name, path,
// message and token is set with textContent, and every URL must point back at this origin.
"use strict";

(() => {
  const THUMB_WIDTH = 320;     // one width for every thumbnail, so the server's render cache hits
  const WIDTH_STEP = 100;      // large views are requested in steps, for the same reason
  const MIN_WIDTH = 32;        // the API's image width bounds
  const MAX_WIDTH = 2000;
  const MAX_QUERY = 1000;      // the API's query length limit
  const DEFAULT_K = 20;
  const MAX_K = 200;           // the API allows more; a page of thumbnails has no use for it

  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("search"), q: $("q"), status: $("status"), results: $("results"), hint: $("empty-hint"),
    viewer: $("viewer"), title: $("viewer-title"), meta: $("viewer-meta"), close: $("viewer-close"),
    prev: $("viewer-prev"), next: $("viewer-next"), toggle: $("heatmap-toggle"), token: $("token"),
    pdf: $("pdf-link"), viewerStatus: $("viewer-status"), frame: $("viewer-frame"), img: $("viewer-img"),
  };

  const state = {
    query: "",          // the query the shown results answer
    hits: [],           // checked hits (readHit)
    searchSeq: 0,       // a newer search makes older answers stale
    controller: null,   // aborts the search in flight
    current: -1,        // index into hits of the page open in the viewer
    viewSeq: 0,         // a newer page in the viewer makes older answers stale
    viewController: null,
    heatmap: true,      // the reader's choice, kept from page to page
    heatmapOk: false,   // whether the open page has a heatmap
    token: "",          // "" = all query words, else a token index as a string
  };

  // ---- hostile strings ------------------------------------------------------------------------

  // File names can hold control characters, bidi overrides (which make "gpj.exe" read as
  // "exe.jpg") and, from non-UTF-8 names, lone surrogates: show them as escapes, as the CLI does.
  const INVISIBLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
  function visible(value, limit = 500) {
    if (typeof value !== "string") return "";
    const shown = value.replace(INVISIBLE, (ch) => {
      const code = ch.charCodeAt(0);
      if (code === 10) return "\\n";
      if (code === 9) return "\\t";
      if (code < 0x100) return "\\x" + code.toString(16).padStart(2, "0");
      return "\\u" + code.toString(16).padStart(4, "0");
    });
    return shown.length > limit ? shown.slice(0, limit - 1) + "\u2026" : shown;
  }

  function basename(path) {
    const parts = path.split(/[\\/]/).filter(Boolean);
    return parts.length ? parts[parts.length - 1] : path;
  }

  // A URL from the API, made relative to this page, or null when it leaves this origin or does not
  // parse. params: name -> value to set, or null to delete.
  function sameOrigin(raw, params = {}) {
    if (typeof raw !== "string" || raw === "") return null;
    let url;
    try {
      url = new URL(raw, window.location.origin);
    } catch (_) {
      return null;
    }
    if (url.origin !== window.location.origin) return null;
    for (const [name, value] of Object.entries(params)) {
      if (value === null || value === undefined || value === "") url.searchParams.delete(name);
      else url.searchParams.set(name, String(value));
    }
    return url.pathname + url.search + url.hash;
  }

  function formatScore(score) {
    return score === null ? "?" : score.toFixed(Math.abs(score) >= 100 ? 1 : 2);
  }

  // ---- the API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, hint) {
      super(message);
      this.status = status;
      this.code = code;
      this.hint = hint;
    }
  }

  function errorFrom(status, body) {
    const e = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
    const text = (v) => (typeof v === "string" ? v : "");
    return new ApiError(status, text(e.code) || `http_${status}`,
      text(e.message) || `The server answered HTTP ${status}.`, text(e.hint));
  }

  async function getJson(url, signal) {
    let response;
    try {
      response = await fetch(url, { signal, headers: { Accept: "application/json" }, credentials: "same-origin" });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, "network", "The server did not answer.", "Check that `pagelens serve` is still running, then try again.");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) throw errorFrom(response.status, body);
    if (body === null || typeof body !== "object") {
      throw new ApiError(response.status, "bad_response", "The server's answer was not the JSON this page expects.", "");
    }
    return body;
  }

  // The error an image URL answers with (an <img> only learns that it failed, not why).
  async function imageError(url) {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      if (!response.ok) return errorFrom(response.status, body);
      return new ApiError(response.status, "bad_image", "The server sent something that is not an image.", "");
    } catch (_) {
      return new ApiError(0, "network", "The server did not answer.", "Check that `pagelens serve` is still running.");
    }
  }

  function showError(target, err) {
    const message = document.createElement("span");
    message.className = "error-message";
    message.textContent = visible(err.message);
    target.replaceChildren(message);
    if (err.hint) {
      const hint = document.createElement("span");
      hint.className = "error-hint";
      hint.textContent = visible(err.hint);
      target.append(hint);
    }
    target.dataset.kind = "error";
  }

  function showStatus(target, text, kind = "info") {
    target.textContent = text;
    target.dataset.kind = kind;
  }

  // A hit as the page uses it, or null when the server sent something unusable. URLs the server
  // gives are used only on this origin; the documented paths are the fallback.
  function readHit(raw, query) {
    if (!raw || typeof raw !== "object") return null;
    const pageId = raw.page_id;
    if (!Number.isSafeInteger(pageId) || pageId < 0) return null;
    const page = Number.isSafeInteger(raw.page) && raw.page > 0 ? raw.page : null;
    const path = typeof raw.path === "string" ? raw.path : "";
    const name = typeof raw.name === "string" && raw.name ? raw.name : (path ? basename(path) : `page id ${pageId}`);
    const base = `/api/pages/${pageId}`;
    return {
      pageId, page, path, name,
      rank: Number.isSafeInteger(raw.rank) ? raw.rank : null,
      score: typeof raw.score === "number" && Number.isFinite(raw.score) ? raw.score : null,
      image: sameOrigin(raw.image_url) || `${base}/image`,
      heatmap: sameOrigin(raw.heatmap_url) || `${base}/heatmap?${new URLSearchParams({ q: query })}`,
      pdf: sameOrigin(raw.pdf_url) || (page ? `${base}/pdf#page=${page}` : `${base}/pdf`),
      thumb: null,      // the thumbnail <img>, whose shape sizes the large view
    };
  }

  function readTokens(body) {
    if (!Array.isArray(body.tokens)) return [];
    const tokens = [];
    for (const t of body.tokens) {
      if (!t || typeof t !== "object" || !Number.isSafeInteger(t.index) || t.index < 0) continue;
      tokens.push({
        index: t.index,
        text: typeof t.text === "string" ? t.text : `token ${t.index}`,
        score: typeof t.score === "number" && Number.isFinite(t.score) ? t.score : null,
      });
    }
    return tokens;
  }

  // ---- searching -------------------------------------------------------------------------------

  function urlQuery() {
    const params = new URLSearchParams(window.location.search);
    return { q: params.get("q") || "", k: params.get("k") };
  }

  function resultCount(k) {
    const n = Number.parseInt(k, 10);
    return Number.isSafeInteger(n) && n >= 1 ? Math.min(n, MAX_K) : DEFAULT_K;
  }

  function clearResults() {
    state.hits = [];
    state.query = "";
    els.results.replaceChildren();
    els.hint.hidden = false;
  }

  async function search(rawQuery, { push }) {
    const q = rawQuery.trim();
    if (state.controller) state.controller.abort();
    const seq = ++state.searchSeq;
    if (push) {
      const target = q ? `/?${new URLSearchParams({ q })}` : "/";
      if (target !== window.location.pathname + window.location.search) history.pushState({ q }, "", target);
    }
    document.title = q ? `${visible(q, 80)} \u2013 pagelens` : "pagelens";
    if (!q) {
      clearResults();
      showStatus(els.status, "");
      return;
    }
    if (q.length > MAX_QUERY) {
      clearResults();
      showStatus(els.status, `The query has ${q.length} characters; the limit is ${MAX_QUERY}. Shorten it.`, "error");
      return;
    }
    const controller = new AbortController();
    state.controller = controller;
    const k = resultCount(urlQuery().k);
    showStatus(els.status, "Searching\u2026", "busy");
    els.results.setAttribute("aria-busy", "true");
    try {
      const body = await getJson(`/api/search?${new URLSearchParams({ q, k })}`, controller.signal);
      if (seq !== state.searchSeq) return;
      const hits = (Array.isArray(body.hits) ? body.hits : []).map((h) => readHit(h, q)).filter(Boolean);
      state.query = q;
      state.hits = hits;
      renderResults(hits);
      const took = typeof body.took_ms === "number" && Number.isFinite(body.took_ms) ? ` in ${Math.round(body.took_ms)} ms` : "";
      showStatus(els.status, hits.length
        ? `${hits.length} ${hits.length === 1 ? "page" : "pages"}${took}`
        : `No pages found${took}. Is anything indexed? (pagelens index FOLDER --index DIR)`);
    } catch (err) {
      if (err && err.name === "AbortError") return;
      if (seq !== state.searchSeq) return;
      clearResults();
      showError(els.status, err instanceof ApiError ? err : new ApiError(0, "bug", String(err), ""));
    } finally {
      if (seq === state.searchSeq) els.results.removeAttribute("aria-busy");
    }
  }

  function renderResults(hits) {
    const items = hits.map((hit, i) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "hit";
      button.dataset.index = String(i);
      button.dataset.pageId = String(hit.pageId);
      const pageText = hit.page ? `page ${hit.page}` : "page ?";
      button.setAttribute("aria-label", `${visible(hit.name)}, ${pageText}, score ${formatScore(hit.score)}`);
      button.title = visible(hit.path || hit.name, 2000);

      const thumb = document.createElement("span");
      thumb.className = "thumb";
      const img = document.createElement("img");
      img.alt = "";
      img.loading = "lazy";
      img.decoding = "async";
      img.addEventListener("load", () => thumb.classList.add("loaded"));
      img.addEventListener("error", async () => {
        thumb.classList.add("broken");
        const err = await imageError(img.src);
        const note = document.createElement("span");
        note.className = "thumb-error";
        note.textContent = visible(err.message, 200);
        thumb.append(note);
      }, { once: true });
      img.src = sameOrigin(hit.image, { width: THUMB_WIDTH });
      hit.thumb = img;
      thumb.append(img);

      const name = document.createElement("span");
      name.className = "name";
      name.textContent = visible(hit.name, 200);
      const meta = document.createElement("span");
      meta.className = "meta";
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = `#${hit.rank ?? i + 1}`;
      const page = document.createElement("span");
      page.className = "page";
      page.textContent = pageText;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = formatScore(hit.score);
      score.title = "MaxSim score";
      meta.append(rank, page, score);

      button.append(thumb, name, meta);
      button.addEventListener("click", () => openViewer(i));
      li.append(button);
      return li;
    });
    els.results.replaceChildren(...items);
    els.hint.hidden = hits.length > 0;
  }

  // ---- moving around the grid with arrow keys -----------------------------------------------------

  function resultButtons() {
    return Array.from(els.results.querySelectorAll("button.hit"));
  }

  function columns(buttons) {
    if (buttons.length === 0) return 1;
    const top = buttons[0].getBoundingClientRect().top;
    let n = 0;
    while (n < buttons.length && Math.abs(buttons[n].getBoundingClientRect().top - top) < 2) n += 1;
    return Math.max(n, 1);
  }

  function focusResult(i) {
    const buttons = resultButtons();
    if (buttons.length === 0) return;
    const target = buttons[Math.max(0, Math.min(i, buttons.length - 1))];
    target.focus();
    target.scrollIntoView({ block: "nearest" });
  }

  els.results.addEventListener("keydown", (event) => {
    const button = event.target.closest("button.hit");
    if (!button || event.altKey || event.ctrlKey || event.metaKey) return;
    const i = Number(button.dataset.index);
    const buttons = resultButtons();
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(buttons), ArrowUp: -columns(buttons) }[event.key];
    if (step !== undefined) {
      const j = i + step;
      if (j >= 0 && j < buttons.length) focusResult(j);
      else if (event.key === "ArrowUp") els.q.focus();
      event.preventDefault();
    } else if (event.key === "Home" || event.key === "End") {
      focusResult(event.key === "Home" ? 0 : buttons.length - 1);
      event.preventDefault();
    }
  });

  els.q.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" && state.hits.length > 0) {
      focusResult(0);
      event.preventDefault();
    }
  });

  document.addEventListener("keydown", (event) => {
    if (event.key !== "/" || els.viewer.open || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, select, textarea")) return;
    els.q.focus();
    els.q.select();
    event.preventDefault();
  });

  // ---- the large view ------------------------------------------------------------------------------

  // The width to ask for: what fits the frame at this screen's pixel density, in steps.
  function largeWidth(hit) {
    const frame = els.frame.getBoundingClientRect();
    let cssWidth = frame.width;
    const thumb = hit.thumb;
    if (thumb && thumb.naturalWidth > 0 && thumb.naturalHeight > 0 && frame.height > 0) {
      cssWidth = Math.min(cssWidth, frame.height * (thumb.naturalWidth / thumb.naturalHeight));
    }
    const px = Math.ceil((cssWidth * (window.devicePixelRatio || 1)) / WIDTH_STEP) * WIDTH_STEP;
    return Math.max(MIN_WIDTH, Math.min(MAX_WIDTH, px || 800));
  }

  function openViewer(i) {
    if (!els.viewer.open) els.viewer.showModal();
    showPage(i);
  }

  function showPage(i) {
    const hit = state.hits[i];
    if (!hit) return;
    state.current = i;
    const seq = ++state.viewSeq;
    if (state.viewController) state.viewController.abort();
    const controller = new AbortController();
    state.viewController = controller;

    els.title.textContent = visible(hit.name, 300);
    els.title.title = visible(hit.path || hit.name, 2000);
    const pageText = hit.page ? `page ${hit.page}` : "page ?";
    els.meta.textContent = `${pageText} \u00b7 score ${formatScore(hit.score)} \u00b7 result ${i + 1} of ${state.hits.length}`;
    els.pdf.textContent = hit.page ? `Open PDF at page ${hit.page}` : "Open PDF";
    els.pdf.href = hit.pdf;
    els.prev.disabled = i === 0;
    els.next.disabled = i === state.hits.length - 1;

    state.heatmapOk = false;
    els.toggle.disabled = true;
    els.token.disabled = true;
    showStatus(els.viewerStatus, "");
    const width = largeWidth(hit);
    els.img.dataset.width = String(width);
    updateImage();

    getJson(sameOrigin(hit.heatmap, { format: "json", width: null, token: null }), controller.signal)
      .then((body) => {
        if (seq !== state.viewSeq) return;
        fillTokens(readTokens(body));
        state.heatmapOk = true;
        els.toggle.disabled = false;
        els.token.disabled = false;
        updateImage();
      })
      .catch((err) => {
        if ((err && err.name === "AbortError") || seq !== state.viewSeq) return;
        fillTokens([]);
        showError(els.viewerStatus, err instanceof ApiError ? err : new ApiError(0, "bug", String(err), ""));
        if (err.code === "heatmap_unavailable") els.viewerStatus.dataset.kind = "notice";
        updateImage();
      });
  }

  function fillTokens(tokens) {
    const keep = state.token;
    const options = [new Option("all words", "")];
    for (const t of tokens) {
      const label = visible(t.text, 60).trim() || `token ${t.index}`;
      options.push(new Option(t.score === null ? label : `${label} (${formatScore(t.score)})`, String(t.index)));
    }
    els.token.replaceChildren(...options);
    state.token = tokens.some((t) => String(t.index) === keep) ? keep : "";
    els.token.value = state.token;
  }

  function updateImage() {
    const hit = state.hits[state.current];
    if (!hit) return;
    const width = Number(els.img.dataset.width);
    const heat = state.heatmap && state.heatmapOk;
    els.toggle.setAttribute("aria-pressed", String(heat));
    els.toggle.textContent = state.heatmapOk ? (heat ? "Heatmap: on" : "Heatmap: off") : "Heatmap";
    const src = heat
      ? sameOrigin(hit.heatmap, { width, token: state.token || null, format: null })
      : sameOrigin(hit.image, { width });
    const pageText = hit.page ? `page ${hit.page}` : "page";
    els.img.alt = `${visible(hit.name, 200)}, ${pageText}${heat ? ", with the heatmap of the query" : ""}`;
    els.img.dataset.mode = heat ? "heatmap" : "page";
    if (els.img.getAttribute("src") === src) return;
    els.frame.classList.add("loading");
    els.frame.classList.remove("broken");
    els.img.src = src;
  }

  els.img.addEventListener("load", () => els.frame.classList.remove("loading"));
  els.img.addEventListener("error", async () => {
    const src = els.img.getAttribute("src");
    if (!src) return;
    const seq = state.viewSeq;
    els.frame.classList.remove("loading");
    els.frame.classList.add("broken");
    const err = await imageError(src);
    if (seq === state.viewSeq && els.img.getAttribute("src") === src) showError(els.viewerStatus, err);
  });

  function toggleHeatmap() {
    if (!state.heatmapOk) return;
    state.heatmap = !state.heatmap;
    updateImage();
  }

  function step(delta) {
    const j = state.current + delta;
    if (j >= 0 && j < state.hits.length) showPage(j);
  }

  els.toggle.addEventListener("click", toggleHeatmap);
  els.token.addEventListener("change", () => {
    state.token = els.token.value;
    state.heatmap = true;   // picking a word means wanting to see it
    updateImage();
  });
  els.prev.addEventListener("click", () => step(-1));
  els.next.addEventListener("click", () => step(1));
  els.close.addEventListener("click", () => els.viewer.close());
  // A click on the backdrop (the dialog element itself, outside its content) closes it.
  els.viewer.addEventListener("click", (event) => {
    if (event.target === els.viewer) els.viewer.close();
  });
  els.viewer.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const inControl = event.target.closest("select, input, textarea");
    if ((event.key === "h" || event.key === "H") && !inControl) {
      toggleHeatmap();
      event.preventDefault();
    } else if ((event.key === "ArrowRight" || event.key === "ArrowLeft") && !inControl) {
      step(event.key === "ArrowRight" ? 1 : -1);
      event.preventDefault();
    }
  });
  els.viewer.addEventListener("close", () => {
    state.viewSeq += 1;
    if (state.viewController) state.viewController.abort();
    els.img.removeAttribute("src");
    if (state.current >= 0) focusResult(state.current);
  });

  // ---- the address bar ------------------------------------------------------------------------------

  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    search(els.q.value, { push: true });
  });

  window.addEventListener("popstate", () => {
    if (els.viewer.open) els.viewer.close();
    const { q } = urlQuery();
    els.q.value = q;
    search(q, { push: false });
  });

  const initial = urlQuery().q;
  if (initial) {
    els.q.value = initial;
    search(initial, { push: false });
  }
})();
