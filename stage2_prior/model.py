"""The prior: a ``transformers`` causal LM over tokenizer codes, trained from scratch.

Vocabulary (K = codebook size, C = number of classes):

    0 .. K-1        image codes, row-major over the h x w token grid
    K               BOS: starts every unconditional sequence (and the "no class" branch of guidance)
    K+1 .. K+C      class tokens: start a class-conditional sequence in place of BOS

A sequence is [start token] + h*w codes, so the context is h*w + 1. The prior
stores what it was trained on (codebook size, grid, classes and the tokenizer's
weight hash) in its ``config.json`` under ``edvae_prior``; ``load_prior`` reads
it back and ``PriorSpec.check_tokenizer`` refuses another tokenizer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from edvae_common.hub import CheckpointError, resolve_pretrained
from edvae_common.io import read_json
from stage2_prior.config import PriorModelConfig
from stage2_prior.sizes import get_size
from stage2_prior.tokens import TokenizerFingerprint

SPEC_KEY = "edvae_prior"


@dataclass
class PriorSpec:
    """The prior's token layout and the tokenizer it belongs to."""

    tokenizer: TokenizerFingerprint
    num_classes: int = 0

    @property
    def codebook_size(self) -> int:
        return self.tokenizer.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.tokenizer.grid[0]), int(self.tokenizer.grid[1])

    @property
    def seq_len(self) -> int:
        return self.tokenizer.seq_len

    @property
    def bos_id(self) -> int:
        return self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + 1 + self.num_classes

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def class_token(self, label: int) -> int:
        if not 0 <= label < self.num_classes:
            raise ValueError(f"class {label} is out of range: this prior has {self.num_classes} classes"
                             + ("" if self.num_classes else " (it is unconditional: drop the class)"))
        return self.codebook_size + 1 + int(label)

    def start_tokens(self, labels: torch.Tensor | None, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(n, 1) first tokens: BOS, or the class token of each label (label < 0 means BOS)."""
        if labels is None:
            return torch.full((n, 1), self.bos_id, dtype=torch.long, device=device)
        labels = labels.to(device).view(-1, 1)
        return torch.where(labels >= 0, labels + self.codebook_size + 1, torch.full_like(labels, self.bos_id))

    def check_tokenizer(self, tokenizer: Any) -> None:
        self.tokenizer.check(tokenizer, "this prior")

    def to_dict(self) -> dict:
        return {"tokenizer": asdict(self.tokenizer), "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, d: dict) -> "PriorSpec":
        return cls(tokenizer=TokenizerFingerprint.from_dict(d["tokenizer"]), num_classes=int(d.get("num_classes", 0)))


def build_prior(spec: PriorSpec, cfg: PriorModelConfig):
    """A freshly initialised GPT-2 or Llama causal LM sized by ``cfg.size`` for ``spec``'s vocabulary and context."""
    size = get_size(cfg.size)
    # no pad token in the model config: Llama would make it the embedding's padding_idx (a zero, frozen BOS)
    common = dict(vocab_size=spec.vocab_size, bos_token_id=spec.bos_id, eos_token_id=None, pad_token_id=None)
    if cfg.arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(n_positions=spec.seq_len + 1, n_embd=size.n_embd, n_layer=size.n_layer, n_head=size.n_head,
                            n_inner=size.intermediate_mult * size.n_embd, resid_pdrop=cfg.dropout,
                            embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **common)
        model_cls = GPT2LMHeadModel
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        # SwiGLU has three matrices: 2/3 of the GPT-2 MLP width gives the same parameter count
        inter = int(2 * size.intermediate_mult * size.n_embd / 3 + 63) // 64 * 64
        config = LlamaConfig(max_position_embeddings=spec.seq_len + 1, hidden_size=size.n_embd,
                             num_hidden_layers=size.n_layer, num_attention_heads=size.n_head,
                             num_key_value_heads=size.n_head, intermediate_size=inter, attention_dropout=cfg.dropout,
                             tie_word_embeddings=False, **common)
        model_cls = LlamaForCausalLM
    setattr(config, SPEC_KEY, spec.to_dict())
    model = model_cls(config)
    model.generation_config.pad_token_id = spec.bos_id
    return model


def load_prior(name_or_path: str | Path, device: torch.device | str = "cpu", tokenizer: Any = None):
    """Load an exported prior (a folder or Hub id) and its spec; with ``tokenizer``, check they belong together."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = resolve_pretrained(name_or_path, ["config.json"])
    raw = read_json(folder / "config.json")
    if SPEC_KEY not in raw:
        kind = f" (it holds a '{raw['model_type']}')" if "model_type" in raw else ""
        raise CheckpointError(f"'{folder}' is not an EdVAE prior{kind}: its config.json has no '{SPEC_KEY}' entry. "
                              "Pass the folder written by stage2_prior/train.py (output_dir/prior)")
    config = AutoConfig.from_pretrained(str(folder))
    spec = PriorSpec.from_dict(getattr(config, SPEC_KEY))
    if tokenizer is not None:
        spec.check_tokenizer(tokenizer)
    # float32 whatever the file holds (a prior published in fp16 samples in float32, on the CPU too)
    model = AutoModelForCausalLM.from_pretrained(str(folder), config=config, dtype=torch.float32).to(device).eval()
    return model, spec


def init_prior_from(model: Any, name_or_path: str | Path) -> PriorSpec:
    """Copy the weights of the exported prior ``name_or_path`` into ``model`` (built by ``build_prior``).

    Fine-tuning a prior: the two must have the same architecture, size, vocabulary and context; a mismatch
    raises ``CheckpointError`` naming the differing settings or tensor shapes. The source may have been trained
    on another tokenizer's codes (its spec is returned so the caller can say so); ``model`` keeps its own spec.
    """
    source, source_spec = load_prior(name_or_path)
    mine, theirs = model.config.to_dict(), source.config.to_dict()
    keys = ("model_type", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
            "max_position_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size")
    differ = [f"{k}: {theirs.get(k)} (source) vs {mine.get(k)} (this run)" for k in keys if mine.get(k) != theirs.get(k)]
    if differ:
        raise CheckpointError(f"init_from='{name_or_path}' does not fit this run's prior: " + "; ".join(differ)
                              + ". Set model.size / model.arch to the source's, or drop init_from to start fresh.")
    try:  # strict: every tensor present with its shape (the settings above already make them agree)
        model.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise CheckpointError(f"init_from='{name_or_path}': its weights do not fit this run's prior ({err}). "
                              "Use a prior of the same arch and size.") from err
    return source_spec
