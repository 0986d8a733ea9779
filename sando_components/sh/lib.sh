# shellcheck shell=sh
# shellcheck disable=SC2154  # the P_* node paths are set before the library (scripts.py)
# sando's node-side library, put before every step script by scripts.py (with outcomes.sh, the
# node paths P_* and the step's parameters as shell variables). Every step runs under `set -u`
# and `umask 077`: whatever it writes is private to root unless the step sets a mode on purpose.

# _sando_clean TEXT: TEXT as a JSON string's content: newlines, tabs and other control characters
# become spaces (or go), quotes and backslashes are escaped.
_sando_clean() {
  case $1 in
    *[\"\\]* | *[![:print:]]*)
      printf '%s' "$1" | tr '\n\r\t' '   ' | tr -d '\000-\037\177' | sed 's/\\/\\\\/g; s/"/\\"/g'
      ;;
    *) printf '%s' "$1" ;;
  esac
}

# _sando_esc TEXT: _sando_clean's result in _sando_v, without a subshell when TEXT is printable
# (most values; a release's manifest has quotes only): a node read makes ~30 reports, and a
# subshell and a pipeline each cost the read ~1-5 ms of the node's forks
_sando_esc() {
  case $1 in
    *[![:print:]]*) _sando_v=$(_sando_clean "$1") ;;
    *[\"\\]*)
      _sando_r=$1 _sando_v=
      while :; do
        case $_sando_r in
          *[\"\\]*)
            _sando_p=${_sando_r%%[\"\\]*}
            _sando_r=${_sando_r#"$_sando_p"}
            _sando_v=$_sando_v$_sando_p\\${_sando_r%"${_sando_r#?}"}
            _sando_r=${_sando_r#?}
            ;;
          *) break ;;
        esac
      done
      _sando_v=$_sando_v$_sando_r
      ;;
    *) _sando_v=$1 ;;
  esac
}

# report KEY VALUE...: tell sando something, as one JSON object on one line of stdout:
#   {"@":"KEY","v":"VALUE"}
# KEY is [a-z0-9-]+; VALUE is any text (the words joined by spaces, cleaned by _sando_clean).
# scripts.py reads these lines (Report.parse); any other output is not part of the report.
report() {
  _sando_k=$1
  shift
  _sando_esc "$*"
  printf '{"@":"%s","v":"%s"}\n' "$_sando_k" "$_sando_v"
}

# report_named KEY NAME VALUE...: a value about one of several things (e.g. one release's
# manifest): {"@":"KEY","v":"NAME<tab>VALUE"}. Both are cleaned, so the one tab is where NAME
# ends (Report.named).
report_named() {
  _sando_k=$1
  _sando_esc "$2"
  _sando_nv=$_sando_v
  shift 2
  _sando_esc "$*"
  printf '{"@":"%s","v":"%s\\t%s"}\n' "$_sando_k" "$_sando_nv" "$_sando_v"
}

# fail CODE KEY VALUE...: report KEY VALUE, then exit with CODE (a name from outcomes.sh).
fail() {
  _sando_code=$1
  shift
  report "$@"
  exit "$_sando_code"
}

# --- releases (the cwd is the release root) ------------------------------------------------------

# _sando_one_line FILE: FILE's text in _sando_m, read without a subshell, when it is one line (a
# manifest is); fails otherwise (unreadable, empty, more lines: list_releases reads it with cat)
_sando_one_line() {
  _sando_m='' _sando_x=''
  { IFS= read -r _sando_m; IFS= read -r _sando_x && _sando_x=1; } 2>/dev/null <"$1" || true
  [ -n "$_sando_m" ] && [ -z "$_sando_x" ]
}

# _sando_first FILE: FILE's first line in _sando_f ('' when FILE is missing or unreadable), read
# without a fork (a one-line state file: `cat` costs an exec)
_sando_first() {
  _sando_f=''
  { IFS= read -r _sando_f || :; } 2>/dev/null <"$1" || :
}

# free_kib_of DIR: the free KiB on DIR's filesystem (df -P's 4th field) in _sando_free, df's own
# output in _sando_df; '' when df failed or printed no such number
free_kib_of() {
  _sando_free=''
  _sando_df=$(df -Pk -- "$1" 2>&1) || return 0
  case $_sando_df in *"
"*) ;; *) return 0 ;; esac
  _sando_df2=${_sando_df#*"
"}
  set -f
  # shellcheck disable=SC2086  # the second line's fields, split on blanks (globbing is off)
  set -- $_sando_df2
  set +f
  _sando_free=${4:-}
  case $_sando_free in '' | *[!0-9]*) _sando_free='' ;; esac
}

# env_database FILE: in _sando_db, the last DATABASE_PATH= of FILE (the unit's env file: a value in
# "..." or '...'; every quote removed), '' when FILE has none or cannot be read; no fork
env_database() {
  _sando_db=''
  {
    while IFS= read -r _sando_l || [ -n "$_sando_l" ]; do
      case $_sando_l in DATABASE_PATH=*) _sando_db=${_sando_l#DATABASE_PATH=} ;; esac
    done
  } 2>/dev/null <"$1" || :
  while :; do
    case $_sando_db in
      *[\"\']*) _sando_db=${_sando_db%%[\"\']*}${_sando_db#*[\"\']} ;;
      *) break ;;
    esac
  done
}

# sqlx_read DB TIMEOUT_MS ROWS_SQL: sqlx's migrations table of DB read with one sqlite3: whether it
# exists (_sando_has: 1 or 0, the first line) and, when it does, ROWS_SQL's rows (_sando_rows,
# columns joined by a space). After a 0 sqlite3's error is that of ROWS_SQL: there is no table to
# read. Fails (with sqlite3's error in _sando_err: the same run again, for it alone) when DB could
# not be read.
sqlx_read() {
  _sando_rows='' _sando_err=''
  set -- sqlite3 -readonly -separator ' ' "$1" ".timeout $2" \
    "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='_sqlx_migrations'" "$3"
  _sando_out=$("$@" 2>/dev/null)
  _sando_rc=$?
  _sando_has=${_sando_out%%"
"*}
  case $_sando_has/$_sando_rc in
    0/*) return 0 ;;
    1/0)
      _sando_rows=${_sando_out#1}
      _sando_rows=${_sando_rows#"
"}
      return 0
      ;;
  esac
  _sando_err=$("$@" 2>&1 >/dev/null)
  _sando_err=${_sando_err:-sqlite3 exited $_sando_rc}
  return 1
}

# clip N TEXT: TEXT's first N bytes in _sando_c (a fork only when TEXT is longer than N)
clip() {
  if [ "${#2}" -le "$1" ]; then _sando_c=$2; else _sando_c=$(printf '%s' "$2" | head -c "$1"); fi
}

# list_releases TAG: every directory under releases/: one sando made (TAGrelease NAME MANIFEST,
# then TAGfailed NAME when it failed here, and TAGfailed-why NAME EPOCH WHY; TAGunreadable NAME WHY when its manifest cannot be
# read), or one it did not make (TAGforeign NAME). Uploads in progress (staging) are skipped.
list_releases() {
  [ -d "$P_RELEASES" ] || return 0
  for _sando_d in "$P_RELEASES"/* "$P_RELEASES"/.[!.]*; do
    if [ ! -d "$_sando_d" ] || [ -L "$_sando_d" ]; then continue; fi
    _sando_n=${_sando_d#"$P_RELEASES"/}
    case $_sando_n in "$P_STAGING_PREFIX"*) continue ;; esac
    if [ ! -f "$_sando_d/$P_MANIFEST" ]; then
      report "${1}foreign" "$_sando_n"
    elif _sando_one_line "$_sando_d/$P_MANIFEST" || _sando_m=$(cat -- "$_sando_d/$P_MANIFEST" 2>&1); then
      report_named "${1}release" "$_sando_n" "$_sando_m"
      if [ -f "$_sando_d/$P_FAILED" ]; then
        report "${1}failed" "$_sando_n"
        # when it failed and why (the marker's time and first line): a preview says so (issue 19.7)
        report_named "${1}failed-why" "$_sando_n" "$(date -u -r "$_sando_d/$P_FAILED" +%s 2>/dev/null || echo 0)" \
          "$(head -n 1 -- "$_sando_d/$P_FAILED" 2>/dev/null | head -c 300)"
      fi
    else
      report_named "${1}unreadable" "$_sando_n" "$_sando_m"
    fi
  done
}

# switch_lock WAIT [ROOT]: one switch or restart at a time on this node: the switch lock of the
# release root ROOT (default: the working directory) on fd 9, held until the script ends; fails when
# another holder did not free it within WAIT seconds
switch_lock() {
  [ -d "${2:-.}/$P_MANIFEST_DIR" ] || mkdir -p "${2:-.}/$P_MANIFEST_DIR" || return 1
  { command exec 9>>"${2:-.}/$P_SWITCH_LOCK"; } 2>/dev/null || return 1 # `command`: a failed open returns
  flock -w "$1" 9
}

# relink LINK TARGET: point LINK at TARGET atomically (a new link, renamed over the old one)
relink() {
  if ! ln -sfn -- "$2" "$1.sando-tmp" || ! mv -T -- "$1.sando-tmp" "$1"; then
    rm -f -- "$1.sando-tmp"
    return 1
  fi
}

# mark_failed VERSION WHY: the release failed here (it is pruned first; the reason is kept).
mark_failed() {
  printf '%s\n' "$2" > "$P_RELEASES/$1/$P_FAILED" 2>/dev/null
  report failed "$1"
}

# live_instance SERVICE: the port of the blueGreen live instance SERVICE@PORT (the port in
# P_INSTANCE, relative to the release root: the working directory) when that unit exists; nothing
# when the plain unit is what runs (issue 23)
live_instance() {
  _sando_first "$P_INSTANCE"
  _sando_li=$_sando_f
  case $_sando_li in '' | *[!0-9]*) return 0 ;; esac
  if systemctl cat "$1@$_sando_li.service" >/dev/null 2>&1; then printf '%s' "$_sando_li"; fi
}

# on_port URL PORT: URL with its host:port replaced by 127.0.0.1:PORT (an instance's own port,
# bound to 127.0.0.1: sando:switch.bindHost's default)
on_port() {
  printf '%s' "$1" | sed "s|^\(https*://\)[^/]*|\1127.0.0.1:$2|"
}

# upstream_text SERVICE ADDR: the one Caddy file sando owns (blueGreen, issue 23): Caddy dials ADDR,
# the front (127.0.0.1 and the port of the service's own unit), which sando's nft rule points at
# the live instance (bluegreen.sh's bg_front), so a switch never reloads Caddy. No keep-alive to
# the app: each request dials anew, so a switch moves every new request at once.
upstream_text() {
  printf '# written by sando (sando:switch.strategy blueGreen): where Caddy sends %s requests.\n' "$1"
  printf '# The Caddyfile imports it; do not edit. %s is pointed at the live instance by sando\n' "$2"
  printf "# (nft table ip sando, loaded at boot by %s).\n" "$P_FRONT_UNIT"
  printf 'reverse_proxy %s {\n\ttransport http {\n\t\tkeepalive off\n\t}\n}\n' "$2"
}
