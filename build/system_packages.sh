#!/usr/bin/env bash
# The system packages the tests need (build/system-packages.txt, or the list given; - reads it from
# stdin): nothing to do
# when all are installed; as root (CI) apt-get installs the missing ones; otherwise this stops at
# once and prints the one command that installs them.
set -euo pipefail
list="${1:-$(dirname "$0")/system-packages.txt}"
if [ "$list" = "-" ]; then text=$(cat); else text=$(cat "$list"); fi
packages=$(sed -e 's/#.*//' <<<"$text" | tr -s '[:space:]' ' ')
if ! command -v dpkg-query >/dev/null; then
  echo "error: the tests need the Debian packages:${packages}; this machine has no dpkg/apt (use Debian or Ubuntu)" >&2
  exit 1
fi
missing=()
for pkg in $packages; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo ">> installing the system packages the tests need: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
else
  echo "error: the tests need system packages that are not installed: ${missing[*]}" >&2
  echo "install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
