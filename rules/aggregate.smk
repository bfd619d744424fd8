rule aggregate:
    input:
        results=[eval_results(c) for c in CELLS],
        train_manifests=list(train_manifests().values()),
    output:
        **paths.summary,
    params:
        cells=CELLS,
        train_manifests=train_manifests(),
    log:
        paths.log("aggregate", "aggregate"),
    benchmark:
        paths.benchmark("aggregate", "aggregate")
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/aggregate.py"
