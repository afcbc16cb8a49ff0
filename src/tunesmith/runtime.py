"""Process-wide settings for a tunesmith process (the CLI, a launched training process, a worker):
library chatter, and the rules of plain progress lines that training and the CLI share."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Silence library chatter (progress dicts, deprecation notes) that drowns out our own progress bars."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    # Heavy imports, here rather than at module level: `tunesmith --help` should not pay for them.
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def progress_interval(default: float = 15.0) -> float:
    """Seconds between plain progress lines: $TUNESMITH_PROGRESS_INTERVAL (tests set 0)."""
    value = os.environ.get("TUNESMITH_PROGRESS_INTERVAL")
    try:
        return max(0.0, float(value)) if value else default
    except ValueError:
        return default


def duration(seconds: float) -> str:
    """1h02m, 1m20s or 12s: short enough for a progress line."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
