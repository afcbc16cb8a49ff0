"""One trial of a study: the config with the trial's values applied, trained in this process
(`train.stages`), with the objective reported to Optuna at every evaluation so the pruner can
stop it. Both backends (Optuna here, Ray Tune in `ray_backend`) run trials through this.
"""

from __future__ import annotations

import math
from pathlib import Path

from transformers import TrainerCallback

from tunesmith.config import RunConfig, apply_overrides
from tunesmith.errors import ConfigError
from tunesmith.train.stages import train_stages


class PruningCallback(TrainerCallback):
    """Report the objective to Optuna at every evaluation; stop a trial the pruner gives up on."""

    def __init__(self, trial, key: str, maximize: bool):
        self.trial, self.key, self.maximize = trial, key, maximize
        self.best: float | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        import optuna

        value = (metrics or {}).get(self.key)
        if value is None or not math.isfinite(value):
            return
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value
        self.trial.report(value, state.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"step {state.global_step}: {self.key} {value:.4g} is worse than the median")


def pruner():
    """Prune once two trials have finished, from the first evaluation on, at an evaluation
    where a trial is worse than the median of the others there."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def train_trial(base: RunConfig, values: dict, trial, out_dir: Path, key: str, maximize: bool, callbacks=None) -> float:
    """Train one trial of `values` into `OUT/trial-<n>/` and return its best `key`; raises
    optuna.TrialPruned when the pruner stops it. Both backends run trials through this."""
    run_dir = out_dir / f"trial-{trial.number}"
    trial.set_user_attr("run_dir", str(run_dir))
    pruning = PruningCallback(trial, key, maximize)
    config = apply_overrides(base, values, source=f"trial {trial.number}")
    train_stages(config, run_dir, [*(callbacks or []), pruning], resume=False)  # pruning last: it may stop the trial
    if pruning.best is None:
        raise ConfigError(f"trial {trial.number} reported no {key}; choose an --objective this method logs.")
    return pruning.best
