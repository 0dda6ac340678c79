"""Data commands: ``mmrad ingest`` (manifest -> cached, labelled, split corpus) and ``mmrad label`` (reports)."""

from __future__ import annotations

import argparse

from mmrad.commands import command

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
    p.add_argument(
        "--window",
        default="auto",
        help="DICOM display window: auto (the file's VOI LUT / window), none (the stored bit range), minmax (each "
        "image's range) or CENTER,WIDTH such as 40,400 (default auto); recorded in the corpus, and models trained "
        "on it decode new images the same way",
    )
    p.add_argument(
        "--no-invert-monochrome1", dest="invert_monochrome1", action="store_false",
        help="keep MONOCHROME1 images as stored (default: invert them so that bone is bright)",
    )  # fmt: skip
    p.add_argument("--keep-report-text", action="store_true", help="store reports as written (no de-identification)")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT already holds this corpus")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from mmrad.corpus.ingest import ingest

    summary = ingest(
        args.manifest,
        args.out,
        image_size=args.image_size,
        num_proc=args.num_proc,
        seed=args.seed,
        split=args.split,
        labels=args.labels,
        vocabulary=args.vocabulary,
        window=args.window,
        invert_monochrome1=args.invert_monochrome1,
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
    from mmrad.reports.label_files import label_file

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
