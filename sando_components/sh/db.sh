# shellcheck shell=sh
# The service's database and the migrations it has applied (sqlx's _sqlx_migrations), read-only.
# Shared by status.sh (sando status; the warning of a database ahead of a pin) and probe.sh (the
# node read, with the migration gate on: whether the database is ahead of the pin is decided from it).
# params: DATABASE ENV_FILE DEFAULT_DATABASE
#   DATABASE         sando:migrations.database ('' = DATABASE_PATH of the unit's EnvironmentFile)
#   ENV_FILE         the env file to read when the unit names none
#   DEFAULT_DATABASE when no env file names DATABASE_PATH

# db_sql DB: the count of sqlx's table in DB (1 or 0), then the migrations it applied ("VERSION
# DESCRIPTION", oldest first)
db_sql() {
  sqlite3 -readonly -separator ' ' "$1" ".timeout 5000" \
    "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='_sqlx_migrations'" \
    'SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version'
}

# db_read UNIT [ENV_FILES]: reports `database PATH`, `db STATE` (ok, missing, no migrations table, unreadable:
# WHY) and, when ok, `applied "VERSION DESCRIPTION"` for each migration applied, oldest first.
# ENV_FILES: the unit's EnvironmentFiles as systemd shows them, when the caller already read them
db_read() {
  db=$DATABASE
  if [ -z "$db" ]; then
    if [ $# -ge 2 ]; then envf=$2; else envf=$(systemctl show -p EnvironmentFiles --value "$1.service" 2>/dev/null); fi
    envf=${envf%%"
"*}
    case $envf in *' '*) envf=${envf%% *} ;; *) envf='' ;; esac # "PATH (ignore_errors=no)"
    envf=${envf#-}
    [ -n "$envf" ] || envf=$ENV_FILE
    env_database "$envf"
    db=${_sando_db:-$DEFAULT_DATABASE}
  fi
  report database "$db"
  if [ ! -f "$db" ]; then
    report db missing
  elif ! command -v sqlite3 >/dev/null 2>&1; then
    report db "unreadable: no sqlite3 on the node"
  else
    # one sqlite3 for both: whether the table exists (the first line), then its rows (after a 0,
    # the second query's error: there is no table to read). A failure is run again for its error.
    out=$(db_sql "$db" 2>/dev/null)
    rc=$?
    has=${out%%"
"*}
    rows=${out#"$has"}
    rows=${rows#"
"}
    if [ "$has" = 0 ]; then
      report db "no migrations table"
    elif [ "$has" != 1 ] || [ "$rc" != 0 ]; then
      err=$(db_sql "$db" 2>&1 >/dev/null)
      report db "unreadable: ${err:-sqlite3 exited $rc}"
    else
      report db ok
      printf '%s\n' "$rows" | while IFS= read -r row; do
        [ -n "$row" ] && report applied "$row"
      done
    fi
  fi
}
