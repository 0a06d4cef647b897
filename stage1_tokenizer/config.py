"""The stage-1 configuration schema: model, data and training settings.

Defaults are the paper's (Appendix D, CIFAR-10 column); ``configs/stage1/*.yaml``
set the per-dataset values. Every field here is a valid ``key=value`` override.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from edvae_common.config import check, mixed_precision_setting

EVAL_CODES = ("argmax", "sample")
# Named settings of two baselines (docs/stage1.md, "Baseline settings and whose they are")
VQVAE_EMA_VARIANTS = ("sonnet", "project-v1")
VQSTE_PP_VARIANTS = ("vqtorch", "project-v1")
DATASETS = ("cifar10", "celeba", "lsun_church", "npz", "folder", "hf", "auto")


@dataclass
class ModelConfig:
    quantizer: str = "edvae"          # registry name, see stage1_tokenizer/quantizers
    # 'edvae': Appendix D.2 networks (all quantizers by default); 'vqvae': the VQ-VAE paper's own networks
    # (the EdVAE paper's setting for VQ-VAE-EMA and GS-VQ-VAE; uses channels as hidden width, 4x downsampling)
    architecture: str = "edvae"
    image_channels: int = 3
    channels: int = 128               # n in Appendix D.2
    # decoder width when it differs from the encoder's (None: channels, the paper's). Tokens are made by the
    # encoder and codebook only, so a wider decoder (stage1_tokenizer.finetune_decoder --decoder-channels) buys
    # sharper reconstructions without changing any token.
    decoder_channels: Optional[int] = None
    channel_mults: List[int] = field(default_factory=lambda: [1, 2, 4])  # one group per entry
    blocks_per_group: int = 2
    first_kernel: int = 3             # kw: 3 (CIFAR10, CelebA) or 7 (LSUN Church)
    codebook_size: int = 512          # K
    codebook_dim: int = 16
    clamp_max: float = 20.0           # logits are clamped to at most this (Table 5)
    # conv biases: 'default' = PyTorch's init, as the release; 'zero' helps small CPU-sized models leave the
    # initial MSE plateau sooner (weights are N(0, 0.02) either way)
    conv_bias_init: str = "default"
    # Baselines as their authors run them; the other quantizers ignore these. 'project-v1': this project's
    # first settings, kept selectable for its earlier results (docs/stage1.md).
    # vqvae_ema: 'sonnet' = Sonnet's VectorQuantizerEMA (EMA counts and sums start at zero, debiased);
    # 'project-v1' = counts start at one, sums at the initial codebook
    vqvae_ema_variant: str = "sonnet"
    # vqste_pp: 'vqtorch' = the authors' library (codebook loss only, in-place SGD lr 50 momentum 0.9 on the
    # mean loss); 'project-v1' = codebook loss + 0.25 commitment, in-place step lr 0.5 without momentum
    vqste_pp_variant: str = "vqtorch"
    vqste_pp_kmeans_init: bool = False   # VQ-STE++ codes from k-means of the first training batch (vqtorch's option)

    def __post_init__(self) -> None:
        check(self.architecture in ("edvae", "vqvae"), "model.architecture",
              f"must be 'edvae' or 'vqvae', got '{self.architecture}'")
        check(self.architecture != "vqvae" or (self.channels >= 8 and self.channels % 8 == 0), "model.channels",
              f"the vqvae architecture needs a multiple of 8, got {self.channels}")
        check(self.image_channels > 0, "model.image_channels", f"must be positive, got {self.image_channels}")
        check(self.channels > 0, "model.channels", f"must be positive, got {self.channels}")
        check(self.decoder_channels is None or self.architecture == "edvae", "model.decoder_channels",
              "is for the edvae architecture only (the vqvae networks share one width)")
        check(self.decoder_channels is None or self.decoder_channels > 0, "model.decoder_channels",
              f"must be positive (or null for model.channels), got {self.decoder_channels}")
        check(len(self.channel_mults) >= 1, "model.channel_mults", "needs at least one group")
        for width in {self.channels, self.decoder_width}:
            for m in self.channel_mults:
                check(m > 0 and (width * m) % 4 == 0, "model.channel_mults",
                      f"channels*mult must be a positive multiple of 4 (blocks use width/4 hidden units); got {width}*{m}")
        check(self.blocks_per_group > 0, "model.blocks_per_group", f"must be positive, got {self.blocks_per_group}")
        check(self.first_kernel > 0 and self.first_kernel % 2 == 1, "model.first_kernel",
              f"must be a positive odd number, got {self.first_kernel}")
        check(self.codebook_size > 1, "model.codebook_size", f"must be at least 2, got {self.codebook_size}")
        check(self.codebook_dim > 0, "model.codebook_dim", f"must be positive, got {self.codebook_dim}")
        check(self.clamp_max > 0, "model.clamp_max", f"must be positive, got {self.clamp_max}")
        check(self.conv_bias_init in ("default", "zero"), "model.conv_bias_init",
              f"must be 'default' or 'zero', got '{self.conv_bias_init}'")
        check(self.vqvae_ema_variant in VQVAE_EMA_VARIANTS, "model.vqvae_ema_variant",
              f"must be 'sonnet' (Sonnet's EMA, the default) or 'project-v1' (this project's first version), "
              f"got '{self.vqvae_ema_variant}'")
        check(self.vqste_pp_variant in VQSTE_PP_VARIANTS, "model.vqste_pp_variant",
              f"must be 'vqtorch' (the authors' library, the default) or 'project-v1' (this project's first "
              f"version), got '{self.vqste_pp_variant}'")

    @property
    def decoder_width(self) -> int:
        """The decoder's n: ``decoder_channels`` if set, else ``channels``."""
        return self.channels if self.decoder_channels is None else self.decoder_channels

    @property
    def downsample(self) -> int:
        """Image side / token-grid side."""
        return 4 if self.architecture == "vqvae" else 2 ** (len(self.channel_mults) - 1)


