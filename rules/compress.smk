rule compress:
    input:
        unpack(compress_inputs),
    output:
        checkpoint=directory(paths.checkpoint("{model}", "{compression}")),
        masks=paths.masks("{model}", "{compression}"),
        grids=paths.quant_grids("{model}", "{compression}"),
        manifest=paths.model_manifest("{model}", "{compression}"),
    wildcard_constraints:
        compression=r"(?!dense(?:/|$))[^/]+",  # the dense model is downloaded, not compressed
    params:
        spec=lambda w: compression_spec(COMPRESSION[w.compression]),
        calibration=lambda w: calibration_settings(COMPRESSION[w.compression]),
    threads: config["threads"]
    resources:
        mem_mb=8000,
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
        checkpoint=paths.checkpoint("{model}", "{compression}"),
        grids=paths.quant_grids("{model}", "{compression}"),
    output:
        packed=directory(paths.packed("{model}", "{compression}")),
        manifest=paths.packed_manifest("{model}", "{compression}"),
    params:
        spec=lambda w: compression_spec(COMPRESSION[w.compression]),
    threads: config["threads"]
    resources:
        mem_mb=8000,
    log:
        paths.log("pack", "{model}/{compression}"),
    benchmark:
        paths.benchmark("pack", "{model}/{compression}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/pack.py"
