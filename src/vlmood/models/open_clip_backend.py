"""open_clip backend: :class:`OpenClipVLM` wraps an open_clip ``CLIP`` / ``CustomTextCLIP``.

Image features of every kind come from **one** forward pass of the visual tower, run here block by
block so that the GL-MCM local features can be taken from the input of the last block:

- ``"image"``: the model's own global embedding (pooled, ``ln_post``, ``@ proj``), L2-normalised.
  Equal to ``F.normalize(model.encode_image(x))``.
- ``"preproj"``: the pooled feature before ``visual.proj`` (after ``ln_post``), un-normalised.
- ``"patch"``: GL-MCM local features (AtsuMiyai/GL-MCM ``clip/model.py``): with ``x`` the input of
  the last residual block, ``x' = x + out_proj(v_proj(ln_1(x)))`` (the attention replaced by its
  value path, i.e. every token attends only to itself), ``x' = x' + mlp(ln_2(x'))``, then
  ``ln_post`` and ``@ proj`` on every patch token (the class token excluded), L2-normalised.

Only open_clip ``VisionTransformer`` towers support ``"preproj"`` and ``"patch"``; a
``ModifiedResNet`` (RN50 ...) tower ends in an attention pool that already projects, so it has no
un-projected pooled feature and no value-path tokens: it supports ``"image"`` only. timm towers
likewise support ``"image"`` only.

Precision: weights stay float32; ``bf16`` / ``fp16`` run the forward under autocast on CUDA (on the
CPU autocast is off and the forward runs in float32). Every returned tensor is float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlmood.models.base import FEATURE_KINDS, VLM, ModelIdentity

#: prompt lists at least this long through a Hugging Face text tower use the pooled-output memo
POOLED_MEMO_MIN = 20_000
#: (text-transformer weights, precision, device, tokens) -> pooled outputs [N, W] of the last large call
_POOLED_MEMO: dict[str, torch.Tensor] = {}


def _memo_key(tower: nn.Module, tokens: torch.Tensor, precision: str, device: torch.device) -> str:
    """What decides the pooled outputs: every transformer and pooler tensor, the precision, the
    device type and the tokens (hashing ~90 MB of MiniLM weights takes ~0.1 s, against minutes of
    encoding)."""
    import hashlib

    h = hashlib.blake2b(digest_size=20)
    h.update(
        f"{type(tower.transformer).__name__}|{type(tower.pooler).__name__}|{precision}|{device.type}".encode()
    )
    for module in (tower.transformer, tower.pooler):
        for name, t in module.state_dict().items():
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    h.update(tokens.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _param_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    p = next(module.parameters(), None)
    return p.dtype if p is not None else default


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """Validate requested feature kinds; returns them as a tuple without duplicates."""
    if isinstance(kinds, str):
        kinds = (kinds,)
    out: list[str] = []
    for k in kinds:
        if k not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {k!r}; valid kinds: {', '.join(FEATURE_KINDS)}")
        if k not in out:
            out.append(k)
    if not out:
        raise ValueError(f"no feature kind requested; valid kinds: {', '.join(FEATURE_KINDS)}")
    return tuple(out)


def _value_path_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block with its attention replaced by the value path (GL-MCM local features).

    ``x`` is the block input in either layout (all operations here are token-wise).
    """
    from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock

    h = block.ln_1(x)
    attn = block.attn
    if isinstance(block, ResidualAttentionBlock) and isinstance(attn, nn.MultiheadAttention):
        if attn._qkv_same_embed_dim:
            e = attn.embed_dim
            w_v = attn.in_proj_weight[2 * e : 3 * e]
        else:
            w_v = attn.v_proj_weight
        b_v = attn.in_proj_bias[2 * attn.embed_dim :] if attn.in_proj_bias is not None else None
        v = F.linear(h, w_v, b_v)
        v = attn.out_proj(v)
    elif isinstance(block, CustomResidualAttentionBlock):
        # open_clip's own Attention: qkv in one matrix, optional per-head scale and inner norm
        dim = attn.out_proj.in_features
        b_v = attn.in_proj_bias[2 * dim :] if attn.in_proj_bias is not None else None
        v = F.linear(h, attn.in_proj_weight[2 * dim :], b_v)
        if attn.head_scale is not None:
            shape = v.shape
            v = v.reshape(*shape[:-1], attn.num_heads, -1) * attn.head_scale.view(attn.num_heads, 1)
            v = v.reshape(shape)
        v = attn.ln_inner(v)
        v = attn.out_proj(v)
        v = block.ln_attn(v)
    else:
        raise NotImplementedError(
            f"GL-MCM patch features: unsupported residual block type {type(block).__name__} "
            "(supported: open_clip ResidualAttentionBlock, CustomResidualAttentionBlock)"
        )
    x = x + block.ls_1(v)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x


