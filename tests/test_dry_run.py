"""Dry runs render every script, submit nothing and never import torch."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from conftest import REPO, sweep_cli, write_spec
from sweepfiles import sweep_configs

from quantlib.jobdir import read_config

INQ_MRPC = REPO / "sweeps" / "inq_mrpc.yaml"


def test_inq_mrpc_lsf_dry_run(tmp_path):
    proc = sweep_cli("launch", str(INQ_MRPC), "--backend", "lsf", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    # the 24 jobs after their shared FP32 fine-tuning (tests/test_finetune_sharing.py)
    assert out[0] == "sweep inq_mrpc: 25 jobs (dry run, backend lsf; nothing submitted)"
    table = [line.split() for line in out[3:27]]
    assert out[1].split()[:6] == ["stage", "job", "id", "task", "method", "nbits"]
    assert out[2].split()[0] == "fp32-finetune"
    assert [(r[2], r[3], r[4]) for r in table] == [
        ("mrpc", m, str(b)) for m in ("lin", "p2", "mb") for b in range(1, 9)]
    assert table[0][6] == "runs/inq_mrpc/mrpc_linquant1bit"
    assert out[-1].strip().startswith("A2=$(bsub -J 'inq_mrpc.after[1-24]' -w \"done(${A1}[1])"
                                      "\" < ")
    scripts = sorted((tmp_path / "runs/inq_mrpc/scripts").iterdir())
    assert [s.name for s in scripts] == ["lsf_array_after_1.sh",
                                         "lsf_array_fp32-finetune_1.sh", "submit_lsf.sh"]
    text = scripts[0].read_text()
    logs = tmp_path / "runs/inq_mrpc/logs"
    for line in ('#BSUB -J "inq_mrpc.after[1-24]"', f"#BSUB -o {logs}/%J_%I.out",
                 f"#BSUB -e {logs}/%J_%I.err", "#BSUB -W 4:00", "#BSUB -n 1",
                 '#BSUB -R "rusage[mem=8164,ngpus_excl_p=1] span[hosts=1]"', "#BSUB -M 8164"):
        assert line in text.splitlines(), line
    assert "-gpu" not in text  # this site asks for GPUs through rusage
    # every array element maps to its own config, which the entry point reads
    cases = [line for line in text.splitlines() if "ENTRY=" in line and ")" in line]
    assert len(cases) == 24 and cases[0].strip() == f"1) JOB_ID={table[0][1]}; ENTRY=1 ;;"
    (configs,) = (tmp_path / "runs/inq_mrpc/configs").iterdir()  # one file: a line per job
    assert f"CONFIG={configs}  #" in text
    config = sweep_configs(tmp_path / "runs/inq_mrpc")[table[0][1]]
    assert (config["task"], config["method"], config["nbits"]) == ("mrpc", "lin", 1)
    assert config["batch_size"] == 8 and config["learning_rate"] == 2e-5
    assert config["finetune_epochs"] + 3 * config["epochs_per_stage"] == 9
    assert not (tmp_path / "runs/inq_mrpc/ledger.json").exists()  # nothing launched
    for script in scripts:  # the rendered scripts are valid bash
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_array_element_runs_its_own_job(tmp_path):
    sweep_cli("launch", str(INQ_MRPC), "--backend", "lsf", "--dry-run", cwd=tmp_path)
    script = tmp_path / "runs/inq_mrpc/scripts/lsf_array_after_1.sh"
    fake = tmp_path / "python"  # stands in for the interpreter: prints what it was given
    fake.write_text("#!/bin/sh\necho \"$QUANTSWEEP_JOB_ID $*\"\n")
    fake.chmod(0o755)
    text = script.read_text().replace(shlex.quote(sys.executable), str(fake))
    script.write_text(text)
    out = subprocess.run(["bash", str(script)], env={"LSB_JOBINDEX": "10", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    job_id, *cmd = out.stdout.split("\n")[-2].split()
    assert cmd[:2] == ["-m", "jobs.runtime"]
    config = read_config(cmd[2], int(cmd[3]))  # element 10: the 10th job's entry
    assert (config["method"], config["nbits"], config["job_id"]) == ("p2", 2, job_id)
    bad = subprocess.run(["bash", str(script)], env={"LSB_JOBINDEX": "25"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no job for LSB_JOBINDEX=25" in bad.stderr


def test_slurm_dry_run(tmp_path):
    spec = write_spec(tmp_path, """
