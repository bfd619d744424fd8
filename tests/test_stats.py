"""Paired statistics: the bootstrap interval, the exact McNemar test, and which cells are compared."""
import math

import pytest
import yaml
from conftest import REPO

from knowledge_recovery.analysis import stats
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.grid import cells


def test_mcnemar_exact_p_values():
    # 10 questions only the second cell gets right, none the other way: p = 2 / 2^10
    assert stats.mcnemar_exact([0] * 10 + [1] * 5, [1] * 15) == pytest.approx(2 / 1024)
    assert stats.mcnemar_exact([1] * 15, [0] * 10 + [1] * 5) == pytest.approx(2 / 1024)
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0
    # 3 vs 5 discordant: two-sided binomial tail
    a = [1, 1, 1, 0, 0, 0, 0, 0]
    b = [0, 0, 0, 1, 1, 1, 1, 1]
    expected = 2 * sum(math.comb(8, k) for k in range(4)) / 2 ** 8
    assert stats.mcnemar_exact(a, b) == pytest.approx(expected)


def test_paired_bootstrap_intervals():
    same = {"t": [1, 0] * 50}
    out = stats.paired_bootstrap(same, same, resamples=500, seed=0)
    assert out["t"]["difference"] == 0 and out["t"]["low"] == out["t"]["high"] == 0
    assert not out["t"]["significant"]

    base = {"t1": [0] * 100, "t2": [1] * 50 + [0] * 50}
    other = {"t1": [1] * 60 + [0] * 40, "t2": [1] * 50 + [0] * 50}
    out = stats.paired_bootstrap(base, other, resamples=2000, seed=0)
    assert out["t1"]["difference"] == pytest.approx(0.6)
    assert 0.45 < out["t1"]["low"] < 0.6 < out["t1"]["high"] < 0.75
    assert out["t1"]["significant"] and not out["t2"]["significant"]
    assert out["mean"]["difference"] == pytest.approx(0.3)
    assert out["mean"]["low"] < 0.3 < out["mean"]["high"] and out["mean"]["significant"]
    assert out["mean"]["questions"] == 200
    # seeded: the same resamples give the same interval
    again = stats.paired_bootstrap(base, other, resamples=2000, seed=0)
    assert again["mean"]["low"] == out["mean"]["low"]


def test_the_comparisons_the_study_makes():
    config = load_config(yaml.safe_load((REPO / "config" / "smoke.yaml").read_text()),
                         check_models=False)
    found = stats.comparisons(cells(config), "lora")
    pairs = {(kind, base.id.split("/", 2)[2], other.id.split("/", 2)[2])
             for kind, base, other in found}
    assert pairs == {
        ("compressed vs dense", "none", "none"),
        ("recovered vs compressed", "none", "idp-m2-n4-routed/seed0"),
        ("recovered vs compressed", "none", "lora-r2/seed0"),
        # no parameter counts given: not called matched
        ("vs lora at nearest budget", "lora-r2/seed0", "idp-m2-n4-routed/seed0"),
        ("variant vs the adapter's own selection", "idp-m2-n4-routed/seed0",
         "idp-m2-n4-routed-oracle/seed0"),
    }


def _paper_grid():
    config = load_config(yaml.safe_load((REPO / "config" / "paper.yaml").read_text()),
                         check_models=False)
    return cells(config)


def test_each_recovery_meets_the_lora_entry_nearest_its_budget():
    """paper.yaml: three LoRA ranks; each other recovery is compared with the one whose
    trainable parameters are nearest its own (log scale), not with all three."""
    grid = _paper_grid()
    # a stand-in count per entry: its max_params (what each entry's budget is checked against)
    found = stats.comparisons(grid, "lora", budget=lambda c: c.settings.get("max_params"))
    matched = {other.settings["id"]: base.settings["id"] for kind, base, other in found
               if kind.startswith("vs lora at") and other.model == "llama-7b"
               and other.compression == grid[1].compression and other.seed == 0}
    # "matched" only within 1.25x; else "nearest"
    for kind, base, other in found:
        if kind.startswith("vs lora at"):
            ratio = stats.budget_ratio(base.settings["max_params"], other.settings["max_params"])
            assert kind == ("vs lora at matched budget" if ratio <= 1.25
                            else "vs lora at nearest budget"), (kind, ratio)
    assert matched["prompt-n25"] == "lora-r4"    # 102,400 params: the smallest LoRA
    assert matched["prefix-n8"] == "lora-r4"     # 2,097,152: equal to r4
    assert matched["dora-r8"] == "lora-r8" and matched["dora-r16"] == "lora-r16"
    assert matched["ia3-all"] == "lora-r4"
    # without counts: every LoRA entry
    everything = stats.comparisons(grid, "lora")
    assert len([1 for k, *_ in everything if k.startswith("vs lora")]) == 3 * len(
        [1 for k, *_ in found if k.startswith("vs lora")])


