"""#21: the invariant on a replicated Kafka cluster. Three KRaft nodes of deploy/local/kafka.sh (KAFKA_NODES=3,
each broker and controller), ttsync's topics with replication factor 3 and min.insync.replicas 2, unclean leader
election off; a node is killed, stopped or restarted while TimeTracker writes. Relay and consumer are never
restarted by the harness for it: a node going away is the clients' failover to ride out in place."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from schemas.contract import all_topics
from tests.chaos.conftest import MakeRun
from tests.chaos.harness import ChaosRun
from tests.chaos.test_chaos import Fault, drive, wait_progress
from tests.chaos.workload import Workload
from tests.services import LocalCluster, private_cluster

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]

REPLICATED = {"topic_replication_factor": 3, "topic_min_insync_replicas": 2}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with private_cluster(3) as nodes:
        yield nodes


@pytest.fixture
def whole_cluster(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The cluster with every node up before and after a scenario, whatever the scenario left down."""
    cluster.start()
    yield cluster
    cluster.start()


def test_kafka_sh_starts_three_nodes_in_one_quorum_and_acts_on_one(whole_cluster: LocalCluster) -> None:
    """deploy/local/kafka.sh with KAFKA_NODES=3: one cluster of three brokers, the bootstrap list printed last, one
    node stopped and started alone (KAFKA_NODE), status saying which runs."""
    assert whole_cluster.start() == whole_cluster.bootstrap  # idempotent: every node already runs
    admin = KafkaAdminClient(bootstrap_servers=whole_cluster.bootstrap.split(","), client_id="ttsync-test")
    try:
        assert sorted(b["broker_id"] for b in admin.describe_cluster()["brokers"]) == [1, 2, 3]
    finally:
        admin.close()
    config = (whole_cluster.state_dir / "node-2" / "server.properties").read_text()
    for line in ("node.id=2", "offsets.topic.replication.factor=3", "min.insync.replicas=2",
                 "unclean.leader.election.enable=false",
                 f"controller.quorum.voters=1@127.0.0.1:{whole_cluster.port + 1},2@127.0.0.1:{whole_cluster.port + 3},"
                 f"3@127.0.0.1:{whole_cluster.port + 5}"):
        assert line in config.splitlines(), line
    whole_cluster.stop(2)
    status = whole_cluster.status()
    assert status.returncode == 3 and "stopped node=2" in status.stdout and status.stdout.count("running") == 2
    whole_cluster.start(2)
    assert whole_cluster.status().returncode == 0


def busiest_leader(run: ChaosRun) -> int:
    """The node leading the partitions of the event topics that hold the most records so far."""
    topics = all_topics(run.pipe.prefix)
    admin = KafkaAdminClient(bootstrap_servers=run.pipe.bootstrap.split(","), client_id="ttsync-chaos")
    reader = KafkaConsumer(bootstrap_servers=run.pipe.bootstrap.split(","), client_id="ttsync-chaos")
    try:
        leaders = {TopicPartition(t["name"], p["partition_index"]): p["leader_id"]
                   for t in admin.describe_topics(topics) for p in t["partitions"]}
        records = reader.end_offsets(list(leaders))
    finally:
        admin.close()
        reader.close()
    load: Counter[int] = Counter()
    for tp, leader in leaders.items():
        load[leader] += records.get(tp, 0)
    return load.most_common(1)[0][0]


def on_cluster(make_run: MakeRun, cluster: LocalCluster, scenario: str, fault: Fault) -> None:
    with make_run(scenario, bootstrap=cluster.bootstrap, settings=REPLICATED) as run:
        drive(run, fault=fault, outage=True)


def kill_9_at_30_percent(cluster: LocalCluster, pick: Callable[[ChaosRun], int], down_s: float, role: str
                         ) -> Fault:
    """kill -9 of the node ``pick`` names, then its start after ``down_s``."""
    def fault(run: ChaosRun, workload: Workload) -> str:
        wait_progress(workload, 0.3)
        victim = pick(run)
        cluster.kill9(victim)
        time.sleep(down_s)
        successor = cluster.active_controller()
        cluster.start(victim)
        assert successor != victim, "the controller quorum elected no other leader"
        return f"kill -9 of node {victim} ({role}) at 30%, back after {down_s:.0f} s; controller now {successor}"
    return fault


def test_kill_9_of_the_broker_leading_the_busiest_partitions(make_run: MakeRun, whole_cluster: LocalCluster) -> None:
    on_cluster(make_run, whole_cluster, "3 brokers: kill -9 of the busiest leader",
               kill_9_at_30_percent(whole_cluster, busiest_leader, 10, "busiest leader"))


def test_kill_9_of_the_active_controller(make_run: MakeRun, whole_cluster: LocalCluster) -> None:
    on_cluster(make_run, whole_cluster, "3 brokers: kill -9 of the active controller",
               kill_9_at_30_percent(whole_cluster, lambda _run: whole_cluster.active_controller(), 5,
                                    "active controller"))


def test_rolling_restart_of_all_three_brokers(make_run: MakeRun, whole_cluster: LocalCluster) -> None:
    def fault(run: ChaosRun, workload: Workload) -> str:
        wait_progress(workload, 0.2)
        for node in (1, 2, 3):
            whole_cluster.stop(node)  # clean shutdown: leadership moves first
            whole_cluster.start(node)  # back once it answers metadata, as a rolling upgrade waits
        return f"nodes 1, 2, 3 stopped and started one after the other from 20% ({workload.progress:.0%} at end)"

    on_cluster(make_run, whole_cluster, "3 brokers: rolling restart", fault)


def test_two_of_three_brokers_down_for_10_seconds(make_run: MakeRun, whole_cluster: LocalCluster) -> None:
    """min.insync.replicas=2 refuses every write with one node left: the relay keeps its rows unpublished and
    retries; nothing is lost and nothing doubled once the nodes are back."""

    def fault(run: ChaosRun, workload: Workload) -> str:
        wait_progress(workload, 0.3)
        backlog_before = run.backlog()
        whole_cluster.kill9(2)
        whole_cluster.kill9(3)
        time.sleep(10)
        held = run.backlog()
        whole_cluster.start()
        assert held > backlog_before, f"the outbox did not grow while writes were refused ({held} unpublished)"
        return f"nodes 2 and 3 kill -9 at 30% for 10 s; {held} outbox rows waited unpublished"

    on_cluster(make_run, whole_cluster, "3 brokers: two down for 10 s", fault)
