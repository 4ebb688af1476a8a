"""Learned prompt context (CoOp family) over an open_clip text tower, and class-chunked encoding.

A prompt is ``[SOS][ctx_1 .. ctx_M][CLASS tokens][.][EOS]`` (class-token position ``end``);
``front`` puts the class tokens right after SOS, ``middle`` between the two halves of the
context (CoOp ``CLASS_TOKEN_POSITION``). The text feature is ``ln_final`` at the end-of-text
token, ``@ text_projection``, L2-normalised.

**Hugging Face text towers** (open_clip ``HFTextEncoder``, e.g. BERT in ``vlmood-tiny``): the
prompt is ``[CLS][ctx_1 .. ctx_M][CLASS tokens][.][SEP][PAD]..``; the context replaces the word
embeddings of M placeholder tokens, the encoder gets ``inputs_embeds`` (adding position and
token-type embeddings itself) with the non-padding attention mask, then the tower's masked pooler
and projection, L2-normalised (:func:`encode_embedded_hf`). Word initialisation reproduces
``OpenClipVLM.encode_text`` of the same sentence.

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


_HF_POOLERS = ("MeanPooler", "MaxPooler", "ClsPooler")  # masked poolers: padding never counts


def _hf_tower(model) -> nn.Module | None:
    """The text tower when it is an open_clip ``HFTextEncoder`` (a Hugging Face encoder fed
    ``inputs_embeds`` + ``attention_mask``, then ``pooler(out, mask)`` and ``proj``), else None."""
    inner = getattr(model, "model", None)
    tower = getattr(inner, "text", None) if inner is not None else None
    if tower is None or hasattr(tower, "token_embedding"):
        return None
    ok = all(hasattr(tower, a) for a in ("transformer", "pooler", "proj", "config"))
    ok = ok and getattr(tower.config, "pad_token_id", None) is not None
    ok = ok and hasattr(getattr(tower, "transformer", None), "get_input_embeddings")
    return tower if ok else None


def _token_embedding(model) -> nn.Embedding:
    """The word-embedding table of the text tower (open_clip ``token_embedding`` or the Hugging
    Face encoder's input embeddings)."""
    tower = _hf_tower(model)
    if tower is not None:
        return tower.transformer.get_input_embeddings()
    return model.token_embedding  # raises NotImplementedError for unsupported towers


def _require_prompt_model(model) -> None:
    if _hf_tower(model) is not None:
        if type(_hf_tower(model).pooler).__name__ not in _HF_POOLERS:
            raise NotImplementedError(
                f"prompt learning on Hugging Face text towers supports the poolers {', '.join(_HF_POOLERS)} "
                f"(got {type(_hf_tower(model).pooler).__name__})"
            )
        return
    if not hasattr(model, "token_embedding") or not hasattr(model, "encode_text_embeddings"):
        raise NotImplementedError(
            f"prompt learning needs an open_clip model with token embeddings (got {type(model).__name__})"
        )
    _ = model.token_embedding  # raises NotImplementedError for other text towers


def _eot_index(model, tokens: torch.Tensor) -> torch.Tensor:
    """Position of the end-of-text token: [SEP] (the last non-padding token) for Hugging Face
    towers, the pooled end-of-text token for open_clip towers."""
    tower = _hf_tower(model)
    if tower is not None:
        nonpad = tokens != tower.config.pad_token_id
        pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        return torch.where(nonpad, pos, torch.zeros_like(pos)).max(dim=1).values
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
        emb = _token_embedding(model)
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
        emb = _token_embedding(model)
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
    end-of-text position (results unchanged); with a Hugging Face tower (masked pooler) see
    :func:`encode_embedded_hf`; otherwise ``model.encode_text_embeddings``."""
    if _hf_tower(model) is not None:
        return encode_embedded_hf(model, x, tokens, truncate)
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


def encode_embedded_hf(model, x: torch.Tensor, tokens: torch.Tensor, truncate: bool = True) -> torch.Tensor:
    """Normalised text features [m, D] of a Hugging Face text tower from word embeddings ``x``
    [m, L, W]: the encoder gets ``inputs_embeds`` (it adds position and token-type embeddings
    itself) and the attention mask of the non-padding ``tokens``, then the tower's masked pooler
    and projection, as ``HFTextEncoder.forward`` does with token ids. Padding is masked out of
    attention and pooling, so the all-padding columns are dropped first (results unchanged)."""
    tower = _hf_tower(model)
    tokens = tokens.to(x.device)
    mask = (tokens != tower.config.pad_token_id).long()
    if truncate:
        n = int(_eot_index(model, tokens).max()) + 1
        x, mask = x[:, :n], mask[:, :n]
    dtype = next(tower.transformer.parameters()).dtype
    out = tower.transformer(inputs_embeds=x.to(dtype), attention_mask=mask)
    h = tower.proj(tower.pooler(out, mask))
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
