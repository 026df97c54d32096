#!/bin/sh
# Run the database tests (tests/db: unit tests and the in-process PostgreSQL
# tests) against every SQLAlchemy series otel-render supports besides the one
# the main virtualenv has (2.1): 1.4 and 2.0, each in its own venv.
# Usage: sh scripts/test-sqlalchemy-versions.sh [pytest args]
set -u
python=${PYTHON:-python3}
status=0
for series in 1.4 2.0; do
    venv=".venv-sqlalchemy-$series"
    echo "== SQLAlchemy $series"
    if [ ! -f "$venv/.installed" ]; then
        "$python" -m venv "$venv" &&
            "$venv/bin/python" -m pip install -q -e '.[test]' "sqlalchemy~=$series.0" &&
            touch "$venv/.installed" || { status=1; continue; }
    fi
    "$venv/bin/python" -c 'import sqlalchemy; print("sqlalchemy", sqlalchemy.__version__)'
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/db "$@" || status=1
done
exit $status
