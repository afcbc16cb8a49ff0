"""Held-out rows: the test split of a training file (the same rows on every call, so no
stage ever trains on what `tunesmith eval` scores) and the validation split.
"""

from __future__ import annotations

import random

from tunesmith.config import RunConfig
from tunesmith.data.formats import load_data


def split_validation(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out a seeded random `fraction` of rows (same split on every resume)."""
    if fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(rows) * fraction))
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val


def resolve_test_split(config: RunConfig, n: int) -> RunConfig:
    """Fill an "auto" `data.test_split` from the number of training records, with its reason."""
    if config.data.test_split != "auto":
        return config
    config = config.model_copy(deep=True)
    config.data.test_split, config.reasons["data.test_split"] = test_split(n, bool(config.data.test))
    return config


def _test_rows(n: int, config: RunConfig) -> set[int]:
    """Positions of the held-out test records: a seeded sample, the same on every call."""
    fraction = float(config.data.test_split)
    if fraction <= 0 or config.data.test:
        return set()
    order = list(range(n))
    random.Random(config.train.seed + 1).shuffle(order)  # not the validation split's order
    return set(order[: max(1, round(n * fraction))])


def subset(data, indices: list[int]):
    """The records of loaded data at `indices`, with their source row numbers."""
    import dataclasses

    return dataclasses.replace(data, records=[data.records[i] for i in indices], rows=[data.rows[i] for i in indices])


def training_data(config: RunConfig):
    """(config with `data.test_split` resolved, the training file's records without the
    held-out test rows). Every recipe reads its training file through this, so no stage
    ever trains on the test rows that `tunesmith eval` scores."""
    data = load_data(config.data.train, columns=config.data.columns)
    config = resolve_test_split(config, len(data.records))
    held = _test_rows(len(data.records), config)
    if not held:
        return config, data
    return config, subset(data, [i for i in range(len(data.records)) if i not in held])


def held_out_test(config: RunConfig):
    """The held-out test records of the training file (as `training_data` left them out),
    or None when the run holds none out."""
    if config.data.test_split == "auto" or float(config.data.test_split) <= 0 or config.data.test:
        return None
    data = load_data(config.data.train, columns=config.data.columns)
    return subset(data, sorted(_test_rows(len(data.records), config)))


def held_out_validation(config: RunConfig):
    """The validation records of a finished run's `config` (its resolved config): its
    validation file, or the rows `split_validation` held out of the training rows, the same
    rows its recipe held out (one per record, split by position with the run's seed). None
    when the run had none."""
    if config.data.validation:
        return load_data(config.data.validation, columns=config.data.columns)
    fraction = config.data.validation_split
    if fraction == "auto" or float(fraction) <= 0:
        return None
    config, data = training_data(config)
    _, held = split_validation(list(range(len(data.records))), float(fraction), config.train.seed)
    return subset(data, held) if held else None


def test_split(n: int, has_test_file: bool) -> tuple[float, str]:
    """(share of the training rows held out as the test set, why)."""
    if has_test_file:
        return 0.0, "a test file was given"
    if n < 200:
        return 0.0, f"only {n} rows: too few for a test set worth reading; give one with --test FILE"
    return round(min(0.1, 500 / n), 4), f"10% of {n} rows, at most 500: held out and never trained on, for the before/after report"
