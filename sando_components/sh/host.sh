# shellcheck shell=sh
# sando step `host`: the host config of one node (Caddyfile, unit, sshd drop-in, fail2ban jail,
# firewall and backup scripts, cron entry), as committed at sando:bootstrap.ref, in one exec.
#
# stdin: one line (the restart warning's bearer header, or empty), then a tar holding one
# file per item, named by the item. For each item of PLAN whose bytes or mode differ on the
# node: the candidate is checked by its own tool BEFORE it replaces the live file; then it is
# installed atomically (temp file + rename; the previous copy kept under PREV_DIR) and what
# reads it is reloaded. A reload that fails puts the previous file back and reloads again.
# An identical file changes and reloads nothing.
#
# params: MODE PLAN SERVICE RELEASE_ROOT OWNER CADDY RESTART_UNIT HEALTH_URL CADDY_URL HEALTH_TIMEOUT
# params: HEALTH_INTERVAL WARN_URL WARN_SECONDS WARN_ABORT PREV_DIR UPSTREAM UPSTREAM_DEFAULT LOCK_WAIT
# Parameters:
#   MODE            check (stage and check only: the preview) | apply
#   PLAN            one line per item: ITEM MODE DEST SOURCE LEGACY (SOURCE: path in the repo, for
#                   messages; LEGACY: where earlier sando versions installed the file, or -: an
#                   identical copy there is removed, a different one is left with a warning)
#   SERVICE         the app's unit name (without .service)
#   RELEASE_ROOT    the release root (its releases/ dir is made; chowned to OWNER when set)
#   OWNER           user[:group] to chown the release root to, or empty
#   CADDY           1: the Caddyfile is managed, so Caddy must be enabled and active
#   RESTART_UNIT    1: a changed unit restarts the service here; 0: the switch that follows does
#   HEALTH_URL      the app's health URL (after a unit restart)
#   CADDY_URL       a URL through Caddy (after a Caddyfile change, a Caddy start, a unit restart), or empty
#   HEALTH_TIMEOUT  seconds; HEALTH_INTERVAL seconds
#   WARN_URL WARN_SECONDS WARN_ABORT   the restart warning before a unit restart (WARN_SECONDS 0: none)
#   PREV_DIR        where the previous copy of each replaced file is kept
#   UPSTREAM        blueGreen (sando:switch): the upstream file the Caddyfile imports (made when it
#                   does not exist yet: Caddy dials UPSTREAM_DEFAULT, 127.0.0.1 and the port of the
#                   service's own unit, which the switch points at the live instance), or empty

# the bearer header line comes first on stdin, the tar after it
AUTH=''
IFS= read -r AUTH || AUTH=''

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/sando-host.XXXXXX") || fail "$EX_HOST_INPUT" error "cannot make a temp dir"
NEWTMP=''
# shellcheck disable=SC2317  # run by the traps
cleanup() {
  rm -rf "$STAGE"
  if [ -n "$NEWTMP" ]; then rm -f "$NEWTMP"; fi
}
trap cleanup EXIT
trap 'cleanup; exit 1' HUP INT TERM

if ! tar -x -C "$STAGE" -f - 2>"$STAGE/.tar-err"; then
  fail "$EX_HOST_INPUT" error "the host files did not arrive whole: $(head -c 300 "$STAGE/.tar-err")"
fi
cat >/dev/null # the tar's padding after its end: read all that was sent
exec </dev/null

# --- what changed -------------------------------------------------------------------------

# same ITEM DEST MODE: the node already has exactly these bytes with this mode
same() {
  [ -f "$2" ] && [ ! -L "$2" ] && cmp -s "$STAGE/$1" "$2" && [ "$(stat -c %a "$2")" = "$(printf '%o' "0$3")" ]
}

CHANGED=''
changed() {
  case " $CHANGED " in *" $1 "*) return 0 ;; esac
  return 1
}
# items whose only change is a move: the same bytes from where an earlier sando put them (LEGACY)
# to where they go now, with no other copy at the new path. What reads them runs the same bytes
# already: checked, moved, not reloaded (an upgrade of sando reloads nothing).
MOVED=''
moved() {
  case " $MOVED " in *" $1 "*) return 0 ;; esac
  return 1
}

