#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages edgeloop needs, only when missing.
# Called by `make setup` (and so by `make demo`, `make test` and CI).
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }

have_cmd mosquitto || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
have_cmd mosquitto_pub || need+=(mosquitto-clients)
have_cmd pkg-config || need+=(pkg-config)
pkg-config --exists libsystemd 2>/dev/null || need+=(libsystemd-dev)
have_cmd gcc || need+=(gcc)
have_cmd git || need+=(git)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
py_inc=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$py_inc/Python.h" ] || need+=(python3-dev)
# Headless Chromium renders the demo report in a test.
have_cmd chromium || need+=(chromium)
have_cmd chromedriver || need+=(chromium-driver)
# The control database on PostgreSQL: the tests start Debian's server on a private port.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
have_cmd runuser || need+=(util-linux)
# A real Prometheus and node_exporter scrape the agent in a test.
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /usr/bin/prometheus-node-exporter ] || need+=(prometheus-node-exporter)
# The package tests (tests/system/): build the .debs (dpkg-deb, lintian), boot a
# Debian container under a real systemd (debootstrap, systemd-nspawn) and run the
# arm64 package under emulation (qemu-user-static, binfmt-support).
have_cmd dpkg-deb || need+=(dpkg)
have_cmd dpkg-architecture || need+=(dpkg-dev)
have_cmd lintian || need+=(lintian)
have_cmd fakeroot || need+=(fakeroot)
have_cmd debootstrap || need+=(debootstrap)
have_cmd systemd-nspawn || need+=(systemd-container)
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
have_cmd update-binfmts || need+=(binfmt-support)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "installing system packages: ${need[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif have_cmd sudo; then
  SUDO="sudo"
else
  echo "error: need root or sudo to install: ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
