"""Structure a reader can rely on: stage 2 and the app use stage 1 only through its public API, and the pieces
both stages share (sampler, micro-batch check, run folder, atomic export) live once, in edvae_common."""

from __future__ import annotations

import ast
import re
from types import SimpleNamespace

import pytest

import stage1_tokenizer
from edvae_common.config import ConfigError
from edvae_common.runs import export_atomically
from edvae_common.training import EpochShuffleSampler, micro_batch_size
from tests.conftest import ROOT

CONSUMERS = ("stage2_prior", "app")
SUBMODULE_IMPORT = re.compile(r"^\s*(from\s+stage1_tokenizer\.\w+|import\s+stage1_tokenizer\.\w+)", re.M)


def consumer_sources():
    for folder in CONSUMERS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_stage2_and_the_app_never_import_a_stage1_submodule():
    offenders = [f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0).strip()}"
                 for path in consumer_sources() for text in [path.read_text()] for m in SUBMODULE_IMPORT.finditer(text)]
    assert not offenders, "import these from stage1_tokenizer (its public API) instead:\n" + "\n".join(offenders)


def test_what_they_import_from_stage1_is_in_its_public_api():
    used = set()
    for path in consumer_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "stage1_tokenizer":
                used.update(alias.name for alias in node.names)
    assert used, "expected stage 2 to use the tokenizer"
    assert not used - set(stage1_tokenizer.__all__), used - set(stage1_tokenizer.__all__)


def test_every_public_name_resolves():
    for name in stage1_tokenizer.__all__:
        assert getattr(stage1_tokenizer, name) is not None, name
    assert set(stage1_tokenizer.__all__) <= set(dir(stage1_tokenizer))
    with pytest.raises(AttributeError):
        stage1_tokenizer.no_such_name  # noqa: B018


def test_the_sampler_is_resumable_and_lives_in_edvae_common():
    sampler = EpochShuffleSampler(10, seed=3)
    sampler.set_epoch(2)
    first = list(sampler)
    again = EpochShuffleSampler(10, seed=3)
    again.set_epoch(2)
    assert list(again) == first and sorted(first) == list(range(10))
    assert not (ROOT / "stage1_tokenizer" / "data" / "sampler.py").exists()


def test_micro_batch_size_checks_both_ways_a_batch_can_be_wrong():
    assert micro_batch_size(64, 2, 4, 1000) == 8
    with pytest.raises(ConfigError, match=r"'train.batch_size': 64 is not divisible .* 3 x 1"):
        micro_batch_size(64, 3, 1, 1000)
    with pytest.raises(ConfigError, match=r"train.batch_size=64 is larger than the token set \(10 sequences\)"):
        micro_batch_size(64, 1, 1, 10, source="the token set", unit="sequences")


def test_export_replaces_the_previous_one_whole(tmp_path):
    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    (tmp_path / ".out.tmp").mkdir()                                  # left by a killed export
    (tmp_path / ".out.tmp" / "stale").write_text("x")

    def write(version):
        def fill(folder):
            folder.mkdir()
            (folder / "weights").write_text(version)
        return fill

    export_atomically(accelerator, tmp_path, "out", write("1"))
    export = export_atomically(accelerator, tmp_path, "out", write("2"))
    assert export == tmp_path / "out" and (export / "weights").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]      # no temporary or old folder left

    def crash(folder):
        folder.mkdir()
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        export_atomically(accelerator, tmp_path, "out", crash)
    assert (tmp_path / "out" / "weights").read_text() == "2"          # the previous export is untouched
