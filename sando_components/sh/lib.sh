# shellcheck shell=sh
# sando's node-side library, put before every step script by scripts.py (with outcomes.sh and
# the step's parameters as shell variables). Every step runs under `set -u` and `umask 077`:
# whatever it writes is private to root unless the step sets a mode on purpose.

# report KEY VALUE...: tell sando something, as one JSON object on one line of stdout:
#   {"@":"KEY","v":"VALUE"}
# KEY is [a-z0-9-]+; VALUE is any text (the words joined by spaces; newlines, tabs and
# other control characters become spaces, quotes and backslashes are escaped). scripts.py
# reads these lines (Report.parse); any other output is not part of the report.
report() {
  _sando_k=$1
  shift
  _sando_v=$*
  case $_sando_v in
    *[\"\\]* | *[![:print:]]*)
      _sando_v=$(printf '%s' "$_sando_v" | tr '\n\r\t' '   ' | tr -d '\000-\037\177' |
        sed 's/\\/\\\\/g; s/"/\\"/g')
      ;;
  esac
  printf '{"@":"%s","v":"%s"}\n' "$_sando_k" "$_sando_v"
}

# fail CODE KEY VALUE...: report KEY VALUE, then exit with CODE (a name from outcomes.sh).
fail() {
  _sando_code=$1
  shift
  report "$@"
  exit "$_sando_code"
}
