"""Fetch the recovery/calibration text into one plain-text file (without the grid's questions
where the text is to be decontaminated)."""
import json
from pathlib import Path

from knowledge_recovery import artifacts, text
from knowledge_recovery.pipeline.step import finish, record, step

smk = snakemake  # noqa: F821 - injected by Snakemake
spec = dict(smk.params.spec)
with step(smk, offline=False):
    with artifacts.Timer() as timer:
        body = text.load_text(spec)
        dropped = []
        if spec.get("decontaminate"):
            docs = [json.loads(line) for folder in smk.input.tasks
                    for path in sorted(Path(folder).glob("*.jsonl"))
                    for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            body, dropped = text.Contamination(docs).clean(body)
            print(f"decontaminated against {len(docs):,} task documents: dropped "
                  f"{len(dropped):,} of the text's documents", flush=True)
        if not body.strip():
            raise ValueError(f"the text {smk.wildcards.text} from {spec} is empty")
        artifacts.write_text(smk.output.text, body)
    decontamination = {"decontamination": {
        "dropped": len(dropped), "examples": [{"why": why, "document": doc[:300]}
                                              for doc, why in dropped[:20]]}} if spec.get(
        "decontaminate") else {}
    manifest = artifacts.manifest("download_text", spec, **timer.as_dict(), chars=len(body),
                                  **decontamination)
    finish(smk, smk.output.manifest, manifest, [smk.output.text],
           record(smk, "download_text", smk.wildcards.text, params=spec,
                  metrics={"chars": len(body), **({"dropped_documents": len(dropped)}
                                                  if spec.get("decontaminate") else {})},
                  artifacts=[smk.output.manifest]))
