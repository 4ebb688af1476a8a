"""ARF: Anchor-based Robust Finetuning of vision-language models (Han et al., CVPR 2024;
methods.md 9).

**A re-implementation from the paper's description, unverified against official code**: the
authors' repository (LixDemon/ARF) holds only a README. What follows is what the abstract (and
secondary summaries) describe; the loss weights, the number of retrieved pairs, the retrieval
criterion and the anchor batch are this implementation's choices, exposed as parameters.

Per step, on a batch of ``B`` fine-tune images ``x_i`` with class labels ``y_i``:

``L = L_FLYP + lam1 * L_cap + lam2 * L_ret``

- ``L_FLYP``: FLYP's CLIP contrastive loss on (image, class caption) pairs, computed by
  :class:`~vlmood.methods.finetune.FLYP`'s own code (``lam1 = lam2 = 0`` is FLYP exactly).
- ``L_cap`` (**text-compensated anchors**): the same CLIP loss between the same (augmented)
  images and their *generated captions*, from a captions file (``captions=FILE``: ``path,caption``
  rows, paths relative to ``captions_root``, default the file's folder; several rows for an
  image: one drawn per step) or a local Hugging Face image-to-text model
  (``captioner=DIR``, e.g. a BLIP checkpoint; its captions are written to
  ``train/arf_captions.csv`` and reused on resume; pass that file as ``captions=`` to reuse them
  in another run). ``vlmood data captions`` builds a captions file offline from the metadata of
  the prepared data (:func:`vlmood.data.captions.build_captions`).
- ``L_ret`` (**image-text-pair anchors**): the CLIP loss on a batch of ``anchor_batch_size``
  (default: the training batch size) pairs drawn, without replacement, from ``top_k`` pairs
  retrieved once before training from a candidate pool (``pool=FILE[,FILE...]``: CSV or parquet
  ``path,caption``, paths relative to ``pool_root`` or each file's folder), keeping their original
  captions. Retrieval uses the base model: ``retrieve=text`` scores each pool pair by the
  similarity of its caption to the task's class-name prompts (the ``templates`` ensemble);
  ``retrieve=image`` by the similarity of its image to the fine-tune images; a pair's score is
  its best similarity to any query (:mod:`vlmood.features.retrieval`: FAISS, the pool streamed
  through an index of the queries in chunks, its features cached). The retrieved list
  (rank, path, caption, score, nearest query, pool file) is written to ``train/arf_anchors.csv``
  and summarised in adapter.json's metrics; a resumed run trains on that saved list.

Both towers and the logit scale train (as FLYP); all three terms share the learned scale. Every
random draw (captions, anchor batches, their augmentation) comes from torch's global RNG, which
the engine reseeds per epoch, so a resumed run repeats the uninterrupted one. Under torchrun each
rank takes its contiguous share of the global anchor batch (``anchor_batch_size`` must divide by
the world size) and the contrastive terms gather every rank's features.

Defaults (this implementation's choice): ``lam1 = lam2 = 1``, ``top_k = 1000``,
``retrieve = text``. The adapter is FLYP's (:class:`~vlmood.methods.finetune.FullFinetuneAdapter`:
the changed tensors only), so ``vlmood eval --adapter``, ``study`` and WiSE-FT take it as is.
adapter.json's ``fit_identity`` holds the parameters as given (file names, not the contents of
the captions and pool files): after editing one of those files, train into another ``--out``.
"""

from __future__ import annotations

import csv
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmood import distributed as D
from vlmood.data.base import DataError
from vlmood.errors import UsageError
from vlmood.methods.base import register_method
from vlmood.methods.finetune import FLYPParams, _Contrastive, finetune_transform
from vlmood.methods.losses import clip_contrastive_loss

log = logging.getLogger(__name__)

ANCHORS_FILE = "arf_anchors.csv"
GENERATED_CAPTIONS_FILE = "arf_captions.csv"
REIMPLEMENTATION = (
    "re-implementation from the paper's description (CVPR 2024), unverified against official code "
    "(none released)"
)
#: anchors listed in adapter.json's metrics (the full list is in train/arf_anchors.csv)
METRICS_ANCHORS_SHOWN = 10


