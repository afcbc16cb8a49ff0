"""Synthetic rows from a teacher model, filtered hard, written as they are made.

Four kinds, picked from the seed data (or `--topics` for scenarios):

- instruct:   Self-Instruct (a new request in the style of a few seed requests) and
              Evol-Instruct (a seed or generated request rewritten to be harder or more
              specific), each answered by the teacher.
- classify:   new texts for each label, conditioned on the label name, an optional
              description and a few seed examples of that label; labels are filled evenly.
- preference: for each seed prompt (then new Self-Instruct prompts), a chosen answer from
              the teacher and a rejected one from a weaker model or a degraded copy.
- scenarios:  texts from a YAML of topics and a prompt template, optionally answered.

Every candidate passes the same filters: parse validity, length bounds, near-duplicates of
the seed and of earlier rows (ROUGE-L above 0.7 as in Self-Instruct, checked against the
most similar rows by MiniLM embedding, and embedding cosine), label consistency for
classification, and a judge score when a judge is given. Kept rows go to OUT, dropped ones
with their reason to OUT's `.dropped.jsonl`, both appended and flushed per batch: an
interrupted run continues where it stopped when run again.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunesmith.data.augment import clean_line
from tunesmith.data.formats import load_data
from tunesmith.data.labels import embed
from tunesmith.errors import ConfigError, DataError

KINDS = ("instruct", "classify", "preference", "scenarios")
INSTRUCT_METHODS = ("self-instruct", "evol")

SELF_INSTRUCT_PROMPT = "Write new requests of the same kind as these, each on a different subject, one per line."
EVOL_STEPS = (
    "Add one constraint or requirement to it.",
    "Make it more specific: replace a general idea with a concrete case.",
    "Make it need more steps of reasoning to answer.",
    "Move it to a rarer situation in the same domain.",
)
EVOL_PROMPT = (
    "Rewrite the request below so that it is harder to answer well. {step} Keep it "
    "self-contained and answerable. Reply with the rewritten request only.\n\nRequest: {task}"
)
CLASSIFY_PROMPT = 'Write new texts with the label "{name}"{description}, in the style of these and different in wording and detail, one per line.'
# Words a generated row uses when it talks about the task instead of being a row, and the
# openings of a refusal or a reply to the teacher's instructions.
META_WORDS = ("label", "labelled", "example", "examples", "rewritten", "request")
REFUSAL_STARTS = ("sure", "certainly", "i'm sorry", "i am sorry", "as an ai", "i cannot", "i can't help")
LABEL_JUDGE_PROMPT = 'Does this message fit the label "{name}"{description}? Answer yes or no.\n\nMessage: {text}'
JUDGE_PROMPTS = {
    "classify": 'Rate from 1 to 10 how realistic and clear this message is as an example of the label "{name}".\n\nMessage: {text}\n\nReply with the number only.',
    "answer": "Rate from 1 to 10 how correct and helpful the answer is.\n\nRequest: {task}\n\nAnswer: {answer}\n\nReply with the number only.",
    "scenario": "Rate from 1 to 10 how realistic, specific and useful this text is for the request.\n\nRequest: {task}\n\nText: {answer}\n\nReply with the number only.",
}


@dataclass
class ScenarioSpec:
    """A user's YAML for scenario generation: `template` (with `{topic}` and any
    `{variable}`), `topics`, optional `variables` (name -> list of values), optional
    `system` (for the teacher), and `answer: true` to have the teacher answer each scenario
    (giving chat rows instead of text rows)."""

    template: str
    topics: list[str]
    variables: dict[str, list[str]] = field(default_factory=dict)
    system: str | None = None
    answer: bool = False


@dataclass
class SynthOptions:
    """What to make and how hard to filter it."""

    n: int  # rows to keep
    kind: str = "auto"  # auto: from the seed's task (or scenarios when a spec is given)
    methods: tuple[str, ...] = INSTRUCT_METHODS  # instruct kind: which generators to mix
    seed: int = 0
    batch_size: int = 16  # candidates proposed per round
    temperature: float = 0.9  # teacher sampling for new requests/texts; answers use 0.7
    max_new_tokens: int = 256  # longest answer/scenario
    min_chars: int | None = None  # None: half the 5th percentile of the seed
    max_chars: int | None = None  # None: three times the 95th percentile of the seed
    rouge_threshold: float = 0.7  # Self-Instruct's ROUGE-L cut-off
    embedding_threshold: float = 0.95  # MiniLM cosine above this is a paraphrase of a known row
    label_check: str = "classifier"  # classifier | teacher | off
    min_judge_score: float = 6.0  # 1-10; used only with a judge
    max_candidates: int | None = None  # give up after this many proposals; None: 10 x n
    label_descriptions: dict[str, str] = field(default_factory=dict)
    scenarios: ScenarioSpec | None = None


@dataclass
class SynthReport:
    """Counts of the whole run (including earlier, resumed parts)."""

    kind: str
    teacher: str
    target: int
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    by_method: Counter = field(default_factory=Counter)  # kept rows per method
    examples: dict[str, list] = field(default_factory=dict)  # reason -> a few dropped texts
    stopped: str = ""  # why the run ended short of the target, if it did

    @property
    def candidates(self) -> int:
        return self.kept + sum(self.dropped.values())

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "teacher": self.teacher, "target": self.target, "candidates": self.candidates,
            "kept": self.kept, "dropped": dict(self.dropped.most_common()), "kept_by_method": dict(self.by_method),
            "dropped_examples": self.examples, "stopped": self.stopped,
        }


@dataclass
class Candidate:
    row: dict  # the canonical row (plus provenance), filled in as the stages go
    key: str  # the new text the filters look at (request, message or scenario)
    method: str
    label: str | None = None
    from_seed: bool = False  # a seed prompt being answered: exempt from the text checks
    reason: str | None = None  # set when dropped
    request: str = ""  # scenarios: the filled-in template the teacher was given
    in_pool: bool = False  # added to the duplicate pool this round
    sources: list[str] = field(default_factory=list)  # seed texts it was made from (for source_ids)


def sidecar_paths(out: Path) -> tuple[Path, Path]:
    """Where dropped rows and the filter report go, next to OUT."""
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(stem + ".dropped.jsonl"), out.with_name(stem + ".report.json")


def load_scenarios(path: str | Path) -> ScenarioSpec:
    """Read and check a scenarios YAML; every mistake is one sentence naming the fix."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; give a YAML file with `template:` and `topics:`.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("template"), str) or not raw["template"].strip():
        raise DataError(f"{path}: give a `template:` string containing {{topic}}.")
    topics = raw.get("topics")
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) and t.strip() for t in topics):
        raise DataError(f"{path}: give `topics:` as a non-empty list of strings.")
    variables = raw.get("variables") or {}
    if not isinstance(variables, dict) or not all(isinstance(v, list) and v for v in variables.values()):
        raise DataError(f"{path}: `variables:` must map each name to a non-empty list of values.")
    unknown = set(raw) - {"template", "topics", "variables", "system", "answer"}
    if unknown:
        raise DataError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; use template, topics, variables, system, answer.")
    names = set(re.findall(r"{(\w+)}", raw["template"]))
    if "topic" not in names:
        raise DataError(f"{path}: the template must contain {{topic}}.")
    missing = names - {"topic"} - set(variables)
    if missing:
        raise DataError(f"{path}: the template uses {', '.join('{' + m + '}' for m in sorted(missing))} but `variables:` does not define it.")
    return ScenarioSpec(raw["template"], [t.strip() for t in topics], {k: [str(x) for x in v] for k, v in variables.items()},
                        raw.get("system"), bool(raw.get("answer", False)))


