"""The layers of ``bench/layers.py`` are true: no module imports from a layer above its own (lazy imports
inside functions included), ``methods/`` imports nothing from ``bench``, every module is declared once,
and the README's layout is the declaration's rendering."""
import ast
from pathlib import Path

from bench.layers import LAYERS, layer_of, layout

REPO = Path(__file__).resolve().parents[1]
UNDECLARED = {"__init__", "layers"}  # the package's constants and this declaration import nothing


def bench_imports(path: Path) -> set[str]:
    """The ``bench`` modules a file imports, by their top name under ``bench`` (``bench.tasks.base`` -> tasks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] == "bench":
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.add("<relative>")
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bench.")}
    return found


def module_of(path: Path) -> str:
    rel = path.relative_to(REPO / "bench")
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_module_is_declared_once():
    declared = [m for _, _, modules in LAYERS for m in modules]
    assert len(declared) == len(set(declared))
    present = {module_of(p) for p in (REPO / "bench").rglob("*.py")} - UNDECLARED
    assert present == set(declared)


def test_no_import_runs_up_the_layers():
    layer, names = layer_of(), [name for name, _, _ in LAYERS]
    wrong = []
    for path in sorted((REPO / "bench").rglob("*.py")):
        here = module_of(path)
        for dep in bench_imports(path) - {here}:
            if dep in layer and here in layer and layer[dep] > layer[here]:
                wrong.append(f"{path.relative_to(REPO)} ({names[layer[here]]}) imports bench.{dep} "
                             f"({names[layer[dep]]})")
            assert dep != "<relative>", f"{path}: use absolute bench imports"
    assert not wrong, "imports against the declared layers:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    upward = tmp_path / "x.py"
    upward.write_text("def f():\n    from bench.pipeline import load_model\n    import bench.report\n"
                      "from bench import CONF_DIR, stats\n")
    assert bench_imports(upward) == {"pipeline", "report", "CONF_DIR", "stats"}
    assert layer_of()["pipeline"] > layer_of()["evaluate"]  # what evaluate did before load_model moved


def test_methods_import_nothing_from_bench():
    for path in (REPO / "methods").rglob("*.py"):
        assert not bench_imports(path), f"{path} imports from bench"


def test_readme_layout_is_the_declaration():
    assert layout() in (REPO / "README.md").read_text()
