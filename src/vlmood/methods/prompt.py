"""Learned prompt context (CoOp family) over an open_clip text tower, and class-chunked encoding.

A prompt is ``[SOS][ctx_1 .. ctx_M][CLASS tokens][.][EOS]`` (class-token position ``end``);
``front`` puts the class tokens right after SOS, ``middle`` between the two halves of the
context (CoOp ``CLASS_TOKEN_POSITION``). The text feature is ``ln_final`` at the end-of-text
token, ``@ text_projection``, L2-normalised.

**Memory with many classes.** :func:`encode_prompts` runs the text tower over the prompts in
chunks; each chunk is wrapped in ``torch.utils.checkpoint`` so that only the chunk outputs
``[m, D]`` are kept for the backward pass and the activations of one chunk at a time are
recomputed. The loss and gradients are those of the plain, unchunked computation (a test checks
this); peak memory is bounded by the chunk size instead of the number of classes. Prompts are
also cut after the last end-of-text token of each chunk (the causal mask makes later positions
irrelevant to the pooled token), as ``OpenClipVLM.encode_text`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

POSITIONS = ("end", "middle", "front")


def _require_prompt_model(model) -> None:
    if not hasattr(model, "token_embedding") or not hasattr(model, "encode_text_embeddings"):
        raise NotImplementedError(
            f"prompt learning needs an open_clip model with token embeddings (got {type(model).__name__})"
        )
    _ = model.token_embedding  # raises NotImplementedError for HF text towers


def _eot_index(model, tokens: torch.Tensor) -> torch.Tensor:
    pool = getattr(model, "_pool_index", None)
    return pool(tokens) if pool is not None else tokens.argmax(dim=-1)


class PromptLearner(nn.Module):
    """Learnable context vectors (shared ``[M, W]`` or class-specific ``[K, M, W]``) spliced into
    the token embeddings of each class prompt. Only ``ctx`` is a parameter; prompt token ids are
    a buffer and their (frozen) embeddings are looked up per chunk."""

    def __init__(
        self,
        model,
        classnames: Sequence[str],
        n_ctx: int = 16,
        ctx_init: str | None = None,
        csc: bool = False,
        position: str = "end",
        init_std: float = 0.02,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _require_prompt_model(model)
        if position not in POSITIONS:
            raise ValueError(f"class token position {position!r}; choose from {', '.join(POSITIONS)}")
        if not classnames:
            raise ValueError("no class names given")
        self.model = [model]  # not a submodule: the base model stays out of state dicts
        self.classnames = [str(c) for c in classnames]
        self.position = position
        self.csc = bool(csc)
        emb = model.token_embedding
        width = emb.weight.shape[1]
        k = len(self.classnames)
        if ctx_init:
            init_tokens = model.tokenize([ctx_init.replace("_", " ")])[0]
            n_ctx = int(_eot_index(model, init_tokens[None])[0]) - 1
            if n_ctx < 1:
                raise ValueError(f"ctx_init {ctx_init!r} has no tokens")
            with torch.no_grad():
                init = emb.weight[init_tokens[1 : 1 + n_ctx].to(emb.weight.device)].detach().float().cpu()
            ctx = init.unsqueeze(0).repeat(k, 1, 1) if self.csc else init.clone()
        else:
            if n_ctx < 1:
                raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
            g = torch.Generator().manual_seed(seed)
            shape = (k, n_ctx, width) if self.csc else (n_ctx, width)
            ctx = torch.randn(shape, generator=g) * init_std
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx.to(emb.weight.device))
        placeholder = " ".join(["X"] * n_ctx)
        names = [c.replace("_", " ") for c in self.classnames]
        tokens = model.tokenize([f"{placeholder} {c}." for c in names])
        eot = _eot_index(model, tokens)
        name_tokens = model.tokenize(names)
        name_lens = _eot_index(model, name_tokens) - 1
        too_long = [self.classnames[i] for i in range(k) if int(eot[i]) != 1 + n_ctx + int(name_lens[i]) + 1]
        if too_long:
            raise ValueError(
                f"{len(too_long)} class prompts do not fit the context length {tokens.shape[1]} with {n_ctx} "
                f"context tokens, e.g. {too_long[0]!r}; shorten the class names or lower n_ctx"
            )
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("name_lens", name_lens, persistent=False)
        if position != "end":
            self.register_buffer("perm", self._permutation(tokens.shape[1], name_lens), persistent=False)
        else:
            self.perm = None

    def _permutation(self, length: int, name_lens: torch.Tensor) -> torch.Tensor:
        """Per class, result position j <- source position perm[k, j] (source = the end layout)."""
        m = self.n_ctx
        rows = []
        for nl in name_lens.tolist():
            ctx = list(range(1, 1 + m))
            cls = list(range(1 + m, 1 + m + nl))
            rest = list(range(1 + m + nl, length))
            if self.position == "front":
                order = [0, *cls, *ctx, *rest]
            else:  # middle
                h = m // 2
                order = [0, *ctx[:h], *cls, *ctx[h:], *rest]
            rows.append(order)
        return torch.tensor(rows, dtype=torch.long)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def embed(
        self, idx: torch.Tensor, bias: torch.Tensor | None = None, ctx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings ``[m, L, W]`` and token ids ``[m, L]`` for class indices ``idx``.

        ``bias`` ``[m, W]`` is added to every context token of the matching prompt (CoCoOp)."""
        model = self.model[0]
        emb = model.token_embedding
        idx = idx.to(self.tokens.device)
        tokens = self.tokens[idx]
        with torch.no_grad():
            e = emb(tokens.to(emb.weight.device))
        c = self.ctx if ctx is None else ctx
        c = c[idx] if self.csc else c.unsqueeze(0).expand(len(idx), -1, -1)
        if bias is not None:
            c = c + bias.unsqueeze(1)
        x = torch.cat([e[:, :1], c.to(e.dtype), e[:, 1 + self.n_ctx :]], dim=1)
        if self.perm is not None:
            p = self.perm[idx]
            x = x.gather(1, p.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            tokens = tokens.gather(1, p)
        return x, tokens

    def forward(self, chunk: int = 0) -> torch.Tensor:
        """Text features of every class (see :meth:`text_features`); the engine calls this through
        its (possibly DDP-wrapped) module."""
        return self.text_features(chunk)

    def text_features(self, chunk: int = 0, use_checkpoint: bool = True) -> torch.Tensor:
        """Normalised text features ``[K, D]`` of every class with the current context."""
        idx = torch.arange(self.n_classes)
        return encode_prompts(self.model[0], lambda i: self.embed(i), idx, chunk, use_checkpoint)


def encode_embedded(model, x: torch.Tensor, tokens: torch.Tensor, truncate: bool = True) -> torch.Tensor:
    """Normalised text features [m, D] from prompt embeddings ``x`` [m, L, W] (grad flows to ``x``).

    With a causal text tower pooled at the end-of-text token the prompts are cut after the last
    end-of-text position (results unchanged); otherwise ``model.encode_text_embeddings``."""
    if not (truncate and getattr(model, "_truncatable_text", False)):
        return model.encode_text_embeddings(x, tokens)
    tower = model.text_tower
    tokens = tokens.to(x.device)
    pool = _eot_index(model, tokens)
    n = int(pool.max()) + 1
    cast = tower.transformer.get_cast_dtype()
    h = x[:, :n].to(cast) + tower.positional_embedding[:n].to(cast)
    h = tower.transformer(h, attn_mask=tower.attn_mask[:n, :n])
    h = tower.ln_final(h)
    h = h[torch.arange(h.shape[0], device=h.device), pool]
    proj = tower.text_projection
    if proj is not None:
        h = proj(h) if isinstance(proj, nn.Linear) else h @ proj
    return F.normalize(h if h.dtype == torch.float64 else h.float(), dim=-1)


def encode_prompts(
    model,
    build: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    idx: torch.Tensor,
    chunk: int = 0,
    use_checkpoint: bool = True,
    truncate: bool = True,
) -> torch.Tensor:
    """Encode prompts ``build(idx_chunk) -> (embeddings, tokens)`` for all ``idx`` in chunks.

    ``chunk`` <= 0 or >= len(idx): one pass (the plain computation). Otherwise chunks of
    ``chunk`` prompts, each under activation checkpointing when gradients are enabled, so
    memory holds one chunk's activations at a time; the result and its gradients equal the
    plain computation's.
    """
    n = len(idx)
    if chunk <= 0 or chunk >= n:
        x, t = build(idx)
        return encode_embedded(model, x, t, truncate)

    def run(i: torch.Tensor) -> torch.Tensor:
        x, t = build(i)
        return encode_embedded(model, x, t, truncate)

    outs = []
    for s in range(0, n, chunk):
        i = idx[s : s + chunk]
        if use_checkpoint and torch.is_grad_enabled():
            outs.append(checkpoint(run, i, use_reentrant=False))
        else:
            outs.append(run(i))
    return torch.cat(outs, dim=0)


def auto_chunk(n_prompts: int, chunk: int | None) -> int:
    """``chunk`` if given (0 = never chunk); ``None``: no chunking up to 256 prompts, else 256."""
    if chunk is not None:
        return int(chunk)
    return 0 if n_prompts <= 256 else 256


class EvalModeModule(nn.Module):
    """Base for wrappers holding frozen parts of a base model: ``train()`` leaves those in eval
    mode (dropout off, BatchNorm running statistics frozen) and only switches the learned parts."""

    frozen_children: tuple[str, ...] = ()

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen_children:
            child = getattr(self, name, None)
            if isinstance(child, nn.Module):
                child.eval()
        return self
