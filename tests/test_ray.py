"""The Ray backend on a real multi-node Ray cluster started on this machine (loopback only).

One module-scoped cluster (``ray.cluster_utils.Cluster``): a head and a worker node, one CPU and
a small object store each, Ray's object spilling off. Tests cover partition tasks spread over
the nodes, versions that outlive the driver that made them, a node lost with its data
(recomputed from lineage), memory-only data against the cluster's spilling configuration, the
governance canary over every object in the object store, and a subset of the governance suite
run against both backends through a real server.
"""

from __future__ import annotations

import os

# Ray resolves "127.0.0.1" to the host's routable address unless told this is a local-only
# cluster; every process (the server, scripts) inherits it. Must precede ``import ray``.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import hashlib
import json
import socket
import subprocess
import sys
import textwrap
import tomllib
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import IN_CI, POSTGRES_URL, ServerHandle
from test_governance import (  # noqa: F401 - fixtures and tests reused on both backends
    CANARIES,
    ROWS,
    _policies,
    pg_customer,
    test_memory_only_and_export_deny_policies,
    test_no_grant_means_access_denied_on_every_path_and_it_is_audited,
    test_sharing_and_revocation_take_effect_on_the_next_call,
    test_users_with_different_row_filters_never_see_each_others_rows,
)

import ldw

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:  # pragma: no cover - depends on the install
    if IN_CI:
        pytest.fail("CI=true and ray is not importable: install ldw[ray] (ldw[dev] has it)",
                    pytrace=False)
    pytest.skip("ray is not installed (pip install 'ldw[ray]')", allow_module_level=True)

pytestmark = pytest.mark.postgres

