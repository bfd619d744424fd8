# Deployment runs in its own environment (optimum-intel's pins do not fit the main one's): under
# `--sdm conda` envs/openvino.yaml, else the .venv-openvino that `make` builds when a config asks
# (DEPLOY_PYTHON, deploy_job: rules/common.smk). A recovery cell whose method is a prompt cache
# (prompt, prefix tuning) deploys on its compressed cell's export, unchanged (deploy_prompt).
rule deploy:
    input:
        unpack(lambda w: JOBS.deploy_inputs(w.model, w.compression)),
    output:
        deployed=directory(paths.deployed("{model}", "{compression}", "openvino")),
        samples=paths.deployed_samples("{model}", "{compression}", "openvino"),
        manifest=paths.deploy_manifest("{model}", "{compression}", "openvino"),
    params:
        python=DEPLOY_PYTHON,
        script=DEPLOY_SCRIPT,
        job=deploy_job,
    threads: config["threads"]
    resources:
        mem_mb=8000,
    log:
        paths.log("deploy", "{model}/{compression}"),
    benchmark:
        paths.benchmark("deploy", "{model}/{compression}")
    conda:
        "../envs/openvino.yaml"
    shell:
        # the step writes its own log; this catches what fails before it starts
        "{params.python} {params.script} {params.job:q} >> {log} 2>&1"


rule deploy_prompt:
    input:
        unpack(deploy_prompt_inputs),
    output:
        prompt=paths.deployed_prompt("{model}", "{compression}", "openvino", "{unit}"),
        samples=paths.deployed_samples("{model}", "{compression}", "openvino", "{unit}"),
        manifest=paths.deploy_manifest("{model}", "{compression}", "openvino", "{unit}"),
    params:
        python=DEPLOY_PYTHON,
        script=DEPLOY_SCRIPT,
        job=deploy_job,
    threads: config["threads"]
    resources:
        mem_mb=8000,
    log:
        paths.log("deploy_prompt", "{model}/{compression}/{unit}"),
    benchmark:
        paths.benchmark("deploy_prompt", "{model}/{compression}/{unit}")
    conda:
        "../envs/openvino.yaml"
    shell:
        "{params.python} {params.script} {params.job:q} >> {log} 2>&1"


# Every deployed model of one model beside its PyTorch dense model, timed in one process (a
# job of its own: timings from separate jobs would not be comparable).
rule deploy_latency:
    input:
        unpack(deploy_latency_inputs),
    output:
        latency=paths.deploy_latency("{model}", "openvino"),
    params:
        python=DEPLOY_PYTHON,
        script=DEPLOY_LATENCY_SCRIPT,
        job=deploy_latency_job,
    threads: config["threads"]
    resources:
        mem_mb=8000,
    log:
        paths.log("deploy_latency", "{model}"),
    benchmark:
        paths.benchmark("deploy_latency", "{model}")
    conda:
        "../envs/openvino.yaml"
    shell:
        "{params.python} {params.script} {params.job:q} >> {log} 2>&1"
