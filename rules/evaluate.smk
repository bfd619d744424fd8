rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        **outputs(JOBS.eval_outputs("{model}", "{compression}", "{unit}")),
    params:
        cell=cell_of,
        tasks=lambda w: [TASKS[t] for t in TASKS],
        evaluation=lambda w: evaluation_settings(config, w.model),
    threads: config["threads"]
    resources:
        **planned("evaluate", "{model}/{compression}/{unit}", mem_mb=8000),
    log:
        paths.log("evaluate", "{model}/{compression}/{unit}"),
    benchmark:
        paths.benchmark("evaluate", "{model}/{compression}/{unit}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/evaluate.py"
