"""The `tunesmith` command. Each command parses its options, calls one library function and
renders the result with rich; user errors print one sentence, never a traceback."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.errors import TunesmithError

app = typer.Typer(help="Turn a general-purpose LLM into a specialist for your task.", no_args_is_help=True)
data_app = typer.Typer(help="Read, check and convert data files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err = Console(stderr=True)


def _quiet_libraries() -> None:
    # Library chatter (progress dicts, deprecation notes) drowns out our own progress bars.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _convert_builtin_once(target: str | None) -> None:
    """The first use of a built-in model converts its GGUF file (about 20 s): say so with a
    spinner instead of sitting silent. `target` is a model name or a run directory."""
    from tunesmith.models import BUILTIN_MODELS, builtin_cache_dir, ensure_builtin

    from tunesmith.serve.engine import is_run_dir

    name = target
    if target and is_run_dir(Path(target)):
        from tunesmith.config import load_config

        name = load_config(Path(target) / "config.yaml").model.name
    if name in BUILTIN_MODELS and not (builtin_cache_dir(name) / "config.json").exists():
        with err.status(f"first use of {name}: converting the bundled model once (about 20 s)"):
            ensure_builtin(name)


def user_errors(fn):
    """Turn a TunesmithError into one red sentence and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunesmithError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None

    return wrapper


def _default_run_dir() -> Path:
    return Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------- models


@app.command("models")
@user_errors
def list_models_cmd() -> None:
    """List the built-in base models (usable offline). Any local Hugging Face model folder
    or hub id (when online) works too."""
    from tunesmith.models import list_models

    table = Table(title="Base models")
    for col in ("name", "parameters", "licence", "status", "description"):
        table.add_column(col)
    for m in list_models():
        table.add_row(m["name"], f"{m['params'] / 1e6:.0f}M", m["licence"], m["status"], m["description"])
    console.print(table)
    console.print("Also accepted: a local model folder (--model ./my-model) or a hub id when online.")


# --------------------------------------------------------------------------- data


@data_app.command("inspect")
@user_errors
def inspect_data(
    file: Annotated[Path, typer.Argument(help="Data file or saved `datasets` folder.")],
    model: Annotated[str, typer.Option(help="Model whose tokenizer counts tokens.")] = "smollm2-135m",
    columns: Annotated[Optional[str], typer.Option(help="Override detection: field=column,... e.g. text=query,label=intent.")] = None,
    show: Annotated[int, typer.Option(help="Example rows to print.")] = 2,
) -> None:
    """Detect the format of FILE, convert it to the canonical shape and report what was found."""
    _quiet_libraries()
    from tunesmith.data.formats import length_percentiles, load_data, parse_columns, token_lengths
    from tunesmith.models import load_tokenizer

    data = load_data(file, columns=parse_columns(columns) if columns else None)
    _convert_builtin_once(model)
    with err.status(f"counting tokens with the {model} tokenizer"):
        lengths = token_lengths(data.records, data.task, load_tokenizer(model))
    table = Table(show_header=False, title=str(file))
    table.add_row("format", data.format.value)
    table.add_row("task", data.task)
    table.add_row("rows", str(len(data.records)))
    table.add_row("columns", ", ".join(f"{field} <- {col}" for field, col in data.column_map.items()))
    pct = length_percentiles(lengths)
    table.add_row(f"tokens ({model})", "  ".join(f"{k} {v}" for k, v in pct.items()))
    if data.task == "classify":
        labels = {r["label"] for r in data.records}
        table.add_row("labels", f"{len(labels)} distinct")
    for note in data.notes:
        table.add_row("note", note)
    console.print(table)
    for record in data.records[:show]:
        console.print_json(data=record)


