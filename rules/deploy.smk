# Deployment runs in its own environment (optimum-intel's pins do not fit the main one's): under
# `--sdm conda` envs/openvino.yaml, else the step re-runs itself with the .venv-openvino that
# `make` builds when a config asks (params.python; step.in_deploy_environment). A recovery cell
# whose method is a prompt cache (prompt, prefix tuning) deploys on its compressed cell's export,
# unchanged (deploy_prompt).
rule deploy:
    input:
        unpack(lambda w: JOBS.deploy_inputs(w.model, w.compression)),
    output:
        **outputs(JOBS.export_outputs("{model}", "{compression}", "openvino")),
    params:
        python=DEPLOY_PYTHON,
        model=lambda w: w.model,
        unit=lambda w: f"{w.model}/{w.compression}",
        entry=lambda w: COMPRESSION[w.compression],
        tasks=[TASKS[t] for t in TASKS],
    threads: config["threads"]
    resources:
        **planned("deploy", "{model}/{compression}", mem_mb=8000),
    log:
        paths.log("deploy", "{model}/{compression}"),
    benchmark:
        paths.benchmark("deploy", "{model}/{compression}")
    conda:
        "../envs/openvino.yaml"
    script:
        "../workflow_scripts/deploy.py"


rule deploy_prompt:
    input:
        unpack(deploy_prompt_inputs),
    output:
        **outputs(JOBS.deploy_prompt_outputs("{model}", "{compression}", "openvino", "{unit}")),
    params:
        python=DEPLOY_PYTHON,
        model=lambda w: w.model,
        unit=lambda w: cell_of(w).id,
        entry=lambda w: COMPRESSION[w.compression],
        tasks=[TASKS[t] for t in TASKS],
        recovery=lambda w: cell_of(w).settings,
    threads: config["threads"]
    resources:
        **planned("deploy_prompt", "{model}/{compression}/{unit}", mem_mb=8000),
    log:
        paths.log("deploy_prompt", "{model}/{compression}/{unit}"),
    benchmark:
        paths.benchmark("deploy_prompt", "{model}/{compression}/{unit}")
    conda:
        "../envs/openvino.yaml"
    script:
        "../workflow_scripts/deploy.py"


# Every deployed model of one model beside its PyTorch dense model, timed in one process (a
# job of its own: timings from separate jobs would not be comparable).
rule deploy_latency:
    input:
        unpack(deploy_latency_inputs),
    output:
        **outputs(JOBS.latency_outputs("{model}", "openvino")),
    params:
        python=DEPLOY_PYTHON,
        model=lambda w: w.model,
        settings=config["deployment"]["latency"],
        deployed=lambda w: JOBS.latency_deployments(w.model, "openvino"),
    threads: config["threads"]
    resources:
        **planned("deploy_latency", "{model}", mem_mb=8000),
    log:
        paths.log("deploy_latency", "{model}"),
    benchmark:
        paths.benchmark("deploy_latency", "{model}")
    conda:
        "../envs/openvino.yaml"
    script:
        "../workflow_scripts/deploy_latency.py"
