import pytest
import torch

from knowledge_recovery.compression.apply import compress, pack_mask, target_linears, unpack_mask
from knowledge_recovery.compression.methods.magnitude import magnitude
from knowledge_recovery.compression.quantization import quantize_rtn


def test_targets_are_block_linears_not_embeddings_or_head(tiny):
    model, _ = tiny()
    names = set(target_linears(model))
    assert names and all(".layers." in n for n in names)
    assert "lm_head" not in names


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_magnitude_gives_exact_sparsity_per_layer(tiny, sparsity):
    model, _ = tiny()
    emb = model.get_input_embeddings().weight.clone()
    masks, _, stats = compress(model, {"method": "magnitude", "sparsity": sparsity})
    for name, layer in target_linears(model).items():
        w = layer.weight
        assert int((w == 0).sum()) == round(sparsity * w.numel())
        assert torch.equal(unpack_mask(masks[f"{name}.weight"], w.shape[1]), w != 0)
    assert stats["sparsity"] == pytest.approx(sparsity, abs=1e-3)
    assert torch.equal(model.get_input_embeddings().weight, emb)


@pytest.mark.parametrize("cols", [8, 13, 64])
def test_packed_masks_round_trip_in_an_eighth_of_the_bytes(cols):
    keep = torch.rand(5, cols, generator=torch.Generator().manual_seed(cols)) > 0.5
    packed = pack_mask(keep)
    assert packed.dtype == torch.uint8 and packed.shape == (5, -(-cols // 8))
    assert torch.equal(unpack_mask(packed, cols), keep)


def test_lowest_scores_break_ties_by_position_like_a_stable_sort():
    from knowledge_recovery.compression.pruning import lowest_per_row

    gen = torch.Generator().manual_seed(0)
    # few distinct values (ties in most rows, as in an already-quantized layer), then none
    for score in (torch.randint(0, 4, (6, 257), generator=gen).float(), torch.rand(6, 100, generator=gen)):
        for k in (0, 1, 50, score.shape[1] - 1, score.shape[1]):
            expected = torch.zeros_like(score, dtype=torch.bool).scatter_(
                1, torch.sort(score, dim=1, stable=True).indices[:, :k], True)
            assert torch.equal(lowest_per_row(score, k), expected)


def test_magnitude_removes_the_smallest_weights():
    w = torch.tensor([[0.1, -3.0, 0.2, 4.0], [-0.05, 1.0, -2.0, 0.3]])
    mask = magnitude(w, {"sparsity": 0.5})
    assert mask.tolist() == [[False, True, False, True], [False, True, True, False]]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_has_at_most_2_pow_bits_values_per_group(bits, symmetric):
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    q = quantize_rtn(w, bits, 16, symmetric)
    for group, orig in zip(q.reshape(-1, 16), w.reshape(-1, 16)):
        levels = torch.unique(group)
        assert len(levels) <= 2 ** bits
        # Round-to-nearest: no weight is further than half a step from its level.
        half_step = levels.diff().max() / 2 if len(levels) > 1 else 0
        assert (group - orig).abs().max() <= half_step + 1e-6


def test_rtn_error_falls_with_more_bits_and_smaller_groups():
    torch.manual_seed(0)
    w = torch.randn(32, 128)
    errs = [(quantize_rtn(w, b, 32) - w).pow(2).mean() for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True)
    assert (quantize_rtn(w, 4, 32) - w).pow(2).mean() < (quantize_rtn(w, 4, None) - w).pow(2).mean()


def test_rtn_rejects_group_that_does_not_divide_width():
    with pytest.raises(ValueError, match="does not divide"):
        quantize_rtn(torch.randn(4, 48), 4, 32)


def test_compression_is_deterministic(tiny):
    a, _ = tiny()
    b, _ = tiny()
    for model in (a, b):
        compress(model, {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False})
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na


def test_rtn_statistics_report_bits_and_packed_size(tiny):
    model, _ = tiny()
    _, _, stats = compress(model, {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False})
    assert stats["effective_bits_per_weight"] == pytest.approx(4 + 32 / 32)
    dense_bytes = 2 * (stats["compressed_params"] + stats["other_params"])
    assert stats["packed_bytes"] < dense_bytes
