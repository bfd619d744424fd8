rule aggregate:
    input:
        **JOBS.aggregate_inputs(),
    output:
        **reported(JOBS.aggregate_outputs()),
    params:
        cells=CELLS,
        train_manifests=JOBS.train_manifests(),
    log:
        paths.log("aggregate", "aggregate"),
    benchmark:
        paths.benchmark("aggregate", "aggregate")
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/aggregate.py"