def test_pooling_over_seeds_counts_the_spread_between_seeds():
    base = {"t": [0] * 200}
    agree = [(base, {"t": [1] * 60 + [0] * 140})] * 3           # three seeds, the same answers
    differ = [(base, {"t": [1] * k + [0] * (200 - k)}) for k in (20, 60, 100)]  # same mean
    one = stats.paired_bootstrap(*agree[0], resamples=2000, seed=0)["t"]
    same = stats.pooled_bootstrap(agree, resamples=2000, seed=0)["t"]
    spread = stats.pooled_bootstrap(differ, resamples=2000, seed=0)["t"]
    assert one["difference"] == same["difference"] == spread["difference"] == pytest.approx(0.3)
    # identical seeds add nothing; seeds that disagree widen the interval
    assert same["high"] - same["low"] == pytest.approx(one["high"] - one["low"], abs=0.02)
    assert spread["high"] - spread["low"] > 1.5 * (same["high"] - same["low"])
    assert spread["questions"] == 200 and spread["significant"]


def test_a_claim_verdict_and_the_questions_that_would_resolve_it():
    from knowledge_recovery.analysis.claims import verdict

    assert verdict("greater", 0, 0.05, 0.02, 0.08, 1000) == ("supported", None)
    assert verdict("greater", 0, -0.05, -0.08, -0.02, 1000) == ("contradicted", None)
    assert verdict("less", 0, -0.05, -0.08, -0.02, 1000) == ("supported", None)
    # +0.01 +- 0.02 at 1,000 questions: +-0.01 takes 4x the questions
    assert verdict("greater", 0, 0.01, -0.01, 0.03, 1000) == ("not resolved", 4000)
    # not worse by more than 0.02: -0.01 [-0.03, +0.01] is not resolved; [-0.015, -0.005] is
    assert verdict("not_worse", 0.02, -0.01, -0.03, 0.01, 1000) == ("not resolved", 4000)
    assert verdict("not_worse", 0.02, -0.01, -0.015, -0.005, 1000) == ("supported", None)
    assert verdict("not_worse", 0.02, -0.05, -0.07, -0.03, 1000) == ("contradicted", None)
    assert verdict("equal", 0.02, 0.0, -0.01, 0.01, 1000) == ("supported", None)
    assert verdict("equal", 0.02, 0.05, 0.03, 0.07, 1000) == ("contradicted", None)
    assert verdict("greater", 0, 0.0, -0.02, 0.02, 1000) == ("not resolved", None)
    from knowledge_recovery.analysis.claims import leaning
    assert leaning("greater", 0, -0.027) == "contradicted" and leaning("less", 0, -0.1) == "supported"
    assert leaning("not_worse", 0.01, -0.007) == "supported"
    assert leaning("equal", 0.02, 0.03) == "contradicted"


def test_claims_pair_cells_of_two_entries_and_are_refused_for_unknown_ids():
    from knowledge_recovery.analysis.claims import claim_table, pairs
    from knowledge_recovery.errors import ConfigError

    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    raw["compression"].append({"method": "magnitude", "sparsity": 0.5})
    raw["claims"] = [
        {"claim": "compression loses knowledge", "base": {"compression": "dense", "recovery": "none"},
         "other": {"recovery": "none"}, "expect": "less", "by_group": True},
        {"claim": "IDP at least as good as LoRA", "base": {"recovery": "lora-r2"},
         "other": {"recovery": "idp-m2-n4-routed"}, "expect": "not_worse", "margin": 0.02}]
    config = load_config(raw, check_models=False)
    grid = cells(config)
    lost = pairs(config["claims"][0], grid)
    assert [(b.id, o.id) for b, o in lost] == [
        ("tiny-llama/dense/none", "tiny-llama/gptq-w4-g32-sym/none"),
        ("tiny-llama/dense/none", "tiny-llama/magnitude-s0.5/none")]
    versus = pairs(config["claims"][1], grid)
    assert [(b.id, o.id) for b, o in versus] == [
        ("tiny-llama/gptq-w4-g32-sym/lora-r2/seed0", "tiny-llama/gptq-w4-g32-sym/idp-m2-n4-routed/seed0"),
        ("tiny-llama/magnitude-s0.5/lora-r2/seed0", "tiny-llama/magnitude-s0.5/idp-m2-n4-routed/seed0")]
    # dense knows everything, compression forgets a third of task a; the adapters tie
    right = {"a": (list(range(90)), [1] * 90), "b": (list(range(60)), [1] * 60)}
    lossy = {"a": (list(range(90)), [1] * 60 + [0] * 30), "b": (list(range(60)), [1] * 60)}
    records = {c.id: right if c.compression == "dense" else lossy for c in grid}
    table = claim_table(config["claims"], grid, records, {"a": "A", "b": "B"},
                        config["statistics"])
    first = table[table.claim == "compression loses knowledge"]
    assert list(first.group) == ["all", "A", "B"] * 2
    row = first.iloc[0]
    assert row.difference == pytest.approx(-1 / 6) and row.verdict == "supported"
    assert row.questions == 150
    assert list(first[first.group == "B"].verdict) == ["not resolved"] * 2  # no difference in B
    tie = table[table.claim == "IDP at least as good as LoRA"]
    assert list(tie.verdict) == ["supported"] * 2 and (tie.difference == 0).all()

    raw["claims"][1]["other"]["recovery"] = "idp-m2"
    with pytest.raises(ConfigError) as err:
        load_config(raw, check_models=False)
    assert err.value.key == "claims[1].other.recovery" and "idp-m2-n4-routed" in str(err.value)


