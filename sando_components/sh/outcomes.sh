# shellcheck shell=sh
# shellcheck disable=SC2034  # each step uses some of these
# The exit codes of sando's node-side steps: the one table the scripts and the Python share
# (scripts.OUTCOMES reads this file). One line per outcome: NAME=CODE  # meaning
EX_OK=0  # done
