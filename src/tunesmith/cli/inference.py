"""`tunesmith generate`, `chat`, `predict` and `score`: use a trained run (or a base model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunesmith.cli.common import (
    console,
    convert_builtin_once,
    err,
    parse_columns_option,
    progress_for,
    user_errors,
)
from tunesmith.errors import TunesmithError
from tunesmith.runtime import quiet_libraries


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
    # heavy: imported when the command runs, not for --help
    from tunesmith.data.load import write_jsonl  # pydantic
    from tunesmith.inference.generate import (  # pydantic
        generate,
        load_for_inference,
        read_prompts,
    )

    if (prompt is None) == (file is None):
        raise TunesmithError("Give exactly one of --prompt TEXT or --file FILE.")
    conversations, tools = ([[{"role": "user", "content": prompt}]], [None]) if prompt is not None else read_prompts(file)
    convert_builtin_once(target)
    with err.status("loading model"):
        loaded = load_for_inference(target, base=base)
    with progress_for(err, "generating", len(conversations)) as progress:
        answers = generate(loaded, conversations, max_new_tokens, temperature, batch_size, on_batch=progress.advance,
                           tools=tools)
    if out:
        write_jsonl(out, [{"messages": c, "answer": a} | ({"tools": t} if t else {})
                          for c, a, t in zip(conversations, answers, tools)])
        err.print(f"wrote {len(answers)} answers to {out}")
    elif prompt is not None:
        console.print(answers[0])
    else:
        for c, a in zip(conversations, answers):
            console.print(f"[bold]> {c[-1]['content']}[/bold]\n{a}\n")


@user_errors
def chat_cmd(
    target: Annotated[str, typer.Argument(help="Run directory, or a base model name.")],
    base: Annotated[bool, typer.Option("--base", help="Chat with the untuned base model of the run.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
) -> None:
    """Talk to a fine-tuned run interactively. Empty line or Ctrl-D quits; /reset forgets the conversation."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.inference.generate import generate, load_for_inference  # pydantic

    convert_builtin_once(target)
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
    # heavy: imported when the command runs, not for --help
    from tunesmith.data.formats import load_data  # numpy
    from tunesmith.data.load import write_jsonl  # pydantic
    from tunesmith.inference.classifier import load_classifier, predict  # pydantic

    if (text is None) == (file is None):
        raise TunesmithError("Give exactly one of --text TEXT or --file FILE.")
    rows = [{"text": text}]
    if file is not None:
        data = load_data(file)
        if data.task not in ("pretrain", "classify"):
            raise TunesmithError(f"{file} holds {data.task} data; give a .txt file or rows with a text column.")
        rows = data.records
    convert_builtin_once(run)
    with err.status("loading classifier"):
        classifier = load_classifier(run)
    with progress_for(err, "predicting", len(rows)) as progress:
        predictions = predict(classifier, [r["text"] for r in rows], batch_size, top_k, progress.advance)
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
    # heavy: imported when the command runs, not for --help
    from tunesmith.data.load import write_jsonl  # pydantic
    from tunesmith.inference.reward import (  # numpy, pydantic
        load_reward_model,
        score_file,
    )

    convert_builtin_once(run)
    with err.status("loading reward model"):
        rm = load_reward_model(run)
    with progress_for(err, "scoring") as progress:
        rows, summary = score_file(rm, file, parse_columns_option(columns), progress.advance)
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
