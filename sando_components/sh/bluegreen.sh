# shellcheck shell=sh
# The blueGreen switch (sando:switch.strategy blueGreen, issue 23), used by switch.sh when BG=1.
# The service runs as instances of a template unit `SERVICE@PORT` (derived here from the installed
# `SERVICE.service`: its binary under the instance's own link P_INSTANCES/PORT -> a release, its
# port handed over through BG_BIND_ENV in an env file read after the unit's own). Caddy dials the
# front, BG_FRONT (127.0.0.1 and the port of the service's own unit), through BG_UPSTREAM, the one
# Caddy file sando owns (the Caddyfile imports it; written once, then never changed); sando's nft
# rule (table ip sando, P_FRONT_NFT, loaded at boot by P_FRONT_UNIT) redirects the front to the
# live instance. P_INSTANCE holds the live instance's port (empty or missing: the plain unit).
#
# A switch: the new release starts as the idle instance while the old one serves; it is checked
# on its own port (HEALTH_URL's path); only then the restart warning (the old instance's users),
# the front moves (one atomic `nft -f`: every new connection goes to the new instance, those in
# flight finish on the old one; Caddy is not reloaded, so no connection to Caddy is ever dropped:
# a Caddy reload on Linux resets connections still queued on its old listener), `current` moves,
# the drain (BG_DRAIN seconds), the old instance stops. The live instance is enabled at boot, the
# other is not. A new release that fails its start or check is stopped: no user request ever
# reached it. A pending destructive migration (even an allowed one) takes the restart path
# instead: the old instance stops (after the warning) before the new one starts and migrates.
# params: BG BG_PORTS BG_HOST BG_BIND_ENV BG_DRAIN BG_HEALTH_PATH BG_WARN_PATH BG_UPSTREAM
# params: BG_UNIT_DIR BG_ENV_DIR BG_CADDYFILE BG_FRONT
# uses: health warning prune history

# bg_live_port: the live instance's port (one of BG_PORTS), or '' (the plain unit)
bg_live_port() {
  _sando_first "$P_INSTANCE"
  # shellcheck disable=SC2154  # set by _sando_first (lib.sh)
  _p=$_sando_f
  case " $BG_PORTS " in *" $_p "*) [ -n "$_p" ] && printf '%s' "$_p" ;; esac
}

# bg_unit PORT: the unit serving on PORT ('' = the plain unit)
bg_unit() {
  if [ -n "$1" ]; then printf '%s@%s' "$BG_BASE" "$1"; else printf '%s' "$BG_BASE"; fi
}

