"""Images from users: read anything PIL can open, and bring it to the tokenizer's input the way training did.

``read_image`` turns a path, bytes, a PIL image or an array into uint8 RGB (H, W, 3), converting
what can be converted sensibly (grayscale, 16-bit, float, palette, RGBA over white, EXIF rotation,
the first frame of an animation) and refusing with ``ImageInputError`` what cannot (not an image, a
damaged file, a tiny or gigantic image). ``prepare_image`` applies the tokenizer's preprocessing:

- ``celeba``: the paper's centre crop (140 of the 178-pixel-wide aligned faces), scaled to the
  image's own size, then a bilinear resize: identical to training on 178 x 218 CelebA files;
- ``lsun_church``: a bilinear resize to a square (non-square images are squeezed, as the release does);
- ``cifar10`` / ``generic``: resize the shorter side, centre crop.

An image that already has the model's size is used as it is (it is taken as preprocessed).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edvae_common.io import to_rgb_array as _to_rgb_array  # the stage-1 folder loader converts files the same way

KINDS = ("celeba", "lsun_church", "cifar10", "generic")
MIN_SIDE = 16                 # smaller images carry too little to reconstruct: refused
MAX_PIXELS = 100_000_000      # 10,000 x 10,000; larger ones are refused before they are decoded
CELEBA_CROP_FRACTION = 140 / 178  # Appendix D.1: centre crop 140 of the 178 x 218 aligned images
FORMATS = "PNG, JPEG, WebP, BMP, GIF or TIFF"


class ImageInputError(ValueError):
    """An input image that cannot be used; the message says why and what to do instead."""


def _open(source: Any):
    """A PIL image from a path, bytes, a file object or a PIL image (lazily: nothing decoded yet)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"no image file at '{path}'")
        if path.stat().st_size == 0:
            raise ImageInputError(f"'{path.name}' is empty (0 bytes): upload a {FORMATS} image")
    name = f"'{Path(source).name}'" if isinstance(source, (str, Path)) else "the upload"
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: the size is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source)
    except Image.DecompressionBombError as err:
        raise ImageInputError(f"{name} is far too large ({err}); downscale it to at most "
                              f"{MAX_PIXELS // 1_000_000} megapixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageInputError(f"{name} is not an image this app can read ({type(err).__name__}); "
                              f"upload a {FORMATS} file") from None


def _from_pil(img) -> np.ndarray:
    from PIL import Image, ImageOps

    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageInputError(f"the image is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels); the limit is "
                              f"{MAX_PIXELS // 1_000_000} megapixels: downscale it first")
    if min(w, h) < MIN_SIDE:
        raise ImageInputError(f"the image is only {w} x {h} pixels; upload one at least {MIN_SIDE} pixels on "
                              "each side (any size above that is resized to the model's)")
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)  # the first frame of a GIF / WebP / APNG animation
        if img.format == "JPEG" and min(w, h) > 2048:
            img.draft("RGB", (w // 8, h // 8))  # decode a huge JPEG at reduced size (DCT scaling): fast, less memory
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        img = ImageOps.exif_transpose(img)  # phone photos: honour the camera's rotation
    except ImageInputError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageInputError(f"the image file is damaged or truncated ({err}); re-save it and try again") from None
    return _to_rgb_array(img)


def _from_array(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        array = array.numpy()
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ImageInputError(f"expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    h, w = a.shape[:2]
    if min(h, w) < MIN_SIDE or h * w > MAX_PIXELS:
        raise ImageInputError(f"the image is {w} x {h} pixels; it must be at least {MIN_SIDE} pixels on each side "
                              f"and at most {MAX_PIXELS // 1_000_000} megapixels")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = (a.astype(np.float64) / 65535 * 255 + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ImageInputError("a float image array must hold finite values in [0, 1]")
        a = (a * 255 + 0.5).astype(np.uint8)
    else:
        raise ImageInputError(f"unsupported image array dtype {a.dtype}: use uint8, uint16 or floats in [0, 1]")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[-1] == 4:  # over white, like an RGBA file
        alpha = a[..., 3:].astype(np.float64) / 255
        a = (a[..., :3] * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a)


def read_image(source: Any) -> np.ndarray:
    """A path, bytes, file object, PIL image, array or tensor -> uint8 RGB (H, W, 3); ImageInputError if unusable."""
    if source is None:
        raise ImageInputError("no image given: upload one or pick an example")
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _from_array(source)
    img = _open(source)
    try:
        return _from_pil(img)
    finally:
        if img is not source:
            img.close()


def prepare_image(source: Any, kind: str, size: int) -> torch.Tensor:
    """The tokenizer's input for ``source``: a float tensor (3, size, size) in [0, 1], preprocessed as ``kind``."""
    from PIL import Image
    from torchvision.transforms.functional import center_crop

    from stage1_tokenizer import Preprocess

    if kind not in KINDS:
        raise ValueError(f"unknown preprocessing '{kind}'; use one of {', '.join(KINDS)}")
    array = read_image(source)
    h, w = array.shape[:2]
    if (h, w) == (size, size):
        return Preprocess("generic", size)(array)  # already the model's size: used as is
    img = Image.fromarray(array)
    if min(h, w) >= 8 * size:  # very large: box-downscale first (integer factor), the resize below finishes
        img = img.reduce(min(h, w) // (4 * size))
    if kind == "celeba":  # the paper's crop 140 of 178, at this image's scale; then a plain bilinear resize
        crop = round(min(img.size) * CELEBA_CROP_FRACTION)
        img = center_crop(img, [crop, crop])
        kind = "generic"  # on a square image the generic resize is the celeba one
    return Preprocess(kind, size)(img)
