"""No test depends on the date (issue 22): the tests whose outcome involves dates — server and
signing certificates (expired, expiring, days remaining), keystores, OAuth tokens and their expiry,
the probe schedule, conditions' times, Exchange Online's Basic-AUTH deadline — run again in a
child pytest with the clock moved 400 days ahead by libfaketime, and must pass there too.

Each of those tests injects one clock everywhere (the wall clock read once, as OpenSSL reads it,
or a fixed date for pure code) or none; a test that mixed a fixed date with the wall clock (as
test_certificate_expiring_soon_is_a_warning did until 2026-12) fails here before the calendar
reaches it. Tests of the controller against tests/kubeapi are not rerun: libfaketime also shifts
the socket timeouts urllib3 computes for watches, which has nothing to do with our dates.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.system import require_executable

ROOT = Path(__file__).resolve().parent.parent
AHEAD = "+400d"
DATED = (
    "tests/test_smtp.py", "tests/test_graph.py", "tests/test_oauth.py", "tests/test_signing.py",
    "tests/test_keystore.py", "tests/test_schedule.py", "tests/test_conditions.py",
    "tests/test_basic_auth.py", "tests/test_credentials.py", "tests/test_render_formats.py",
    "tests/test_endpoints.py", "tests/test_relay.py", "tests/test_relay_publish.py",
)


def test_dated_tests_pass_a_year_from_now(tmp_path: Path) -> None:
    faketime = require_executable("faketime", "apt-get install faketime "
                                  "(tests/system/packages-clock.txt)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKETIME")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # The child's own date, read through libfaketime, proves the clock really moved.
    probe = subprocess.run([faketime, "-f", AHEAD, sys.executable, "-c",
                            "import datetime; print(datetime.date.today().isoformat())"],
                           capture_output=True, text=True, timeout=60, env=env, check=True)
    import datetime

    assert probe.stdout.strip() >= (datetime.date.today() + datetime.timedelta(days=399)
                                    ).isoformat(), probe.stdout
    run = subprocess.run([faketime, "-f", AHEAD, sys.executable, "-m", "pytest", "-q", "-x",
                          "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "basetemp"),
                          *DATED], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "[100%]" in run.stdout  # every test ran (none was deselected by the clock)
