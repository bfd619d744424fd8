# Compression x recovery benchmark: download -> compress -> train -> evaluate -> aggregate.
# Run with a profile: `snakemake --profile profiles/default [--configfile my.yaml]`.
import os
import time

from knowledge_recovery.pipeline import integrity, runlock
from knowledge_recovery.pipeline.config import prepare, read_yaml, validate_schema

if not config:  # no --configfile given: the embedded default grid, wherever --directory points
    configfile: f"{workflow.basedir}/config.yaml"

# A key given twice: Snakemake's YAML reader (9.27) keeps the last; refused here until it refuses.
for path in workflow.configfiles:
    read_yaml(path)
validate_schema(config)  # the package's JSON schema, defaults filled in
# Every error names its config key, before any job runs. Cluster jobs re-read this file: the
# main process has checked the models already (in a child process that imports torch and peft).
prepare(config, check_models=workflow.is_main_process)


include: "rules/common.smk"

# Job logs are files: no progress bars in them. Jobs inherit this environment (locally and on
# SLURM, where a job re-reads this file); tqdm and Hugging Face read it when they are imported.
os.environ.update(TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                  HF_DATASETS_DISABLE_PROGRESS_BARS="1")


report: "report/workflow.rst"

# One run per results folder: a killed run's stale locks are cleared, a live one elsewhere is not
# disturbed (pipeline/runlock.py). Only the main process decides; only a run that executes jobs
# claims. Then damaged artifacts (missing, truncated, altered; pipeline/integrity.py) and what was
# built from them are set aside, so that this run rebuilds them.
STARTED = time.time()
if workflow.is_main_process:
    runlock.clear_if_stale(paths.root)
    if not runlock.in_use(paths.root):
        integrity.set_aside_damaged(config, paths.root)


onstart:
    runlock.claim(paths.root, workflow.basedir)


onsuccess:
    runlock.release(paths.root, STARTED)


onerror:
    runlock.release(paths.root, STARTED)


include: "rules/download.smk"
include: "rules/compress.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/displacement.smk"
include: "rules/deploy.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        **JOBS.aggregate_outputs(),
        packed=JOBS.packed_outputs(),
        deployed=JOBS.deploy_outputs(),
    default_target: True
