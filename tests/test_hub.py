import base64
import json
import re

import pytest
import yaml

from mmrad.errors import MMRadError
from mmrad.hub.push import prepare_upload, push, scan_for_phi
from mmrad.models.card import build_card, write_card

METRICS = {
    "split": "test",
    "n": 40,
    "classification": {
        "macro_auroc": 0.9123,
        "macro_auroc_ci": [0.871, 0.951],
        "macro_auprc": 0.8456,
        "macro_f1": 0.7012,
        "threshold": 0.5,
        "uncertain": "ignore",
        "n": 40,
        "n_bootstrap": 1000,
        "per_class": {
            "Cardiomegaly": {"auroc": 0.9371, "auroc_ci": [0.8812, 0.9833], "auprc": 0.9044, "f1": 0.8123, "n": 40,
                             "n_positive": 12},
            "Pneumothorax": {"auroc": 0.8875, "auroc_ci": [0.7911, 0.9561], "auprc": 0.7868, "f1": 0.5901, "n": 38,
                             "n_positive": 7},
        },
    },
    "retrieval": {"image_to_text_R@1": 0.125, "image_to_text_R@5": 0.475, "image_to_text_R@10": 0.675,
                  "text_to_image_R@1": 0.15, "text_to_image_R@5": 0.45, "text_to_image_R@10": 0.7, "n": 40},
    "grounding": {"source": "masks", "pairs": 19,
                  "attention": {"pointing_game": 0.9474, "cnr": 1.8312, "iou@0.1": 0.2134, "iou@0.3": 0.3321,
                                "iou@0.5": 0.2876, "n": 19, "per_finding": {}},
                  "cosine": {"pointing_game": 0.6842, "cnr": 0.9471, "iou@0.1": 0.1, "iou@0.3": 0.15, "iou@0.5": 0.12,
                             "n": 19, "per_finding": {}}},
    "zero_shot": {"prompts": "phantom-heldout", "findings": ["Cardiomegaly", "Pneumothorax"],
                  "fusion": {"macro_auroc": 0.9312, "per_class": {"Cardiomegaly": {"auroc": 0.9511},
                                                                  "Pneumothorax": {"auroc": 0.9113}}},
                  "contrastive": {"macro_auroc": 0.8001, "per_class": {"Cardiomegaly": {"auroc": 0.8412},
                                                                       "Pneumothorax": {"auroc": 0.759}}}},
}  # fmt: skip
SUMMARY = {
    "corpus": {"num_rows": {"train": 300, "validation": 40, "test": 40}, "label_sources": {"manifest": 380},
               "deidentified": True,
               "prevalence": {"Cardiomegaly": {"positive": 90, "negative": 200, "uncertain": 6, "unknown": 4},
                              "Pneumothorax": {"positive": 50, "negative": 240, "uncertain": 0, "unknown": 10}}},
    "training": {"steps": 300, "num_processes": 1, "best_metric": "val/macro_auroc", "best": 0.9401, "best_step": 200},
}  # fmt: skip


@pytest.fixture
def model_dir(tiny_config, tmp_path):
    from mmrad.models import MMRadModel

    tiny_config.labels.names = ["Cardiomegaly", "Pneumothorax"]
    path = tmp_path / "model"
    MMRadModel(tiny_config).save_pretrained(path)
    (path / "metrics.json").write_text(json.dumps(METRICS))
    (path / "data_summary.json").write_text(json.dumps(SUMMARY))
    return path


def card_numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+\.\d+", text))


