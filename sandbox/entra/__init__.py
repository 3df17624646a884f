"""Emulator of Microsoft Entra ID for one tenant, as msal and azure-identity call it.

    directory.py  the tenant: apps (service principals, secrets, certificates, federated subjects),
                  users, token signing and verification
    endpoints.py  which paths are Entra's, the caller of a request, OpenID configuration, keys, userrealm
    token.py      the v2.0 token endpoint: client secret, certificate and federated assertions, password grant
    errors.py     Entra's OAuth error shape (AADSTS numbers), also for faults injected on Entra paths
"""

from sandbox.entra.directory import FEDERATED_AUDIENCE, Directory, InvalidToken
from sandbox.entra.endpoints import ENTRA_PATH, Entra, caller_of
from sandbox.entra.errors import EntraError, fault_error

__all__ = ["ENTRA_PATH", "FEDERATED_AUDIENCE", "Directory", "Entra", "EntraError", "InvalidToken", "caller_of",
           "fault_error"]
