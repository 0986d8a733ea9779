# shellcheck shell=sh
# Write stdin to DEST atomically: a temp file beside it (private from the start: umask 077),
# its MODE, then a rename over DEST. The temp file is removed on any failure.
# params: DEST MODE TOKEN

tmp=$DEST.sando-tmp-$TOKEN
trap 'rm -f "$tmp"' EXIT
trap 'rm -f "$tmp"; exit 1' HUP INT TERM PIPE
mkdir -p -- "$(dirname -- "$DEST")" || exit
cat >"$tmp" || exit
chmod "$MODE" "$tmp" || exit
mv -f -- "$tmp" "$DEST" || exit
trap - EXIT HUP INT TERM PIPE
