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
