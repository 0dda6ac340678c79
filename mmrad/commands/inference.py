"""Inference commands: ``mmrad zero-shot`` (image x query probabilities) and ``mmrad ground`` (heatmaps)."""

from __future__ import annotations

import argparse

from mmrad.commands import command

# ----------------------------------------------------------------------------------------------------------------
# zero-shot / ground
# ----------------------------------------------------------------------------------------------------------------


@command("zero-shot")
def _add_zero_shot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zero-shot",
        help="score free-text queries on images, folders or a corpus (one probability per image x query)",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="a saved model folder (or Hub repo id)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, or an ingested corpus folder")
    p.add_argument("--queries", nargs="+", required=True, metavar="TEXT", help='e.g. "pleural effusion" pneumothorax')
    p.add_argument("--scorer", choices=["fusion", "contrastive"], default="fusion", help="default fusion")
    p.add_argument(
        "--mode",
        choices=["pairwise", "classes"],
        default="pairwise",
        help="contrastive scorer: positive vs negative prompts per query, or a softmax across queries",
    )
    p.add_argument("--prompts", metavar="BANK", help="prompt bank: chexpert (default) or a FILE.yaml")
    p.add_argument("--split", default="test", help="the split of a corpus input (default test)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cache-dir", metavar="DIR", help="keep query embeddings here across runs")
    p.add_argument(
        "--cache-images",
        metavar="DIR",
        help="keep image features here across runs: a new query set over the same images skips the image tower",
    )
    p.add_argument("--out", required=True, metavar="results.csv")
    p.set_defaults(func=_run_zero_shot)


def _run_zero_shot(args: argparse.Namespace) -> int:
    from mmrad.inference.zeroshot import run_zero_shot, write_results_csv
    from mmrad.models.modeling import MMRadModel
    from mmrad.processes import process_state

    # under `accelerate launch` each process scores a share; rank 0 writes and prints
    state = process_state()
    model = MMRadModel.from_pretrained(args.model)
    result = run_zero_shot(
        model, args.inputs, args.queries, scorer=args.scorer, prompts=args.prompts, mode=args.mode,
        batch_size=args.batch_size, split=args.split, cache_dir=args.cache_dir, cache_images=args.cache_images,
    )  # fmt: skip
    if state.use_distributed:
        import torch.distributed as dist

        dist.destroy_process_group()  # a rank left with a live gloo group may abort at exit
    if not state.is_main_process:
        return 0
    write_results_csv(result, args.out)
    width = max(12, *(len(q) for q in result.queries))
    shown = min(len(result.ids), 20)
    print("  ".join([f"{'image':<40}", *(f"{q[:width]:>{width}}" for q in result.queries)]))
    for i in range(shown):
        cells = [f"{'' if p != p else f'{p:.3f}':>{width}}" for p in result.probs[i]]
        print("  ".join([f"{result.ids[i][-40:]:<40}", *cells]))
    if shown < len(result.ids):
        print(f"... {len(result.ids) - shown} more rows")
    if result.errors:
        print(f"{len(result.errors)} image(s) could not be read (see the error column)")
    procs = f", {state.num_processes} processes" if state.num_processes > 1 else ""
    print(f"wrote {args.out} ({len(result.ids)} images x {len(result.queries)} queries, scorer {args.scorer}{procs})")
    return 0


@command("ground")
def _add_ground(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ground", help="heatmaps of phrases or report sentences on images (maps + overlays)")
    p.add_argument("model", metavar="MODEL_DIR")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--phrases", nargs="+", metavar="TEXT", help="phrases to locate")
    what.add_argument("--report", metavar="FILE", help="a report: each evidence sentence of a finding gets a map")
    p.add_argument("--method", choices=["attention", "cosine"], default="attention")
    p.add_argument("--last-k", type=int, help="average the last k decoder layers (default: the model's)")
    p.add_argument("--vocabulary", default="chexpert", help="labeler vocabulary for --report")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=_run_ground)


def _run_ground(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmrad.inference.grounding import write_grounding
    from mmrad.models.modeling import MMRadModel

    report = None
    if args.report:
        try:
            report = Path(args.report).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{args.report}: cannot read the report ({err})") from err
    model = MMRadModel.from_pretrained(args.model)
    index = write_grounding(
        model, args.images, args.out, phrases=args.phrases, report=report, method=args.method,
        vocabulary=args.vocabulary, last_k=args.last_k,
    )  # fmt: skip
    print(f"wrote {index}")
    return 0
