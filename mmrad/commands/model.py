"""Model commands: ``mmrad train``, ``evaluate`` (with the metrics table), ``push`` and ``demo``."""

from __future__ import annotations

import argparse

from mmrad.commands import command

# ----------------------------------------------------------------------------------------------------------------
# train / evaluate
# ----------------------------------------------------------------------------------------------------------------


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, metavar="CONFIG",
        help="experiment config: a YAML file or a shipped name (tiny, nih-effnet-lite2, ...; mmrad info lists them)",
    )  # fmt: skip
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
    from mmrad.config.schema import load_config
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
    from mmrad.evaluation.corpus import evaluate_corpus

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
            supervised = method == "attention" and metrics["grounding"].get("attention_supervision")
            supervised = ", attention supervised in training" if supervised else ""
            lines.append(
                f"grounding ({method} maps, {g['n']} present findings{supervised}): pointing game "
                f"{g['pointing_game']:.3f}, CNR {g['cnr']:.2f}, IoU@0.3 {g['iou@0.3']:.3f}"
            )
    blocks = [metrics["zero_shot"]] if metrics.get("zero_shot") else []
    for zero_shot in blocks + list(metrics.get("zero_shot_more", {}).values()):
        for scorer in ("fusion", "contrastive"):
            z = zero_shot[scorer]
            per = ", ".join(f"{n} {r['auroc']:.3f}" for n, r in z["per_class"].items())
            lines.append(f"zero-shot {scorer} ({zero_shot['prompts']}): macro AUROC {z['macro_auroc']:.3f} ({per})")
    return "\n".join(lines)


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
    from mmrad.hub.push import push

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
