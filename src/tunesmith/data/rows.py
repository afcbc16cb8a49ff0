"""The rows each kind of training and evaluation reads from a data file, in the canonical
shapes (DESIGN.md): chats, raw texts, text+label rows, preference pairs, RL prompts; and
the token budget of a conversation under a chat template; and the general rows replayed
against forgetting.
"""

from __future__ import annotations

import random
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.data.formats import Format, load_data, to_chat
from tunesmith.errors import DataError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
# The general chat set SFT replays against forgetting (samples/README.md): written for this project.
GENERAL_CHAT = SAMPLES / "general_chat.jsonl"


def load_pairs(path, columns: dict | None = None, kto: bool = False) -> list[dict]:
    """Preference rows ({"prompt", "chosen", "rejected"} messages) of a data file; with
    `kto=True` unpaired rows ({"prompt", "completion", "label"}) as well."""
    data = load_data(path, columns=columns)
    if data.task == "preference" or (kto and data.task == "kto"):
        return data.records
    wanted = "prompt/chosen/rejected pairs" + (" or prompt/completion/label rows" if kto else "")
    raise DataError(
        f"{path}: this method learns from preferences and needs {wanted}, but the file holds {data.task} data "
        f"({data.format.value}); give a preference file (OpenAI DPO, prompt/chosen/rejected or HH-RLHF transcripts)."
    )


def chat_tokens(messages: list[dict], tokenizer, generation_prompt: bool = False, tools: list[dict] | None = None) -> list[int]:
    """Token ids of a conversation rendered with the chat template (with `tools` given to it)."""
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_prompt(prompt: list[dict], answers: list[list[dict]], tokenizer, max_length: int) -> tuple[list[dict], bool]:
    """Drop a long conversation's earliest turns (never the system message or the last user
    turn) until the prompt with its longest answer fits in `max_length` tokens, so that
    truncation never cuts the answers being compared. Returns (prompt, shortened)."""
    system = [m for m in prompt[:1] if m["role"] == "system"]
    turns = prompt[len(system) :]

    def length(t: list[dict]) -> int:
        if not answers:  # a prompt to be answered: count the generation header too
            return len(chat_tokens(system + t, tokenizer, generation_prompt=True))
        return max(len(chat_tokens(system + t + a, tokenizer)) for a in answers)

    shortened = False
    while len(turns) > 1 and length(turns) > max_length:
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] != "user":  # keep user/assistant alternation
            turns = turns[1:]
        shortened = True
    return system + turns, shortened


def load_texts(path: str, columns: dict | None = None, format: str | None = None) -> list[str]:
    """The documents of a raw-text file (a .txt file, or rows with a `text` column); the
    text of text+label rows is used as well, since a label does not hurt domain text."""
    data = load_data(path, columns=columns, format=format)
    if data.task not in ("pretrain", "classify"):
        raise DataError(
            f"{path}: continued pretraining needs raw text (a .txt file or rows with a text column), but the file "
            f"holds {data.task} data ({data.format.value}); train it with --method sft, or give the text file as data.pretrain."
        )
    return [r["text"] for r in data.records if r["text"].strip()]


def load_labelled(path: str, columns: dict | None = None) -> list[dict]:
    """Text+label rows ({"text", "label"}) of a data file."""
    data = load_data(path, columns=columns)
    if data.task != "classify":
        raise DataError(
            f"{path}: classification needs text+label rows, but the file holds {data.task} data "
            f"({data.format.value}); give a file with text and label columns, or name them with --columns text=...,label=...."
        )
    return data.records