# bg_template: install SERVICE@.service, derived from the installed SERVICE.service, when it differs
bg_template() {
  _src=$BG_UNIT_DIR/$BG_BASE.service
  [ -f "$_src" ] || fail "$EX_BG_SETUP" bg-error "$_src is not installed (sando:bootstrap.manage unit)"
  _dest=$BG_UNIT_DIR/$BG_BASE@.service
  _new=$(mktemp "$BG_UNIT_DIR/.sando-new.XXXXXX") || fail "$EX_BG_SETUP" bg-error "cannot write in $BG_UNIT_DIR"
  awk -v cur="$RELEASE_ROOT/$P_CURRENT/" -v inst="$RELEASE_ROOT/$P_INSTANCES/%i/" \
    -v envf="$BG_ENV_DIR/$BG_BASE@%i.env" -v src="$_src" '
    function repl(s, a, b,   i, out) {
      out = ""
      while ((i = index(s, a)) > 0) { out = out substr(s, 1, i - 1) b; s = substr(s, i + length(a)) }
      return out s
    }
    function env_line() {
      if (insvc && !done) {
        print "# sando: the instance port (read after the unit'"'"'s own env file, so it wins)"
        print "EnvironmentFile=" envf
        done = 1
      }
    }
    NR == 1 { print "# " src " as an instance of sando'"'"'s blueGreen switch (written by sando at each switch)" }
    /^[[:space:]]*\[/ { env_line(); insvc = ($0 ~ /^[[:space:]]*\[Service\]/) }
    { print repl($0, cur, inst) }
    END { env_line() }
  ' "$_src" >"$_new"
  chmod 0644 "$_new"
  if cmp -s "$_new" "$_dest"; then
    rm -f "$_new"
  else
    mv -f "$_new" "$_dest"
    systemctl daemon-reload
    report bg-template "$_dest"
  fi
}

# bg_env PORT: the instance's env file (its bind address)
bg_env() {
  (umask 022 && mkdir -p "$BG_ENV_DIR")
  _e=$BG_ENV_DIR/$BG_BASE@$1.env
  printf '%s=%s:%s\n' "$BG_BIND_ENV" "$BG_HOST" "$1" >"$_e.sando-tmp" && mv -f "$_e.sando-tmp" "$_e"
}

# bg_front_text PORT: the nft ruleset redirecting the front to the instance on PORT ('' = none:
# the plain unit, which listens on the front's port itself)
bg_front_text() {
  printf '# written by sando (sando:switch.strategy blueGreen): %s -> the live instance of %s\n' "$BG_FRONT" "$BG_BASE"
  printf 'table ip sando\ndelete table ip sando\n'
  [ -n "$1" ] || return 0
  printf 'table ip sando {\n\tchain front {\n\t\ttype nat hook output priority -100; policy accept;\n'
  printf '\t\tip daddr %s tcp dport %s redirect to :%s\n\t}\n}\n' "${BG_FRONT%:*}" "${BG_FRONT##*:}" "$1"
}

# bg_front_unit: the unit that loads P_FRONT_NFT at boot, before Caddy (an nft ruleset does not
# survive a reboot), installed and enabled when it differs
bg_front_unit() {
  _nft=$(command -v nft)
  _t=$(mktemp "$BG_UNIT_DIR/.sando-new.XXXXXX") || return 1
  {
    printf '[Unit]\nDescription=sando: %s to the live instance of %s (sando:switch blueGreen)\n' "$BG_FRONT" "$BG_BASE"
    printf 'Before=caddy.service\nConditionPathExists=%s\n\n' "$RELEASE_ROOT/$P_FRONT_NFT"
    printf '[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=%s -f "%s"\n\n' "$_nft" "$RELEASE_ROOT/$P_FRONT_NFT"
    printf '[Install]\nWantedBy=multi-user.target\n'
  } >"$_t"
  chmod 0644 "$_t"
  if cmp -s "$_t" "$P_FRONT_UNIT"; then
    rm -f "$_t"
  else
    mv -f "$_t" "$P_FRONT_UNIT" && systemctl daemon-reload
  fi
  systemctl is-enabled --quiet "${P_FRONT_UNIT##*/}" 2>/dev/null || systemctl enable --quiet "${P_FRONT_UNIT##*/}"
}

# bg_front PORT: the front to the instance on PORT ('' = the plain unit): one atomic `nft -f`
# (new connections go there at once; established ones stay where they are), kept for the boot
bg_front() {
  if ! command -v nft >/dev/null 2>&1; then
    report front-failed "nft is not installed on the node (apt-get install nftables)"
    return 1
  fi
  mkdir -p "$P_MANIFEST_DIR"
  if ! bg_front_text "$1" >"$P_FRONT_NFT.sando-tmp" || ! mv -f "$P_FRONT_NFT.sando-tmp" "$P_FRONT_NFT"; then
    report front-failed "cannot write $P_FRONT_NFT"
    return 1
  fi
  if ! _out=$(nft -f "$P_FRONT_NFT" 2>&1); then
    report front-failed "nft -f $P_FRONT_NFT: $(printf '%s' "$_out" | head -c 300)"
    return 1
  fi
  bg_front_unit || {
    report front-failed "cannot install $P_FRONT_UNIT"
    return 1
  }
  report front "$BG_FRONT ${1:-plain}"
}

# blueGreen turned off (BG=0, sando:switch.strategy restart) on a node it served: its front (the
# nft rule, P_FRONT_NFT) or its live instance's record (P_INSTANCE) is still there, the instance
# runs. The plain unit starts on the front's port while the front still sends users to the
# instance; only this script's own connections reach the plain unit (bg_off_hold), so its health
# check is the plain unit's. Healthy: the front is lifted and the plain unit checked again, as
# users now reach it (bg_off_lift). Only then are the instances stopped and disabled, the plain
# unit enabled, the boot unit, the ruleset and the record removed (bg_off_done): one process
# serves, and a reboot starts the plain unit alone. If the plain unit fails, nothing is stopped:
# it stops, the front is the instance's alone again, as it was for users all along (bg_off_undo).
bg_off=''

# bg_front_redirect RULE PREFIX: the front's ruleset (P_FRONT_NFT) with RULE (when not '') before
# its one redirect and PREFIX before the redirect itself; fails when it has not exactly one
bg_front_redirect() {
  awk -v rule="$1" -v prefix="$2" '/ redirect to :/ { n++; i = $0; sub(/[^[:space:]].*/, "", i)
    r = $0; sub(/^[[:space:]]*/, "", r); if (rule != "") print i rule; print i prefix r; next }
    { print } END { exit n != 1 }' "$P_FRONT_NFT"
}