@data_app.command("check")
@user_errors
def check_data_cmd(
    file: Annotated[Path, typer.Argument(help="Training data file to check.")],
    validation: Annotated[Optional[str], typer.Option(help="Validation file: checked for leakage from FILE.")] = None,
    test: Annotated[Optional[str], typer.Option(help="Test file: checked for leakage from FILE.")] = None,
    model: Annotated[str, typer.Option(help="Model whose tokenizer measures lengths.")] = "smollm2-135m",
    max_length: Annotated[Optional[int], typer.Option(help="Flag rows longer than this many tokens.")] = None,
    columns: Annotated[Optional[str], typer.Option(help="Override detection: field=column,...")] = None,
    out: Annotated[Path, typer.Option(help="Folder for data_card.json and data_card.md.")] = Path("."),
    fix: Annotated[Optional[Path], typer.Option(help="Write a cleaned copy here (JSONL) plus fix_log.jsonl; FILE is never changed.")] = None,
    task: Annotated[Optional[str], typer.Option(help="What the data will train: chat, classify, pretrain, preference or kto (default: as detected).")] = None,
    label_check: Annotated[bool, typer.Option(help="Look for mislabelled rows with embeddings (classification data; ~60 s per 10k rows on 2 CPU cores).")] = True,
) -> None:
    """Check FILE for problems that spoil training (empty answers, conflicts, duplicates,
    leakage, PII, encoding, lengths, labels) and write a data card. Exit code 1 when a
    finding is an error, which blocks training."""
    _quiet_libraries()
    from tunesmith.data.formats import parse_columns
    from tunesmith.data.quality import check_data, fix_data, write_card
    from tunesmith.models import load_tokenizer

    cols = parse_columns(columns) if columns else None
    _convert_builtin_once(model)
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        bar_id = bar.add_task(f"checking {file}", total=None)
        card = check_data(
            file, validation, test, tokenizer=load_tokenizer(model), max_length=max_length, columns=cols,
            label_check=label_check, task=task, on_batch=lambda n: bar.update(bar_id, description="embedding for the label check", advance=n),
        )
    write_card(card, out)
    table = Table(title=f"{file}: {card.rows} rows, {card.format}, quality score {card.score()}/100")
    for col in ("severity", "check", "rows", "finding"):
        table.add_column(col)
    for f in card.findings:
        style = "red" if f.severity == "error" else "yellow"
        table.add_row(f"[{style}]{f.severity}[/{style}]", f.check, str(f.count), f.message)
    console.print(table if card.findings else f"{file}: {card.rows} rows, no problems found.")
    console.print(f"data card: {out / 'data_card.md'}, {out / 'data_card.html'}, {out / 'data_card.json'}")
    if fix:
        result = fix_data(file, fix, columns=cols)
        console.print(
            f"cleaned copy: {result.out_path} ({result.rows_out} of {result.rows_in} rows; dropped {result.dropped}, "
            f"redacted {result.redacted}, changed {result.changed}); every change is in {result.log_path}"
        )
    if card.errors():
        err.print(f"[red]{len(card.errors())} error(s) would block training[/red]; fix them or use --fix for the safe ones.")
        raise typer.Exit(1)


# --------------------------------------------------------------------------- train


