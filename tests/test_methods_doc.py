"""Every ``METHODS.md §N`` pointer in the code names a section of docs/METHODS.md (and, when it
quotes a subsection, one of that section's headings); no source points outside the repository."""

from __future__ import annotations

import re

from conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "METHODS.md"
POINTER = re.compile(r'METHODS\.md,?\s+(?:§|section\s+)(\d+)(?:,\s*"([^"]+)")?')
SOURCES = [p for d in ("src", "benchmarks") for p in (REPO_ROOT / d).rglob("*")
           if p.suffix in (".py", ".yaml", ".md") and "__pycache__" not in p.parts]


def sections() -> dict[str, list[str]]:
    """section number -> its subsection headings."""
    out: dict[str, list[str]] = {}
    current = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        top = re.match(r"^## (\d+)\. ", line)
        if top:
            current = top.group(1)
            out[current] = []
        elif line.startswith("### ") and current is not None:
            out[current].append(line[4:].strip())
    return out


def test_every_pointer_resolves():
    known = sections()
    assert {"1", "2", "3", "4", "5", "6", "7", "8"} <= set(known)
    found = 0
    for path in SOURCES:
        for m in POINTER.finditer(path.read_text(encoding="utf-8")):
            found += 1
            where = f"{path.relative_to(REPO_ROOT)}: {m.group(0)}"
            assert m.group(1) in known, f"{where} names no section of docs/METHODS.md"
            if m.group(2):
                assert any(h.startswith(m.group(2)) for h in known[m.group(1)]), \
                    f"{where}: §{m.group(1)} has no subsection {m.group(2)!r} ({known[m.group(1)]})"
    assert found >= 40  # the pointers were found at all


def test_the_pointer_pattern_catches_a_bad_pointer():
    assert POINTER.search('see METHODS.md §9, "Nowhere"').groups() == ("9", "Nowhere")
    assert "9" not in sections()


def test_no_source_points_at_a_file_outside_the_repository():
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        assert "/work/" not in text and "shared/METHODS" not in text, path
