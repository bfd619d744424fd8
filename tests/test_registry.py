"""The registries are the one home of each method: the schema agrees with them, every method
has what the workflow needs, and the package's import graph has no cycle."""
import ast
from pathlib import Path

import pytest
import yaml

import knowledge_recovery
from knowledge_recovery.compression import entries as compression
from knowledge_recovery.evaluation.tasks import RELATIONS
from knowledge_recovery.pipeline.config import SCHEMA_PATH
from knowledge_recovery.recovery import entries as recovery
from knowledge_recovery.registry import STATISTICS, compression_methods, recovery_methods

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
PACKAGE = Path(knowledge_recovery.__file__).parent


def item(section):
    return SCHEMA["properties"][section]["items"]


def test_schema_compression_methods_and_settings_are_the_registrys():
    methods = compression_methods()
    schema = item("compression")
    assert set(schema["properties"]["method"]["enum"]) == set(methods)
    quantizers = {m.name for m in methods.values() if m.family == "quantization"}
    assert set(SCHEMA["$defs"]["quantization"]["properties"]["method"]["enum"]) == quantizers
    settings = set().union(*(m.settings for m in methods.values())) | compression.COMMON_SETTINGS
    assert set(schema["properties"]) == settings
    # the quantize sub-entry takes what quantization methods take
    sub = set(SCHEMA["$defs"]["quantization"]["properties"]) - {"method"}
    assert sub == set().union(*(methods[q].settings for q in quantizers)) - {"true_sequential"}
    for m in methods.values():
        assert m.family in ("none", "pruning", "quantization") and m.statistic in STATISTICS


def test_schema_recovery_methods_and_settings_are_the_registrys():
    methods = recovery_methods()
    schema = item("recovery")
    assert set(schema["properties"]["method"]["enum"]) == set(methods)
    settings = (set().union(*(m.settings for m in methods.values()))
                | recovery.COMMON_SETTINGS | recovery.TRAINED_SETTINGS)
    assert set(schema["properties"]) == settings
    for m in methods.values():
        assert set(m.eval_only) <= m.settings
        if m.trains:
            assert m.save and m.load and (m.fit_setting in m.settings or m.fit_setting == "method")


def test_schema_defaults_name_only_settings_of_their_methods():
    """What the schema requires or fills for a group of methods is a setting of that group
    (family-wide defaults, such as damping for every pruning method, predate the registry and
    stay, so that results folders made before it re-run nothing; a method ignores the ones it
    does not read)."""
    for section, methods in (("compression", compression_methods()),
                             ("recovery", recovery_methods())):
        for rule in item(section).get("allOf", []):
            names = rule["if"]["properties"]["method"]
            names = names.get("enum") or [names["const"]]
            given = set(rule["then"].get("properties", {})) | set(rule["then"].get("required", []))
            takes = set().union(*(methods[n].settings for n in names))
            assert given <= takes, (names, given - takes)


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
