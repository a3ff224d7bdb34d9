"""The coordinator's gRPC surface on a real loopback socket: mutual TLS, roles from
certificates, the health service, and results larger than the message limit."""

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cleanroom import pki, wire
from cleanroom.errors import AuthError, ConfigError, NotFound
from cleanroom.keys import NodeKeys, make_key_bundle
from cleanroom.links import GrpcAnalystLink
from cleanroom.model import JobRecord, JobState, ModelEntry
from cleanroom.pki import TlsIdentity
from cleanroom.transport import from_chunks, secure_channel
from coordinator.config import DEFAULT_RPC_WORKERS, CoordinatorConfig, long_poll_slots
from coordinator.server import RunningCoordinator, start_coordinator
from proto import cleanroom_pb2 as pb
from proto import cleanroom_pb2_grpc as pb_grpc


def _identity(d: Path, name: str) -> TlsIdentity:
    return TlsIdentity.load(d / f"{name}.crt", d / f"{name}.key", d / "ca.crt")


def _config(pki_dir: Path, tmp_path: Path, **overrides: Any) -> CoordinatorConfig:
    return CoordinatorConfig(
        **{
            "name": "coordinator",
            "listen": "127.0.0.1:0",
            "data_dir": tmp_path,
            "cert": pki_dir / "coordinator.crt",
            "key": pki_dir / "coordinator.key",
            "ca": pki_dir / "ca.crt",
            "store_url": f"sqlite:///{tmp_path / 'c.db'}",
            **overrides,
        }
    )


@pytest.fixture()
def coordinator(pki_dir: Path, tmp_path: Path) -> RunningCoordinator:
    running = start_coordinator(config=_config(pki_dir, tmp_path))
    yield running
    running.stop(0)


def _address(c: RunningCoordinator) -> str:
    return f"127.0.0.1:{c.port}"


def test_health_service_serves(coordinator: RunningCoordinator, pki_dir: Path) -> None:
    with GrpcAnalystLink(_address(coordinator), _identity(pki_dir, "alice")) as client:
        assert client.healthy()


def test_client_without_certificate_is_refused(
    coordinator: RunningCoordinator, pki_dir: Path
) -> None:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki_dir / "ca.crt").read_bytes()
    )
    channel = grpc.secure_channel(
        _address(coordinator),
        creds,
        options=[("grpc.ssl_target_name_override", "coordinator")],
    )
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError):
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    channel.close()


def test_certificate_from_another_ca_is_refused(
    coordinator: RunningCoordinator, tmp_path: Path, pki_dir: Path
) -> None:
    other = tmp_path / "other"
    pki.init_ca(other, federation="evil")
    pki.issue(other, "analyst", "alice")
    forged = TlsIdentity(
        (other / "alice.crt").read_bytes(),
        (other / "alice.key").read_bytes(),
        (pki_dir / "ca.crt").read_bytes(),
    )
    with GrpcAnalystLink(_address(coordinator), forged, deadline=5) as client:
        assert not client.healthy()
        with pytest.raises(Exception):
            client.list_jobs()


