#!/usr/bin/env python3
"""The adaptive policy end to end: the real dsad on a private bus with a two-rung ladder (the
bundled teacher as sst2.gguf, the bundled distilled int8 student as sst2@distilled.gguf, both
with their recorded SST-2 accuracy), power-stub standing in for UPower, power-profiles-daemon
and polkit on the same bus, and a fake powercap tree. Scenarios: idle, a burst of load, a
power budget lowered at run time, a switch to battery, the power-saver profile, per-request
choices and hints; each asserts the chosen variant, the properties and the VariantChanged
signals (captured with dbus-monitor)."""
import json, os, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dsad, SRC, require_binaries  # noqa: E402

STUB = os.environ.get("DSA_TEST_POWER_STUB")
BENCH = os.environ.get("DSA_TEST_BENCH_POLICY")
DISTILLED = os.path.join(SRC, "models/sst2-distilled-int8.gguf")
SENTENCES = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés.",
             "it's a charming and often affecting journey.", "unflinchingly bleak and desperate",
             "allows us to hope that nolan is poised to embark a major career as a commercial yet inventive filmmaker."]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


class Monitor:
    """dbus-monitor on VariantChanged, parsed into (model, variant, reason)."""

    def __init__(self, address):
        self.p = subprocess.Popen(["dbus-monitor", "--address", address,
                                   "type='signal',interface='org.dsa.Daemon1',member='VariantChanged'"],
                                  stdout=subprocess.PIPE, text=True)
        self.events, self.lock = [], threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        cur = None
        for line in self.p.stdout:
            line = line.strip()
            if line.startswith("signal"):
                cur = []
            elif cur is not None and line.startswith("string "):
                cur.append(json.loads(line[len("string "):]))
                if len(cur) == 3:
                    with self.lock:
                        self.events.append(tuple(cur))
                    cur = None

    def wait(self, pred, what, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for e in self.events:
                    if pred(e):
                        return e
            time.sleep(0.05)
        raise AssertionError(f"no VariantChanged {what} within {timeout}s; saw {self.events}")

    def close(self):
        self.p.terminate()
        self.p.wait()


def stub_call(d, method, sig, *args):
    d.busctl("call", "org.dsa.Test.PowerStub", "/org/dsa/Test/PowerStub", "org.dsa.Test.PowerStub", method, sig,
             *map(str, args))


def prop(d, name, path="/org/dsa/Daemon1", iface="org.dsa.Daemon1"):
    _, out, _ = d.busctl("get-property", "org.dsa.Daemon1", path, iface, name, json=True)
    return json.loads(out)["data"]


def set_prop(d, name, sig, value, check_rc=True):
    return d.busctl("--", "set-property", "org.dsa.Daemon1", "/org/dsa/Daemon1", "org.dsa.Daemon1", name, sig,
                    str(value), check=check_rc)


def classify(d, text="a gorgeous movie"):
    return d.call("Classify", "sas", "sst2", 1, text)[0][0][2]


def current(d):
    return prop(d, "CurrentVariant", "/org/dsa/Daemon1/models/sst2", "org.dsa.Model1")


def wait_current(d, want, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        classify(d)
        if current(d) == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"CurrentVariant is {current(d)}, expected {want}")


def burst(d, tsv, trace, budget=0, target=20):
    env = dict(os.environ, DSA_BUS_ADDRESS=d.address)
    return subprocess.Popen([BENCH, "--data", tsv, "--trace", trace, "--target", str(target), "--budget",
                             str(budget), "--pause", "0"], stdout=subprocess.PIPE, text=True, env=env)


def main():
    require_binaries()
    for tool, what in ((STUB, "DSA_TEST_POWER_STUB"), (BENCH, "DSA_TEST_BENCH_POLICY")):
        if not tool or not os.access(tool, os.X_OK):
            print(f"SKIP: {what} not set (run through ctest)")
            return 77
    tmp = tempfile.mkdtemp(prefix="dsa-policy-")
    tsv = os.path.join(tmp, "texts.tsv")
    with open(tsv, "w") as f:
        f.write("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(SENTENCES * 40)))
    # A fake powercap tree whose counter the test advances: 20 W.
    zone = os.path.join(tmp, "root/sys/class/powercap/intel-rapl:0")
    os.makedirs(zone)
    os.makedirs(os.path.join(tmp, "root/proc"))
    open(os.path.join(zone, "name"), "w").write("package-0\n")
    open(os.path.join(zone, "max_energy_range_uj"), "w").write("262143328850\n")
    energy = [0]
    stop = threading.Event()

    def tick_energy():
        while not stop.is_set():
            energy[0] += 2_000_000  # 2 J per 0.1 s
            open(os.path.join(zone, "energy_uj.tmp"), "w").write(f"{energy[0]}\n")
            os.rename(os.path.join(zone, "energy_uj.tmp"), os.path.join(zone, "energy_uj"))
            time.sleep(0.1)
    tick_energy_thread = threading.Thread(target=tick_energy, daemon=True)
    open(os.path.join(zone, "energy_uj"), "w").write("0\n")
    tick_energy_thread.start()
    # /proc/stat and pressure from the real system.
    for f in ("stat",):
        os.symlink(f"/proc/{f}", os.path.join(tmp, "root/proc", f))

    d = Dsad(models={"sst2@distilled": DISTILLED})
    conf = os.path.join(tmp, "dsad.conf")
    with open(conf, "w") as f:
        f.write(f"[policy]\nlatency_target_ms = 50\nmin_accuracy = 0.95\nhysteresis_seconds = 0.5\n"
                f"tick_seconds = 0.05\n[battery]\nlow_percent = 20\n[power]\nbus = {d.address}\n"
                f"root = {tmp}/root\n")
    d.extra_args += ["--config", conf]
    stub = subprocess.Popen([STUB, "--address", d.address], stdout=subprocess.PIPE, text=True)
    check(stub.stdout.readline().strip() == "ready", "power-stub did not start")
    mon = None
    try:
        with d:
            mon = Monitor(d.address)
            # Idle: the most accurate rung runs, and the reply says so.
            r = classify(d)
            check(r == "base", f"idle Classify ran {r}")
            check(prop(d, "Variants", "/org/dsa/Daemon1/models/sst2", "org.dsa.Model1") == ["base", "distilled"],
                  "Variants")
            check(current(d) == "base", "CurrentVariant at idle")
            check(prop(d, "OnBattery") is False and prop(d, "PowerProfile") == "balanced",
                  "power signals from the stub")
            v = d.call("GetVariants", "s", "sst2")[0]
            check([x[0] for x in v] == ["base", "distilled"] and abs(v[1][2] - 0.97) < 0.01,
                  f"GetVariants: {v}")
            # The fake counter's 2 J steps land in 50-ms ticks unevenly: average two seconds of
            # them, against the power the counter really advanced at meanwhile (20 W when its
            # thread keeps time; less when a loaded machine stretches its 0.1-s sleeps).
            watts, e0, t0 = [], energy[0], time.monotonic()
            for _ in range(40):
                time.sleep(0.05)
                watts.append(d.call("GetPolicy")[0]["PackagePower"]["data"])
            want = (energy[0] - e0) / 1e6 / (time.monotonic() - t0)
            check(want > 0 and 0.6 * want < sum(watts) / len(watts) < 1.4 * want,
                  f"RAPL package power from the fake tree ({want:.1f} W): {watts}")

            # A burst: 2 s at 1500 requests/s through the ring; the level drops for latency, every
            # request completes, and the variant comes back to each request.
            b = burst(d, tsv, "2:1500")
            out, _ = b.communicate(timeout=60)
            check(b.returncode == 0, f"bench-policy failed ({b.returncode}): {out[-500:]}")
            summary = json.loads(out.strip().splitlines()[-1])["summary"]
            check(summary["failed"] == 0 and summary["completed"] == summary["requests"], f"burst: {summary}")
            used = {}
            for line in out.strip().splitlines()[:-1]:
                for k, n in json.loads(line)["variants"].items():
                    used[k] = used.get(k, 0) + n
            check(used.get("distilled", 0) > 0, f"the burst never ran the cheaper rung: {used}")
            mon.wait(lambda e: e[1] == "distilled" and e[2].startswith(("latency", "load", "late")),
                     "to distilled for latency or load")
            # Quiet again: back to base after the hysteresis (bench-policy set dsad's target to its
            # 20 ms, which base on a slow (ASan) build sharing the machine may not meet even
            # alone: back to the configured 50).
            set_prop(d, "LatencyTarget", "d", 50)
            wait_current(d, "base")
            mon.wait(lambda e: e[1] == "base" and e[2].startswith("recovered"), "back to base")

            # A power budget lowered at run time, under a light steady load (10/s of a few ms:
            # about 0.2 W in the CPU-time model, distilled about 0.02 W). The budget is far below
            # both: the fake RAPL counter reports 20 W whatever runs, so with other tests loading
            # the machine dsad's measured share, and the scale it puts on the model, can be a
            # quarter, and a budget of 0.05 W once let base fit. The latency target is
            # relaxed meanwhile, so that on a slow (ASan) build sharing the machine with other
            # tests, lateness does not move the variant before the budget does.
            set_prop(d, "LatencyTarget", "d", 1000)
            b = burst(d, tsv, "20:10", target=1000)
            # The burst's arrival rate decays first (2-s smoothing).
            deadline = time.monotonic() + 30
            while (current(d) != "base" or d.call("GetPolicy")[0]["ArrivalRate"]["data"] > 20) and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            check(current(d) == "base", f"base under light load: {current(d)}")
            set_prop(d, "PowerBudget", "d", 0.001)
            check(abs(prop(d, "PowerBudget") - 0.001) < 1e-12, "PowerBudget reads back")
            try:
                mon.wait(lambda e: e[1] == "distilled" and e[2].startswith("power"), "to distilled for power")
            except AssertionError as e:
                # What the daemon prices a request at, for the failure's record.
                pol = {k: v["data"] for k, v in d.call("GetPolicy")[0].items()
                       if k in ("PowerBudget", "PowerSource", "CoreWatts", "Power", "ArrivalRate")}
                raise AssertionError(f"{e}; GetPolicy: {pol}") from None
            out, _ = b.communicate(timeout=60)
            check(b.returncode == 0, "requests failed around the budget switch")
            rc, _, err = set_prop(d, "PowerBudget", "d", -1, check_rc=False)
            check(rc != 0 and "PowerBudget must be in" in err, f"bad budget: {err}")
            set_prop(d, "PowerBudget", "d", 0)
            set_prop(d, "LatencyTarget", "d", 50)
            wait_current(d, "base")

            # On battery at 10%: the cheapest rung; back on AC: base again.
            stub_call(d, "SetPercentage", "d", 10)
            stub_call(d, "SetOnBattery", "b", "true")
            mon.wait(lambda e: e[1] == "distilled" and e[2].startswith("battery 10%"), "for low battery")
            check(prop(d, "OnBattery") is True and abs(prop(d, "BatteryPercentage") - 10) < 1e-9, "battery props")
            check(classify(d) == "distilled", "requests run distilled on low battery")
            stub_call(d, "SetOnBattery", "b", "false")
            wait_current(d, "base")

            # The power-saver profile.
            stub_call(d, "SetProfile", "s", "power-saver")
            mon.wait(lambda e: e[1] == "distilled" and e[2] == "profile power-saver: the cheapest variant kept >= 0.95",
                     "for power-saver")
            check(prop(d, "PowerProfile") == "power-saver", "PowerProfile")
            # A hint that asks for the base's accuracy wins for its own request (dsactl sets it).
            rc, out, err = d.dsactl("classify", "--json", "--min-accuracy", "0.99", "-m", "sst2", "a gorgeous movie")
            check(rc == 0 and json.loads(out)["variant"] == "base", f"min-accuracy hint: {rc} {out} {err}")
            rc, out, err = d.dsactl("classify", "--json", "-m", "sst2", "a gorgeous movie")
            check(rc == 0 and json.loads(out)["variant"] == "distilled", f"no hint under power-saver: {out} {err}")
            stub_call(d, "SetProfile", "s", "balanced")
            wait_current(d, "base")

            # Fixed, through dsactl policy set; status shows it.
            rc, out, err = d.dsactl("policy", "set", "--mode", "fixed:distilled")
            check(rc == 0, f"policy set: {err}")
            check(classify(d) == "distilled", "fixed:distilled")
            rc, out, err = d.dsactl("status")
            check(rc == 0 and "fixed:distilled" in out and "distilled" in out, f"status: {out} {err}")
            rc, out, err = d.dsactl("policy", "show")
            check(rc == 0 and "distilled" in out, f"policy show: {out} {err}")
            d.dsactl("policy", "set", "--mode", "adaptive")
    finally:
        stop.set()
        if mon:
            mon.close()
        stub.terminate()
        stub.wait()
    print("int-policy: all scenarios passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
