"""Deployment of a compressed cell on a real low-bit runtime: OpenVINO, through optimum-intel.

The compress step writes "fake quant" checkpoints: float weights on a low-bit grid. The deploy
step exports such a checkpoint with the cell's own grid (bits, group size, symmetry; the
embeddings and output head stay float, as they were evaluated), checks on a fixed sample that
the deployed model computes what the evaluated model computes (relative L2 distance of the
logits, within `deployment.tolerance`, else the job fails), and records its size on disk. Pruned
cells are exported as float: OpenVINO's dense kernels do not exploit sparsity.

A recovery cell whose method puts the same keys and values before every input (prompt and
prefix tuning: `RecoveryMethod.prompt_cache`) deploys on its compressed cell's export, unchanged:
every sequence starts from that cache, set as the stateful model's initial state. Its cost at
deployment is the cache's bytes. Methods that change the weights (LoRA and its kin) or whose
prompt depends on the input (IDP's selector reads attention weights, which the export does not
give) are not deployed.

It runs in its own environment (`.venv-openvino`, `envs/openvino.yaml`): optimum-intel's pins do
not fit the main one's. Only the functions here import optimum or openvino.
"""
from __future__ import annotations

import re
from pathlib import Path

from knowledge_recovery.compression.entries import quant_stage
from knowledge_recovery.registry import recovery_method

TARGETS = ("openvino",)
# The runtime's packages, whose versions a deploy manifest records
RUNTIME_PACKAGES = ("openvino", "optimum-intel", "nncf", "transformers")
# OpenVINO's CPU defaults change the arithmetic of a weight-compressed model: activations are
# quantized to int8 on the fly, the KV cache is kept in u8 and bf16 is used where the CPU has it.
# Measured on SmolLM2-135M RTN 4-bit g64 (docs/measured.md): logits 2% from the evaluated model with the
# defaults, 0.3% with these. The deployed model must be the one the table scores.
EXACT_RUNTIME = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
                 "KV_CACHE_PRECISION": "f32", "CACHE_DIR": ""}


def weight_settings(entry: dict) -> dict | None:
    """optimum-intel's weight quantization settings for the entry's grid; None: float export."""
    quant = quant_stage(entry)
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
    quant = quant_stage(entry)
    if quant is None:
        return None
    where = "quantize." if quant is entry.get("quantize") else ""
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


def load(out_dir, ov_config: dict = EXACT_RUNTIME):
    from optimum.intel import OVModelForCausalLM

    # an absolute path: a relative one is looked up on the hub first
    return OVModelForCausalLM.from_pretrained(str(Path(out_dir).resolve()),
                                              ov_config=dict(ov_config))


def harness_model(out_dir, batch_size: int, prompt=None):
    """lm-eval's own `openvino` model on the deployed folder, with the exact runtime settings
    (and a prompt cache in front of every input, `with_prompt`)."""
    import json
    import tempfile

    from lm_eval.models.optimum_lm import OptimumLM

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(EXACT_RUNTIME, f)  # lm-eval reads its OpenVINO settings from a file
    lm = OptimumLM(pretrained=str(Path(out_dir).resolve()), ov_config=f.name,
                   batch_size=batch_size)
    if prompt is not None:
        with_prompt(lm.model, prompt)
    return lm


def logits_distance(reference, deployed, windows) -> list[float]:
    """Per token window (1 x n ids), the relative L2 distance between the logits of the
    evaluated model (PyTorch) and of the deployed one."""
    import torch

    out = []
    for ids in windows:
        mask = torch.ones_like(ids)
        with torch.no_grad():
            # the input's positions (peft's prompt tuning returns the prompt's too)
            want = reference(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1]:].float()
        got = torch.as_tensor(deployed(input_ids=ids, attention_mask=mask).logits).float()
        out.append(float((got - want).norm() / want.norm()))
    return out


# ---------------------------------------------------------------- recovery cells: a prompt cache
def deploys_with_prompt(recovery_entry: dict) -> bool:
    """Whether a recovery entry deploys as a cache in front of its compressed cell's export."""
    return recovery_method(recovery_entry["method"]).prompt_cache is not None


def save_prompt(layers, path) -> None:
    from safetensors.torch import save_file

    save_file({f"{i}.{part}": t.detach().float().cpu().contiguous()
               for i, kv in enumerate(layers) for part, t in zip(("keys", "values"), kv)},
              str(path))


