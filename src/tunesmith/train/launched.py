"""The entry point of each process `train.distributed.launch` starts
(`python -m tunesmith.train.launched`, under `accelerate launch`): train the run's stages
exactly as one process would, and report the summary or the user error to the launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.runtime import quiet_libraries
from tunesmith.train.callbacks import RichProgressCallback
from tunesmith.train.distributed import is_main_process
from tunesmith.train.stages import train_stages


def main(argv: list[str] | None = None) -> int:
    """One launched process: train the stages, then the machine's first process writes the
    summary (or any process the user error that stopped it) where the launcher reads it."""
    parser = argparse.ArgumentParser(prog="python -m tunesmith.train.launched")
    parser.add_argument("config")
    parser.add_argument("run_dir")
    parser.add_argument("--result", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    quiet_libraries()
    callbacks = [RichProgressCallback()] if args.progress and is_main_process() else []
    try:
        summary = train_stages(load_config(args.config), Path(args.run_dir), callbacks, args.resume)
    except TunesmithError as exc:
        _write_once(args.result, {"error": type(exc).__name__, "message": str(exc)})
        return 1
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # the first process of each machine answers its launcher
        _write_once(args.result, {"summary": summary.to_json()})
    return 0


def _write_once(path: str, result: dict) -> None:
    """The first process to report wins: the others usually meet the same error."""
    try:
        with open(path, "x") as f:
            json.dump(result, f)
    except FileExistsError:
        pass


if __name__ == "__main__":
    sys.exit(main())
