"""lm-eval's log-likelihoods must equal a hand computation, for every recovery method."""
from unittest import mock

import pytest
import torch
from test_idp import hand_idp_choice, idp_entry, sharp_idp

from knowledge_recovery.evaluation import harness
from knowledge_recovery.evaluation.lm import ContextScorer, RecoveredLM, cache_rows
from knowledge_recovery.evaluation.tasks import make_probes, prepare_task
from knowledge_recovery.recovery import adapters
from knowledge_recovery.recovery.adapters import sample_vocab_embeddings

N_DOCS = 6


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    prepare_task({"name": "kp", "type": "probes", "relations": ["country_capital"],
                  "per_relation": N_DOCS, "num_choices": 4}, out, seed=0)
    return out


def hand_loglik(model, tok, context, continuation, prompt=None, prefix_ids=None):
    ctx, cont = tok(context)["input_ids"], tok(continuation)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        if prompt is not None:  # the soft prompt prepended by hand, in embedding space
            embeds = torch.cat([prompt[None], model.get_input_embeddings()(ids)], dim=1)
            logits = model(inputs_embeds=embeds).logits[0, len(prompt):]
        elif prefix_ids is not None:  # a real token prefix, whose keys/values a prefix copies
            logits = model(input_ids=torch.cat([prefix_ids[None], ids], 1)).logits[0, len(prefix_ids):]
        else:
            logits = model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    return sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))


@pytest.mark.parametrize("method", ["none", "prompt_tuning", "prefix_tuning", "lora", "dora", "ia3"])
def test_lm_eval_accuracy_matches_hand_computation(tiny, task_dir, method):
    base, tok = tiny(seed=3)
    model, prompt, prefix_ids = base, None, None
    if method == "prefix_tuning":  # vocab init: the prefix is the cache of real tokens
        model = adapters.attach(base, {"method": method, "num_virtual_tokens": 5}, seed=2)
        prefix_ids, _ = sample_vocab_embeddings(base, 5, seed=2)
    if method == "prompt_tuning":
        model = adapters.attach(base, {"method": method, "num_virtual_tokens": 5})
        prompt = model.get_prompt_embedding_to_save("default").detach()
    elif method in ("lora", "dora"):
        model = adapters.attach(base, {"method": method, "r": 2, "alpha": 4, "dropout": 0.0,
                                       "target_modules": ["q_proj", "v_proj"]})
        for name, p in model.named_parameters():  # non-zero B so LoRA changes the outputs
            if "lora_B" in name or "magnitude" in name:
                torch.nn.init.normal_(p, mean=float("magnitude" in name), std=0.5)
    elif method == "ia3":
        model = adapters.attach(base, {"method": method, "target_modules": ["k_proj", "v_proj", "down_proj"],
                                       "feedforward_modules": ["down_proj"]})
        for p in model.parameters():  # scales away from 1 so (IA)3 changes the outputs
            if p.requires_grad:
                torch.nn.init.normal_(p, mean=1.0, std=0.5)
    model.eval()
    manager = harness.task_manager([task_dir], need_builtin=False)
    results = harness.evaluate(model, tok, [{"name": "kp_country_capital"}], manager,
                                  batch_size=4, bootstrap_iters=0, seed=0, log_samples=True)
    correct = 0
    hand_model = model.get_base_model() if method.endswith("_tuning") else model
    docs = make_probes("country_capital", N_DOCS, 4, seed=0)
    for doc, logged_scores in zip(docs, results["kp_country_capital"]["loglikelihoods"]):
        context = doc["question"] + "\nAnswer:"
        scores = [hand_loglik(hand_model, tok, context, " " + c, prompt, prefix_ids)
                  for c in doc["choices"]]
        assert logged_scores == pytest.approx(scores, abs=1e-3)
        if method != "none":  # the adapter is in play: without it the scores differ
            with model.disable_adapter():
                plain = [hand_loglik(model.get_base_model(), tok, context, " " + c) for c in doc["choices"]]
            assert harness != pytest.approx(plain, abs=1e-3)
        correct += int(max(range(4), key=scores.__getitem__) == doc["gold"])
    assert results["kp_country_capital"]["documents"] == N_DOCS
    assert results["kp_country_capital"]["acc"] == pytest.approx(correct / N_DOCS)


