#!/usr/bin/env bash
# Prove the plugin kit the way an outsider uses it: a fresh virtualenv, lightningd-py
# installed from source (not editable), each example plugin installed as its own
# package, and each example's own tests run with that virtualenv's pytest.
#
# usage: scripts/test_examples.sh [PROJECT_DIR] [EXAMPLE_DIR ...]
#   PROJECT_DIR  the lightningd-py source tree to install (default: this repository)
#   EXAMPLE_DIR  example packages to test (default: every examples/*/pyproject.toml)
# Environment: PYTHON (default python3), KEEP_VENV=1 keeps the virtualenv for inspection.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
project="$(cd "${1:-$here}" && pwd)"
shift $(( $# > 0 ? 1 : 0 ))
examples=("$@")
if [ ${#examples[@]} -eq 0 ]; then
    for pyproject in "$project"/examples/*/pyproject.toml; do
        [ -e "$pyproject" ] && examples+=("$(dirname "$pyproject")")
    done
fi
if [ ${#examples[@]} -eq 0 ]; then
    echo "test_examples: no example packages under $project/examples" >&2
    exit 1
fi

python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/ldp-examples.XXXXXX")"
cleanup() {
    if [ "${KEEP_VENV:-0}" = 1 ]; then
        echo "test_examples: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

echo "test_examples: fresh virtualenv in $work/venv"
"$python" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
"$venv_python" -m pip install --quiet --upgrade pip
# Builds run on copies, so nothing is written into the source trees (build/, egg-info).
copy() {
    mkdir -p "$2"
    tar -C "$1" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=build \
        --exclude=__pycache__ -cf - . | tar -C "$2" -xf -
}
copy "$project" "$work/src/lightningd-py"
echo "test_examples: installing lightningd-py from $project"
"$venv_python" -m pip install --quiet "$work/src/lightningd-py"

status=0
for example in "${examples[@]}"; do
    example="$(cd "$example" && pwd)"
    name="$(basename "$example")"
    echo "test_examples: installing $name with its test extra"
    copy "$example" "$work/src/$name"
    "$venv_python" -m pip install --quiet "$work/src/$name[test]"
    echo "test_examples: running $name's tests"
    # From a directory holding only its tests, so they import the installed package.
    mkdir -p "$work/run/$name"
    cp -R "$example/tests" "$example/pyproject.toml" "$work/run/$name/"
    if ! (cd "$work/run/$name" && "$work/venv/bin/pytest" -q -p no:cacheprovider); then
        echo "test_examples: $name FAILED" >&2
        status=1
    fi
done
exit $status
