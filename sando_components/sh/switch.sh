# shellcheck shell=sh
# The switch of one node, in one round trip: check the pinned release against its SHA256SUMS;
# when `current` points elsewhere: the migration gate and backup (GATE=1), the restart warning
# (WARN=1), the atomic switch, `systemctl reload-or-restart`, the health check; on failure,
# switch back, restart and check again. Old releases are pruned at the end (PRUNE_OK after a
# healthy switch, PRUNE_FAILED after a failed one: one name per line). Reports what happened;
# the exit code is the outcome (outcomes.sh). Nothing user-visible happens before the gate
# passed; from the warning (or the switch) on, the script ignores a lost connection and runs to
# the end, so a node is never left half-switched.
# params: RELEASE_ROOT VERSION SERVICE EXPECT GATE WARN PRUNE_OK PRUNE_FAILED LOCK_WAIT
# uses: health gate backup warning prune history bluegreen
# With BG=1 (sando:switch.strategy blueGreen) the switch itself is bluegreen.sh's: a second
# instance, checked on its own port before Caddy's upstream moves to it.

if [ "$WARN" = 1 ]; then warn_read_token; fi
exec </dev/null
last='' # the last health check's error (health.sh)
cd -- "$RELEASE_ROOT" || exit "$EX_NO_ROOT"
# One switch at a time on this node: a re-run waits here for the switch of a run stopped by a second
# Ctrl-C, which goes on on the node (its warning out, its restart to come), then reads what it left.
# links: what `current` and `previous` point at ($live, $prev); a link written by hand may be
# absolute: releases/<v> is what sando compares and writes
links() {
  live=$(readlink "$P_CURRENT" 2>/dev/null)
  prev=$(readlink "$P_PREVIOUS" 2>/dev/null)
  case $live in */"$P_RELEASES"/*) live=$P_RELEASES/${live##*/} ;; esac
  case $prev in */"$P_RELEASES"/*) prev=$P_RELEASES/${prev##*/} ;; esac
}
if ! switch_lock "$LOCK_WAIT"; then
  links
  report live-before "$live"
  fail "$EX_BUSY" busy "$RELEASE_ROOT/$P_SWITCH_LOCK"
fi
target=$P_RELEASES/$VERSION
links
report live-before "$live"
report previous-before "$prev"
[ -f "$target/$P_MANIFEST" ] || fail "$EX_MISSING" error missing
bad=$(cd -- "$target" && sha256sum --check --strict --quiet "$P_SUMS" 2>&1) ||
  fail "$EX_CHANGED" changed "$(printf '%s' "$bad" | head -c 300)"

# restart: reload-or-restart the service; sets $rc and $out, reports `restart RC OUTPUT`. Its
# failed state is reset first: a release that crash-looped must not leave systemd's start limit
# ("Start request repeated too quickly") in the way of the release switched back to.
restart() {
  systemctl reset-failed "$SERVICE" 2>/dev/null
  unit_mark
  out=$(systemctl reload-or-restart "$SERVICE" 2>&1)
  rc=$?
  clip 300 "$out"
  # shellcheck disable=SC2154  # set by clip (lib.sh)
  report restart "$rc $_sando_c"
}

# healthy: what follows a passed health check: the release is good, prune, the final listing
healthy() {
  [ ! -e "$target/$P_FAILED" ] || rm -f -- "$target/$P_FAILED"
  prune "$PRUNE_OK"
  list_releases final-
  exit "$EX_OK"
}

if [ "$live" = "$target" ]; then
  # already live (e.g. an interrupted run's switch finished on the node): its switch record, so the
  # outputs say what that run did, not stale values (issue 19.9)
  if [ -n "$H_FILE" ] && [ -f "$H_FILE" ]; then report history-last "$(tail -n 1 -- "$H_FILE")"; fi
  if [ "$BG" = 1 ]; then bg_live; fi
  bg_off_hold # blueGreen turned off: users stay on the instance until the plain unit is healthy (bg_off_lift)
  if ! systemctl is-active "$SERVICE" >/dev/null 2>&1; then restart; fi
  if ! health "$EXPECT" || ! bg_off_lift "$EXPECT"; then
    bg_off_undo
    exit "$EX_LIVE_UNHEALTHY"
  fi
  bg_off_done
  healthy
fi

if [ "$GATE" = 1 ]; then
  gate
  backup
fi
if [ "$BG" = 1 ]; then bg_switch; fi

trap '' HUP PIPE
if [ "$WARN" = 1 ]; then
  # users are warned only when there are users: no running service, no warning (and no refusal)
  # (blueGreen turned off: the live instance's users, through the front that still points at it)
  _li=$(live_instance "$SERVICE")
  if systemctl is-active --quiet "$SERVICE" || { [ "$BG" != 1 ] && [ -n "$_li" ] &&
    systemctl is-active --quiet "$SERVICE@$_li"; }; then warn; else report warning not-needed; fi
fi
relink "$P_CURRENT" "$target"
relink "$P_ERROR_PAGES" "$P_CURRENT/$P_ERROR_PAGES"
if [ -n "$live" ]; then relink "$P_PREVIOUS" "$live"; fi
report switched "$(date +%s)"
bg_off_hold # blueGreen turned off: users stay on the instance until the plain unit is healthy (bg_off_lift)
restart
if [ "$rc" = 0 ] && health "$EXPECT" && bg_off_lift "$EXPECT"; then
  sando_history ok
  bg_off_done
  healthy
fi

if [ "$rc" != 0 ]; then why="restart failed: $out"; else why=$last; fi
mark_failed "$VERSION" "$why"
if [ -z "$live" ]; then
  sando_history "failed: nothing to switch back to"
  list_releases final-
  exit "$EX_NO_PREVIOUS"
fi
relink "$P_CURRENT" "$live"
if [ -n "$prev" ]; then relink "$P_PREVIOUS" "$prev"; else rm -f -- "$P_PREVIOUS"; fi
report reverted "$(date +%s)"
sando_history "failed: switched back to ${live##*/}"
if [ -n "$bg_off" ]; then
  bg_off_undo # blueGreen's live instance, never stopped, runs the release switched back to
else
  restart
  if [ "$rc" = 0 ]; then health ''; fi
fi
prune "$PRUNE_FAILED"
list_releases final-
exit "$EX_SWITCHED_BACK"
