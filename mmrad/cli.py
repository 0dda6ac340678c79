"""The ``mmrad`` command line: parse, load config, set up logging, make one library call.

Heavy modules (torch, open_clip, transformers, evaluate) are imported inside the command functions so that
``mmrad --help`` starts fast. Exit codes: 0 success, 1 failure (one-line message; ``--debug`` shows the traceback),
2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from mmrad import __version__

logger = logging.getLogger("mmrad")

# name -> function(subparsers) that adds the command; commands register themselves below
_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def command(name: str):
    def register(add: Callable[[argparse._SubParsersAction], None]):
        _COMMANDS[name] = add
        return add

    return register


# ----------------------------------------------------------------------------------------------------------------
# info
# ----------------------------------------------------------------------------------------------------------------

_INFO_PACKAGES = (
    "torch", "torchvision", "open_clip_torch", "timm", "transformers", "tokenizers", "peft", "accelerate",
    "datasets", "evaluate", "huggingface_hub", "safetensors", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg", "numpy", "pillow",
)  # fmt: skip


@command("info")
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, DICOM codecs and the device Accelerate would use")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    print(f"mmrad {__version__} (Python {platform.python_version()}, {platform.machine()})")
    print("\npackages:")
    for name in _INFO_PACKAGES:
        try:
            print(f"  {name:<20} {version(name)}")
        except PackageNotFoundError:
            print(f"  {name:<20} not installed")

    from mmrad.data.dicom import decodable_transfer_syntaxes

    print("\nDICOM transfer syntaxes:")
    for name, ok in decodable_transfer_syntaxes().items():
        print(f"  {'yes' if ok else 'NO ':<4} {name}")

    import torch
    from accelerate import PartialState

    state = PartialState()
    print("\ndevice:")
    print(f"  accelerate device    {state.device}")
    print(f"  cuda available       {torch.cuda.is_available()} ({torch.cuda.device_count()} device(s))")
    print(f"  cpu threads          {torch.get_num_threads()}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# ingest
# ----------------------------------------------------------------------------------------------------------------


@command("ingest")
def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="build a cached, labelled, patient-split corpus from a manifest or a folder of studies",
        description="Decode images once, label reports, split by patient; bad rows go to OUT/rejects.csv.",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="CSV, JSONL or Parquet manifest, or a folder of studies")
    p.add_argument("--out", required=True, metavar="DIR", help="corpus folder (datasets.load_from_disk works on it)")
    p.add_argument("--image-size", type=int, default=512, help="longest side of the cached images (default 512)")
    p.add_argument("--num-proc", type=int, default=1, help="processes decoding images (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient split (default 0)")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test fractions (default 0.8,0.1,0.1)")
    p.add_argument(
        "--labels",
        default="both",
        metavar="SOURCE",
        help="manifest (finding columns only), both (manifest where given, else the report labeler; default), "
        "or a vocabulary (chexpert, nih14, FILE.yaml) to label from reports only",
    )
    p.add_argument("--vocabulary", default="chexpert", help="finding names for --labels manifest|both")
    p.add_argument("--keep-report-text", action="store_true", help="store reports as written (no de-identification)")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT already holds this corpus")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from mmrad.data.corpus import ingest

    summary = ingest(
        args.manifest,
        args.out,
        image_size=args.image_size,
        num_proc=args.num_proc,
        seed=args.seed,
        split=args.split,
        labels=args.labels,
        vocabulary=args.vocabulary,
        keep_report_text=args.keep_report_text,
        force=args.force,
        progress=not args.no_progress,
    )
    if summary is None:  # another process of `accelerate launch` builds the corpus and prints
        return 0
    info = summary.info
    splits = ", ".join(f"{name} {count}" for name, count in info.num_rows.items())
    if summary.reused:
        print(f"{summary.out_dir} already holds this corpus ({splits}); nothing to do (--force rebuilds)")
    else:
        took = f"{summary.seconds:.1f} s"
        print(f"ingested {summary.kept} of {info.total} rows into {summary.out_dir} ({splits}) in {took}")
    if info.rejected:
        print(f"rejected {info.rejected} row(s), listed in {summary.rejects_path}:")
        for reason, count in info.reject_reasons.items():
            print(f"  {count:>6}  {reason}")
    else:
        print("rejected 0 rows")
    sources = ", ".join(f"{k} {v}" for k, v in info.label_sources.items())
    print(f"labels: {len(info.label_names)} findings ({', '.join(info.label_names)}); from {sources or 'none'}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# train / evaluate
# ----------------------------------------------------------------------------------------------------------------


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="CONFIG.yaml", help="experiment config (see configs/)")
    p.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="override config values"
    )


@command("train")
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model on an ingested corpus (Accelerate: CPU, one or many GPUs)",
        description="Train with Accelerate. Several GPUs or machines: accelerate launch -m mmrad.cli train ...",
    )
    _add_config_args(p)
    p.add_argument("--corpus", metavar="DIR", help="ingested corpus (overrides data.corpus)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: model/, checkpoints/, logs/")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in OUT")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from mmrad.config import load_config
    from mmrad.training.loop import train

    overrides = list(args.overrides) + ([f"data.corpus={args.corpus}"] if args.corpus else [])
    cfg = load_config(args.config, overrides)
    model_dir = train(cfg, args.out, resume=args.resume)
    print(f"model saved to {model_dir}")
    return 0


@command("evaluate")
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of a saved model on a corpus split (metrics.json + ROC plots)")
    p.add_argument("model", metavar="MODEL_DIR", help="a folder written by save_pretrained (or a Hub repo id)")
    p.add_argument("corpus", metavar="CORPUS_DIR", help="an ingested corpus")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--out", default="metrics.json", metavar="FILE", help="metrics file; ROC PNGs go beside it")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0 = none)")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold for F1 (default 0.5)")
    p.add_argument(
        "--zero-shot-prompts", nargs="+", metavar="BANK", help="add zero-shot blocks scored with these prompt banks"
    )
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from mmrad.evaluation import evaluate_corpus

    metrics = evaluate_corpus(
        args.model,
        args.corpus,
        split=args.split,
        out=args.out,
        batch_size=args.batch_size,
        n_bootstrap=args.bootstrap,
        threshold=args.threshold,
        zero_shot_prompts=args.zero_shot_prompts,
    )
    print(_metrics_table(metrics))
    print(f"wrote {args.out}")
    return 0


def _metrics_table(metrics: dict) -> str:
    cls = metrics["classification"]
    lines = [f"{'finding':<28} {'AUROC':>6} {'95% CI':>15} {'AUPRC':>6} {'F1':>6} {'n':>6} {'pos':>5}"]
    for name, row in cls["per_class"].items():
        lo, hi = row["auroc_ci"]
        ci = f"[{lo:.3f}, {hi:.3f}]" if lo == lo else "-"
        lines.append(
            f"{name:<28} {row['auroc']:>6.3f} {ci:>15} {row['auprc']:>6.3f} {row['f1']:>6.3f} {row['n']:>6} "
            f"{row['n_positive']:>5}"
        )
    lo, hi = cls["macro_auroc_ci"]
    lines.append(f"{'macro':<28} {cls['macro_auroc']:>6.3f} {f'[{lo:.3f}, {hi:.3f}]':>15} {cls['macro_auprc']:>6.3f}")
    if "retrieval" in metrics:
        r = metrics["retrieval"]
        lines.append(
            "retrieval image->report R@1/5/10: "
            + "/".join(f"{r[f'image_to_text_R@{k}']:.3f}" for k in (1, 5, 10))
            + ", report->image: "
            + "/".join(f"{r[f'text_to_image_R@{k}']:.3f}" for k in (1, 5, 10))
        )
    for method in ("attention", "cosine"):
        g = metrics.get("grounding", {}).get(method)
        if g:
            lines.append(
                f"grounding ({method} maps, {g['n']} present findings): pointing game {g['pointing_game']:.3f}, "
                f"CNR {g['cnr']:.2f}, IoU@0.3 {g['iou@0.3']:.3f}"
            )
    blocks = [metrics["zero_shot"]] if metrics.get("zero_shot") else []
    for zero_shot in blocks + list(metrics.get("zero_shot_more", {}).values()):
        for scorer in ("fusion", "contrastive"):
            z = zero_shot[scorer]
            per = ", ".join(f"{n} {r['auroc']:.3f}" for n, r in z["per_class"].items())
            lines.append(f"zero-shot {scorer} ({zero_shot['prompts']}): macro AUROC {z['macro_auroc']:.3f} ({per})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# label
# ----------------------------------------------------------------------------------------------------------------


@command("label")
def _add_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="label free-text reports (CSV or JSONL) with findings: 1 / 0 / -1 / empty",
        description="Rule-based report labeler (mentions, negation, uncertainty); one output column per finding.",
    )
    p.add_argument("input", metavar="INPUT", help="CSV file, or JSONL (.jsonl/.ndjson/.json: one object per line)")
    p.add_argument(
        "--text-columns",
        required=True,
        metavar="COLS",
        help="comma-separated columns whose text makes the report, e.g. findings,impression",
    )
    p.add_argument("--id-column", metavar="COL", help="column copied to the output (default: the row number)")
    p.add_argument("--vocabulary", default="chexpert", help="chexpert (default), nih14 or a vocabulary FILE.yaml")
    p.add_argument(
        "--speculation",
        default=None,
        choices=["uncertain", "absent"],
        help="findings only proposed as an interpretation ('may represent pneumonia', 'possible effusion'): "
        "-1 (uncertain) or 0 (absent); default: the vocabulary's convention (chexpert: uncertain, nih14: absent)",
    )
    p.add_argument("--evidence", action="store_true", help="add an 'evidence' column (JSON: mentions, cues, spans)")
    p.add_argument("--num-workers", type=int, default=1, help="processes labeling in parallel (default 1)")
    p.add_argument("--out", required=True, metavar="OUT.csv", help="output CSV")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_label)


def _run_label(args: argparse.Namespace) -> int:
    from mmrad.data.label_files import label_file

    summary = label_file(
        args.input,
        args.out,
        text_columns=[c.strip() for c in args.text_columns.split(",") if c.strip()],
        id_column=args.id_column,
        vocabulary=args.vocabulary,
        speculation=args.speculation,
        evidence=args.evidence,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    print(f"labeled {summary.rows} reports in {summary.seconds:.1f} s -> {summary.out}")
    print(f"  {'finding':<28} {'1':>7} {'0':>7} {'-1':>7} {'empty':>7}")
    for name in summary.label_names:
        c = summary.counts[name]
        print(f"  {name:<28} {c['1']:>7} {c['0']:>7} {c['-1']:>7} {c['']:>7}")
    return 0


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
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from mmrad.models.modeling import MMRadModel
    from mmrad.zeroshot import run_zero_shot, write_results_csv

    # under `accelerate launch` each process scores a share; rank 0 writes and prints. PartialState, unlike
    # Accelerator, does not read ACCELERATE_USE_CPU (without it CPU ranks would each run alone)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
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

    from mmrad.grounding import write_grounding
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


# ----------------------------------------------------------------------------------------------------------------
# push
# ----------------------------------------------------------------------------------------------------------------


@command("push")
def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="share a model folder on the Hugging Face Hub (private by default; PHI-scanned first)",
        description="Writes the model card from metrics.json, scans the folder for patient identifiers, then uploads.",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="a folder written by save_pretrained / mmrad train")
    p.add_argument("repo_id", metavar="REPO_ID", help="e.g. your-org/mmrad-chest")
    p.add_argument("--public", action="store_true", help="make a new repo public (default: private)")
    p.add_argument("--adapter-only", action="store_true", help="upload the LoRA adapters and new modules only")
    p.add_argument("--base-model", metavar="REPO_ID", help="Hub repo of the base model (for --adapter-only)")
    p.add_argument("--revision", metavar="BRANCH", help="upload to this branch (created if needed)")
    p.add_argument("--metrics", metavar="FILE", help="metrics.json for the card (default: MODEL_DIR/metrics.json)")
    p.add_argument("--corpus", metavar="DIR", help="refuse uploads containing this corpus's patient/study keys")
    p.add_argument("--dry-run", metavar="DIR", help="write the exact folder that would be uploaded, no network")
    p.set_defaults(func=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from mmrad.hub import push

    where = push(
        args.model, args.repo_id, public=args.public, adapter_only=args.adapter_only, base_model=args.base_model,
        revision=args.revision, metrics_file=args.metrics, corpus=args.corpus, dry_run=args.dry_run,
    )  # fmt: skip
    if args.dry_run:
        print(f"dry run: the upload folder is {where} (scanned: no patient identifiers found)")
    else:
        print(f"pushed to {args.repo_id}: {where}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------------------------------


@command("demo")
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="phantom corpus -> ingest -> contrastive pre-training -> LoRA fine-tuning -> evaluation, on the CPU",
    )
    p.add_argument("--out", default="demo_out", metavar="DIR", help="output folder, replaced (default demo_out)")
    p.add_argument("--quick", action="store_true", help="a smaller run (about a minute) for smoke tests")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from mmrad.demo import run_demo

    result = run_demo(args.out, quick=args.quick)
    print()
    print(_metrics_table(result.metrics))
    total = sum(result.seconds.values())
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(f"\ndemo finished in {total:.0f} s ({steps})")
    print(f"model: {result.model_dir} (card: README.md)  metrics: {result.out_dir / 'metrics.json'}")
    examples = result.out_dir / "examples"
    print(f"grounding examples (report sentences on test images, true masks outlined): {examples}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmrad",
        description="Multimodal radiology: fine-tune image x report models, classify, ground and query scans.",
    )
    parser.add_argument("--version", action="version", version=f"mmrad {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _COMMANDS.values():
        add(sub)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("mmrad")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _one_line(err: BaseException) -> str:
    from mmrad.errors import MMRadError, is_io_error, os_error_reason

    text = " ".join(str(err).split()) or type(err).__name__
    if is_io_error(err) and not isinstance(err, MMRadError):  # '[Errno 28] ...' -> 'PATH: no space left on device'
        names = [n for n in (getattr(err, "filename", None), getattr(err, "filename2", None)) if n is not None]
        text = f"{' -> '.join(map(str, names))}: {os_error_reason(err)}" if names else os_error_reason(err)
    return text if len(text) <= 500 else text[:497] + "..."


def main(argv: list[str] | None = None) -> int:
    """Run ``mmrad`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    _setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mmrad: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        if args.debug:
            raise
        print(f"mmrad: error: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
