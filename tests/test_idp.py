"""IDP's selector: the pool's layout when scored, against hand computations; identical prompts
tie; the chosen prompt runs as prompt tuning would run it; curated pools; selection diagnostics."""
import pytest
import torch

from knowledge_recovery.analysis.stats import selection_diagnostics
from knowledge_recovery.recovery import adapters, training
from knowledge_recovery.recovery.dynamic_prompts import train_curated
from knowledge_recovery.text import python_reference

LAYOUTS = ["independent", "concatenated"]


def idp_entry(**over):
    return {"method": "idp", "pool_size": 3, "num_virtual_tokens": 4, "score_layers": [0, 2],
            "scheme": "routed", "balance_weight": 0.0, "layout": "independent",
            "router_blocks": 8, **over}


def sharp_idp(tiny, **over):
    """A tiny IDP model whose inputs pick different prompts: distinct prompts, sharp attention."""
    base, tok = tiny(seed=3, num_layers=3)
    model = adapters.attach(base, idp_entry(**over))
    with torch.no_grad():
        model.prompts.normal_(std=3.0, generator=torch.Generator().manual_seed(0))
        for layer in base.model.layers:
            layer.self_attn.q_proj.weight.mul_(30)
    model.selection = "attention"  # these tests are about the attention score; the router's below
    return model.eval(), base, tok


def hand_idp_scores(base, pool, ids, layers, layout):
    """(m,) attention mass of one unpadded input on each prompt, from one plain forward with
    every prompt and the input in one sequence (no cache, no hooks). independent: a 4D mask
    keeps each prompt to itself, each at positions 0..n-1, the input from n on, seeing all;
    concatenated: the prompts end to end, then the input."""
    m, n, _ = pool.shape
    length = len(ids)
    embeds = torch.cat([pool.reshape(1, m * n, -1), base.get_input_embeddings()(ids[None])], 1)
    kwargs = {}
    if layout == "independent":
        total = m * n + length
        block = torch.arange(total) // n
        block[m * n:] = m  # the input
        positions = torch.cat([torch.arange(n).repeat(m), n + torch.arange(length)])
        order = torch.arange(total)
        q, k = block[:, None], block[None, :]
        allowed = ((q == k) & (order[None, :] <= order[:, None])) | ((q == m) & (k < m))
        mask = torch.zeros(total, total).masked_fill(~allowed, torch.finfo(torch.float32).min)
        kwargs = {"attention_mask": mask[None, None], "position_ids": positions[None]}
    base.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            att = base(inputs_embeds=embeds, output_attentions=True, **kwargs).attentions
    finally:
        base.config._attn_implementation = "sdpa"
    return torch.stack([att[l][0, :, m * n:, : m * n].reshape(-1, length, m, n).sum(-1)
                        .mean((0, 1)) for l in layers]).mean(0)


def hand_idp_choice(base, pool, ids, layers, layout="independent"):
    return int(hand_idp_scores(base, pool, ids, layers, layout).argmax())


def _batch(tok, texts):
    """Right-padded ids and mask, as lm-eval batches them."""
    rows = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
    return rows, ids, mask


