"""LoRA on ``nn.MultiheadAttention`` without merging weights on every forward.

``nn.MultiheadAttention`` reads its packed q/k/v and output weights directly, so peft's LoRA layer for it merges the
adapters into fresh copies of those weights before each forward and unmerges after. Training then differentiates
through the merged (D, 3D) and (D, D) matrices: the backward pass computes their full weight gradients, the matmuls
LoRA exists to skip, and keeps the merged copies alive.

:class:`UnmergedLoraMultiheadAttention` keeps peft's layer (its parameters, state-dict names, ``merge`` /
``unmerge`` / unloading) and replaces only the forward of the call open_clip's blocks make — self-attention with
``need_weights=False`` and no or an additive float mask: the projections are computed as ``x W^T + s * B(A(x))``, the
attention with ``F.scaled_dot_product_attention``, and the output projection through peft's unmerged LoRA ``Linear``.
Any other call (cross-attention, attention weights requested, key padding masks, boolean masks, merged or disabled
adapters, several active adapters) goes through peft's own forward, which merges.

Merging is mmrad's own too: peft 0.21's ``merge`` writes ``W + dW`` into the output projection and then calls the
wrapped ``Linear.merge``, which adds ``dW`` again (``W + 2 dW``; its ``unmerge`` subtracts twice, so round trips hide
it; huggingface/peft pull request 3774). :meth:`merge` applies each delta once, so a merged model (``merge_lora``,
unloading) computes what the unmerged adapters compute.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import MultiheadAttention as PeftLoraMultiheadAttention
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

_SUPPORTED_KWARGS = {"need_weights", "attn_mask", "key_padding_mask", "average_attn_weights", "is_causal"}


class UnmergedLoraMultiheadAttention(PeftLoraMultiheadAttention):
    def _unmerged_plan(self, query: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The adapter to apply unmerged, or None when this call must take peft's path."""
        if self.disable_adapters or self.merged or len(args) > 2 or set(kwargs) - _SUPPORTED_KWARGS:
            return None
        key = args[0] if args else kwargs.get("key", query)
        value = args[1] if len(args) > 1 else kwargs.get("value", key)
        if key is not query or value is not query or query.dim() != 3:
            return None
        if kwargs.get("need_weights", True) or kwargs.get("key_padding_mask") is not None or kwargs.get("is_causal"):
            return None
        mask = kwargs.get("attn_mask")
        if mask is not None and not mask.is_floating_point():
            return None
        base = self.get_base_layer()
        if not base._qkv_same_embed_dim or base.bias_k is not None or base.add_zero_attn:
            return None
        adapters = [a for a in self.active_adapters if a in self.lora_A]
        if len(adapters) != 1 or base.out_proj.active_adapters != self.active_adapters:
            return None
        return adapters[0]

    def forward(self, query: torch.Tensor, *args, **kwargs):
        adapter = self._unmerged_plan(query, args, kwargs)
        if adapter is None:
            return super().forward(query, *args, **kwargs)
        base = self.get_base_layer()
        x = query if base.batch_first else query.transpose(0, 1)  # (B, N, D)
        batch, tokens, dim = x.shape
        heads = base.num_heads
        lora = self.lora_B[adapter](self.lora_A[adapter](self.lora_dropout[adapter](x))) * self.scaling[adapter]
        qkv = F.linear(x, base.in_proj_weight, base.in_proj_bias) + lora
        q, k, v = qkv.view(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
        mask = kwargs.get("attn_mask")
        if mask is not None:
            mask = mask.to(q.dtype)
            if mask.dim() == 3:  # (B * H, N, N), as nn.MultiheadAttention takes it
                mask = mask.view(batch, heads, tokens, tokens)
        dropout = base.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = base.out_proj(out.transpose(1, 2).reshape(batch, tokens, dim))  # peft's LoRA Linear, unmerged
        out = out if base.batch_first else out.transpose(0, 1)
        return out.to(query.dtype), None

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add each adapter's delta once to the packed q/k/v and the output projection weights. The merged weights
        are tensors computed from the adapters (so that a merged forward still trains them), as in peft."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        out = base.out_proj.get_base_layer()
        for name in adapter_names:
            if name not in self.lora_A:
                continue
            merged_in = base.in_proj_weight.data.detach() + self.get_delta_weight(name).to(base.in_proj_weight.dtype)
            merged_out = out.weight.data.detach() + base.out_proj.get_delta_weight(name).to(out.weight.dtype)
            if safe_merge and not (torch.isfinite(merged_in).all() and torch.isfinite(merged_out).all()):
                raise ValueError(f"NaNs or infinities in the merged weights: adapter {name!r} is broken")
            del base.in_proj_weight
            base.in_proj_weight = merged_in
            del out.weight
            out.weight = merged_out
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract the merged deltas and register the base weights as frozen parameters again."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        out = base.out_proj.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name not in self.lora_A:
                continue
            weight_in = base.in_proj_weight.data - self.get_delta_weight(name).to(base.in_proj_weight.dtype)
            weight_out = out.weight.data - base.out_proj.get_delta_weight(name).to(out.weight.dtype)
            del base.in_proj_weight
            base.register_parameter("in_proj_weight", nn.Parameter(weight_in, requires_grad=False))
            del out.weight
            out.register_parameter("weight", nn.Parameter(weight_out, requires_grad=False))
