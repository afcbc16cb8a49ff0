"""Generation: load a base model or a fine-tuned run (base + adapter) and answer chats,
with the tools each conversation offers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.formats import template_inputs
from tunesmith.data.load import read_records
from tunesmith.errors import DataError, ModelError
from tunesmith.models import load_model, load_tokenizer
from tunesmith.runs import RunDir

# A prompt that every row starts with (a system prompt listing 77 labels, a few-shot preamble) of
# at least this many tokens is run once and its key/value cache reused by every batch: the
# prompted base of the quickstart's classifier spent most of its time re-reading that prompt.
SHARED_PREFIX_MIN = 32


@dataclass
class Loaded:
    model: object
    tokenizer: object
    name: str  # what was loaded, for display: "run dir (base + adapter)" or a model name
    system_prompt: str | None = None  # the run's training system prompt, reused at inference


def load_for_inference(target: str, base: bool = False) -> Loaded:
    """Load what `target` names: a run directory (its adapter merged into its base model, or
    its full weights), or a base model name. `base=True` loads a run's untuned base model."""
    run = RunDir(Path(target))
    if not run.exists:
        if base:
            raise ModelError(f"--base needs a run directory, and {target} is not one.")
        return Loaded(_eval(load_model(target)), load_tokenizer(target), target)
    original_base = run.config.model.name
    final = run.final
    path, config = final.path, final.config
    if config.method.stages[-1] == "classify":
        raise ModelError(f"{target} is a classifier, which labels text rather than writing it: use `tunesmith predict {target}`.")
    if config.method.stages[-1] == "reward":
        raise ModelError(f"{target} is a reward model, which scores answers rather than writing them: use `tunesmith score {target}`.")
    base_name, system = config.model.name, config.data.system_prompt
    if base:  # the model before any stage, not the weights a later stage started from
        base_name = original_base
        return Loaded(_eval(load_model(base_name)), load_tokenizer(base_name), f"{base_name} (base)", system)
    if final.full_weights:
        weights = str(final.full_weights)
        return Loaded(_eval(load_model(weights)), load_tokenizer(weights), str(path), system)
    if not final.adapter:
        raise ModelError(f"{path} has no trained weights yet; finish it with `tunesmith train --resume {path}`.")
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(base_name), final.adapter)
    # Merging folds the adapter into the weights, so generation runs at base-model speed;
    # prompt and prefix tuning have no weights to fold and stay wrapped.
    if not model.peft_config["default"].is_prompt_learning:
        model = model.merge_and_unload()
    # The adapter folder holds the training tokenizer but no config.json, so it is not a
    # model folder for `load_tokenizer`; read the tokenizer from it directly.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(final.adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Loaded(_eval(model), tokenizer, f"{path} ({base_name} + adapter)", system)


def _eval(model):
    model.eval()
    return model


