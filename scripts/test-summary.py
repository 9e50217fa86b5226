#!/usr/bin/python3
"""Counts test results from meson's testlog.json files and prints the closing line
`tests: N passed, N failed`. A TAP test counts each of its `ok` / `not ok` lines; any
other test counts once by its result. A test that crashed or timed out after some TAP
lines counts one more failure, so a partial run can never look green."""
import json
import re
import sys

passed = failed = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            t = json.loads(line)
            ok_lines = re.findall(r"^(not )?ok \d+", t.get("stdout", ""), re.M)
            result = t["result"]
            if t.get("protocol") == "tap" or ok_lines:
                p = sum(1 for m in ok_lines if not m)
                passed += p
                failed += len(ok_lines) - p
                if result not in ("OK", "FAIL") or (result == "FAIL" and p == len(ok_lines)):
                    failed += 1   # crashed, timed out, or failed outside its TAP lines
            elif result in ("OK", "EXPECTEDFAIL"):
                passed += 1
            elif result != "SKIP":
                failed += 1
print(f"tests: {passed} passed, {failed} failed")
sys.exit(1 if failed or not passed else 0)
