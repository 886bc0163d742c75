#!/usr/bin/env bash
# Install the rsync 3.2.7 client (Debian 12 package) beside the system rsync,
# for the interop tests: `apt-get download` + `dpkg -x`, nothing is installed
# over /usr/bin/rsync. Prints the binary's path on stdout (all else goes to
# stderr). Idempotent: does nothing when the binary is there and runs.
#
#   BACKUPD_CACHE      cache dir (default ~/.cache/backupd); the client lands
#                      in $BACKUPD_CACHE/rsync-3.2.7/usr/bin/rsync
#   RSYNC327_VERSION   Debian version to fetch (default 3.2.7-1+deb12u6; when
#                      the archive no longer has it, another 3.2.7-* is taken)
#
# The binary runs with the system's libraries: the script installs (apt) the
# shared libraries the package depends on when some are missing, then checks
# `ldd` and `rsync --version`.
set -euo pipefail

cache="${BACKUPD_CACHE:-$HOME/.cache/backupd}"
want="${RSYNC327_VERSION:-3.2.7-1+deb12u6}"
dest="$cache/rsync-3.2.7"
bin="$dest/usr/bin/rsync"
export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=300 --no-install-recommends)

log() { echo "get-rsync-327: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else log "needs root (or password-less sudo) for: $*"; return 1
  fi
}

# (output captured first: with pipefail, `| grep -q` can SIGPIPE the writer)
runs_as_327() { local v; v=$("$bin" --version 2>/dev/null) && [[ $v == "rsync  version 3.2.7 "* ]]; }

if [ -x "$bin" ] && runs_as_327; then
  echo "$bin"
  exit 0
fi

# 1. Download the .deb (apt's lists may be missing on a fresh machine).
mkdir -p "$cache/debs"
deb_dir=$(mktemp -d "$cache/debs/dl.XXXXXX")
tmp_dest=""
trap 'rm -rf "$deb_dir" ${tmp_dest:+"$tmp_dest"}' EXIT
download() { (cd "$deb_dir" && apt-get download -q "rsync=$1" >&2); }
pick_version() { apt-cache madison rsync | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep '^3\.2\.7-' | head -n1; }
if ! download "$want" 2>/dev/null; then
  log "rsync=$want not in apt's lists: running apt-get update"
  as_root apt-get update -q >&2
  if ! download "$want"; then
    other=$(pick_version || true)
    [ -n "$other" ] || { log "no rsync 3.2.7 package in the configured Debian archives"; exit 1; }
    log "rsync=$want is gone from the archive; taking rsync=$other instead"
    download "$other"
  fi
fi
deb=$(ls "$deb_dir"/rsync_*.deb)

# 2. Shared libraries it depends on (Depends: libacl1, liblz4-1, libpopt0,
#    libssl3, libxxhash0, libzstd1, zlib1g, ...): install the missing ones.
missing=()
for pkg in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/^ *//; s/[ (:].*//' | grep '^lib\|^zlib'); do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ $status == *"ok installed" ]] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing libraries: ${missing[*]}"
  as_root apt-get install "${APT_OPTS[@]}" "${missing[@]}" >&2 \
    || { as_root apt-get update -q >&2 && as_root apt-get install "${APT_OPTS[@]}" "${missing[@]}" >&2; }
fi

# 3. Extract into a fresh dir, check, then move into place (never half there).
tmp_dest=$(mktemp -d "$cache/rsync-3.2.7.tmp.XXXXXX")
dpkg -x "$deb" "$tmp_dest"
if ldd "$tmp_dest/usr/bin/rsync" | grep 'not found' >&2; then
  log "the extracted rsync misses the shared libraries above"; rm -rf "$tmp_dest"; exit 1
fi
rm -rf "$dest"
mv "$tmp_dest" "$dest"
runs_as_327 || { log "$bin does not run as rsync 3.2.7:"; "$bin" --version >&2 || true; exit 1; }
version=$("$bin" --version)
log "${version%%$'\n'*}"
echo "$bin"
