"""Datasets: sources (folder, image list, CSV), class names, templates, few-shot splits, benchmarks."""

from vlmood.data.base import CorruptImageError, DataError, ImageSample, ImageSource
from vlmood.data.sources import load_source, open_image

__all__ = ["CorruptImageError", "DataError", "ImageSample", "ImageSource", "load_source", "open_image"]
