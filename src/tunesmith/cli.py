"""The `tunesmith` command. Each command parses its options, calls one library function and
renders the result with rich; user errors print one sentence, never a traceback."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.errors import TunesmithError
from tunesmith.runtime import quiet_libraries

app = typer.Typer(help="Turn a general-purpose LLM into a specialist for your task.", no_args_is_help=True)
data_app = typer.Typer(help="Read, check, augment and synthesize data files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err = Console(stderr=True)

# A teacher behind an OpenAI-compatible endpoint (augment, synth, auto).
TeacherUrlOpt = Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint as teacher instead of a local model, e.g. http://localhost:8000/v1.")]
TeacherModelOpt = Annotated[Optional[str], typer.Option(help="Model name to ask the endpoint for.")]
TeacherKeyOpt = Annotated[Optional[str], typer.Option(envvar="TUNESMITH_TEACHER_KEY", help="API key for the endpoint.")]


def _convert_builtin_once(target: str | None) -> None:
    """The first use of a built-in model converts its GGUF file (about 20 s): say so with a
    spinner instead of sitting silent. `target` is a model name or a run directory."""
    from tunesmith.models import BUILTIN_MODELS, builtin_cache_dir, ensure_builtin

    from tunesmith.runs import is_run_dir

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
    quiet_libraries()
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
    fix: Annotated[Optional[Path], typer.Option(help="Write a cleaned copy here (JSONL) plus fix_log.jsonl; FILE is never changed. Rows also in --test are dropped from it.")] = None,
    task: Annotated[Optional[str], typer.Option(help="What the data will train: chat, classify, pretrain, preference or kto (default: as detected).")] = None,
    label_check: Annotated[bool, typer.Option(help="Look for mislabelled rows with embeddings (classification data; ~60 s per 10k rows on 2 CPU cores).")] = True,
) -> None:
    """Check FILE for problems that spoil training (empty answers, conflicts, duplicates,
    leakage, PII, encoding, lengths, labels) and write a data card. Exit code 1 when a
    finding is an error, which blocks training."""
    quiet_libraries()
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
        result = fix_data(file, fix, columns=cols, test_path=test)
        console.print(
            f"cleaned copy: {result.out_path} ({result.rows_out} of {result.rows_in} rows; dropped {result.dropped}, "
            f"redacted {result.redacted}, changed {result.changed}); every change is in {result.log_path}"
        )
    if card.errors():
        err.print(f"[red]{len(card.errors())} error(s) would block training[/red]; fix them or use --fix for the safe ones.")
        raise typer.Exit(1)


@data_app.command("augment")
@user_errors
def augment_cmd(
    file: Annotated[Path, typer.Argument(help="Data file whose rows get variants.")],
    out: Annotated[Path, typer.Option(help="Where to write the rows (JSONL): the originals, then the variants.")],
    methods: Annotated[str, typer.Option(help="Comma-separated: typo[:rate], case, punct, dropout[:rate], swap[:rate], paraphrase. A rate is the share of words touched.")] = "typo:0.05,case,punct,dropout:0.1,swap:0.1",
    copies: Annotated[int, typer.Option(help="Variants per method per row.")] = 1,
    originals: Annotated[bool, typer.Option(help="Also write the original rows (method 'original').")] = True,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same variants.")] = 0,
    columns: Annotated[Optional[str], typer.Option(help="Override detection: field=column,...")] = None,
    teacher: Annotated[Optional[str], typer.Option(help="Local model that paraphrases (default: the bundled model).")] = None,
    teacher_url: TeacherUrlOpt = None,
    teacher_model: TeacherModelOpt = None,
    teacher_key: TeacherKeyOpt = None,
) -> None:
    """Write meaning-preserving variants of each row's user text (typos, casing, punctuation,
    word dropout and swaps, paraphrases); answers and labels are kept. Every row records
    `source_id` (its row in FILE) and `method`."""
    quiet_libraries()
    from rich.progress import Progress

    from tunesmith.data.augment import augment, parse_methods
    from tunesmith.data.formats import load_data, parse_columns
    from tunesmith.inference.teacher import make_teacher
    from tunesmith.inference.generate import write_jsonl

    chosen = parse_methods(methods)
    if copies < 1:
        raise TunesmithError(f"--copies must be at least 1, got {copies}.")
    _refuse_overwrite(file, out)
    data = load_data(file, columns=parse_columns(columns) if columns else None)
    model = None
    if "paraphrase" in chosen:
        model = make_teacher(teacher, teacher_url, teacher_model, teacher_key)
        if not teacher_url:
            _convert_builtin_once(model.target)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(f"augmenting {file.name}", total=len(data.records))
        rows, report = augment(data.records, data.task, chosen, data.rows, copies, seed, model, originals,
                               on_progress=lambda n: bar.advance(task, n))
    write_jsonl(out, rows)
    table = Table(title=f"{out}: {report.rows_out} rows from {report.rows_in}")
    table.add_column("method")
    table.add_column("rows", justify="right")
    for method, count in report.made.items():
        table.add_row(method, str(count))
    for reason, count in report.skipped.items():
        table.add_row(f"[yellow]skipped[/yellow] {reason}", str(count))
    console.print(table)
    console.print("Variants of one row are near-duplicates: give `tunesmith train` a --validation file of "
                  "original rows, or a held-out split can share sources with the training rows.")


@data_app.command("synth")
@user_errors
def synth_cmd(
    out: Annotated[Path, typer.Option(help="JSONL to grow; rows already there count, so a stopped run continues.")],
    n: Annotated[int, typer.Option("--n", help="Rows to have in OUT when done.")],
    seed: Annotated[Optional[Path], typer.Option(help="Examples to learn from: chat, text+label or preference data.")] = None,
    kind: Annotated[str, typer.Option(help="auto (from the seed), instruct, classify, preference or scenarios.")] = "auto",
    topics: Annotated[Optional[Path], typer.Option(help="Scenarios YAML: template (with {topic}), topics, optional variables, system, answer.")] = None,
    methods: Annotated[str, typer.Option(help="Instruct data: self-instruct and/or evol (Evol-Instruct), comma-separated.")] = "self-instruct,evol",
    teacher: Annotated[Optional[str], typer.Option(help="Local teacher model: built-in name, folder or run directory (default smollm2-135m).")] = None,
    teacher_url: TeacherUrlOpt = None,
    teacher_model: TeacherModelOpt = None,
    teacher_key: TeacherKeyOpt = None,
    rpm: Annotated[Optional[float], typer.Option(help="Endpoint requests per minute at most (teacher and judge share it when they use the same URL).")] = None,
    concurrency: Annotated[int, typer.Option(help="Endpoint requests in flight at once.")] = 4,
    judge: Annotated[Optional[str], typer.Option(help="Local judge model; rows it scores below --min-score are dropped.")] = None,
    judge_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint as judge.")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="Model name to ask the judge endpoint for.")] = None,
    judge_key: Annotated[Optional[str], typer.Option(envvar="TUNESMITH_JUDGE_KEY", help="API key for the judge endpoint.")] = None,
    min_score: Annotated[float, typer.Option(help="Judge score (1-10) a row needs.")] = 6.0,
    rejected_model: Annotated[Optional[str], typer.Option(help="Preference data: a weaker local model writes the rejected answers (default: degraded copies of the chosen one).")] = None,
    label_check: Annotated[str, typer.Option(help="Classification: classifier (trained on the seed), teacher (asked yes/no) or off.")] = "classifier",
    label_descriptions: Annotated[Optional[Path], typer.Option(help="YAML mapping each label to a description for the teacher.")] = None,
    rouge: Annotated[float, typer.Option(help="Drop rows whose ROUGE-L with a seed or earlier row is above this.")] = 0.7,
    cosine: Annotated[float, typer.Option(help="Drop rows whose MiniLM embedding cosine with a seed or earlier row is above this.")] = 0.95,
    min_chars: Annotated[Optional[int], typer.Option(help="Shortest new text (default: from the seed).")] = None,
    max_chars: Annotated[Optional[int], typer.Option(help="Longest new text (default: from the seed).")] = None,
    max_candidates: Annotated[Optional[int], typer.Option(help="Stop after this many candidates (default 10 x --n).")] = None,
    batch_size: Annotated[int, typer.Option(help="Candidates per round.")] = 16,
    temperature: Annotated[float, typer.Option(help="Teacher sampling temperature for new texts.")] = 0.9,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer or scenario in tokens.")] = 256,
    random_seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    columns: Annotated[Optional[str], typer.Option(help="Override detection of the seed file: field=column,...")] = None,
) -> None:
    """Generate new rows with a teacher model (Self-Instruct, Evol-Instruct, label-conditioned,
    preference pairs or scenarios), filter every one, and report what was kept and why the
    rest was dropped (OUT's .report.json; dropped rows in .dropped.jsonl)."""
    quiet_libraries()
    import yaml
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tunesmith.data.formats import parse_columns
    from tunesmith.data.synth import SynthOptions, load_scenarios, sidecar_paths, synthesize
    from tunesmith.inference.teacher import EndpointTeacher, RateLimiter, make_teacher

    if seed:
        _refuse_overwrite(seed, out)
    descriptions = {}
    if label_descriptions:
        try:
            descriptions = yaml.safe_load(label_descriptions.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise TunesmithError(f"--label-descriptions {label_descriptions}: cannot read it as YAML ({exc}).") from None
        if not isinstance(descriptions, dict):
            raise TunesmithError(f"--label-descriptions {label_descriptions} must map each label to a description.")
    options = SynthOptions(
        n=n, kind=kind, methods=tuple(m.strip() for m in methods.split(",") if m.strip()), seed=random_seed,
        batch_size=batch_size, temperature=temperature, max_new_tokens=max_new_tokens, min_chars=min_chars,
        max_chars=max_chars, rouge_threshold=rouge, embedding_threshold=cosine, label_check=label_check,
        min_judge_score=min_score, max_candidates=max_candidates, label_descriptions={str(k): str(v) for k, v in descriptions.items()},
        scenarios=load_scenarios(topics) if topics else None,
    )
    the_teacher = make_teacher(teacher, teacher_url, teacher_model, teacher_key, rpm, concurrency)
    the_judge = (make_teacher(judge, judge_url, judge_model, judge_key, rpm, concurrency, what="judge")
                 if judge or judge_url else None)
    weaker = make_teacher(rejected_model, what="rejected-model") if rejected_model else None
    if isinstance(the_judge, EndpointTeacher) and isinstance(the_teacher, EndpointTeacher) and the_judge.url == the_teacher.url:
        the_judge.limiter = the_teacher.limiter = RateLimiter(rpm)  # one endpoint, one --rpm budget
    for local in (the_teacher, the_judge, weaker):
        if local is not None and hasattr(local, "target"):
            _convert_builtin_once(local.target)
    columns_map = parse_columns(columns) if columns else None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err, transient=True)
    task = bar.add_task("loading", total=n)

    def show(report) -> None:
        bar.update(task, completed=min(report.kept, n),
                   description=f"{report.kind}: kept {report.kept}, dropped {sum(report.dropped.values())}")

    dropped_path, report_path = sidecar_paths(out)
    try:
        with bar:
            report = synthesize(out, the_teacher, options, seed, columns_map, the_judge, weaker, on_progress=show)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted.[/yellow] the rows kept so far are in {out}; run the same command to continue.")
        raise typer.Exit(130) from None
    table = Table(title=f"{out}: {report.kept} rows kept of {report.candidates} candidates ({report.kind}, teacher {report.teacher})")
    table.add_column("dropped because")
    table.add_column("rows", justify="right")
    for reason, count in report.dropped.most_common():
        table.add_row(reason, str(count))
    console.print(table if report.dropped else f"{out}: {report.kept} rows kept, none dropped.")
    if report.stopped:
        err.print(f"[yellow]{report.stopped}[/yellow]")
    console.print(f"filter report: {report_path}; dropped rows: {dropped_path}")


def _refuse_overwrite(source: Path, out: Path) -> None:
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise TunesmithError(f"--out {out} is the input file itself; write to another file so the original stays intact.")


# --------------------------------------------------------------------------- train


@app.command("train")
@user_errors
def train(
    data: Annotated[Optional[str], typer.Option(help="Training data file (any format `data inspect` reads).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Base model: built-in name, local folder or hub id.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML run config; options given here override it.")] = None,
    validation: Annotated[Optional[str], typer.Option(help="Validation file; default: hold out a split.")] = None,
    method: Annotated[Optional[str], typer.Option(help="What to train: sft (default), pretrain (raw text), classify, reward (a reward model), dpo, orpo, simpo, kto (preference data), grpo or rloo (RL against rewards).")] = None,
    task: Annotated[Optional[str], typer.Option(help="classify: same as --method classify.")] = None,
    stages: Annotated[Optional[str], typer.Option(help="Several stages in order, e.g. pretrain,sft or sft,reward,grpo.")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="lora (default), rslora, dora, pissa, olora, loha, lokr, ia3, prompt, prefix, qlora or full.")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="Load the base in 4bit or 8bit (QLoRA; CUDA GPU only).")] = None,
    pretrain_data: Annotated[Optional[str], typer.Option(help="Raw-text file for the pretrain stage of --stages pretrain,...")] = None,
    replay_ratio: Annotated[Optional[float], typer.Option(help="Share of general text mixed into pretraining against forgetting.")] = None,
    replay_file: Annotated[Optional[str], typer.Option(help="General text for --replay-ratio; default: the shipped sample.")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="Adapter rank (LoRA family, LoHa, LoKr).")] = None,
    freeze_layers: Annotated[Optional[int], typer.Option(help="With --adapter full: freeze the bottom N layers.")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory.")] = None,
    neftune: Annotated[Optional[float], typer.Option(help="NEFTune noise scale on embeddings (5 is typical).")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Label smoothing of the loss (0.1 is typical).")] = None,
    preference_data: Annotated[Optional[str], typer.Option(help="Preference pairs for the reward/DPO-family stage of --stages sft,...")] = None,
    prompt_data: Annotated[Optional[str], typer.Option(help="Prompts for the grpo/rloo stage of a multi-stage run.")] = None,
    beta: Annotated[Optional[float], typer.Option(help="Preference/RL strength (DPO beta, GRPO KL penalty...); default: the method's.")] = None,
    dpo_loss: Annotated[Optional[str], typer.Option(help="DPO loss: sigmoid (default), ipo or robust.")] = None,
    reward_model: Annotated[Optional[str], typer.Option(help="grpo/rloo: a reward-model run directory.")] = None,
    reward_fn: Annotated[Optional[list[str]], typer.Option(help="grpo/rloo: exact_match, contains_answer, length, FILE.py or FILE.py:NAME (repeatable).")] = None,
    judge_url: Annotated[Optional[str], typer.Option(help="grpo/rloo: LLM judge at an OpenAI-compatible URL (key: TUNESMITH_JUDGE_KEY).")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="The model the judge endpoint runs.")] = None,
    num_generations: Annotated[Optional[int], typer.Option(help="grpo/rloo: answers sampled per prompt.")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Run directory; default runs/run-DATE-TIME.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the data; default auto.")] = None,
    learning_rate: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate; default auto.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimizer steps.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Longest example in tokens; default auto.")] = None,
    system_prompt: Annotated[Optional[str], typer.Option(help="System message for rows that have none.")] = None,
    columns: Annotated[Optional[str], typer.Option(help="Override detection: field=column,...")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run from its last checkpoint.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Train even if the data gate finds errors (recorded in the data card).")] = False,
    test: Annotated[Optional[str], typer.Option(help="Test file for the before/after report; default: hold out a split.")] = None,
    test_split: Annotated[Optional[float], typer.Option(help="Share of the data held out as the test set (default auto: 10%, at most 500 rows, from 200 rows up).")] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the evaluation, report and model card at the end.")] = False,
    judge: Annotated[Optional[str], typer.Option(help="Evaluation: a local judge model comparing base and tuned answers.")] = None,
    eval_judge_url: Annotated[Optional[str], typer.Option(help="Evaluation: a judge at an OpenAI-compatible URL instead.")] = None,
    eval_judge_model: Annotated[Optional[str], typer.Option(help="The model the evaluation judge endpoint runs.")] = None,
    minutes_per_item: Annotated[Optional[float], typer.Option(help="Minutes a person spends per item, for the value estimate.")] = None,
    items_per_week: Annotated[Optional[float], typer.Option(help="Items per week, for the value estimate.")] = None,
    num_processes: Annotated[Optional[int], typer.Option(help="Train in N processes with accelerate (one per GPU; on CPU they share the cores); all machines together.")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="How N processes share the model: ddp (default), fsdp, zero2 or zero3 (DeepSpeed); the last three need GPUs.")] = None,
    num_machines: Annotated[int, typer.Option(help="Machines in a multi-machine run; start the same command on each.")] = 1,
    machine_rank: Annotated[int, typer.Option(help="This machine's number, 0 to --num-machines - 1 (0 runs the main process).")] = 0,
    main_ip: Annotated[Optional[str], typer.Option(help="Address of machine 0, for --num-machines above 1.")] = None,
    main_port: Annotated[int, typer.Option(help="Port machine 0 listens on for the others.")] = 29500,
) -> None:
    """Fine-tune a model on your data: chat tuning, continued pretraining, a classifier, a reward
    model, preference optimisation (DPO, ORPO, SimPO, KTO) or RL (GRPO, RLOO), with LoRA
    (default), another PEFT method or full fine-tuning, validation and early stopping."""
    quiet_libraries()
    from tunesmith.config import RunConfig, load_config, parse_config
    from tunesmith.data.formats import parse_columns
    from tunesmith.train.callbacks import RichProgressCallback
    from tunesmith.train.distributed import Cluster
    from tunesmith.workflows.train_eval import train as train_stages

    if resume:
        run_dir, cfg = resume, RunConfig()
    else:
        cfg = load_config(config) if config else RunConfig()
        if task not in (None, "classify"):
            raise TunesmithError(f"--task {task} is not a task: use --task classify, or --method sft|pretrain.")
        if method in ("lora", "full", "qlora", "dora"):
            raise TunesmithError(f"--method chooses what to train (sft, pretrain, classify, dpo...); for {method} use --adapter {method}.")
        chosen = [s for s in (method, task, stages) if s]
        if len(chosen) > 1:
            raise TunesmithError("Give one of --method, --task or --stages.")
        overrides = {
            ("model", "name"): model,
            ("data", "train"): data,
            ("data", "validation"): validation,
            ("data", "system_prompt"): system_prompt,
            ("data", "columns"): parse_columns(columns) if columns else None,
            ("data", "pretrain"): pretrain_data,
            ("data", "replay_ratio"): replay_ratio,
            ("data", "replay_file"): replay_file,
            ("method", "stages"): [s.strip() for s in chosen[0].split(",")] if chosen else None,
            ("method", "adapter"): adapter,
            ("method", "quantize"): quantize,
            ("method", "lora_r"): lora_r,
            ("method", "freeze_layers"): freeze_layers,
            ("method", "gradient_checkpointing"): gradient_checkpointing,
            ("method", "neftune_alpha"): neftune,
            ("method", "label_smoothing"): label_smoothing,
            ("data", "preference"): preference_data,
            ("data", "prompts"): prompt_data,
            ("method", "beta"): beta,
            ("method", "dpo_loss"): dpo_loss,
            ("method", "reward_model"): reward_model,
            ("method", "reward_functions"): reward_fn,
            ("method", "judge_url"): judge_url,
            ("method", "judge_model"): judge_model,
            ("method", "num_generations"): num_generations,
            ("train", "epochs"): epochs,
            ("train", "learning_rate"): learning_rate,
            ("train", "max_steps"): max_steps,
            ("train", "max_length"): max_length,
            ("data", "force"): force or None,
            ("data", "test"): test,
            ("data", "test_split"): test_split,
            ("eval", "enabled"): False if no_eval else None,
            ("eval", "judge"): judge,
            ("eval", "judge_url"): eval_judge_url,
            ("eval", "judge_model"): eval_judge_model,
            ("eval", "minutes_per_item"): minutes_per_item,
            ("eval", "items_per_week"): items_per_week,
            ("distributed", "num_processes"): num_processes,
            ("distributed", "strategy"): strategy,
        }
        raw = cfg.model_dump()
        for (section, key), value in overrides.items():
            if value is not None:
                raw[section][key] = value
        if lora_r is not None and raw["method"]["lora_alpha"] == 32:
            raw["method"]["lora_alpha"] = 2 * lora_r  # keep alpha = 2 x rank unless set
        cfg = parse_config(raw, source="options")
        run_dir = output or _default_run_dir()
    _convert_builtin_once(str(run_dir) if resume else cfg.model.name)
    progress = RichProgressCallback(console=err)
    err.print(f"run directory: [bold]{run_dir}[/bold]")
    bars = EvalBars(err)
    try:
        cluster = Cluster(num_machines, machine_rank, main_ip, main_port)
        summary = train_stages(
            cfg, run_dir, callbacks=[progress], resume=resume is not None, eval_progress=bars, cluster=cluster
        )
    except KeyboardInterrupt:
        progress.close()
        bars.stop()
        err.print(f"[yellow]interrupted.[/yellow] continue with: tunesmith train --resume {run_dir}")
        raise typer.Exit(130) from None
    bars.stop()
    _print_train_summary(summary, run_dir)
    if summary.get("evaluation"):
        _print_evaluation(summary["evaluation"], run_dir)
    elif load_config(run_dir / "config.yaml").eval.enabled:
        console.print(f"no test set, so no before/after report: run `tunesmith eval {run_dir} --test FILE`")


def _print_train_summary(summary: dict, run_dir: Path) -> None:
    table = Table(show_header=False, title="training finished")
    for stage in summary.get("stages", [])[:-1]:
        table.add_row(f"stage {stage['stage']}", f"{stage['global_step']} steps, loss {stage['train_loss']:.4f}")
    table.add_row("steps", str(summary["global_step"]))
    table.add_row("train rows / validation rows", f"{summary['train_rows']} / {summary['validation_rows']}")
    if summary.get("truncated_rows") or summary.get("skipped_rows"):
        table.add_row("cut at max_length / skipped", f"{summary['truncated_rows']} / {summary.get('skipped_rows', 0)}")
    if summary.get("trainable_params"):
        share = summary["trainable_params"] / summary["total_params"]
        table.add_row("trained parameters", f"{summary['trainable_params']:,} ({share:.2%})")
    table.add_row("final train loss", f"{summary['train_loss']:.4f}")
    if summary.get("best_eval_loss") is not None:
        table.add_row("best validation loss", f"{summary['best_eval_loss']:.4f}")
    if summary.get("best_eval_perplexity") is not None:
        table.add_row("validation perplexity", f"{summary['best_eval_perplexity']:.2f}")
    if summary.get("eval_accuracy") is not None:
        table.add_row("validation accuracy / macro-F1", f"{summary['eval_accuracy']:.1%} / {summary['eval_macro_f1']:.3f}")
    if summary.get("pairwise_accuracy") is not None:
        table.add_row("validation pairwise accuracy", f"{summary['pairwise_accuracy']:.1%} (mean margin {summary['mean_margin']:.3f})")
    if summary.get("reward_accuracy") is not None:
        table.add_row("validation reward accuracy / margin", f"{summary['reward_accuracy']:.1%} / {summary['reward_margin']:.3f}")
    if summary.get("reward_start") is not None:
        table.add_row("mean reward, first / last steps", f"{summary['reward_start']:.3f} -> {summary['reward_end']:.3f}")
    table.add_row("time", f"{summary['train_runtime_s']:.0f} s")
    final_dir = run_dir / summary["stage"] if summary.get("stages") else run_dir
    table.add_row("weights", str(final_dir / summary["weights"]))
    console.print(table)
    if summary["task"] == "classify":
        console.print(f"try it: tunesmith predict {run_dir} --text \"...\"")
    elif summary["task"] == "reward":
        console.print(f"try it: tunesmith score {run_dir} --file PAIRS.jsonl")
    elif summary["task"] != "pretrain":
        console.print(f"try it: tunesmith chat {run_dir}")


@app.command("predict")
@user_errors
def predict_cmd(
    run: Annotated[str, typer.Argument(help="Run directory of a classification run.")],
    file: Annotated[Optional[str], typer.Option(help="Texts to label: a .txt file or rows with a text column.")] = None,
    text: Annotated[Optional[str], typer.Option(help="One text to label.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write predictions as JSONL here (default: print).")] = None,
    top_k: Annotated[int, typer.Option(help="Most likely labels kept per row, with probabilities.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Texts scored together.")] = 32,
) -> None:
    """Label texts with a classification run: the label, its probability and the runners-up.
    When the file has labels too, the accuracy is printed."""
    quiet_libraries()
    from rich.progress import Progress

    from tunesmith.data.formats import load_data
    from tunesmith.inference.generate import write_jsonl
    from tunesmith.inference.classifier import load_classifier, predict

    if (text is None) == (file is None):
        raise TunesmithError("Give exactly one of --text TEXT or --file FILE.")
    rows = [{"text": text}]
    if file is not None:
        data = load_data(file)
        if data.task not in ("pretrain", "classify"):
            raise TunesmithError(f"{file} holds {data.task} data; give a .txt file or rows with a text column.")
        rows = data.records
    _convert_builtin_once(run)
    with err.status("loading classifier"):
        classifier = load_classifier(run)
    with Progress(console=err, transient=True) as bar:
        task_id = bar.add_task("predicting", total=len(rows))
        predictions = predict(classifier, [r["text"] for r in rows], batch_size, top_k, lambda n: bar.advance(task_id, n))
    results = [{"text": r["text"], **p, **({"true_label": r["label"]} if "label" in r else {})} for r, p in zip(rows, predictions)]
    if out:
        write_jsonl(out, results)
        err.print(f"wrote {len(results)} predictions to {out}")
    else:
        for r in results:
            console.print(f"[bold]{r['label']}[/bold] {r['probability']:.1%}  {r['text'][:100]}")
    labelled = [r for r in results if "true_label" in r]
    if labelled:
        correct = sum(r["label"] == r["true_label"] for r in labelled)
        console.print(f"accuracy {correct / len(labelled):.1%} on {len(labelled)} labelled rows")


@app.command("score")
@user_errors
def score_cmd(
    run: Annotated[str, typer.Argument(help="Run directory of a reward model (or of a run with a reward stage).")],
    file: Annotated[str, typer.Option(help="Rows to score: preference pairs, chat or prompt/completion rows.")],
    out: Annotated[Optional[Path], typer.Option(help="Write the scored rows as JSONL here (default: print).")] = None,
    columns: Annotated[Optional[str], typer.Option(help="Override detection: field=column,...")] = None,
) -> None:
    """Score answers with a reward model. For preference pairs, prints how often the chosen
    answer scores above the rejected one (pairwise accuracy)."""
    quiet_libraries()
    from rich.progress import Progress

    from tunesmith.data.formats import parse_columns
    from tunesmith.inference.generate import write_jsonl
    from tunesmith.inference.reward import load_reward_model, score_file

    _convert_builtin_once(run)
    with err.status("loading reward model"):
        rm = load_reward_model(run)
    with Progress(console=err, transient=True) as bar:
        task_id = bar.add_task("scoring", total=None)
        rows, summary = score_file(rm, file, parse_columns(columns) if columns else None, lambda n: bar.advance(task_id, n))
    if out:
        write_jsonl(out, rows)
        err.print(f"wrote {len(rows)} scored rows to {out}")
    elif "pairwise_accuracy" not in summary:
        for r in rows:
            last = (r.get("completion") or r.get("messages"))[-1]["content"]
            console.print(f"[bold]{r['score']:+.3f}[/bold]  {last[:100]}")
    if "pairwise_accuracy" in summary:
        console.print(f"pairwise accuracy {summary['pairwise_accuracy']:.1%} on {summary['rows']} pairs "
                      f"(mean margin {summary['mean_margin']:+.3f})")
    else:
        console.print(f"mean score {summary['mean_score']:+.3f} over {summary['rows']} rows")


# --------------------------------------------------------------------------- evaluate


class EvalBars:
    """Rich progress bars for `evaluate_run`'s progress(what, done, total) events: one bar per
    step (base answers, tuned answers, probes...), started on the first event."""

    def __init__(self, console: Console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)
        self.tasks: dict[str, int] = {}
        self.started = False

    def __call__(self, what: str, done: int, total: int) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        if what not in self.tasks:
            self.tasks[what] = self.progress.add_task(what, total=total)
        self.progress.update(self.tasks[what], completed=done, total=total)

    def stop(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


@app.command("eval")
@user_errors
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory written by `tunesmith train`.")],
    test: Annotated[Optional[str], typer.Option(help="Test file (default: the run's test file or held-out split).")] = None,
    columns: Annotated[Optional[str], typer.Option(help="Override detection of the test file: field=column,...")] = None,
    max_rows: Annotated[Optional[int], typer.Option(help="Evaluate a seeded sample of this many test rows.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Longest generated answer (default: from the references).")] = None,
    judge: Annotated[Optional[str], typer.Option(help="Local judge model (name, folder or run) comparing base and tuned answers.")] = None,
    judge_url: Annotated[Optional[str], typer.Option(help="Judge at an OpenAI-compatible URL, e.g. http://localhost:8000/v1 (key: TUNESMITH_JUDGE_KEY).")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="The model the judge endpoint runs.")] = None,
    judge_rubric: Annotated[Optional[str], typer.Option(help="What the judge compares the answers on.")] = None,
    judge_prompts: Annotated[Optional[int], typer.Option(help="Test prompts judged (each in both orders).")] = None,
    forgetting: Annotated[Optional[bool], typer.Option("--forgetting/--no-forgetting", help="General-text perplexity and instruction probes.")] = None,
    bias: Annotated[Optional[bool], typer.Option("--bias/--no-bias", help="Counterfactual bias probes.")] = None,
    minutes_per_item: Annotated[Optional[float], typer.Option(help="Minutes a person spends per item today (value estimate).")] = None,
    items_per_week: Annotated[Optional[float], typer.Option(help="Items handled per week (value estimate).")] = None,
) -> None:
    """Measure a run against its base model on held-out data: task metrics, an optional LLM
    judge, forgetting and bias probes, a value estimate. Writes RUN/eval/results.json,
    RUN/report.html and RUN/MODEL_CARD.md."""
    quiet_libraries()
    from pydantic import ValidationError

    from tunesmith.config import load_config
    from tunesmith.data.formats import parse_columns
    from tunesmith.evaluate.run import evaluate_run
    from tunesmith.runs import is_run_dir

    if not is_run_dir(run):
        raise TunesmithError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    opts = load_config(run / "config.yaml").eval
    given = {"max_rows": max_rows, "max_new_tokens": max_new_tokens, "judge": judge, "judge_url": judge_url,
             "judge_model": judge_model, "judge_rubric": judge_rubric, "judge_prompts": judge_prompts,
             "forgetting": forgetting, "bias": bias, "minutes_per_item": minutes_per_item, "items_per_week": items_per_week}
    try:
        opts = opts.model_validate(opts.model_dump() | {k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        e = exc.errors()[0]
        raise TunesmithError(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}.") from None
    _convert_builtin_once(str(run))
    bars = EvalBars(err)
    try:
        results = evaluate_run(run, test, opts, parse_columns(columns) if columns else None, progress=bars)
    finally:
        bars.stop()
    _print_evaluation(results, run)


def _print_evaluation(results: dict, run_dir: Path) -> None:
    from tunesmith.evaluate.metrics import HIGHER_IS_BETTER

    base, tuned = results["metrics"]["base"], results["metrics"]["tuned"]
    table = Table(title=f"base vs tuned on {results['test']['rows']} test rows", caption=results["test"]["source"])
    for col in ("metric", "base", "tuned", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, before in base.items():
        after = tuned[name]
        scale = name not in ("perplexity", "bleu")
        show = (lambda v: f"{v:.1%}") if scale else (lambda v: f"{v:.2f}")
        better = (after > before) == HIGHER_IS_BETTER.get(name, True)
        colour = "green" if better and after != before else "red" if after != before else ""
        change = f"{after - before:+.1%}" if scale else f"{after - before:+.2f}"
        table.add_row(name, show(before), show(after), f"[{colour}]{change}[/{colour}]" if colour else change)
    console.print(table)
    j = results.get("judge")
    if j:
        console.print(f"judge ({j['judge']}): tuned wins {j['wins']}, loses {j['losses']}, ties {j['ties']} "
                      f"of {j['prompts']} ({j['inconsistent']} inconsistent verdicts counted as ties)")
    f, b = results.get("forgetting"), results.get("bias")
    alarms = [results["overfitting"]["message"]] if results["overfitting"]["flagged"] else []
    alarms += [f"forgetting: {line}" for line in (f["findings"] if f else [])]
    alarms += [f"bias: {line}" for line in (b["tuned"]["findings"] if b else [])]
    for alarm in alarms:
        console.print(f"[yellow]alarm:[/yellow] {alarm}")
    if f and not f["flagged"]:
        console.print(f"forgetting: none beyond the threshold (general-text perplexity {f['general_perplexity']['change']:+.1%}, "
                      f"probes {f['probes']['base']:.0%} -> {f['probes']['tuned']:.0%})")
    if b and not b["tuned"]["flagged"]:
        console.print(f"bias: none flagged ({b['tuned']['pairs']} counterfactual pairs, "
                      f"{b['tuned']['changed_rate']:.1%} changed answers)")
    v = results.get("value")
    if v:
        console.print(f"value: about {v['hours_saved_per_week']:.1f} hours saved per week at {v['accuracy']:.1%} {v['accuracy_metric']}")
    console.print(f"report: {run_dir}/report.html   model card: {run_dir}/MODEL_CARD.md   numbers: {run_dir}/eval/results.json")


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
    quiet_libraries()
    from rich.progress import Progress

    from tunesmith.inference.generate import generate, load_for_inference, read_prompts, write_jsonl

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
    quiet_libraries()
    from tunesmith.inference.generate import generate, load_for_inference

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
    quiet_libraries()
    from tunesmith.workflows.quickstart import SAMPLE_TEST, SAMPLE_TRAIN, run_quickstart
    from tunesmith.train.callbacks import RichProgressCallback

    run_dir = output or Path("runs") / time.strftime("quickstart-%Y%m%d-%H%M%S")
    err.print(f"fine-tuning [bold]{model}[/bold] on {SAMPLE_TRAIN.name}; testing on {SAMPLE_TEST.name}")
    err.print(f"run directory: [bold]{run_dir}[/bold]")
    _convert_builtin_once(model)
    progress = RichProgressCallback(console=err)
    bars = EvalBars(err)  # starts once training's bar has closed: one live display at a time
    try:
        report = run_quickstart(run_dir, model, max_steps, [progress], bars)
    except KeyboardInterrupt:
        progress.close()
        err.print(f"[yellow]interrupted.[/yellow] continue training with: tunesmith train --resume {run_dir}")
        raise typer.Exit(130) from None
    finally:
        bars.stop()
    _print_evaluation(json.loads((run_dir / "eval" / "results.json").read_text()), run_dir)
    console.print(
        f"Banking77 intent accuracy on {report['test_rows']} held-out queries: base {report['base_accuracy']:.1%}, "
        f"tuned {report['tuned_accuracy']:.1%}. Training {report['train_seconds']:.0f} s, total "
        f"{report['total_seconds']:.0f} s; try it: tunesmith chat {run_dir}"
    )


@app.command("tune")
@user_errors
def tune_cmd(
    config: Annotated[Path, typer.Argument(help="YAML run config to tune (as `tunesmith train --config`).")],
    trials: Annotated[int, typer.Option(min=1, help="Finished trials the study should reach (a resumed study counts its earlier ones).")] = 10,
    objective: Annotated[str, typer.Option(help="Validation metric to optimise: eval_loss, accuracy, macro_f1 or reward.")] = "eval_loss",
    output: Annotated[Optional[Path], typer.Option(help="Study directory (one run folder per trial); its name names the study.")] = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    backend: Annotated[str, typer.Option(help="optuna: trials one after another here; ray: trials run by Ray Tune, --parallel at once.")] = "optuna",
    ray_address: Annotated[Optional[str], typer.Option(help="With --backend ray: the Ray cluster to join (e.g. ray://head:10001 or auto); default: a Ray instance on this machine.")] = None,
    parallel: Annotated[int, typer.Option(min=1, help="With --backend ray: trials at once (each takes one CPU, and one GPU where the cluster has GPUs).")] = 1,
) -> None:
    """Search hyperparameters with Optuna (TPE sampler, median pruning at evaluation steps),
    then measure the best trial against its base model on the test set. The study is kept in
    the project database, so running the same command again resumes it, with either backend."""
    quiet_libraries()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tunesmith.config import load_config
    from tunesmith.jobs.store import default_database_url
    from tunesmith.tune.study import run_study
    

    data_dir = data_dir or _data_dir()
    _sessions(data_dir, database_url)  # creates the project database, or says why it cannot
    base = load_config(config)
    out = output or Path("runs") / f"tune-{config.stem}"
    _convert_builtin_once(base.model.name)
    progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                        TimeElapsedColumn(), console=err)
    with progress:
        task = progress.add_task("trials", total=trials, note="")

        def on_trial(t) -> None:
            value = "" if t.value is None else f": {objective} {t.value:.4g}"
            progress.update(task, advance=1, note=f"trial {t.number} {t.state.name.lower()}{value}")

        summary = run_study(base, out, trials, objective, database_url or default_database_url(data_dir), on_trial=on_trial,
                            backend=backend, ray_address=ray_address, parallel=parallel)
    table = Table(title=f"study {summary['study']}: {summary['counts']['complete']} finished, {summary['counts']['pruned']} pruned")
    for col in ("trial", "state", objective, *[p["name"] for p in summary["space"]]):
        table.add_column(col)
    for t in summary["trials"]:
        params = [f"{t['params'].get(p['name']):.3g}" if isinstance(t["params"].get(p["name"]), float)
                  else str(t["params"].get(p["name"], "-")) for p in summary["space"]]
        table.add_row(str(t["number"]), t["state"], "-" if t["value"] is None else f"{t['value']:.4g}", *params)
    console.print(table)
    if summary["importances"]:
        console.print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items()))
    console.print(f"study report: {out}/study.html")
    best = summary["best"]
    if best is None:
        raise TunesmithError("No trial finished: every trial was pruned or failed; widen the search or train longer.")
    best_dir = Path(best["run_dir"])
    console.print(f"best: trial {best['number']}, {objective} {best['value']:.4g}, run {best_dir}")
    if load_config(best_dir / "config.yaml").has_test_set():
        from tunesmith.evaluate.run import evaluate_run

        bars = EvalBars(err)
        try:
            results = evaluate_run(best_dir, progress=bars)
        finally:
            bars.stop()
        _print_evaluation(results, best_dir)


