"""The model: open_clip vision towers x Hugging Face text encoders, a cross-attention query decoder, losses, LoRA.

Names are imported lazily, so ``from mmrad.models.losses import contrastive_loss`` costs torch only, not open_clip,
transformers and peft (which matters in spawned worker processes).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "MMRadModel": "mmrad.models.modeling",
    "MMRadOutput": "mmrad.models.outputs",
    "is_tower_parameter": "mmrad.models.pretrained",
    "CheckpointError": "mmrad.models.folder",
    "adapter_state_dict": "mmrad.models.lora",
    "apply_lora": "mmrad.models.lora",
    "merge_lora": "mmrad.models.lora",
    "trainable_summary": "mmrad.models.lora",
}
__all__ = [
    "CheckpointError",
    "MMRadModel",
    "MMRadOutput",
    "adapter_state_dict",
    "apply_lora",
    "is_tower_parameter",
    "merge_lora",
    "trainable_summary",
]

if TYPE_CHECKING:
    from mmrad.models.folder import CheckpointError
    from mmrad.models.lora import adapter_state_dict, apply_lora, merge_lora, trainable_summary
    from mmrad.models.modeling import MMRadModel
    from mmrad.models.outputs import MMRadOutput
    from mmrad.models.pretrained import is_tower_parameter


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmrad.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
