"""The committed face comparison (checkpoints/compare/celeba64): every finished pair loads with
``Pipeline.from_pretrained`` and generates, each row's results agree with the stage files they were made
from, and the Generation table in docs/results.md is the one those results give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "checkpoints" / "compare" / "celeba64"
STAGE1 = ROOT / "configs" / "stage1" / "celeba64_ship.yaml"
STAGE2 = ROOT / "configs" / "stage2" / "celeba64_ship.yaml"


def finished_rows() -> list[Path]:
    return sorted(p.parents[1] for p in ARCHIVE.glob("*/rows/results.json"))


def pairs() -> list[Path]:
    return sorted(p.parents[2] for p in ARCHIVE.glob("*/stage2/prior/config.json")
                  if (p.parents[2] / "stage1" / "tokenizer" / "config.json").is_file())


def test_the_headline_pair_is_committed():
    """Issue 18 commits EdVAE's and dVAE's seed-42 tokenizer + prior so their rows can be re-measured."""
    assert {p.name for p in pairs()} >= {"edvae_seed42", "dvae_seed42"}


@pytest.mark.parametrize("row", pairs(), ids=lambda p: p.name)
def test_each_committed_pair_loads_and_generates(row: Path):
    from safetensors.torch import load_file

    from stage2_prior.pipeline import Pipeline

    weights = load_file(row / "stage2" / "prior" / "model.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}   # fp16 in git
    pipe = Pipeline.from_pretrained(row / "stage1" / "tokenizer", row / "stage2" / "prior", device="cpu")
    assert all(p.dtype == torch.float32 for p in pipe.prior.parameters())                 # ... float32 loaded
    out = pipe.generate(2, seed=0, temperature=1.0, top_p=0.95)
    assert out.images.shape == (2, 3, 64, 64) and out.codes.shape == (2, 16, 16)
    assert torch.equal(out.images, pipe.generate(2, seed=0, temperature=1.0, top_p=0.95).images)


@pytest.mark.parametrize("row", finished_rows(), ids=lambda p: p.name)
def test_each_row_agrees_with_its_stage_files(row: Path):
    r = json.loads((row / "rows" / "results.json").read_text())
    s1 = json.loads((row / "stage1" / "metrics.json").read_text())
    s2 = json.loads((row / "stage2" / "metrics.json").read_text())
    assert f"{r['quantizer']}_seed{r['seed']}" == row.name
    assert r["tokenizer"]["psnr"] == s1["psnr"] and r["tokenizer"]["codes_used"] == s1["codes_used"]
    assert r["tokenizer"]["rfid"] == json.loads((row / "rows" / "rfid.json").read_text())["fid"]
    assert r["prior"]["bits_per_token"] == s2["nll_bits_per_token"]
    assert r["budget"]["stage1_steps"] == s1["step"] == 3000 and r["budget"]["prior_steps"] == s2["step"] == 900
    for name, setting in r["sampling"].items():
        measured = [json.loads((row / "samples" / f"{name}_seed{k}" / "fid.json").read_text()) for k in setting["seeds"]]
        assert setting["fid"] == [m["fid"] for m in measured] and setting["kid"] == [m["kid"] for m in measured]
        assert all(m["n_fake"] == r["budget"]["num_samples"] == 1000 for m in measured)
    assert len(r["sampling"]["t1_p095"]["seeds"]) == 3 and r["sampling"]["t1_p095"]["top_p"] == 0.95


def test_the_published_table_is_the_archived_results():
    from edvae_common.config import load_config
    from stage1_tokenizer import Stage1Config
    from stage2_prior import compare, compare_report
    from stage2_prior.config import Stage2Config

    rows = [json.loads((row / "rows" / "results.json").read_text()) for row in finished_rows()]
    assert rows, "no finished row in the archive"
    order = {q: i for i, q in enumerate(compare.QUANTIZERS)}
    rows.sort(key=lambda r: (order[r["quantizer"]], r["seed"]))
    table = compare_report.results_markdown(rows, "", load_config(Stage1Config, STAGE1, []),
                                     load_config(Stage2Config, STAGE2, []))
    published = (ROOT / "docs" / "results.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| quantizer")
             and not line.startswith("| row")]
    assert len(lines) == len(rows) + len({r["quantizer"] for r in rows})   # per quantizer, then per row
    lines += compare_report.significance(rows)   # which gaps exceed the spread, as results.md states them
    missing = [line for line in lines if line not in published]
    assert not missing, "docs/results.md does not show the archived results:\n" + "\n".join(missing)
    # the page's tables are the published results.md's (stage2_prior.compare_publish), and that is these rows'
    from stage2_prior.compare_publish import END, begin_marker, tables_block

    shown = ROOT / "docs" / "results" / "compare_celeba64"
    block = published.split(begin_marker("docs/results/compare_celeba64/results.md"), 1)[1].split(END, 1)[0]
    assert block.strip().splitlines() == tables_block((shown / "results.md").read_text())
    assert json.loads((shown / "results.json").read_text()) == rows
