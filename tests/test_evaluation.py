"""lm-eval's log-likelihoods must equal a hand computation, for every recovery method."""
import pytest
import torch

from knowledge_recovery import evaluation, recovery
from knowledge_recovery.tasks import make_probes, prepare_task

N_DOCS = 6


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    prepare_task({"name": "kp", "type": "probes", "relations": ["country_capital"],
                  "per_relation": N_DOCS, "num_choices": 4}, out, seed=0)
    return out


def hand_loglik(model, tok, context, continuation, prompt=None):
    ctx, cont = tok(context)["input_ids"], tok(continuation)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        if prompt is None:
            logits = model(input_ids=ids).logits[0]
        else:  # the soft prompt prepended by hand, in embedding space
            embeds = torch.cat([prompt[None], model.get_input_embeddings()(ids)], dim=1)
            logits = model(inputs_embeds=embeds).logits[0, len(prompt):]
    logp = torch.log_softmax(logits.float(), -1)
    return sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))


@pytest.mark.parametrize("method", ["none", "prompt_tuning", "lora"])
def test_lm_eval_accuracy_matches_hand_computation(tiny, task_dir, method):
    base, tok = tiny(seed=3)
    model, prompt = base, None
    if method == "prompt_tuning":
        model = recovery.attach(base, {"method": method, "num_virtual_tokens": 5})
        prompt = model.get_prompt_embedding_to_save("default").detach()
    elif method == "lora":
        model = recovery.attach(base, {"method": method, "r": 2, "alpha": 4, "dropout": 0.0,
                                       "target_modules": ["q_proj", "v_proj"]})
        for name, p in model.named_parameters():  # non-zero B so LoRA changes the outputs
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
    model.eval()
    manager = evaluation.task_manager([task_dir], need_builtin=False)
    results = evaluation.evaluate(model, tok, [{"name": "kp_country_capital"}], manager,
                                  batch_size=4, bootstrap_iters=0, seed=0, log_samples=True)
    correct = 0
    hand_model = model.get_base_model() if method == "prompt_tuning" else model
    docs = make_probes("country_capital", N_DOCS, 4, seed=0)
    for doc, harness in zip(docs, results["kp_country_capital"]["loglikelihoods"]):
        context = doc["question"] + "\nAnswer:"
        scores = [hand_loglik(hand_model, tok, context, " " + c, prompt) for c in doc["choices"]]
        assert harness == pytest.approx(scores, abs=1e-3)
        correct += int(max(range(4), key=scores.__getitem__) == doc["gold"])
    assert results["kp_country_capital"]["documents"] == N_DOCS
    assert results["kp_country_capital"]["acc"] == pytest.approx(correct / N_DOCS)


def test_perplexity_is_exp_of_mean_window_loss(tiny):
    from knowledge_recovery.text import python_reference

    model, tok = tiny(seed=1)
    text = python_reference()[:5000]
    ppl = evaluation.perplexity(model, tok, text, seq_len=64, max_windows=5, batch_size=2)
    ids = torch.tensor(tok(text)["input_ids"][: 5 * 64]).view(5, 64)
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in ids]
    assert ppl == pytest.approx(float(torch.tensor(losses).mean().exp()), rel=1e-4)