@dataclass
class ARFParams(FLYPParams):
    lam1: float = 1.0  # weight of the text-compensated anchors (image, generated caption)
    lam2: float = 1.0  # weight of the retrieved image-text-pair anchors
    captions: str = ""  # CSV path,caption of the training images (`vlmood data captions`)
    captions_root: str = ""  # folder the captions file's paths are relative to (default: its folder)
    captioner: str = ""  # instead of captions: a local Hugging Face image-to-text model folder
    pool: str | list[str] = ""  # candidate pool file(s), CSV/parquet path,caption; comma-separated
    pool_root: str = ""  # folder the pool's paths are relative to (default: each pool file's folder)
    top_k: int = 1000  # pairs retrieved from the pool
    retrieve: str = "text"  # text: caption ~ class-name prompts; image: image ~ fine-tune images
    anchor_batch_size: int = 0  # retrieved pairs per step (0: the training batch size)


class _AnchorImages:
    """Decodes anchor images in threads (no RNG there) and transforms them in order in the calling
    thread, so the augmentation draws from torch's global RNG in a fixed order."""

    def __init__(self, paths: list[str], transform, threads: int) -> None:
        self.paths = paths
        self.transform = transform
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="arf-anchors") if threads > 1 else None

    def __call__(self, indices: list[int]) -> torch.Tensor:
        from vlmood.data.sources import open_image

        paths = [self.paths[i] for i in indices]
        images = (
            list(self.executor.map(open_image, paths)) if self.executor else [open_image(p) for p in paths]
        )
        return torch.stack([self.transform(im) for im in images])

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None


