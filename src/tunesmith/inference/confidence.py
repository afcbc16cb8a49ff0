"""How sure a generative model is of the label it wrote: its probability of that label,
normalised over the label set, for abstention (`evaluate/abstention.py`).

Each label is the token sequence of its text followed by the end-of-turn token (so "card"
and "card arrival" are told apart). Decoding restricted to the label set makes a choice only
where labels part ways (the branch points of their token tree); the confidence of a label is
the product, over the branch points on its path, of the model's probability of the label's
next token divided by the probabilities of all the tokens the labels continue with there.
That is the probability that the model, choosing among the labels only, picks this one; for
labels that differ in their first token it is the first-token probability normalised over the
labels. It costs one forward pass per branch point on the chosen label's path (usually one or
two), not one per label.
"""

from __future__ import annotations

from collections.abc import Callable

from tunesmith.data.formats import template_inputs
from tunesmith.inference.generate import Loaded, _chat_text, with_system


def label_token_paths(tokenizer, labels: list[str]) -> dict[str, list[int]]:
    """Each label's token ids as an answer, ending with the end-of-turn token."""
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return {label: list(tokenizer(label, add_special_tokens=False)["input_ids"]) + end for label in labels}


def branch_points(paths: dict[str, list[int]], label: str) -> list[tuple[int, list[int]]]:
    """(position, the tokens the labels continue with there) for each point on `label`'s path
    where the labels sharing its prefix part ways (more than one continuation)."""
    path = paths[label]
    out = []
    for k in range(len(path)):
        prefix = path[:k]
        children = sorted({p[k] for p in paths.values() if len(p) > k and p[:k] == prefix})
        if len(children) > 1:
            out.append((k, children))
    return out


def label_confidence(
    loaded: Loaded,
    conversations: list[list[dict]],
    chosen: list[str | None],
    labels: list[str],
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[float]:
    """The model's probability of each row's `chosen` label among `labels` (see the module
    docstring), prompted as `generate` prompts it (the run's system prompt, the chat template).
    A row whose answer is not a label (`chosen` None) gets 0."""
    import torch

    if len(chosen) != len(conversations):
        raise ValueError(f"{len(chosen)} chosen labels for {len(conversations)} conversations; give one per conversation.")
    tokenizer, model = loaded.tokenizer, loaded.model
    paths = label_token_paths(tokenizer, sorted(set(labels)))
    points = {label: branch_points(paths, label) for label in paths}
    queries: list[tuple[int, list[int], int, list[int]]] = []  # (row, token ids, next token of the label, continuations)
    for row, (conversation, label) in enumerate(zip(conversations, chosen)):
        if label not in paths:
            continue
        text = _chat_text(tokenizer, *template_inputs(with_system(conversation, loaded.system_prompt), None, tokenizer))
        prompt = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        for k, children in points[label]:
            queries.append((row, prompt + paths[label][:k], paths[label][k], children))
    confidence = [0.0 if label not in paths else 1.0 for label in chosen]
    left = [0] * len(chosen)  # queries still to run per row, for progress by rows
    for row, *_ in queries:
        left[row] += 1
    if on_batch and left.count(0):
        on_batch(left.count(0))  # rows with nothing to ask: an answer outside the label set
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        width = max(len(ids) for _, ids, _, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (_, ids, _, _) in enumerate(batch):  # left padding: every row ends at the last column
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                           position_ids=positions.to(model.device), logits_to_keep=1).logits[:, -1].float()
        probs = torch.softmax(logits, dim=-1).cpu()
        finished = 0
        for i, (row, _, token, children) in enumerate(batch):
            among = float(probs[i, children].sum())
            confidence[row] *= float(probs[i, token]) / among if among > 0 else 1.0 / len(children)
            left[row] -= 1
            finished += not left[row]
        if on_batch and finished:
            on_batch(finished)
    return confidence