# bg_off_hold: blueGreen off, its front or record left: the front's ruleset kept for users, with
# this script's own user let through to the front's port (the plain unit); a front that cannot
# be held (no live instance, no ruleset, nft refused) is lifted at once
bg_off_hold() {
  [ "$BG" != 1 ] || return 0
  [ -f "$P_FRONT_NFT" ] || [ -f "$P_INSTANCE" ] || return 0
  bg_off=1
  _p=$(live_instance "$SERVICE")
  if [ -n "$_p" ] && [ -f "$P_FRONT_NFT" ]; then
    _out="$P_FRONT_NFT has no one redirect"
    if _held=$(bg_front_redirect "meta skuid $(id -u) accept" "") &&
      _out=$(printf '%s\n' "$_held" | nft -f - 2>&1); then
      report front-held "$_p"
      return 0
    fi
    report front-not-held "$(printf '%s' "$_out" | head -c 300)"
  fi
  nft delete table ip sando 2>/dev/null
  report front-lifted "$_p"
  bg_off=2 # lifted already
}

# bg_off_lift EXPECT: the plain unit is healthy to this script: the front lifted (users reach it
# now) and its health checked again, as they reach it; 1 (with $last) if either fails. The
# redirect stays for the connections already sent to the instance only (`ct state established`:
# a nat chain sees a connection's first packet alone, so it matches no new one). With no redirect
# left the kernel drops their translation, and a request in flight hangs (tried on a test node);
# bg_off_done deletes the table once the drain is over.
bg_off_lift() {
  [ "$bg_off" = 1 ] || return 0
  _out="$P_FRONT_NFT has no one redirect"
  if ! _lifted=$(bg_front_redirect "" "ct state established ") ||
    ! _out=$(printf '%s\n' "$_lifted" | nft -f - 2>&1); then
    last="the front could not be lifted (nft -f -: $(printf '%s' "$_out" | head -c 300))"
    return 1
  fi
  bg_off=2
  report front-lifted "$(live_instance "$SERVICE")"
  health "$1"
}

# bg_instance_units: the instance units of SERVICE systemd has loaded (running, failed, or
# enabled: pulled in at boot) and the ones sando's record and links name
bg_instance_units() {
  {
    systemctl list-units --all --plain --no-legend --type=service "$SERVICE@*.service" 2>/dev/null |
      awk '{ print $1 }'
    _p=$(cat "$P_INSTANCE" 2>/dev/null)
    for _l in "$P_INSTANCES"/*; do [ -L "$_l" ] && _p="$_p ${_l##*/}"; done
    for _l in $_p; do
      case $_l in *[!0-9]*) ;; *) printf '%s@%s.service\n' "$SERVICE" "$_l" ;; esac
    done
  } | grep -x "$SERVICE@[0-9][0-9]*\.service" | sort -u
}

