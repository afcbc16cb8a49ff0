"""Grounding of generated answers: on test rows that give the model a context (a `context` or
`passage` column, as in CUAD-QA, TAT-QA or `tunesmith data qa` output), is what the base and
the tuned model wrote supported by that context? The checks are `domains.grounding`'s: no
model, the same verdict every time.

Results key "grounding":

    {"rows": rows with a context,
     "base" / "tuned": {"statements", "unsupported_statements", "unsupported_share",
                        "rows_with_unsupported", "rows_with_unsupported_share",
                        "invented_citations", "examples": [{"context", "answer", "unsupported",
                        "invented_citations"}, ...]},
     "method": one line on how statements are checked}
"""

from __future__ import annotations

from tunesmith.data.formats import CONTEXT_TEMPLATE
from tunesmith.domains.grounding import MIN_COVERAGE, grounding_report

MAX_EXAMPLES = 5  # answers with unsupported statements shown per model
METHOD = (f"each answer split into statements; a statement is unsupported when a number in it is not in the context, "
          f"it adds a negation, or under {MIN_COVERAGE:.0%} of its content words occur in the context; a citation "
          "of no given passage, or a quote not in the context, is invented")
_SEPARATOR = CONTEXT_TEMPLATE.split("{context}")[1].split("{prompt}")[0]  # what joins context and question


def row_contexts(data, prompts: list[list[dict]]) -> list[str | None]:
    """Each prompt's context: the text before the question in its last user turn, when the
    test file has a context column (the loader put it there as CONTEXT_TEMPLATE says); None
    for every prompt otherwise."""
    if "context" not in (getattr(data, "column_map", None) or {}):
        return [None] * len(prompts)
    out: list[str | None] = []
    for messages in prompts:
        user = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
        if isinstance(user, str) and _SEPARATOR in user:
            out.append(user.rsplit(_SEPARATOR, 1)[0])  # a question rarely holds a blank line; a context often does
        else:
            out.append(None)
    return out


def grounding_side(answers: list[str], contexts: list[str | None]) -> dict:
    """Grounding figures of one model's answers (rows without a context left out)."""
    statements = unsupported = rows_unsupported = invented = 0
    examples = []
    for answer, context in zip(answers, contexts):
        if context is None:
            continue
        report = grounding_report(answer or "", context)
        statements += len(report["statements"])
        unsupported += len(report["unsupported"])
        invented += len(report["invented_citations"])
        if report["unsupported"] or report["invented_citations"]:
            rows_unsupported += bool(report["unsupported"])
            if len(examples) < MAX_EXAMPLES:
                examples.append({"context": context[:300], "answer": answer, "unsupported": report["unsupported"],
                                 "invented_citations": report["invented_citations"]})
    rows = sum(c is not None for c in contexts)
    return {
        "statements": statements,
        "unsupported_statements": unsupported,
        "unsupported_share": unsupported / statements if statements else 0.0,
        "rows_with_unsupported": rows_unsupported,
        "rows_with_unsupported_share": rows_unsupported / rows if rows else 0.0,
        "invented_citations": invented,
        "examples": examples,
    }


def grounding_results(contexts: list[str | None], base_answers: list[str] | None,
                      tuned_answers: list[str] | None) -> dict | None:
    """The "grounding" section of the results, or None when no test row has a context or a
    model wrote no answers."""
    rows = sum(c is not None for c in contexts)
    if not rows or base_answers is None or tuned_answers is None:
        return None
    return {"rows": rows, "base": grounding_side(base_answers, contexts),
            "tuned": grounding_side(tuned_answers, contexts), "method": METHOD}
