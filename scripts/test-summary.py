#!/usr/bin/python3
"""Counts test results from meson's testlog.json files and prints the closing line
`tests: N passed, N failed`. A TAP test counts each of its `ok` / `not ok` lines; any
other test counts once by its result. A test that crashed or timed out after some TAP
lines counts one more failure (unless a `not ok` line already fails it), so a partial run
can never look green. The failures are
listed (build, test, the failing TAP line) just above the closing line, where a CI log's
tail still shows them."""
import json
import re
import sys

passed = failed = 0
failures = []
for path in sys.argv[1:]:
    build = path.split('/meson-logs')[0].rsplit('/', 1)[-1]
    with open(path) as f:
        for line in f:
            t = json.loads(line)
            ok_lines = re.findall(r"^(not )?ok \d+", t.get("stdout", ""), re.M)
            result = t["result"]
            if t.get("protocol") == "tap" or ok_lines:
                p = sum(1 for m in ok_lines if not m)
                passed += p
                failed += len(ok_lines) - p
                for line in re.findall(r"^not ok \d+.*$", t.get("stdout", ""), re.M):
                    failures.append(f"{build} {t['name']}: {line[:160]}")
                # meson calls a TAP test with `not ok` lines ERROR when it exits non-zero:
                # those lines are its failures; one more only when none of them says why
                if result != "OK" and p == len(ok_lines):
                    failed += 1   # crashed, timed out, or failed outside its TAP lines
                    failures.append(f"{build} {t['name']}: {result} after {len(ok_lines)} TAP lines")
            elif result in ("OK", "EXPECTEDFAIL"):
                passed += 1
            elif result != "SKIP":
                failed += 1
                failures.append(f"{build} {t['name']}: {result}")
for f in failures[:12]:
    print("failed:", f)
if len(failures) > 12:
    print(f"failed: ... and {len(failures) - 12} more")
print(f"tests: {passed} passed, {failed} failed")
sys.exit(1 if failed or not passed else 0)
