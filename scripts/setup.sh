#!/usr/bin/env bash
# make setup: install everything sando needs on a new machine. Idempotent, no
# prompts; a warm re-run only checks stamps and takes a second or two.
#   - Debian packages the tests need (when root; otherwise says what is missing),
#     including PostgreSQL (server + client) for the team backend's tests
#   - the Pulumi engine built from pinned Go modules into .tools/bin
#   - toxiproxy (WAN emulation for make bench) built the same way into .tools/bin
#   - .venv with the pinned Python packages (requirements.txt)
#   - .venv/bin/sando, the operator commands (sando --help)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
start=$(date +%s)
tools=.tools
bin=$tools/bin
mkdir -p "$bin" "$tools/pulumi-home" "$tools/stamps"

say() { printf 'setup: %s\n' "$*" >&2; }

# Versions: the CLI is pinned in engine/cli/go.mod, the language host in
# engine/python/go.mod. The -X stamps below must name the same versions.
PULUMI_VERSION=v3.274.1
PYHOST_SDK_VERSION=v3.68.0
VERSION_PKG=github.com/pulumi/pulumi/sdk/v3/go/common/version.Version
# toxiproxy is pinned in engine/toxiproxy/go.mod; the -X stamp names the same version.
TOXIPROXY_VERSION=v2.5.0

# --- 1. Debian packages -------------------------------------------------------
# The test nodes (scripts/testnodes) boot this machine's own root file system with
# systemd, so what runs on a node is installed here: sshd, caddy, cron, plus the
# tools to build the nodes (iproute2 for veths and netns; util-linux's unshare,
# nsenter, setpriv are essential packages) and what deploys use on a node (zstd; rsync for make bench's baseline); patch applies engine/python/language-host.patch.
# postgresql + postgresql-client: tests/pg.py starts throwaway clusters for the
# postgres:// state backend (README "Several operators"); Debian's own `main`
# cluster on port 5432 is left alone. sudo: a local node run by a non-root operator (tests/e2e/test_local.py);
# python3-venv: the system-python venv below. nftables: sando:switch blueGreen's front (the
# redirect of Caddy's upstream port to the live instance).
apt_pkgs=(openssh-server openssh-client caddy sqlite3 curl git procps
  systemd dbus libpam-systemd cron iproute2 rsync zstd patch postgresql postgresql-client shellcheck socat
  sudo python3-venv nftables)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "missing Debian packages (need root to install): ${missing[*]}"
    say "  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
  fi
fi

# --- 2. Go builds ---------------------------------------------------------------
command -v go >/dev/null || { say "Go is required (https://go.dev) to build the engine"; exit 1; }
# A build is redone when its inputs change: the pinned module files and the recipe (package,
# flags), not any edit of this script.
stamp_of() { { cat "$@"; printf '%s\n' "$RECIPE"; } | sha256sum | cut -c1-16; }

build() { # name dir pkg version-ldflags out [overlay.json file-it-names]
  local name=$1 dir=$2 pkg=$3 ldx=$4 out=$5 overlay=${6:-}
  local flags=(-trimpath -tags grpcnotrace) inputs=("$dir/go.mod" "$dir/go.sum")
  if [ -n "$overlay" ]; then flags+=("-overlay=$repo/$overlay"); inputs+=("$overlay" "$7"); fi
  local want; want=$(RECIPE="$pkg ${flags[*]/#-overlay=*/-overlay} -s -w -X $ldx" stamp_of "${inputs[@]}")
  if [ -x "$out" ] && [ "$(cat "$tools/stamps/$name" 2>/dev/null)" = "$want" ]; then return; fi
  say "go build $pkg (first build takes a few minutes)"
  local t0; t0=$(date +%s)
  (cd "$dir" && go build "${flags[@]}" -ldflags "-s -w -X $ldx" -o "$repo/$out.tmp" "$pkg")
  mv "$repo/$out.tmp" "$out"
  echo "$want" >"$tools/stamps/$name"
  say "built $out in $(($(date +%s) - t0))s"
}
build pulumi engine/cli github.com/pulumi/pulumi/pkg/v3/cmd/pulumi \
  "$VERSION_PKG=$PULUMI_VERSION" "$bin/pulumi"
