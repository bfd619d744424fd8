"""Packed export: a quantized model written in compressed-tensors' pack-quantized format loads
with transformers and decodes to exactly the weights of the fake-quant checkpoint."""
import pytest
import torch
from safetensors import safe_open

from knowledge_recovery.compression import packing
from knowledge_recovery.compression.apply import compress, target_linears
from knowledge_recovery.compression.calibration import calibration_batch
from knowledge_recovery.compression.entries import quant_stage
from knowledge_recovery.models import checkpoints
from knowledge_recovery.text import python_reference


@pytest.mark.parametrize("entry", [
    {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": True},
    {"method": "gptq", "bits": 3, "group_size": 32, "symmetric": True, "damping": 0.01,
     "act_order": True},
    {"method": "gptq", "bits": 8, "group_size": None, "symmetric": True, "damping": 0.01,
     "act_order": False},
    {"method": "sparsegpt", "sparsity": 0.5, "damping": 0.01, "quantize": {
        "method": "gptq", "bits": 4, "group_size": 64, "symmetric": True, "damping": 0.01,
        "act_order": False}},
], ids=["rtn-w4", "gptq-w3-act", "gptq-w8-row", "sparsegpt+gptq-w4"])
def test_packed_checkpoint_decodes_to_the_compressed_weights(tiny, tmp_path, entry):
    from transformers import AutoModelForCausalLM

    model, tok = tiny()
    batch = calibration_batch(tok, python_reference()[:20000], 4, 32, seed=0)
    masks, grids, _ = compress(model, entry, batch, log=lambda *_: None)
    checkpoints.save_checkpoint(model, tok, tmp_path / "checkpoint")
    ids = batch[:2, :16]
    expected = model(input_ids=ids).logits

    packing.export_packed(model, tok, grids, entry, tmp_path / "packed")
    assert packing.verify(tmp_path / "packed", tmp_path / "checkpoint") == 0.0
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    assert torch.equal(packed(input_ids=ids).logits, expected)

    quant = quant_stage(entry)
    with safe_open(tmp_path / "packed" / "model.safetensors", "pt") as f:
        for name, layer in target_linears(model).items():
            codes = f.get_tensor(f"{name}.weight_packed")
            assert codes.dtype == torch.int32  # 32 / bits codes a word
            assert codes.shape == (layer.out_features, layer.in_features * quant["bits"] // 32)
            assert f"{name}.weight" not in f.keys()


def test_verify_catches_a_checkpoint_that_differs(tiny, tmp_path):
    entry = {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": True}
    model, tok = tiny()
    _, grids, _ = compress(model, entry)
    weight = model.model.layers[1].mlp.down_proj.weight.data
    original = weight.clone()
    weight[0, 0] += 0.5 * weight.abs().max()  # the checkpoint's weights differ from the grid's
    checkpoints.save_checkpoint(model, tok, tmp_path / "checkpoint")
    weight.copy_(original)
    packing.export_packed(model, tok, grids, entry, tmp_path / "packed")
    with pytest.raises(ValueError, match="down_proj.weight decodes to other weights"):
        packing.verify(tmp_path / "packed", tmp_path / "checkpoint")
