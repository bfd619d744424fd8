"""The cluster profile, for real: the smoke grid submitted through a single-node SLURM.

Needs a running SLURM (tests/slurm/start_slurm.sh, which .ci/run calls); skipped where none is.
"""
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from knowledge_recovery.pipeline import launch

pytestmark = pytest.mark.e2e


def slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mixed", "alloc"))


def require_slurm():
    if not slurm_up():
        if os.environ.get("KR_REQUIRE_SLURM"):
            pytest.fail("KR_REQUIRE_SLURM is set but no SLURM answers (tests/slurm/start_slurm.sh)")
        pytest.skip("no running SLURM (see tests/slurm/start_slurm.sh)")


def grid(folder: Path) -> Path:
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["compression"] = [{"method": "dense"}, {"method": "magnitude", "sparsity": 0.5}]
    config["recovery"] = [{"method": "none"}, {"method": "lora", "r": 2}]
    # A slow planned device, so that the jobs' estimated wall times differ by rule (a tiny
    # model's are all at the floor otherwise), and floors this small node can give.
    config["plan"] = {"tflops": 1e-4, "min_runtime": 3, "min_mem_mb": 500}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "slurm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def slurm_command(folder: Path) -> list[str]:
    return launch.grid_command(
        folder, grid(folder),
        # No accounting here: skip the account. Resources: the profile's, sized per job.
        "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2",
        "--jobs", "2", "--latency-wait", "10",
        "--cores", "1",  # the grid's threads: a group's jobs run one at a time (the profile)
        profile="slurm")


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    """The same grid run locally (profiles/default): what every SLURM run must equal."""
    require_slurm()
    folder = tmp_path_factory.mktemp("local")
    proc = subprocess.run(launch.grid_command(folder, grid(folder)), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return (folder / "results" / "smoke" / "summary" / "results.csv").read_bytes()


def test_smoke_grid_runs_through_the_slurm_profile(tmp_path, local_results):
    require_slurm()
    proc = subprocess.run([*slurm_command(tmp_path), "--verbose"], capture_output=True, text=True,
                          timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    check_sized_requests(tmp_path, output)
    res = tmp_path / "results" / "smoke"
    for cell in ("dense/none", "magnitude-s0.5/none", "magnitude-s0.5/lora-r2/seed0"):
        assert (res / "eval" / "tiny-llama" / cell / "results.json").is_file()
    assert (res / "summary" / "results.csv").read_bytes() == local_results


def check_sized_requests(folder: Path, output: str) -> None:
    """Each sbatch call (logged with --verbose) asks for what the plan sizes: a single job its
    estimate times the profile's factor (`plan.job_resources`); a group of evaluate and
    represent jobs (the profile's `groups`) one GPU, their summed runtime, their largest memory.
    The 7 computing jobs (1 compress, 1 train, 3 evaluate, 2 represent) go in fewer
    submissions than jobs, the local rules (downloads, aggregate) in none; the requests differ
    between rules (not one constant)."""
    from knowledge_recovery.pipeline import plan
    from knowledge_recovery.pipeline.config import load_config

    config = load_config(str(folder / "slurm.yaml"), base_dir=folder, check_models=False)
    config["resource_safety_factor"] = plan.profile_settings(REPO / "profiles" / "slurm")[1]
    expected = {}
    for e in plan.estimate(config, base=folder):
        if e.rule in plan.PLANNED_RULES:
            r = plan.job_resources(e, config)
            expected.setdefault(e.rule, []).append((r["runtime"], r["mem_mb"]))
    grouped = expected["evaluate"] + expected["represent"]
    calls = re.findall(r"sbatch call: (.*)", output)
    asked = []
    for call in calls:
        runtime = int(re.search(r" -t '?(\d+)", call).group(1))
        mem = int(re.search(r" --mem '?(\d+)", call).group(1))
        assert "--gpus=1 " in call, call[:600]
        single = re.search(r"--comment '?rule_([a-z_]+?)_wildcards", call)
        if single:
            assert (runtime, mem) in expected[single.group(1)], (call[:600], expected)
        else:  # a group: in series on one GPU
            assert "group_cells" in call, call[:600]
            assert mem in {m for _, m in grouped} and runtime >= max(t for t, _ in grouped) \
                and runtime <= sum(t for t, _ in grouped), (call[:600], grouped)
        asked.append(runtime)
    assert 3 <= len(calls) < 7 and any("group_cells" in c for c in calls), output[-4000:]
    assert len(set(asked)) > 1, calls
    submitted = re.findall(r"has been submitted with SLURM jobid \d+", output)
    assert len(submitted) == len(calls), output[-4000:]


def _our_jobs(folder: Path) -> list[tuple[str, str, str]]:
    """(job id, comment, state) of the SLURM jobs submitted from `folder`."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%Z|%k|%T"], capture_output=True,
                         text=True).stdout
    rows = [line.split("|") for line in out.splitlines()]
    return [(r[0], r[2], r[3]) for r in rows if len(r) == 4 and r[1] == str(folder)]


def test_a_killed_head_resumes_with_the_plain_command(tmp_path, local_results):
    """SIGKILL of the Snakemake head while its SLURM job trains, then the same command: the
    orphaned job is cancelled and redone (training resumes from its checkpoint), the stale
    locks are cleared, and the results equal a local run's."""
    require_slurm()
    command = slurm_command(tmp_path)
    head = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 900
    train = []
    try:
        while not train:
            train = [i for i, c, state in _our_jobs(tmp_path)
                     if c.startswith("rule_train") and state == "RUNNING"]
            assert head.poll() is None, "the run ended before its train job ran"
            assert time.time() < deadline, "no train job started on SLURM"
            time.sleep(0.5)
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    orphans = {i for i, _, _ in _our_jobs(tmp_path)}
    assert train[0] in orphans  # the head is gone, its job is not
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    # Other orphans (a short evaluate job) may finish on their own before the rerun looks;
    # the train job, caught at its start, is still running and must be among those cancelled.
    cancelled = re.search(r"Cancelling SLURM jobs ([\d, ]+) of the killed run", output)
    assert cancelled, output[-6000:]
    cancelled = set(cancelled.group(1).replace(" ", "").split(","))
    assert train[0] in cancelled and cancelled <= orphans
    assert not _our_jobs(tmp_path)
    res = tmp_path / "results" / "smoke"
    assert (res / "summary" / "results.csv").read_bytes() == local_results