def test_card_numbers_all_come_from_the_metrics_and_summary(model_dir):
    card = build_card(model_dir, repo_id="org/model", metrics=METRICS, data_summary=SUMMARY)
    body = card.text
    assert "| Cardiomegaly | 0.937 | [0.881, 0.983] | 0.904 | 0.812 | 40 | 12 |" in body
    assert "| **macro** | **0.912** | [0.871, 0.951]" in body
    assert "| attention | 19 | 0.947 | 1.83 |" in body and "| Pneumothorax | 0.911 | 0.759 |" in body
    assert "| Cardiomegaly | 90 | 200 | 6 | 4 | 0.304 |" in body  # 90 / (90 + 200 + 6)
    source = json.dumps([METRICS, SUMMARY])
    allowed = {f"{float(v):.{d}f}" for v in re.findall(r"\d+\.\d+|\d+", source) for d in (1, 2, 3)}
    for c in SUMMARY["corpus"]["prevalence"].values():  # prevalences, computed from the summary's counts
        allowed.add(f"{c['positive'] / (c['positive'] + c['negative'] + c['uncertain']):.3f}")
    allowed |= {"0.50"}  # the F1 threshold as printed
    assert card_numbers(body) <= allowed | {"0.1", "0.3", "0.5"}  # column headers IoU@0.1 ...
    data = card.data.to_dict()
    assert data["library_name"] == "mmrad" and "radiology" in data["tags"] and "medical-imaging" in data["tags"]
    assert data["pipeline_tag"] == "zero-shot-image-classification"
    results = data["model-index"][0]["results"]
    values = {m["name"]: m["value"] for r in results for m in r["metrics"]}
    assert values["macro AUROC"] == 0.9123 and values["AUROC Pneumothorax"] == 0.8875
    assert values["zero-shot fusion macro AUROC"] == 0.9312 and values["grounding pointing game"] == 0.9474


def test_card_says_when_the_grounding_maps_were_supervised(model_dir):
    assert "supervised" not in build_card(model_dir, metrics=METRICS).text
    supervised = json.loads(json.dumps(METRICS))
    supervised["grounding"]["attention_supervision"] = 0.5
    text = build_card(model_dir, metrics=supervised).text
    assert "`model.loss.grounding` = 0.5): these maps are supervised, not weakly supervised" in text


def test_card_follows_changed_metrics(model_dir):
    changed = json.loads(json.dumps(METRICS))
    changed["classification"]["per_class"]["Cardiomegaly"]["auroc"] = 0.5551
    assert "| Cardiomegaly | 0.555 |" in build_card(model_dir, metrics=changed).text
    assert "No evaluation results" in build_card(model_dir, metrics=None).text


def test_write_card_reads_the_folder(model_dir):
    path = write_card(model_dir, repo_id="org/model")
    text = path.read_text()
    assert text.startswith("---\n") and "from `metrics.json` and `data_summary.json`" in text
    assert "not a medical device" in text and 'MMRadModel.from_pretrained("org/model")' in text


@pytest.mark.parametrize(
    "planted, kind",
    [
        ('{"PatientID": "12345678"}', "DICOM identifier field"),
        ("PatientName: DOE^JANE", "DICOM identifier field"),
        ("(0010,0020) 99887766", "DICOM identifier tag"),
        ("DOB: 01/02/1950", "date of birth"),
        ("MRN 0045678912", "MRN-like number"),
        ("study 1.2.826.0.1.3680043.8.498.12345678901", "DICOM instance UID"),
    ],
)
def test_phi_scan_blocks_planted_identifiers(model_dir, tmp_path, planted, kind):
    assert scan_for_phi(model_dir) == []
    (model_dir / "notes.txt").write_text(f"training notes\n{planted}\n")
    found = scan_for_phi(model_dir)
    assert [f.kind for f in found] == [kind] and found[0].file == "notes.txt"
    # pushed files carry it too: the metrics file (copied into the upload) with the planted text
    metrics = json.loads((model_dir / "metrics.json").read_text())
    (model_dir / "metrics.json").write_text(json.dumps({**metrics, "note": planted}))
    with pytest.raises(MMRadError, match=f"refusing to push.*metrics.json: {kind}"):
        push(model_dir, "org/model", dry_run=tmp_path / "dry")
    assert not (tmp_path / "dry").exists()  # a refused folder is removed


def test_phi_scan_finds_corpus_keys_and_unscannable_files(model_dir):
    (model_dir / "extra.json").write_text(json.dumps({"key": "0123456789abcdef"}))
    assert [f.kind for f in scan_for_phi(model_dir, {"0123456789abcdef"})] == ["a patient/study key of the corpus"]
    (model_dir / "extra.json").unlink()
    (model_dir / "optimizer.bin").write_bytes(b"\x80\x04pickle")
    assert "cannot be scanned" in scan_for_phi(model_dir)[0].kind


