"""`tunesmith eval`: measure a run against its base model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunesmith.cli.common import (
    DomainOpt,
    EvalBars,
    TemplateOpt,
    convert_builtin_once,
    err,
    parse_columns_option,
    print_evaluation,
    user_errors,
)
from tunesmith.errors import TunesmithError
from tunesmith.runtime import quiet_libraries


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
    coverage: Annotated[Optional[float], typer.Option(help="Share of rows a labeller answers; below its calibrated confidence threshold it refers to a person (default 0.9).")] = None,
    domain: DomainOpt = None,
    template: TemplateOpt = None,
) -> None:
    """Measure a run against its base model on held-out data: task metrics, an optional LLM
    judge, forgetting and bias probes, a value estimate. Writes RUN/eval/results.json,
    RUN/report.html and RUN/MODEL_CARD.md. Under a domain (the run's, or --domain for a run
    trained without one, which is then recorded in its config.yaml) the pack's safety and
    bias probes join, the model card gets its regulated-use section, and the evaluation goes
    to the audit trail."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.config import apply_overrides  # pydantic
    from tunesmith.runs import RunDir  # pydantic
    from tunesmith.workflows.train_eval import evaluate, set_domain  # torch

    folder = RunDir(run)
    if not folder.exists:
        raise TunesmithError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    if domain or template:
        set_domain(run, domain, template)
        folder = RunDir(run)  # its config now names the domain
    given = {"max_rows": max_rows, "max_new_tokens": max_new_tokens, "judge": judge, "judge_url": judge_url,
             "judge_model": judge_model, "judge_rubric": judge_rubric, "judge_prompts": judge_prompts,
             "forgetting": forgetting, "bias": bias, "minutes_per_item": minutes_per_item, "items_per_week": items_per_week,
             "coverage": coverage}
    # A bad value is reported under the option's name (`--max-rows: ...`), not the config field's.
    config = apply_overrides(folder.config, {f"eval.{k}": v for k, v in given.items()}, source="options",
                             names={f"eval.{k}": f"--{k.replace('_', '-')}" for k in given})
    convert_builtin_once(str(run))
    bars = EvalBars(err)
    try:
        results = evaluate(run, test, config.eval, parse_columns_option(columns), progress=bars)
    finally:
        bars.stop()
    print_evaluation(results, run)
