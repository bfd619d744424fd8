"""Export one quantized cell as a packed low-bit checkpoint and check it decodes to the weights
the compress step evaluated."""
from safetensors.torch import load_file

from knowledge_recovery import artifacts
from knowledge_recovery.compression import packing
from knowledge_recovery.models import checkpoints
from knowledge_recovery.pipeline.step import finish, record, step

smk = snakemake  # noqa: F821 - injected by Snakemake
spec = dict(smk.params.spec)
model_name, comp = smk.wildcards.model, smk.wildcards.compression
with step(smk):
    model, tokenizer = checkpoints.load_checkpoint(smk.input.checkpoint, device="cpu")
    with artifacts.Timer() as timer, artifacts.atomic_dir(smk.output.packed) as tmp:
        packing.export_packed(model, tokenizer, load_file(smk.input.grids), spec, tmp)
        del model  # verify loads the packed model; the reference is read a tensor at a time
        worst = packing.verify(tmp, smk.input.checkpoint)
    manifest = artifacts.manifest(
        "pack", spec, **timer.as_dict(), format="compressed-tensors pack-quantized",
        packed_dir_bytes=artifacts.dir_bytes(smk.output.packed),
        checkpoint_bytes=artifacts.dir_bytes(smk.input.checkpoint),
        max_relative_weight_difference=worst)
    summary = {k: manifest[k] for k in ("packed_dir_bytes", "checkpoint_bytes", "wall_s")}
    print(summary)
    finish(smk, smk.output.manifest, manifest, [smk.output.packed],
           record(smk, "pack", f"{model_name}/{comp}",
                  tags={"model": model_name, "compression": comp}, params=spec,
                  metrics=summary, artifacts=[smk.output.manifest]))
