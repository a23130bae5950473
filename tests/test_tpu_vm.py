"""launch/tpu_vm.py and selfimprove/launch_tpu.py: the rendered gcloud commands.

The end-to-end tests paste the rendered lines into bash with a stand-in `gcloud` on PATH that
runs `ssh --command` in a shell (the way each TPU host would) and `scp` as a copy into $HOME,
so quoting is checked through both shells, not by reading the text.
"""

import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from selfimprove.launch_tpu import (LaunchError, TpuVm, distributed_train_command, render,
                                    run_command, setup_commands)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "tpu_vm.py")
VM = TpuVm("my-v4-32", "us-central2-b", "my-project")
TRAIN = ["python3", "launch/train.py", "--config=configs/sft_arithmetic.py:tiny",
         "--workdir=/mnt/shared/sft"]
# Arguments a shell would split, expand or run if quoted wrongly.
AWKWARD = ["--workdir=/mnt/shared/run one", "--config.tokenizer.system_prompt=It's \"fine\"; $HOME `id`",
           "--config.task.eval_path=a\\b*.jsonl", "--config.x=", "--config.name=ünï"]


def fake_gcloud(tmp_path) -> dict:
  """An environment whose `gcloud` logs its arguments, runs `ssh --command` in bash with
  HOME=tmp_path/home (one host), and copies `scp SRC NAME:DEST` to that HOME."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  bin_dir.mkdir()
  home.mkdir()
  (home / "selfimprove").mkdir()
  script = bin_dir / "gcloud"
  script.write_text(textwrap.dedent(f"""\
      #!{sys.executable}
      import json, shutil, subprocess, sys
      args = sys.argv[1:]
      with open({str(tmp_path / "gcloud.log")!r}, "a") as log:
        log.write(json.dumps(args) + "\\n")
      if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
        sys.exit(subprocess.run(["bash", "-c", args[args.index("--command") + 1]]).returncode)
      if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
        shutil.copy(args[4], {str(home)!r} + "/" + args[5].split(":", 1)[1])
      """))
  script.chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", HOME=str(home))
  return env


def argv_printer(tmp_path) -> list[str]:
  """A stand-in training command that writes the arguments it received to tmp_path/argv.json."""
  script = tmp_path / "print_argv.py"
  script.write_text("import json, sys\n"
                    f"json.dump(sys.argv[1:], open({str(tmp_path / 'argv.json')!r}, 'w'))\n")
  return [sys.executable, str(script)]


def gcloud_calls(tmp_path) -> list[list[str]]:
  with open(tmp_path / "gcloud.log") as f:
    return [json.loads(line) for line in f]


def test_run_command_reaches_every_worker_with_distributed_appended():
  command = run_command(VM, TRAIN)
  assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32"]
  assert {"--zone=us-central2-b", "--project=my-project", "--worker=all"} <= set(command)
  remote = shlex.split(command[command.index("--command") + 1])
  assert remote == ["cd", "~/selfimprove", "&&", *TRAIN, "--distributed"]
  assert "--project" not in render([run_command(TpuVm("v5e", "europe-west4-a"), TRAIN)])


@pytest.mark.parametrize("given", [[], ["--distributed"], ["--distributed=true"]])
def test_distributed_is_appended_once(given):
  command = distributed_train_command(TRAIN + given)
  assert sum(arg.startswith("--distributed") for arg in command) == 1
  assert command[:len(TRAIN)] == TRAIN


@pytest.mark.parametrize("vm_args, command, message", [
    (("", "us-central2-b"), TRAIN, "--tpu is required"),
    (("my-v4-32", ""), TRAIN, "--zone is required"),
    (("my v4", "us-central2-b"), TRAIN, "--tpu='my v4' contains whitespace"),
    (("my-v4-32", "us-central2-b"), [], "No training command: put it after `--`"),
    (("my-v4-32", "us-central2-b"), ["", " "], "No training command"),
    (("my-v4-32", "us-central2-b"), TRAIN + ["--process_id=0"], "sets --process_id=0"),
    (("my-v4-32", "us-central2-b"), TRAIN + ["--nodistributed"], "says --nodistributed"),
])
def test_unusable_requests_are_named(vm_args, command, message):
  with pytest.raises(LaunchError, match=message.replace("(", r"\(").replace("$", r"\$")):
    run_command(TpuVm(*vm_args), command)


def test_awkward_arguments_survive_the_pasted_line_and_the_remote_shell(tmp_path):
  env = fake_gcloud(tmp_path)
  line = render([run_command(VM, argv_printer(tmp_path) + AWKWARD)])
  result = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  with open(tmp_path / "argv.json") as f:
    assert json.load(f) == AWKWARD + ["--distributed"]


def test_setup_installs_the_checkout_on_every_host(tmp_path):
  """git archive of HEAD -> scp -> unpack and pip install '.[tpu]' (pip stood in by a logger)."""
  env = fake_gcloud(tmp_path)
  pip_log = tmp_path / "pip.json"
  python = tmp_path / "python with space"
  python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump([os.getcwd()] + sys.argv[1:], open({str(pip_log)!r}, 'w'))\n")
  python.chmod(0o755)
  commands = setup_commands(VM, ROOT, "HEAD", str(tmp_path / "out.tar.gz"), python=str(python))
  assert commands[0][:3] == ["git", "-C", ROOT]
  assert all("--worker=all" in c and "--zone=us-central2-b" in c for c in commands[1:])
  result = subprocess.run(["bash", "-c", render(commands).replace("\n", " && ")], env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  installed = tmp_path / "home" / "selfimprove"
  assert (installed / "launch" / "train.py").exists() and (installed / "setup.py").exists()
  with open(pip_log) as f:
    assert json.load(f) == [str(installed), "-m", "pip", "install", "-q", ".[tpu]"]
  assert [c[3] for c in gcloud_calls(tmp_path)] == ["scp", "ssh"]


def launcher(*args, env=None):
  return subprocess.run([sys.executable, LAUNCHER, *args], env=env, capture_output=True,
                        text=True, timeout=120)


def test_launcher_dry_run_prints_and_a_real_run_calls_gcloud(tmp_path):
  dry = launcher("--tpu=my-v4-32", "--zone=us-central2-b", "--skip_setup", "--dry_run", "--",
                 *TRAIN, AWKWARD[0])
  assert dry.returncode == 0, dry.stderr
  assert dry.stdout.strip() == render([run_command(TpuVm("my-v4-32", "us-central2-b"),
                                                   TRAIN + [AWKWARD[0]])])

  env = fake_gcloud(tmp_path)
  ran = launcher("--tpu=my-v4-32", "--zone=us-central2-b", "--skip_setup", "--",
                 *argv_printer(tmp_path), *AWKWARD, env=env)
  assert ran.returncode == 0, ran.stderr
  with open(tmp_path / "argv.json") as f:
    assert json.load(f) == AWKWARD + ["--distributed"]


@pytest.mark.parametrize("args, message", [
    (["--zone=us-central2-b", "--", *TRAIN], "Error: --tpu is required"),
    (["--tpu=my-v4-32", "--", *TRAIN], "Error: --zone is required"),
    (["--tpu=my-v4-32", "--zone=us-central2-b", "--skip_setup"], "Error: No training command"),
    (["--tpu=my-v4-32", "--zone=us-central2-b", "--setup_only", "--", *TRAIN],
     "Error: --setup_only starts no run"),
])
def test_launcher_errors_exit_2_with_one_line(args, message):
  result = launcher(*args, "--dry_run")
  assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
  assert "Traceback" not in result.stderr
