//go:build tools

// Package tools pins the Python language host for `make pulumi`. The host's own module
// (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3) is refused by the module
// proxy at every version and commit; sdk/v3 v3.68.0 is the newest served release that still
// carries the host inside sdk/v3 (see tools/pulumi/README.md).
package tools

import _ "github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python"