@register_method("arf")
class ARF(_Contrastive):
    """ARF: FLYP + contrastive losses on captioned fine-tune images and retrieved image-text anchors."""

    Params = ARFParams

    def validate(self) -> None:
        super().validate()
        from vlmood.data.captions import check_captioner_dir, pool_files
        from vlmood.features.retrieval import RETRIEVE_MODES, require_faiss

        p = self.params
        for name in ("lam1", "lam2"):
            v = getattr(p, name)
            if v < 0:
                raise UsageError(f"method 'arf' parameter '{name}' must be >= 0, got {v}")
        if p.top_k < 1:
            raise UsageError(f"method 'arf' parameter 'top_k' must be >= 1 (pairs retrieved), got {p.top_k}")
        if p.retrieve not in RETRIEVE_MODES:
            raise UsageError(
                f"method 'arf' parameter 'retrieve' must be one of {', '.join(RETRIEVE_MODES)} (text: pool "
                f"captions ~ class names; image: pool images ~ fine-tune images), got {p.retrieve!r}"
            )
        if p.anchor_batch_size < 0:
            raise UsageError(
                f"method 'arf' parameter 'anchor_batch_size' must be >= 0 (0: the training batch size), "
                f"got {p.anchor_batch_size}"
            )
        if p.anchor_batch_size > p.top_k:
            raise UsageError(
                f"method 'arf' parameter 'anchor_batch_size' ({p.anchor_batch_size}) is more than the "
                f"top_k={p.top_k} retrieved pairs it is drawn from; lower it or raise top_k"
            )
        if p.captions and p.captioner:
            raise UsageError("method 'arf': give captions=FILE or captioner=MODEL_DIR, not both")
        if p.lam1 > 0:
            if not (p.captions or p.captioner):
                raise UsageError(
                    "method 'arf' with lam1 > 0 needs captions of the training images: captions=FILE (CSV "
                    "path,caption; build one with `vlmood data captions --root DATA_ROOT --out FILE`) or "
                    "captioner=HF_MODEL_DIR; or set lam1=0"
                )
            if p.captioner:
                check_captioner_dir(p.captioner)
            elif not Path(p.captions).expanduser().is_file():
                raise DataError(
                    f"method 'arf': captions file {Path(p.captions).expanduser().absolute()} does not exist; "
                    "build one with `vlmood data captions --root DATA_ROOT --out FILE`"
                )
        if p.lam2 > 0:
            files = pool_files(p.pool)
            if not files:
                raise UsageError(
                    "method 'arf' with lam2 > 0 needs a candidate pool of image-text pairs: pool=FILE[,FILE...] "
                    "(CSV or parquet path,caption, e.g. DATA_ROOT/openclipart/pairs.csv,"
                    "DATA_ROOT/tuxpaint/pairs.csv); or set lam2=0"
                )
            for f in files:
                if not f.is_file():
                    raise DataError(
                        f"method 'arf': candidate pool {f.absolute()} does not exist; give CSV or parquet "
                        "files with columns path,caption"
                    )
            require_faiss()
        if p.lam1 == 0 and p.lam2 == 0:
            log.warning("arf with lam1 = lam2 = 0 is plain FLYP")

    # ------------------------------------------------------------------------------------------ setup
    def before(self, model, data, cfg, out_dir, device, progress, resume, head) -> dict[str, Any]:
        """Captions and retrieval with the base model, before any weight changes."""
        p = self.params
        out = Path(out_dir)
        if D.is_main():
            out.mkdir(parents=True, exist_ok=True)
        rec: dict[str, Any] = {"implementation": REIMPLEMENTATION, "lam1": p.lam1, "lam2": p.lam2}
        self._captions: list[list[str]] | None = None
        self._anchor_paths: list[str] = []
        self._anchor_captions: list[str] = []
        self._anchor_loader: _AnchorImages | None = None
        if p.lam2 > 0:  # settings first (cheap), before captioning or retrieval
            a = p.anchor_batch_size or cfg.batch_size
            w = D.world_size()
            if a > p.top_k:
                raise UsageError(
                    f"method 'arf': the anchor batch ({a}, the training batch size unless anchor_batch_size "
                    f"is given) is more than the top_k={p.top_k} retrieved pairs; set anchor_batch_size or raise top_k"
                )
            if a % w:
                raise UsageError(
                    f"method 'arf': the anchor batch ({a}) does not split over {w} processes; set "
                    f"anchor_batch_size to a multiple of {w}"
                )
            self._anchor_batch, self._anchor_rank_batch = a, a // w
        if p.lam1 > 0:
            self._captions, rec["captions"] = self._training_captions(
                model, data, out, device, progress, resume
            )
        if p.lam2 > 0:
            rec["anchors"] = self._retrieve(model, data, out, progress, resume)
            rec["anchors"]["batch"] = self._anchor_batch
            self._anchor_loader = _AnchorImages(
                self._anchor_paths, finetune_transform(model, p.augment), max(1, int(cfg.num_workers))
            )
        return {"arf": rec}

    def _training_captions(self, model, data, out: Path, device, progress: bool, resume: bool):
        from vlmood.data.captions import (
            generate_captions,
            match_captions,
            read_captions_file,
            write_pairs_csv,
        )

        p = self.params
        paths = [s.path for s in data.source.samples]
        if p.captions:
            cf = read_captions_file(p.captions, p.captions_root or None)
            lists = match_captions(cf, paths)
            rec = {"source": "file", **cf.record()}
        else:
            f = out / GENERATED_CAPTIONS_FILE
            if resume and f.is_file():  # the captions the interrupted run trained with
                lists = match_captions(read_captions_file(f, "/"), paths)
            else:
                caps = None
                if D.is_main():
                    caps = generate_captions(p.captioner, paths, device=device, progress=progress)
                    write_pairs_csv(f, list(zip(paths, caps)))
                caps = D.broadcast_object(caps)
                lists = [[c] for c in caps]
            rec = {"source": "captioner", "captioner": str(Path(p.captioner).expanduser().absolute())}
            rec["file"] = f"{out.name}/{GENERATED_CAPTIONS_FILE}"
        rec["images"] = len(paths)
        rec["images_with_several"] = sum(len(c) > 1 for c in lists)
        rec["first"] = [[os.path.basename(paths[i]), lists[i][0]] for i in range(min(3, len(paths)))]
        return lists, rec

    def _retrieve(self, model, data, out: Path, progress: bool, resume: bool) -> dict[str, Any]:
        p = self.params
        f = out / ANCHORS_FILE
        if resume and f.is_file():  # the anchors the interrupted run trained with
            rows = read_anchors(f)
            self._anchor_paths = [r["path"] for r in rows]
            self._anchor_captions = [r["caption"] for r in rows]
            return anchors_record(f, rows, out, {"reused": True, "retrieve": p.retrieve, "top_k": p.top_k})
        result = retrieve_anchors(
            model,
            data,
            p.pool,
            p.pool_root or None,
            p.retrieve,
            p.top_k,
            self.caption_templates,
            progress=progress,
        )
        rows = result.pop("rows")
        self._anchor_paths = [r["path"] for r in rows]
        self._anchor_captions = [r["caption"] for r in rows]
        if D.is_main():
            write_anchors(f, rows)
        return anchors_record(f, rows, out, {"retrieve": p.retrieve, "top_k": p.top_k, **result})

    def fit(self, model, data, cfg, out_dir, device, progress=True, resume=False):
        try:
            return super().fit(model, data, cfg, out_dir, device, progress, resume)
        finally:
            if getattr(self, "_anchor_loader", None) is not None:
                self._anchor_loader.close()

    # ------------------------------------------------------------------------------------------ loss
    def extra_loss(self, model, data):
        p = self.params
        lam1, lam2 = float(p.lam1), float(p.lam2)
        if not lam1 and not lam2:
            return None  # FLYP, exactly
        caps = self._captions
        several = bool(caps) and any(len(c) > 1 for c in caps)
        n_anchor = len(self._anchor_paths)
        rank = D.rank()

        def extra(module, batch, f, s):
            total = f.new_zeros(())
            logs: dict[str, float] = {}
            if lam1:
                idx = batch["index"].cpu().tolist()
                if several:  # one of an image's captions, drawn with the engine's seeded RNG
                    u = torch.rand(len(idx)).tolist()
                    texts = [caps[i][min(int(r * len(caps[i])), len(caps[i]) - 1)] for i, r in zip(idx, u)]
                else:
                    texts = [caps[i][0] for i in idx]
                t = module.text(model.tokenize(texts))
                cap_loss = clip_contrastive_loss(f, t, s)
                total = total + lam1 * cap_loss
                logs["caption_loss"] = float(cap_loss.detach())
            if lam2:
                # the global anchor batch (the same draw on every rank), this rank's contiguous share
                drawn = torch.randperm(n_anchor)[: self._anchor_batch]
                mine = drawn[rank * self._anchor_rank_batch : (rank + 1) * self._anchor_rank_batch].tolist()
                pixels = self._anchor_loader(mine).to(f.device)
                fa = module.image(pixels)
                ta = module.text(model.tokenize([self._anchor_captions[i] for i in mine]))
                anchor_loss = clip_contrastive_loss(fa, ta, s)
                total = total + lam2 * anchor_loss
                logs["anchor_loss"] = float(anchor_loss.detach())
            return total, logs

        return extra


