//go:build tools

// Package tools pins github.com/pulumi/pulumi/sdk/v3 at the Python SDK's version, whose module
// holds the language host's exec script and the dynamic-provider shim.
package tools

import _ "github.com/pulumi/pulumi/sdk/v3/go/common/version"
