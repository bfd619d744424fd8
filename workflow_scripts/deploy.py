"""Deploy one cell on OpenVINO and score it with lm-eval's own `openvino` model on the grid's
tasks (per-question records beside). A compressed cell (rule deploy): export it with its own
grid. A recovery cell whose method is a prompt cache (rule deploy_prompt): its compressed cell's
export, unchanged, started from the prompt's keys and values. Either way the deployed model's
logits are checked against the evaluated model's on a fixed sample first.

Runs in the deploy environment (step.in_deploy_environment).
"""
from knowledge_recovery import artifacts
from knowledge_recovery.compression.calibration import calibration_batch
from knowledge_recovery.deployment import openvino
from knowledge_recovery.evaluation import harness
from knowledge_recovery.evaluation.tasks import from_hub
from knowledge_recovery.models import checkpoints
from knowledge_recovery.pipeline.grid import harness_tasks
from knowledge_recovery.pipeline.step import finish, in_deploy_environment, record, step
from knowledge_recovery.recovery import adapters
from knowledge_recovery.registry import recovery_method

smk = in_deploy_environment(globals().get("snakemake"), __file__)
entry, tasks, settings = smk.params.entry, smk.params.tasks, smk.config["deployment"]
cell = getattr(smk.params, "recovery", None)  # rule deploy_prompt: a recovery cell's settings
unit, seed = smk.params.unit, smk.config["seed"]
with step(smk, offline=not any(map(from_hub, tasks))):
    reference, tokenizer = checkpoints.load_checkpoint(smk.input.checkpoint, "float32")
    weights = openvino.weight_settings(entry)
    prompt = None
    with artifacts.Timer() as timer:
        if cell is None:
            with artifacts.atomic_dir(smk.output.deployed) as tmp:
                openvino.export(smk.input.checkpoint, tmp, weights)
            folder = smk.output.deployed
            found = {"weights": weights or "float32 (pruned: dense kernels)",
                     "bytes_on_disk": artifacts.dir_bytes(folder)}
        else:
            reference = adapters.load(reference, cell, smk.input.adapter)
            with artifacts.atomic_path(smk.output.prompt) as tmp:
                openvino.save_prompt(recovery_method(cell["method"]).prompt_cache(reference),
                                       tmp)
            prompt = openvino.load_prompt(smk.output.prompt)
            folder = smk.input.deployed
            found = {"weights": artifacts.read_json(smk.input.deploy_manifest)["weights"],
                     "base_model": folder, "prompt_tokens": int(prompt[0][0].shape[2]),
                     # what the recovery adds at deployment: its cache, the model is shared
                     "bytes_on_disk": artifacts.dir_bytes(smk.output.prompt),
                     "base_bytes_on_disk": artifacts.dir_bytes(folder)}
    reference.eval()
    deployed = openvino.load(folder)
    if prompt is not None:
        deployed = openvino.with_prompt(deployed, prompt)
    windows = calibration_batch(tokenizer, open(smk.input.text).read(), settings["samples"],
                                settings["seq_len"], seed)
    distances = openvino.logits_distance(reference, deployed, [w[None] for w in windows])
    worst = max(distances)
    print(f"logits relative L2 distance to the evaluated model: {distances}")
    found.update({"target": entry["deploy"], "runtime": openvino.EXACT_RUNTIME,
                  "logits_distance": {"per_window": distances, "max": worst,
                                      "tolerance": settings["tolerance"],
                                      "windows": settings["samples"],
                                      "seq_len": settings["seq_len"]},
                  "deploy_versions": artifacts.versions(openvino.RUNTIME_PACKAGES), **timer.as_dict()})
    if worst > settings["tolerance"]:
        # the deployed model is not the evaluated one: fail, keeping what was measured
        raise RuntimeError(f"{unit}: the deployed model's logits are {worst:.4f} (relative "
                           f"L2) from the evaluated model's, over openvino.tolerance "
                           f"{settings['tolerance']}; export settings {weights}")
    del reference, deployed
    cfg = smk.config["evaluation"]
    manager = harness.task_manager(smk.input.tasks, any(map(from_hub, tasks)))
    lm = openvino.harness_model(folder, cfg["batch_size"], prompt)
    with artifacts.Timer() as eval_timer:  # one task a call, as the evaluate step scores them
        results = harness.evaluate_cell(None, None, harness_tasks(tasks), manager, cfg, seed,
                                           cell or {"method": "none"}, lm=lm)
    results, samples = harness.split_samples(results)
    artifacts.write_json_gz(smk.output.samples, samples)
    print(results)
    found.update(results=results, evaluation={**cfg, "model": "lm-eval openvino",
                                              **{f"eval_{k}": v for k, v in
                                                 eval_timer.as_dict().items()}})
    written = [smk.output.samples, smk.output.deployed if cell is None else smk.output.prompt]
    tags = {"model": smk.params.model, "compression": entry["id"],
            **({"recovery": cell["id"], "cell": unit} if cell else {})}
    finish(smk, smk.output.manifest, artifacts.manifest(
        "deploy", entry, **({"recovery": cell} if cell else {}), **found), written, record(
        smk, "deploy_prompt" if cell else "deploy", unit, tags=tags,
        params={"compression": entry, "deployment": settings, "weights": weights or {},
                **({"recovery": cell} if cell else {})},
        metrics={"bytes_on_disk": found["bytes_on_disk"], "logits_distance_max": worst,
                 **harness.tracked_metrics(results), **timer.as_dict()},
        artifacts=[smk.output.manifest]))