@app.command("train")
@user_errors
def train(
    data: Annotated[Optional[str], typer.Option(help="Training data file (any format `data inspect` reads).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Base model: built-in name, local folder or hub id.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML run config; options given here override it.")] = None,
    validation: Annotated[Optional[str], typer.Option(help="Validation file; default: hold out a split.")] = None,
    method: Annotated[Optional[str], typer.Option(help="lora (default) or full.")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Run directory; default runs/run-DATE-TIME.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the data; default auto.")] = None,
    learning_rate: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate; default auto.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimizer steps.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Longest example in tokens; default auto.")] = None,
    system_prompt: Annotated[Optional[str], typer.Option(help="System message for rows that have none.")] = None,
    columns: Annotated[Optional[str], typer.Option(help="Override detection: field=column,...")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run from its last checkpoint.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Train even if the data gate finds errors (recorded in the data card).")] = False,
) -> None:
    """Fine-tune a model on your data (LoRA by default) with validation and early stopping."""
    _quiet_libraries()
    from tunesmith.config import RunConfig, load_config, parse_config
    from tunesmith.data.formats import parse_columns
    from tunesmith.train.callbacks import RichProgressCallback
    from tunesmith.train.sft import train_sft

    if resume:
        run_dir, cfg = resume, RunConfig()
    else:
        cfg = load_config(config) if config else RunConfig()
        overrides = {
            ("model", "name"): model,
            ("data", "train"): data,
            ("data", "validation"): validation,
            ("data", "system_prompt"): system_prompt,
            ("data", "columns"): parse_columns(columns) if columns else None,
            ("method", "method"): method,
            ("train", "epochs"): epochs,
            ("train", "learning_rate"): learning_rate,
            ("train", "max_steps"): max_steps,
            ("train", "max_length"): max_length,
            ("data", "force"): force or None,
        }
        raw = cfg.model_dump()
        for (section, key), value in overrides.items():
            if value is not None:
                raw[section][key] = value
        cfg = parse_config(raw, source="options")
        run_dir = output or _default_run_dir()
    _convert_builtin_once(str(run_dir) if resume else cfg.model.name)
    progress = RichProgressCallback(console=err)
    err.print(f"run directory: [bold]{run_dir}[/bold]")
    try:
        summary = train_sft(cfg, run_dir, callbacks=[progress], resume=resume is not None)
    except KeyboardInterrupt:
        progress.close()
        err.print(f"[yellow]interrupted.[/yellow] continue with: tunesmith train --resume {run_dir}")
        raise typer.Exit(130) from None
    _print_train_summary(summary, run_dir)


def _print_train_summary(summary: dict, run_dir: Path) -> None:
    table = Table(show_header=False, title="training finished")
    table.add_row("steps", str(summary["global_step"]))
    table.add_row("train rows / validation rows", f"{summary['train_rows']} / {summary['validation_rows']}")
    if summary.get("truncated_rows") or summary.get("skipped_rows"):
        table.add_row("cut at max_length / skipped", f"{summary['truncated_rows']} / {summary['skipped_rows']}")
    table.add_row("final train loss", f"{summary['train_loss']:.4f}")
    if summary.get("best_eval_loss") is not None:
        table.add_row("best validation loss", f"{summary['best_eval_loss']:.4f}")
    table.add_row("time", f"{summary['train_runtime_s']:.0f} s")
    table.add_row("weights", str(run_dir / summary["weights"]))
    console.print(table)
    console.print(f"try it: tunesmith chat {run_dir}")


# --------------------------------------------------------------------------- use the result


@app.command("generate")
@user_errors
def generate_cmd(
    target: Annotated[str, typer.Argument(help="Run directory, or a base model name.")],
    prompt: Annotated[Optional[str], typer.Option(help="One prompt to answer.")] = None,
    file: Annotated[Optional[str], typer.Option(help="JSONL/CSV/TXT of prompts (messages, prompt or text per row).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write answers as JSONL here (default: print).")] = None,
    base: Annotated[bool, typer.Option("--base", help="Answer with the untuned base model of the run.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (repeatable).")] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together.")] = 16,
) -> None:
    """Answer one prompt or a file of prompts with a fine-tuned run (or its base model)."""
    _quiet_libraries()
    from rich.progress import Progress

    from tunesmith.serve.engine import generate, load_for_inference, read_prompts, write_jsonl

    if (prompt is None) == (file is None):
        raise TunesmithError("Give exactly one of --prompt TEXT or --file FILE.")
    conversations = [[{"role": "user", "content": prompt}]] if prompt is not None else read_prompts(file)
    _convert_builtin_once(target)
    with err.status("loading model"):
        loaded = load_for_inference(target, base=base)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("generating", total=len(conversations))
        answers = generate(
            loaded, conversations, max_new_tokens, temperature, batch_size, on_batch=lambda n: bar.advance(task, n)
        )
    if out:
        write_jsonl(out, [{"messages": c, "answer": a} for c, a in zip(conversations, answers)])
        err.print(f"wrote {len(answers)} answers to {out}")
    elif prompt is not None:
        console.print(answers[0])
    else:
        for c, a in zip(conversations, answers):
            console.print(f"[bold]> {c[-1]['content']}[/bold]\n{a}\n")


@app.command("chat")
@user_errors
def chat_cmd(
    target: Annotated[str, typer.Argument(help="Run directory, or a base model name.")],
    base: Annotated[bool, typer.Option("--base", help="Chat with the untuned base model of the run.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
) -> None:
    """Talk to a fine-tuned run interactively. Empty line or Ctrl-D quits; /reset forgets the conversation."""
    _quiet_libraries()
    from tunesmith.serve.engine import generate, load_for_inference

    _convert_builtin_once(target)
    with err.status("loading model"):
        loaded = load_for_inference(target, base=base)
    err.print(f"chatting with [bold]{loaded.name}[/bold] (empty line to quit, /reset to start over)")
    history: list[dict] = []
    while True:
        try:
            line = console.input("[bold green]you> [/bold green]")
        except (EOFError, KeyboardInterrupt):
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": line})
        answer = generate(loaded, [history], max_new_tokens, temperature, batch_size=1)[0]
        history.append({"role": "assistant", "content": answer})
        console.print(f"[bold blue]model>[/bold blue] {answer}")


# --------------------------------------------------------------------------- main job


@app.command("quickstart")
@user_errors
def quickstart_cmd(
    output: Annotated[Optional[Path], typer.Option(help="Run directory; default runs/quickstart-DATE-TIME.")] = None,
    model: Annotated[str, typer.Option(help="Base model.")] = "smollm2-135m",
    max_steps: Annotated[Optional[int], typer.Option(help="Cap optimizer steps (for a faster demo).")] = None,
) -> None:
    """Fine-tune the bundled SmolLM2 on the bundled Banking77 sample (query in, intent out),
    then print the test accuracy of the base and the tuned model side by side."""
    _quiet_libraries()
    from rich.progress import Progress

    from tunesmith.quickstart import SAMPLE_TEST, SAMPLE_TRAIN, held_out_queries, run_quickstart
    from tunesmith.train.callbacks import RichProgressCallback

    run_dir = output or Path("runs") / time.strftime("quickstart-%Y%m%d-%H%M%S")
    err.print(f"fine-tuning [bold]{model}[/bold] on {SAMPLE_TRAIN.name}; testing on {SAMPLE_TEST.name}")
    err.print(f"run directory: [bold]{run_dir}[/bold]")
    _convert_builtin_once(model)
    progress = RichProgressCallback(console=err)
    # One live display at a time: the evaluation bar starts after training's bar has closed.
    eval_bar = Progress(console=err, transient=True)
    tasks: dict[str, int] = {}
    n_test = len(held_out_queries()[1])

    def on_eval_batch(which: str, n: int) -> None:
        if not tasks:
            eval_bar.start()
        if which not in tasks:
            tasks[which] = eval_bar.add_task(f"testing {which} model", total=n_test)
        eval_bar.advance(tasks[which], n)

    try:
        report = run_quickstart(run_dir, model, max_steps, [progress], on_eval_batch)
    except KeyboardInterrupt:
        progress.close()
        err.print(f"[yellow]interrupted.[/yellow] continue training with: tunesmith train --resume {run_dir}")
        raise typer.Exit(130) from None
    finally:
        eval_bar.stop()
    table = Table(title="Banking77 intent accuracy", caption=f"{report['test_rows']} held-out queries, exact match")
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    table.add_row(f"{model} (base)", f"{report['base_accuracy']:.1%}")
    table.add_row(f"{model} + LoRA (tuned)", f"{report['tuned_accuracy']:.1%}")
    console.print(table)
    console.print(
        f"training {report['train_seconds']:.0f} s, total {report['total_seconds']:.0f} s; "
        f"answers in {run_dir}/eval/; try it: tunesmith chat {run_dir}"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
