"""claude-supervisor (roles/claude_code/files): the process handling of one Claude Code run on the agent host.

The script runs as the agent host runs it: a subprocess of the host's python, paths relative to $HOME (a tmp dir
here). A small Python script written into that home stands in for the CLI, only to exercise the supervisor's
process handling (the real CLI is covered by the integration tests). Every process a test starts has a path
under its home on its command line: the fixture finds any of them still alive at the end, kills it and fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "claude_code" / "files" / "claude-supervisor"
DEADLINE = 15.0  # generous: every wait below polls for a state, this only bounds a hang
RUN_FILES = ("prompt", "stream.jsonl", "stream.times", "stderr", "exit.json", "pid")

# The stand-in CLI's common part. argv[1] is its tag: it leaves marks/<tag>.<what> files for the test to wait on.
CLI_HEADER = '''
import json, os, signal, subprocess, sys, time
from pathlib import Path

TAG = sys.argv[1]
MARKS = Path.home() / "marks"


def mark(what, text=""):
    MARKS.mkdir(exist_ok=True)
    tmp = MARKS / f".{TAG}.{what}"
    tmp.write_text(text)
    tmp.rename(MARKS / f"{TAG}.{what}")


def emit(obj):
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def sleeper(**popen):
    """A process that sleeps, with this script's path (under $HOME) on its command line."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", __file__], **popen)


