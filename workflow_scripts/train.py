"""Train one recovery adapter on a compressed model; keep the best validation checkpoint."""
from pathlib import Path

from knowledge_recovery import artifacts
from knowledge_recovery.models import checkpoints
from knowledge_recovery.pipeline import preflight
from knowledge_recovery.pipeline.paths import unit
from knowledge_recovery.pipeline.step import finish, record, results_root, step
from knowledge_recovery.recovery import adapters, training

smk = snakemake  # noqa: F821 - injected by Snakemake
spec = dict(smk.params.spec)
w = smk.wildcards
seed = int(w.seed)
with step(smk):
    base, tokenizer = checkpoints.load_checkpoint(smk.input.checkpoint)
    frozen = list(base.parameters())
    zeros_before = adapters.zero_count(frozen)
    # the same checks as preflight, for models whose shape was unknown before download
    preflight.check_context(smk.config, base.config, w.model)
    model = adapters.attach_checked(base, spec, f"recovery (id {w.train_id})", w.model, seed)
    teacher = (checkpoints.load_checkpoint(smk.input.teacher)[0].eval()
               if "teacher" in smk.input.keys() else None)
    files = smk.input.texts if "texts" in smk.input.keys() else [smk.input.text]
    texts = [Path(f).read_text(encoding="utf-8") for f in files]
    with artifacts.Timer() as timer:
        best, history = adapters.train(model, spec, tokenizer, texts, spec["training"], seed,
                                       teacher=teacher, resume_path=smk.params.resume)
    training.load_trainable_state(model, best)
    if adapters.zero_count(frozen) != zeros_before:
        raise RuntimeError("training changed the compressed model's weights")
    with artifacts.atomic_dir(smk.output.adapter) as tmp:
        adapters.save(model, spec, tmp)
        artifacts.strip_root(tmp, results_root(smk))  # the same bytes wherever the run is
    step_s = sorted(history["step_s"])
    manifest = artifacts.manifest(
        "train", spec, **timer.as_dict(), seed=seed, history=history,
        trainable_params=adapters.trainable_parameters(model),
        adapter_bytes=artifacts.dir_bytes(smk.output.adapter),
        median_step_s=step_s[len(step_s) // 2] if step_s else None,
        base_zero_weights=zeros_before, base_dtype=checkpoints.dtype_name(base))
    key = f"{w.model}/{w.compression}/{unit(w.train_id, seed)}"
    finish(smk, smk.output.manifest, manifest, [smk.output.adapter], record(
        smk, "train", key,
        tags={"cell": key, "model": w.model, "compression": w.compression,
              "recovery": w.train_id, "seed": seed},
        params={"recovery": {k: v for k, v in spec.items() if k != "training"},
                "training": spec["training"]},
        metrics={k: manifest[k] if k in manifest else history.get(k)
                 for k in ("trainable_params", "adapter_bytes", "median_step_s", "wall_s", "cpu_s",
                           "best_val_loss", "initial_val_loss", "best_step", "stopped_step")},
        series={"train_loss": history["train_loss"], "val_loss": history["val_loss"]},
        artifacts=[smk.output.manifest]))
    artifacts.remove_state(smk.params.resume, results_root(smk))  # only now: outputs in place
