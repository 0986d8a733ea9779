# Source this file (`. scripts/env.sh`) to use sando's own engine and the
# embedded local backend from an interactive shell:
#   - PATH gets .tools/bin (pulumi + language host built by `make setup`)
#   - PULUMI_HOME is private to the checkout (.tools/pulumi-home)
#   - the backend is the local file backend under .pulumi-state/ unless
#     PULUMI_BACKEND_URL is already set (bring your own backend that way)
#   - PULUMI_PARALLEL defaults to 64 (Pulumi's own default, 4 x CPUs, would make nodes wait)
#   - PULUMI_SKIP_CHECKPOINTS defaults to true (the state written once per run, below)
#   - .venv/bin (the `sando` command) is on PATH too
#   - no passphrase is set here: export your own PULUMI_CONFIG_PASSPHRASE (or
#     PULUMI_CONFIG_PASSPHRASE_FILE), or use a KMS, before creating or using a stack;
#     sando refuses a stack under none or under the demo's public one (`make demo` sets
#     its own for its throwaway stacks)
_sando_repo=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
export PATH="$_sando_repo/.tools/bin:$_sando_repo/.venv/bin:$PATH"
export PULUMI_HOME="${PULUMI_HOME:-$_sando_repo/.tools/pulumi-home}"
export PULUMI_BACKEND_URL="${PULUMI_BACKEND_URL:-file://$_sando_repo/.pulumi-state}"
export PULUMI_SKIP_UPDATE_CHECK=true
# Pulumi runs at most 4 x CPUs resource operations at once; sando works on every node at once
export PULUMI_PARALLEL="${PULUMI_PARALLEL:-64}"
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
# the state is written once, at the end of a run, not after each step (each write is the whole
# state: a 16-node bump spent 2.7 s of CPU on them, a fleet's grow with its square). sando reads
# every node each run, so a run killed outright is converged by the next `pulumi up` (README
# "Performance"); PULUMI_SKIP_CHECKPOINTS=false brings back a write per step
export PULUMI_SKIP_CHECKPOINTS="${PULUMI_SKIP_CHECKPOINTS:-true}"
export PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK="${PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK:-false}"
mkdir -p "$_sando_repo/.pulumi-state"
unset _sando_repo
