rule train:
    input:
        unpack(train_inputs),
    output:
        **outputs(JOBS.train_outputs("{model}", "{compression}", TRAIN_UNIT)),
    params:
        spec=lambda w: TRAINED[w.train_id],
        resume=lambda w: paths.train_state(w.model, w.compression, train_unit(w)),
    threads: config["threads"]
    resources:
        **planned("train", f"{{model}}/{{compression}}/{TRAIN_UNIT}", mem_mb=8000),
    log:
        paths.log("train", f"{{model}}/{{compression}}/{TRAIN_UNIT}"),
    benchmark:
        paths.benchmark("train", f"{{model}}/{{compression}}/{TRAIN_UNIT}")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../workflow_scripts/train.py"
