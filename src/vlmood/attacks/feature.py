"""PLP's feature-space OOD manipulation (methods.md §6.5): make an OOD image look ID to the image
encoder.

For an OOD image ``y`` and a seeded random ID training image ``x`` a pixel perturbation ``delta``
(in [0, 1] pixel space, applied before the model's normalisation) minimises

    -cos(phi(y + delta), phi(x)) + smooth * (mean(d_y delta ** 2) + mean(d_x delta ** 2))

with Adam (lr 1e-3, 250 steps), ``delta`` started at N(0, 1) x ``init_std`` (1e-3) and projected
after every step so that ``y + delta`` stays in [0, 1]. ``phi`` is the pre-projection image
feature (``preproj``; ``image``, the projected embedding, may be chosen instead). ``smooth`` 5e3
gives "smooth" perturbations, 0 "patchy" ones. The image gradients follow torchmetrics'
``image_gradients``: forward differences with the last row/column zero, averaged over the whole
``[C, H, W]`` image. ``epsilon`` adds an l-infinity budget ``|delta| <= epsilon``; the paper has
none (its default here is None, as in the paper).

Each sample's objective is its own: the batch loss is the *sum* of per-sample objectives (the
notebook averages over the batch; Adam is invariant to that scale up to its eps), and every
sample's start is drawn from a generator seeded by (seed, sample position). A sample's result
therefore does not depend on the batch it ran in, which makes batches resumable and shardable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlmood.errors import UsageError

#: lambda_s of PLP's two kinds of perturbation
PRESETS: dict[str, float] = {"smooth": 5e3, "patchy": 0.0}
FEATURES = ("preproj", "image")


@dataclass(frozen=True)
class AttackConfig:
    """How the perturbation is optimised (PLP's settings by default; see the module docstring)."""

    steps: int = 250
    lr: float = 1e-3
    smooth: float = PRESETS["smooth"]
    init_std: float = 1e-3
    epsilon: float | None = None
    batch_size: int = 16
    seed: int = 0
    feature: str = "preproj"

    def __post_init__(self) -> None:
        checks = [
            (
                int(self.steps) == self.steps and self.steps >= 1,
                f"steps must be a whole number >= 1, got {self.steps}",
            ),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.smooth >= 0, f"smooth (lambda_s) must be >= 0, got {self.smooth}"),
            (self.init_std >= 0, f"init_std must be >= 0, got {self.init_std}"),
            (
                self.epsilon is None or 0 < self.epsilon <= 1,
                f"epsilon must be in (0, 1] (an l-infinity budget in [0, 1] pixel units), got {self.epsilon}; "
                "leave it unset for PLP's unbounded attack",
            ),
            (
                int(self.batch_size) == self.batch_size and self.batch_size >= 1,
                f"batch_size must be >= 1, got {self.batch_size}",
            ),
            (
                int(self.seed) == self.seed and self.seed >= 0,
                f"seed must be a whole number >= 0, got {self.seed}",
            ),
            (self.feature in FEATURES, f"feature must be one of {', '.join(FEATURES)}, got {self.feature!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def kind(self) -> str:
        """'smooth', 'patchy' or 'custom' by lambda_s."""
        for name, lam in PRESETS.items():
            if self.smooth == lam:
                return name
        return "custom"


def image_gradients(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dx) of ``[B, C, H, W]``: forward differences, the last row (dy) / column (dx) zero
    (torchmetrics' ``image_gradients`` convention)."""
    dy = torch.zeros_like(img)
    dx = torch.zeros_like(img)
    dy[..., :-1, :] = img[..., 1:, :] - img[..., :-1, :]
    dx[..., :, :-1] = img[..., :, 1:] - img[..., :, :-1]
    return dy, dx


def smoothness(delta: torch.Tensor) -> torch.Tensor:
    """Per sample: mean(dy ** 2) + mean(dx ** 2) over [C, H, W] -> [B]."""
    dy, dx = image_gradients(delta)
    return dy.pow(2).flatten(1).mean(1) + dx.pow(2).flatten(1).mean(1)


def objective(feats: torch.Tensor, target: torch.Tensor, delta: torch.Tensor, smooth: float) -> torch.Tensor:
    """Per-sample objective -cos(feats, target) + smooth x smoothness(delta) -> [B]."""
    cos = F.cosine_similarity(feats.float(), target.float(), dim=-1)
    if smooth == 0:
        return -cos
    return -cos + smooth * smoothness(delta)


def project(delta: torch.Tensor, y: torch.Tensor, epsilon: float | None) -> torch.Tensor:
    """``delta`` within the budget (|delta| <= epsilon) and with y + delta in [0, 1]. Clamping
    y + delta only moves delta towards 0, so the budget still holds after it."""
    if epsilon is not None:
        delta = delta.clamp(-epsilon, epsilon)
    return (y + delta).clamp(0.0, 1.0) - y


def init_delta(positions: list[int], shape: tuple[int, ...], cfg: AttackConfig) -> torch.Tensor:
    """N(0, 1) x init_std per sample, each from a generator seeded by (seed, position): the same
    start whatever batch a sample runs in."""
    out = torch.empty((len(positions), *shape))
    for i, pos in enumerate(positions):
        g = torch.Generator().manual_seed((int(cfg.seed) * 1_000_003 + int(pos)) % (2**63))
        out[i] = torch.randn(shape, generator=g) * cfg.init_std
    return out


Encoder = Callable[[torch.Tensor], torch.Tensor]


def attack_batch(
    encode: Encoder,
    y: torch.Tensor,
    target: torch.Tensor,
    positions: list[int],
    cfg: AttackConfig,
) -> torch.Tensor:
    """Optimise the perturbations of one batch; returns ``delta`` (same shape as ``y``, detached).

    ``encode``: [0, 1] pixels [B, 3, H, W] -> features [B, W] (normalisation inside, gradients
    flowing). ``y``: the OOD pixels. ``target``: phi of the ID targets [B, W] (no gradient).
    """
    delta0 = init_delta(positions, tuple(y.shape[1:]), cfg).to(y.device, y.dtype)
    delta = project(delta0, y, cfg.epsilon).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    target = target.detach()
    for _ in range(int(cfg.steps)):
        opt.zero_grad(set_to_none=True)
        loss = objective(encode(y + delta), target, delta, cfg.smooth).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.copy_(project(delta, y, cfg.epsilon))
    return delta.detach()
