"""The running API answers as its published schema says.

schemathesis fuzzes every operation of /api/schema/ on a live server: its coverage cases (each
field at its boundaries, each way of being wrong) and generated positive and negative data.
Callers are the customer and the provider of real bookings, one of them booked, authorized and
paid through the API and the chain, with bearer tokens from Sign-In with Ethereum; invite codes
are redeemed by fresh wallets, with a real code. Every
finding of schemathesis' checks fails the test: status codes, content types, response bodies and
headers, server errors, schema-valid requests refused or invalid ones accepted, authentication
not enforced. The throttles keep their production rates: their 429s are fuzzed too.
"""
from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import pytest
import requests
import schemathesis
from django.core.signals import request_started
from django.utils import timezone
from eth_utils import to_checksum_address
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation

from escrow.models import BookingStatus, StatusSource
from escrow.services import create_booking
from escrow.state import transition
from escrow.wallet_tokens import issue_wallet_token
from reconciliation.disputes import open_dispute

from .helpers import personal_sign, siwe_message, wallet

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

# Generated cases per operation, positive and negative together, on top of its coverage cases.
EXAMPLES_PER_OPERATION = 40
ROLES = ("customer", "provider")
# Negative cases add random headers. These are HTTP's rather than the API's: they name the server
# (Django refuses a Host outside ALLOWED_HOSTS before the API sees the request), frame the message,
# or negotiate a representation (JSON is the only one; DRF answers 406 to anything else).
HTTP_LEVEL_HEADERS = {"host", "content-length", "transfer-encoding", "accept"}

# The schema's custom string format (escrow.serializers.AddressField): a pattern cannot say
# "EIP-55 checksum", so schema-valid addresses come from here: checksummed, lower or upper case.
schemathesis.openapi.format(
    "ethereum-address",
    st.binary(min_size=20, max_size=20)
    .filter(any)
    .flatmap(lambda raw: st.sampled_from([to_checksum_address(raw), "0x" + raw.hex(), "0x" + raw.hex().upper()])),
)

CONFIG = schemathesis.Config.from_dict(
    {
        "operations": [
            # A schema cannot produce a valid signature: every schema-valid sign-in it makes is refused.
            {"include-name": "POST /api/auth/verify/", "checks": {"positive_data_acceptance": {"enabled": False}}}
        ]
    }
)


@dataclass(frozen=True)
class Caller:
    address: str
    token: str