def load_prompt(path) -> list:
    from safetensors.numpy import load_file

    found = load_file(str(path))
    return [(found[f"{i}.keys"], found[f"{i}.values"]) for i in range(len(found) // 2)]


_STATE = re.compile(r"past_key_values\.(\d+)\.(key|value)")


def with_prompt(model, layers):
    """Make a loaded OpenVINO model start every sequence from a prompt's keys and values
    ([(keys, values)] per layer as numpy arrays, each (1, kv heads, n, head dim)): they become
    the stateful model's initial state, the input's positions start after the prompt's and its
    attention covers it, as in the evaluated model. Works for scoring and `generate`."""
    if not model.stateful:
        raise ValueError("a prompt cache needs the stateful export (optimum-intel's default)")
    model.__class__ = _prompted_class(type(model))
    model.prompt = layers
    return model


_PROMPTED = {}


def _prompted_class(base):
    if base in _PROMPTED:
        return _PROMPTED[base]
    import numpy as np
    import torch
    from openvino import Tensor

    class Prompted(base):
        prompt: list

        @property
        def prompt_length(self) -> int:
            return self.prompt[0][0].shape[2]

        def _get_past_length(self, past_key_values=None):
            # the input's tokens processed so far: generate() cuts its input ids with this
            past = super()._get_past_length(past_key_values)
            return past - self.prompt_length if past_key_values is not None else past

        def prepare_inputs(self, input_ids, attention_mask=None, past_key_values=None,
                           position_ids=None, **kwargs):
            batch, n = input_ids.shape[0], self.prompt_length
            if past_key_values is None:  # a new sequence: its state starts as the prompt's cache
                self.compile()
                self.request.reset_state()
                for state in self.request.query_state():
                    found = _STATE.search(state.name)
                    if found is None:
                        raise ValueError(f"unknown state {state.name!r} in the exported model")
                    kv = self.prompt[int(found[1])][0 if found[2] == "key" else 1]
                    state.state = Tensor(np.ascontiguousarray(np.repeat(kv, batch, axis=0)))
                self.next_beam_idx = np.arange(batch, dtype=int)
                self._past_length = n
                past_key_values = ((),)  # optimum-intel's mark of a sequence under way
            if attention_mask is None:
                attention_mask = torch.ones(batch, self._past_length - n + input_ids.shape[1],
                                            dtype=torch.long)
            attention_mask = torch.cat([torch.ones(batch, n, dtype=attention_mask.dtype),
                                        torch.as_tensor(attention_mask)], dim=1)
            # positions from the whole mask: the input's start after the prompt's
            return super().prepare_inputs(input_ids, attention_mask, past_key_values, None,
                                          **kwargs)

    _PROMPTED[base] = Prompted
    return Prompted


# ---------------------------------------------------------------- latency, side by side
def latency_variants(dense_checkpoint, deployed: list[dict], threads: int) -> dict:
    """The models timed side by side: the dense model in PyTorch float32 (what the grid
    evaluates); every deployment in `deployed` (`jobs.Jobs.latency_deployments`: its label, its
    export folder, its prompt cache or None, whether it is quantized) on OpenVINO with the exact
    runtime the deploy step checked (a recovery cell: its prompt cache in front of its compressed
    model's export); and the first quantized export again with OpenVINO's CPU defaults (int8
    dynamic activation quantization, u8 KV cache: faster, but not the model the tables score)."""
    import torch
    from transformers import AutoModelForCausalLM

    exact = {**EXACT_RUNTIME, "INFERENCE_NUM_THREADS": str(threads)}
    variants = {"pytorch dense fp32": AutoModelForCausalLM.from_pretrained(
        dense_checkpoint, dtype=torch.float32).eval()}
    for d in deployed:
        loaded = load(d["export"], exact)
        variants[f"openvino {d['label']}"] = (loaded if d["prompt"] is None
                                              else with_prompt(loaded, load_prompt(d["prompt"])))
    quantized = [d for d in deployed if d["prompt"] is None and d["quantized"]]
    if quantized:
        variants[f"openvino {quantized[0]['label']} (runtime defaults)"] = load(
            quantized[0]["export"], {"INFERENCE_NUM_THREADS": str(threads), "CACHE_DIR": ""})
    return variants


def latency(variants: dict, token_ids: list[int], settings: dict, pad_token_id) -> list[dict]:
    """Prefill and decode time of each variant at each batch size of `settings` (batches of
    `seq_len` tokens of real text after the prompt, if any; `new_tokens` decoded; medians of
    `rounds` alternating rounds, knowledge_recovery.models.timing), as rows with wall and CPU ms,
    decode throughput (tokens a second over the batch) and the ratios to the first variant."""
    import torch

    from knowledge_recovery.models.timing import generation_times

    rows = []
    for batch in settings["batches"]:
        need = batch * settings["seq_len"]
        if len(token_ids) < need:
            raise ValueError(f"the text has {len(token_ids)} tokens, fewer than a batch of {batch} "
                             f"x {settings['seq_len']}")
        x = torch.tensor(token_ids[:need]).view(batch, settings["seq_len"])
        times = generation_times(variants, x, settings["new_tokens"], settings["rounds"],
                                 pad_token_id)
        first = next(iter(times.values()))
        for name, t in times.items():
            (pre, pre_cpu), (dec, dec_cpu) = t["prefill"], t["decode"]
            rows.append({"variant": name, "batch": batch, "prefill_ms": pre * 1e3,
                         "prefill_cpu_ms": pre_cpu * 1e3, "decode_ms": dec * 1e3,
                         "decode_cpu_ms": dec_cpu * 1e3, "decode_tokens_per_s": batch / dec,
                         "prefill_x": pre / first["prefill"][0],
                         "decode_x": dec / first["decode"][0]})
    return rows
