"""Trainer callbacks: `metrics.jsonl` for machines, a rich progress bar for people (plain
lines at a steady interval when the output is a log file rather than a terminal)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback
from tunesmith.runtime import duration, progress_interval

# What metrics.jsonl keeps of a log event (the trainers log more): losses, classifier and
# reward-model accuracy, preference reward margins, RL reward, its spread and the KL.
LOGGED = (
    "loss", "eval_loss", "eval_accuracy", "eval_macro_f1", "learning_rate", "grad_norm",
    "accuracy", "rewards/accuracies", "rewards/margins", "eval_rewards/accuracies", "eval_rewards/margins",
    "reward", "reward_std", "kl", "eval_reward", "eval_reward_std", "eval_kl",
)


class MetricsFileCallback(TrainerCallback):
    """Append one JSON line per log event: step, train/eval loss, learning rate, tokens/s,
    and the method's own figures (accuracy, reward margins, reward and KL)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_loss" in logs or not state.is_world_process_zero:  # not a step, or not the main process
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key in LOGGED:
            if key in logs:
                row["train_loss" if key == "loss" else key] = logs[key]
        if len(row) == 2:  # nothing we keep (e.g. a final evaluation under another prefix)
            return
        if "loss" in logs:  # tokens/s over the steps since the previous training log
            now = time.perf_counter()
            tokens = state.num_input_tokens_seen
            if self._last_time is not None and now > self._last_time:
                row["tokens_per_s"] = round((tokens - self._last_tokens) / (now - self._last_time), 1)
            row["tokens_seen"] = tokens
            self._last_time, self._last_tokens = now, tokens
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def on_evaluate(self, args, state, control, **kwargs):
        # Evaluation time is not training time: restart the tokens/s clock.
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen


class RichProgressCallback(TrainerCallback):
    """A rich progress bar over optimizer steps showing loss, validation loss and tokens/s.

    Rich draws nothing live when the console is not a terminal (a log file, CI, nohup), so
    there the same figures go out as one plain line every `interval` seconds and at the end."""

    def __init__(self, console=None, description: str = "training", interval: float | None = None, clock=time.monotonic):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.description = description
        self.progress = None
        self.task = None
        self._stats = {"loss": "-", "eval": "-", "tok/s": "-"}
        self._clock = (time.perf_counter(), 0)
        self.interval = progress_interval() if interval is None else interval
        self.now = clock
        self._plain: dict | None = None  # plain mode: start time and step, last line (time, figures), a line held back

    def on_train_begin(self, args, state, control, **kwargs):
        self._clock = (time.perf_counter(), state.num_input_tokens_seen)
        if not self.console.is_terminal:
            now = self.now()
            self._plain = {"start": now, "step0": state.global_step, "last": now, "total": state.max_steps,
                           "due": False, "shown": None}
            self._line(state.global_step)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, stats=self._render()
        )

    def _render(self) -> str:
        return f"loss {self._stats['loss']}  val {self._stats['eval']}  {self._stats['tok/s']} tok/s"

    def _line(self, step: int) -> None:
        """One plain progress line: step/total, the figures known so far, elapsed and time left."""
        plain = self._plain
        now = self.now()
        plain["last"], plain["due"] = now, False
        if plain["shown"] == (step, dict(self._stats)):  # the end, just after an interval's line
            return
        plain["shown"] = (step, dict(self._stats))
        elapsed, done, total = now - plain["start"], step - plain["step0"], plain["total"]
        parts = [f"{self.description}  step {step}/{total}"]
        parts += [f"{name} {value}" for name, value in self._stats.items() if value != "-"]
        parts.append(f"elapsed {duration(elapsed)}")
        if done > 0 and total:  # the pace since this run (or resume) began
            parts.append(f"left {duration(elapsed / done * max(0, total - step))}")
        self.console.print("  ".join(parts), markup=False, highlight=False, soft_wrap=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
        elif self._plain is not None and (self._plain["due"] or self.now() - self._plain["last"] >= self.interval):
            # The step's loss and evaluation are logged after this event: wait for them.
            if not self._plain["due"] and control is not None and (control.should_log or control.should_evaluate):
                self._plain["due"] = True
            else:
                self._line(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if (self.progress is None and self._plain is None) or not logs:
            return
        if "loss" in logs:
            self._stats["loss"] = f"{logs['loss']:.3f}"
            now = time.perf_counter()
            then, tokens = self._clock
            if now > then:
                self._stats["tok/s"] = f"{(state.num_input_tokens_seen - tokens) / (now - then):.0f}"
            self._clock = (now, state.num_input_tokens_seen)
        if "eval_loss" in logs:  # classifiers and reward models show accuracy, RL its reward, the rest loss
            accuracy, reward = logs.get("eval_accuracy"), logs.get("eval_reward")
            if accuracy is not None:
                self._stats["eval"] = f"{accuracy:.1%}"
            elif reward is not None:
                self._stats["eval"] = f"reward {reward:.3f}"
            else:
                self._stats["eval"] = f"{logs['eval_loss']:.3f}"
            self._clock = (time.perf_counter(), state.num_input_tokens_seen)
        if self.progress is not None:
            self.progress.update(self.task, stats=self._render())
        elif self._plain["due"] and (any(k.startswith("eval_") for k in logs) or not getattr(control, "should_evaluate", False)):
            self._line(state.global_step)  # the line held back at the step's end, now with its figures

    def on_train_end(self, args, state, control, **kwargs):
        if self._plain is not None:  # the last line: where training ended, and its figures
            self._line(state.global_step)
        self.close()

    def close(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self._plain = None
