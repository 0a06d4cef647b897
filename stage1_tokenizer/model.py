"""The EdVAE tokenizer: encoder -> quantizer -> decoder, with the public library API.

    tok = EdVAE.from_pretrained("runs/stage1/cifar10/tokenizer")
    codes = tok.encode(images)        # (B, 3, H, W) in [0, 1] -> LongTensor (B, H/4, W/4)
    images = tok.decode(codes)        # -> (B, 3, H, W) in [0, 1]

Inside, pixels are shifted to [-0.5, 0.5] as in the paper's code, so the MSE
reported on that scale equals the MSE on [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from edvae_common.config import load_config
from edvae_common.hub import CheckpointError, read_typed_config, resolve_pretrained
from edvae_common.io import weights_sha256

from .config import ModelConfig, Stage1Config
from .decoder import Decoder
from .encoder import Encoder
from .loss import reconstruction_mse
from .quantizers import get_quantizer_class
from .vqvae_arch import VQVAEDecoder, VQVAEEncoder

MODEL_TYPE = "edvae_tokenizer"
WEIGHTS_NAME = "model.safetensors"
TRAINING_DATA_FILE = "training_data.json"  # written beside the weights by train.py: the data settings used


@dataclass
class TokenizerOutput:
    """What the training forward ``model(images, tau=...)`` returns; ``stage1_loss(out, beta)`` (loss.py) sums it."""

    recon: torch.Tensor          # (B, 3, H, W) reconstruction in [-0.5, 0.5] space (unclamped)
    mse: torch.Tensor            # scalar, mean squared error (= MSE on [0, 1])
    kl: torch.Tensor             # scalar, quantizer KL (mean per position), to be weighted by beta
    aux_loss: torch.Tensor       # scalar, quantizer's own weighted loss terms (0 for EdVAE; VQ commitment, codebook loss)
    indices: torch.Tensor        # (B, h, w) hard codes
    uncertainty: Optional[torch.Tensor]  # (B, h, w) evidential uncertainty, or None
    latent_nats: Optional[torch.Tensor] = None  # SQ-VAE's latent terms (nats per image), weighted in loss.py


@dataclass
class TokenizerAnalysis:
    """What ``EdVAE.analyze`` returns: everything the tokenizer says about a batch, from one pass."""

    reconstruction: torch.Tensor          # (B, 3, H, W) in [0, 1], equal to decode(codes)
    codes: torch.Tensor                   # (B, h, w) LongTensor, equal to encode(images, codes=...)
    uncertainty: Optional[torch.Tensor]   # (B, h, w) evidential uncertainty u = K/S in (0, 1]; None for
                                          # quantizers without one (dvae, gs_vqvae, vqvae_ema, ...)
    mse: torch.Tensor                     # (B,) per-image MSE on the [0, 1] scale of the decoder output before
                                          # its clamp to [0, 1]: the MSE of training and evaluation


class EdVAE(nn.Module, PyTorchModelHubMixin, library_name="edvae", tags=["image-tokenizer", "edvae", "discrete-vae"]):
    """Evidential discrete VAE tokenizer (Baykal, Kandemir and Unal, 2024).

    Constructor arguments are the fields of ``ModelConfig`` and are validated
    up front; ``EdVAE.from_config(path_or_mapping)`` builds one from a YAML
    file or a mapping.
    """

    def __init__(self, quantizer: str = "edvae", architecture: str = "edvae", image_channels: int = 3,
                 channels: int = 128, channel_mults: list[int] | tuple[int, ...] = (1, 2, 4), blocks_per_group: int = 2,
                 first_kernel: int = 3, codebook_size: int = 512, codebook_dim: int = 16, clamp_max: float = 20.0,
                 conv_bias_init: str = "default", vqvae_ema_variant: str = "sonnet", vqste_pp_variant: str = "vqtorch",
                 vqste_pp_kmeans_init: bool = False, decoder_channels: int | None = None):
        super().__init__()
        self.config = ModelConfig(quantizer=quantizer, architecture=architecture, image_channels=image_channels,
                                  channels=channels, decoder_channels=decoder_channels,
                                  channel_mults=list(channel_mults), blocks_per_group=blocks_per_group,
                                  first_kernel=first_kernel, codebook_size=codebook_size,
                                  codebook_dim=codebook_dim, clamp_max=clamp_max, conv_bias_init=conv_bias_init,
                                  vqvae_ema_variant=vqvae_ema_variant, vqste_pp_variant=vqste_pp_variant,
                                  vqste_pp_kmeans_init=vqste_pp_kmeans_init)
        cfg = self.config
        quantizer_cls = get_quantizer_class(cfg.quantizer)
        code_channels = quantizer_cls.encoder_channels(cfg.codebook_size, cfg.codebook_dim)
        zero_bias = cfg.conv_bias_init == "zero"
        # Built in the order encoder, quantizer, decoder (the order their random inits are drawn in).
        if cfg.architecture == "vqvae":
            self.encoder = VQVAEEncoder(cfg.image_channels, cfg.channels, code_channels)
        else:
            self.encoder = Encoder(cfg.image_channels, cfg.channels, cfg.channel_mults, cfg.blocks_per_group,
                                   cfg.first_kernel, code_channels, zero_bias=zero_bias)
        self.quantizer = quantizer_cls.from_config(cfg)
        if cfg.architecture == "vqvae":
            self.decoder = VQVAEDecoder(cfg.codebook_dim, cfg.channels, cfg.image_channels)
        else:
            self.decoder = Decoder(cfg.codebook_dim, cfg.decoder_width, cfg.channel_mults, cfg.blocks_per_group,
                                   cfg.image_channels, zero_bias=zero_bias)
        # What save_pretrained() writes to config.json: the model fields plus a kind marker.
        self._hub_mixin_config = {"model_type": MODEL_TYPE, **asdict(cfg)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: str | Path | Mapping[str, Any] | ModelConfig) -> "EdVAE":
        """Build an untrained model from a stage-1 YAML file, a mapping of model fields, or a ModelConfig."""
        if isinstance(config, ModelConfig):
            return cls(**asdict(config))
        if isinstance(config, (str, Path)):
            return cls(**asdict(load_config(Stage1Config, config).model))
        mapping = dict(config)
        if "model" in mapping and isinstance(mapping["model"], Mapping):
            mapping = dict(mapping["model"])
        return cls(**asdict(load_config(Stage1Config, mapping={"model": mapping}).model))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, revision: str | None = None,
                        map_location: str | torch.device = "cpu", **_: Any) -> "EdVAE":
        """Load a tokenizer saved with ``save_pretrained`` from a folder or a Hub repo id."""
        from safetensors.torch import load_file

        folder = resolve_pretrained(pretrained_model_name_or_path, ["config.json", WEIGHTS_NAME], revision)
        config = read_typed_config(folder, MODEL_TYPE, "stage-1 EdVAE tokenizer")
        config.pop("model_type")
        try:
            model = cls(**config)
        except TypeError as err:
            raise CheckpointError(f"'{folder}/config.json' has fields this version does not know: {err}") from err
        state = load_file(str(folder / WEIGHTS_NAME), device=str(map_location))
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
            raise CheckpointError(f"weights in '{folder}' do not fit its config.json: {detail}") from None
        if missing or unexpected:
            raise CheckpointError(f"weights in '{folder}' do not fit its config.json: missing {missing}, unexpected {unexpected}")
        return model.eval()

    # ------------------------------------------------------------------ properties
    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def grid_shape(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """Token grid (h, w) for images of the given size."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        return h // self.downsample, w // self.downsample

    def weights_hash(self) -> str:
        """SHA-256 of the weights (names, shapes, values), to tie a stage-2 prior to this tokenizer."""
        return weights_sha256(self)

    def tokens_hash(self) -> str:
        """SHA-256 of the weights that decide the tokens (encoder and codebook, not the decoder).

        A prior depends on the tokens only, so it stays valid when the decoder is replaced
        (``stage1_tokenizer.finetune_decoder``): stage 2 ties a prior to this hash.
        """
        return weights_sha256(self, skip=("decoder.",))

    # ------------------------------------------------------------------ validation
    def _check_images(self, images: Any, check_values: bool = True) -> None:
        """Check type, shape and size; with ``check_values`` also NaNs and the [0, 1] range (one pass, one sync)."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floats in [0, 1], got dtype {images.dtype} "
                            "(convert uint8 images with images.float() / 255)")
        if images.ndim != 4:
            raise ValueError(f"images must have shape (B, C, H, W), got shape {tuple(images.shape)}")
        b, c, h, w = images.shape
        if c != self.config.image_channels:
            raise ValueError(f"expected {self.config.image_channels} channels, got shape {tuple(images.shape)} "
                             "(is the channel axis last? use images.permute(0, 3, 1, 2))")
        f = self.downsample
        if h < f or w < f or h % f or w % f:
            raise ValueError(f"image size {h}x{w} must be a positive multiple of the downsampling factor {f}")
        if b == 0:
            raise ValueError("got an empty batch (B = 0)")
        if not check_values:
            return
        lo, hi = torch.stack(torch.aminmax(images.detach())).float().tolist()  # NaN propagates; one sync
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("images contain NaN or infinite values")
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                             "(for [0, 255] divide by 255; for [-1, 1] use (x + 1) / 2)")

    def _check_indices(self, indices: Any) -> None:
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a torch.Tensor of shape (B, h, w), got {type(indices).__name__}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        if indices.ndim != 3:
            raise ValueError(f"indices must have shape (B, h, w), got shape {tuple(indices.shape)}")
        if indices.numel() == 0:
            raise ValueError(f"got an empty index tensor of shape {tuple(indices.shape)}")
        lo, hi = torch.stack(torch.aminmax(indices)).tolist()   # one pass, one sync
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(f"indices must be in [0, {self.codebook_size}), got values in [{lo}, {hi}]")

    # ------------------------------------------------------------------ training forward
    def forward(self, images: torch.Tensor, tau: float = 1.0, codes: str = "argmax") -> TokenizerOutput:
        """Encode, quantize (relaxed in training mode, hard in eval mode) and decode.

        ``images`` are (B, 3, H, W) in [0, 1]; ``tau`` is the Gumbel-softmax
        temperature; ``codes`` picks hard codes in eval mode ('argmax' or 'sample').
        Returns the reconstruction and the loss terms; ``stage1_loss(out, beta)``
        (``stage1_tokenizer/loss.py``) adds them up. Only shapes are checked here
        (value checks would sync the GPU every step); the public ``encode`` checks values too.
        """
        self._check_images(images, check_values=False)
        x = images - 0.5
        q = self.quantizer(self.encoder(x), tau=tau, codes=codes)
        recon = self.decoder(q.z_q)
        return TokenizerOutput(recon=recon, mse=reconstruction_mse(recon, x), kl=q.kl, aux_loss=q.aux_loss,
                               indices=q.indices, uncertainty=q.uncertainty, latent_nats=q.latent_nats)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def encode(self, images: torch.Tensor, codes: str = "argmax") -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> code indices, LongTensor (B, H/f, W/f).

        ``codes='argmax'`` is deterministic; ``'sample'`` draws z ~ Cat(pi) (Algorithm 2).
        Only the encoder and the code choice run: no KL, no decoder input.
        """
        _, indices, _ = self._hard_codes(images, codes, with_uncertainty=False)
        return indices

    def _hard_codes(self, images: torch.Tensor, codes: str,
                    with_uncertainty: bool) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Check ``images``, move them to the model's device and pick their eval-mode (hard) codes.

        Returns (images on the device, LongTensor codes (B, h, w), uncertainty (B, h, w) or None).
        The encoder runs in eval mode (no layer here depends on the mode, but a subclass's might).
        """
        self._check_images(images)
        images = images.to(self.quantizer.codebook.device)
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            indices, uncertainty = self.quantizer.hard_codes(self.encoder(images - 0.5), codes=codes,
                                                             with_uncertainty=with_uncertainty)
        finally:
            self.encoder.train(was_training)
        return images, indices.long(), uncertainty

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) -> images (B, 3, h*f, w*f) in [0, 1]."""
        self._check_indices(indices)
        return self._decode_unclamped(indices).clamp(0.0, 1.0)

    def _decode_unclamped(self, indices: torch.Tensor) -> torch.Tensor:
        """The decoder's output for checked indices, shifted back to the [0, 1] scale but not clamped."""
        z_q = self.quantizer.embed(indices.long().to(self.quantizer.codebook.device))
        return self.decoder(z_q).float() + 0.5

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, codes: str = "argmax") -> torch.Tensor:
        """Encode then decode: the tokenizer's reconstruction of ``images``, in [0, 1]."""
        return self.decode(self.encode(images, codes=codes))

    @torch.no_grad()
    def analyze(self, images: torch.Tensor, codes: str = "argmax") -> TokenizerAnalysis:
        """Reconstruction, codes and per-position evidential uncertainty of ``images`` in one pass.

        ``images`` are (B, 3, H, W) in [0, 1], checked like ``encode``; the pass runs in eval mode
        (hard codes: 'argmax' or 'sample' as in ``encode``). ``reconstruction`` equals
        ``reconstruct(images)`` and ``codes`` equals ``encode(images)``; ``uncertainty`` is u = K/S
        per token (high: little evidence for any code), or None when the quantizer has none; ``mse`` is
        the per-image error that training and ``evaluate`` report. No KL or other loss term is computed.
        """
        images, indices, uncertainty = self._hard_codes(images, codes, with_uncertainty=True)
        raw = self._decode_unclamped(indices)  # decode()'s own path: bit-for-bit the reconstruction it gives
        mse = (raw - images.float()).pow(2).flatten(1).mean(1)
        uncertainty = None if uncertainty is None else uncertainty.float()
        return TokenizerAnalysis(reconstruction=raw.clamp(0.0, 1.0), codes=indices, uncertainty=uncertainty, mse=mse)
