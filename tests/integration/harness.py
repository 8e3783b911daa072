"""The integration harness for Python tests (the C one is itest.c): a private dbus-daemon, a
temporary model store holding the bundled model as sst2.gguf, and the real dsad on that bus.

    with Dsad(extra_args=["--idle-unload", "1"], env={...}) as d:
        d.address, d.store, d.pid, d.busctl(...), d.stop()

Everything is torn down on leaving the block, on an exception, at interpreter exit and on
SIGTERM (ctest's timeout); children get no chance to outlive the test. Leaving the block
normally checks that dsad exits 0 on SIGTERM (a sanitizer report makes it exit non-zero).
Paths come from ctest's environment: DSA_TEST_DSAD, DSA_TEST_DSACTL, DSA_SOURCE_DIR."""
import atexit, os, shutil, signal, subprocess, sys, tempfile, time

DSAD = os.environ.get("DSA_TEST_DSAD")
DSACTL = os.environ.get("DSA_TEST_DSACTL")
SRC = os.environ.get("DSA_SOURCE_DIR", ".")
MODEL = os.path.join(SRC, "models/sst2-bert-4l256.gguf")
NAME = "org.dsa.Daemon1"
PATH = "/org/dsa/Daemon1"

_live = []


def _kill_all(*_):
    for d in list(_live):
        d.cleanup(check=False)


atexit.register(_kill_all)


def _on_term(sig, frame):
    _kill_all()
    sys.exit(1)


signal.signal(signal.SIGTERM, _on_term)


def require_binaries():
    if not DSAD or not DSACTL:
        print("SKIP: DSA_TEST_DSAD / DSA_TEST_DSACTL not set (run through ctest)")
        sys.exit(77)
    for tool in ("dbus-daemon", "busctl"):
        if not shutil.which(tool):
            print(f"SKIP: {tool} not installed")
            sys.exit(77)


class Dsad:
    def __init__(self, extra_args=(), env=None, models=None):
        """models: {name: path} placed in the store besides sst2 (symlinks)."""
        self.dir = tempfile.mkdtemp(prefix="dsa-itest-")
        self.store = os.path.join(self.dir, "store")
        os.mkdir(self.store)
        os.symlink(MODEL, os.path.join(self.store, "sst2.gguf"))
        for n, p in (models or {}).items():
            os.symlink(p, os.path.join(self.store, n + ".gguf"))
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.bus = None
        self.proc = None
        self.log = os.path.join(self.dir, "dsad.log")
        _live.append(self)
        self._start_bus()

    def _start_bus(self):
        r, w = os.pipe()
        self.bus = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address=unix:dir={self.dir}",
             f"--print-address={w}"],
            pass_fds=(w,), stdin=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "bus.log"), "w"))
        os.close(w)
        buf = b""
        deadline = time.monotonic() + 10
        while b"\n" not in buf and time.monotonic() < deadline:
            chunk = os.read(r, 512)
            if not chunk:
                break
            buf += chunk
        os.close(r)
        if b"\n" not in buf:
            raise RuntimeError("dbus-daemon printed no address")
        self.address = buf.split(b"\n")[0].decode()

    def start(self):
        env = dict(os.environ, **self.env)
        env["DSA_BUS_ADDRESS"] = self.address
        self.proc = subprocess.Popen(
            [DSAD, "--bus", self.address, "--store", self.store, "--foreground", "--config", "/dev/null",
             *self.extra_args],
            stdin=subprocess.DEVNULL, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dsad exited with {self.proc.returncode} before owning its name:\n"
                                   + self.log_tail())
            rc, out, _ = self.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                     "org.freedesktop.DBus", "NameHasOwner", "s", NAME, check=False)
            if rc == 0 and out.strip() == "b true":
                return self
            time.sleep(0.02)
        raise RuntimeError("dsad did not own its name within 15 s:\n" + self.log_tail())

    @property
    def pid(self):
        return self.proc.pid

    def log_tail(self, n=40):
        try:
            return "".join(open(self.log).readlines()[-n:])
        except OSError:
            return ""

    def busctl(self, *args, check=True, json=False, timeout=60):
        cmd = ["busctl", f"--address={self.address}"] + (["--json=short"] if json else []) + list(args)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:8])}... failed ({p.returncode}): {p.stderr.strip()}")
        return p.returncode, p.stdout, p.stderr

    def call(self, method, sig="", *args, **kw):
        """busctl call on org.dsa.Daemon1 with --json=short: returns the parsed 'data' list."""
        import json as j
        _, out, _ = self.busctl("call", NAME, PATH, NAME, method, *([sig] if sig else []), *map(str, args),
                                json=True, **kw)
        return j.loads(out)["data"]

    def dsactl(self, *args, stdin=None, bus_env=True):
        env = dict(os.environ)
        if bus_env:
            env["DSA_BUS_ADDRESS"] = self.address
        else:
            env.pop("DSA_BUS_ADDRESS", None)
        p = subprocess.run([DSACTL, *args], capture_output=True, text=True, input=stdin, env=env, timeout=120)
        return p.returncode, p.stdout, p.stderr

    def stop(self, timeout=20):
        """SIGTERM; returns dsad's exit code (None when it had to be killed)."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def cleanup(self, check=True):
        rc = 0
        if self.proc and self.proc.poll() is None:
            rc = self.stop() if check else (self.proc.kill(), self.proc.wait())[1]
        if self.bus and self.bus.poll() is None:
            self.bus.terminate()
            try:
                self.bus.wait(5)
            except subprocess.TimeoutExpired:
                self.bus.kill()
                self.bus.wait()
        if self in _live:
            _live.remove(self)
        log = self.log_tail()
        if os.environ.get("DSA_ITEST_KEEP"):
            print(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if check and rc != 0:
            raise RuntimeError(f"dsad did not exit 0 on SIGTERM (exit {rc}):\n{log}")

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            sys.stderr.write("---- dsad's log\n" + self.log_tail() + "----\n")
        self.cleanup(check=exc_type is None)
        return False
