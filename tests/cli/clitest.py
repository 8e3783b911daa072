"""What the dsactl CLI tests share: their arguments, the skip when ../shared is missing, running
dsactl and counting failed checks.

    import clitest
    dsactl, src, shared = clitest.args("dsactl train", "fixtures/hf/bert-tiny", ...)
    rc, out, err = clitest.run("train", ...)
    clitest.check(rc == 0, "train exits 0")
    clitest.done()
"""
import os
import subprocess
import sys

dsactl = None
failures = 0


def args(what, *needed):
    """DSACTL SOURCE_DIR SHARED from argv; exits 77 (ctest's skip) with a message when any of the
    needed paths, relative to SHARED, is missing."""
    global dsactl
    dsactl, src, shared = sys.argv[1:4]
    if not all(os.path.exists(os.path.join(shared, p)) for p in needed):
        print(f"SKIP: {what}: {shared} not found (set DSA_SHARED)")
        sys.exit(77)
    return dsactl, src, shared


def run(*argv, stdin=None, timeout=600):
    p = subprocess.run([dsactl, *argv], input=stdin, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1


def done():
    print(f"{failures} failure(s)")
    sys.exit(1 if failures else 0)
