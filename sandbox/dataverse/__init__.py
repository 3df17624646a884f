"""Emulator of the Dataverse Web API (`{instance_url}/api/data/v9.2/`), one Organization per instance URL.

    organization.py  one organization: lock, seeded state, entry points (request, state dump, drift)
    routing.py       Web API path → operation (a table of URL patterns), $batch execution
    security.py      the caller's systemuser and privileges, depth rules, PrivilegeDenied
    store.py         rows and links of one organization and the rules that keep them consistent
    tables.py        collection queries with paging, row read/update/delete, lead create
    users.py         systemuser create, SetBusinessSystemUser (business-unit moves)
    roles.py         role assignments, role and user privileges, privilege actions
    solutions.py     solution import jobs, uninstall
    drift.py         edits made outside the API (`/_control/orgs/{org}/drift`)
    schema.py        the tables and their columns; odata.py the query options; batch.py $batch framing
    protocol.py      operation results, the error envelope, Dataverse's error codes
    catalogue.py     the privilege catalogue with the depths Dataverse allows

Where each behaviour and error comes from: docs/sandbox.md.
"""

from sandbox.dataverse.organization import Organization
from sandbox.dataverse.security import Principal

__all__ = ["Organization", "Principal"]
