"""lm-eval's own command line, with this suite's model registered ("knowledge-recovery",
`evaluation/lm.py`): re-score any finished cell with lm-eval alone.

    R=results/default; CELL=smollm2-135m/rtn-w4-g64
    python -m knowledge_recovery.cli.lm_eval run --model knowledge-recovery \
        --model_args pretrained=$R/models/$CELL/checkpoint,adapter=$R/adapters/$CELL/lora-r1/seed0/adapter \
        --include_path $R/tasks/knowledge/lm_eval --tasks knowledge_country_capital \
        --batch_size 16 --seed 0 --num_fewshot 0

lm-eval finds models by name in its registry and has no plugin hook for a package's models
(0.4.13), so this imports the model's module and then runs lm-eval's `cli_evaluate` unchanged:
the arguments, the evaluator and the output are lm-eval's. It can go once lm-eval loads models
from entry points; `pyproject.toml` would then declare "knowledge-recovery".
"""
from __future__ import annotations


def main() -> None:
    import knowledge_recovery.evaluation.lm  # noqa: F401 - registers "knowledge-recovery"
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
