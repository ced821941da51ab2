"""The import graph of tagseg: layers that only point down (import-linter contracts in
pyproject.toml) and no import circle between modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import importlinter  # noqa: F401  (the `test` extra installs it; CI must have it)

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def _lint(src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          capture_output=True, text=True, env=env, cwd=src, timeout=3600)


def test_import_contracts_are_kept():
    proc = _lint(SRC)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path):
    """The check can fail: config importing the engine (a circle through every layer) is reported."""
    shutil.copytree(SRC / "tagseg", tmp_path / "tagseg", ignore=shutil.ignore_patterns("__pycache__"))
    config = tmp_path / "tagseg" / "config.py"
    config.write_text(config.read_text() + "\n\ndef _upward():\n    from tagseg.engine import loop  # noqa\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert "tagseg.config -> tagseg.engine.loop" in proc.stdout


def _cycles(package: str) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), imports inside
    functions included."""
    graph = grimp.build_graph(package, cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in sorted(edges):
        if m not in index:
            visit(m)
    return found


def test_no_import_circle_between_modules():
    sys.path.insert(0, str(SRC))
    try:
        assert _cycles("tagseg") == []
    finally:
        sys.path.remove(str(SRC))
