"""Run under two processes (torchrun --nproc_per_node 2, ACCELERATE_USE_CPU=1) by tests/test_distributed.py.

Each rank takes half of a fixed global batch; the contrastive loss is computed through the model with the features
gathered across ranks. Rank 0 writes what it saw: the number of ranks, the mean of the local losses and the
gradients after DDP's averaging, next to the same quantities computed by one process on the whole batch.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from mmrad.config.schema import load_config
from mmrad.models import MMRadModel

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "mmrad" / "config" / "presets"
CHECKED = ("text_proj.weight", "image_proj.weight", "logit_scale", "vision.visual.conv1.weight")


def main(out: str) -> None:
    accelerator = Accelerator(cpu=True)
    cfg = load_config(CONFIGS / "tiny.yaml").model
    cfg.loss.classification = 0.0  # the contrastive term alone
    torch.manual_seed(0)
    model = MMRadModel(cfg).eval()  # no dropout: both computations must see the same network
    generator = torch.Generator().manual_seed(1)
    n = 8
    pixels = torch.randn(n, 3, cfg.preprocess.image_size, cfg.preprocess.image_size, generator=generator)
    reports = [f"finding {w} in the {side} lung" for w, side in zip("abcdefgh", ["left", "right"] * 4, strict=True)]
    tokens = model.tokenize(reports)

    # one process, whole batch, no process group involved: InfoNCE written out
    image = model.encode_image(pixels)
    text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    scale = model.logit_scale.exp().clamp(max=100.0)
    logits = scale * image @ text.t()
    target = torch.arange(n)
    reference = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    reference.backward()
    # what a loss without the cross-process gather would give: InfoNCE within each half of the batch
    halves = [slice(0, n // 2), slice(n // 2, n)]
    ungathered = [
        float(
            (F.cross_entropy(logits[h, h], target[: n // 2]) + F.cross_entropy(logits[h, h].t(), target[: n // 2])) / 2
        )
        for h in halves
    ]
    names = dict(model.named_parameters())
    ref_grads = {k: names[k].grad.detach().clone() for k in CHECKED if k in names}
    model.zero_grad(set_to_none=True)

    ddp = accelerator.prepare(model)
    rank, world = accelerator.process_index, accelerator.num_processes
    rows = slice(rank * n // world, (rank + 1) * n // world)
    output = ddp(pixel_values=pixels[rows], input_ids=tokens["input_ids"][rows],
                 attention_mask=tokens["attention_mask"][rows])  # fmt: skip
    local = output.loss_terms["contrastive"]
    # DDP expects the backward of the whole output: the loss (here equal to the contrastive term), not a piece of it
    assert torch.equal(output.loss.detach(), local.detach())
    accelerator.backward(output.loss)
    losses = accelerator.gather(local.detach()[None]).tolist()
    grads = dict(accelerator.unwrap_model(ddp).named_parameters())
    diffs = {k: float((grads[k].grad - g).abs().max()) for k, g in ref_grads.items()}
    ranks = accelerator.gather(torch.tensor([rank])).tolist()
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps({
            "num_processes": world, "ranks": ranks, "local_losses": losses,
            "reference_loss": float(reference.detach()), "ungathered_losses": ungathered,
            "grad_max_abs_diff": diffs, "grad_scale": {k: float(g.abs().max()) for k, g in ref_grads.items()},
        }))  # fmt: skip
    accelerator.wait_for_everyone()
    # tear the gloo group down before the interpreter exits: left to exit-time destructors, a rank can abort
    # ("terminate called without an active exception") after its work is done
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
