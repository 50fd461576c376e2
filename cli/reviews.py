"""`gatehouse reviews …`: just-in-time access reviews, for the people an access rule names as
reviewers (`review: {groups, ttl}`). Their options and help are declared in cli.commands."""

from __future__ import annotations

from typing import Any

from cli.output import Format, echo, emit, emit_json
from cli.rpc import call


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


def reviews_list(controlplane: str | None, output: Format) -> None:
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


def reviews_approve(review_id: str, controlplane: str | None, output: Format) -> None:
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
    echo(
        f"review {review['id']} approved: {review['requester']} may {review['mode']} on "
        f"{review['connection']} until {review['grant_until']}"
    )


def reviews_deny(review_id: str, reason: str, controlplane: str | None, output: Format) -> None:
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
    echo(f"review {review['id']} denied: {review['reason']}")
