"""`tunesmith train`, `quickstart`, `tune` and `auto`: the commands that train, each ending with
the before/after evaluation when the run has a test set."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from tunesmith.cli.common import (
    DatabaseOpt,
    DataDirOpt,
    DomainOpt,
    EvalBars,
    KeepGeneralOpt,
    PlainProgress,
    ReportToOpt,
    TeacherKeyOpt,
    TeacherModelOpt,
    TeacherUrlOpt,
    TemplateOpt,
    console,
    convert_builtin_once,
    default_run_dir,
    ensure_database,
    err,
    parse_columns_option,
    print_evaluation,
    user_errors,
)
from tunesmith.errors import TunesmithError
from tunesmith.runtime import quiet_libraries

if TYPE_CHECKING:  # for annotations only: importing runs costs pydantic at start-up
    from tunesmith.runs import TrainSummary


@user_errors
def train_cmd(
    data: Annotated[Optional[str], typer.Option(help="Training data file (any format `data inspect` reads).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Base model: built-in name, local folder or hub id.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML run config; options given here override it.")] = None,
    validation: Annotated[Optional[str], typer.Option(help="Validation file; default: hold out a split.")] = None,
    method: Annotated[Optional[str], typer.Option(help="What to train: sft (default), pretrain (raw text), classify, reward (a reward model), dpo, orpo, simpo, kto (preference data), grpo or rloo (RL against rewards).")] = None,
    task: Annotated[Optional[str], typer.Option(help="classify: same as --method classify.")] = None,
    stages: Annotated[Optional[str], typer.Option(help="Several stages in order, e.g. pretrain,sft or sft,reward,grpo.")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="lora (default), rslora, dora, pissa, olora, loha, lokr, ia3, prompt, prefix, qlora or full.")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="Load the base in 4bit or 8bit (QLoRA; CUDA GPU only), or auto: 4bit when bf16 would not fit in free GPU memory.")] = None,
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
    report_to: ReportToOpt = None,
    domain: DomainOpt = None,
    template: TemplateOpt = None,
    keep_general: KeepGeneralOpt = False,
) -> None:
    """Fine-tune a model on your data: chat tuning, continued pretraining, a classifier, a reward
    model, preference optimisation (DPO, ORPO, SimPO, KTO) or RL (GRPO, RLOO), with LoRA
    (default), another PEFT method or full fine-tuning, validation and early stopping. With
    --domain, the pack's compliance profile gates the data and the run goes to the audit trail."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.config import RunConfig, apply_overrides, load_config  # pydantic
    from tunesmith.runs import RunDir  # pydantic
    from tunesmith.train.callbacks import RichProgressCallback  # torch
    from tunesmith.tracking import check_installed, parse_report_to
    from tunesmith.train.distributed import Cluster  # pydantic
    from tunesmith.workflows.train_eval import train  # torch

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
        cfg = apply_overrides(cfg, {
            "model.name": model,
            "data.train": data,
            "data.validation": validation,
            "data.system_prompt": system_prompt,
            "data.columns": parse_columns_option(columns),
            "data.pretrain": pretrain_data,
            "data.replay_ratio": replay_ratio,
            "data.replay_file": replay_file,
            "method.stages": [s.strip() for s in chosen[0].split(",")] if chosen else None,
            "method.adapter": adapter,
            "method.quantize": quantize,
            "method.lora_r": lora_r,  # lora_alpha, when not set, follows it (MethodConfig.alpha)
            "method.freeze_layers": freeze_layers,
            "method.gradient_checkpointing": gradient_checkpointing,
            "method.neftune_alpha": neftune,
            "method.label_smoothing": label_smoothing,
            "data.preference": preference_data,
            "data.prompts": prompt_data,
            "method.beta": beta,
            "method.dpo_loss": dpo_loss,
            "method.reward_model": reward_model,
            "method.reward_functions": reward_fn,
            "method.judge_url": judge_url,
            "method.judge_model": judge_model,
            "method.num_generations": num_generations,
            "train.epochs": epochs,
            "train.learning_rate": learning_rate,
            "train.max_steps": max_steps,
            "train.max_length": max_length,
            "data.force": force or None,
            "data.test": test,
            "data.test_split": test_split,
            "eval.enabled": False if no_eval else None,
            "eval.judge": judge,
            "eval.judge_url": eval_judge_url,
            "eval.judge_model": eval_judge_model,
            "eval.minutes_per_item": minutes_per_item,
            "eval.items_per_week": items_per_week,
            "distributed.num_processes": num_processes,
            "distributed.strategy": strategy,
            "train.report_to": parse_report_to(report_to) or None,
            "eval.keep_general": True if keep_general else None,
            "domain": domain,
            "template": template,
        }, source="options", names={"domain": "--domain", "template": "--template"})  # fmt: skip
        check_installed(cfg.train.report_to)  # before training, not after it
        run_dir = output or default_run_dir()
    convert_builtin_once(str(run_dir) if resume else cfg.model.name)
    progress = RichProgressCallback(console=err)
    err.print(f"run directory: [bold]{run_dir}[/bold]")
    bars = EvalBars(err)
    try:
        cluster = Cluster(num_machines, machine_rank, main_ip, main_port)
        summary = train(cfg, run_dir, callbacks=[progress], resume=resume is not None, eval_progress=bars, cluster=cluster,
                        say=lambda line: err.print(f"[dim]domain:[/dim] {line}", highlight=False))
    except KeyboardInterrupt:
        progress.close()
        bars.stop()
        err.print(f"[yellow]interrupted.[/yellow] continue with: tunesmith train --resume {run_dir}")
        raise typer.Exit(130) from None
    bars.stop()
    print_train_summary(summary, run_dir)
    if summary.evaluation:
        print_evaluation(summary.evaluation, run_dir)
    elif RunDir(run_dir).config.eval.enabled:
        console.print(f"no test set, so no before/after report: run `tunesmith eval {run_dir} --test FILE`")


