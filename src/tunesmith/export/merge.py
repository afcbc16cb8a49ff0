"""Merged weights: a finished stage's adapter folded into its base, as a plain model folder
(`RUN/merged/`), for the next stage of a run, serving, download and the other exports.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from tunesmith.errors import ModelError
from tunesmith.inference.classifier import load_classifier
from tunesmith.inference.generate import load_for_inference
from tunesmith.inference.reward import load_reward_model
from tunesmith.runs import RunDir

# One merge at a time in a process: loading a model is not thread-safe (transformers builds
# it on the meta device through process-wide patches), and a merge holds a whole model in memory.
_MERGING = threading.Lock()


def save_merged(stage_dir: Path) -> Path:
    """`STAGE/merged/`: a finished stage's adapter folded into its base, as a plain model
    folder (a classifier or reward model keeps its head); written once, through a temporary
    folder, so no reader ever sees half of it. Returns the folder."""
    out = RunDir(stage_dir).merged
    if (out / "config.json").exists():
        return out
    with _MERGING:
        if (out / "config.json").exists():  # another thread merged it while this one waited
            return out
        stage = RunDir(stage_dir).stage
        if stage == "classify":
            loaded = load_classifier(stage_dir)
        elif stage == "reward":
            loaded = load_reward_model(stage_dir)
        else:
            loaded = load_for_inference(str(stage_dir))
        if hasattr(loaded.model, "peft_config"):  # prompt or prefix tuning: nothing to fold in
            raise ModelError(f"{stage_dir.name} was trained with virtual tokens, which cannot be merged into the weights; "
                             "use its adapter with the base model instead.")
        # A folder of its own for each merge (not one named by pid): another process merging the
        # same run writes its own, and the first to finish renames it into place.
        tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
        try:
            loaded.model.save_pretrained(str(tmp))
            loaded.tokenizer.save_pretrained(str(tmp))
            tmp.rename(out)
        except OSError:
            if not (out / "config.json").exists():
                raise  # a real failure (a full disk), not another process finishing first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing left behind, whichever way it ended
    return out
