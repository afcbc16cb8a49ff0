"""Experiment tracking the ecosystem's way: `--report-to tensorboard,mlflow,trackio`.

Each tracker writes where its own tools look, so the user opens the run with the tool they
know: TensorBoard event files in `RUN/tensorboard/` (`tensorboard --logdir RUNS`), an MLflow
run in the tracking server named by `MLFLOW_TRACKING_URI` or else in `RUNS/mlflow.db`
(`mlflow ui --backend-store-uri sqlite:///RUNS/mlflow.db`), a Trackio run in the project
"tunesmith" of the local Trackio store (`trackio show --project tunesmith`).

A run is logged in two sittings: training (parameters and per-step metrics, from a Trainer
callback) and evaluation (results and artifacts), which may be another process (`tunesmith
eval`). `RUN/tracking.json` remembers each tracker's run id so the second sitting adds to the
same run instead of opening a new one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tunesmith.errors import TunesmithError

TRACKERS = ("tensorboard", "mlflow", "trackio")
PROJECT = "tunesmith"  # the MLflow experiment and the Trackio project
_INSTALL = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "trackio": "trackio"}
_MODULE = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio"}


def parse_report_to(text: str | Iterable[str] | None) -> list[str]:
    """`"tensorboard,mlflow"` or a list of names -> the tracker names, checked."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip().lower() for n in items if n and n.strip()]
    if names == ["none"]:
        return []
    for name in names:
        if name not in TRACKERS:
            raise TunesmithError(f"unknown tracker '{name}' in --report-to; choose from {', '.join(TRACKERS)} (several comma-separated).")
    return list(dict.fromkeys(names))


def check_installed(names: Iterable[str]) -> None:
    """Fail before training, not after it, when a chosen tracker's library is missing."""
    import importlib.util

    for name in names:
        if importlib.util.find_spec(_MODULE[name]) is None:
            raise TunesmithError(f"--report-to {name} needs its library; install it with: pip install {_INSTALL[name]}")


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """Nested dicts -> {"a/b/c": leaf}; lists of numbers are skipped (curves belong in files)."""
    flat: dict = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        elif not isinstance(value, (list, tuple)):
            flat[name] = value
    return flat


def numbers(values: Mapping) -> dict[str, float]:
    """The finite numeric entries (booleans excluded), as floats."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class _TensorBoard:
    def __init__(self, run_dir: Path, state: dict):
        from torch.utils.tensorboard import (
            SummaryWriter,  # needs the tensorboard package
        )

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        state["tensorboard"] = {"log_dir": str(run_dir / "tensorboard")}

    def params(self, params: dict) -> None:
        text = "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
        self.writer.add_text("config", "| setting | value |\n| --- | --- |\n" + text, 0)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.suffix in (".md", ".json", ".txt"):
                self.writer.add_text(path.name, "```\n" + path.read_text(errors="replace")[:50_000] + "\n```", 0)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class _MLflow:
    def __init__(self, run_dir: Path, state: dict):
        from mlflow.tracking import MlflowClient

        saved = state.get("mlflow") or {}
        uri = saved.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.parent.resolve() / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        if saved.get("run_id"):
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = self.client.get_experiment_by_name(PROJECT)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            else:  # artifacts beside the database, not in the current directory
                location = None if "MLFLOW_TRACKING_URI" in os.environ else (run_dir.parent.resolve() / "mlartifacts").as_uri()
                experiment_id = self.client.create_experiment(PROJECT, artifact_location=location)
            run = self.client.create_run(experiment_id, run_name=run_dir.name, tags={"tunesmith.run_dir": str(run_dir.resolve())})
            self.run_id = run.info.run_id
        state["mlflow"] = {"tracking_uri": uri, "run_id": self.run_id}

    def params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow metric names allow letters, digits, _-./ and spaces only
        items = [Metric("".join(c if c.isalnum() or c in "_-./ " else "_" for c in k), v, now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class _Trackio:
    def __init__(self, run_dir: Path, state: dict, config: dict):
        import trackio

        self.trackio = trackio
        resume = "allow" if state.get("trackio") else "never"
        name = (state.get("trackio") or {}).get("name") or run_dir.name
        if resume == "allow" and not config:  # init replaces the stored config: keep training's
            from trackio.sqlite_storage import SQLiteStorage

            stored = SQLiteStorage.get_run_config(PROJECT, name) or {}
            config = {k: v for k, v in stored.items() if not k.startswith("_")}
        trackio.init(project=PROJECT, name=name, config=config, resume=resume, auto_log_cpu=False, auto_log_gpu=False)
        state["trackio"] = {"project": PROJECT, "name": name}

    def params(self, params: dict) -> None:
        pass  # trackio takes the config at init

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def artifacts(self, paths: list[Path]) -> None:
        pass  # trackio has no artifact store; the report and card stay in the run folder

    def close(self) -> None:
        self.trackio.finish()


class Trackers:
    """The open trackers of one run; every call goes to each of them."""

    def __init__(self, names: Iterable[str], run_dir: str | Path, config: Mapping | None = None):
        self.run_dir = Path(run_dir)
        self.names = parse_report_to(list(names))
        check_installed(self.names)
        self.state_file = self.run_dir / "tracking.json"
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        params = {k: v for k, v in flatten(config or {}).items() if v is not None}
        self._open = []
        for name in self.names:
            if name == "tensorboard":
                self._open.append(_TensorBoard(self.run_dir, state))
            elif name == "mlflow":
                self._open.append(_MLflow(self.run_dir, state))
            else:
                self._open.append(_Trackio(self.run_dir, state, params))
        state["report_to"] = self.names
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))
        self._params = params

    def log_params(self) -> None:
        for tracker in self._open:
            tracker.params(self._params)

    def log_metrics(self, values: Mapping, step: int) -> None:
        values = numbers(values)
        if values:
            for tracker in self._open:
                tracker.metrics(values, step)

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        existing = [Path(p) for p in paths if Path(p).is_file()]
        for tracker in self._open:
            tracker.artifacts(existing)

    def close(self) -> None:
        for tracker in self._open:
            tracker.close()
        self._open = []


def tracked(run_dir: str | Path) -> list[str]:
    """The trackers a run was logged to (from `RUN/tracking.json`), or none."""
    path = Path(run_dir) / "tracking.json"
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("report_to", []))


def log_evaluation(run_dir: str | Path, results: Mapping, step: int, artifacts: Iterable[Path]) -> list[str]:
    """Add a finished evaluation to the run's trackers (those its training logged to):
    every number in the results under `eval/...`, and the report, card and results files.
    Returns the trackers written to."""
    names = tracked(run_dir)
    if not names:
        return []
    trackers = Trackers(names, run_dir)
    try:
        trackers.log_metrics(flatten(results, "eval/"), step)
        trackers.log_artifacts(artifacts)
    finally:
        trackers.close()
    return names
