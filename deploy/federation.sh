#!/usr/bin/env bash
# The files of deploy/compose.yaml's federation: a federation CA, and bank, tax and registry.
#
#   deploy/federation.sh [OUT]      # default: deploy/parties; needs `bund` (PATH, or .venv)
#
# OUT/federation   the federation CA (ca.key stays here, never on a node), roster, revocations
# OUT/PARTY        what `bund party init` makes: certificates and keys, the operator CA and a
#                  first operator credential (OUT/PARTY/operator/operator.toml, for the port
#                  compose publishes), the approver key
# OUT/nodes/PARTY  what PARTY's node container mounts on /etc/bund, and nothing else: node.toml
#                  (listen 0.0.0.0:7443, state in the volume, the health check on 8081, the
#                  other two as peers by service name), policy.toml (the other two as
#                  counterparties; add datasets), the roster and revocations with all three
#                  parties, its certificate and keys, the operator CA certificate
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-deploy/parties}"
if [ -n "${BUND:-}" ]; then read -r -a bund <<<"$BUND"
elif command -v bund >/dev/null; then bund=(bund)
else bund=(.venv/bin/bund)
fi
[ ! -e "$out/federation" ] || { echo "federation.sh: $out/federation exists: choose another OUT" >&2; exit 1; }
parties=(bank tax registry)
declare -A role=([bank]=bank [tax]=tax [registry]=registry)
declare -A port=([bank]=7443 [tax]=7444 [registry]=7445)   # as compose.yaml publishes them
# What a node reads (node.toml names each): the rest of OUT/PARTY stays off the node.
node_files=(node.toml policy.toml ca.pem node.pem node.key audit_ed25519.key audit_ed25519.pub
  approver_ed25519.pub operator_ca.pem operators_revoked.json)

"${bund[@]}" federation init "$out/federation" --name compose
for p in "${parties[@]}"; do
  "${bund[@]}" party init "$p" --role "${role[$p]}" --federation "$out/federation" --out "$out/$p" \
    --listen 0.0.0.0:7443 >/dev/null
done
for p in "${parties[@]}"; do
  dir="$out/$p"
  sed -i "s|^state_dir = \"state\"|state_dir = \"/var/lib/bund/state\"|" "$dir/node.toml"
  sed -i "s|^node = \"127.0.0.1:7443\"|node = \"127.0.0.1:${port[$p]}\"|" "$dir/operator/operator.toml"
  {
    printf '\n[health]\nlisten = "0.0.0.0:8081"\n'
    for q in "${parties[@]}"; do
      [ "$q" = "$p" ] || printf '\n[peers.%s]\naddress = "%s:7443"\n' "$q" "$q"
    done
  } >>"$dir/node.toml"
  for q in "${parties[@]}"; do
    [ "$q" = "$p" ] || printf '\n[counterparties.%s]\nroles = ["%s"]\n' "$q" "${role[$q]}" >>"$dir/policy.toml"
  done
  mkdir -p "$out/nodes/$p"
  for f in "${node_files[@]}"; do cp -p "$dir/$f" "$out/nodes/$p/$f"; done
  # The roster as published once all three are enrolled.
  cp -p "$out/federation/roster.json" "$out/federation/revocations.json" "$out/nodes/$p/"
  "${bund[@]}" config check "$out/nodes/$p/node.toml"
done
if [ "$(id -u)" = 0 ]; then
  chown -R 10001:10001 "$out/nodes"   # the containers' bund user reads its keys
  echo "federation.sh: $out/nodes belongs to uid 10001 (the containers' bund user)"
else
  echo "federation.sh: let the containers' user read the keys: sudo chown -R 10001:10001 $out/nodes"
  echo "  (rootless podman: podman unshare chown -R 10001:10001 $out/nodes)"
fi
