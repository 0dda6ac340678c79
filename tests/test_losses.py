"""Losses: masked BCE with uncertainty policies, InfoNCE (also over two gloo processes), local alignment, grounding."""

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmrad.config.labels import apply_uncertainty
from mmrad.models.losses import (
    classification_loss,
    contrastive_loss,
    gather_with_grad,
    grounding_loss,
    local_alignment_loss,
    uncertainty_targets,
)

pytestmark = pytest.mark.usefixtures("single_thread")

NAN = float("nan")


def test_nan_labels_contribute_nothing():
    logits = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([[1.0, NAN, 0.0, NAN], [NAN, NAN, 1.0, 0.0], [0.0, NAN, NAN, NAN]])
    loss = classification_loss(logits, labels, ["ignore"] * 4)
    loss.backward()
    known = ~torch.isnan(labels)
    assert torch.all(logits.grad[~known] == 0) and torch.all(logits.grad[known] != 0)
    expected = F.binary_cross_entropy_with_logits(logits[known], labels[known])
    torch.testing.assert_close(loss, expected)
    with torch.no_grad():
        moved = logits.detach().clone()
        moved[~known] += 100.0
    torch.testing.assert_close(classification_loss(moved, labels, ["ignore"] * 4), loss.detach())


def test_all_unknown_labels_give_zero_loss_with_a_graph():
    logits = torch.randn(2, 3, requires_grad=True)
    loss = classification_loss(logits, torch.full((2, 3), NAN), ["ignore"] * 3)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


@pytest.mark.parametrize(
    "policy, target, counts",
    [("ignore", 0.0, False), ("ones", 1.0, True), ("zeros", 0.0, True)],
)
def test_uncertainty_policy(policy, target, counts):
    labels = torch.tensor([[-1.0, 1.0], [0.0, -1.0]])
    targets, mask = uncertainty_targets(labels, [policy, "ignore"])
    assert targets[0, 0].item() == target and bool(mask[0, 0]) is counts
    assert bool(mask[1, 1]) is False  # the second finding ignores its uncertain label
    assert targets[0, 1].item() == 1.0 and targets[1, 0].item() == 0.0 and mask[0, 1] and mask[1, 0]


def test_uncertainty_targets_match_the_numpy_policy_code():
    rng = np.random.default_rng(0)
    labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=(20, 3)).astype(np.float32)
    policies = ["ignore", "ones", "zeros"]
    targets, mask = uncertainty_targets(torch.from_numpy(labels), policies)
    np_targets, np_mask = apply_uncertainty(labels, policies)
    np.testing.assert_array_equal(mask.numpy(), np_mask)
    np.testing.assert_array_equal(targets.numpy()[np_mask], np_targets[np_mask])


def test_contrastive_loss_is_clip_infonce():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(4, 8), dim=-1)
    texts = F.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * images @ texts.t()
    labels = torch.arange(4)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(contrastive_loss(images, texts, scale), expected)
    assert contrastive_loss(images, images, torch.tensor(100.0)).item() < 1e-3


def test_local_alignment_loss_prefers_matching_pairs_and_is_finite():
    torch.manual_seed(0)
    patches = torch.randn(3, 6, 8)
    words = patches[:, :4].clone().requires_grad_()  # each report's words are its own image's patches
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2] = False  # a report without words
    loss = local_alignment_loss(words, mask, patches)
    assert math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(words.grad).all()
    mismatched = local_alignment_loss(words.detach().roll(1, dims=0), mask.roll(1, dims=0), patches)
    assert loss < mismatched


def _grounding_case():
    """One image, two findings, a 2 x 2 patch grid over a 4 x 4 input: finding 0's mask covers the top-left patch
    fully and the top-right patch half."""
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :2, :2] = 1
    masks[0, 0, :2, 2] = 1  # half of the top-right patch
    masks[0, 1, 2:, 2:] = 1
    return masks, torch.tensor([[True, True]])


