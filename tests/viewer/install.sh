#!/usr/bin/env bash
# Installs what the headless-Chromium viewer tests need, from the npm registry:
#   node_modules/playwright-core  (npm ci, pinned by package-lock.json)
#   ohif/                         the built OHIF v3 viewer (the dist/ folder of
#                                 @ohif/app, fetched with npm pack: the package's
#                                 own dependencies are not needed to serve dist/)
# Chromium itself is Debian's (/usr/bin/chromium); nothing downloads a browser.
set -euo pipefail
cd "$(dirname "$0")"
OHIF_VERSION=3.13.2
OHIF_SHA1=26a51ffcc1704c30fff403258a1d7392e9a991f3

npm ci --no-audit --no-fund --loglevel=error
if [ ! -f ohif/.version ] || [ "$(cat ohif/.version)" != "$OHIF_VERSION" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack "@ohif/app@$OHIF_VERSION" --silent >/dev/null)
  tarball="$tmp/ohif-app-$OHIF_VERSION.tgz"
  echo "$OHIF_SHA1  $tarball" | sha1sum -c --quiet -
  rm -rf ohif && mkdir -p ohif
  tar -xzf "$tarball" -C ohif --strip-components=2 package/dist
  echo "$OHIF_VERSION" > ohif/.version
fi
echo "viewer test tools ready: playwright-core $(node -p "require('playwright-core/package.json').version"), OHIF $(cat ohif/.version)"
