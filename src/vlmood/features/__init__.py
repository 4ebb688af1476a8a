"""Feature extraction and the on-disk embedding cache."""

from vlmood.features.extract import FeatureSet, class_text_features, encode_texts, extract_features

__all__ = ["FeatureSet", "class_text_features", "encode_texts", "extract_features"]
