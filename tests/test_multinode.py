"""A build on a multi-node Ray cluster equals the single-node build.

Two raylets on this machine (Ray's own ``ray.cluster_utils.Cluster``: a head
node and a worker node, one CPU each) stand in for a cluster.  The pipeline
connects with ``--ray-address`` like it would to a real head node, and its
work folder, dataset and model all live on S3 (moto's server on loopback):
workers get images inside the rows, the model from the store, and write their
outputs and markers to the store -- nothing goes through the driver's disk.

The dataset must be byte-identical to the session's single-node build
(``sample_build``: local Ray, local disk), and the partition markers must
show that both nodes did work.
"""
from __future__ import annotations

import pytest

from helpers import SAMPLE_CONFIG, markers, run_cli, shard_hashes
from pipeline.files import storage

BUCKET = "mmpr-multinode"


@pytest.fixture(scope="module")
def cluster(s3_server):
    """A head node and a worker node, started after the S3 environment is set
    (the raylets and their workers inherit it, as cluster nodes would have it)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def multinode_build(cluster, s3_server, sample_build, tmp_path_factory):
    s3_server.create_bucket(Bucket=BUCKET)
    log = tmp_path_factory.mktemp("multinode") / "run.log"
    proc = run_cli("run", "--config", SAMPLE_CONFIG, "--ray-address", cluster.address,
                   "--set", "executor.cpu_concurrency=2", "--work-dir", f"s3://{BUCKET}/work",
                   "--output", f"s3://{BUCKET}/dataset", timeout=1500)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    assert proc.returncode == 0, f"multi-node build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return f"s3://{BUCKET}", proc


def test_multinode_dataset_equals_single_node(multinode_build, sample_build):
    root, _ = multinode_build
    single = shard_hashes(str(sample_build))
    multi = shard_hashes(storage.join(root, "dataset"))
    assert len(single) >= 2
    assert multi == single
    manifest = storage.read_json(storage.join(root, "dataset", "manifest.json"))
    assert manifest["rows"] == sum(s["rows"] for s in manifest["shards"]) > 0


def test_both_nodes_did_work_and_the_model_came_from_the_store(multinode_build, cluster):
    root, proc = multinode_build
    nodes = set()
    for stage in ("generate", "correctness", "dropout_ntp", "image_crop", "filter"):
        nodes |= {m["worker"].get("ray_node_id") for m in markers(storage.join(root, "work", stage)).values()}
    cluster_nodes = {n.node_id for n in cluster.list_all_nodes()}
    assert None not in nodes
    assert nodes <= cluster_nodes and len(nodes) == 2, nodes
    # the tiny model was published to the work folder for the workers to fetch
    assert storage.exists(storage.join(root, "work", "models", "tiny-idefics3", "config.json"))
    # the run's HTML report went to the store beside the dataset
    html = storage.read_bytes(storage.join(root, "dataset", "report.html")).decode()
    assert "html report: s3://" in proc.stdout and html.count('class="card') >= 20
