# shellcheck shell=sh
# sando step `host-probe`: the managed host files as the node has them, read with the node's
# other state in the one read per node (base.node_state), so a plain preview sees a file edited
# by hand. Read-only.
#
# Parameters: FILES (the paths sando may manage, one per line), CADDY (1: report Caddy's state).
# params: FILES CADDY
# Reports `host-file "SHA256 MODE PATH"` per existing file, `host-caddy "ACTIVE ENABLED"`.
set --
while read -r f; do
  [ -n "$f" ] || continue
  if [ -f "$f" ] && [ ! -L "$f" ]; then set -- "$@" "$f"; fi
done <<LIST
$FILES
LIST
# one sha256sum and one stat for every file (a fork each per file cost ~30 ms of every run's read);
# when either fails (a file gone or unreadable meanwhile), file by file, leaving out what fails
nl='
'
if [ $# -gt 0 ] && sums=$(sha256sum -- "$@" 2>/dev/null) && modes=$(stat -c %a -- "$@" 2>/dev/null); then
  for f in "$@"; do
    sum=${sums%%"$nl"*} sums=${sums#*"$nl"} mode=${modes%%"$nl"*} modes=${modes#*"$nl"}
    report host-file "${sum%% *} $mode $f"
  done
else
  for f in "$@"; do
    sum=$(sha256sum <"$f") && report host-file "${sum%% *} $(stat -c %a "$f") $f"
  done
fi
if [ "$CADDY" = 1 ]; then
  # is-active and is-enabled in one call (UnitFileState is '' where no unit file is, as is-enabled says nothing)
  _active='' _enabled=''
  while IFS='=' read -r _k _v; do
    case $_k in ActiveState) _active=$_v ;; UnitFileState) _enabled=$_v ;; esac
  done <<EOF
$(systemctl show -p ActiveState -p UnitFileState caddy 2>/dev/null)
EOF
  report host-caddy "$_active $_enabled"
fi