while read -r item fmode dest src legacy; do
  [ -n "$item" ] || continue
  [ -f "$STAGE/$item" ] || fail "$EX_HOST_INPUT" error "$item was not sent"
  if [ "$legacy" != - ] && [ -f "$legacy" ] && cmp -s "$STAGE/$item" "$legacy"; then
    CHANGED="$CHANGED $item" # an old identical copy to remove
    if [ ! -e "$dest" ] || same "$item" "$dest" "$fmode"; then MOVED="$MOVED $item"; fi
  elif same "$item" "$dest" "$fmode"; then
    report unchanged "$item"
  else
    CHANGED="$CHANGED $item"
  fi
done <<EOF
$PLAN
EOF

# --- checks before anything is live -----------------------------------------------------------

# first_error FILE: the tool's own words, its error lines first (else its last lines)
first_error() {
  if grep -qiE 'error|invalid|fail|bad|unknown|not ' "$1"; then
    grep -iE 'error|invalid|fail|bad|unknown|not ' "$1" | head -n 5
  else
    tail -n 5 "$1"
  fi | tr '\n' ' ' | head -c 600
}

# check_failed ITEM SOURCE OUTFILE: report the check's failure, the staged path named as the source
check_failed() {
  report check-failed "$1" "$(first_error "$3" | sed "s|$STAGE/unit-check/$SERVICE.service|$2|g; s|$STAGE/$1|$2|g")"
  exit "$EX_HOST_CHECK"
}

interpreter() { # the shell that runs a script (its #! line): bash or sh
  case $(head -n 1 "$1") in
    *bash*) echo bash ;;
    *) echo sh ;;
  esac
}


check_staged() { # ITEM SOURCE: the checks that need no live file
  out="$STAGE/.check-$1"
  case $1 in
    caddyfile)
      if ! command -v caddy >/dev/null 2>&1; then
        report check-failed "$1" "caddy is not installed on the node (apt-get install caddy)"
        exit "$EX_HOST_CHECK"
      fi
      _cfg=$STAGE/$1
      if [ -n "$UPSTREAM" ] && [ ! -f "$UPSTREAM" ]; then # checked as it will be: with the upstream file made
        upstream_text "$SERVICE" "$UPSTREAM_DEFAULT" >"$STAGE/.upstream"
        sed "s|$UPSTREAM|$STAGE/.upstream|g" "$STAGE/$1" >"$STAGE/.caddyfile-check"
        _cfg=$STAGE/.caddyfile-check
      fi
      caddy validate --adapter caddyfile --config "$_cfg" >"$out" 2>&1 || check_failed "$1" "$2" "$out"
      report checked "$1" "caddy validate"
      ;;
    unit)
      mkdir -p "$STAGE/unit-check"
      cp "$STAGE/$1" "$STAGE/unit-check/$SERVICE.service"
      systemd-analyze verify --man=no "$STAGE/unit-check/$SERVICE.service" >"$out" 2>&1
      # what it says about this unit (not about other units of the host); before the first release
      # the binary under current/ does not exist yet: not the unit's fault
      grep -F "$SERVICE.service" "$out" | grep -v -F "$RELEASE_ROOT/current/" >"$out.real" || true
      if [ -s "$out.real" ]; then check_failed "$1" "$2" "$out.real"; fi
      report checked "$1" "systemd-analyze verify"
      ;;
    firewall | backup)
      sh_=$(interpreter "$STAGE/$1")
      "$sh_" -n "$STAGE/$1" >"$out" 2>&1 || check_failed "$1" "$2" "$out"
      report checked "$1" "$sh_ -n"
      ;;
  esac
}

while read -r item fmode dest src legacy; do
  if [ -n "$item" ] && changed "$item"; then check_staged "$item" "$src"; fi
done <<EOF
$PLAN
EOF

if [ "$MODE" = check ]; then
  for item in $CHANGED; do report changed "$item"; done
  exit "$EX_OK"
fi

# --- installing --------------------------------------------------------------------------------

# directories others read (caddy serves error pages under the release root): 0755, whatever the umask
(umask 022 && mkdir -p "$RELEASE_ROOT/releases")
mkdir -p "$PREV_DIR"
chmod 0700 "$PREV_DIR"
if [ -n "$UPSTREAM" ] && [ ! -f "$UPSTREAM" ]; then
  (umask 022 && mkdir -p "$(dirname "$UPSTREAM")" && upstream_text "$SERVICE" "$UPSTREAM_DEFAULT" >"$UPSTREAM.sando-tmp" &&
    mv -f "$UPSTREAM.sando-tmp" "$UPSTREAM") && report upstream-made "$UPSTREAM $UPSTREAM_DEFAULT"
