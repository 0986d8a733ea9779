# shellcheck shell=sh
# shellcheck disable=SC2154  # parameters are set by scripts.render
# params: SERVICE RELEASE_ROOT N_LINES SINCE FOLLOW
# logs (`sando logs`): the service's journal on this node, as journalctl prints it. Parameters:
#   SERVICE        the unit (without .service)
#   RELEASE_ROOT   where .sando/instance is
#   N_LINES        the last N entries ('' = no limit); SINCE: journalctl's --since ('' = none)
#   FOLLOW         1: keep printing new entries
# blueGreen (issue 23): the node's record of its live instance (.sando/instance, the port of
# SERVICE@PORT, the one the front points at) says the service runs as instances: the journal of
# every SERVICE@ instance then, interleaved by time, each line after its unit's name (the live
# one's and the other's, whose start failed when a switch failed), after one line on stderr naming
# the live instance. Else (the restart strategy) the plain unit's.

set -- --no-pager
# times in UTC, as everything else sando says (short-iso's +0000; an absolute --since is UTC),
# whatever the node's own zone
TZ=UTC
export TZ
port=$(cd "$RELEASE_ROOT" 2>/dev/null && live_instance "$SERVICE")
if [ -n "$port" ]; then
  printf 'sando: %s@%s.service is live (blueGreen, %s); the journal of every %s@ instance, each line after its unit\n' \
    "$SERVICE" "$port" "$RELEASE_ROOT/$P_INSTANCE" "$SERVICE" >&2
  set -- "$@" -u "$SERVICE@*.service" -o with-unit
else
  set -- "$@" -u "$SERVICE.service" -o short-iso
fi
if [ -n "$N_LINES" ]; then set -- "$@" -n "$N_LINES"; fi
if [ -n "$SINCE" ]; then set -- "$@" --since "$SINCE"; fi
if [ "$FOLLOW" = 1 ]; then set -- "$@" -f; fi
exec journalctl "$@"
