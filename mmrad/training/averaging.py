"""An exponential moving average of the weights (``train.ema_decay``): validation and the exported model use it.

Averaging the weights over the last steps smooths the noise of small batches and small corpora (as timm's
``ModelEmaV2`` does for image classifiers). The average covers the trainable parameters and the floating-point buffers
(BatchNorm statistics); its decay warms up as ``min(decay, (1 + step) / (10 + step))`` so that the first steps do not
pin it to the random initialisation of the new modules. It is saved with each checkpoint, so a resumed run averages
exactly as an uninterrupted one.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """The moving average of ``model``'s trainable parameters and float buffers.

    Args:
        model: the unwrapped model (not the DDP wrapper).
        decay: the weight of the past per step, in (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.shadow = {name: t.detach().clone() for name, t in self._tensors(model)}

    @staticmethod
    def _tensors(model: nn.Module):
        for name, p in model.named_parameters():
            if p.requires_grad:
                yield name, p
        for name, b in model.named_buffers():
            if b.is_floating_point():
                yield name, b

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward the model's current weights (after an optimiser step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, t in self._tensors(model):
            self.shadow[name].lerp_(t.detach(), 1.0 - decay)

    @contextmanager
    def applied(self, model: nn.Module):
        """Inside the block, ``model`` holds the averaged weights; its own come back after, whatever happens."""
        own = {name: t.detach().clone() for name, t in self._tensors(model)}
        try:
            self._copy(model, self.shadow)
            yield model
        finally:
            self._copy(model, own)

    @torch.no_grad()
    def _copy(self, model: nn.Module, values: dict[str, torch.Tensor]) -> None:
        for name, t in self._tensors(model):
            t.copy_(values[name])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
