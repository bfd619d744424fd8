rule aggregate:
    input:
        results=[eval_results(c) for c in CELLS],
        train_manifests=list(train_manifests().values()),
    output:
        **aggregate_outputs(),
    params:
        cells=CELLS,
        train_manifests=train_manifests(),
    log:
        log_path("aggregate", "aggregate"),
    benchmark:
        bench_path("aggregate", "aggregate")
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/aggregate.py"
