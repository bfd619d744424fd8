"""Fetch the recovery/calibration text into one plain-text file (without the grid's questions
where the text is to be decontaminated)."""
from pathlib import Path

from knowledge_recovery import artifacts, text
from knowledge_recovery.evaluation import task_formats
from knowledge_recovery.pipeline.step import finish, record, step

smk = snakemake  # noqa: F821 - injected by Snakemake
spec = dict(smk.params.spec)
with step(smk, offline=False):
    with artifacts.Timer() as timer:
        body = text.load_text(spec)
        decontamination = {}
        if spec.get("decontaminate"):
            docs = [row for folder in smk.input.tasks
                    for path in sorted(Path(folder).glob("*.jsonl"))
                    for row in task_formats.read_rows(path)]
            body, dropped = text.Contamination(docs).clean(body)
            print(f"decontaminated against {len(docs):,} task documents: dropped "
                  f"{len(dropped):,} of the text's documents", flush=True)
            decontamination = {"dropped": len(dropped), "examples": [
                {"why": why, "document": doc[:300]} for doc, why in dropped[:20]]}
        if not body.strip():
            raise ValueError(f"the text {smk.wildcards.text} from {spec} is empty")
        artifacts.write_text(smk.output.text, body)
    manifest = artifacts.manifest("download_text", spec, **timer.as_dict(), chars=len(body),
                                  **({"decontamination": decontamination} if decontamination
                                     else {}))
    finish(smk, smk.output.manifest, manifest, [smk.output.text],
           record(smk, "download_text", smk.wildcards.text, params=spec,
                  metrics={"chars": len(body), **({"dropped_documents": decontamination["dropped"]}
                                                  if decontamination else {})},
                  artifacts=[smk.output.manifest]))
