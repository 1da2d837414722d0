"""profiles/slurm against a REAL Slurm: a single-node cluster with two fake GPUs.

The module fixture starts slurmctld, slurmd, munge, slurmdbd and MariaDB with
tests/slurm/start_slurm.sh (installing the Debian packages when missing) and, in its
finalizer, always stops each daemon it started, by the pid it recorded. The module is
skipped, with the reason, only where Slurm cannot be installed or started: not root, no
apt-get, the install failing, or a Slurm that start_slurm.sh did not set up (left alone).

Checks: the tiny DAG runs to completion through `snakemake --profile profiles/slurm`
(the real profile, adapted to this cluster by its environment variables); every job went
through Slurm (sbatch ids in Snakemake's log, listed by `sacct`, with the time limit,
memory and partition the profile asks for), GPU stages were allocated `gres/gpu` and CPU
stages none; a failing job makes Snakemake exit non-zero naming the job's log, which holds
the error; `snakemake --profile slurm` (the ./slurm symlink) is accepted.

The cluster recipe, its knobs and the pitfalls it avoids: tests/slurm/start_slurm.sh.
"""
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, REPO, run_cli, tiny_params
from test_pipeline_e2e import copy_project, snakemake_jobs

BIN = Path(PYTHON).parent
SCRIPTS = REPO / "tests" / "slurm"
PROFILE = REPO / "profiles" / "slurm"
GPU_STAGES = {"features", "zeroshot", "finetune", "evaluate", "wise_ft", "soup"}
LOCK = Path("/tmp/robust-ft-pipeline-slurm-test.lock")   # one Slurm test session at a time per machine
TIMINGS: dict[str, float] = {}

# The local cluster: partition `debug`, a node advertising more than the profile asks of one job
# (sbatch rejects larger requests; nothing enforces them here), two fake GPUs, accounting on.
CLUSTER_ENV = {"WITH_DBD": "1", "FAKE_GPUS": "2", "PARTITIONS": "debug", "NODE_CPUS": "16", "NODE_MEM_MB": "131072"}
# The profile's knobs set for it: a 2-core box wants 1-thread GPU jobs and quick status polls.
PROFILE_ENV = {"PIPELINE_SLURM_PARTITION": "debug", "PIPELINE_SLURM_GPU_PARTITION": "debug",
               "PIPELINE_SLURM_INIT_SECONDS": "1", "PIPELINE_SLURM_JOBS": "4", "PIPELINE_SLURM_GPU_CPUS": "1"}