# The language host is built with one small patch (engine/python/language-host.patch says
# why), applied to a copy of its main.go; `go build -overlay` presents the copy as package
# ./langhost of our wrapper module (Go refuses to overlay files in the module cache), so it
# builds against the same pinned sdk/v3 (go.sum) as before, and nothing is written to engine/.
sdkdir=$(cd engine/python && go mod download -json "github.com/pulumi/pulumi/sdk/v3@$PYHOST_SDK_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
hostbuild=$tools/build/language-host
mkdir -p "$hostbuild"
cp "$sdkdir/python/cmd/pulumi-language-python/main.go" "$hostbuild/main.go" && chmod u+w "$hostbuild/main.go"
patch -s --no-backup-if-mismatch "$hostbuild/main.go" engine/python/language-host.patch
printf '{"Replace": {"%s": "%s"}}\n' "$repo/engine/python/langhost/main.go" "$repo/$hostbuild/main.go" \
  >"$hostbuild/overlay.json"
build pulumi-language-python engine/python ./langhost \
  "$VERSION_PKG=$PYHOST_SDK_VERSION" "$bin/pulumi-language-python-host" "$hostbuild/overlay.json" "$hostbuild/main.go"

# The host runs pulumi-language-python-exec from its own directory; it ships in
# the sdk/v3 module tree (read-only in the module cache: copy it out), with one small patch
# (engine/python/exec.patch: no "Resource monitor has terminated" error after a failed resource).
cp "$sdkdir/python/cmd/pulumi-language-python-exec" "$hostbuild/pulumi-language-python-exec"
chmod u+w "$hostbuild/pulumi-language-python-exec"
patch -s --no-backup-if-mismatch "$hostbuild/pulumi-language-python-exec" engine/python/exec.patch
install -m 0755 "$hostbuild/pulumi-language-python-exec" "$bin/pulumi-language-python-exec"
# Our two small launchers (virtualenv hand-off), see engine/bin/.
install -m 0755 engine/bin/pulumi-language-python engine/bin/pulumi-resource-pulumi-python "$bin/"
install -m 0644 engine/bin/sando-provider-host.py engine/bin/sando_zygote.py "$bin/"

# --- 2b. toxiproxy (bench only: a TCP proxy adding latency/bandwidth/faults) ------------
# Same scheme as the engine: a wrapper module (engine/toxiproxy) pins the version, the
# stamp skips a warm re-run. tests/toxiproxy.py starts the server on loopback.
build toxiproxy-server engine/toxiproxy github.com/Shopify/toxiproxy/v2/cmd/server \
  "github.com/Shopify/toxiproxy/v2.Version=$TOXIPROXY_VERSION" "$bin/toxiproxy-server"
build toxiproxy-cli engine/toxiproxy github.com/Shopify/toxiproxy/v2/cmd/cli \
  "github.com/Shopify/toxiproxy/v2.Version=$TOXIPROXY_VERSION" "$bin/toxiproxy-cli"

# --- 3. Python virtualenv --------------------------------------------------------
want=$(RECIPE=venv stamp_of requirements.txt)
if [ ! -x .venv/bin/python ] || [ "$(cat "$tools/stamps/venv" 2>/dev/null)" != "$want" ]; then
  say "creating .venv from requirements.txt"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" >"$tools/stamps/venv"
fi
# .tools/sysvenv: the same packages for the system's /usr/bin/python3. A test node hides /root
# (where a pyenv or ~/.local Python lives), so sando run inside a node (tests/e2e/test_local.py:
# a local node) uses this one, handed over with SANDO_VENV; it is made here, where PyPI is reachable.
want=$(RECIPE=sysvenv stamp_of requirements.txt)
if [ -x /usr/bin/python3 ] && { [ ! -x "$tools/sysvenv/bin/python" ] || [ "$(cat "$tools/stamps/sysvenv" 2>/dev/null)" != "$want" ]; }; then
  say "creating .tools/sysvenv (/usr/bin/python3) from requirements.txt"
  rm -rf "$tools/sysvenv"
  /usr/bin/python3 -m venv "$tools/sysvenv"
  "$tools/sysvenv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" >"$tools/stamps/sysvenv"
fi

# --- 4. the `sando` operator command (sando_components/cli.py) as .venv/bin/sando --------
# It finds the checkout from its own path (like engine/bin/*) and puts it first on sys.path,
# so it works from any cwd; rewritten only when its text changes.
sando_cmd=$(cat <<'EOF'
#!/bin/sh
# sando promote|status|rollback (sando_components/cli.py); installed by scripts/setup.sh.
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
unset PYTHONHOME
exec "$here/python" -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from sando_components.cli import main; sys.exit(main())' "$repo" "$@"
EOF
)
if [ "$(cat .venv/bin/sando 2>/dev/null)" != "$sando_cmd" ]; then
  printf '%s\n' "$sando_cmd" >.venv/bin/sando.tmp && chmod 0755 .venv/bin/sando.tmp && mv .venv/bin/sando.tmp .venv/bin/sando
  say "installed .venv/bin/sando"
fi

# --- 4b. sando's own modules compiled once, as pip compiles an installed package --------------
# The program and the provider process import sando_components anew on every run. Where the
# environment has PYTHONDONTWRITEBYTECODE=1 (many container images; this machine's), Python never
# writes their bytecode and compiles them again on every run: ~60 ms of a one-node no-op here.
# compileall writes only what is missing or stale; a module edited later is compiled as before.
.venv/bin/python -m compileall -q sando_components __main__.py >/dev/null

# --- 5. check ----------------------------------------------------------------------
got=$("$bin/pulumi" version)
[ "$got" = "$PULUMI_VERSION" ] || { say "pulumi version is '$got', expected $PULUMI_VERSION"; exit 1; }
tp=$("$bin/toxiproxy-server" -version)
[ "$tp" = "toxiproxy-server version $TOXIPROXY_VERSION" ] || { say "toxiproxy-server says '$tp', expected $TOXIPROXY_VERSION"; exit 1; }
command -v cargo >/dev/null || say "warning: cargo not found; the stand-in app (examples/makenotwork) needs Rust"
say "ready in $(($(date +%s) - start))s: $bin/pulumi $got, .venv ($(.venv/bin/python -c 'import importlib.metadata as m; print("pulumi", m.version("pulumi"))'))"
