"""Defaults shared by the CLI, the Python API and the demo (import-light: no torch)."""

DEFAULT_MODEL = "vlmood-small"  # the shipped offline CLIP on pretrained towers (MODEL_CARD.md)
LOCKED_VIEWS = ("clean", "lineart", "bridge")  # vlmood pretrain --image-tower: views cached per image