def _say(request, line: str) -> None:
    """Print past pytest's output capture (timings are wanted even from `pytest -q`)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n[test_slurm] {line}", flush=True)


def _running(started: list[list[str]]) -> list[tuple[str, int]]:
    """The recorded daemons ("name pid pidfile" lines) still running as that daemon."""
    out = []
    for name, pid, _ in (s for s in started if len(s) == 3):
        try:
            if name in Path(f"/proc/{pid}/comm").read_text():
                out.append((name, int(pid)))
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def slurm(request, tmp_path_factory):
    """A running local Slurm; stops, by pid, every daemon this fixture started."""
    if os.geteuid() != 0:
        pytest.skip("Slurm test cluster: needs root to install and run slurmctld/slurmd/munge")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("Slurm test cluster: no apt-get to install Slurm (Debian/Ubuntu only)")
    lock = open(LOCK, "w")  # noqa: SIM115 - held (and the flock with it) for the whole module
    deadline = time.monotonic() + 900
    while True:   # another session's Slurm tests: wait rather than stop its cluster under it
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                pytest.skip(f"Slurm test cluster: {LOCK} held by another test session for 15 min")
            time.sleep(2)
    record = tmp_path_factory.mktemp("slurm") / "started"
    env = {**os.environ, **CLUSTER_ENV, "SLURM_STARTED_FILE": str(record)}
    t0 = time.monotonic()
    try:
        try:
            res = subprocess.run(["bash", str(SCRIPTS / "start_slurm.sh")], env=env, capture_output=True, text=True,
                                 timeout=600, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail("start_slurm.sh did not finish in 10 min")
        TIMINGS["start_slurm"] = time.monotonic() - t0
        out = (res.stdout + res.stderr)[-2000:]
        if res.returncode in (2, 3, 4):   # not root / no apt-get, a foreign Slurm, install failed
            pytest.skip(f"Slurm test cluster unavailable (start_slurm.sh exit {res.returncode}): {out.strip()}")
        assert res.returncode == 0, f"start_slurm.sh failed ({res.returncode}):\n{out}"
        _say(request, f"Slurm up in {TIMINGS['start_slurm']:.1f}s; {res.stdout.strip().splitlines()[-1]}")
        yield {"env": env}
    finally:
        t1 = time.monotonic()
        started = [line.split() for line in record.read_text().splitlines()] if record.exists() else []
        subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh")], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
        # belt and braces: whatever this fixture started and still runs gets SIGKILL, by pid
        for _name, pid in _running(started):
            os.kill(pid, 9)
        time.sleep(0.5)
        TIMINGS["stop_slurm"] = time.monotonic() - t1
        TIMINGS["module_total"] = time.monotonic() - t0
        _say(request, "timings (s): " + json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        assert not _running(started), f"daemons still running after stop_slurm.sh: {_running(started)}"


def _profile_env() -> dict:
    return {**os.environ, **PROFILE_ENV, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
            "DVC_NO_ANALYTICS": "1"}


def _project(root: Path, cfg: dict) -> Path:
    copy_project(root, cfg)
    shutil.copytree(REPO / "profiles", root / "profiles", symlinks=True)
    os.symlink(os.readlink(REPO / "slurm"), root / "slurm")
    return root


def _one_job_cfg() -> dict:
    """tiny_params cut to one method and one seed, without WiSE-FT or soups."""
    cfg = tiny_params()
    cfg["experiment"].update(methods=["ft_adamw"], seeds=[0])
    cfg["wise_ft"]["methods"] = []
    cfg.pop("soups", None)
    return cfg


def _submitted(log: str) -> dict[str, str]:
    """Slurm job id -> rule, from Snakemake's 'rule X: ... jobid: N' blocks and submission lines."""
    blocks = re.finditer(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)$", log, re.MULTILINE)
    rules = {m[2]: m[1] for m in blocks}
    return {sid: rules[jid] for jid, sid in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)}


def _sacct(ids, fields: str) -> dict[str, dict[str, str]]:
    names = fields.split(",")
    rows = {}
    for _ in range(20):   # slurmdbd may lag a second behind slurmctld
        out = run_cli("sacct", "-X", "-P", "-n", "-j", ",".join(ids), "-o", fields, cwd=REPO).stdout
        rows = {r[0]: dict(zip(names, r)) for r in (line.split("|") for line in out.splitlines() if line)}
        if set(rows) >= set(ids):
            break
        time.sleep(1)
    return rows


def test_profile_covers_every_stage():
    """The profile's per-stage table names every stage of pipeline/stages.py with its GPU count."""
    from snakemake.profiles import ProfileConfigFileParser

    from pipeline.stages.registry import STAGES

    old = os.environ.get("PIPELINE_SLURM_GPU_PARTITION")
    os.environ["PIPELINE_SLURM_GPU_PARTITION"] = "gpuq"
    try:
        with open(PROFILE / "config.yaml") as f:
            args = ProfileConfigFileParser().parse(f)
    finally:
        os.environ.pop("PIPELINE_SLURM_GPU_PARTITION") if old is None else os.environ.update(
            PIPELINE_SLURM_GPU_PARTITION=old)
    assert {e.split(":")[0] for e in args["set-resources"] if ":runtime=" in e} == {st.name for st in STAGES}
    on_gpu_partition = {e.split(":")[0] for e in args["set-resources"] if e.endswith(":slurm_partition='gpuq'")}
    assert on_gpu_partition == {st.name for st in STAGES if st.gpu} == GPU_STAGES
    assert not [e for e in args["set-resources"] if ":gpu=" in e]   # GPUs per job come from the Snakefile
    assert "finetune:slurm_extra='--signal=USR1@180'" in args["set-resources"]
    assert args["executor"] == "slurm" and int(args["retries"]) >= 1 and args["slurm-requeue"] == "True"


