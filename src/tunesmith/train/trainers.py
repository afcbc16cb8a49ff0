"""TRL's SFTTrainer without its per-micro-batch device-to-host reads.

TRL 1.16's `SFTTrainer.compute_loss` reads its metrics back to the host after every micro-batch:
`(entropy_sum / num_valid).item()`, the token accuracy's `.item()`, the token count's `.item()`
and `if num_valid > 0` on a GPU tensor. Each read makes the host wait until the GPU has run every
queued kernel, so the GPU then idles while Python prepares the next micro-batch: with short
sequences the GPU waits on the host more than it computes. `LeanSFTTrainer` computes the same loss
the same way and sums the same metrics on the device, reading them once per log event.

Everything but TRL's plain path (its default NLL loss, no label smoothing, no custom loss function,
no MoE auxiliary loss, no sequence parallelism) and evaluation goes to TRL's own `compute_loss`.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer


class LeanSFTTrainer(SFTTrainer):
    """`SFTTrainer` with entropy and token accuracy summed on the device between log events."""

    _sums: torch.Tensor | None = None  # entropy, top-1 hits and scored tokens since the last log

    def _lean(self, model, return_outputs: bool) -> bool:
        parallel = getattr(self.accelerator, "parallelism_config", None)
        return (
            model.training
            and not return_outputs
            and self.compute_loss_func is None
            and self.label_smoother is None
            and self.args.loss_type == "nll"
            and not self.aux_loss_enabled
            and not (parallel is not None and getattr(parallel, "sp_enabled", False))
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._lean(model, return_outputs):
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        # TRL's loss, term for term: summed negative log-likelihood of the scored tokens over their count
        # (over the whole accumulated batch's when the trainer passes it).
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = (-outputs.log_probs).sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        with torch.no_grad():
            zero = outputs.log_probs.new_zeros(())
            entropy = outputs.entropy.sum() if outputs.entropy is not None else zero
            hits = outputs.is_top1.sum() if outputs.is_top1 is not None else zero
            sums = torch.stack([entropy.float(), hits.float(), outputs.label_mask.sum().float()])
            self._sums = sums if self._sums is None else self._sums + sums
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._sums is not None and self.model.training:
            # One read per log event (every process takes part in the gather, as every process logs).
            entropy, hits, scored = self.accelerator.gather_for_metrics(self._sums[None]).sum(0).tolist()
            self._sums = None
            if scored > 0:
                self._metrics["train"]["entropy"].append(entropy / scored)
                self._metrics["train"]["mean_token_accuracy"].append(hits / scored)
        super().log(logs, start_time)
