rule sample_inputs:
    input:
        **JOBS.sample_inputs_inputs(),
    output:
        **outputs(JOBS.sample_inputs_outputs()),
    params:
        tasks=lambda w: [TASKS[t] for t in TASKS],
        settings=config["displacement"],
    log:
        paths.log("sample_inputs", "displacement"),
    benchmark:
        paths.benchmark("sample_inputs", "displacement")
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/sample_inputs.py"


rule represent:
    input:
        unpack(represent_inputs),
    output:
        **outputs(JOBS.represent_outputs("{model}", "{compression}", "{unit}")),
    params:
        cell=cell_of,
        settings=config["displacement"],
        dtype=lambda w: evaluation_settings(config, w.model)["dtype"],
    threads: config["threads"]
    resources:
        **planned("represent", "{model}/{compression}/{unit}", mem_mb=8000),
    log:
        paths.log("represent", "{model}/{compression}/{unit}"),
    benchmark:
        paths.benchmark("represent", "{model}/{compression}/{unit}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/represent.py"
