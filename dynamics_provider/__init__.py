"""Dynamic resources that manage the Dynamics 365 (Dataverse) side of a marketplace lead destination.

Public names are imported lazily so that the HTTP client and auth modules can be used without
loading the Pulumi SDK. The module path of each resource class is part of every stack's state.
"""

from importlib import import_module
from typing import Any

_PUBLIC = {
    "SolutionImport": "dynamics_provider.solution",
    "ApplicationUser": "dynamics_provider.application_user",
    "SecurityRoleAssignment": "dynamics_provider.role_assignment",
    "RolePrivileges": "dynamics_provider.role_privileges",
    "LeadWriteCheck": "dynamics_provider.lead_check",
    "SyncedUser": "dynamics_provider.synced_user",
    "OfferLeadDestination": "dynamics_provider.offer_destination",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'dynamics_provider' has no attribute {name!r}")
    return getattr(import_module(module), name)
