import json

import numpy as np
import pytest
import yaml

from mmrad.cli import main
from mmrad.models import MMRadModel
from mmrad.phantom.corpus import PHANTOM_ZERO_SHOT_PROMPTS
from mmrad.processing.collate import boxes_to_masks
from tests.conftest import PHANTOM_FINDINGS


@pytest.fixture
def phantom_model(tiny_config, tmp_path):
    import torch

    tiny_config.labels.names = list(PHANTOM_FINDINGS)
    torch.manual_seed(0)
    path = tmp_path / "model"
    MMRadModel(tiny_config).save_pretrained(path)
    return path


def test_evaluate_writes_all_blocks_and_roc_plots(phantom_model, phantom_corpus, tmp_path, capsys):
    prompts = tmp_path / "heldout.yaml"
    prompts.write_text(yaml.safe_dump(PHANTOM_ZERO_SHOT_PROMPTS))
    out = tmp_path / "eval" / "metrics.json"
    argv = ["evaluate", str(phantom_model), str(phantom_corpus), "--out", str(out), "--bootstrap", "50"]
    assert main([*argv, "--zero-shot-prompts", str(prompts)]) == 0
    metrics = json.loads(out.read_text())
    cls = metrics["classification"]
    assert set(cls["per_class"]) == set(PHANTOM_FINDINGS)
    for row in cls["per_class"].values():
        assert set(row) >= {"auroc", "auroc_ci", "auprc", "f1", "n", "n_positive"}
        if row["auroc"] is not None:
            assert row["auroc_ci"][0] <= row["auroc"] <= row["auroc_ci"][1]
    assert 0 <= cls["macro_auroc"] <= 1
    assert set(metrics["retrieval"]) >= {"image_to_text_R@1", "text_to_image_R@10"}
    grounding = metrics["grounding"]
    assert grounding["source"] == "masks" and grounding["pairs"] > 0
    assert grounding["attention_supervision"] == 0.0  # trained without model.loss.grounding
    for method in ("attention", "cosine"):
        assert grounding[method]["n"] == grounding["pairs"] and 0 <= grounding[method]["pointing_game"] <= 1
    zero_shot = metrics["zero_shot"]
    assert zero_shot["prompts"] == "phantom-heldout" and set(zero_shot["fusion"]["per_class"]) == set(PHANTOM_FINDINGS)
    plots = metrics["roc_plots"]
    assert plots and all((out.parent / p).is_file() for p in plots)
    printed = capsys.readouterr().out
    assert "macro" in printed and "pointing game" in printed and "zero-shot fusion" in printed
    assert "supervised" not in printed


def test_boxes_become_masks():
    boxes = [[{"label": "Pleural_Effusion", "x": 2.5, "y": 1.0, "w": 3.0, "h": 2.0}], []]
    masks, valid = boxes_to_masks(boxes, ["Cardiomegaly", "Pleural Effusion"], 8)
    assert valid.tolist() == [[False, True], [False, False]]
    expected = np.zeros((8, 8))
    expected[1:3, 2:6] = 1
    np.testing.assert_array_equal(masks[0, 1].numpy(), expected)
    assert masks[1].sum() == 0 and masks[0, 0].sum() == 0


def test_a_corpus_with_boxes_only_is_grounded_against_its_boxes(phantom_model, phantom_corpus, tmp_path, monkeypatch):
    import mmrad.corpus.format as corpus_io
    from mmrad.evaluation.corpus import evaluate_corpus

    load = corpus_io.load_corpus

    def without_masks(path):
        splits, info = load(path)
        return {name: split.remove_columns(["masks"]) for name, split in splits.items()}, info

    monkeypatch.setattr(corpus_io, "load_corpus", without_masks)
    metrics = evaluate_corpus(phantom_model, phantom_corpus, out=tmp_path / "metrics.json", n_bootstrap=0)
    grounding = metrics["grounding"]
    assert grounding["source"] == "boxes" and grounding["pairs"] > 0
    for method in ("attention", "cosine"):
        assert grounding[method]["n"] == grounding["pairs"] and 0 <= grounding[method]["pointing_game"] <= 1


def test_evaluate_errors_are_one_line(phantom_model, phantom_corpus, tmp_path, capsys):
    assert (
        main(
            ["evaluate", str(phantom_model), str(phantom_corpus), "--split", "nope", "--out", str(tmp_path / "m.json")]
        )
        == 1
    )
    assert "no rows in split 'nope'" in capsys.readouterr().err
