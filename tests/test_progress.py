"""Progress where the output is a log, not a terminal: plain lines at a steady interval."""

import io
import re
from types import SimpleNamespace

from rich.console import Console
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.cli.common import EvalBars, PlainProgress
from tunesmith.runtime import duration
from tunesmith.train.callbacks import RichProgressCallback


class FakeClock:
    """time.monotonic that moves only when a test says so."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def log_console():
    return Console(file=io.StringIO(), force_terminal=False, width=60)


def test_duration():
    assert [duration(s) for s in (0, 12.7, 80, 3725)] == ["0s", "12s", "1m20s", "1h02m"]


def test_training_writes_plain_lines_at_the_interval():
    console, clock = log_console(), FakeClock()
    cb = RichProgressCallback(console=console, interval=10, clock=clock)
    state = SimpleNamespace(global_step=0, max_steps=120, num_input_tokens_seen=0, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)
    assert cb.progress is None  # no rich bar on a log
    for step in range(1, 121):  # the Trainer's order: step end, then the step's loss, then its evaluation
        clock.t = step * 2.0  # two seconds a step
        state.global_step, state.num_input_tokens_seen = step, step * 100
        control = SimpleNamespace(should_log=True, should_evaluate=step == 40)
        cb.on_step_end(None, state, control)
        control.should_log = False
        cb.on_log(None, state, control, logs={"loss": 2.0 - step / 100})
        if step == 40:
            cb.on_log(None, state, control, logs={"eval_loss": 0.512})
    cb.on_train_end(None, state, None)
    lines = console.file.getvalue().splitlines()
    assert lines[0] == "training  step 0/120  elapsed 0s"
    # one at the start, then a line every 10 s (5 steps); the end's line would repeat step 120's
    assert len(lines) == 1 + 120 // 5
    assert "training  step 40/120  loss 1.600  eval 0.512  tok/s " in lines[8]
    assert lines[8].endswith("elapsed 1m20s  left 2m40s")
    assert lines[-1].startswith("training  step 120/120  loss 0.800") and "left 0s" in lines[-1]
    assert not any("\x1b" in line for line in lines)  # no terminal codes in a log


def test_training_on_a_terminal_keeps_the_bar():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    cb = RichProgressCallback(console=console, interval=0)
    state = SimpleNamespace(global_step=0, max_steps=4, num_input_tokens_seen=0)
    cb.on_train_begin(None, state, None)
    assert cb.progress is not None and cb._plain is None
    state.global_step = 4
    cb.on_step_end(None, state, None)
    cb.on_train_end(None, state, None)
    assert "step 4/4" not in console.file.getvalue()


def test_eval_bars_plain_lines_start_interval_end():
    console, clock = log_console(), FakeClock()
    bars = EvalBars(console, interval=5)
    bars.plain.now = clock
    bars("base answers", 0, 30)
    for done in range(1, 31):
        clock.t = done * 1.0
        bars("base answers", done, 30)
    bars("tuned answers", 0, 0)  # an empty phase starts and ends at once
    bars.stop()
    lines = console.file.getvalue().splitlines()
    assert lines[0] == "base answers  0/30  elapsed 0s"
    assert lines[1] == "base answers  5/30  elapsed 5s  left 25s"
    assert lines[-2] == "base answers  30/30  elapsed 30s  done"
    assert lines[-1] == "tuned answers  0/0  elapsed 0s  done"
    assert len(lines) == 1 + 5 + 1 + 1  # start, every 5 s, end (at 30 s), the empty phase


def test_plain_progress_restarts_a_phase_run_again():
    console = log_console()
    plain = PlainProgress(console, interval=100)
    for done in (0, 2, 0, 2):
        plain.update("probes", done, 2, note="n")
    assert console.file.getvalue().splitlines() == ["probes  0/2  n  elapsed 0s", "probes  2/2  n  elapsed 0s  done"] * 2


def test_train_command_prints_progress_lines_to_a_log(tiny_model_dir, tiny_chat_file, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  pack_length: 128\n  batch_size: 1\n  gradient_accumulation: 1\n  eval_steps: 2\n")
    args = ["train", "--data", tiny_chat_file, "--model", tiny_model_dir, "--config", cfg,
            "--max-steps", 3, "--output", tmp_path / "run", "--no-eval"]
    result = CliRunner().invoke(app, [str(a) for a in args], env={"TUNESMITH_PROGRESS_INTERVAL": "0"})
    assert result.exit_code == 0, result.output
    steps = re.findall(r"^training  step (\d+)/3  .*elapsed \S+", result.output, flags=re.MULTILINE)
    assert steps[0] == "0" and steps[-1] == "3" and {"1", "2"} <= set(steps), result.output
    assert re.search(r"step 3/3  loss \d+\.\d{3}  eval \d+\.\d{3}  tok/s \d+  elapsed", result.output), result.output


def test_training_ends_with_a_line_between_intervals():
    console, clock = log_console(), FakeClock()
    cb = RichProgressCallback(console=console, interval=10, clock=clock)
    state = SimpleNamespace(global_step=0, max_steps=7, num_input_tokens_seen=0)
    cb.on_train_begin(None, state, None)
    for step in range(1, 8):
        clock.t, state.global_step = step * 1.0, step
        cb.on_step_end(None, state, SimpleNamespace(should_log=False, should_evaluate=False))
    cb.on_train_end(None, state, None)
    assert console.file.getvalue().splitlines() == ["training  step 0/7  elapsed 0s", "training  step 7/7  elapsed 7s  left 0s"]


def test_tune_command_prints_trial_and_evaluation_lines_to_a_log(tmp_path, tiny_model_dir):
    from conftest import tiny_run_config, write_chat_file

    from tunesmith.config import save_config

    data = write_chat_file(tmp_path / "chat.jsonl", n=40)
    config = tiny_run_config(tiny_model_dir, data, max_steps=2, eval_steps=2)
    config.data.test = str(write_chat_file(tmp_path / "test.jsonl", n=10, offset=40))
    config.eval.forgetting = config.eval.bias = False
    save_config(config, tmp_path / "run.yaml")
    args = ["tune", tmp_path / "run.yaml", "--trials", 2, "--output", tmp_path / "study", "--data-dir", tmp_path / "project"]
    result = CliRunner().invoke(app, [str(a) for a in args], env={"TUNESMITH_PROGRESS_INTERVAL": "0"})
    assert result.exit_code == 0, result.output
    assert re.search(r"^trials  0/2  elapsed", result.output, flags=re.MULTILINE), result.output
    assert re.search(r"^trials  2/2  trial 1 \w+.*  elapsed \S+  done$", result.output, flags=re.MULTILINE), result.output
    # the best trial's evaluation: a line when each phase starts and when it ends
    assert "tuned: answering the test set  0/10  elapsed 0s\n" in result.output, result.output
    assert re.search(r"^tuned: answering the test set  10/10  elapsed \S+  done$", result.output, flags=re.MULTILINE), result.output


def test_progress_for_plain_lines_on_a_log():
    from tunesmith.cli.common import progress_for

    console, clock = log_console(), FakeClock()
    with progress_for(console, "generating", 6, interval=2, clock=clock) as progress:
        for _ in range(3):
            clock.t += 1.0
            progress.advance(2)
    with progress_for(console, "scoring", interval=100) as progress:  # no total: a done line at the end
        progress.advance(5)
    with progress_for(console, "loading", 10, interval=0) as progress:  # a new phase name, a note
        progress.update(3, what="instruct", note="kept 3, dropped 1")
    assert console.file.getvalue().splitlines() == [
        "generating  0/6  elapsed 0s",
        "generating  4/6  elapsed 2s  left 1s",
        "generating  6/6  elapsed 3s  done",
        "scoring  0/?  elapsed 0s",
        "scoring  5/5  elapsed 0s  done",
        "loading  0/10  elapsed 0s",
        "instruct  3/10  kept 3, dropped 1  elapsed 0s",
    ]


def test_progress_for_on_a_terminal_keeps_the_bar():
    from tunesmith.cli.common import progress_for

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress_for(console, "predicting", 4) as progress:
        assert progress.plain is None and progress.bar is not None
        progress.advance(4)
    assert "predicting  4/4" not in console.file.getvalue()


def test_data_augment_prints_progress_lines_to_a_log(tiny_chat_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_PROGRESS_INTERVAL", "0")
    out = tmp_path / "augmented.jsonl"
    result = CliRunner().invoke(app, ["data", "augment", str(tiny_chat_file), "--out", str(out), "--methods", "typo,case"])
    assert result.exit_code == 0, result.output
    assert "augmenting chat.jsonl  0/40  elapsed 0s\n" in result.output, result.output
    assert re.search(r"^augmenting chat\.jsonl  20/40  elapsed \S+  left \S+$", result.output, flags=re.MULTILINE), result.output
    assert re.search(r"^augmenting chat\.jsonl  40/40  elapsed \S+  done$", result.output, flags=re.MULTILINE), result.output
    assert "\x1b" not in result.output


def test_generate_prints_progress_lines_to_a_log(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_PROGRESS_INTERVAL", "0")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "card lost {i}"}}\n' for i in range(3)))
    args = ["generate", tiny_model_dir, "--file", prompts, "--out", tmp_path / "answers.jsonl",
            "--max-new-tokens", 3, "--batch-size", 2]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("generating")]
    assert lines[0] == "generating  0/3  elapsed 0s", result.output
    assert re.fullmatch(r"generating  2/3  elapsed \S+  left \S+", lines[1]), result.output
    assert re.fullmatch(r"generating  3/3  elapsed \S+  done", lines[-1]), result.output


def test_data_synth_prints_progress_lines_to_a_log(tmp_path, stub_openai, monkeypatch):
    from conftest import banking_rows

    monkeypatch.setenv("TUNESMITH_PROGRESS_INTERVAL", "0")
    monkeypatch.setenv("TUNESMITH_TEACHER_KEY", "sk-test")
    counter = iter(range(1000))

    def reply(messages):
        label = re.search(r'label "([^"]+)"', messages[-1]["content"]).group(1)
        return f"Customer question {next(counter)} on {label}, asked in a new way {next(counter)}"

    stub_openai.reply, stub_openai.key = reply, "sk-test"
    rows = [r for r in banking_rows() if r[1] in ("card_arrival", "top_up_failed")][:24]
    seed = tmp_path / "seed.csv"
    seed.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    args = ["data", "synth", "--seed", seed, "--out", tmp_path / "synth.jsonl", "--n", 4, "--teacher-url", stub_openai.url,
            "--teacher-model", "stub", "--label-check", "off", "--rouge", 1.0, "--cosine", 1.0]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "loading  0/4  elapsed 0s\n" in result.output, result.output
    assert re.search(r"^classify  4/4  kept 4, dropped \d+  elapsed \S+  done$", result.output, flags=re.MULTILINE), result.output
