"""A budget is a promise: training re-plans its length and its learning-rate schedule from
the step time it measures (`DeadlineCallback`), and the evaluation's time is measured on a
probe and scaled by the work that grows with the test rows (`workflows.auto`)."""

from types import SimpleNamespace

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup
from transformers.trainer_callback import TrainerControl, TrainerState

from tunesmith.train.callbacks import DeadlineCallback
from tunesmith.workflows.auto import _grows_with


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _run(callback, clock, state, scheduler, step_seconds, steps):
    """Drive `callback` through `steps` optimizer steps of `step_seconds` each; return the
    steps taken before it stopped training."""
    args = SimpleNamespace(eval_strategy="no")
    callback.on_train_begin(args, state, TrainerControl())
    for _ in range(steps):
        clock.t += step_seconds
        scheduler.optimizer.step()
        scheduler.step()
        state.global_step += 1
        control = callback.on_step_end(args, state, TrainerControl(), lr_scheduler=scheduler)
        if control.should_training_stop:
            break
    return state.global_step


def _scheduler(total: int, warmup: int):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return get_cosine_schedule_with_warmup(optimizer, warmup, total)


def test_deadline_shortens_the_run_and_its_schedule_to_end_on_time():
    clock, state = FakeClock(), TrainerState(max_steps=1000)
    scheduler = _scheduler(1000, 50)
    callback = DeadlineCallback(deadline=100.0, clock=clock)
    taken = _run(callback, clock, state, scheduler, step_seconds=2.0, steps=1000)
    assert taken == 50 and state.max_steps == 50  # 100 s at 2 s a step
    # The schedule was re-planned to end there: the rate has decayed (to about zero) at the
    # last step instead of being cut off near its peak.
    assert scheduler.get_last_lr()[0] < 0.01
    keys = scheduler.lr_lambdas[0].keywords
    assert keys["num_training_steps"] == 50 and keys["num_warmup_steps"] == round(50 * 50 / 1000)


def test_deadline_never_lengthens_the_plan():
    clock, state = FakeClock(), TrainerState(max_steps=30)
    scheduler = _scheduler(30, 3)
    callback = DeadlineCallback(deadline=10_000.0, clock=clock)
    assert _run(callback, clock, state, scheduler, step_seconds=1.0, steps=30) == 30
    assert state.max_steps == 30 and scheduler.lr_lambdas[0].keywords["num_training_steps"] == 30


def test_deadline_measures_the_step_time_not_the_slow_first_steps_or_evaluations():
    clock, state = FakeClock(), TrainerState(max_steps=1000)
    scheduler = _scheduler(1000, 0)
    callback = DeadlineCallback(deadline=200.0, clock=clock)
    args = SimpleNamespace(eval_strategy="steps")
    callback.on_train_begin(args, state, TrainerControl())
    for step, seconds in enumerate((30.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0), start=1):  # a slow first step
        clock.t += seconds
        state.global_step += 1
        callback.on_step_end(args, state, TrainerControl(), lr_scheduler=scheduler)
        if step == 4:  # an evaluation and a checkpoint after step 4 (the trainer's order)
            clock.t += 19.0
            callback.on_save(args, state, TrainerControl())
    # 55 s gone at 1 s a step, with the last evaluation-and-save (19 s) kept for the end.
    assert state.max_steps == 7 + (200 - 55 - 19)


def test_deadline_counts_the_evaluations_still_to_come():
    # As above, with an evaluation every 10 steps: each step also carries a tenth of the 19 s
    # one took, so 126 s left at 1 s + 1.9 s a step fit 43 more steps, not 126.
    clock, state = FakeClock(), TrainerState(max_steps=1000)
    scheduler = _scheduler(1000, 0)
    callback = DeadlineCallback(deadline=200.0, clock=clock)
    args = SimpleNamespace(eval_strategy="steps", eval_steps=10)
    callback.on_train_begin(args, state, TrainerControl())
    for step, seconds in enumerate((30.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0), start=1):
        clock.t += seconds
        state.global_step += 1
        callback.on_step_end(args, state, TrainerControl(), lr_scheduler=scheduler)
        if step == 4:
            clock.t += 19.0
            callback.on_save(args, state, TrainerControl())
    assert state.max_steps == 7 + 43


def test_deadline_at_the_last_step_evaluates_and_saves():
    clock, state = FakeClock(), TrainerState(max_steps=100)
    callback = DeadlineCallback(deadline=5.0, clock=clock)
    args = SimpleNamespace(eval_strategy="steps")
    callback.on_train_begin(args, state, TrainerControl())
    control = TrainerControl()
    for _ in range(10):
        clock.t += 1.0
        state.global_step += 1
        control = callback.on_step_end(args, state, TrainerControl(), lr_scheduler=None)
        if control.should_training_stop:
            break
    assert state.global_step == 5 and control.should_evaluate and control.should_save


