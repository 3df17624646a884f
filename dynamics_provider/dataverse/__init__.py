"""The Dataverse Web API operations the resources use, as typed functions over one DataverseClient.

All OData query text lives here, one module per domain (solutions, users, roles, privileges, leads);
`writes` holds the one settle-and-resend policy for writes whose answer was lost. The providers above
only map check / diff / create / read / update / delete onto these functions.
"""
