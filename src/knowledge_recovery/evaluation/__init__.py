"""Evaluation: tasks (lm-eval YAML, knowledge probes, local benchmark files) and scoring a model
on them with lm-eval (`harness`)."""
