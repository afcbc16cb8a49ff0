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
    answers: list[str] = []
    for start in range(0, len(conversations), batch_size):
        batch = [with_system(c, loaded.system_prompt) for c in conversations[start : start + batch_size]]
        batch_tools = tools[start : start + batch_size] if tools is not None else [None] * len(batch)
        texts = [_chat_text(tokenizer, *template_inputs(c, t, tokenizer)) for c, t in zip(batch, batch_tools)]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        if on_batch:
            on_batch(len(batch))
    return [a.strip() for a in answers]


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

