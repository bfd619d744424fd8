"""Deploy one compressed model on OpenVINO: export it with its own grid, check the deployed
model's logits against the evaluated model's on a fixed sample, record its size, and score it
with lm-eval's own `openvino` model on the grid's tasks (per-question records beside).

Runs in the deploy environment, not Snakemake's (rules/deploy.smk calls it with that Python and
the job as one JSON argument: inputs, outputs, log, threads, config, settings).
"""
import json
import sys
from types import SimpleNamespace

from knowledge_recovery import artifacts, deployment, evaluation
from knowledge_recovery.calibration import calibration_batch
from knowledge_recovery.grid import task_names
from knowledge_recovery.step import finish, record, step
from knowledge_recovery.tasks import from_hub


class Files(SimpleNamespace):
    """Named files that also iterate, as Snakemake's input and output objects do."""

    def __iter__(self):
        return iter(vars(self).values())


job = json.loads(sys.argv[1])
smk = SimpleNamespace(input=Files(**job["input"]), output=Files(**job["output"]),
                      log=[job["log"]], threads=job["threads"], config=job["config"])
entry, settings = job["entry"], job["config"]["deployment"]
with step(smk, offline=not any(map(from_hub, job["tasks"]))):
    from transformers import AutoTokenizer

    weights = deployment.weight_settings(entry)
    with artifacts.Timer() as timer:
        with artifacts.atomic_dir(smk.output.deployed) as tmp:
            deployment.export(smk.input.checkpoint, tmp, weights)
    tokenizer = AutoTokenizer.from_pretrained(smk.input.checkpoint)
    text = open(smk.input.text).read()
    windows = calibration_batch(tokenizer, text, settings["samples"], settings["seq_len"],
                                job["config"]["seed"])
    distances = deployment.logits_distance(smk.input.checkpoint, smk.output.deployed,
                                           [w[None] for w in windows])
    worst = max(distances)
    print(f"logits relative L2 distance to the evaluated model: {distances}")
    found = {"target": entry["deploy"], "weights": weights or "float32 (pruned: dense kernels)",
             "runtime": deployment.EXACT_RUNTIME, "bytes_on_disk":
             deployment.disk_bytes(smk.output.deployed),
             "logits_distance": {"per_window": distances, "max": worst,
                                 "tolerance": settings["tolerance"],
                                 "windows": settings["samples"], "seq_len": settings["seq_len"]},
             "deploy_versions": deployment.versions(), **timer.as_dict()}
    if worst > settings["tolerance"]:
        # the deployed model is not the evaluated one: fail, keeping what was measured
        raise RuntimeError(f"{job['unit']}: the deployed model's logits are {worst:.4f} (relative "
                           f"L2) from the evaluated model's, over deployment.tolerance "
                           f"{settings['tolerance']}; export settings {weights}")
    cfg = job["config"]["evaluation"]
    manager = evaluation.task_manager(smk.input.tasks, any(map(from_hub, job["tasks"])))
    lm = deployment.harness_model(smk.output.deployed, cfg["batch_size"])
    results = {}
    with artifacts.Timer() as eval_timer:
        for task in job["tasks"]:  # one task a call, as the evaluate step scores them
            for name in task_names(task):
                results.update(evaluation.evaluate(
                    None, None, [{"name": name, "limit": task.get("limit")}], manager,
                    cfg["batch_size"], cfg["bootstrap_iters"], job["config"]["seed"],
                    log_samples=True, lm=lm))
    results, samples = evaluation.split_samples(results)
    artifacts.write_json_gz(smk.output.samples, samples)
    print(results)
    accs = [ms["acc"] for ms in results.values() if isinstance(ms.get("acc"), (int, float))]
    found.update(results=results, evaluation={**cfg, "model": "lm-eval openvino",
                                              **{f"eval_{k}": v for k, v in
                                                 eval_timer.as_dict().items()}})
    finish(smk, smk.output.manifest, artifacts.manifest("deploy", entry, **found),
           [smk.output.deployed, smk.output.samples], record(
               smk, "deploy", job["unit"], tags={"model": job["model"],
                                                 "compression": entry["id"]},
               params={"compression": entry, "deployment": settings,
                       "weights": weights or {}},
               metrics={"bytes_on_disk": found["bytes_on_disk"], "logits_distance_max": worst,
                        **{f"{t}.{m}": v for t, ms in results.items() for m, v in ms.items()},
                        **({"mean_acc": sum(accs) / len(accs)} if accs else {}),
                        **timer.as_dict()},
               artifacts=[smk.output.manifest]))
