"""Trainer callbacks: `metrics.jsonl` for machines, a rich progress bar for people (plain
lines at a steady interval when the output is a log file rather than a terminal)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from tunesmith.runtime import duration, progress_interval
from tunesmith.tracking import Trackers
from tunesmith.train.speed import (
    flops_per_token,
    mfu,
    parameter_counts,
    peak_memory_gb,
    peak_tflops,
    reset_peak_memory,
)

# What metrics.jsonl keeps of a log event (the trainers log more): losses, classifier and
# reward-model accuracy, preference reward margins, RL reward, its spread and the KL.
LOGGED = (
    "loss", "eval_loss", "eval_accuracy", "eval_macro_f1", "learning_rate", "grad_norm",
    "accuracy", "rewards/accuracies", "rewards/margins", "eval_rewards/accuracies", "eval_rewards/margins",
    "reward", "reward_std", "kl", "eval_reward", "eval_reward_std", "eval_kl",
)
# The speed figures `SpeedCallback` adds to each training log event.
SPEED = ("tokens_per_s", "peak_memory_gb", "mfu")


class MetricsFileCallback(TrainerCallback):
    """Append one JSON line per log event: step, train/eval loss, learning rate, tokens/s, peak
    memory and MFU (from `SpeedCallback`), and the method's own figures (accuracy, reward margins,
    reward and KL)."""

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
            if any(key in logs for key in SPEED):  # measured by SpeedCallback
                row.update({key: logs[key] for key in SPEED if key in logs})
            elif self._last_time is not None and now > self._last_time:
                row["tokens_per_s"] = round((tokens - self._last_tokens) / (now - self._last_time), 1)
            row["tokens_seen"] = tokens
            self._last_time, self._last_tokens = now, tokens
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def on_evaluate(self, args, state, control, **kwargs):
        # Evaluation time is not training time: restart the tokens/s clock.
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen


class TrackingCallback(TrainerCallback):
    """The run's settings and per-step metrics to its experiment trackers (`--report-to`);
    the evaluation is added later by `tracking.log_evaluation`. Main process only."""

    def __init__(self, names: list[str], run_dir: Path, config: dict, stage: str | None = None):
        self.names, self.run_dir, self.config = names, Path(run_dir), config
        self.prefix = f"{stage}/" if stage else ""  # a multi-stage run restarts its steps per stage
        self.trackers = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.trackers is None:
            self.trackers = Trackers(self.names, self.run_dir, self.config)
            self.trackers.log_params()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.trackers is not None and logs:
            self.trackers.log_metrics({f"{self.prefix}train/{k}": v for k, v in logs.items()}, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


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
        self._stats = {"loss": "-", "eval": "-", "tok/s": "-", "mem": "-", "mfu": "-"}
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
        text = f"loss {self._stats['loss']}  val {self._stats['eval']}  {self._stats['tok/s']} tok/s"
        if self._stats["mem"] != "-":
            text += f"  {self._stats['mem']}"
        if self._stats["mfu"] != "-":
            text += f"  MFU {self._stats['mfu']}"
        return text

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
        if self.progress is not None:  # the total too: a budgeted run re-plans it (`DeadlineCallback`)
            self.progress.update(self.task, completed=state.global_step, total=state.max_steps)
        elif self._plain is not None:
            self._plain["total"] = state.max_steps
        if self._plain is not None and (self._plain["due"] or self.now() - self._plain["last"] >= self.interval):
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
            if logs.get("tokens_per_s") is not None:  # measured by SpeedCallback (evaluation time left out)
                self._stats["tok/s"] = f"{logs['tokens_per_s']:.0f}"
            elif now > then:
                self._stats["tok/s"] = f"{(state.num_input_tokens_seen - tokens) / (now - then):.0f}"
            if logs.get("peak_memory_gb") is not None and _on_cuda(args):  # a CPU's is the process RSS: metrics only
                self._stats["mem"] = f"{logs['peak_memory_gb']:.1f} GB peak"
            if logs.get("mfu") is not None:
                self._stats["mfu"] = f"{logs['mfu']:.0%}"
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


class DeadlineCallback(TrainerCallback):
    """End training by `deadline` (a `time.perf_counter()` instant), re-planning the run from
    the measured step time: after each step the steps that still fit become the run's length
    and the learning-rate schedule (warm-up and cosine) is stretched or shrunk to end there,
    so a budgeted run decays its rate properly instead of being cut off mid-schedule. It can
    shorten the trainer's plan, never lengthen it. The step time is the median of the recent
    gaps between steps (an evaluation's gap is an outlier), plus a share of the longest
    evaluation-and-save seen for the evaluations still to come; one more is kept in reserve
    for the one the end of training runs."""

    WINDOW = 20  # recent gaps the step time is the median of

    def __init__(self, deadline: float, clock=time.perf_counter):
        self.deadline, self.now = deadline, clock
        self.planned = 0
        self.times: list[float] = []
        self.saving = 0.0  # the longest evaluation + checkpoint seen (step end -> save)

    def on_train_begin(self, args, state, control, **kwargs):
        self.planned = state.max_steps

    def on_save(self, args, state, control, **kwargs):
        if self.times:
            self.saving = max(self.saving, self.now() - self.times[-1])

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        now = self.now()
        self.times.append(now)
        recent = self.times[-self.WINDOW - 1:]
        gaps = sorted(b - a for a, b in zip(recent, recent[1:]))
        if len(gaps) < 2:  # the first step's time includes allocating memory: not a measure
            return control
        per_step = max(gaps[len(gaps) // 2], 1e-6)
        # The evaluations still to come, one every eval_steps, each as long as the longest yet:
        # the median leaves them out, and a plan without them overruns by those it still meets.
        every = getattr(args, "eval_steps", None) if args.eval_strategy == "steps" else None
        per_step += self.saving / every if every and every >= 1 else 0.0
        fits = state.global_step + int(max(0.0, self.deadline - now - self.saving) / per_step)
        target = max(state.global_step, min(self.planned, fits))
        if target != state.max_steps:
            _stretch_schedule(lr_scheduler, target)
            state.max_steps = target
        if state.global_step >= target:
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"  # the best checkpoint sees the last steps
            control.should_save = True
        return control


def _stretch_schedule(scheduler, new: int) -> None:
    """Make a warm-up + cosine `LambdaLR` end at step `new`, keeping the warm-up's share
    (transformers builds the lambdas as partials of the step counts)."""
    from functools import partial

    if scheduler is None:
        return
    lambdas = getattr(scheduler, "lr_lambdas", [])
    for i, fn in enumerate(lambdas):
        keys = getattr(fn, "keywords", None)
        if isinstance(fn, partial) and keys and keys.get("num_training_steps"):
            warmup = round(keys.get("num_warmup_steps", 0) * new / keys["num_training_steps"])
            lambdas[i] = partial(fn.func, *fn.args, **{**keys, "num_training_steps": new, "num_warmup_steps": warmup})


class SpeedCallback(TrainerCallback):
    """Counts the real tokens the model trains on and times training (evaluation and checkpoint
    saving left out), and adds `tokens_per_s`, `peak_memory_gb` and on a GPU `mfu` to every
    training log event, so the metrics file, the progress bar and the trackers all show them.

    Tokens are counted by a forward pre-hook on the model: the attention mask's sum of a padded
    batch, every position of a padding-free one, in training forwards only (not evaluation,
    generation or a reference model's no-grad pass). On a GPU the count stays a device tensor
    until a step that logs, evaluates or saves: no device-to-host copy per step (the trainer's
    own `include_num_input_tokens_seen` makes one per micro-batch, so recipes turn it off and this
    callback keeps `state.num_input_tokens_seen` instead). Must come before the callbacks that
    read the figures (`run_callbacks` puts it first)."""

    def __init__(self):
        self._hook = None
        self._host = 0  # tokens counted without touching the device (padding-free batches)
        self._device = None  # a device tensor summing attention masks, read when logging
        self.tokens = 0  # tokens of this session (a resumed run counts from its resume)
        self.per_token: float | None = None
        self.peak: float | None = None
        self.peak_source = ""
        self.devices = 1
        self.device_name = "cpu"
        self.start = self._mark = None
        self._mark_tokens = 0
        self._mark_excluded = 0.0
        self.excluded = 0.0  # seconds spent evaluating and saving
        self._paused: float | None = None
        self.end: float | None = None
        self.last: dict = {}

    # -- counting

    def _count(self, module, args, kwargs):
        import torch

        if not module.training or not torch.is_grad_enabled():
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor):
            return
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
            n = mask.sum()
            self._device = n if self._device is None else self._device + n
        else:
            self._host += ids.numel()

    def _flush(self, args, state) -> None:
        """Add the tokens counted since the last flush to the totals (one device read)."""
        n = self._host + (int(self._device.item()) if self._device is not None else 0)
        self._host, self._device = 0, None
        if self.devices > 1:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                total = torch.tensor(n, device=args.device, dtype=torch.int64)
                dist.all_reduce(total)
                n = int(total.item())
        self.tokens += n
        state.num_input_tokens_seen += n

    # -- timing

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import torch

        self.devices = max(1, int(args.world_size))
        on_gpu = torch.cuda.is_available() and args.device.type == "cuda"
        self.device_name = torch.cuda.get_device_name(args.device) if on_gpu else "cpu"
        if model is not None:
            if self._hook is not None:
                self._hook.remove()
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
            _, matmul, trainable = parameter_counts(model)
            self.per_token = flops_per_token(matmul, trainable)
        if on_gpu:
            self.peak, self.peak_source = peak_tflops(self.device_name)
        reset_peak_memory()
        self.tokens = 0
        self.start = self._mark = time.perf_counter()
        self._mark_tokens, self._mark_excluded, self.excluded, self._paused = 0, 0.0, 0.0, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._paused is not None:  # back to training after an evaluation or a checkpoint
            self.excluded += time.perf_counter() - self._paused
            self._paused = None

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_evaluate or control.should_save or state.global_step >= state.max_steps:
            self._flush(args, state)
        if control.should_evaluate or control.should_save:
            _synchronize(args)  # the step's GPU work is training time, what follows is not
            self._paused = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or self._mark is None:
            return
        now = self._paused if self._paused is not None else time.perf_counter()
        seconds = now - self._mark - (self.excluded - self._mark_excluded)
        figures = self._figures(self.tokens - self._mark_tokens, seconds)
        self._mark, self._mark_tokens, self._mark_excluded = now, self.tokens, self.excluded
        logs.update(figures)  # later callbacks (metrics file, progress bar, trackers) read them
        self.last = figures

    def on_evaluate(self, args, state, control, **kwargs):
        self._resume_clock()

    def on_save(self, args, state, control, **kwargs):
        self._resume_clock()

    def _resume_clock(self) -> None:
        """An evaluation or checkpoint ended: count its time out and keep the clock paused until
        the next step begins (a checkpoint may follow an evaluation)."""
        if self._paused is not None:
            now = time.perf_counter()
            self.excluded += now - self._paused
            self._paused = now

    def on_train_end(self, args, state, control, **kwargs):
        self._flush(args, state)
        _synchronize(args)
        self.end = self._paused if self._paused is not None else time.perf_counter()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- figures

    def _figures(self, tokens: int, seconds: float) -> dict:
        out = {}
        rate = tokens / seconds if seconds > 0 and tokens > 0 else None
        if rate is not None:
            out["tokens_per_s"] = round(rate, 1)
        memory, _ = peak_memory_gb()
        if memory is not None:
            out["peak_memory_gb"] = round(memory, 2)
        utilisation = mfu(rate, self.per_token, self.peak, self.devices)
        if utilisation is not None:
            out["mfu"] = round(utilisation, 4)
        return out

    def train_seconds(self) -> float | None:
        if self.start is None:
            return None
        end = self.end if self.end is not None else time.perf_counter()
        return end - self.start - self.excluded

    def summary(self) -> dict:
        """The run's figures for `run.json` (`TrainSummary` fields): over all training time."""
        seconds = self.train_seconds()
        if seconds is None:
            return {}
        figures = self._figures(self.tokens, seconds)
        memory, kind = peak_memory_gb()
        out = {
            "device": self.device_name,
            "training_seconds": round(seconds, 2),
            "tokens_per_s": figures.get("tokens_per_s"),
            "peak_memory_gb": figures.get("peak_memory_gb"),
            "peak_memory_kind": kind if memory is not None else None,
            "mfu": figures.get("mfu"),
            "flops_per_token": self.per_token,
            "peak_tflops": self.peak,
        }
        return {k: v for k, v in out.items() if v is not None}


def _on_cuda(args) -> bool:
    device = getattr(args, "device", None)
    return getattr(device, "type", None) == "cuda"


def _synchronize(args) -> None:
    import torch

    if torch.cuda.is_available() and args.device.type == "cuda":
        torch.cuda.synchronize(args.device)


def speed_figures(trainer) -> dict:
    """The `SpeedCallback` figures of a finished trainer (empty when it had none)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, SpeedCallback):
            return callback.summary()
    return {}
