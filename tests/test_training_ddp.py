"""Multi-process meta-training through PyTorch's distributed engine: 2 gloo processes on the CPU."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from core import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_gloo_processes_train_in_sync(busi_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BUSI_DIR": str(busi_dir)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "core", "train-fewshot", "--data", str(busi_dir), "--limit", "10", "--image-size", "64",
           "--episodes-per-epoch", "3", "--epochs", "1", "--val-episodes", "2", "--device", "cpu",
           "--threads", "1", "--no-resume", "--save-path", str(tmp_path / "ddp")]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summaries = [json.loads(m) for m in re.findall(r"^\{.*?^\}", run.stdout, re.S | re.M)]
    assert sorted(s["rank"] for s in summaries) == [0, 1]
    assert all(s["ranks_in_sync"] and s["status"] == "finished" and s["episodes"] == 3 for s in summaries)
    meta = checkpoint.load_meta(tmp_path / "ddp")
    assert meta["world_size"] == 2 and meta["kind"] == "panet"
