"""MMRadModel: shapes, losses, gradients, queries, and strict save/load."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmrad.config.schema import ConfigError, LabelsConfig, MMRadConfig
from mmrad.models import CheckpointError, MMRadModel, MMRadOutput, is_tower_parameter
from tests.test_towers import VISION_CFGS, tower_config

pytestmark = pytest.mark.usefixtures("single_thread")

NAN = float("nan")


def make_batch(model, n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = model.config.preprocess.image_size
    reports = ["small left pleural effusion", "no acute process", "cardiomegaly", "right pneumothorax"] * n
    labels = torch.randint(-1, 2, (n, len(model.label_names)), generator=generator).float()
    labels[0, :3] = NAN
    return {
        "pixel_values": torch.randn(n, 3, size, size, generator=generator),
        **model.tokenize(reports[:n]),
        "labels": labels,
    }


def missing_grads(model) -> list[str]:
    """Trainable parameters outside the graph, and components (top-level modules) whose gradients are all zero.
    (Single zero gradients are legitimate: ModifiedResNet zero-initialises each block's last BatchNorm scale.)"""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    components = {n.split(".")[0] for n, _ in params}
    dead = [c for c in components if not any(p.grad.any() for n, p in params if n.startswith(c + ".") or n == c)]
    return missing + dead


@pytest.mark.parametrize("kind", list(VISION_CFGS))
def test_forward_shapes_finite_loss_and_gradients_everywhere(tiny_config, kind):
    cfg = tower_config(tiny_config, kind)
    cfg.loss.local = 0.5
    torch.manual_seed(0)
    model = MMRadModel(cfg)
    batch = make_batch(model)
    out = model(**batch)
    assert isinstance(out, MMRadOutput)
    k, side = len(model.label_names), VISION_CFGS[kind][2]
    assert out.logits.shape == (4, k)
    assert out.image_embeds.shape == out.text_embeds.shape == (4, 16)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4))
    assert out.patch_embeds.shape == (4, side * side, 16) and out.grid == (side, side)
    assert out.query_embeds.shape == (k, 16)
    assert len(out.query_attentions) == cfg.fusion.num_layers
    assert out.query_attentions[-1].shape == (4, k, side * side)
    assert set(out.loss_terms) == {"contrastive", "classification", "local"}
    assert torch.isfinite(out.loss)
    expected = sum(getattr(cfg.loss, name) * term for name, term in out.loss_terms.items())
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert missing_grads(model) == []  # every trainable part, towers included, gets a gradient


@pytest.mark.parametrize("presence", ["head", "evidence", "both"])
def test_presence_modes(tiny_config, presence):
    cfg = copy.deepcopy(tiny_config)
    cfg.fusion.presence = presence
    cfg.fusion.num_layers = 2
    torch.manual_seed(0)
    model = MMRadModel(cfg)
    batch = make_batch(model)
    out = model(**batch)
    _, _, evidence = model.decoder(out.query_embeds, out.patch_embeds)
    head = model.head(model.decoder(out.query_embeds, out.patch_embeds)[0]).squeeze(-1)
    expected = {"head": head, "evidence": evidence + model.head.bias, "both": head + evidence}[presence]
    torch.testing.assert_close(out.logits, expected)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # DDP-safe in every mode


def test_every_parameter_is_in_the_graph_whatever_the_losses(tiny_model, batch):
    """Without labels (or without reports) the unused outputs still join the graph, so DDP needs no
    find_unused_parameters."""
    for inputs in ({k: v for k, v in batch.items() if k != "labels"}, {"pixel_values": batch["pixel_values"]}):
        tiny_model.zero_grad(set_to_none=True)
        out = tiny_model(**inputs, labels=None if "input_ids" in inputs else batch["labels"])
        out.loss.backward()
        assert all(p.grad is not None for p in tiny_model.parameters() if p.requires_grad)


def test_nan_labels_contribute_nothing_through_the_model(tiny_model, batch):
    tiny_model.config.loss.contrastive = 0.0
    out = tiny_model(**batch)
    out.logits.retain_grad()
    out.loss.backward()
    unknown = torch.isnan(batch["labels"])
    assert torch.all(out.logits.grad[unknown] == 0)
    all_nan = tiny_model(**{**batch, "labels": torch.full_like(batch["labels"], NAN)})
    assert all_nan.loss_terms["classification"].item() == 0.0


