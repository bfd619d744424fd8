rule sample_inputs:
    input:
        **JOBS.sample_inputs_inputs(),
    output:
        inputs=paths.displacement_inputs,
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
        representation=paths.representation("{model}", "{compression}", "{unit}"),
    params:
        cell=cell_of,
        settings=config["displacement"],
        dtype=config["evaluation"]["dtype"],
    threads: config["threads"]
    resources:
        mem_mb=8000,
    log:
        paths.log("represent", "{model}/{compression}/{unit}"),
    benchmark:
        paths.benchmark("represent", "{model}/{compression}/{unit}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/represent.py"
