#!/usr/bin/env bash
# Put promtool (Prometheus' rule checker) into the folder $1: a promtool on PATH is linked; else the binary is
# taken out of Debian's `prometheus` package (apt-get download: nothing is installed system-wide, no Prometheus
# server starts). The package lists must be there: as root this runs `apt-get update` once when they are not.
set -euo pipefail
dest="$1"
if found="$(command -v promtool)"; then
  ln -sf "$found" "$dest/promtool"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "get-promtool: no promtool on PATH and no apt-get: install Prometheus' promtool by hand" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "setup: fetching promtool from Debian's prometheus package into $dest"
cd "$tmp"
if ! apt-get download prometheus >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "get-promtool: apt-get download prometheus failed (run apt-get update as root)" >&2; exit 1; }
  apt-get update -qq
  apt-get download prometheus >/dev/null 2>&1
fi
dpkg-deb -x prometheus_*.deb extracted
cd - >/dev/null
install -m 0755 "$tmp/extracted/usr/bin/promtool" "$dest/promtool"
"$dest/promtool" --version | head -1
