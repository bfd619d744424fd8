rule train:
    input:
        checkpoint=lambda w: checkpoint_dir(w.model, w.compression),
        text=rules.download_text.output.text,
    output:
        adapter=directory(f"{RES}/adapters/{{model}}/{{compression}}/{{recovery}}/seed{{seed}}/adapter"),
        manifest=f"{RES}/adapters/{{model}}/{{compression}}/{{recovery}}/seed{{seed}}/manifest.json",
    params:
        spec=lambda w: RECOVERY[w.recovery],
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
