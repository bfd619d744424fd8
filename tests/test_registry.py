"""The registries are the one home of each method: the schema is generated from their settings
and the shipped file agrees, every method has what the workflow needs, the settings' defaults
fill entries as they always did, and the package's import graph has no cycle."""
import ast
import copy
from pathlib import Path

import pytest
import yaml

import knowledge_recovery
from knowledge_recovery.pipeline import grid, schema
from knowledge_recovery.pipeline.config import validate_schema
from knowledge_recovery.evaluation.tasks import RELATIONS
from knowledge_recovery.recovery.entries import RecoverySettings, TrainedSettings
from knowledge_recovery.registry import STATISTICS, compression_methods, recovery_methods

SCHEMA = yaml.safe_load(schema.SCHEMA_PATH.read_text())
PACKAGE = Path(knowledge_recovery.__file__).parent


def item(section):
    return SCHEMA["properties"][section]["items"]


def test_the_shipped_schema_is_the_generated_one():
    """Its method parts are the methods' settings, as `python -m
    knowledge_recovery.pipeline.schema` writes them (run it after changing a method)."""
    text = schema.SCHEMA_PATH.read_text()
    assert schema.render(text) == text
    assert schema.schema() == SCHEMA


def test_schema_methods_and_settings_are_the_registrys():
    for section, methods in (("compression", compression_methods()),
                             ("recovery", recovery_methods())):
        assert item(section)["properties"]["method"]["enum"] == sorted(methods)
        settings = set().union(*(m.setting_names for m in methods.values()))
        assert set(item(section)["properties"]) == settings | {"method"}
    quantizers = [m for m in compression_methods().values() if m.family == "quantization"]
    assert SCHEMA["$defs"]["quantization"]["properties"]["method"]["enum"] == sorted(
        m.name for m in quantizers)
    for m in compression_methods().values():
        assert m.family in ("none", "pruning", "quantization") and m.statistic in STATISTICS
    for m in recovery_methods().values():
        assert set(m.eval_only) <= m.setting_names
        assert issubclass(m.settings, TrainedSettings if m.trains else RecoverySettings)
        if m.trains:
            assert m.save and m.load and (m.fit_setting in m.setting_names
                                          or m.fit_setting == "method")


def test_a_setting_with_two_schemas_is_refused(monkeypatch):
    from dataclasses import dataclass

    from knowledge_recovery.recovery.entries import TrainedSettings
    from knowledge_recovery.registry import RecoveryMethod, setting

    @dataclass(frozen=True, kw_only=True)
    class Clash(TrainedSettings):
        r: str = setting("x", help="not lora's rank")

    methods = {**recovery_methods(), "clash": RecoveryMethod(name="clash", settings=Clash)}
    monkeypatch.setattr(schema, "recovery_methods", lambda: methods)
    with pytest.raises(TypeError, match="setting 'r' of method '(clash|dora)'.*method "
                                        "'(clash|dora)''s has") as err:
        schema.method_parts()
    assert "'clash'" in str(err.value) and "'dora'" in str(err.value)


# Entries as the schema fills them, in order: specs like these decide what re-runs, so a results
# folder made before the settings were typed re-runs nothing (its specs had these keys, in this
# order; pruning and quantization entries carry their family's settings).
FILLED = [
    ({"method": "rtn", "bits": 4}, {"method": "rtn", "bits": 4, "group_size": 128,
     "symmetric": False, "damping": 0.01, "act_order": False, "true_sequential": False}),
    ({"method": "magnitude", "sparsity": 0.5}, {"method": "magnitude", "sparsity": 0.5,
     "damping": 0.01, "true_sequential": False}),
    ({"method": "sparsegpt", "pattern": "2:4", "quantize": {"method": "gptq", "bits": 3}},
     {"method": "sparsegpt", "pattern": "2:4", "quantize": {
         "method": "gptq", "bits": 3, "group_size": 128, "symmetric": False, "damping": 0.01,
         "act_order": False}, "damping": 0.01, "true_sequential": False}),
    ({"method": "lora", "r": 8}, {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05,
                                  "target_modules": ["q_proj", "v_proj"]}),
    ({"method": "idp", "num_virtual_tokens": 10, "pool_size": 4},
     {"method": "idp", "num_virtual_tokens": 10, "pool_size": 4, "score_layers": [0, 1],
      "scheme": "routed", "layout": "independent", "balance_weight": 1.0,
      "capacity_factor": 1.0, "selection": "router", "select_on": "context",
      "router_blocks": 64}),
]


@pytest.mark.parametrize("given, filled", FILLED, ids=[g["method"] for g, _ in FILLED])
def test_defaults_fill_entries_as_before(given, filled):
    section = "recovery" if given["method"] in recovery_methods() else "compression"
    config = {"models": [{"name": "t", "source": "tiny-random"}],
              "tasks": [{"name": "p", "type": "probes"}], section: [copy.deepcopy(given)]}
    entry = validate_schema(config)[section][0]
    assert list(entry.items()) == list(filled.items())
    if section == "compression":
        assert list(grid.compression_spec(entry)) == list(filled)


def test_probe_relations_are_the_tasks_modules():
    relations = item("tasks")["properties"]["relations"]["items"]["enum"]
    default = item("tasks")["allOf"][0]["then"]["properties"]["relations"]["default"]
    assert relations == default == list(RELATIONS)


def imports_of(path: Path) -> set[str]:
    """knowledge_recovery modules a file imports, anywhere in it (lazy imports count too)."""
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.startswith("knowledge_recovery"):
                for alias in node.names:  # `from . import x`: x may be a module
                    sub = f"{base}.{alias.name}"
                    found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                              or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("knowledge_recovery")}
    found.discard(name)
    return found


def test_the_import_graph_has_no_cycle():
    graph = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"):
             imports_of(p) for p in PACKAGE.rglob("*.py")}
    state = {}

    def visit(node, stack):
        if state.get(node) == "done":
            return
        if state.get(node) == "open":
            pytest.fail("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, stack + [node])
        state[node] = "done"

    assert len(graph) > 10
    for node in sorted(graph):
        visit(node, [])
