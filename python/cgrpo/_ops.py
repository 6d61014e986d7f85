"""Loads the op library (libcgrpo_ops.so) and gives its ops as ``ops`` (``torch.ops.cgrpo``).

The library is looked up, in this order, at ``$CGRPO_OPS_LIBRARY`` (a path to the .so) and next to
this file (the package as the CMake build assembles it in ``<build>/python/cgrpo``).
"""

import os

import torch

LIBRARY_NAME = "libcgrpo_ops.so"


def library_path():
    """The path of the op library this package loads (or would load)."""
    env = os.environ.get("CGRPO_OPS_LIBRARY")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def _registered():
    try:
        torch.ops.cgrpo.presets  # noqa: B018 (raises when no library registered the op)
        return True
    except (AttributeError, RuntimeError):
        return False


def _load():
    if _registered():  # already loaded (the same library found through another path)
        return
    path = library_path()
    if not os.path.exists(path):
        raise ImportError(
            "cgrpo: the op library %s is missing. Build it with CMake (target cgrpo_python: "
            "scripts/test or cmake --build build/release --target cgrpo_python) and put <build>/python on "
            "PYTHONPATH, or set CGRPO_OPS_LIBRARY to the .so" % path
        )
    torch.ops.load_library(path)


_load()
ops = torch.ops.cgrpo
