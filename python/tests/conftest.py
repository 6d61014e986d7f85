"""Finds the built package for the tests: $CGRPO_PYTHON_DIR (the folder holding cgrpo/, as CTest sets
it), else a cgrpo already importable (PYTHONPATH), else <repo>/build/release/python (scripts/test's
build), else the first <repo>/build/*/python holding the op library."""

import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)  # golden.py, reference.py


def _has_package(d):
    return os.path.exists(os.path.join(d, "cgrpo", "__init__.py")) and os.path.exists(
        os.path.join(d, "cgrpo", "libcgrpo_ops.so"))


def _find():
    env = os.environ.get("CGRPO_PYTHON_DIR")
    if env:
        return env
    try:
        import importlib.util
        if importlib.util.find_spec("cgrpo") is not None:
            return None
    except (ImportError, ValueError):
        pass
    candidates = [os.path.join(REPO, "build", "release", "python")] + sorted(
        glob.glob(os.path.join(REPO, "build", "*", "python")))
    for d in candidates:
        if _has_package(d):
            return d
    raise RuntimeError("cgrpo tests: no built package found; build it (scripts/test, or cmake --build "
                       "build/release --target cgrpo_python) or set CGRPO_PYTHON_DIR to <build>/python")


_dir = _find()
if _dir:
    sys.path.insert(0, _dir)
