# shellcheck shell=sh
# history: who switched what, recorded on the node. The switch script calls
# `sando_history RESULT` right after a switch held (RESULT ok) or was switched back (RESULT
# "failed: ..."); it appends one JSON object per line to <releaseRoot>/$H_FILE (0600, the last
# $H_KEEP lines kept) and reports it (`report history LINE`, lib.sh):
#   {"at":"2026-12-04T07:55:02Z","version":"v5","commit":"<sha>","from":"v4","result":"ok",
#    "by":"alice@laptop","via":"sando rollback","warning":"sent 30s"}
# Parameters: H_FILE (relative to the release root, the script's cwd), H_VERSION, H_COMMIT,
# H_BY (user@host of the operator), H_VIA (pulumi up | sando promote | sando rollback | ...),
# H_NOW (1: the restart warning was skipped with --now), H_WARN_SECONDS (0: no warning
# configured), H_KEEP. Reads $live (what was live before, releases/<v>) and $code (the
# restart warning's HTTP status, set by its step) of the switch script. H_FILE empty: no history.
# params: H_FILE H_VERSION H_COMMIT H_BY H_VIA H_NOW H_WARN_SECONDS H_KEEP

# _sando_json TEXT: TEXT as a JSON string in _sando_j (lib.sh's _sando_esc: newlines and tabs become
# spaces, other control characters go, quotes and backslashes are escaped; no fork for printable
# text: a subshell and a pipeline per field cost a switch ~40 processes, ~0.25 s with 16 nodes on a host)
_sando_json() {
  _sando_esc "$1"
  # shellcheck disable=SC2154  # set by _sando_esc (lib.sh)
  _sando_j="\"$_sando_v\""
}

sando_history() {
  [ -n "$H_FILE" ] || return 0
  if [ "${H_NOW:-}" = 1 ]; then
    _h_warn="skipped (--now) by $H_BY"
  elif [ "${H_WARN_SECONDS:-0}" = 0 ]; then
    _h_warn="none configured"
  else
    case ${code:-} in
      2??) _h_warn="sent ${H_WARN_SECONDS}s" ;;
      '') _h_warn="not sent" ;;
      *) _h_warn="failed HTTP ${code:-}" ;;
    esac
  fi
  _h_from=${live:-}
  _sando_json "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  _h_line="{\"at\":$_sando_j"
  _sando_json "$H_VERSION"
  _h_line="$_h_line,\"version\":$_sando_j"
  _sando_json "$H_COMMIT"
  _h_line="$_h_line,\"commit\":$_sando_j"
  _sando_json "${_h_from##*/}"
  _h_line="$_h_line,\"from\":$_sando_j"
  _sando_json "$1"
  _h_line="$_h_line,\"result\":$_sando_j"
  _sando_json "$H_BY"
  _h_line="$_h_line,\"by\":$_sando_j"
  _sando_json "$H_VIA"
  _h_line="$_h_line,\"via\":$_sando_j"
  _sando_json "$_h_warn"
  _h_line="$_h_line,\"warning\":$_sando_j}"
  case $H_FILE in */*) [ -d "${H_FILE%/*}" ] || mkdir -p -- "${H_FILE%/*}" ;; esac
  (
    umask 077
    { tail -n "$((H_KEEP - 1))" "$H_FILE" 2>/dev/null; printf '%s\n' "$_h_line"; } > "$H_FILE.sando-tmp" &&
      chmod 600 "$H_FILE.sando-tmp" && mv -f "$H_FILE.sando-tmp" "$H_FILE"
  ) || report history-error "could not write $H_FILE"
  report history "$_h_line"
}
