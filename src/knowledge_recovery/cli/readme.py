"""Copy a finished grid's summary into the repository and the docs, so that the numbers in
README.md and docs/*.md are the files a run wrote, never a hand copy.

    python -m knowledge_recovery.cli.readme --configfile config.yaml [--check]   (make readme)

Copies the summary tables and plots of the config's results folder to `docs/results/<experiment>/`
(with the config's git commit and the command), then rewrites every block of README.md and
docs/*.md between `<!-- include: <path> -->` and `<!-- end include -->` with the file at <path>
(relative to the repository). `--check` changes nothing and fails when a block differs from its
file (the tests run it).
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.paths import Layout

REPO = Path(__file__).resolve().parents[3]
SHOWN = ("overview_markdown", "comparisons_markdown", "claims_markdown", "selection_markdown",
         "displacement_markdown", "training_markdown", "training_plot",
         "markdown", "plot",
         "accuracy_vs_compression_plot", "recovery_ratio_plot", "pareto_plot", "cka_plot",
         "latency_plot", "deployment_markdown", "manifest")
BLOCK = re.compile(r"(<!-- include: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)


def copy_summary(config: dict, repo: Path = REPO) -> Path:
    summary = Layout(config).summary
    target = repo / "docs" / "results" / config["experiment"]
    target.mkdir(parents=True, exist_ok=True)
    for key in SHOWN:
        shutil.copy2(summary[key], target / Path(summary[key]).name)
    return target


def render(readme: str, repo: Path = REPO) -> str:
    """The README with every include block replaced by its file's content."""
    def fill(m):
        body = (repo / m["path"]).read_text()
        return m[1] + body + ("" if body.endswith("\n") else "\n") + m[4]
    return BLOCK.sub(fill, readme)


def pages(repo: Path = REPO) -> list[Path]:
    """The pages whose include blocks are kept in step with their files."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", help="copy this config's summary first")
    parser.add_argument("--check", action="store_true", help="fail if the README is stale")
    args = parser.parse_args(argv)
    if args.configfile and not args.check:
        print(f"copied to {copy_summary(load_config(args.configfile, check_models=False))}")
    stale = []
    for page in pages():
        text = page.read_text()
        new = render(text)
        if args.check:
            stale += [page.relative_to(REPO)] if new != text else []
            continue
        page.write_text(new)
        print(f"{page.relative_to(REPO)}: {len(BLOCK.findall(text))} include block(s) rewritten")
    if stale:
        print(f"{', '.join(map(str, stale))}: an include block differs from its file; run "
              f"`make readme`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
