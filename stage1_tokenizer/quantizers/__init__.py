"""Quantizers, chosen by the config name ``model.quantizer`` from a registry (never by eval).

One file per registry name, one class per file named after it: ``edvae.py`` holds ``EdVAEQuantizer``,
``dvae.py`` ``DVAEQuantizer``, ``gs_vqvae.py`` ``GSVQVAEQuantizer``, ``vqvae_ema.py``
``VQVAEEMAQuantizer``, ``sqvae.py`` ``SQVAEQuantizer``, ``vqste_pp.py`` ``VQSTEPPQuantizer``. Their KL
terms are in ``stage1_tokenizer/loss.py``, with the rest of the objective.
"""

from __future__ import annotations

from edvae_common.config import ConfigError

from .base import Quantizer, QuantizerOutput
from .dvae import DVAEQuantizer
from .edvae import EdVAEQuantizer
from .gs_vqvae import GSVQVAEQuantizer
from .sqvae import SQVAEQuantizer
from .vqste_pp import VQSTEPPQuantizer
from .vqvae_ema import VQVAEEMAQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {
    cls.name: cls for cls in (EdVAEQuantizer, DVAEQuantizer, GSVQVAEQuantizer, VQVAEEMAQuantizer, SQVAEQuantizer,
                              VQSTEPPQuantizer)
}


def get_quantizer_class(name: str) -> type[Quantizer]:
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise ConfigError(
            f"invalid value for config key 'model.quantizer': unknown quantizer '{name}'; "
            f"available: {', '.join(sorted(QUANTIZERS))}"
        ) from None


__all__ = ["QUANTIZERS", "DVAEQuantizer", "EdVAEQuantizer", "GSVQVAEQuantizer", "Quantizer", "QuantizerOutput",
           "SQVAEQuantizer", "VQSTEPPQuantizer", "VQVAEEMAQuantizer", "get_quantizer_class"]
