"""The job definitions in workflows/ call ``tileseg batch`` with options it accepts and the values
they document: each command line is extracted (cron, systemd, Kubernetes) or captured by running
the script against a stand-in ``tileseg`` (Slurm), then parsed by the command itself."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tileseg.batch import default_summary_path
from tileseg.cli.batch import command as batch_command

WORKFLOWS = Path(__file__).parent.parent / "workflows"


def _run_batch_argv(words: list[str]) -> list[str]:
    """What follows ``tileseg batch`` in a command line."""
    i = next(i for i, word in enumerate(words) if Path(word).name == "tileseg")
    assert words[i + 1] == "batch", words
    return words[i + 2:]


def parse_args(argv: list[str]) -> SimpleNamespace:
    """``tileseg batch``'s options as its own parser reads them (nothing is run)."""
    with batch_command.make_context("tileseg batch", list(argv)) as ctx:
        return SimpleNamespace(**ctx.params)


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], text)


def test_crontab_line() -> None:
    lines = (WORKFLOWS / "cron" / "crontab").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    (job,) = [line for line in lines if re.match(r"^[\d*]", line)]
    fields = job.split(maxsplit=5)
    assert len(fields) == 6  # five schedule fields and the command
    command = _expand(fields[5].split(">>")[0], env)
    args = parse_args(_run_batch_argv(shlex.split(command.split("&&", 1)[1])))
    assert args.scheduler == env["TILESEG_SCHEDULER"] and args.lock and args.wait_workers == 1


def test_systemd_service_and_timer() -> None:
    unit = (WORKFLOWS / "systemd" / "tileseg-batch.service").read_text()
    env_lines = (WORKFLOWS / "systemd" / "tileseg-batch.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in env_lines if re.match(r"^[A-Z_]+=", line))
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, flags=re.M)
    args = parse_args(_run_batch_argv(shlex.split(_expand(exec_start, env))))
    assert (args.manifest, args.scheduler, args.summary, args.wait_workers) == (
        env["MANIFEST"], env["TILESEG_SCHEDULER"], env["SUMMARY"], 1)
    assert "SuccessExitStatus=75" in unit  # "previous run still going" is not a failure
    timer = (WORKFLOWS / "systemd" / "tileseg-batch.timer").read_text()
    assert re.search(r"^OnCalendar=", timer, flags=re.M) and "Persistent=" in timer


def test_kubernetes_manifests() -> None:
    docs = [d for f in ("cronjob.yaml", "dask-cluster.yaml")
            for d in yaml.safe_load_all((WORKFLOWS / "kubernetes" / f).read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"ConfigMap", "CronJob", "Deployment", "Service"} <= set(kinds)
    cron = kinds["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    (container,) = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    config = kinds["ConfigMap"]["data"]
    env = {e["name"]: config[e["valueFrom"]["configMapKeyRef"]["key"]] for e in container["env"]}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    assert container["command"] == ["tileseg", "batch"]
    args = parse_args(argv)
    assert args.scheduler == config["scheduler-address"] and args.manifest == config["manifest"]
    assert args.wait_workers == 1
    workers = [d for d in docs if d["kind"] == "Deployment"
               and "worker" in " ".join(d["spec"]["template"]["spec"]["containers"][0]["command"])]
    assert workers, "no dask worker Deployment"
    command = " ".join(workers[0]["spec"]["template"]["spec"]["containers"][0]["command"])
    assert "--resources GPU=1" in command
    # workers on other hosts share no disk: everything the batch reads and writes is in a bucket
    assert args.manifest.startswith("s3://") and args.summary.startswith("s3://")
    pods = [kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            *(d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment")]
    for pod in pods:
        assert "volumes" not in pod and all("volumeMounts" not in c for c in pod["containers"])
    assert any("secretRef" in e for e in container["envFrom"])  # the store's credentials
    (worker,) = workers[0]["spec"]["template"]["spec"]["containers"]
    assert any("secretRef" in e for e in worker["envFrom"])


@pytest.mark.parametrize("mode", ["existing cluster", "dask-jobqueue", "manifest on a store"])
def test_slurm_batch_script(mode: str, tmp_path: Path) -> None:
    home = tmp_path / "tileseg"
    (home / "venv" / "bin").mkdir(parents=True)
    (home / "venv" / "bin" / "activate").write_text("")
    (home / "src").mkdir()
    stub = tmp_path / "bin"
    stub.mkdir()
    record = tmp_path / "argv"
    (stub / "tileseg").write_text(f'#!/bin/sh\nprintf "%s\\0" "$0" "$@" > {record}\n')
    (stub / "tileseg").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "TILESEG_HOME": str(home),
           "TMPDIR": str(tmp_path)}
    manifest = "s3://jobs/scenes.yaml" if mode == "manifest on a store" else "scenes.yaml"
    if mode != "dask-jobqueue":
        env["SCHEDULER"] = "tcp://head:8786"
    else:
        env.update(GPU_JOBS="8", SLURM_ACCOUNT_NAME="geo")
        env.pop("SCHEDULER", None)
    subprocess.run(["bash", str(WORKFLOWS / "slurm" / "tileseg-batch.sbatch"), manifest],
                   env=env, check=True, cwd=tmp_path)
    words = record.read_bytes().decode().split("\0")[:-1]
    args = parse_args(_run_batch_argv(words))
    assert args.manifest == manifest
    assert args.summary == manifest + ".summary.json"
    assert args.summary == default_summary_path(manifest)  # what tileseg batch would pick
    assert args.lock == f"{tmp_path}/tileseg-batch.lock"
    if mode != "dask-jobqueue":
        assert args.scheduler == "tcp://head:8786" and not args.slurm_jobs
        assert args.wait_workers == 1
    else:
        assert (args.slurm_jobs, args.slurm_gpu, args.slurm_account) == (8, True, "geo")
        assert (args.wait_workers, args.wait_timeout) == (1, 3600)
