"""The one-way imports (.importlinter), checked as CI checks them, and shown to catch a wrong import."""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("mdr_contract", "pipeline", "mdr_keras", "serving", "mdr", "benchmarks")
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint_imports(root):
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--config", os.path.join(root, ".importlinter")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def house(tmp_path_factory):
    """A copy of the packages' sources and the contracts, to plant imports in."""
    if not os.path.exists(LINT_IMPORTS):
        pytest.skip(f"{LINT_IMPORTS} not installed (pip install -e '.[test]')")
    root = str(tmp_path_factory.mktemp("house"))
    shutil.copy(os.path.join(REPO, ".importlinter"), root)
    for package in PACKAGES:
        shutil.copytree(os.path.join(REPO, package), os.path.join(root, package),
                        ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_house_keeps_its_contracts(house):
    done = lint_imports(house)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("importer, imported, contract", [
    ("mdr_keras", "from mdr import cli", "mdr_keras is not allowed to import mdr"),
    ("mdr_keras", "from pipeline import sources", "mdr_keras is not allowed to import pipeline"),
    ("pipeline", "from mdr_keras import data", "pipeline is not allowed to import mdr_keras"),
    ("serving", "from pipeline import preprocess", "serving is not allowed to import pipeline"),
    ("mdr_contract", "import apache_beam", "mdr_contract is not allowed to import apache_beam"),
])
def test_a_wrong_import_fails_naming_both_modules(house, importer, imported, contract):
    planted = os.path.join(house, importer, "_planted.py")
    with open(planted, "w") as f:
        f.write(imported + "\n")
    try:
        done = lint_imports(house)
    finally:
        os.remove(planted)
    assert done.returncode != 0
    assert contract in done.stdout and f"{importer}._planted ->" in done.stdout, done.stdout[-3000:]
