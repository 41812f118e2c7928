"""The dev-stack launchers against real Valkey and PostgreSQL servers (no mocks)."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis
import redis.exceptions

from gateway.devstack.pidfile import (
    PidFile,
    free_port,
    group_members,
    marker_matches,
    pid_alive,
    spawn,
    stop_pid,
)
from gateway.devstack.postgres import (
    PostgresServer,
    kill_postgres,
    restart_postgres,
    start_postgres,
    stop_postgres,
)
from gateway.devstack.valkey import (
    ValkeyServer,
    kill_valkey,
    restart_valkey,
    start_valkey,
    stop_valkey,
    valkey_binary,
)

pytestmark = pytest.mark.timeout(60)


class Started:
    """Pids started by a test; the finalizer ends whichever are still alive."""

    def __init__(self) -> None:
        self.pids: list[tuple[int, signal.Signals]] = []

    def valkey(self, server: ValkeyServer) -> ValkeyServer:
        self.pids.append((server.pid, signal.SIGTERM))
        return server

    def postgres(self, server: PostgresServer) -> PostgresServer:
        self.pids.append((server.pid, signal.SIGINT))
        return server

    def stop_all(self) -> None:
        for pid, sig in reversed(self.pids):
            stop_pid(pid, 10.0, sig=sig)


@pytest.fixture
def started() -> Iterator[Started]:
    tracker = Started()
    try:
        yield tracker
    finally:
        tracker.stop_all()


def _client(server: ValkeyServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)


def _cluster_info(client: redis.Redis) -> str:
    return str(client.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


# --- Valkey -------------------------------------------------------------------------------------------------


def test_valkey_binary_is_shipped() -> None:
    path = valkey_binary()
    assert path.name == "valkey-server"
    assert os.access(path, os.X_OK)


def test_valkey_standalone(tmp_path: Path, started: Started) -> None:
    server = started.valkey(start_valkey(tmp_path, maxmemory="64mb"))
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert not server.cluster
    client = _client(server)
    try:
        assert client.ping() is True
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.set("k", "v")
        assert client.get("k") == "v"
    finally:
        client.close()
    # Valkey rewrites its process title to "<binary> 127.0.0.1:PORT": the pid-file marker must match it.
    assert marker_matches(server.pid, f"127.0.0.1:{server.port}")
    assert not marker_matches(server.pid, f"--port {server.port}")
    stop_valkey(server)
    assert not pid_alive(server.pid)


def test_valkey_start_failure_reports_log(tmp_path: Path, started: Started) -> None:
    first = started.valkey(start_valkey(tmp_path / "a"))
    with pytest.raises(RuntimeError, match=r"(?s)exited during start.*last log lines"):
        start_valkey(tmp_path / "b", port=first.port)  # port taken: the second server exits at once


def test_valkey_cluster_mode(tmp_path: Path, started: Started) -> None:
    server = started.valkey(start_valkey(tmp_path, cluster=True))
    assert server.cluster
    assert (tmp_path / "nodes.conf").exists()
    client = _client(server)
    try:
        info = _cluster_info(client)
        assert "cluster_state:ok" in info
        assert "cluster_slots_assigned:16384" in info
        touch_two = "#!lua\nredis.call('SET', KEYS[1], ARGV[1])\nreturn redis.call('SET', KEYS[2], ARGV[1])"
        # Valkey answers "CROSSSLOT Keys in request don't hash to the same slot"; redis-py maps the prefix.
        with pytest.raises(redis.exceptions.ClusterCrossSlotError):
            client.eval(touch_two, 2, "{camp:1}a", "{camp:2}b", "x")
        assert client.eval(touch_two, 2, "{camp:1}a", "{camp:1}b", "x") == "OK"
        assert client.mget("{camp:1}a", "{camp:1}b") == ["x", "x"]
    finally:
        client.close()

    # A restart keeps the slots through nodes.conf (no second ADDSLOTSRANGE, which would fail); ok again.
    stop_valkey(server)
    again = started.valkey(restart_valkey(server))
    assert again.port == server.port
    client = _client(again)
    try:
        assert "cluster_state:ok" in _cluster_info(client)
    finally:
        client.close()


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
def test_valkey_aof_survives_kill(tmp_path: Path, started: Started, appendfsync: str) -> None:
    server = started.valkey(
        start_valkey(tmp_path, appendonly=True, appendfsync=appendfsync, auto_aof_rewrite=False)
    )
    client = _client(server)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": appendfsync}
        assert client.config_get("auto-aof-rewrite-percentage") == {"auto-aof-rewrite-percentage": "0"}
        client.set("survivor", "42")
        client.incrby("counter", 7)
    finally:
        client.close()
    assert (tmp_path / "appendonlydir").is_dir()
    # Under everysec Valkey may hold a write back up to 2 s while an earlier fsync is slow (a loaded disk): what
    # this test checks is that what reached the AOF survives a kill, so it waits for the last write to be there.
    deadline = time.monotonic() + 5
    while not any(b"counter" in f.read_bytes() for f in (tmp_path / "appendonlydir").glob("*.incr.aof")):
        assert time.monotonic() < deadline, "the last write never reached the AOF"
        time.sleep(0.05)

    kill_valkey(server)
    assert not pid_alive(server.pid)

    again = started.valkey(restart_valkey(server))
    assert (again.port, again.workdir, again.appendonly) == (server.port, server.workdir, True)
    client = _client(again)
    try:
        assert client.get("survivor") == "42"
        assert client.get("counter") == "7"
    finally:
        client.close()


# --- PostgreSQL ---------------------------------------------------------------------------------------------


async def test_postgres_start_query_stop_restart(tmp_path: Path, started: Started) -> None:
    server = started.postgres(await asyncio.to_thread(start_postgres, tmp_path))
    assert server.url == f"postgresql://claimgate@127.0.0.1:{server.port}/claimgate"
    assert server.datadir == tmp_path.resolve() / "pgdata"
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody").pw_uid
        assert _uid_of(server.pid) == nobody
        assert server.datadir.stat().st_uid == nobody
        assert server.datadir.stat().st_mode & 0o777 == 0o700
    assert marker_matches(server.pid, str(server.datadir))

    conn = await asyncpg.connect(server.url, timeout=10)
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("show port") == str(server.port)
        assert await conn.fetchval("select current_database()") == "claimgate"
        assert await conn.fetchval("show fsync") == "off"
        assert await conn.fetchval("show max_connections") == "200"
        await conn.execute("create table kept (id int primary key, note text)")
        await conn.execute("insert into kept values (1, 'before stop')")
    finally:
        await conn.close()

    await asyncio.to_thread(stop_postgres, server)
    assert not pid_alive(server.pid)

    again = started.postgres(await asyncio.to_thread(restart_postgres, server))
    assert (again.port, again.datadir) == (server.port, server.datadir)
    conn = await asyncpg.connect(again.url, timeout=10)
    try:
        assert await conn.fetchval("select note from kept where id = 1") == "before stop"
    finally:
        await conn.close()
    await asyncio.to_thread(stop_postgres, again)
    assert not pid_alive(again.pid)


async def test_postgres_durable_survives_kill(tmp_path: Path, started: Started) -> None:
    server = started.postgres(await asyncio.to_thread(start_postgres, tmp_path, durable=True))
    conn = await asyncpg.connect(server.url, timeout=10)
    try:
        assert await conn.fetchval("show fsync") == "on"
        assert await conn.fetchval("show synchronous_commit") == "on"
        await conn.execute("create table kept (id int primary key)")
        await conn.execute("insert into kept select generate_series(1, 100)")
    finally:
        await conn.close()

    # A crash (SIGKILL of the postmaster; its children notice and exit) and a restart: crash recovery keeps
    # every acknowledged commit. (With durable=False, synchronous_commit=off can lose the last ~0.6 s.)
    await asyncio.to_thread(kill_postgres, server)
    assert not pid_alive(server.pid)
    again = started.postgres(await asyncio.to_thread(restart_postgres, server))
    assert again.durable
    conn = await asyncpg.connect(again.url, timeout=10)
    try:
        assert await conn.fetchval("select count(*) from kept") == 100
    finally:
        await conn.close()


def test_postgres_port_collision_is_an_error(tmp_path: Path, started: Started) -> None:
    first = started.postgres(start_postgres(tmp_path / "a"))
    with pytest.raises(RuntimeError, match=r"another PostgreSQL|exited during start"):
        start_postgres(tmp_path / "b", port=first.port)
    assert pid_alive(first.pid)


def test_postgres_long_workdir_gets_a_short_socket_dir(tmp_path: Path, started: Started) -> None:
    workdir = tmp_path / ("long-" * 12) / ("deeper-" * 6)
    server = started.postgres(start_postgres(workdir))
    try:
        assert server.socket_dir is not None
        assert server.socket_dir.parent == Path("/tmp")
        assert server.socket_dir.name.startswith("cgpg")
        assert (server.socket_dir / f".s.PGSQL.{server.port}").exists()
    finally:
        stop_postgres(server)
    assert server.socket_dir is not None and not server.socket_dir.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to nobody")
def test_postgres_as_root_rejects_a_workdir_nobody_cannot_reach() -> None:
    import shutil
    import tempfile

    hidden = Path(tempfile.mkdtemp(prefix="cg-hidden-", dir="/var/tmp"))  # 0700, outside the temp dir
    try:
        with pytest.raises(RuntimeError, match=re.escape(f"{hidden} is not traversable by user 'nobody'")):
            start_postgres(hidden / "work")
    finally:
        shutil.rmtree(hidden)


# --- Pid file -----------------------------------------------------------------------------------------------


def test_pidfile_add_remove_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "servers.json"
    pids = PidFile(path)
    pids.add(111, "valkey", "127.0.0.1:1")
    pids.add(222, "postgres", "/x/pgdata")
    pids.add(111, "valkey", "127.0.0.1:2")  # re-adding a pid replaces its entry
    assert json.loads(path.read_text()) == [
        {"pid": 222, "kind": "postgres", "marker": "/x/pgdata", "owner": os.getpid()},
        {"pid": 111, "kind": "valkey", "marker": "127.0.0.1:2", "owner": os.getpid()},
    ]
    pids.remove(222)
    assert [e["pid"] for e in PidFile(path).entries()] == [111]
    assert not list(tmp_path.glob(".*.tmp"))


def test_reap_stale_ends_servers_of_a_crashed_launcher(tmp_path: Path, started: Started) -> None:
    path = tmp_path / "run" / "servers.json"
    valkey = started.valkey(start_valkey(tmp_path / "valkey", pidfile=PidFile(path)))
    postgres = started.postgres(start_postgres(tmp_path / "pg", pidfile=PidFile(path)))
    listed = {e["pid"]: e for e in PidFile(path).entries()}
    assert listed[valkey.pid] == {
        "pid": valkey.pid,
        "kind": "valkey",
        "marker": f"127.0.0.1:{valkey.port}",
        "owner": os.getpid(),
    }
    assert listed[postgres.pid]["marker"] == str(postgres.datadir)

    # The launcher "crashed": nothing called stop. A later run reaps what the file lists.
    ended = PidFile(path).reap_stale()
    assert sorted(ended) == sorted([valkey.pid, postgres.pid])
    assert not pid_alive(valkey.pid)
    assert not pid_alive(postgres.pid)
    assert json.loads(path.read_text()) == []
    assert PidFile(path).reap_stale() == []

    # The data survived a clean postgres shutdown: it starts again from the same directory.
    again = started.postgres(restart_postgres(postgres))
    assert again.datadir == postgres.datadir
    stop_postgres(again, PidFile(path))


def test_stop_removes_the_pidfile_entry(tmp_path: Path, started: Started) -> None:
    pids = PidFile(tmp_path / "servers.json")
    server = started.valkey(start_valkey(tmp_path / "v", pidfile=pids))
    assert [e["pid"] for e in pids.entries()] == [server.pid]
    stop_valkey(server, pids)
    assert pids.entries() == []
    assert not pid_alive(server.pid)


def test_reap_stale_spares_a_live_process_without_the_marker(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        path = tmp_path / "servers.json"
        pids = PidFile(path)
        pids.add(sleeper.pid, "valkey", f"127.0.0.1:{free_port()}")  # a recycled pid: wrong marker
        pids.add(sleeper.pid + 10_000_000, "valkey", "127.0.0.1:1")  # no such process
        assert PidFile(path).reap_stale() == []
        assert sleeper.poll() is None
        assert pid_alive(sleeper.pid)
        assert PidFile(path).entries() == []

        # The marker must match a whole argument run, not a fragment: "3" is inside "30" but not an argument.
        pids.add(sleeper.pid, "valkey", "3")
        assert PidFile(path).reap_stale() == []
        assert sleeper.poll() is None

        pids.add(sleeper.pid, "valkey", "30")  # the real marker: it is ended
        assert PidFile(path).reap_stale() == [sleeper.pid]
        assert not pid_alive(sleeper.pid)  # reaped (its exit status was collected by the pid-file code)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stop_pid_tolerates_a_gone_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stop_pid(proc.pid, 1.0)  # no error
    assert not pid_alive(proc.pid)


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_reap_stale_spares_servers_whose_owner_is_alive(tmp_path: Path) -> None:
    """Two test sessions (or launchers) at once share a pidfile: neither ends the other's servers."""
    owner = subprocess.Popen(["sleep", "30"])
    server = subprocess.Popen(["sleep", "31"])
    path = tmp_path / "servers.json"
    try:
        entry = {"pid": server.pid, "kind": "valkey", "marker": "31", "owner": owner.pid}
        path.write_text(json.dumps([entry]))
        assert PidFile(path).reap_stale() == []
        assert server.poll() is None
        assert PidFile(path).entries() == [entry]

        owner.kill()
        owner.wait()
        assert PidFile(path).reap_stale() == [server.pid]  # its owner is gone: now it is stale
        assert PidFile(path).entries() == []
    finally:
        for process in (owner, server):
            process.kill()
            process.wait()


