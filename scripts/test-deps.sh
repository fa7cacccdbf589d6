#!/usr/bin/env bash
# Installs the system tools the tests need (not npm packages), only those missing.
# As root it uses apt-get; otherwise it names what to install and fails.
set -euo pipefail

# command -> Debian package
declare -A need=( [ssh]=openssh-client [tar]=tar [curl]=curl [setsid]=util-linux [openssl]=openssl )
for extra in "$@"; do need[${extra%%=*}]=${extra#*=}; done

missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing system packages: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})" >&2
  exit 1
fi
