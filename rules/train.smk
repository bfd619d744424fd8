rule train:
    input:
        unpack(train_inputs),
    output:
        adapter=directory(f"{RES}/adapters/{{model}}/{{compression}}/{{recovery}}/seed{{seed}}/adapter"),
        manifest=f"{RES}/adapters/{{model}}/{{compression}}/{{recovery}}/seed{{seed}}/manifest.json",
    params:
        spec=lambda w: TRAINED[w.recovery],
        resume=resume_dir,
    threads: config["threads"]
    resources:
        mem_mb=8000,
    log:
        log_path("train", "{model}/{compression}/{recovery}/seed{seed}"),
    benchmark:
        bench_path("train", "{model}/{compression}/{recovery}/seed{seed}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/train.py"
