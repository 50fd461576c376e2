"""`gatehouse connections list`: what the caller may use, and how (options and help: in
cli.commands)."""

from __future__ import annotations

from typing import Any

from cli.output import Format, emit
from cli.rpc import call


def connections_list(controlplane: str | None, output: Format) -> None:
    from cli import rpc
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        return await stub.ListConnections(client_pb2.ListMyConnectionsRequest(), metadata=md)

    items = [
        {
            "name": c.name,
            "type": c.type,
            "modes": list(c.modes),
            "review": (
                {"modes": list(c.review_modes), "groups": list(c.review_groups)}
                if c.review_modes
                else None
            ),
        }
        for c in call(address, work).connections
    ]
    rows = [
        [
            i["name"],
            i["type"],
            ", ".join(i["modes"]) or "-",
            (
                f"{', '.join(i['review']['modes'])} (by {', '.join(i['review']['groups'])})"
                if i["review"]
                else "-"
            ),
        ]
        for i in items
    ]
    emit(
        output,
        items,
        ["NAME", "TYPE", "MODES", "REVIEW NEEDED"],
        rows,
        empty="No connections you may use: ask an admin for an access rule for your groups.",
    )
