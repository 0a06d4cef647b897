"""A tokenizer + prior pair loaded once, with the tokenizer's own preprocessing: what users call.

    from stage2_prior.pipeline import Pipeline
    pipe = Pipeline.from_pretrained("checkpoints/celeba64/tokenizer", "checkpoints/celeba64/prior")
    samples = pipe.generate(16, seed=0)          # .images (16, 3, 64, 64) in [0, 1], .codes, .seed, .settings
    rec = pipe.reconstruct("face.jpg")           # input as the model sees it, reconstruction, codes, u = K/S, MSE ...
    done = pipe.complete("face.jpg", keep_rows=8, num=4, seed=1)   # top 8 token rows kept, the rest sampled

``stage2_prior.sample``, the prior's training-time sample grids and the app all go through it.
Images come in as paths, bytes, PIL images or uint8 arrays and are preprocessed as the tokenizer's
training data was (its ``training_data.json``; see ``stage2_prior.inputs``). Two optional files
refine it: ``sampling.json`` in the prior folder (recommended ``temperature``, ``top_k``, ``top_p``,
``guidance``: the defaults of ``generate`` / ``complete``, an explicit argument wins) and
``uncertainty_reference.json`` in the tokenizer folder (training-image percentiles of the mean
uncertainty, and a measured statement: ``reconstruct`` then says where an image falls).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from edvae_common.hub import CheckpointError, resolve_pretrained
from edvae_common.io import read_json, to_uint8
from stage2_prior.inputs import KINDS, prepare_image

SAMPLING_FILE = "sampling.json"
# Without sampling.json: plain ancestral sampling (the CLI's historical defaults).
DEFAULT_SAMPLING = {"temperature": 1.0, "top_k": None, "top_p": 1.0, "guidance": 1.0}
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "guidance", "note")


# ---------------------------------------------------------------------------- results
@dataclass
class Samples:
    images: torch.Tensor          # (N, 3, H, W) in [0, 1]
    codes: torch.Tensor           # (N, h, w) codes
    seed: int                     # the seed used (drawn when none was given): the same seed, the same images
    settings: dict                # every sampling setting, resolved

    def uint8(self) -> np.ndarray:
        """(N, H, W, 3) uint8, for PNG files and UIs."""
        return to_uint8(self.images)


@dataclass
class Reconstruction:
    input: torch.Tensor                    # (3, H, W) the image as the model sees it (after preprocessing)
    reconstruction: torch.Tensor           # (3, H, W) in [0, 1]
    codes: torch.Tensor                    # (h, w) the token map
    uncertainty: Optional[torch.Tensor]    # (h, w) evidential uncertainty u = K/S, None without an EdVAE quantizer
    mse: float                             # on [0, 1], of the reconstruction clipped to [0, 1] (what is shown)
    psnr: float                            # dB, from that MSE (evaluate's psnr is the same)
    distinct_codes: int                    # different codes in the token map
    mean_uncertainty: Optional[float]      # mean of u over the token map
    percentile: Optional[float] = None     # where that mean falls among the training images (0..100), with...
    reference_statement: Optional[str] = None  # ...the measured sentence that says what it is worth


@dataclass
class Completion:
    input: torch.Tensor            # (3, H, W) the image as the model sees it
    reconstruction: torch.Tensor   # (3, H, W) it through the tokenizer
    kept: torch.Tensor             # (3, H, W) the reconstruction with the rows to be sampled greyed out
    completions: torch.Tensor      # (N, 3, H, W)
    codes: torch.Tensor            # (N, h, w)
    keep_rows: int
    seed: int
    settings: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- optional files
def read_sampling_defaults(folder: str | Path) -> dict:
    """``DEFAULT_SAMPLING`` updated from the prior folder's ``sampling.json`` when there is one (checked)."""
    path = Path(folder) / SAMPLING_FILE
    defaults = dict(DEFAULT_SAMPLING)
    if not path.is_file():
        return defaults
    try:
        given = read_json(path)
    except ValueError as err:
        raise CheckpointError(f"'{path}' is not valid JSON: {err}") from None
    if not isinstance(given, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object such as {{\"temperature\": 1.0, \"top_k\": 100}}")
    unknown = sorted(set(given) - set(SAMPLING_KEYS))
    if unknown:
        raise CheckpointError(f"'{path}' has unknown keys {', '.join(unknown)}; allowed: {', '.join(SAMPLING_KEYS)}")
    checks = {"temperature": lambda v: v >= 0, "top_k": lambda v: v is None or (float(v).is_integer() and v >= 0),
              "top_p": lambda v: 0 < v <= 1, "guidance": lambda v: v >= 0}
    for key, ok in checks.items():
        if key in given:
            value = given[key]
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ((value is None and key == "top_k") or (number and ok(value))):
                raise CheckpointError(f"'{path}': invalid {key} {value!r} (temperature >= 0, integer top_k >= 0, "
                                      "0 < top_p <= 1, guidance >= 0)")
            defaults[key] = value
    if defaults["top_k"] is not None:
        defaults["top_k"] = int(defaults["top_k"]) or None  # 0 means no top-k filter
    if "note" in given:
        defaults["note"] = str(given["note"])
    return defaults


def _optional_file(name_or_path: str | Path, folder: Path, filename: str) -> Optional[Path]:
    """``folder/filename`` if it exists; for a Hub repo, fetched when it has one (None otherwise)."""
    if (folder / filename).is_file():
        return folder / filename
    if Path(name_or_path).exists():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(name_or_path), filename))
    except Exception:  # not in the repo, offline, ...: the file is optional
        return None