STORE = 200 * 2**20  # object store per node
TABLE_ROWS = 40_000


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node on loopback; this test process is a driver of it."""
    args = {"num_cpus": 1, "object_store_memory": STORE, "include_dashboard": False,
            "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={
        **args, "_system_config": {"automatic_object_spilling_enabled": False}})
    worker = cluster.add_node(**args)
    ray.init(address=cluster.address, namespace="ldw", log_to_driver=False)
    cluster.workers = [worker]
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def pg_table(pg_engine):
    """``<schema>.t``: id, name, amount numeric(12,2), day date; plus the expected checksum."""
    schema = f"ldw_ray_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
        conn.exec_driver_sql(
            f"create table {schema}.t as select g as id, 'name-' || g as name, "
            f"(g * 1.25)::numeric(12,2) as amount, date '2020-01-01' + mod(g, 1000) as day "
            f"from generate_series(1, {TABLE_ROWS}) g")
        rows = conn.exec_driver_sql(f"select id, name, amount, day from {schema}.t "
                                    "order by id").all()
    expected = _digest([dict(r._mapping) for r in rows])
    yield schema, expected
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"drop schema {schema} cascade")


def _digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()


def checksum(table: pa.Table) -> str:
    return _digest(sorted(table.to_pylist(), key=lambda row: row["id"]))


def _warehouse(cluster, tmp_path: Path, **settings) -> ldw.Warehouse:
    return ldw.connect(in_process=True, config={"sources": {"pg": {"url": POSTGRES_URL}}},
                       backend="ray", ray_address=cluster.address,
                       shm_dir=str(tmp_path / "shm"), spill_dir=str(tmp_path / "spill"),
                       mask_key_file=str(tmp_path / "mask.key"),
                       **{"memory_limit": "300MiB", **settings})


def _engine(wh: ldw.Warehouse):
    return wh._backend.engine


def _script(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (a separate Ray driver / client session)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).parent)


def test_backend_is_validated():
    from ldw.config import load_settings

    assert load_settings({}, backend="ray", ray_address="auto").ray_address == "auto"
    with pytest.raises(ldw.ConfigError, match="backend must be one of"):
        load_settings({}, backend="spark")


def test_an_unreachable_ray_address_is_a_clear_error_in_seconds(tmp_path):
    """Nothing listens at ray_address: ray.init alone would retry for minutes; ldw says what is
    wrong and what to do at once. In a fresh process, as this one is already a Ray driver."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed below: nothing listens there
    done = _script("""
        import sys, time
        import ldw
        started = time.monotonic()
        try:
            ldw.connect(in_process=True, backend="ray", ray_address=sys.argv[1],
                        shm_dir=sys.argv[2] + "/shm", spill_dir=sys.argv[2] + "/spill")
        except ldw.ServerUnavailable as exc:
            print(f"{time.monotonic() - started:.1f}", exc)
        """, f"127.0.0.1:{port}", str(tmp_path), timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, message = done.stdout.strip().split(" ", 1)
    assert float(seconds) < 30, message
    assert f"127.0.0.1:{port}" in message and "ray start --head" in message, message


def test_partitioned_materialization_spreads_tasks_over_nodes(cluster, pg_table, tmp_path):
    schema, expected = pg_table
    wh = _warehouse(cluster, tmp_path)
    try:
        ds = wh.map("t", f"pg.{schema}.t", partition_on="id", partitions=4)
        ds.cache()
        engine = _engine(wh)
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        read_on = set(engine.store.nodes[f"{wh._backend.user}/t"])
        assert len(read_on) >= 2 and read_on <= alive          # tasks ran on both nodes
        version = engine.dataset(*_key(wh, "t")).version
        refs = engine.store.refs(version)
        where = ray.experimental.get_object_locations(refs)
        holders = {node for loc in where.values() for node in loc["node_ids"]}
        assert len(holders) >= 2                                # and the batches stayed there
        assert len(engine.query_log) == 5                       # 4 ranges + NULL keys
        data = ds.to_arrow()
        assert data.num_rows == TABLE_ROWS
        assert data.schema.field("name").type == pa.string()
        assert data.schema.field("amount").type == pa.decimal128(12, 2)
        assert checksum(data) == expected
        assert wh.sql("SELECT count(*) AS n FROM t")["n"].item() == TABLE_ROWS
        assert ds.info()["state"] == "cached" and ds.info()["tier"] == "memory"
        none = wh.map("none", f"pg.{schema}.t", where="id < 0").to_arrow()
        assert none.num_rows == 0 and none.schema.names == ["id", "name", "amount", "day"]
    finally:
        wh.close()


def _key(wh: ldw.Warehouse, name: str) -> tuple[str, str]:
    return wh._backend.user, name


def test_a_failing_read_in_a_task_is_a_clear_error_and_publishes_nothing(cluster, pg_engine,
                                                                         pg_table, tmp_path):
    schema, _ = pg_table
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {schema}.doomed as select * from {schema}.t")
    wh = _warehouse(cluster, tmp_path)
    try:
        ds = wh.map("doomed", f"pg.{schema}.doomed")
        with pg_engine.begin() as conn:                 # gone after planning, before the read
            conn.exec_driver_sql(f"drop table {schema}.doomed")
        with pytest.raises(ldw.SourceError, match="source 'pg'") as caught:
            ds.cache()
        assert "Traceback" not in str(caught.value)
        assert ds.info()["state"] == "failed"
        holder = ray.get_actor(_engine(wh).store.name, namespace="ldw")
        assert ray.get(holder.versions.remote()) == {}
        assert _engine(wh).store.used_bytes() == 0
    finally:
        wh.close()


def test_capacity_spills_least_recently_used_versions_to_the_servers_disk(cluster, pg_table,
                                                                          tmp_path):
    schema, expected = pg_table
    wh = _warehouse(cluster, tmp_path, memory_limit="2MiB")
    try:
        first = wh.map("first", f"pg.{schema}.t", partition_on="id", partitions=2).cache()
        assert first.info()["tier"] == "memory"
        second = wh.map("second", f"pg.{schema}.t").cache()     # does not fit next to first
        assert first.info()["state"] == "spilled" and first.info()["tier"] == "disk"
        assert second.info()["tier"] == "memory"
        store = _engine(wh).store
        assert store.used_bytes() <= 2 * 2**20
        assert list((tmp_path / "spill").rglob("*.arrow"))      # an Arrow file on the server
        assert checksum(first.to_arrow()) == expected == checksum(second.to_arrow())
        big = wh.map("big", sql=f"select * from {schema}.t cross join generate_series(1, 3) g",
                     source="pg")                               # ~3x the whole memory_limit
        with pytest.raises(ldw.CapacityExceeded, match="does not fit"):
            big.cache()
        assert store.used_bytes() <= 2 * 2**20
        holder = ray.get_actor(store.name, namespace="ldw")
        assert all(v["dataset"] != f"{wh._backend.user}/big"
                   for v in ray.get(holder.versions.remote()).values())
    finally:
        wh.close()


def test_in_cluster_client_redeems_a_single_use_ticket(cluster, pg_table, tmp_path):
    schema, expected = pg_table
    wh = _warehouse(cluster, tmp_path)
    try:
        wh.map("t", f"pg.{schema}.t", partition_on="id", partitions=2).cache()
        answer = wh._backend.call("ray_attach", {"name": "t"})
        ticket = answer["ticket"]
        assert answer["rows"] == TABLE_ROWS and set(ticket) >= {"ticket", "actor", "address"}
        # a client in the cluster: a separate driver process, no ldw server or catalog
        done = _script("""
            import json, sys
            from ldw.storage.ray_reader import read_ticket
            import ldw
            ticket = json.loads(sys.argv[1])
            table = read_ticket(ticket)
            print(json.dumps({"rows": table.num_rows,
                              "ids": sum(table["id"].to_pylist())}))
            try:
                read_ticket(ticket)
            except ldw.AccessDenied as exc:
                print("again:", exc)
        """, json.dumps(ticket))
        assert done.returncode == 0, done.stderr[-2000:]
        first, again = done.stdout.strip().splitlines()[-2:]
        assert json.loads(first) == {"rows": TABLE_ROWS, "ids": TABLE_ROWS * (TABLE_ROWS + 1)
                                     // 2}
        assert again.startswith("again: unknown, used or expired ticket")
        audit = wh.audit(limit=10)
        assert "attach" in audit["action"].to_list()
    finally:
        wh.close()


def _memfd_maps() -> list[str]:
    return [line for line in Path("/proc/self/maps").read_text().splitlines()
            if "memfd:ldw-" in line]


def test_local_clients_of_a_ray_server_attach_from_the_object_store(cluster, pg_table,
                                                                    tmp_path):
    """A client that is a driver of the server's cluster maps the objects (no copy by the
    server); any other local client gets a descriptor of a copy, as from the local backend."""
    schema, expected = pg_table
    server = ServerHandle(tmp_path, backend="ray", ray_address=cluster.address).start()
    try:
        wh = server.local()                                     # this process: a Ray driver
        ds = wh.map("t", f"pg.{schema}.t", partition_on="id", partitions=2)
        before = _memfd_maps()
        data = ds.to_arrow()
        assert checksum(data) == expected
        assert _memfd_maps() == before                          # no server-made copy mapped
        outside = _script("""
            import json, sys
            from pathlib import Path
            import ldw
            table = ldw.connect(config=sys.argv[1], autostart=False).dataset("t").to_arrow()
            maps = [l for l in Path("/proc/self/maps").read_text().splitlines()
                    if "memfd:ldw-" in l]
            print(json.dumps({"rows": table.num_rows, "memfd": len(maps)}))
        """, str(server.config))
        assert outside.returncode == 0, outside.stderr[-2000:]
        assert json.loads(outside.stdout.strip().splitlines()[-1]) == {"rows": TABLE_ROWS,
                                                                       "memfd": 1}
        assert wh.status()["backend"] == "ray"
    finally:
        server.stop()


def test_a_session_ends_and_a_new_one_attaches_without_a_source_query(cluster, pg_table,
                                                                      tmp_path):
    """Versions belong to the detached holder, not to the driver that made them."""
    schema, expected = pg_table
    config = {"sources": {"pg": {"url": POSTGRES_URL}}, "server": {
        "backend": "ray", "ray_address": cluster.address, "state_dir": str(tmp_path / "state"),
        "shm_dir": str(tmp_path / "shm"), "spill_dir": str(tmp_path / "spill"),
        "catalog": f"sqlite:///{tmp_path / 'catalog.db'}",
        "mask_key_file": str(tmp_path / "mask.key"), "memory_limit": "300MiB"}}
    first = _script("""
        import json, sys
        from ldw.config import load_settings
        from ldw.engine import Engine
        from ldw.service import Service
        from test_ray import checksum
        config, schema = json.loads(sys.argv[1]), sys.argv[2]
        engine = Engine(load_settings(config))
        service = Service(engine)
        service.call("alice", "map", {"name": "t", "table": f"pg.{schema}.t",
                                      "partition_on": "id", "partitions": 2})
        info, table = service.attach_table("alice", {"name": "t"}, None)
        print(json.dumps({"version": info["version"], "checksum": checksum(table),
                          "queries": len(engine.query_log)}))
        engine.close()
    """, json.dumps(config), schema)
    assert first.returncode == 0, first.stderr[-3000:]
    made = json.loads(first.stdout.strip().splitlines()[-1])
    assert made["checksum"] == expected and made["queries"] == 3

    from ldw.config import load_settings
    from ldw.engine import Engine
    from ldw.service import Service

    engine = Engine(load_settings(config))                      # a new session, same catalog
    try:
        assert engine.dataset("alice", "t").state == "cached"   # adopted from the holder
        info, table = Service(engine).attach_table("alice", {"name": "t"}, None)
        assert info["version"] == made["version"]
        assert checksum(table) == expected
        assert engine.query_log == []                           # no source query
    finally:
        engine.evict("alice", "t")
        engine.close()


def test_memory_only_follows_the_clusters_spilling_configuration(cluster, pg_table,
                                                                 tmp_path):
    schema, expected = pg_table
    wh = _warehouse(cluster, tmp_path)
    try:
        assert _engine(wh).store.spilling is False              # read from the cluster
        ds = wh.map("m", f"pg.{schema}.t", memory_only=True).cache()
        assert ds.info()["memory_only"] and checksum(ds.to_arrow()) == expected
    finally:
        wh.close()
    # a cluster with Ray's default configuration spills to disk: memory-only is refused,
    # and a Ray started by ldw itself (no ray_address) never spills: accepted
    code = """
        import json, sys
        import ray
        import ldw
        schema, folder, own = sys.argv[1], sys.argv[2], sys.argv[3] == "own"
        if not own:
            ray.init(address="local", num_cpus=1, object_store_memory=100 * 2**20,
                     include_dashboard=False, log_to_driver=False)
        wh = ldw.connect(in_process=True, config={"sources": {"pg": {"url": sys.argv[4]}}},
                         backend="ray", shm_dir=folder + "/shm", spill_dir=folder + "/spill",
                         memory_limit="100MiB")
        store = wh._backend.engine.store
        ds = wh.map("m", f"pg.{schema}.t", memory_only=True)
        if own:  # the memory-only read itself is proven on the module's cluster above
            print(json.dumps({"spilling": store.spilling, "owns": store.owns_cluster,
                              "store": ray.cluster_resources()["object_store_memory"]}))
        else:
            try:
                ds.cache()
                print(json.dumps({"refused": None}))
            except ldw.PolicyViolation as exc:
                print(json.dumps({"refused": str(exc), "spilling": store.spilling,
                                  "state": ds.info()["state"]}))
        wh.close()
        ray.shutdown()
    """
    theirs, own = (subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), schema, str(tmp_path / kind), kind,
         POSTGRES_URL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for kind in ("theirs", "own"))                      # two separate Ray instances
    out, err = theirs.communicate(timeout=180)
    assert theirs.returncode == 0, err[-3000:]
    refused = json.loads(out.strip().splitlines()[-1])
    assert refused["spilling"] is True
    assert "memory-only" in refused["refused"]
    assert "automatic_object_spilling_enabled" in refused["refused"]
    assert refused["state"] in ("mapped", "failed")              # nothing was read
    out, err = own.communicate(timeout=180)
    assert own.returncode == 0, err[-3000:]
    accepted = json.loads(out.strip().splitlines()[-1])
    assert accepted["owns"] is True and accepted["spilling"] is False
    assert accepted["store"] == 100 * 2**20 + 64 * 2**20       # sized by ldw


def test_governance_canary_is_in_no_object_of_the_object_store(
        cluster, pg_customer, tmp_path):  # noqa: F811 - the imported fixture
    policies = tomllib.loads(_policies("pg", pg_customer))
    wh = ldw.connect(in_process=True, config={"sources": {"pg": {"url": POSTGRES_URL}},
                                              **policies},
                     backend="ray", ray_address=cluster.address,
                     shm_dir=str(tmp_path / "shm"), spill_dir=str(tmp_path / "spill"),
                     mask_key_file=str(tmp_path / "mask.key"), memory_limit="300MiB")
    try:
        ref = f"pg.{pg_customer}.customer"
        parts = wh.map("parts", ref, partition_on="id", partitions=3).to_arrow()
        whole = wh.map("whole", ref).to_arrow()
        derived = wh.sql("SELECT * FROM parts WHERE id < 1000", name="derived")
        assert derived is not None
        for data in (parts, whole):
            assert data.num_rows == ROWS * 3 // 4 and set(data["region"].to_pylist()) == \
                {"EMEA"}
            assert set(data["address"].to_pylist()) == {"***"}
            assert all(len(p) == 64 for p in data["phone"].to_pylist())   # keyed hash
        store = _engine(wh).store
        holder = ray.get_actor(store.name, namespace="ldw")
        versions = ray.get(holder.versions.remote())
        assert len(versions) == 3
        scanned = 0
        for version_id in versions:
            for obj in ray.get(ray.get(holder.refs.remote(version_id))):
                raw = bytes(obj)                                # the object's raw bytes
                found = [label for label, pattern in CANARIES.items() if pattern in raw]
                assert not found, f"object of {versions[version_id]['dataset']} leaks {found}"
                assert b"EMEA" in raw                           # the scan sees real rows
                scanned += 1
        assert scanned >= 4
    finally:
        wh.close()


@pytest.fixture(params=["local", "ray"])
def governed(request, tmp_path, pg_customer):  # noqa: F811 - the imported fixture
    """The governance suite's real server, on each backend (overrides test_governance's)."""
    extra = _policies("pg", pg_customer)
    server = {}
    if request.param == "ray":
        server = {"backend": "ray",
                  "ray_address": request.getfixturevalue("cluster").address}
    handle = ServerHandle(tmp_path, extra_toml=extra, **server).start()
    yield handle
    handle.stop()


def test_losing_a_node_recomputes_from_lineage(cluster, pg_table, tmp_path):
    """Last: it removes the worker node (and adds a fresh one back)."""
    schema, expected = pg_table
    wh = _warehouse(cluster, tmp_path)
    try:
        ds = wh.map("t", f"pg.{schema}.t", partition_on="id", partitions=4)
        ds.cache()                                  # nothing read back to this node yet
        engine = _engine(wh)
        before = engine.dataset(*_key(wh, "t")).version
        worker = cluster.workers[0]
        where = ray.experimental.get_object_locations(engine.store.refs(before))
        assert any(worker.node_id in loc["node_ids"] for loc in where.values())
        queries = len(engine.query_log)
        cluster.remove_node(worker)
        data = ds.to_arrow()                        # lost objects -> recomputed from mapping
        assert checksum(data) == expected
        after = engine.dataset(*_key(wh, "t")).version
        assert after.version_id != before.version_id
        assert len(engine.query_log) > queries      # a new source read happened
        assert ds.info()["state"] == "cached"
    finally:
        wh.close()
        cluster.workers = [cluster.add_node(num_cpus=1, object_store_memory=STORE,
                                            include_dashboard=False,
                                            node_ip_address="127.0.0.1")]


def test_incremental_refresh_extends_a_version_held_in_the_object_store(cluster, pg_engine,
                                                                         tmp_path):
    """Append and upsert on the Ray backend: the partitioned first read runs as tasks, the
    increment is added to the version through the store's contract (VersionStore.extend)."""
    schema = f"ldw_ray_inc_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
        conn.exec_driver_sql(f"create table {schema}.t as select g as id, 'name-' || g as name, "
                             f"timestamp '2024-01-01' + g * interval '1 second' as updated_at "
                             f"from generate_series(1, 10000) g")
    wh = _warehouse(cluster, tmp_path)
    try:
        appended = wh.map("a", f"pg.{schema}.t", partition_on="id", partitions=2,
                          incremental="append", key="id").cache()
        upserted = wh.map("u", f"pg.{schema}.t", incremental="upsert", key="id",
                          watermark="updated_at").cache()
        held = appended.to_arrow()
        with pg_engine.begin() as conn:
            conn.exec_driver_sql(f"insert into {schema}.t select g, 'name-' || g, "
                                 f"timestamp '2025-01-01' from generate_series(10001, 10100) g")
            conn.exec_driver_sql(f"update {schema}.t set name = 'changed', "
                                 f"updated_at = timestamp '2025-01-02' where id <= 10")
        for dataset, mode in ((appended, "append"), (upserted, "upsert")):
            dataset.refresh()
            assert dataset.info()["freshness"]["last_refresh"]["mode"] == mode
        with pg_engine.connect() as conn:
            rows = conn.exec_driver_sql(f"select id, name from {schema}.t order by id").all()
        assert sorted(upserted.to_arrow().select(["id", "name"]).to_pylist(),
                      key=lambda r: r["id"]) == [dict(r._mapping) for r in rows]
        names = dict(zip(*appended.to_arrow().select(["id", "name"]).to_pydict().values(),
                         strict=True))
        assert len(names) == 10100 and names[5] == "name-5"  # append mode: updates not read
        assert held.num_rows == 10000  # the reader of the old version keeps it
    finally:
        wh.close()
        with pg_engine.begin() as conn:
            conn.exec_driver_sql(f"drop schema {schema} cascade")
