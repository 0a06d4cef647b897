"""Quantizers, chosen by the config name ``model.quantizer`` from a registry (never by eval)."""

from __future__ import annotations

from edvae_common.config import ConfigError

from .base import Quantizer, QuantizerOutput
from .dirichlet import kl_dirichlet_uniform
from .dvae import GumbelQuantizer
from .edvae import DirichletQuantizer
from .gs_vqvae import GumbelVQQuantizer
from .sqvae import GaussianSQQuantizer
from .vqste_pp import AffineVQQuantizer
from .vqvae_ema import EMAVectorQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {
    cls.name: cls for cls in (DirichletQuantizer, GumbelQuantizer, GumbelVQQuantizer, EMAVectorQuantizer,
                              GaussianSQQuantizer, AffineVQQuantizer)
}


def get_quantizer_class(name: str) -> type[Quantizer]:
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise ConfigError(
            f"invalid value for config key 'model.quantizer': unknown quantizer '{name}'; "
            f"available: {', '.join(sorted(QUANTIZERS))}"
        ) from None


__all__ = ["QUANTIZERS", "AffineVQQuantizer", "DirichletQuantizer", "EMAVectorQuantizer", "GaussianSQQuantizer", "GumbelQuantizer", "GumbelVQQuantizer", "Quantizer", "QuantizerOutput", "get_quantizer_class", "kl_dirichlet_uniform"]