class Api:
    """The live server as schemathesis sees it: every answer is checked against the schema."""

    def __init__(self, base_url: str, session: requests.Session):
        self.base_url = base_url
        self.session = session
        self.schema = schemathesis.openapi.from_url(f"{base_url}/api/schema/", config=CONFIG)
        self.answers: dict[str, Counter] = {}

    def operation(self, label: str):
        method, path = label.split(" ", 1)
        return self.schema[path][method]

    def send(self, case, token: str | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else None
        response = case.call_and_validate(base_url=self.base_url, session=self.session, headers=headers)
        self.answers.setdefault(case.operation.label, Counter())[response.status_code] += 1
        return response

    def call(self, label: str, token: str | None = None, **parts):
        return self.send(self.operation(label).Case(**parts), token)


@dataclass
class World:
    """Who calls each operation, and on which booking."""

    paid_booking: str
    unpaid_booking: str
    paying: dict[str, Caller]  # customer (a funded anvil account) and provider of paid_booking
    authorizing: dict[str, Caller]  # of unpaid_booking; own wallets, so own throttle budgets
    booking: dict[str, Caller]  # fresh wallets booking providers
    inviting: dict[str, Caller]  # fresh wallets making invite codes (their own code caps)
    invite_code: str  # a real code, redeemed by a fresh wallet in each positive case
    disputing: dict[str, Caller]  # customer and provider of the two bookings below (own throttle budgets)
    disputable_booking: str  # PAID, no dispute yet: the first positive dispute opens one
    disputed_booking: str  # PAID, with a dispute open: read by the GET cases

    def callers_for(self, label: str) -> dict[str, Caller]:
        if label == "POST /api/bookings/{booking_id}/authorize-payment/":
            return self.authorizing
        if label == "POST /api/bookings/":
            return self.booking
        if "/api/referrals/" in label:
            return self.inviting
        if "/dispute/" in label:
            return self.disputing
        return self.paying

    def booking_for(self, label: str) -> str:
        if label == "GET /api/bookings/{booking_id}/dispute/":
            return self.disputed_booking
        if label == "POST /api/bookings/{booking_id}/dispute/":
            return self.disputable_booking
        return self.unpaid_booking if "authorize-payment" in label else self.paid_booking


def _sign_in(api: Api, account) -> Caller:
    nonce = api.call("POST /api/auth/nonce/").json()["nonce"]
    message = siwe_message(account.address, nonce)
    body = {"message": message, "signature": personal_sign(account, message)}
    return Caller(account.address, api.call("POST /api/auth/verify/", body=body).json()["token"])


def _build_world(api: Api, chain) -> World:
    customer, provider = chain.accounts.customers[0], wallet("schema-fuzz provider")
    paying = {"customer": _sign_in(api, customer), "provider": _sign_in(api, provider)}
    # Booked, authorized, paid on chain and reported, all through the API.
    token = paying["customer"].token
    scheduled_at = (timezone.now() + timedelta(days=3)).isoformat()
    body = {"provider": provider.address, "amount": "25.50", "scheduled_at": scheduled_at}
    paid = api.call("POST /api/bookings/", token, body=body).json()["id"]
    on_paid = {"booking_id": paid}
    signed = api.call("POST /api/bookings/{booking_id}/authorize-payment/", token, path_parameters=on_paid).json()
    receipt = chain.pay_booking(signed["message"], signed["signature"], customer.address)
    tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
    report = api.call(
        "POST /api/bookings/{booking_id}/submit-transaction/", token, path_parameters=on_paid, body={"tx_hash": tx_hash}
    ).json()
    assert (report["status"], report["booking_status"]) == ("mined", "PAID"), report

    def fresh(role, purpose):
        account = wallet(f"schema-fuzz {purpose} {role}")
        return Caller(account.address, issue_wallet_token(account.address).token)

    inviter = fresh("inviter", "inviting")
    invite_code = api.call("POST /api/referrals/invite-codes/", inviter.token).json()["code"]
    authorizing = {role: fresh(role, "authorizing") for role in ROLES}
    unpaid = create_booking(
        customer=authorizing["customer"].address,
        provider=authorizing["provider"].address,
        amount="7",
        scheduled_at=timezone.now() + timedelta(days=5),
    )
    disputing = {role: fresh(role, "disputing") for role in ROLES}

    def paid_for_disputes():
        # Paid as far as the database knows: disputes neither read nor write the chain.
        booking = create_booking(customer=disputing["customer"].address, provider=disputing["provider"].address,
                                 amount="12.50", scheduled_at=timezone.now() + timedelta(days=2))
        transition(booking, BookingStatus.PAID, source=StatusSource.CHAIN)
        return booking

    disputed = paid_for_disputes()
    open_dispute(disputed, opened_by=disputing["customer"].address, reason="not as described")
    return World(
        paid_booking=paid,
        unpaid_booking=str(unpaid.uuid),
        paying=paying,
        authorizing=authorizing,
        booking={role: fresh(role, "booking") for role in ROLES},
        inviting={role: fresh(role, "inviting") for role in ROLES},
        invite_code=invite_code,
        disputing=disputing,
        disputable_booking=str(paid_for_disputes().uuid),
        disputed_booking=str(disputed.uuid),
    )


def _prepare(case, world: World, caller: Caller) -> str:
    """Aim the case at the world; returns the token to send. Only what stays as valid (or as
    invalid) as schemathesis generated it is changed, so its checks still judge the answer right."""
    label = case.operation.label
    meta = case.meta
    for name in [name for name in case.headers or {} if name.lower() in HTTP_LEVEL_HEADERS]:
        del case.headers[name]
    path = meta.components.get(ParameterLocation.PATH) if meta else None
    if path is not None and path.mode.is_positive:
        case.path_parameters["booking_id"] = world.booking_for(label)
    positive_body = meta and meta.generation.mode.is_positive and isinstance(case.body, dict)
    if label == "POST /api/bookings/" and positive_body:
        _inside_the_rules_a_schema_cannot_state(case.body)
    if label == "POST /api/auth/logout/":
        return issue_wallet_token(caller.address).token  # each call revokes the token it sends
    if label == "POST /api/referrals/redeem/" and positive_body:
        # A code that exists, redeemed by a wallet that has none yet (each wallet redeems once).
        case.body["code"] = world.invite_code
        return issue_wallet_token(wallet(f"schema-fuzz invitee {secrets.token_hex(8)}").address).token
    return caller.token


def _inside_the_rules_a_schema_cannot_state(body: dict) -> None:
    """A booking's time relative to now (stated in the operation's description): positive cases
    are brought inside it."""
    body["scheduled_at"] = (timezone.now() + timedelta(days=2)).isoformat()


def _coverage(api: Api, operation, world: World) -> None:
    callers = world.callers_for(operation.label)
    cases = api.schema.iter_coverage_cases(
        operation,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=api.schema.config.generation_for(operation=operation),
    )
    for index, case in enumerate(cases):
        caller = callers[ROLES[index % len(ROLES)]]
        api.send(case, _prepare(case, world, caller))


def _fuzz(api: Api, operation, world: World) -> None:
    callers = world.callers_for(operation.label)
    generated = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],  # no shrinking: a finding is reported as found, with its curl
    )
    @given(case=generated, role=st.sampled_from(ROLES))
    def fuzz(case, role):
        caller = callers[role]
        api.send(case, _prepare(case, world, caller))

    fuzz()


def test_the_running_api_answers_as_its_schema_says(live_server, chain_settings):
    started, served = time.monotonic(), Counter()

    def count(**kwargs):
        served["requests"] += 1

    request_started.connect(count)
    # Closing the session ends the keep-alive connections, and with them the server threads
    # (and their database connections).
    try:
        with requests.Session() as session:
            api = Api(live_server.url, session)
            world = _build_world(api, chain_settings)
            findings = {}
            for result in api.schema.get_all_operations():
                operation = result.ok()
                try:
                    _coverage(api, operation, world)
                    _fuzz(api, operation, world)
                except FailureGroup as exc:
                    findings[operation.label] = str(exc)
    finally:
        request_started.disconnect(count)
    answered = {label: dict(sorted(counts.items())) for label, counts in sorted(api.answers.items())}
    print(f"{served['requests']} requests in {time.monotonic() - started:.0f} s; answers: {answered}")
    assert not findings, "\n\n".join(f"== {label}\n{message}" for label, message in findings.items())
    # Every operation was also seen succeeding, so the success answers were checked as well.
    assert all(any(200 <= code < 300 for code in counts) for counts in api.answers.values()), answered
    assert len(api.answers) == len(list(api.schema.get_all_operations()))
