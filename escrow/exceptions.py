"""The API's exception handler: domain errors become JSON answers with a status that says what happened.

  InvalidInput, AmountError, Django ValidationError → 400 {field: [reason]}
  NotPermitted                                     → 403 {"detail": ...}
  IllegalTransition, BookingConflict               → 409 {"detail": ..., "status": current status}
  RpcError (chain node unreachable or erroring)    → 503 {"detail": ...}
  database OperationalError (deadlock, serialization failure, lock or statement timeout,
  connection lost)                                 → 503 {"detail", "code", "retry_after_seconds"}
  RequestDataTooBig (body over DATA_UPLOAD_MAX_MEMORY_SIZE) → 413 {"detail": ...}
Everything else goes to DRF's default handler (its own APIExceptions, Http404, PermissionDenied);
what that does not know is a bug and stays a 500.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import OperationalError
from prometheus_client import Counter
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from chain_events.rpc import RpcError

from .errors import BookingConflict, InvalidInput, NotPermitted
from .money import AmountError
from .state import IllegalTransition

log = logging.getLogger(__name__)

# SQLSTATEs of a conflict between two transactions, gone if the request is simply made again:
# class 40 (serialization_failure, deadlock_detected), lock_not_available (lock_timeout, NOWAIT),
# query_canceled (statement_timeout).
_CONFLICT_SQLSTATE_PREFIXES = ("40", "55P03", "57014")
DATABASE_CONFLICT_RETRY_AFTER_SECONDS = 1
DATABASE_ERRORS_ANSWERED = Counter(
    "bookme_api_database_errors_total",
    "API requests answered 503 because of a database conflict (deadlock, serialization failure, lock or "
    "statement timeout) or an unreachable database, by code",
    ["code"],
)
DATABASE_UNAVAILABLE_RETRY_AFTER_SECONDS = 5


def database_error_response(exc: OperationalError) -> Response:
    """A database conflict (or the database out of reach) is the client's to retry, never a 500."""
    sqlstate = getattr(exc.__cause__, "sqlstate", None) or ""
    if sqlstate.startswith(_CONFLICT_SQLSTATE_PREFIXES):
        code, retry_after = "database_conflict", DATABASE_CONFLICT_RETRY_AFTER_SECONDS
        detail = "This request met a concurrent update of the same records and was rolled back; send it again."
    else:
        code, retry_after = "database_unavailable", DATABASE_UNAVAILABLE_RETRY_AFTER_SECONDS
        detail = "The database is unavailable right now; try again shortly."
    log.warning("database %s (SQLSTATE %s) while serving an API request: %s", code, sqlstate or "-", exc)
    DATABASE_ERRORS_ANSWERED.labels(code).inc()
    return Response(
        {"detail": detail, "code": code, "retry_after_seconds": retry_after},
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(retry_after)},
    )


def api_exception_handler(exc, context):
    if isinstance(exc, InvalidInput):
        return Response({exc.field: [exc.reason]}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, AmountError):
        return Response({"amount": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DjangoValidationError):
        body = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, NotPermitted):
        return Response({"detail": str(exc)}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, IllegalTransition):
        return Response(
            {"detail": str(exc), "status": exc.from_status, "requested_status": exc.to_status},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, BookingConflict):
        booking = getattr(exc, "booking", None)
        body = {"detail": str(exc)}
        if booking is not None:
            body["status"] = booking.status
        return Response(body, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, RpcError):
        log.warning("chain RPC failed while serving an API request: %s", exc)
        return Response(
            {"detail": "The chain node is unavailable right now; try again shortly."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, OperationalError):
        return database_error_response(exc)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    return drf_exception_handler(exc, context)
