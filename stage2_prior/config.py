"""The stage-2 configuration schema: prior, token data and training settings.

Every field is a valid ``key=value`` override, e.g. ``model.size=small
train.max_steps=2000 data.tokens=runs/tokens/celeba``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from edvae_common.config import check, mixed_precision_setting

ARCHS = ("gpt2", "llama")


@dataclass
class PriorModelConfig:
    size: str = "small"               # registry name in stage2_prior/sizes.py: tiny | small | base | large
    arch: str = "gpt2"                # transformers family: gpt2 (learned positions) | llama (RoPE, RMSNorm, SwiGLU)
    dropout: float = 0.0              # gpt2: residual, attention and embedding dropout; llama: attention dropout
    class_conditional: bool = False   # prepend a class token (needs labels in the token set)
    cfg_dropout: float = 0.1          # conditional only: share of training sequences whose class token is replaced
                                      # by BOS, so the same model also predicts unconditionally (for guidance)

    def __post_init__(self) -> None:
        check(self.arch in ARCHS, "model.arch", f"must be one of {ARCHS}, got '{self.arch}'")
        check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        check(0.0 <= self.cfg_dropout < 1.0, "model.cfg_dropout", f"must be in [0, 1), got {self.cfg_dropout}")


@dataclass
class TokenDataConfig:
    tokens: str = "runs/tokens"       # a folder written by stage2_prior/extract_tokens.py (manifest.json + shards)
    train_split: str = "train"
    val_split: str = "test"           # validation NLL is measured on this split
    num_workers: int = 0


@dataclass
class PriorTrainConfig:
    max_steps: int = 100_000
    batch_size: int = 64              # global batch of sequences (all processes x accumulation steps)
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"       # no | fp16 | bf16
    seed: int = 42
    # AdamW with linear warmup then cosine decay to lr * min_lr_ratio at max_steps
    lr: float = 4.5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 1_000
    weight_decay: float = 0.01        # on the blocks' matrices only (not on biases, norms or embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: Optional[float] = 1.0
    ema_decay: Optional[float] = None   # e.g. 0.999: keep an EMA of the weights; it is what gets exported
    # bookkeeping
    log_every: int = 50
    eval_every: int = 1_000
    eval_max_batches: Optional[int] = 50  # validation batches per periodic evaluation (None: whole split)
    checkpoint_every: int = 5_000
    checkpoints_total_limit: Optional[int] = 3
    sample_every: int = 5_000         # a grid of samples decoded by the tokenizer (needs `tokenizer`)
    sample_num: int = 16
    sample_temperature: float = 1.0
    sample_top_k: Optional[int] = None
    tracker: str = "tensorboard"      # tensorboard | wandb | none
    progress_bar: bool = True

    def __post_init__(self) -> None:
        self.mixed_precision = mixed_precision_setting(self.mixed_precision)
        check(self.max_steps > 0, "train.max_steps", f"must be positive, got {self.max_steps}")
        check(self.batch_size > 0, "train.batch_size", f"must be positive, got {self.batch_size}")
        check(self.gradient_accumulation_steps > 0, "train.gradient_accumulation_steps",
              f"must be positive, got {self.gradient_accumulation_steps}")
        check(self.lr > 0, "train.lr", f"must be positive, got {self.lr}")
        check(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "train.ema_decay",
              f"must be in (0, 1) or null, got {self.ema_decay}")
        check(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip", f"must be positive or null, got {self.grad_clip}")
        check(self.tracker in ("tensorboard", "wandb", "none"), "train.tracker",
              f"must be tensorboard, wandb or none, got '{self.tracker}'")
        for key in ("log_every", "eval_every", "checkpoint_every", "sample_every", "sample_num"):
            check(getattr(self, key) > 0, f"train.{key}", f"must be positive, got {getattr(self, key)}")


@dataclass
class Stage2Config:
    output_dir: str = "runs/stage2"
    resume: Optional[str] = None      # 'latest' or a checkpoint folder
    # the stage-1 export the tokens came from (for sample grids); default: the path in the token manifest
    tokenizer: Optional[str] = None
    # fine-tune: start from the weights of an exported prior (output_dir/prior or checkpoints/...) instead of a
    # random init. Its layout (arch, size, vocabulary, context) must match model.* and the token set; it may come
    # from another tokenizer (e.g. an earlier stage of the same tokenizer run); the new prior names the new one.
    init_from: Optional[str] = None
    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)
