#!/bin/sh
# Make sure promtool is on this machine: the test suite checks the bundled
# Prometheus alert rules with `promtool check rules` and runs their unit tests
# with `promtool test rules`. Installs Debian's prometheus package (which ships
# promtool) when it is missing; needs root.
#
# The package also contains the Prometheus server, and its maintainer scripts
# would start it as a service. Nothing here needs a server, so a policy-rc.d
# that refuses every service start is in place for the duration of the
# install, recommended packages (node exporter, ...) are not installed, and
# the script checks afterwards that no prometheus process was left running.
set -eu
if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "promtool is missing and installing it needs root:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus" >&2
    exit 1
fi
echo "installing promtool (Debian package prometheus) for the test suite"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then
    saved="$(mktemp)"
    cp -p "$policy" "$saved"
fi
restore_policy() {
    if [ -n "$saved" ]; then
        mv "$saved" "$policy"
    else
        rm -f "$policy"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# installed by scripts/ensure-promtool.sh: start no service\nexit 101\n' >"$policy"
chmod 755 "$policy"
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1 || { echo "promtool is still missing after installing prometheus" >&2; exit 1; }
# Belt and braces: a service manager that ignores policy-rc.d may still have
# started the server. Stop it through the same manager, never by name.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus || true
    systemctl disable prometheus 2>/dev/null || true
elif [ -x /etc/init.d/prometheus ] && /etc/init.d/prometheus status >/dev/null 2>&1; then
    /etc/init.d/prometheus stop || true
fi
if [ -r /run/prometheus/prometheus.pid ]; then
    pid="$(cat /run/prometheus/prometheus.pid)"
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
fi
