# shellcheck shell=sh
# backup: a consistent copy of the live database ($DB, found by the gate) before a release with
# pending migrations first starts: BACKUP_DIR/pre-VERSION-<UTC minute>.db, 0600 and owned like
# the database; then only the newest BACKUP_KEEP pre-migration backups are kept. Reports
# `backup PATH` (and `backup-removed PATH` for each old one removed).
# params: VERSION BACKUP_DIR BACKUP_KEEP
# uses: gate

backup() {
  [ -n "$PENDING" ] && [ -f "$DB" ] || return 0
  mkdir -p -- "$BACKUP_DIR" || fail "$EX_BACKUP_FAILED" gate cannot-backup
  _b=$BACKUP_DIR/pre-$VERSION-$(date -u +%Y%m%dT%H%MZ)
  _i=''
  while [ -e "$_b${_i:+-$_i}.db" ]; do _i=$((${_i:-1} + 1)); done
  _b=$_b${_i:+-$_i}.db
  _tmp=$(mktemp "$BACKUP_DIR/.sando-backup.XXXXXX") || fail "$EX_BACKUP_FAILED" gate cannot-backup
  trap 'rm -f "$_tmp"' EXIT
  trap 'rm -f "$_tmp"; exit 1' HUP INT TERM PIPE
  if ! sqlite_copy "$DB" "$_tmp" || ! mv -f -- "$_tmp" "$_b"; then fail "$EX_BACKUP_FAILED" gate cannot-backup; fi
  trap - EXIT HUP INT TERM PIPE
  report backup "$_b"
  # shellcheck disable=SC2012  # the names are sando's own (pre-<version>-<time>.db)
  ls -1t -- "$BACKUP_DIR"/pre-*.db 2>/dev/null | tail -n +$((BACKUP_KEEP + 1)) | while IFS= read -r _old; do
    rm -f -- "$_old" && report backup-removed "$_old"
  done
}
