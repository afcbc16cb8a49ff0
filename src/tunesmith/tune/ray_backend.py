"""The Ray backend of `tunesmith tune`: the same Optuna study, its trials run by Ray Tune.

Ray Tune asks a searcher for each trial's values; ours asks the study (so the TPE sampler
and the enqueued values decide, as with the local backend) and tells it each result. A
trial runs in a Ray worker, which opens the same study in the database and reports every
evaluation to it, so the study's median pruner stops bad trials exactly as it does locally.
On a cluster the workers must reach the database (PostgreSQL: `--database-url`) and the
study folder (a shared file system), and have tunesmith installed.
"""

from __future__ import annotations

from pathlib import Path

import ray
from ray import tune
from ray.tune.search import Searcher

from tunesmith.config import RunConfig
from tunesmith.errors import ConfigError, TrainError
from tunesmith.tune.trial import pruner, train_trial


def run_on_ray(study, storage: str, base: RunConfig, space: list, out_dir: Path, key: str, trials: int,
               on_trial=None, address: str | None = None, parallel: int = 1) -> None:
    """Run `trials` more trials of `study` with Ray Tune, `parallel` at a time."""
    if trials <= 0:
        return
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise ConfigError(f"cannot reach a Ray cluster at {address}: start it with `ray start --head`, or leave out --ray-address.") from exc
    try:
        gpus = 1 if ray.cluster_resources().get("GPU") else 0
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=base.model_dump(mode="json"), storage=storage, study_name=study.study_name,
                                 out_dir=str(out_dir.resolve()), key=key, maximize=study.direction.name == "MAXIMIZE"),
            {"cpu": 1, "gpu": gpus},
        )
        searcher = StudySearcher(study, space, on_trial)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, max_concurrent_trials=parallel),
            run_config=tune.RunConfig(name=study.study_name, storage_path=str((out_dir / "ray").resolve()), verbose=0),
        )
        results = tuner.fit()
        failed = [r.error for r in results if r.error is not None]
        if failed:
            reason = str(failed[0]).strip().splitlines()[-1]
            raise TrainError(f"{len(failed)} trial(s) failed on Ray: {reason}")
    finally:
        if started:
            ray.shutdown()


class StudySearcher(Searcher):
    """A Ray Tune searcher that draws each trial from the Optuna study and tells it back."""

    def __init__(self, study, space: list, on_trial=None):
        super().__init__(metric="objective", mode="max" if study.direction.name == "MAXIMIZE" else "min")
        self.study, self.space, self.on_trial = study, space, on_trial
        self.asked: dict = {}

    def suggest(self, trial_id: str) -> dict:
        trial = self.study.ask()
        self.asked[trial_id] = trial
        return {"values": {p.name: p.sample(trial) for p in self.space}, "trial_id": trial._trial_id}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        trial = self.asked.pop(trial_id)
        State = optuna.trial.TrialState
        if result and result.get("pruned"):
            self.study.tell(trial, state=State.PRUNED)
        elif error or not result or result.get("objective") is None:
            self.study.tell(trial, state=State.FAIL)
        else:
            self.study.tell(trial, result["objective"])
        if self.on_trial:
            self.on_trial(self.study.trials[trial.number])


def _trial(params: dict, base: dict, storage: str, study_name: str, out_dir: str, key: str, maximize: bool) -> None:
    """One trial in a Ray worker: train it against the shared study, reporting to Ray Tune
    at every evaluation and at the end."""
    import optuna
    from transformers import TrainerCallback

    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner())
    trial = optuna.trial.Trial(study, params["trial_id"])
    best: list[float] = []

    class Report(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get(key)
            if value is not None:
                best.append(value if not best else (max if maximize else min)(best[-1], value))
                tune.report({"objective": best[-1], "step": state.global_step, "pruned": False})

    try:
        value = train_trial(RunConfig.model_validate(base), params["values"], trial, Path(out_dir), key, maximize, [Report()])
    except optuna.TrialPruned:
        tune.report({"objective": best[-1] if best else None, "pruned": True})
        return
    tune.report({"objective": value, "pruned": False})