def test_grounding_loss_is_the_kl_divergence_from_the_pooled_mask():
    masks, valid = _grounding_case()
    target = torch.tensor([2 / 3, 1 / 3, 0.0, 0.0])  # mask shares 1 and 1/2 of the patches, normalised
    uniform = torch.full((1, 2, 2, 2), 0.25)  # maps over the 2 x 2 grid
    labels = torch.tensor([[1.0, 0.0]])  # only finding 0 is present
    expected = float((target[:2] * torch.log(target[:2] / 0.25)).sum())
    assert float(grounding_loss(uniform, masks, valid, labels)) == pytest.approx(expected, rel=1e-5)
    perfect = torch.stack([target, torch.full((4,), 0.25)])[None].unflatten(-1, (2, 2))
    assert float(grounding_loss(perfect, masks, valid, labels)) == pytest.approx(0.0, abs=1e-6)


def test_grounding_loss_counts_only_present_findings_with_a_mask():
    masks, valid = _grounding_case()
    attention = torch.softmax(torch.randn(1, 2, 4), -1).unflatten(-1, (2, 2)).requires_grad_()
    for labels, ok in (
        ([[0.0, 0.0]], [[True, True]]),
        ([[NAN, -1.0]], [[True, True]]),
        ([[1.0, 1.0]], [[False, False]]),
    ):
        loss = grounding_loss(attention, masks, torch.tensor(ok), torch.tensor(labels))
        assert float(loss.detach()) == 0.0
        loss.backward()  # still attached to the graph
    empty = torch.zeros_like(masks)  # a present finding whose mask is empty has nowhere to look either
    assert float(grounding_loss(attention, empty, valid, torch.tensor([[1.0, 1.0]])).detach()) == 0.0


def test_grounding_loss_moves_attention_into_the_mask():
    masks, valid = _grounding_case()
    scores = torch.zeros(1, 2, 4, requires_grad=True)
    labels = torch.tensor([[1.0, 1.0]])
    inside = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]])
    before = float((torch.softmax(scores.detach(), -1) * inside).sum())
    optimizer = torch.optim.SGD([scores], lr=1.0)
    for _ in range(20):
        optimizer.zero_grad()
        grounding_loss(torch.softmax(scores, -1).unflatten(-1, (2, 2)), masks, valid, labels).backward()
        optimizer.step()
    after = torch.softmax(scores.detach(), -1)
    assert float((after * inside).sum()) > before + 0.8
    assert int(after[0, 0].argmax()) == 0 and int(after[0, 1].argmax()) == 3


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 2)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0


# ----------------------------------------------------------------------------------------------------------------
# Two gloo processes: the loss is over the global batch and the gradients equal single-process ones
# ----------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch(n: int):
    generator = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(n, 8, generator=generator), dim=-1), F.normalize(
        torch.randn(n, 8, generator=generator), dim=-1
    )


SIZES = [[3, 3], [4, 2]]  # equal shards, and a short last batch on one process


def _rank_main(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for sizes in SIZES:
            images, texts = _global_batch(sum(sizes))
            start = sum(sizes[:rank])
            local_images = images[start : start + sizes[rank]].clone().requires_grad_()
            local_texts = texts[start : start + sizes[rank]].clone().requires_grad_()
            gathered, offset = gather_with_grad(local_images)
            loss = contrastive_loss(local_images, local_texts, torch.tensor(10.0))
            loss.backward()
            grads = local_images.grad.tolist(), local_texts.grad.tolist()
            queue.put((str(sizes), rank, gathered.shape[0], offset, loss.item(), *grads))
    finally:
        dist.destroy_process_group()


@pytest.mark.multiproc
def test_contrastive_loss_over_two_gloo_processes():
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in range(2 * len(SIZES)))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for sizes in SIZES:
        ranks = [r[1:] for r in results if r[0] == str(sizes)]
        n = sum(sizes)
        assert [r[1] for r in ranks] == [n, n] and [r[2] for r in ranks] == [0, sizes[0]]
        images, texts = _global_batch(n)
        images.requires_grad_()
        texts.requires_grad_()
        full = contrastive_loss(images, texts, torch.tensor(10.0))
        # each process's loss is the mean over its own rows of the global-batch loss
        weighted = sum(size * r[3] for size, r in zip(sizes, ranks, strict=True)) / n
        assert weighted == pytest.approx(full.item(), rel=1e-5)
        if sizes[0] == sizes[1]:  # DDP averages gradients: with equal shards that is the global loss's gradient
            full.backward()
            torch.testing.assert_close(torch.tensor(ranks[0][4] + ranks[1][4]) / 2, images.grad)
            torch.testing.assert_close(torch.tensor(ranks[0][5] + ranks[1][5]) / 2, texts.grad)
