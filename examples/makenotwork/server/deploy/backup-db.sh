#!/usr/bin/env bash
# Dump the makenotwork SQLite database to a gzipped SQL file.
#
#   DATABASE_PATH  database        default /var/lib/makenotwork/makenotwork.db
#   BACKUP_DIR     where to write  default /var/backups/makenotwork
#   KEEP           dumps to keep   default 14
#
# Writes $BACKUP_DIR/mnw-<UTC timestamp>.sql.gz, makes latest.sql.gz a hard
# link to it, and deletes all but the newest $KEEP dumps.
set -euo pipefail

DB="${DATABASE_PATH:-/var/lib/makenotwork/makenotwork.db}"
BACKUP_DIR="${BACKUP_DIR:-/var/backups/makenotwork}"
KEEP="${KEEP:-14}"

if [[ ! -f "$DB" ]]; then
    echo "backup-db.sh: no database at $DB" >&2
    exit 1
fi
mkdir -p "$BACKUP_DIR"

out="$BACKUP_DIR/mnw-$(date -u +%Y%m%dT%H%M%SZ).sql.gz"
while [[ -e "$out" ]]; do            # two backups within one second
    sleep 1
    out="$BACKUP_DIR/mnw-$(date -u +%Y%m%dT%H%M%SZ).sql.gz"
done

tmp="$(mktemp "$BACKUP_DIR/.mnw-backup.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
sqlite3 -batch -bail "$DB" ".timeout 10000" .dump | gzip -9 >"$tmp"
gzip -t "$tmp"
chmod 0600 "$tmp"
mv "$tmp" "$out"
ln -f "$out" "$BACKUP_DIR/latest.sql.gz"

# Keep the newest $KEEP dumps (names sort by time).
mapfile -t dumps < <(find "$BACKUP_DIR" -maxdepth 1 -name 'mnw-*.sql.gz' -printf '%f\n' | LC_ALL=C sort)
excess=$(( ${#dumps[@]} - KEEP ))
for (( i = 0; i < excess; i++ )); do
    rm -f -- "$BACKUP_DIR/${dumps[$i]}"
done

echo "backup: $out"
