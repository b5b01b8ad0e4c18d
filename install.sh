#!/usr/bin/env bash
# sip4ai installer.
#
#   curl -sSL https://sip4ai.com/install.sh | bash                      install or upgrade
#   curl -sSL https://sip4ai.com/install.sh | bash -s -- --uninstall    remove, keep config+data
#   curl -sSL https://sip4ai.com/install.sh | bash -s -- --purge        remove everything
#
# Linux (x86_64, arm64; glibc >= MIN_GLIBC): installs /usr/local/bin/sip4ai, a `sip4ai`
# system user, /etc/sip4ai/{config.json,sip4ai.env} (never overwritten), and the systemd
# unit sip4ai.service, which is enabled and (re)started when systemd runs.
# macOS (Intel, Apple Silicon; macOS >= MIN_MACOS): installs /usr/local/bin/sip4ai only.
# Needs root for the system paths: run as root, or it uses sudo for those steps.
#
# Environment (all optional):
#   SIP4AI_BASE_URL   where the release files live (default: DEFAULT_BASE_URL below)
#   SIP4AI_NO_START=1 install and enable, but do not (re)start the service
#   DESTDIR           install into this directory instead of / (packaging and tests):
#                     no sudo, no systemctl, user created with useradd --root if the
#                     directory has an etc/passwd
#
# Files expected under SIP4AI_BASE_URL (the release workflow publishes them):
#   sip4ai-<os>-<arch>   the one-file binary (os: linux|macos, arch: x86_64|arm64)
#   sip4ai.service       systemd unit; sip4ai.env, config.json: examples for /etc/sip4ai
#   SHA256SUMS           "<sha256>  <file>" for each of them
# Nothing on the system changes before every file is downloaded and its checksum verified,
# and the new binary has run (--version, check-config). The SHA256SUMS file comes from the
# same server, so it protects against corrupt and truncated downloads, not against a
# compromised server.
#
# Everything is inside main(), called on the last line: a download cut short by the
# network runs nothing.

set -euo pipefail

DEFAULT_BASE_URL="https://sip4ai.com/releases/latest"
# The binary bundles libpython and libstdc++ from the build host (Debian 12), so it needs
# that host's glibc or newer. Measured: libstdc++.so.6 needs GLIBC_2.36.
MIN_GLIBC="2.36"
# baresip-python's macOS wheels are tagged macosx_15_0 (x86_64 and arm64).
MIN_MACOS="15.0"

NAME="sip4ai"
BIN_DIR="/usr/local/bin"
ETC_DIR="/etc/sip4ai"
STATE_DIR="/var/lib/sip4ai"
CACHE_DIR="/var/cache/sip4ai"
UNIT_DIR="/etc/systemd/system"
UNIT="sip4ai.service"

ROOT=""          # DESTDIR without a trailing slash
USE_SUDO=0
ACTION="install"
PURGE=0
WORK=""
STAGED=""
CREATED_DIRS=()

log() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

usage() {
  cat <<'EOF'
usage: install.sh [--uninstall [--purge] | --purge | --help]
  (no option)   install sip4ai, or upgrade it in place and restart the service
  --uninstall   stop and remove the service and binary; keep /etc/sip4ai, the data
                in /var/lib/sip4ai and the sip4ai user
  --purge       uninstall and also delete the config, the data and the user
EOF
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --uninstall) ACTION="uninstall" ;;
      --purge)
        ACTION="uninstall"
        PURGE=1
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        usage >&2
        die "unknown option: $1"
        ;;
    esac
    shift
  done
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "missing required command: $1"
}

# Run a command that changes the system: directly as root or under DESTDIR, else via sudo.
as_root() {
  if [ "$USE_SUDO" = 1 ]; then
    sudo "$@"
  else
    "$@"
  fi
}

setup_privileges() {
  ROOT="${DESTDIR:-}"
  ROOT="${ROOT%/}"
  if [ -n "$ROOT" ] || [ "$(id -u)" -eq 0 ]; then
    USE_SUDO=0
  elif command -v sudo >/dev/null 2>&1; then
    USE_SUDO=1
    log "not running as root: using sudo for the system paths"
  else
    die "run as root (curl -sSL <url>/install.sh | sudo bash): sudo is not available"
  fi
}

