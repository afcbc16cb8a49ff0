"""Training past one process. A run whose `distributed.num_processes` is above 1 (or whose
strategy is fsdp/zero2/zero3) is launched with `accelerate launch`: each process runs
`train.launched`, which trains the run's stages exactly as one process would; the
transformers Trainer sees the launcher's environment and wraps the model in DDP, FSDP or
DeepSpeed. The launching process waits, then evaluates the result itself (one process is
enough for that).

In the launched processes only the main one writes the run directory; every process
reads the data and checks it, which costs CPU time but no coordination.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunesmith import errors
from tunesmith.config import RunConfig, save_config
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.models import BUILTIN_MODELS, ensure_builtin
from tunesmith.runs import TrainSummary

LAUNCHED = "TUNESMITH_LAUNCHED"  # set in every process `launch` starts
LAUNCH_CONFIG = "accelerate.yaml"  # the accelerate config a run was launched with, kept in its folder


@dataclass
class Cluster:
    """Where this machine stands in a multi-machine run (the launch options of `tunesmith
    train`; not saved in the run config because they differ from machine to machine)."""

    num_machines: int = 1
    machine_rank: int = 0
    main_ip: str | None = None
    main_port: int = 29500


def wanted(config: RunConfig) -> bool:
    """Whether `config` trains with a launch of several processes (and this process is not
    already one of them)."""
    d = config.distributed
    return (d.num_processes > 1 or d.strategy != "ddp") and not launched()


def launched() -> bool:
    return os.environ.get(LAUNCHED) == "1"


def is_main_process() -> bool:
    """True in a single process, and in the first process of a launched run."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every launched process (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def accelerate_config(config: RunConfig, cluster: Cluster, gpu: bool, bf16: bool) -> dict:
    """The accelerate config file for a run: the DDP, FSDP or DeepSpeed ZeRO preset."""
    d = config.distributed
    preset = {
        "compute_environment": "LOCAL_MACHINE",
        "num_processes": d.num_processes,
        "num_machines": cluster.num_machines,
        "machine_rank": cluster.machine_rank,
        "main_process_ip": cluster.main_ip,
        "main_process_port": cluster.main_port,
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": "bf16" if bf16 else "no",
        # On CPU the processes are still launched as "multi-GPU" (torchrun); ACCELERATE_USE_CPU
        # in their environment makes the Trainer use the gloo backend instead of NCCL.
        "use_cpu": False,
        "gpu_ids": "all",
        "dynamo_config": {},
        "debug": False,
    }
    if d.strategy == "ddp":
        preset["distributed_type"] = "MULTI_GPU"
    elif d.strategy == "fsdp":
        preset["distributed_type"] = "FSDP"
        preset["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one shard unit per decoder layer
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "FULL_STATE_DICT",  # the saved weights load without FSDP
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False,
            "fsdp_activation_checkpointing": config.method.checkpointing,
        }
    else:
        zero3 = d.strategy == "zero3"
        preset["distributed_type"] = "DEEPSPEED"
        preset["deepspeed_config"] = {
            "zero_stage": 3 if zero3 else 2,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": zero3,  # build the model already sharded
            "zero3_save_16bit_model": zero3,  # gather the weights into one file when saving
        }
    return preset


def check(config: RunConfig, cluster: Cluster) -> bool:
    """Refuse a launch that cannot work on this machine; returns whether GPUs train."""
    import torch

    d = config.distributed
    gpu = torch.cuda.is_available()
    if cluster.num_machines > 1 and not cluster.main_ip:
        raise ConfigError("a run over several machines needs --main-ip: the address of the machine with --machine-rank 0.")
    if cluster.num_machines < 1 or not 0 <= cluster.machine_rank < cluster.num_machines:
        raise ConfigError(f"--machine-rank must be between 0 and {cluster.num_machines - 1} (--num-machines {cluster.num_machines}).")
    if d.num_processes % cluster.num_machines:
        raise ConfigError(
            f"--num-processes {d.num_processes} counts the processes of all {cluster.num_machines} machines together, "
            "so it must be a multiple of --num-machines."
        )
    local = d.num_processes // cluster.num_machines
    if d.strategy != "ddp" and not gpu:
        raise ConfigError(f"strategy {d.strategy} shards the model across GPUs and this machine has none; use --strategy ddp on CPU.")
    if gpu and local > torch.cuda.device_count():
        raise ConfigError(
            f"{local} processes per machine need {local} GPUs and this machine has {torch.cuda.device_count()}; "
            "lower --num-processes."
        )
    if d.strategy in ("zero2", "zero3"):
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"strategy {d.strategy} needs DeepSpeed: pip install deepspeed.") from exc
    if config.method.quantize in ("4bit", "8bit") and d.strategy != "ddp":
        raise ConfigError(f"a {config.method.quantize} base (QLoRA) trains with --strategy ddp, not {d.strategy}.")
    return gpu


def launch(config: RunConfig, run_dir: Path, resume: bool, progress: bool = False, cluster: Cluster | None = None) -> TrainSummary:
    """Train `config`'s stages into `run_dir` in `distributed.num_processes` processes and
    return the summary the main one wrote. A user error in any process comes back as the
    same one-sentence error; `progress` draws the progress bar from the main process."""
    import torch

    cluster = cluster or Cluster()
    gpu = check(config, cluster)
    if not resume and (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --output.")
    _prepare_model(config)
    local = config.distributed.num_processes // cluster.num_machines
    preset = accelerate_config(config, cluster, gpu, bf16=gpu and torch.cuda.is_bf16_supported())
    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as tmp:
        tmp = Path(tmp)
        save_config(config, tmp / "config.yaml")
        (tmp / LAUNCH_CONFIG).write_text(yaml.safe_dump(preset, sort_keys=False))
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp / LAUNCH_CONFIG),
            "--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // local)),
            "-m", "tunesmith.train.launched", str(tmp / "config.yaml"), str(run_dir), "--result", str(tmp / "result.json"),
        ]
        command += ["--resume"] * resume + ["--progress"] * progress
        env = os.environ | {LAUNCHED: "1", "ACCELERATE_USE_CPU": str(not gpu).lower()}
        code = subprocess.run(command, env=env, check=False).returncode
        result = json.loads((tmp / "result.json").read_text()) if (tmp / "result.json").exists() else {}
        if "error" in result:
            raise getattr(errors, result["error"], TunesmithError)(result["message"])
        if code or "summary" not in result:
            raise errors.TrainError(
                f"the {config.distributed.num_processes} training processes stopped with exit code {code}; the log above says why."
            )
        if (run_dir / "config.yaml").exists():
            (run_dir / LAUNCH_CONFIG).write_text((tmp / LAUNCH_CONFIG).read_text())
    return TrainSummary.model_validate(result["summary"])


def _prepare_model(config: RunConfig) -> None:
    """Convert a built-in model once here rather than in every process at the same time."""
    if config.model.name in BUILTIN_MODELS:
        ensure_builtin(config.model.name)

