"""CTest's entry to the package's pytest suite (python/CMakeLists.txt, test_python): exits 77 (CTest's
skip) when this Python has no torch or no pytest; else runs pytest on this folder."""

import os
import sys

sys.dont_write_bytecode = True
try:
    import torch  # noqa: F401
except ImportError as e:
    print("SKIP: %s has no torch (%s): apt-get install python3-torch" % (sys.executable, e))
    sys.exit(77)
try:
    import pytest
except ImportError as e:
    print("SKIP: %s has no pytest (%s): apt-get install python3-pytest" % (sys.executable, e))
    sys.exit(77)

sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", os.path.dirname(os.path.abspath(__file__))] + sys.argv[1:]))