def accelerate_tokenizer(tokenizer: Any) -> Any:
    """Let open_clip's ``SimpleTokenizer`` skip ftfy for plain printable ASCII text without ``&``.

    ``ftfy.fix_text`` and ``html.unescape`` are the identity on such text (ftfy repairs mojibake,
    non-ASCII look-alikes, control characters and HTML entities), yet ftfy costs over half of the
    tokenizer's time on prompt lists; tokens are unchanged (checked in the tests). Any other text
    takes the original path. Returns the tokenizer (modified in place when applicable).
    """
    try:
        from open_clip import tokenizer as oc_tok
    except ImportError:  # pragma: no cover
        return tokenizer
    slow = getattr(tokenizer, "clean_fn", None)
    lower_fn = getattr(oc_tok, "_clean_lower", None)
    ws_fn = getattr(oc_tok, "_clean_whitespace", None)
    if not isinstance(tokenizer, oc_tok.SimpleTokenizer) or slow is None or slow not in (lower_fn, ws_fn):
        return tokenizer
    lower = slow is lower_fn

    def clean(text: str) -> str:
        if text.isascii() and text.isprintable() and "&" not in text:
            text = " ".join(text.split())
            return text.lower() if lower else text
        return slow(text)

    tokenizer.clean_fn = clean
    return tokenizer


