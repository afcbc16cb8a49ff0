"""Train, then evaluate: the journey `tunesmith train`, `tunesmith tune`'s best trial, the
worker and `auto` share. Every stage trains (`train.stages`), then the tuned model is measured
against its base (`evaluate.run`) when the run has a test set.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.evaluate.run import evaluate_run
from tunesmith.runs import RunDir, TrainSummary
from tunesmith.train.distributed import Cluster
from tunesmith.train.stages import train_run


def train(
    config: RunConfig,
    run_dir: str | Path,
    callbacks: list | None = None,
    resume: bool = False,
    eval_progress=None,
    cluster: Cluster | None = None,
) -> TrainSummary:
    """Train every stage of `config` into `run_dir`, then, when the run has a test set and
    `eval.enabled`, measure it against its base (`evaluate.run`; `eval_progress(what, done,
    total)` follows that). Returns the last stage's summary, with `evaluation` (the results)
    when it ran; a multi-stage run also writes `RUN/run.json` with every stage's summary."""
    summary = train_run(config, Path(run_dir), callbacks, resume, cluster)
    if cluster is not None and cluster.machine_rank > 0:
        return summary  # machine 0 evaluates
    config = RunDir(Path(run_dir)).config  # resolved: it knows whether a test split was held out
    if config.eval.enabled and config.has_test_set():
        summary.evaluation = evaluate_run(run_dir, progress=eval_progress)
    return summary
