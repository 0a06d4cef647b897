"""Replace one ``## `` section of a markdown results page, keeping every other section (used by the benchmarks
that share docs/benchmarks.md)."""

from __future__ import annotations

import os
from pathlib import Path


def write_section(path: Path, heading: str, text: str, title: str = "# Benchmarks\n") -> None:
    """Put ``text`` (which starts with the line ``heading``) where the section ``heading`` is in ``path``, or at
    its end; a missing file starts with ``title``. Written atomically."""
    old = path.read_text() if path.is_file() else title
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        rest = "\n" + "".join(lines[end:]) if end < len(lines) else ""
        new = "".join(lines[:start]) + text.rstrip("\n") + "\n" + rest
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
