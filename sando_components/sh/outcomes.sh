# shellcheck shell=sh
# shellcheck disable=SC2034  # each step uses some of these
# The exit codes of sando's node-side steps: the one table the scripts and the Python share
# (scripts.OUTCOMES reads this file). One line per outcome: NAME=CODE  # meaning
EX_OK=0  # done
# shellcheck disable=SC2034
EX_HOST_CHECK=100  # host: a host file failed its own tool's check; it did not become live
# shellcheck disable=SC2034
EX_HOST_RELOAD=101  # host: a reload or start failed with a new file; the previous file is back
# shellcheck disable=SC2034
EX_HOST_HEALTH=102  # host: unhealthy after a host-config change; the previous file is back
# shellcheck disable=SC2034
EX_HOST_INPUT=103  # host: the host files did not arrive whole; nothing was changed
# shellcheck disable=SC2034
EX_HOST_WARNING=104  # host: the restart warning failed (abort mode); the previous unit is back, nothing restarted
