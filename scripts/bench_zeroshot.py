"""Zero-shot throughput of mmrad's contrastive scorer vs raw open_clip with the same weights, plus the caches.

One open_clip model (a small ViT and open_clip's own text transformer, random weights built from a config dict) is
saved as a safetensors checkpoint and loaded into mmrad with ``MMRadModel.from_towers`` (``vision.model_cfg`` +
``pretrained=FILE``, ``text.source: open_clip``); its projections are set to the identity and its temperature to
open_clip's, then it is saved and reloaded with ``from_pretrained``, so both sides compute the same probabilities
(checked). Figures, each measured side by side in this run (alternating repeats, best of each):

* ``zeroshot_throughput``: N images x K CheXpert queries (each an ensemble of the bank's positive and negative
  phrasings), batches of B: mmrad's ``ZeroShotClassifier`` (query embeddings, then image features and scores per
  batch) vs open_clip's ``encode_text`` + ``encode_image`` + the same ensembles and pairwise softmax. Goal >= 0.97.
* ``zeroshot_cached_images``: ``run_zero_shot`` on PNG files with ``cache_images``: a second query set over the same
  images vs a cold run; the image tower must not run (counted with a forward hook).
* ``zeroshot_repeated_queries``: ``run_zero_shot`` with the text cache on disk (``cache_dir``) and images cached: the
  same query set again (a new run) vs the first time; the text tower must not run (counted).

    .venv/bin/python scripts/bench_zeroshot.py [--images 64] [--batch-size 32] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from benchlib import add_common_arguments, record  # noqa: E402
from PIL import Image  # noqa: E402

from mmrad.config.schema import MMRadConfig, PreprocessConfig, TextConfig, VisionConfig  # noqa: E402
from mmrad.inference.zeroshot import ZeroShotClassifier, query_prompts, run_zero_shot  # noqa: E402
from mmrad.models.modeling import MMRadModel  # noqa: E402

QUERIES = ["Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax"]
OTHER_QUERIES = ["Consolidation", "Pneumonia", "Lung Opacity", "Fracture", "left apical opacity"]
MODEL_CFG = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 224, "layers": 6, "width": 192, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 192, "heads": 4, "layers": 4},
}


def build_models(folder: Path, device: str) -> tuple[torch.nn.Module, MMRadModel]:
    """The open_clip model and an mmrad model folder holding exactly its weights (loaded back from disk)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip = open_clip.CLIP(**MODEL_CFG)
    checkpoint = folder / "open_clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(checkpoint))
    mean, std = list(open_clip.OPENAI_DATASET_MEAN), list(open_clip.OPENAI_DATASET_STD)
    config = MMRadConfig(
        vision=VisionConfig(model_cfg=MODEL_CFG, pretrained=str(checkpoint)),
        text=TextConfig(source="open_clip"),
        projection_dim=MODEL_CFG["embed_dim"],
        preprocess=PreprocessConfig(image_size=224, mean=mean, std=std),
    )
    model = MMRadModel.from_towers(config)
    with torch.no_grad():  # the joint space is open_clip's own: identity projections, open_clip's temperature
        model.image_proj.weight.copy_(torch.eye(model.image_proj.weight.shape[0]))
        model.text_proj.weight.copy_(torch.eye(model.text_proj.weight.shape[0]))
        model.logit_scale.copy_(clip.logit_scale)
    model.save_pretrained(folder / "mmrad")
    return clip.to(device).eval(), MMRadModel.from_pretrained(folder / "mmrad").to(device).eval()


def open_clip_zero_shot(clip, tokenizer, batches: list[torch.Tensor], prompts) -> torch.Tensor:
    """What a user writes with raw open_clip: encode the prompts, ensemble them, then score each image batch."""
    with torch.inference_mode():
        texts = list(dict.fromkeys(t for p in prompts for t in p.positive + p.negative))
        device = next(clip.parameters()).device
        table = dict(zip(texts, F.normalize(clip.encode_text(tokenizer(texts).to(device)), dim=-1), strict=True))

        def ensemble(group):
            return F.normalize(torch.stack([table[t] for t in group]).mean(0), dim=-1)

        pos = torch.stack([ensemble(p.positive) for p in prompts])
        neg = torch.stack([ensemble(p.negative) for p in prompts])
        scale = clip.logit_scale.exp().clamp(max=100.0)
        out = []
        for pixels in batches:
            image = F.normalize(clip.encode_image(pixels.to(device)), dim=-1)
            pair = torch.stack([image @ pos.t(), image @ neg.t()], dim=-1) * scale
            out.append(torch.softmax(pair, dim=-1)[..., 0])
        return torch.cat(out)


