"""Shared result recording for the deploy checks (scripts/deploy_checks.py, scripts/cfn_moto_check.py).

Each check prints one line (`ok   - name` or `FAIL - name: detail`) and, when the environment variable
DEPLOY_CHECK_RESULTS names a file, appends `PASS<TAB>name` or `FAIL<TAB>name<TAB>detail` to it, so that
scripts/check-deploy.sh can total every step (bash or python) into one summary line.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable


class Results:
    """Collects check outcomes; `failed` decides the process exit code."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self._sink = os.environ.get("DEPLOY_CHECK_RESULTS") or None

    def _record(self, ok: bool, name: str, detail: str = "") -> None:
        detail = " ".join(detail.split())  # one line
        if ok:
            self.passed += 1
            print(f"ok   - {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL - {name}: {detail}", flush=True)
        if self._sink:
            with open(self._sink, "a", encoding="utf-8") as f:
                f.write(("PASS" if ok else "FAIL") + "\t" + name + ("\t" + detail if not ok else "") + "\n")

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Records `ok` under `name`; `detail` explains a failure."""
        self._record(bool(ok), name, detail if not ok else "")
        return bool(ok)

    def run(self, name: str, fn: Callable[[], None]) -> None:
        """Runs `fn`; an AssertionError or any exception is a failure of `name`."""
        try:
            fn()
        except AssertionError as e:
            self._record(False, name, str(e) or "assertion failed")
            return
        except Exception as e:  # a crash in a check is a failed check, never a silent pass
            self._record(False, name, f"{type(e).__name__}: {e} | {traceback.format_exc(limit=3)}")
            return
        self._record(True, name)

    def note(self, msg: str) -> None:
        """An informative line that is neither a pass nor a failure (e.g. a skipped optional part)."""
        print(f"note - {msg}", flush=True)

    def exit(self) -> None:
        """Exits 1 when any check failed (the totals are printed by check-deploy.sh)."""
        sys.exit(1 if self.failed else 0)
