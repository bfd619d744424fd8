import os
from pathlib import Path

import pytest

from knowledge_recovery.evaluation.harness import set_offline

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO.parent / "shared" / "data" / "benchmarks"

set_offline()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    """A factory of fresh tiny random Llama models with the byte tokenizer."""
    from knowledge_recovery.models.checkpoints import tiny_random

    spec = {"architecture": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4,
            "intermediate_size": 128}

    def make(seed=0, **over):
        model, tok = tiny_random({**spec, **over}, seed)
        return model.eval(), tok

    return make


@pytest.fixture()
def shared_benchmarks():
    if not SHARED_BENCHMARKS.is_dir():
        pytest.skip("../shared/data/benchmarks is not present")
    return SHARED_BENCHMARKS
