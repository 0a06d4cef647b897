"""The README's Python examples run as written, and every config key is documented."""

import dataclasses
import re
from pathlib import Path

import pytest

from stage1_tokenizer.config import Stage1Config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_examples_run(code, monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


def leaf_keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_every_stage1_config_key_is_documented():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [k for k in leaf_keys(Stage1Config) if f"`{k}`" not in doc]
    assert not missing, f"document these keys in docs/configuration.md: {missing}"


def test_every_stage2_config_key_is_documented():
    from stage2_prior.config import Stage2Config

    doc = (ROOT / "docs" / "configuration_stage2.md").read_text()
    missing = [k for k in leaf_keys(Stage2Config) if f"`{k}`" not in doc]
    assert not missing, f"document these keys in docs/configuration_stage2.md: {missing}"
