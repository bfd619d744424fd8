"""The results layout: every path the workflow writes, in one place.

Rules call these with wildcard names (`layout.checkpoint("{model}", "{compression}")`) to get
their patterns; steps, `show` and `aggregate` call them with real values.
"""
from __future__ import annotations

RECOVERY_TEXT = "recovery_text"  # the id of the grid's `text` (`text.text_id` of the others)


def unit(recovery: str, seed: int | str | None) -> str:
    """One recovery of a compressed model in paths and MLflow keys: the recovery id alone when
    nothing is trained ('none'), else '<recovery or train id>/seed<k>'. Train and evaluate both
    use it."""
    return recovery if seed is None else f"{recovery}/seed{seed}"


class Layout:
    """Paths under one experiment's results folder, `<results_dir>/<experiment>`."""

    def __init__(self, config: dict):
        self.root = f"{config['results_dir']}/{config['experiment']}"

    # models: dense ones come from download, every other one from compress
    def model_dir(self, model, compression) -> str:
        return f"{self.root}/models/{model}/{compression}"

    def checkpoint(self, model, compression="dense") -> str:
        return f"{self.model_dir(model, compression)}/checkpoint"

    def model_manifest(self, model, compression) -> str:
        return f"{self.model_dir(model, compression)}/manifest.json"

    def masks(self, model, compression) -> str:
        return f"{self.model_dir(model, compression)}/masks.safetensors"

    def quant_grids(self, model, compression) -> str:
        return f"{self.model_dir(model, compression)}/quant_grids.safetensors"

    def packed(self, model, compression) -> str:
        return f"{self.model_dir(model, compression)}/packed"

    def packed_manifest(self, model, compression) -> str:
        return f"{self.model_dir(model, compression)}/packed_manifest.json"

    def deployed(self, model, compression, target) -> str:
        """The cell's model exported to a deployment runtime (`deploy: <target>`)."""
        return f"{self.model_dir(model, compression)}/{target}"

    def deployed_prompt(self, model, compression, target, unit_) -> str:
        """A recovery cell's prompt cache, in front of its compressed cell's deployed model."""
        return f"{self._deploy_dir(model, compression, unit_)}/{target}_prompt.safetensors"

    def deploy_manifest(self, model, compression, target, unit_=None) -> str:
        """Export settings, size, logits distance and lm-eval results of the deployed model (a
        compressed cell's, or with `unit_` a recovery cell's)."""
        return f"{self._deploy_dir(model, compression, unit_)}/{target}_manifest.json"

    def deployed_samples(self, model, compression, target, unit_=None) -> str:
        """Per-question records of the deployed model (as an evaluate step's samples file)."""
        return f"{self._deploy_dir(model, compression, unit_)}/{target}_samples.json.gz"

    def deploy_latency(self, model, target) -> str:
        """Prefill and decode times of a model's deployments beside the PyTorch dense model."""
        return f"{self.root}/models/{model}/{target}_latency.json"

    def _deploy_dir(self, model, compression, unit_) -> str:
        # a recovery cell's deployment sits beside its evaluation
        return (self.model_dir(model, compression) if unit_ is None
                else f"{self.root}/eval/{model}/{compression}/{unit_}")

    # text and tasks
    def text(self, text_id) -> str:
        """A training text (`text.text_id`): the grid's `text` is "recovery_text"."""
        return f"{self.root}/data/{text_id}.txt"

    def text_manifest(self, text_id) -> str:
        return f"{self.root}/data/{text_id}.manifest.json"

    @property
    def recovery_text(self) -> str:
        return self.text(RECOVERY_TEXT)

    @property
    def recovery_text_manifest(self) -> str:
        return self.text_manifest(RECOVERY_TEXT)

    def task_dir(self, task) -> str:
        return f"{self.root}/tasks/{task}/lm_eval"

    def task_manifest(self, task) -> str:
        return f"{self.root}/tasks/{task}/manifest.json"

    # training: `unit_` is paths.unit(train id, seed)
    def adapter(self, model, compression, unit_) -> str:
        return f"{self.root}/adapters/{model}/{compression}/{unit_}/adapter"

    def train_manifest(self, model, compression, unit_) -> str:
        return f"{self.root}/adapters/{model}/{compression}/{unit_}/manifest.json"

    def train_state(self, model, compression, unit_) -> str:
        """Resumable training state: outside the train rule's outputs, so a killed job keeps it."""
        return f"{self.root}/train_state/{model}/{compression}/{unit_}"

    # evaluation: `unit_` is paths.unit(recovery id, seed)
    def eval_results(self, model, compression, unit_) -> str:
        return f"{self.root}/eval/{model}/{compression}/{unit_}/results.json"

    def eval_samples(self, model, compression, unit_) -> str:
        """Per-question records of every task (gzipped JSON): what the statistics read."""
        return f"{self.root}/eval/{model}/{compression}/{unit_}/samples.json.gz"

    def eval_state(self, model, compression, unit_) -> str:
        """Finished tasks of an unfinished evaluate job: outside its outputs, kept on a kill."""
        return f"{self.root}/eval_state/{model}/{compression}/{unit_}"

    # representation: a fixed sample of evaluation inputs, each cell traced on it
    @property
    def displacement_inputs(self) -> str:
        return f"{self.root}/displacement/inputs.json"

    def representation(self, model, compression, unit_) -> str:
        """Per layer CKA with the dense model, attention on prompt tokens, latency (JSON)."""
        return f"{self.root}/displacement/{model}/{compression}/{unit_}/representation.json"

    # summary
    @property
    def summary(self) -> dict[str, str]:
        return {"csv": f"{self.root}/summary/results.csv",
                "markdown": f"{self.root}/summary/results.md",
                "plot": f"{self.root}/summary/mean_acc.png",
                "comparisons_csv": f"{self.root}/summary/comparisons.csv",
                "comparisons_markdown": f"{self.root}/summary/comparisons.md",
                "claims_csv": f"{self.root}/summary/claims.csv",
                "claims_markdown": f"{self.root}/summary/claims.md",
                "selection_csv": f"{self.root}/summary/selection.csv",
                "selection_markdown": f"{self.root}/summary/selection.md",
                # per model x compression x recovery: task groups, recovery ratio, sizes
                "overview_csv": f"{self.root}/summary/overview.csv",
                "overview_markdown": f"{self.root}/summary/overview.md",
                "overview_latex": f"{self.root}/summary/overview.tex",
                "accuracy_vs_compression_plot": f"{self.root}/summary/accuracy_vs_compression.png",
                "recovery_ratio_csv": f"{self.root}/summary/recovery_ratio.csv",
                "recovery_ratio_plot": f"{self.root}/summary/recovery_ratio.png",
                "pareto_plot": f"{self.root}/summary/pareto.png",
                # each adapter's validation curve and where it stopped
                "training_csv": f"{self.root}/summary/training.csv",
                "training_markdown": f"{self.root}/summary/training.md",
                "training_plot": f"{self.root}/summary/training.png",
                # question-level displacement: recovered / broken per cell, overlap, reading
                "displacement_csv": f"{self.root}/summary/displacement.csv",
                "overlap_csv": f"{self.root}/summary/overlap.csv",
                "displacement_markdown": f"{self.root}/summary/displacement.md",
                # layer-level displacement (`displacement:`): CKA and attention per layer, latency
                "layers_csv": f"{self.root}/summary/displacement_layers.csv",
                "cka_plot": f"{self.root}/summary/cka.png",
                "latency_plot": f"{self.root}/summary/accuracy_vs_latency.png",
                # deployed cells (`deploy:`): size, logits distance, accuracy beside fake quant
                "deployment_csv": f"{self.root}/summary/deployment.csv",
                "deployment_markdown": f"{self.root}/summary/deployment.md",
                "deployment_latency_csv": f"{self.root}/summary/deployment_latency.csv",
                # the config as the run read it (defaults filled in), for the parent MLflow run
                "config": f"{self.root}/summary/config.yaml",
                # written last: the others' hashes and the grid's tracking record
                "manifest": f"{self.root}/summary/manifest.json"}

    @property
    def report(self) -> str:
        """`snakemake --report` of the grid (knowledge_recovery.cli.report), outside the summary's
        manifest: it is built after the run, from it."""
        return f"{self.root}/summary/report.html"

    def log(self, rule, name) -> str:
        return f"{self.root}/logs/{rule}/{name}.log"

    def benchmark(self, rule, name) -> str:
        return f"{self.root}/benchmarks/{rule}/{name}.tsv"
