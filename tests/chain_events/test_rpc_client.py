"""The RPC client shared by a process's threads (Celery's thread pool, the scanner's prefetch
and apply lanes): a session per thread, exact counters, endpoints told apart."""
from __future__ import annotations

import threading

import pytest

from chain_events.rpc import RpcClient, RpcInconsistentAnswer


@pytest.mark.chain
def test_one_client_serves_many_threads_each_with_its_own_session(chain):
    client = RpcClient([chain.url])
    sessions, errors = set(), []

    def work():
        try:
            sessions.add(id(client.session))
            for _ in range(25):
                assert int(client.call("eth_blockNumber"), 16) >= 0
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(sessions) == 8
    assert client.round_trips == 200 and client.endpoints[0].total_calls == 200


def test_endpoints_on_one_host_are_told_apart():
    """Labels carry scheme, host and port only (paths hold API keys): two endpoints of one
    provider would otherwise share metrics, health and the endpoint an answer is blamed on."""
    client = RpcClient(["https://rpc.example/key-a", "https://rpc.example/key-b", "https://other.example/x"])
    assert [e.label for e in client.endpoints] == ["https://rpc.example", "https://rpc.example #2",
                                                   "https://other.example"]
    client.report_inconsistent("https://rpc.example #2", RpcInconsistentAnswer("incomplete answer"))
    assert [e["healthy"] for e in client.health()] == [True, False, True]