def _preprocess_kind(data: dict | None) -> str:
    dataset = (data or {}).get("dataset")
    return dataset if dataset in KINDS else "generic"


# ---------------------------------------------------------------------------- the pipeline
class Pipeline:
    """Generate, reconstruct and complete images with one tokenizer + prior pair (both in eval mode)."""

    def __init__(self, tokenizer: Any, prior: Any, spec: Any, *, data: dict | None = None,
                 preprocess: str | None = None, sampling: dict | None = None,
                 uncertainty_reference: dict | None = None):
        if preprocess is not None and preprocess not in KINDS:
            raise ValueError(f"unknown preprocessing '{preprocess}'; use one of {', '.join(KINDS)}")
        self.tokenizer, self.prior, self.spec = tokenizer, prior, spec
        self.data = data                       # the tokenizer's training_data.json, when known
        self.preprocess = preprocess or _preprocess_kind(data)
        self.sampling_defaults = {**DEFAULT_SAMPLING, **(sampling or {})}
        self.uncertainty_reference = uncertainty_reference

    @classmethod
    def from_pretrained(cls, tokenizer: str | Path, prior: str | Path, *, device: str | torch.device | None = None,
                        preprocess: str | None = None) -> "Pipeline":
        """Load a tokenizer folder (or Hub id) and the prior trained on it; refuses a pair that does not match.

        ``preprocess`` overrides the kind of preprocessing read from ``training_data.json``
        (``celeba``, ``lsun_church``, ``cifar10``, ``generic``), e.g. ``celeba`` for a tokenizer trained
        on an ``.npz`` of faces that were cropped and resized beforehand.
        """
        from stage1_tokenizer import TRAINING_DATA_FILE, UNCERTAINTY_REFERENCE_FILE, EdVAE, read_uncertainty_reference
        from stage2_prior.model import load_prior

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tok = EdVAE.from_pretrained(tokenizer).to(device).eval()
        model, spec = load_prior(prior, device=device, tokenizer=tok)  # TokenizerMismatchError for a wrong pair
        tok_folder = resolve_pretrained(tokenizer, ["config.json"])
        prior_folder = resolve_pretrained(prior, ["config.json"])
        data_file = _optional_file(tokenizer, tok_folder, TRAINING_DATA_FILE)
        data = read_json(data_file) if data_file else None
        sampling_file = _optional_file(prior, prior_folder, SAMPLING_FILE)
        sampling = read_sampling_defaults(sampling_file.parent) if sampling_file else None
        reference_file = _optional_file(tokenizer, tok_folder, UNCERTAINTY_REFERENCE_FILE)
        reference = read_uncertainty_reference(reference_file.parent) if reference_file else None
        return cls(tok, model, spec, data=data, preprocess=preprocess, sampling=sampling,
                   uncertainty_reference=reference)

    # ------------------------------------------------------------------ facts
    @property
    def image_size(self) -> int:
        return int(self.spec.tokenizer.image_size)

    @property
    def grid(self) -> tuple[int, int]:
        return self.spec.grid

    @property
    def num_classes(self) -> int:
        return int(self.spec.num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    def describe(self) -> dict:
        """The facts a UI or a log shows about this pair."""
        return {"image_size": self.image_size, "grid": list(self.grid), "codebook_size": self.spec.codebook_size,
                "num_classes": self.num_classes, "preprocess": self.preprocess,
                "prior_parameters": sum(p.numel() for p in self.prior.parameters()),
                "tokenizer_parameters": sum(p.numel() for p in self.tokenizer.parameters()),
                "sampling_defaults": dict(self.sampling_defaults),
                "uncertainty_reference": self.uncertainty_reference is not None}

    # ------------------------------------------------------------------ sampling settings
    def _settings(self, temperature: float | None, top_k: int | None, top_p: float | None, class_label: int | None,
                  guidance: float | None, seed: int | None) -> dict:
        d = self.sampling_defaults
        if class_label is not None and class_label < 0:
            class_label = None  # -1: unconditional (the "no class" branch the prior was trained with)
        if class_label is None and guidance not in (None, 1, 1.0):
            raise ValueError("guidance needs a class label (it steers the samples towards a class)")
        settings = {
            "temperature": float(d["temperature"] if temperature is None else temperature),
            "top_k": (d["top_k"] if top_k is None else int(top_k)) or None,
            "top_p": float(d["top_p"] if top_p is None else top_p),
            "class_label": None if class_label is None else int(class_label),
            "cfg_scale": 1.0 if class_label is None else float(d["guidance"] if guidance is None else guidance),
            "seed": secrets.randbelow(2**31) if seed is None or seed < 0 else int(seed),
        }
        return settings

    def prepare(self, image: Any) -> torch.Tensor:
        """An image (path, bytes, PIL, array) -> (3, S, S) in [0, 1], preprocessed as the tokenizer's training data."""
        return prepare_image(image, self.preprocess, self.image_size)

    # ------------------------------------------------------------------ the three jobs
    def generate(self, num: int, *, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, class_label: int | None = None,
                 guidance: float | None = None, batch_size: int = 16, use_cache: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> Samples:
        """Sample ``num`` images. Unset settings take the prior's recommended ones (``sampling.json``).

        ``seed`` None or negative draws a fresh one (returned in ``.seed``); the same seed and batch size
        give the same images. ``class_label`` (-1 / None: unconditional) and ``guidance`` (classifier-free
        guidance scale) apply to class-conditional priors; ``progress(done, total)`` reports tokens.
        """
        from stage2_prior.generation import decode_codes, generate_codes

        if not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be a positive integer, got {num!r}")
        s = self._settings(temperature, top_k, top_p, class_label, guidance, seed)
        codes = generate_codes(self.prior, self.spec, num, batch_size=batch_size, use_cache=use_cache,
                               progress=progress, **s)
        return Samples(decode_codes(self.tokenizer, codes), codes, s["seed"], {**s, "batch_size": batch_size})

    @torch.no_grad()
    def reconstruct(self, image: Any) -> Reconstruction:
        """What the tokenizer does to ``image``: reconstruction, token map, uncertainty map and their numbers."""
        from stage1_tokenizer import per_image_mse, percentile_of, psnr_from_mse

        x = self.prepare(image)
        out = self.tokenizer.analyze(x[None].to(self.device))
        mse = float(per_image_mse(out.reconstruction, x[None])[0])  # of the picture shown: clipped to [0, 1]
        unc = None if out.uncertainty is None else out.uncertainty[0].cpu()
        mean_u = None if unc is None else float(unc.double().mean())
        percentile = statement = None
        ref = self.uncertainty_reference
        if mean_u is not None and ref is not None and ref.get("statement"):
            percentile = percentile_of(mean_u, ref["mean_uncertainty_quantiles"])
            statement = ref["statement"]
        codes = out.codes[0].cpu()
        return Reconstruction(input=x, reconstruction=out.reconstruction[0].cpu(), codes=codes, uncertainty=unc,
                              mse=mse, psnr=psnr_from_mse(max(mse, 1e-10)), distinct_codes=int(codes.unique().numel()),
                              mean_uncertainty=mean_u, percentile=percentile, reference_statement=statement)

    def complete(self, image: Any, keep_rows: int | None = None, num: int = 4, *, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 class_label: int | None = None, guidance: float | None = None, batch_size: int = 16,
                 progress: Callable[[int, int], None] | None = None) -> Completion:
        """Keep the top ``keep_rows`` token rows of ``image`` (default: half) and sample the rest ``num`` times."""
        from stage2_prior.generation import complete_image

        h = self.grid[0]
        keep_rows = h // 2 if keep_rows is None else keep_rows
        if not isinstance(keep_rows, int) or not 0 <= keep_rows < h:
            raise ValueError(f"keep_rows must be an integer in [0, {h - 1}] (the token grid has {h} rows), "
                             f"got {keep_rows!r}")
        if not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be a positive integer, got {num!r}")
        s = self._settings(temperature, top_k, top_p, class_label, guidance, seed)
        x = self.prepare(image)
        out = complete_image(self.prior, self.spec, self.tokenizer, x, keep_rows, variations=num,
                             batch_size=batch_size, progress=progress, **s)
        return Completion(input=x, reconstruction=out["reconstruction"][0], kept=out["kept"][0],
                          completions=out["completions"], codes=out["codes"], keep_rows=keep_rows, seed=s["seed"],
                          settings={**s, "batch_size": batch_size, "keep_rows": keep_rows})

