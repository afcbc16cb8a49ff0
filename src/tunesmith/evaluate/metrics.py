"""Metrics on generated answers."""

from __future__ import annotations

import re


def normalize(text: str) -> str:
    """Lower-case, trim, collapse whitespace, drop trailing punctuation: `Card_Arrival.` and
    `card_arrival` are the same answer."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!")


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after `normalize`."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return 0.0
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references))
    return hits / len(references)
