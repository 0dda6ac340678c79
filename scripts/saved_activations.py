"""What autograd keeps for the backward pass of one training forward, by module: the activation memory behind
``scripts/bench_lora.py``'s figures.

Builds the model of ``bench_lora.py`` (ViT-B/16 at 224 px, a BERT-base-sized text tower, the 4-layer decoder; random
weights) with or without LoRA, runs one forward in training mode on a batch of ``--batch-size`` and records every
tensor autograd saves (``torch.autograd.graph.saved_tensors_hooks``), once per storage and leaving out parameters,
under the innermost module that saved it (block indices folded into ``N``).

    .venv/bin/python scripts/saved_activations.py [--lora] [--batch-size 8] [--top 20]
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_lora import build  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora", action="store_true", help="the LoRA arm (default: full fine-tuning)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=128)
    parser.add_argument("--top", type=int, default=20, help="modules listed")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    model, _ = build(args.lora, args.text_length)
    model.train()
    n, generator = args.batch_size, torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(n, 3, 224, 224, generator=generator),
        "input_ids": torch.randint(5, len(model.tokenizer), (n, args.text_length), generator=generator),
        "attention_mask": torch.ones(n, args.text_length, dtype=torch.long),
        "labels": torch.randint(0, 2, (n, len(model.label_names)), generator=generator).float(),
    }
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    where = ["(model)"]

    def enter(module, inputs, name):
        where.append(re.sub(r"\.\d+(?=\.|$)", ".N", name))

    def leave(module, inputs, output):  # returns None: a forward hook's return value would replace the output
        where.pop()

    for name, module in model.named_modules():
        if name:
            module.register_forward_pre_hook(functools.partial(enter, name=name))
            module.register_forward_hook(leave)
    seen: set[int] = set()
    saved: collections.Counter[str] = collections.Counter()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved[where[-1]] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**batch)
    arm = "LoRA" if args.lora else "full"
    print(f"{arm}, batch {n}: autograd keeps {sum(saved.values()) / 2**30:.3f} GiB in {len(seen)} storages")
    for name, size in saved.most_common(args.top):
        print(f"  {name:<72} {size / 2**20:8.1f} MB")


if __name__ == "__main__":
    main()
