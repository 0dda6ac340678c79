"""Grounding: where in the image a phrase is, as a heatmap at the image's own resolution.

Two methods:

- ``attention``: the phrase is a query of the cross-attention decoder; its attention over the patch tokens (heads
  averaged; the last layer, or the mean of the last k) is the map.
- ``cosine`` (after BioViL): the parameter-free cosine between each projected patch token and the phrase embedding.

A map lives on the model's patch grid, over the square model input. It is smoothed and resampled through the
inverse of the image -> input transform (resize, pad or crop), so it lines up with the original pixels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmrad.errors import MMRadError
from mmrad.processing.maps import cosine_maps, gaussian_blur, to_image_space  # noqa: F401 (grounding's API)

logger = logging.getLogger(__name__)

METHODS = ("attention", "cosine")


@dataclass
class Heatmap:
    phrase: str
    map: np.ndarray  # (H, W) float32 at the image's resolution, in [0, 1] (min-max over the image)
    score: float  # the phrase's presence probability (decoder) for "attention"; the max cosine for "cosine"
    method: str
    finding: str | None = None  # the finding a report sentence was evidence for (report grounding)


def grid_maps(model, pixel_values: torch.Tensor, phrases: list[str], method: str = "attention", last_k=None):
    """Patch-grid maps for a batch: ``(maps (B, Q, h, w), scores (B, Q))``."""
    if method not in METHODS:
        raise MMRadError(f"method must be one of {METHODS}, got {method!r}")
    queries = model.embed_texts(phrases)
    image, memory, grid = model.encode_vision(pixel_values)
    if method == "attention":
        logits, attentions = model.decode(memory, queries, image)
        return model.attention_maps(attentions, grid, last_k), torch.sigmoid(logits)
    maps = cosine_maps(memory, queries, grid)
    return maps, maps.flatten(-2).amax(dim=-1)


@torch.inference_mode()
def ground(model, image, phrases: list[str], *, method: str = "attention", last_k: int | None = None,
           smooth: float = 0.5) -> list[Heatmap]:  # fmt: skip
    """Heatmaps of ``phrases`` on one image.

    Args:
        model: a trained :class:`~mmrad.models.modeling.MMRadModel`.
        image: a file path (DICOM/PNG/JPEG), a float array in [0, 1] ((H, W) or (H, W, 3)), or a
            :class:`~mmrad.processing.image_processor.DecodedImage`.
        phrases: the texts to locate.
        method: ``"attention"`` (decoder cross-attention) or ``"cosine"`` (patch-token cosine, BioViL).
        last_k: average the last k decoder layers' attention (default: the model's ``fusion.attention_layers``).
        smooth: Gaussian sigma in patches.

    Returns:
        One :class:`Heatmap` per phrase, at the image's resolution.
    """
    from mmrad.processing.image_processor import ImageProcessor

    if not phrases:
        raise MMRadError("give at least one phrase to ground")
    processor = ImageProcessor(model.config.preprocess)
    batch = processor(image)  # the model's decoding choices (window, decode size) for a file or an array
    model.eval()
    maps, scores = grid_maps(model, batch["pixel_values"].to(model.device), list(phrases), method, last_k)
    matrix, size = batch["matrices"][0], batch["original_sizes"][0]
    return [
        Heatmap(p, processor.to_original(maps[0, q].cpu(), matrix, size, smooth), float(scores[0, q]), method)
        for q, p in enumerate(phrases)
    ]


def report_phrases(report: str, vocabulary: str = "chexpert") -> list[tuple[str, str]]:
    """``(finding, sentence)`` for every sentence the labeler took as evidence of a positive or uncertain finding."""
    from mmrad.reports.labeler import ReportLabeler

    result = ReportLabeler(vocabulary).label(report)
    out = []
    for finding, evidence in result.evidence.items():
        if result.labels.get(finding) not in (1.0, -1.0):
            continue
        for ev in evidence:
            if ev.value in (1.0, -1.0) and (finding, ev.sentence) not in out:
                out.append((finding, ev.sentence))
    return out


def ground_report(model, image, report: str, *, vocabulary: str = "chexpert", **kwargs) -> list[Heatmap]:
    """A map per evidence sentence of each positive or uncertain finding of ``report``."""
    pairs = report_phrases(report, vocabulary)
    if not pairs:
        logger.warning("the report names no positive or uncertain finding: nothing to ground")
        return []
    maps = ground(model, image, [sentence for _, sentence in pairs], **kwargs)
    for heatmap, (finding, _) in zip(maps, pairs, strict=True):
        heatmap.finding = finding
    return maps


def overlay(image: np.ndarray, heatmap: Heatmap, *, alpha: float = 0.45, cmap: str = "jet", outline=None):
    """The heatmap in colour over the grey image, with a colour bar and the phrase as title (a PIL image).
    ``outline``: a boolean mask of the image's size (e.g. the true finding) drawn as a white contour."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    grey = image if image.ndim == 2 else image.mean(-1)
    height, width = grey.shape
    scale = 6.0 / max(height, width)
    fig, ax = plt.subplots(figsize=(width * scale + 1.2, height * scale + 0.6), dpi=100)
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
    shown = ax.imshow(heatmap.map, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    if outline is not None and np.asarray(outline).any():
        ax.contour(np.asarray(outline, dtype=float), levels=[0.5], colors="white", linewidths=1.2)
    title = heatmap.phrase if len(heatmap.phrase) <= 70 else heatmap.phrase[:67] + "..."
    ax.set_title(f"{title}  ({heatmap.method}, score {heatmap.score:.2f})", fontsize=9)
    ax.axis("off")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def write_grounding(model, images: list[str | Path], out_dir: str | Path, *, phrases: list[str] | None = None,
                    report: str | None = None, method: str = "attention", vocabulary: str = "chexpert",
                    last_k: int | None = None, progress: bool = True) -> Path:  # fmt: skip
    """``mmrad ground``: per image x phrase a float32 ``.npy`` map at the image's resolution and an overlay PNG,
    listed in ``out_dir/index.json`` (image, phrase, finding, score, map, overlay)."""
    from tqdm.auto import tqdm

    from mmrad.files import write_json_atomic
    from mmrad.processing.image_processor import ImageProcessor

    if (phrases is None) == (report is None):
        raise MMRadError("give either phrases or a report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = ImageProcessor(model.config.preprocess)
    index = []
    for i, path in enumerate(tqdm(images, desc="ground", unit="img", disable=not progress or len(images) < 2)):
        decoded = processor.decode(path, keep_original=True)
        image = decoded.original  # maps come back at the file's resolution and are drawn on it
        if report is not None:
            maps = ground_report(model, decoded, report, vocabulary=vocabulary, method=method, last_k=last_k)
        else:
            maps = ground(model, decoded, phrases, method=method, last_k=last_k)
        for q, heatmap in enumerate(maps):
            stem = f"{i:04d}_{Path(path).stem}_{q:02d}"
            np.save(out / f"{stem}.npy", heatmap.map)
            overlay(image, heatmap).save(out / f"{stem}.png")
            index.append({"image": str(path), "phrase": heatmap.phrase, "finding": heatmap.finding,
                          "score": heatmap.score, "method": method, "map": f"{stem}.npy", "overlay": f"{stem}.png",
                          "height": int(heatmap.map.shape[0]), "width": int(heatmap.map.shape[1])})  # fmt: skip
    write_json_atomic(out / "index.json", {"entries": index})
    return out / "index.json"


def load_index(path: str | Path) -> list[dict]:
    return json.loads(Path(path).read_text())["entries"]
