import json
import math
import shutil

import pytest
import torch

from mmrad.models import MMRadModel
from mmrad.processes import resolve_mixed_precision
from mmrad.training.checkpoints import (
    checkpoint_path,
    complete_checkpoints,
    latest_checkpoint,
    remove_partial_checkpoints,
)
from mmrad.training.loop import train
from mmrad.training.schedule import param_groups, warmup_cosine


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # linear warmup
    assert lrs[4] == pytest.approx(1.0)  # peak after warmup
    assert lrs[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))  # half way down the cosine
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_param_groups_split_towers_and_decay(tiny_model):
    groups = param_groups(
        tiny_model.named_parameters(),
        lr=1e-3,
        tower_lr=1e-5,
        weight_decay=0.1,
        is_tower=lambda n: n.startswith("vision."),
    )
    by_name = {g["name"]: g for g in groups}
    assert by_name["tower"]["lr"] == 1e-5 and by_name["new"]["lr"] == 1e-3
    assert all(n.startswith("vision.") for n in by_name["tower"]["param_names"])
    no_decay = [n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]]
    assert any(n.endswith("bias") for n in no_decay) and "logit_scale" in no_decay
    counted = sum(len(g["params"]) for g in groups)
    assert counted == sum(1 for p in tiny_model.parameters() if p.requires_grad)


def test_mixed_precision_auto_is_fp32_on_cpu():
    if not torch.cuda.is_available():
        assert resolve_mixed_precision("auto") == "no"
    assert resolve_mixed_precision("fp16") == "fp16"


def test_train_end_to_end_and_resume_gives_identical_losses(tiny_experiment, tmp_path):
    out = tmp_path / "run"
    model_dir = train(tiny_experiment, out)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 6 and len(summary["train_losses"]) == 6
    assert all(math.isfinite(v) for v in summary["train_losses"])
    assert [h["step"] for h in summary["history"]] == [3, 6]
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == ["step_00000003", "step_00000006"]
    model = MMRadModel.from_pretrained(model_dir)
    assert model.label_names == tiny_experiment.model.labels.names

    # a crash after step 3: drop everything later, resume, and compare with the uninterrupted run
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    train(tiny_experiment, resumed, resume=True)
    again = json.loads((resumed / "train_summary.json").read_text())
    assert again["steps"] == 6
    assert again["train_losses"] == pytest.approx(summary["train_losses"], abs=1e-6)


def test_lora_stage_from_a_saved_base(tiny_experiment, tmp_path):
    base = train(tiny_experiment, tmp_path / "base")
    cfg = tiny_experiment
    cfg.train.init_from = str(base)
    cfg.lora.enabled = True
    cfg.train.max_steps = 3
    model_dir = train(cfg, tmp_path / "lora")
    model = MMRadModel.from_pretrained(model_dir)  # exported with the adapters merged: a plain model
    assert model.lora_settings is None
    assert not any("lora" in name for name, _ in model.named_parameters())

    # beside it, the same model's adapters unmerged: an adapter-only folder that loads (on its base) to the same
    # outputs and that `mmrad push --adapter-only` shares
    adapter = tmp_path / "lora" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    unmerged = MMRadModel.from_pretrained(adapter)
    assert unmerged.lora_settings is not None
    pixels = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(unmerged.eval().classify(pixels), model.eval().classify(pixels), atol=1e-5, rtol=0)
    from mmrad.cli import main

    upload = tmp_path / "upload"
    code = main(["push", str(adapter), "org/tiny-lora", "--adapter-only", "--base-model", "org/tiny-base",
                 "--dry-run", str(upload)])  # fmt: skip
    assert code == 0 and (upload / "adapter_model.safetensors").is_file()
    assert '"base_model": "org/tiny-base"' in (upload / "config.json").read_text()


def test_the_card_describes_the_towers_and_the_training_data(tiny_experiment, tmp_path):
    model_dir = train(tiny_experiment, tmp_path / "run")
    card = (model_dir / "README.md").read_text()
    assert "No training data summary" not in card and "images (train" in card
    assert "open_clip ViT built from its config" in card and "4x4 patches" in card
    assert "Trained for 6 steps" in card
    summary = json.loads((model_dir / "data_summary.json").read_text())
    assert set(summary["corpus"]["prevalence"]) == set(tiny_experiment.model.labels.names)
    from mmrad.models.card import build_card

    resnet = MMRadModel.from_pretrained(model_dir).config  # the same folder, described as a ResNet
    resnet.vision.model_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1],
                                                                "width": 8, "head_width": 8}}  # fmt: skip
    (model_dir / "config.json").write_text(
        json.dumps({**json.loads((model_dir / "config.json").read_text()), "vision": resnet.vision.__dict__})
    )
    assert "ModifiedResNet built from its config: [1, 1, 1, 1] blocks per stage" in str(build_card(model_dir))