# --------------------------------------------------------------------------- filters


class Pool:
    """Texts new rows must not repeat: the seed's and every kept row's. Near-duplicates are
    found by embedding similarity first (cheap matrix product), then ROUGE-L is computed only
    against the `top_k` most similar texts, so the check stays linear in the pool size
    instead of Self-Instruct's all-pairs loop."""

    def __init__(self, rouge_threshold: float, embedding_threshold: float, top_k: int = 20):
        from rouge_score import rouge_scorer

        self.rouge_threshold, self.embedding_threshold, self.top_k = rouge_threshold, embedding_threshold, top_k
        # A Unicode-aware tokenizer: rouge-score's default drops every non-ASCII letter.
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
        self.texts: list[str] = []
        self.is_seed: list[bool] = []
        self.vectors = np.zeros((0, 384), dtype=np.float32)

    def add(self, texts: list[str], vectors: np.ndarray, seed: bool) -> None:
        self.texts += texts
        self.is_seed += [seed] * len(texts)
        self.vectors = np.concatenate([self.vectors, vectors]) if len(self.vectors) else vectors

    def remove(self, text: str) -> None:
        """Forget the latest generated copy of `text` (seed texts stay)."""
        for j in range(len(self.texts) - 1, -1, -1):
            if self.texts[j] == text and not self.is_seed[j]:
                del self.texts[j], self.is_seed[j]
                self.vectors = np.delete(self.vectors, j, axis=0)
                return

    def duplicate(self, text: str, vector: np.ndarray) -> str | None:
        """Why `text` repeats a known text, or None."""
        if not self.texts:
            return None
        sims = self.vectors @ vector
        nearest = np.argsort(-sims)[: self.top_k]
        best = int(nearest[0])
        if sims[best] > self.embedding_threshold:
            return f"near-duplicate of {'the seed' if self.is_seed[best] else 'a generated row'} (embedding cosine > {self.embedding_threshold})"
        for j in nearest:
            if self.scorer.score(self.texts[j], text)["rougeL"].fmeasure > self.rouge_threshold:
                return f"near-duplicate of {'the seed' if self.is_seed[j] else 'a generated row'} (ROUGE-L > {self.rouge_threshold})"
        return None


