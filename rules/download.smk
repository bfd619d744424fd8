# The only stage that may use the network; everything after it runs offline.


rule download_model:
    output:
        **outputs(JOBS.download_outputs("{model}")),
    params:
        # `shape:` only describes the model (checks, plans): changing it fetches nothing anew
        spec=lambda w: {k: v for k, v in MODELS[w.model].items() if k != "shape"},
        seed=config["seed"],
    log:
        paths.log("download_model", "{model}"),
    benchmark:
        paths.benchmark("download_model", "{model}")
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/download_model.py"


rule download_text:
    input:
        unpack(text_inputs),
    output:
        **outputs(JOBS.text_outputs("{text}")),
    params:
        spec=lambda w: JOBS.texts[w.text],
    log:
        paths.log("download_text", "{text}"),
    benchmark:
        paths.benchmark("download_text", "{text}")
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/download_text.py"


rule prepare_task:
    input:
        sources=task_sources,
    output:
        **outputs(JOBS.task_outputs("{task}")),
    params:
        spec=lambda w: TASKS[w.task],
        seed=config["seed"],
    log:
        paths.log("prepare_task", "{task}"),
    benchmark:
        paths.benchmark("prepare_task", "{task}")
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/prepare_task.py"
