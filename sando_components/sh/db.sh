# shellcheck shell=sh
# The service's database and the migrations it has applied (sqlx's _sqlx_migrations), read-only.
# Shared by status.sh (sando status; the warning of a database ahead of a pin) and probe.sh (the
# node read, with the migration gate on: whether the database is ahead of the pin is decided from it).
# params: DATABASE ENV_FILE DEFAULT_DATABASE
#   DATABASE         sando:migrations.database ('' = DATABASE_PATH of the unit's EnvironmentFile)
#   ENV_FILE         the env file to read when the unit names none
#   DEFAULT_DATABASE when no env file names DATABASE_PATH

# db_read UNIT: reports `database PATH`, `db STATE` (ok, missing, no migrations table, unreadable:
# WHY) and, when ok, `applied "VERSION DESCRIPTION"` for each migration applied, oldest first
db_read() {
  db=$DATABASE
  if [ -z "$db" ]; then
    envf=$(systemctl show -p EnvironmentFiles --value "$1.service" 2>/dev/null | sed -n '1s/ .*//p')
    envf=${envf#-}
    [ -n "$envf" ] || envf=$ENV_FILE
    db=$(sed -n 's/^DATABASE_PATH=//p' "$envf" 2>/dev/null | tail -n 1 | tr -d "\"'")
    [ -n "$db" ] || db=$DEFAULT_DATABASE
  fi
  report database "$db"
  if [ ! -f "$db" ]; then
    report db missing
  elif ! command -v sqlite3 >/dev/null 2>&1; then
    report db "unreadable: no sqlite3 on the node"
  elif ! has=$(sqlite3 -readonly "$db" ".timeout 5000" \
    "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='_sqlx_migrations'" 2>&1); then
    report db "unreadable: $has"
  elif [ "$has" != 1 ]; then
    report db "no migrations table"
  else
    if rows=$(sqlite3 -readonly -separator ' ' "$db" ".timeout 5000" \
      'SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version' 2>&1); then
      report db ok
      printf '%s\n' "$rows" | while IFS= read -r row; do
        [ -n "$row" ] && report applied "$row"
      done
    else
      report db "unreadable: $rows"
    fi
  fi
}
