"""`wandb launch` and `wandb launch-agent` as W&B users type them (wandb 0.31's flags and spec keys).

The README's table lists every flag; each is tested here (or where its behaviour lives: -j and job
names below, ignore files in test_code_storage.py) the way W&B's CLI takes it: `-c` as JSON text or a
file, `-R` with `-q` as the job's own resource args under the queue's guardrails, `-E train.py` run with
python, the spec keys `wandb launch` writes, `-j entity/project/name:alias` by part.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

import time

from conftest import JOBS, cli, flow_run_of, job_report, launch, run_id_of, run_logs, unique, wait_for_final

NO_SERVER = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens on port 9


def dry_run(*args: str, check: bool = True, process: bool = False, env: dict | None = None):
    return cli("launch", "--dry-run", "-r", "local-process", *args, env={**NO_SERVER, **(env or {})}, check=check,
               process=process)


def submission(*args: str, **kwargs) -> dict:
    return json.loads(dry_run(*args, **kwargs).stdout)["submission"]


def refused(*args: str, dry: bool = True, env: dict | None = None) -> str:
    result = dry_run(*args, check=False, env=env) if dry else cli("launch", *args, check=False, env=env)
    assert result.returncode != 0 and result.stderr.count("\n") <= 1, result.stderr
    return result.stderr


def _folder(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def test_config_is_json_text_or_a_file_with_the_spec_keys_wandb_launch_writes(tmp_path):
    spec = {"overrides": {"run_config": {"lr": 0.1}, "args": ["--fast"]}, "docker": {}, "git": {}, "author": "ada",
            "project": "Vision", "entity": "team", "resource": "local-process", "resource_args": {}}
    as_text = submission("-u", str(JOBS), "-E", "python report.py", "-c", json.dumps(spec), "--run-id", "r1")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    for path in ("spec.json", "spec.yaml"):
        assert submission("-u", str(JOBS), "-E", "python report.py", "-c", str(tmp_path / path), "--run-id", "r1") == as_text
    assert as_text["argv"] == ["python", "report.py", "--fast"]
    env = as_text["env"]
    # W&B's agent runs a job in its project lower-cased and makes the spec's author its WANDB_USERNAME.
    assert env["WANDB_PROJECT"] == "vision" and env["WANDB_ENTITY"] == "team" and env["WANDB_USERNAME"] == "ada"
    assert json.loads(env["WANDB_CONFIG"]) == {"lr": 0.1}

    image = submission("-c", json.dumps({"docker": {"docker_image": "img:1"}}), "-r", "local-container")
    assert "img:1" in image["argv"]
    assert "-c/--config" in refused("-u", str(JOBS), "-E", "python report.py", "-c", "{nope: [")
    assert "sweep_id: sweeps run with `prefect-launch sweep create`" in refused(
        "-d", "img:1", "-c", json.dumps({"sweep_id": "abc"}))
    assert "docker.user_id" in refused("-d", "img:1", "-c", json.dumps({"docker": {"user_id": 0}}))
    assert "python_version" in refused("-d", "img:1", "-c", json.dumps({"python_version": "3.11"}))


def test_entry_point_scripts_run_as_wandb_runs_them(tmp_path):
    folder = _folder(tmp_path / "code", {"train.py": "print(1)\n", "run.sh": "echo 1\n", "sub/train.py": "print(2)\n"})
    assert submission("-u", str(folder), "-E", "train.py --epochs 2")["argv"] == ["python", "train.py", "--epochs", "2"]
    assert submission("-u", str(folder), "-E", "run.sh")["argv"] == ["bash", "run.sh"]
    assert "entry point file 'missing.py' not found" in refused("-u", str(folder), "-E", "missing.py")
    assert "needs an entry point" in refused("-u", str(folder))
    # --build-context: the job's code is that part of the folder, its entry point relative to it.
    context = submission("-u", str(tmp_path), "--build-context", "code/sub", "-E", "train.py", "-p", "p")
    assert context["argv"] == ["python", "train.py"]
    assert "outside the code folder" in refused("-u", str(folder), "--build-context", "..", "-E", "train.py")


def test_flags_that_cannot_mean_here_what_they_mean_in_wandb_are_refused_saying_why():
    assert "the agent builds" in refused("-d", "img:1", "-b")
    assert "builder.destination" in refused("-d", "img:1", "-rg", "registry.local/x")
    assert "queues belong to no project" in refused("-d", "img:1", "-pq", "proj")
    assert "--async returns once the job is queued" in refused("-d", "img:1", "--async", "--wait")
    assert "give one of them" in refused("-d", "img:1", "-B", "python:3.11-slim")
    assert "-g/--git-version needs a git -u/--uri" in refused("-d", "img:1", "-g", "v1")
    assert "--build-context goes with -u/--uri only" in refused("-d", "img:1", "--build-context", "sub")
    assert "alias 'v3' refused" in refused("-j", "team/mnist/trainer:v3")
    direct = cli("launch", "-d", "img:1", check=False)
    assert direct.returncode == 1 and "give -q/--queue" in direct.stderr


def test_run_name_from_wandb_name_and_project_from_wandb_settings(tmp_path):
    env = submission("-d", "img:1", "-r", "local-container", env={"WANDB_NAME": "from-env"})["env"]
    assert env["WANDB_NAME"] == "from-env" and env["WANDB_PROJECT"] == "uncategorized"
    # A code folder without -p: the project wandb.init gives the job W&B makes of it (here WANDB_PROJECT).
    folder = _folder(tmp_path / "code", {"train.py": "print(1)\n"})
    env = submission("-u", str(folder), "-E", "train.py", process=True, env={"WANDB_PROJECT": "FromSettings"})["env"]
    assert env["WANDB_PROJECT"] == "fromsettings"


def test_queue_without_a_name_is_queue_default():
    result = cli("launch", "-d", "img:1", "-q", check=False, process=True)
    assert result.returncode == 1 and "queue 'default' not found" in result.stderr


def test_resource_args_with_a_queue_are_the_jobs_own_under_its_guardrails(make_queue, start_agent, tmp_path):
    queue = make_queue("--resource", "local-process")
    start_agent("-q", queue)
    too_much = launch("-q", queue, "-u", str(JOBS), "-E", "report.py", "-R", '{"cwd": "/"}', check=False)
    assert too_much.returncode == 1 and "only the queue's config" in too_much.stderr
    assert "Packing" not in too_much.stderr  # refused before anything was packed or stored
    other = launch("-q", queue, "-d", "img:1", "-r", "kubernetes", check=False)
    assert other.returncode == 1 and f"queue {queue!r} runs local-process jobs" in other.stderr

    config = json.dumps({"overrides": {"run_config": {"lr": 0.3}}, "author": "ada", "resource_args": {"env": {"JOB_A": "1"}}})
    result = launch("-q", queue, "-r", "local-process", "-u", str(JOBS), "-E", "report.py", "-c", config,
                    "-R", '{"local-process": {"env": {"JOB_FROM_R": "yes"}}}', "-p", "Proj", "--async")
    run_id = run_id_of(result)
    assert wait_for_final(run_id).state.is_completed()
    logs = run_logs(flow_run_of(run_id).id)
    env = job_report(logs, "ENV")
    assert env["JOB_FROM_R"] == "yes" and "JOB_A" not in env  # -R replaces the spec's resource_args, as in wandb launch
    assert env["WANDB_PROJECT"] == "proj" and env["WANDB_USERNAME"] == "ada"
    assert job_report(logs, "CONFIG")["lr"] == 0.3
    assert job_report(logs, "PROCESS")["argv"][1:2] == ["report.py"]  # `report.py` ran with python

    missing = launch("-q", unique("missing"), "-u", str(JOBS), "-E", "report.py", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr and "Packing" not in missing.stderr


def test_jobs_are_told_apart_and_named_by_part_as_wandb_does(make_queue, start_agent, tmp_path):
    suffix = unique("p")[2:]
    upper, dashed = f"My_Proj{suffix}", f"my-proj{suffix}"
    cli("job", "create", "code", str(JOBS), "-p", upper, "-n", "x", "-E", "report.py --tag upper")
    cli("job", "create", "code", str(JOBS), "-p", dashed, "-n", "x", "-E", "report.py --tag dashed")
    cli("job", "create", "code", str(JOBS), "-p", dashed, "-n", "x", "-e", "team", "-E", "report.py --tag team")
    described = json.loads(cli("job", "describe", f"{upper.lower()}/x").stdout)  # projects compare without case
    assert described["entry_point"][-1] == "upper"
    assert json.loads(cli("job", "describe", f"{dashed}/x").stdout)["entry_point"][-1] == "dashed"
    listed = json.loads(cli("job", "list", "-p", dashed, "--json").stdout)
    assert sorted((job["entity"] or "", job["entry_point"][-1]) for job in listed) == [("", "dashed"), ("team", "team")]
    assert "W&B job names may only contain" in cli("job", "create", "image", "img:1", "-p", dashed, "-n", "a b",
                                                   check=False).stderr

    queue = make_queue("--resource", "local-process")
    start_agent("-q", queue)
    for reference, tag in ((f"team/{dashed}/x:latest", "team"), (f"{dashed}/x", "dashed")):
        run_id = run_id_of(launch("-q", queue, "-j", reference))
        assert wait_for_final(run_id).state.is_completed()
        assert job_report(run_logs(flow_run_of(run_id).id), "ARGS")[-1] == tag
    wrong = launch("-q", queue, "-j", f"other/{dashed}/x", check=False)
    assert wrong.returncode == 1 and f"-j team/{dashed}/x" in wrong.stderr and f"-j {dashed}/x" in wrong.stderr

    # -J stores the -u code as a job too, as `wandb launch -J` makes one.
    run_id = run_id_of(launch("-q", queue, "-u", str(JOBS), "-E", "report.py", "-p", dashed, "-J", "stored"))
    assert wait_for_final(run_id).state.is_completed()
    assert json.loads(cli("job", "describe", f"{dashed}/stored").stdout)["entry_point"] == ["report.py"]


def test_agent_takes_wandb_launch_agent_flags(make_queue, start_agent, tmp_path):
    queue = make_queue("--resource", "local-process")
    checked = json.loads(cli("agent", "-q", queue, "-e", "team", "-vv", "-j", "2", "--check").stdout)
    assert checked["entity"] == "team" and checked["verbosity"] == 2 and checked["max_jobs"] == 2
    url = cli("agent", "-q", queue, "-u", "https://wandb.ai/register", "--check", check=False)
    assert url.returncode == 1 and "registration URL" in url.stderr
    log = tmp_path / "agent-internal.log"
    agent = start_agent("-q", queue, "-l", str(log), "-v")
    pattern = re.compile(rf"agent \S+ polling on queues {queue}, running 0 out of a maximum of unlimited jobs")
    deadline = time.monotonic() + 60
    while not (pattern.search(agent.output()) and log.exists() and pattern.search(log.read_text())):
        assert time.monotonic() < deadline, agent.output()
        time.sleep(0.2)
    # On the terminal at start, as `wandb launch-agent` prints it, and in the -l file in W&B's internal-log format.
    assert re.search(r"INFO +MainThread:\d+ \[agent.py:", log.read_text())
