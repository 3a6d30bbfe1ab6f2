"""No import circles: every mocbench module imports first, on its own, in a fresh interpreter state, and
no module hides a circle behind ``typing.TYPE_CHECKING``."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import mocbench

ROOT = Path(mocbench.__file__).resolve().parent
# Optional dependencies: a module that needs one is skipped when it is absent (never a circle).
OPTIONAL = ("diffusers", "submitit", "triton", "transformers")


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(ROOT)], prefix="mocbench."))


def test_every_module_imports_first_without_a_circle():
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {_modules()!r}:\n"
        "    for m in [m for m in sys.modules if m == 'mocbench' or m.startswith('mocbench.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        f"        if (exc.name or '').split('.')[0] not in {OPTIONAL!r}:\n"
        "            failed.append(f'{name}: {exc}')\n"
        "    except ImportError as exc:\n"
        "        failed.append(f'{name}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_no_module_imports_under_type_checking():
    hidden = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if "TYPE_CHECKING" in p.read_text()]
    assert hidden == [], f"imports hidden behind TYPE_CHECKING (a circle in disguise): {hidden}"


def test_the_module_list_is_not_empty():
    assert len(_modules()) > 50 and importlib.import_module("mocbench.anchors")
