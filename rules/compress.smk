rule compress:
    input:
        unpack(compress_inputs),
    output:
        **outputs(JOBS.compress_outputs("{model}", "{compression}")),
    wildcard_constraints:
        compression=r"(?!dense(?:/|$))[^/]+",  # the dense model is downloaded, not compressed
    params:
        spec=lambda w: compression_spec(COMPRESSION[w.compression]),
        calibration=lambda w: calibration_settings(COMPRESSION[w.compression]),
    threads: config["threads"]
    resources:
        **planned("compress", "{model}/{compression}", mem_mb=8000),
    log:
        paths.log("compress", "{model}/{compression}"),
    benchmark:
        paths.benchmark("compress", "{model}/{compression}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/compress.py"


rule pack:
    input:
        **JOBS.pack_inputs("{model}", "{compression}"),
    output:
        **outputs(JOBS.pack_outputs("{model}", "{compression}")),
    params:
        spec=lambda w: compression_spec(COMPRESSION[w.compression]),
    threads: config["threads"]
    resources:
        **planned("pack", "{model}/{compression}", mem_mb=8000),
    log:
        paths.log("pack", "{model}/{compression}"),
    benchmark:
        paths.benchmark("pack", "{model}/{compression}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/pack.py"