@pytest.mark.parametrize("policy", ["ignore", "ones", "zeros"])
def test_uncertainty_policy_per_finding(tiny_config, policy):
    cfg = copy.deepcopy(tiny_config)
    cfg.labels = LabelsConfig(names=["Pleural Effusion", "Cardiomegaly"], uncertainty={"Pleural Effusion": policy})
    model = MMRadModel(cfg)
    assert model.uncertainty_policies == [policy, "ignore"]
    batch = make_batch(model, n=2)
    batch["labels"] = torch.tensor([[-1.0, -1.0], [-1.0, 1.0]])
    out = model(**batch)
    logits = out.logits.detach()
    targets = {"ones": 1.0, "zeros": 0.0}
    counted = [(i, 0, targets[policy]) for i in range(2)] if policy != "ignore" else []
    counted.append((1, 1, 1.0))
    expected = torch.stack(
        [torch.nn.functional.binary_cross_entropy_with_logits(logits[i, j], torch.tensor(t)) for i, j, t in counted]
    ).mean()
    torch.testing.assert_close(out.loss_terms["classification"], expected)


def test_scoring_queries_classify_and_patch_embeddings(tiny_model, batch):
    tiny_model.eval()
    px = batch["pixel_values"]
    with torch.no_grad():
        probs = tiny_model.classify(px)
        logits, maps = tiny_model.score_queries(px, ["left pleural effusion", "pneumothorax", "rib fracture"])
        cached = tiny_model.embed_texts(["left pleural effusion", "pneumothorax", "rib fracture"])
        again, _ = tiny_model.score_queries(px, cached)
        patches, grid = tiny_model.encode_patches(px)
        out = tiny_model(**batch)
    assert probs.shape == (4, 14) and torch.all((probs > 0) & (probs < 1))
    torch.testing.assert_close(probs, torch.sigmoid(out.logits))
    assert logits.shape == (4, 3) and maps.shape == (4, 3, 4, 4) and grid == (4, 4)
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(4, 3))
    torch.testing.assert_close(again, logits)
    assert patches.shape == (4, 16, 16)
    torch.testing.assert_close(patches.norm(dim=-1), torch.ones(4, 16))
    torch.testing.assert_close(tiny_model.encode_image(px), out.image_embeds)
    torch.testing.assert_close(tiny_model.encode_text(batch["input_ids"], batch["attention_mask"]), out.text_embeds)


def test_custom_queries_in_forward(tiny_model, batch):
    queries = tiny_model.tokenize(["pleural effusion", "no pleural effusion"])
    out = tiny_model(
        batch["pixel_values"],
        query_input_ids=queries["input_ids"],
        query_attention_mask=queries["attention_mask"],
        labels=torch.tensor([[1.0, 0.0]] * 4),
    )
    assert out.logits.shape == (4, 2) and "classification" in out.loss_terms


def test_label_queries_are_cached_until_the_text_tower_changes(tiny_model):
    tiny_model.eval()
    with torch.no_grad():
        first = tiny_model._label_features()
        assert tiny_model._label_features() is first
        torch.testing.assert_close(tiny_model.label_queries(), tiny_model.embed_texts(tiny_model.label_descriptions))
    optimizer = torch.optim.AdamW(tiny_model.text.parameters(), lr=1e-2)
    tiny_model.train()
    features = tiny_model._label_features()
    assert features is not first and features.requires_grad  # the tower trains: always fresh, with gradient
    features.sum().backward()
    optimizer.step()
    with torch.no_grad():
        second = tiny_model._label_features()
    assert second is not first and not torch.allclose(second, first)
    tiny_model.text.requires_grad_(False)  # a frozen tower: cached while training, but the projection still learns
    assert tiny_model._label_features() is second
    tiny_model.label_queries().sum().backward()
    assert tiny_model.text_proj.weight.grad is not None


def test_precomputed_text_features_give_the_same_output(tiny_model, batch):
    tiny_model.eval()
    with torch.no_grad():
        direct = tiny_model(**batch)
        features = tiny_model.text_features(batch["input_ids"], batch["attention_mask"])
        cached = tiny_model(batch["pixel_values"], labels=batch["labels"], text_features=features)
    torch.testing.assert_close(cached.loss, direct.loss)
    torch.testing.assert_close(cached.text_embeds, direct.text_embeds)


def test_tower_parameter_names(tiny_model):
    names = [n for n, _ in tiny_model.named_parameters()]
    towers = [n for n in names if is_tower_parameter(n)]
    assert towers and all(n.startswith(("vision.", "text.")) for n in towers)
    assert {n.split(".")[0] for n in names if not is_tower_parameter(n)} == {
        "image_proj",
        "patch_proj",
        "text_proj",
        "logit_scale",
        "decoder",
        "head",
    }


