"""Datasets for stage 1: the paper's named datasets and generic image sources."""

from .preprocess import Preprocess
from .sources import DataNotFoundError, build_dataset, held_out_split

__all__ = ["DataNotFoundError", "Preprocess", "build_dataset", "held_out_split"]
