#!/usr/bin/env bash
# Renders the diagrams in docs/diagrams/*.dot into images/*.png with Graphviz
# (installed with apt-get when run as root and missing). Run it after editing
# a .dot file and commit both: it records each source's hash in
# images/diagrams.sha256, which scripts/test.sh checks, so a source edited
# without a new picture fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh
ensure_apt_package dot graphviz

for src in docs/diagrams/*.dot; do
    out="images/$(basename "${src%.dot}").png"
    dot -Tpng -Gdpi=110 "$src" -o "$out"
    echo "$src -> $out"
done
sha256sum docs/diagrams/*.dot >images/diagrams.sha256