def test_config_mismatches_are_clear_errors(tiny_config):
    cfg = copy.deepcopy(tiny_config)
    cfg.preprocess.image_size = 64
    with pytest.raises(ConfigError, match="image_size=64"):
        MMRadModel(cfg)
    cfg = copy.deepcopy(tiny_config)
    cfg.text.hf_config = {**cfg.text.hf_config, "vocab_size": 99}
    with pytest.raises(ConfigError, match="vocab_size is 99"):
        MMRadModel(cfg)


# ----------------------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_save_load_round_trip(tmp_path, tiny_config, kind):
    model = MMRadModel(tower_config(tiny_config, kind))
    batch = make_batch(model)
    model.train()
    model(**batch).loss.backward()  # BatchNorm statistics move; they must be saved too
    model.eval()
    with torch.no_grad():
        before = model(**batch)
    folder = model.save_pretrained(tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {
        "config.json", "model.safetensors", "tokenizer", "prompt_bank.yaml", "README.md"
    }  # fmt: skip
    loaded = MMRadModel.from_pretrained(folder)
    assert not loaded.training and loaded.label_names == model.label_names
    with torch.no_grad():
        after = loaded(**batch)
    for field in ("logits", "image_embeds", "text_embeds", "patch_embeds", "loss"):
        torch.testing.assert_close(getattr(after, field), getattr(before, field), atol=1e-5, rtol=0)
    torch.testing.assert_close(after.query_attentions[-1], before.query_attentions[-1], atol=1e-5, rtol=0)


def test_saved_config_rebuilds_offline_without_vocabulary_files(tmp_path, tiny_model):
    folder = tiny_model.save_pretrained(tmp_path / "model")
    data = json.loads((folder / "config.json").read_text())
    assert data["model_type"] == "mmrad" and data["label_names"] == tiny_model.label_names
    assert data["vision"]["model_cfg"]["vision_cfg"]["patch_size"] == 8
    assert data["text"]["hf_config"]["model_type"] == "bert"
    assert data["preprocess"]["image_size"] == 32 and data["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert data["labels"]["descriptions"]["Pleural Effusion"] == tiny_model.label_descriptions[10]
    data["labels"]["vocabulary"] = str(tmp_path / "gone.yaml")  # a user vocabulary not present here
    (folder / "config.json").write_text(json.dumps(data))
    assert MMRadModel.from_pretrained(folder).label_names == tiny_model.label_names
    from mmrad.models.folder import META_KEYS

    meta_free = {k: v for k, v in data.items() if k not in META_KEYS}
    assert data["token_grid"] == [4, 4]  # recorded for the card
    assert MMRadConfig.from_dict(meta_free).text.tokenizer == "mmrad:radiology_wordpiece"


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_loading_is_strict(tmp_path, tiny_model, change):
    folder = tiny_model.save_pretrained(tmp_path / "model")
    state = load_file(str(folder / "model.safetensors"))
    if change == "missing":
        state.pop("head.bias")
    elif change == "unexpected":
        state["decoder.extra"] = torch.zeros(1)
    else:
        state["head.weight"] = torch.zeros(1, 8)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises((CheckpointError, RuntimeError), match="head.bias|decoder.extra|head.weight"):
        MMRadModel.from_pretrained(folder)


def test_loading_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        MMRadModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not a model folder"):
        MMRadModel.from_pretrained(str(tmp_path / "no" / "such" / "dir"))


def test_global_term_adds_the_image_query_cosine_to_every_logit(tiny_config, tmp_path):
    cfg = copy.deepcopy(tiny_config)
    cfg.fusion.global_term = True
    torch.manual_seed(0)
    model = MMRadModel(cfg)
    batch = make_batch(model)
    out = model(**batch)
    states = model.decoder(out.query_embeds, out.patch_embeds)[0]
    cosine = out.image_embeds @ out.query_embeds.t()
    torch.testing.assert_close(out.logits, model.head(states).squeeze(-1) + 10.0 * cosine)
    with pytest.raises(ValueError, match="need the global image embeddings"):
        model.decode(out.patch_embeds, out.query_embeds)
    torch.testing.assert_close(model.classify(batch["pixel_values"]), torch.sigmoid(out.logits))
    out.loss.backward()
    assert model.global_scale.grad is not None
    model.save_pretrained(tmp_path / "m")
    again = MMRadModel.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(again(**batch).logits, out.logits)
    from mmrad.inference.zeroshot import ZeroShotClassifier

    zs = ZeroShotClassifier(model.eval(), "fusion")
    assert zs.feature_kinds == ("patches", "image")
    probs = zs.score(batch["pixel_values"], ["enlarged heart", "no effusion"])
    assert probs.shape == (len(batch["pixel_values"]), 2) and torch.isfinite(probs).all()
