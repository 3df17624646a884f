"""Fleet operations for partners who run this program for many Dynamics organizations: one Pulumi stack
per customer, reviewed, converged, onboarded and audited together (`python -m fleet --help`).

Built on Pulumi's Automation API and the user's own Pulumi setup (backend, secrets provider, login);
the stacks are the project's ordinary stacks, usable with the plain `pulumi` CLI too.
"""
