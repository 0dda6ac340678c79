"""LoRA through peft: targets per tower, what trains, merging, adapter-only save/load, the summary."""

import copy

import pytest
import torch

from mmrad.config.schema import ConfigError, LoraSettings
from mmrad.models import CheckpointError, MMRadModel, apply_lora, is_tower_parameter, merge_lora, trainable_summary
from mmrad.models.lora import adapter_state_dict
from tests.test_modeling import make_batch
from tests.test_towers import tower_config

pytestmark = pytest.mark.usefixtures("single_thread")

SETTINGS = LoraSettings(enabled=True, r=4, alpha=8)


def perturb_adapters(model, seed=0):
    """Fresh LoRA B matrices are zero; give them values so that adapters change outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


@pytest.mark.parametrize(
    "kind, vision_layer",
    [("vit", "MultiheadAttention"), ("resnet", "Conv2d"), ("timm", "Linear")],
)
def test_lora_wraps_both_towers_and_trains_only_adapters_and_new_modules(tiny_config, kind, vision_layer):
    torch.manual_seed(0)
    model = MMRadModel(tower_config(tiny_config, kind))
    total_before = sum(p.numel() for p in model.parameters())
    apply_lora(model, SETTINGS)
    for tower in ("vision", "text"):
        wrapped = [m for n, m in model.named_modules() if n.startswith(tower + ".") and hasattr(m, "lora_A")]
        assert len(wrapped) > 0
    assert any(
        type(m.get_base_layer()).__name__ == vision_layer for m in model.vision.modules() if hasattr(m, "lora_A")
    )
    for name, param in model.named_parameters():
        if is_tower_parameter(name):
            assert param.requires_grad == ("lora_" in name), name
        else:
            assert param.requires_grad, name  # projections, decoder and head train in full
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert total > total_before and trainable / total < 0.5
    batch = make_batch(model)
    model(**batch).loss.backward()
    lora = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    assert all(p.grad is not None for _, p in lora)
    for tower in ("vision", "text"):  # B gets a gradient from the very first step (A's is zero while B is)
        assert any(p.grad.any() for n, p in lora if n.startswith(tower) and "lora_B" in n)


@pytest.mark.parametrize("kind", ["vit", "resnet", "timm"])
def test_merged_equals_unmerged(tiny_config, kind):
    torch.manual_seed(0)
    model = MMRadModel(tower_config(tiny_config, kind)).eval()
    batch = make_batch(model)
    with torch.no_grad():
        base = model(**batch).logits
    apply_lora(model, SETTINGS)
    perturb_adapters(model)
    model.eval()
    with torch.no_grad():
        unmerged = model(**batch)
    assert not torch.allclose(unmerged.logits, base, atol=1e-4)  # the adapters do something
    merge_lora(model)
    assert model.lora_settings is None
    assert not any("lora_" in n or "base_layer" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        merged = model(**batch)
    torch.testing.assert_close(merged.logits, unmerged.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged.image_embeds, unmerged.image_embeds, atol=1e-5, rtol=0)


def test_unmatched_target_lists_the_modules_that_exist(tiny_model):
    with pytest.raises(ConfigError, match=r"\['q_proj'\] match no module.*c_fc"):
        apply_lora(tiny_model, LoraSettings(vision_targets=["q_proj"], towers=["vision"]))
    with pytest.raises(ConfigError, match="match no module.*query"):
        apply_lora(tiny_model, LoraSettings(text_targets=["Wqkv"], towers=["text"]))


def test_an_adapter_the_forward_bypasses_is_an_error_and_changes_nothing(tiny_model):
    before = {n: (p.shape, p.requires_grad) for n, p in tiny_model.named_parameters()}
    # nn.MultiheadAttention reads out_proj's weight directly, so an adapter there would never act
    with pytest.raises(ConfigError, match="bypasses"):
        apply_lora(tiny_model, LoraSettings(vision_targets=["attn.out_proj"]))
    with pytest.raises(ConfigError, match="bypasses"):
        apply_lora(tiny_model, LoraSettings(vision_targets=["attn", "attn.out_proj"]))
    assert {n: (p.shape, p.requires_grad) for n, p in tiny_model.named_parameters()} == before
    assert tiny_model.lora_settings is None


def test_lora_on_one_tower_only(tiny_model):
    apply_lora(tiny_model, LoraSettings(towers=["text"]))
    assert all(p.requires_grad for p in tiny_model.vision.parameters())
    assert not any("lora_" in n for n, _ in tiny_model.vision.named_parameters())
    with pytest.raises(ConfigError, match="already applied"):
        apply_lora(tiny_model, SETTINGS)


def test_trainable_summary(tiny_model):
    apply_lora(tiny_model, SETTINGS)
    table = trainable_summary(tiny_model)
    lines = table.splitlines()
    assert lines[0].split() == ["component", "trainable", "total", "%"]
    rows = {line.rsplit(maxsplit=3)[0]: line.split()[-3:] for line in lines[1:]}
    assert rows["vision"][0] == "0" and rows["text"][0] == "0"
    assert rows["vision (LoRA)"][2] == "100.00" and rows["decoder"][2] == "100.00"
    assert set(rows) >= {"image_proj", "patch_proj", "text_proj", "head", "logit_scale", "all"}


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_adapter_only_save_is_small_and_reloads_identically(tmp_path, tiny_config, kind):
    torch.manual_seed(0)
    cfg = tower_config(tiny_config, kind)
    MMRadModel(cfg).save_pretrained(tmp_path / "base")
    model = MMRadModel.from_pretrained(tmp_path / "base")
    apply_lora(model, SETTINGS)
    model.train()
    batch = make_batch(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**batch).loss.backward()  # one step: adapters, new modules and BatchNorm statistics all move
    optimizer.step()
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    full = model.save_pretrained(tmp_path / "full")
    adapters = model.save_pretrained(tmp_path / "adapters", adapter_only=True)
    assert not (adapters / "model.safetensors").exists()
    full_size = (full / "model.safetensors").stat().st_size
    adapter_size = (adapters / "adapter_model.safetensors").stat().st_size
    if kind == "resnet":  # the demo-sized ViT's new modules outweigh its towers; the ResNet shows the saving
        assert adapter_size < full_size / 4
    else:
        assert adapter_size < full_size
    assert set(adapter_state_dict(model)) < set(model.state_dict())
    for folder in (full, adapters):
        loaded = MMRadModel.from_pretrained(folder)
        assert loaded.lora_settings is not None
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=0)


def test_adapter_only_needs_a_base(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="needs LoRA"):
        tiny_model.save_pretrained(tmp_path / "a", adapter_only=True)
    apply_lora(tiny_model, SETTINGS)
    with pytest.raises(CheckpointError, match="random"):
        tiny_model.save_pretrained(tmp_path / "a", adapter_only=True)


def test_adapter_base_must_match(tmp_path, tiny_config):
    MMRadModel(tiny_config).save_pretrained(tmp_path / "base")
    other = copy.deepcopy(tiny_config)
    other.vision.model_cfg["vision_cfg"]["layers"] = 1
    model = MMRadModel(other)
    apply_lora(model, SETTINGS)
    model.save_pretrained(tmp_path / "adapters", adapter_only=True, base_model=str(tmp_path / "base"))
    with pytest.raises(CheckpointError, match="missing|unexpected"):
        MMRadModel.from_pretrained(tmp_path / "adapters")


def _first_blocks(model) -> list[torch.nn.Module]:
    """An early module inside the first checkpointed unit of each tower (a ViT block, a ResNet stage, a BERT layer):
    recomputation calls it again. (transformers checkpoints a layer's ``forward``, so hooks on the layer itself fire
    once; torch stops recomputing after the last tensor backward needs, so hooks late in a block may not fire.)"""
    visual = model.vision.visual
    if model.vision.kind == "vit":
        vision = visual.transformer.resblocks[0].ln_1
    elif model.vision.kind == "resnet":
        vision = visual.layer1[0].conv1
    else:
        vision = visual.trunk.blocks[0].norm1
    return [vision, model.text.encoder.encoder.layer[0].attention]


@pytest.mark.parametrize("kind", ["vit", "resnet", "timm"])
def test_grad_checkpointing_recomputes_both_towers_with_lora(tiny_config, kind):
    """Checkpointed blocks run twice per step (forward, then again in backward) and give the same gradients."""
    torch.manual_seed(0)
    model = MMRadModel(tower_config(tiny_config, kind))
    apply_lora(model, SETTINGS)
    perturb_adapters(model)
    batch = make_batch(model)
    calls = [0, 0]
    for i, block in enumerate(_first_blocks(model)):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    grads, counts = [], []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        calls[:] = [0, 0]
        model.train()
        model(**batch).loss.backward()
        counts.append(list(calls))  # the text tower runs on the reports and on the finding descriptions
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        model.zero_grad(set_to_none=True)
    assert counts[1] == [2 * c for c in counts[0]] and min(counts[0]) >= 1
    assert set(grads[0]) == set(grads[1]) and any("lora_" in n for n in grads[1])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def _adapted_attention(batch_first: bool, unmerged: bool = True):
    """An nn.MultiheadAttention (width 32, 4 heads) with a LoRA adapter whose B is non-zero."""
    from peft import LoraConfig, inject_adapter_in_model

    from mmrad.models.lora_attention import UnmergedLoraMultiheadAttention

    torch.manual_seed(0)
    root = torch.nn.Module()
    root.attn = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["attn"])
    if unmerged:
        config._register_custom_module({torch.nn.MultiheadAttention: UnmergedLoraMultiheadAttention})
    inject_adapter_in_model(config, root)
    for name, param in root.named_parameters():
        param.requires_grad = "lora_" in name
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    return root.attn


def _reference(layer, x, mask):
    """A plain nn.MultiheadAttention with the adapters' deltas added once: W + B A * scaling."""
    base = layer.get_base_layer()
    out = base.out_proj
    reference = torch.nn.MultiheadAttention(32, 4, batch_first=base.batch_first)
    with torch.no_grad():
        reference.in_proj_weight.copy_(base.in_proj_weight + layer.get_delta_weight("default"))
        reference.in_proj_bias.copy_(base.in_proj_bias)
        reference.out_proj.weight.copy_(out.get_base_layer().weight + out.get_delta_weight("default"))
        reference.out_proj.bias.copy_(out.get_base_layer().bias)
    return reference(x, x, x, need_weights=False, attn_mask=mask)[0]


