"""The house rules the test command enforces: the floors (import-linter's layers contract in
pyproject.toml) and ruff (checks and import order) with zero findings."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FLOORS = ("bookme", "webhooks", "notifications", "reconciliation", "escrow", "chain_events", "contracts", "common")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(cwd)},
    )


def test_every_floor_imports_only_the_floors_below_it():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("lower", "upper", "inside_a_function"), [
    ("chain_events", "escrow", True),
    ("escrow", "reconciliation", False),
    ("reconciliation", "bookme", True),
    ("notifications", "webhooks", False),
    ("escrow", "notifications", True),
    ("common", "chain_events", False),
])
def test_an_upward_import_breaks_the_contract(tmp_path, lower, upper, inside_a_function):
    for floor in FLOORS:
        shutil.copytree(ROOT / floor, tmp_path / floor, ignore=shutil.ignore_patterns("__pycache__", "build"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    probe = f"def probe():\n    import {upper}  # noqa\n" if inside_a_function else f"import {upper}  # noqa\n"
    (tmp_path / lower / "upward_probe.py").write_text(probe)
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{lower} is not allowed to import {upper}" in result.stdout


def test_ruff_finds_nothing():
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db
def test_the_models_need_no_migration_that_is_not_written():
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
