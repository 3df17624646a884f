#!/usr/bin/env bash
# `make azurite`: Azurite, Microsoft's Azure Storage emulator, from npm at the version package.json pins
# (package-lock.json fixes the whole tree and its integrity hashes), installed with `npm ci` into
# .tools/azurite; reinstalled only when the lock file changes. tools/azurite.py starts it for the tests
# and the bench. The pin is 3.35.0, the last release whose `engines` accepts Node 20 (3.36.0 asks for
# Node >= 21, 3.37.0 for >= 22).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="$root/.tools/azurite"
lock_sum="$(sha256sum "$here/package-lock.json" | cut -c1-16)"
stamp="$dest/.pins-azurite-$lock_sum"
if [ -f "$stamp" ] && [ -x "$dest/node_modules/.bin/azurite-blob" ]; then
    exit 0
fi
for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "make azurite: $tool is needed to install Azurite (Node.js 20 or later: https://nodejs.org/)" >&2
        exit 2
    fi
done
echo "make azurite: installing azurite $(sed -n 's/.*"azurite": "\(.*\)".*/\1/p' "$here/package.json") (npm ci in .tools/azurite) ..."
rm -rf "$dest"
mkdir -p "$dest"
cp "$here/package.json" "$here/package-lock.json" "$dest/"
(cd "$dest" && npm ci --omit=dev --no-audit --no-fund --loglevel=error)
touch "$stamp"
"$dest/node_modules/.bin/azurite-blob" --version