fi
if [ -n "$OWNER" ]; then chown -R "$OWNER" "$RELEASE_ROOT"; fi

# install ITEM MODE DEST LEGACY: atomically, the previous copy kept as PREV_DIR/ITEM (or none); an
# identical copy at LEGACY (an earlier sando's path) moved to PREV_DIR/ITEM.legacy
install_file() {
  rm -f "$PREV_DIR/$1" "$PREV_DIR/$1.none" "$PREV_DIR/$1.legacy" "$PREV_DIR/$1.legacy-path"
  if [ "$4" != - ] && [ -f "$4" ]; then
    if cmp -s "$STAGE/$1" "$4"; then
      mv -f "$4" "$PREV_DIR/$1.legacy"
      printf '%s\n' "$4" >"$PREV_DIR/$1.legacy-path"
      report removed-legacy "$1 $4"
    else
      report warning "$4 (where earlier sando versions installed $1) differs from the committed file: left in place; remove it by hand if it is an old copy"
    fi
  fi
  if [ -f "$3" ]; then cp -p "$3" "$PREV_DIR/$1"; else : >"$PREV_DIR/$1.none"; fi
  (umask 022 && mkdir -p "$(dirname "$3")")
  NEWTMP=$(mktemp "$(dirname "$3")/.sando-new.XXXXXX")
  cat "$STAGE/$1" >"$NEWTMP"
  chmod "$2" "$NEWTMP"
  mv -f "$NEWTMP" "$3"
  NEWTMP=''
  report installed "$1"
}

# put_back ITEM DEST: the previous copy back in place (or the file removed when there was none)
put_back() {
  if [ -f "$PREV_DIR/$1.legacy" ]; then mv -f "$PREV_DIR/$1.legacy" "$(cat "$PREV_DIR/$1.legacy-path")"; fi
  if [ -f "$PREV_DIR/$1.none" ]; then
    rm -f "$2"
  else
    NEWTMP=$(mktemp "$(dirname "$2")/.sando-new.XXXXXX")
    cp -p "$PREV_DIR/$1" "$NEWTMP"
    mv -f "$NEWTMP" "$2"
    NEWTMP=''
  fi
  report put-back "$1"
}

# journal UNIT: the unit's last log lines (why a reload or start failed)
journal() {
  journalctl -u "$1" -n 5 --no-pager -o cat 2>/dev/null | tr '\n' ' ' | head -c 500
}

# wait_healthy URL [any]: GET until a 2xx answer (any: any HTTP answer, e.g. Caddy's 502 while the
# app is not started yet) or HEALTH_TIMEOUT; reports `health ok|fail URL DETAIL`
wait_healthy() {
  end=$(($(date +%s) + ${HEALTH_TIMEOUT%.*} + 1))
  while :; do
    code=$(curl -sS --max-time 3 -o /dev/null -w '%{http_code}' "$1" 2>"$STAGE/.curl-err")
    case ${2:-}:$code in
      *:2?? | any:[1-5]??)
        report health "ok $1 HTTP $code"
        return 0
        ;;
    esac
    if [ "$(date +%s)" -ge "$end" ]; then
      report health "fail $1 HTTP ${code:-000} $(head -c 200 "$STAGE/.curl-err" | tr '\n' ' ')"
      return 1
    fi
    sleep "$HEALTH_INTERVAL"
  done
}

ssh_unit() {
  for u in ssh sshd; do
    if systemctl cat "$u.service" >/dev/null 2>&1; then
      echo "$u"
      return 0
    fi
  done
  return 1
}

# reload UNIT: systemctl reload, bounded (RELOAD_TIMEOUT s; exit 124 when it did not end): a Caddy
# without the fix of caddy#7385 (Debian 12's 2.6.2) never tells systemd that a failed reload ended, so
# `systemctl reload caddy` would wait forever and every later reload queue behind it; a restart
# replaces that stuck reload
RELOAD_TIMEOUT=30
reload() {
  timeout "$RELOAD_TIMEOUT" systemctl reload "$1" 2>&1
}

