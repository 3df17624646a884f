//go:build tools

// Package tools pins the Pulumi CLI (module github.com/pulumi/pulumi/pkg/v3) for `make pulumi`.
package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
