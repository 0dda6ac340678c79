"""Sharing on the Hugging Face Hub: a PHI scan, the upload folder (model or adapters, metrics, card), and push.

Before any upload the folder is scanned for patient identifiers (DICOM identifier fields, the corpus's hashed keys,
birth dates, MRN-like numbers, DICOM instance UIDs); a finding refuses the push and names the file and the finding.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mmrad.errors import MMRadError
from mmrad.files import staging_folder
from mmrad.models.card import write_card
from mmrad.models.folder import DATA_SUMMARY_NAME, METRICS_NAME, read_json

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".json", ".md", ".txt", ".yaml", ".yml", ".csv", ".jsonl", ".model", ".vocab", ".merges"}
VOCABULARY_FILES = {"tokenizer.json", "vocab.txt", "merges.txt", "vocab.json"}
SCANNED_BINARIES = {".safetensors"}  # header and metadata scanned; any other binary is refused


# ---------------------------------------------------------------------------------------------------- PHI scan


@dataclass
class PhiFinding:
    file: str
    kind: str
    excerpt: str  # the match, partly masked

    def __str__(self) -> str:
        return f"{self.file}: {self.kind} ({self.excerpt})"


_DATE = r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|(?:19|20)\d{2}[01]\d[0-3]\d)"
_PHI_PATTERNS = [
    (
        "DICOM identifier field",
        re.compile(
            r"\b(?:Patient(?:'s)?\s*(?:Name|ID|BirthDate|Birth\s*Date|Address|TelephoneNumbers)|AccessionNumber|"
            r"InstitutionName|ReferringPhysicianName|OtherPatientIDs)\b[\\\"'\s]*[:=][\\\"'\s]*[^\s\\\"',}]+",
            re.I,
        ),
    ),
    ("DICOM identifier tag", re.compile(r"\(00(?:10|08),\s*00(?:10|20|30|50|80|90)\)\s*[:=]?\s*\S+")),
    ("date of birth", re.compile(rf"\b(?:DOB|date\s+of\s+birth|birth\s*date)\b\W{{0,3}}{_DATE}", re.I)),
    (
        "MRN-like number",
        re.compile(
            r"\b(?:MRN|medical\s+record(?:\s+number)?|accession(?:\s+number)?|patient\s+id)"
            r"\b\W{0,4}[A-Z]{0,3}\d{5,}",
            re.I,
        ),
    ),
    ("DICOM instance UID", re.compile(r"\b1\.2\.(?!840\.10008\.)\d+(?:\.\d+){5,}\b")),
]


def _scan_text(name: str, text: str, keys: set[str]) -> list[PhiFinding]:
    found = []
    for kind, pattern in _PHI_PATTERNS:
        for match in pattern.finditer(text):
            value = match.group(0)
            found.append(PhiFinding(name, kind, value[:12] + "…" if len(value) > 12 else value))
    if keys:
        for token in set(re.findall(r"\b[0-9a-f]{16}\b", text)) & keys:
            found.append(PhiFinding(name, "a patient/study key of the corpus", token[:6] + "…"))
    return found


def scan_for_phi(folder: str | Path, known_keys: set[str] | None = None) -> list[PhiFinding]:
    """Scan every file of ``folder`` for patient identifiers; files that cannot be scanned are findings too."""
    folder = Path(folder)
    keys = set(known_keys or ())
    found: list[PhiFinding] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        suffix = path.suffix.lower()
        if suffix in SCANNED_BINARIES:
            found += _scan_text(name, _safetensors_header(path), keys)
        elif path.name in VOCABULARY_FILES:
            found += _scan_vocabulary(name, path, keys)
        elif suffix in TEXT_SUFFIXES:
            found += _scan_text(name, path.read_text(encoding="utf-8", errors="replace"), keys)
        else:
            found.append(
                PhiFinding(
                    name,
                    "a file type that cannot be scanned (only safetensors and text are pushed)",
                    suffix or path.name,
                )
            )
    return found


def _scan_vocabulary(name: str, path: Path, keys: set[str]) -> list[PhiFinding]:
    """A tokenizer vocabulary is a list of tokens (with ids), not prose: each token is checked on its own for long
    digit runs (MRN-like) and the corpus's keys; the sentence patterns would match "token": id pairs."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.name == "tokenizer.json":
        data = json.loads(text)
        vocab = (data.get("model") or {}).get("vocab") or {}
        tokens = list(vocab) if isinstance(vocab, dict) else [entry[0] for entry in vocab]
        tokens += [t.get("content", "") for t in data.get("added_tokens") or []]
    else:
        tokens = text.split()
    found = []
    for token in tokens:
        bare = token.lstrip("#Ġ▁")
        if re.fullmatch(r"\d{6,}", bare):
            found.append(PhiFinding(name, "MRN-like number token", bare[:4] + "…"))
        elif bare in keys:
            found.append(PhiFinding(name, "a patient/study key of the corpus", bare[:6] + "…"))
    return found


