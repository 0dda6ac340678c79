"""Recomputing tower MLP activation outputs in the backward pass: the same gradients, the outputs not kept."""

import gc
import weakref

import pytest
import torch

from mmrad.config.schema import LoraSettings
from mmrad.models import MMRadModel, apply_lora
from mmrad.models.recompute import is_activation
from tests.test_lora import perturb_adapters
from tests.test_modeling import make_batch

pytestmark = pytest.mark.usefixtures("single_thread")


def _gradients(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_recomputed_activations_give_the_same_gradients(tiny_config, lora, checkpointing):
    torch.manual_seed(0)
    model = MMRadModel(tiny_config).train()
    if lora:
        apply_lora(model, LoraSettings(enabled=True, r=4, alpha=8))
        perturb_adapters(model)
    model.set_grad_checkpointing(checkpointing)
    for module in model.modules():  # dropout off: the two passes must see the same masks
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = make_batch(model)
    expected = _gradients(model, batch)
    model.set_activation_recompute(True)
    blocks = len(model.vision.visual.transformer.resblocks) + model.text.hf_config.num_hidden_layers
    assert model.activation_recompute.num_activations == blocks  # one GELU per ViT block and per BERT layer
    got = _gradients(model, batch)
    assert got.keys() == expected.keys() and len(got) > 0
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_activation_outputs_are_not_kept_for_backward(tiny_model):
    """Without recomputation autograd holds every tower GELU output until backward; with it, none."""
    tiny_model.train()
    batch = make_batch(tiny_model)
    outputs: list[weakref.ref] = []
    for tower in (tiny_model.vision, tiny_model.text):
        for module in tower.modules():
            if is_activation(module):
                module.register_forward_hook(lambda m, i, o: outputs.append(weakref.ref(o)))

    def alive_after_forward() -> tuple[int, int, int]:
        """(outputs alive after the forward, outputs made by the forward, activation calls in the backward)"""
        outputs.clear()
        loss = tiny_model(**batch).loss
        gc.collect()
        made, alive = len(outputs), sum(ref() is not None for ref in outputs)
        loss.backward()
        return alive, made, len(outputs) - made

    alive, calls, recomputed = alive_after_forward()
    assert calls >= len(tiny_model.vision.visual.transformer.resblocks) + tiny_model.text.hf_config.num_hidden_layers
    assert (alive, recomputed) == (calls, 0)  # every output kept
    tiny_model.set_activation_recompute(True)
    assert alive_after_forward() == (0, calls, calls)  # none kept, each recomputed once in the backward
    tiny_model.set_activation_recompute(False)
    assert alive_after_forward() == (calls, calls, 0)


def test_a_failed_forward_closes_the_hooks(tiny_model):
    tiny_model.set_activation_recompute(True)
    with pytest.raises(RuntimeError):
        tiny_model(pixel_values=torch.zeros(2, 5, 7, 7))  # wrong channels and size
    assert tiny_model.activation_recompute._depth == 0 and tiny_model.activation_recompute._outputs is None
    tiny_model(**make_batch(tiny_model)).loss.backward()  # and the next forward works


def test_training_turns_it_on_by_default(tiny_experiment):
    from mmrad.training.loop import build_model

    assert build_model(tiny_experiment).activation_recompute is not None
    tiny_experiment.train.recompute_activations = False
    assert build_model(tiny_experiment).activation_recompute is None


def test_under_gradient_checkpointing_nothing_more_is_kept(tiny_model):
    """Inside checkpointed blocks the checkpoint decides what is kept: recomputation must not keep the activation
    inputs alive there (counted when the decoder starts, after both towers' forwards)."""
    tiny_model.train()
    tiny_model.set_grad_checkpointing(True)
    batch = make_batch(tiny_model)
    inputs: list[weakref.ref] = []
    alive: list[int] = []
    for tower in (tiny_model.vision, tiny_model.text):
        for module in tower.modules():
            if is_activation(module):
                module.register_forward_hook(lambda m, i, o: inputs.append(weakref.ref(i[0])))

    def count(module, args) -> None:
        gc.collect()
        alive.append(sum(ref() is not None for ref in inputs))

    tiny_model.decoder.register_forward_pre_hook(count)

    def inputs_alive_in_forward() -> int:
        inputs.clear()
        alive.clear()
        tiny_model(**batch).loss.backward()
        return alive[0]

    checkpointed = inputs_alive_in_forward()
    assert len(inputs) > checkpointed  # the checkpoints free some of them
    tiny_model.set_activation_recompute(True)
    assert inputs_alive_in_forward() == checkpointed
