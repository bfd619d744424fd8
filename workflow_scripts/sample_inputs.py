"""Draw the fixed sample of evaluation inputs the representation analysis traces every cell on."""
from knowledge_recovery import artifacts
from knowledge_recovery.analysis import representation
from knowledge_recovery.evaluation import harness
from knowledge_recovery.evaluation.tasks import from_hub, task_names
from knowledge_recovery.pipeline.step import finish, record, step

smk = snakemake  # noqa: F821 - injected by Snakemake
settings = smk.params.settings
with step(smk, offline=not any(map(from_hub, smk.params.tasks))):
    manager = harness.task_manager(smk.input.tasks, any(map(from_hub, smk.params.tasks)))
    names = [n for t in smk.params.tasks for n in task_names(t)]
    inputs = representation.sample_inputs(manager, names, settings["inputs"],
                                          settings["seed"])
    print(f"{len(inputs)} inputs from {len(names)} tasks")
    finish(smk, smk.output.inputs, artifacts.manifest("sample_inputs", settings, inputs=inputs), [],
           record(smk, "sample_inputs", "displacement", params=settings,
                  metrics={"inputs": len(inputs)}, artifacts=[smk.output.inputs]))
