"""Run a command (the test suite) N times, with CPU-heavy processes beside it, and report each time.

    python tests/under_load.py --times 3 --burners 1 -- .venv/bin/python -m pytest -q
    python tests/under_load.py --times 3 --burners 0 -- .venv/bin/python -m pytest -q   # idle

The suite must be green whatever the machine's speed or load (no test depends on timing); this is
how that is checked on a 2-core machine: one busy loop per burner, at normal priority, for the
whole run. The burners are this script's children, stopped by PID at the end. Exit status: that of
the first failing repetition, else 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

BURN = "while True:\n    pass\n"


def start_burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.DEVNULL, start_new_session=True)
            for _ in range(n)]


def stop_burners(burners: list[subprocess.Popen]) -> None:
    for p in burners:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=1, help="repetitions (default 1)")
    parser.add_argument("--burners", type=int, default=1, help="busy-loop processes beside it (0: none)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    results = []
    burners = start_burners(args.burners)
    try:
        for i in range(1, args.times + 1):
            t0 = time.monotonic()
            rc = subprocess.run(command).returncode
            results.append((rc, time.monotonic() - t0))
            print(f"[under_load] run {i}/{args.times} with {args.burners} burner(s): exit {rc} "
                  f"in {results[-1][1]:.0f} s", flush=True)
    finally:
        stop_burners(burners)
    print("[under_load] " + ", ".join(f"{'ok' if rc == 0 else f'FAILED({rc})'} {s:.0f} s" for rc, s in results))
    return next((rc for rc, _ in results if rc != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
