"""Quantizers, chosen by the config name ``model.quantizer`` from a registry (never by eval)."""

from __future__ import annotations

from edvae_common.config import ConfigError

from .base import Quantizer, QuantizerOutput
from .dirichlet import kl_dirichlet_uniform
from .edvae import DirichletQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {
    DirichletQuantizer.name: DirichletQuantizer,
}


def get_quantizer_class(name: str) -> type[Quantizer]:
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise ConfigError(
            f"invalid value for config key 'model.quantizer': unknown quantizer '{name}'; "
            f"available: {', '.join(sorted(QUANTIZERS))}"
        ) from None


__all__ = ["QUANTIZERS", "DirichletQuantizer", "Quantizer", "QuantizerOutput", "get_quantizer_class", "kl_dirichlet_uniform"]
