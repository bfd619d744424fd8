import pytest
import torch

from knowledge_recovery import recovery
from knowledge_recovery.compression import compress, target_linears
from knowledge_recovery.text import python_reference

CFG = {"steps": 30, "batch_size": 4, "seq_len": 64, "lr": 0.01, "weight_decay": 0.0,
       "warmup_steps": 2, "max_grad_norm": 1.0, "eval_every": 10, "val_fraction": 0.1,
       "val_batches": 2}


@pytest.fixture(scope="module")
def text():
    return python_reference()[:60000]


@pytest.mark.parametrize("entry", [
    {"method": "prompt_tuning", "num_virtual_tokens": 4},
    {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
])
def test_training_lowers_validation_loss_and_keeps_compression(tiny, text, entry):
    base, tok = tiny()
    compress(base, {"method": "magnitude", "sparsity": 0.5})
    frozen = {n: l.weight.detach().clone() for n, l in target_linears(base).items()}
    model = recovery.attach(base, entry)
    n_trainable = recovery.trainable_parameters(model)
    if entry["method"] == "prompt_tuning":
        assert n_trainable == 4 * 64
    else:  # q and v: (64*4 + 4*64) each, in each of 2 layers
        assert n_trainable == 2 * 2 * (64 * 4 + 4 * 64)
    best, history = recovery.train(model, tok, text, CFG, seed=0, log=lambda *_: None)
    assert history["best_val_loss"] < history["initial_val_loss"] - 0.1
    assert set(best) and all(isinstance(v, torch.Tensor) for v in best.values())
    for name, layer in target_linears(base).items():
        if "lora" not in name:
            w = layer.base_layer.weight if hasattr(layer, "base_layer") else layer.weight
            assert torch.equal(w, frozen[name.replace("base_model.model.", "")
                                         .replace(".base_layer", "")]), name


def test_training_is_seeded(tiny, text):
    losses = []
    for _ in range(2):
        base, tok = tiny()
        model = recovery.attach(base, {"method": "prompt_tuning", "num_virtual_tokens": 2})
        _, history = recovery.train(model, tok, text, {**CFG, "steps": 3}, seed=1,
                                    log=lambda *_: None)
        losses.append(history["train_loss"])
    assert losses[0] == losses[1]


def test_too_little_text_is_a_clear_error(tiny):
    _, tok = tiny()
    with pytest.raises(ValueError, match="too few"):
        recovery.token_blocks(tok, "short", 64)
