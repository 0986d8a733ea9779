# shellcheck shell=sh
# Receive a release streamed on stdin (a tar compressed with COMPRESSION: zstd or gzip; none: nothing
# is streamed, a local node whose steps take every file from the local build) into a
# staging dir, apply the per-file STEPS, verify every file against SHA256SUMS, then rename it to
# releases/VERSION. Leftover staging dirs are removed first; this upload's staging dir is removed
# on any failure. Modes are set explicitly (the step runs under umask 077): directories 0755,
# each file the mode the plan gives it, so the service and Caddy can read what they need.
# params: RELEASE_ROOT VERSION TOKEN NEED_KIB COMPRESSION STEPS
#
# STEPS: one line per step, fields separated by a tab (transfer.py writes them):
#   link BASE REL              reuse REL of release BASE (a hard link: no bytes sent)
#   patch BASE REL PATCH MODE  rebuild REL from the zstd delta PATCH against BASE's REL (one that
#                              does not decode there: EX_SUMS_FAILED, as a wrong sha256)
#   mode REL MODE              REL (sent whole) gets MODE
#   local SOURCE REL MODE      a local node: REL is a hard link of SOURCE, the local build's file
#                              (a copy on another file system), owned by root, mode MODE
#   text REL BASE64            REL holds the decoded text (a local node's sums and manifest)

cd -- "$RELEASE_ROOT" || fail "$EX_NO_ROOT" error "cannot enter the release root $RELEASE_ROOT"
[ -d "$P_RELEASES" ] || (umask 022 && mkdir -p -- "$P_RELEASES") || exit # -p: a first deploy's host step may make it at the same time
for _s in "$P_RELEASES/$P_STAGING_PREFIX"*; do
  if [ -d "$_s" ] && [ ! -L "$_s" ]; then rm -rf -- "$_s"; fi
done
final=$P_RELEASES/$VERSION
if [ -e "$final" ] || [ -L "$final" ]; then fail "$EX_EXISTS" exists "$VERSION"; fi
free_kib_of "$P_RELEASES"
# shellcheck disable=SC2154  # set by free_kib_of (lib.sh)
free=$_sando_free
[ -n "$free" ] || fail "$EX_UNREADABLE" unreadable "the free space under $RELEASE_ROOT/$P_RELEASES"
if [ "$free" -lt "$NEED_KIB" ]; then fail "$EX_NO_SPACE" free "$free"; fi

S=$PWD/$P_RELEASES/$P_STAGING_PREFIX$VERSION-$TOKEN # absolute: the cleanup runs from anywhere
trap 'rm -rf "$S"' EXIT
trap 'rm -rf "$S"; exit 1' HUP INT TERM PIPE
mkdir -m 0755 -- "$S" || exit
case $COMPRESSION in
  zstd) zstd -q -d -c | tar -x -C "$S" -f - || exit ;;
  gzip) gzip -d -c | tar -x -C "$S" -f - || exit ;;
  none) ;;
  *) exit 2 ;;
esac
cd -- "$S" || exit

tab=$(printf '\t')
nl='
'
# parent REL: REL's directory made (mkdir only when it is not there yet: one exec less a file)
parent() {
  case $1 in */*) [ -d "${1%/*}" ] || mkdir -p -- "${1%/*}" ;; esac
}
# modes: "MODE<tab>REL" a line for each file whose mode a step gives; set once per mode at the end
# (one chmod a mode, not one a file)
modes=''
while IFS=$tab read -r kind a b c d; do
  case $kind in
    link)
      parent "$b" && ln -- "../$a/$b" "$b" || exit
      ;;
    patch) # a delta that does not rebuild against the node's base: the bytes do not match
      parent "$b" || exit
      err=$(zstd -q -d --long=31 --patch-from="../$a/$b" "$c" -o "$b" 2>&1) ||
        fail "$EX_SUMS_FAILED" sums-failed "$b: $err"
      modes=$modes$d$tab$b$nl
      ;;
    mode) modes=$modes$b$tab$a$nl ;;
    local)
      parent "$b" || exit
      { ln -- "$a" "$b" 2>/dev/null || cp -- "$a" "$b"; } && chown 0:0 -- "$b" || exit
      modes=$modes$c$tab$b$nl
      ;;
    text)
      parent "$a" && printf '%s' "$b" | base64 -d >"$a" || exit
      ;;
    '') ;;
    *) exit 2 ;;
  esac
done <<EOF
$STEPS
EOF
# chmod_modes: each mode of $modes set with one chmod, on every file that has it
chmod_modes() {
  while [ -n "$modes" ]; do
    _m=${modes%%"$tab"*}
    _rest=''
    set --
    while IFS= read -r _l; do
      [ -n "$_l" ] || continue
      if [ "${_l%%"$tab"*}" = "$_m" ]; then set -- "$@" "${_l#*"$tab"}"; else _rest=$_rest$_l$nl; fi
    done <<END
$modes
END
    chmod "$_m" -- "$@" || return 1
    modes=$_rest
  done
}
chmod_modes || exit
[ ! -e "$P_MANIFEST_DIR/in" ] || rm -rf -- "$P_MANIFEST_DIR/in"
find . -type d -exec chmod 0755 {} + || exit
bad=$(sha256sum --check --strict --quiet "$P_SUMS" 2>&1) || fail "$EX_SUMS_FAILED" sums-failed "$bad"
cd -- "$RELEASE_ROOT" || exit
mv -T -- "$S" "$final" || exit
trap - EXIT HUP INT TERM PIPE
report received "$VERSION"
