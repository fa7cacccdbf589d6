#!/usr/bin/env bash
# Installs the system tools the tests need (not npm packages), only those missing.
# As root it uses apt-get; otherwise it names what to install and fails.
set -euo pipefail

# command -> Debian package. The confinement tools (bwrap, nsenter, setpriv,
# setsid, ip, nft) are what a sandbox needs on its host.
declare -A need=( [ssh]=openssh-client [tar]=tar [curl]=curl [setsid]=util-linux [nsenter]=util-linux
  [setpriv]=util-linux [bwrap]=bubblewrap [ip]=iproute2 [nft]=nftables [openssl]=openssl )
# path -> Debian package: what the tests run inside confined sandboxes, which see
# the host's /usr only (not PATH entries elsewhere).
declare -A need_path=( [/usr/bin/python3]=python3 [/usr/lib/openssh/sftp-server]=openssh-sftp-server
  [/usr/bin/bash]=bash )
for extra in "$@"; do need[${extra%%=*}]=${extra#*=}; done

missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
for path in "${!need_path[@]}"; do
  [ -x "$path" ] || missing+=("${need_path[$path]}")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
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
