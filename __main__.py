"""Entry point of the lead-destination Pulumi program: one LeadDestination per stack.

Reads and validates the `lead-destination:*` stack config, builds the component tree and exports
the values Partner Center asks for (`pulumi stack output --show-secrets partnerCenter`).
"""

import pulumi

from components.lead_destination import run
from components.settings import ConfigError

try:
    run()
except ConfigError as error:
    # One message listing every problem, without a Python traceback.
    raise pulumi.RunError(str(error)) from None
