"""Transport security and access control (issue #13): credentials, roles, certificates.

`credentials` (what a server and a client hold), `roles` (who may call what, and printing
identities safely), `certs` (a private CA for a cluster; needs `cryptography`). The server's
interceptor is `paramserver/server/auth.py`; gRPC credentials are built in `transport.py`.
"""

from paramserver.security.credentials import ClientSecurity, ServerSecurity, TokenTable
from paramserver.security.roles import AccessRole, Principal, printable

__all__ = ["AccessRole", "ClientSecurity", "Principal", "ServerSecurity", "TokenTable",
           "printable"]
