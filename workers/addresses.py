"""Server addresses as a worker is given them: checked at once, before any connection.

A malformed address (`localhost` without a port, `127.0.0.1:abc`, `http://host:1`, port
99999) would otherwise make gRPC retry a name it can never resolve until the connect wait ran
out, and then report the server as "not reachable".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from paramserver.errors import InvalidArgument

_ADDRESS = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")
ADDRESS_FORM = "host:port, e.g. 127.0.0.1:50051, localhost:50051 or [::1]:50051"


def parse_servers(servers: str | Sequence[str]) -> list[str]:
    """'a:1,b:2' or ['a:1', 'b:2'] -> ['a:1', 'b:2']; the order is the shard order.

    Each address must be host:port with a port in 1..65535 (no scheme such as http://);
    anything else is refused at once, before any connection is tried.
    """
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    addresses = [a.strip() for a in items if a.strip()]
    if not addresses:
        raise InvalidArgument(f"no server address given; expected {ADDRESS_FORM}")
    for address in addresses:
        match = _ADDRESS.match(address)
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise InvalidArgument(f"server address {address!r} is not of the form "
                                  f"{ADDRESS_FORM} (port 1-65535)")
    return addresses
