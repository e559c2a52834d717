"""The package's layer contract (pyproject's `[tool.importlinter]`): api → engine → model, with the
shared constants at the bottom; `model/`, `audio/` and `text/` never import `engine/` or `api/`; inside
`text/normalize/`, the domain modules never import the rule table that orders them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the `serve_app` found in `package_parent`, with this repository's contracts."""
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))"
    )
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=package_parent, env=env, capture_output=True, text=True, check=False
    )


def test_the_package_keeps_its_layer_contracts() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_a_model_module_importing_the_engine_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "serve_app", tmp_path / "serve_app", ignore=shutil.ignore_patterns("__pycache__"))
    tiny = tmp_path / "serve_app" / "model" / "tiny.py"
    tiny.write_text(tiny.read_text() + "\n\ndef _late() -> None:\n    from serve_app.engine import loop  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "serve_app.model.tiny -> serve_app.engine.loop" in result.stdout


def test_a_normalization_domain_importing_the_rule_table_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "serve_app", tmp_path / "serve_app", ignore=shutil.ignore_patterns("__pycache__"))
    numbers = tmp_path / "serve_app" / "text" / "normalize" / "numbers.py"
    late = "\n\ndef _late() -> None:\n    from serve_app.text.normalize import rules  # noqa\n"
    numbers.write_text(numbers.read_text() + late)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "serve_app.text.normalize.numbers -> serve_app.text.normalize.rules" in result.stdout
