import numpy as np
import pytest

from mmrad.config.labels import (
    CHEXPERT_14,
    NIH_14,
    apply_uncertainty,
    label_descriptions,
    label_names,
    load_vocabulary,
    uncertainty_policies,
)
from mmrad.config.schema import ConfigError, LabelsConfig


def test_shipped_vocabularies_have_the_exact_names():
    assert load_vocabulary("chexpert").names == CHEXPERT_14
    assert load_vocabulary("nih14").names == NIH_14


def test_names_subset_and_descriptions():
    cfg = LabelsConfig(names=["Cardiomegaly", "Pleural Effusion"], descriptions={"Cardiomegaly": "big heart"})
    assert label_names(cfg) == ["Cardiomegaly", "Pleural Effusion"]
    assert label_descriptions(cfg) == ["big heart", "pleural effusion, fluid in the pleural space"]
    with pytest.raises(ConfigError, match="Unicorn"):
        label_names(LabelsConfig(names=["Unicorn"]))


def test_user_vocabulary(tmp_path):
    path = tmp_path / "v.yaml"
    path.write_text("findings:\n  Tumour:\n    mentions: [tumour, mass]\n  Scar: {}\n")
    vocab = load_vocabulary(path)
    assert vocab.names == ["Tumour", "Scar"] and vocab.findings["Tumour"].mentions == ["tumour", "mass"]
    assert vocab.findings["Scar"].description == "scar"
    path.write_text("findings:\n  Tumour:\n    mentions: tumour\n")  # an edited file is read again
    with pytest.raises(ConfigError, match="mentions must be a list"):
        load_vocabulary(path)
    with pytest.raises(ConfigError, match="not found"):
        load_vocabulary(tmp_path / "none.yaml")


def test_uncertainty_policies():
    labels = np.array([[1, 0, -1, np.nan], [-1, -1, -1, 0]], dtype=np.float32)
    policies = ["ignore", "ones", "zeros", "ignore"]
    targets, mask = apply_uncertainty(labels, policies)
    np.testing.assert_array_equal(targets, [[1, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(mask, [[True, True, True, False], [False, True, True, True]])
    cfg = LabelsConfig(names=["Cardiomegaly", "Edema"], uncertainty={"Edema": "ones"})
    assert uncertainty_policies(cfg) == ["ignore", "ones"]
    with pytest.raises(ValueError, match="columns"):
        apply_uncertainty(labels, ["ignore"])
