import json
from pathlib import Path

import pytest
import torch

from knowledge_recovery import artifacts
from knowledge_recovery.compression.apply import compress, target_linears
from knowledge_recovery.recovery import adapters, training
from knowledge_recovery.text import python_reference

CFG = {"steps": 30, "batch_size": 4, "seq_len": 64, "lr": 0.01, "weight_decay": 0.0,
       "warmup_steps": 2, "max_grad_norm": 1.0, "eval_every": 10, "val_fraction": 0.1,
       "val_batches": 2}


@pytest.fixture(scope="module")
def text():
    return python_reference()[:60000]


IDP = {"method": "idp", "pool_size": 3, "num_virtual_tokens": 4, "score_layers": [0],
       "scheme": "joint", "balance_weight": 0.1, "router_blocks": 4}
# entry -> trainable parameters on the tiny model (hidden 64, 2 layers, 4 heads of 16)
ENTRIES = [
    ({"method": "prompt_tuning", "num_virtual_tokens": 4}, 4 * 64),
    ({"method": "prefix_tuning", "num_virtual_tokens": 4}, 4 * 2 * 2 * 64),  # n x layers x (k, v)
    ({"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
     2 * 2 * (64 * 4 + 4 * 64)),  # q and v in each of 2 layers
    ({"method": "dora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
     2 * 2 * (64 * 4 + 4 * 64 + 64)),  # LoRA's, plus one magnitude per output of q and v
    ({"method": "ia3", "target_modules": ["k_proj", "v_proj", "down_proj"],
      "feedforward_modules": ["down_proj"], "training": {"lr": 0.1}},  # 512 scales: slow at 0.01
     2 * (64 + 64 + 128)),  # outputs of k and v, the input of down, in each of 2 layers
    (IDP, 3 * 4 * 64 + 64 * 3 + 3),  # the pool and its router (hidden -> m)
    ({**IDP, "scheme": "routed"}, 3 * 4 * 64 + 64 * 3 + 3),
]


@pytest.mark.parametrize("entry,params", ENTRIES, ids=lambda e: e.get("scheme", e.get("method"))
                         if isinstance(e, dict) else str(e))
def test_training_lowers_validation_loss_and_keeps_compression(tiny, text, entry, params):
    base, tok = tiny()
    compress(base, {"method": "magnitude", "sparsity": 0.5})
    frozen = {n: l.weight.detach().clone() for n, l in target_linears(base).items()}
    base_params = list(base.parameters())
    zeros = adapters.zero_count(base_params)
    model = adapters.attach(base, entry)
    assert adapters.trainable_parameters(model) == params
    best, history = adapters.train(model, entry, tok, [text], {**CFG, **entry.get("training", {})},
                                   seed=0, log=lambda *_: None)
    # IDP gains less on validation: joint trains all prompts at once but infers with one, routed
    # spreads the steps over the pool
    gain = 0.05 if entry["method"] == "idp" else 0.1
    assert history["best_val_loss"] < history["initial_val_loss"] - gain
    assert set(best) and all(isinstance(v, torch.Tensor) for v in best.values())
    assert adapters.zero_count(base_params) == zeros
    for name, layer in target_linears(base).items():
        if "lora" not in name:
            w = layer.base_layer.weight if hasattr(layer, "base_layer") else layer.weight
            assert torch.equal(w, frozen[name.replace("base_model.model.", "")
                                         .replace(".base_layer", "")]), name


def test_training_is_seeded(tiny, text):
    losses = []
    for _ in range(2):
        base, tok = tiny()
        model = adapters.attach(base, {"method": "prompt_tuning", "num_virtual_tokens": 2})
        _, history = training.train(model, tok, text, {**CFG, "steps": 3}, seed=1,
                                    log=lambda *_: None)
        losses.append(history["train_loss"])
    assert losses[0] == losses[1]


def test_convergence_is_judged_on_the_best_loss_a_window_apart():
    curve = [(0, 10.0), (10, 8.0), (20, 7.0), (30, 6.97), (40, 6.95), (50, 7.1)]
    assert not training.converged(curve, 10, window=20, min_improvement=0.01)  # too early
    assert not training.converged(curve, 20, window=20, min_improvement=0.01)  # 10 -> 7
    assert not training.converged(curve, 30, window=20, min_improvement=0.01)  # 8 -> 6.97
    assert training.converged(curve, 40, window=20, min_improvement=0.01)  # 7 -> 6.95: 0.7%
    assert not training.converged(curve, 40, window=20, min_improvement=0.005)
    assert training.converged(curve, 50, window=20, min_improvement=0.01)  # a worse point too


def test_training_stops_once_converged_and_keeps_its_best_step(tiny, text):
    """`stop_when`: a learning rate too small to move the loss converges at the first point a
    window past the start; a useful one trains on."""
    base, tok = tiny()
    model = adapters.attach(base, {"method": "prompt_tuning", "num_virtual_tokens": 4})
    stop = {"window": 10, "min_improvement": 0.01}
    _, history = training.train(model, tok, text, {**CFG, "lr": 1e-9, "stop_when": stop}, seed=0,
                                log=lambda *_: None)
    assert history["stopped_step"] == 10 and len(history["train_loss"]) == 10
    assert [s for s, _ in history["val_loss"]] == [0, 10]
    base, tok = tiny()
    model = adapters.attach(base, {"method": "prompt_tuning", "num_virtual_tokens": 4})
    _, history = training.train(model, tok, text, {**CFG, "lr": 0.05, "stop_when": stop}, seed=0,
                                log=lambda *_: None)
    assert history.get("stopped_step", 30) > 10


def test_too_little_text_is_a_clear_error(tiny):
    _, tok = tiny()
    with pytest.raises(ValueError, match="too few"):
        training.token_blocks(tok, "short", 64)


def test_routed_idp_uses_every_prompt(tiny, text):
    """The balance term keeps every prompt of the pool in use during routed training."""
    base, tok = tiny()
    entry = {**IDP, "scheme": "routed", "balance_weight": 1.0}
    model = adapters.attach(base, entry)
    _, history = adapters.train(model, entry, tok, [text], {**CFG, "steps": 20, "batch_size": 8},
                                seed=0, log=lambda *_: None)
    totals = torch.tensor(history["routing"]).sum(0)
    assert len(totals) == 3 and (totals > 0).all(), totals


def test_capped_routing_serves_the_best_scores_first_and_fills_no_prompt_past_capacity():
    from knowledge_recovery.recovery.dynamic_prompts import capped_choice

    # every row prefers prompt 0: uncapped, prompt 0 would take all four
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.0, 0.2], [0.7, 0.3, 0.0], [0.6, 0.0, 0.1]])
    assert capped_choice(scores, 1.0).tolist() == [0, 0, 1, 2]  # capacity ceil(4/3) = 2
    assert capped_choice(scores, 3.0).tolist() == [0, 0, 0, 0]  # factor m: no cap
    assert sorted(capped_choice(torch.rand(8, 4), 1.0).bincount(minlength=4).tolist()) == [2] * 4


