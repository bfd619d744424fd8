"""Compress the dense checkpoint with one compression setting; save checkpoint, masks,
quantization grids, manifest."""
from pathlib import Path

from safetensors.torch import save_file

from knowledge_recovery import artifacts
from knowledge_recovery.compression import apply, calibration, entries
from knowledge_recovery.models import checkpoints
from knowledge_recovery.pipeline import preflight
from knowledge_recovery.pipeline.step import finish, record, step

smk = snakemake  # noqa: F821 - injected by Snakemake
spec = dict(smk.params.spec)
calib = smk.params.calibration
model_name, comp = smk.wildcards.model, smk.wildcards.compression
with step(smk):
    # The model stays on the CPU; calibration moves one block at a time to the GPU if any.
    model, tokenizer = checkpoints.load_checkpoint(smk.input.checkpoint, device="cpu")
    # the same check as preflight, for models whose shape was unknown before download
    entries.check_widths(spec, f"compression (id {comp})", apply.linear_widths(model),
                             model_name)
    preflight.check_context(smk.config, model.config, model_name)
    batch = None
    if calib:
        text = Path(smk.input.text).read_text(encoding="utf-8")
        batch = calibration.calibration_batch(tokenizer, text, calib["samples"], calib["seq_len"],
                                              calib["seed"])
    with artifacts.Timer() as timer:
        masks, grids, stats = apply.compress(model, spec, batch)
    with artifacts.atomic_dir(smk.output.checkpoint) as tmp:
        checkpoints.save_checkpoint(model, tokenizer, tmp)
    for path, tensors in ((smk.output.masks, masks), (smk.output.grids, grids)):
        with artifacts.atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    manifest = artifacts.manifest("compress", spec, **timer.as_dict(), **stats, calibration=calib,
                                  dtype=checkpoints.dtype_name(model),
                                  checkpoint_bytes=artifacts.dir_bytes(smk.output.checkpoint))
    summary = {k: manifest[k] for k in ("sparsity", "effective_bits_per_weight", "packed_bytes",
                                        "compressed_params", "wall_s", "cpu_s")}
    print(summary)
    finish(smk, smk.output.manifest, manifest,
           [smk.output.checkpoint, smk.output.masks, smk.output.grids],
           record(smk, "compress", f"{model_name}/{comp}",
                  tags={"model": model_name, "compression": comp},
                  params={"compression": {**spec, "calibration": calib or {}}},
                  metrics=summary, artifacts=[smk.output.manifest]))
