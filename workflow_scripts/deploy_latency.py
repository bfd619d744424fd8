"""Time the deployed models of one model beside its dense model in PyTorch, side by side in one
process: prefill and decode at each batch size of `openvino.latency` (see
openvino.latency_variants for the variants). Timings from separate jobs would not compare.

Runs in the deploy environment (step.in_deploy_environment).
"""
from knowledge_recovery import artifacts
from knowledge_recovery.deployment import openvino
from knowledge_recovery.pipeline.step import finish, in_deploy_environment, record, step

smk = in_deploy_environment(globals().get("snakemake"), __file__)
settings, model = smk.params.settings, smk.params.model
with step(smk):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smk.input.checkpoint)
    # enough text for the largest batch (a token is rarely more than 16 characters)
    text = open(smk.input.text).read()[: 16 * max(settings["batches"]) * settings["seq_len"]]
    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    variants = openvino.latency_variants(smk.input.checkpoint, smk.params.deployed, smk.threads)
    with artifacts.Timer() as timer:
        rows = openvino.latency(variants, ids, settings, tokenizer.eos_token_id)
    for row in rows:
        print(row)

    finish(smk, smk.output.latency, artifacts.manifest(
        "deploy_latency", settings, model=model, threads=smk.threads, rows=rows,
        deploy_versions=artifacts.versions(openvino.RUNTIME_PACKAGES), **timer.as_dict()), [], record(
        smk, "deploy_latency", model, tags={"model": model}, params=settings,
        metrics={f"b{r['batch']}.{r['variant']}.{m}": r[m] for r in rows
                 for m in ("prefill_ms", "decode_ms", "decode_tokens_per_s")},
        artifacts=[smk.output.latency]))
