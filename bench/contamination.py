"""Are the evaluation questions in the recovery text? Word n-gram overlap between each of a
grid's texts (its `text`, which compression calibrates on and adapters train on, and each
recovery entry's own `text`) and every document its evaluate steps score (each task's first
`limit`), the test of Brown et al. 2020 (GPT-3, appendix
C: 13-grams; --n sets it), and for probe tasks the text's documents that name a question's
subject and its answer (`text.Contamination`, what `decontaminate: true` drops). Run after the
grid's prepare steps (any finished or started run):

    .venv/bin/python bench/contamination.py --config config/study.yaml

Prints, per task, the documents checked, those sharing an n-gram with the text, and the first
few shared n-grams; the table also goes to --out (docs/results/bench/contamination-<experiment>.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from knowledge_recovery.evaluation import task_formats
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.jobs import Jobs
from knowledge_recovery.pipeline.paths import RECOVERY_TEXT, Layout
from knowledge_recovery.text import Contamination, document_text, documents, ngrams, words

REPO = Path(__file__).resolve().parents[1]


def task_documents(config: dict, layout: Layout, n: int) -> list[tuple[str, list, Contamination]]:
    """Per prepared task file: its name, its first `limit` documents and (probes) their facts;
    read once for every text the grid checks."""
    out = []
    for task in config["tasks"]:
        folder = Path(layout.root) / "tasks" / task["name"] / "lm_eval"
        for path in sorted(folder.glob("*.jsonl")):
            docs = task_formats.read_rows(path)
            docs = docs[:task.get("limit") or len(docs)]
            out.append((path.stem, docs, Contamination(docs, n)))
    return out


def contamination(tasks: list[tuple[str, list, Contamination]], text: str, n: int) -> pd.DataFrame:
    """Per task file: its documents, those sharing a word n-gram with `text`, and (probes) the
    text's documents naming one of its facts."""
    seen = ngrams(words(text), n)
    paragraphs = [words(p) for p in documents(text)]  # once, for every task's facts
    rows = []
    for name, docs, facts in tasks:
        shared = [sorted(ngrams(words(document_text(d)), n) & seen) for d in docs]
        hits = [s for s in shared if s]
        # the probes' facts (subject and answer) in the text's documents
        naming = [f for f in map(facts.fact, paragraphs) if f] if facts.facts else []
        rows.append({"task": name, "documents": len(docs), "sharing": len(hits),
                     "share": len(hits) / len(docs) if docs else 0.0,
                     "text documents naming a fact": len(naming) if facts.facts else "",
                     "examples": "; ".join([" ".join(s[0]) for s in hits[:3]] + naming[:3])})
    table = pd.DataFrame(rows)
    table.attrs["words"] = len(words(text))
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--n", type=int, default=13)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    config = load_config(args.config, check_models=False)
    jobs = Jobs(config)
    tasks = task_documents(config, jobs.paths, args.n)
    shown = ""
    for text_id, spec in jobs.texts.items():  # the grid's text and every entry's own
        path = jobs.paths.text(text_id)
        table = contamination(tasks, Path(path).read_text(), args.n)
        what = "the grid's text" if text_id == RECOVERY_TEXT else "an entry's own text"
        named = ", ".join(spec.get("paths", [])) or spec.get("name") or spec.get("path")
        shown += (f"Documents of each task (its first `limit`) sharing a word {args.n}-gram "
                  f"with {what} ({spec['source']}: {named}"
                  f"{', decontaminated' if spec.get('decontaminate') else ''}; "
                  f"{table.attrs['words']:,} words, {path}); "
                  f"`bench/contamination.py --config {args.config}`\n\n"
                  + table.to_markdown(index=False, floatfmt=".3f") + "\n\n")
    shown = shown.rstrip("\n") + "\n"
    print(shown)
    out = Path(args.out or REPO / "docs" / "results" / "bench" /
               f"contamination-{config['experiment']}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(shown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
