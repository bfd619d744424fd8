"""Fetch the recovery/calibration text into one plain-text file."""
from knowledge_recovery import artifacts, text
from knowledge_recovery.pipeline.step import finish, record, step

smk = snakemake  # noqa: F821 - injected by Snakemake
spec = dict(smk.params.spec)
with step(smk, offline=False):
    with artifacts.Timer() as timer:
        body = text.load_text(spec)
        if not body.strip():
            raise ValueError(f"the text {smk.wildcards.text} from {spec} is empty")
        artifacts.write_text(smk.output.text, body)
    manifest = artifacts.manifest("download_text", spec, **timer.as_dict(), chars=len(body))
    finish(smk, smk.output.manifest, manifest, [smk.output.text],
           record(smk, "download_text", smk.wildcards.text, params=spec,
                  metrics={"chars": len(body)}, artifacts=[smk.output.manifest]))
