"""Deployment of a compressed cell on a real low-bit runtime: OpenVINO, through optimum-intel.

The compress step writes "fake quant" checkpoints: float weights on a low-bit grid. The deploy
step exports such a checkpoint with the cell's own grid (bits, group size, symmetry; the
embeddings and output head stay float, as they were evaluated), checks on a fixed sample that
the deployed model computes what the evaluated model computes (relative L2 distance of the
logits, within `deployment.tolerance`, else the job fails), and records its size on disk. Pruned
cells are exported as float: OpenVINO's dense kernels do not exploit sparsity.

It runs in its own environment (`.venv-openvino`, `envs/openvino.yaml`): optimum-intel's pins do
not fit the main one's. Only the functions here import optimum or openvino.
"""
from __future__ import annotations

from pathlib import Path

from .registry import compression_method

TARGETS = ("openvino",)
# OpenVINO's CPU defaults change the arithmetic of a weight-compressed model: activations are
# quantized to int8 on the fly, the KV cache is kept in u8 and bf16 is used where the CPU has it.
# Measured on SmolLM2-135M RTN 4-bit g64 (README): logits 2% from the evaluated model with the
# defaults, 0.3% with these. The deployed model must be the one the table scores.
EXACT_RUNTIME = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
                 "KV_CACHE_PRECISION": "f32", "CACHE_DIR": ""}


def quantized_stage(entry: dict) -> dict | None:
    """The quantization settings of a compression entry (its own, or its `quantize` stage)."""
    if compression_method(entry["method"]).family == "quantization":
        return entry
    return entry.get("quantize")


def weight_settings(entry: dict) -> dict | None:
    """optimum-intel's weight quantization settings for the entry's grid; None: float export."""
    quant = quantized_stage(entry)
    if quant is None:
        return None
    return {"bits": quant["bits"], "group_size": quant.get("group_size") or -1,
            "sym": bool(quant.get("symmetric")), "ratio": 1.0,
            # embeddings and output head as evaluated: float (int8 would shrink the file and
            # change the model)
            "backup_precision": "none"}


def unsupported(entry: dict) -> tuple[str, str] | None:
    """(setting, why) when OpenVINO cannot hold the entry's grid, else None."""
    if entry.get("deploy") not in (None, *TARGETS):
        return "deploy", f"unknown deployment target {entry['deploy']!r} (known: {TARGETS})"
    quant = quantized_stage(entry)
    if quant is None:
        return None
    where = "" if quant is entry else "quantize."
    if quant["bits"] not in (4, 8):
        return (f"{where}bits", f"OpenVINO stores 4- or 8-bit integer weights, not "
                                f"{quant['bits']}-bit")
    if quant.get("symmetric"):
        # ours: levels -8..7 with scale absmax/7 (methods' shared quantizer); OpenVINO's int4_sym:
        # scale absmax/8. Re-rounding onto it changed the tiny smoke model's logits by 9%.
        return (f"{where}symmetric", "OpenVINO's symmetric grid (scale absmax/8) is not this "
                                     "entry's (absmax/7): the export would re-round every "
                                     "weight; deploy an asymmetric grid (symmetric: false)")
    if quant["bits"] == 8 and quant.get("group_size") is not None:
        return (f"{where}group_size", "OpenVINO's 8-bit weights have one scale per output "
                                      "channel: set group_size to null (per row)")
    return None


def export(checkpoint, out_dir, settings: dict | None) -> None:
    """Export a checkpoint to OpenVINO IR (weights compressed with `settings`) into out_dir."""
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
    from transformers import AutoTokenizer

    quant = OVWeightQuantizationConfig(**settings) if settings else None
    model = OVModelForCausalLM.from_pretrained(str(Path(checkpoint).resolve()), export=True,
                                               compile=False,
                                               quantization_config=quant,
                                               ov_config=dict(EXACT_RUNTIME))
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(str(checkpoint)).save_pretrained(out_dir)


def load(out_dir):
    from optimum.intel import OVModelForCausalLM

    # an absolute path: a relative one is looked up on the hub first
    return OVModelForCausalLM.from_pretrained(str(Path(out_dir).resolve()),
                                              ov_config=dict(EXACT_RUNTIME))


def harness_model(out_dir, batch_size: int):
    """lm-eval's own `openvino` model on the deployed folder, with the exact runtime settings."""
    import json
    import tempfile

    from lm_eval.models.optimum_lm import OptimumLM

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(EXACT_RUNTIME, f)  # lm-eval reads its OpenVINO settings from a file
    return OptimumLM(pretrained=str(Path(out_dir).resolve()), ov_config=f.name,
                     batch_size=batch_size)


def logits_distance(checkpoint, out_dir, windows) -> list[float]:
    """Per token window (1 x n ids), the relative L2 distance between the logits of the
    evaluated model (PyTorch, float32) and of the deployed one."""
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    deployed = load(out_dir)
    out = []
    for ids in windows:
        mask = torch.ones_like(ids)
        with torch.no_grad():
            want = reference(input_ids=ids, attention_mask=mask).logits.float()
        got = torch.as_tensor(deployed(input_ids=ids, attention_mask=mask).logits).float()
        out.append(float((got - want).norm() / want.norm()))
    return out


def disk_bytes(folder) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("openvino", "optimum-intel", "nncf", "transformers")}