@pytest.mark.parametrize("batch_first", [True, False])
def test_unmerged_attention_adapter_computes_w_plus_delta(batch_first):
    """mmrad's MHA adapter (no merge per forward) computes attention with W + dW for q/k/v and the output projection,
    with and without an additive mask (peft 0.21's own merge gives W + 2 dW for the output projection); calls it
    does not cover (attention weights asked for) take peft's merge-per-forward path with mmrad's merge, which gives
    the same outputs and adapter gradients."""
    from mmrad.models.lora_attention import UnmergedLoraMultiheadAttention

    layer = _adapted_attention(batch_first)
    assert isinstance(layer, UnmergedLoraMultiheadAttention)
    params = [p for n, p in layer.named_parameters() if "lora_" in n]
    assert len(params) == 4  # A and B of in_proj and of out_proj
    x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    for mask in (None, torch.randn(5, 5), torch.randn(2 * 4, 5, 5)):
        ours = layer(x, x, x, need_weights=False, attn_mask=mask)
        assert ours[1] is None
        torch.testing.assert_close(ours[0], _reference(layer, x, mask), atol=1e-5, rtol=1e-5)
        merged = layer(x, x, x, need_weights=True, attn_mask=mask)  # peft's forward, with mmrad's merge
        assert merged[1] is not None
        torch.testing.assert_close(merged[0], ours[0], atol=1e-5, rtol=1e-5)
        grads = torch.autograd.grad(ours[0].square().sum(), params)
        expected = torch.autograd.grad(merged[0].square().sum(), params)
        for a, b in zip(grads, expected, strict=True):
            assert a.abs().sum() > 0
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    merges = []
    original = layer.merge
    layer.merge = lambda *a, **k: (merges.append(1), original(*a, **k))[1]
    layer(x, x, x, need_weights=False)
    assert not merges  # the covered call never merges
    layer(x, x, x, need_weights=True)
    assert merges


def test_merged_attention_equals_the_adapters():
    """Unloading with merge (merge_lora) bakes W + dW into the plain module, once."""
    from mmrad.models.lora import _unload

    layer = _adapted_attention(batch_first=True)
    x = torch.randn(2, 5, 32)
    expected = layer(x, x, x, need_weights=False)[0].detach()
    root = torch.nn.Module()
    root.attn = layer
    _unload(root, merge=True)
    assert type(root.attn) is torch.nn.MultiheadAttention
    torch.testing.assert_close(root.attn(x, x, x, need_weights=False)[0], expected, atol=1e-5, rtol=1e-5)


def test_open_clip_vit_attention_adapters_run_unmerged(tiny_model):
    from mmrad.models.lora_attention import UnmergedLoraMultiheadAttention

    apply_lora(tiny_model, LoraSettings(enabled=True, r=4, towers=["vision"]))
    layers = [m for m in tiny_model.vision.visual.modules() if isinstance(m, UnmergedLoraMultiheadAttention)]
    assert layers and all(isinstance(m.base_layer.out_proj.lora_A, torch.nn.ModuleDict) for m in layers)
