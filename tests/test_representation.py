"""The representation analysis: CKA, hidden states and attention mass read through any wrapper,
batched tracing, the fixed sample of evaluation inputs."""
import pytest
import torch
from test_evaluation import attached

from knowledge_recovery.analysis import representation
from knowledge_recovery.evaluation import harness
from knowledge_recovery.evaluation.tasks import prepare_task

METHODS = ["none", "prompt_tuning", "prefix_tuning", "lora", "dora", "ia3", "idp"]


def test_linear_cka_is_invariant_to_rotation_and_scale():
    torch.manual_seed(0)
    x = torch.randn(300, 16)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    assert representation.linear_cka(x, x) == pytest.approx(1.0)
    assert representation.linear_cka(x, 3 * x @ rotation + 1) == pytest.approx(1.0)
    assert representation.linear_cka(x, torch.randn(300, 16)) < 0.15
    half = torch.cat([x[:, :8], torch.randn(300, 8)], dim=1)  # half the signal kept
    assert 0.3 < representation.linear_cka(x, half) < 0.8


def _inputs(tok, lengths=(5, 9, 3, 12, 7)):
    torch.manual_seed(1)
    return [torch.randint(3, 200, (1, n)) for n in lengths]


@pytest.mark.parametrize("method", METHODS)
def test_trace_batched_equals_one_at_a_time(tiny, method):
    """Right-padded batches give each input's states and attention mass as a lone run does."""
    model, tok = attached(tiny, method)
    inputs = _inputs(tok)
    alone, mass_alone = representation.trace(model, inputs, batch_size=1)
    batched, mass_batched = representation.trace(model, inputs, batch_size=4)
    assert [s.shape for s in alone] == [s.shape for s in batched]
    assert alone[0].shape[0] == sum(ids.shape[1] - 1 for ids in inputs)  # first tokens left out
    for a, b in zip(alone, batched):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    prompted = method in ("prompt_tuning", "prefix_tuning", "idp")
    assert all((m is not None) == prompted for m in mass_alone)
    if prompted:
        assert mass_alone == pytest.approx(mass_batched, abs=1e-5)
        assert all(0 < m < 1 for m in mass_alone)


def test_prompt_tuning_states_and_attention_are_the_input_positions(tiny):
    """The states traced through peft's prompt tuning are the base model's on (prompt, input) at
    the input's positions; the mass is what the input's queries give the prompt's keys."""
    model, tok = attached(tiny, "prompt_tuning")
    base = model.get_base_model()
    ids = _inputs(tok, (8,))[0]
    states, mass = representation.trace(model, [ids], batch_size=1)
    prompt = model.get_prompt(batch_size=1)
    n_virtual = prompt.shape[1]
    embeds = torch.cat([prompt, base.get_input_embeddings()(ids)], dim=1)
    base.config._attn_implementation = "eager"
    with torch.no_grad():
        out = base(inputs_embeds=embeds, output_hidden_states=True, output_attentions=True)
    base.config._attn_implementation = "sdpa"
    # hidden_states[-1] has the final norm applied; the trace reads the last layer's output
    for layer in range(1, len(states) - 1):
        torch.testing.assert_close(states[layer], out.hidden_states[layer][0, n_virtual + 1:],
                                   atol=1e-5, rtol=1e-5)
    for layer, weights in enumerate(out.attentions, start=1):
        expected = weights[0, :, n_virtual:, :n_virtual].sum(-1).mean()
        assert mass[layer - 1] == pytest.approx(float(expected), abs=1e-5)


def test_a_model_is_its_own_reference(tiny):
    model, tok = tiny(seed=3)
    found = representation.analyse(model, model, tok, ["Question: what?\nAnswer:", "A b c d."],
                                   {"max_tokens": 16, "batch_size": 2, "timing_inputs": 1,
                                    "timing_rounds": 2, "timing_batch_sizes": [1, 3]})
    assert found["cka"] == pytest.approx([1.0] * 3) and found["layers"] == [0, 1, 2]
    assert found["attention_to_prompt"] is None and found["inputs"] == 2
    assert list(found["latency"]) == ["1", "3"]
    for timed in found["latency"].values():
        assert len(timed["cell"]["wall_ms"]) == 2 and timed["cell_over_dense"] > 0


def test_timing_batches_are_whole_inputs_cut_to_the_shortest():
    inputs = [torch.arange(n)[None] for n in (5, 3, 4)]
    batches = representation.timing_batches(inputs, 2, 3)
    assert [b.shape for b in batches] == [(2, 3), (2, 4), (2, 3)]
    assert batches[0].tolist() == [[2, 3, 4], [0, 1, 2]]  # the last tokens; round again at the end
    assert representation.timing_batches(inputs, 1, 2)[1].tolist() == [[0, 1, 2]]


def test_sample_inputs_spreads_over_tasks_and_is_fixed(tmp_path):
    prepare_task({"name": "kp", "type": "probes", "relations": ["country_capital", "element_symbol"],
                  "per_relation": 10, "num_choices": 4}, tmp_path, seed=0)
    manager = harness.task_manager([tmp_path], False)
    names = ["kp_country_capital", "kp_element_symbol"]

    def draw(count, seed):
        return representation.sample_inputs(manager, names, count, seed)
    first = draw(7, 0)
    assert [i["task"] for i in first] == names * 3 + names[:1]  # round robin
    assert len({(i["task"], i["doc_id"]) for i in first}) == 7
    assert all(i["text"].startswith("Question:") for i in first)
    assert draw(7, 0) == first and draw(7, 1) != first
    assert len(draw(100, 0)) == 20  # every input there is, once
