"""Losses of full fine-tuning on normalised features (methods.md 3.1 CMA, 8 FLYP).

All take L2-normalised features and the *exponentiated* logit scale ``s`` (a tensor when it is
learned, so its gradient flows; CLIP: ~100):

- :func:`clip_contrastive_loss` (FLYP): the CLIP loss on a batch of (image, class caption)
  pairs, ``L_CLIP = 1/2 [CE(L, arange(B)) + CE(L^T, arange(B))]`` with ``L = s f_i . t_j``.
  Texts are each image's own class caption, so a class that appears twice in a batch is a
  negative for its duplicate (FLYP's convention): plain symmetric InfoNCE.
- :func:`cma_regularizer` (CMA): ``(lambda / 2B) sum_k (L_img,k + L_txt,k)`` with
  ``L_img,k = -log sum_j exp(s f_k . t_j)`` and ``L_txt,k = -log sum_j exp(s f_j . t_k)``;
  :func:`cma_loss` = ``L_CLIP`` + that.
- :func:`linear_head_loss` (FT, LP-FT): cross-entropy of ``f @ W^T (+ b)``.

Under torchrun the contrastive terms gather the features of every rank with their gradients
(:func:`gather_with_grad`) and each rank computes the loss of its own rows against the whole
global batch (its "local loss"). The engine's DDP then averages the ranks' gradients, so loss
and gradients equal the single-process ones at the same global batch (``B = W x b``): the mean
of the ranks' local losses is the mean over all ``B`` rows, and the gather's backward returns
to each rank the gradient of every rank's loss with respect to its own rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmood import distributed as D


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(all ranks' rows [W*b, ...] in rank order, offset of this rank's rows)``.

    The gather is differentiable (``torch.distributed.nn.functional.all_gather``: its backward
    sums the gradients every rank computed for a row and returns them to the row's rank). Every
    rank must pass the same shape (the engine gives equal per-rank batches). Without a process
    group (or world size 1): ``(x, 0)``."""
    if not (D.is_initialized() and D.world_size() > 1):
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    return torch.cat(parts, dim=0), D.rank() * x.shape[0]


def _contrastive_logits(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float, gather: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits_per_image [b, B], logits_per_text [b, B], targets [b])`` of this rank's rows
    against the (gathered) global batch."""
    if image.shape != text.shape or image.dim() != 2:
        raise ValueError(
            f"contrastive loss needs paired features of one shape [B, D]; got {tuple(image.shape)} "
            f"and {tuple(text.shape)}"
        )
    if gather:
        all_image, offset = gather_with_grad(image)
        all_text, _ = gather_with_grad(text)
    else:
        all_image, all_text, offset = image, text, 0
    per_image = logit_scale * image @ all_text.T
    per_text = logit_scale * text @ all_image.T
    targets = torch.arange(image.shape[0], device=image.device) + offset
    return per_image, per_text, targets


def clip_contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float, gather: bool = True
) -> torch.Tensor:
    """FLYP's loss (see the module docstring): symmetric InfoNCE over the batch, row ``i`` of
    ``text`` being the caption of image ``i``; a repeated class is still a negative. Under
    torchrun (``gather=True``) the global batch of every rank is the contrast set."""
    per_image, per_text, y = _contrastive_logits(image, text, logit_scale, gather)
    return 0.5 * (F.cross_entropy(per_image, y) + F.cross_entropy(per_text, y))


def _neg_lse_terms(per_image: torch.Tensor, per_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_k L_img,k, mean_k L_txt,k) over this rank's rows: ``-logsumexp`` of each image's
    scaled similarities to every text, and of each text's to every image."""
    return -torch.logsumexp(per_image, dim=1).mean(), -torch.logsumexp(per_text, dim=1).mean()


def cma_regularizer(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float,
    lam: float,
    gather: bool = True,
) -> torch.Tensor:
    """CMA's regulariser ``(lam / 2B) sum_k (L_img,k + L_txt,k)`` (methods.md 3.1; negative
    log-sum-exp of the scaled similarities, so minimising it raises every image-text similarity).
    Equal to ``lam * (mean L_img + mean L_txt) / 2`` as the reference code computes it."""
    per_image, per_text, _ = _contrastive_logits(image, text, logit_scale, gather)
    img, txt = _neg_lse_terms(per_image, per_text)
    return 0.5 * lam * (img + txt)


def cma_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float,
    lam: float,
    gather: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L_CLIP + regulariser, L_CLIP, regulariser)`` from one set of logits (methods.md 3.1).
    ``lam = 0`` gives exactly :func:`clip_contrastive_loss`."""
    per_image, per_text, y = _contrastive_logits(image, text, logit_scale, gather)
    clip = 0.5 * (F.cross_entropy(per_image, y) + F.cross_entropy(per_text, y))
    if lam == 0:
        return clip, clip, torch.zeros_like(clip)
    img, txt = _neg_lse_terms(per_image, per_text)
    reg = 0.5 * lam * (img + txt)
    return clip + reg, clip, reg


def linear_head_loss(
    features: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the linear head's logits ``features @ weight.T (+ bias)`` (FT: ``weight``
    starts as the zero-shot class text features times the model's logit scale, so the logits
    start as CLIP's zero-shot logits)."""
    return F.cross_entropy(F.linear(features, weight, bias), labels)
