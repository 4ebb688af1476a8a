"""Adversarial manipulation of OOD inputs (PLP's feature-space attack): the optimisation
(:mod:`vlmood.attacks.feature`), the dataset it writes (:mod:`vlmood.attacks.run`) and the
evaluation of OOD scores on it (:mod:`vlmood.attacks.evaluate`)."""

from vlmood.attacks.feature import PRESETS, AttackConfig, attack_batch, objective, smoothness

__all__ = ["PRESETS", "AttackConfig", "attack_batch", "objective", "smoothness"]