# ---------------------------------------------------------------------------------------------- retrieval
def retrieve_anchors(
    model,
    data,
    pool: str | list[str],
    pool_root: str | None,
    retrieve: str,
    top_k: int,
    templates: list[str],
    progress: bool = True,
    chunk: int | None = None,
) -> dict[str, Any]:
    """The ``top_k`` pool pairs of highest similarity to the task (see the module docstring) with
    the base ``model``: ``{"rows": [{rank, path, caption, score, query, pool}], "index": ...,
    "encoded_now": ...}``. Pool and query features come from the caches (``data.extract``)."""
    from vlmood.data.captions import read_pool
    from vlmood.features.extract import extract_features
    from vlmood.features.retrieval import (
        DEFAULT_CHUNK,
        array_blocks,
        caption_feature_blocks,
        require_faiss,
        top_k_by_max_similarity,
    )
    from vlmood.features.text import class_text_features

    require_faiss()
    chunk = chunk or DEFAULT_CHUNK
    pairs = read_pool(pool, pool_root)
    if top_k > len(pairs):
        raise UsageError(
            f"method 'arf': top_k={top_k} is more than the {len(pairs)} pairs of the candidate pool; lower top_k"
        )
    xo = data.extract
    show = bool(progress and xo.progress)
    info: dict[str, Any] = {
        "pool": [{k: v for k, v in f.items() if k not in ("start", "stop")} for f in pairs.files]
    }
    valid = None
    if retrieve == "text":
        queries = class_text_features(model, data.classnames, templates, xo.cache_root, progress=show)
        qnames = list(data.classnames)
        blocks = (
            caption_feature_blocks(model, pairs.captions, xo.cache_root, progress=show)
            if D.is_main()
            else None
        )
    else:
        qfs = extract_features(model, data.source, ("image",), options=xo)
        pfs = extract_features(model, pairs.source(), ("image",), options=xo)
        info["encoded_now"] = {"train_images": int(qfs.encoded), "pool_images": int(pfs.encoded)}
        qnames = [s.path for s in data.source.samples]
        queries = blocks = None
        if D.is_main():
            qv = np.asarray(qfs.valid)
            queries = np.asarray(qfs.get("image"))[qv] if not qv.all() else qfs.get("image")
            qnames = [n for n, ok in zip(qnames, qv) if ok]
            valid = np.asarray(pfs.valid)
            blocks = array_blocks(pfs.get("image"), chunk)
    top = None
    if D.is_main():
        skipped = 0 if valid is None else int((~valid).sum())
        top = top_k_by_max_similarity(queries, blocks, top_k + skipped, chunk=chunk)
        if skipped:  # unreadable pool images (with --skip-corrupt) are never anchors
            keep = valid[top.index]
            top.index, top.score, top.query = (
                top.index[keep][:top_k],
                top.score[keep][:top_k],
                top.query[keep][:top_k],
            )
        top = (top.index, top.score, top.query, top.info)
    index, score, query, desc = D.broadcast_object(top)
    rows = [
        {
            "rank": r + 1,
            "path": pairs.paths[i],
            "caption": pairs.captions[i],
            "score": float(sc),
            "query": qnames[q],
            "pool": pairs.file_of(i),
        }
        for r, (i, sc, q) in enumerate(zip(index.tolist(), score.tolist(), query.tolist()))
    ]
    return {"rows": rows, "index": desc, **info}


