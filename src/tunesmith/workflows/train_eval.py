"""Train, then evaluate: the journey `tunesmith train`, `tunesmith tune`'s best trial, the
worker and `auto` share. Every stage trains (`train.stages`), then the tuned model is measured
against its base (`evaluate.run`) when the run has a test set.

A run under a domain pack (`config.domain`) gets the pack first (`domains.apply.prepare`: its
template's system prompt, stage and settings, checked labels), and each step is written to
the audit trail (`domains.audit`): one entry when training ends, one when the evaluation
ends; the model card is written again afterwards so it cites both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tunesmith.config import EvalConfig, RunConfig, apply_overrides, save_config
from tunesmith.domains import audit as trail
from tunesmith.domains.apply import prepare, resolve
from tunesmith.errors import ConfigError
from tunesmith.evaluate.card import refresh_card
from tunesmith.evaluate.run import evaluate_run
from tunesmith.runs import CONFIG_FILE, EvalResults, RunDir, TrainSummary
from tunesmith.train.distributed import Cluster
from tunesmith.train.stages import train_run


def train(
    config: RunConfig,
    run_dir: str | Path,
    callbacks: list | None = None,
    resume: bool = False,
    eval_progress=None,
    cluster: Cluster | None = None,
    say: Callable[[str], None] | None = None,
    audit: trail.Audit | None = None,
    audit_event: str | None = "train",
    audit_extra: dict | None = None,
) -> TrainSummary:
    """Train every stage of `config` into `run_dir`, then, when the run has a test set and
    `eval.enabled`, measure it against its base (`evaluate.run`; `eval_progress(what, done,
    total)` follows that). Returns the last stage's summary, with `evaluation` (the results)
    when it ran; a multi-stage run also writes `RUN/run.json` with every stage's summary.

    Under a domain: `say(line)` hears what the pack does to the run (and label warnings), and
    entries go to `audit` (default: the CLI's log and user) as `audit_event` ("train", or
    "auto"; None writes none, e.g. for a probe), with `audit_extra` fields (redactions...)."""
    if not resume:
        config, notes = prepare(config)
        for line in notes:
            (say or (lambda _: None))(line)
    summary = train_run(config, Path(run_dir), callbacks, resume, cluster)
    if cluster is not None and cluster.machine_rank > 0:
        return summary  # machine 0 evaluates
    config = RunDir(Path(run_dir)).config  # resolved: it knows whether a test split was held out
    recording = bool(config.domain and audit_event)
    if recording:
        trail.record_run(audit_event, run_dir, audit, result=trail.train_result(summary),
                         **(audit_extra or {}))
    if config.eval.enabled and config.has_test_set():
        summary.evaluation = evaluate(run_dir, progress=eval_progress, audit=audit if recording else None,
                                      record=recording)
    return summary


def evaluate(
    run_dir: str | Path,
    test: str | None = None,
    options: EvalConfig | None = None,
    columns: dict | None = None,
    progress=None,
    audit: trail.Audit | None = None,
    record: bool = True,
) -> EvalResults:
    """`evaluate.run.evaluate_run`, then, for a run under a domain (and `record`), an `eval`
    entry in the audit trail and the model card written again to cite it."""
    results = evaluate_run(run_dir, test, options, columns, progress=progress)
    if record and RunDir(Path(run_dir)).config.domain:
        folder = RunDir(Path(run_dir))
        scored = folder.eval_dir / "test.jsonl"
        data = [trail.file_facts(scored, "test (as scored)")] if scored.exists() else []
        if test:
            data.insert(0, trail.file_facts(test, "test", columns))
        trail.record_run("eval", run_dir, audit, result=trail.eval_result(results), data=data)
        refresh_card(run_dir)
    return results


def set_domain(run_dir: str | Path, domain: str | None, template: str | None = None) -> RunConfig:
    """Record a domain pack (and its template) in a finished run's `config.yaml`, so that its
    evaluation, model card and audit entries are under that pack; a run trained under
    another domain or template is one sentence (its data was gated under that one)."""
    folder = RunDir(Path(run_dir))
    config = folder.config
    for name, given, have in (("domain", domain, config.domain), ("template", template, config.template)):
        if given and have and given != have:
            raise ConfigError(f"{run_dir} was trained under {name} {have}, so it is evaluated under it; "
                              f"leave out --{name} or give --{name} {have}.")
    updated = apply_overrides(config, {"domain": domain, "template": template}, source="options",
                              names={"domain": "--domain", "template": "--template"})
    resolve(updated.domain, updated.template)  # one sentence for a template of another pack
    if (updated.domain, updated.template) != (config.domain, config.template):
        save_config(updated, folder.path / CONFIG_FILE)
    return updated
