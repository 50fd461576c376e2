"""`gatehouse connections list`: what the caller may use, and how."""

from __future__ import annotations

from typing import Any

import typer

from cli.options import ControlplaneOpt, OutputOpt, call
from cli.output import Format, emit

connections_app = typer.Typer(help="The connections you may use.", no_args_is_help=True)


@connections_app.command("list")
def connections_list(
    controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table
) -> None:
    """List the connections you may use, the modes the access rules grant you on each, and
    which of them need a review first.

    Example: gatehouse connections list -o json
    """
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