# version_ge A B: true if dotted version A >= B (numeric fields; bash 3.2 compatible).
version_ge() {
  local -a a b
  local i x y n
  IFS=. read -r -a a <<<"$1"
  IFS=. read -r -a b <<<"$2"
  n=${#a[@]}
  [ "${#b[@]}" -gt "$n" ] && n=${#b[@]}
  for ((i = 0; i < n; i++)); do
    x="${a[i]:-0}"
    y="${b[i]:-0}"
    x="${x%%[!0-9]*}"
    y="${y%%[!0-9]*}"
    x=$((10#${x:-0}))
    y=$((10#${y:-0}))
    [ "$x" -gt "$y" ] && return 0
    [ "$x" -lt "$y" ] && return 1
  done
  return 0
}

detect_platform() {
  local os arch
  os="$(uname -s)"
  arch="$(uname -m)"
  case "$os" in
    Linux) OS_TAG="linux" ;;
    Darwin) OS_TAG="macos" ;;
    *) die "unsupported operating system: $os (sip4ai runs on Linux and macOS)" ;;
  esac
  case "$arch" in
    x86_64 | amd64) ARCH="x86_64" ;;
    aarch64 | arm64) ARCH="arm64" ;;
    *) die "unsupported architecture: $arch (sip4ai is built for x86_64 and arm64)" ;;
  esac
  if [ "$OS_TAG" = "linux" ]; then
    local glibc
    glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null || true)"
    glibc="${glibc#glibc }"
    if [ -z "$glibc" ]; then
      case "$(ldd --version 2>&1 || true)" in
        *musl*) die "musl libc (e.g. Alpine) is not supported: sip4ai needs glibc >= $MIN_GLIBC" ;;
      esac
      die "cannot determine the glibc version (getconf GNU_LIBC_VERSION): need glibc >= $MIN_GLIBC"
    fi
    version_ge "$glibc" "$MIN_GLIBC" ||
      die "glibc $glibc is too old: sip4ai needs glibc >= $MIN_GLIBC (e.g. Debian 12, Ubuntu 24.04, Fedora 37)"
    log "platform: Linux $ARCH, glibc $glibc"
  else
    local macos
    macos="$(sw_vers -productVersion 2>/dev/null || true)"
    [ -n "$macos" ] || die "cannot determine the macOS version (sw_vers)"
    version_ge "$macos" "$MIN_MACOS" ||
      die "macOS $macos is too old: sip4ai needs macOS >= $MIN_MACOS"
    # An x86_64 shell under Rosetta on Apple Silicon: install the native binary.
    if [ "$ARCH" = "x86_64" ] && [ "$(sysctl -n sysctl.proc_translated 2>/dev/null || echo 0)" = 1 ]; then
      ARCH="arm64"
    fi
    log "platform: macOS $macos $ARCH"
  fi
  ASSET="sip4ai-$OS_TAG-$ARCH"
}

fetch() { # fetch URL DEST
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 2 --proto '=https,http' -o "$2" "$1" || die "download failed: $1"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$2" "$1" || die "download failed: $1"
  else
    die "need curl or wget to download"
  fi
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | awk '{print $1}'
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | awk '{print $1}'
  else
    die "need sha256sum or shasum"
  fi
}

# Download every file the install needs and check each against SHA256SUMS, before any change.
download_release() {
  local base="$1" file expected actual
  FILES=("$ASSET")
  if [ "$OS_TAG" = "linux" ]; then
    FILES+=("$UNIT" "sip4ai.env" "config.json")
  fi
  log "downloading $ASSET from $base"
  fetch "$base/SHA256SUMS" "$WORK/SHA256SUMS"
  for file in "${FILES[@]}"; do
    fetch "$base/$file" "$WORK/$file"
  done
  for file in "${FILES[@]}"; do
    expected="$(awk -v f="$file" '$2 == f || $2 == "*" f { print $1 }' "$WORK/SHA256SUMS")"
    case "$expected" in
      "" | *[!0-9a-f]*) die "checksum verification failed: no entry for $file in SHA256SUMS" ;;
    esac
    [ "${#expected}" -eq 64 ] || die "checksum verification failed: bad entry for $file in SHA256SUMS"
    actual="$(sha256_of "$WORK/$file")"
    [ "$actual" = "$expected" ] ||
      die "checksum verification failed for $file (expected $expected, got $actual): nothing was changed"
  done
  log "sha256 verified: ${FILES[*]}"
}

