#!/bin/sh
# The Python interpreter `make` builds .venv with: the newest supported CPython that actually runs.
#
#   tools/find_python.sh            -> the newest of 3.13, 3.12, 3.11 that runs (path on stdout)
#   tools/find_python.sh 3.12       -> that version only (CI picks each version this way)
#
# A candidate counts only if running it works and reports the version asked for, with the venv module
# and ensurepip (`python -m venv` needs both; some distributions ship them apart): pyenv's shims
# `python3.12`/`python3.13` are on the PATH but answer "command not found" unless that version is
# selected, so presence on the PATH proves nothing. For each version, in order: `python3.X` on the PATH,
# then pyenv's installs ($PYENV_ROOT or `pyenv root`, versions/3.X.*/bin/python3.X, newest patch first).
# Prints the interpreter's own path (a shim resolved), or nothing and exits 1 when none runs.
set -u
SUPPORTED="3.13 3.12 3.11"

found() {  # found CANDIDATE VERSION: print the interpreter's own path (not a shim's) if it runs as VERSION
    [ -n "$1" ] || return 1
    "$1" -c "import sys, venv, ensurepip
if sys.version_info[:2] != tuple(map(int, '$2'.split('.'))): sys.exit(1)
print(sys.executable)" 2>/dev/null
}

pyenv_root=${PYENV_ROOT:-}
if [ -z "$pyenv_root" ] && command -v pyenv >/dev/null 2>&1; then
    pyenv_root=$(pyenv root 2>/dev/null || true)
fi

case " $SUPPORTED " in
    *" ${1:-3.13} "*) ;;
    *) echo "find_python.sh: Python $1 is not supported here (supported: $SUPPORTED)" >&2; exit 2 ;;
esac

for version in ${1:-$SUPPORTED}; do
    on_path=$(command -v "python$version" 2>/dev/null || true)
    found "$on_path" "$version" && exit 0
    if [ -n "$pyenv_root" ] && [ -d "$pyenv_root/versions" ]; then
        # newest patch first: 3.13.10 before 3.13.9
        # shellcheck disable=SC2012  # version directory names are plain (3.13.1)
        for name in $(cd "$pyenv_root/versions" && ls -d "$version".* 2>/dev/null | sort -t. -k3,3nr); do
            candidate="$pyenv_root/versions/$name/bin/python$version"
            found "$candidate" "$version" && exit 0
        done
    fi
done
exit 1
