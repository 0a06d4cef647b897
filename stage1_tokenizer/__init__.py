"""Stage 1: the EdVAE image tokenizer.

    from stage1_tokenizer import EdVAE
    tok = EdVAE.from_pretrained("runs/stage1/cifar10/tokenizer")
    codes = tok.encode(images)     # (B, 3, H, W) floats in [0, 1] -> LongTensor (B, H/4, W/4)
    recon = tok.decode(codes)      # -> (B, 3, H, W) in [0, 1]
    out = tok.analyze(images)      # reconstruction, codes and evidential uncertainty u = K/S in one pass
"""

from .config import DataConfig, ModelConfig, Stage1Config, TrainConfig
from .model import EdVAE, TokenizerAnalysis, TokenizerOutput
from .quantizers import QUANTIZERS, DirichletQuantizer, kl_dirichlet_uniform

__all__ = ["QUANTIZERS", "DataConfig", "DirichletQuantizer", "EdVAE", "ModelConfig", "Stage1Config",
           "TokenizerAnalysis", "TokenizerOutput", "TrainConfig", "kl_dirichlet_uniform"]
