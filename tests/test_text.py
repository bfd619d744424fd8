"""Training texts: JSON Lines rendered by a template, an entry's own text, and decontamination
against the grid's questions (unit, config checks, and the real download step)."""
import copy
import json

import pytest
import yaml
from conftest import REPO
from test_pipeline import smoke_config, snakemake

from knowledge_recovery import text
from knowledge_recovery.errors import ConfigError
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.jobs import Jobs

SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
TEMPLATE = "Question: {{question}}\nAnswer: {{answers | first}}"
ROWS = [{"question": f"Who wrote book number {i}?", "answers": [f"Author {i}", "x"]}
        for i in range(200)]


def jsonl(path, rows, tail: str = "") -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return str(path)


def test_rows_are_rendered_one_document_each_and_read_no_further_than_max_chars(tmp_path):
    # a broken row after what max_chars takes is never read
    path = jsonl(tmp_path / "qa.jsonl", ROWS, tail="not json\n")
    body = text.load_text({"source": "files", "paths": [path], "template": TEMPLATE,
                           "max_chars": 1000})
    docs = text.documents(body)
    assert len(body) == 1000 and docs[0] == "Question: Who wrote book number 0?\nAnswer: Author 0"
    assert docs[5] == "Question: Who wrote book number 5?\nAnswer: Author 5"
    with pytest.raises(text.RowError, match="line 201: not JSON"):
        text.load_text({"source": "files", "paths": [path], "template": TEMPLATE,
                        "max_chars": 10 ** 6})


def test_a_shuffled_text_keeps_the_form_and_words_and_breaks_the_facts(tmp_path):
    """The format-versus-facts control: the same questions in the same order, the same answers,
    each answer moved to another question (seeded); a row without the field stays as it was."""
    rows = [*ROWS, {"question": "A row with no answers?"}]
    path = jsonl(tmp_path / "qa.jsonl", rows)
    template = "Question: {{question}}{% if answers is defined %}\nAnswer: {{answers | first}}{% endif %}"
    spec = {"source": "files", "paths": [path], "template": template, "max_chars": 10 ** 6}
    plain = text.documents(text.load_text(spec))
    control = text.documents(text.load_text({**spec, "shuffle": {"field": "answers", "seed": 0}}))
    assert len(control) == len(plain) == 201 and control[-1] == plain[-1]
    split = [[d.split("\n") for d in docs] for docs in (plain, control)]
    assert [d[0] for d in split[0]] == [d[0] for d in split[1]]            # the questions
    assert sorted(d[1] for d in split[0][:200]) == sorted(d[1] for d in split[1][:200])
    moved = sum(a != b for a, b in zip(plain, control))
    assert moved >= 190, moved                                             # the facts broken
    again = text.load_text({**spec, "shuffle": {"field": "answers", "seed": 0}})
    other = text.load_text({**spec, "shuffle": {"field": "answers", "seed": 1}})
    assert text.documents(again) == control and text.documents(other) != control


@pytest.mark.parametrize("change,key,words", [
    ({"shuffle": {"field": "nothing"}}, "text.shuffle.field", "no row of the text's files"),
    ({"shuffle": {"field": "answers"}, "template": None}, "text.shuffle", "templated text"),
])
def test_a_shuffle_that_would_change_nothing_is_refused(tmp_path, change, key, words):
    jsonl(tmp_path / "qa.jsonl", ROWS)
    spec = {"source": "files", "paths": ["qa.jsonl"], "template": TEMPLATE, **change}
    config = {**copy.deepcopy(SMOKE), "text": {k: v for k, v in spec.items() if v is not None}}
    with pytest.raises(ConfigError) as err:
        load_config(config, base_dir=tmp_path)
    assert err.value.key == key and words in str(err.value), str(err.value)


def test_decontamination_drops_what_holds_a_question_and_keeps_the_rest():
    probes = [{"question": "Question: What is the capital of Nigeria?", "subject": "Nigeria",
               "choices": ["Plymouth", "Abuja", "Juba", "Dodoma"], "gold": 1}]
    passage = {"query": "the quick brown fox jumps over the lazy dog near the river bank at dawn"}
    clean = text.Contamination([*probes, passage])
    body = "\n\n".join([
        "Abuja became the capital of Nigeria in 1991.",                 # the probe's fact
        "Nigeria is a country in West Africa with many cities.",        # its subject only
        "Abuja is a planned city.",                                     # its answer only
        "so the quick brown fox jumps over the lazy dog near the river bank at dawn again",
        "The fox and the dog are friends."])
    kept, dropped = clean.clean(body)
    assert [why for _, why in dropped] == [
        "fact: nigeria -> abuja",
        "13-gram: brown fox jumps over the lazy dog near the river bank at dawn"]
    assert text.documents(kept) == ["Nigeria is a country in West Africa with many cities.",
                                    "Abuja is a planned city.", "The fox and the dog are friends."]


