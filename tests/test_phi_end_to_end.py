"""PHI end to end: DICOMs carrying canary identifiers (PatientName, PatientID, PatientBirthDate, AccessionNumber,
InstitutionName, ReferringPhysicianName) in folders named after the patient, and reports with names, IDs and dates in
their headers, go through ``mmrad ingest -> train -> evaluate -> push --dry-run``. No canary may appear in any file
written (image cache, corpus, rejects, TensorBoard events, checkpoints, metrics, model folder, card, HF cache) nor in
what the commands print; the reports keep their clinical content and the ids are salted hashes only."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrad.cli import main
from mmrad.corpus.format import load_corpus
from mmrad.corpus.splits import SPLIT_NAMES
from mmrad.io.dicom import write_dicom
from mmrad.privacy.deid import hash_identifier
from tests.conftest import CONFIGS

pytestmark = pytest.mark.usefixtures("single_thread")

PATIENTS = 12
# identifiers that must never leave the source folder (compared case-insensitively)
CANARIES = [
    "Canarysmith", "Quentin", "Wilhelmina", "Drcanary", "Ottoline", "Canaryjones", "Canaryville",
    "48151623", "19420317", "1942-03-17", "03/17/2042", "March 18, 2042", "CNRYACC", "CNRY-PID", "555-867-5309",
    "CNRYUID",
]  # fmt: skip
CLINICAL = ["Small right pleural effusion.", "No pneumothorax.", "Heart size is normal."]


def _report(i: int) -> str:
    return (
        f"Patient: Quentin Canarysmith {i}\n"
        f"MRN: 48151623{i:02d}\n"
        "Date of exam: 03/17/2042\n"
        "Referring physician: Dr. Wilhelmina Drcanary\n"
        "INDICATION: Shortness of breath.\n"
        f"FINDINGS: {'Small right pleural effusion.' if i % 2 else 'No pleural effusion.'} No pneumothorax. "
        "Heart size is normal.\n"
        "IMPRESSION: Findings discussed with Dr. Canaryjones by phone at 555-867-5309.\n"
        "Dictated by: Dr. Ottoline Canaryjones on March 18, 2042\n"
    )


def _write_source(root: Path) -> Path:
    """12 patients x 2 images (a DICOM with the canary tags and no pixel spacing, and a PNG) and a manifest."""
    rows = []
    rng = np.random.default_rng(0)
    for p in range(PATIENTS):
        folder = root / f"Canarysmith_Quentin_48151623{p:02d}"  # archives name folders after patients
        folder.mkdir(parents=True)
        pixels = rng.integers(0, 4096, (40, 40), dtype=np.uint16)
        # the first patient's ids are invalid for their VRs: pydicom warns with the value when it reads them
        pid = f"CNRY-PID-48151623{p:02d}" + ("9" * 70 if p == 0 else "")
        broken = {"StudyInstanceUID": "1.2.CNRYUID.48151623"} if p == 0 else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_dicom(folder / "IM0001.dcm", pixels, bits_stored=12, Modality="CR", ViewPosition="PA",
                        PatientName=f"Canarysmith^Quentin^{p}", PatientID=pid,
                        PatientBirthDate="19420317", AccessionNumber=f"CNRYACC{p:04d}",
                        InstitutionName="Canaryville General Hospital", ReferringPhysicianName="Drcanary^Wilhelmina",
                        StudyDescription="Canarysmith chest", **broken)  # fmt: skip
        Image.fromarray(rng.integers(0, 255, (40, 32), dtype=np.uint8)).save(folder / "lateral.png")
        for k, name in enumerate(("IM0001.dcm", "lateral.png")):
            rows.append({"image": str((folder / name).relative_to(root)), "report": _report(2 * p + k),
                         "patient_id": f"CNRY-PID-48151623{p:02d}", "study_id": f"CNRYACC{p:04d}",
                         "Pleural Effusion": str(k)})  # fmt: skip
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _find_canaries(data: bytes) -> list[str]:
    low = data.lower()
    return [c for c in CANARIES if c.lower().encode() in low]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run ingest -> train -> evaluate -> push --dry-run through the CLI; return the folders and what was printed."""
    root = tmp_path_factory.mktemp("phi")
    manifest = _write_source(root / "archive")
    corpus, run, dry = root / "corpus", root / "run", root / "upload"
    printed = []

    def run_cli(args: list[str]) -> None:
        code, out, err = _run(args)
        printed.append((args[0], out, err))
        assert code == 0, err[-2000:]

    run_cli(["ingest", str(manifest), "--out", str(corpus), "--image-size", "32", "--split", "0.5,0.25,0.25",
             "--no-progress"])  # fmt: skip
    run_cli(["train", "--config", str(CONFIGS / "tiny.yaml"), "--corpus", str(corpus), "--out", str(run),
             "--set", "data.batch_size=4", "train.max_steps=4", "train.eval_every=2", "train.save_every=2",
             "train.warmup_steps=1", "train.log_with=tensorboard"])  # fmt: skip
    metrics = run / "eval" / "metrics.json"
    run_cli(["evaluate", str(run / "model"), str(corpus), "--split", "test", "--out", str(metrics),
             "--bootstrap", "5", "--batch-size", "8"])  # fmt: skip
    run_cli(["push", str(run / "model"), "someone/mmrad-phi-check", "--dry-run", str(dry), "--metrics", str(metrics),
             "--corpus", str(corpus)])  # fmt: skip
    return {"root": root, "corpus": corpus, "run": run, "upload": dry, "printed": printed}


