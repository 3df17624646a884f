"""Entry point of the lead-destination Pulumi program: one LeadDestination per stack.

Reads and validates the `lead-destination:*` stack config, builds the component tree and exports
the values Partner Center asks for (`pulumi stack output --show-secrets partnerCenter`).
"""

import sys

import pulumi

from components.lead_destination import run
from components.settings import ConfigError

# Pulumi's language hosts read this exit code as "the program showed the user an error already": the CLI
# then adds no "an unhandled error occurred" line and no traceback (pulumi-language-python-exec uses it).
ERROR_ALREADY_SHOWN = 32

try:
    run()
except ConfigError as error:
    # One message listing every problem: logged once, exit code 1 from `pulumi preview` and `pulumi up` alike.
    pulumi.log.error(str(error))
    sys.exit(ERROR_ALREADY_SHOWN)
