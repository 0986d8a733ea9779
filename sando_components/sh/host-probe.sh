# shellcheck shell=sh
# sando step `host-probe`: the managed host files as the node has them, read with the node's
# other state in the one read per node (base.node_state), so a plain preview sees a file edited
# by hand. Read-only.
#
# Parameters: FILES (the paths sando may manage, one per line), CADDY (1: report Caddy's state).
# params: FILES CADDY
# Reports `host-file "SHA256 MODE PATH"` per existing file, `host-caddy "ACTIVE ENABLED"`.
while read -r f; do
  [ -n "$f" ] || continue
  if [ -f "$f" ] && [ ! -L "$f" ]; then
    sum=$(sha256sum <"$f") && report host-file "${sum%% *} $(stat -c %a "$f") $f"
  fi
done <<LIST
$FILES
LIST
if [ "$CADDY" = 1 ]; then
  report host-caddy "$(systemctl is-active caddy 2>/dev/null) $(systemctl is-enabled caddy 2>/dev/null)"
fi
