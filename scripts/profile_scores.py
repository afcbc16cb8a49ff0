"""Recall and precision of each domain's compliance profile on its planted identifiers.

Runs every domain pack's profile (``tunesmith.domains.packs``) over
``tests/data_files/planted/<domain>.jsonl`` (rows of realistic domain text with the
identifiers planted in them, plus near-misses that must not be flagged) and prints a
markdown table per domain: recall, precision and, per kind, what was missed or wrongly
flagged; then the same two numbers on the held-out rows alone (``"split": "holdout"``,
written after the detectors were tuned on the others, so they say how the profile does
on text it was not fitted to). Run with ``python scripts/profile_scores.py``; the README quotes its output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tunesmith.data.identifiers import score_profile
from tunesmith.domains.packs import DOMAINS

PLANTED = Path(__file__).resolve().parents[1] / "tests" / "data_files" / "planted"


def _table(name: str, scores: dict) -> str:
    title = (
        f"### {name}: recall {scores['recall']:.2f}, precision {scores['precision']:.2f} "
        f"({scores['planted']} planted, {scores['matches']} flagged)"
    )
    lines = [
        title,
        "",
        "| kind | planted | found | recall | false positives | missed | wrongly flagged |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, s in scores["per_kind"].items():
        recall = "-" if s["recall"] is None else f"{s['recall']:.2f}"
        missed = ", ".join(f"`{t}`" for t in s["misses"]) or ""
        wrong = ", ".join(f"`{t}`" for t in s["wrong"]) or ""
        lines.append(f"| {kind} | {s['planted']} | {s['found']} | {recall} | {s['false_positives']} | {missed} | {wrong} |")
    return "\n".join(lines)


def main() -> int:
    for name, domain in DOMAINS.items():
        rows = [json.loads(line) for line in (PLANTED / f"{name}.jsonl").read_text().splitlines() if line.strip()]
        holdout = [row for row in rows if row.get("split") == "holdout"]
        print(f"## {name} ({domain.profile.name}, {len(rows)} rows)\n")
        print(_table(f"{name}, all rows", score_profile(domain.profile, rows)) + "\n")
        held = score_profile(domain.profile, holdout)
        print(
            f"Held-out rows only ({len(holdout)} rows written after the detectors were tuned): recall "
            f"{held['recall']:.2f}, precision {held['precision']:.2f}.\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
