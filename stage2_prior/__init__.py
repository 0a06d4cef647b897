"""Stage 2: an autoregressive transformer prior over stage-1 tokens.

The pipeline (each step a script; see docs/stage2.md):

1. ``extract_tokens.py``: encode a dataset once into token shards + a manifest (``tokens.py``);
2. ``train.py``: train a ``transformers`` GPT-2 / Llama causal LM on them (``model.py``, ``sizes.py``);
3. ``sample.py``: sample or complete images through ``generate()`` with the KV cache (``generation.py``);
4. ``fid.py``: FID of samples or reconstructions with a fixed protocol.

``Pipeline`` (``pipeline.py``) holds a tokenizer + prior pair with the tokenizer's preprocessing
and offers ``generate``, ``reconstruct`` and ``complete``: the CLI, the training-time sample grids
and the app (``python -m app``) all use it.

The tokenizer is used only through ``stage1_tokenizer``'s public API.
"""

from .generation import complete_codes, complete_image, decode_codes, generate_codes, sample_images
from .inputs import ImageInputError
from .model import PriorSpec, build_prior, load_prior
from .pipeline import Completion, Pipeline, Reconstruction, Samples
from .sizes import SIZES, PriorSize
from .tokens import Manifest, TokenDataset, TokenizerFingerprint, TokenizerMismatchError

__all__ = ["SIZES", "Completion", "ImageInputError", "Manifest", "Pipeline", "PriorSize", "PriorSpec",
           "Reconstruction", "Samples", "TokenDataset", "TokenizerFingerprint", "TokenizerMismatchError",
           "build_prior", "complete_codes", "complete_image", "decode_codes", "generate_codes", "load_prior",
           "sample_images"]