def test_partial_checkpoints_are_never_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    good = checkpoint_path(root, 5)
    good.mkdir(parents=True)
    (good / "COMPLETE").write_text("ok")
    (good / "trainer_state.json").write_text("{}")
    torn = checkpoint_path(root, 9)  # renamed but without the marker (cannot happen, but never trust it)
    torn.mkdir()
    (torn / "trainer_state.json").write_text("{}")
    tmp = root / ".tmp_step_00000012"
    tmp.mkdir()
    assert latest_checkpoint(root) == good
    removed = remove_partial_checkpoints(root)
    assert sorted(p.name for p in removed) == [".tmp_step_00000012", "step_00000009"]
    assert [p.name for p in root.iterdir()] == ["step_00000005"]


@pytest.mark.parametrize("local", [0.0, 1.0])
def test_frozen_text_tower_features_are_cached_with_the_same_losses(tiny_experiment, tmp_path, monkeypatch, local):
    import mmrad.training.data as data

    tiny_experiment.model.loss.local = local  # with the local loss the token states are cached too
    tiny_experiment.train.freeze_text = True
    tiny_experiment.train.max_steps = 3
    real, built = data.ReportFeatures, []
    monkeypatch.setattr(data, "ReportFeatures", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    cached = train(tiny_experiment, tmp_path / "cached")
    assert len(built) == 1 and len(built[0].pooled) > 0  # computed once, before the first step
    monkeypatch.setattr(data, "text_tower_frozen", lambda model: False)  # no cache: the tower runs each step
    train(tiny_experiment, tmp_path / "plain")
    a = json.loads((tmp_path / "cached" / "train_summary.json").read_text())["train_losses"]
    b = json.loads((tmp_path / "plain" / "train_summary.json").read_text())["train_losses"]
    assert len(built) == 1 and a == pytest.approx(b, abs=1e-5)
    assert MMRadModel.from_pretrained(cached).label_names == tiny_experiment.model.labels.names


@pytest.mark.parametrize(
    "config, pretrained",
    [
        ("tiny", False),
        ("biomedclip-lora", True),
        ("vit-b16-clinicalbert", True),
        ("nih-effnet-lite2", True),
        ("demo", True),
    ],
)
def test_shipped_configs_load_and_name_their_weights(config, pretrained):
    from mmrad.config.schema import load_config
    from mmrad.training.model import names_pretrained_weights

    cfg = load_config(config)
    assert names_pretrained_weights(cfg.model) is pretrained


@pytest.mark.slow
def test_biomedclip_from_the_hub_builds_and_runs():
    """Needs the network (--runslow): the real-scale config loads BiomedCLIP's towers through from_towers."""
    from mmrad.config.schema import load_config
    from mmrad.training.loop import build_model
    from tests.conftest import CONFIGS

    model = build_model(load_config(CONFIGS / "biomedclip-lora.yaml"))
    pixels = torch.zeros(1, 3, 224, 224)
    assert model.classify(pixels).shape == (1, len(model.label_names))


def test_loaders_prepare_batches_in_background_workers_by_default(tiny_experiment):
    """``data.num_workers`` unset: at least one loader worker (decoding and augmentation overlap the step), pinned
    batches on CUDA machines; the batches equal those of an in-process loader (0 workers)."""
    from mmrad.training.data import build_dataloaders, loader_options

    assert tiny_experiment.data.num_workers is None
    model = MMRadModel(tiny_experiment.model)
    data = build_dataloaders(tiny_experiment, model)
    expected = loader_options(None)
    assert 1 <= expected["num_workers"] <= 4
    for loader in (data.train_loader, data.eval_loader):
        assert loader.num_workers == expected["num_workers"]
        assert loader.pin_memory == torch.cuda.is_available()
    tiny_experiment.data.num_workers = 0
    in_process = build_dataloaders(tiny_experiment, model)
    assert in_process.train_loader.num_workers == 0
    background, foreground = next(iter(data.train_loader)), next(iter(in_process.train_loader))
    torch.testing.assert_close(background["pixel_values"], foreground["pixel_values"], atol=0, rtol=0)
    assert torch.equal(background["input_ids"], foreground["input_ids"])


def test_grounding_loss_trains_the_attention_on_the_corpus_masks(tiny_experiment, tmp_path):
    """``model.loss.grounding > 0``: the training batches carry the masks (warped with the images), the step has a
    ``grounding`` term that reaches the decoder, and a run trains; a corpus without masks or boxes is refused."""
    from mmrad.corpus.format import load_corpus
    from mmrad.errors import MMRadError
    from mmrad.training.data import build_dataloaders

    tiny_experiment.model.loss.grounding = 1.0
    tiny_experiment.data.num_workers = 0
    model = MMRadModel(tiny_experiment.model)
    batch = next(iter(build_dataloaders(tiny_experiment, model).train_loader))
    size = model.config.preprocess.image_size
    assert batch["masks"].shape == (8, len(model.label_names), size, size)
    present = batch["mask_valid"] & (batch["labels"] == 1)
    assert present.any()
    masks = {"masks": batch["masks"], "mask_valid": batch["mask_valid"]}
    output = model(pixel_values=batch["pixel_values"], labels=batch["labels"], **masks)
    assert float(output.loss_terms["grounding"].detach()) > 0
    output.loss_terms["grounding"].backward()
    assert model.decoder.layers[-1].cross_attn.q.weight.grad.abs().sum() > 0
    custom = model.tokenize(["left pleural effusion"])  # masks belong to the finding queries, not to custom ones
    other = model(pixel_values=batch["pixel_values"], labels=batch["labels"][:, :1], masks=batch["masks"],
                  mask_valid=batch["mask_valid"], query_input_ids=custom["input_ids"],
                  query_attention_mask=custom["attention_mask"])  # fmt: skip
    assert "grounding" not in other.loss_terms

    tiny_experiment.train.max_steps = tiny_experiment.train.eval_every = tiny_experiment.train.save_every = 2
    train(tiny_experiment, tmp_path / "run")
    logged = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert len(logged["train_losses"]) == 2 and all(math.isfinite(v) for v in logged["train_losses"])

    splits, info = load_corpus(tiny_experiment.data.corpus)
    splits["train"] = splits["train"].remove_columns(["masks", "boxes"])
    with pytest.raises(MMRadError, match="needs finding masks or boxes"):
        build_dataloaders(tiny_experiment, model, splits=splits, info=info)


def test_epochs_set_the_number_of_steps(tiny_experiment, tmp_path):
    cfg = tiny_experiment
    cfg.train.epochs = 2
    train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    from mmrad.corpus.format import load_corpus

    rows = len(load_corpus(cfg.data.corpus)[0]["train"])
    per_epoch = rows // cfg.data.batch_size  # the short last batch is dropped when there are two or more
    assert summary["steps"] == 2 * per_epoch and cfg.train.max_steps == 6  # the caller's config is not changed


def test_weight_average_follows_the_weights_and_swaps_in_and_out():
    from mmrad.training.averaging import WeightAverage

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(net, 0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    average.update(net)  # warm-up decay min(0.9, 2 / 11)
    expected = start["0.weight"] + (1 - 2 / 11) * 1.0
    torch.testing.assert_close(average.shadow["0.weight"], expected)
    with average.applied(net):
        torch.testing.assert_close(net[0].weight, expected)
    torch.testing.assert_close(net[0].weight, start["0.weight"] + 1.0)  # the model's own weights are back
    again = WeightAverage(net, 0.9)
    again.load_state_dict(average.state_dict())
    assert again.updates == 1 and torch.equal(again.shadow["0.weight"], average.shadow["0.weight"])
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(net, 1.0)


def test_training_with_a_weight_average_exports_it_and_resumes_identically(tiny_experiment, tmp_path):
    cfg = tiny_experiment
    cfg.train.ema_decay = 0.8
    model_dir = train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    train(cfg, resumed, resume=True)
    again = json.loads((resumed / "train_summary.json").read_text())
    assert again["train_losses"] == pytest.approx(summary["train_losses"], abs=1e-6)
    assert again["history"][-1] == pytest.approx(summary["history"][-1])  # validated on the same average
    a, b = MMRadModel.from_pretrained(model_dir), MMRadModel.from_pretrained(resumed / "model")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0, msg=name)
