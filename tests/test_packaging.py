"""The configs ship inside the package: a wheel built from the tree holds every YAML file."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_configs(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("lifted_cli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"lifted_cli/{p.relative_to(ROOT / 'lifted_cli')}" for p in (ROOT / "lifted_cli" / "configs").rglob("*.yaml")}
    assert expected and expected <= names
    assert "lifted_cli/cli.py" in names