def generate(
    loaded: Loaded,
    conversations: list[list[dict]],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
    top_p: float = 1.0,
    tools: list[list[dict] | None] | None = None,
) -> list[str]:
    """Answer each conversation (a list of messages ending with a user turn, or with a partial
    assistant turn to continue, which returns only the continuation). Greedy when
    `temperature` is 0, else sampled (nucleus sampling when `top_p` < 1). Generation stops
    at the tokenizer's end-of-turn token.

    `tools` gives each conversation's tool definitions (OpenAI's `tools`, or None). Tools and
    earlier tool calls are rendered as SFT training rendered them (`formats.template_inputs`:
    through the chat template when it renders them, else as JSON text), so a tuned model sees
    its prompts the way it learnt them; `evaluate.metrics.parse_tool_calls` reads the calls
    out of the answers."""
    import torch

    if tools is not None and len(tools) != len(conversations):
        raise ValueError(f"tools has {len(tools)} entries for {len(conversations)} conversations; give one per conversation.")
    tokenizer, model = loaded.tokenizer, loaded.model
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    texts = [_chat_text(tokenizer, *template_inputs(with_system(c, loaded.system_prompt), t, tokenizer))
             for c, t in zip(conversations, tools if tools is not None else [None] * len(conversations))]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    shared = shared_prefix(ids) if _can_cache(model) else 0
    prefix = _prefix_cache(model, ids[0][:shared]) if shared >= SHARED_PREFIX_MIN else None
    answers: list[str] = []
    for start in range(0, len(conversations), batch_size):
        rows = ids[start : start + batch_size]
        if prefix is None:
            enc = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
            inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        else:
            inputs = _after_prefix(rows, shared, prefix, tokenizer.pad_token_id)
        width = inputs["input_ids"].shape[1]
        inputs["input_ids"], inputs["attention_mask"] = (inputs[k].to(model.device) for k in ("input_ids", "attention_mask"))
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        answers.extend(tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
        if on_batch:
            on_batch(len(rows))
    return [a.strip() for a in answers]


def shared_prefix(ids: list[list[int]]) -> int:
    """How many leading tokens every row shares, leaving each row at least one of its own."""
    if len(ids) < 2:
        return 0
    first, n = ids[0], min(len(row) for row in ids) - 1
    for row in ids[1:]:
        n = next((i for i in range(n) if row[i] != first[i]), n)
    return max(n, 0)


def _can_cache(model) -> bool:
    """Whether the model takes a cache of the shared prompt: a transformers model (its config
    shapes the cache), but not under prompt or prefix tuning, which feed it key/values of their own."""
    config = getattr(model, "active_peft_config", None)
    return hasattr(model, "config") and not (config is not None and config.is_prompt_learning)


def _prefix_cache(model, prefix: list[int]):
    """The key/value cache of the tokens every prompt starts with, computed once."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([prefix], device=model.device), cache=cache, use_cache=True)
    return cache


def _after_prefix(rows: list[list[int]], shared: int, prefix, pad_id: int) -> dict:
    """A batch whose shared prefix is already in `prefix`'s cache: the prefix, then each row's
    own tokens, padded between the two (the attention mask skips the padding, and positions
    count only real tokens, so each row reads as if it were alone)."""
    import copy

    import torch

    width = max(len(row) for row in rows) - shared
    input_ids, mask = [], []
    for row in rows:
        own = row[shared:]
        gap = width - len(own)
        input_ids.append(row[:shared] + [pad_id] * gap + own)
        mask.append([1] * shared + [0] * gap + [1] * len(own))
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(len(rows))
    return {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(mask), "cache": cache}


def _chat_text(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The prompt text: a conversation ending with a user (or tool) turn gets the assistant
    header; one ending with a partial assistant turn is continued from where it stops (prefill)."""
    if messages and messages[-1]["role"] == "assistant":
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """Prepend the run's system prompt when the conversation has none, as in training."""
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def read_prompts(path: str) -> tuple[list[list[dict]], list[list[dict] | None]]:
    """Prompts for batched generation, one per row: `{"messages": [...]}` (answered after its
    last user turn; a row-level OpenAI `tools` list goes with it), `{"prompt": "..."}`,
    `{"text": "..."}`, or a line of a .txt file. Returns (conversations, tools per conversation)."""
    conversations, tools = [], []
    for record in read_records(path):
        row = record.data
        if isinstance(row.get("messages"), list):
            messages = list(row["messages"])
            while messages and messages[-1].get("role") == "assistant":
                messages.pop()  # answer the question, not the reference answer
            conversations.append(messages)
            tools.append(row.get("tools") or None)
        elif isinstance(row.get("prompt"), str) or isinstance(row.get("text"), str):
            conversations.append([{"role": "user", "content": row.get("prompt") or row["text"]}])
            tools.append(None)
        else:
            raise DataError(f"{path}, row {record.row}: expected a 'messages', 'prompt' or 'text' field.")
    return conversations, tools