def _run(args: list[str]) -> tuple[int, str, str]:
    """``mmrad ARGS`` in this process; returns the exit code, stdout and stderr. Captured: Python-level output (the
    CLI's log handler and tqdm write to sys.stderr), anything written to file descriptors 1 and 2 (C extensions,
    handlers bound to the real streams), and every Python warning raised on the way (pydicom, PIL, ...)."""
    import contextlib
    import io
    import sys
    import tempfile
    import warnings

    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryFile() as fd_out, tempfile.TemporaryFile() as fd_err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(fd_out.fileno(), 1)
        os.dup2(fd_err.fileno(), 2)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                    warnings.catch_warnings(record=True) as caught:  # fmt: skip
                warnings.simplefilter("always")
                code = main(args)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        fd_out.seek(0)
        fd_err.seek(0)
        raw_out, raw_err = fd_out.read().decode(errors="replace"), fd_err.read().decode(errors="replace")
    shown = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return code, out.getvalue() + raw_out, err.getvalue() + raw_err + shown


def test_the_pipeline_wrote_what_it_should(pipeline):
    run = pipeline["run"]
    assert list((run / "logs").rglob("events.out.tfevents.*")), "TensorBoard events were written"
    assert (run / "eval" / "metrics.json").is_file() and (pipeline["upload"] / "README.md").is_file()
    assert list((run / "checkpoints").glob("step_*"))
    assert (pipeline["corpus"] / ".mmrad_cache").is_dir()


def test_no_canary_in_any_file_written(pipeline):
    written = [pipeline["corpus"], pipeline["run"], pipeline["upload"], Path(os.environ["HF_HOME"])]
    files = [p for folder in written for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 40
    leaks = {str(p): found for p in files if (found := _find_canaries(p.read_bytes()))}
    assert not leaks


def test_no_canary_in_what_the_commands_printed(pipeline):
    for command, out, err in pipeline["printed"]:
        assert not _find_canaries((out + err).encode()), (command, out, err)


def test_missing_pixel_spacing_is_logged_once_per_ingest_without_the_path(pipeline):
    _, _, err = next(p for p in pipeline["printed"] if p[0] == "ingest")
    lines = [line for line in err.splitlines() if "pixel spacing" in line]
    assert len(lines) == 1, lines  # 12 DICOMs lack it: one line, not twelve
    assert "archive" not in lines[0] and ".dcm" not in lines[0]


def test_reports_keep_clinical_content_and_ids_are_salted_hashes(pipeline):
    splits, info = load_corpus(pipeline["corpus"])
    assert info.deidentified and info.rejected == 0
    rows = [r for name in SPLIT_NAMES for r in splits[name]]
    assert len(rows) == 2 * PATIENTS
    salt = os.environ["MMRAD_SALT"]
    patient_ids = {f"CNRY-PID-48151623{p:02d}" for p in range(PATIENTS)}
    assert {r["patient_key"] for r in rows} == {hash_identifier(pid, salt) for pid in patient_ids}
    assert {r["study_key"] for r in rows} == {hash_identifier(f"CNRYACC{p:04d}", salt) for p in range(PATIENTS)}
    for row in rows:
        report = row["report"]
        for phrase in ("No pneumothorax.", "Heart size is normal.", "INDICATION: Shortness of breath."):
            assert phrase in report
        for placeholder in ("Patient: [NAME]", "MRN: [ID]", "[DATE]", "Dr. [NAME]", "[PHONE]"):
            assert placeholder in report, (placeholder, report)
        assert "pleural effusion" in row["findings"].lower()
    assert sum("Small right pleural effusion." in r["findings"] for r in rows) == PATIENTS


def test_keep_report_text_warns_and_keeps_the_names(pipeline):
    """The opt-out works as documented, and shows that the canary scan above would see a leak."""
    root = pipeline["root"]
    code, _, err = _run(["ingest", str(root / "archive" / "manifest.csv"), "--out", str(root / "kept"),
                         "--image-size", "32", "--keep-report-text", "--no-progress"])  # fmt: skip
    assert code == 0
    assert "report text is stored as written: make sure it holds no patient identifiers" in err
    found = {c for p in (root / "kept").rglob("*.arrow") for c in _find_canaries(p.read_bytes())}
    assert {"Canarysmith", "48151623", "03/17/2042"} <= found
    assert not found & {"19420317", "Canaryville", "CNRY-PID"}  # DICOM tags and patient ids are never stored