mark("started", str(os.getpid()))
'''

SLEEPING_CLI = """
emit({"type": "system", "subtype": "init"})
time.sleep(120)
"""

RESULT_CLI = """
sys.stdin.buffer.read()
emit({"type": "system", "subtype": "init"})
emit({"duration_ms": 1, "type": "result", "subtype": "success", "is_error": False, "result": "ok"})
"""

# Quotes, command substitution, backticks, Jinja, tabs, CRLF, emoji, bidi and BOM, every control character but NUL.
HOSTILE_PROMPT = (
    "Fix 'main.py' and \"utils.py\": $(id) `uname -a` ${HOME} %s {{ 7*7 }} {% raw %}{{ lookup('pipe', 'id') }}\n"
    "\tindented\ttabs\r\n; rm -rf ~ # \U0001f680 \u00fcn\u00efc\u00f8d\u00e9 \u202eevil\u202c \ufeff \\n\\x00 "
    + "".join(chr(c) for c in range(1, 32))
    + "\x7f\u0080\u00ff\u07ff\uffff\U0010fffd\n\n"
).encode()


def alive(pid: int) -> bool:
    """Whether pid is a process that still runs (a zombie has ended: only its exit status is left)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state not in ("Z", "X")


def wait_for(what: str, check: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.02)


class AgentHost:
    """$HOME of the agent user: the supervisor, stand-in CLIs under bin/, the working directory work/."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "HOME": str(home)}
        self.procs: list[subprocess.Popen[bytes]] = []
        (home / "work").mkdir()
        (home / "bin").mkdir()
        (home / "stdin").mkdir()

    def cli(self, name: str, body: str = SLEEPING_CLI, *, executable: bool = True) -> Path:
        path = self.home / "bin" / name
        path.write_text(f"#!{sys.executable}\n{CLI_HEADER}\n{textwrap.dedent(body)}")
        path.chmod(0o755 if executable else 0o644)
        return path

    def run_argv(
        self,
        run_dir: str,
        cli: Path | str,
        tag: str,
        *,
        timeout: float = 60,
        grace: float = 1,
        workdir: str = "work",
        options: Sequence[str] = (),
        cli_args: Sequence[str] = (),
    ) -> list[str]:
        return [
            *self.argv("run", "--run-dir", run_dir, "--workdir", workdir),
            *("--timeout", f"{timeout:g}", "--grace", f"{grace:g}", *options, "--", str(cli), tag, *cli_args),
        ]

    @staticmethod
    def argv(*args: str) -> list[str]:
        return [sys.executable, str(SCRIPT), *args]

    def run(
        self, run_dir: str, cli: Path | str, tag: str = "cli", prompt: bytes = b"hello", **kw: Any
    ) -> dict[str, Any]:
        """One run to its end: its summary (checked to be the same as exit.json when the run dir exists)."""
        return self.finish(self.start(run_dir, cli, tag, prompt, **kw))

    def start(
        self, run_dir: str, cli: Path | str, tag: str = "cli", prompt: bytes = b"hello", **kw: Any
    ) -> subprocess.Popen[bytes]:
        stdin = self.home / "stdin" / f"{len(self.procs)}"
        stdin.write_bytes(prompt)
        with stdin.open("rb") as source:
            proc = subprocess.Popen(
                self.run_argv(run_dir, cli, tag, **kw),
                stdin=source,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
            )
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err.decode(errors="replace")
        assert err == b""
        summary: dict[str, Any] = json.loads(out)
        assert isinstance(proc.args, list)
        run_dir = self.home / proc.args[proc.args.index("--run-dir") + 1]
        if run_dir.is_dir():
            assert json.loads((run_dir / "exit.json").read_text()) == summary
        return summary

    def command(self, *args: str) -> dict[str, Any]:
        """stop / stop-all: what it prints."""
        done = subprocess.run(
            self.argv(*args),
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self.env,
            timeout=2 * DEADLINE,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        printed: dict[str, Any] = json.loads(done.stdout)
        return printed

    def mark(self, tag: str, what: str) -> Path:
        return self.home / "marks" / f"{tag}.{what}"

    def wait_mark(self, tag: str, what: str, proc: subprocess.Popen[bytes] | None = None) -> str:
        path = self.mark(tag, what)

        def there() -> bool:
            if proc is not None and proc.poll() is not None and not path.exists():
                pytest.fail(f"the run ended before {path.name}: {proc.communicate()}")
            return path.exists()

        wait_for(path.name, there)
        return path.read_text()

    def leftovers(self) -> list[int]:
        """Live processes with a path under this home on their command line (supervisors, CLIs, their children)."""
        needle = f"{self.home}/".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline and alive(int(entry)):
                found.append(int(entry))
        return found

    def cleanup(self) -> list[int]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        left = self.leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


@pytest.fixture
def host(tmp_path: Path) -> Iterator[AgentHost]:
    agent_host = AgentHost(tmp_path)
    try:
        yield agent_host
    finally:
        left = agent_host.cleanup()
    assert not left, f"processes left behind (now killed): {left}"


def stream_lines(run_dir: Path) -> list[str]:
    try:
        return (run_dir / "stream.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []


# --- a run to its end ----------------------------------------------------------------------------------------------


def test_run_records_the_stream_result_and_prompt(host: AgentHost) -> None:
    cli = host.cli(
        "claude",
        """
        import hashlib
        data = sys.stdin.buffer.read()
        sys.stderr.write("warming up\\n")
        emit({"type": "system", "subtype": "init", "stdin_bytes": len(data),
              "stdin_sha256": hashlib.sha256(data).hexdigest(), "argv": sys.argv[2:], "cwd": os.getcwd()})
        emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "done"}]}})
        emit({"duration_ms": 1, "type": "result", "subtype": "success", "is_error": False, "result": "all done"})
        """,
    )
    summary = host.run("runs/g/r1", cli, prompt=HOSTILE_PROMPT, cli_args=("-p", "--output-format", "stream-json"))
    run_dir = host.home / "runs" / "g" / "r1"

    assert (summary["rc"], summary["signal"], summary["reason"]) == (0, None, None), summary["stderr"]
    assert summary["result"] == {
        "duration_ms": 1,
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "all done",
    }
    assert summary["lines"] == 3
    assert summary["stderr"] == "warming up\n"

    lines = stream_lines(run_dir)
    assert len(lines) == 3
    init = json.loads(lines[0])
    assert init["stdin_bytes"] == len(HOSTILE_PROMPT)
    assert init["stdin_sha256"] == hashlib.sha256(HOSTILE_PROMPT).hexdigest()
    assert init["argv"] == ["-p", "--output-format", "stream-json"]
    assert init["cwd"] == str(host.home / "work")
    assert json.loads(lines[2]) == summary["result"]
    times = (run_dir / "stream.times").read_text().splitlines()
    assert len(times) == 3
    stamps = [float(stamp) for stamp in times]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.time()) < 3600  # wall-clock seconds, not a monotonic clock

    assert (run_dir / "prompt").read_bytes() == HOSTILE_PROMPT
    assert run_dir.stat().st_mode & 0o777 == 0o700
    for name in RUN_FILES:
        assert (run_dir / name).stat().st_mode & 0o777 == 0o600, name


def test_lines_reach_the_stream_file_while_the_cli_runs(host: AgentHost) -> None:
    """The CLI writes one line, then blocks until the test has seen that line in stream.jsonl."""
    cli = host.cli(
        "claude",
        """
        emit({"type": "system", "subtype": "init"})
        go = MARKS / f"{TAG}.go"
        end = time.monotonic() + 60
        while not go.exists() and time.monotonic() < end:
            time.sleep(0.02)
        emit({"duration_ms": 1, "type": "result", "is_error": False, "result": "second"})
        """,
    )
    run_dir = host.home / "runs" / "live"
    proc = host.start("runs/live", cli)
    wait_for("the first line", lambda: len(stream_lines(run_dir)) == 1)
    seen_at = time.time()
    assert proc.poll() is None
    assert host.mark("cli", "started").exists() and not host.mark("cli", "go").exists()
    assert json.loads(stream_lines(run_dir)[0]) == {"type": "system", "subtype": "init"}
    wait_for("the first arrival time", lambda: len((run_dir / "stream.times").read_text().splitlines()) == 1)

    host.mark("cli", "go").touch()
    summary = host.finish(proc)
    assert summary["rc"] == 0 and summary["lines"] == 2 and summary["result"]["result"] == "second"
    first, second = (float(stamp) for stamp in (run_dir / "stream.times").read_text().splitlines())
    assert first <= seen_at <= second


def test_a_cli_without_a_result_line(host: AgentHost) -> None:
    cli = host.cli(
        "claude",
        """
        sys.stdout.write('{"type":"user","result":"a tool result, not the run result"}\\n')
        sys.stdout.write("\\n   \\n")
        sys.stdout.write("not json at all\\n")
        sys.stdout.write('{"type":"result","is_error":false')  # cut short, no newline at the end
        """,
    )
    # A CLI path under ~ is expanded against $HOME.
    summary = host.run("runs/n", f"~/bin/{cli.name}")
    assert summary["rc"] == 0 and summary["signal"] is None and summary["reason"] is None
    assert summary["result"] is None
    assert summary["lines"] == 3
    assert len(stream_lines(host.home / "runs" / "n")) == 3


def test_exit_code_and_stderr_tail(host: AgentHost) -> None:
    cli = host.cli(
        "claude",
        """
        sys.stderr.write("x" * 10000 + "\\nError: invalid API key \\u2014 run /login\\n")
        sys.exit(3)
        """,
    )
    summary = host.run("runs/e", cli)
    assert summary["rc"] == 3 and summary["signal"] is None and summary["result"] is None and summary["lines"] == 0
    assert len(summary["stderr"].encode()) == 4000  # the last 4000 bytes
    assert summary["stderr"].endswith("\nError: invalid API key \u2014 run /login\n")


# --- stopping a run ------------------------------------------------------------------------------------------------

TREE_CLI = """
detached = sleeper(start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
child = sleeper()  # keeps the CLI's stdout open after the CLI is gone
mark("pids", f"{os.getpid()} {child.pid} {detached.pid}")
emit({"type": "system", "subtype": "init"})
time.sleep(120)
"""


def test_stop_ends_the_cli_and_every_process_it_started(host: AgentHost) -> None:
    proc = host.start("runs/g/s1", host.cli("claude", TREE_CLI))
    pids = [int(pid) for pid in host.wait_mark("cli", "pids", proc).split()]
    assert len(pids) == 3 and all(alive(pid) for pid in pids)
    detached = pids[2]
    assert os.getsid(detached) == detached != os.getsid(pids[0])  # really detached: a session of its own

    assert host.command("stop", "--run-dir", "runs/g/s1", "--reason", "test stop") == {"stopped": 1}
    summary = host.finish(proc)
    assert summary["reason"] == "test stop"
    assert summary["lines"] == 1
    wait_for("every process of the run to end", lambda: not any(alive(pid) for pid in pids))
    assert (host.home / "runs" / "g" / "s1" / "stop_reason").read_text() == "test stop"


IGNORES_TERM_CLI = """
signal.signal(signal.SIGTERM, lambda *_: mark("term"))
mark("ready")
while True:
    time.sleep(1)
"""


def stop_a_cli_that_ignores_term(host: AgentHost) -> tuple[dict[str, Any], int, float]:
    proc = host.start("runs/k", host.cli("claude", IGNORES_TERM_CLI), grace=1)
    host.wait_mark("cli", "ready", proc)
    cli_pid = int(host.mark("cli", "started").read_text())
    began = time.monotonic()
    assert host.command("stop", "--run-dir", "runs/k", "--reason", "stubborn") == {"stopped": 1}
    took = time.monotonic() - began
    return host.finish(proc), cli_pid, took


def test_a_cli_that_ignores_term_is_killed_after_the_grace(host: AgentHost) -> None:
    summary, cli_pid, took = stop_a_cli_that_ignores_term(host)
    assert host.mark("cli", "term").exists()  # TERM first
    assert took >= 1  # then the grace
    assert summary["reason"] == "stubborn"
    assert not alive(cli_pid)


def test_a_killed_cli_is_reported_as_killed(host: AgentHost) -> None:
    summary, _, _ = stop_a_cli_that_ignores_term(host)
    assert (summary["rc"], summary["signal"]) == (-9, "SIGKILL")


def test_timeout(host: AgentHost) -> None:
    summary = host.run("runs/t", host.cli("claude"), timeout=1)
    assert summary["reason"] == "timed out after 1s"
    assert (summary["rc"], summary["signal"]) == (-signal.SIGTERM, "SIGTERM")
    assert summary["result"] is None


def test_a_stop_before_the_run_starts_applies_when_it_does(host: AgentHost) -> None:
    assert host.command("stop", "--run-dir", "runs/early", "--reason", "cancelled before start") == {"stopped": 0}
    summary = host.run("runs/early", host.cli("claude", RESULT_CLI))
    assert summary == {
        "rc": None,
        "signal": None,
        "reason": "cancelled before start",
        "result": None,
        "lines": 0,
        "stderr": "",
    }
    assert not host.mark("cli", "started").exists()
    assert not (host.home / "runs" / "early" / "stream.jsonl").exists()


def test_supersedes_stops_the_earlier_attempts_first(host: AgentHost) -> None:
    sleeping = host.cli("sleeping")
    earlier = host.start("runs/g/x-1", sleeping, "a")
    other = host.start("runs/g/y-1", sleeping, "other")
    host.wait_mark("a", "started", earlier)
    host.wait_mark("other", "started", other)

    later = host.run("runs/g/x-2", host.cli("claude", RESULT_CLI), "b", options=("--supersedes", "x-*"))
    assert later["rc"] == 0 and later["reason"] is None and later["result"]["result"] == "ok"
    assert earlier.poll() is not None  # stopped before the later attempt started
    assert host.finish(earlier)["reason"] == "superseded by x-2"
    assert json.loads((host.home / "runs" / "g" / "x-1" / "exit.json").read_text())["reason"] == "superseded by x-2"

    assert other.poll() is None  # not matched by the glob
    assert host.command("stop", "--run-dir", "runs/g/y-1", "--reason", "done") == {"stopped": 1}
    assert host.finish(other)["reason"] == "done"


def test_stop_all_stops_every_live_run_under_the_root(host: AgentHost) -> None:
    host.run("runs/c/finished", host.cli("quick", RESULT_CLI), "quick")  # its pid file names a process gone
    sleeping = host.cli("sleeping")
    first = host.start("runs/a/1", sleeping, "a")
    second = host.start("runs/b/deeper/1", sleeping, "b")
    outside = host.start("elsewhere/1", sleeping, "outside")
    for tag, proc in (("a", first), ("b", second), ("outside", outside)):
        host.wait_mark(tag, "started", proc)

    assert host.command("stop-all", "--root", "runs", "--reason", "host maintenance") == {"stopped": 2}
    assert host.finish(first)["reason"] == "host maintenance"
    assert host.finish(second)["reason"] == "host maintenance"
    assert outside.poll() is None
    assert host.command("stop-all", "--root", "elsewhere") == {"stopped": 1}
    assert host.finish(outside)["reason"] == "stopped"
    assert host.command("stop-all", "--root", "nowhere") == {"stopped": 0}


# --- startup problems ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["cli missing", "cli not executable", "workdir missing", "empty prompt"])
def test_startup_problems_are_a_summary(host: AgentHost, problem: str) -> None:
    cli = host.cli("claude", RESULT_CLI, executable=problem != "cli not executable")
    kw: dict[str, Any] = {}
    expected = {
        "cli missing": f"the Claude Code CLI was not found (or is not executable) at {host.home}/bin/absent",
        "cli not executable": f"the Claude Code CLI was not found (or is not executable) at {cli}",
        "workdir missing": f"the working directory {host.home}/nowhere does not exist on the agent host",
        "empty prompt": "the prompt is empty",
    }[problem]
    if problem == "cli missing":
        cli = host.home / "bin" / "absent"
    elif problem == "workdir missing":
        kw["workdir"] = "nowhere"
    elif problem == "empty prompt":
        kw["prompt"] = b""
    summary = host.run("runs/p", cli, **kw)  # exit code 0 checked there
    assert summary == {"rc": None, "signal": None, "reason": expected, "result": None, "lines": 0, "stderr": ""}
    assert not host.mark("cli", "started").exists()


# --- pruning -------------------------------------------------------------------------------------------------------


def test_prune_removes_old_finished_sibling_runs(host: AgentHost) -> None:
    quick = host.cli("quick", RESULT_CLI)
    for name in ("old", "recent"):
        host.run(f"runs/g/{name}", quick, name)
    host.run("runs/h/old-elsewhere", quick, "elsewhere")
    live = host.start("runs/g/old-live", host.cli("sleeping"), "live")
    host.wait_mark("live", "started", live)
    day = 86400
    now = time.time()
    for path, age in (("g/old", 10), ("g/recent", 1), ("g/old-live", 10), ("h/old-elsewhere", 10)):
        os.utime(host.home / "runs" / path, (now - age * day, now - age * day))

    assert host.run("runs/g/new", quick, "new", options=("--keep-days", "7"))["rc"] == 0
    runs = host.home / "runs"
    assert sorted(path.name for path in (runs / "g").iterdir()) == ["new", "old-live", "recent"]
    assert (runs / "h" / "old-elsewhere").is_dir()

    assert host.command("stop", "--run-dir", "runs/g/old-live") == {"stopped": 1}
    host.finish(live)


def test_reset_stops_a_run_still_going_and_removes_its_folder(host: AgentHost) -> None:
    """A run under an id used before starts afresh: the old run is stopped (its pid file would go with the folder,
    and with it the only way to stop it) and nothing of its stream is left for a follower of the new one."""
    proc = host.start("runs/r", host.cli("claude"), "old")
    host.wait_mark("old", "started", proc)
    assert host.command("reset", "--run-dir", "runs/r") == {"removed": True}
    out, _ = proc.communicate(timeout=DEADLINE)
    assert json.loads(out)["reason"] == "superseded by a new run with the same id"
    assert not (host.home / "runs" / "r").exists()
    assert host.command("reset", "--run-dir", "runs/r") == {"removed": False}
