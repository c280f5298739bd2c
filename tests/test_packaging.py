"""The configs live in the top-level configs/ folder and ship inside the wheel as lifted_cli.configs:
a wheel built from the tree holds every YAML file, and the installed package runs outside the repo."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_the_configs_and_runs_outside_the_repository(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("lifted_cli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"lifted_cli/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert expected and expected <= names
    assert {"lifted_cli/cli.py", "lifted_cli/commands/train.py", "lifted_cli/lifted/solvers.py"} <= names
    # install the wheel alone (its dependencies are this environment's) and run it from an empty folder
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    code = "import sys, lifted_cli; assert lifted_cli.__file__.startswith(sys.argv[1]), lifted_cli.__file__; " \
           "from lifted_cli.cli import main; sys.exit(main(['train', '--cfg', 'job', 'scheme=mac']))"
    proc = subprocess.run([sys.executable, "-c", code, str(site)], cwd=elsewhere, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "name: mac" in proc.stdout and "command: train" in proc.stdout
    assert not any(elsewhere.iterdir())


def import_graph() -> dict:
    """Module -> the lifted_cli modules it imports (at module level or inside functions); the root
    package is left out (it loads the Python API lazily)."""
    import ast

    package = ROOT / "lifted_cli"
    modules = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = (here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else [])
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t not in (name, "lifted_cli")}
    return graph


def test_no_two_modules_import_each_other():
    graph = import_graph()

    def reaches(a, b):
        seen, todo = set(), [a]
        while todo:
            x = todo.pop()
            if x == b:
                return True
            if x not in seen:
                seen.add(x)
                todo.extend(graph[x])
        return False

    def inside(a, b):  # a package and its own modules
        return a.startswith(b + ".") or b.startswith(a + ".")

    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if not inside(a, b) and reaches(b, a)})
    assert not cycles, f"import cycles: {cycles}"
    assert "lifted_cli.parallel" in graph["lifted_cli.commands.train"]  # the graph sees imports


def test_every_config_folder_is_a_listed_package():
    """setuptools warns (a screenful per folder) about data folders absent from ``packages``: a new
    config group must be added to pyproject.toml."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(("lifted_cli", *p.relative_to(ROOT).parts)) for p in (ROOT / "configs").rglob("*")
               if p.is_dir() and p.name != "__pycache__"}
    assert folders <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(folders - listed)}"
