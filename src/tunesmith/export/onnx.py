"""The ONNX export: the run's merged weights as an ONNX graph for onnxruntime on a CPU, a phone or an
edge box, with an int8 copy, both loaded in onnxruntime and checked against the PyTorch model.

A chat model becomes a decoder with its key/value cache as inputs and outputs, in the layout
optimum's `ORTModelForCausalLM` and transformers.js read (`input_ids`, `attention_mask`,
`position_ids`, `past_key_values.N.key|value` -> `logits`, `present.N.key|value`); a classifier
becomes `input_ids`, `attention_mask` -> `logits`, its label names in `config.json` (`id2label`)
and `labels.json`. The folder also holds the tokenizer, the chat template and a generation config
whose stop tokens end a turn, so a runtime that reads them stops where the tuned model does.

The graph is traced by transformers' own ONNX exporter (`transformers.exporters`, torch.export +
torch.onnx with its fixes for onnxruntime): optimum's exporter (optimum-onnx 0.1) needs
transformers < 4.58 and cannot trace a transformers 5 model, whose cache argument was renamed.
The int8 copy stores int8 weights by default rather than onnxruntime's dynamic quantisation, which
changed a third of SmolLM2's answer tokens (`quantize_int8`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ConfigError, ModelError
from tunesmith.export.hf import stop_token_ids
from tunesmith.export.merge import save_merged
from tunesmith.export.verify import (
    METRIC_TOLERANCE,
    TOKEN_TOLERANCE,
    agreement,
    answer_budget,
    answer_figures,
    greedy_answers,
    token_agreement,
    verification_rows,
)
from tunesmith.inference.classifier import Classifier, predict
from tunesmith.runs import LABELS_FILE, RunDir

ONNX_FILE = "model.onnx"  # float32, the name optimum and transformers.js look for
INT8_FILE = "model_int8.onnx"
CLASSIFIER_FILE = "classifier.json"  # a classifier's tokenisation settings (its max_length) for `load_onnx`
# What each file must keep, in `verify`'s measures: PyTorch's answer tokens (teacher-forced, see
# `verify.token_agreement`) and test metric, as GGUF's float32 and q8_0 files must (int8 is 8-bit
# too); a classifier's labels, checked whatever its accuracy, since an accuracy near chance cannot
# tell a broken file (SmolLM2 after 3 steps: int8 weights kept 93% of its labels, dynamic int8 40%).
TOKENS_KEPT = {"float32": TOKEN_TOLERANCE["f32"], "int8": TOKEN_TOLERANCE["q8_0"]}
METRIC_DROP = {"float32": METRIC_TOLERANCE["f32"], "int8": METRIC_TOLERANCE["q8_0"]}  # plus one row's worth
LABELS_KEPT = {"float32": 0.98, "int8": 0.9}
# int8 methods (`quantize_int8`). On SmolLM2-135M "weights" kept float32's logits to about 1%, while
# "dynamic" moved them about 9% and changed what the model says: it quantises activations per tensor,
# and small LLMs have a few outlier channels.
INT8_METHODS = ("weights", "dynamic")
PROTOBUF_LIMIT = 2 * 1024**3  # a graph with weights past 2 GB keeps them in a `.data` file beside it
PROMPTS = 16  # chat prompts answered per file, as the GGUF export verifies
CLASSIFIER_ROWS = 256  # classifier rows labelled per file: one forward each, cheap
BATCH = 16  # classifier rows per forward, as `predict` batches them

Progress = Callable[[str, int, int], None]  # (what, done, total)

_CACHE_NAME = re.compile(r"^(?:input\.|output\.)?cache\.layers\.(\d+)\.(keys|values)$")


@dataclass
class OnnxCausalLM:
    """A causal LM exported to ONNX, on onnxruntime: greedy generation with its key/value cache in
    numpy. `generate` takes the arguments `transformers`' `generate` takes for greedy search, so the
    same code answers prompts with either."""

    session: object
    past_names: list[str]
    present_names: list[str]
    cache_shape: tuple[int, int]  # (key/value heads, head size)
    cache_dtype: object
    takes_positions: bool = True

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 64, eos_token_id=None,
                 pad_token_id=None, do_sample: bool = False, **_) -> object:
        """Greedy continuation of each row of `input_ids` (left-padded where `attention_mask` has
        zeros), until every row has produced a stop token (`eos_token_id`, an id or a list) or
        `max_new_tokens`; rows that stopped are padded with `pad_token_id`. Returns the prompt ids
        followed by the new ones, as a numpy array."""
        import numpy as np

        if do_sample:
            raise ValueError("OnnxCausalLM generates greedily only; pass do_sample=False.")
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        stops = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        pad = pad_token_id if pad_token_id is not None else (stops[0] if stops else 0)
        batch = ids.shape[0]
        heads, size = self.cache_shape
        past = {name: np.zeros((batch, heads, 0, size), dtype=self.cache_dtype) for name in self.past_names}
        # Positions count real tokens only, so a left-padded row continues as if it had no padding
        # (as `generate` does); padding gets position 1, which its masked attention never reads.
        positions = np.where(mask > 0, np.cumsum(mask, axis=-1) - 1, 1)
        step, out = ids, [ids]
        done = np.zeros(batch, dtype=bool)
        for _ in range(max_new_tokens):
            feed = {"input_ids": step, "attention_mask": mask, **past}
            if self.takes_positions:
                feed["position_ids"] = positions
            logits, *presents = self.session.run(["logits", *self.present_names], feed)
            token = np.where(done, pad, logits[:, -1, :].argmax(axis=-1)).astype(np.int64)
            out.append(token[:, None])
            done |= np.isin(token, stops)
            if done.all():
                break
            past = dict(zip(self.past_names, presents))
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=-1)
            positions = positions[:, -1:] + 1
            step = token[:, None]
        return np.concatenate(out, axis=-1)

    def next_tokens(self, ids: list[int]) -> list[int]:
        """The greedy next token after each position of `ids` (one pass, empty cache): what
        `verify.token_agreement` compares with PyTorch's answers."""
        import numpy as np

        tokens = np.asarray([ids], dtype=np.int64)
        heads, size = self.cache_shape
        feed = {"input_ids": tokens, "attention_mask": np.ones_like(tokens)}
        feed |= {name: np.zeros((1, heads, 0, size), dtype=self.cache_dtype) for name in self.past_names}
        if self.takes_positions:
            feed["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        [logits] = self.session.run(["logits"], feed)
        return logits[0].argmax(axis=-1).tolist()


@dataclass
class OnnxClassifier:
    """A sequence classifier exported to ONNX, on onnxruntime, with its label names in head order."""

    session: object
    tokenizer: object
    labels: list[str]
    max_length: int

    def predict(self, texts: list[str], batch_size: int = BATCH) -> list[str]:
        """The label of each text, tokenised as `inference.classifier.predict` does (truncated to the
        run's `max_length`, padded per batch, texts of similar length batched together)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[str] = [""] * len(texts)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            enc = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors="np")
            [logits] = self.session.run(["logits"], {"input_ids": enc["input_ids"].astype("int64"),
                                                     "attention_mask": enc["attention_mask"].astype("int64")})
            for row, best in zip(rows, logits.argmax(axis=-1).tolist()):
                out[row] = self.labels[best]
        return out


def open_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session on `path` (all graph optimisations on); `threads` caps its
    intra-op threads (default: onnxruntime's, one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def load_onnx_causal_lm(path: Path, threads: int | None = None) -> OnnxCausalLM:
    """A causal LM graph written by `export_onnx` (or optimum), ready to `generate`."""
    session = open_session(path, threads)
    inputs = {i.name: i for i in session.get_inputs()}
    past = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_cache_order)
    if "input_ids" not in inputs or not past:
        raise ModelError(f"{path} is not a causal LM with a key/value cache (it takes {', '.join(inputs)}); "
                         "give a file `tunesmith export --format onnx` wrote for a chat run.")
    first = inputs[past[0]]
    dtype = {"tensor(float)": "float32", "tensor(float16)": "float16"}[first.type]
    present = [n.replace("past_key_values.", "present.", 1) for n in past]
    return OnnxCausalLM(session, past, present, (int(first.shape[1]), int(first.shape[3])), dtype,
                        "position_ids" in inputs)


@dataclass
class OnnxChat:
    """A chat model exported to ONNX, with its tokenizer and stop tokens: `chat(messages)`."""

    model: OnnxCausalLM
    tokenizer: object
    stops: list[int]

    def chat(self, messages: list[dict], max_new_tokens: int = 128) -> str:
        """The model's greedy answer to one conversation (OpenAI-style messages)."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        out = self.model.generate([ids], max_new_tokens=max_new_tokens, eos_token_id=self.stops)
        new = [t for t in out[0][len(ids):].tolist() if t not in self.stops]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()


def load_onnx(folder: str | Path, int8: bool = True, threads: int | None = None) -> OnnxChat | OnnxClassifier:
    """An export folder written by `tunesmith export --format onnx`, ready to use: a chat model
    (`.chat(messages)`) or a classifier (`.predict(texts)`), on the int8 file when there is one."""
    import json

    from transformers import AutoTokenizer, GenerationConfig

    folder = Path(folder)
    path = folder / INT8_FILE if int8 and (folder / INT8_FILE).exists() else folder / ONNX_FILE
    if not path.exists():
        raise ModelError(f"{folder} holds no {ONNX_FILE}; give the folder `tunesmith export --format onnx` wrote.")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if (folder / LABELS_FILE).exists():  # a classifier
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        meta = folder / CLASSIFIER_FILE
        max_length = json.loads(meta.read_text())["max_length"] if meta.exists() else tokenizer.model_max_length
        return OnnxClassifier(open_session(path, threads), tokenizer, json.loads((folder / LABELS_FILE).read_text()),
                              int(min(max_length, 100_000)))
    stops = GenerationConfig.from_pretrained(folder).eos_token_id
    return OnnxChat(load_onnx_causal_lm(path, threads), tokenizer, [stops] if isinstance(stops, int) else list(stops))


def _cache_order(name: str) -> tuple[int, str]:
    _, layer, kind = name.split(".")
    return int(layer), kind


def export_onnx(run: Path, out: Path, quantize: str | None = "weights", limit: int | None = None,
                max_new_tokens: int | None = None, threads: int | None = None, progress: Progress | None = None) -> dict:
    """`out/`: the run's merged model as ONNX (`model.onnx`, float32) and, unless `quantize` is
    None, an int8 copy (`model_int8.onnx`, by `quantize_int8`'s method "weights" or "dynamic"),
    with the tokenizer, chat template, generation config and (a classifier) label names. Each file
    is then loaded in onnxruntime and compared with the PyTorch model on the run's test rows (at
    most `limit`: 16 chat prompts answered greedily, up to `max_new_tokens` or
    `verify.answer_budget`, or 256 rows to label). The export fails with a ModelError, and leaves
    nothing at `out`, when a file's answers never stop, or it keeps fewer of PyTorch's answer
    tokens or labels, or loses more test metric, than TOKENS_KEPT, LABELS_KEPT and METRIC_DROP allow.
    Returns the figures: PyTorch's, and per file its size, load time, tokens/s (rows/s for a
    classifier), agreement with PyTorch and test metric."""
    folder = RunDir(Path(run))
    if not folder.exists:
        raise ModelError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    final = folder.final
    if final.stage == "reward":
        raise ModelError(f"{run} is a reward model, which the ONNX export does not cover; export it with --format hf.")
    if final.weights is None:
        raise ModelError(f"{final.path} has no trained weights yet; finish it with `tunesmith train --resume {final.path}`.")
    if quantize is not None and quantize not in INT8_METHODS:
        raise ConfigError(f"int8 quantisation is one of {', '.join(INT8_METHODS)}, not {quantize!r}.")
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing or importlib.util.find_spec("transformers.exporters") is None:
        raise ConfigError(f"The ONNX export needs {', '.join(missing) or 'transformers 5.24 or later'}: "
                          "pip install onnx onnxscript onnx-ir onnxruntime (tunesmith's own dependencies).")
    step = progress or (lambda what, done, total: None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and moved into place once verified: a failed export leaves nothing to deploy.
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        merged = save_merged(final.path)
        if final.stage == "classify":
            report = _export_classifier(folder, merged, tmp, quantize, limit or CLASSIFIER_ROWS, threads, step)
        else:
            report = _export_causal(folder, merged, tmp, quantize, limit or PROMPTS, max_new_tokens, threads, step)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _export_causal(folder: RunDir, merged: Path, out: Path, quantize: str | None, limit: int,
                   max_new_tokens: int | None, threads: int | None, step: Progress) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    stops = stop_token_ids(tokenizer)
    system = folder.final.config.data.system_prompt
    prompts, references, source = verification_rows(folder.path, limit)
    budget = max_new_tokens or answer_budget(references, tokenizer)
    files = [ONNX_FILE, INT8_FILE] if quantize else [ONNX_FILE]
    total = len(files) + 2  # PyTorch's answers, the export, each file's answers (quantising counts with int8)

    step("answering with PyTorch", 0, total)
    reference = greedy_answers(model, tokenizer, prompts, budget, system, stops)
    pytorch = answer_figures(reference, None, references)
    step("exporting to ONNX", 1, total)
    _write_causal_graph(model, out / ONNX_FILE)
    del model
    _write_model_files(merged, out, tokenizer, stops)

    files_figures = []
    for n, name in enumerate(files):
        if name == INT8_FILE:
            step("quantising to int8", 2 + n, total)
            quantize_int8(out / ONNX_FILE, out / name, quantize)
        step(f"answering with {name}", 2 + n, total)
        start = time.perf_counter()
        runtime = load_onnx_causal_lm(out / name, threads)
        load_s = time.perf_counter() - start
        answers = greedy_answers(runtime, tokenizer, prompts, budget, system, stops)
        tokens = token_agreement(reference, runtime.next_tokens)
        files_figures.append(_file_figures(out, name, load_s) | {"token_agreement": tokens}
                             | answer_figures(answers, reference, references))
    step("verified", total, total)
    report = {"format": "onnx", "task": "causal-lm", "quantization": quantize, "prompts": len(prompts),
              "source": source, "max_new_tokens": budget,
              "stop_tokens": [tokenizer.convert_ids_to_tokens(i) for i in stops], "pytorch": pytorch,
              "files": files_figures}
    for figures in files_figures:
        _check(folder.path, figures, report)
    return report


def _export_classifier(folder: RunDir, merged: Path, out: Path, quantize: str | None, limit: int, threads: int | None,
                       step: Progress) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = folder.final.labels
    if labels is None:
        raise ModelError(f"{folder.final.path} has no {LABELS_FILE}, so its labels are unknown; train it again.")
    model = AutoModelForSequenceClassification.from_pretrained(merged, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    if tokenizer.pad_token is None:  # as `load_head_model` reads it
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    prompts, references, source = verification_rows(folder.path, limit)
    texts = [p[-1]["content"] for p in prompts]  # a text+label row is asked as user=text (`to_chat`)
    max_length = int(folder.final.config.train.max_length)
    files = [ONNX_FILE, INT8_FILE] if quantize else [ONNX_FILE]
    total = len(files) + 2

    step("labelling with PyTorch", 0, total)
    start = time.perf_counter()
    reference = [p["label"] for p in predict(Classifier(model, tokenizer, labels, max_length), texts, batch_size=BATCH)]
    pytorch = {"rows_per_s": _rate(len(texts), time.perf_counter() - start), "accuracy": _accuracy(reference, references)}
    step("exporting to ONNX", 1, total)
    _write_classifier_graph(model, out / ONNX_FILE)
    del model
    _write_model_files(merged, out, tokenizer, None)
    shutil.copy2(folder.final.labels_file, out / LABELS_FILE)
    (out / CLASSIFIER_FILE).write_text(json.dumps({"max_length": max_length}))

    files_figures = []
    for n, name in enumerate(files):
        if name == INT8_FILE:
            step("quantising to int8", 2 + n, total)
            quantize_int8(out / ONNX_FILE, out / name, quantize)
        step(f"labelling with {name}", 2 + n, total)
        start = time.perf_counter()
        runtime = OnnxClassifier(open_session(out / name, threads), tokenizer, labels, max_length)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        predicted = runtime.predict(texts)
        files_figures.append(_file_figures(out, name, load_s) | {
            "rows_per_s": _rate(len(texts), time.perf_counter() - start), "accuracy": _accuracy(predicted, references),
            "agreement": agreement(reference, predicted)})
    step("verified", total, total)
    report = {"format": "onnx", "task": "sequence-classification", "quantization": quantize, "rows": len(texts),
              "source": source, "labels": labels, "pytorch": pytorch, "files": files_figures}
    for figures in files_figures:
        _check(folder.path, figures, report)
    return report


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else 0.0


def _accuracy(labels: list[str], references: list[str]) -> float | None:
    pairs = [(a, r) for a, r in zip(labels, references) if r]
    return round(sum(a == r for a, r in pairs) / len(pairs), 4) if pairs else None


def _file_figures(out: Path, name: str, load_s: float) -> dict:
    size = sum(p.stat().st_size for p in out.glob(f"{name}*"))  # the graph and its `.data` file, if any
    return {"file": name, "type": "int8" if name == INT8_FILE else "float32", "bytes": size, "load_s": round(load_s, 2)}


def _check(run: Path, figures: dict, report: dict) -> None:
    """Fail the export (ModelError, one sentence) on a file whose answers never stop while PyTorch's
    do, that keeps fewer of PyTorch's answer tokens or labels than its type should (TOKENS_KEPT,
    LABELS_KEPT), or whose test metric falls more than METRIC_DROP (plus one row's worth) below
    PyTorch's."""
    name, kind = figures["file"], figures["type"]
    a_kind = f"an {kind}" if kind == "int8" else f"a {kind}"
    advice = "export it without the int8 copy (--no-int8)" if kind == "int8" else "report this with the model's name"
    classifier = report["task"] == "sequence-classification"
    if not classifier and report["pytorch"]["stop_share"] > 0 and figures["stop_share"] == 0:
        raise ModelError(f"{name} of {run} never ends its answers (no end-of-turn token within "
                         f"{report['max_new_tokens']} tokens, while the PyTorch model stops); {advice}.")
    metric = "accuracy" if classifier else "exact_match"
    before, after, rows = report["pytorch"][metric], figures[metric], report["rows" if classifier else "prompts"]
    if classifier and figures["agreement"] < LABELS_KEPT[kind]:
        raise ModelError(f"{name} of {run} gives PyTorch's label on {figures['agreement']:.0%} of {rows} test rows, "
                         f"below the {LABELS_KEPT[kind]:.0%} {a_kind} file should keep; {advice}.")
    if not classifier and figures["token_agreement"] < TOKENS_KEPT[kind]:
        raise ModelError(f"{name} of {run} predicts {figures['token_agreement']:.0%} of PyTorch's answer tokens, below "
                         f"the {TOKENS_KEPT[kind]:.0%} {a_kind} file should keep; {advice}.")
    allowed = METRIC_DROP[kind] + 1 / rows
    if before and after is not None and before - after > allowed:
        raise ModelError(f"{name} of {run} drops test {metric.replace('_', ' ')} from {before:.0%} to {after:.0%}, more "
                         f"than the {allowed:.0%} {a_kind} file may lose; {advice}.")


def quantize_int8(source: Path, target: Path, method: str = "weights") -> Path:
    """`target`: `source` with int8 weights. "weights" stores each matrix multiply's weights as int8
    in blocks of 32 with their own scale (onnxruntime's `MatMulNBits`, as GGUF's q8_0) and keeps
    activations in float; "dynamic" is onnxruntime's dynamic quantisation (int8 weights per output
    channel, activations quantised per tensor at run time, standard ONNX ops), smaller and faster,
    but activation outliers of small LLMs make it change their answers (see INT8_METHODS)."""
    import onnx

    if method not in INT8_METHODS:
        raise ConfigError(f"int8 quantisation is one of {', '.join(INT8_METHODS)}, not {method!r}.")
    proto = onnx.load(str(source))
    large = proto.ByteSize() > PROTOBUF_LIMIT
    with _quiet_quantisers():
        if method == "weights":
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                MatMulNBitsQuantizer,
            )

            # accuracy_level 4: int8 dot products on the CPU (blocks of activations quantised on the
            # fly); in float the dequantising kernel runs at a tenth of float32's speed.
            quantizer = MatMulNBitsQuantizer(proto, bits=8, block_size=32, is_symmetric=True, accuracy_level=4,
                                             op_types_to_quantize=("MatMul",))
            quantizer.process()
            quantizer.model.save_model_to_file(str(target), use_external_data_format=large)
            return target
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # onnxruntime infers shapes again while quantising and trips over the shapes recorded for
        # weights it rewrote: the graph's own value_info is dropped (it only helps viewers).
        del proto.graph.value_info[:]
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / source.name
            onnx.save(proto, str(plain), save_as_external_data=large)
            del proto
            quantize_dynamic(plain, target, per_channel=True, weight_type=QuantType.QInt8,
                             use_external_data_format=large)
    return target


@contextmanager
def _quiet_quantisers():
    """onnxruntime's quantisers call `logging.basicConfig` (the n-bit one at import, at INFO level,
    then log every node), which would print every library's log lines for the rest of the process:
    inside this block the root logger has a handler that drops them, so that call configures nothing."""
    root = logging.getLogger()
    level, quiet = root.level, logging.NullHandler()
    root.addHandler(quiet)
    chatty = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    chatty_level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(quiet)
        root.setLevel(level)
        chatty.setLevel(chatty_level)


def _write_causal_graph(model, path: Path) -> None:
    """Trace `model` (a causal LM) with a key/value cache, every length and the batch symbolic,
    and write it with optimum's input and output names."""
    import torch
    from torch.export import Dim
    from transformers import DynamicCache

    # A sample whose batch (2), new tokens (3) and cached tokens (4) all differ and exceed 1, so
    # that the trace keeps each of them symbolic instead of fixing it to the sample's value.
    batch, new, cached = 2, 3, 4
    cache = DynamicCache(config=model.config)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    with torch.no_grad():
        model(input_ids=torch.randint(0, vocab, (batch, cached), generator=generator), cache=cache, use_cache=True)
    leaves = sum(2 for _ in cache.layers)
    sample = {
        "input_ids": torch.randint(0, vocab, (batch, new), generator=generator),
        "attention_mask": torch.ones(batch, cached + new, dtype=torch.long),
        "position_ids": torch.arange(cached, cached + new).expand(batch, -1).contiguous(),
        "cache": cache,
        "use_cache": True,
    }
    shapes = {
        "input_ids": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC},
        "attention_mask": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC},
        "position_ids": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC},
        "cache": [{0: Dim.DYNAMIC, 2: Dim.DYNAMIC}] * leaves,
    }
    exported = _trace(model, sample, shapes)
    graph = exported.program.graph
    for value in [*graph.inputs, *graph.outputs]:
        match = _CACHE_NAME.match(value.name)
        if match:
            layer, kind = match.group(1), "key" if match.group(2) == "keys" else "value"
            value.name = f"{'present' if value in graph.outputs else 'past_key_values'}.{layer}.{kind}"
    names = [v.name for v in [*graph.inputs, *graph.outputs]]
    if sum(n.startswith("past_key_values.") for n in names) != leaves or "logits" not in names:
        raise ModelError(f"{type(model).__name__} has no plain key/value cache for the ONNX export to carry; "
                         "export it with --format hf or gguf.")
    _save_graph(exported.program, path)