# reload_or_put_back ITEM DEST SOURCE UNIT: reload UNIT for the new file; if that fails, the
# previous file back, reloaded again (restarted when the reload is stuck), and the step fails
# quoting the unit's log
reload_or_put_back() {
  out=$(reload "$4")
  rc=$?
  if [ "$rc" = 0 ]; then
    report reloaded "$4"
    return 0
  fi
  if [ "$rc" = 124 ]; then out="its reload did not end within ${RELOAD_TIMEOUT}s"; fi
  why="$out $(journal "$4")"
  put_back "$1" "$2"
  if { [ "$rc" != 124 ] && reload "$4" >/dev/null; } || systemctl restart "$4" >/dev/null 2>&1; then
    report reload-failed "$1" "$4: $why; the previous $2 is back and $4 runs it"
  else
    report reload-failed "$1" "$4: $why; the previous $2 is back but $4 did not take it either: $(journal "$4")"
  fi
  exit "$EX_HOST_RELOAD"
}

caddy_active=''
# ensure_caddy ITEM DEST SOURCE CHANGED: Caddy enabled and running with the live Caddyfile
ensure_caddy() {
  if ! systemctl is-enabled --quiet caddy 2>/dev/null; then
    systemctl enable --quiet caddy 2>/dev/null && report enabled caddy
  fi
  if systemctl is-active --quiet caddy; then
    if [ "$4" = 1 ]; then reload_or_put_back "$1" "$2" "$3" caddy; fi
    caddy_active=1
    return 0
  fi
  was=$(systemctl is-active caddy 2>/dev/null)
  systemctl reset-failed caddy 2>/dev/null
  if out=$(systemctl start caddy 2>&1); then
    report started "caddy it was ${was:-inactive}"
    caddy_active=1
    return 0
  fi
  why="$out $(journal caddy)"
  if [ "$4" = 1 ]; then
    put_back "$1" "$2"
    systemctl reset-failed caddy 2>/dev/null
    if systemctl start caddy >/dev/null 2>&1; then
      report reload-failed "$1" "caddy: $why; the previous $2 is back and caddy runs it"
    else
      report reload-failed "$1" "caddy: $why; the previous $2 is back but caddy does not start either"
    fi
  else
    report start-failed caddy "$why"
  fi
  exit "$EX_HOST_RELOAD"
}

# in-place check of files whose tool reads the whole configuration (sshd, fail2ban): the new
# file is put in place, the tool checks everything, and the previous file is back if it fails
check_in_place() { # ITEM DEST SOURCE COMMAND...
  item_=$1 dest_=$2 src_=$3
  shift 3
  if ! "$@" >"$STAGE/.check-$item_" 2>&1; then
    put_back "$item_" "$dest_"
    report check-failed "$item_" "$(first_error "$STAGE/.check-$item_" | sed "s|$dest_|$src_ (as $dest_)|g")"
    exit "$EX_HOST_CHECK"
  fi
}

UNIT_CHANGED=''
while read -r item fmode dest src legacy; do
  [ -n "$item" ] || continue
  if ! changed "$item"; then
    if [ "$item" = caddyfile ] && [ "$CADDY" = 1 ]; then ensure_caddy "$item" "$dest" "$src" 0; fi
    continue
  fi
  install_file "$item" "$fmode" "$dest" "$legacy"
  case $item in
    caddyfile)
      ensure_caddy "$item" "$dest" "$src" 1
      app=any # before the app runs (its first release), Caddy answering at all is the check
      if systemctl is-active --quiet "$SERVICE"; then app=''; fi
      if [ -n "$CADDY_URL" ] && ! wait_healthy "$CADDY_URL" $app; then
        put_back "$item" "$dest"
        reload caddy >/dev/null || systemctl restart caddy >/dev/null 2>&1
        report reload-failed "$item" "the site through Caddy ($CADDY_URL) is not healthy with the new Caddyfile; the previous $dest is back"
        exit "$EX_HOST_HEALTH"
      fi
      ;;
    unit)
      systemctl daemon-reload
      # blueGreen: the live instance (SERVICE@PORT) is what starts at boot, not the plain unit
      if [ -z "$UPSTREAM" ]; then systemctl enable --quiet --no-reload "$SERVICE.service" 2>/dev/null; fi
      report daemon-reload "$SERVICE"
      UNIT_CHANGED=1
      ;;
    sshdGit)
      check_in_place "$item" "$dest" "$src" sshd -t
      report checked "$item" "sshd -t"
      if moved "$item"; then
        report note "$dest: moved from $legacy (same bytes); sshd already runs them, not reloaded"
      elif u=$(ssh_unit) && systemctl is-active --quiet "$u"; then
        reload_or_put_back "$item" "$dest" "$src" "$u" # reload: never a restart that drops sessions
      else
        report warning "sshd is not running: $dest installed, read when it starts"
      fi
      ;;
    fail2ban)
      if command -v fail2ban-client >/dev/null 2>&1; then
        check_in_place "$item" "$dest" "$src" fail2ban-client -t
        report checked "$item" "fail2ban-client -t"
        if moved "$item"; then
          report note "$dest: moved from $legacy (same bytes); fail2ban already runs them, not reloaded"
        elif systemctl is-active --quiet fail2ban; then
          reload_or_put_back "$item" "$dest" "$src" fail2ban
        fi
      else
        report warning "fail2ban is not installed (apt-get install fail2ban): $dest installed but not checked or applied"
      fi
      ;;
    firewall)
      report note "$dest installed; it is not run by sando (run it by hand on the node)"
      ;;
  esac
