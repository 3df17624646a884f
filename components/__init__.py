"""ComponentResources that wire the Entra identity and the Dynamics lead writer together (no HTTP here).

Stack config parsing lives in `settings`; every Dataverse call is made by `dynamics_provider`.
"""