@pytest.mark.parametrize("what, grows", [
    ("tuned: labelling the test set", "rows"),
    ("base: labelling the test set", "base_rows"),
    ("base: answering the test set", "rows"),
    ("tuned: perplexity of the references", "rows"),
    ("base: perplexity of the test text", "rows"),
    ("tuned: scoring the pairs", "rows"),
    ("base: likelihood of chosen and rejected answers", "rows"),
    ("tuned: confidence on the test set", "rows"),
    ("tuned: labelling the validation rows", None),
    ("tuned: bias probes", "bias_pairs"),
    ("base: general instruction probes", None),
    ("tuned: domain safety probes", None),
])
def test_evaluation_phases_scale_with_what_they_grow_with(what, grows):
    assert _grows_with(what) == grows


def test_a_phase_scales_its_later_batches_and_counts_its_first_once():
    from tunesmith.workflows.auto import _scaled

    # 64 rows in two batches of 32: the first took 3 s (2 of them warm-up), the second 1 s.
    # At 100 times the rows: the first batch as measured, 6,368 rows at 1/32 s.
    chunk = [(10.0, 0), (13.0, 32), (14.0, 64)]
    assert _scaled(chunk, 100) == pytest.approx(3 + (6400 - 32) / 32)
    # One batch cannot tell its warm-up from its work: all of it scales.
    assert _scaled([(10.0, 0), (13.0, 16)], 10) == pytest.approx(30)


def _plan(monkeypatch, tmp_path, **measured):
    """`_fit_budget` for a 15-minute budget on a probe that measured `measured`."""
    import time

    from tunesmith.config import RunConfig
    from tunesmith.workflows import auto

    probe = auto.Probe(**{"per_step": 2.0, "planned": 1000, **measured})
    monkeypatch.setattr(auto, "probe_run", lambda config, out: probe)
    said = []
    config, deadline = auto._fit_budget(RunConfig(), "15m", 900, time.perf_counter(), tmp_path,
                                        lambda key, why: said.append(why))
    return config, deadline - time.perf_counter(), said[0]


def test_a_budget_keeps_the_full_test_set_when_its_evaluation_fits(monkeypatch, tmp_path):
    parts = {"rows": 60.0, "base_rows": 60.0, "bias_pairs": 30.0}
    config, training, why = _plan(monkeypatch, tmp_path, after=200.0, fixed=50.0, parts=parts,
                                  counts={"rows": 3080, "base_rows": 100, "bias_pairs": 150})
    assert config.eval.max_rows is None and config.eval.base_rows == 100
    assert training == pytest.approx(900 * 0.97 - 200, abs=2)  # everything else goes to training
    assert "the full test set (3080 rows)" in why


def test_a_budget_samples_the_prompted_base_before_the_test_rows(monkeypatch, tmp_path):
    # 873 s left, 40% = 349 s for the evaluation: the base's 300 s is cut to fit, the test set stays whole.
    parts = {"rows": 60.0, "base_rows": 300.0}
    config, training, why = _plan(monkeypatch, tmp_path, after=410.0, fixed=50.0, parts=parts,
                                  counts={"rows": 3080, "base_rows": 100})
    assert config.eval.max_rows is None and 40 <= config.eval.base_rows < 100
    assert training == pytest.approx(900 * 0.97 * 0.6, abs=3)
    assert f"the base on {config.eval.base_rows} of them" in why


def test_a_budget_samples_the_test_rows_when_the_base_alone_is_not_enough(monkeypatch, tmp_path):
    parts = {"rows": 600.0, "base_rows": 100.0}
    config, training, why = _plan(monkeypatch, tmp_path, after=750.0, fixed=50.0, parts=parts,
                                  counts={"rows": 3080, "base_rows": 100})
    assert config.eval.base_rows == 40 and 200 <= config.eval.max_rows < 3080
    assert training == pytest.approx(900 * 0.97 * 0.6, abs=3)
    assert "a seeded sample of" in why


def test_a_budget_plans_for_twice_the_epochs_and_leaves_the_deadline_to_trim(monkeypatch, tmp_path):
    # 673 s for training at 2 s a step: 336 steps fit where 200 were planned. The trainer plans
    # 400 (the deadline trims them) and evaluates every 336 // 5 steps.
    config, _, why = _plan(monkeypatch, tmp_path, planned=200, after=200.0, fixed=200.0, parts={}, counts={"rows": 10})
    assert config.train.max_steps == 400 and config.train.eval_steps == 67
    assert "runs up to 336 (1.7x the planned epochs" in why and "up to 400 steps" in why
    # The plan does not fit: the same cap, and evaluations spread over what fits.
    config, _, why = _plan(monkeypatch, tmp_path, planned=1000, after=200.0, fixed=200.0, parts={}, counts={"rows": 10})
    assert config.train.max_steps == 2000 and config.train.eval_steps == 67 and "336 of 1000 planned steps fit" in why


def test_a_budget_too_short_for_five_steps_is_one_sentence(monkeypatch, tmp_path):
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--budget 15m leaves time for \d training steps .* give a longer budget"):
        _plan(monkeypatch, tmp_path, per_step=200.0, after=100.0, fixed=100.0, parts={}, counts={"rows": 10})
