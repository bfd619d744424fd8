rule compress:
    input:
        unpack(compress_inputs),
    output:
        checkpoint=directory(f"{RES}/models/{{model}}/{{compression}}/checkpoint"),
        masks=f"{RES}/models/{{model}}/{{compression}}/masks.safetensors",
        grids=f"{RES}/models/{{model}}/{{compression}}/quant_grids.safetensors",
        manifest=f"{RES}/models/{{model}}/{{compression}}/manifest.json",
    wildcard_constraints:
        compression=r"(?!dense$)[^/]+",
    params:
        spec=lambda w: compression_spec(COMPRESSION[w.compression]),
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


rule pack:
    input:
        checkpoint=f"{RES}/models/{{model}}/{{compression}}/checkpoint",
        grids=f"{RES}/models/{{model}}/{{compression}}/quant_grids.safetensors",
    output:
        packed=directory(f"{RES}/models/{{model}}/{{compression}}/packed"),
        manifest=f"{RES}/models/{{model}}/{{compression}}/packed_manifest.json",
    params:
        spec=lambda w: compression_spec(COMPRESSION[w.compression]),
    threads: config["threads"]
    resources:
        mem_mb=8000,
    log:
        log_path("pack", "{model}/{compression}"),
    benchmark:
        bench_path("pack", "{model}/{compression}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/pack.py"
