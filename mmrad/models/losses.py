"""Losses: image<->report InfoNCE over the global batch, masked multi-label BCE, and GLoRIA-style local alignment.

Distributed contrastive learning: each process gathers every process's features WITH gradient
(:func:`gather_with_grad`: all_gather forward, all_reduce + slice backward) and computes a *local* loss, its
own images against all reports and its own reports against all images. DDP then averages the gradients, which
equals the gradient of the loss over the global batch. (``accelerator.gather`` carries no gradient.)

The grounding loss supervises the decoder's cross-attention with finding masks (or boxes drawn as masks): the
mask, area-pooled to the patch grid and normalised, is the target distribution of that finding query's attention
over the patches, and the loss is the KL divergence from it (attention supervision, as box- or mask-supervised
grounding models do).

The local loss follows GLoRIA (Huang et al., ICCV 2021): each word attends over the image's patches, the
word-to-context cosines are aggregated into an image-report score, and the scores go through InfoNCE.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmrad.config.schema import UNCERTAINTY_POLICIES

# GLoRIA's aggregation sharpness (gamma_2) and score scale (gamma_3)
LOCAL_AGGREGATION = 5.0
LOCAL_SCALE = 10.0


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for this process's rows (all_reduce, then slice).

    Equivalent to ``torch.distributed.nn.functional.all_gather`` (deprecated in recent torch) and works on gloo.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every process's loss depends on these rows
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` (B_r, ...) from every process along dim 0, keeping the autograd graph.

    Processes may hold different batch sizes (a short last batch): tensors are padded to the largest for the
    collective and trimmed after. Without an initialised process group (or with one process) ``x`` comes back as is.
    Tensors that do not require grad are gathered without it.

    Returns:
        ``(gathered (sum B_r, ...), offset)`` where ``offset`` is the index of this process's first row.
    """
    if not _distributed():
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = F.pad(x, [0, 0] * (x.ndim - 1) + [0, max(sizes) - x.shape[0]])
    if x.is_floating_point() and x.requires_grad:
        parts = _AllGather.apply(padded).split(padded.shape[0])
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
    gathered = torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])
    return gathered, sum(sizes[:rank])


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    pair_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between this process's rows and the global batch.

    Args:
        image_embeds, text_embeds: (B, P) L2-normalised; row i of both is a pair.
        logit_scale: scalar, 1 / temperature (already exponentiated).
        pair_mask: (B,) bool, the rows that have a report (a corpus may mix rows with and without): only those pairs
            count, as targets and as negatives. None = all.

    Identical reports in a batch (the many "no acute cardiopulmonary process") need no special care: their
    embeddings are equal, and one-hot targets then give the same loss and gradient as treating them all as positives.

    Returns:
        Scalar loss: mean over local images of image->text CE and over local texts of text->image CE, halved (0,
        still attached to the graph, when no local row has a report).
    """
    all_images, offset = gather_with_grad(image_embeds)
    all_texts, _ = gather_with_grad(text_embeds)
    b = image_embeds.shape[0]
    local = torch.arange(offset, offset + b, device=image_embeds.device)
    logits_i2t = logit_scale * image_embeds @ all_texts.t()  # (B, B_global)
    logits_t2i = logit_scale * text_embeds @ all_images.t()
    if pair_mask is None:
        return (F.cross_entropy(logits_i2t, local) + F.cross_entropy(logits_t2i, local)) / 2
    pair_mask = pair_mask.to(torch.bool)
    all_pairs, _ = gather_with_grad(pair_mask.to(torch.uint8))
    unpaired = ~all_pairs.to(torch.bool)
    # finite, so that the backward pass stays finite; far below any cosine logit (|logit| <= 100)
    logits_i2t = logits_i2t.masked_fill(unpaired[None], -1.0e4)[pair_mask]
    logits_t2i = logits_t2i.masked_fill(unpaired[None], -1.0e4)[pair_mask]
    if logits_i2t.shape[0] == 0:
        return 0.0 * (image_embeds.sum() + text_embeds.sum())
    target = local[pair_mask]
    return (F.cross_entropy(logits_i2t, target) + F.cross_entropy(logits_t2i, target)) / 2


def model_loss(model, out, *, labels=None, masks=None, mask_valid=None, report_mask=None,
               custom_queries: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:  # fmt: skip
    """The configured loss terms of one forward pass and their weighted sum (``model.config.loss``).

    Args:
        model: the :class:`~mmrad.models.modeling.MMRadModel` (its config, uncertainty policies and maps).
        out: its :class:`~mmrad.models.outputs.MMRadOutput` before the losses.
        labels, masks, mask_valid, report_mask: as :meth:`MMRadModel.forward` takes them.
        custom_queries: the queries were not the finding descriptions (no grounding term: masks are per finding).

    Returns:
        ``(terms, loss)``: each unweighted term, and the weighted sum (None when no term applies).
    """
    weights, terms = model.config.loss, {}
    if out.text_embeds is not None and weights.contrastive > 0:
        terms["contrastive"] = contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale, report_mask)
    if labels is not None and weights.classification > 0:
        terms["classification"] = classification_loss(out.logits, labels, model.query_policies(out.logits.shape[-1]))
    rows = slice(None) if report_mask is None else report_mask.to(torch.bool)  # rows with a report
    if out.word_embeds is not None and (report_mask is None or bool(rows.any())):
        terms["local"] = local_alignment_loss(out.word_embeds[rows], out.word_mask[rows], out.patch_embeds[rows],
                                              weights.local_temperature)  # fmt: skip
    if weights.grounding > 0 and masks is not None and labels is not None and not custom_queries:
        maps = model.attention_maps(out.query_attentions, out.grid)  # the maps grounding shows
        terms["grounding"] = grounding_loss(maps, masks, mask_valid, labels)
    uses = {"contrastive": out.image_embeds.sum() + out.logit_scale, "classification": out.logits.sum()}
    return terms, (total_loss(terms, weights, uses) if terms else None)


def total_loss(terms: dict[str, torch.Tensor], weights, uses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the loss ``terms`` weighted by ``weights`` (the ``model.loss`` config).

    ``uses`` maps a term's name to (a sum of) the outputs only that term reads: when the term is absent they join the
    graph with zero gradient, so that every trainable parameter receives a gradient each step and DDP needs no
    ``find_unused_parameters``.
    """
    loss = sum(getattr(weights, name) * value for name, value in terms.items())
    for name, outputs in uses.items():
        if name not in terms:
            loss = loss + 0.0 * outputs
    return loss


