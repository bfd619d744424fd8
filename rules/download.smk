# The only stage that may use the network; everything after it runs offline.


rule download_model:
    output:
        checkpoint=directory(f"{RES}/models/{{model}}/dense/checkpoint"),
        manifest=f"{RES}/models/{{model}}/dense/manifest.json",
    params:
        spec=lambda w: MODELS[w.model],
        seed=config["seed"],
    log:
        log_path("download_model", "{model}"),
    benchmark:
        bench_path("download_model", "{model}")
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/download_model.py"


rule download_text:
    output:
        text=f"{RES}/data/recovery_text.txt",
        manifest=f"{RES}/data/recovery_text.manifest.json",
    params:
        spec=config["text"],
    log:
        log_path("download_text", "recovery_text"),
    benchmark:
        bench_path("download_text", "recovery_text")
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/download_text.py"


rule prepare_task:
    output:
        tasks=directory(f"{RES}/tasks/{{task}}/lm_eval"),
        manifest=f"{RES}/tasks/{{task}}/manifest.json",
    params:
        spec=lambda w: TASKS[w.task],
        seed=config["seed"],
    log:
        log_path("prepare_task", "{task}"),
    benchmark:
        bench_path("prepare_task", "{task}")
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/prepare_task.py"
