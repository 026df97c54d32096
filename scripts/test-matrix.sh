#!/bin/sh
# Run the unit tests on every Python 3.10+ interpreter this machine has
# (under pyenv, or python3.X on PATH), each in its own venv (.venv-3.X).
set -u
status=0
found=0
for version in 3.10 3.11 3.12 3.13; do
    interpreter=""
    for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python 2>/dev/null | sort -V | tail -n 1) \
                     $(command -v "python$version" 2>/dev/null); do
        # pyenv shims exist for versions that are not selected: check it runs.
        if "$candidate" -c 'import sys' >/dev/null 2>&1; then interpreter=$candidate; break; fi
    done
    [ -n "$interpreter" ] || { echo "python$version: not found, skipped"; continue; }
    found=$((found + 1))
    venv=".venv-$version"
    echo "== python$version ($interpreter)"
    # (Re)install when the venv is new or pyproject.toml changed since, as the Makefile does for .venv.
    if [ ! -f "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ]; then
        "$interpreter" -m venv "$venv" && "$venv/bin/python" -m pip install -q -e '.[test]' && touch "$venv/.installed" || { status=1; continue; }
    fi
    "$venv/bin/python" -m pytest -q -m "not integration" -p no:cacheprovider || status=1
done
[ "$found" -gt 0 ] || { echo "no Python 3.10+ interpreter found"; exit 1; }
exit $status