def uncertainty_targets(labels: torch.Tensor, policies: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (B, K) in {1, 0, -1, NaN} -> (targets in {0, 1}, bool mask of entries that count); the torch twin of
    :func:`mmrad.config.labels.apply_uncertainty`."""
    if labels.shape[-1] != len(policies):
        raise ValueError(f"labels have {labels.shape[-1]} columns but the model has {len(policies)} findings")
    unknown = sorted(set(policies) - set(UNCERTAINTY_POLICIES))
    if unknown:
        raise ValueError(f"unknown uncertainty policies {unknown}")
    mask = ~torch.isnan(labels)
    targets = torch.where(mask, labels, torch.zeros_like(labels))
    uncertain = targets == -1
    ones = torch.tensor([p == "ones" for p in policies], device=labels.device)
    ignore = torch.tensor([p == "ignore" for p in policies], device=labels.device)
    targets = torch.where(uncertain, ones.to(labels.dtype).expand_as(targets), targets)
    mask = mask & ~(uncertain & ignore)
    return targets, mask


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, policies: list[str]) -> torch.Tensor:
    """Binary cross-entropy over the entries that count (NaN = not mentioned never counts; uncertain per policy).

    Args:
        logits: (B, K) finding logits.
        labels: (B, K) float, 1 / 0 / -1 / NaN.
        policies: one of ``ignore`` / ``ones`` / ``zeros`` per finding.

    Returns:
        Scalar mean over counted entries (0, still attached to the graph, when none count).
    """
    targets, mask = uncertainty_targets(labels.to(logits.dtype), policies)
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def local_alignment_loss(
    word_embeds: torch.Tensor,
    word_mask: torch.Tensor,
    patch_embeds: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """GLoRIA-style word<->patch alignment over this process's batch.

    Args:
        word_embeds: (B, L, P) projected token states of the reports.
        word_mask: (B, L) bool, the words that count (no padding or special tokens).
        patch_embeds: (B, N, P) projected patch tokens of the images.
        temperature: sharpness of each word's attention over the patches.

    Returns:
        Scalar InfoNCE loss over the (B, B) image-report local scores.
    """
    words = F.normalize(word_embeds, dim=-1)
    patches = F.normalize(patch_embeds, dim=-1)
    sim = torch.einsum("tlp,inp->itln", words, patches)  # (B_img, B_txt, L, N)
    attn = (sim / temperature).softmax(-1)
    context = F.normalize(torch.einsum("itln,inp->itlp", attn, patches), dim=-1)  # (B_img, B_txt, L, P)
    cos = (context * words.unsqueeze(0)).sum(-1)  # (B_img, B_txt, L)
    cos = cos.masked_fill(~word_mask.unsqueeze(0), -1.0e4)  # finite, so that backward stays finite
    scores = torch.logsumexp(LOCAL_AGGREGATION * cos, dim=-1) / LOCAL_AGGREGATION  # (B_img, B_txt)
    has_words = word_mask.any(-1).unsqueeze(0)  # (1, B_txt)
    scores = torch.where(has_words, scores, torch.zeros_like(scores))
    labels = torch.arange(scores.shape[0], device=scores.device)
    logits = LOCAL_SCALE * scores
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def grounding_loss(maps: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(mask distribution || attention) over the present findings that have a mask.

    Args:
        maps: (B, K, h, w) each finding query's attention over the patch grid (each map sums to 1), as
            :meth:`~mmrad.models.modeling.MMRadModel.attention_maps` returns it.
        masks: (B, K, S, S) float 0/1 at the model input's pixels.
        valid: (B, K) bool, the masks that exist.
        labels: (B, K) 1 / 0 / -1 / NaN; only findings labelled 1 count (an absent finding has nowhere to look).

    Returns:
        Scalar mean over the counted pairs (0, still attached to the graph, when none count).
    """
    attention = maps.flatten(-2)  # (B, K, N)
    target = F.adaptive_avg_pool2d(masks.to(maps.dtype), maps.shape[-2:]).flatten(-2)  # mask share per patch
    mass = target.sum(-1)
    count = valid.to(torch.bool) & (labels == 1) & (mass > 0)
    target = target / mass.clamp(min=1e-12).unsqueeze(-1)
    kl = (torch.xlogy(target, target) - target * torch.log(attention.clamp(min=1e-12))).sum(-1)  # (B, K)
    return (kl * count).sum() / count.sum().clamp(min=1)
