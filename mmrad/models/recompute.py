"""Recompute activation outputs in the backward pass instead of keeping them.

In a transformer MLP, ``fc2(act(fc1(x)))``, autograd keeps two 4x-wide tensors per token: the activation's input
(its own backward needs it) and its output (``fc2``'s weight gradient needs it, and so does a LoRA adapter on
``fc2``, even with ``fc2`` frozen). The output is a pointwise function of the input, so it need not be kept: while
:class:`ActivationRecompute` is active, a saved activation output is packed as a reference to the input (which
autograd keeps anyway) and recomputed when the backward pass unpacks it, with
``torch.autograd.graph.saved_tensors_hooks``. The cost is one more pointwise pass per MLP in the backward pass.

Only the activation modules of transformer MLPs are handled (GELU and SiLU in their torch, open_clip and transformers
forms), and only a saved tensor that is exactly an activation's output (not a view or a copy of it); anything else
is kept as usual. Inside gradient-checkpointed blocks the checkpoint's own hooks apply instead.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

ACTIVATION_CLASS_NAMES = {
    "QuickGELU",  # open_clip
    "GELUActivation",  # transformers
    "NewGELUActivation",
    "FastGELUActivation",
    "QuickGELUActivation",
    "GELUTanh",
    "PytorchGELUTanh",
    "AccurateGELUActivation",
    "SiLUActivation",
}


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, (nn.GELU, nn.SiLU)) or type(module).__name__ in ACTIVATION_CLASS_NAMES


class _Recompute:
    """A packed activation output: the input it is recomputed from, the function, and the saved tensor's geometry
    (the consumer may have saved a reshaped view of the output, e.g. ``F.linear`` flattening (B, N, D) to 2-D)."""

    __slots__ = ("input", "function", "size", "stride")

    def __init__(self, input: torch.Tensor, function: nn.Module, size: torch.Size, stride: tuple[int, ...]):
        self.input, self.function, self.size, self.stride = input, function, size, stride


class ActivationRecompute:
    """Watches the activation modules under ``roots`` and, around every forward of ``owner``, makes autograd keep a
    reference to each activation's input instead of its output.

    Args:
        roots: the modules whose activations are handled (e.g. the two towers).
        owner: the module whose forward calls are covered (e.g. the whole model); its forward hooks open and close
            the saved-tensor hooks, also when the forward raises.
    """

    def __init__(self, roots: list[nn.Module], owner: nn.Module):
        # storage address -> (weak output, weak input, module); weak, so that the table keeps nothing alive (inside
        # a checkpointed block the input is not saved, and must be freed as usual)
        self._outputs: dict[int, tuple[weakref.ref, weakref.ref, nn.Module]] | None = None
        self._context = None
        self._depth = 0
        self._handles = [
            module.register_forward_hook(self._record)
            for root in roots
            for module in root.modules()
            if is_activation(module)
        ]
        self._handles.append(owner.register_forward_pre_hook(self._enter))
        self._handles.append(owner.register_forward_hook(self._exit, always_call=True))

    @property
    def num_activations(self) -> int:
        return len(self._handles) - 2

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, module: nn.Module, inputs: tuple, output) -> None:  # returns None: the output stays as it is
        if self._outputs is None or not isinstance(output, torch.Tensor) or len(inputs) != 1:
            return
        (x,) = inputs
        if (
            isinstance(x, torch.Tensor)
            and output.requires_grad
            and output.is_contiguous()
            and output.storage_offset() == 0
            and output.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()  # not in place
        ):
            self._outputs[output.untyped_storage().data_ptr()] = (weakref.ref(output), weakref.ref(x), module)

    def _pack(self, tensor: torch.Tensor):
        """A saved tensor that covers a live activation output's whole storage (the output or a reshaped view of
        it) is packed as its recipe; anything else is kept."""
        if self._outputs is None or tensor.layout != torch.strided:
            return tensor
        entry = self._outputs.get(tensor.untyped_storage().data_ptr())
        output, x = (entry[0](), entry[1]()) if entry is not None else (None, None)
        if (
            output is None
            or x is None
            or output.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr()
            or tensor.storage_offset() != 0
            or tensor.numel() != output.numel()
            or tensor.dtype != output.dtype
        ):
            return tensor
        return _Recompute(x, entry[2], tensor.size(), tensor.stride())

    @staticmethod
    def _unpack(packed):
        if isinstance(packed, _Recompute):
            with torch.no_grad():
                output = packed.function(packed.input)
            return output.as_strided(packed.size, packed.stride)
        return packed

    def _enter(self, module: nn.Module, args) -> None:
        self._depth += 1
        if self._depth == 1:  # a nested forward (the model calling itself) stays in the outer context
            self._outputs = {}
            self._context = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            self._context.__enter__()

    def _exit(self, module: nn.Module, args, output) -> None:
        self._depth -= 1
        if self._depth == 0:
            context, self._context, self._outputs = self._context, None, None
            context.__exit__(None, None, None)


def set_activation_recompute(model, enable: bool) -> None:
    """Recompute the activation outputs of ``model``'s two towers during its forward, or stop (the watcher is kept
    as ``model.activation_recompute``)."""
    if model.activation_recompute is not None:
        model.activation_recompute.remove()
    model.activation_recompute = ActivationRecompute([model.vision, model.text], owner=model) if enable else None
