rule compress:
    input:
        unpack(compress_inputs),
    output:
        checkpoint=directory(f"{RES}/models/{{model}}/{{compression}}/checkpoint"),
        masks=f"{RES}/models/{{model}}/{{compression}}/masks.safetensors",
        manifest=f"{RES}/models/{{model}}/{{compression}}/manifest.json",
    wildcard_constraints:
        compression=r"(?!dense$)[^/]+",
    params:
        spec=lambda w: COMPRESSION[w.compression],
        calibration=lambda w: calibration_settings(COMPRESSION[w.compression]),
    threads: config["threads"]
    resources:
        mem_mb=8000,
    log:
        log_path("compress", "{model}/{compression}"),
    benchmark:
        bench_path("compress", "{model}/{compression}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/compress.py"