class _WordTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


def parse_score(answer: str) -> float | None:
    """The first number from 1 to 10 in a judge's answer ("8", "Score: 7/10"), or None."""
    for match in re.finditer(r"\d+(?:\.\d+)?", answer):
        value = float(match.group())
        if 1 <= value <= 10:
            return value
    return None


def _yes(answer: str) -> bool:
    return answer.strip().lower().lstrip("\"'*").startswith("yes")


# --------------------------------------------------------------------------- the run


def synthesize(
    out: str | Path,
    teacher,
    options: SynthOptions,
    seed_path: str | Path | None = None,
    columns: dict[str, str] | None = None,
    judge=None,
    rejected_teacher=None,
    on_progress: Callable[[SynthReport], None] | None = None,
) -> SynthReport:
    """Grow OUT to `options.n` kept rows (rows already in OUT count) and write the filter
    report next to it. Teachers and the judge are `inference.teacher` objects."""
    out = Path(out)
    if options.n < 1:
        raise ConfigError(f"--n must be at least 1, got {options.n}.")
    if options.label_check not in ("classifier", "teacher", "off"):
        raise ConfigError(f"--label-check must be classifier, teacher or off, got {options.label_check!r}.")
    unknown = set(options.methods) - set(INSTRUCT_METHODS)
    if unknown or not options.methods:
        raise ConfigError(f"--methods for instruct data takes {', '.join(INSTRUCT_METHODS)}, got {', '.join(sorted(unknown)) or 'nothing'}.")
    seed = load_data(seed_path, columns=columns) if seed_path else None
    kind = _kind(options, seed, seed_path)
    run = _Run(out, teacher, options, kind, seed, judge, rejected_teacher)
    run.resume()
    budget = options.max_candidates or 10 * options.n
    if on_progress:
        on_progress(run.report)
    while run.report.kept < options.n:
        if run.report.candidates >= budget:
            run.report.stopped = (f"stopped after {run.report.candidates} candidates (the limit, --max-candidates) with "
                                  f"{run.report.kept} of {options.n} rows kept; see the drop reasons")
            break
        size = min(options.batch_size, options.n - run.report.kept, budget - run.report.candidates)
        run.round(max(1, size))
        if on_progress:
            on_progress(run.report)
    run.write_report()
    return run.report


