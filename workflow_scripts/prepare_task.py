"""Write one task entry as an lm-eval task folder (probes generated, local files converted)."""
from pathlib import Path

from knowledge_recovery import artifacts
from knowledge_recovery.evaluation import tasks
from knowledge_recovery.pipeline.step import finish, record, step

smk = snakemake  # noqa: F821 - injected by Snakemake
spec = dict(smk.params.spec)
with step(smk, offline=not tasks.from_hub(spec)):
    with artifacts.Timer() as timer:
        with artifacts.atomic_dir(smk.output.tasks) as tmp:
            info = tasks.prepare_task(spec, Path(tmp), smk.params.seed,
                                      final_dir=Path(smk.output.tasks))
    manifest = artifacts.manifest("prepare_task", spec, **timer.as_dict(), tasks=info)
    finish(smk, smk.output.manifest, manifest, [smk.output.tasks],
           record(smk, "prepare_task", spec["name"], tags={"task": spec["name"]}, params=spec,
                  metrics={f"{k}.documents": v.get("documents", 0) for k, v in info.items()},
                  artifacts=[smk.output.manifest]))