TEXTS = ["Paris", "The capital of France is a city on the Seine with many bridges.", "Q:",
         "Water boils at one hundred degrees Celsius at sea level.", "Hello there"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scores_equal_a_plain_forward(tiny, layout):
    """The cached, hooked, early-stopped scoring equals a plain forward of the same layout, for
    every row of a right-padded batch."""
    model, base, tok = sharp_idp(tiny, layout=layout)
    rows, ids, mask = _batch(tok, TEXTS)
    with torch.no_grad():
        scores = model.scores(ids, mask)
    for r, row in enumerate(rows):
        hand = hand_idp_scores(base, model.prompts.detach(), torch.tensor(row), [0, 2], layout)
        assert scores[r] == pytest.approx(hand.tolist(), abs=1e-5)
    assert len(set(scores.argmax(-1).tolist())) > 1, "one prompt for all: the test shows nothing"


def test_identical_prompts_tie_only_when_scored_independently(tiny):
    """m copies of one prompt: under the independent layout each input's m scores are equal
    (to 1e-6), at every layer; concatenated, the slots' positions alone tell them apart."""
    for layout in LAYOUTS:
        model, base, tok = sharp_idp(tiny, layout=layout)
        with torch.no_grad():
            model.prompts.copy_(model.prompts[1:2].expand_as(model.prompts))
            _, ids, mask = _batch(tok, TEXTS)
            scores = model.layer_scores(ids, mask, layers=range(3))  # (layers, batch, m)
        spread = (scores.max(-1).values - scores.min(-1).values).max().item()
        if layout == "independent":
            assert spread < 1e-6, spread
        else:
            assert spread > 1e-3, spread


def test_ties_go_by_the_input_hash_when_selection_is_random(tiny):
    """Even shares with identical prompts come from the deterministic hash (selection random)."""
    model, _, tok = sharp_idp(tiny)
    model.selection = "random"
    _, ids, mask = _batch(tok, [f"input number {i} of many" for i in range(60)])
    chosen = model.select(ids, mask)
    assert min(torch.bincount(chosen, minlength=3).tolist()) >= 10
    assert torch.equal(chosen, model.select(ids, mask))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_scores_the_pool_as_inference_does(tiny, layout):
    """Routed training computes the pool's keys afresh, with gradients; inference caches them:
    the same scores, and the balance term's gradient reaches every prompt."""
    model, _, tok = sharp_idp(tiny, layout=layout)
    _, ids, mask = _batch(tok, TEXTS)
    with torch.no_grad():
        cached = model.scores(ids, mask)
    model.train()
    fresh = model.scores(ids, mask)
    assert fresh.requires_grad
    assert torch.allclose(fresh.detach(), cached, atol=1e-6)
    fresh.max(-1).values.sum().backward()
    assert (model.prompts.grad.abs().sum((1, 2)) > 0).all()


def test_the_chosen_prompt_runs_as_prompt_tuning_runs_it(tiny):
    """The log-likelihoods of an input under IDP equal peft's prompt tuning with the prompt
    IDP chose for it (1e-4): the prompt is scored and run at the same positions."""
    import peft

    model, base, tok = sharp_idp(tiny)
    rows, ids, mask = _batch(tok, TEXTS)
    with torch.no_grad():
        chosen = model.select(ids, mask)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    assert len(set(chosen.tolist())) > 1
    for r, row in enumerate(rows):
        fresh, _ = tiny(seed=3, num_layers=3)
        with torch.no_grad():
            for a, b in zip(fresh.parameters(), base.parameters()):
                a.copy_(b)
        tuned = peft.get_peft_model(fresh, peft.PromptTuningConfig(
            task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=4)).eval()
        with torch.no_grad():
            tuned.prompt_encoder["default"].embedding.weight.copy_(model.prompts[chosen[r]])
            ref = torch.log_softmax(tuned(input_ids=torch.tensor([row])).logits[0, 4:].float(), -1)
        target = torch.tensor(row[1:])
        mine = logp[r, :len(row) - 1].gather(1, target[:, None])
        theirs = ref[:-1].gather(1, target[:, None])
        assert torch.allclose(mine, theirs, atol=1e-4)


def test_joint_training_in_the_independent_layout_is_prompt_tuning_for_one_prompt(tiny):
    """A pool of one, trained jointly: every input sees that prompt at positions 0..n-1, as
    when it runs alone."""
    model, _, tok = sharp_idp(tiny, pool_size=1, scheme="joint")
    _, ids, mask = _batch(tok, TEXTS)
    model.train()
    joint = model(input_ids=ids, attention_mask=mask, labels=ids)
    model.eval()
    alone = model(input_ids=ids, attention_mask=mask, labels=ids)
    real = mask.bool()  # padding's logits are nobody's
    assert torch.allclose(joint.logits[real], alone.logits[real], atol=1e-4)
    assert joint.loss.item() == pytest.approx(alone.loss.item(), abs=1e-5)


CFG = {"steps": 6, "batch_size": 2, "seq_len": 32, "lr": 0.05, "weight_decay": 0.01,
       "warmup_steps": 1, "max_grad_norm": 1.0, "eval_every": 3, "val_fraction": 0.1,
       "val_batches": 1}


def test_curated_pool_trains_each_prompt_alone_on_its_text(tiny, tmp_path):
    """Prompt j learns from texts[j] only: a prompt whose training is skipped (its text's
    training kept from an earlier run) is exactly what was kept; each prompt moved, and a
    resumed run gives the same pool."""
    base, tok = tiny()
    entry = idp_entry(scheme="curated", pool_size=2, score_layers=[0])
    reference = python_reference()
    texts = [reference[:20000], "def f(x):\n    return x * 2\n" * 800]
    model = adapters.attach(base, entry)
    start = model.prompts.detach().clone()
    state, history = adapters.train(model, entry, tok, texts, CFG, seed=0, log=lambda *_: None,
                                    resume_path=tmp_path / "state")
    pool = state["prompts"]
    assert all(not torch.equal(pool[j], start[j]) for j in range(2))
    assert len(history["prompts"]) == 2 and len(history["train_loss"]) == 2 * CFG["steps"]
    # prompt 1 kept from the first run; prompt 0 trained again, from the same seed
    (tmp_path / "state" / "prompt0.pt").unlink()
    again = adapters.attach(tiny()[0], entry)
    state2, _ = train_curated(again, tok, texts, CFG, seed=0, log=lambda *_: None,
                              resume_path=tmp_path / "state")
    assert torch.equal(state2["prompts"], pool)
    # each prompt learnt its own text: lower loss on it than the other prompt gets
    training.load_trainable_state(model, state)
    model.eval()
    losses = []
    for j in range(2):
        model.selection = j
        blocks = training.token_blocks(tok, texts[j][-4000:], 32)[:4]
        losses.append([training.mean_loss(model, blocks, 4, 1) for model.selection in (0, 1)])
    assert losses[0][0] < losses[0][1] and losses[1][1] < losses[1][0], losses


def test_curated_pool_needs_one_text_per_prompt(tiny):
    base, tok = tiny()
    entry = idp_entry(scheme="curated", pool_size=2, score_layers=[0])
    with pytest.raises(ValueError, match="needs as many texts"):
        adapters.train(adapters.attach(base, entry), entry, tok, ["a" * 9000], CFG, seed=0)


def test_selection_diagnostics():
    even = selection_diagnostics([0, 1, 2, 3] * 5, ["a"] * 20, 4)
    assert even["selection_entropy"] == pytest.approx(2.0) and even["selection_mi"] == 0.0
    assert even["selected_share"] == [0.25] * 4
    one = selection_diagnostics([2] * 10, ["a"] * 5 + ["b"] * 5, 4)
    assert one["selection_entropy"] == 0.0 and one["selected_top_share"] == 1.0
    assert one["selection_mi"] == 0.0
    routed = selection_diagnostics([0] * 5 + [1] * 5, ["a"] * 5 + ["b"] * 5, 4)
    assert routed["selection_mi"] == pytest.approx(1.0)  # the group tells the prompt: 1 bit
    half = selection_diagnostics([0, 0, 1, 1], ["a", "b", "a", "b"], 2)
    assert half["selection_mi"] == pytest.approx(0.0)


def test_identical_prompts_share_the_inputs_evenly(tiny):
    """Ties at the top go by the input's hash: m copies of one prompt each get about 1/m of the
    inputs under attention selection (not all the first)."""
    model, _, tok = sharp_idp(tiny)
    with torch.no_grad():
        model.prompts.copy_(model.prompts[0:1].expand_as(model.prompts))
    _, ids, mask = _batch(tok, [f"input number {i} of many" for i in range(60)])
    counts = torch.bincount(model.select(ids, mask), minlength=3).tolist()
    assert min(counts) >= 10, counts


def _numbers_text(count: int, seed: int) -> str:
    """A text domain unlike Python documentation: arithmetic sentences."""
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randint(100, 999, (count, 2), generator=gen).tolist()
    return "".join(f"{a} plus {b} makes {a + b}, and {a} times 2 is {2 * a}. " for a, b in pairs)


def test_router_sends_each_domain_to_the_prompt_trained_on_it(tiny, tmp_path):
    """A curated pool's router, fitted on its texts, sends held-out inputs of each text (short
    ones too) to the prompt of that text; it is saved with the pool and loads fitted. The
    control: the same pool selecting by attention (its routing accuracy is printed, not held)."""
    from knowledge_recovery.recovery.dynamic_prompts import fit_router

    base, tok = tiny(seed=3)
    reference = python_reference()
    texts = [reference[:30000], _numbers_text(900, seed=0)]
    entry = idp_entry(scheme="curated", pool_size=2, score_layers=[0], router_blocks=16)
    model = adapters.attach(base, entry)
    figures = fit_router(model, tok, texts, CFG, seed=0, log=lambda *_: None)
    assert figures["router_fit_accuracy"] >= 0.95, figures
    held_out = [reference[-40000:], _numbers_text(200, seed=1)]
    inputs, domains = [], []
    for d, text in enumerate(held_out):
        for i in range(20):
            inputs.append(text[i * 150: i * 150 + (30 if i % 2 else 150)])  # short and long
            domains.append(d)
    _, ids, mask = _batch(tok, inputs)
    model.eval()
    model.selection = "router"
    chosen = model.select(ids, mask)
    accuracy = float((chosen == torch.tensor(domains)).float().mean())
    assert accuracy >= 0.9, (accuracy, chosen.tolist())
    model.selection = "attention"
    print("routing accuracy: router", accuracy, "attention",
          float((model.select(ids, mask) == torch.tensor(domains)).float().mean()))
    adapters.save(model, entry, tmp_path / "pool")
    loaded = adapters.load(tiny(seed=3)[0], entry, tmp_path / "pool")
    assert loaded.router_fitted
    loaded.selection = "router"
    assert torch.equal(loaded.select(ids, mask), chosen)


def test_router_of_identical_prompts_ties(tiny):
    """m copies of one prompt: every block's losses tie, the fitted router stays zero, every
    input's scores tie and the inputs are shared by hash (the identical-prompt control)."""
    from knowledge_recovery.recovery.dynamic_prompts import fit_router

    base, tok = tiny(seed=3)
    model = adapters.attach(base, idp_entry(scheme="joint", score_layers=[0, 1], router_blocks=8))
    with torch.no_grad():
        model.prompts.copy_(model.prompts[0:1].expand_as(model.prompts))
    figures = fit_router(model, tok, [python_reference()[:20000]], CFG, seed=0, log=lambda *_: None)
    assert figures["router_decided"] == 0
    _, ids, mask = _batch(tok, [f"input number {i} of many" for i in range(60)])
    model.eval()
    scores = model.router_scores(ids, mask)
    assert (scores.max(-1).values - scores.min(-1).values).max() <= 1e-6
    counts = torch.bincount(model.select(ids, mask), minlength=3).tolist()
    assert min(counts) >= 10, counts


def test_router_selection_needs_a_fitted_router(tiny):
    model = adapters.attach(tiny()[0], idp_entry(score_layers=[0])).eval()
    model.selection = "router"
    with pytest.raises(ValueError, match="no fitted router"):
        model.select(torch.ones(1, 4, dtype=torch.long))
