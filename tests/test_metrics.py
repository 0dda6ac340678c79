import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from mmrad.evaluation.metrics import load_metric
from mmrad.evaluation.metrics.functional import (
    auroc,
    average_precision,
    contrast_to_noise,
    f1_score,
    grounding_metrics,
    iou_at_thresholds,
    multilabel_metrics,
    pointing_game,
    retrieval_recall,
)


def test_auroc_hand_computed_and_ties():
    # positives 0.8, 0.4; negatives 0.6, 0.2: pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) -> 3/4
    assert auroc([0.8, 0.6, 0.4, 0.2], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts one half
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_auroc_and_ap_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 10, 60) / 10.0  # many ties
        targets = rng.random(60) < 0.3
        if targets.all() or not targets.any():
            continue
        assert auroc(scores, targets) == pytest.approx(roc_auc_score(targets, scores))
        assert average_precision(scores, targets) == pytest.approx(average_precision_score(targets, scores))


def test_f1_hand_computed():
    # predicted positive: 0.9, 0.6 (threshold 0.5); truth: 0.9, 0.3 -> tp 1, fp 1, fn 1 -> 2/(2+1+1)
    assert f1_score([0.9, 0.6, 0.3, 0.1], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert f1_score([0.9, 0.6, 0.3, 0.1], [1, 0, 1, 0], threshold=0.2) == pytest.approx(2 * 2 / (3 + 2))


def test_multilabel_masks_nan_and_handles_uncertain():
    scores = np.array([[0.9, 0.2], [0.8, 0.7], [0.1, 0.6], [0.3, 0.1]])
    labels = np.array([[1, 0], [-1, 1], [0, np.nan], [0, 0]])
    out = multilabel_metrics(scores, labels, ["a", "b"], n_bootstrap=0)
    # a, uncertain ignored: rows 0, 2, 3 -> perfect; b: NaN row masked -> rows 0, 1, 3 -> perfect
    assert out["per_class"]["a"]["auroc"] == pytest.approx(1.0) and out["per_class"]["a"]["n"] == 3
    assert out["per_class"]["b"]["n"] == 3 and out["per_class"]["b"]["auroc"] == pytest.approx(1.0)
    neg = multilabel_metrics(scores, labels, ["a", "b"], uncertain="negative", n_bootstrap=0)
    # a with row 1 negative (score 0.8): positives {0.9}, negatives {0.8, 0.1, 0.3} -> 1.0 still
    assert neg["per_class"]["a"]["n"] == 4
    pos = multilabel_metrics(scores, labels, ["a", "b"], uncertain="positive", n_bootstrap=0)
    assert pos["per_class"]["a"]["n_positive"] == 2
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        multilabel_metrics(scores, np.array([[2, 0]] * 4), n_bootstrap=0)


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(1)
    labels = (rng.random((300, 3)) < 0.4).astype(float)
    scores = labels * 0.6 + rng.random((300, 3)) * 0.7
    labels[:20, 1] = np.nan
    a = multilabel_metrics(scores, labels, ["x", "y", "z"], n_bootstrap=300, seed=3)
    b = multilabel_metrics(scores, labels, ["x", "y", "z"], n_bootstrap=300, seed=3)
    assert a == b or json_equal(a, b)
    for row in a["per_class"].values():
        lo, hi = row["auroc_ci"]
        assert lo <= row["auroc"] <= hi and hi - lo < 0.2
    lo, hi = a["macro_auroc_ci"]
    assert lo <= a["macro_auroc"] <= hi


def json_equal(a, b):
    import json

    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_bootstrap_matches_slow_reference():
    # the vectorised masked bootstrap equals a loop of sklearn AUROCs on the same resamples
    rng = np.random.default_rng(2)
    labels = (rng.random((80, 1)) < 0.5).astype(float)
    labels[::7] = np.nan
    scores = rng.random((80, 1)) + 0.3 * np.nan_to_num(labels)
    out = multilabel_metrics(scores, labels, ["a"], n_bootstrap=50, seed=9)
    resamples = np.random.default_rng(9).integers(0, 80, size=(50, 80))
    ref = []
    for r in resamples:
        v = ~np.isnan(labels[r, 0])
        t, s = labels[r, 0][v], scores[r, 0][v]
        ref.append(roc_auc_score(t, s) if 0 < t.sum() < len(t) else np.nan)
    lo, hi = np.nanquantile(ref, [0.025, 0.975])
    assert out["per_class"]["a"]["auroc_ci"] == pytest.approx([lo, hi])


def test_retrieval_recall():
    img = np.eye(4)
    txt = np.eye(4)
    txt[3] = [0, 0, 1.0, 0.1]  # report 3 looks like report 2
    out = retrieval_recall(img, txt, ks=(1, 2))
    # image 2 now has report 3 nearly as close but report 2 still closest; image 3's best is report 3 (0.1/|.|)
    assert out["image_to_text_R@1"] == pytest.approx(1.0)
    # text 3's nearest image is image 2 (1.0 > 0.1) -> 3 of 4 texts at rank 0
    assert out["text_to_image_R@1"] == pytest.approx(0.75)
    assert out["text_to_image_R@2"] == pytest.approx(1.0)


def test_grounding_hand_computed():
    heat = np.zeros((4, 4))
    heat[1, 1] = 1.0
    heat[3, 3] = 0.5
    mask = np.zeros((4, 4))
    mask[0:2, 0:2] = 1
    assert pointing_game(heat, mask) == 1.0
    assert pointing_game(heat, 1 - mask) == 0.0
    # inside: [0, 0, 0, 1] mean .25 var .1875; outside: 11 zeros + .5 -> mean 1/24, var
    inside = np.array([0, 0, 0, 1.0])
    outside = np.r_[np.zeros(11), 0.5]
    expected = abs(inside.mean() - outside.mean()) / np.sqrt(inside.var() + outside.var())
    assert contrast_to_noise(heat, mask) == pytest.approx(expected)
    assert contrast_to_noise(heat * 7 + 3, mask) == pytest.approx(expected)  # scale-free
    ious = iou_at_thresholds(heat, mask, thresholds=(0.4, 0.9))
    assert ious["iou@0.4"] == pytest.approx(1 / 5)  # {(1,1),(3,3)} vs 4 mask pixels: 1 / (2 + 4 - 1)
    assert ious["iou@0.9"] == pytest.approx(1 / 4)
    agg = grounding_metrics([heat, heat], [mask, np.zeros((4, 4))], thresholds=(0.4,))
    assert agg["n"] == 1 and agg["pointing_game"] == 1.0


def test_evaluate_modules_load_by_path_offline():
    metric = load_metric("multilabel_classification")
    metric.add_batch(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[1, 0], [0, float("nan")]])
    metric.add_batch(predictions=[[0.4, 0.7]], references=[[0, 1]])
    out = metric.compute(names=["a", "b"], n_bootstrap=0)
    assert out["per_class"]["a"]["auroc"] == pytest.approx(1.0) and out["per_class"]["b"]["n"] == 2

    retrieval = load_metric("retrieval")
    out = retrieval.compute(predictions=np.eye(3).tolist(), references=np.eye(3).tolist(), ks=(1,))
    assert out["image_to_text_R@1"] == 1.0

    grounding = load_metric("grounding")
    heat = np.zeros((3, 3))
    heat[0, 0] = 1
    out = grounding.compute(predictions=[heat.tolist()], references=[np.eye(3, dtype=np.uint8).tolist()])
    assert out["pointing_game"] == 1.0 and out["n"] == 1
