rule aggregate:
    input:
        **JOBS.aggregate_inputs(),
    output:
        **reported(paths.summary),
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
