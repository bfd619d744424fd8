"""Collect every cell's results into a CSV, a Markdown table and a plot, compare cells question by
question (summary/comparisons.*), analyse which questions each recovery brings back or breaks
(summary/displacement.*, overlap.csv), where each moves the representation (per layer CKA and
attention, from the represent steps); attach them to MLflow."""
from functools import partial
from pathlib import Path

import yaml

from knowledge_recovery import artifacts
from knowledge_recovery.analysis import aggregate, claims, displacement
from knowledge_recovery.evaluation.tasks import result_groups
from knowledge_recovery.pipeline.grid import by_id
from knowledge_recovery.pipeline.jobs import Jobs
from knowledge_recovery.pipeline.step import record, results_root, step
from knowledge_recovery.tracking import mlflow_runs

smk = snakemake  # noqa: F821 - injected by Snakemake
cells = smk.params.cells
compression = by_id(smk.config["compression"])



with step(smk):
    df = aggregate.collect(cells, smk.input.results, smk.params.train_manifests)
    with artifacts.atomic_path(smk.output.csv) as tmp:
        df.to_csv(tmp, index=False)
    artifacts.write_text(smk.output.markdown, aggregate.markdown(df))
    aggregate.plot(df, Path(smk.output.plot), chance_level=aggregate.chance(smk.input.samples),
                   dense_cells=[c.id for c in cells if c.baseline and not c.trains])
    info = {key: aggregate.compression_info(artifacts.read_json(path))
            for key, path in Jobs(smk.config).model_manifests().items()}
    groups = result_groups(smk.config["tasks"], df.task.unique())
    represented = Jobs(smk.config).represented()
    traces = {c.id: artifacts.read_json(f) for c, f in zip(represented, smk.input.representations)}
    layers = displacement.layer_table(represented, traces)
    with artifacts.atomic_path(smk.output.layers_csv) as tmp:
        layers.to_csv(tmp, index=False)
    latency = dict(zip(layers.cell, layers.latency_over_dense))
    overview = aggregate.overview(df, cells, groups, info, latency)
    with artifacts.atomic_path(smk.output.overview_csv) as tmp:
        overview.to_csv(tmp, index=False)
    artifacts.write_text(smk.output.overview_markdown, aggregate.overview_markdown(overview))
    artifacts.write_text(smk.output.overview_latex, aggregate.overview_latex(overview))
    ratios = aggregate.task_recovery_ratios(df, cells)
    with artifacts.atomic_path(smk.output.recovery_ratio_csv) as tmp:
        ratios.to_csv(tmp, index=False)
    for draw, data, path in ((aggregate.plot_accuracy_vs_compression, overview,
                              smk.output.accuracy_vs_compression_plot),
                             (aggregate.plot_recovery_heatmap, ratios, smk.output.recovery_ratio_plot),
                             (aggregate.plot_pareto, overview, smk.output.pareto_plot),
                             (partial(aggregate.plot_pareto, x="latency_over_dense"), overview,
                              smk.output.latency_plot),
                             (displacement.plot_cka, layers,
                              smk.output.cka_plot)):
        with artifacts.atomic_path(path) as tmp:
            draw(data, tmp)
    curves, trained = aggregate.training_curves(cells, smk.params.train_manifests)
    with artifacts.atomic_path(smk.output.training_csv) as tmp:
        curves.to_csv(tmp, index=False)
    artifacts.write_text(smk.output.training_markdown, aggregate.training_markdown(
        trained, smk.config["training"].get("stop_when")))
    with artifacts.atomic_path(smk.output.training_plot) as tmp:
        aggregate.plot_training(curves, tmp)
    settings = smk.config["statistics"]
    params = df.drop_duplicates("cell").set_index("cell")["trainable_params"]
    # every cell's per-question correctness, read once for the comparisons, claims and
    # displacement below
    records = {c.id: aggregate.correctness(f) for c, f in zip(cells, smk.input.samples)}
    compared = aggregate.compare(cells, records, settings,
                                 budget=lambda c: params.get(c.id) or None)
    with artifacts.atomic_path(smk.output.comparisons_csv) as tmp:
        compared.to_csv(tmp, index=False)
    artifacts.write_text(smk.output.comparisons_markdown,
                         aggregate.comparisons_markdown(compared, settings["confidence"]))
    tested = claims.claim_table(smk.config["claims"], cells, records, groups, settings,
                                timings={k: t["latency"] for k, t in traces.items()})
    with artifacts.atomic_path(smk.output.claims_csv) as tmp:
        tested.to_csv(tmp, index=False)
    artifacts.write_text(smk.output.claims_markdown,
                         claims.markdown(tested, settings["confidence"]))
    selection = aggregate.selection_table(cells, smk.input.samples, smk.params.train_manifests)
    with artifacts.atomic_path(smk.output.selection_csv) as tmp:
        selection.to_csv(tmp, index=False)
    artifacts.write_text(smk.output.selection_markdown, aggregate.selection_markdown(selection))
    rows, recovered = displacement.example_level(cells, records)
    pairs = displacement.overlap(rows, recovered)
    for frame, path in ((rows, smk.output.displacement_csv), (pairs, smk.output.overlap_csv)):
        with artifacts.atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    artifacts.write_text(smk.output.displacement_markdown, displacement.reading(
        rows, pairs, compared, settings["confidence"], settings["reference"])
        + "\n" + displacement.layer_summary(layers))
    deployments = Jobs(smk.config).deployments()
    deployed = aggregate.deployment_table(
        deployments, smk.input.deployments, smk.input.deployed_samples, cells,
        smk.input.samples, settings)
    with artifacts.atomic_path(smk.output.deployment_csv) as tmp:
        deployed.to_csv(tmp, index=False)
    latency = aggregate.deployment_latency_table(smk.input.deploy_latency)
    with artifacts.atomic_path(smk.output.deployment_latency_csv) as tmp:
        latency.to_csv(tmp, index=False)
    artifacts.write_text(smk.output.deployment_markdown, aggregate.deployment_markdown(
        deployed, settings["confidence"], aggregate.not_deployed(deployments, cells))
        + aggregate.deployment_latency_markdown(latency, smk.config["deployment"]["latency"]))
    print(aggregate.markdown(df))
    print(aggregate.overview_markdown(overview))
    print(aggregate.comparisons_markdown(compared, settings["confidence"]))
    print(aggregate.selection_markdown(selection))
    print(open(smk.output.displacement_markdown).read())
    artifacts.write_text(smk.output.config, yaml.safe_dump(dict(smk.config), sort_keys=False))
    # every summary file goes onto the parent run; the manifest, written last, records them
    tables = [path for key, path in smk.output.items() if key != "manifest"]
    # the config as params (a changed config gets a new parent run: MLflow never changes a
    # param); the overview as a table MLflow shows, not a one-bar chart per cell
    grid = record(smk, "aggregate", "grid", tags={
        "mlflow.source.git.commit": artifacts.git_commit(),
        **{f"versions.{k}": v for k, v in artifacts.versions().items()}},
        params=mlflow_runs.config_params(dict(smk.config)),
        artifacts=tables, tables={"overview": smk.output.overview_csv},
        step_metrics={f"evaluate:{cell}": values
                      for cell, values in aggregate.dense_deltas(cells, records, settings).items()})
    artifacts.write_manifest(smk.output.manifest, artifacts.manifest(
        "aggregate", settings, cells=[c.id for c in cells], **{mlflow_runs.RECORD_KEY: grid}), tables)
    mlflow_runs.log_grid(results_root(smk), smk.config["experiment"], grid)
