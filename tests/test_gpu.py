"""The GPU start-up path without a GPU: the decision logic, driver GPU resources from a fake
discovery script, and TorchDistributor built exactly as training builds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from photoz_spark.config import ConfigError
from photoz_spark.spark import discover_gpus, local_gpu_pairs, wants_driver_gpus
from photoz_spark.train.run import GpuPlan, gpu_plan

REPO = Path(__file__).resolve().parents[1]


def fake_script(tmp_path: Path, text: str, name: str = "fake_gpus.sh") -> Path:
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + text + "\n")
    script.chmod(0o755)
    return script


def one_gpu(tmp_path: Path) -> Path:
    return fake_script(tmp_path, """echo '{"name": "gpu", "addresses": ["0"]}'""")


@pytest.mark.unit
@pytest.mark.parametrize("setting, local, ranks, cuda, driver, executor, expected", [
    (False, True, 2, 4, 4, 0, GpuPlan(False, 2)),
    ("auto", True, 2, 0, 0, 0, GpuPlan(False, 2)),                  # CPU host
    ("auto", True, 1, 1, 1, 0, GpuPlan(True, 1)),                   # one GPU, one rank
    ("auto", True, 4, 2, 2, 0, GpuPlan(True, 2, "train.num_processes=4 reduced to 2: one rank per GPU")),
    (True, True, 2, 2, 2, 0, GpuPlan(True, 2)),
    ("auto", False, 8, 0, 0, 1, GpuPlan(True, 8)),                  # cluster with executor GPUs
    ("auto", False, 8, 0, 0, 0, GpuPlan(False, 8)),
])
def test_gpu_plan(setting, local, ranks, cuda, driver, executor, expected):
    assert gpu_plan(setting, local, ranks, cuda, driver, executor) == expected


@pytest.mark.unit
def test_gpu_plan_cuda_without_driver_resources_says_why():
    plan = gpu_plan("auto", True, 2, 1, 0, 0)
    assert not plan.use_gpu and "no driver GPU resources" in plan.note
    with pytest.raises(ConfigError, match="no driver GPU resources"):
        gpu_plan(True, True, 2, 1, 0, 0)
    with pytest.raises(ConfigError, match="no CUDA device"):
        gpu_plan(True, True, 2, 0, 1, 0)
    with pytest.raises(ConfigError, match="spark.gpu.enabled=true"):
        gpu_plan(True, False, 2, 0, 0, 0)


@pytest.mark.unit
def test_discover_gpus(tmp_path):
    assert discover_gpus(fake_script(tmp_path, """echo '{"name": "gpu", "addresses": ["0", "3"]}'""")) == ["0", "3"]
    assert discover_gpus(fake_script(tmp_path, "echo 'no driver' >&2; exit 1", "fails.sh")) == []
    assert discover_gpus(fake_script(tmp_path, "echo not json", "junk.sh")) == []
    assert discover_gpus(tmp_path / "missing.sh") == []


@pytest.mark.unit
def test_project_discovery_script_lists_visible_gpus(tmp_path):
    """conf/gpu_discovery.sh with a fake nvidia-smi: every GPU, or those of CUDA_VISIBLE_DEVICES."""
    fake_script(tmp_path, "printf '0\\n1\\n2\\n'", "nvidia-smi")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    run = lambda e: json.loads(subprocess.run(["bash", str(REPO / "conf/gpu_discovery.sh")], env=e,
                                              capture_output=True, text=True, check=True).stdout)
    assert run(env) == {"name": "gpu", "addresses": ["0", "1", "2"]}
    assert run({**env, "CUDA_VISIBLE_DEVICES": "2,0"})["addresses"] == ["2", "0"]


@pytest.mark.unit
def test_local_gpu_pairs(tmp_path):
    script = one_gpu(tmp_path)
    assert local_gpu_pairs("local[*]", script, True) == {
        "spark.driver.resource.gpu.amount": 1, "spark.driver.resource.gpu.discoveryScript": str(script)}
    assert local_gpu_pairs("local[*]", script, False) == {}
    assert local_gpu_pairs("spark://host:7077", script, True) == {}
    assert local_gpu_pairs("local[2]", fake_script(tmp_path, "exit 1", "none.sh"), True) == {}
    assert wants_driver_gpus({}) and wants_driver_gpus({"train": {"use_gpu": "auto"}})
    assert not wants_driver_gpus({"train": {"use_gpu": False}})


CHILD = textwrap.dedent("""
    import json, sys
    from pyspark.ml.torch.distributor import TorchDistributor
    from photoz_spark.config import load_config
    from photoz_spark.spark import get_spark
    from photoz_spark.train.run import session_gpu_plan

    out = {}
    for use_gpu in ("false", "auto"):  # false: the session as before this fix; auto: the job's default
        config = load_config("train.yaml", overrides=["spark.master=local[1]", "spark.driver_memory=1g",
                                                      f"spark.gpu.discovery_script={sys.argv[1]}",
                                                      f"train.use_gpu={use_gpu}", "train.num_processes=2"])
        spark = get_spark(config, extra_conf={"spark.ui.enabled": False})
        try:  # exactly as train/run.py builds it when the plan says GPUs
            distributor = TorchDistributor(num_processes=2, local_mode=True, use_gpu=True)
            out[use_gpu] = {"num_tasks": distributor.num_tasks, "ranks": distributor.num_processes}
        except RuntimeError as err:
            out[use_gpu] = {"error": str(err)}
        gpu = spark.sparkContext.resources.get("gpu")
        out[use_gpu]["addresses"] = list(gpu.addresses) if gpu else []
        plan = session_gpu_plan(spark, {"use_gpu": "auto", "num_processes": 2})
        out[use_gpu]["plan_driver_gpu_cpu_host"] = [plan.use_gpu, plan.num_processes]
        spark.stop()
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.spark  # a JVM of its own, in a child process
def test_local_mode_torch_distributor_finds_the_driver_gpu(tmp_path):
    """A local session built by get_spark holds the (fake) GPU, so TorchDistributor(local_mode=True,
    use_gpu=True) no longer raises; without the driver resources it does."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(one_gpu(tmp_path))], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["false"] == {"error": "GPUs were unable to be found on the driver.", "addresses": [],
                            "plan_driver_gpu_cpu_host": [False, 2]}
    # One GPU: one task, and TorchDistributor itself cut the ranks to it (as gpu_plan does first).
    assert out["auto"] == {"num_tasks": 1, "ranks": 1, "addresses": ["0"],
                           "plan_driver_gpu_cpu_host": [False, 2]}  # no CUDA here: the plan stays on CPU


# --- training precision (train.autocast), the fp16 gradient scaler and background checkpoints ---

def _tiny_fit(tmp_path, autocast: str, max_epochs: int, name: str = "ckpt.pt", grad_clip: float = 0.0):
    import torch

    from photoz_spark.model import BiLSTMMDN, ModelConfig
    from photoz_spark.train.loop import TrainSettings, train

    torch.manual_seed(0)
    model = BiLSTMMDN(ModelConfig(n_steps=6, hidden1=16, hidden2=8, dense=16, n_components=3))
    g = torch.Generator().manual_seed(0)
    z = torch.rand(384, generator=g) * 4
    flux = torch.sin(z[:, None] * (0.7 + 0.1 * torch.arange(6.0)) + torch.arange(6.0))
    data = (torch.stack([flux, torch.full_like(flux, 0.05)], -1).reshape(384, 12), torch.ones(384, 6, dtype=torch.bool), z)

    def batches(epoch):
        order = torch.randperm(256, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, 256, 64):
            idx = order[i:i + 64]
            yield data[0][idx], data[1][idx], data[2][idx]

    settings = TrainSettings(max_epochs=max_epochs, lr=3e-3, patience=99, autocast=autocast, grad_clip=grad_clip)
    val = [(data[0][256:], data[1][256:], data[2][256:])]
    return train(model, batches, lambda: val, settings, checkpoint=tmp_path / name if tmp_path else None)


@pytest.mark.unit
@pytest.mark.parametrize("setting, device, bf16, expected", [
    ("auto", "cpu", False, "none"), ("auto", "cuda", True, "bf16"), ("auto", "cuda", False, "fp16"),
    ("none", "cuda", True, "none"), ("fp16", "cuda", True, "fp16"), ("bf16", "cpu", False, "bf16"),
])
def test_resolve_autocast(setting, device, bf16, expected):
    from photoz_spark.train.loop import needs_scaler, resolve_autocast

    assert resolve_autocast(setting, device, bf16) == expected
    assert needs_scaler(expected) == (expected == "fp16")


@pytest.mark.unit
def test_auto_trains_in_fp32_on_cpu_and_refuses_unknown_autocast():
    from photoz_spark.train.loop import TrainSettings

    assert _tiny_fit(None, "auto", 1).precision == "none"
    with pytest.raises(ValueError, match="train.autocast must be one of"):
        TrainSettings(autocast="fp8")


@pytest.mark.unit
def test_mixture_head_runs_in_fp32_under_autocast():
    import torch

    from photoz_spark.model import BiLSTMMDN, ModelConfig

    model = BiLSTMMDN(ModelConfig(n_steps=6, hidden1=16, hidden2=8, dense=16, n_components=3)).eval()
    seen = []
    model.head.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
    model.dense.register_forward_hook(lambda m, args, out: seen.append(("dense", out.dtype)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, mu, sigma = model(torch.randn(4, 12), torch.ones(4, 6, dtype=torch.bool))
    assert ("dense", torch.bfloat16) in seen  # the body is in half precision ...
    assert (torch.float32, torch.float32) in seen  # ... the head is not
    assert logits.dtype == mu.dtype == sigma.dtype == torch.float32


@pytest.mark.unit
def test_fp16_with_gradient_scaler_on_cpu_trains_checkpoints_and_resumes(tmp_path, monkeypatch):
    import torch

    from photoz_spark.train import loop

    # oneDNN has no fp16 LSTM on the CPU: the network computes in bf16 here, while everything
    # fp16 decides (GradScaler enabled, scaled backward, unscale before clipping, scaler state
    # checkpointed and restored) runs as on a GPU without bf16.
    real = loop._autocast
    monkeypatch.setattr(loop, "_autocast", lambda device, kind: real(device, "bf16" if kind == "fp16" else kind))
    steps = []
    real_step = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))

    unbroken = _tiny_fit(tmp_path, "fp16", 4, "unbroken.pt", grad_clip=1.0)
    assert unbroken.precision == "fp16" and len(steps) == 4 * 4  # every step went through the scaler
    losses = [r["val_loss"] for r in unbroken.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    saved = torch.load(tmp_path / "unbroken.pt", weights_only=True)
    assert saved["scaler"]["scale"] > 0 and "_growth_tracker" in saved["scaler"]

    _tiny_fit(tmp_path, "fp16", 2, "killed.pt", grad_clip=1.0)  # "killed" after 2 epochs
    resumed = _tiny_fit(tmp_path, "fp16", 4, "killed.pt", grad_clip=1.0)
    assert [r["val_loss"] for r in resumed.history] == pytest.approx(losses)
    # The scale comes back from the checkpoint: a lowered one stays low after resuming.
    ckpt = torch.load(tmp_path / "killed.pt", weights_only=True)
    ckpt["scaler"]["scale"] = 1024.0
    ckpt["loop"]["epoch"] = 3
    torch.save(ckpt, tmp_path / "killed.pt")
    _tiny_fit(tmp_path, "fp16", 4, "killed.pt", grad_clip=1.0)
    assert torch.load(tmp_path / "killed.pt", weights_only=True)["scaler"]["scale"] <= 1024.0


@pytest.mark.unit
def test_checkpoint_writer_saves_a_copy_in_the_background(tmp_path):
    import torch

    from photoz_spark.train.loop import CheckpointWriter

    weights = torch.zeros(3)
    writer = CheckpointWriter(tmp_path / "c.pt")
    writer.save({"model": {"w": weights}, "loop": {"epoch": 1, "history": [{"a": 1.0}]}})
    weights += 5  # the next optimizer step changes the tensor in place while the thread writes
    writer.close()
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(saved["model"]["w"], torch.zeros(3)) and saved["loop"]["epoch"] == 1
    bad = CheckpointWriter(tmp_path / "missing" / "c.pt")
    bad.save({"w": weights})
    with pytest.raises(RuntimeError, match="does not exist"):  # the thread's error, raised on the rank
        bad.close()
