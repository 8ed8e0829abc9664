"""Local mode listens on loopback only: the Spark UI binds to 127.0.0.1 (or is off by a setting)."""

import json
import os
import socket
import subprocess
import sys

from photoz_spark.config import load_config
from photoz_spark.spark import _conf_pairs

PROBE = """
import json, sys
from photoz_spark.config import load_config
from photoz_spark.spark import get_spark
spark = get_spark(load_config(overrides=["spark.master=local[1]", "spark.driver_memory=1g"]),
                  extra_conf={"spark.ui.port": sys.argv[1], "spark.port.maxRetries": "0"})
port = int(sys.argv[1])
listening = []
for name in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(name).read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            listening.append(address)
print(json.dumps(listening))
spark.stop()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_spark_ui_listens_on_loopback_only_in_local_mode():
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SPARK_LOCAL_IP"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(port)], check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    addresses = json.loads(done.stdout.strip().splitlines()[-1])
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    assert addresses, f"the UI is not listening on port {port}"
    assert set(addresses) <= loopback, f"the UI listens on {addresses}, not only on 127.0.0.1"


def test_ui_can_be_turned_off_by_a_setting():
    on = _conf_pairs(load_config()["spark"])
    off = _conf_pairs(load_config(overrides=["spark.ui_enabled=false"])["spark"])
    assert on["spark.ui.enabled"] == "true" and off["spark.ui.enabled"] == "false"
