"""The layers of ``prefbench/layers.py`` are true: one package per layer holding exactly the declared modules, no
module imports from a layer above its own or from a module declared after it in its own layer (lazy imports
inside functions included, so no two modules import each other), ``prefbench/methods/`` imports nothing from
the rest of ``prefbench``, and the README's layout is the declaration's rendering."""
import ast
from pathlib import Path

from prefbench.layers import LAYERS, TOP, layer_of, layout

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "prefbench"
PACKAGE_FILES = {"__init__", "__main__"}
TOP_FILES = {"__init__", "layers", *TOP}  # prefbench/__init__.py holds constants, layers.py this declaration
ORDER = {**{(name, m): i for name, _, modules in LAYERS for i, m in enumerate(modules)},
         **{(name, m): len(modules) for name, _, modules in LAYERS for m in PACKAGE_FILES},  # a package's face
         **{(m, m): i for i, m in enumerate(TOP)}}


def imports(path: Path) -> set[tuple[str, str]]:
    """The (layer, module) pairs a file imports from prefbench: ``prefbench.data.tasks.base`` -> (data, tasks),
    ``from prefbench.eval import judges`` -> (eval, judges), ``from prefbench import CONF_DIR`` -> (CONF_DIR, ''),
    ``from prefbench.cli import x`` -> (cli, cli)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.add(("<relative>", ""))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "prefbench":
            parts = node.module.split(".")[1:]
            if not parts:
                found |= {(a.name, "") for a in node.names}
            elif len(parts) == 1:
                found |= {(parts[0], parts[0] if parts[0] in TOP else a.name) for a in node.names}
            else:
                found.add((parts[0], parts[1]))
        elif isinstance(node, ast.Import):
            found |= {tuple((a.name.split(".")[1:] + [""])[:2]) for a in node.names if a.name.startswith("prefbench.")}
    return found


def layer_and_module(path: Path, package: Path = PACKAGE) -> tuple[str, str]:
    """prefbench/train/trainer.py -> (train, trainer); prefbench/data/tasks/base.py -> (data, tasks);
    prefbench/cli.py -> (cli, cli)."""
    rel = path.relative_to(package)
    if len(rel.parts) == 1:
        return rel.stem, rel.stem
    return rel.parts[0], rel.parts[1] if len(rel.parts) > 2 else rel.stem


def engine_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "methods")


def test_every_layer_is_a_package_of_its_declared_modules():
    present: dict[str, set[str]] = {}
    for path in engine_files():
        layer, module = layer_and_module(path)
        present.setdefault(layer, set()).add(module)
    for name, _, modules in LAYERS:
        assert len(modules) == len(set(modules)), name
        assert present.pop(name) - PACKAGE_FILES == set(modules), f"prefbench/{name}/ differs from its declaration"
    assert set(present) == TOP_FILES, "prefbench/ holds a module outside the layer packages"


def wrong_imports(path: Path, package: Path = PACKAGE) -> list[str]:
    layer = layer_of()
    here = layer_and_module(path, package)
    wrong = []
    for dep in imports(path) - {here}:
        assert dep[0] != "<relative>", f"{path}: use absolute prefbench imports"
        if dep[0] not in layer or here[0] not in layer:
            continue
        upward = layer[dep[0]] > layer[here[0]]
        later = dep[0] == here[0] and ORDER.get(dep, -1) > ORDER.get(here, -1)
        if upward or later:
            wrong.append(f"{path.relative_to(package.parent)} imports prefbench.{'.'.join(dict.fromkeys(dep))}"
                         f" ({'a higher layer' if upward else 'a module declared after it in its layer'})")
    return wrong


def test_no_import_runs_up_the_layers_or_back_within_one():
    wrong = [line for path in engine_files() for line in wrong_imports(path)]
    assert not wrong, "imports against the declared layers:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import_and_a_cycle_within_a_layer(tmp_path):
    upward = tmp_path / "x.py"
    upward.write_text("def f():\n    from prefbench.job.pipeline import load_model\n    import prefbench.report.build\n"
                      "from prefbench import CONF_DIR\nfrom prefbench.eval import judges\n")
    assert imports(upward) == {("job", "pipeline"), ("report", "build"), ("CONF_DIR", ""), ("eval", "judges")}
    judge = PACKAGE / "eval" / "llm_judge.py"
    looped = tmp_path / "prefbench" / "eval" / "llm_judge.py"
    looped.parent.mkdir(parents=True)
    looped.write_text(judge.read_text() + "\ndef g():\n    from prefbench.eval.judges import GoldJudge\n")
    assert wrong_imports(judge) == []
    assert wrong_imports(looped, tmp_path / "prefbench") == [
        "prefbench/eval/llm_judge.py imports prefbench.eval.judges (a module declared after it in its layer)"]


def test_methods_import_nothing_from_the_engine():
    for path in (PACKAGE / "methods").rglob("*.py"):
        assert {layer for layer, _ in imports(path)} <= {"methods"}, f"{path} imports from the engine"


def test_readme_layout_is_the_declaration():
    assert layout() in (REPO / "README.md").read_text()
