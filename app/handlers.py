"""What each tab (and API endpoint) does: check the request, call the pipeline, shape the answer.

Every handler runs inside ``user_errors``: bad input becomes a ``gr.Error`` with a plain message,
anything unexpected a short message (the traceback goes to the server log), so the UI never shows a
traceback and the server keeps serving. Parameter names are the API's (``/generate``, ...).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import functools
import html
import logging
import math
from typing import Any, Callable

import gradio as gr
import torch

from app import render
from app.registry import AppModel, Limits
from stage2_prior.inputs import ImageInputError

logger = logging.getLogger("app")


def user_errors(fn: Callable) -> Callable:
    """Turn every failure of ``fn`` into a gr.Error whose message says what to do.

    ``<`` and ``&`` are escaped: the UI renders the message as HTML, and it may quote a file name.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageInputError, ValueError) as err:  # bad requests: the message is for the user
            raise gr.Error(html.escape(str(err), quote=False), title="Cannot do that", print_exception=False) from None
        except torch.OutOfMemoryError:
            raise gr.Error("The server ran out of memory: ask for fewer images.", print_exception=False) from None
        except Exception:
            logger.exception("%s failed", fn.__name__)
            raise gr.Error("Something went wrong on the server (the details are in its log). Please try again.",
                           print_exception=False) from None
        finally:
            release_freed_memory()

    return wrapper


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc (Linux)
    except (OSError, AttributeError):
        return None  # macOS, Windows, musl: nothing to do


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Give the memory a request freed back to the system.

    Requests run in Gradio's worker threads, and glibc keeps what they free in per-thread heaps: without
    this the server's RSS crept up by 250-350 MiB in five minutes of load (benchmarks/bench_app.py, 8 and
    32 clients); run on the handlers alone, malloc_trim took that back to below the post-warm-up size.
    It takes a few milliseconds (tens after a large request).
    """
    if _TRIM is not None:
        _TRIM(0)


class Handlers:
    """The three jobs over the loaded models; one instance serves every user."""

    def __init__(self, models: dict[str, AppModel], limits: Limits, downloads: render.Downloads):
        self.models, self.limits, self.downloads = models, limits, downloads

    # ------------------------------------------------------------------ checks
    def pipeline(self, model: Any):
        if not any(m.available for m in self.models.values()):
            problems = "; ".join(f"{name}: {m.problem}" for name, m in self.models.items())
            raise ValueError(f"no model is loaded on this server ({problems or 'none configured in configs/app.yaml'})")
        if not isinstance(model, str) or model not in self.models:
            known = ", ".join(f"'{m}'" for m in self.models) or "none"
            raise ValueError(f"unknown model {model!r}; this server offers {known}")
        entry = self.models[model]
        if not entry.available:
            raise ValueError(f"model '{model}' is not available: {entry.problem}")
        return entry.pipeline

    @staticmethod
    def integer(name: str, value: Any, lo: int, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not float(value).is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        value = int(value)
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"{name} must be between {lo} and {hi}, got {value}" if hi is not None
                             else f"{name} must be at least {lo}, got {value}")
        return value

    @staticmethod
    def number(name: str, value: Any, lo: float, hi: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise ValueError(f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}")
        return float(value)

    def num_images(self, value: Any) -> int:
        return self.integer("num_images", value, 1, self.limits.max_images)

    @staticmethod
    def seed(value: Any) -> int | None:
        seed = Handlers.integer("seed", -1 if value is None else value, -1, 2**31 - 1)
        return None if seed == -1 else seed  # -1: a fresh random seed, reported back

    @staticmethod
    def upload(image: Any) -> Any:
        """The upload as the pipeline takes it: a file path (or the bytes of a data: URL)."""
        if image is None or image == "" or (isinstance(image, dict) and not (image.get("path") or image.get("url"))):
            raise ImageInputError("no image given: upload one (or pick an example) first")
        if isinstance(image, dict):
            if image.get("path"):
                return image["path"]
            url = image.get("url") or ""
            if url.startswith("data:") and "," in url:
                try:
                    return base64.b64decode(url.split(",", 1)[1], validate=False)
                except (binascii.Error, ValueError):
                    raise ImageInputError("the uploaded data URL is not valid base64") from None
            raise ImageInputError("send the image as a file upload (URLs are not fetched by this server)")
        return image  # a path, PIL image or array (in-process calls)

    @staticmethod
    def progress_reporter(progress: Any, what: str) -> Callable[[int, int], None]:
        state = {"last": -1.0}

        def report(done: int, total: int) -> None:
            fraction = done / max(total, 1)
            if fraction - state["last"] >= 0.02 or done == total:  # ~50 updates per request at most
                state["last"] = fraction
                progress(fraction, desc=f"{what}: {done}/{total} tokens")

        return report

    # ------------------------------------------------------------------ jobs
    def generate(self, model: str, num_images: int = 8, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, class_label: int = -1, guidance: float | None = None,
                 progress: gr.Progress = gr.Progress()) -> tuple[list, int, list[str]]:
        """Sample ``num_images`` images; returns (gallery, seed used, [PNG zip, codes .npz])."""
        pipe = self.pipeline(model)
        num = self.num_images(num_images)
        k = pipe.spec.codebook_size
        settings = dict(
            temperature=None if temperature is None else self.number("temperature", temperature, 0.0, 10.0),
            top_k=None if top_k is None else self.integer("top_k", top_k, 0, k),
            top_p=None if top_p is None else self.number("top_p", top_p, 1e-6, 1.0),
            seed=self.seed(seed))
        if not pipe.num_classes and class_label not in (None, -1):
            raise ValueError(f"model '{model}' is unconditional: leave class_label at -1")
        label = self.integer("class_label", -1 if class_label is None else class_label, -1, pipe.num_classes - 1)
        if label >= 0:
            settings.update(class_label=label,
                            guidance=None if guidance is None else self.number("guidance", guidance, 0.0, 20.0))
        samples = pipe.generate(num, batch_size=num, progress=self.progress_reporter(progress, "sampling"), **settings)
        arrays = samples.uint8()
        folder = self.downloads.folder()
        paths = self.downloads.pngs(folder, {f"sample_{i:03d}": a for i, a in enumerate(arrays)})
        gallery = [(path, f"seed {samples.seed} · {i + 1}/{num}") for i, path in enumerate(paths.values())]
        files = self.downloads.samples(folder, arrays, samples.codes, f"{model}_seed{samples.seed}",
                                       {"model": model, **samples.settings})
        return gallery, samples.seed, files

    def reconstruct(self, model: str, image: Any) -> tuple:
        """(input as the model sees it, reconstruction, token map, uncertainty heatmap, numbers, explanation)."""
        pipe = self.pipeline(model)
        rec = pipe.reconstruct(self.upload(image))
        size, k = pipe.image_size, pipe.spec.codebook_size
        cfg = pipe.tokenizer.config
        heat = None if rec.uncertainty is None else render.uncertainty_heatmap(rec.uncertainty, k, cfg.clamp_max, size)
        numbers = {"mse": round(rec.mse, 6), "psnr_db": round(rec.psnr, 2), "distinct_codes": rec.distinct_codes,
                   "codebook_size": k, "token_grid": list(pipe.grid), "mean_uncertainty": rec.mean_uncertainty,
                   "percentile_among_training_images": None if rec.percentile is None else round(rec.percentile, 1),
                   "reference": rec.reference_statement}
        shown = self.downloads.pngs(self.downloads.folder(), {
            "model_input": render.image(rec.input), "reconstruction": render.image(rec.reconstruction),
            "token_map": render.token_map(rec.codes, k, size), "uncertainty": heat})
        return (*shown.values(), numbers, uncertainty_text(rec, k, cfg.clamp_max))

    def complete(self, model: str, image: Any, keep_rows: int | None = None, num_images: int = 4, seed: int = 0,
                 progress: gr.Progress = gr.Progress()) -> tuple:
        """Keep the top ``keep_rows`` token rows of the image, sample the rest: (kept part, gallery, seed used)."""
        pipe = self.pipeline(model)
        h = pipe.grid[0]
        keep = h // 2 if keep_rows is None else self.integer("keep_rows", keep_rows, 0, h - 1)
        num = self.num_images(num_images)
        done = pipe.complete(self.upload(image), keep, num, seed=self.seed(seed), batch_size=num,
                             progress=self.progress_reporter(progress, "completing"))
        pictures = {"kept": render.image(done.kept)}
        pictures.update({f"completion_{i:03d}": render.image(c) for i, c in enumerate(done.completions)})
        shown = self.downloads.pngs(self.downloads.folder(), pictures)
        kept = shown.pop("kept")
        gallery = [(path, f"seed {done.seed} · {i + 1}/{num}") for i, path in enumerate(shown.values())]
        return kept, gallery, done.seed


def uncertainty_text(rec: Any, codebook_size: int, clamp_max: float) -> str:
    """The sentence beside the uncertainty numbers: what u is, where this image falls, and what that is worth."""
    if rec.mean_uncertainty is None:
        return "This tokenizer's quantizer has no evidential uncertainty (only EdVAE's has), so there is no heatmap."
    lo, _ = render.uncertainty_scale(codebook_size, clamp_max)
    text = (f"**Mean evidential uncertainty u = K/S: {rec.mean_uncertainty:.4g}** (heatmap: log10 u per token, "
            f"from {lo:.1f}, full evidence, dark, to 0, no evidence, bright). ")
    if rec.percentile is not None:
        text += (f"That is higher than **{rec.percentile:.0f}%** of the training images. "
                 f"{html.escape(rec.reference_statement, quote=False)}")
    else:
        text += ("No reference is available for this model (its tokenizer folder has no uncertainty_reference.json), "
                 "so the value cannot be placed among the training images.")
    return text
