"""Run several benchmark scripts in one interpreter, as `python <script> <args>` would, one after another.

The smoke runs of `test_benchmarks.py` go through this driver so that torch, Pyro and scikit-learn
are imported once rather than once per script (about 4 s of CPU each on the project's machines).
Each script still runs as `__main__` with its own `sys.argv`, so its command-line parsing, seeding
and output are exercised as a user's call would exercise them.

Usage: python _smoke_driver.py plan.json report.json, where plan.json maps a script's path to its
argument list; report.json maps the same paths to {"returncode", "error", "seconds"}.
"""

from __future__ import annotations

import json
import runpy
import sys
import time
import traceback


def run_script(path: str, args: list[str]) -> dict:
    saved_argv = sys.argv
    sys.argv = [path, *args]
    start = time.perf_counter()
    returncode, error = 0, ""
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exit_:  # argparse errors and explicit sys.exit(code)
        code = exit_.code
        returncode = code if isinstance(code, int) else (0 if code is None else 1)
        error = "" if returncode == 0 else f"SystemExit({code!r})"
    except BaseException:  # noqa: BLE001 - the report carries the traceback to the test
        returncode, error = 1, traceback.format_exc()
    finally:
        sys.argv = saved_argv
    return {"returncode": returncode, "error": error[-4000:], "seconds": time.perf_counter() - start}


def main() -> None:
    plan_path, report_path = sys.argv[1:3]
    with open(plan_path) as f:
        plan = json.load(f)
    report = {path: run_script(path, args) for path, args in plan.items()}
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
