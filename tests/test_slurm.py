"""The cluster profile, for real: the smoke grid submitted through a single-node SLURM.

Needs a running SLURM (tests/slurm/start_slurm.sh, which .ci/run calls); skipped where none is.
"""
import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO
from test_pipeline import SNAKEMAKE_BASE

pytestmark = pytest.mark.e2e


def slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mixed", "alloc"))


def test_smoke_grid_runs_through_the_slurm_profile(tmp_path):
    if not slurm_up():
        if os.environ.get("KR_REQUIRE_SLURM"):
            pytest.fail("KR_REQUIRE_SLURM is set but no SLURM answers (tests/slurm/start_slurm.sh)")
        pytest.skip("no running SLURM (see tests/slurm/start_slurm.sh)")
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["compression"] = [{"method": "dense"}, {"method": "magnitude", "sparsity": 0.5}]
    config["recovery"] = [{"method": "none"}, {"method": "lora", "r": 2}]
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [*SNAKEMAKE_BASE, "--workflow-profile", str(REPO / "profiles" / "slurm"),
           "--directory", str(tmp_path), "--configfile", str(path),
           # This node is small and has no accounting: scale requests down, skip the account.
           "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2",
           "--default-resources", "mem_mb=1000", "runtime=30",
           "--set-resources", "compress:mem_mb=1500", "train:mem_mb=1500", "evaluate:mem_mb=1500",
           "--jobs", "2", "--latency-wait", "10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    res = tmp_path / "results" / "smoke"
    assert (res / "summary" / "results.csv").is_file()
    for cell in ("dense/none", "magnitude-s0.5/none", "magnitude-s0.5/lora-r2/seed0"):
        assert (res / "eval" / "tiny-llama" / cell / "results.json").is_file()
    # The compute rules really went through sbatch (1 compress, 1 train, 3 evaluate); the local
    # rules (downloads, aggregate) did not.
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid \d+", output)
    assert len(submitted) == 5, output[-4000:]
