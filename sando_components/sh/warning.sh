# shellcheck shell=sh
# The restart warning: POST WARN_URL (the bearer header is the first line of stdin, read by
# warn_read_token before anything else: never argv), then wait out the notice of WARN_SECONDS
# before anything restarts. Reports `warning sent EPOCH` or `warning failed DETAIL`; with
# WARN_ABORT=1 a failed warning exits EX_WARNING_FAILED before anything changed.
# params: WARN_URL WARN_SECONDS WARN_ABORT

warn_read_token() {
  IFS= read -r AUTH || AUTH=''
}

warn() {
  _werr=$(mktemp) || exit
  _code=$(printf '%s\n' "$AUTH" | curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -X POST -H @- \
    -H 'Content-Type: application/json' --data "{\"seconds\": $WARN_SECONDS}" "$WARN_URL" 2>"$_werr")
  AUTH=''
  # shellcheck disable=SC2034  # the HTTP status, read by sando_history (history.sh)
  code=$_code
  _detail=$(head -c 200 "$_werr")
  rm -f "$_werr"
  case $_code in
    2??)
      report warning "sent $(date +%s)"
      sleep "$WARN_SECONDS"
      ;;
    *)
      report warning "failed HTTP ${_code:-000}${_detail:+ $_detail}" # no stray space without a detail
      if [ "$WARN_ABORT" = 1 ]; then exit "$EX_WARNING_FAILED"; fi
      ;;
  esac
}