def _kind(options: SynthOptions, seed, seed_path) -> str:
    if options.kind not in ("auto", *KINDS):
        raise ConfigError(f"--kind must be auto, {', '.join(KINDS)}; got {options.kind!r}.")
    if options.kind == "scenarios" or (options.kind == "auto" and options.scenarios):
        if not options.scenarios:
            raise ConfigError("Scenario generation needs --topics FILE.yaml with a template and topics.")
        return "scenarios"
    if seed is None:
        raise ConfigError("Give --seed FILE (examples to learn from), or --topics FILE.yaml for scenarios.")
    if options.kind != "auto":
        wanted = {"instruct": ("chat", "preference"), "classify": ("classify",), "preference": ("chat", "preference")}[options.kind]
        if seed.task not in wanted:
            raise ConfigError(f"{seed_path} holds {seed.task} data, which cannot seed {options.kind} data; give a {' or '.join(wanted)} file.")
        return options.kind
    by_task = {"chat": "instruct", "classify": "classify", "preference": "preference"}
    if seed.task not in by_task:
        raise ConfigError(f"{seed_path} holds {seed.task} data; synthesis needs chat, text+label or preference seeds (or --topics for scenarios).")
    return by_task[seed.task]


class _Run:
    """State of one synthesis run: the seed, the duplicate pool, the counts and the files."""

    def __init__(self, out: Path, teacher, options: SynthOptions, kind: str, seed, judge, rejected_teacher):
        self.out, self.teacher, self.options, self.kind = out, teacher, options, kind
        self.judge, self.rejected_teacher = judge, rejected_teacher
        self.rng = random.Random(options.seed)
        self.dropped_path, self.report_path = sidecar_paths(out)
        self.report = SynthReport(kind, teacher.name, options.n)
        self.pool = Pool(options.rouge_threshold, options.embedding_threshold)
        self.kept_per_group: Counter = Counter()  # label or topic -> kept rows
        self.generated_tasks: list[str] = []
        self.system: str | None = None
        self.seed_prompts: list[list[dict]] = []
        self.seed_texts: list[str] = []
        self.by_label: dict[str, list[str]] = {}
        self.row_of: dict[str, int] = {}  # seed text -> its row in the seed file, for provenance
        self.classifier = None
        if seed is not None:
            self._read_seed(seed)
        self._length_bounds()
        # Only words and openings the seed itself rarely uses count against a row: a customer
        # may well write "I'm sorry, but ..." or mention an example.
        rare = 0.02 * len(self.seed_texts)
        words = [set(re.findall(r"\w+", t.lower())) for t in self.seed_texts]
        self.meta_words = {w for w in META_WORDS if sum(w in ws for ws in words) <= rare}
        self.refusal_starts = tuple(p for p in REFUSAL_STARTS if sum(t.lower().startswith(p) for t in self.seed_texts) <= rare)

    # ------------------------------------------------------------------ setup

    def _read_seed(self, seed) -> None:
        records = seed.records
        for r, row in zip(records, seed.rows):
            prompt = r.get("prompt") or _prompt_of(r.get("messages", []))
            key = r.get("text") or (prompt[-1]["content"] if prompt else None)
            if key:
                self.row_of.setdefault(key, row)
        if self.kind == "scenarios":  # the seed only says what not to repeat
            self.seed_texts = list(self.row_of)
            self._add_to_pool(self.seed_texts, seed=True)
            return
        if self.kind == "classify":
            for r in records:
                self.by_label.setdefault(r["label"], []).append(r["text"])
            self.seed_texts = [r["text"] for r in records]
            if self.options.label_check == "classifier" and len(self.by_label) > 1:
                from sklearn.linear_model import LogisticRegression

                x = embed(self.seed_texts)
                self.classifier = LogisticRegression(max_iter=1000).fit(x, [r["label"] for r in records])
                self.pool.add(self.seed_texts, x, seed=True)
                return
        else:
            prompts = [r["prompt"] if "prompt" in r else _prompt_of(r["messages"]) for r in records if "prompt" in r or "messages" in r]
            self.seed_prompts = [p for p in prompts if p and p[-1]["role"] == "user"]
            self.seed_texts = [p[-1]["content"] for p in self.seed_prompts]
            systems = {p[0]["content"] for p in self.seed_prompts if p[0]["role"] == "system"}
            self.system = systems.pop() if len(systems) == 1 else None
            if not self.seed_texts:
                raise DataError("The seed file has no user turns to learn requests from; give chat or preference rows.")
        self._add_to_pool(self.seed_texts, seed=True)
        self.rng.shuffle(self.seed_prompts)

    def _length_bounds(self) -> None:
        o = self.options
        lengths = [len(t) for t in self.seed_texts] or [len(t) for t in self.options.scenarios.topics]
        lo = max(3, int(0.5 * np.percentile(lengths, 5)))
        hi = int(3 * np.percentile(lengths, 95)) + 20
        if self.kind == "scenarios":
            lo, hi = 40, 20 * o.max_new_tokens  # a scenario is a paragraph, bounded by max_new_tokens
        self.min_chars = o.min_chars if o.min_chars is not None else lo
        self.max_chars = o.max_chars if o.max_chars is not None else hi

    def _add_to_pool(self, texts: list[str], seed: bool) -> None:
        if texts:
            self.pool.add(texts, embed(texts), seed)

    def resume(self) -> None:
        """Count and re-learn what earlier runs kept and dropped, so they are not redone."""
        kept = _read_jsonl(self.out)
        for row in kept:
            self.report.by_method[row.get("method", "?")] += 1
            self.kept_per_group[row.get("label") or row.get("topic")] += 1
        new = [_key_of(r) for r in kept if r.get("method") != "seed-prompt"]
        self.report.kept = len(kept)
        self.generated_tasks += new
        self._add_to_pool(new, seed=False)
        used = {_key_of(r) for r in kept if r.get("method") == "seed-prompt"}
        self.seed_prompts = [p for p in self.seed_prompts if p[-1]["content"] not in used]
        for row in _read_jsonl(self.dropped_path):
            self.report.dropped[row["reason"]] += 1
            self._example(row["reason"], row.get("text", ""))
        # Seeded by the resume point: runs repeat exactly, and a resumed run does not
        # re-propose the candidates of the run before it.
        import torch

        self.rng = random.Random(f"{self.options.seed}-{self.report.candidates}")
        torch.manual_seed(self.options.seed + self.report.candidates)  # a local teacher's sampling

    # ------------------------------------------------------------------ one round

    def round(self, size: int) -> None:
        propose = {"classify": self._propose_classify, "instruct": self._propose_instruct,
                   "preference": self._propose_preference, "scenarios": self._propose_scenarios}[self.kind]
        candidates = propose(size)
        self._check_text(candidates)
        if self.kind == "classify":
            self._check_labels([c for c in candidates if not c.reason])
        else:
            self._complete([c for c in candidates if not c.reason])
        if self.judge is not None:
            self._judge([c for c in candidates if not c.reason])
        self._commit(candidates)

    def _propose_classify(self, size: int) -> list[Candidate]:
        picks: list[str] = []
        for _ in range(size):
            picks.append(self._fewest(list(self.by_label), picks))
        prompts, metas = [], []
        for label in picks:
            examples = self.rng.sample(self.by_label[label], min(5, len(self.by_label[label])))
            description = self.options.label_descriptions.get(label)
            instruction = CLASSIFY_PROMPT.format(name=_label_name(label), description=f" ({description})" if description else "")
            prompts.append(self._list_prompt(instruction, examples, numbered=False))
            metas.append((label, examples))
        answers = self.teacher.complete(prompts, temperature=self.options.temperature, max_new_tokens=64)
        return [Candidate({"text": text, "label": label}, text, "label-conditioned", label, sources=examples)
                for text, (label, examples) in zip((clean_line(a) for a in answers), metas)]

    def _fewest(self, groups: list[str], pending: list[str]) -> str:
        """Fill groups (labels, topics) evenly: one with the fewest kept and pending rows."""
        counts = {g: self.kept_per_group[g] + pending.count(g) for g in groups}
        fewest = min(counts.values())
        return self.rng.choice([g for g, k in counts.items() if k == fewest])

    def _list_prompt(self, instruction: str, examples: list[str], numbered: bool) -> list[dict]:
        """Ask for one more item of a list of examples. A local teacher is given the list as
        the start of its own answer and continues it: small models extend a list far more
        reliably than they follow an instruction. Endpoints get a plain instruction."""
        marks = [f"{i}." if numbered else "-" for i in range(1, len(examples) + 2)]
        listing = "\n".join(f"{m} {e}" for m, e in zip(marks, examples))
        if getattr(self.teacher, "prefill", False):
            return [{"role": "user", "content": instruction}, {"role": "assistant", "content": f"{listing}\n{marks[-1]}"}]
        return [{"role": "user", "content": f"{instruction}\n\nExamples:\n{listing}\n\nWrite one new item, different from the examples. Reply with it only."}]

    def _propose_tasks(self, size: int, methods: tuple[str, ...]) -> list[Candidate]:
        """New requests by Self-Instruct or Evol-Instruct (no answers yet)."""
        prompts, chosen, sources = [], [], []
        for _ in range(size):
            method = self.rng.choice(methods)
            if method == "self-instruct":
                # As in Self-Instruct: mostly human-written examples, plus one machine-written one.
                examples = self.rng.sample(self.seed_texts, min(3, len(self.seed_texts)))
                if self.generated_tasks:
                    examples.append(self.rng.choice(self.generated_tasks))
                prompts.append(self._list_prompt(SELF_INSTRUCT_PROMPT, [" ".join(e.split()) for e in examples], numbered=True))
            else:
                examples = [self.rng.choice(self.seed_texts + self.generated_tasks)]
                prompts.append([{"role": "user", "content": EVOL_PROMPT.format(step=self.rng.choice(EVOL_STEPS), task=examples[0])}])
            chosen.append(method)
            sources.append(examples)
        answers = self.teacher.complete(prompts, temperature=self.options.temperature, max_new_tokens=128)
        # A continued list runs on into further items: only its first line is the new one.
        one_line = getattr(self.teacher, "prefill", False)
        return [Candidate({}, clean_line(a, keep_lines=not (one_line and m == "self-instruct")), m, sources=src)
                for a, m, src in zip(answers, chosen, sources)]

    def _propose_instruct(self, size: int) -> list[Candidate]:
        return self._propose_tasks(size, tuple(self.options.methods))

    def _propose_preference(self, size: int) -> list[Candidate]:
        # Seed prompts first (each once), then new prompts written Self-Instruct style.
        from_seed = [Candidate({"prompt": p}, p[-1]["content"], "seed-prompt", from_seed=True, sources=[p[-1]["content"]])
                     for p in self.seed_prompts[:size]]
        self.seed_prompts = self.seed_prompts[len(from_seed):]
        return from_seed + (self._propose_tasks(size - len(from_seed), ("self-instruct",)) if size > len(from_seed) else [])

    def _propose_scenarios(self, size: int) -> list[Candidate]:
        spec = self.options.scenarios
        prompts, metas = [], []
        for _ in range(size):
            topic = self._fewest(spec.topics, [m[0] for m in metas])
            values = {name: self.rng.choice(options) for name, options in spec.variables.items()}
            request = spec.template.format(topic=topic, **values)
            messages = ([{"role": "system", "content": spec.system}] if spec.system else []) + [{"role": "user", "content": request}]
            prompts.append(messages)
            metas.append((topic, values, request))
        answers = self.teacher.complete(prompts, temperature=self.options.temperature, max_new_tokens=self.options.max_new_tokens)
        out = []
        for answer, (topic, values, request) in zip(answers, metas):
            text = answer.strip()
            row = {"text": text, "topic": topic, **({"variables": values} if values else {})}
            out.append(Candidate(row, text, "scenario", label=topic, request=request))
        return out

    # ------------------------------------------------------------------ filters

    def _check_text(self, candidates: list[Candidate]) -> None:
        """Parse validity, length bounds and near-duplicates, cheapest first."""
        for c in candidates:
            if c.from_seed:
                continue
            if not c.key:
                c.reason = "unparseable (empty reply)"
            elif c.key.rstrip().endswith(":") or c.key.lower().startswith(self.refusal_starts):
                c.reason = "unparseable (a lead-in or refusal, not a row)"
            elif self.meta_words & set(re.findall(r"\w+", c.key.lower())):
                c.reason = "unparseable (talks about the task instead of being a row)"
            elif len(c.key) < self.min_chars:
                c.reason = f"too short (< {self.min_chars} characters)"
            elif len(c.key) > self.max_chars:
                c.reason = f"too long (> {self.max_chars} characters)"
        fresh = [c for c in candidates if not c.reason and not c.from_seed]
        vectors = embed([c.key for c in fresh])
        for c, v in zip(fresh, vectors):
            c.reason = self.pool.duplicate(c.key, v)
            if not c.reason:  # later candidates of this round must not repeat this one either
                self.pool.add([c.key], v[None, :], seed=False)
                c.in_pool = True

    def _check_labels(self, candidates: list[Candidate]) -> None:
        """A classifier trained on the seed (or the teacher, asked yes/no) must agree that
        the text has its intended label."""
        if not candidates or self.options.label_check == "off":
            return
        if self.options.label_check == "classifier" and self.classifier is not None:
            predicted = self.classifier.predict(embed([c.key for c in candidates]))
            for c, p in zip(candidates, predicted):
                if p != c.label:
                    c.reason = "label check failed (the seed classifier predicts another label)"
        elif self.options.label_check == "teacher":
            prompts = [[{"role": "user", "content": LABEL_JUDGE_PROMPT.format(
                name=_label_name(c.label), text=c.key,
                description=f" ({self.options.label_descriptions[c.label]})" if c.label in self.options.label_descriptions else "")}]
                for c in candidates]
            for c, answer in zip(candidates, self.teacher.complete(prompts, temperature=0.0, max_new_tokens=4)):
                if not _yes(answer):
                    c.reason = "label check failed (the teacher says the text does not fit the label)"

    def _complete(self, candidates: list[Candidate]) -> None:
        """Answers for requests (instruct, preference, answered scenarios)."""
        if not candidates or (self.kind == "scenarios" and not self.options.scenarios.answer):
            return
        system = [{"role": "system", "content": self.system}] if self.system else []
        prompts = [c.row["prompt"] if c.from_seed else system + [{"role": "user", "content": c.key}] for c in candidates]
        answers = self.teacher.complete(prompts, temperature=0.7, max_new_tokens=self.options.max_new_tokens)
        if self.kind == "preference":
            rejected = (self.rejected_teacher.complete(prompts, temperature=1.0, max_new_tokens=self.options.max_new_tokens)
                        if self.rejected_teacher else None)
            for i, (c, p, a) in enumerate(zip(candidates, prompts, answers)):
                bad, how = (rejected[i].strip(), "weaker-model") if rejected else degrade(a, answers[:i] + answers[i + 1 :], self.rng)
                c.row = {"prompt": p, "chosen": [{"role": "assistant", "content": a.strip()}],
                         "rejected": [{"role": "assistant", "content": bad}], "rejected_by": how}
                if not a.strip():
                    c.reason = "empty answer"
                elif not bad or " ".join(bad.split()) == " ".join(a.split()):
                    c.reason = "rejected answer is empty or the same as the chosen one"
            return
        for c, p, a in zip(candidates, prompts, answers):
            if not a.strip():
                c.reason = "empty answer"
            elif self.kind == "scenarios":
                c.row = {**c.row, "messages": [{"role": "user", "content": c.key}, {"role": "assistant", "content": a.strip()}]}
                del c.row["text"]
            else:
                c.row = {"messages": p + [{"role": "assistant", "content": a.strip()}]}

    def _judge(self, candidates: list[Candidate]) -> None:
        """Drop rows the judge scores below the threshold (and pairs whose rejected answer it
        scores at least as high as the chosen one)."""
        if not candidates:
            return
        prompts = [self._judge_prompt(c, "chosen") for c in candidates]
        if self.kind == "preference":
            prompts += [self._judge_prompt(c, "rejected") for c in candidates]
        scores = [parse_score(a) for a in self.judge.complete(prompts, temperature=0.0, max_new_tokens=8)]
        for i, c in enumerate(candidates):
            score = scores[i]
            c.row["judge_score"] = score
            if score is None:
                c.reason = "the judge gave no score"
            elif score < self.options.min_judge_score:
                c.reason = f"judge score below {self.options.min_judge_score:g}"
            elif self.kind == "preference":
                other = scores[len(candidates) + i]
                c.row["judge_score_rejected"] = other
                if other is not None and other >= score:
                    c.reason = "the judge does not prefer the chosen answer"

    def _judge_prompt(self, c: Candidate, side: str) -> list[dict]:
        if self.kind == "classify":
            text = JUDGE_PROMPTS["classify"].format(name=_label_name(c.label), text=c.key)
        elif self.kind == "scenarios":
            answer = c.row["messages"][-1]["content"] if "messages" in c.row else c.key
            text = JUDGE_PROMPTS["scenario"].format(task=c.request, answer=answer)
        else:
            answer = c.row[side][-1]["content"] if self.kind == "preference" else c.row["messages"][-1]["content"]
            text = JUDGE_PROMPTS["answer"].format(task=c.key, answer=answer)
        return [{"role": "user", "content": text}]

    # ------------------------------------------------------------------ bookkeeping

    def _commit(self, candidates: list[Candidate]) -> None:
        kept_rows, dropped_rows = [], []
        for c in candidates:
            if c.reason:
                if c.in_pool:  # a row that failed a later filter should not block better rows like it
                    self.pool.remove(c.key)
                self.report.dropped[c.reason] += 1
                self._example(c.reason, c.key)
                dropped_rows.append({"reason": c.reason, "method": c.method, "text": c.key, **({"label": c.label} if c.label else {})})
                continue
            source_ids = sorted({self.row_of[t] for t in c.sources if t in self.row_of})
            row = {**c.row, "method": c.method, "teacher": self.teacher.name, **({"source_ids": source_ids} if source_ids else {})}
            kept_rows.append(row)
            self.report.kept += 1
            self.report.by_method[c.method] += 1
            self.kept_per_group[c.label] += 1
            if not c.from_seed:
                self.generated_tasks.append(c.key)
        _append_jsonl(self.out, kept_rows)
        _append_jsonl(self.dropped_path, dropped_rows)

    def _example(self, reason: str, text: str) -> None:
        examples = self.report.examples.setdefault(reason, [])
        if len(examples) < 3:
            examples.append(text[:200])

    def write_report(self) -> None:
        self.report_path.write_text(json.dumps(self.report.to_dict(), indent=2, ensure_ascii=False) + "\n")


