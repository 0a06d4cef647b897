"""stage2_prior.compare_publish: a comparison's tables go into a docs page exactly as measured, the prose around
them untouched; bad input is refused before anything is written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stage2_prior.compare_publish import END, main, tables_block

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "docs" / "results" / "compare_celeba64"   # a real comparison's output, as committed


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "runs" / "compare"
    folder.mkdir(parents=True)
    for name in ("results.md", "results.json", "figure11.png"):
        shutil.copyfile(MEASURED / name, folder / name)
    return folder


def page_with_block(tmp_path: Path, to: Path, inside: str = "| stale | table |") -> Path:
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\nProse before.\n\n<!-- compare tables: {to.as_posix()}/results.md -->\n{inside}\n"
                    f"{END}\n\nProse after, ![figure](x.png).\n")
    return page


def test_publish_copies_the_files_and_replaces_only_the_block(run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    to = Path("docs/compare")
    page = page_with_block(tmp_path, to)
    main([str(run), "--to", str(to), "--page", str(page)])
    for name in ("results.md", "results.json", "figure11.png"):
        assert (tmp_path / to / name).read_bytes() == (run / name).read_bytes()
    text = page.read_text()
    assert "| stale | table |" not in text
    assert text.startswith("# Results\n\nProse before.\n\n") and text.endswith(f"{END}\n\nProse after, ![figure](x.png).\n")
    measured = (run / "results.md").read_text().splitlines()
    rows = [line for line in measured if line.startswith("| ")]
    bullets = [line for line in measured if line.startswith("- ")]
    assert len(rows) >= 6 and bullets and all(line in text.splitlines() for line in rows + bullets)
    assert "\n## " not in text and "**Every row.**" in text and "figure11.png" not in text   # the page keeps its own
    between = text.split("results.md -->\n", 1)[1].split(END, 1)[0]
    assert between.strip().splitlines() == tables_block((run / "results.md").read_text())
    # publishing again changes nothing
    main([str(run), "--to", str(to), "--page", str(page)])
    assert page.read_text() == text


def test_bad_input_is_refused_before_anything_is_written(run: Path, tmp_path: Path) -> None:
    to = tmp_path / "docs" / "compare"
    page = tmp_path / "page.md"
    page.write_text("# A page without the markers\n")
    with pytest.raises(ValueError, match="needs exactly one block between the lines"):
        main([str(run), "--to", str(to), "--page", str(page)])
    assert not to.exists() and page.read_text() == "# A page without the markers\n"
    (run / "figure11.png").unlink()
    page = page_with_block(tmp_path, to)
    with pytest.raises(FileNotFoundError, match="has no figure11.png"):
        main([str(run), "--to", str(to), "--page", str(page)])
    (run / "results.md").write_text("# not a comparison\n")
    with pytest.raises(ValueError, match="no '\\| quantizer \\|' table"):
        tables_block((run / "results.md").read_text())
    # from the command line: one line that says what is wrong, exit status 1
    done = subprocess.run([sys.executable, "-m", "stage2_prior.compare_publish", str(run), "--to", str(to),
                           "--page", str(page)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "has no figure11.png" in done.stderr
