"""The domain packs described for people and programs: what `tunesmith domains` prints and
`GET /v1/tunesmith/domains` answers, from one function so the two never disagree."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from tunesmith.data.identifiers import KINDS
from tunesmith.domains.packs import DOMAINS, Domain, Template, dataset_path


def _shown(path: Path | None, relative_to: Path | None) -> str | None:
    """A dataset path as a command shows it: relative to `relative_to` (the current folder)
    when that is shorter, else absolute."""
    if path is None:
        return None
    if relative_to is None:
        return str(path)
    try:
        rel = os.path.relpath(path, relative_to)
    except ValueError:  # another drive (Windows)
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)


def ready_commands(pack: Domain, template: Template, cwd: Path | None = None) -> dict[str, str]:
    """The commands that run a template: `auto` (check, redact, train, evaluate, register) and
    `train` (the same run with every option yours), on the template's dataset when this
    checkout has it, else on YOUR_DATA."""
    train, test = dataset_path(template, "train"), dataset_path(template, "test")
    data = shlex.quote(_shown(train, cwd)) if train else "YOUR_DATA.csv"
    held_out = f" --test {shlex.quote(_shown(test, cwd))}" if test else ""
    pick = f" --domain {pack.name} --template {template.name}"
    return {"auto": f"tunesmith auto {data}{held_out}{pick}",
            "train": f"tunesmith train --data {data}{held_out}{pick}",
            "check": f"tunesmith data check {data} --domain {pack.name}"}


def template_json(pack: Domain, template: Template, cwd: Path | None = None, commands: bool = True) -> dict:
    """One template as JSON: name, title, task, system prompt, label set, dataset, settings (and
    the ready commands, for the CLI)."""
    out = {"name": template.name, "title": template.title, "task": template.task,
           "system_prompt": template.system_prompt, "labels": list(template.labels),
           "dataset": template.dataset, "dataset_here": dataset_path(template) is not None,
           "settings": dict(template.settings)}
    if commands:
        out["commands"] = ready_commands(pack, template, cwd)
    return out


def pack_json(pack: Domain, cwd: Path | None = None, commands: bool = True) -> dict:
    """One pack as JSON: its profile (regulation, identifier kinds with what each covers),
    templates, safety probes, bias swaps and the model card's regulated-use text."""
    return {
        "name": pack.name,
        "title": pack.title,
        "summary": pack.summary,
        "profile": {"name": pack.profile.name, "regulation": pack.profile.regulation,
                    "kinds": {kind: KINDS.get(kind, kind) for kind in pack.profile.kinds}},
        "templates": [template_json(pack, t, cwd, commands) for t in pack.templates],
        "safety_probes": [{"prompt": p.prompt, "rule": p.rule} for p in pack.safety_probes],
        "bias_swaps": [list(s) for s in pack.bias_swaps],
        "intended_use": pack.intended_use,
        "out_of_scope": list(pack.out_of_scope),
        "oversight": pack.oversight,
    }


def catalog(cwd: Path | None = None, commands: bool = True) -> list[dict]:
    """Every pack as `pack_json`, in the order `DOMAINS` declares them."""
    return [pack_json(pack, cwd, commands) for pack in DOMAINS.values()]
