"""Local mode listens on loopback: a real 2-rank training, every listening socket of the job's
processes listed while it runs (psutil).

What torch 2.13 cannot bind to loopback is allowed, and only that: the one c10d rendezvous
TCPStore of torchrun's agent (``--standalone``, which TorchDistributor always passes in local
mode; a TCPStore server binds every interface whatever host it is given). Before
``train.run.local_rank_env`` the agent listened on two such sockets (docs/deploy.md).
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time

import psutil
import pytest

from photoz_spark import hats
from photoz_spark.jobs import build_features, train
from photoz_spark.toy import toy_matched_table
from photoz_spark.train.run import RENDEZVOUS_FILE_ENV, local_rank_env

TINY = ["--band-set", "sdss_wise9", "model.hidden1=8", "model.hidden2=4", "model.dense=8", "model.n_components=2",
        "train.batch_size=64", "train.num_processes=2", "train.max_epochs=1", "train.recalibrate=false",
        "mlflow.model_name=loopback"]


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class Listeners:
    """Every listening TCP socket of this process and its descendants, polled in a thread."""

    def __init__(self):
        self.seen: dict[tuple[str, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for proc in [me, *me.children(recursive=True)]:
                try:
                    conns, cmd = proc.net_connections(kind="inet"), " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                for c in conns:
                    if c.status == psutil.CONN_LISTEN:
                        self.seen.setdefault((c.laddr.ip, c.laddr.port), cmd)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_a_local_training_listens_on_loopback_but_for_torchruns_rendezvous(spark, tmp_path):
    hats.write_hats_table(toy_matched_table(800, 0), tmp_path / "matched" / "dr16q", order=3, ra_col="RA",
                          dec_col="DEC", catalog_name="dr16q")
    build_features.main(["--workdir", str(tmp_path), "--band-set", "sdss_wise9"])
    with Listeners() as listeners:
        summary = train.main(["--workdir", str(tmp_path), *TINY])
    assert summary["distributed"]["local_mode"] and summary["distributed"]["num_processes"] == 2
    agent = {k: cmd for k, cmd in listeners.seen.items() if "torch.distributed.run" in cmd}
    ranks = {k: cmd for k, cmd in listeners.seen.items() if k not in agent and cmd.endswith("/train.py")}
    assert ranks, f"the ranks' gloo sockets were not seen: {listeners.seen}"
    assert all(_loopback(ip) for ip, _ in ranks), ranks
    assert len(agent) <= 1, f"torchrun's agent should hold only its c10d rendezvous store: {agent}"
    others = {k: cmd[-60:] for k, cmd in listeners.seen.items() if k not in agent}
    assert all(_loopback(ip) for ip, _ in others), others  # the JVM, the Python workers, the ranks
    assert RENDEZVOUS_FILE_ENV not in os.environ and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in os.environ


@pytest.mark.unit
def test_local_rank_env_keeps_the_users_interfaces(tmp_path):
    env = local_rank_env(tmp_path, {"NCCL_SOCKET_IFNAME": "ib0"})
    assert env["GLOO_SOCKET_IFNAME"] == "lo" and "NCCL_SOCKET_IFNAME" not in env
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert env[RENDEZVOUS_FILE_ENV].startswith(str(tmp_path.absolute() / ".rendezvous-"))
    assert local_rank_env(tmp_path, {})[RENDEZVOUS_FILE_ENV] != env[RENDEZVOUS_FILE_ENV], "unique per run"
