"""Process-wide settings for a tunesmith process (the CLI, a launched training process, a worker)."""

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
