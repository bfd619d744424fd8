"""End to end: the smoke config through real Snakemake, real lm-eval and a real MLflow store."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import REPO

from knowledge_recovery.pipeline import launch

pytestmark = pytest.mark.e2e
SNAKEMAKE_BASE = launch.snakemake(profile=None)
SNAKEMAKE = launch.snakemake()
EXPECTED_JOBS = {"download_model": 1, "download_text": 1, "prepare_task": 1, "compress": 1,
                 "train": 2, "evaluate": 5, "sample_inputs": 1, "represent": 3,
                 "aggregate": 1}  # IDP and its oracle share an adapter


def smoke_config(workdir: Path, **changes) -> Path:
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config.update(changes)
    path = workdir / "smoke.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, config: Path, *args, check=True):
    proc = subprocess.run(launch.grid_command(workdir, config, *args), capture_output=True,
                          text=True)
    if check and proc.returncode:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def job_counts(output: str) -> dict:
    """Parse Snakemake's 'Job stats' table."""
    table = output.split("Job stats:")[-1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m[1] not in ("all", "total")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The smoke grid, run once for this module."""
    workdir = tmp_path_factory.mktemp("smoke")
    config = smoke_config(workdir)
    first = snakemake(workdir, config)
    return workdir, config, first.stdout + first.stderr


def test_first_run_executes_every_stage(finished):
    _, _, output = finished
    assert job_counts(output) == EXPECTED_JOBS


def test_every_output_exists_with_real_values(finished):
    workdir, _, _ = finished
    res = workdir / "results" / "smoke"
    for model_dir in ("dense", "gptq-w4-g32-sym"):
        assert (res / "models" / "tiny-llama" / model_dir / "checkpoint" / "model.safetensors").is_file()
    gptq = json.loads((res / "models/tiny-llama/gptq-w4-g32-sym/manifest.json").read_text())
    assert gptq["versions"]["torch"] and gptq["wall_s"] >= 0
    assert gptq["calibration"]["samples"] == 4 and gptq["calibration"]["seq_len"] == 64
    assert gptq["effective_bits_per_weight"] == pytest.approx(4 + 16 / 32)  # + float16 scale
    adapters = res / "adapters/tiny-llama/gptq-w4-g32-sym"
    train = json.loads((adapters / "lora-r2/seed0/manifest.json").read_text())
    assert train["trainable_params"] > 0 and train["adapter_bytes"] > 0
    assert train["settings"]["training"]["objective"] == "distill"  # trained against the dense model
    idp = json.loads((adapters / "idp-m2-n4-routed/seed0/manifest.json").read_text())
    assert len(idp["history"]["routing"]) == 6 and all(sum(r) == 2 for r in idp["history"]["routing"])
    assert (adapters / "lora-r2/seed0/adapter/adapter_model.safetensors").is_file()

    df = pd.read_csv(res / "summary" / "results.csv")
    acc = df[df.metric == "acc"]
    assert len(acc) == 5 * 2  # cells x tasks
    assert acc.value.between(0, 1).all() and acc.stderr.gt(0).all()
    assert set(acc.task) == {"kp_country_capital", "kp_element_symbol"}
    table = (res / "summary" / "results.md").read_text()
    assert "tiny-llama/dense/none" in table
    assert "tiny-llama/gptq-w4-g32-sym/idp-m2-n4-routed-oracle/seed0" in table
    assert (res / "summary" / "mean_acc.png").read_bytes()[:4] == b"\x89PNG"
    # per-question records of every cell, and the paired comparisons made from them
    from knowledge_recovery.artifacts import read_json_gz

    samples = read_json_gz(res / "eval/tiny-llama/gptq-w4-g32-sym/lora-r2/seed0/samples.json.gz")
    assert set(samples) == {"kp_country_capital", "kp_element_symbol"}
    record = samples["kp_country_capital"]
    assert len(record["correct"]) == len(record["loglikelihoods"]) == 8
    assert all(len(ll) == 4 for ll in record["loglikelihoods"])
    assert [int(c) for c in record["correct"]] == [
        int(max(range(4), key=ll.__getitem__) == t)
        for ll, t in zip(record["loglikelihoods"], record["target"])]
    compared = pd.read_csv(res / "summary" / "comparisons.csv")
    assert set(compared.comparison) == {"compressed vs dense", "recovered vs compressed",
                                        "vs lora at nearest budget",
                                        "variant vs the adapter's own selection"}
    assert len(compared) == 5 * 3  # five pairs x (two tasks + their mean)
    assert (compared.low <= compared.difference + 1e-12).all()
    assert (compared.difference <= compared.high + 1e-12).all()
    assert "McNemar" in (res / "summary" / "comparisons.md").read_text()
    # the IDP cell's selection: every question's prompt recorded, its diagnostics summarised
    # (its oracle variant selects nothing and has no row)
    selection = pd.read_csv(res / "summary" / "selection.csv")
    assert list(selection.cell) == ["tiny-llama/gptq-w4-g32-sym/idp-m2-n4-routed/seed0"]
    assert selection.questions.iloc[0] == 16 and 0 <= selection.selection_entropy.iloc[0] <= 1
    # routed training with the default capacity: each of 6 steps sends one of its 2 examples
    # to each prompt of the pool
    assert json.loads(selection.trained_per_prompt.iloc[0]) == [6, 6]
    # A temporary name never survives a finished step.
    assert not list(res.rglob(".*.tmp-*"))


@pytest.mark.parametrize("unit", ["none", "lora-r2/seed0", "idp-m2-n4-routed/seed0"])
def test_lm_eval_alone_reproduces_a_cell(finished, tmp_path, unit):
    """lm-eval's own command line with the registered model ("knowledge-recovery") on a cell's
    checkpoint and adapter gives its results.json numbers to the last digit, one task a call as
    the evaluate step scores them (docs/evaluation.md)."""
    from knowledge_recovery.artifacts import read_json_gz

    workdir, _, _ = finished
    res = workdir / "results" / "smoke"
    cell = res / "eval/tiny-llama/gptq-w4-g32-sym" / unit / "results.json"
    expected = json.loads(cell.read_text())["results"]
    samples = read_json_gz(cell.with_name("samples.json.gz"))
    model_args = f"pretrained={res}/models/tiny-llama/gptq-w4-g32-sym/checkpoint"
    if unit != "none":
        model_args += f",adapter={res}/adapters/tiny-llama/gptq-w4-g32-sym/{unit}/adapter"
    for task in ("kp_country_capital", "kp_element_symbol"):
        out = tmp_path / task
        subprocess.run([sys.executable, "-m", "knowledge_recovery.cli.lm_eval", "run",
                        "--model", "knowledge-recovery", "--model_args", model_args,
                        "--include_path", str(res / "tasks/kp/lm_eval"), "--tasks", task,
                        "--batch_size", "8", "--seed", "0", "--num_fewshot", "0",
                        "--output_path", str(out), "--log_samples"], check=True,
                       capture_output=True, text=True, cwd=workdir,  # the tasks' documents
                       env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
        found = json.loads(next(out.rglob("results_*.json")).read_text())["results"][task]
        for metric in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
            assert found[f"{metric},none"] == expected[task][metric], (task, metric)
        docs = sorted((json.loads(line) for line in next(out.rglob(f"samples_{task}_*.jsonl"))
                       .read_text().splitlines()), key=lambda d: d["doc_id"])
        assert [[float(r[0]) for r in d["filtered_resps"]] for d in docs] == samples[task][
            "loglikelihoods"]


def test_mlflow_has_one_run_per_step_with_axes(finished):
    workdir, _, _ = finished
    res = workdir / "results" / "smoke"
    client = mlflow.MlflowClient(f"sqlite:///{res / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    steps = {}
    for run in runs:
        steps.setdefault(run.data.tags.get("step", "grid"), []).append(run)
    assert {k: len(v) for k, v in steps.items() if k != "grid"} == \
        {k: v for k, v in EXPECTED_JOBS.items() if k != "aggregate"}
    (parent,) = steps["grid"]
    evaluated = {r.data.tags["cell"]: r for r in steps["evaluate"]}
    run = evaluated["tiny-llama/gptq-w4-g32-sym/lora-r2/seed0"]
    assert run.data.tags["recovery"] == "lora-r2" and run.data.tags["compression"] == "gptq-w4-g32-sym"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert 0 <= run.data.metrics["kp_country_capital.acc"] <= 1
    assert run.data.metrics["mean_acc"] == pytest.approx(
        (run.data.metrics["kp_country_capital.acc"] + run.data.metrics["kp_element_symbol.acc"]) / 2)
    assert run.data.metrics["mean_acc_low"] <= run.data.metrics["mean_acc"] <= \
        run.data.metrics["mean_acc_high"]
    assert run.data.params["compression.bits"] == "4" and run.data.params["recovery.r"] == "2"
    assert run.data.params["training.objective"] == "distill"
    # what the cell costs, as metrics MLflow's charts can plot accuracy against
    assert run.data.metrics["compression.bits_per_weight"] > 4
    assert 0 <= run.data.metrics["compression.sparsity"] < 0.5  # zeros that rounding made
    assert run.data.metrics["recovery.trainable_params"] > 0
    # the summary's paired difference from dense, onto each evaluate run but the dense one's:
    # the comparisons table's figure for the compressed model
    compared = pd.read_csv(res / "summary" / "comparisons.csv")
    lost = compared[(compared.other == "tiny-llama/gptq-w4-g32-sym/none")
                    & (compared.base == "tiny-llama/dense/none") & (compared.task == "mean")].iloc[0]
    untrained = evaluated["tiny-llama/gptq-w4-g32-sym/none"].data.metrics
    assert untrained["delta_vs_dense"] == pytest.approx(lost.difference)
    assert (untrained["delta_vs_dense_low"], untrained["delta_vs_dense_high"]) == \
        pytest.approx((lost.low, lost.high))
    assert run.data.metrics["delta_vs_dense_low"] <= run.data.metrics["delta_vs_dense"] <= \
        run.data.metrics["delta_vs_dense_high"]
    dense = evaluated["tiny-llama/dense/none"]
    assert "delta_vs_dense" not in dense.data.metrics
    assert dense.data.metrics["compression.bits_per_weight"] == 16
    assert dense.data.metrics["recovery.trainable_params"] == 0
    # compress and train runs: every parameter prefixed by what it describes
    (compressed,) = [r for r in steps["compress"]
                     if r.data.tags["compression"] == "gptq-w4-g32-sym"]
    assert compressed.data.params["compression.method"] == "gptq"
    assert all(p.startswith("compression.") for p in compressed.data.params)
    trained = next(r for r in steps["train"] if r.data.tags["cell"].endswith("lora-r2/seed0"))
    assert trained.data.params["recovery.method"] == "lora"
    assert trained.data.params["training.objective"] == "distill"
    assert all(p.split(".")[0] in ("recovery", "training") for p in trained.data.params)
    assert parent.info.status == "FINISHED"
    train_run = next(r for r in steps["train"] if r.data.tags["cell"].endswith("idp-m2-n4-routed/seed0"))
    history = client.get_metric_history(train_run.info.run_id, "train_loss")
    assert len(history) == 6
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.md", "mean_acc.png", "logs", "tables"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "tables")] == [
        "tables/overview.json"]
    assert not parent.data.metrics  # the overview is a table, not a one-bar chart per cell
    # the config as the grid run's params, entries by id
    assert parent.data.params["compression.gptq-w4-g32-sym.bits"] == "4"
    assert parent.data.params["recovery.lora-r2.training.objective"] == "distill"
    # each step's log on its run: what the step printed, as far as it had when it logged
    (log,) = client.list_artifacts(run.info.run_id, "logs")
    text = Path(client.download_artifacts(run.info.run_id, log.path, str(workdir / "dl"))).read_text()
    assert "kp_country_capital" in text


def _browser() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                 None)
    if found is None:
        if os.environ.get("KR_REQUIRE_BROWSER"):
            pytest.fail("KR_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no chromium to load the MLflow UI with (apt-get install chromium)")
    return found


def _page_text(browser: str, url: str, profile: Path) -> str:
    """The text of a page as a headless browser renders it, its JavaScript run."""
    # wide: the runs table renders only the columns in view
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                          "--window-size=2400,1400", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180).stdout
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def _check_screenshot(url: str, browser: str, tmp_path: Path) -> None:
    """A picture of `url` (`cli.show.screenshot`, as docs/screenshot.py takes them): a PNG of
    the window's size, not blank (a page that failed to render is one or two colours)."""
    import numpy as np
    from PIL import Image

    from knowledge_recovery.cli.show import screenshot

    shot = screenshot(url, tmp_path / "mlflow-smoke-runs.png", tmp_path / "shot-profile", browser)
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape == (1000, 1600, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50
    if os.environ.get("KR_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["KR_SCREENSHOT_DIR"]) / shot.name)


def test_the_mlflow_ui_shows_the_grid_in_a_real_browser(finished, tmp_path):
    """The runs table a researcher opens (the URL `make run` prints), in headless chromium: every
    run listed, all of them finished, the parent included, the evaluate runs found by their
    metric."""
    from urllib.parse import quote

    from knowledge_recovery.cli.show import runs_url
    from knowledge_recovery.tracking.mlflow_runs import CELLS_VIEW
    from knowledge_recovery.tracking.mlflow_server import free_port, wait_until_up

    browser = _browser()
    workdir, _, _ = finished
    store = f"sqlite:///{workdir / 'results' / 'smoke' / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store,
                           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, proc=ui)
        table = runs_url(base, exp.experiment_id)

        def shown(search: str = "") -> str:
            return _page_text(browser, table + (f"&searchFilter={quote(search)}" if search else ""),
                              tmp_path / "profile")
        page = shown()
        # the model-training view, without a click: no GenAI sidebar (Judges, Evaluation runs)
        assert "smoke" in page and "Runs" in page and "Model registry" in page, page[-2000:]
        assert "Judges" not in page and "Evaluation runs" not in page, page[-2000:]
        assert f"{len(runs)} matching runs" in page and " grid " in page, page[-2000:]
        assert f"{len(runs)} matching runs" in shown("attributes.status = 'FINISHED'")
        evaluated = EXPECTED_JOBS["evaluate"]
        # a child run is listed under its parent: the parent row is counted with them
        assert f"{evaluated + 1} matching runs" in shown("metrics.mean_acc >= 0")
        # the URL `make run` prints: the evaluate runs alone, their axes, accuracy interval and
        # cost as columns, without a click
        cells = _page_text(browser, runs_url(base, exp.experiment_id, CELLS_VIEW),
                           tmp_path / "profile")
        assert f"{evaluated} matching runs" in cells, cells[-2000:]
        assert "Judges" not in cells and "Evaluation runs" not in cells, cells[-2000:]
        for shown_text in ("mean_acc", "mean_acc_low", "delta_vs_dense",
                           "compression.bits_per_weight", "recovery.trainable_params",
                           "gptq-w4-g32-sym", "lora-r2",
                           "idp-m2-n4-routed-oracle"):  # columns, and the cells' axes in them
            assert shown_text in cells, (shown_text, cells[-2000:])
        # the grid run's overview opens as a table (rendered, not its JSON text)
        (grid,) = [r for r in runs if r.data.tags.get("kr.role") == "grid"]
        overview = _page_text(browser, f"{base}/#/experiments/{exp.experiment_id}/runs/"
                              f"{grid.info.run_id}/artifacts/tables/overview.json",
                              tmp_path / "profile")
        assert "gptq-w4-g32-sym" in overview and "drop_from_dense" in overview, overview[-2000:]
        assert '"columns"' not in overview and '"data"' not in overview, overview[-2000:]
        # the README's picture of the runs table, taken here (KR_SCREENSHOT_DIR keeps it)
        _check_screenshot(runs_url(base, exp.experiment_id, CELLS_VIEW), browser, tmp_path)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def test_the_report_holds_every_captioned_summary_output(finished):
    """`snakemake --report` through `knowledge_recovery.cli.report` (what `make run` ends with): one
    self-contained HTML file with the tables, plots and summary, each with its caption
    (report/*.rst), without rendering warnings, attached to the parent MLflow run."""
    workdir, config, _ = finished
    out = subprocess.run([sys.executable, "-m", "knowledge_recovery.cli.report", "--configfile",
                          str(config), "--", "--snakefile", str(REPO / "Snakefile")],
                         cwd=workdir, capture_output=True, text=True)
    assert out.returncode == 0 and "WARNING" not in out.stdout + out.stderr, \
        (out.stdout + out.stderr)[-3000:]
    report = workdir / "results" / "smoke" / "summary" / "report.html"
    html = report.read_text()
    for caption in (REPO / "report").glob("*.rst"):
        first_words = " ".join(caption.read_text().split()[:6])
        assert first_words in html, caption.name
    assert html.count("data:image/png") >= 1 and "Comparisons" in html
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'results' / 'smoke' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`kr.role` = 'grid'")
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_rerun_executes_nothing_and_logs_nothing(finished):
    workdir, config, _ = finished
    db = workdir / "results" / "smoke" / "mlflow.db"
    before = db.stat().st_mtime_ns
    out = snakemake(workdir, config)
    assert "Nothing to be done" in out.stdout + out.stderr
    assert db.stat().st_mtime_ns == before


def test_every_artifact_has_exactly_one_rule(finished):
    """Asking for any intermediate file by name works (no AmbiguousRuleException) and, on a
    finished grid, has nothing to do."""
    workdir, config, _ = finished
    res = "results/smoke"
    targets = [f"{res}/models/tiny-llama/dense/manifest.json",
               f"{res}/models/tiny-llama/dense/checkpoint",
               f"{res}/models/tiny-llama/gptq-w4-g32-sym/manifest.json",
               f"{res}/adapters/tiny-llama/gptq-w4-g32-sym/lora-r2/seed0/manifest.json",
               f"{res}/eval/tiny-llama/gptq-w4-g32-sym/none/results.json",
               f"{res}/eval/tiny-llama/gptq-w4-g32-sym/idp-m2-n4-routed-oracle/seed0/results.json",
               f"{res}/tasks/kp/manifest.json", f"{res}/data/recovery_text.txt"]
    out = snakemake(workdir, config, "--dry-run", *targets)
    assert "Nothing to be done" in out.stdout + out.stderr


def test_the_job_graph_names_every_output_the_rules_write(tmp_path):
    """integrity walks `jobs.Jobs.graph()`: its outputs are exactly Snakemake's, on a grid with a
    packed export, distillation, a deployment with a prompt cell on it, and two models."""
    from knowledge_recovery.pipeline.config import load_config
    from knowledge_recovery.pipeline.jobs import Jobs

    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["compression"][1]["export_packed"] = True
    config["compression"].append({"method": "rtn", "bits": 4, "group_size": 32,
                                  "deploy": "openvino"})
    config["recovery"].append({"method": "prompt_tuning", "num_virtual_tokens": 4})
    config["models"].append({**config["models"][0], "name": "tiny-two"})
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, path, "--summary").stdout
    theirs = {line.split("\t")[0] for line in out.splitlines()[1:] if "\t" in line}
    ours = {o for job in Jobs(load_config(config, check_models=False)).graph() for o in job.outputs}
    assert ours == theirs


def _copy_run(finished, to: Path) -> Path:
    shutil.copytree(finished[0], to, symlinks=True)
    return to


def _run_jobs(workdir: Path, config: Path) -> dict:
    out = snakemake(workdir, config)
    return job_counts(out.stdout + out.stderr)


def test_damaged_artifacts_are_found_and_exactly_their_cells_rebuilt(tmp_path, finished):
    """An edited and a deleted results.json, a deleted train manifest, a truncated adapter: the
    plain command sets them aside with what was built from them, rebuilds exactly that, and the
    results equal the originals."""
    workdir = _copy_run(finished, tmp_path / "run")
    config = smoke_config(workdir)
    res = workdir / "results" / "smoke"
    original = (res / "summary" / "results.csv").read_bytes()
    evaluated = res / "eval" / "tiny-llama"
    edited = evaluated / "dense" / "none" / "results.json"
    data = json.loads(edited.read_text())
    data["results"]["kp_country_capital"]["acc"] = 0.99
    edited.write_text(json.dumps(data))
    (evaluated / "gptq-w4-g32-sym" / "none" / "results.json").unlink()
    adapters = res / "adapters" / "tiny-llama" / "gptq-w4-g32-sym"
    (adapters / "lora-r2" / "seed0" / "manifest.json").unlink()
    weights = next((adapters / "idp-m2-n4-routed" / "seed0" / "adapter").glob("*.safetensors"))
    reference = weights.read_bytes()
    weights.write_bytes(reference[: len(reference) // 2])

    verify = subprocess.run([sys.executable, "-m", "knowledge_recovery.cli.verify", "--configfile",
                             str(config)], cwd=workdir, capture_output=True, text=True)
    assert verify.returncode == 1
    for words in ("results.json: edited", "manifest.json: missing", "truncated"):
        assert words in verify.stdout
    # the representations of the rebuilt adapters' cells too (the other cells' are unchanged)
    assert _run_jobs(workdir, config) == {"train": 2, "evaluate": 5, "represent": 2, "aggregate": 1}
    assert (res / "summary" / "results.csv").read_bytes() == original
    assert weights.read_bytes() == reference
    kept = next((res / "set_aside").iterdir())
    assert (kept / edited.relative_to(res)).is_file()  # set aside, not deleted
    assert "Nothing to be done" in snakemake(workdir, config).stderr
    # the rebuilt steps replaced their MLflow runs, and the replaced ones are gone for good
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(f"sqlite:///{res / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    assert client.search_runs([exp.experiment_id], run_view_type=ViewType.DELETED_ONLY) == []
    live = client.search_runs([exp.experiment_id], "tags.step = 'evaluate'")
    assert len(live) == 5


def test_an_altered_checkpoint_is_refused_then_rebuilt(tmp_path, finished):
    """A compressed checkpoint altered in place (same size): the step that reads it refuses with
    the job to rebuild; `verify` finds it too; the plain command then rebuilds that
    compression's cells, byte-identical."""
    workdir = _copy_run(finished, tmp_path / "run")
    config = smoke_config(workdir)
    res = workdir / "results" / "smoke"
    weights = res / "models" / "tiny-llama" / "gptq-w4-g32-sym" / "checkpoint" / "model.safetensors"
    reference = weights.read_bytes()
    weights.write_bytes(reference[:-1] + bytes([reference[-1] ^ 1]))
    # the fast check before a run sees sizes only; the evaluate step hashes what it reads
    cell = "results/smoke/eval/tiny-llama/gptq-w4-g32-sym/none/results.json"
    out = snakemake(workdir, config, "--forcerun", cell, check=False)
    assert out.returncode != 0
    log = (res / "logs" / "evaluate" / "tiny-llama" / "gptq-w4-g32-sym" / "none.log").read_text()
    assert "job 'compress tiny-llama/gptq-w4-g32-sym'" in log and "model.safetensors: altered" in log
    verify = subprocess.run([sys.executable, "-m", "knowledge_recovery.cli.verify", "--configfile",
                             str(config)], cwd=workdir, capture_output=True, text=True)
    assert verify.returncode == 1 and "model.safetensors: altered" in verify.stdout
    assert _run_jobs(workdir, config) == {"compress": 1, "train": 2, "evaluate": 4, "represent": 3,
                                          "aggregate": 1}
    assert weights.read_bytes() == reference
    summary = (res / "summary" / "results.csv").read_bytes()
    assert summary == (finished[0] / "results" / "smoke" / "summary" / "results.csv").read_bytes()


def test_the_default_grid_is_found_from_any_directory(tmp_path):
    out = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--dry-run"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert job_counts(out.stdout)["download_model"] == 1


def test_changing_one_setting_reruns_only_what_it_affects(finished):
    workdir, _, _ = finished
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["recovery"][3]["dropout"] = 0.2  # lora-r2 only
    changed = workdir / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    out = snakemake(workdir, changed, "--dry-run")
    assert job_counts(out.stdout) == {"train": 1, "evaluate": 1, "represent": 1, "aggregate": 1}


def test_the_same_settings_in_another_order_rerun_nothing(finished):
    workdir, config_path, _ = finished

    def reversed_keys(value):
        if isinstance(value, dict):
            return {k: reversed_keys(value[k]) for k in reversed(list(value))}
        return [reversed_keys(v) for v in value] if isinstance(value, list) else value

    config = yaml.safe_load(Path(config_path).read_text())
    reordered = workdir / "reordered.yaml"
    reordered.write_text(yaml.safe_dump(reversed_keys(config), sort_keys=False))
    assert yaml.safe_load(reordered.read_text()) == config
    assert job_counts(snakemake(workdir, reordered, "--dry-run").stdout) == {}


def test_a_touched_input_file_with_the_same_content_reruns_nothing(tmp_path):
    """Data copied or unpacked again has new times and the same bytes: Snakemake compares the
    checksums it recorded, by default only of files under 1 MB (the profiles raise that)."""
    data = tmp_path / "qa.jsonl"
    row = {"question": "Which is larger? " + "x" * 200, "choices": ["one", "two"], "gold": 1}
    data.write_text((json.dumps(row) + "\n") * 5000)  # 1.1 MB
    assert data.stat().st_size > 1_000_000
    workdir = _mkdir(tmp_path / "run")
    config = smoke_config(workdir, tasks=[{"name": "qa", "type": "local", "path": str(data),
                                           "limit": 4, "text": "{{question}}",
                                           "choices": "{{choices}}", "target": "{{gold}}"}])
    first = snakemake(workdir, config, "--until", "prepare_task")
    assert job_counts(first.stdout + first.stderr) == {"prepare_task": 1}
    later = time.time() + 60
    os.utime(data, (later, later))
    again = snakemake(workdir, config, "--until", "prepare_task", "--dry-run")
    assert job_counts(again.stdout) == {}, again.stdout[-2000:]


def test_a_packed_export_adds_only_the_pack_job(tmp_path, finished):
    # On a copy: the shared finished folder stays the uninterrupted run the kill tests compare with.
    workdir = _copy_run(finished, tmp_path / "run")
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["compression"][1]["export_packed"] = True
    changed = workdir / "packed.yaml"
    changed.write_text(yaml.safe_dump(config))
    assert job_counts(snakemake(workdir, changed, "--dry-run").stdout) == {"pack": 1}
    snakemake(workdir, changed)
    model = workdir / "results" / "smoke" / "models" / "tiny-llama" / "gptq-w4-g32-sym"
    manifest = json.loads((model / "packed_manifest.json").read_text())
    assert manifest["max_relative_weight_difference"] == 0.0
    assert manifest["packed_dir_bytes"] < manifest["checkpoint_bytes"] / 2
    config_json = json.loads((model / "packed" / "config.json").read_text())
    assert config_json["quantization_config"]["format"] == "pack-quantized"


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


DRY_EVERY = 8


def test_every_malformed_config_is_refused_before_any_job(tmp_path, finished):
    """The corpus of tests/bad_configs.py through real Snakemake, each from its own folder on a
    finished results folder: each stops before its first job with the key (or file) at fault,
    and the results folder is not touched. A dry run reads a config the same way (the Snakefile
    checks it before the DAG is built): every DRY_EVERY-th case is tried as a dry run too (each
    Snakemake start costs seconds; the whole corpus twice was minutes of CI)."""
    from concurrent.futures import ThreadPoolExecutor

    import bad_configs

    results = _copy_run(finished, tmp_path / "finished") / "results"
    before = _tree(results)

    def attempt(args):
        i, case, dry = args
        folder = _mkdir(tmp_path / f"case{i}{'-n' if dry else ''}")
        config = bad_configs.write_case(case, folder, results_dir=str(results))
        out = snakemake(folder, config, *(["--dry-run"] if dry else []), check=False)
        return case, folder, out

    runs = [(i, case, dry) for i, case in enumerate(bad_configs.CASES)
            for dry in ((True, False) if i % DRY_EVERY == 0 else (False,))]
    assert len(bad_configs.CASES) >= 40
    with ThreadPoolExecutor(3) as pool:
        for (name, _, key, words), folder, out in pool.map(attempt, runs):
            text = out.stdout + out.stderr
            assert out.returncode != 0, name
            assert key is None or f"'{key}'" in text, (name, text[-2000:])
            assert words in text, (name, text[-2000:])
            assert "Job stats" not in text and not (folder / "results").exists(), name
            assert not (folder / "pwned").exists()
    assert _tree(results) == before


def _start(workdir: Path, config: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **env})


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def _killed_once_started(workdir: Path, config: Path, started: Path) -> None:
    """Start the run, SIGKILL its whole process group as soon as `started` exists."""
    run = _start(workdir, config)
    _wait_for(started, run)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()


# What a run measures rather than computes (times, and the process a step ran in): two runs of
# one grid differ in these and in nothing else.
MEASURED_KEYS = {"wall_s", "cpu_s", "start_ms", "end_ms", "step_s", "median_step_s", "latency",
                 "latency_ms", "dense_latency_ms", "latency_over_dense", "argv", "host",
                 "content_sha256"}
MEASURED_FILES = {"overview.md", "overview.tex", "displacement.md", "training.md",
                  "accuracy_vs_latency.png",
                  "report.html", "report.html.attached"}  # tables and plots that show times
NOT_RESULTS = ("logs", "benchmarks", "mlartifacts", "set_aside", "mlflow.db", ".run.lock",
               ".mlflow.lock")


def _computed(res: Path) -> dict:
    """Every file of a results folder as what it computed: JSON without the measured fields (and
    without the hashes of files that show times), CSV without measured columns, other files by
    content; the files that show times, the logs and the MLflow store left out."""
    import gzip
    import hashlib

    def strip(value):  # a manifest's "files" hashes: those files are compared themselves
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in MEASURED_KEYS | {"files"}}
        return [strip(v) for v in value] if isinstance(value, list) else value

    out = {}
    for path in sorted(p for p in res.rglob("*") if p.is_file()):
        rel = path.relative_to(res)
        if rel.parts[0] in NOT_RESULTS or path.name in MEASURED_FILES:
            continue
        data = path.read_bytes()
        if path.name.endswith(".json.gz"):
            data = gzip.decompress(data)
        if path.suffix == ".json" or path.name.endswith(".json.gz"):
            out[str(rel)] = strip(json.loads(data))
        elif path.suffix == ".csv":
            frame = pd.read_csv(path)
            out[str(rel)] = frame.drop(columns=[c for c in frame if c in MEASURED_KEYS]).to_csv()
        else:
            out[str(rel)] = hashlib.sha256(data).hexdigest()
    return out


def assert_same_results(res: Path, reference: Path) -> None:
    """Two results folders of one grid hold the same computed results, and neither holds the
    absolute path of its folder (results do not depend on where they were written)."""
    mine, theirs = _computed(res), _computed(reference)
    assert sorted(mine) == sorted(theirs)
    differ = [k for k in mine if mine[k] != theirs[k]]
    assert not differ, differ
    import gzip

    for root in (res, reference):
        for rel in mine:
            data = (root / rel).read_bytes()
            data = gzip.decompress(data) if rel.endswith(".gz") else data
            assert str(root.resolve()).encode() not in data, (root, rel)


def test_a_killed_run_resumes_with_the_plain_command(tmp_path, finished):
    """SIGKILL of the whole run while it trains, then the same command: the stale locks are
    cleared (no --unlock), and the results equal an uninterrupted run's, file for file, in
    another folder."""
    config = smoke_config(tmp_path)
    res = tmp_path / "results" / "smoke"
    _killed_once_started(tmp_path, config, res / "logs" / "train")
    assert (res / ".run.lock").exists() and list((tmp_path / ".snakemake" / "locks").iterdir())
    left = list((tmp_path / ".snakemake" / "scripts").glob("tmp*.py"))
    assert left  # the killed train job's script
    out = snakemake(tmp_path, config)
    assert "ended without cleaning up" in out.stdout + out.stderr
    assert not (res / ".run.lock").exists()
    assert not list((tmp_path / ".snakemake" / "scripts").glob("tmp*.py"))
    reference = finished[0] / "results" / "smoke" / "summary" / "results.csv"
    assert (res / "summary" / "results.csv").read_bytes() == reference.read_bytes()
    assert_same_results(res, finished[0] / "results" / "smoke")


def test_killed_at_every_stage_in_turn_the_plain_command_ends_as_an_unbroken_run(tmp_path, finished):
    """SIGKILL of the whole run while it compresses, then between an evaluate step's tasks, then
    in the middle of an evaluate step's and of the aggregate step's MLflow logging (KR_KILL_AT:
    the run kills its own process group there), each time followed by the plain command: the
    end equals an uninterrupted run (table, compressed weights, adapters) with exactly one
    MLflow run per step. (Killed while training: the test above.)"""
    config = smoke_config(tmp_path)
    res = tmp_path / "results" / "smoke"
    _killed_once_started(tmp_path, config, res / "logs" / "compress")
    for point in ("evaluate:task", "tracking:evaluate", "tracking:aggregate"):
        run = _start(tmp_path, config, KR_KILL_AT=point)
        assert run.wait(timeout=900) != 0, f"the run was not killed at {point}"
    out = snakemake(tmp_path, config)
    assert "ended without cleaning up" in out.stdout + out.stderr
    reference = finished[0] / "results" / "smoke"
    assert (res / "summary" / "results.csv").read_bytes() == \
        (reference / "summary" / "results.csv").read_bytes()
    for kept in ("models/tiny-llama/gptq-w4-g32-sym/checkpoint/model.safetensors",
                 "adapters/tiny-llama/gptq-w4-g32-sym/lora-r2/seed0/adapter/adapter_model.safetensors"):
        assert (res / kept).read_bytes() == (reference / kept).read_bytes(), kept
    from mlflow.entities import RunStatus, ViewType

    client = mlflow.MlflowClient(f"sqlite:///{res / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    steps = {}
    for r in client.search_runs([exp.experiment_id], "tags.`kr.role` = 'step'", max_results=1000):
        steps.setdefault(r.data.tags["step"], []).append(r)
        assert r.info.status == RunStatus.to_string(RunStatus.FINISHED)
    assert {k: len(v) for k, v in steps.items()} == \
        {k: v for k, v in EXPECTED_JOBS.items() if k != "aggregate"}
    assert client.search_runs([exp.experiment_id], run_view_type=ViewType.DELETED_ONLY) == []


def test_a_results_folder_in_use_is_refused_to_a_second_checkout(tmp_path):
    """Two working directories (two checkouts) writing one results folder: the second run stops
    before its first job; a dry run is still allowed."""
    shared = tmp_path / "shared"
    first = _start(tmp_path / "a", smoke_config(_mkdir(tmp_path / "a"), results_dir=str(shared)))
    try:
        _wait_for(shared / "smoke" / ".run.lock", first)
        second = _mkdir(tmp_path / "b")
        config = smoke_config(second, results_dir=str(shared))
        assert snakemake(second, config, "--dry-run", check=False).returncode == 0
        out = snakemake(second, config, check=False)
        assert out.returncode != 0 and "is in use by another run" in out.stdout + out.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_huge_text_is_read_no_further_than_the_grid_needs(tmp_path):
    """A 1 GiB recovery text with max_chars 50,000: the dry run's peak memory (of any one of
    its processes: the preflight's model checks import torch, transformers and peft in a child,
    ~400 MB here) is under 500 MB and that of the same dry run on a small text within 50 MB.
    Reading the whole file took 2.2 GB."""
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as fh:  # sparse: a gibibyte of NUL characters (valid UTF-8)
        fh.write(b"Some text. " * 10000)
        fh.truncate(1 << 30)
    (tmp_path / "small.txt").write_bytes(b"Some text. " * 10000)
    measure = ("import resource, subprocess, sys; out = subprocess.run(sys.argv[1:], "
               "capture_output=True, text=True); print(out.returncode, 'Job stats' in out.stdout, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)")
    peaks = {}
    for name in ("small", "huge"):
        workdir = _mkdir(tmp_path / name)
        config = smoke_config(workdir, text={"source": "files", "max_chars": 50000,
                                             "paths": [str(tmp_path / f"{name}.txt")]})
        proc = subprocess.run([sys.executable, "-c", measure, *SNAKEMAKE, "--directory",
                               str(workdir), "--configfile", str(config), "--dry-run"],
                              capture_output=True, text=True, check=True)
        rc, planned, peak_mb = proc.stdout.split()
        assert rc == "0" and planned == "True", proc.stdout
        peaks[name] = int(peak_mb)
    assert peaks["huge"] < min(500, peaks["small"] + 50), f"peak RSS of the dry runs (MB): {peaks}"
