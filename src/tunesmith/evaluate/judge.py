"""LLM as judge: base versus tuned, pairwise.

Each test prompt is judged twice, once with the base answer shown first and once with the
tuned answer first, because judges favour a position (MT-Bench, Zheng et al. 2023). A side
wins only when both verdicts agree or one of them is a tie; verdicts that contradict each
other count as a tie (and are counted as inconsistent, a measure of the judge's own noise).
The judge is any teacher (`inference.teacher`): a local model or an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable

PAIRWISE_PROMPT = """Compare two answers to the same request.

Rubric: {rubric}

Request:
{request}
{reference}
Answer A:
{a}

Answer B:
{b}

Which answer is better by the rubric? Reply with one word: A, B or tie."""


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from a judge's reply ("A", "Answer B is better.", "Tie"), or None."""
    first = re.match(r"\W*(\w+)", text)
    if first and first.group(1).lower() in ("a", "b", "tie"):
        return {"a": "A", "b": "B", "tie": "tie"}[first.group(1).lower()]
    # A sentence: look for a capital A/B standing alone ("Answer B is better"), not the article "a".
    match = re.search(r"\b([AB])\b", text)
    if match:
        return match.group(1)
    return "tie" if re.search(r"\btie\b", text, re.IGNORECASE) else None


def combine(base_first: str | None, tuned_first: str | None) -> tuple[str, bool]:
    """(outcome for the tuned model: "win", "loss" or "tie", whether the two verdicts
    contradict each other). `base_first` is the verdict with the base answer as A,
    `tuned_first` the verdict with the tuned answer as A."""
    # Translate both verdicts into "tuned", "base" or "tie".
    one = {"A": "base", "B": "tuned"}.get(base_first or "", "tie")
    two = {"A": "tuned", "B": "base"}.get(tuned_first or "", "tie")
    if one == two:
        return ("win" if one == "tuned" else "loss" if one == "base" else "tie"), False
    if "tie" in (one, two):
        winner = one if two == "tie" else two
        return ("win" if winner == "tuned" else "loss"), False
    return "tie", True  # each order preferred a different side: the position decided, not the answers


def judge_pairwise(
    judge,
    requests: list[str],
    base_answers: list[str],
    tuned_answers: list[str],
    rubric: str,
    references: list[str] | None = None,
    on_batch: Callable[[int], None] | None = None,
    batch_size: int = 8,
) -> dict:
    """Judge each request's base and tuned answers in both orders. Returns the win/tie/loss
    counts and rates of the tuned model, and every verdict for the record."""
    references = references or [""] * len(requests)
    outcomes: list[dict] = []
    for start in range(0, len(requests), batch_size):
        rows = range(start, min(start + batch_size, len(requests)))
        conversations = []
        for i in rows:
            reference = f"\nReference answer:\n{references[i]}\n" if references[i] else ""
            for a, b in ((base_answers[i], tuned_answers[i]), (tuned_answers[i], base_answers[i])):
                text = PAIRWISE_PROMPT.format(rubric=rubric, request=requests[i], reference=reference, a=a, b=b)
                conversations.append([{"role": "user", "content": text}])
        replies = judge.complete(conversations, temperature=0.0, max_new_tokens=8)
        for k, i in enumerate(rows):
            first, second = parse_verdict(replies[2 * k]), parse_verdict(replies[2 * k + 1])
            outcome, inconsistent = combine(first, second)
            outcomes.append({"request": requests[i], "base_first": first, "tuned_first": second,
                             "outcome": outcome, "inconsistent": inconsistent})
        if on_batch:
            on_batch(len(rows))
    n = len(outcomes)
    counts = {k: sum(o["outcome"] == k for o in outcomes) for k in ("win", "loss", "tie")}
    return {
        "judge": judge.name,
        "rubric": rubric,
        "prompts": n,
        "wins": counts["win"],
        "losses": counts["loss"],
        "ties": counts["tie"],
        "inconsistent": sum(o["inconsistent"] for o in outcomes),
        "unparsed": sum(o[k] is None for o in outcomes for k in ("base_first", "tuned_first")),
        "win_rate": counts["win"] / n if n else 0.0,
        "loss_rate": counts["loss"] / n if n else 0.0,
        "tie_rate": counts["tie"] / n if n else 0.0,
        "verdicts": outcomes,
    }
