"""Put a comparison's measured tables into a docs page, unedited.

    python -m stage2_prior.compare_publish runs/compare/celeba64 \\
        --to docs/results/compare_celeba64 --page docs/results.md

1. copies ``results.md``, ``results.json`` and ``figure11.png`` of the comparison's output folder into ``--to``;
2. rewrites the block of ``--page`` between the two markers below with the tables and the significance
   statement of that ``results.md`` (its section headings become bold lines, so the page keeps its own):

       <!-- compare tables: docs/results/compare_celeba64/results.md -->
       ...
       <!-- end of compare tables -->

The prose around the block (what the rows show, the paper's claims) stays the author's to write;
tests/test_compare_archive.py checks that the page shows exactly what the archived rows give.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from edvae_common.cli import run_cli
from edvae_common.io import atomic_write_text

PUBLISHED = ("results.md", "results.json", "figure11.png")
END = "<!-- end of compare tables -->"


def begin_marker(results_md: str) -> str:
    return f"<!-- compare tables: {results_md} -->"


def tables_block(results_md: str) -> list[str]:
    """From the per-quantizer table to the last significance line: the measured part of results.md."""
    lines = results_md.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("| quantizer |")]
    if not starts:
        raise ValueError("results.md has no '| quantizer |' table: is it a generation comparison's results.md?")
    block = []
    for line in lines[starts[0]:]:
        if line.startswith("!["):   # the figure: the page places and captions it itself
            break
        block.append(re.sub(r"^## (.+)$", r"**\1.**", line))
    while block and not block[-1].strip():
        block.pop()
    return block


def publish(run: Path, to: Path, page: Path) -> Path:
    """Copy the comparison's published files into ``to`` and its tables into ``page`` (see the module doc)."""
    missing = [name for name in PUBLISHED if not (run / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{run} has no {', '.join(missing)}: run the comparison (or its --status, which writes "
                                "the tables of the rows finished so far) first")
    if not page.is_file():
        raise FileNotFoundError(f"no page {page} to publish into")
    shown = to.resolve().relative_to(Path.cwd()) if to.resolve().is_relative_to(Path.cwd()) else to
    begin = begin_marker((shown / "results.md").as_posix())
    text = page.read_text()
    if text.count(begin) != 1 or text.count(END) != 1 or text.index(begin) > text.index(END):
        raise ValueError(f"{page} needs exactly one block between the lines\n  {begin}\n  {END}\n"
                         "where the tables go: add them where the comparison's section shows its results")
    block = tables_block((run / "results.md").read_text())
    head, rest = text.split(begin, 1)
    _, tail = rest.split(END, 1)
    to.mkdir(parents=True, exist_ok=True)
    if run.resolve() != to.resolve():
        for name in PUBLISHED:
            shutil.copyfile(run / name, to / name)
    atomic_write_text(page, head + "\n".join([begin, "", *block, "", END]) + tail)
    return page


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the comparison's output folder (its --out)")
    p.add_argument("--to", type=Path, required=True, help="folder for results.md, results.json and figure11.png")
    p.add_argument("--page", type=Path, required=True, help="the docs page whose marked block gets the tables")
    args = p.parse_args(argv)
    page = publish(args.run, args.to, args.page)
    print(f"published {args.run} into {args.to} and {page}")
    return page


if __name__ == "__main__":
    run_cli(main)