def print_train_summary(summary: TrainSummary, run_dir: Path) -> None:
    """The training summary (per stage for a multi-stage run), where the weights are, and the
    command that tries them."""
    # heavy: imported when the command runs, not for --help
    from tunesmith.runs import RunDir  # pydantic

    table = Table(show_header=False, title="training finished")
    for stage in (summary.stages or [])[:-1]:
        table.add_row(f"stage {stage.stage}", f"{stage.global_step} steps, loss {stage.train_loss:.4f}")
    table.add_row("steps", str(summary.global_step))
    table.add_row("train rows / validation rows", f"{summary.train_rows} / {summary.validation_rows}")
    if summary.truncated_rows or summary.skipped_rows:
        table.add_row("cut at max_length / skipped", f"{summary.truncated_rows} / {summary.skipped_rows or 0}")
    if summary.trainable_params:
        share = summary.trainable_params / summary.total_params
        table.add_row("trained parameters", f"{summary.trainable_params:,} ({share:.2%})")
    table.add_row("final train loss", f"{summary.train_loss:.4f}")
    if summary.best_eval_loss is not None:
        table.add_row("best validation loss", f"{summary.best_eval_loss:.4f}")
    if summary.best_eval_perplexity is not None:
        table.add_row("validation perplexity", f"{summary.best_eval_perplexity:.2f}")
    if summary.eval_accuracy is not None:
        table.add_row("validation accuracy / macro-F1", f"{summary.eval_accuracy:.1%} / {summary.eval_macro_f1:.3f}")
    if summary.pairwise_accuracy is not None:
        table.add_row("validation pairwise accuracy", f"{summary.pairwise_accuracy:.1%} (mean margin {summary.mean_margin:.3f})")
    if summary.reward_accuracy is not None:
        table.add_row("validation reward accuracy / margin", f"{summary.reward_accuracy:.1%} / {summary.reward_margin:.3f}")
    if summary.reward_start is not None:
        table.add_row("mean reward, first / last steps", f"{summary.reward_start:.3f} -> {summary.reward_end:.3f}")
    table.add_row("time", f"{summary.train_runtime_s:.0f} s")
    table.add_row("weights", str(RunDir(run_dir).final.path / summary.weights))
    console.print(table)
    if summary.task == "classify":
        console.print(f"try it: tunesmith predict {run_dir} --text \"...\"")
    elif summary.task == "reward":
        console.print(f"try it: tunesmith score {run_dir} --file PAIRS.jsonl")
    elif summary.task != "pretrain":
        console.print(f"try it: tunesmith chat {run_dir}")


