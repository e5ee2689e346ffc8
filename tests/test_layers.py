"""The house's import contracts (pyproject.toml's [tool.importlinter]): ncssm_policies above
ncssm_env above ncssm_data, no physics or JAX in ncssm_data, no model library in ncssm_env,
and no import cycle between the modules of a package, lazy imports inside functions included.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    # In a child process: import-linter's console output outlives pytest's captured streams.
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 kept, 0 broken" in proc.stdout