class OpenClipVLM(VLM):
    """Adapter over an open_clip ``CLIP`` or ``CustomTextCLIP`` model (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        preprocess: Callable[[Any], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        identity: ModelIdentity,
        device: str | torch.device = "cpu",
        model_cfg: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self._preprocess = preprocess
        self._tokenizer = accelerate_tokenizer(tokenizer)
        self.identity = identity
        self.model_cfg = dict(model_cfg or {})
        self.device = torch.device(device)
        self.model.to(self.device)
        self.model.eval()

    # ------------------------------------------------------------------ basic properties
    @property
    def torch_module(self) -> nn.Module:
        return self.model

    @property
    def embed_dim(self) -> int:
        if "embed_dim" in self.model_cfg:
            return int(self.model_cfg["embed_dim"])
        return int(self.model.visual.output_dim)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().float().item())

    @property
    def preprocess(self) -> Callable[[Any], torch.Tensor]:
        return self._preprocess

    @property
    def context_length(self) -> int:
        return int(getattr(self._tokenizer, "context_length", self.model.context_length))

    @property
    def is_vit(self) -> bool:
        from open_clip.transformer import VisionTransformer

        return isinstance(self.model.visual, VisionTransformer)

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [N, context_length] (long, on the CPU), open_clip's tokenizer for this model."""
        if isinstance(texts, str):
            texts = [texts]
        return self._tokenizer(list(texts))

    @property
    def text_tower(self) -> nn.Module:
        """The module owning ``token_embedding``, ``positional_embedding``, ``transformer``,
        ``ln_final``, ``text_projection`` and ``attn_mask`` (the model for ``CLIP``, ``model.text``
        for ``CustomTextCLIP``)."""
        return self.model.text if hasattr(self.model, "text") else self.model

    @property
    def token_embedding(self) -> nn.Embedding:
        """Token embedding table (prompt learning builds context vectors in this space)."""
        tower = self.text_tower
        if not hasattr(tower, "token_embedding"):
            raise NotImplementedError(
                f"text tower {type(tower).__name__} has no token_embedding (HF text towers are not supported "
                "for prompt learning)"
            )
        return tower.token_embedding

    @property
    def text_transformer(self) -> nn.Module:
        """The text transformer stack (called as ``transformer(x, attn_mask=...)``)."""
        tower = self.text_tower
        if not hasattr(tower, "transformer"):
            raise NotImplementedError(f"text tower {type(tower).__name__} has no transformer")
        return tower.transformer

    def encode_text_embeddings(
        self, embeddings: torch.Tensor, tokens: torch.Tensor, normalize: bool = True
    ) -> torch.Tensor:
        """Text features from token *embeddings* [N, L, W] (e.g. with learned context vectors spliced
        in); ``tokens`` [N, L] locate the end-of-text token for pooling. Respects the caller's grad
        mode (prompt learning back-propagates through it). Returns [N, D] float32."""
        from open_clip.transformer import text_global_pool

        tower = self.text_tower
        if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
            raise NotImplementedError("encode_text_embeddings: text towers with cls_emb / pad masks")
        tokens = tokens.to(self.device)
        with self.autocast():
            cast_dtype = tower.transformer.get_cast_dtype()
            x = embeddings.to(self.device, cast_dtype) + tower.positional_embedding.to(cast_dtype)
            x = tower.transformer(x, attn_mask=tower.attn_mask)
            x = tower.ln_final(x)
            pool_type = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
            eos = getattr(tower, "text_eos_id", None) or getattr(tower, "eos_id", None)
            x = text_global_pool(x, tokens, pool_type, eos_token_id=eos)
            proj = tower.text_projection
            if proj is not None:
                x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        x = x.float()
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(
        self,
        texts: Sequence[str],
        batch_size: int = 256,
        progress: Callable[[int], object] | None = None,
    ) -> torch.Tensor:
        """Normalised text embeddings [N, D] float32 on the model's device (no grad, batched).

        For causal text towers pooled at the end-of-text token (every OpenAI-style CLIP), prompts
        are sorted by length and each batch runs only up to its longest prompt: positions after
        the end-of-text token cannot influence it under the causal mask, so the result equals the
        full-context forward (up to float rounding) at a fraction of the cost. ``progress``, when
        given, is called with the number of prompts of each finished batch.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        tokens = self.tokenize(texts)
        pool_idx = self._pool_index(tokens) if self._truncatable_text else None
        hf_len = self._hf_lengths(tokens) if pool_idx is None else None
        if pool_idx is not None:
            order = torch.argsort(pool_idx, stable=True)
        elif hf_len is not None:
            order = torch.argsort(hf_len, stable=True)
        else:
            order = torch.arange(len(texts))
        out = torch.empty(len(texts), self.embed_dim, device=self.device)
        if hf_len is not None and len(texts) >= POOLED_MEMO_MIN:
            return self._encode_hf_memo(tokens, order, hf_len, batch_size, progress, out)
        with torch.no_grad(), self.autocast():
            for i in range(0, len(texts), batch_size):
                idx = order[i : i + batch_size]
                batch = tokens[idx]
                if pool_idx is not None:
                    batch = batch[:, : int(pool_idx[idx].max()) + 1]
                    feats = self._encode_tokens_truncated(batch.to(self.device, non_blocking=True))
                elif hf_len is not None:
                    # Hugging Face towers mask padding out of attention and pooling: dropping the
                    # all-padding columns of a batch leaves the embeddings unchanged
                    batch = batch[:, : int(hf_len[idx].max())]
                    feats = self.model.encode_text(batch.to(self.device, non_blocking=True))
                else:
                    feats = self.model.encode_text(batch.to(self.device, non_blocking=True))
                out[idx.to(self.device)] = F.normalize(feats.float(), dim=-1)
                if progress is not None:
                    progress(len(idx))
        return out

    def _encode_hf_memo(self, tokens, order, hf_len, batch_size, progress, out) -> torch.Tensor:
        """encode_text for a large prompt list through a Hugging Face tower: the pooled transformer
        output is kept in memory (:data:`_POOLED_MEMO`) under the tower's weights, precision and
        the tokens, so models that share a locked text transformer and differ in the projection
        (the vlmood-small family, vlmood-tiny) encode a NegLabel vocabulary once per process
        (``vlmood zoo``). Same result as the batched forward: pooling, then the tower's ``proj``."""
        tower = self.model.text
        key = _memo_key(tower, tokens, self.identity.precision, self.device)
        pooled = _POOLED_MEMO.get(key)
        with torch.no_grad(), self.autocast():
            if pooled is None:
                pooled_parts: list[tuple[torch.Tensor, torch.Tensor]] = []
                for i in range(0, len(tokens), batch_size):
                    idx = order[i : i + batch_size]
                    batch = tokens[idx][:, : int(hf_len[idx].max())].to(self.device, non_blocking=True)
                    mask = (batch != tower.config.pad_token_id).long()
                    hidden = tower.transformer(input_ids=batch, attention_mask=mask)
                    pooled_parts.append((idx, tower.pooler(hidden, mask).float()))
                    if progress is not None:
                        progress(len(idx))
                width = pooled_parts[0][1].shape[1]
                pooled = torch.empty(len(tokens), width, device=self.device)
                for idx, part in pooled_parts:
                    pooled[idx.to(self.device)] = part
                _POOLED_MEMO.clear()  # one vocabulary at a time: bounded memory
                _POOLED_MEMO[key] = pooled
            elif progress is not None:
                progress(len(tokens))
            for i in range(0, len(tokens), batch_size):
                feats = tower.proj(pooled[i : i + batch_size].to(_param_dtype(tower.proj, pooled.dtype)))
                out[i : i + batch_size] = F.normalize(feats.float(), dim=-1)
        return out

    @property
    def _truncatable_text(self) -> bool:
        """True when the text tower is causal and pools at the end-of-text token (see encode_text)."""
        cached = getattr(self, "_truncatable_cache", None)
        if cached is not None:
            return cached
        tower = self.text_tower
        ok = all(
            hasattr(tower, a) for a in ("token_embedding", "positional_embedding", "ln_final", "attn_mask")
        )
        ok = ok and getattr(tower, "cls_emb", None) is None and not getattr(tower, "use_pad_mask", False)
        ok = ok and self._text_pool_type() in ("argmax", "eos")
        if ok:
            mask = tower.attn_mask
            ok = (
                isinstance(mask, torch.Tensor)
                and mask.dim() == 2
                and torch.equal(torch.isneginf(mask).cpu(), torch.ones(mask.shape, dtype=torch.bool).triu(1))
            )
        self._truncatable_cache = bool(ok)
        return self._truncatable_cache

    def _text_pool_type(self) -> str:
        tower = self.text_tower
        return getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")

    def _eos_id(self) -> int | None:
        tower = self.text_tower
        return getattr(tower, "text_eos_id", None) or getattr(tower, "eos_id", None)

    def _hf_lengths(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Non-padding lengths for an open_clip HFTextEncoder with a masked pooler, else None."""
        tower = getattr(self.model, "text", None)
        pad = getattr(getattr(tower, "config", None), "pad_token_id", None)
        pooler = type(getattr(tower, "pooler", None)).__name__
        if pad is None or pooler not in ("MeanPooler", "MaxPooler", "ClsPooler"):
            return None
        if bool((tokens[:, -1] != pad).any()) and pooler == "ClsPooler":
            return None
        nonpad = tokens != pad
        # length = last non-padding position + 1 (padding is only at the end)
        pos = torch.arange(tokens.shape[1]).expand_as(tokens)
        return torch.where(nonpad, pos + 1, torch.zeros_like(pos)).max(dim=1).values.clamp(min=1)

    def _pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._text_pool_type() == "eos":
            return (tokens == self._eos_id()).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def _encode_tokens_truncated(self, tokens: torch.Tensor) -> torch.Tensor:
        tower = self.text_tower
        n = tokens.shape[1]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast_dtype)
        x = x + tower.positional_embedding[:n].to(cast_dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:n, :n])
        x = tower.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self._pool_index(tokens)]
        proj = tower.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    # ------------------------------------------------------------------ image
    def encode_image_features(
        self, images: torch.Tensor, kinds: Sequence[str] = ("image",)
    ) -> dict[str, torch.Tensor]:
        """One forward of the visual tower returning the requested kinds (module docstring).

        ``images``: preprocessed batch [B, 3, H, W]. Respects the caller's grad mode.
        """
        kinds = check_kinds(kinds)
        images = images.to(self.device, non_blocking=True)
        visual = self.model.visual
        if self._is_timm_avg(visual):
            with self.autocast():
                return self._timm_features(visual, images, kinds)
        if not self.is_vit:
            unsupported = [k for k in kinds if k != "image"]
            if unsupported:
                raise NotImplementedError(
                    f"feature kinds {unsupported} need an open_clip VisionTransformer tower; "
                    f"{type(visual).__name__} (e.g. ModifiedResNet, whose attention pool already projects) "
                    "supports only 'image'"
                )
            with self.autocast():
                feats = visual(images.to(self._input_dtype()))
            return {"image": F.normalize(feats.float(), dim=-1)}
        if getattr(visual, "attn_pool", None) is not None:
            unsupported = [k for k in kinds if k != "image"]
            if unsupported:
                raise NotImplementedError(
                    f"feature kinds {unsupported} are not supported for VisionTransformer towers with an "
                    "attentional pooler (attentional_pool=True, CoCa-style); only 'image' is"
                )
            with self.autocast():
                feats = visual(images.to(self._input_dtype()))
                if isinstance(feats, tuple):
                    feats = feats[0]
            return {"image": F.normalize(feats.float(), dim=-1)}
        with self.autocast():
            return self._vit_features(visual, images.to(self._input_dtype()), kinds)

    @staticmethod
    def _is_timm_avg(visual: nn.Module) -> bool:
        """An open_clip TimmModel whose trunk average-pools and whose head is a linear or MLP
        projection (``timm_proj`` linear / mlp)."""
        trunk, head = getattr(visual, "trunk", None), getattr(visual, "head", None)
        if trunk is None or head is None or not hasattr(trunk, "forward_features"):
            return False
        pool = getattr(getattr(trunk, "global_pool", None), "pool_type", None)
        return pool == "avg" and (
            isinstance(getattr(head, "proj", None), nn.Linear) or getattr(head, "mlp", None) is not None
        )

    def _timm_features(
        self, visual: nn.Module, x: torch.Tensor, kinds: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """timm CNN tower (average pool + linear or MLP projection), one forward for every kind.

        ``preproj`` is the pooled trunk feature; ``patch`` projects each position of the last
        feature map with the same head (with a linear head the mean of the un-normalised patch
        features is the global feature, since pooling and projection are both linear).
        """
        fmap = visual.trunk.forward_features(x)  # [B, C, h, w]
        pooled = visual.trunk.forward_head(fmap)  # [B, C]
        out: dict[str, torch.Tensor] = {}
        if "image" in kinds:
            out["image"] = F.normalize(visual.head(pooled).float(), dim=-1)
        if "preproj" in kinds:
            out["preproj"] = pooled.float()
        if "patch" in kinds:
            tokens = fmap.flatten(2).transpose(1, 2)  # [B, h*w, C]
            out["patch"] = F.normalize(visual.head(tokens).float(), dim=-1)
        return out

    def _input_dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype if self.is_vit else torch.float32

    def _vit_features(
        self, visual: nn.Module, x: torch.Tensor, kinds: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        pool_type = getattr(visual, "pool_type", "tok")
        if pool_type not in ("tok", "avg"):
            raise NotImplementedError(
                f"VisionTransformer pool_type={pool_type!r} without an attentional pooler is not supported "
                "(supported: 'tok', 'avg')"
            )
        # embeddings (mirrors VisionTransformer._embeds)
        x = visual.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, P, W]
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)  # identity in eval mode
        x = visual.ln_pre(x)

        transformer = visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1).contiguous()  # NLD -> LND
        blocks = transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last_in = x
        x = blocks[-1](x)
        if not batch_first:
            x = x.transpose(0, 1)
            last_in = last_in.transpose(0, 1)

        out: dict[str, torch.Tensor] = {}
        if "image" in kinds or "preproj" in kinds:
            if getattr(visual, "final_ln_after_pool", False):
                pooled = x[:, 0] if pool_type == "tok" else x[:, 1:].mean(dim=1)
                pooled = visual.ln_post(pooled)
            else:
                xn = visual.ln_post(x)
                pooled = xn[:, 0] if pool_type == "tok" else xn[:, 1:].mean(dim=1)
            if "preproj" in kinds:
                out["preproj"] = pooled.float()
            if "image" in kinds:
                out["image"] = F.normalize((pooled @ visual.proj).float(), dim=-1)
        if "patch" in kinds:
            local = _value_path_block(blocks[-1], last_in)[:, 1:]  # drop the class token
            local = visual.ln_post(local) @ visual.proj
            out["patch"] = F.normalize(local.float(), dim=-1)
        return {k: out[k] for k in kinds}

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the patch features for the model's input size, or None (non-ViT)."""
        if not self.is_vit:
            return None
        return tuple(self.model.visual.grid_size)  # type: ignore[return-value]
