"""`gatehouse reviews …`: just-in-time access reviews, for the people an access rule names as
reviewers (`review: {groups, ttl}`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.options import ControlplaneOpt, OutputOpt, call
from cli.output import Format, emit, emit_json

reviews_app = typer.Typer(
    help="Access reviews: approve or deny sessions that an access rule lets open only after a "
    "review.",
    no_args_is_help=True,
)


def _document(review: Any) -> dict[str, Any]:
    return {
        "id": review.id,
        "requester": review.requester_email or review.requester,
        "actor": review.actor or None,
        "connection": review.connection,
        "mode": review.mode,
        "rule": review.rule,
        "reviewers": list(review.reviewer_groups),
        "status": review.status,
        "created": review.created,
        "expires": review.expires,
        "decided_by": review.decided_by or None,
        "reason": review.reason or None,
        "grant_until": review.grant_until or None,
        "mine": review.mine,
    }


@reviews_app.command("list")
def reviews_list(controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table) -> None:
    """List the pending reviews you may decide, and your own requests.

    Example: gatehouse reviews list -o json
    """
    from cli import rpc
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        return await stub.ListReviews(client_pb2.ListReviewsRequest(), metadata=md)

    reviews = [_document(r) for r in call(address, work).reviews]
    emit(
        output,
        reviews,
        ["ID", "REQUESTER", "CONNECTION", "MODE", "RULE", "REVIEWERS", "STATUS", "EXPIRES"],
        [
            [
                r["id"],
                r["requester"],
                r["connection"],
                r["mode"],
                r["rule"],
                ", ".join(r["reviewers"]),
                r["status"],
                r["grant_until"] if r["status"] == "approved" else r["expires"],
            ]
            for r in reviews
        ],
        empty="No reviews to decide.",
    )


@reviews_app.command("approve")
def reviews_approve(
    review_id: Annotated[str, typer.Argument(metavar="ID", help="The review's id.")],
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Approve a review: the requester may use that connection and mode for the rule's TTL.

    Example: gatehouse reviews approve 6f1c…
    """
    from cli import rpc
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        return await stub.ApproveReview(client_pb2.ApproveReviewRequest(id=review_id), metadata=md)

    review = _document(call(address, work).review)
    if output is Format.json:
        emit_json(review)
        return
    typer.echo(
        f"review {review['id']} approved: {review['requester']} may {review['mode']} on "
        f"{review['connection']} until {review['grant_until']}"
    )


@reviews_app.command("deny")
def reviews_deny(
    review_id: Annotated[str, typer.Argument(metavar="ID", help="The review's id.")],
    reason: Annotated[str, typer.Option(help="Why; shown to the requester.")],
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Deny a review: the waiting session ends with your reason.

    Example: gatehouse reviews deny 6f1c… --reason 'not during the freeze'
    """
    from cli import rpc
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        request = client_pb2.DenyReviewRequest(id=review_id, reason=reason)
        return await stub.DenyReview(request, metadata=md)

    review = _document(call(address, work).review)
    if output is Format.json:
        emit_json(review)
        return
    typer.echo(f"review {review['id']} denied: {review['reason']}")
