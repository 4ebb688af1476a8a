"""Where a training run's logged rows go: ``metrics.jsonl`` always; TensorBoard events and an
MLflow run when asked. One writer (rank 0), shared by the engine (every ``vlmood fit`` method and
``vlmood pretrain``) and the locked-tower recipe (``vlmood pretrain --image-tower``).

A row is a flat dict such as ``{"kind": "epoch", "epoch": 2, "step": 30, "loss": 0.41,
"val/id_accuracy": 0.82}``. Its numbers (``kind``, ``epoch``, ``step`` aside) become the scalars
``<kind>/<key>`` at step ``step`` in TensorBoard (``OUT/tensorboard``) and in MLflow.

MLflow (``mlflow=True``) needs the ``mlflow`` package, which vlmood does not depend on
(:func:`require_mlflow` says how to install it). Where runs go is MLflow's own configuration
(``MLFLOW_TRACKING_URI``, default ``./mlruns``; ``MLFLOW_EXPERIMENT_NAME``). Each training is one
MLflow run named after its folder's last two parts (``ADAPTER/train`` for ``vlmood fit``), nested
when a run is already active (a notebook's, a study's);
the training settings are its parameters. Its id is kept in ``OUT/mlflow_run.json``, so a resumed
training logs into the same run (epochs redone after a kill are logged again at the same steps).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmood.errors import UsageError
from vlmood.utils import atomic_write_text

log = logging.getLogger(__name__)

MLFLOW_RUN_FILE = "mlflow_run.json"
#: row keys that place a row (not scalars)
PLACE_KEYS = ("kind", "epoch", "step")


def require_mlflow() -> None:
    """UsageError (one line) when the ``mlflow`` package cannot be imported."""
    import importlib.util

    if sys.modules.get("mlflow") is not None:  # imported already (or a test's stand-in)
        return
    try:
        found = importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError("--mlflow needs the mlflow package, which is not installed: pip install mlflow")


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's numbers as ``<kind>/<key>`` scalars (booleans and the placing keys left out)."""
    kind = row.get("kind", "log")
    return {
        f"{kind}/{k}": float(v)
        for k, v in row.items()
        if k not in PLACE_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
    }


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``a.b`` -> text (MLflow parameters are strings of bounded length)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_params(v, key + "."))
        else:
            out[key] = str(v)[:250]
    return out


class MLflowRun:
    """One MLflow run of a training in ``out`` (resumed when ``resume`` and ``out`` names one)."""

    def __init__(self, out: Path, params: Mapping[str, Any] | None = None, resume: bool = False) -> None:
        require_mlflow()
        import mlflow

        self.mlflow = mlflow
        run_file = out / MLFLOW_RUN_FILE
        run_id = None
        if resume and run_file.is_file():
            try:
                run_id = json.loads(run_file.read_text(encoding="utf-8")).get("run_id")
            except (json.JSONDecodeError, AttributeError):
                run_id = None
        nested = mlflow.active_run() is not None
        if run_id:
            run = mlflow.start_run(run_id=run_id, nested=nested)
        else:
            # named by the last two folders: ADAPTER/train (fit), RUNS/NAME (pretrain)
            run = mlflow.start_run(run_name="/".join(out.absolute().parts[-2:]), nested=nested)
            if params:
                mlflow.log_params(flat_params(params))
        self.run_id = str(run.info.run_id)
        atomic_write_text(run_file, json.dumps({"run_id": self.run_id}) + "\n")

    def log(self, row: Mapping[str, Any]) -> None:
        values = scalars(row)
        if values:
            self.mlflow.log_metrics(values, step=int(row.get("step", 0) or 0))

    def close(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)


class MetricsLog:
    """``metrics.jsonl`` in ``out`` plus, when asked, TensorBoard events (``out/tensorboard``; events
    after ``step``, a resume point, are dropped) and an MLflow run (``params``: its parameters).
    Use as a context manager (the MLflow run ends FINISHED, or FAILED on an exception)."""

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        tensorboard: bool = False,
        mlflow: bool = False,
        step: int = 0,
        params: Mapping[str, Any] | None = None,
        resume: bool = False,
        filename: str = "metrics.jsonl",
    ) -> None:
        self.out = Path(out)
        self.path = self.out / filename
        self._tb = None
        self._mlflow: MLflowRun | None = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise UsageError(
                    "--tensorboard needs the tensorboard package, which is not installed: pip install tensorboard"
                ) from e
            # purge_step: events a killed run wrote after its last checkpoint are dropped on resume
            self._tb = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=step or None)
        if mlflow:
            try:
                self._mlflow = MLflowRun(self.out, params, resume=resume)
            except BaseException:
                self.close()
                raise

    def log(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(row)) + "\n")
        values = scalars(row)
        if self._tb is not None and values:
            step = int(row.get("step", 0) or 0)
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log(row)

    def close(self, status: str = "FINISHED") -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mlflow is not None:
            run, self._mlflow = self._mlflow, None
            try:
                run.close(status)
            except Exception as e:  # a tracking server gone away must not hide the run's outcome
                log.warning("could not end the MLflow run %s: %s", run.run_id, e)

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(
            "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        )
