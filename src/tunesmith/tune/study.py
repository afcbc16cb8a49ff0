"""Hyperparameter search with Optuna: `tunesmith tune CONFIG --trials N`.

Each trial trains the config with sampled values into `OUT/trial-<n>/`, in this process or,
with `--backend ray`, as a Ray Tune trial (`tune/ray_backend.py`). The objective is a
validation metric the trainer reports at every evaluation step (never the test set, which
stays for the final before/after report). A TPE sampler proposes values from what earlier
trials scored, and a median pruner stops a trial at an evaluation step where it is worse
than the median of earlier trials at that step. The study lives in the project database
(the one `tunesmith serve` uses), so an interrupted search resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import PREFERENCE_STAGES, RL_STAGES, RunConfig, save_config
from tunesmith.errors import ConfigError
from tunesmith.evaluate.report import write_study_report
from tunesmith.train.auto import default_learning_rate
from tunesmith.tune.trial import pruner, train_trial

# objective name -> (key in the trainer's evaluation logs, direction, train.best_metric)
OBJECTIVES = {
    "eval_loss": ("eval_loss", "minimize", "loss"),
    "accuracy": ("eval_accuracy", "maximize", "accuracy"),
    "macro_f1": ("eval_macro_f1", "maximize", "macro_f1"),
    "reward": ("eval_reward", "maximize", "reward"),
}
LORA_FAMILY = ("lora", "rslora", "dora", "pissa", "olora")


@dataclass(frozen=True)
class Param:
    """One searched setting: `section.field` of the run config and its range."""

    name: str  # "train.learning_rate", "method.lora_r", ...
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def sample(self, trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def search_space(config: RunConfig) -> list[Param]:
    """The default search space for the config's method, centred on tunesmith's automatic
    values: the learning rate from a quarter to 4x the automatic rate (the setting that
    matters most), the LoRA rank and dropout for the LoRA family, the number of virtual
    tokens for prompt/prefix tuning, the preference strength `beta` for DPO-style methods,
    and weight decay."""
    m, stage = config.method, config.method.stages[-1]
    rate = float(config.train.learning_rate) if config.train.learning_rate != "auto" else default_learning_rate(config)
    space = [Param("train.learning_rate", rate / 4, rate * 4, log=True), Param("train.weight_decay", 0.0, 0.1)]
    if m.adapter in LORA_FAMILY:
        space += [Param("method.lora_r", choices=(8, 16, 32)), Param("method.lora_dropout", 0.0, 0.1)]
    elif m.adapter in ("prompt", "prefix"):
        space.append(Param("method.num_virtual_tokens", choices=(10, 20, 40)))
    if stage in PREFERENCE_STAGES or stage in RL_STAGES:
        space.append(Param("method.beta", 0.01, 0.5, log=True))
    return space


def run_study(
    config: RunConfig,
    out_dir: str | Path,
    trials: int,
    objective: str,
    storage: str,
    study_name: str | None = None,
    space: list[Param] | None = None,
    enqueue: list[dict] | None = None,
    callbacks: list | None = None,
    on_trial=None,
    backend: str = "optuna",
    ray_address: str | None = None,
    parallel: int = 1,
) -> dict:
    """Run (or resume) a study of `trials` finished trials in all and return its summary
    (also written to `OUT/study.json`, with `study.html`). `enqueue` lists values to try
    first; `on_trial(frozen_trial)` is called after each trial. `backend="ray"` runs the
    trials as Ray Tune trials (`parallel` at once) on the Ray cluster at `ray_address`, or
    on a Ray instance started on this machine; the study and its report are the same."""
    import optuna

    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective} is not one of {', '.join(OBJECTIVES)}.")
    if backend not in ("optuna", "ray"):
        raise ConfigError(f"--backend {backend} is not one of optuna, ray.")
    key, direction, best_metric = OBJECTIVES[objective]
    if config.data.validation_split == 0 and not config.data.validation:
        raise ConfigError("tune compares trials on validation data: give --validation FILE or a validation_split above 0.")
    if config.distributed.num_processes > 1:
        raise ConfigError("tune trains each trial in one process: set distributed.num_processes to 1 (--backend ray runs trials side by side).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = config.model_copy(deep=True)
    base.train.best_metric = best_metric
    base.eval.enabled = False  # trials are compared on validation data; the test set is for the best one
    space = space or search_space(base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name or out_dir.resolve().name,
        load_if_exists=True,
        direction=direction,
        # TPE after a few random trials; seeded so a study can be repeated.
        sampler=optuna.samplers.TPESampler(seed=config.train.seed, n_startup_trials=min(5, max(1, trials // 3))),
        pruner=pruner(),
    )
    save_config(config, out_dir / "base_config.yaml")
    for values in enqueue or []:
        study.enqueue_trial(values)

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if backend == "ray":
        try:
            # Ray is an optional extra and heavy to import: only a Ray study pays for it.
            from tunesmith.tune.ray_backend import run_on_ray
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("ray"):
                raise
            raise ConfigError("--backend ray needs Ray Tune: pip install 'tunesmith[ray]'.") from exc
        left = trials - sum(t.state in finished for t in study.trials)
        run_on_ray(study, storage, base, space, out_dir, key, left, on_trial, ray_address, parallel)
    else:

        def run_trial(trial) -> float:
            values = {p.name: p.sample(trial) for p in space}
            return train_trial(base, values, trial, out_dir, key, direction == "maximize", callbacks)

        while sum(t.state in finished for t in study.trials) < trials:
            study.optimize(run_trial, n_trials=1, catch=())
            if on_trial:
                on_trial(study.trials[-1])
    summary = summarize(study, objective, key, space)
    (out_dir / "study.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_study_report(out_dir, summary)
    return summary


def summarize(study, objective: str, key: str, space: list[Param]) -> dict:
    """Every trial (state, values, intermediate objective values), the best trial and the
    parameter importances (fANOVA; needs two finished trials with different values)."""
    import optuna

    rows = []
    for t in study.trials:
        rows.append({"number": t.number, "state": t.state.name.lower(), "params": t.params, "value": t.value,
                     "intermediate": {int(k): v for k, v in t.intermediate_values.items()},
                     "run_dir": t.user_attrs.get("run_dir")})
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    importances: dict = {}
    if len(complete) >= 2 and any(len({str(t.params.get(p.name)) for t in complete}) > 1 for p in space):
        try:
            importances = dict(optuna.importance.get_param_importances(study))
        except (RuntimeError, ValueError):  # e.g. all finished trials scored the same
            importances = {}
    best = study.best_trial if complete else None
    return {
        "study": study.study_name,
        "objective": objective,
        "metric": key,
        "direction": study.direction.name.lower(),
        "space": [p.__dict__ for p in space],
        "trials": rows,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                           "run_dir": best.user_attrs.get("run_dir")},
        "importances": importances,
        "counts": {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")},
    }
