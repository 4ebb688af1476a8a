"""ExtractOptions: the one options object for image feature extraction.

Every place that encodes images into the feature cache takes it: ``extract_features``,
``run_eval`` (``EvalOptions.extract``), ``fit_method`` / ``prepare_data`` (``TrainData.extract``,
so UEO's zero-shot weights are extracted the same way), ``run_study``, the CLI (``vlmood eval``,
``cache``, ``fit``, ``study``) and the Python API (``vlmood.evaluate`` / ``fit`` / ``study``).

Precision is not here: it belongs to the model (``load_model(..., precision=...)``, recorded in
``model.identity`` and so in every cache key).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: images per cache chunk: the unit written atomically (the resume point) and dealt to ranks
DEFAULT_CHUNK = 2048


@dataclass(frozen=True)
class ExtractOptions:
    """How images are encoded into the feature cache.

    Attributes:
        cache_root: the feature cache folder (None: ``$VLMOOD_CACHE`` or ``~/.cache/vlmood``).
        batch_size: images per forward pass.
        num_workers: DataLoader workers decoding images (None: up to 8, one less than the CPUs).
        skip_corrupt: unreadable images are skipped (marked invalid) instead of an error; part of
            the cache key.
        fingerprint: how a dataset is identified for the cache key: ``stat`` (paths, sizes, mtimes)
            or ``content`` (file contents).
        progress: show progress bars.
        chunk_size: images per cache chunk (the resume point; see :data:`DEFAULT_CHUNK`).
    """

    cache_root: str | os.PathLike | None = None
    batch_size: int = 64
    num_workers: int | None = None
    skip_corrupt: bool = False
    fingerprint: str = "stat"
    progress: bool = True
    chunk_size: int = DEFAULT_CHUNK

    @classmethod
    def of(cls, value: ExtractOptions | Mapping[str, Any] | None = None, **overrides: Any) -> ExtractOptions:
        """``value`` as ExtractOptions (None: the defaults; a mapping: its keys are field names,
        ``cache_dir`` accepted for ``cache_root``), then the ``overrides`` that are not None."""
        if value is None:
            opts = cls()
        elif isinstance(value, ExtractOptions):
            opts = value
        elif isinstance(value, Mapping):
            fields = dict(value)
            if "cache_dir" in fields:
                fields["cache_root"] = fields.pop("cache_dir")
            opts = cls(**fields)  # an unknown key is a TypeError naming it
        else:
            raise TypeError(
                f"extraction options: expected ExtractOptions or a dict, got {type(value).__name__}"
            )
        return opts.replace(**overrides)

    def replace(self, **changes: Any) -> ExtractOptions:
        """A copy with the given fields changed; None values leave a field as it is."""
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def kwargs(self) -> dict[str, Any]:
        """The fields as ``extract_features`` keyword arguments."""
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """What results record about how features were extracted (what changes the cache key or
        the values; not where the cache lives or how fast it was filled)."""
        return {
            "batch_size": self.batch_size,
            "skip_corrupt": self.skip_corrupt,
            "fingerprint": self.fingerprint,
        }
