import csv
import json

import pytest

from mmrad.cli import main
from mmrad.config.labels import NIH_14
from mmrad.reports.label_files import LabelFileError, label_file

ROWS = [
    {"uid": "a1", "findings": "Small left pleural effusion. No pneumothorax.", "impression": "Possible pneumonia."},
    {"uid": "a2", "findings": "", "impression": "No acute disease."},
    {"uid": "a3", "findings": "Heart is mildly enlarged.", "impression": ""},
]


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_label_csv(tmp_path, capsys):
    src, out = write_csv(tmp_path / "reports.csv", ROWS), tmp_path / "sub" / "labels.csv"
    argv = ["label", str(src), "--text-columns", "findings,impression", "--id-column", "uid", "--vocabulary", "nih14"]
    assert main([*argv, "--out", str(out), "--no-progress", "--speculation", "uncertain"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["uid", *NIH_14]
    assert [r["uid"] for r in rows] == ["a1", "a2", "a3"]
    assert (rows[0]["Effusion"], rows[0]["Pneumothorax"], rows[0]["Pneumonia"], rows[0]["Mass"]) == (
        "1",
        "0",
        "-1",
        "",
    )
    assert all(v == "" for k, v in rows[1].items() if k != "uid")
    assert rows[2]["Cardiomegaly"] == "1"
    printed = capsys.readouterr().out
    assert "labeled 3 reports" in printed and "Effusion" in printed
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0  # nih14's own convention: speculation absent
    assert read_csv(out)[0]["Pneumonia"] == "0"  # "Possible pneumonia."


def test_label_jsonl_with_evidence_and_default_vocabulary(tmp_path):
    src, out = tmp_path / "reports.jsonl", tmp_path / "labels.csv"
    src.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n", encoding="utf-8")
    summary = label_file(src, out, text_columns=["findings", "impression"], evidence=True)
    assert summary.rows == 3 and summary.counts["Pleural Effusion"] == {"1": 1, "0": 0, "-1": 0, "": 2}
    rows = read_csv(out)
    assert list(rows[0])[:2] == ["row", "No Finding"] and list(rows[0])[-1] == "evidence"
    assert [r["row"] for r in rows] == ["0", "1", "2"]
    assert rows[1]["No Finding"] == "1" and rows[0]["No Finding"] == ""
    evidence = json.loads(rows[0]["evidence"])
    report = ROWS[0]["findings"] + "\n\n" + ROWS[0]["impression"]  # the joined text the offsets index
    effusion = evidence["Pleural Effusion"][0]
    assert effusion["value"] == 1 and report[effusion["mention_start"] : effusion["mention_end"]] == "effusion"
    assert report[effusion["start"] : effusion["end"]] == effusion["sentence"] == "Small left pleural effusion."
    assert evidence["Pneumonia"][0]["cue"] == "Possible"
    assert json.loads(rows[1]["evidence"]) == {}


def test_label_with_workers_matches_one_process(tmp_path):
    src = write_csv(tmp_path / "reports.csv", ROWS * 100)
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    label_file(src, one, text_columns=["findings", "impression"], evidence=True)
    label_file(src, two, text_columns=["findings", "impression"], evidence=True, num_workers=2)
    assert one.read_text() == two.read_text()


@pytest.mark.parametrize(
    "make, columns, message",
    [
        (lambda p: None, "findings", "no such file"),
        (lambda p: p.mkdir(), "findings", "is a folder"),
        (lambda p: write_csv(p, ROWS), "findings,impresion", "no column 'impresion' (columns: uid, findings"),
        (lambda p: p.write_text(""), "findings", "empty file"),
        (lambda p: p.write_bytes(b"findings\n\xff\xfe bad"), "findings", "not UTF-8"),
    ],
)
def test_errors_name_the_file_and_the_problem(tmp_path, capsys, make, columns, message):
    src = tmp_path / "in.csv"
    make(src)
    assert main(["label", str(src), "--text-columns", columns, "--out", str(tmp_path / "o.csv"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mmrad: error: {src}") and message in err and "\n" not in err


def test_jsonl_errors(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"findings": "ok"}\nnot json\n')
    with pytest.raises(LabelFileError, match="line 2 is not JSON"):
        label_file(src, tmp_path / "o.csv", text_columns=["findings"])
    src.write_text('{"findings": "ok"}\n[1, 2]\n')
    with pytest.raises(LabelFileError, match="line 2 is a list"):
        label_file(src, tmp_path / "o.csv", text_columns=["findings"])
    src.write_text('{"findings": {"nested": 1}}\n')
    with pytest.raises(LabelFileError, match="row 0, column 'findings' holds a dict"):
        label_file(src, tmp_path / "o.csv", text_columns=["findings"])
    src.write_text('{"findings": null, "impression": 3}\n')
    label_file(src, tmp_path / "o.csv", text_columns=["findings", "impression"])  # null and numbers are fine


def test_unknown_vocabulary_file(tmp_path, capsys):
    src = write_csv(tmp_path / "reports.csv", ROWS)
    argv = ["label", str(src), "--text-columns", "findings", "--vocabulary", str(tmp_path / "none.yaml")]
    assert main([*argv, "--out", str(tmp_path / "o.csv")]) == 1
    assert "none.yaml" in capsys.readouterr().err