@user_errors
def quickstart_cmd(
    output: Annotated[Optional[Path], typer.Option(help="Run directory; default runs/quickstart-DATE-TIME.")] = None,
    model: Annotated[str, typer.Option(help="Base model.")] = "smollm2-135m",
    max_steps: Annotated[Optional[int], typer.Option(help="Cap optimizer steps (for a faster demo).")] = None,
    export: Annotated[bool, typer.Option("--export/--no-export", help="End with an ONNX export, verified in onnxruntime.")] = True,
    report_to: ReportToOpt = None,
) -> None:
    """The platform in one command, on the bundled SmolLM2 and Banking77 sample: data gate,
    automatic choices with their reasons, training, base vs tuned evaluation with a report
    and a model card, and a verified ONNX export with the command that runs it."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.cli.export import print_export
    from tunesmith.runs import RunDir  # pydantic
    from tunesmith.tracking import check_installed, parse_report_to
    from tunesmith.train.callbacks import RichProgressCallback  # torch
    from tunesmith.workflows.quickstart import (  # torch
        SAMPLE_TEST,
        SAMPLE_TRAIN,
        run_quickstart,
    )

    trackers = parse_report_to(report_to)
    check_installed(trackers)
    run_dir = output or default_run_dir("quickstart")
    err.print(f"fine-tuning [bold]{model}[/bold] on {SAMPLE_TRAIN.name}; testing on {SAMPLE_TEST.name}")
    err.print(f"run directory: [bold]{run_dir}[/bold]")
    convert_builtin_once(model)
    progress = RichProgressCallback(console=err)
    bars = EvalBars(err)  # starts once training's bar has closed: one live display at a time
    try:
        report = run_quickstart(run_dir, model, max_steps, [progress], bars, say=lambda line: err.print(f"[dim]auto:[/dim] {line}"),
                                export=export, report_to=trackers)
    except KeyboardInterrupt:
        progress.close()
        err.print(f"[yellow]interrupted.[/yellow] continue training with: tunesmith train --resume {run_dir}")
        raise typer.Exit(130) from None
    finally:
        bars.stop()
    print_evaluation(RunDir(run_dir).results(), run_dir)
    if report["export"]:
        print_export(report["export"])
    console.print(
        f"Banking77 intent accuracy on {report['test_rows']} held-out queries: base {report['base_accuracy']:.1%}, "
        f"tuned {report['tuned_accuracy']:.1%}. Training {report['train_seconds']:.0f} s, total "
        f"{report['total_seconds']:.0f} s.", soft_wrap=True)
    console.print(f"try it: tunesmith predict {run_dir} --text \"I still have not received my new card\"", soft_wrap=True)


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
    # heavy: imported when the command runs, not for --help
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from tunesmith.config import load_config  # pydantic
    from tunesmith.runs import RunDir  # pydantic
    from tunesmith.tune.study import run_study  # torch
    from tunesmith.workflows.train_eval import evaluate  # torch

    data_dir, url = ensure_database(data_dir, database_url)  # the study is kept in the project database
    base = load_config(config)
    out = output or Path("runs") / f"tune-{config.stem}"
    convert_builtin_once(base.model.name)
    # A log, not a terminal: rich draws no live bar there, so plain lines instead.
    progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                        TimeElapsedColumn(), console=err) if err.is_terminal else None
    plain, finished = PlainProgress(err), 0
    with progress if progress is not None else contextlib.nullcontext():
        if progress is not None:
            task = progress.add_task("trials", total=trials, note="")
        else:
            plain.update("trials", 0, trials)

        def on_trial(t) -> None:
            nonlocal finished
            finished += 1
            value = "" if t.value is None else f": {objective} {t.value:.4g}"
            note = f"trial {t.number} {t.state.name.lower()}{value}"
            if progress is not None:
                progress.update(task, advance=1, note=note)
            else:
                plain.update("trials", finished, trials, note=note)

        summary = run_study(base, out, trials, objective, url, on_trial=on_trial, backend=backend,
                            ray_address=ray_address, parallel=parallel)
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
    if RunDir(best_dir).config.has_test_set():
        bars = EvalBars(err)
        try:
            results = evaluate(best_dir, progress=bars)  # under a domain, also an audit-trail entry
        finally:
            bars.stop()
        print_evaluation(results, best_dir)


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
    domain: DomainOpt = None,
    template: TemplateOpt = None,
    report_to: ReportToOpt = None,
    keep_general: KeepGeneralOpt = False,
) -> None:
    """From a data file to an evaluated specialist in one command: detect the task, check and
    fix the data, plan memory and the budget, train, report base vs tuned, and register the
    model so `tunesmith serve` serves it. Every decision is listed with its reason. With
    --domain, identifiers of the pack's compliance profile are redacted into the copy that
    trains, and the run goes to the audit trail; --template picks the task and system prompt."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.inference.teacher import make_teacher  # pydantic
    from tunesmith.jobs.store import register_run  # sqlalchemy
    from tunesmith.runs import RunDir  # pydantic
    from tunesmith.tracking import check_installed, parse_report_to
    from tunesmith.train.callbacks import RichProgressCallback  # torch
    from tunesmith.workflows.auto import run_auto  # torch

    trackers = parse_report_to(report_to)
    check_installed(trackers)  # before the gate and training, not after them
    data_dir, url = ensure_database(data_dir, database_url)  # the model is registered there
    run_dir = output or default_run_dir("auto")
    convert_builtin_once(model)
    the_teacher = make_teacher(teacher, teacher_url, teacher_model, teacher_key) if synth_below else None
    progress = RichProgressCallback(console=err)
    bars = EvalBars(err)
    try:
        result = run_auto(data, run_dir, test, task, budget, model, parse_columns_option(columns), force, synth_below,
                          the_teacher, callbacks=[progress], eval_progress=bars,
                          say=lambda line: err.print(f"[dim]auto:[/dim] {line}"), domain=domain, template=template,
                          keep_general=keep_general, overrides={"train.report_to": trackers} if trackers else None)
    except KeyboardInterrupt:
        progress.close()
        err.print(f"[yellow]interrupted.[/yellow] continue training with: tunesmith train --resume {run_dir}")
        raise typer.Exit(130) from None
    finally:
        bars.stop()
    result.model_id = register_run(url, run_dir, model, project)
    if result.evaluation:
        print_evaluation(result.evaluation, run_dir)
        name, base = next(iter(result.evaluation.metrics["base"].items()))
        tuned = result.evaluation.metrics["tuned"][name]
        show = (lambda v: f"{v:.2f}") if name in ("perplexity", "bleu") else (lambda v: f"{v:.1%}")
        console.print(f"{name}: base {show(base)} -> tuned {show(tuned)} on {result.evaluation.test.rows} test rows",
                      soft_wrap=True)
    else:
        console.print("no test set (fewer than 200 rows and no --test), so no before/after figures", soft_wrap=True)
    minutes, secs = divmod(round(result.seconds), 60)
    console.print(f"wall time {minutes} min {secs} s")
    # One line each, unwrapped, so the summary stays three lines in any terminal.
    console.print(f"report: {RunDir(run_dir).report_file}   model: {result.model_id} (served by `tunesmith serve`)", soft_wrap=True)
