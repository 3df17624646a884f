module leaddestination/tools/pulumi-python-sdk

go 1.26.6

// The two scripts of the Python SDK's release (pulumi-language-python-exec and
// pulumi-resource-pulumi-python) are taken from this module at the Python SDK's pin.
require github.com/pulumi/pulumi/sdk/v3 v3.272.0
