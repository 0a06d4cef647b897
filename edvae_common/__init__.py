"""Code both stages need: strict configs, run folders and checkpoints, image and file I/O.

Both ``stage1_tokenizer`` and ``stage2_prior`` import from here; nothing here
imports either stage.
"""

from .config import ConfigError, load_config
from .hub import CheckpointError

__all__ = ["CheckpointError", "ConfigError", "load_config"]
