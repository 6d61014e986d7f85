#!/usr/bin/env bash
# tests/support/test_layers.sh: the headers' layering holds (scripts/check-layers on include/cgrpo),
# and the check can fail: a copy of the tree with one upward include and one cpu -> cuda include
# must be refused, naming both.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
"$root/scripts/check-layers" "$root/include/cgrpo"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$root/include/cgrpo" "$work/cgrpo"
echo '#include "cgrpo/loss/config.hpp"' >> "$work/cgrpo/base/status.hpp"
echo '#include "cgrpo/cuda/workspace.cuh"' >> "$work/cgrpo/cpu/row_sweeps.hpp"
if out="$("$root/scripts/check-layers" "$work/cgrpo" 2>&1)"; then
  echo "test_layers: an upward include was not caught"; exit 1
fi
for needle in "base/status.hpp (layer base)" "cpu/row_sweeps.hpp (layer cpu)"; do
  case "$out" in *"$needle"*) ;; *) echo "test_layers: missing \"$needle\" in: $out"; exit 1;; esac
done
echo "test_layers: the layering holds, and an upward include is refused"