done <<EOF
$PLAN
EOF

# --- a changed unit reaches the running service -----------------------------------------------

warn_restart() {
  [ "${WARN_SECONDS:-0}" -gt 0 ] || return 0
  werr="$STAGE/.warn-err"
  code=$(printf '%s\n' "$AUTH" | curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -X POST -H @- \
    -H 'Content-Type: application/json' --data "{\"seconds\": $WARN_SECONDS}" "$WARN_URL" 2>"$werr")
  AUTH=''
  case $code in
    2??)
      report warning-sent "$(date +%s)"
      sleep "$WARN_SECONDS"
      ;;
    *)
      report warning-failed "HTTP ${code:-000} $(head -c 200 "$werr" | tr '\n' ' ')"
      [ "$WARN_ABORT" = 1 ] && return 1
      ;;
  esac
  return 0
}

restart_service() {
  systemctl reset-failed "$SERVICE" 2>/dev/null
  if out=$(systemctl restart "$SERVICE" 2>&1); then return 0; fi
  report restart-failed "$SERVICE $out $(journal "$SERVICE")"
  return 1
}

healthy_after_restart() {
  wait_healthy "$HEALTH_URL" || return 1
  if [ -n "$CADDY_URL" ] && [ -n "$caddy_active" ]; then wait_healthy "$CADDY_URL" || return 1; fi
  return 0
}

if [ -n "$UNIT_CHANGED" ]; then
  unit_dest=$(printf '%s\n' "$PLAN" | awk '$1 == "unit" {print $3}')
  unit_src=$(printf '%s\n' "$PLAN" | awk '$1 == "unit" {print $4}')
  if [ ! -e "$RELEASE_ROOT/current" ]; then
    report unit-restart "none: no release is live yet (the first switch starts it)"
  elif [ -n "$UPSTREAM" ]; then
    report unit-restart "blueGreen: the next switch starts the new instance with it ($SERVICE@.service is derived from it)"
  elif [ "$RESTART_UNIT" != 1 ]; then
    report unit-restart "left to the switch to the pinned version, which restarts $SERVICE"
  else
    # one switch or restart at a time on the node (switch.sh, sando restart): wait LOCK_WAIT s for one
    # at work, else change nothing
    if ! switch_lock "$LOCK_WAIT" "$RELEASE_ROOT"; then
      put_back unit "$unit_dest"
      systemctl daemon-reload
      fail "$EX_BUSY" unit-restart "a switch or restart still runs there (waited $LOCK_WAIT s): the previous unit is back, nothing restarted"
    fi
    trap '' HUP PIPE # from here on, a lost connection must not leave the service half-restarted
    if ! warn_restart; then
      put_back unit "$unit_dest"
      systemctl daemon-reload
      fail "$EX_HOST_WARNING" unit-restart "the restart warning failed (abort mode): the previous unit is back, nothing restarted"
    fi
    report restarted "$SERVICE its unit file changed ($unit_src)"
    if restart_service && healthy_after_restart; then
      :
    else
      put_back unit "$unit_dest"
      systemctl daemon-reload
      if restart_service && healthy_after_restart; then
        report unit-reverted "the previous unit is back and $SERVICE is healthy with it"
      else
        report unit-reverted "the previous unit is back but $SERVICE is not healthy with it either"
      fi
      exit "$EX_HOST_HEALTH"
    fi
  fi
fi
exit "$EX_OK"