def degrade(answer: str, others: list[str], rng: random.Random) -> tuple[str, str]:
    """A deliberately worse copy of `answer` for a rejected side: cut short, with its
    sentences shuffled, or another prompt's answer (off-topic). Returns (text, how)."""
    sentences = re.split(r"(?<=[.!?])\s+", answer.strip())
    ways = ["truncated"] + (["shuffled"] if len(sentences) >= 3 else []) + (["off-topic"] if any(o.strip() for o in others) else [])
    how = rng.choice(ways)
    if how == "shuffled":
        order = sentences[:]
        while order == sentences:
            rng.shuffle(order)
        return " ".join(order), how
    if how == "off-topic":
        return rng.choice([o for o in others if o.strip()]).strip(), how
    words = answer.split()
    return " ".join(words[: max(1, len(words) // 3)]), how


def _prompt_of(messages: list[dict]) -> list[dict]:
    """The conversation up to its last user turn."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    return messages[: last + 1]


def _label_name(label: str) -> str:
    return label.replace("_", " ").strip()


def _key_of(row: dict) -> str:
    """The text of a kept row that the duplicate check compares (see Candidate.key)."""
    if "prompt" in row:
        return row["prompt"][-1]["content"]
    if "messages" in row:
        return _prompt_of(row["messages"])[-1]["content"] if "topic" not in row else row["messages"][0]["content"]
    return row["text"]


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a file this module wrote. A last line cut off by an interruption is removed
    from the file, so that appending goes on from the last good row."""
    if not path.exists():
        return []
    rows, good = [], 0
    raw = path.read_bytes()
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # every row is written with its newline: one without was cut off
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        good += len(line)
    if good < len(raw):
        path.write_bytes(raw[:good])
    return rows


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
