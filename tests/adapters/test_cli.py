"""python -m adapters: push (directory or weights.zip), list, pull, verify, rm — local store and S3."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def cli(request, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIO_")}
    env["ADAPTER_CACHE_DIR"] = str(tmp_path / "cache")
    if request.param == "local":
        env["ADAPTER_STORE_DIR"] = str(tmp_path / "store")
    else:
        s3 = request.getfixturevalue("s3")
        env.update(s3.env(s3.new_bucket("cli")))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "adapters", "-q", *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    run.kind = request.param  # type: ignore[attr-defined]
    return run


def weights_zip(adapter: Path, path: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A zip like the ones teams export: the adapter in a sub-folder, with training leftovers beside it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in adapter.iterdir():
            zf.write(f, f"weights/{f.name}")
        zf.writestr("weights/training_args.bin", b"\x80\x04pickle")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def test_push_directory_list_pull_verify_rm(cli, good_adapter, tmp_path):
    """The whole CLI lifecycle, with a one-line summary per command."""
    out = cli("push", str(good_adapter), "team-bpmn").stdout
    assert out.startswith("published team-bpmn") and "rank 8" in out
    table = cli("list").stdout
    assert table.splitlines()[0].split() == ["NAME", "SIZE", "RANK", "TARGET", "MODULES", "BASE", "MODEL", "UPDATED"]
    assert "team-bpmn" in table and "k_proj,o_proj,q_proj,v_proj" in table
    listed = json.loads(cli("list", "--json").stdout)
    assert listed[0]["name"] == "team-bpmn" and len(listed[0]["digest"]) == 64
    dest = tmp_path / "pulled"
    assert "pulled team-bpmn" in cli("pull", "team-bpmn", str(dest)).stdout
    weights = "adapter_model.safetensors"
    assert (dest / weights).read_bytes() == (good_adapter / weights).read_bytes()
    assert cli("verify", "team-bpmn").stdout.startswith("ok: team-bpmn matches its manifest")
    assert "removed team-bpmn" in cli("rm", "team-bpmn").stdout
    assert "no adapters" in cli("list").stdout


def test_push_weights_zip_in_one_command(cli, good_adapter, tmp_path):
    """A weights.zip publishes in one command; pickle leftovers are skipped and said so."""
    archive = weights_zip(good_adapter, tmp_path / "weights.zip")
    out = cli("push", str(archive), "from-zip").stdout
    assert "published from-zip" in out and "skipped" in out and "training_args.bin" in out
    assert cli("verify", "from-zip").returncode == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"../evil.txt": b"x"}, "unsafe path"),
        ({"/abs/evil.txt": b"x"}, "unsafe path"),
        ({"weights/../../evil.txt": b"x"}, "unsafe path"),
        ({"bomb.bin": bytes(64 * 1024 * 1024)}, "zip bomb"),
    ],
)
def test_malicious_archives_are_refused(cli, good_adapter, tmp_path, extra, message):
    """Zip-slip members and zip bombs are refused before anything is written."""
    archive = weights_zip(good_adapter, tmp_path / "bad.zip", extra)
    result = cli("push", str(archive), "bad", check=False)
    assert result.returncode == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "one-line reason"
    assert not (tmp_path / "evil.txt").exists()
    assert "no adapters" in cli("list").stdout


def test_symlink_member_is_refused(cli, good_adapter, tmp_path):
    """A symbolic link inside the archive is refused."""
    archive = weights_zip(good_adapter, tmp_path / "link.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo("weights/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    result = cli("push", str(archive), "link", check=False)
    assert result.returncode == 1 and "symbolic link" in result.stderr


def test_failures_exit_non_zero_with_one_line(cli, good_adapter, tmp_path):
    """Invalid adapters, name collisions, bad names and missing adapters: exit 1 and one line on stderr."""
    (tmp_path / "empty").mkdir()
    cli("push", str(good_adapter), "taken")
    cases = [
        ("push", str(tmp_path / "empty"), "x"),
        ("push", str(tmp_path / "missing"), "x"),
        ("push", str(good_adapter), "taken"),
        ("push", str(good_adapter), "../bad"),
        ("verify", "absent"),
        ("pull", "absent", str(tmp_path / "d")),
        ("rm", "absent"),
    ]
    for args in cases:
        result = cli(*args, check=False)
        assert result.returncode == 1, args
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert cli("push", str(good_adapter), "taken", "--replace").returncode == 0


def test_every_command_has_help(cli):
    """--help works for the CLI and every command."""
    for args in ([], ["push"], ["list"], ["pull"], ["verify"], ["rm"]):
        result = cli(*args, "--help")
        assert "usage: python -m adapters" in result.stdout


def test_a_name_collision_says_which_flag_overwrites(cli, good_adapter):
    """The conflict error names the real flag, --replace."""
    cli("push", str(good_adapter), "taken")
    result = cli("push", str(good_adapter), "taken", check=False)
    assert result.returncode == 1 and "adapter_conflict" in result.stderr and "--replace" in result.stderr


def test_not_found_tells_the_operator_which_store(cli):
    """Clients are not told the server's layout, but the CLI's operator is: the error names the store."""
    result = cli("verify", "absent", check=False)
    assert result.returncode == 1 and "adapter_not_found" in result.stderr
    assert ("local directory" if cli.kind == "local" else "s3://") in result.stderr


def test_demo_flag_is_the_store_the_demo_worker_serves(demo, good_adapter, tmp_path):
    """`python -m adapters --demo` lists demo-a and demo-b, and what it pushes the running demo worker loads."""
    from inference_worker.config import Settings
    from inference_worker.embedded import EmbeddedWorker

    from ..helpers import Client

    demo_dir = tmp_path / "demo"
    shutil.copytree(demo.root, demo_dir)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "ADAPTER_STORE"))},
           "INFERENCE_DEMO_DIR": str(demo_dir), "PYTHONPATH": str(ROOT)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "adapters", "-q", "--demo", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result

    settings = Settings(demo=True, demo_dir=demo_dir, host="127.0.0.1", port=0, http_port=0, ws_ping_interval_s=None)
    with EmbeddedWorker(settings) as w, Client(w.url) as c:
        listed = [line.split()[0] for line in run("list").stdout.splitlines()[2:]]
        assert listed == ["demo-a", "demo-b"]
        assert "published team-x" in run("push", str(good_adapter), "team-x").stdout
        assert c.load("team-x")["type"] == "adapter_loaded"
        # The README's demo commands, as written: list, pull a demo adapter into a directory, push it as "mine".
        block = (ROOT / "README.md").read_text().split("the adapter CLI reaches it with `--demo`", 1)[1]
        block = block.split("```bash", 1)[1].split("```", 1)[0]
        commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
        assert [c.split()[:5] for c in commands] == [[".venv/bin/python", "-m", "adapters", "--demo", verb]
                                                      for verb in ("list", "pull", "push")], commands
        for command in commands:
            args = shlex.split(command)
            done = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, (command, done.stderr)
        assert c.load("mine")["type"] == "adapter_loaded"


def readme_cli_commands() -> list[str]:
    page = (ROOT / "docs" / "adapters.md").read_text()
    block = page.split("## Adapter store and CLI", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_cli_commands_run_as_written(good_adapter, tmp_path):
    """The README's adapter commands use the project's interpreter (.venv/bin/python, not a bare python) and each
    runs, in order, exactly as written."""
    commands = readme_cli_commands()
    assert len(commands) >= 6 and all(c.startswith(".venv/bin/python -m adapters ") for c in commands), commands
    weights_zip(good_adapter, tmp_path / "weights.zip")
    shutil.copytree(good_adapter, tmp_path / "my-lora")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MINIO_")},
           "ADAPTER_STORE_DIR": str(tmp_path / "store"), "PYTHONPATH": str(ROOT)}
    for command in commands:
        args = shlex.split(command)
        assert args[0] == ".venv/bin/python"
        result = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, (command, result.stderr)


def test_no_progress_bars_without_a_terminal_one_clean_line_per_result(good_adapter, tmp_path):
    """Without -q, and stderr a pipe (CI, a log): no bar frames (they cannot redraw there and ran into the result
    line), one clean line per result. On a terminal the bars are drawn."""
    import fcntl
    import pty
    import struct
    import termios

    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIO_")}
    env.update(ADAPTER_STORE_DIR=str(tmp_path / "store"), ADAPTER_CACHE_DIR=str(tmp_path / "cache"))

    def run(*args: str, stderr: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "adapters", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=stderr, text=True, timeout=120, check=True)

    push = run("push", str(good_adapter), "mine")
    verify = run("verify", "mine")
    for result in (push, verify):
        assert result.stderr == "", result.stderr
        assert len(result.stdout.strip().splitlines()) == 1 and "%|" not in result.stdout, result.stdout
    assert push.stdout.startswith("published mine") and verify.stdout.startswith("ok: mine")
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    try:
        run("push", str(good_adapter), "again", stderr=secondary)
        os.close(secondary)
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once everything written has been read
            while chunk := os.read(primary, 65536):
                drawn += chunk
    finally:
        os.close(primary)
    assert b"again uploading" in drawn, drawn[:500]
