"""`--report-to tensorboard,mlflow,trackio`: a tiny run logged to all three trackers, then
read back with each library's own reader (TensorBoard's event accumulator, MLflow's client,
Trackio's store)."""

import json

import pytest
from conftest import tiny_run_config, write_chat_file
from typer.testing import CliRunner

from tunesmith.errors import TunesmithError
from tunesmith.tracking import TRACKERS, flatten, numbers, parse_report_to


def test_report_to_is_parsed_and_checked():
    assert parse_report_to("tensorboard, MLflow,tensorboard") == ["tensorboard", "mlflow"]
    assert parse_report_to(None) == [] and parse_report_to("none") == []
    with pytest.raises(TunesmithError, match="unknown tracker 'wandb'"):
        parse_report_to("wandb")


def test_flatten_keeps_numbers_and_skips_curves():
    flat = flatten({"metrics": {"tuned": {"accuracy": 0.5}}, "curve": [1, 2], "ok": True, "name": "x"}, "eval/")
    assert flat == {"eval/metrics/tuned/accuracy": 0.5, "eval/ok": True, "eval/name": "x"}
    assert numbers(flat) == {"eval/metrics/tuned/accuracy": 0.5}


def test_a_missing_tracker_library_fails_before_training(monkeypatch):
    import importlib.util

    from tunesmith.tracking import check_installed

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(TunesmithError, match="pip install mlflow-skinny"):
        check_installed(["tensorboard", "mlflow"])


def test_a_run_is_logged_to_every_tracker_and_reads_back(tmp_path, tiny_model_dir):
    from tunesmith.workflows.train_eval import train

    data = write_chat_file(tmp_path / "chat.jsonl", n=60)
    config = tiny_run_config(tiny_model_dir, data, max_steps=6, logging_steps=2, report_to=list(TRACKERS))
    config.data.test_split = 0.2
    config.eval.forgetting = False
    config.eval.bias = False
    run = tmp_path / "runs" / "tracked"
    summary = train(config, run)
    assert summary.evaluation is not None
    state = json.loads((run / "tracking.json").read_text())
    assert state["report_to"] == list(TRACKERS)
    metric, tuned_value = next(iter(summary.evaluation.metrics["tuned"].items()))

    # TensorBoard: the training losses and the evaluation, from the event files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    assert events.Scalars(f"eval/metrics/tuned/{metric}")[-1].value == pytest.approx(tuned_value)
    assert "config" in events.Tags()["tensors"] or any(t.startswith("config") for t in events.Tags()["tensors"]), tags

    # MLflow: one run in the experiment "tunesmith" with params, metric history and artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=state["mlflow"]["tracking_uri"])
    assert state["mlflow"]["tracking_uri"] == f"sqlite:///{(run.parent / 'mlflow.db').resolve()}"
    mlrun = client.get_run(state["mlflow"]["run_id"])
    assert mlrun.info.run_name == "tracked" and mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train/max_steps"] == "6"
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "train/loss")] == [2, 4, 6]
    assert mlrun.data.metrics[f"eval/metrics/tuned/{metric}"] == pytest.approx(tuned_value)
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"results.json", "report.html", "MODEL_CARD.md"} <= artifacts

    # Trackio: the project "tunesmith", the run named after its folder, training and evaluation
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("tunesmith", "tracked")
    losses = [row for row in logs if "train/loss" in row]
    assert [row["step"] for row in losses] == [2, 4, 6]
    assert any(row.get(f"eval/metrics/tuned/{metric}") == pytest.approx(tuned_value) for row in logs)
    assert SQLiteStorage.get_run_config("tunesmith", "tracked")["train/max_steps"] == 6


def test_train_cli_takes_report_to(tmp_path, tiny_model_dir):
    from tunesmith.cli import app

    data = write_chat_file(tmp_path / "chat.jsonl", n=30)
    run = tmp_path / "cli-run"
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--model", str(tiny_model_dir), "--max-steps", "2",
                                      "--no-eval", "--output", str(run), "--report-to", "tensorboard"])
    assert result.exit_code == 0, result.output
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    bad = CliRunner().invoke(app, ["train", "--data", str(data), "--report-to", "wandb"])
    assert bad.exit_code != 0 and "unknown tracker 'wandb'" in bad.output
