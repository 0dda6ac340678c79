import pytest

from mmrad.reports.sections import SECTION_NAMES, parse_report


def sentences(text):
    report = parse_report(text)
    for s in report.sentences:
        assert report.text[s.start : s.end] == s.text  # offsets round-trip
    return [s.text for s in report.sentences]


def sections(text):
    report = parse_report(text)
    for s in report.sections:
        assert report.text[s.start : s.end] == s.text and s.name in SECTION_NAMES
    return [(s.name, s.text) for s in report.sections]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("FINDINGS: Lungs clear.\nIMPRESSION: Normal.", [("FINDINGS", "Lungs clear."), ("IMPRESSION", "Normal.")]),
        ("findings: Lungs clear. impression: Normal.", [("FINDINGS", "Lungs clear."), ("IMPRESSION", "Normal.")]),
        ("Findings - Lungs clear.\nImpression - Normal.", [("FINDINGS", "Lungs clear."), ("IMPRESSION", "Normal.")]),
        ("FINDINGS\nLungs clear.\n\nIMPRESSION\nNormal.", [("FINDINGS", "Lungs clear."), ("IMPRESSION", "Normal.")]),
        ("History: cough.\nFindings: clear.", [("INDICATION", "cough."), ("FINDINGS", "clear.")]),
        ("CLINICAL HISTORY: r/o pneumonia\nCOMPARISON: None.\nTECHNIQUE: PA and lateral.\nFINDINGS: Clear.",
         [("INDICATION", "r/o pneumonia"), ("COMPARISON", "None."), ("TECHNIQUE", "PA and lateral."),
          ("FINDINGS", "Clear.")]),
        ("Conclusion: no acute disease.", [("IMPRESSION", "no acute disease.")]),
        ("Lungs are clear. Heart normal.", [("FINDINGS", "Lungs are clear. Heart normal.")]),  # no headers
        ("CHEST PA AND LAT\nIMPRESSION: Normal.", [("FINDINGS", "CHEST PA AND LAT"), ("IMPRESSION", "Normal.")]),
        ("EXAM: chest\nFINDINGS: Clear.\nRECOMMENDATION: none", [("TECHNIQUE", "chest"), ("FINDINGS", "Clear."),
                                                                ("OTHER", "none")]),
        ("Heart: normal size. Chest: clear.", [("FINDINGS", "Heart: normal size. Chest: clear.")]),  # not headers
        ("Findings consistent with pneumonia.", [("FINDINGS", "Findings consistent with pneumonia.")]),
    ],
)  # fmt: skip
def test_sections(text, expected):
    assert sections(text) == expected


def test_section_accessors():
    report = parse_report("INDICATION: cough\nFINDINGS: Clear lungs.\nIMPRESSION: Normal.")
    assert report.findings == "Clear lungs." and report.impression == "Normal."
    assert report.section("indication") == "cough" and report.section("COMPARISON") == ""
    assert [s.section for s in report.sentences] == ["INDICATION", "FINDINGS", "IMPRESSION"]
    assert [s.text for s in report.sentences_in(["FINDINGS", "IMPRESSION"])] == ["Clear lungs.", "Normal."]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Lungs are clear. Heart is normal.", ["Lungs are clear.", "Heart is normal."]),
        ("Lungs are clear", ["Lungs are clear"]),  # missing final period
        ("A 2.5 cm nodule. No effusion.", ["A 2.5 cm nodule.", "No effusion."]),  # decimals
        ("Discussed with Dr. Smith at 3 pm. No change.", ["Discussed with Dr. Smith at 3 pm.", "No change."]),
        ("Devices, e.g. a pacemaker, are seen. Clear.", ["Devices, e.g. a pacemaker, are seen.", "Clear."]),
        ("Mass measures approx. 3 cm. Stable.", ["Mass measures approx. 3 cm.", "Stable."]),
        ("Atelectasis vs. pneumonia. No effusion.", ["Atelectasis vs. pneumonia.", "No effusion."]),
        ("Scarring, i.e. old disease. Clear.", ["Scarring, i.e. old disease.", "Clear."]),
        ("1. Cardiomegaly. 2. Small effusion.", ["Cardiomegaly.", "Small effusion."]),  # numbered list
        ("1. No acute disease 2. Stable cardiomegaly", ["No acute disease", "Stable cardiomegaly"]),
        ("IMPRESSION:\n1. Effusion\n2. Edema\n3. Atelectasis", ["Effusion", "Edema", "Atelectasis"]),
        ("- tube in place\n- no pneumothorax", ["tube in place", "no pneumothorax"]),  # bullets
        ("Fractures of ribs 4 and 5. There is 1 nodule.", ["Fractures of ribs 4 and 5.", "There is 1 nodule."]),
        ("effusion.. cardiomegaly. edema", ["effusion..", "cardiomegaly.", "edema"]),  # OpenI quirks
        ("Is there an effusion? No!", ["Is there an effusion?", "No!"]),
        ("There is a small left\npleural effusion.", ["There is a small left\npleural effusion."]),  # wrapped line
        ("Lungs clear\nHeart normal", ["Lungs clear", "Heart normal"]),  # one sentence per line
        ("First paragraph\n\nsecond paragraph", ["First paragraph", "second paragraph"]),
        ("Normal chest x-XXXX. XXXX XXXX are intact.", ["Normal chest x-XXXX.", "XXXX XXXX are intact."]),
        ("  \n . \n", []),
    ],
)
def test_sentences(text, expected):
    assert sentences(text) == expected


def test_offsets_point_into_the_original_text():
    text = "INDICATION: cough\n\nFINDINGS:\n  1. Heart normal.   2. No effusion\n\nIMPRESSION - Normal chest."
    report = parse_report(text)
    assert report.text is text
    assert [(s.section, text[s.start : s.end]) for s in report.sentences] == [
        ("INDICATION", "cough"),
        ("FINDINGS", "Heart normal."),
        ("FINDINGS", "No effusion"),
        ("IMPRESSION", "Normal chest."),
    ]


def test_bad_input():
    for empty in (None, ""):
        report = parse_report(empty)
        assert report.text == "" and report.sections == [] and report.sentences == []
    for bad, name in ((5, "int"), (b"No effusion.", "bytes"), (["a"], "list")):
        with pytest.raises(TypeError, match=name):
            parse_report(bad)


def test_unicode_and_long_input():
    text = "Épanchement pleural İ 肺炎 🫁. Ünchanged ǅ effusion.\u2028Next line\u00a0here. Ω."
    assert sentences(text)[0] == "Épanchement pleural İ 肺炎 🫁."
    long = "FINDINGS: " + "No pleural effusion, the heart is normal in size. " * 10000  # ~500 kB
    report = parse_report(long)
    assert len(report.sentences) == 10000 and report.sentences[-1].end == len(long.rstrip())
    garbage = "".join(chr(c) for c in range(32, 5000)) + "..." * 1000 + "\n" * 500 + "1." * 1000
    parse_report(garbage)  # anything goes, nothing raises
