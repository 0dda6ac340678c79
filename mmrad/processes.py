"""This process's place among the processes that ``accelerate launch`` or ``torchrun`` started (if any), and the
mixed precision it runs with.

Inference and ingest split their inputs between such processes through accelerate's ``PartialState``, which, unlike
``Accelerator``, does not read ``ACCELERATE_USE_CPU``: without it CPU ranks would each run alone. Both functions here
pass it on. accelerate is imported only when called (``mmrad --help`` stays fast).
"""

from __future__ import annotations

import os


def process_state():
    """accelerate's ``PartialState`` of this process (one process when nothing launched it), CPU flag honoured."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def launched_processes():
    """The ``PartialState`` when this process is one of several, else None (and no state is set up)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    state = process_state()
    return state if state.num_processes > 1 else None


def resolve_mixed_precision(value: str) -> str:
    """The mixed precision to run with: ``auto`` = bf16 on a CUDA GPU that supports it, else fp32 (bf16 autocast is
    ~7x slower on CPUs without it)."""
    if value != "auto":
        return value
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
