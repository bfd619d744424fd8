rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        results=f"{RES}/eval/{{model}}/{{compression}}/{{unit}}/results.json",
    params:
        cell=lambda w: cell_of(w),
        tasks=lambda w: [TASKS[t] for t in TASKS],
        evaluation=config["evaluation"],
    threads: config["threads"]
    resources:
        mem_mb=8000,
    log:
        log_path("evaluate", "{model}/{compression}/{unit}"),
    benchmark:
        bench_path("evaluate", "{model}/{compression}/{unit}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/evaluate.py"
