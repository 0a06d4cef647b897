"""Per-dataset preprocessing to float (3, S, S) tensors in [0, 1] (Appendix D.1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import InterpolationMode

CELEBA_CROP = 140  # center crop of the 178 x 218 aligned images, before the resize to 64


class Preprocess:
    """Bring a PIL image or uint8 (H, W, 3) array to the target size the way the paper does.

    - ``celeba``: center crop 140, bilinear resize to ``size`` x ``size`` (64).
    - ``lsun_church``: bilinear resize to ``size`` x ``size`` (128), as the release does: non-square
      images are squeezed, not cropped.
    - ``cifar10``, ``generic``: bilinear resize of the shorter side to ``size``, then center crop
      (a plain resize for square images).
    Images that already have the target size are used as they are (already preprocessed).
    """

    def __init__(self, kind: str, size: int):
        self.kind, self.size = kind, size
        bilinear = dict(interpolation=InterpolationMode.BILINEAR, antialias=True)
        if kind in ("celeba", "lsun_church"):
            resize = [T.Resize((size, size), **bilinear)]
        else:
            resize = [T.Resize(size, **bilinear), T.CenterCrop(size)]
        crop = [T.CenterCrop(CELEBA_CROP)] if kind == "celeba" else []
        self.transform = T.Compose([T.ToImage(), *crop, *resize, T.ToDtype(torch.float32, scale=True)])

    def describe(self) -> str:
        """The preprocessing in words (recorded with FID statistics and token sets)."""
        s = self.size
        steps = {"celeba": f"center crop {CELEBA_CROP}, bilinear resize to {s}x{s}",
                 "lsun_church": f"bilinear resize to {s}x{s} (non-square images squeezed, not cropped)"}
        done = steps.get(self.kind, f"bilinear resize of the shorter side to {s}, center crop {s}x{s}")
        return f"{self.kind}: {done} (antialiased, on uint8); images already {s}x{s} are used as they are"

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            if image.shape[0] == self.size and image.shape[1] == self.size:
                return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
            from PIL import Image

            image = Image.fromarray(image)
        if getattr(image, "size", None) == (self.size, self.size):
            return T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)])(image)
        return self.transform(image)