def mmrad_zero_shot(model, batches: list[torch.Tensor]) -> torch.Tensor:
    """mmrad's path of run_zero_shot without the file decoding: a new classifier (cold text cache) per run."""
    classifier = ZeroShotClassifier(model, "contrastive", prompts="chexpert")
    query_embeds = classifier.query_embeddings(classifier.query_set(QUERIES))
    return torch.cat([classifier.score_features(classifier.image_features(b), query_embeds) for b in batches])


def count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="N images (default 64)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats of each side (best is kept)")
    add_common_arguments(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip, model = build_models(tmp, args.device)
        tokenizer = open_clip.get_tokenizer("ViT-B-16")  # open_clip's BPE tokenizer, 77 tokens
        prompts = [query_prompts(q, ZeroShotClassifier(model, "contrastive").bank) for q in QUERIES]
        rng = np.random.default_rng(0)
        pixels = torch.from_numpy(rng.normal(size=(args.images, 3, 224, 224)).astype(np.float32))
        batches = list(pixels.split(args.batch_size))

        ref = open_clip_zero_shot(clip, tokenizer, batches, prompts)
        ours = mmrad_zero_shot(model, batches)
        diff = (ref.cpu() - ours.cpu()).abs().max().item()
        print(f"same weights: max |mmrad - open_clip| probability difference {diff:.2e}")
        if diff > 1e-4:
            raise SystemExit("mmrad and open_clip disagree: the comparison would not be fair")

        times = {"mmrad": [], "open_clip": []}
        for r in range(args.repeats):  # alternate, and flip the order each repeat, so noise hits both sides
            order = ["mmrad", "open_clip"] if r % 2 == 0 else ["open_clip", "mmrad"]
            for side in order:
                if side == "mmrad":
                    times[side].append(timed(mmrad_zero_shot, model, batches))
                else:
                    times[side].append(timed(open_clip_zero_shot, clip, tokenizer, batches, prompts))
        for side, ts in times.items():
            print(f"{side:>9}: " + " ".join(f"{t:.2f}" for t in ts) + f" s (median {statistics.median(ts):.2f})")
        ours_ips, theirs_ips = args.images / min(times["mmrad"]), args.images / min(times["open_clip"])
        unit = f"img/s, {len(QUERIES)} queries, batch {args.batch_size}"
        record(args, "zeroshot_throughput", value=ours_ips, baseline=theirs_ips, ratio=ours_ips / theirs_ips,
               goal=0.97, higher_is_better=True, unit=unit)  # fmt: skip

        # the caches, through run_zero_shot on image files
        folder = tmp / "images"
        folder.mkdir()
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(folder / f"{i:04d}.png")
        vision, text = count_calls(model.vision), count_calls(model.text)
        kwargs = {"scorer": "contrastive", "prompts": "chexpert", "batch_size": args.batch_size, "progress": False}
        cold, warm, first, repeat = [], [], [], []
        for r in range(max(1, (args.repeats + 1) // 2)):  # these differ by 3x and more: fewer repeats do
            kwargs["cache_images"] = tmp / f"image-cache-{r}"
            cold.append(timed(run_zero_shot, model, [folder], QUERIES, **kwargs))
            vision.clear()
            warm.append(timed(run_zero_shot, model, [folder], OTHER_QUERIES, **kwargs))
            assert not vision, f"the image tower ran {len(vision)} times over cached images"
            kwargs["cache_dir"] = tmp / f"text-cache-{r}"
            first.append(timed(run_zero_shot, model, [folder], QUERIES, **kwargs))
            text.clear()
            repeat.append(timed(run_zero_shot, model, [folder], QUERIES, **kwargs))
            assert not text and not vision, f"text tower {len(text)}, image tower {len(vision)} forward calls"
            del kwargs["cache_dir"]
        print("image-tower forward calls over cached images: 0; text-tower forward calls for a repeated query set: 0")
        record(args, "zeroshot_cached_images", value=min(warm), baseline=min(cold), ratio=min(warm) / min(cold),
               goal=0.5, higher_is_better=False,
               unit=f"s per run, {args.images} PNGs, new query set over cached images vs cold")  # fmt: skip
        record(args, "zeroshot_repeated_queries", value=min(repeat), baseline=min(first),
               ratio=min(repeat) / min(first), goal=0.5, higher_is_better=False,
               unit=f"s per run, {args.images} cached images, same query set again vs first")  # fmt: skip


if __name__ == "__main__":
    main()
