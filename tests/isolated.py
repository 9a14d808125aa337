"""Run test code in a child process, so a crash (SIGSEGV, SIGFPE, abort) fails the test with its
signal instead of killing the whole pytest run."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_isolated(code: str, *args: str, timeout: float = 300) -> str:
    """Runs `code` (or, with args, the script path `code`) in a fresh Python; returns its stdout.
    Fails the calling test on a non-zero exit, naming the signal when the child was killed."""
    cmd = [sys.executable, code, *args] if args else [sys.executable, "-c", textwrap.dedent(code)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
        raise AssertionError(f"child process {how}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")
    return done.stdout