def load_prompts(path: str, config: RunConfig, tools: bool = False) -> list[dict]:
    """`{"prompt": messages, "answer": str}` rows from any conversational data: chat and
    text+label rows give their last assistant turn as the answer, preference pairs their
    chosen answer, KTO rows their completion when it is labelled good.

    With `tools=True` every row also has "tools" (the row's tool definitions, or None) and
    "calls" (the tool calls of the answer turn, OpenAI's `tool_calls` entries; empty when the
    answer is text). A prompt may end with a tool turn then: the answer puts its result into
    words, or calls again."""
    data = load_data(path, columns=config.data.columns)
    system = [{"role": "system", "content": config.data.system_prompt}] if config.data.system_prompt else []
    if data.task in ("chat", "classify"):
        rows = []
        for c in to_chat(data, config.data.system_prompt):
            messages = c["messages"]
            extra = {"tools": c.get("tools"), "calls": []} if tools else {}
            if messages and messages[-1]["role"] == "user":  # a prompt-only row: all of it is the prompt
                rows.append({"prompt": messages, "answer": ""} | extra)
                continue
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
            answer = messages[last]["content"] if last < len(messages) else ""
            if tools and last < len(messages):
                extra["calls"] = list(messages[last].get("tool_calls") or [])
            rows.append({"prompt": messages[:last], "answer": answer} | extra)
    elif data.task == "preference":
        rows = [{"prompt": r["prompt"], "answer": r["chosen"][-1]["content"]} for r in data.records]
    elif data.task == "kto":
        rows = [{"prompt": r["prompt"], "answer": r["completion"][-1]["content"] if r["label"] else ""} for r in data.records]
    else:
        raise DataError(
            f"{path}: grpo/rloo needs prompts (chat, prompt/completion, text+label or preference rows), but the file "
            f"holds {data.task} data; give a file of prompts."
        )
    if data.task in ("preference", "kto") and system:
        rows = [r | {"prompt": (system if r["prompt"][0]["role"] != "system" else []) + r["prompt"]} for r in rows]
    if tools:
        rows = [r if "calls" in r else r | {"tools": None, "calls": []} for r in rows]
    # A tool's result is answered too, when tools are asked for; otherwise only a user's turn is.
    answerable = ("user", "tool") if tools else ("user",)
    rows = [r for r in rows if r["prompt"] and r["prompt"][-1]["role"] in answerable]
    if not rows:
        raise DataError(f"{path}: no row ends its prompt with a user turn, so there is nothing to answer.")
    return rows


def load_chat_rows(path: str, config: RunConfig) -> list[dict]:
    """Chats to learn the answers of (SFT): a file of prompts alone has nothing to learn."""
    data = load_data(path, columns=config.data.columns)
    if data.format == Format.PROMPT_ONLY:
        raise DataError(
            f"{path} holds prompts without answers (TRL's prompt-only format), so supervised tuning has nothing to "
            "learn; train it with --method grpo (or rloo) and a reward, or add the answers."
        )
    return to_chat(data, system_prompt=config.data.system_prompt)


def encode_answers(prompt: list[dict], answers: list[list[dict]], tokenizer, max_length: int) -> tuple[list[list[int]], bool]:
    """Token ids of prompt + each answer, the prompt shortened from the front so that the
    longest fits (the end is kept if even that is not enough: the head reads the last token).
    Training and scoring both encode this way. Returns (ids per answer, shortened)."""
    prompt, shortened = fit_prompt(prompt, answers, tokenizer, max_length)
    return [chat_tokens(prompt + a, tokenizer)[-max_length:] for a in answers], shortened


def replay_share(n_task: int, ratio: float, pool: list, seed: int) -> list:
    """Items of `pool` (general data) so that they make `ratio` of the mix with `n_task`
    task items: ratio / (1 - ratio) per task item, drawn seeded and cycling through the
    pool (reshuffled each round) when it is too small. Pretraining replays text blocks and
    SFT replays chats through this one rule."""
    want = round(n_task * ratio / (1 - ratio))
    if want == 0 or not pool:
        return []
    rng = random.Random(seed)
    out: list = []
    while len(out) < want:
        order = list(pool)
        rng.shuffle(order)
        out.extend(order[: want - len(out)])
    return out


def replay_chats(n_task: int, config: RunConfig) -> list[dict]:
    """General chat rows to mix into `n_task` SFT training rows so that they make
    `data.replay_ratio` of the training set, from `data.replay_file` (default: the shipped
    `general_chat.jsonl`). They are general questions asked plainly, as the forgetting probes
    are: the run's system prompt is not added to them."""
    ratio = config.data.replay_ratio
    if ratio <= 0 or n_task == 0:
        return []
    path = config.data.replay_file or str(GENERAL_CHAT)
    data = load_data(path)
    if data.task != "chat":
        raise DataError(
            f"{path}: SFT replays general chat rows, but this replay file holds {data.task} data ({data.format.value}); "
            "give a chat file as data.replay_file, or leave it empty for the general chat set shipped with tunesmith."
        )
    return replay_share(n_task, ratio, to_chat(data, system_prompt=None), config.train.seed)