# bg_off_done: the plain unit is healthy: the instances stopped and disabled, the plain unit
# enabled, no boot unit, ruleset, record or instance links left
bg_off_done() {
  [ -n "$bg_off" ] || return 0
  systemctl enable --quiet "$SERVICE" 2>/dev/null
  # requests the instance took before the lift finish there (BG_DRAIN: sando:switch.drainSeconds,
  # which the restart strategy keeps for this)
  report drain "$BG_DRAIN"
  sleep "$BG_DRAIN"
  for _u in $(bg_instance_units); do
    if systemctl is-active --quiet "$_u"; then systemctl stop "$_u" && report stopped "$_u"; fi
    systemctl disable --quiet "$_u" 2>/dev/null
    systemctl reset-failed "$_u" 2>/dev/null
  done
  nft delete table ip sando 2>/dev/null # the lift's redirect for the drained connections
  systemctl disable --quiet "${P_FRONT_UNIT##*/}" 2>/dev/null
  systemctl stop "${P_FRONT_UNIT##*/}" 2>/dev/null
  rm -f "$P_FRONT_UNIT" "$P_FRONT_NFT" "$P_INSTANCE"
  rm -rf "$P_INSTANCES"
  systemctl daemon-reload
  report front-off "$P_FRONT_NFT"
}

# bg_off_undo: the plain unit failed: it stops, the front goes back to the live instance (never
# stopped), whose health is checked through the front (it serves, as before the run)
bg_off_undo() {
  [ -n "$bg_off" ] || return 0
  systemctl stop "$SERVICE" 2>/dev/null
  systemctl reset-failed "$SERVICE" 2>/dev/null
  if [ -f "$P_FRONT_NFT" ] && ! _out=$(nft -f "$P_FRONT_NFT" 2>&1); then
    report front-failed "nft -f $P_FRONT_NFT: $(printf '%s' "$_out" | head -c 300)"
  fi
  _p=$(live_instance "$SERVICE")
  report bg-off-undone "$_p"
  [ -n "$_p" ] || return 0
  _svc=$SERVICE
  unit_mark_for "$SERVICE@$_p"
  health ''
  SERVICE=$_svc
}

# bg_caddy: Caddy dials the front through BG_UPSTREAM. Already so (every switch but the first
# after an earlier sando wrote a per-instance file): nothing to do, Caddy is not reloaded. Else
# the file is written, checked (caddy validate; the Caddyfile must import it: `caddy adapt`
# then dials the front), Caddy reloaded once; on any failure the previous file is back (and
# Caddy reloaded with it). Returns 1 (Caddy failed) or 2 (the Caddyfile does not import the file).
bg_caddy() {
  _addr=$BG_FRONT
  if [ -f "$BG_UPSTREAM" ] && [ "$(cat "$BG_UPSTREAM")" = "$(upstream_text "$BG_BASE" "$_addr")" ]; then
    return 0
  fi
  _prev=$(mktemp) || return 1
  _had=''
  if [ -f "$BG_UPSTREAM" ]; then cp -p "$BG_UPSTREAM" "$_prev" && _had=1; fi
  if ! _t=$(mktemp "$(dirname "$BG_UPSTREAM")/.sando-new.XXXXXX") || ! upstream_text "$BG_BASE" "$_addr" >"$_t" ||
    ! chmod 0644 "$_t" || ! mv -f "$_t" "$BG_UPSTREAM"; then
    report caddy-failed "cannot write $BG_UPSTREAM"
    return 1
  fi
  _r=0
  if ! _out=$(caddy validate --adapter caddyfile --config "$BG_CADDYFILE" 2>&1); then
    report caddy-failed "caddy validate: $(printf '%s' "$_out" | grep -iE 'error' | tail -n 2 | head -c 400)"
    _r=1
  elif ! caddy adapt --adapter caddyfile --config "$BG_CADDYFILE" 2>/dev/null | grep -qF "\"dial\":\"$_addr\""; then
    report no-import "$BG_CADDYFILE"
    _r=2
  elif ! _out=$(systemctl reload caddy 2>&1); then
    report caddy-failed "systemctl reload caddy: $(printf '%s' "$_out" | head -c 300) $(journalctl -u caddy -n 3 --no-pager -o cat 2>/dev/null | tr '\n' ' ' | head -c 300)"
    _r=1
  fi
  if [ "$_r" != 0 ]; then
    if [ -n "$_had" ]; then mv -f "$_prev" "$BG_UPSTREAM"; else rm -f "$BG_UPSTREAM" "$_prev"; fi
    report upstream-put-back "$BG_UPSTREAM"
    if [ "$_r" = 1 ]; then systemctl reload caddy >/dev/null 2>&1; fi # whatever runs keeps running otherwise
    return "$_r"
  fi
  rm -f "$_prev"
  report upstream "$_addr"
}

