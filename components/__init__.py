"""ComponentResources that wire the Entra identity and the Dynamics lead writer together (no HTTP here)."""
