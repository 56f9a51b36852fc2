"""Data flows one way: files -> pages -> embeddings -> store -> candidates -> hits.

Parses every module and fails on an import that reaches up (or sideways) a layer.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "indexer", "scoring", "pagelens")
# What each package may import from the others.
ALLOWED = {
    "engine": set(),
    "scoring": set(),
    "indexer": {"engine"},
    "pagelens": {"engine", "indexer", "scoring"},
}


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0], node.lineno


def test_no_module_imports_up_or_sideways():
    offences = []
    checked = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            checked += 1
            for top, line in _imports(path):
                if top in PACKAGES and top != package and top not in ALLOWED[package]:
                    offences.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert checked >= 10, "the layering test found too few modules: is the layout right?"
    assert not offences, "upward imports:\n" + "\n".join(offences)


def test_importing_pagelens_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, pagelens; print('torch' in sys.modules, 'faiss' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False", "False"]