FORKER = "import os, sys, time\nos.fork()\ntime.sleep(60)\n"  # a leader and its child, both with the marker


@pytest.mark.parametrize("end", ["stop_pid", "reap_stale"])
def test_a_leader_killed_minus_9_leaves_nothing_of_its_group(tmp_path: Path, end: str) -> None:
    """As a granian master killed -9 would leave its workers serving: stopping it (or reaping the pidfile)
    ends what is left of its process group."""
    marker = f"claimgate-group-test-{os.getpid()}-{end}"
    leader = spawn([sys.executable, "-c", FORKER, marker], tmp_path / "forker.log")
    try:
        for _ in range(200):
            members = group_members(leader.pid)
            if len(members) == 2:
                break
            time.sleep(0.02)
        [child] = [pid for pid in members if pid != leader.pid]
        leader.kill()
        leader.wait()
        assert pid_alive(child)
        if end == "stop_pid":
            stop_pid(leader.pid)
        else:
            pidfile = PidFile(tmp_path / "pids.json")
            pidfile.add(leader.pid, "gateway", marker)
            assert pidfile.reap_stale() == [child]
        for _ in range(200):
            if not pid_alive(child):
                break
            time.sleep(0.02)
        assert not pid_alive(child)
        assert group_members(leader.pid) == []
    finally:
        for pid in group_members(leader.pid):
            os.kill(pid, signal.SIGKILL)
