# Compression x recovery benchmark: download -> compress -> train -> evaluate -> aggregate.
# Run with a profile: `snakemake --profile profiles/default [--configfile my.yaml]`.
from knowledge_recovery.config import prepare, validate_schema

if not config:  # no --configfile given: the embedded default grid
    configfile: "config.yaml"

validate_schema(config)  # the package's JSON schema, defaults filled in
# Every error names its config key, before any job runs. Cluster jobs re-read this file: the
# main process has checked the models already, so they skip that (it imports torch and peft).
prepare(config, check_models=workflow.is_main_process)


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/compress.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        **paths.summary,
        packed=packed_outputs(),
    default_target: True