def test_analyst_certificate_cannot_act_as_node(
    coordinator: RunningCoordinator, pki_dir: Path
) -> None:
    channel = secure_channel(
        _address(coordinator), _identity(pki_dir, "alice"), server_name="coordinator"
    )
    stub = pb_grpc.NodeServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Register(pb.RegisterRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        list(stub.PullWork(pb.PullRequest(wait_seconds=0), timeout=5))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    channel.close()


def test_node_certificate_cannot_use_analyst_api(
    coordinator: RunningCoordinator, pki_dir: Path
) -> None:
    with GrpcAnalystLink(_address(coordinator), _identity(pki_dir, "n1")) as client:
        with pytest.raises(AuthError, match="node certificate"):
            client.list_jobs()


def test_node_cannot_register_another_nodes_keys(
    coordinator: RunningCoordinator, pki_dir: Path, tmp_path: Path
) -> None:
    bundle = make_key_bundle("n2", NodeKeys.generate(), _identity(pki_dir, "n2"))
    channel = secure_channel(
        _address(coordinator), _identity(pki_dir, "n1"), server_name="coordinator"
    )
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.NodeServiceStub(channel).Register(
            pb.RegisterRequest(key_bundle=bundle.to_bytes()), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    channel.close()


def test_result_of_100_mb_streams_in_chunks(
    coordinator: RunningCoordinator, pki_dir: Path
) -> None:
    store = coordinator.state.store
    store.create_job(
        JobRecord(
            "job-big",
            "alice",
            "count",
            "x",
            "h",
            JobState.SUCCEEDED,
            "done",
            "",
            1.0,
            1.0,
        )
    )
    blob = {"result": {"payload": "x" * (100 * 1024 * 1024)}}
    data = json.dumps(blob).encode()
    store.put_result("job-big", data)
    with GrpcAnalystLink(_address(coordinator), _identity(pki_dir, "alice")) as client:
        assert client.result_bytes("job-big") == data
    with GrpcAnalystLink(_address(coordinator), _identity(pki_dir, "bob")) as client:
        with pytest.raises(NotFound):
            client.result_bytes(
                "job-big"
            )  # another analyst's job does not exist for bob


def test_model_registry_is_listed_over_grpc_to_its_analyst_only(
    coordinator: RunningCoordinator, pki_dir: Path
) -> None:
    store = coordinator.state.store
    for job_id, at in (("job-m1", 1.0), ("job-m2", 2.0)):
        store.create_job(
            JobRecord(
                job_id,
                "alice",
                "fedavg",
                "x",
                "h",
                JobState.SUCCEEDED,
                "done",
                "",
                at,
                at,
            )
        )
        store.put_model(ModelEntry(job_id, "alice", "fedavg", at, '{"rounds": 3}'))
    with GrpcAnalystLink(_address(coordinator), _identity(pki_dir, "alice")) as client:
        assert [m.job_id for m in client.models()] == ["job-m2", "job-m1"]
        assert client.models(1, "job-m1") == [
            ModelEntry("job-m1", "alice", "fedavg", 1.0, '{"rounds": 3}')
        ]
    with GrpcAnalystLink(_address(coordinator), _identity(pki_dir, "bob")) as client:
        assert client.models() == []
        with pytest.raises(NotFound):
            client.models(1, "job-m1")


# ---- long polls cannot take every RPC worker ---------------------------------------


def test_long_polls_leave_workers_free_and_extra_pulls_retry_later(
    pki_dir: Path, tmp_path: Path
) -> None:
    """With 4 workers, 2 long polls may wait; a third pull answers at once with a
    retry hint, and analysts are still served while the polls wait."""
    running = start_coordinator(config=_config(pki_dir, tmp_path, rpc_workers=4))
    address = _address(running)
    channels = {
        n: secure_channel(address, _identity(pki_dir, n), server_name="coordinator")
        for n in ("n1", "n2")
    }
    stubs = {n: pb_grpc.NodeServiceStub(c) for n, c in channels.items()}
    for name, stub in stubs.items():
        bundle = make_key_bundle(name, NodeKeys.generate(), _identity(pki_dir, name))
        stub.Register(pb.RegisterRequest(key_bundle=bundle.to_bytes()), timeout=5)

    def pull(node: str, wait: float, ack: int = 0) -> pb.WorkBatch:
        request = pb.PullRequest(wait_seconds=wait, ack_seq=ack)
        chunks = stubs[node].PullWork(request, timeout=30)
        return from_chunks(chunks, pb.WorkBatch)

    try:
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(pull, n, 20.0) for n in ("n1", "n2")]
            presence = running.state.presence
            assert wait_until(
                lambda: presence.connected("n1") and presence.connected("n2")
            )
            assert wait_until(lambda: running.state.polls.waiting == 2)
            extra = pull("n1", 20.0)
            assert not extra.items and extra.retry_after_seconds > 0
            with GrpcAnalystLink(address, _identity(pki_dir, "alice")) as c:
                assert c.healthy()
                assert c.list_jobs(100) == []
            assert not any(w.done() for w in waiting), "the long polls gave up early"
            # Work for a waiting node still reaches it.
            running.state.mailboxes.put("n2", wire.StopJob("j", "failed", ""))
            running.state.mailboxes.put("n1", wire.StopJob("j", "failed", ""))
            batches = [w.result(timeout=10) for w in waiting]
        assert all(len(b.items) == 1 and b.retry_after_seconds == 0 for b in batches)
        # With the slots free again a pull waits, and an empty one asks for no pause;
        # the item delivered before comes again until it is acknowledged.
        assert pull("n1", 0.2).items[0].seq == batches[0].items[0].seq
        again = pull("n1", 0.2, ack=max(b.items[0].seq for b in batches))
        assert not again.items and again.retry_after_seconds == 0
    finally:
        for channel in channels.values():
            channel.close()
        running.stop(0)


@pytest.mark.parametrize("workers", [0, 3, "8", True, 2.5])
def test_rpc_workers_must_be_a_real_pool(workers: object, tmp_path: Path) -> None:
    raw = {"tls": {"cert": "c", "key": "k", "ca": "a"}, "rpc_workers": workers}
    with pytest.raises(ConfigError, match="rpc_workers"):
        CoordinatorConfig.from_mapping(raw, base=tmp_path)


def test_rpc_workers_default_and_override(tmp_path: Path) -> None:
    tls = {"cert": "c", "key": "k", "ca": "a"}
    default = CoordinatorConfig.from_mapping({"tls": tls}, base=tmp_path)
    assert default.rpc_workers == DEFAULT_RPC_WORKERS
    assert long_poll_slots(default.rpc_workers) == 192
    sized = CoordinatorConfig.from_mapping(
        {"tls": tls, "rpc_workers": 40}, base=tmp_path
    )
    assert sized.rpc_workers == 40 and long_poll_slots(40) == 30
    with pytest.raises(ConfigError):
        long_poll_slots(3)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