name: sl
finetune_sharing: false
grid: {task: [rte], method: [lin, p2], nbits: [2, 4, 8]}
resources:
  gpus: 2
  cpus: 8
  mem: 32G
  time: 90
  queue: gpu
  project: "proj-a"
  array_parallelism: 4
  slurm: {constraint: a100, extra: ["--exclusive"]}
""")
    proc = sweep_cli("launch", str(spec), "--backend", "slurm", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].strip() == \
        "sbatch --parsable runs/sl/scripts/slurm_array_1.sh"  # exactly what launch runs
    lines = (tmp_path / "runs/sl/scripts/slurm_array_1.sh").read_text().splitlines()
    for want in ("#SBATCH --array=0-5%4", "#SBATCH --time=01:30:00", "#SBATCH --mem=32768M",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --gres=gpu:2", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj-a", "#SBATCH --constraint=a100",
                 "#SBATCH --exclusive", "#SBATCH --signal=B:USR2@90", "#SBATCH --requeue"):
        assert want in lines, want
    assert any(line.strip().startswith("0) JOB_ID=") for line in lines)


def test_lsf_gpu_syntax_queue_and_chunks(tmp_path):
    spec = write_spec(tmp_path, """
name: big
finetune_sharing: false
grid: {task: [rte], method: [lin], nbits: 1..8, seed: 1..130}
resources: {gpus: 1, queue: "gpu.4h", mem: 2000, cpus: 4, lsf: {mem_per: core}}
""")
    proc = sweep_cli("launch", str(spec), "--backend", "lsf", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    scripts = sorted((tmp_path / "runs/big/scripts").glob("lsf_array_*.sh"))
    assert len(scripts) == 2  # 1040 jobs, at most 1000 per array
    first, second = (s.read_text() for s in scripts)
    assert '#BSUB -J "big.1[1-1000]"' in first and '#BSUB -J "big.2[1-40]"' in second
    assert '#BSUB -gpu "num=1:mode=exclusive_process"' in first
    assert '#BSUB -R "rusage[mem=500] span[hosts=1]"' in first  # per core: 2000 MB / 4 cores
    assert "#BSUB -M 2000" in first  # the job's limit
    assert "LSF: dialect lsf10 (no answer from lsid" in proc.stdout  # said, not guessed quietly
    assert "#BSUB -q gpu.4h" in first


def test_quoting_of_spec_values(tmp_path):
    spec = write_spec(tmp_path, """
