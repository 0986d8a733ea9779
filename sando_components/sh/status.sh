# shellcheck shell=sh
# shellcheck disable=SC2154  # parameters are set by scripts.render
# params: SERVICE RELEASE_ROOT HEALTH_URL CADDY_URL BACKUP_DIR HISTORY HISTORY_LINES
# uses: db
# status: what an operator asks of a node now, read-only, in one exec (sando status, promote,
# rollback). Parameters:
#   SERVICE          the unit (without .service)
#   RELEASE_ROOT     where releases/, current and .sando/history are
#   HEALTH_URL       the app's health URL on the node
#   CADDY_URL        the same through Caddy ('' = Caddy is not sando's: not probed)
#   DATABASE, ENV_FILE, DEFAULT_DATABASE: where the database is (db.sh)
#   BACKUP_DIR       where pre-migration backups are
#   HISTORY          the switch history file (relative to RELEASE_ROOT)
#   HISTORY_LINES    how many of its last lines to report
# Reports: unit, unit-since, health, caddy, caddy-health, database, db, applied (one per
# migration: "VERSION DESCRIPTION"), history (one per line, oldest first), backup (newest first).

# blueGreen (issue 23): the live instance SERVICE@PORT (PORT in .sando/instance) is the unit that
# serves, answering on its own port (bound to 127.0.0.1, sando:switch.bindHost's default)
_port=$(cd "$RELEASE_ROOT" 2>/dev/null && live_instance "$SERVICE")
if [ -n "$_port" ]; then
  SERVICE=$SERVICE@$_port
  HEALTH_URL=$(on_port "$HEALTH_URL" "$_port")
fi
report unit "$(systemctl show -p ActiveState --value "$SERVICE.service" 2>/dev/null) $(systemctl show -p SubState --value "$SERVICE.service" 2>/dev/null)"
# in UTC whatever the node's zone ("Sat 2026-12-05 22:12:37 UTC"), said in sando's one format by fleet
report unit-since "$(TZ=UTC systemctl show -p ActiveEnterTimestamp --value "$SERVICE.service" 2>/dev/null)"

# probe URL: "CODE BODY" of one GET (CODE 000 and curl's error when nothing answered)
probe() {
  _body=$(mktemp)
  _code=$(curl -sS -o "$_body" -w '%{http_code}' --max-time 5 "$1" 2>"$_body.err") || :
  if [ "${_code:-000}" = 000 ]; then
    printf '000 %s' "$(head -c 200 "$_body.err")"
  else
    printf '%s %s' "$_code" "$(head -c 300 "$_body")"
  fi
  rm -f "$_body" "$_body.err"
}

report health "$(probe "$HEALTH_URL")"
report caddy "$(systemctl is-active caddy.service 2>/dev/null)"
if [ -n "$CADDY_URL" ]; then
  report caddy-health "$(probe "$CADDY_URL")"
fi

# the database the gate reads: sando:migrations.database, else DATABASE_PATH of the unit's env file
db_read "$SERVICE"

if [ -f "$RELEASE_ROOT/$HISTORY" ]; then
  tail -n "$HISTORY_LINES" "$RELEASE_ROOT/$HISTORY" | while IFS= read -r line; do
    report history "$line"
  done
fi
if [ -d "$BACKUP_DIR" ]; then
  # shellcheck disable=SC2012,SC2010  # names are sando's own (pre-<version>-<UTC minute>[-n].db)
  ls -1t "$BACKUP_DIR" 2>/dev/null | grep '^pre-.*\.db$' | head -n 20 | while IFS= read -r b; do
    report backup "$BACKUP_DIR/$b"
  done
fi
