# shellcheck shell=sh
# The migration gate: which of the release's migrations (GATE_MIGRATIONS, one per line) the live
# database has not applied (sqlx's _sqlx_migrations); when some are pending, a consistent scratch
# copy of the database (sqlite3 .backup; 0600, owned like the database), the release's dry run
# (GATE_DRY_RUN, the operator's command, run by sh with "$DB", "$SCRATCH" and "$GATE_RELEASE" in
# its environment) on it,
# the copy removed whatever happens. Exits EX_DRY_RUN_FAILED (the release is marked failed),
# EX_DESTRUCTIVE (a migration of GATE_DESTRUCTIVE is pending and GATE_ALLOW_DESTRUCTIVE is not
# 1) or EX_GATE_BROKEN. Leaves $DB and $PENDING (one per line) set for the backup.
# params: VERSION GATE_RELEASE GATE_MIGRATIONS GATE_DESTRUCTIVE GATE_DATABASE GATE_ENV_FILE
# params: GATE_DEFAULT_DATABASE GATE_DRY_RUN GATE_ALLOW_DESTRUCTIVE

# sqlite_copy DB DEST: a consistent copy of DB at DEST (a file mktemp made: its name needs no
# quoting inside sqlite's .backup), private and owned like DB
sqlite_copy() {
  (cd -- "$(dirname -- "$2")" && sqlite3 "$1" ".timeout 10000" ".backup '$(basename -- "$2")'") &&
    chmod 0600 "$2" && chown --reference="$1" -- "$2"
}

# in_list ITEM LIST: whether ITEM is one of the lines of LIST
in_list() {
  case "
$2
" in
    *"
$1
"*) return 0 ;;
  esac
  return 1
}

gate() {
  if [ -n "$GATE_DATABASE" ]; then
    DB=$GATE_DATABASE
  else # DATABASE_PATH="..." or '...' in the unit's env file; the last one wins
    env_database "$GATE_ENV_FILE"
    DB=${_sando_db:-$GATE_DEFAULT_DATABASE}
  fi
  report database "$DB"
  case $DB in /*) ;; *) DB=$PWD/$DB ;; esac
  _applied=''
  if [ -f "$DB" ]; then
    sqlx_read "$DB" 10000 'SELECT version FROM _sqlx_migrations WHERE success' || fail "$EX_GATE_BROKEN" gate cannot-read
    # shellcheck disable=SC2154  # set by sqlx_read (lib.sh)
    _applied=$_sando_rows
  fi
  PENDING=''
  _words=''
  while IFS= read -r _m; do
    [ -n "$_m" ] || continue
    if ! in_list "$_m" "$_applied"; then
      PENDING="$PENDING${PENDING:+
}$_m"
      _words="$_words${_words:+ }$_m"
    fi
  done <<END
$GATE_MIGRATIONS
END
  report pending "$_words"
  [ -n "$PENDING" ] || return 0
  _refused=''
  while IFS= read -r _m; do
    if [ -n "$_m" ] && in_list "$_m" "$PENDING"; then
      report destructive "$_m"
      _refused=1
    fi
  done <<END
$GATE_DESTRUCTIVE
END
  SCRATCH=$(mktemp "$(dirname -- "$DB")/.sando-scratch.XXXXXX" 2>/dev/null || mktemp) ||
    fail "$EX_GATE_BROKEN" gate cannot-copy
  trap 'rm -f "$SCRATCH" "$SCRATCH.out"' EXIT
  trap 'rm -f "$SCRATCH" "$SCRATCH.out"; exit 1' HUP INT TERM PIPE
  if [ -f "$DB" ]; then
    sqlite_copy "$DB" "$SCRATCH" || fail "$EX_GATE_BROKEN" gate cannot-copy
  fi
  DB=$DB SCRATCH=$SCRATCH GATE_RELEASE=$GATE_RELEASE sh -c "$GATE_DRY_RUN" </dev/null >"$SCRATCH.out" 2>&1
  _rc=$?
  tail -n 200 "$SCRATCH.out" | while IFS= read -r _line || [ -n "$_line" ]; do report dryrun "$_line"; done
  rm -f "$SCRATCH" "$SCRATCH.out"
  trap - EXIT HUP INT TERM PIPE
  report dryrun-exit "$_rc"
  case $_rc in
    0) ;;
    3)
      mark_failed "$VERSION" "the migration dry run failed"
      exit "$EX_DRY_RUN_FAILED"
      ;;
    4) _refused=1 ;;
    *) exit "$EX_GATE_BROKEN" ;;
  esac
  if [ -n "$_refused" ] && [ "$GATE_ALLOW_DESTRUCTIVE" != 1 ]; then
    # a database that does not exist yet or holds no table (a new node) has no data a destructive
    # migration could destroy: it passes, with a note (issue 20.7)
    if [ ! -f "$DB" ] || [ "$(sqlite3 -readonly "$DB" ".timeout 10000" \
      "SELECT count(*) FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'" 2>/dev/null)" = 0 ]; then
      report gate-note "the database is empty (a new node): nothing to destroy, so its destructive migrations pass"
      return 0
    fi
    exit "$EX_DESTRUCTIVE"
  fi
}
