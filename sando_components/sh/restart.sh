# shellcheck shell=sh
# shellcheck disable=SC2154,SC2034  # parameters are set by scripts.render; H_VERSION is read by history.sh
# restart (`sando restart`): the restart warning when one is configured (the bearer header is
# the first line of stdin: never argv), the notice waited out, `systemctl restart`, the health
# check; recorded in the node's switch history (sh/history.sh, result "restarted"). Parameters:
#   SERVICE, RELEASE_ROOT, HEALTH_URL, TIMEOUT (seconds for the health check), LOCK_WAIT (seconds to
#   wait for a switch or restart still at work on the node)
#   WARN_URL, WARN_SECONDS (0: no warning), plus history.sh's H_* (H_VERSION is read here)
# Reports: warning (sent EPOCH | failed ...), restart (RC DETAIL), health (ok BODY | fail ERROR),
# history. Exits EX_BUSY, EX_RESTART_NOTHING_LIVE, EX_RESTART_FAILED, EX_RESTART_UNHEALTHY.

IFS= read -r AUTH || AUTH=''
exec </dev/null
cd "$RELEASE_ROOT" || fail "$EX_RESTART_NOTHING_LIVE" error "no release root $RELEASE_ROOT"
[ -L "$P_CURRENT" ] || fail "$EX_RESTART_NOTHING_LIVE" error "no release is live"
# not while a switch (or another restart) is at work on the node: it waits LOCK_WAIT s for it, then
# reads what is live
switch_lock "$LOCK_WAIT" || fail "$EX_BUSY" busy "$RELEASE_ROOT/$P_SWITCH_LOCK"
live=$(readlink "$P_CURRENT" 2>/dev/null) || fail "$EX_RESTART_NOTHING_LIVE" error "no release is live"
# the commit of what is live now (its manifest), for the history: a switch the lock waited for may
# have changed it since the operator's read (H_COMMIT stays when the manifest names none)
_commit=$(sed -n 's/"files": *{[^}]*}//; s/.*"commit": *"\([^"]*\)".*/\1/p' "$live/$P_MANIFEST" 2>/dev/null)
# shellcheck disable=SC2034  # read by sando_history (history.sh)
if [ -n "$_commit" ]; then H_COMMIT=$_commit; fi
# shellcheck disable=SC2034  # read by sando_history (history.sh)
H_VERSION=${live##*/}
# blueGreen (issue 23): the live instance SERVICE@PORT (PORT in .sando/instance) is what runs, on its
# own port (bound to 127.0.0.1, sando:switch.bindHost's default): restarted and checked there
unit=$SERVICE
port=$(live_instance "$SERVICE")
if [ -n "$port" ]; then
  unit=$SERVICE@$port
  HEALTH_URL=$(on_port "$HEALTH_URL" "$port")
  WARN_URL=$(on_port "$WARN_URL" "$port")
fi
trap '' HUP PIPE # once the warning is out, a lost connection does not stop the restart halfway

code=''
if [ "$WARN_SECONDS" -gt 0 ] && [ -n "$AUTH" ]; then
  werr=$(mktemp)
  code=$(printf '%s\n' "$AUTH" | curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -X POST -H @- \
    -H 'Content-Type: application/json' --data "{\"seconds\": $WARN_SECONDS}" "$WARN_URL" 2>"$werr") || :
  AUTH=''
  case $code in
    2??)
      report warning "sent $(date +%s)"
      sleep "$WARN_SECONDS"
      ;;
    *)
      detail=$(head -c 200 "$werr")
      report warning "failed HTTP ${code:-000}${detail:+ $detail}" # no stray space without a detail
      ;;
  esac
  rm -f "$werr"
fi

systemctl reset-failed "$unit.service" 2>/dev/null
out=$(systemctl restart "$unit.service" 2>&1)
rc=$?
report restart "$rc $out"
if [ "$rc" != 0 ]; then
  sando_history "failed: restart exited $rc"
  exit "$EX_RESTART_FAILED"
fi
end=$(($(date +%s) + TIMEOUT))
while :; do
  if body=$(curl -fsS --max-time 3 "$HEALTH_URL" 2>&1); then
    report health "ok $(printf '%s' "$body" | head -c 300)"
    sando_history restarted
    exit 0
  fi
  if [ "$(date +%s)" -ge "$end" ]; then
    report health "fail $(printf '%s' "$body" | tail -n 1 | head -c 300)"
    sando_history "failed: not healthy after the restart"
    exit "$EX_RESTART_UNHEALTHY"
  fi
  sleep 0.2
done
