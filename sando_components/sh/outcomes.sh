# shellcheck shell=sh
# shellcheck disable=SC2034  # each step uses some of these
# The exit codes of sando's node-side steps: the one table the scripts and the Python share
# (scripts.OUTCOMES reads this file). One line per outcome: NAME=CODE  # meaning
EX_OK=0  # done
# shellcheck disable=SC2034
EX_RESTART_FAILED=120  # sando restart: systemctl restart failed
# shellcheck disable=SC2034
EX_RESTART_UNHEALTHY=121  # sando restart: the service restarted but fails its health check
# shellcheck disable=SC2034
EX_RESTART_NOTHING_LIVE=122  # sando restart: no release is live (nothing to restart)