ANCHOR_COLUMNS = ("rank", "path", "caption", "score", "query", "pool")


def write_anchors(path: Path, rows: list[dict[str, Any]]) -> None:
    """The retrieved pairs as CSV (atomically), best first."""
    from vlmood.utils import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(ANCHOR_COLUMNS), lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({**r, "score": f"{r['score']:.6f}"})
            fh.flush()
            os.fsync(fh.fileno())


def read_anchors(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(
            f"{path}: unreadable anchors file of the interrupted run ({e}); start afresh"
        ) from None
    if not rows or any(not r.get("path") or not r.get("caption") for r in rows):
        raise DataError(f"{path}: the anchors file of the interrupted run is damaged; start afresh")
    for r in rows:
        r["score"] = float(r.get("score") or "nan")
    return rows


def anchors_record(
    path: Path, rows: list[dict[str, Any]], out: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """What adapter.json's metrics say about the anchors (the file holds the full list)."""
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    return {
        "file": f"{out.name}/{path.name}",
        "n": len(rows),
        "score_max": float(np.nanmax(scores)) if len(scores) else None,
        "score_min": float(np.nanmin(scores)) if len(scores) else None,
        "top": [
            {"path": r["path"], "caption": r["caption"], "score": round(float(r["score"]), 6)}
            for r in rows[:METRICS_ANCHORS_SHOWN]
        ],
        **extra,
    }