name: q
grid: {task: [rte], method: [fp32]}
base: {model_name_or_path: "x'; touch pwned; echo '"}
resources: {queue: "gpu.4h"}
""")
    proc = sweep_cli("launch", str(spec), "--backend", "lsf", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "runs/q/scripts/lsf_array_1.sh").read_text()
    assert "#BSUB -q gpu.4h" in text
    refused = write_spec(tmp_path, "name: q\ngrid: {task: [rte], method: [fp32]}\n"
                                   "resources: {queue: 'a b; touch pwned2'}\n", name="r.yaml")
    proc = sweep_cli("launch", str(refused), "--backend", "lsf", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "resources.queue: 'a b; touch pwned2' is not a scheduler " \
        "name" in proc.stderr
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    script = tmp_path / "runs/q/scripts/lsf_array_1.sh"
    script.write_text(text.replace(shlex.quote(sys.executable), str(fake)))
    subprocess.run(["bash", str(script)], env={"LSB_JOBINDEX": "1"}, cwd=tmp_path)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


@pytest.mark.parametrize("backend", ["local", "lsf", "slurm"])
def test_dry_run_never_imports_torch(tmp_path, backend):
    code = ("import sys; from jobs.cli import main; "
            f"rc = main(['launch', {str(INQ_MRPC)!r}, '--backend', {backend!r}, '--dry-run']); "
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'pandas') "
            "if m in sys.modules]; print('HEAVY', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


SEED_STUDIES = {"inq_mrpc": 25, "demo": 32, "q8bert_glue": 9, "distill_quant_glue": 8,
                "ptq_qat_glue": 100, "ptq_squad_modes": 7, "pruneofa_glue": 16,
                "distilbert_squad": 2, "sparse_glue": 28, "lowbit": 100,
                "sensitivity": 42}  # + their shared fine-tunings


@pytest.mark.parametrize("name", sorted(SEED_STUDIES))
@pytest.mark.parametrize("backend", ["lsf", "slurm", "local"])
def test_every_shipped_sweep_dry_runs(tmp_path, name, backend):
    spec = REPO / "sweeps" / f"{name}.yaml"
    proc = sweep_cli("launch", str(spec), "--backend", backend, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"sweep {name}: {SEED_STUDIES[name]} jobs (dry run")
    configs = list(sweep_configs(tmp_path / "runs" / name).values())
    assert len(configs) == SEED_STUDIES[name]
    # a handful of files: the configs in one, a script per array (staged: per later job)
    files = [p for p in (tmp_path / "runs" / name).rglob("*") if p.is_file()]
    assert len(list((tmp_path / "runs" / name / "configs").iterdir())) == 1
    assert len(files) <= 12 + (SEED_STUDIES[name] if backend != "local" else 0), files
    if name == "distill_quant_glue":  # teachers zipped with their tasks
        assert all(c["model_name_or_path"].endswith("-" + c["task"]) for c in configs)
    if name == "ptq_qat_glue":
        kinds = {(c["method"], c["calibrator"]) for c in configs if "calibrator" in c}
        assert ("qat-kd", "entropy") not in kinds and ("ptq", "entropy") in kinds


def test_every_shipped_sweep_is_listed():
    assert sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml")) == sorted(SEED_STUDIES)


@pytest.mark.parametrize("backend", ["slurm", "lsf"])
def test_dry_run_shows_stage_dependencies(tmp_path, backend):
    spec = REPO / "sweeps" / "ptq_squad_modes.yaml"
    proc = sweep_cli("launch", str(spec), "--backend", backend, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("\n\n")[0].splitlines()
    assert table[1].split()[:2] == ["stage", "job"] and "after" in table[1]
    rows = {r.split()[1]: r.split() for r in table[2:]}  # id -> (stage, id, ..., after, dir)
    stages = {jid: r[0] for jid, r in rows.items()}
    after = {jid: r[-2] for jid, r in rows.items()}
    assert sorted(stages.values()) == ["finetune"] + ["ptq"] * 2 + ["qat"] * 4
    for jid, parent in after.items():
        expected = {"finetune": "-", "ptq": "finetune", "qat": "ptq"}[stages[jid]]
        assert (parent if parent == "-" else stages[parent]) == expected
    configs = sweep_configs(tmp_path / "runs" / "ptq_squad_modes")
    driver = tmp_path / "runs" / "ptq_squad_modes" / "scripts" / f"submit_{backend}.sh"
    lines = [x for x in driver.read_text().splitlines() if x.startswith(("A1=", "J_"))]
    assert len(lines) == 7 and lines[0].startswith("A1=")
    by_job = {x.split("=", 1)[0][2:]: x for x in lines[1:]}
    for jid, line in by_job.items():
        parent = after[jid]
        ref = "${A1}" + ("[1]" if backend == "lsf" else "_0") if stages[parent] == "finetune" \
            else "${J_" + parent + "}"
        if backend == "slurm":
            assert f"--dependency=afterok:{ref} --kill-on-invalid-dep=yes" in line, line
        else:
            assert f'bsub -w "done({ref})" <' in line and line.endswith(f"after {parent}"), line
        assert line.split("# ")[-1].endswith(f"after {parent}")
        script = tmp_path / "runs" / "ptq_squad_modes" / "scripts" / f"{backend}_{jid}.sh"
        text = script.read_text()
        assert "--array" not in text and "#BSUB -J \"ptq_squad_modes." in text or \
            "#SBATCH --job-name=ptq_squad_modes." in text
        assert f"CONFIG={tmp_path}/runs/ptq_squad_modes/configs/" in text
        assert f"ENTRY={[j['job_id'] for j in configs.values()].index(jid)}\n" in text
    for line in proc.stdout.splitlines():  # the listing shows the same commands
        if line.strip().startswith("J_"):
            assert line.strip() in lines
    # each later-stage job starts from its parent's saved model; parents save theirs
    for jid, config in configs.items():
        if config["after"]:
            parent = configs[config["after"]]
            assert config["model_name_or_path"] == parent["output_dir"] + "/model"
        assert config["save_model"] == (stages[jid] != "qat")


def test_local_dry_run_lists_jobs_in_stage_order(tmp_path):
    spec = REPO / "sweeps" / "distilbert_squad.yaml"
    proc = sweep_cli("launch", str(spec), "--backend", "local", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = [x.strip() for x in proc.stdout.splitlines() if "bash " in x]
    assert runs == ["QUANTSWEEP_TASK=N bash runs/distilbert_squad/scripts/local_array_1.sh  # "
                    "N = 1..2: 2 jobs (a later-stage job once its parent completed)"]
    configs = list(sweep_configs(tmp_path / "runs" / "distilbert_squad").values())
    assert [c["stage"] for c in configs] == ["teacher", "distil"]  # the order they run in
    student = next(c for c in configs if c["method"] == "distil-squad")
    teacher = next(c for c in configs if c["method"] == "fp32")
    assert student["teacher_name_or_path"] == teacher["output_dir"] + "/model"
    assert student["model_name_or_path"] == "distilbert-base-uncased"


@pytest.mark.parametrize("backend", ["slurm", "lsf"])
def test_a_packed_element_runs_its_jobs_together(tmp_path, backend):
    """resources.pack: 4: each element of the array is an allocation of 4 jobs' resources and
    runs `python -m jobs.pack` on its jobs' entries (jobs.pack; tests/test_pack.py)."""
    spec = write_spec(tmp_path, """
name: pk
grid: {task: [rte], method: [lin, p2], nbits: [2, 4, 8]}
resources: {pack: 4, gpus: 1, cpus: 2, mem: 8G}
""")
    proc = sweep_cli("launch", str(spec), "--backend", backend, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resources.pack: 4: up to 4 jobs (waiting for the same job) share one allocation " \
           "of 4 GPUs, 8 cores and 32768 MB" in proc.stdout
    # the shared fine-tuning alone, then its 6 jobs in 2 elements (4 + 2) of one range
    assert "# 1 job, after" not in proc.stdout and "# 6 jobs in 2 packs, after" in proc.stdout
    scripts = tmp_path / "runs/pk/scripts"
    script = scripts / f"{backend}_array_after_1.sh"
    text = script.read_text()
    directives = {"slurm": ["#SBATCH --array=0-1", "#SBATCH --cpus-per-task=8",
                            "#SBATCH --mem=32768M", "#SBATCH --gres=gpu:4"],
                  "lsf": ['#BSUB -J "pk.after[1-2]"', "#BSUB -n 8",
                          '#BSUB -R "rusage[mem=32768] span[hosts=1]"', "#BSUB -M 32768",
                          '#BSUB -gpu "num=4:mode=exclusive_process"']}[backend]
    for line in directives:
        assert line in text.splitlines(), line
    for path in scripts.iterdir():
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    fake = tmp_path / "python"  # stands in for the interpreter: prints what it was given
    fake.write_text("#!/bin/sh\necho \"$QUANTSWEEP_JOB_ID|$*\"\n")
    fake.chmod(0o755)
    script.write_text(text.replace(shlex.quote(sys.executable), str(fake)))
    var = {"slurm": "SLURM_ARRAY_TASK_ID", "lsf": "LSB_JOBINDEX"}[backend]
    configs = sweep_configs(tmp_path / "runs/pk")
    children = [c for c in configs.values() if c["stage"] is None]
    seen = []
    for element in ({"slurm": ("0", "1"), "lsf": ("1", "2")}[backend]):
        out = subprocess.run(["bash", str(script)], env={var: element, "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        ids, argv = out.stdout.splitlines()[-1].split("|")
        words = argv.split()
        assert words[:6] == ["-m", "jobs.pack", "--gpus", "1", "--cpus", "2"]
        members = [read_config(words[i], int(words[i + 1])) for i in range(6, len(words), 2)]
        assert ids.split() == [m["job_id"] for m in members]
        seen += [m["job_id"] for m in members]
    assert [len(seen)] == [6] and sorted(seen) == sorted(c["job_id"] for c in children)
