# shellcheck shell=sh
# Write stdin to DEST atomically: a temp file beside it (private from the start: umask 077),
# its MODE, then a rename over DEST. When SHA256 is given, the bytes received must have it (a
# connection cut mid-content gives cat an early end of input: that truncated file is never
# installed). The temp file is removed on any failure.
# params: DEST MODE TOKEN SHA256

tmp=$DEST.sando-tmp-$TOKEN
trap 'rm -f "$tmp"' EXIT
trap 'rm -f "$tmp"; exit 1' HUP INT TERM PIPE
# a directory it makes is not secret (its files' modes say who reads them): made as mkdir -p would be
(umask 022 && mkdir -p -- "$(dirname -- "$DEST")") || exit
cat >"$tmp" || exit
if [ -n "$SHA256" ]; then
  got=$(sha256sum <"$tmp") || exit
  if [ "${got%% *}" != "$SHA256" ]; then
    echo "sando: $DEST: the content arrived incomplete or changed (sha256 ${got%% *}); nothing was written" >&2
    exit 1
  fi
fi
chmod "$MODE" "$tmp" || exit
mv -f -- "$tmp" "$DEST" || exit
trap - EXIT HUP INT TERM PIPE
