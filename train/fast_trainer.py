"""TRL's SFTTrainer with a cheaper step: the head only at completion tokens, the shared prefix once.

The loss is TRL's (negative log-likelihood summed over the completion tokens, divided by
`num_items_in_batch` under gradient accumulation) and so are the logged metrics (entropy, mean
token accuracy, token count); only the work to get there changes. Anything the fast step does not
cover (logits requested, MoE auxiliary loss, custom loss functions, label smoothing, other loss
types, logit scalings it does not reproduce) takes the stock path.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import SFTTrainer

from .fast_loss import add_completion_head, supports_fast_head


class FastStepSFTTrainer(SFTTrainer):
    def __init__(self, *args: Any, share_prefix: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The prefix pass builds a KV cache, which gradient checkpointing cannot recompute.
        self.share_prefix = share_prefix and not self.args.gradient_checkpointing
        add_completion_head(self._causal_lm(self.model))

    def _causal_lm(self, model: Any) -> Any:
        unwrapped = self.accelerator.unwrap_model(model)
        return unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped

    def _fast_step_applies(self, model: Any, return_outputs: bool) -> bool:
        parallelism = getattr(self.accelerator, "parallelism_config", None)
        return not (
            return_outputs
            or (parallelism is not None and (parallelism.cp_enabled or parallelism.sp_enabled))
            or self.aux_loss_enabled
            or self.compute_loss_func is not None
            or self.label_smoother is not None
            or self.args.loss_type != "nll"
            or not supports_fast_head(self._causal_lm(model))
        )

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if not self._fast_step_applies(model, return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        # Through the model's own forward, so that PEFT's, DDP's and FSDP's wrappers run.
        tokens = model(**inputs, completion_head=True, share_prefix=self.share_prefix)
        scored = tokens.log_probs.numel()
        count = scored if num_items_in_batch is None else num_items_in_batch
        # Clamped so that a batch without a scored token gives a finite zero, as in TRL.
        loss = -tokens.log_probs.sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._log_metrics(mode, inputs, scored, tokens.entropy, tokens.is_top1)
        return loss

    def _log_metrics(
        self, mode: str, inputs: dict[str, Any], scored: int, entropy: torch.Tensor, is_top1: torch.Tensor
    ) -> None:
        """TRL's entropy, mean token accuracy and token count, from the scored positions only."""
        gather = self.accelerator.gather_for_metrics
        device = entropy.device
        num_valid = gather(torch.tensor(scored, device=device)).sum()
        entropy_sum = gather(entropy.detach().sum()).sum()
        num_correct = gather(is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        accuracy = (num_correct / num_valid).item() if num_valid > 0 else 0.0
        self._metrics[mode]["mean_token_accuracy"].append(accuracy)
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:  # padding-free: one packed row
                local = torch.tensor(inputs["position_ids"].size(1), device=device)
            self._total_train_tokens += gather(local).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