@dataclass
class DataConfig:
    # cifar10 | celeba | lsun_church (paper preprocessing, real download/loading path)
    # npz | folder | hf (generic sources) | auto (guess from path)
    dataset: str = "cifar10"
    path: Optional[str] = None        # dataset root, .npz file, image folder, saved dataset dir or hub id
    image_size: int = 32              # side after preprocessing
    test_fraction: float = 0.1        # held-out fraction for sources without a test split
    split_seed: int = 0               # seed of that held-out split
    download: bool = False            # let torchvision / datasets download missing data
    # training only: flip each training image left-right with probability 1/2 (drawn from train.seed, the step
    # and the process, so a resumed run flips exactly as an uninterrupted one); faces and churches are symmetric
    hflip: bool = False
    num_workers: int = 0

    def __post_init__(self) -> None:
        check(self.dataset in DATASETS, "data.dataset", f"'{self.dataset}' is not one of {', '.join(DATASETS)}")
        check(self.image_size > 0, "data.image_size", f"must be positive, got {self.image_size}")
        check(0.0 < self.test_fraction < 1.0, "data.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")


@dataclass
class TrainConfig:
    max_steps: int = 150_000
    batch_size: int = 128             # global batch (all processes x accumulation steps)
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"       # no | fp16 | bf16
    seed: int = 42
    # learning rate: cosine ramp lr -> lr_min over lr_decay_steps, then held (Adam)
    lr: float = 1e-3
    lr_min: float = 1.25e-6
    lr_decay_steps: int = 50_000
    # KL weight: cosine ramp 0 -> beta_max over beta_warmup_steps
    beta_max: float = 5e-7
    beta_warmup_steps: int = 5_000
    # Gumbel-softmax temperature tau = tau_init * exp(-tau_decay * step), floored at tau_min
    tau_init: float = 1.0             # the paper's tau^[0] = 1; the dVAE ablation (E.1) uses 1, 2 and 5
    tau_decay: float = 1e-5
    tau_min: float = 0.0
    # multiplies every schedule horizon (beta ramp, lr decay, tau decay) so short runs see the whole schedule
    schedule_scale: float = 1.0
    grad_clip: Optional[float] = None
    channels_last: bool = False
    compile: bool = False
    # bookkeeping
    log_every: int = 50
    checkpoint_every: int = 5_000
    checkpoints_total_limit: Optional[int] = 3
    image_every: int = 5_000
    eval_every: int = 10_000
    eval_max_images: Optional[int] = 2_560   # periodic evaluation subset; the final one uses the whole split
    final_eval: bool = True
    # codebook-collapse alarm (stage1_tokenizer/collapse.py), checked at every evaluation after the beta warm-up:
    # floors (null = off) and the largest tolerated fall from the best value; stop_on_collapse ends the run
    collapse_min_codes: Optional[int] = None        # test codes used (argmax) below this -> alarm
    collapse_min_perplexity: Optional[float] = None  # hard-code training perplexity (last log window) below this
    collapse_max_drop: Optional[float] = 0.5        # either falling by more than this fraction of its best -> alarm
    stop_on_collapse: bool = False                  # on an alarm: save a checkpoint and end without exporting
    tracker: str = "tensorboard"     # tensorboard | wandb | none
    progress_bar: bool = True

    def __post_init__(self) -> None:
        self.mixed_precision = mixed_precision_setting(self.mixed_precision)
        check(self.max_steps > 0, "train.max_steps", f"must be positive, got {self.max_steps}")
        check(self.batch_size > 0, "train.batch_size", f"must be positive, got {self.batch_size}")
        check(self.gradient_accumulation_steps > 0, "train.gradient_accumulation_steps",
              f"must be positive, got {self.gradient_accumulation_steps}")
        check(self.lr > 0 and self.lr_min >= 0, "train.lr", "lr must be > 0 and lr_min >= 0")
        check(self.tau_init > 0, "train.tau_init", f"must be positive, got {self.tau_init}")
        check(self.schedule_scale > 0, "train.schedule_scale", f"must be positive, got {self.schedule_scale}")
        check(self.tracker in ("tensorboard", "wandb", "none"), "train.tracker",
              f"must be tensorboard, wandb or none, got '{self.tracker}'")
        check(self.collapse_max_drop is None or 0.0 < self.collapse_max_drop < 1.0, "train.collapse_max_drop",
              f"must be in (0, 1) or null, got {self.collapse_max_drop}")
        check(self.collapse_min_codes is None or self.collapse_min_codes > 0, "train.collapse_min_codes",
              f"must be positive or null, got {self.collapse_min_codes}")
        check(self.collapse_min_perplexity is None or self.collapse_min_perplexity > 0, "train.collapse_min_perplexity",
              f"must be positive or null, got {self.collapse_min_perplexity}")
        for key in ("log_every", "checkpoint_every", "image_every", "eval_every"):
            check(getattr(self, key) > 0, f"train.{key}", f"must be positive, got {getattr(self, key)}")


@dataclass
class Stage1Config:
    output_dir: str = "runs/stage1"
    resume: Optional[str] = None      # 'latest' or a checkpoint folder
    # an exported tokenizer (folder or Hub id) whose weights start the run instead of a random init, e.g. the fp16
    # one benchmarks/gpu_check.py brings back (upcast to float32); optimizer and schedules start fresh. Its model.*
    # settings must be the run's (train.py refuses a mismatch, naming it); a resumed run keeps its own weights.
    init_from: Optional[str] = None
    eval_codes: str = "argmax"        # how evaluation picks codes: argmax (default) or sample (Algorithm 2)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check(self.eval_codes in EVAL_CODES, "eval_codes", f"must be one of {EVAL_CODES}, got '{self.eval_codes}'")
        check(self.data.image_size % self.model.downsample == 0, "data.image_size",
              f"{self.data.image_size} is not divisible by the model's downsampling factor {self.model.downsample}")
