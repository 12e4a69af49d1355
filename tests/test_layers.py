"""The layers of ``bench/layers.py`` are true: one package per layer holding exactly the declared modules, no
module imports from a layer above its own (lazy imports inside functions included), ``methods/`` imports
nothing from ``bench``, and the README's layout is the declaration's rendering."""
import ast
from pathlib import Path

from bench.layers import LAYERS, TOP, layer_of, layout

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FILES = {"__init__", "__main__"}
TOP_FILES = {"__init__", "layers", *TOP}  # bench/__init__.py holds constants, layers.py this declaration


def bench_imports(path: Path) -> set[str]:
    """The layers (or top modules) a file imports from, by their name under ``bench``
    (``bench.data.tasks.base`` -> data; ``from bench import CONF_DIR`` -> CONF_DIR)."""
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


def layer_and_module(path: Path) -> tuple[str, str]:
    """bench/train/trainer.py -> (train, trainer); bench/data/tasks/base.py -> (data, tasks); bench/cli.py -> (cli, cli)."""
    rel = path.relative_to(REPO / "bench")
    if len(rel.parts) == 1:
        return rel.stem, rel.stem
    return rel.parts[0], rel.parts[1] if len(rel.parts) > 2 else rel.stem


def test_every_layer_is_a_package_of_its_declared_modules():
    present: dict[str, set[str]] = {}
    for path in (REPO / "bench").rglob("*.py"):
        layer, module = layer_and_module(path)
        present.setdefault(layer, set()).add(module)
    top = {layer for layer, modules in present.items() if modules == {layer}}
    assert top == TOP_FILES, "bench/ holds a module outside the layer packages"
    for name, _, modules in LAYERS:
        assert len(modules) == len(set(modules)), name
        assert present.pop(name) - PACKAGE_FILES == set(modules), f"bench/{name}/ differs from its declaration"
    assert set(present) == TOP_FILES


def test_no_import_runs_up_the_layers():
    layer, names = layer_of(), [name for name, _, _ in LAYERS] + list(TOP)
    wrong = []
    for path in sorted((REPO / "bench").rglob("*.py")):
        here, _ = layer_and_module(path)
        for dep in bench_imports(path) - {here}:
            assert dep != "<relative>", f"{path}: use absolute bench imports"
            if dep in layer and here in layer and layer[dep] > layer[here]:
                wrong.append(f"{path.relative_to(REPO)} ({names[layer[here]]}) imports bench.{dep} "
                             f"({names[layer[dep]]})")
    assert not wrong, "imports against the declared layers:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    upward = tmp_path / "x.py"
    upward.write_text("def f():\n    from bench.job.pipeline import load_model\n    import bench.report.build\n"
                      "from bench import CONF_DIR, eval\n")
    assert bench_imports(upward) == {"job", "report", "CONF_DIR", "eval"}
    assert layer_of()["job"] > layer_of()["eval"]  # what evaluate did before load_model moved to model/


def test_methods_import_nothing_from_bench():
    for path in (REPO / "methods").rglob("*.py"):
        assert not bench_imports(path), f"{path} imports from bench"


def test_readme_layout_is_the_declaration():
    assert layout() in (REPO / "README.md").read_text()
