# shellcheck shell=sh
# shellcheck disable=SC2154  # _sando_* are set by the library's functions (lib.sh)
# The service's database and the migrations it has applied (sqlx's _sqlx_migrations), read-only.
# Shared by status.sh (sando status; the warning of a database ahead of a pin) and probe.sh (the
# node read, with the migration gate on: whether the database is ahead of the pin is decided from it).
# params: DATABASE ENV_FILE DEFAULT_DATABASE
#   DATABASE         sando:migrations.database ('' = DATABASE_PATH of the unit's EnvironmentFile)
#   ENV_FILE         the env file to read when the unit names none
#   DEFAULT_DATABASE when no env file names DATABASE_PATH

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
  elif ! sqlx_read "$db" 5000 'SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version'; then
    report db "unreadable: $_sando_err"
  elif [ "$_sando_has" = 0 ]; then
    report db "no migrations table"
  else
    report db ok
    printf '%s\n' "$_sando_rows" | while IFS= read -r row; do
      [ -n "$row" ] && report applied "$row"
    done
  fi
}
