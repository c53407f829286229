"""The escrow API's OpenAPI description where drf-spectacular cannot read it off the code: what
strict input refuses, the refusal answers (bodies and headers), the bearer-token scheme.

tests/escrow/test_schema_fuzz.py holds the running API to it.
"""
from __future__ import annotations

from drf_spectacular.extensions import (
    OpenApiAuthenticationExtension,
    OpenApiSerializerExtension,
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer

from .authentication import WalletTokenAuthentication
from .serializers import ConflictSerializer, ErrorSerializer, FieldErrorsSerializer, StrictSerializer, StringField

_BAD_REQUEST = PolymorphicProxySerializer(
    component_name="BadRequest", serializers=[FieldErrorsSerializer, ErrorSerializer], resource_type_field_name=None
)

# Every refusal the API answers, by status; each operation lists those it can give (`refusals`).
REFUSALS = {
    400: OpenApiResponse(_BAD_REQUEST, "Bad input: {field: [reason, ...]}, or {detail} when the body is not JSON"),
    401: OpenApiResponse(ErrorSerializer, "Not signed in, or the bearer token is invalid, expired or revoked"),
    403: OpenApiResponse(ErrorSerializer, "Signed in, but this role may not do this"),
    404: OpenApiResponse(ErrorSerializer, "No such booking visible to the caller"),
    409: OpenApiResponse(ConflictSerializer, "The booking's status does not allow this"),
    413: OpenApiResponse(ErrorSerializer, "The body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE"),
    415: OpenApiResponse(ErrorSerializer, "The body is not application/json"),
    429: OpenApiResponse(ErrorSerializer, "Too many requests: try again in Retry-After seconds"),
    503: OpenApiResponse(
        ErrorSerializer,
        "The chain node is unavailable, or the database met a concurrent update (deadlock, lock timeout): "
        "try again in Retry-After seconds",
    ),
}

# Headers that come with a refusal, whichever operation gives it (see document_refusal_headers).
REFUSAL_HEADERS = {
    "401": {
        "WWW-Authenticate": {
            "schema": {"type": "string"},
            "required": True,
            "description": 'The scheme to authenticate with: Bearer realm="api"',
        }
    },
    "429": {"Retry-After": {"schema": {"type": "integer"}, "required": True, "description": "seconds"}},
    "503": {"Retry-After": {"schema": {"type": "integer"}, "required": True, "description": "seconds"}},
}


def refusals(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: REFUSALS[code] for code in codes}


# The body of those refusals: ErrorSerializer's component.
_ERROR_BODY = {"$ref": "#/components/schemas/Error"}


def document_refusal_headers(result, generator, request, public):
    """drf-spectacular postprocessing hook: every 401, 429 and 503 refusal names its headers.
    (The health check's 503 is a report, not a refusal: it has no Retry-After.)"""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                body = response.get("content", {}).get("application/json", {}).get("schema")
                if code in REFUSAL_HEADERS and body == _ERROR_BODY:
                    response["headers"] = {**response.get("headers", {}), **REFUSAL_HEADERS[code]}
    return result


class StrictSerializerSchema(OpenApiSerializerExtension):
    """A StrictSerializer refuses fields it does not declare: its schema says so."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False}


# What a CharField refuses besides its length: NUL anywhere; unless allow_blank, empty text and
# (when it trims, as by default) text of white space only. For allow_blank, drf-spectacular adds
# the empty string as a `oneOf` alternative of its own, so the pattern must not match it too.
_NO_NUL = "^[^\\x00]+$"
_NOT_BLANK_NO_NUL = "^[^\\x00]*[^\\s\\x00][^\\x00]*$"


class StringFieldSchema(OpenApiSerializerFieldExtension):
    target_class = StringField
    match_subclasses = True

    def map_serializer_field(self, auto_schema, direction):
        field = self.target
        if field.allow_blank:
            return {"type": "string", "pattern": _NO_NUL}
        return {"type": "string", "minLength": 1, "pattern": _NOT_BLANK_NO_NUL if field.trim_whitespace else _NO_NUL}


class FieldErrorsSchema(OpenApiSerializerExtension):
    target_class = FieldErrorsSerializer

    def map_serializer(self, auto_schema, direction):
        return {
            "type": "object",
            "description": "{field: [reason, ...]}; non_field_errors when the body as a whole is wrong",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "minProperties": 1,
        }


class WalletTokenScheme(OpenApiAuthenticationExtension):
    target_class = WalletTokenAuthentication
    name = "walletToken"

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Bearer")
