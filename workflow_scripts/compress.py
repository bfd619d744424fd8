"""Compress the dense checkpoint with one compression setting; save checkpoint, masks, manifest."""
from safetensors.torch import save_file

from knowledge_recovery import artifacts, compression, models, tracking
from knowledge_recovery.step import results_root, step

smk = snakemake  # noqa: F821 - injected by Snakemake
spec = dict(smk.params.spec)
model_name, comp = smk.wildcards.model, smk.wildcards.compression
with step(smk):
    model, tokenizer = models.load_checkpoint(smk.input.checkpoint)
    with artifacts.Timer() as timer:
        masks, stats = compression.compress(model, spec)
    with artifacts.atomic_dir(smk.output.checkpoint) as tmp:
        models.save_checkpoint(model, tokenizer, tmp)
    save_file({k: v.contiguous() for k, v in masks.items()}, smk.output.masks)
    manifest = artifacts.manifest("compress", spec, **timer.as_dict(), **stats,
                                  checkpoint_bytes=artifacts.dir_bytes(smk.output.checkpoint))
    artifacts.write_json(smk.output.manifest, manifest)
    summary = {k: manifest[k] for k in ("sparsity", "effective_bits_per_weight", "packed_bytes",
                                        "compressed_params", "wall_s", "cpu_s")}
    print(summary)
    tracking.log_step(results_root(smk), smk.config["experiment"], "compress", f"{model_name}/{comp}",
                      tags={"model": model_name, "compression": comp}, params=spec,
                      metrics=summary, artifacts=[smk.output.manifest])
