"""The package's layers hold their direction (src/knowledge_recovery/__init__.py): the pipeline
imports no torch, transformers or lm-eval at import time (every parse of the Snakefile imports
it); domain layers never import the pipeline or the command line; analysis reads what evaluation
and compression wrote and imports neither."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import knowledge_recovery

PACKAGE = Path(knowledge_recovery.__file__).parent
DOMAIN = ("models", "compression", "recovery", "evaluation", "analysis", "deployment", "tracking")
SHARED = ("errors", "registry", "artifacts", "text")  # top-level modules every layer may use
HEAVY = ("torch", "transformers", "lm_eval", "peft", "optimum", "openvino")


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def modules() -> dict[str, Path]:
    return {".".join(("knowledge_recovery",) + p.relative_to(PACKAGE).with_suffix("").parts)
            .removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}


def package_imports(path: Path) -> set[str]:
    """knowledge_recovery modules a file imports anywhere in it, lazy imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import (the package imports absolutely)"
            if (node.module or "").startswith("knowledge_recovery"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules()
                          else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("knowledge_recovery")}
    return found


def test_every_module_is_in_a_layer():
    for name in modules():
        layer = layer_of(name)
        assert layer in ("", "pipeline", "cli", *DOMAIN, *SHARED), name


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_go_down_the_layers(module):
    layer = layer_of(module)
    for imported in package_imports(modules()[module]):
        target = layer_of(imported)
        if layer in DOMAIN or layer in SHARED:
            assert target not in ("pipeline", "cli"), f"{module} imports {imported}"
        if layer == "analysis":
            assert target not in ("evaluation", "compression"), f"{module} imports {imported}"
        if layer in SHARED:
            assert target in SHARED, f"{module} (shared) imports {imported}"
        if layer != "cli":
            assert target != "cli", f"{module} imports {imported}"


def test_the_pipeline_imports_no_torch():
    """Importing every pipeline module, and reading every method's registry record (ids,
    settings, checks), loads none of the heavy libraries: parsing the Snakefile stays light."""
    pipeline = [m for m in modules() if layer_of(m) == "pipeline"]
    code = "\n".join([f"import {m}" for m in pipeline] + [
        "import sys",
        "from knowledge_recovery.registry import compression_methods, recovery_methods",
        "assert compression_methods() and recovery_methods()",
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
