# shellcheck shell=sh
# health EXPECT: GET HEALTH_URL until a 2xx answer whose JSON `version` field is EXPECT (or whose
# `commit` field is COMMIT, the pinned commit; EXPECT '' = any 2xx), or until HEALTH_TIMEOUT
# seconds passed. Reports `health ok BODY` or `health fail LAST-ERROR`; sets $last.
# A freshly started app usually answers within a few tenths of a second: the first waits are
# HEALTH_WAITS (fast), then every HEALTH_INTERVAL seconds.
# params: HEALTH_URL HEALTH_TIMEOUT HEALTH_WAITS HEALTH_INTERVAL COMMIT

# json_field NAME: the first "NAME": "value" of the JSON on stdin (a nested one later is not it)
json_field() {
  grep -o "\"$1\"[[:space:]]*:[[:space:]]*\"[^\"]*\"" | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/'
}

health() {
  _end=$(($(date +%s) + HEALTH_TIMEOUT))
  _n=0
  while :; do
    if _body=$(curl -fsS --max-time 3 "$HEALTH_URL" 2>&1); then
      _v=$(printf '%s\n' "$_body" | json_field version)
      _c=$(printf '%s\n' "$_body" | json_field commit)
      if [ -z "$1" ] || [ "$_v" = "$1" ] || [ "$_c" = "$COMMIT" ]; then
        report health "ok $(printf '%s' "$_body" | head -c 300)"
        return 0
      fi
      last="serves version '$_v', not '$1'"
    else
      last=$(printf '%s' "$_body" | tail -n 1 | head -c 300)
    fi
    if [ "$(date +%s)" -ge "$_end" ]; then
      report health "fail $last"
      return 1
    fi
    _n=$((_n + 1))
    _w=$HEALTH_INTERVAL
    _i=0
    for _f in $HEALTH_WAITS; do
      _i=$((_i + 1))
      if [ "$_i" = "$_n" ]; then _w=$_f; fi
    done
    sleep "$_w"
  done
}
