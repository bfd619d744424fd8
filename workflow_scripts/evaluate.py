"""Evaluate one cell with lm-eval (model in memory, adapter attached) into results.json, task by
task; a killed job's finished tasks are kept and not evaluated again."""
from knowledge_recovery import artifacts
from knowledge_recovery.evaluation import harness
from knowledge_recovery.evaluation.tasks import from_hub
from knowledge_recovery.models import checkpoints
from knowledge_recovery.pipeline.grid import harness_tasks
from knowledge_recovery.pipeline.paths import Layout
from knowledge_recovery.pipeline.step import finish, record, results_root, step
from knowledge_recovery.recovery import adapters

smk = snakemake  # noqa: F821 - injected by Snakemake
cell = smk.params.cell
cfg = smk.params.evaluation
layout = Layout(smk.config)


def _size_metrics() -> dict:
    """What the cell costs, from the manifests of the model and the adapter it evaluates, so that
    MLflow's charts plot accuracy against size: the compressed model's bits per weight and
    sparsity (the dense model: 16 bits, none) and the adapter's trainable parameters."""
    model = artifacts.read_json(layout.model_manifest(cell.model, cell.compression))
    out = {"compression.bits_per_weight": model.get("effective_bits_per_weight", 16.0),
           "compression.sparsity": model.get("sparsity", 0.0),
           "recovery.trainable_params": 0}
    if cell.train_unit:
        out["recovery.trainable_params"] = artifacts.read_json(
            smk.input.train_manifest)["trainable_params"]
    return out

with step(smk):
    model, tokenizer = checkpoints.load_checkpoint(smk.input.checkpoint, cfg["dtype"])
    model_dtype = checkpoints.dtype_name(model)
    if cell.train_unit:
        model = adapters.load(model, cell.settings, smk.input.adapter)
    tasks = harness_tasks(smk.params.tasks)
    manager = harness.task_manager(smk.input.tasks, any(map(from_hub, smk.params.tasks)))
    state = layout.eval_state(cell.model, cell.compression, cell.recovery_unit)
    key = artifacts.fingerprint(smk.input, {"cell": cell.settings, "evaluation": cfg,
                                            "tasks": smk.params.tasks, "seed": smk.config["seed"]})
    with artifacts.Timer() as timer:
        results = harness.evaluate_cell(model, tokenizer, tasks, manager, cfg,
                                           smk.config["seed"], cell.settings, state, key)
    results, samples = harness.split_samples(results)
    artifacts.write_json_gz(smk.output.samples, samples)
    out = artifacts.manifest("evaluate", {"cell": cell.id, **cell.axes, "evaluation": cfg},
                             **timer.as_dict(), results=results,
                             model_dtype=model_dtype)
    print(results)
    compression = next(c for c in smk.config["compression"] if c["id"] == cell.compression)
    # results.json is the step's manifest: its content hashed, and the samples file's
    finish(smk, smk.output.results, out, [smk.output.samples], record(
        smk, "evaluate", cell.id, tags={"cell": cell.id, **cell.axes},
        # prefixed settings: the compare view plots accuracy against bits or rank
        params={"evaluation": cfg, **cell.axes, "compression": compression,
                "recovery": {k: v for k, v in cell.settings.items() if k != "training"},
                "training": cell.settings.get("training", {})},
        metrics={**harness.tracked_metrics(results), **timer.as_dict(), **_size_metrics()},
        artifacts=[smk.output.results]))
    artifacts.remove_state(state, results_root(smk))  # only now: results.json is in place
