"""The Hugging Face export: the run's merged weights (safetensors) with its tokenizer and chat
template, and a generation config whose stop tokens end a turn, so `generate` stops where the
tuned model ends its answer. Also the one place that works out a tokenizer's end-of-turn tokens,
which the GGUF metadata and the Ollama Modelfile need too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunesmith.errors import ModelError
from tunesmith.export.merge import save_merged
from tunesmith.runs import LABELS_FILE, RunDir

# Stand-ins for a turn's text, to find what the chat template writes after an answer.
_QUESTION, _ANSWER = "tunesmith-question-7f3a", "tunesmith-answer-7f3a"


def end_of_turn_tokens(tokenizer) -> list[str]:
    """The special tokens that end an assistant turn: the one the chat template writes right after
    an answer (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`), then the tokenizer's eos when it
    differs. A model stops on either; a runtime that knows only eos would run on past `<|eot_id|>`."""
    from jinja2 import TemplateError

    tokens: list[str] = []
    if tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": _QUESTION}, {"role": "assistant", "content": _ANSWER}], tokenize=False
            )
        except TemplateError:  # a template that refuses this conversation (jinja raise_exception): eos alone
            text = ""
        after = text.split(_ANSWER, 1)[1] if _ANSWER in text else ""
        specials = sorted(set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special},
                          key=len, reverse=True)
        found = [(after.find(s), s) for s in specials if s and s in after]
        if found:
            position, token = min(found)
            if not after[:position].strip():  # right after the answer, not a later turn's header
                tokens.append(token)
    if tokenizer.eos_token and tokenizer.eos_token not in tokens:
        tokens.append(tokenizer.eos_token)
    return tokens


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its bos token before a text itself (then a chat template's text
    does not carry it, and a runtime must add it as the tokenizer does)."""
    probe = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id


def stop_token_ids(tokenizer) -> list[int]:
    """Ids of `end_of_turn_tokens`."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(tokenizer)]
    ids = [i for i in ids if i is not None and i != tokenizer.unk_token_id]
    if not ids:
        raise ModelError("The model's tokenizer has no end-of-turn or eos token, so generation could never stop; "
                         "give the base model's tokenizer an eos_token.")
    return ids


def export_hf(run: Path, out: Path) -> Path:
    """`out/`: the run's merged model folder (safetensors, tokenizer, chat
    template) with a generation config that stops on every end-of-turn token; a classifier keeps its
    head, its label names in config.json and `labels.json`. Returns `out`."""
    from transformers import AutoTokenizer, GenerationConfig

    folder = RunDir(Path(run))
    if not folder.exists:
        raise ModelError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    final = folder.final
    merged = save_merged(final.path)
    out = Path(out)
    # Re-exporting into the same folder: weight files of an earlier export that this one does not
    # write (other shards) go; nothing else in the folder is touched.
    written = {p.name for p in merged.iterdir()}
    for stale in out.glob("*.safetensors*") if out.is_dir() else ():
        if stale.name not in written:
            stale.unlink()
    shutil.copytree(merged, out, dirs_exist_ok=True)
    if final.stage in ("classify", "reward"):
        if final.labels_file.exists():
            shutil.copy2(final.labels_file, out / LABELS_FILE)
        return out
    tokenizer = AutoTokenizer.from_pretrained(out)
    try:
        generation = GenerationConfig.from_pretrained(out)
    except OSError:  # the merged folder has none: start from the model's defaults
        generation = GenerationConfig()
    stops = stop_token_ids(tokenizer)
    generation.eos_token_id = stops if len(stops) > 1 else stops[0]
    generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    generation.save_pretrained(out)
    return out
