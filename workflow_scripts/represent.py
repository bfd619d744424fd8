"""Trace one cell and the dense model on the fixed sample of inputs: per layer CKA with the dense
model, attention mass on prompt tokens, forward latency beside the dense model's."""
from knowledge_recovery import artifacts
from knowledge_recovery.analysis import representation
from knowledge_recovery.models import checkpoints
from knowledge_recovery.pipeline.step import finish, record, step
from knowledge_recovery.recovery import adapters

smk = snakemake  # noqa: F821 - injected by Snakemake
cell = smk.params.cell
settings = smk.params.settings
with step(smk):
    texts = [i["text"] for i in artifacts.read_json(smk.input.inputs)["inputs"]]
    dense, tokenizer = checkpoints.load_checkpoint(smk.input.dense, smk.params.dtype)
    model, _ = checkpoints.load_checkpoint(smk.input.checkpoint, smk.params.dtype)
    if cell.train_unit:
        model = adapters.load(model, cell.settings, smk.input.adapter)
    model.eval()
    with artifacts.Timer() as timer:
        found = representation.analyse(dense, model, tokenizer, texts, settings)
    print({k: v for k, v in found.items() if k != "latency"}, found["latency"], sep="\n")
    # the metrics at each timed batch size: latency_over_dense_b8, ...; unsuffixed at the first
    latency = {}
    for i, (size, timed) in enumerate(found["latency"].items()):
        suffix = "" if i == 0 else f"_b{size}"
        latency.update({f"latency_over_dense{suffix}": timed["cell_over_dense"],
                        f"latency_ms{suffix}": timed["cell_ms"],
                        f"dense_latency_ms{suffix}": timed["dense_ms"]})
    series = {"cka": list(enumerate(found["cka"]))}
    if found["attention_to_prompt"]:
        series["attention_to_prompt"] = list(enumerate(found["attention_to_prompt"], start=1))
    finish(smk, smk.output.representation, artifacts.manifest(
        "represent", settings, cell=cell.id, **cell.axes, **timer.as_dict(), **found), [],
        record(smk, "represent", cell.id, tags={"cell": cell.id, **cell.axes}, params=settings,
               metrics={"cka_last_layer": found["cka"][-1], "cka_mean": sum(found["cka"]) /
                        len(found["cka"]), **latency, **timer.as_dict()},
               series=series, artifacts=[smk.output.representation]))
