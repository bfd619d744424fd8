"""Wanda, SparseGPT, GPTQ and joint pruning + quantization, checked on small layers and models."""
import pytest
import torch

from knowledge_recovery.compression import calibration, quantization
from knowledge_recovery.compression.apply import compress, compress_weight, target_linears
from knowledge_recovery.compression.calibration import InputStats
from knowledge_recovery.compression.methods.awq import awq
from knowledge_recovery.compression.methods.gptq import gptq
from knowledge_recovery.compression.methods.magnitude import magnitude
from knowledge_recovery.compression.methods.sparsegpt import sparsegpt
from knowledge_recovery.compression.methods.wanda import wanda
from knowledge_recovery.text import python_reference


@pytest.fixture(scope="module")
def layer_data():
    """A weight and correlated, unevenly scaled inputs, as real activations are."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 64, generator=gen) @ torch.randn(64, 64, generator=gen)
    x *= torch.linspace(0.1, 3.0, 64)
    w = torch.randn(32, 64, generator=gen)
    stats = InputStats(64, need_hessian=True)
    for chunk in x.split(256):
        stats.add(chunk)
    return w, x, stats


def recon_error(x, w, w_hat):
    return (x @ w.T - x @ w_hat.T).pow(2).mean().item()


def test_input_stats_match_direct_computation(layer_data):
    _, x, stats = layer_data
    assert torch.allclose(stats.hessian, 2 * x.T @ x / len(x), rtol=1e-4, atol=1e-3)
    assert torch.allclose(stats.col_sq, x.pow(2).sum(0), rtol=1e-4)


@pytest.mark.parametrize("pattern", [{"n": 2, "m": 4}, {"n": 4, "m": 8}, {"n": 1, "m": 2}])
def test_nm_masks_are_valid(layer_data, pattern):
    w, _, stats = layer_data
    for mask in (magnitude(w, pattern), wanda(w, stats.col_sq, pattern),
                 sparsegpt(w, stats.hessian, pattern)[1]):
        groups = mask.reshape(w.shape[0], -1, pattern["m"])
        assert (groups.sum(-1) == pattern["n"]).all()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_unstructured_sparsity_is_exact(layer_data, sparsity):
    w, _, stats = layer_data
    k = round(sparsity * w.numel())
    assert int((~wanda(w, stats.col_sq, {"sparsity": sparsity})).sum()) == \
        w.shape[0] * round(sparsity * w.shape[1])  # Wanda: exact per row
    w_sgpt, mask = sparsegpt(w, stats.hessian, {"sparsity": sparsity})
    assert int((~mask).sum()) == k and int((w_sgpt == 0).sum()) >= k
    assert torch.equal(w_sgpt == 0, ~mask) or int((w_sgpt[mask] == 0).sum()) == 0


@pytest.mark.parametrize("pattern", [{"sparsity": 0.5}, {"n": 2, "m": 4}])
def test_data_aware_pruning_reconstructs_better_than_magnitude(layer_data, pattern):
    w, x, stats = layer_data
    err_mag = recon_error(x, w, w * magnitude(w, pattern))
    err_wanda = recon_error(x, w, w * wanda(w, stats.col_sq, pattern))
    err_sgpt = recon_error(x, w, sparsegpt(w, stats.hessian, pattern)[0])
    assert err_sgpt < err_wanda < err_mag


@pytest.mark.parametrize("bits,group,act_order", [(4, 16, False), (3, 16, True), (2, None, False),
                                                  (8, 32, True)])
def test_gptq_groups_hold_2_pow_bits_values_and_beat_rtn(layer_data, bits, group, act_order):
    w, x, stats = layer_data
    q = gptq(w, stats.hessian, bits, group, act_order=act_order)
    g = group or w.shape[1]
    for row_group in q.reshape(w.shape[0], -1, g).reshape(-1, g):
        assert len(torch.unique(row_group)) <= 2 ** bits
    rtn = quantization.quantize_rtn(w, bits, group)
    assert recon_error(x, w, q) < recon_error(x, w, rtn)


@pytest.mark.parametrize("bits,group", [(4, 16), (3, None)])
def test_awq_beats_rtn_and_stays_on_a_grid(layer_data, bits, group):
    w, x, stats = layer_data
    act = (stats.col_sq / stats.tokens).sqrt()
    q, scale = awq(w, stats.hessian, act, bits, group, return_scale=True)
    g = group or w.shape[1]
    for row_group in (q * scale).reshape(-1, g):  # the packed (scaled) weights: a 2^bits grid
        assert len(torch.unique(row_group.round(decimals=4))) <= 2 ** bits
    assert recon_error(x, w, q) < recon_error(x, w, quantization.quantize_rtn(w, bits, group))


def test_joint_pruning_then_quantization_keeps_the_mask(layer_data):
    w, _, stats = layer_data
    entry = {"method": "sparsegpt", "sparsity": 0.5, "damping": 0.01,
             "quantize": {"method": "gptq", "bits": 4, "group_size": 16, "symmetric": False,
                          "damping": 0.01, "act_order": False}}
    q, keep, _ = compress_weight(w, entry, stats)
    assert int((~keep).sum()) == w.numel() // 2
    assert (q[~keep] == 0).all()
    for row_group in q.reshape(-1, 16):
        assert len(torch.unique(row_group)) <= 2 ** 4


@pytest.mark.parametrize("entry", [
    {"method": "wanda", "sparsity": 0.5, "damping": 0.01},
    {"method": "sparsegpt", "pattern": "2:4", "damping": 0.01},
    {"method": "gptq", "bits": 4, "group_size": 32, "symmetric": False, "damping": 0.01,
     "act_order": True},
    {"method": "gptq", "bits": 4, "group_size": 32, "symmetric": True, "damping": 0.01,
     "act_order": False, "true_sequential": True},
    {"method": "awq", "bits": 4, "group_size": 32, "symmetric": False},
    {"method": "wanda", "sparsity": 0.5, "damping": 0.01,
     "quantize": {"method": "awq", "bits": 4, "group_size": 32, "symmetric": False}},
])
def test_sequential_compression_of_a_model(tiny, entry):
    model, tok = tiny()
    batch = calibration.calibration_batch(tok, python_reference()[:20000], 4, 32, seed=0)
    _, _, stats = compress(model, entry, batch, log=lambda *_: None)
    if "sparsity" in entry or "pattern" in entry:
        assert stats["sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert set(stats["per_layer_sparsity"]) == set(target_linears(model))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=batch[:1]).logits).all()


def test_sequential_compression_is_deterministic(tiny):
    entry = {"method": "sparsegpt", "sparsity": 0.5, "damping": 0.01}
    outs = []
    for _ in range(2):
        model, tok = tiny()
        batch = calibration.calibration_batch(tok, python_reference()[:20000], 4, 32, seed=0)
        compress(model, entry, batch, log=lambda *_: None)
        outs.append(model.state_dict())
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k


@pytest.mark.parametrize("first_group_only", [False, True])
def test_block_statistics_equal_those_of_each_linears_inputs(tiny, first_group_only):
    """The statistics pass stops each forward early and shares statistics between linears that
    read one tensor: what it returns must still be the statistics of every linear's inputs."""
    model, tok = tiny()
    batch = calibration.calibration_batch(tok, python_reference()[:20000], 3, 16, seed=0)
    layer = calibration.decoder_layers(model)[0]
    hidden, per_block = calibration._block_arguments(model, calibration.decoder_layers(model), batch)
    inputs = [((h,) + tuple(args), kwargs) for h, (args, kwargs) in zip(hidden, per_block[0])]
    modules = dict(layer.named_modules())
    linears = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear)]
    seen = {n: [] for n in linears}
    hooks = [modules[n].register_forward_hook(lambda _m, inp, _o, n=n: seen[n].append(inp[0]))
             for n in linears]
    with torch.no_grad():
        for args, kwargs in inputs:
            layer(*args, **kwargs)
    for h in hooks:
        h.remove()

    with torch.no_grad():
        groups, stats = calibration._calibrate(layer, inputs, modules, linears, True, "cpu",
                                               first_group_only=first_group_only)
    assert groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                      ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    for g, group in enumerate(groups):
        if first_group_only and g:
            assert stats[g] is None
            continue
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[group[0]]])
        assert stats[g].tokens == len(x) == 3 * 16
        assert torch.allclose(stats[g].col_sq, x.pow(2).sum(0), rtol=1e-5)
        assert torch.allclose(stats[g].hessian, 2 * x.T @ x / len(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("architecture", ["llama", "mistral", "qwen2", "qwen3", "gemma3", "opt"])
def test_every_block_is_calibrated_on_what_the_model_feeds_it(architecture):
    """With nothing compressed, each block's calibration input is the plain forward's hidden
    state: blocks get the arguments the model gives them (Gemma-3's sliding and full layers take
    different masks and rotary embeddings; reusing block 0's gave block 2 a 24% error)."""
    from knowledge_recovery.models.checkpoints import tiny_random

    model, tok = tiny_random({"architecture": architecture, "hidden_size": 64, "num_layers": 4,
                              "num_heads": 4, "intermediate_size": 128}, seed=0)
    model.eval()
    batch = calibration.calibration_batch(tok, python_reference()[:20000], 2, 48, seed=0)
    layers = calibration.decoder_layers(model)
    seen = {i: [] for i in range(len(layers))}

    def record(module, args, i):
        if "forward" not in module.__dict__:  # not while calibration records the arguments
            seen[i].append(args[0].clone())

    hooks = [layer.register_forward_pre_hook(lambda m, args, i=i: record(m, args, i))
             for i, layer in enumerate(layers)]
    try:
        calibration.sequential_compress(model, batch, lambda *_: None, need_hessian=False,
                                        device="cpu", log=lambda *_: None)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        plain = [model(input_ids=s[None], output_hidden_states=True).hidden_states for s in batch]
    for i in range(len(layers)):
        for s in range(len(batch)):  # the first pass of block i: its statistics, one per sample
            x, ref = seen[i][s], plain[s][i]
            err = float((x - ref).norm() / ref.norm())
            assert err < 1e-5, f"{architecture} block {i} sample {s}: relative error {err:.3g}"
