"""Post-hoc OOD scores, registered by name. Every score returns ID scores (higher = more ID).

Importing this package imports every score module so that all scores register.
"""

from vlmood.scores import glmcm, knn, mahalanobis, neglabel, softmax  # noqa: F401  (registration)
from vlmood.scores.base import SCORES, Score, ScoreContext, create_score, list_scores, register_score

__all__ = ["SCORES", "Score", "ScoreContext", "create_score", "list_scores", "register_score"]
