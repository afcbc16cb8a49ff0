"""A domain pack and its task template applied to a run config.

Every caller that trains (``tunesmith train``, ``auto``, an API job, the worker) goes through
``apply_pack``: it checks the domain and template named in the config (one sentence when a
template has no domain, or belongs to another pack), and the template then sets

- the system prompt, unless one was given;
- the stage from the template's task (``classify`` -> a classification head, ``sft`` ->
  supervised fine-tuning), unless stages were chosen;
- its ``settings`` (dotted config fields), with source ``template``, unless the same field was set.

Each value it sets gets its reason in ``config.reasons``. ``label_note`` compares the labels of
the training data with the template's label set: labels outside it are a warning, not an
error, and the run's label set stays the data's (a classifier's head has one output per
label the data holds; an output for a label it never saw could not be trained).
"""

from __future__ import annotations

from tunesmith.config import RunConfig, apply_overrides
from tunesmith.data.formats import load_data
from tunesmith.domains.packs import DOMAINS, Domain, Template, get_domain
from tunesmith.errors import ConfigError, TunesmithError

# A template's task -> the stage that trains it.
TEMPLATE_STAGES = {"classify": "classify", "sft": "sft"}
# A template's task -> what `tunesmith auto --task` calls it.
TEMPLATE_TASKS = {"classify": "classify", "sft": "chat"}
SHOWN_LABELS = 8  # unknown labels named in a warning, at most


def owners(template: str) -> list[str]:
    """The packs that have a template of this name."""
    return [d.name for d in DOMAINS.values() if any(t.name == template for t in d.templates)]


def resolve(domain: str | None, template: str | None) -> tuple[Domain | None, Template | None]:
    """The pack and template a run names; ConfigError, one sentence, for a template without a
    domain, a template of another pack, or a name no pack has."""
    if template and not domain:
        found = owners(template)
        hint = (f"it is a template of the {found[0]} pack, so add domain {found[0]}" if found
                else "`tunesmith domains` lists each pack's templates")
        raise ConfigError(f"template '{template}' needs a domain: {hint}.")
    if not domain:
        return None, None
    try:
        pack = get_domain(domain)
    except TunesmithError as exc:
        raise ConfigError(str(exc)) from None
    if not template:
        return pack, None
    if any(t.name == template for t in pack.templates):
        return pack, pack.template(template)
    names = ", ".join(t.name for t in pack.templates)
    found = owners(template)
    if found:
        raise ConfigError(f"template '{template}' belongs to the {found[0]} pack, not {domain}: use domain {found[0]}, "
                          f"or one of {domain}'s templates ({names}).")
    raise ConfigError(f"domain '{domain}' has no template '{template}'; choose one of: {names}.")


def apply_pack(config: RunConfig) -> tuple[RunConfig, list[str]]:
    """``config`` with its template applied (see the module's docstring), and a line for
    people about each thing the pack does to the run. A config without a domain is returned
    as it is (after the template check)."""
    pack, template = resolve(config.domain, config.template)
    if pack is None:
        return config, []
    notes = [(f"domain {pack.name}: the data gate applies the {pack.profile.name} profile ({pack.profile.regulation}); "
              "identifiers it finds are errors, and the run is written to the audit trail")]
    if template is None:
        return config, notes
    why = f"template {template.name} of the {pack.name} pack"
    values: dict = {}
    if not config.data.system_prompt:
        values["data.system_prompt"] = template.system_prompt
    stage = TEMPLATE_STAGES[template.task]
    if "method.stages" not in config.sources and config.method.stages != [stage]:
        values["method.stages"] = [stage]
    for key, value in template.settings.items():
        if config.sources.get(key) in (None, "template"):
            values[key] = value
    if values:
        config = apply_overrides(config, values, source="template")
        config.reasons.update(dict.fromkeys(values, why))
        notes.append(f"{why}: sets " + ", ".join(f"{k} = {_short(v)}" for k, v in values.items()))
    else:
        notes.append(f"{why}: the system prompt, stage and settings you gave are kept")
    return config, notes


def label_note(config: RunConfig) -> str | None:
    """A warning naming the training data's labels that are not in the template's label set,
    or None (no template, no label set, not text+label data, or every label is in it)."""
    _, template = resolve(config.domain, config.template)
    if template is None or not template.labels or not config.data.train:
        return None
    try:
        data = load_data(config.data.train, columns=config.data.columns)
    except (TunesmithError, OSError):
        return None  # the data gate says what is wrong with the file
    if data.task != "classify":
        return None
    unknown = sorted({str(r["label"]) for r in data.records} - set(template.labels))
    if not unknown:
        return None
    shown = ", ".join(f"'{x}'" for x in unknown[:SHOWN_LABELS])
    more = f" and {len(unknown) - SHOWN_LABELS} more" if len(unknown) > SHOWN_LABELS else ""
    return (f"{len(unknown)} label(s) in {config.data.train} are not in template {template.name}'s set of "
            f"{len(template.labels)}: {shown}{more}; they train as they are (the run's labels are the data's)")


def prepare(config: RunConfig) -> tuple[RunConfig, list[str]]:
    """``apply_pack``, then ``label_note``: the config to train and every line for people.
    The label warning is kept in ``config.reasons["template"]`` as well, for the report."""
    config, notes = apply_pack(config.model_copy(deep=True))
    note = label_note(config)
    if note:
        notes.append(f"warning: {note}")
        config.reasons["template"] = note
    return config, notes


def _short(value) -> str:
    text = str(value)
    return f"\"{text[:60]}...\"" if len(text) > 60 else (f"\"{text}\"" if isinstance(value, str) else text)
