#!/usr/bin/env bash
# `make pulumi`: the Pulumi CLI and the Python language host, built from pinned Go modules, with the
# Python SDK's two scripts, installed side by side into .tools/bin/ (the layout of a Pulumi release).
#
# The pins are the go.mod files next to this script (go.sum makes the build reproducible):
#   cli/              github.com/pulumi/pulumi/pkg/v3 + sdk/v3      -> pulumi
#   language-python/  github.com/pulumi/pulumi/sdk/v3 (v3.68.0)     -> pulumi-language-python
#   python-sdk/       github.com/pulumi/pulumi/sdk/v3 at the Python SDK's pin
#                     -> pulumi-language-python-exec, pulumi-resource-pulumi-python
# Rebuilt only when a pin changes (the stamp names the pins). Without Go, a `pulumi` on PATH at least as
# new as the CLI pin is used instead; with neither, it stops and says both ways out.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/.tools/bin"

pin() {  # pin <module dir> <module path>: the version that go.mod requires
    sed -n "s|^[[:space:]]*\(require[[:space:]]\{1,\}\)\{0,1\}$2 \(v[^[:space:]]*\).*|\2|p" "$here/$1/go.mod" | head -n 1
}
cli_version="$(pin cli github.com/pulumi/pulumi/pkg/v3)"
cli_sdk_version="$(pin cli github.com/pulumi/pulumi/sdk/v3)"
host_version="$(pin language-python github.com/pulumi/pulumi/sdk/v3)"
scripts_version="$(pin python-sdk github.com/pulumi/pulumi/sdk/v3)"
python_sdk_pin="$(sed -n 's/^pulumi==\(.*\)$/\1/p' "$root/requirements.txt")"

if [ -z "$cli_version" ] || [ "$cli_version" != "$cli_sdk_version" ]; then
    echo "make pulumi: tools/pulumi/cli/go.mod must require pkg/v3 and sdk/v3 at the same version" \
         "(found '$cli_version' and '$cli_sdk_version')" >&2
    exit 2
fi
if [ "v$python_sdk_pin" != "$scripts_version" ]; then
    echo "make pulumi: tools/pulumi/python-sdk/go.mod requires sdk/v3 $scripts_version but requirements.txt" \
         "pins pulumi==$python_sdk_pin; they must be the same release" >&2
    exit 2
fi

stamp="$bin/.pins-cli-$cli_version-host-$host_version-sdk-$scripts_version"
if [ -f "$stamp" ] && [ -x "$bin/pulumi" ]; then
    exit 0
fi

version_at_least() {  # version_at_least A B: A >= B (dotted numbers, leading v ignored)
    [ "$(printf '%s\n%s\n' "${1#v}" "${2#v}" | sort -V | head -n 1)" = "${2#v}" ]
}

if ! command -v go >/dev/null 2>&1; then
    found="$(command -v pulumi 2>/dev/null || true)"
    if [ -n "$found" ] && [ "$found" != "$bin/pulumi" ]; then
        have="$("$found" version 2>/dev/null | head -n 1)"
        if [ -n "$have" ] && version_at_least "$have" "$cli_version"; then
            real="$(readlink -f "$found")"
            dir="$(dirname "$real")"
            mkdir -p "$bin"
            rm -f "$bin"/pulumi "$bin"/pulumi-language-python "$bin"/pulumi-language-python-exec \
                  "$bin"/pulumi-resource-pulumi-python "$bin"/.pins-*
            for f in pulumi pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python; do
                if [ -e "$dir/$f" ]; then ln -s "$dir/$f" "$bin/$f"; fi
            done
            echo "make pulumi: no Go here; using the Pulumi CLI $have found at $found (pin: $cli_version)"
            exit 0
        fi
        echo "make pulumi: no Go here, and the pulumi on PATH ($found) is ${have:-of unknown version}," \
             "older than the pin $cli_version." >&2
    fi
    cat >&2 <<EOF
make pulumi: cannot provide the Pulumi CLI $cli_version. Either
  - install Go 1.26 or newer (https://go.dev/dl/) with access to a Go module proxy, and run 'make pulumi' again
    (it builds the CLI from the pinned modules in tools/pulumi/), or
  - install the Pulumi CLI $cli_version or newer (https://www.pulumi.com/docs/install/) so that 'pulumi' is on PATH.
EOF
    exit 2
fi

build() {  # build <module dir> <package> <output> <version>
    local started=$SECONDS
    echo "make pulumi: building $3 $4 (go build in tools/pulumi/$1) ..."
    (cd "$here/$1" && CGO_ENABLED=0 go build -mod=readonly -trimpath \
        -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$4" \
        -o "$bin/$3.new" "$2")
    mv -f "$bin/$3.new" "$bin/$3"
    echo "make pulumi: $3 built in $((SECONDS - started)) s"
}

mkdir -p "$bin"
rm -f "$bin"/.pins-*
build cli github.com/pulumi/pulumi/pkg/v3/cmd/pulumi pulumi "$cli_version"
build language-python github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python \
    pulumi-language-python "$host_version"

# The two scripts, from the module cache (read-only, exec bits dropped by the module zip): copied out 0755.
sdk_dir="$(cd "$here/python-sdk" && go mod download -json github.com/pulumi/pulumi/sdk/v3 |
           sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
install -m 0755 "$sdk_dir/python/cmd/pulumi-language-python-exec" "$bin/pulumi-language-python-exec"
install -m 0755 "$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$bin/pulumi-resource-pulumi-python"

echo "make pulumi: $("$bin/pulumi" version) installed in .tools/bin (language host $host_version, Python SDK scripts $scripts_version)"
touch "$stamp"
