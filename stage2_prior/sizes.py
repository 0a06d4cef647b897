"""Prior sizes: a small registry of transformer shapes, picked by name with ``model.size``.

Each entry fixes depth, width and heads; the architecture family (GPT-2 or
Llama) and the vocabulary / context come from the config and the token set.
"""

from __future__ import annotations

from dataclasses import dataclass

from edvae_common.config import ConfigError


@dataclass(frozen=True)
class PriorSize:
    n_layer: int
    n_embd: int
    n_head: int
    intermediate_mult: int = 4     # MLP width = mult x n_embd (Llama: rounded like the GPT-2 MLP for comparability)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")


SIZES: dict[str, PriorSize] = {
    "tiny": PriorSize(n_layer=2, n_embd=64, n_head=2),       # tests: trains in seconds on a CPU
    "small": PriorSize(n_layer=4, n_embd=256, n_head=4),     # CPU runs: ~3.2M parameters plus embeddings
    "base": PriorSize(n_layer=12, n_embd=768, n_head=12),    # GPU: GPT-2 base shape (~85M)
    "large": PriorSize(n_layer=24, n_embd=1024, n_head=16),  # GPU: the taming-transformers CelebA scale (~300M)
}


def get_size(name: str) -> PriorSize:
    try:
        return SIZES[name]
    except KeyError:
        raise ConfigError(f"invalid value for config key 'model.size': unknown size '{name}'; "
                          f"available: {', '.join(SIZES)}") from None
