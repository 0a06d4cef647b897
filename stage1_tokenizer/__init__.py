"""Stage 1: the EdVAE image tokenizer.

    from stage1_tokenizer import EdVAE
    tok = EdVAE.from_pretrained("runs/stage1/cifar10/tokenizer")
    codes = tok.encode(images)     # (B, 3, H, W) floats in [0, 1] -> LongTensor (B, H/4, W/4)
    recon = tok.decode(codes)      # -> (B, 3, H, W) in [0, 1]
"""

from .config import DataConfig, ModelConfig, Stage1Config, TrainConfig
from .model import EdVAE, TokenizerOutput
from .quantizers import QUANTIZERS, DirichletQuantizer, kl_dirichlet_uniform

__all__ = ["QUANTIZERS", "DataConfig", "DirichletQuantizer", "EdVAE", "ModelConfig", "Stage1Config",
           "TokenizerOutput", "TrainConfig", "kl_dirichlet_uniform"]