def test_idp_batches_give_what_single_requests_give(tiny):
    """lm-eval right-pads a batch and passes no mask: without the padding-aware LM, the padding's
    attention sways IDP's choice (the plain harness disagrees with one-at-a-time requests)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, _, tok = sharp_idp(tiny)
    texts = ["Paris", "The capital of France is a city on the Seine with many bridges.", "Q:",
             "Water boils at one hundred degrees Celsius at sea level.", "ab", "Hello there"]
    requests = [Instance("loglikelihood", {}, (t, " x"), i) for i, t in enumerate(texts)]
    single = [HFLM(pretrained=model, tokenizer=tok, batch_size=1).loglikelihood([r])[0][0]
              for r in requests]
    lm = RecoveredLM(model, tok, recovery=idp_entry(select_on="sequence"), batch_size=8)
    assert [r[0] for r in lm.loglikelihood(requests)] == pytest.approx(single, abs=1e-4)
    plain = HFLM(pretrained=model, tokenizer=tok, batch_size=8).loglikelihood(requests)
    assert [r[0] for r in plain] != pytest.approx(single, abs=1e-4)


def test_lm_eval_matches_hand_computation_for_idp(tiny, task_dir):
    """Selection on each whole (context, answer) sequence (`select_on: sequence`)."""
    model, base, tok = sharp_idp(tiny)
    manager = harness.task_manager([task_dir], need_builtin=False)
    results = harness.evaluate_recovered(model, tok, [{"name": "kp_country_capital"}], manager,
                                            {"batch_size": 4, "bootstrap_iters": 0}, seed=0,
                                            entry=idp_entry(selection="attention", select_on="sequence"))
    model.selection = "attention"
    # batches of 4 inputs of different lengths: the padding must not sway the choice
    logged = harness.evaluate(model, tok, [{"name": "kp_country_capital"}], manager,
                                 batch_size=4, bootstrap_iters=0, seed=0, log_samples=True,
                                 recovery=idp_entry(select_on="sequence"))
    chosen, correct = [], 0
    for doc, logged_scores in zip(make_probes("country_capital", N_DOCS, 4, seed=0),
                            logged["kp_country_capital"]["loglikelihoods"]):
        context = doc["question"] + "\nAnswer:"
        scores = []
        for choice in doc["choices"]:
            ids = tok(context)["input_ids"] + tok(" " + choice)["input_ids"]
            j = hand_idp_choice(base, model.prompts.detach(), torch.tensor(ids[:-1]), [0, 2])
            chosen.append(j)
            scores.append(hand_loglik(base, tok, context, " " + choice, model.prompts[j].detach()))
        assert logged_scores == pytest.approx(scores, abs=1e-3)
        correct += int(max(range(4), key=scores.__getitem__) == doc["gold"])
    assert len(set(chosen)) > 1, "every input chose the same prompt: the test shows nothing"
    assert results["kp_country_capital"]["acc"] == pytest.approx(correct / N_DOCS)
    # the choices counted: one per (context, answer) sequence
    counts = [chosen.count(j) for j in range(model.pool_size)]
    assert results["kp_country_capital"]["selected_per_prompt"] == counts
    assert results["kp_country_capital"]["selected_top_share"] == max(counts) / len(chosen)


def test_idp_records_the_prompt_of_each_question(tiny, task_dir):
    """Selection on the context (the default): each question's prompt, chosen from its context
    as a plain forward chooses it, is recorded per document, with the selection diagnostics."""
    model, base, tok = sharp_idp(tiny)
    manager = harness.task_manager([task_dir], need_builtin=False)
    entry = idp_entry(selection="attention", select_on="context")
    results = harness.evaluate_recovered(model, tok, [{"name": "kp_country_capital"}], manager,
                                            {"batch_size": 4, "bootstrap_iters": 0}, 0, entry)
    task = results["kp_country_capital"]
    docs = make_probes("country_capital", N_DOCS, 4, seed=0)
    hand = [hand_idp_choice(base, model.prompts.detach(),
                            torch.tensor(tok(d["question"] + "\nAnswer:")["input_ids"]), [0, 2])
            for d in docs]
    assert task["prompt"] == hand
    assert len(set(hand)) > 1, "every question chose the same prompt: the test shows nothing"
    counts = [hand.count(j) for j in range(model.pool_size)]
    assert task["selected_per_prompt"] == counts
    assert 0 < task["selection_entropy"] <= 1.6
    assert task["selection_mi"] == 0.0  # one task, no relations: nothing to tell
    _, samples = harness.split_samples(results)
    assert samples["kp_country_capital"]["prompt"] == hand


def test_idp_oracle_is_best_prompt_per_document(tiny, task_dir):
    base, tok = tiny(seed=3)
    entry = {"method": "idp", "pool_size": 2, "num_virtual_tokens": 3, "score_layers": [0],
             "scheme": "joint", "balance_weight": 0.0, "router_blocks": 4}
    model = adapters.attach(base, entry)
    with torch.no_grad():
        model.prompts.normal_(std=3.0, generator=torch.Generator().manual_seed(1))
    model.eval()
    manager = harness.task_manager([task_dir], need_builtin=False)
    task = [{"name": "kp_country_capital"}]
    cfg = {"batch_size": 4, "bootstrap_iters": 0}
    oracle = harness.evaluate_recovered(model, tok, task, manager, cfg, 0,
                                           {**entry, "selection": "oracle"})
    per_prompt = []
    for j in range(2):
        model.selection = j
        per_prompt.append(harness.evaluate(model, tok, task, manager, 4, 0, 0, log_samples=True,
                                           recovery=entry)["kp_country_capital"]["correct"])
    best = [max(a, b) for a, b in zip(*per_prompt)]
    assert oracle["kp_country_capital"]["acc"] == pytest.approx(sum(best) / N_DOCS)
    assert oracle["kp_country_capital"]["acc"] >= max(sum(c) for c in per_prompt) / N_DOCS


def test_perplexity_is_exp_of_mean_window_loss(tiny):
    from knowledge_recovery.text import python_reference

    model, tok = tiny(seed=1)
    text = python_reference()[:5000]
    ppl = harness.perplexity(model, tok, text, seq_len=64, max_windows=5, batch_size=2)
    ids = torch.tensor(tok(text)["input_ids"][: 5 * 64]).view(5, 64)
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in ids]
    assert ppl == pytest.approx(float(torch.tensor(losses).mean().exp()), rel=1e-4)


def test_a_killed_evaluation_keeps_its_finished_tasks(tiny, tmp_path, monkeypatch):
    """Tasks are evaluated one by one; after a kill the finished ones are kept (under the key of
    what they were computed from) and the result equals an uninterrupted run's."""
    prepare_task({"name": "kp", "type": "probes", "relations": ["country_capital", "element_symbol"],
                  "per_relation": 4, "num_choices": 4}, tmp_path / "tasks", seed=0)
    manager = harness.task_manager([tmp_path / "tasks"], need_builtin=False)
    tasks = [{"name": "kp_country_capital"}, {"name": "kp_element_symbol"}]
    model, tok = tiny(seed=3)
    args = (model, tok, tasks, manager, {"batch_size": 4, "bootstrap_iters": 10}, 0,
            {"method": "none"})
    said = []
    whole = harness.evaluate_cell(*args, log=said.append)
    # a log file's progress: a line per task, with its accuracy
    assert [line.split(":")[0] for line in said] == ["task 1/2 kp_country_capital",
                                                     "task 2/2 kp_element_symbol"]
    assert f"kp_element_symbol acc {whole['kp_element_symbol']['acc']:.3f}" in said[1]
    real, calls = harness.evaluate_recovered, []

    def counted(*a, **kw):
        calls.append(a[2][0]["name"])
        if calls == ["kp_country_capital", "kp_element_symbol"] and kill:
            raise KeyboardInterrupt  # the job is killed during its second task
        return real(*a, **kw)

    monkeypatch.setattr(harness, "evaluate_recovered", counted)
    kill = True
    with pytest.raises(KeyboardInterrupt):
        harness.evaluate_cell(*args, state_dir=tmp_path / "state", key="inputs-1")
    kill, calls[:] = False, []
    resumed = harness.evaluate_cell(*args, state_dir=tmp_path / "state", key="inputs-1")
    assert calls == ["kp_element_symbol"] and resumed == whole
    calls.clear()  # an input rebuilt since: its fingerprint differs, nothing is kept
    harness.evaluate_cell(*args, state_dir=tmp_path / "state", key="inputs-2")
    assert calls == ["kp_country_capital", "kp_element_symbol"]


