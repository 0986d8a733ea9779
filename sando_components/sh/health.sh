# shellcheck shell=sh
# health EXPECT: GET HEALTH_URL until a 2xx answer whose JSON `version` field is EXPECT (or whose
# `commit` field is COMMIT, the pinned commit; EXPECT '' = any 2xx), or until HEALTH_TIMEOUT
# seconds passed. Reports `health ok BODY` or `health fail LAST-ERROR`; sets $last.
# A freshly started app usually answers within a few tenths of a second: the first waits are
# HEALTH_WAITS (fast), then every HEALTH_INTERVAL seconds.
# While it waits it watches the unit (SERVICE): a unit that failed, exited, or was restarted by
# systemd since `unit_mark` (its NRestarts grew) ends the wait at once, reported as
# `crashed STATE` with the unit's journal since the restart (`journal LINE`, the last few).
# With CADDY_URL (sando:healthCheck.caddyUrl: the site through Caddy, as users reach it), a passing
# app is healthy only once that URL answers 2xx too; else $last says `through Caddy URL: HTTP CODE`.
# params: HEALTH_URL HEALTH_TIMEOUT HEALTH_WAITS HEALTH_INTERVAL COMMIT SERVICE CADDY_URL

# json_field NAME TEXT: in _jf, the value of the first "NAME": "value" of the JSON TEXT (a nested
# one later is not it; '' when there is none); no fork (a health check's body is small)
json_field() {
  _jf='' _jr=$2
  while :; do
    case $_jr in *"\"$1\""*) ;; *) return 0 ;; esac
    _jr=${_jr#*"\"$1\""}
    _jt=$_jr
    while :; do case $_jt in [[:blank:]]*) _jt=${_jt#?} ;; *) break ;; esac; done
    case $_jt in :*) _jt=${_jt#:} ;; *) continue ;; esac
    while :; do case $_jt in [[:blank:]]*) _jt=${_jt#?} ;; *) break ;; esac; done
    case $_jt in \"*) _jt=${_jt#\"} ;; *) continue ;; esac
    case ${_jt%%"
"*} in *\"*) _jf=${_jt%%\"*} && return 0 ;; esac
  done
}

_mark_since='' # set by unit_mark
_mark_restarts=0

# unit_show: the unit's NRestarts, ActiveState and SubState in _u_NRestarts, _u_ActiveState and
# _u_SubState ('' when systemd does not say, or says something that is not a plain word)
unit_show() {
  _u_NRestarts='' _u_ActiveState='' _u_SubState=''
  _us=$(systemctl show -p NRestarts -p ActiveState -p SubState "$SERVICE" 2>/dev/null) || :
  while IFS= read -r _ul; do
    case ${_ul#*=} in '' | *[!A-Za-z0-9-]*) continue ;; esac
    case $_ul in
      NRestarts=*) _u_NRestarts=${_ul#*=} ;;
      ActiveState=*) _u_ActiveState=${_ul#*=} ;;
      SubState=*) _u_SubState=${_ul#*=} ;;
    esac
  done <<END
$_us
END
}

# unit_mark: remember where the unit stands right before a restart (its restart count, the time)
unit_mark() {
  unit_show
  _mark_restarts=${_u_NRestarts:-0}
  _mark_since=$(date +%s)
}

# unit_crashed: whether the unit failed, exited or was restarted by systemd since unit_mark;
# reports `crashed ...` and the unit's last journal lines since then
unit_crashed() {
  unit_show
  case $_u_ActiveState/$_u_SubState in
    failed/* | inactive/* | */auto-restart) ;;
    *) [ "${_u_NRestarts:-0}" -gt "${_mark_restarts:-0}" ] 2>/dev/null || return 1 ;;
  esac
  _k=$((${_u_NRestarts:-0} - ${_mark_restarts:-0}))
  last="exited at start ($SERVICE.service $_u_ActiveState/$_u_SubState, restarted $_k times by systemd)"
  report crashed "$_u_ActiveState/$_u_SubState $_k"
  # The service's own lines reach journald over its stdout stream, which journald may read after
  # PID 1's "Main process exited" (before systemd 256 `--sync` does not wait for streams), later
  # still on a loaded host: give them up to 3 s to show (a service that printed nothing costs that).
  _jw=0
  while [ "$_jw" -lt 30 ]; do
    journalctl --sync 2>/dev/null
    [ -n "$(journalctl "_SYSTEMD_UNIT=$SERVICE.service" --since "@${_mark_since:-0}" -n 1 -q --no-pager -o cat 2>/dev/null)" ] && break
    sleep 0.1
    _jw=$((_jw + 1))
  done
  journalctl -u "$SERVICE" --since "@${_mark_since:-0}" -n 5 --no-pager -o cat 2>/dev/null |
    cut -c 1-200 | while IFS= read -r _line; do report journal "$_line"; done
  return 0
}

# through_caddy: whether CADDY_URL (when set) answers 2xx; else sets $last to what it answered
through_caddy() {
  [ -n "$CADDY_URL" ] || return 0
  _ce=$(mktemp) || return 1
  _cc=$(curl -sS --max-time 3 -o /dev/null -w '%{http_code}' "$CADDY_URL" 2>"$_ce") || :
  _cw=$(tr '\n' ' ' <"$_ce" | head -c 200 | sed 's/ *$//')
  rm -f -- "$_ce"
  case $_cc in 2??) return 0 ;; esac
  last="through Caddy $CADDY_URL: HTTP ${_cc:-000}${_cw:+ ($_cw)}"
  return 1
}

health() {
  if [ -z "$_mark_since" ]; then unit_mark; fi # not restarted by this run: watch from now on
  _end=$(($(date +%s) + HEALTH_TIMEOUT))
  _n=0
  while :; do
    if _body=$(curl -fsS --max-time 3 "$HEALTH_URL" 2>&1); then
      json_field version "$_body"
      _v=$_jf
      json_field commit "$_body"
      _c=$_jf
      if [ -z "$1" ] || [ "$_v" = "$1" ] || [ "$_c" = "$COMMIT" ]; then
        if through_caddy; then
          clip 300 "$_body"
          # shellcheck disable=SC2154  # set by clip (lib.sh)
          report health "ok $_sando_c"
          return 0
        fi
      else
        last="serves version '$_v', not '$1'"
      fi
    else
      last=$(printf '%s' "$_body" | tail -n 1 | head -c 300)
    fi
    if unit_crashed; then
      report health "fail $last"
      return 1
    fi
    if [ "$(date +%s)" -ge "$_end" ]; then
      report health "fail $last"
      return 1
    fi
    _n=$((_n + 1))
    _w=$HEALTH_INTERVAL
    _i=0
    for _f in $HEALTH_WAITS; do
      _i=$((_i + 1))
      if [ "$_i" = "$_n" ]; then _w=$_f; fi
    done
    sleep "$_w"
  done
}