def _safetensors_header(path: Path) -> str:
    """The tensor names and ``__metadata__`` of a safetensors file (offsets left out: they are not text)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size <= 0 or size > 100_000_000:
            raise MMRadError(f"{path}: not a safetensors file")
        header = json.loads(f.read(size))
    return json.dumps({"names": sorted(k for k in header if k != "__metadata__"), "meta": header.get("__metadata__")})


def corpus_keys(corpus_dir: str | Path) -> set[str]:
    """The hashed patient and study keys recorded in an ingested corpus (what must never appear in an upload)."""
    from mmrad.corpus.format import load_corpus

    splits, _ = load_corpus(corpus_dir)
    keys: set[str] = set()
    for split in splits.values():
        for column in ("patient_key", "study_key"):
            if column in split.column_names:
                keys.update(k for k in split.select_columns([column])[column] if k)
    return keys


# ---------------------------------------------------------------------------------------------------- push


def prepare_upload(
    model_dir: str | Path,
    folder: str | Path,
    *,
    repo_id: str,
    adapter_only: bool = False,
    base_model: str | None = None,
    metrics_file: str | Path | None = None,
    known_keys: set[str] | None = None,
) -> Path:
    """Write the exact folder that would be uploaded (model or adapters, metrics, data summary, card) and scan it.

    Raises:
        MMRadError: the PHI scan found something (nothing is left behind), or the inputs are inconsistent.
        OutputError: the folder cannot be written (disk full, no permission).
    """
    from mmrad.models.folder import read_config

    src, out = Path(model_dir), Path(folder)
    if out.exists() and any(out.iterdir()):
        raise MMRadError(f"{out}: the dry-run folder exists and is not empty")
    read_config(src)  # not a model folder, or one from a newer mmrad: refused before anything is written
    # written into a hidden sibling and renamed when complete and scanned: no half folder, even after a crash
    with staging_folder(out) as staging:
        _write_upload(src, staging, repo_id, adapter_only, base_model, metrics_file, known_keys)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    return out


def _write_upload(src: Path, folder: Path, repo_id, adapter_only, base_model, metrics_file, known_keys) -> None:
    """Fill ``folder`` with what :func:`prepare_upload` uploads, then scan it for patient identifiers."""
    from mmrad.models.folder import ADAPTER_WEIGHTS_NAME, CONFIG_NAME, PROMPT_BANK_NAME, WEIGHTS_NAME
    from mmrad.models.modeling import MMRadModel

    if adapter_only:
        model = MMRadModel.from_pretrained(src)
        if model.lora_settings is None:
            raise MMRadError(f"{src}: --adapter-only needs a folder with LoRA adapters (e.g. OUT/adapter/)")
        base = base_model or (Path(model.name_or_path) if model.name_or_path else None)
        if base is None or Path(str(base)).exists():
            raise MMRadError(
                "--adapter-only: pass --base-model REPO_ID, the Hub repo of the base model "
                "(a local path would be uploaded as is)"
            )
        model.save_pretrained(folder, adapter_only=True, base_model=str(base))
    else:
        for name in (CONFIG_NAME, WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, PROMPT_BANK_NAME):
            if (src / name).is_file():
                shutil.copy2(src / name, folder / name)
        if (src / "tokenizer").is_dir():
            shutil.copytree(src / "tokenizer", folder / "tokenizer")
    metrics_path = Path(metrics_file) if metrics_file else src / METRICS_NAME
    metrics = read_json(metrics_path) if metrics_path.is_file() else None
    if metrics is not None:
        shutil.copy2(metrics_path, folder / METRICS_NAME)
    summary = read_json(src / DATA_SUMMARY_NAME)
    if summary is not None:
        shutil.copy2(src / DATA_SUMMARY_NAME, folder / DATA_SUMMARY_NAME)
    write_card(folder, repo_id=repo_id, metrics=metrics, data_summary=summary)
    findings = scan_for_phi(folder, known_keys)
    if findings:
        raise MMRadError(
            "refusing to push: the PHI scan found "
            + "; ".join(map(str, findings[:5]))
            + (f" and {len(findings) - 5} more" if len(findings) > 5 else "")
        )


def push(
    model_dir: str | Path,
    repo_id: str,
    *,
    public: bool = False,
    adapter_only: bool = False,
    base_model: str | None = None,
    revision: str | None = None,
    metrics_file: str | Path | None = None,
    corpus: str | Path | None = None,
    dry_run: str | Path | None = None,
    token: str | None = None,
) -> str:
    """Upload a model folder to ``repo_id`` (private unless ``public``); with ``dry_run`` write the folder only.

    Returns:
        The dry-run folder, or the URL of the commit.
    """
    import tempfile

    keys = corpus_keys(corpus) if corpus else None
    if dry_run is not None:
        folder = prepare_upload(
            model_dir,
            dry_run,
            repo_id=repo_id,
            adapter_only=adapter_only,
            base_model=base_model,
            metrics_file=metrics_file,
            known_keys=keys,
        )
        return str(folder)
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="mmrad-push-") as tmp:
        folder = prepare_upload(
            model_dir,
            Path(tmp) / "upload",
            repo_id=repo_id,
            adapter_only=adapter_only,
            base_model=base_model,
            metrics_file=metrics_file,
            known_keys=keys,
        )
        api = HfApi(token=token)
        api.create_repo(repo_id, private=not public, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            commit_message=f"Upload mmrad model ({'adapters' if adapter_only else 'full'})",
        )
    return str(getattr(info, "commit_url", info))
