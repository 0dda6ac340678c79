"""The cross-attention query decoder."""

import pytest
import torch

from mmrad.models.fusion import QueryDecoder, attention_maps

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("shared_queries", [True, False])
def test_decoder_shapes_and_attention_rows(shared_queries):
    torch.manual_seed(0)
    decoder = QueryDecoder(dim=16, num_layers=3, num_heads=2)
    memory = torch.randn(2, 12, 16)
    queries = torch.randn(5, 16) if shared_queries else torch.randn(2, 5, 16)
    states, attentions, evidence = decoder(queries, memory)
    assert states.shape == (2, 5, 16) and evidence.shape == (2, 5)
    assert len(attentions) == 3
    for weights in attentions:
        assert weights.shape == (2, 5, 12)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))  # a distribution over patches per query


def test_attention_maps_average_the_last_k_layers():
    attentions = [torch.full((1, 2, 6), float(i)) for i in range(3)]
    maps = attention_maps(attentions, (2, 3), last_k=2)
    assert maps.shape == (1, 2, 2, 3)
    assert torch.all(maps == 1.5)
    with pytest.raises(ValueError):
        attention_maps(attentions, (2, 3), last_k=4)


def test_without_self_attention_each_query_is_scored_alone():
    torch.manual_seed(0)
    memory = torch.randn(2, 8, 16)
    queries = torch.randn(4, 16)
    alone = QueryDecoder(16, 2, 2, self_attention=False).eval()
    states, _, _ = alone(queries, memory)
    first, _, _ = alone(queries[:1], memory)
    torch.testing.assert_close(states[:, :1], first)
    mixed = QueryDecoder(16, 2, 2, self_attention=True).eval()
    states, _, _ = mixed(queries, memory)
    first, _, _ = mixed(queries[:1], memory)
    assert not torch.allclose(states[:, :1], first)


def test_a_query_attends_to_the_patch_it_matches():
    """With identity projections, a query equal to one patch's features puts its attention there."""
    torch.manual_seed(0)
    decoder = QueryDecoder(dim=8, num_layers=1, num_heads=1, self_attention=False).eval()
    cross = decoder.layers[0].cross_attn
    with torch.no_grad():
        for linear in (cross.q, cross.k):
            linear.weight.copy_(torch.eye(8) * 4)
            linear.bias.zero_()
        for norm in (decoder.memory_norm, decoder.layers[0].norm_cross):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    memory = torch.randn(1, 16, 8)
    hot = 11
    queries = memory[0, hot : hot + 1].clone()
    _, attentions, evidence = decoder(queries, memory)
    assert attentions[0][0, 0].argmax().item() == hot
    _, _, elsewhere = decoder(-queries, memory)  # a query that matches no patch has lower evidence
    assert evidence.item() > elsewhere.item()


def test_sincos_position_lets_attention_tell_identical_patches_apart():
    from mmrad.models.fusion import QueryDecoder, sincos_position

    pos = sincos_position(16, 8)
    assert pos.shape == (1, 16, 8) and len({tuple(p) for p in pos[0].round(decimals=4).tolist()}) == 16
    torch.manual_seed(0)
    memory = torch.ones(2, 16, 8)  # every patch the same: only the position can tell them apart
    queries = torch.randn(3, 8)
    plain = QueryDecoder(8, 1, 2)
    placed = QueryDecoder(8, 1, 2, position="sincos")
    placed.load_state_dict(plain.state_dict())  # no new parameters: the embedding is fixed
    uniform = plain(queries, memory)[1][0]
    assert torch.allclose(uniform, torch.full_like(uniform, 1 / 16), atol=1e-6)
    located = placed(queries, memory)[1][0]
    assert located.std(-1).min() > 1e-3 and torch.allclose(located.sum(-1), torch.ones(2, 3), atol=1e-5)
    with pytest.raises(ValueError, match="square token grid"):
        placed(queries, torch.ones(2, 12, 8))
