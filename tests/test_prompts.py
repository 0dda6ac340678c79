import pytest

from mmrad.config.labels import CHEXPERT_14
from mmrad.config.prompts import load_prompt_bank, prompt_bank_from_dict
from mmrad.errors import MMRadError


def test_shipped_bank_covers_chexpert_and_never_negates_no_finding():
    bank = load_prompt_bank("chexpert")
    assert bank.names == CHEXPERT_14
    for name in bank.names:
        p = bank.prompts(name)
        assert p.positive and p.negative and not set(p.positive) & set(p.negative)
        for text in p.positive + p.negative:
            assert "no no " not in text.lower() and text.lower() != "no finding"
    no_finding = bank.prompts("No Finding")
    assert all("no finding" not in t.lower() for t in no_finding.positive + no_finding.negative)
    effusion = bank.prompts("Pleural Effusion")
    assert "there is pleural effusion" in effusion.positive and "no pleural effusion" in effusion.negative


def test_user_bank_templates_and_errors(tmp_path):
    bank = prompt_bank_from_dict(
        {"templates": {"positive": ["{}"], "negative": ["without {}"]}, "findings": {"Mass": None}}
    )
    assert bank.prompts("Mass").positive == ["mass"] and bank.prompts("Mass").negative == ["without mass"]
    with pytest.raises(MMRadError, match="exactly once"):
        prompt_bank_from_dict({"templates": {"positive": ["x"]}, "findings": {"A": None}})
    with pytest.raises(MMRadError, match="negative phrasings"):
        prompt_bank_from_dict({"findings": {"Normal": {"templates": False, "positive": ["normal"]}}})
    with pytest.raises(MMRadError, match="not found"):
        load_prompt_bank(tmp_path / "none.yaml")
    merged = load_prompt_bank().merged(bank)
    assert "Mass" in merged.names and "Pneumothorax" in merged.names
