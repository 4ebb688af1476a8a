"""vlmood: out-of-distribution detection and robust adaptation of CLIP-style vision-language models.

Score convention: every OOD score is an *ID score* (higher = more in-distribution).
"""

__version__ = "0.1.0"