# unit_mark_for UNIT: watch UNIT from now on (health.sh's unit_mark, for another unit)
unit_mark_for() {
  SERVICE=$1
  unit_mark
}

# bg_check PORT UNIT: the health check of the instance on PORT (its own port, EXPECT)
bg_check() {
  HEALTH_URL=http://$BG_HOST:$1$BG_HEALTH_PATH
  SERVICE=$2
  health "$EXPECT"
}

# bg_journal UNIT: the unit's last lines since unit_mark (when health.sh did not quote them already)
bg_journal() {
  journalctl --sync 2>/dev/null
  journalctl -u "$1" --since "@${_mark_since:-0}" -n 5 --no-pager -o cat 2>/dev/null |
    cut -c 1-200 | while IFS= read -r _line; do report journal "$_line"; done
}

# bg_only_live PORT: the instance on PORT is the only one that runs and starts at boot
bg_only_live() {
  systemctl enable --quiet "$BG_BASE@$1" 2>/dev/null
  for _u in "$BG_BASE" $BG_PORTS; do
    [ "$_u" = "$1" ] && continue
    [ "$_u" = "$BG_BASE" ] || _u=$BG_BASE@$_u
    if systemctl is-active --quiet "$_u"; then systemctl stop "$_u" && report stopped "$_u"; fi
    systemctl disable --quiet "$_u" 2>/dev/null
    systemctl reset-failed "$_u" 2>/dev/null
  done
}

# bg_live: `current` is on the pin already: its instance must run and answer, else it is started anew
bg_live() {
  BG_BASE=$SERVICE
  _lp=$(bg_live_port)
  if [ -n "$_lp" ] && [ "$(readlink "$P_INSTANCES/$_lp" 2>/dev/null)" = "../../${target:-}" ] &&
    systemctl is-active --quiet "$BG_BASE@$_lp"; then
    bg_check "$_lp" "$BG_BASE@$_lp" || exit "$EX_LIVE_UNHEALTHY"
    bg_front "$_lp" || exit "$EX_BG_FRONT"
    bg_caddy
    _c=$?
    if [ "$_c" = 2 ]; then exit "$EX_BG_NO_IMPORT"; elif [ "$_c" != 0 ]; then exit "$EX_BG_CADDY"; fi
    bg_only_live "$_lp"
    healthy
  fi
  bg_switch # not on an instance yet (the strategy just changed), or it is down: start it anew
}