@app.command("auto")
@user_errors
def auto_cmd(
    data: Annotated[str, typer.Argument(help="Training data file (any format `tunesmith data inspect` reads).")],
    test: Annotated[Optional[str], typer.Option(help="Test file for the before/after report (default: rows held out of DATA).")] = None,
    task: Annotated[str, typer.Option(help="auto (from the data), chat, classify, pretrain, preference or kto.")] = "auto",
    budget: Annotated[Optional[str], typer.Option(help="Wall-time budget, e.g. 30m or 2h: the run gets the training steps that fit.")] = None,
    model: Annotated[str, typer.Option(help="Base model.")] = "smollm2-135m",
    output: Annotated[Optional[Path], typer.Option(help="Run directory; default runs/auto-DATE-TIME.")] = None,
    columns: Annotated[Optional[str], typer.Option(help="Override format detection: field=column,...")] = None,
    force: Annotated[bool, typer.Option(help="Train even when the data gate still finds errors after the safe fixes.")] = False,
    synth_below: Annotated[int, typer.Option(help="Add synthetic rows from --teacher when DATA has fewer rows than this (0: never).")] = 0,
    teacher: Annotated[Optional[str], typer.Option(help="Teacher model for synthetic rows (default: the bundled model).")] = None,
    teacher_url: TeacherUrlOpt = None,
    teacher_model: TeacherModelOpt = None,
    teacher_key: TeacherKeyOpt = None,
    project: Annotated[str, typer.Option(help="Project the model is registered in, for `tunesmith serve`.")] = "default",
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """From a data file to an evaluated specialist in one command: detect the task, check and
    fix the data, plan memory and the budget, train, report base vs tuned, and register the
    model so `tunesmith serve` serves it. Every decision is listed with its reason."""
    quiet_libraries()
    from tunesmith.data.formats import parse_columns
    from tunesmith.inference.teacher import make_teacher
    from tunesmith.jobs.store import default_database_url, register_run
    from tunesmith.workflows.auto import run_auto
    from tunesmith.train.callbacks import RichProgressCallback

    data_dir = data_dir or _data_dir()
    _sessions(data_dir, database_url)
    run_dir = output or Path("runs") / time.strftime("auto-%Y%m%d-%H%M%S")
    _convert_builtin_once(model)
    the_teacher = make_teacher(teacher, teacher_url, teacher_model, teacher_key) if synth_below else None
    progress = RichProgressCallback(console=err)
    bars = EvalBars(err)
    try:
        result = run_auto(data, run_dir, test, task, budget, model, parse_columns(columns) if columns else None, force,
                          synth_below, the_teacher, callbacks=[progress], eval_progress=bars,
                          say=lambda line: err.print(f"[dim]auto:[/dim] {line}"))
    except KeyboardInterrupt:
        progress.close()
        err.print(f"[yellow]interrupted.[/yellow] continue training with: tunesmith train --resume {run_dir}")
        raise typer.Exit(130) from None
    finally:
        bars.stop()
    result.model_id = register_run(database_url or default_database_url(data_dir), run_dir, model, project)
    if result.evaluation:
        _print_evaluation(result.evaluation, run_dir)
        name, base = next(iter(result.evaluation["metrics"]["base"].items()))
        tuned = result.evaluation["metrics"]["tuned"][name]
        show = (lambda v: f"{v:.2f}") if name in ("perplexity", "bleu") else (lambda v: f"{v:.1%}")
        console.print(f"{name}: base {show(base)} -> tuned {show(tuned)} on {result.evaluation['test']['rows']} test rows",
                      soft_wrap=True)
    else:
        console.print("no test set (fewer than 200 rows and no --test), so no before/after figures", soft_wrap=True)
    minutes, secs = divmod(round(result.seconds), 60)
    console.print(f"wall time {minutes} min {secs} s")
    # One line each, unwrapped, so the summary stays three lines in any terminal.
    console.print(f"report: {run_dir}/report.html   model: {result.model_id} (served by `tunesmith serve`)", soft_wrap=True)


# --------------------------------------------------------------------------- the service

keys_app = typer.Typer(help="API keys for `tunesmith serve` (stored hashed; each key belongs to one project).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _data_dir() -> Path:
    return Path(os.environ.get("TUNESMITH_DATA", Path.home() / ".tunesmith"))


DataDirOpt = Annotated[Optional[Path], typer.Option(help="Where the service keeps uploaded files, runs and its SQLite database "
                                                    "(default: $TUNESMITH_DATA, else ~/.tunesmith).")]
# Read from the environment too: a URL with a password on the command line is visible to every
# user of the machine in `ps`, so `tunesmith serve` hands it to its workers this way.
DatabaseOpt = Annotated[Optional[str], typer.Option(envvar="TUNESMITH_DATABASE_URL", show_envvar=True,
                                                    help="SQLAlchemy database URL (e.g. postgresql://...); default SQLite in --data-dir. "
                                                    "Prefer the environment variable when the URL holds a password.")]


def _sessions(data_dir: Path | None, database_url: str | None):
    from tunesmith.jobs import store

    # The service's files (uploads, runs, the SQLite database and its -wal/-shm) hold other
    # people's data and the key hashes: everything it creates from here on is owner-only.
    os.umask(0o077)
    data_dir = data_dir or _data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    url = database_url or store.default_database_url(data_dir)
    try:
        return store.connect(url)
    except Exception as exc:  # a bad URL or an unreachable server: one sentence, not a traceback
        raise TunesmithError(f"Cannot open the database {store.safe_url(url)}: {type(exc).__name__}; "
                             "check --database-url.") from None


@keys_app.command("create")
@user_errors
def keys_create(
    project: Annotated[str, typer.Option(help="The project the key works in: it sees only this project's files, jobs and models.")],
    admin: Annotated[bool, typer.Option(help="An admin key sees every project.")] = False,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Create an API key and print it (it is stored hashed and cannot be shown again)."""
    import re

    from tunesmith.jobs.store import create_key

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", project):
        raise TunesmithError(f"--project '{project}': use 1-64 letters, digits, '-' or '_'.")
    secret = create_key(_sessions(data_dir, database_url), project, admin)
    err.print(f"API key for project [bold]{project}[/bold]{' (admin)' if admin else ''}; store it now, it is not shown again:")
    console.print(secret)


@keys_app.command("list")
@user_errors
def keys_list(data_dir: DataDirOpt = None, database_url: DatabaseOpt = None) -> None:
    """List API keys (their first characters only)."""
    from sqlalchemy import select

    from tunesmith.jobs.store import Key

    table = Table()
    for col in ("id", "project", "starts with", "admin", "revoked"):
        table.add_column(col)
    with _sessions(data_dir, database_url)() as s:
        for k in s.scalars(select(Key).order_by(Key.created_at)):
            table.add_row(k.id, k.project, k.prefix + "...", "yes" if k.admin else "", "yes" if k.revoked else "")
    console.print(table)


@keys_app.command("revoke")
@user_errors
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id from `tunesmith keys list`.")],
                data_dir: DataDirOpt = None, database_url: DatabaseOpt = None) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    from tunesmith.jobs.store import Key

    with _sessions(data_dir, database_url).begin() as s:
        key = s.get(Key, key_id)
        if key is None:
            raise TunesmithError(f"No key with id '{key_id}'; see `tunesmith keys list`.")
        key.revoked = True
    err.print(f"revoked {key_id}")


@app.command("worker")
@user_errors
def worker_cmd(
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    name: Annotated[Optional[str], typer.Option(help="Worker name in events; default host-pid.")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between looks at an empty queue.")] = 1.0,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats while a job runs.")] = 5.0,
    stale_after: Annotated[float, typer.Option(help="A running job whose worker sent no heartbeat for this long is taken over.")] = 60.0,
    max_attempts: Annotated[int, typer.Option(min=1, help="A job whose worker died on it this many times fails instead of being taken over again.")] = 3,
    once: Annotated[bool, typer.Option(help="Exit when the queue is empty.")] = False,
    parent_pid: Annotated[Optional[int], typer.Option(hidden=True, help="Stop (handing the running job back) when this process is gone; `tunesmith serve` passes its own.")] = None,
) -> None:
    """Run fine-tuning jobs from the service's queue (any number of workers may share one database)."""
    quiet_libraries()
    from tunesmith.jobs.worker import run_worker

    data_dir = data_dir or _data_dir()
    _sessions(data_dir, database_url)
    from tunesmith.jobs.store import default_database_url

    run_worker(database_url or default_database_url(data_dir), data_dir, name, poll, heartbeat, stale_after, once,
               log=lambda line: err.print(line, markup=False, highlight=False), max_attempts=max_attempts,
               parent_pid=parent_pid)


@app.command("serve")
@user_errors
def serve_cmd(
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    workers: Annotated[int, typer.Option(min=0, help="Training workers to start beside the server (0: run `tunesmith worker` elsewhere).")] = 1,
    config: Annotated[Optional[Path], typer.Option(help="Server settings as YAML (models, limits, reward functions, reward models, judges); options given here win.")] = None,
    model: Annotated[Optional[list[str]], typer.Option(help="Offer a local base model as NAME=FOLDER (repeatable).")] = None,
    reward_fn: Annotated[Optional[list[str]], typer.Option(help="Offer an RL reward function as NAME=FILE.py[:FUNCTION] (repeatable); jobs name it, never the file.")] = None,
    reward_model: Annotated[Optional[list[str]], typer.Option(help="Offer a reward-model run as NAME=RUN_FOLDER (repeatable).")] = None,
    judge: Annotated[Optional[list[str]], typer.Option(help="Offer an LLM judge as NAME=URL[,MODEL[,KEY_ENV]] (repeatable); its key is read from $KEY_ENV and sent only to URL.")] = None,
    max_upload_mb: Annotated[Optional[float], typer.Option(min=0.001, help="Largest data file an upload may be [default: 512].")] = None,
    max_adapters: Annotated[Optional[int], typer.Option(min=1, help="Fine-tuned adapters kept loaded beside their base model [default: 8].")] = None,
    max_batch: Annotated[Optional[int], typer.Option(min=1, help="Most concurrent requests generated together in one batch (1: one at a time) [default: 16].")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(min=1, help="Most tokens one completion may generate [default: 2048].")] = None,
    max_concurrent_per_key: Annotated[Optional[int], typer.Option(min=1, help="Generation requests one API key may have in flight [default: 4].")] = None,
) -> None:
    """Serve the OpenAI-compatible API (files, fine-tuning jobs, models, chat) and train its jobs.

    Jobs refer to server-side resources (base models, reward functions, reward models, LLM
    judges) only by the names given here or in --config; never by a path or URL."""
    import signal
    import subprocess

    import uvicorn
    from sqlalchemy import select

    from tunesmith.jobs.store import Key, default_database_url
    from tunesmith.serve.app import create_app
    from tunesmith.serve.config import judges_from_options, pairs, server_settings

    data_dir = data_dir or _data_dir()
    url = database_url or default_database_url(data_dir)
    settings = server_settings(
        data_dir, url, config, models=pairs("--model", model, "FOLDER"),
        reward_functions=pairs("--reward-fn", reward_fn, "FILE.py[:FUNCTION]"),
        reward_models=pairs("--reward-model", reward_model, "RUN_FOLDER"), judges=judges_from_options(judge),
        max_upload_mb=max_upload_mb, max_adapters=max_adapters, max_batch=max_batch, max_tokens=max_tokens,
        max_concurrent_per_key=max_concurrent_per_key,
    )  # fmt: skip
    sessions = _sessions(data_dir, database_url)
    with sessions() as s:
        if s.scalar(select(Key.id).limit(1)) is None:
            err.print("[yellow]no API keys yet:[/yellow] create one with `tunesmith keys create --project NAME`.")

    def stop(_signum, _frame):
        # uvicorn catches SIGTERM/SIGINT itself, shuts down, then raises the signal again with
        # the handler it found: the default SIGTERM handler killed the process right there,
        # before the `finally` below, and the workers were left running. This handler ends
        # serve through the `finally` instead.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The URL goes through the environment, not the arguments (`ps` shows those to everyone);
    # --parent-pid: a worker stops by itself when serve is gone, even killed by SIGKILL.
    env = dict(os.environ, TUNESMITH_DATABASE_URL=url)
    procs: list[subprocess.Popen] = []
    try:
        for i in range(workers):
            procs.append(subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "worker", "--data-dir", str(data_dir),
                                           "--name", f"worker-{i + 1}-{os.getpid()}", "--parent-pid", str(os.getpid())],
                                          env=env))
        err.print(f"OpenAI-compatible API at http://{host}:{port}/v1 with {workers} worker(s); data in {data_dir}")
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=settings.shutdown_s)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the workers' stop short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_workers(procs, WORKER_STOP_S)


# A worker stops at the end of its current training step (or evaluation batch) and hands its
# job back; one that takes longer is killed, and its job resumes from its last checkpoint.
WORKER_STOP_S = 30.0


def _stop_workers(procs: list, grace_s: float) -> None:
    """SIGTERM each worker (each hands its running job back to the queue), wait up to `grace_s`
    for all of them, then kill the ones still running."""
    import subprocess

    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    end = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            err.print(f"worker {proc.pid} did not stop within {grace_s:.0f} s; killing it (its job resumes from its "
                      "last checkpoint)")
            proc.kill()
            proc.wait()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