def attached(tiny, method):
    """A tiny model with `method` attached, its adapter moved off its no-op initialisation."""
    if method == "idp":
        model, _, tok = sharp_idp(tiny)
        return model, tok
    base, tok = tiny(seed=3)
    if method == "none":
        return base, tok
    entry = {"method": method, "num_virtual_tokens": 5, "r": 2, "alpha": 4, "dropout": 0.0,
             "target_modules": ["q_proj", "v_proj"]}
    if method == "ia3":
        entry.update(target_modules=["k_proj", "v_proj", "down_proj"],
                     feedforward_modules=["down_proj"])
    model = adapters.attach(base, {k: v for k, v in entry.items()
                                   if k in adapters.recovery_method(method).setting_names | {"method"}},
                            seed=2)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if p.requires_grad and method in ("lora", "dora", "ia3"):
            torch.nn.init.normal_(p, mean=float("magnitude" in name or method == "ia3"), std=0.5)
    return model.eval(), tok


@pytest.mark.parametrize("method", ["none", "prompt_tuning", "prefix_tuning", "lora", "dora",
                                    "ia3", "idp"])
def test_shared_context_scoring_equals_lm_eval(tiny, method):
    """Each question's context scored once, its answers on the cached keys and values: the same
    log-likelihoods and greedy flags as lm-eval's HFLM, request by request, for every recovery
    method (IDP: its prompt chosen from the context, as HFLM sees it with that prompt fixed)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = attached(tiny, method)
    requests = []
    docs = [d for rel in ("country_capital", "element_symbol", "country_subregion")
            for d in make_probes(rel, 5, 4, seed=0)]
    contexts = [d["question"] + "\nAnswer:" for d in docs] + ["Paris", "Q:", "ab", "zzz", "Hi"]
    for n, context in enumerate(contexts):  # of equal and of different lengths
        doc = docs[n % len(docs)]
        for choice in doc["choices"] + ["", doc["choices"][0] * 3]:
            cont = " " + choice if choice else "x"  # answers of one token and of several
            requests.append(Instance("loglikelihood", {}, (context, cont), len(requests)))
    recovery = idp_entry(select_on="context") if method == "idp" else {"method": method}
    lm = RecoveredLM(model, tok, recovery=recovery, batch_size=5)
    # one pass with the answers packed after their context, except for the methods that put a
    # prompt before the input (their answers run on the cached prompt and context)
    assert (lm.scorer.packed is not None) == (method in ("none", "lora", "dora", "ia3"))
    shared = lm.loglikelihood(requests)
    if method == "idp":  # the reference: HFLM with each question's chosen prompt fixed
        assert int(model.selected.sum()) == len(contexts)  # one choice per question
        chosen = {}
        for r in requests:
            ids = torch.tensor([tok(r.args[0])["input_ids"]])
            chosen[r.args[0]] = int(model.select(ids)[0])
        assert len(set(chosen.values())) > 1, "every question chose the same prompt"
        plain = []
        for r in requests:
            model.selection = chosen[r.args[0]]
            plain += HFLM(pretrained=model, tokenizer=tok, batch_size=1).loglikelihood([r])
        model.selection = "attention"
    else:
        plain = HFLM(pretrained=model, tokenizer=tok, batch_size=5).loglikelihood(requests)
    assert [s[0] for s in shared] == pytest.approx([p[0] for p in plain], abs=1e-4)
    assert [s[1] for s in shared] == [p[1] for p in plain]


@pytest.mark.parametrize("architecture,attention", [("llama", "eager"), ("gemma3", "sdpa")])
def test_packed_scoring_equals_lm_eval(tiny, architecture, attention):
    """Answers packed after their context in one pass under a 4D block mask give HFLM's
    log-likelihoods and greedy flags, with eager attention as with SDPA. A row longer than the
    model's sliding window (Gemma-3's is 16 here) is scored the plain way: the mask would not
    cut it, and in a right-padded cache the window cuts a short row's own tokens."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny(architecture=architecture, num_layers=2)
    model.config._attn_implementation = attention
    lm = RecoveredLM(model, tok, batch_size=2)
    scorer = lm.scorer
    calls = {"packed": 0, "extend": 0}

    def counted(name, call):
        def run(*args):
            calls[name] += 1
            return call(*args)
        return run

    scorer.packed, scorer.extend = counted("packed", scorer.packed), counted("extend", scorer.extend)
    requests = []
    for context, answers in [("ab", ["x", "y", " z"]), ("Q: a?", [" b", " cd", "e"]),
                             ("The capital of France is", [" Paris", " Rome", " a long answer"]),
                             ("Hi", [" there, and more", " you"])]:
        for answer in answers:
            requests.append(Instance("loglikelihood", {}, (context, answer), len(requests)))
    calls["plain"] = 0
    whole = HFLM._loglikelihood_tokens

    def counted_whole(self, reqs, *args):
        calls["plain"] += 1
        return whole(self, reqs, *args)

    with mock.patch.object(HFLM, "_loglikelihood_tokens", counted_whole):
        shared = lm.loglikelihood(requests)
    plain = HFLM(pretrained=model, tokenizer=tok, batch_size=2).loglikelihood(requests)
    assert [s[0] for s in shared] == pytest.approx([p[0] for p in plain], abs=1e-4)
    assert [s[1] for s in shared] == [p[1] for p in plain]
    assert calls["packed"] > 0 and calls["extend"] == 0
    assert (calls["plain"] > 0) == (architecture == "gemma3")


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_cache_rows_leave_the_context_cache_as_it_was(tiny, architecture):
    """Answers run on rows of a context cache: the cache the next chunk starts from is unchanged
    (Gemma-3: sliding-window layers too)."""
    model, _ = tiny(architecture=architecture, num_layers=2)
    scorer = ContextScorer.for_model(model)
    ids = torch.randint(5, 200, (3, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        _, cache = scorer.prefill(ids, mask, 1)
        before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
        index = torch.tensor([0, 0, 2, 1])
        answers = torch.randint(5, 200, (4, 2))
        positions = 7 + torch.arange(2).expand(4, -1)
        first = scorer.extend(answers, cache_rows(cache, index),
                              torch.ones(4, 9, dtype=torch.long), positions)
        for layer, (k, v) in zip(cache.layers, before):
            assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
        again = scorer.extend(answers, cache_rows(cache, index, last=True),
                              torch.ones(4, 9, dtype=torch.long), positions)
    assert torch.equal(first, again)


@pytest.mark.parametrize("method", ["none", "prompt_tuning", "prefix_tuning", "lora"])
def test_generation_runs_the_recovered_model(tiny, method):
    """lm-eval's generate_until (batched, left-padded) gives what greedy decoding with the
    model's own forward gives, one prompt at a time: the adapter, prefix included, is in
    generation (transformers 5's `cache` keyword had made peft's prefix vanish there)."""
    from lm_eval.api.instance import Instance

    model, tok = attached(tiny, method)
    contexts = ["The capital of France is", "Q: What is two plus two?\nA:", "Hello"]
    settings = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}
    requests = [Instance("generate_until", {}, (c, dict(settings)), i)
                for i, c in enumerate(contexts)]
    lm = RecoveredLM(model, tok, batch_size=2)
    generated = lm.generate_until(requests)
    for context, text in zip(contexts, generated):
        ids = torch.tensor([tok(context)["input_ids"]])
        start = ids.shape[1]
        with torch.no_grad():
            for _ in range(settings["max_gen_toks"]):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
        expected = tok.decode(ids[0, start:]).split("\n")[0]
        assert text == expected, (context, text, expected)


def test_tracked_mean_accuracy_carries_its_interval():
    """mean_acc over the tasks with an accuracy, its 95% interval from their standard errors;
    no interval where a task has no standard error."""
    results = {"a": {"acc": 0.5, "acc_stderr": 0.03, "documents": 100},
               "b": {"acc": 0.7, "acc_stderr": 0.04, "documents": 100},
               "ppl": {"word_perplexity": 30.0}}
    m = harness.tracked_metrics(results)
    assert m["mean_acc"] == pytest.approx(0.6)
    half = 1.959964 * (0.03 ** 2 + 0.04 ** 2) ** 0.5 / 2
    assert (m["mean_acc_low"], m["mean_acc_high"]) == pytest.approx((0.6 - half, 0.6 + half))
    assert m["ppl.word_perplexity"] == 30.0
    del results["b"]["acc_stderr"]
    assert "mean_acc_low" not in harness.tracked_metrics(results)