# bg_switch: the switch itself (the gate and the backup passed); never returns
bg_switch() {
  [ "$BG" = 1 ] || fail "$EX_BG_SETUP" bg-error "not a blueGreen switch"
  BG_BASE=$SERVICE
  BG_PLAIN_HEALTH=$HEALTH_URL
  bg_failed_check=''
  old=$(bg_live_port)
  old_unit=$(bg_unit "$old")
  new=''
  for _p in $BG_PORTS; do
    if [ "$_p" != "$old" ]; then
      new=$_p
      break
    fi
  done
  new_unit=$BG_BASE@$new
  old_active=''
  if systemctl is-active --quiet "$old_unit"; then old_active=1; fi
  report bg-old "${old:-plain} ${old_active:-0}"
  if [ "$WARN" = 1 ] && [ -z "$old_active" ]; then report warning not-needed; fi # no users, no warning
  report bg-new "$new"
  stop_first=''
  if [ -n "${_refused:-}" ] && [ "$live" != "${target:-}" ]; then
    stop_first=1
    report strategy "restart: a destructive migration is pending"
  else
    report strategy blueGreen
  fi
  bg_template
  bg_env "$new"
  # a leftover of an interrupted run on the idle port is not the live one: it goes first
  systemctl stop "$new_unit" 2>/dev/null
  systemctl reset-failed "$new_unit" 2>/dev/null
  mkdir -p "$P_INSTANCES"
  relink "$P_INSTANCES/$new" "../../${target:-}"
  trap '' HUP PIPE # from here on the script runs to its end whatever happens to the connection
  if [ -n "$old" ]; then old_warn=http://$BG_HOST:$old$BG_WARN_PATH; else old_warn=$WARN_URL; fi
  if [ -n "$stop_first" ] && [ -n "$old_active" ]; then
    bg_warn
    systemctl stop "$old_unit"
    report stopped "$old_unit"
  fi
  unit_mark_for "$new_unit"
  _out=$(systemctl start "$new_unit" 2>&1)
  _rc=$?
  report start "$_rc $(printf '%s' "$_out" | head -c 300)"
  if [ "$_rc" != 0 ] || ! bg_check "$new" "$new_unit"; then
    [ "$_rc" = 0 ] || last="systemctl start $new_unit failed: $_out"
    report bg-failed "$last"
    case $last in "exited at start"*) ;; *) bg_journal "$new_unit" ;; esac # a crash quoted it already
    bg_failed_check=1
    bg_undo
    exit "$EX_BG_UNHEALTHY"
  fi
  if [ -z "$stop_first" ] && [ -n "$old_active" ]; then bg_warn; fi
  if ! bg_front "$new"; then
    bg_front "$old" >/dev/null
    bg_undo
    exit "$EX_BG_FRONT"
  fi
  bg_caddy
  _c=$?
  if [ "$_c" != 0 ]; then
    bg_front "$old" >/dev/null
    bg_undo
    if [ "$_c" = 2 ]; then exit "$EX_BG_NO_IMPORT"; fi
    exit "$EX_BG_CADDY"
  fi
  printf '%s\n' "$new" >"$P_INSTANCE.sando-tmp" && mv -f "$P_INSTANCE.sando-tmp" "$P_INSTANCE"
  if [ "$live" != "${target:-}" ]; then
    relink "$P_CURRENT" "${target:-}"
    relink "$P_ERROR_PAGES" "$P_CURRENT/$P_ERROR_PAGES"
    if [ -n "$live" ]; then relink "$P_PREVIOUS" "$live"; fi
    report switched "$(date +%s)"
  fi
  if [ -n "$old_active" ] && [ -z "$stop_first" ]; then
    report drain "$BG_DRAIN"
    sleep "$BG_DRAIN"
  fi
  bg_only_live "$new"
  if [ -n "$old" ]; then rm -f -- "$P_INSTANCES/$old"; fi
  if [ "$live" != "${target:-}" ]; then sando_history ok; fi
  healthy
}

# bg_warn: the restart warning to the old instance's users (WARN=1), before it stops. With
# WARN_ABORT a failed warning stops the new instance and ends the switch (nothing user-visible).
bg_warn() {
  [ "$WARN" = 1 ] || return 0
  _abort=$WARN_ABORT
  WARN_ABORT=0
  WARN_URL=$old_warn
  warn
  WARN_ABORT=$_abort
  case ${code:-} in 2??) return 0 ;; esac
  if [ "$WARN_ABORT" = 1 ]; then
    bg_undo
    exit "$EX_WARNING_FAILED"
  fi
}

# bg_undo: the new instance stopped, nothing of it left; the old one runs (restarted when the
# restart path had stopped it); the release is marked failed when it failed its own check
bg_undo() {
  systemctl stop "$new_unit" 2>/dev/null
  systemctl disable --quiet "$new_unit" 2>/dev/null
  systemctl reset-failed "$new_unit" 2>/dev/null
  rm -f -- "$P_INSTANCES/$new"
  report bg-stopped "$new_unit"
  if [ -n "$stop_first" ] && [ -n "$old_active" ]; then
    systemctl reset-failed "$old_unit" 2>/dev/null
    unit_mark_for "$old_unit"
    systemctl start "$old_unit"
    report reverted "$(date +%s)"
    if [ -n "$old" ]; then bg_check "$old" "$old_unit"; else HEALTH_URL=$BG_PLAIN_HEALTH SERVICE=$old_unit health ''; fi
  fi
  if [ -n "$bg_failed_check" ] && [ "$live" != "${target:-}" ]; then mark_failed "${VERSION:-}" "$last"; fi
  if [ "$live" != "${target:-}" ]; then
    sando_history "failed: ${live##*/} still serves"
    prune "$PRUNE_FAILED"
  fi
  list_releases final-
}