def test_slurm_symlink_profile_dry_run(tmp_path):
    """`snakemake --profile slurm` from the repo root finds ./slurm; env overrides reach the jobs."""
    link = REPO / "slurm"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == PROFILE.resolve()
    root = _project(tmp_path, _one_job_cfg())
    env = {**_profile_env(), "PIPELINE_SLURM_GPU_PARTITION": "gpu", "PIPELINE_SLURM_ACCOUNT": "lab",
           "PIPELINE_SLURM_TIME_SCALE": "2"}
    out = run_cli(str(BIN / "snakemake"), "--profile", "slurm", "-n", cwd=root, env=env).stdout
    assert snakemake_jobs(out) == Counter({"prepare_data": 1, "backbone": 1, "features": 1, "linear_probe": 1,
                                           "grad_norms": 1, "finetune": 1, "evaluate": 1, "lpft_theory": 1,
                                           "report": 1, "costs": 1, "paper": 1})
    blocks = {m[1]: m[2] for m in re.finditer(r"^rule (\w+):\n((?:    .*\n)+)", out, re.MULTILINE)}
    res = {rule: re.search(r"resources: (.*)", b)[1] for rule, b in blocks.items()}
    assert "runtime=480" in res["finetune"] and "gpu=1" in res["finetune"]
    assert "slurm_partition=gpu" in res["finetune"] and "slurm_account=lab" in res["finetune"]
    assert "slurm_extra=--signal=USR1@180" in res["finetune"]
    assert "gpu=0" in res["prepare_data"] and "slurm_partition=debug" in res["prepare_data"]
    assert "slurm_extra" not in res["evaluate"]
    # a fine-tune over 2 GPUs (DDP) asks Slurm for 2
    cfg = _one_job_cfg()
    cfg["finetune"]["gpus"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = run_cli(str(BIN / "snakemake"), "--profile", "slurm", "-n", "-p", cwd=root, env=env).stdout
    finetune = re.search(r"^rule finetune:\n((?:    .*\n)+)", out, re.MULTILINE)[1]
    assert re.search(r"resources: .*\bgpu=2\b", finetune)
    assert "torch.distributed.run --standalone --nproc_per_node 2 -m pipeline finetune" in out


def _local_profile(**env) -> dict:
    from snakemake.profiles import ProfileConfigFileParser

    old = os.environ.copy()
    os.environ.pop("PIPELINE_GPUS", None)
    os.environ.update(env)
    try:
        with open(REPO / "profiles" / "local" / "config.yaml") as f:
            return dict(ProfileConfigFileParser().parse(f))
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_local_profile_caps_cores_and_gpu_jobs(tmp_path):
    """profiles/local: every usable core; GPU jobs at once = GPUs (PIPELINE_GPUS), or cores without GPUs."""
    cores = len(os.sched_getaffinity(0))
    assert _local_profile(PIPELINE_GPUS="3") == {"cores": str(cores), "resources": ["gpu=3"],
                                                 "rerun-incomplete": "True"}
    assert _local_profile(PIPELINE_GPUS="0")["resources"] == [f"gpu={cores}"]
    devices = [d for d in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", d)]
    assert _local_profile()["resources"] == [f"gpu={len(devices) or cores}"]
    root = _project(tmp_path, _one_job_cfg())
    out = run_cli(str(BIN / "snakemake"), "--profile", "profiles/local", "-n", cwd=root, env=_profile_env()).stdout
    assert snakemake_jobs(out)["finetune"] == 1


@pytest.mark.slow
def test_tiny_dag_through_slurm(slurm, tmp_path, request):
    """The tiny DAG on the cluster, with the fine-tune preempted once: Snakemake retries it and it resumes."""
    root = _project(tmp_path, _one_job_cfg())
    target = "results/report/results.csv"
    # The first fine-tune attempt gets a real SIGTERM after step 2 of 4 (as from Slurm before a
    # preemption): it checkpoints and exits 75; the profile's retry resumes it from that checkpoint.
    env = {**_profile_env(), "PIPELINE_SIGNAL_AT_STEP": "2"}
    t0 = time.monotonic()
    res = run_cli(str(BIN / "snakemake"), "--profile", "profiles/slurm", target, cwd=root, env=env, check=False)
    TIMINGS["tiny_dag"] = time.monotonic() - t0
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert (root / target).is_file()

    # every job went through sbatch, and sacct lists it
    jobs = _submitted(log)
    saved = "".join(p.read_text() for p in (root / ".snakemake/log").glob("*.snakemake.log"))
    assert all(f"SLURM jobid {sid} " in saved for sid in jobs), saved[-3000:]   # the run's log file too
    expected = Counter({"prepare_data": 1, "backbone": 1, "features": 1, "linear_probe": 1, "grad_norms": 1,
                        "finetune": 2, "evaluate": 1, "report": 1})
    assert Counter(jobs.values()) == expected, log[-4000:]
    _say(request, f"tiny DAG: {len(jobs)} Slurm jobs in {TIMINGS['tiny_dag']:.1f}s: "
         + ", ".join(f"{r}={sid}" for sid, r in sorted(jobs.items(), key=lambda x: int(x[0]))))
    rows = _sacct(jobs, "JobID,JobName,State,Partition,Timelimit,ReqMem,AllocTRES")
    assert set(rows) == set(jobs), rows
    assert len({r["JobName"] for r in rows.values()}) == 1   # the plugin names every job by the run's uuid
    preempted, retried = sorted((s for s, r in jobs.items() if r == "finetune"), key=int)
    for sid, rule in jobs.items():
        row = rows[sid]
        if sid == preempted:
            assert row["State"] == "FAILED", row   # the stage exits 75 ("checkpointed, run me again")
        else:
            assert row["State"] == "COMPLETED", row
        assert row["Partition"] == "debug", row
        assert ("gres/gpu" in row["AllocTRES"]) == (rule in GPU_STAGES), row
    assert rows[retried]["Timelimit"] == "04:00:00" and rows[retried]["ReqMem"].startswith("16000M"), rows[retried]
    # the retry picked up the preempted attempt's checkpoint, and then removed it
    ft_log = (root / "logs/finetune/digits/tiny/ft_adamw/epochs1_lr0.0003/0.log").read_text()
    assert re.search(r"resuming from \S+step0+2 \(step 2\)", ft_log), ft_log[-3000:]
    assert not (root / "checkpoints/digits/tiny/ft_adamw/epochs1_lr0.0003/seed0").exists()
    _say(request, f"fine-tune preempted at step 2 (Slurm job {preempted}), resumed by job {retried}")
    # the fine-tune may also be requeued by Slurm (slurm-requeue) and gets SIGUSR1 before its limit
    show = run_cli("scontrol", "show", "job", retried, cwd=root).stdout
    assert "Requeue=1" in show, show


@pytest.mark.slow
def test_failing_job_is_reported(slurm, tmp_path, request):
    """A DomainNet copy whose split list names a missing image: the (local) download job finds the
    layout in place, prepare_data fails on the cluster; Snakemake says so and where the log is."""
    cfg = _one_job_cfg()
    raw = tmp_path / "broken_raw"
    for domain in ("sketch", "real"):
        (raw / "domainnet" / domain / "cat").mkdir(parents=True)
        (raw / "domainnet" / domain / "cat" / "other.jpg").write_bytes(b"")
        for part in ("train", "test"):
            (raw / "domainnet" / f"{domain}_{part}.txt").write_text(f"{domain}/cat/missing.jpg 0\n")
    cfg["datasets"]["broken"] = {"source": "domainnet", "root": str(raw), "storage_size": 32, "id_domain": "sketch",
                                 "ood_domains": ["real"], "download": False}
    cfg["experiment"]["datasets"] = ["digits", "broken"]
    root = _project(tmp_path / "project", cfg)
    t0 = time.monotonic()
    # --retries 0: the profile's retries would submit this deterministic failure 4 times
    res = run_cli(str(BIN / "snakemake"), "--profile", "profiles/slurm", "--retries", "0", "data/prepared/broken",
                  cwd=root, env=_profile_env(), check=False)
    TIMINGS["failing_job"] = time.monotonic() - t0
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "Error in rule prepare_data" in out, out[-3000:]
    assert "logs/prepare_data/broken.log" in out, out[-3000:]
    assert re.search(r"SLURM jobid (\d+)", out), out[-3000:]
    job_log = (root / "logs/prepare_data/broken.log").read_text()
    errors = [line for line in job_log.splitlines() if "domainnet" in line and "error" in line.lower()]
    assert errors, job_log[-2000:]
    _say(request, f"failing job reported in {TIMINGS['failing_job']:.1f}s; its log: {errors[-1][:160]}")
    assert not (root / "data/prepared/broken").exists()
