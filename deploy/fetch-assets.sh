#!/usr/bin/env bash
# The dashboard's chart library, from the npm registry, into the Python package (api/static/vendor),
# so the page needs no internet: pinned by version and checked against the registry's integrity.
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.6.1
integrity=sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g==
dest=api/static/vendor/chart.umd.min.js
stamp=api/static/vendor/chart.js.version
[ -f "$dest" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "chart.js@$version" >/dev/null 2>&1)
got="sha512-$(openssl dgst -sha512 -binary "$tmp/chart.js-$version.tgz" | base64 -w0)"
if [ "$got" != "$integrity" ]; then
  echo "chart.js $version: integrity $got, expected $integrity" >&2
  exit 1
fi
tar -xzf "$tmp/chart.js-$version.tgz" -C "$tmp" package/dist/chart.umd.min.js package/LICENSE.md
mkdir -p api/static/vendor
cp "$tmp/package/dist/chart.umd.min.js" "$dest"
cp "$tmp/package/LICENSE.md" api/static/vendor/chart.js.LICENSE.md
echo "$version" > "$stamp"