def test_routed_training_with_a_capacity_cannot_collapse(tiny, text):
    """Without the balance term, routing is free to collapse; the cap still spreads every batch."""
    base, tok = tiny()
    entry = {**IDP, "scheme": "routed", "balance_weight": 0.0, "capacity_factor": 1.0}
    model = adapters.attach(base, entry)
    _, history = adapters.train(model, entry, tok, [text], {**CFG, "steps": 10, "batch_size": 6},
                                seed=0, log=lambda *_: None)
    assert all(max(step) <= 2 for step in history["routing"]), history["routing"]  # ceil(6/3)


def _perturb(model) -> None:
    """Move the adapter's trainable parameters off their initial values."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))


def test_adapter_saves_and_loads_identically(tiny, tmp_path):
    for entry, _ in ENTRIES:
        base, tok = tiny(seed=1)
        model = adapters.attach(base, entry).eval()
        _perturb(model)
        if entry["method"] == "idp":
            model.router_fitted = True  # the perturbed router stands for a fitted one
        ids = torch.randint(0, 250, (2, 12))
        with torch.no_grad():
            before = model(input_ids=ids).logits
        out = tmp_path / entry["method"] / entry.get("scheme", "")
        adapters.save(model, entry, out)
        loaded = adapters.load(tiny(seed=1)[0], entry, out)
        with torch.no_grad():
            assert torch.allclose(loaded(input_ids=ids).logits, before, atol=1e-5), entry


def test_killed_training_resumes_where_it_stopped(tiny, text, tmp_path):
    """A run stopped after a checkpoint continues from it and ends as an unbroken run would."""
    cfg = {**CFG, "steps": 8, "eval_every": 4, "checkpoint_every": 3}

    def run(steps):
        base, tok = tiny()
        model = adapters.attach(base, {"method": "prompt_tuning", "num_virtual_tokens": 2})
        return training.train(model, tok, text, {**cfg, "steps": steps} if steps else cfg, seed=0,
                              log=lambda *_: None, resume_path=tmp_path / "state")

    _, unbroken = run(None)
    artifacts.remove_state(tmp_path / "state", tmp_path)  # the step, once outputs are saved
    assert not (tmp_path / "state").exists()
    base, tok = tiny()
    model = adapters.attach(base, {"method": "prompt_tuning", "num_virtual_tokens": 2})

    class Killed(Exception):
        pass

    def die_at_step_5(*_):
        if len(history_probe) == 5:
            raise Killed
    history_probe = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: (history_probe.append(1) if mod.training else None,
                                   die_at_step_5())[0], with_kwargs=True)
    with pytest.raises(Killed):
        training.train(model, tok, text, cfg, seed=0, log=lambda *_: None,
                       resume_path=tmp_path / "state")
    hook.remove()
    assert (tmp_path / "state" / "training_state.pt").exists()
    logs = []
    base, tok = tiny()
    model = adapters.attach(base, {"method": "prompt_tuning", "num_virtual_tokens": 2})
    _, resumed = training.train(model, tok, text, cfg, seed=0, log=logs.append,
                                resume_path=tmp_path / "state")
    assert any("resumed" in line and "step 3" in line for line in logs)
    assert [s for s, _ in resumed["train_loss"]] == list(range(1, 9))
    assert [v for _, v in resumed["train_loss"]] == pytest.approx(
        [v for _, v in unbroken["train_loss"]], abs=1e-6)


def test_distillation_lowers_kl_to_the_dense_model(tiny, text):
    teacher, tok = tiny()
    base, _ = tiny()
    compress(base, {"method": "magnitude", "sparsity": 0.5})
    model = adapters.attach(base, {"method": "prompt_tuning", "num_virtual_tokens": 4})
    blocks = training.token_blocks(tok, text, 64)[:4]
    with torch.no_grad():
        before = training.distill_loss(model, teacher, blocks, 1.0).item()
    training.train(model, tok, text, {**CFG, "objective": "distill"}, seed=0, teacher=teacher,
                   log=lambda *_: None)
    with torch.no_grad():
        after = training.distill_loss(model, teacher, blocks, 1.0).item()
    assert after < before * 0.9


def test_a_finished_run_keeps_its_checkpoint_and_an_unreadable_one_is_set_aside(tiny, text, tmp_path):
    """The checkpoint outlives training (the step removes it after saving), is read as plain
    tensors, and a truncated one is moved aside with a warning instead of failing every re-run."""
    cfg = {**CFG, "steps": 4, "eval_every": 2, "checkpoint_every": 2}
    entry = {"method": "prompt_tuning", "num_virtual_tokens": 2}
    base, tok = tiny()
    _, first = training.train(adapters.attach(base, entry), tok, text, cfg, seed=0,
                              log=lambda *_: None, resume_path=tmp_path)
    state = training.checkpoint_file(tmp_path)
    assert state.is_file()
    torch.load(state, weights_only=True)  # tensors and plain data only
    state.write_bytes(state.read_bytes()[:100])  # truncated by a kill during a write elsewhere
    logs = []
    base, tok = tiny()
    _, again = training.train(adapters.attach(base, entry), tok, text, cfg, seed=0,
                              log=logs.append, resume_path=tmp_path)
    assert any("unreadable" in line for line in logs)
    assert state.with_suffix(".unreadable").is_file()
    assert again["train_loss"] == first["train_loss"]  # started over, same run
    artifacts.remove_state(tmp_path, tmp_path.parent)
    assert not tmp_path.exists()


def test_a_prompt_cache_is_what_the_method_puts_before_every_input(tiny):
    """Methods with a prompt cache (deployment/openvino.py) deploy as keys and values in front of the
    unchanged model: with that cache the base model computes what the adapter model does."""
    from transformers import DynamicCache

    from knowledge_recovery.registry import recovery_method, recovery_methods

    cached = sorted(name for name, r in recovery_methods().items() if r.prompt_cache)
    assert cached == ["prefix_tuning", "prompt_tuning"]  # IDP's prompt depends on the input
    ids = torch.randint(0, 250, (2, 9))
    for entry, _ in ENTRIES[:2]:
        base, _tok = tiny(seed=2)
        model = adapters.attach(base, entry).eval()
        _perturb(model)
        if entry["method"] == "idp":
            model.router_fitted = True  # the perturbed router stands for a fitted one
        with torch.no_grad():
            want = model(input_ids=ids).logits[:, -9:]  # prompt tuning's has the prompt's too
            layers = recovery_method(entry["method"]).prompt_cache(model)
            n = entry["num_virtual_tokens"]
            assert len(layers) == 2 and layers[0][0].shape == (1, 4, n, 16)
            cache = DynamicCache(config=base.config)
            for i, (k, v) in enumerate(layers):
                cache.update(k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), i)
            got = model.get_base_model()(input_ids=ids, past_key_values=cache,
                                         attention_mask=torch.ones(2, n + 9)).logits
        assert torch.allclose(got, want, atol=1e-5), entry["method"]


def test_a_saved_adapter_does_not_depend_on_where_the_results_are(tiny, tmp_path, monkeypatch):
    """peft writes the base model's absolute path into the adapter; relative to the results
    folder, one adapter saved under two results folders is byte-identical."""
    import hashlib

    def saved(root):
        base, _ = tiny(seed=1)
        base.save_pretrained(root / "models" / "m" / "checkpoint")
        base.name_or_path = str(root / "models" / "m" / "checkpoint")
        model = adapters.attach(base, {"method": "lora", "r": 2, "alpha": 4, "dropout": 0.0,
                                       "target_modules": ["q_proj", "v_proj"]})
        adapters.save(model, {"method": "lora"}, root / "adapter")
        artifacts.strip_root(root / "adapter", root)
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (root / "adapter").iterdir()}

    first, second = saved(tmp_path / "a" / "results"), saved(tmp_path / "b" / "elsewhere")
    monkeypatch.chdir(tmp_path)  # a relative results folder, as the default config names it
    third = saved(Path("c") / "results")
    assert first == second == third and "adapter_config.json" in first
    config = json.loads((tmp_path / "a" / "results" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "models/m/checkpoint"
    # peft writes its module-name sets in hash order, which changes from process to process
    assert config["target_modules"] == ["q_proj", "v_proj"]


def test_a_log_file_gets_a_line_per_tenth_of_training(tiny, text):
    """Without a progress bar (a job's log is a file): one line at every 10% of the steps."""
    base, tok = tiny()
    entry = {"method": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"]}
    said = []
    adapters.train(adapters.attach(base, entry), entry, tok, [text],
                   {**CFG, "steps": 20, "eval_every": 100}, seed=0, log=said.append)
    progress = [line for line in said if "%)" in line]
    assert [line.split(" (")[0] for line in progress] == [f"step {s}/20" for s in range(2, 21, 2)]
    assert progress[-1].startswith("step 20/20 (100%) train_loss ")
