"""Training recorded in MLflow: ``fit(..., callbacks=[MLflow("http://host:5000")])``.

Needs the MLflow client library (``pip install mlflow-skinny``, or ``pip install 'pyro-vae[tracking]'``).
It talks to the tracking store through its own :class:`mlflow.tracking.MlflowClient`: it neither
reads nor changes MLflow's active run in the process. What is logged is in ``docs/tracking.md``.
"""

import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, first_line
from . import Callback, State

ARTIFACTS = ("results", "all")
CHECKPOINT_SUFFIX = ".pt"
BATCH = 100  # the most params or metrics one log_batch call takes


class MLflow(Callback):
    """One MLflow run per training run: settings, evaluations, final figures and the run folder's files.

    :param tracking_uri: the tracking store (``http://...``, ``sqlite:///mlflow.db``, ``file:/path/mlruns``),
        by default MLflow's own (``MLFLOW_TRACKING_URI``). MLflow 3 opens a ``file:`` store only with
        ``MLFLOW_ALLOW_FILE_STORE=true``.
    :param experiment: the experiment's name, created if missing.
    :param run_name: the MLflow run's name (by default MLflow makes one up).
    :param artifacts: ``"results"`` logs the run folder's files but its checkpoints (``*.pt``); ``"all"``
        the checkpoints too.

    The MLflow run ends at ``on_fit_end``; if training raises, it stays marked as running.
    """

    def __init__(self, tracking_uri: Optional[str] = None, experiment: str = "pyro-vae",
                 run_name: Optional[str] = None, artifacts: str = "results"):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient, get_tracking_uri
        except ImportError:
            raise ConfigError("MLflow logging needs the MLflow client: pip install mlflow-skinny "
                              "(or pip install 'pyro-vae[tracking]')") from None
        if artifacts not in ARTIFACTS:
            raise ConfigError(f"MLflow artifacts={artifacts!r}: choose one of {', '.join(ARTIFACTS)}")
        try:
            self.client = MlflowClient(tracking_uri)
        except (MlflowException, ImportError) as error:
            reason = first_line(error).strip().split("; ")[0].split(". ")[0]
            raise ConfigError(f"MLflow cannot open the tracking store {tracking_uri or get_tracking_uri()} ({reason}): "
                              "give a server (http://...), a database (sqlite:///mlflow.db, with pip install mlflow) "
                              "or a folder (file:/path/mlruns, with MLFLOW_ALLOW_FILE_STORE=true)") from None
        self._metric, self._param = Metric, Param
        self.experiment, self.run_name, self.artifacts = experiment, run_name, artifacts
        self.run_id = None

    def on_fit_start(self, state: State) -> None:
        if not state.main:
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags={"pyro_vae.out": str(state.out)})
        self.run_id = run.info.run_id
        params = [self._param(key, value) for key, value in flat_settings(asdict(state.config)).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH])

    def on_evaluation(self, state: State, record: dict) -> None:
        if not state.main:
            return
        self._log_metrics(evaluated(record), state.step)

    def on_fit_end(self, state: State) -> None:
        if not state.main:
            return
        logged = evaluated(state.history[-1]) if state.history else {}  # the final ELBOs are the last record's
        self._log_metrics({key: value for key, value in state.metrics.items()
                           if key not in logged and _is_number(value)}, state.step)
        for path in sorted(Path(state.out).rglob("*")):
            if path.is_file() and (self.artifacts == "all" or path.suffix != CHECKPOINT_SUFFIX):
                folder = path.parent.relative_to(state.out).as_posix()
                self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)
        self.client.set_terminated(self.run_id, "FINISHED")

    def _log_metrics(self, values: dict, step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(key, float(value), now, step) for key, value in values.items()]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH])


def evaluated(record: dict) -> dict:
    """The figures of an evaluation's record: ``train_elbo``, ``test_elbo`` and the like."""
    return {key: value for key, value in record.items() if key.startswith(("train_", "test_"))}


def flat_settings(values: dict, prefix: str = "") -> dict:
    """Nested settings as one level of text values: ``{"model_args": {"beta": 2}}`` -> ``{"model_args.beta": "2"}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
