"""Draw the fixed sample of evaluation inputs the representation analysis traces every cell on."""
from knowledge_recovery import artifacts, evaluation, representation
from knowledge_recovery.grid import task_names
from knowledge_recovery.step import finish, record, step
from knowledge_recovery.tasks import from_hub

smk = snakemake  # noqa: F821 - injected by Snakemake
settings = smk.params.settings
with step(smk, offline=not any(map(from_hub, smk.params.tasks))):
    manager = evaluation.task_manager(smk.input.tasks, any(map(from_hub, smk.params.tasks)))
    names = [n for t in smk.params.tasks for n in task_names(t)]
    inputs = representation.sample_inputs(manager, names, settings["inputs"],
                                          settings["seed"])
    print(f"{len(inputs)} inputs from {len(names)} tasks")
    finish(smk, smk.output.inputs, artifacts.manifest("sample_inputs", settings, inputs=inputs), [],
           record(smk, "sample_inputs", "displacement", params=settings,
                  metrics={"inputs": len(inputs)}, artifacts=[smk.output.inputs]))
