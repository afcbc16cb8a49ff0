"""When two answers are the same answer: the one normalisation that scoring and training share.

The evaluation metric (`tunesmith.evaluate.metrics.exact_match`) and the RL rewards
(`tunesmith.train.rl.exact_match`, `contains_answer`) both compare a model's answer with a
reference. They must agree, or a model is trained towards answers the evaluation then counts
as wrong (or the other way round). `evaluate/` and `train/` are sibling layers that may not
import each other, so the rule lives here, below both.
"""

from __future__ import annotations

import re

_SPACE = re.compile(r"\s+")
_TRAILING = ".!"  # end-of-sentence marks a model adds to a label; "?" is kept (a question is not an answer)


def normalize(text: str) -> str:
    """Lower-case, trim, collapse whitespace, drop trailing full stops and exclamation marks:
    `Card_Arrival.`, ` card_arrival ` and `CARD_ARRIVAL!` are all `card_arrival`."""
    return _SPACE.sub(" ", str(text)).strip().lower().rstrip(_TRAILING).rstrip()


def same_answer(answer: str, reference: str) -> bool:
    """Whether `answer` is the reference answer, after `normalize`."""
    return normalize(answer) == normalize(reference)


def contains_answer(text: str, reference: str) -> bool:
    """Whether `text` contains the reference answer, both after `normalize` (a reference that
    normalises to nothing, such as "...", is contained in nothing)."""
    wanted = normalize(reference)
    return bool(wanted) and wanted in normalize(text)
