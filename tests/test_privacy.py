import pytest

from mmrad.privacy.deid import deidentify_text, hash_identifier

REPORT = """PATIENT: Doe, Jane  MRN: 12345678
DOB: 01/02/1950   Accession #: A99887766
Referring physician: Dr. John Smith
EXAM DATE: March 4th, 2019  Phone (555) 123-4567
Dear Dr. Smith,
FINDINGS: 2.5 cm nodule in the right upper lobe, T12 compression fracture, unchanged since 2019-03-01.
Heart size normal. No pneumothorax. Compared with Jan 2018. Call 555.123.4567 or jdoe@hospital.org.
Discussed with Dr. Wong at 10:45. Hello Peter Pan, the right lower lobe is clear.
IMPRESSION: 1. Small left effusion. 2. XXXX opacity. Follow-up in 3 months. Level 4-5.
Electronically signed by: Mary Jones, MD on 3/5/19 10:32 AM"""

CANARIES = ["Doe", "Jane", "12345678", "01/02/1950", "A99887766", "John", "Smith", "March 4th", "123-4567",
            "2019-03-01", "Jan 2018", "555.123.4567", "jdoe@", "Wong", "Peter", "Pan,", "Mary", "Jones",
            "3/5/19"]  # fmt: skip
CLINICAL = ["FINDINGS:", "2.5 cm nodule in the right upper lobe", "T12 compression fracture", "Heart size normal.",
            "No pneumothorax.", "IMPRESSION: 1. Small left effusion. 2. XXXX opacity.", "Follow-up in 3 months.",
            "Level 4-5.", "the right lower lobe is clear"]  # fmt: skip


def test_identifiers_replaced_clinical_text_kept():
    clean = deidentify_text(REPORT)
    for canary in CANARIES:
        assert canary not in clean, canary
    for phrase in CLINICAL:
        assert phrase in clean, phrase
    for placeholder in ("[NAME]", "[ID]", "[DATE]", "[PHONE]", "[EMAIL]"):
        assert placeholder in clean


@pytest.mark.parametrize(
    "text",
    [
        "Small right pleural effusion measuring 2.5 x 3.1 cm.",
        "No acute cardiopulmonary process.",
        "Heart size is mildly enlarged. Lungs are clear. Right Lower Lobe consolidation.",
        "Status post CABG with 7 sternotomy wires.",
        "Nodule measures 12 mm, previously 10 mm.",
    ],
)
def test_clinical_sentences_unchanged(text):
    assert deidentify_text(text) == text


def test_type_error_and_hash():
    with pytest.raises(TypeError, match="int"):
        deidentify_text(5)
    assert hash_identifier("MRN1", "a") == hash_identifier(" MRN1 ", "a") != hash_identifier("MRN1", "b")
    assert hash_identifier(None) is None and hash_identifier("  ") is None
    assert len(hash_identifier("x", "s")) == 16
