"""SGD, Adam and AdamW with torch.optim's update rules, without torch.optim's start-up cost.

Constructing any torch.optim optimizer imports torch._dynamo (through torch._disable_dynamo),
which costs more than a second of CPU per process, as long as this whole training run on the
digits data. A trial is a process, so that second is paid by every trial of every study.
These classes compute the same updates as torch.optim's single-tensor (CPU default) code
paths for the options the trainer uses (tests/test_trainer.py compares them step by step),
and they have the parts of the Optimizer interface that the trainer and torch.amp.GradScaler
use: param_groups (each with "params" and "lr"), step() and zero_grad().
"""

from __future__ import annotations

from typing import Iterable

import torch


class _Optimizer:
    def __init__(self, params: Iterable[torch.Tensor], **defaults: float) -> None:
        self.param_groups = [dict(defaults, params=[p for p in params if p.requires_grad])]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, self.state.setdefault(p, {}), group)

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class SGD(_Optimizer):
    """torch.optim.SGD (no dampening, no Nesterov)."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def _update(self, p, grad, state, group) -> None:
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        if group["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.clone(grad).detach()
            else:
                buf.mul_(group["momentum"]).add_(grad)
            grad = buf
        p.add_(grad, alpha=-group["lr"])


class Adam(_Optimizer):
    """torch.optim.Adam (L2 weight decay), or AdamW with decoupled=True."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999),
                 eps: float = 1e-8, decoupled: bool = False) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, beta1=betas[0], beta2=betas[1],
                         eps=eps)
        self.decoupled = decoupled

    def _update(self, p, grad, state, group) -> None:
        lr, wd, beta1, beta2 = group["lr"], group["weight_decay"], group["beta1"], group["beta2"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = state["step"]
        if wd != 0:
            if self.decoupled:
                p.mul_(1 - lr * wd)
            else:
                grad = grad.add(p, alpha=wd)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def AdamW(params, lr: float, weight_decay: float = 0.0, **kwargs) -> Adam:
    """torch.optim.AdamW (decoupled weight decay; note: its default decay here is 0)."""
    return Adam(params, lr=lr, weight_decay=weight_decay, decoupled=True, **kwargs)