def test_claims_measure_recovery_ratio_lost_questions_and_latency():
    """Dense right on all 150 questions, compression loses 30 of task a; IDP brings back 15 of
    them and LoRA all 30 (breaking nothing): recovery ratios 0.5 and 1, on the lost questions
    50% against 100%; IDP's latency 1.2x dense against LoRA's 1.5x (0.8x LoRA's). A latency
    claim at a batch size that was not timed is refused."""
    import pandas as pd
    from knowledge_recovery.analysis.claims import claim_table, markdown
    from knowledge_recovery.errors import ConfigError

    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    raw["displacement"] = {"timing_batch_sizes": [1, 8]}
    ratio = {"claim": "a prompt recovers part of it", "base": {"recovery": "none"},
             "other": {"recovery": "idp-m2-n4-routed"}, "expect": "greater",
             "measure": "recovery_ratio"}
    raw["claims"] = [
        ratio, {**ratio, "other": {"recovery": "lora-r2"}},
        {"claim": "displaced", "base": {"recovery": "lora-r2"}, "measure": "lost_questions",
         "other": {"recovery": "idp-m2-n4-routed"}, "expect": "not_worse", "margin": 0.1},
        {"claim": "faster", "base": {"recovery": "lora-r2"}, "measure": "latency", "batch_size": 8,
         "other": {"recovery": "idp-m2-n4-routed"}, "expect": "less"}]
    config = load_config(raw, check_models=False)
    grid = cells(config)
    ids = list(range(90)), list(range(60))

    def answers(lost_right):  # task a: 60 kept, then the 30 lost questions, lost_right right
        return {"a": (ids[0], [1] * 60 + [1] * lost_right + [0] * (30 - lost_right)),
                "b": (ids[1], [1] * 60)}
    right = {"dense": 30, "none": 0, "idp-m2-n4-routed": 15, "lora-r2": 30}
    records = {c.id: answers(30 if c.compression == "dense" else right.get(c.recovery, 0))
               for c in grid}

    def timed(over_dense):
        return {"8": {"cell": {"wall_ms": [over_dense * 10] * 3}, "dense": {"wall_ms": [10] * 3}}}
    timings = {c.id: timed(1.2 if c.recovery.startswith("idp") else 1.5) for c in grid}
    table = claim_table(config["claims"], grid, records, {"a": "A", "b": "B"},
                        config["statistics"], timings)
    idp, lora = table[table.measure == "recovery_ratio"].iloc[0], \
        table[table.measure == "recovery_ratio"].iloc[1]
    assert idp.difference == pytest.approx(0.5) and idp.low < 0.5 < idp.high
    assert idp.verdict == "supported" and lora.difference == pytest.approx(1.0)
    lost = table[table.measure == "lost_questions"].iloc[0]
    assert lost.difference == pytest.approx(-0.5) and lost.questions == 30
    assert (lost.other_value, lost.base_value) == (0.5, 1.0) and lost.verdict == "contradicted"
    latency = table[table.measure == "latency"].iloc[0]
    assert latency.difference == pytest.approx(0.8 - 1) and latency.verdict == "supported"
    assert latency.group == "batch 8" and pd.isna(latency.questions)
    shown = markdown(table, 0.95)
    assert "ratio 0.50" in shown and "0.80x" in shown and "(50% vs 100% of them)" in shown

    raw["claims"][3]["batch_size"] = 4
    with pytest.raises(ConfigError) as err:
        load_config(raw, check_models=False)
    assert err.value.key == "claims[3].batch_size" and "[1, 8]" in str(err.value)
