#!/bin/sh
# Make sure PostgreSQL's server binaries (initdb, pg_ctl, postgres) are on this
# machine: the test suite starts its own throwaway clusters with them.
# Installs Debian's postgresql package when they are missing (needs root).
set -eu
if command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "PostgreSQL server binaries are missing and installing them needs root:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y postgresql" >&2
    exit 1
fi
echo "installing PostgreSQL (Debian package postgresql) for the test suite"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
# The package may start a system cluster; the tests do not use it.
if command -v pg_ctlcluster >/dev/null 2>&1; then
    for cluster in $(pg_lsclusters -h 2>/dev/null | awk '{print $1 "/" $2}'); do
        pg_ctlcluster "${cluster%/*}" "${cluster#*/}" stop 2>/dev/null || true
    done
fi