def test_a_text_without_blank_lines_is_cleaned_line_by_line():
    """WikiText's raw files hold a paragraph a line and no blank line: each line is a document
    (as one document, one fact anywhere dropped the whole text)."""
    probes = [{"subject": "Nigeria", "choices": ["Plymouth", "Abuja"], "gold": 1}]
    body = " = Lagos = \n Abuja is the capital of Nigeria .\n Lagos is a port .\n"
    kept, dropped = text.Contamination(probes).clean(body)
    assert kept == " = Lagos = \n Lagos is a port ." and len(dropped) == 1


@pytest.mark.parametrize("change,key,words", [
    ({"template": "{{ question.__class__ }}"}, "text.template", "may not read attribute"),
    ({"template": "{{ missing_field }}"}, "text.template", "does not render every row"),
    ({"template": "{{ cycler }}"}, "text.template", "Jinja's globals"),
    ({"paths": ["bad.jsonl"]}, "text.paths", "line 2: not a JSON object"),
])
def test_a_templated_text_is_checked_before_work(tmp_path, change, key, words):
    jsonl(tmp_path / "qa.jsonl", ROWS)
    (tmp_path / "bad.jsonl").write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    config = {**copy.deepcopy(SMOKE), "text": {"source": "files", "paths": ["qa.jsonl"],
                                               "template": TEMPLATE, **change}}
    with pytest.raises(ConfigError) as err:
        load_config(config, base_dir=tmp_path)
    assert err.value.key == key and words in str(err.value), str(err.value)


def test_an_entry_trains_on_its_own_text(tmp_path):
    jsonl(tmp_path / "qa.jsonl", ROWS)
    own = {"source": "files", "paths": ["qa.jsonl"], "template": TEMPLATE}
    config = {**copy.deepcopy(SMOKE), "recovery": [
        {"method": "none"}, {"method": "lora", "r": 2},
        {"method": "lora", "r": 2, "name": "lora-qa", "text": own}]}
    config = load_config(config, base_dir=tmp_path)
    jobs = Jobs(config)
    grid, qa = (jobs.train_inputs("tiny-llama", "dense", t) for t in ("lora-r2", "lora-qa"))
    assert grid["text"].endswith("data/recovery_text.txt") and "texts" not in grid
    assert len(qa["texts"]) == 1 and qa["texts"][0] != grid["text"]
    curated = {"method": "idp", "pool_size": 2, "num_virtual_tokens": 4, "scheme": "curated",
               "texts": [own, own], "text": own}
    with pytest.raises(ConfigError, match=r"recovery\[1\].text.*as `texts`"):
        load_config({**copy.deepcopy(SMOKE), "recovery": [{"method": "none"}, curated]},
                    base_dir=tmp_path)


def test_the_download_step_drops_the_grids_questions_from_the_text(tmp_path):
    """The real download step on the smoke grid's probes: a text holding the fact of one of
    them loses that row, and its manifest says why."""
    config = load_config(copy.deepcopy(SMOKE))
    probe = next(d for d in _probe_documents(config) if d["subject"] == d["subject"].strip())
    fact = {"question": f"Tell me about {probe['subject']}.",
            "answers": [probe["choices"][probe["gold"]]]}
    path = jsonl(tmp_path / "qa.jsonl", [*ROWS, fact])
    workdir = tmp_path / "grid"
    workdir.mkdir()
    cfg = smoke_config(workdir, text={"source": "files", "paths": [path], "template": TEMPLATE,
                                      "decontaminate": True})
    target = "results/smoke/data/recovery_text.txt"
    snakemake(workdir, cfg, "--cores", "1", target)  # after an option: --configfile takes all
    body = (workdir / target).read_text()
    assert len(text.documents(body)) == len(ROWS) and probe["subject"] not in body
    manifest = json.loads((workdir / "results/smoke/data/recovery_text.manifest.json").read_text())
    assert manifest["decontamination"]["dropped"] == 1
    assert manifest["decontamination"]["examples"][0]["why"].startswith("fact: ")


def _probe_documents(config):
    from knowledge_recovery.evaluation.tasks import make_probes

    task = config["tasks"][0]
    return [d for rel in task["relations"]
            for d in make_probes(rel, task["per_relation"], task["num_choices"], config["seed"])]
