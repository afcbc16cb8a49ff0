"""`tunesmith domains`: the domain packs (legal, medical, finance, support), what each does, and
the ready command of each task template."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunesmith.cli.common import console, user_errors

SHOWN_LABELS = 12  # labels listed per template in the detail view


@user_errors
def domains_cmd(
    name: Annotated[str | None, typer.Argument(help="A pack to show in detail: legal, medical, finance or support.")] = None,
) -> None:
    """List the domain packs: each one's compliance profile (the regulation and the identifiers
    it makes errors in the data gate), task templates and safety probes. With NAME, one pack in
    detail, with the command that runs each template."""
    # domains.catalog is light (dataclasses), but kept out of `tunesmith --help`'s start-up like every command's library
    from tunesmith.domains.catalog import catalog, pack_json
    from tunesmith.domains.packs import get_domain

    if name:
        _show(pack_json(get_domain(name), Path.cwd()))
        return
    table = Table(title="domain packs (`tunesmith domains NAME` for one in detail)", show_lines=True)
    for col in ("pack", "compliance profile", "identifiers (errors in the data gate)", "task templates", "safety probes"):
        table.add_column(col)
    for pack in catalog(Path.cwd(), commands=False):
        profile = pack["profile"]
        templates = "\n".join(
            f"{t['name']}: {t['task']}"
            + (f", {len(t['labels'])} labels" if t["labels"] else "")
            + (f", tried on {t['dataset']}" if t["dataset"] else "")
            for t in pack["templates"])
        table.add_row(f"[bold]{pack['name']}[/bold]\n{pack['title']}", f"{profile['name']}\n[dim]{profile['regulation']}[/dim]",
                      ", ".join(profile["kinds"]), templates, str(len(pack["safety_probes"])))
    console.print(table)
    console.print("Use one with --domain NAME (and --template T) on `tunesmith data check`, `train`, `auto` and `eval`.")


def _show(pack: dict) -> None:
    """One pack in detail."""
    console.print(f"[bold]{pack['name']}[/bold]: {pack['title']}", highlight=False)
    console.print(pack["summary"], highlight=False)
    profile = pack["profile"]
    console.print(f"\n[bold]Compliance profile[/bold] {profile['name']}: {profile['regulation']}", highlight=False)
    kinds = Table(show_header=True)
    kinds.add_column("identifier")
    kinds.add_column("what it covers")
    for kind, what in profile["kinds"].items():
        kinds.add_row(kind, what)
    console.print(kinds)
    console.print("Each one found in the training data is an error; `--fix` (and `auto`) redact them consistently.")
    for t in pack["templates"]:
        console.print(f"\n[bold]Template {t['name']}[/bold] ({t['task']}): {t['title']}", highlight=False)
        console.print(f"  system prompt: {t['system_prompt']}", highlight=False)
        if t["labels"]:
            shown = ", ".join(t["labels"][:SHOWN_LABELS])
            more = f" and {len(t['labels']) - SHOWN_LABELS} more" if len(t["labels"]) > SHOWN_LABELS else ""
            console.print(f"  labels ({len(t['labels'])}): {shown}{more}", highlight=False)
        if t["dataset"]:
            here = "" if t["dataset_here"] else " (not in this checkout)"
            console.print(f"  tried on: ../shared/data/{t['dataset']}{here}", highlight=False)
        if t["settings"]:
            console.print("  settings: " + ", ".join(f"{k}={v}" for k, v in t["settings"].items()), highlight=False)
        console.print(f"  run it: {t['commands']['auto']}", highlight=False, soft_wrap=True)
    console.print(f"\n[bold]Safety probes[/bold] ({len(pack['safety_probes'])}, run by `tunesmith eval` under this domain):")
    for p in pack["safety_probes"]:
        console.print(f"  - {p['rule']}: \"{p['prompt']}\"", highlight=False)
    console.print("[bold]Bias swaps[/bold]: " + ", ".join(f"{a} <-> {b}" for a, b in pack["bias_swaps"]), highlight=False)
    console.print(f"[bold]Intended use[/bold]: {pack['intended_use']}", highlight=False)
    console.print("[bold]Out of scope[/bold]: " + "; ".join(pack["out_of_scope"]), highlight=False)
    console.print(f"[bold]Human oversight[/bold]: {pack['oversight']}", highlight=False)