make_dir() { # make_dir MODE DIR: create DIR and missing parents, recording them for rollback
  local mode="$1" dir="$2" missing=()
  while [ -n "$dir" ] && [ "$dir" != "/" ] && [ ! -d "$dir" ]; do
    missing=("$dir" ${missing[@]+"${missing[@]}"})
    dir="$(dirname "$dir")"
  done
  for dir in ${missing[@]+"${missing[@]}"}; do
    as_root install -d -m "$mode" "$dir"
    CREATED_DIRS+=("$dir")
  done
}

cleanup() { # on every exit: the download dir, and a staged binary that was not installed
  if [ -n "$STAGED" ]; then
    as_root rm -f "$STAGED" || true
  fi
  if [ -n "$WORK" ]; then
    rm -rf "$WORK"
  fi
}

rollback() {
  local i
  if [ -n "$STAGED" ]; then
    as_root rm -f "$STAGED"
  fi
  STAGED=""
  for ((i = ${#CREATED_DIRS[@]} - 1; i >= 0; i--)); do
    as_root rmdir "${CREATED_DIRS[i]}" 2>/dev/null || true
  done
  CREATED_DIRS=()
}

# The KEY=value lines of a systemd EnvironmentFile, for `env`. Quotes around a value are
# removed like systemd does; comments and blank lines are skipped.
env_file_args() {
  local line key value content
  ENV_ARGS=()
  [ -e "$1" ] || return 0
  content="$(as_root cat "$1")" # 0600 root: read through sudo when not root
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line#"${line%%[![:space:]]*}"}"
    case "$line" in "" | "#"* | ";"*) continue ;; esac
    case "$line" in *=*) ;; *) continue ;; esac
    key="${line%%=*}"
    value="${line#*=}"
    key="${key%"${key##*[![:space:]]}"}"
    case "$key" in "" | [0-9]* | *[!A-Za-z0-9_]*) continue ;; esac
    case "$value" in
      \"*\") value="${value#\"}" value="${value%\"}" ;;
      \'*\') value="${value#\'}" value="${value%\'}" ;;
    esac
    ENV_ARGS+=("$key=$value")
  done <<<"$content"
}

# Stage the new binary next to the old one and run it where the service will run it.
stage_and_check() {
  local bin_dir="$ROOT$BIN_DIR" out config env_file
  make_dir 0755 "$bin_dir"
  STAGED="$bin_dir/.sip4ai.new"
  as_root install -m 0755 "$WORK/$ASSET" "$STAGED"
  if [ "$OS_TAG" = "macos" ]; then
    out="$("$STAGED" --version 2>&1)" || {
      rollback
      die "the downloaded binary does not run on this Mac: $out"
    }
    NEW_VERSION="$out"
    return 0
  fi
  # The one-file binary unpacks itself into $TMPDIR on every start; /tmp may be noexec,
  # so test it in the directory the unit uses.
  make_dir 0755 "$ROOT/var/cache"
  make_dir 0750 "$ROOT$CACHE_DIR"
  out="$(as_root env TMPDIR="$ROOT$CACHE_DIR" "$STAGED" --version 2>&1)" || {
    rollback
    die "the downloaded binary does not run on this host: $out"
  }
  NEW_VERSION="$out"
  config="$ROOT$ETC_DIR/config.json"
  [ -e "$config" ] || config="$WORK/config.json"
  env_file="$ROOT$ETC_DIR/sip4ai.env"
  [ -e "$env_file" ] || env_file="$WORK/sip4ai.env"
  env_file_args "$env_file"
  out="$(as_root env -i PATH="/usr/sbin:/usr/bin:/sbin:/bin" TMPDIR="$ROOT$CACHE_DIR" \
    ${ENV_ARGS[@]+"${ENV_ARGS[@]}"} CONFIG_FILE="$config" "$STAGED" check-config 2>&1 >/dev/null)" || {
    rollback
    die "$NEW_VERSION rejects the configuration ($config), nothing was changed: $out"
  }
}

user_exists() {
  if [ -n "$ROOT" ]; then
    grep -q "^$NAME:" "$ROOT/etc/passwd" 2>/dev/null
  else
    getent passwd "$NAME" >/dev/null 2>&1
  fi
}

create_user() {
  if [ -n "$ROOT" ] && [ ! -e "$ROOT/etc/passwd" ]; then
    log "DESTDIR has no etc/passwd: not creating the $NAME user"
    return 0
  fi
  if user_exists; then
    return 0
  fi
  need useradd
  local -a opts=(--system --user-group --no-create-home --home-dir "$STATE_DIR" --shell /usr/sbin/nologin)
  if [ -n "$ROOT" ]; then
    opts+=(--root "$ROOT")
  fi
  as_root useradd "${opts[@]}" "$NAME"
  log "created system user $NAME"
}

group_id() { # numeric gid of the sip4ai group in the target root (works under DESTDIR)
  awk -F: -v n="$NAME" '$1 == n { print $3 }' "$ROOT/etc/group" 2>/dev/null || true
}

install_config() {
  local etc="$ROOT$ETC_DIR" gid
  gid="$(group_id)"
  make_dir 0755 "$ROOT/etc"
  make_dir 0750 "$etc"
  if [ -e "$etc/config.json" ]; then
    log "keeping existing $ETC_DIR/config.json"
  else
    as_root install -m 0640 "$WORK/config.json" "$etc/config.json"
    log "wrote $ETC_DIR/config.json (example: edit it)"
  fi
  if [ -e "$etc/sip4ai.env" ]; then
    log "keeping existing $ETC_DIR/sip4ai.env"
  else
    as_root install -m 0600 "$WORK/sip4ai.env" "$etc/sip4ai.env"
    log "wrote $ETC_DIR/sip4ai.env (SIP account and API keys go here)"
  fi
  # The service user reads the config; the env file (secrets) is for root/systemd only.
  if [ -n "$gid" ]; then
    as_root chown "0:$gid" "$etc" "$etc/config.json"
  fi
  as_root chown 0:0 "$etc/sip4ai.env"
  as_root chmod 0600 "$etc/sip4ai.env"
}

install_files() {
  local bin="$ROOT$BIN_DIR/sip4ai"
  if [ -x "$bin" ]; then
    OLD_VERSION="$(as_root env TMPDIR="$ROOT$CACHE_DIR" "$bin" --version 2>/dev/null || echo "unknown version")"
  else
    OLD_VERSION=""
  fi
  if [ "$OS_TAG" = "linux" ]; then
    make_dir 0755 "$ROOT$UNIT_DIR"
    as_root install -m 0644 "$WORK/$UNIT" "$ROOT$UNIT_DIR/$UNIT"
  fi
  # Atomic replace: a running service keeps the old inode until it restarts.
  as_root mv -f "$STAGED" "$bin"
  STAGED=""
  if [ -n "$OLD_VERSION" ]; then
    log "upgraded $OLD_VERSION -> $NEW_VERSION in $BIN_DIR/sip4ai"
  else
    log "installed $NEW_VERSION in $BIN_DIR/sip4ai"
  fi
}

systemd_running() {
  [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

start_service() {
  if [ -n "$ROOT" ]; then
    log "DESTDIR set: not touching systemd"
    return 0
  fi
  if ! systemd_running; then
    cat <<EOF
==> systemd is not running here, so the service was not started. Next steps:
    - edit $ETC_DIR/config.json and $ETC_DIR/sip4ai.env
    - on a systemd host: systemctl daemon-reload && systemctl enable --now $UNIT
    - or by hand (as root):
        install -d -o $NAME -g $NAME $STATE_DIR $CACHE_DIR
        set -a; . $ETC_DIR/sip4ai.env; set +a
        CONFIG_FILE=$ETC_DIR/config.json STATE_DIRECTORY=$STATE_DIR TMPDIR=$CACHE_DIR \\
          runuser -u $NAME -- $BIN_DIR/sip4ai
EOF
    return 0
  fi
  as_root systemctl daemon-reload
  as_root systemctl --quiet enable "$UNIT"
  if [ "${SIP4AI_NO_START:-0}" = 1 ]; then
    log "enabled $UNIT; start it with: systemctl start $UNIT"
    return 0
  fi
  log "restarting $UNIT"
  if ! as_root systemctl restart "$UNIT"; then
    as_root journalctl -u "$UNIT" -n 20 --no-pager >&2 || true
    die "$UNIT did not start (see above and: journalctl -u $UNIT)"
  fi
  log "$UNIT is $(systemctl is-active "$UNIT" 2>/dev/null || true)"
}

next_steps() {
  if [ "$OS_TAG" = "macos" ]; then
    cat <<EOF
==> sip4ai is installed: $BIN_DIR/sip4ai ($NEW_VERSION)
    Run it with your SIP account and an AI provider key, e.g.
      SIP_USERNAME=... SIP_PASSWORD=... SIP_DOMAIN=... SIP_SERVER=... OPENAI_API_KEY=... sip4ai
    sip4ai --help lists every setting.
EOF
  else
    cat <<EOF
==> sip4ai is installed: $BIN_DIR/sip4ai ($NEW_VERSION)
    config:  $ETC_DIR/config.json     secrets: $ETC_DIR/sip4ai.env (SIP account, API keys)
    check:   sip4ai --config $ETC_DIR/config.json check-config
    after editing: systemctl restart $UNIT;  logs: journalctl -u $UNIT -f
EOF
  fi
}

do_install() {
  need uname
  need awk
  need install
  need mktemp
  detect_platform
  local base="${SIP4AI_BASE_URL:-$DEFAULT_BASE_URL}"
  base="${base%/}"
  WORK="$(mktemp -d)"
  trap cleanup EXIT
  download_release "$base"
  stage_and_check
  if [ "$OS_TAG" = "linux" ]; then
    create_user
    install_config
  fi
  install_files
  if [ "$OS_TAG" = "linux" ]; then
    start_service
  fi
  next_steps
}

do_uninstall() {
  local etc="$ROOT$ETC_DIR"
  if systemd_running; then
    as_root systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
  fi
  as_root rm -f "$ROOT$UNIT_DIR/$UNIT" "$ROOT$BIN_DIR/sip4ai" "$ROOT$BIN_DIR/.sip4ai.new"
  as_root rm -rf "$ROOT$CACHE_DIR"
  if [ "$PURGE" = 1 ]; then
    as_root rm -rf "$ROOT$UNIT_DIR/$UNIT.d" "$etc" "$ROOT$STATE_DIR"
  fi
  if systemd_running; then
    as_root systemctl daemon-reload
    as_root systemctl reset-failed "$UNIT" >/dev/null 2>&1 || true
  fi
  if [ "$PURGE" = 1 ] && user_exists; then
    if [ -n "$ROOT" ]; then
      as_root userdel --root "$ROOT" "$NAME" || warn "could not delete the $NAME user"
    else
      as_root userdel "$NAME" || warn "could not delete the $NAME user"
    fi
    if grep -q "^$NAME:" "$ROOT/etc/group" 2>/dev/null; then
      if [ -n "$ROOT" ]; then
        as_root groupdel --root "$ROOT" "$NAME" 2>/dev/null || true
      else
        as_root groupdel "$NAME" 2>/dev/null || true
      fi
    fi
  fi
  log "removed $UNIT and $BIN_DIR/sip4ai"
  if [ "$PURGE" = 1 ]; then
    log "purged $ETC_DIR, $STATE_DIR and the $NAME user"
  else
    log "kept $ETC_DIR, the data in $STATE_DIR and the $NAME user (--purge deletes them)"
  fi
}

main() {
  parse_args "$@"
  setup_privileges
  if [ "$ACTION" = "uninstall" ]; then
    do_uninstall
  else
    do_install
  fi
}

main "$@"
