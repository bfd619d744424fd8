import json

import pytest
import yaml

from knowledge_recovery.evaluation.tasks import RELATIONS, make_probes, prepare_task


@pytest.mark.parametrize("relation", sorted(RELATIONS))
def test_probes_are_valid_and_deterministic(relation):
    rows = make_probes(relation, 40, 4, seed=0)
    assert rows == make_probes(relation, 40, 4, seed=0)
    assert rows != make_probes(relation, 40, 4, seed=1)
    assert len(rows) == 40 and len({r["subject"] for r in rows}) == 40
    facts = RELATIONS[relation][2]()
    answers = set(facts.values())
    for row in rows:
        assert len(row["choices"]) == len(set(row["choices"])) == 4
        assert row["choices"][row["gold"]] == facts[row["subject"]]
        assert set(row["choices"]) <= answers  # distractors come from the same relation


def test_known_facts_are_right():
    capital = RELATIONS["country_capital"][2]()
    assert capital["France"] == "Paris" and capital["Japan"] == "Tokyo"
    assert RELATIONS["element_symbol"][2]()["gold"] == "Au"
    demonym = RELATIONS["country_demonym"][2]()
    assert demonym["France"] == "French" and demonym["Antigua and Barbuda"] == "Antiguan, Barbudan"


def test_prepare_probes_writes_lm_eval_tasks(tmp_path):
    entry = {"name": "kp", "type": "probes", "relations": ["country_capital", "element_symbol"],
             "per_relation": 5, "num_choices": 3}
    info = prepare_task(entry, tmp_path / "out", seed=0)
    assert set(info) == {"kp_country_capital", "kp_element_symbol"}
    assert info["kp_country_capital"]["sources"]["countryinfo"]
    spec = yaml.safe_load((tmp_path / "out" / "kp_element_symbol.yaml").read_text())
    data = spec["dataset_kwargs"]["data_files"]["test"]
    assert spec["task"] == "kp_element_symbol" and spec["output_type"] == "multiple_choice"
    assert len(open(data).readlines()) == 5


def test_local_task_from_shared_arc_easy(tmp_path, shared_benchmarks):
    entry = {"name": "arc_easy_local", "type": "local",
             "path": str(shared_benchmarks / "arc_easy" / "ARC-Easy-Test.jsonl"),
             "text": "Question: {{question.stem}}\nAnswer:",
             "choices": "{{question.choices|map(attribute='text')|list}}",
             "target": "{{(question.choices|map(attribute='label')|list).index(answerKey)}}"}
    info = prepare_task(entry, tmp_path, seed=0)
    assert info["arc_easy_local"]["documents"] == 2376
    first = json.loads((tmp_path / "arc_easy_local.jsonl").open().readline())
    assert first["question"]["stem"]


def test_per_relation_all_asks_every_fact_and_extends_a_smaller_set():
    from knowledge_recovery.evaluation.tasks import make_probes, relation_size

    every = make_probes("element_symbol", "all", 4, seed=0)
    assert len(every) == relation_size("element_symbol")[0]
    assert len({q["subject"] for q in every}) == len(every)
    assert every[:40] == make_probes("element_symbol", 40, 4, seed=0)  # a superset, same questions


ESCAPES = [  # each would put something other than the document into the prompt
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ cycler['__in' ~ 'it__']['__glo' ~ 'bals__']['os']['environ']['HOME'] }}",
    "{{ joiner }}", "{{ namespace }}", "{{ range }}", "{{ lipsum }}", "{{ dict }}",
    "{% for k in range(3) %}{{ k }}{% endfor %}",
    "{{ question.__class__ }}",
    "{{ question['__cla' ~ 'ss__'] }}",
    "{{ question['__cla' ~ 'ss__']['__mro__'] }}",
    "{{ choices['__cla' ~ 'ss__'] }}",
    "{% set k = '__cla' ~ 'ss__' %}{{ question[k] }}",
    "{{ question|attr('__class__') }}",
    "{{ question.upper() }}",
    "{% import 'os' as os %}",
    "{{ self }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_no_template_reads_beyond_its_document(template):
    """Refused statically (a global, a call, an underscore attribute, a filter outside the
    allow-list) or when rendered in the sandbox on the file's documents."""
    from knowledge_recovery.evaluation.tasks import render_problem, template_problem

    rows = [{"question": "Q?", "choices": ["a", "b"], "gold": 0}]
    assert template_problem(template) or render_problem(rows, template), template


@pytest.mark.parametrize("template", ["{{question}}", "{{choices}}", "{{ choices[gold] }}",
                                      "{{ question|trim|lower }}", "Q: {{question}}\nA:",
                                      "{% for c in choices %}{{ loop.index }}. {{ c }} {% endfor %}"])
def test_plain_templates_pass(template):
    from knowledge_recovery.evaluation.tasks import render_problem, template_problem

    rows = [{"question": "Q?", "choices": ["a", "b"], "gold": 0}]
    assert template_problem(template) is None and render_problem(rows, template) is None
