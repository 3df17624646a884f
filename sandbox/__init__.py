"""Offline stand-ins for Entra ID, the Dataverse Web API and Partner Center.

Test and demo machinery only: nothing in dynamics_provider or components imports this package.
"""
