"""Packed export: a quantized cell as a real low-bit checkpoint in compressed-tensors'
pack-quantized format (the integer codes packed into int32 words, one float scale per group),
which vLLM serves and transformers loads when compressed-tensors is installed.

The compress step keeps each layer's grid (scale, zero point per group); the codes are then
recovered exactly as round(w / scale) + zero from the dequantized weights, so the packed model
decodes to the very weights the evaluated checkpoint holds (checked on reload by `verify`).

Only symmetric grids of methods registered as packable can be exported: transformers cannot load
asymmetric pack-quantized checkpoints (the packed zero points get the wrong shape on load; see
vllm-project/llm-compressor#1618). Once that is fixed (compressed-tensors after 0.12), drop the
symmetric requirement in `entries.unpackable_reason`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from knowledge_recovery.compression.apply import target_linears
from knowledge_recovery.compression.entries import quant_stage, unpackable_reason


def _scheme(quant: dict):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    group = quant["group_size"]
    args = QuantizationArgs(num_bits=quant["bits"], type="int", symmetric=True,
                            strategy="group" if group else "channel", group_size=group)
    return QuantizationScheme(targets=["Linear"], weights=args)


@torch.no_grad()
def export_packed(model, tokenizer, grids: dict, entry: dict, out_dir) -> None:
    """Write `model` (compressed in place by `entry`, whose grids are `grids`: the compress
    step's quant_grids.safetensors) to `out_dir` as a pack-quantized checkpoint."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    reason = unpackable_reason(entry)
    if reason:
        raise ValueError(reason)
    head = [n for n, m in model.named_modules() if m is model.get_output_embeddings()]
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": _scheme(quant_stage(entry))}, ignore=head))
    for name, layer in target_linears(model).items():
        layer.weight_scale.data.copy_(grids[f"{name}.weight_scale"])
        # compressed-tensors keeps zero points for symmetric schemes too: all 0, as ours
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out_dir)
    compressor.update_config(out_dir)
    tokenizer.save_pretrained(out_dir)


@torch.no_grad()
def verify(packed_dir, checkpoint_dir) -> float:
    """Load the packed checkpoint with transformers and compare every compressed linear's
    decoded weight with the fake-quant checkpoint's, read one tensor at a time. Returns the
    largest difference relative to the layer's largest weight; raises if one exceeds the
    rounding of the weights' dtype."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    packed = AutoModelForCausalLM.from_pretrained(packed_dir, dtype="auto")
    packed(input_ids=torch.zeros(1, 1, dtype=torch.long))  # weights decode on the first forward
    decoded = {f"{name}.weight": layer.weight for name, layer in target_linears(packed).items()}
    worst, seen = 0.0, 0
    for file in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in set(f.keys()) & set(decoded):
                w, d = f.get_tensor(key).float(), decoded[key].float()
                diff = float((w - d).abs().max() / w.abs().max().clamp(min=1e-30))
                worst, seen = max(worst, diff), seen + 1
                if diff > torch.finfo(decoded[key].dtype).eps:
                    raise ValueError(f"packed checkpoint {packed_dir}: {key} decodes to other "
                                     f"weights than {checkpoint_dir} (relative difference {diff:.3g})")
    if seen != len(decoded):
        raise ValueError(f"{checkpoint_dir} holds {seen} of the {len(decoded)} compressed weights")
    return worst
