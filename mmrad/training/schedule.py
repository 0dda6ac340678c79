"""Optimiser parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

NO_DECAY = ("bias", "norm", "ln_", "logit_scale", "temperature", "embeddings", "query_embed", "positional")


def param_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    *,
    lr: float,
    tower_lr: float,
    weight_decay: float,
    is_tower: Callable[[str], bool],
) -> list[dict]:
    """AdamW groups: tower (or LoRA) parameters at ``tower_lr``, new modules at ``lr``; no decay on biases, norms,
    embeddings and the temperature. Frozen parameters are left out. Empty groups are dropped."""
    groups: dict[tuple[bool, bool], list] = {(t, d): [] for t in (True, False) for d in (True, False)}
    names: dict[tuple[bool, bool], list[str]] = {k: [] for k in groups}
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and not any(key in name.lower() for key in NO_DECAY)
        key = (is_tower(name), decay)
        groups[key].append(p)
        names[key].append(name)
    out = []
    for (tower, decay), params in groups.items():
        if params:
            out.append(
                {
                    "params": params,
                    "lr": tower_lr if tower else lr,
                    "weight_decay": weight_decay if decay else 0.0,
                    "name": f"{'tower' if tower else 'new'}{'' if decay else '_no_decay'}",
                    "param_names": names[(tower, decay)],
                }
            )
    if not out:
        raise ValueError("no trainable parameters: every parameter is frozen")
    return out


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``min_ratio`` of each group's lr."""
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
