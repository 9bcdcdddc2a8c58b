#!/usr/bin/env bash
# Reproduce app/static/vendor/: the browser libraries the dashboard (/ui) and the offline
# API docs (/docs, /redoc) load, fetched from the npm registry with `npm pack` into a
# temporary folder and copied, with their licence files, under
# app/static/vendor/<lib>-<version>/. Nothing is loaded from another host at run time.
#
# Bump a version here, run this script, then update the paths in app/routers/ui.py and
# app/static/ui/index.html (the folder names carry the version).
set -euo pipefail
cd "$(dirname "$0")/.."

UPLOT=1.6.32
SWAGGER=5.35.0
REDOC=2.5.2

dest=app/static/vendor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fetch() {  # fetch <package> <version>: unpack the registry tarball into $tmp/<package>
  (cd "$tmp" && npm pack --silent "$1@$2" >/dev/null)
  mkdir -p "$tmp/$1"
  tar xzf "$tmp/$1-$2.tgz" -C "$tmp/$1"
}

copy() {  # copy <package> <folder> <files...>: from the unpacked package into $dest/<folder>
  local pkg=$1 dir=$2
  shift 2
  rm -rf "${dest:?}/$dir"
  mkdir -p "$dest/$dir"
  for f in "$@"; do cp "$tmp/$pkg/package/$f" "$dest/$dir/"; done
}

fetch uplot "$UPLOT"
copy uplot "uplot-$UPLOT" LICENSE dist/uPlot.esm.js dist/uPlot.min.css

fetch swagger-ui-dist "$SWAGGER"
copy swagger-ui-dist "swagger-ui-dist-$SWAGGER" LICENSE NOTICE \
  swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png

fetch redoc "$REDOC"
copy redoc "redoc-$REDOC" LICENSE bundles/redoc.standalone.js \
  bundles/redoc.standalone.js.LICENSE.txt

# The bundles point at source maps we do not ship: drop the comment so no browser asks.
sed -i '/^\/\/# sourceMappingURL=/d' \
  "$dest/swagger-ui-dist-$SWAGGER/swagger-ui-bundle.js" \
  "$dest/redoc-$REDOC/redoc.standalone.js"

# ReDoc's sidebar shows the Redocly logo from cdn.redoc.ly, unconditionally: draw an empty
# inline image instead, so the page asks no other host for anything.
logo='src:"https://cdn.redoc.ly/redoc/logo-mini.svg"'
grep -qF "$logo" "$dest/redoc-$REDOC/redoc.standalone.js"
sed -i "s|$logo|src:\"data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27/%3E\"|" \
  "$dest/redoc-$REDOC/redoc.standalone.js"
! grep -qF "cdn.redoc.ly" "$dest/redoc-$REDOC/redoc.standalone.js"

du -sh "$dest"/*
