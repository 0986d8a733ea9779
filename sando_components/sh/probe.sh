# shellcheck shell=sh
# The node read: what a node holds, read-only, in one round trip (providers/base.py parse_state).
# params: RELEASE_ROOT SERVICE DB_READ DB_PIN
# uses: db
#   DB_READ=1 (the migration gate is on): the database's applied migrations too (db.sh), so that
#   whether the database is ahead of a pin is known without another round trip (ahead.py); not when
#   `current` already is DB_PIN (the pin: nothing switches, so there is nothing to warn of)
#
# One function per section; each reports on its own and does not change the cwd of the others
# (a section that must, runs in a subshell). To read something more about a node, add a section
# and call it at the end.

# --- the service: is it running -------------------------------------------------------------------
# (one systemctl for both: its ActiveState, what `is-active` prints, and the env files it reads,
# kept in $svc_env_files for read_db)
svc_env_files=''
read_service() {
  _svc=$(systemctl show -p ActiveState -p EnvironmentFiles "$SERVICE.service" 2>/dev/null) || _svc=''
  _active=''
  while IFS= read -r _l; do
    case $_l in
      ActiveState=*) _active=${_l#ActiveState=} ;;
      EnvironmentFiles=*) [ -n "$svc_env_files" ] || svc_env_files=${_l#EnvironmentFiles=} ;;
    esac
  done <<END
$_svc
END
  report active "$_active"
}

# --- tools sando can use --------------------------------------------------------------------------
read_tools() {
  if command -v zstd >/dev/null 2>&1; then report zstd yes; else report zstd no; fi
  if command -v nft >/dev/null 2>&1; then report nft yes; else report nft no; fi # blueGreen's front
}

# --- what a binary needs of the node (issue 22.2): its machine and its C library ------------------
# arch: `uname -m`; glibc: `getconf GNU_LIBC_VERSION` ("glibc 2.36"), or "none" (musl, or no getconf)
read_platform() {
  report arch "$(uname -m 2>/dev/null)"
  _libc=$(getconf GNU_LIBC_VERSION 2>/dev/null) || _libc=
  report glibc "${_libc:-none}"
}

# --- the database (DB_READ=1): the migrations it has applied -----------------------------------
# the live unit's database: a blueGreen instance (its port in .sando/instance) has its own unit
read_db() {
  [ "$DB_READ" = 1 ] || return 0
  if [ -n "$DB_PIN" ]; then
    case ${current_link%/} in "$P_RELEASES/$DB_PIN" | */"$P_RELEASES/$DB_PIN") return 0 ;; esac
  fi
  _port=$(cd "$RELEASE_ROOT" 2>/dev/null && live_instance "$SERVICE")
  if [ -n "$_port" ]; then db_read "$SERVICE@$_port"; else db_read "$SERVICE" "$svc_env_files"; fi
}

# free_kib DIR: free KiB on DIR's filesystem, or fail naming what could not be read
free_kib() {
  free_kib_of "$1"
  # shellcheck disable=SC2154  # set by free_kib_of (lib.sh)
  [ -n "$_sando_free" ] || fail "$EX_UNREADABLE" unreadable "the free space under $1 (${_sando_df##*"
"})"
  report free "$_sando_free"
}

# --- the release root: links, releases, free space --------------------------------------------------
# A release root that does not exist is a node where nothing is deployed yet (the free space is
# measured where it will be made); one that exists but cannot be entered is an error.
read_releases() (
  if [ ! -e "$RELEASE_ROOT" ] && [ ! -L "$RELEASE_ROOT" ]; then
    report root missing
    _p=$(dirname -- "$RELEASE_ROOT")
    while [ ! -d "$_p" ]; do _p=$(dirname -- "$_p"); done
    free_kib "$_p"
    exit 0
  fi
  if [ ! -d "$RELEASE_ROOT" ]; then
    fail "$EX_UNREADABLE" unreadable "the release root $RELEASE_ROOT (not a directory)"
  fi
  _err=$(cd -- "$RELEASE_ROOT" 2>&1) || fail "$EX_UNREADABLE" unreadable "the release root $RELEASE_ROOT ($_err)"
  cd -- "$RELEASE_ROOT" || exit
  report root ok
  report current "$current_link"
  report previous "$(readlink "$P_PREVIOUS" 2>/dev/null)"
  # blueGreen: the live instance (its port) and whether it runs
  _sando_first "$P_INSTANCE"
  # shellcheck disable=SC2154  # set by _sando_first (lib.sh)
  _inst=$_sando_f
  case $_inst in
    '' | *[!0-9]*) ;;
    *) report instance "$_inst" "$(systemctl is-active "$SERVICE@$_inst" 2>/dev/null)" ;;
  esac
  if [ -d "$P_RELEASES" ]; then
    if [ ! -r "$P_RELEASES" ] || [ ! -x "$P_RELEASES" ]; then
      fail "$EX_UNREADABLE" unreadable "$RELEASE_ROOT/$P_RELEASES (not readable by $(id -un))"
    fi
    free_kib "$P_RELEASES"
  else
    free_kib .
  fi
  list_releases ""
)

current_link=$(readlink -- "$RELEASE_ROOT/$P_CURRENT" 2>/dev/null) # what `current` points at: read once
read_service
read_tools
read_platform
read_db
read_releases || exit
