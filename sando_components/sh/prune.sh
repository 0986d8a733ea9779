# shellcheck shell=sh
# prune LIST: delete the releases named in LIST (one per line), except the one `current` or
# `previous` points at (read again at this moment) and any directory without sando's manifest.
# Reports `pruned NAME` for each.

prune() {
  printf '%s\n' "$1" | while IFS= read -r _n; do
    [ -n "$_n" ] || continue
    case "$(readlink "$P_CURRENT")" in "$P_RELEASES/$_n") continue ;; esac
    case "$(readlink "$P_PREVIOUS")" in "$P_RELEASES/$_n") continue ;; esac
    [ -f "$P_RELEASES/$_n/$P_MANIFEST" ] || continue
    rm -rf -- "${P_RELEASES:?}/$_n" && report pruned "$_n"
  done
}
