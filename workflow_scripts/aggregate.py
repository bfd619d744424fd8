"""Collect every cell's results into a CSV, a Markdown table and a plot; attach them to MLflow."""
from pathlib import Path

from knowledge_recovery import aggregate, artifacts, tracking
from knowledge_recovery.step import results_root, step

smk = snakemake  # noqa: F821 - injected by Snakemake
with step(smk):
    df = aggregate.collect(smk.params.cells, smk.input.results, smk.params.train_manifests)
    with artifacts.atomic_path(smk.output.csv) as tmp:
        df.to_csv(tmp, index=False)
    artifacts.write_text(smk.output.markdown, aggregate.markdown(df))
    aggregate.plot(df, Path(smk.output.plot))
    means = aggregate.table(df)["mean"]
    print(aggregate.markdown(df))
    tracking.log_grid(results_root(smk), smk.config["experiment"],
                      {f"mean_acc.{cell}": v for cell, v in means.items()},
                      [smk.output.csv, smk.output.markdown, smk.output.plot])