def _write_classifier_graph(model, path: Path) -> None:
    """Trace `model` (a sequence classifier) with the batch and the length symbolic. Its graph
    gets constant folding and dead-node removal (0.5 s) instead of onnxscript's whole optimizer
    (27-39 s of the quickstart's export): on the quickstart's SmolLM2 head both give the same
    onnxruntime speed (0.92 s for 32 texts), logits and int8 file within 2%, since onnxruntime
    optimises the graph itself when it loads it; folding is what exposes the weights to int8."""
    import torch
    from onnx_ir.passes.common import RemoveUnusedNodesPass
    from onnxscript import optimizer
    from torch.export import Dim

    sample = {
        "input_ids": torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.ones(2, 5, dtype=torch.long),
    }
    shapes = {"input_ids": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}, "attention_mask": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}}
    program = _trace(model, sample, shapes, optimize=False).program
    optimizer.fold_constants(program)
    RemoveUnusedNodesPass()(program)
    _save_graph(program, path)


def _trace(model, sample: dict, shapes: dict, optimize: bool = True):
    """torch.export, then torch.onnx, through transformers' exporter (with its fixes for
    onnxruntime), without the exporter registry's warnings about ops no language model uses
    (torchvision's, signatures it cannot read), which filled the quickstart's output."""
    from transformers.exporters import OnnxConfig, OnnxExporter

    chatty = logging.getLogger("torch.onnx")
    level = chatty.level
    chatty.setLevel(logging.ERROR)
    try:
        return OnnxExporter().export(model, sample, OnnxConfig(dynamic=True, dynamic_shapes=shapes, optimize=optimize))
    finally:
        chatty.setLevel(level)


def _save_graph(program, path: Path) -> None:
    """One self-contained file, as edge runtimes load it; weights past protobuf's 2 GB limit go
    to `<name>.data` beside it."""
    import onnx_ir

    size = sum(v.const_value.nbytes for v in program.graph.initializers.values() if v.const_value is not None)
    if size > PROTOBUF_LIMIT:
        onnx_ir.save(program, str(path), external_data=f"{path.name}.data")
    else:
        onnx_ir.save(program, str(path))


def _write_model_files(merged: Path, out: Path, tokenizer, stops: list[int] | None) -> None:
    """The model config, the tokenizer with its chat template and, for a chat model, a generation
    config whose stop tokens are every end-of-turn token (as the Hugging Face export writes it)."""
    from transformers import AutoConfig, GenerationConfig

    AutoConfig.from_pretrained(merged).save_pretrained(out)
    tokenizer.save_pretrained(out)
    if stops is None:
        return
    try:
        generation = GenerationConfig.from_pretrained(merged)
    except OSError:  # the merged folder has none: start from the model's defaults
        generation = GenerationConfig()
    generation.eos_token_id = stops if len(stops) > 1 else stops[0]
    generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    generation.save_pretrained(out)

