"""Offline stand-ins for Entra ID, the Dataverse Web API and Partner Center, plus the rehearsal engine.

Test and demo machinery only: nothing in dynamics_provider or components imports this package.
"""
