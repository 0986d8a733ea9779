#!/usr/bin/env bash
# Firewall of a makenotwork host (nftables): allow SSH, HTTP and HTTPS in,
# everything out, drop the rest. Run once as root on a prod host.
# NOT for test nodes or CI: it replaces the host's whole ruleset.
set -euo pipefail

SSH_PORT="${SSH_PORT:-22}"

if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup-firewall.sh: must run as root" >&2
    exit 1
fi
if ! command -v nft >/dev/null 2>&1; then
    echo "setup-firewall.sh: nft not found (apt-get install nftables)" >&2
    exit 1
fi

rules="$(mktemp)"
trap 'rm -f "$rules"' EXIT
cat >"$rules" <<NFT
flush ruleset

table inet filter {
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        ct state invalid drop
        iif "lo" accept
        meta l4proto { icmp, ipv6-icmp } accept
        tcp dport ${SSH_PORT} ct state new limit rate 30/minute accept
        tcp dport { 80, 443 } accept
        udp dport 443 accept
    }
    chain forward {
        type filter hook forward priority 0; policy drop;
    }
    chain output {
        type filter hook output priority 0; policy accept;
    }
}
NFT

nft -c -f "$rules"          # check first: a broken ruleset must not lock us out
nft -f "$rules"
install -m 0644 "$rules" /etc/nftables.conf
systemctl enable --now nftables >/dev/null
echo "firewall: ssh(${SSH_PORT}), http, https open; everything else dropped"