def test_dry_run_writes_the_exact_upload_folder(model_dir, tmp_path):
    folder = push(model_dir, "org/model", dry_run=tmp_path / "dry")
    names = sorted(p.relative_to(folder).as_posix() for p in (tmp_path / "dry").rglob("*") if p.is_file())
    assert {"config.json", "model.safetensors", "metrics.json", "data_summary.json", "README.md"} <= set(names)
    assert "prompt_bank.yaml" in names and (model_dir / "prompt_bank.yaml").is_file()  # zero-shot phrasings travel
    assert yaml.safe_load((tmp_path / "dry" / "README.md").read_text().split("---")[1])["library_name"] == "mmrad"
    with pytest.raises(MMRadError, match="not empty"):
        prepare_upload(model_dir, tmp_path / "dry", repo_id="org/model")


def test_push_sends_the_folder_through_the_hub_client(model_dir, monkeypatch):
    import httpx2
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    requests = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        requests.append((request.method, path, request.content))
        if path == "/api/repos/create":
            return httpx2.Response(200, json={"url": "https://huggingface.co/org/model", "name": "org/model"})
        if path.endswith("/validate-yaml") or path == "/api/validate-yaml":
            return httpx2.Response(200, json={})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False} for f in files]})  # fmt: skip
        if "/commit/" in path:
            return httpx2.Response(200, json={"commitUrl": "https://huggingface.co/org/model/commit/abc",
                                              "commitOid": "abc" * 13 + "a"})  # fmt: skip
        return httpx2.Response(404, json={"error": f"unexpected {path}"})

    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler)))
    try:
        url = push(model_dir, "org/model", token="hf_fake")
    finally:
        huggingface_hub.set_client_factory(lambda: httpx2.Client())
    assert url.endswith("/commit/abc")
    create = next(json.loads(c) for m, p, c in requests if p == "/api/repos/create")
    assert create["name"] == "model" and create.get("organization") == "org"
    assert create.get("visibility") == "private" or create.get("private") is True  # private by default
    commit = next(c for m, p, c in requests if "/commit/" in p)
    lines = [json.loads(line) for line in commit.decode().splitlines() if line.strip()]
    sent = {line["value"]["path"]: line["value"] for line in lines if line["key"] == "file"}
    assert {"config.json", "model.safetensors", "README.md", "metrics.json"} <= set(sent)
    card = base64.b64decode(sent["README.md"]["content"]).decode()
    assert "| Cardiomegaly | 0.937 |" in card


def test_push_cli_dry_run_and_refusal(model_dir, tmp_path, capsys):
    from mmrad.cli import main

    assert main(["push", str(model_dir), "org/model", "--dry-run", str(tmp_path / "dry")]) == 0
    assert "dry run" in capsys.readouterr().out and (tmp_path / "dry" / "README.md").is_file()
    metrics = json.loads((model_dir / "metrics.json").read_text())
    (model_dir / "metrics.json").write_text(json.dumps({**metrics, "note": "DOB: 1950-01-02"}))
    assert main(["push", str(model_dir), "org/model", "--dry-run", str(tmp_path / "dry2")]) == 1
    assert "refusing to push" in capsys.readouterr().err and not (tmp_path / "dry2").exists()


def test_phi_scan_reads_tokenizer_vocabularies_token_by_token(model_dir):
    tok = model_dir / "tokenizer" / "tokenizer.json"
    data = json.loads(tok.read_text())
    data["model"]["vocab"]["accession"] = 16993  # a vocabulary word with its id is not an accession number
    tok.write_text(json.dumps(data))
    assert scan_for_phi(model_dir) == []
    data["model"]["vocab"]["##40012345"] = 16994  # a tokenizer trained on reports that kept an MRN
    tok.write_text(json.dumps(data))
    assert [f.kind for f in scan_for_phi(model_dir)] == ["MRN-like number token"]
