#!/usr/bin/env python3
"""dsad driven by clients no one here wrote (busctl, gdbus) and by dsactl, on a private bus.

- Introspection (busctl and gdbus XML) parses and matches docs/dbus-api.md's method table
  (every documented method with its in and out signatures, properties, signals), and the
  per-model object has the documented properties.
- busctl and gdbus Classify / Embed (each pool) / Tokenize equal dsactl's in-process results
  (dsactl -m FILE --json prints 7 significant digits: tolerance 1e-6 relative + 1e-7); busctl
  and gdbus agree with each other exactly; ListModels and GetStatus have the documented shape.
- dsactl online (-m NAME through dsad, via DSA_BUS_ADDRESS and via --bus) prints the same JSON
  lines as dsactl in-process (-m FILE), but for the variant classify adds; list / ps / status / load / unload work and fail as
  documented (exit 1, one line on stderr).
- LoadModel / UnloadModel through busctl, with their documented errors.
- --idle-unload 1: a used model is unloaded by itself within 5 s, and comes back on demand.
- With ../shared: the BERT fixtures converted by dsactl import into the store answer through
  dsad exactly as dsactl in-process answers on the same files.
dsad must exit 0 on SIGTERM after each part."""
import ast, json, os, re, subprocess, sys, time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness
from harness import Dsad, NAME, PATH

harness.require_binaries()
failures = 0
TEXTS = ["a gripping, beautifully acted film", "the worst movie I have seen this year",
         "Café déjà vu: naïve über-coöperation 日本語 😀", "it's not bad , not bad at all !", "x"]


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1
    return cond


def close(a, b, rtol=1e-6, atol=1e-7):
    """Worst excess over the tolerance between two flat lists (<= 0: pass) and the max diff."""
    if len(a) != len(b):
        return float("inf"), float("inf")
    worst, md = -1.0, 0.0
    for x, y in zip(a, b):
        d = abs(x - y)
        md = max(md, d)
        worst = max(worst, d - (atol + rtol * abs(y)))
    return worst, md


def jsonl(out):
    return [json.loads(l) for l in out.splitlines() if l.strip()]


def without_variant(out):
    """dsactl classify --json through dsad ends each line with the variant dsad ran it on
    ("variant":"base"); the rest is byte for byte the in-process line."""
    return re.sub(r',"variant":"[^"]*"\}$', "}", out, flags=re.M)


def offline(d, verb, *args):
    rc, out, err = d.dsactl(verb, "-m", harness.MODEL, "--json", *args, *TEXTS, bus_env=False)
    assert rc == 0, f"dsactl {verb} in-process failed: {err}"
    return out


def gdbus(d, *args):
    p = subprocess.run(["gdbus", *args[:1], "--address", d.address, *args[1:]], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout, p.stderr


def gvariant(text):
    """gdbus call's GVariant text -> Python (type annotations dropped)."""
    text = re.sub(r"\b(?:uint32|int32|uint64|int64|byte|int16|uint16|double|objectpath|signature|handle) ", "", text)
    text = re.sub(r"@\w+ ", "", text)
    text = text.replace("true", "True").replace("false", "False")
    return ast.literal_eval(text)


def doc_methods():
    """{method: (in_sig, out_sig)} from docs/dbus-api.md's org.dsa.Daemon1 table."""
    doc = open(os.path.join(harness.SRC, "docs/dbus-api.md")).read()
    sect = doc.split("## org.dsa.Daemon1", 1)[1].split("### Properties", 1)[0]
    methods = {}
    for m in re.finditer(r"^\| `(\w+)` \|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|", sect, re.M):
        ins = "".join(a.strip().split(" ")[0] for a in m.group(2).replace("`", "").split(",") if a.strip())
        out = m.group(3).replace("`", "").strip()
        if "," in out:
            out = "".join(a.strip().split(" ")[0] for a in out.split(","))
        methods[m.group(1)] = (ins, out.replace(" ", ""))
    return methods


def introspection(xml_text):
    root = ET.fromstring(xml_text)
    ifaces = {}
    for it in root.iter("interface"):
        ms = {}
        for m in it.findall("method"):
            ins = "".join(a.get("type") for a in m.findall("arg") if a.get("direction", "in") == "in")
            outs = "".join(a.get("type") for a in m.findall("arg") if a.get("direction") == "out")
            ms[m.get("name")] = (ins, outs)
        props = {p.get("name"): p.get("type") for p in it.findall("property")}
        sigs = {s.get("name") for s in it.findall("signal")}
        ifaces[it.get("name")] = (ms, props, sigs)
    return ifaces


def test_introspection(d):
    want = doc_methods()
    check(len(want) >= 10, f"docs/dbus-api.md lists {len(want)} methods")
    _, xml_b, _ = d.busctl("introspect", "--xml-interface", NAME, PATH)
    rc, xml_g, err = gdbus(d, "introspect", "--dest", NAME, "--object-path", PATH, "--xml")
    check(rc == 0, f"gdbus introspect: {err.strip()}")
    for tool, xml_text in (("busctl", xml_b), ("gdbus", xml_g)):
        try:
            ifaces = introspection(xml_text)
        except ET.ParseError as e:
            check(False, f"{tool} introspection XML parses: {e}")
            continue
        check(NAME in ifaces and "org.freedesktop.DBus.Properties" in ifaces, f"{tool}: interfaces present")
        ms, props, sigs = ifaces.get(NAME, ({}, {}, set()))
        for m, sig in want.items():
            check(ms.get(m) == sig, f"{tool}: {m} has signature {ms.get(m)}, docs say {sig}")
        for p, t in (("Version", "s"), ("Sessions", "u"), ("LoadedModels", "as"), ("QueueDepth", "u"),
                     ("Workers", "u")):
            check(props.get(p) == t, f"{tool}: property {p} is {props.get(p)} (want {t})")
        check({"ModelLoaded", "ModelUnloaded"} <= sigs, f"{tool}: signals {sorted(sigs)}")
    _, xml_m, _ = d.busctl("introspect", "--xml-interface", NAME, PATH + "/models/sst2")
    ms, props, _ = introspection(xml_m).get("org.dsa.Model1", ({}, {}, set()))
    want_props = {"Name": "s", "Path": "s", "Loaded": "b", "Architecture": "s", "HiddenSize": "u", "Layers": "u",
                  "Labels": "as", "FileSize": "t"}
    check(all(props.get(k) == v for k, v in want_props.items()), f"org.dsa.Model1 properties {props}")
    _, out, _ = d.busctl("get-property", NAME, PATH + "/models/sst2", "org.dsa.Model1", "Labels", json=True)
    check(json.loads(out)["data"] == ["negative", "positive"], f"Labels {out.strip()}")
    _, out, _ = d.busctl("get-property", NAME, PATH + "/models/sst2", "org.dsa.Model1", "Layers", json=True)
    check(json.loads(out)["data"] == 4, f"Layers {out.strip()}")


def test_calls(d):
    n = str(len(TEXTS))
    # Classify: busctl vs dsactl in-process, busctl vs gdbus.
    want = jsonl(offline(d, "classify"))
    got = d.call("Classify", "sas", "sst2", n, *TEXTS)[0]
    check(len(got) == len(TEXTS), f"busctl Classify: {len(got)} results")
    flat_g = [v for r in got for v in r[3]]
    flat_w = [v for r in want for v in r["logits"]]
    worst, md = close(flat_g, flat_w)
    check(worst <= 0, f"busctl Classify logits vs dsactl in-process: max |diff| {md:.3g}")
    check([r[0] for r in got] == [w["label"] for w in want] and [r[1] for r in got] == [w["label_id"] for w in want],
          "busctl Classify labels and ids vs dsactl in-process")
    rc, out, err = gdbus(d, "call", "--dest", NAME, "--object-path", PATH, "--method", NAME + ".Classify", "sst2",
                         repr(TEXTS))
    check(rc == 0, f"gdbus Classify: {err.strip()}")
    if rc == 0:
        g = gvariant(out)[0]
        check([list(x[3]) for x in g] == [r[3] for r in got] and [x[0] for x in g] == [r[0] for r in got],
              "gdbus Classify equals busctl Classify exactly")

    # Embed, each pool.
    for pool in ("cls", "mean", "pooler"):
        want = jsonl(offline(d, "embed", "--pool", pool))
        got = d.call("Embed", "sass", "sst2", n, *TEXTS, pool)[0]
        worst, md = close([v for r in got for v in r], [v for w in want for v in w["embedding"]])
        check(worst <= 0, f"busctl Embed pool {pool} vs dsactl in-process: max |diff| {md:.3g}")
    got = d.call("Embed", "sass", "sst2", n, *TEXTS, "mean")[0]
    rc, out, err = gdbus(d, "call", "--dest", NAME, "--object-path", PATH, "--method", NAME + ".Embed", "sst2",
                         repr(TEXTS), "mean")
    check(rc == 0 and [list(x) for x in gvariant(out)[0]] == got, f"gdbus Embed equals busctl Embed {err.strip()}")
    default = d.call("Embed", "sass", "sst2", n, *TEXTS, "")[0]
    pooler = d.call("Embed", "sass", "sst2", n, *TEXTS, "pooler")[0]
    check(default == pooler, "Embed pool '' is the model's default (pooler for a classifier with a pooler)")

    # Tokenize, with and without specials.
    for special, flag in (("true", []), ("false", ["--no-special"])):
        want = jsonl(offline(d, "tokenize", *flag))
        got = d.call("Tokenize", "sasb", "sst2", n, *TEXTS, special)[0]
        ids = [r[0] if isinstance(r[0], list) else r for r in got]
        check(ids == [w["ids"] for w in want], f"busctl Tokenize special={special} ids vs dsactl in-process")
        if got and isinstance(got[0][0], list):
            check([r[1] for r in got] == [w["tokens"] for w in want], f"busctl Tokenize special={special} tokens")
    rc, out, err = gdbus(d, "call", "--dest", NAME, "--object-path", PATH, "--method", NAME + ".Tokenize", "sst2",
                         repr(TEXTS), "true")
    check(rc == 0, f"gdbus Tokenize: {err.strip()}")

    # ListModels, GetStatus.
    models = d.call("ListModels")[0]
    check(["sst2", True, "bert", 256, 2] in models, f"ListModels {models}")
    st = d.call("GetStatus")[0]
    types = {k: v["type"] for k, v in st.items()}
    want_types = {"Version": "s", "Models": "u", "LoadedModels": "u", "Sessions": "u", "QueueDepth": "u",
                  "Workers": "u", "RequestsCompleted": "t", "RequestsFailed": "t", "UptimeSeconds": "t"}
    check(all(types.get(k) == v for k, v in want_types.items()), f"GetStatus types {types}")
    check(st["RequestsCompleted"]["data"] >= 8, f"RequestsCompleted {st['RequestsCompleted']['data']}")
    rc, out, err = gdbus(d, "call", "--dest", NAME, "--object-path", PATH, "--method", NAME + ".GetStatus")
    check(rc == 0 and "'Version': <'" in out, f"gdbus GetStatus: {out.strip()[:80]} {err.strip()}")
    rc, out, err = gdbus(d, "call", "--dest", NAME, "--object-path", PATH, "--method", NAME + ".ListSessions")
    check(rc == 0 and out.strip() in ("(@a(ssuuttt) [],)", "([],)"), f"gdbus ListSessions: {out.strip()} {err.strip()}")

    # Errors through busctl: non-zero exit, the documented names in the message.
    for args, want_err in ((("Classify", "sas", "nosuch", "1", "x"), "No model"),
                           (("Classify", "sas", "sst2", "0"), "No texts"),
                           (("Embed", "sass", "sst2", "1", "x", "max"), ""),
                           (("CloseSession", "s", "12345"), "No session")):
        rc, out, err = d.busctl("call", NAME, PATH, NAME, *args, check=False)
        check(rc != 0 and want_err in err, f"busctl {args[0]} {args[2:]} fails: {err.strip()}")


def test_admin_busctl(d):
    d.busctl("call", NAME, PATH, NAME, "UnloadModel", "s", "sst2")
    check(d.call("ListModels")[0][0][1] is False, "UnloadModel through busctl: not loaded")
    rc, _, err = d.busctl("call", NAME, PATH, NAME, "UnloadModel", "s", "sst2", check=False)
    check(rc != 0 and "not loaded" in err, f"second UnloadModel fails: {err.strip()}")
    rc, _, err = d.busctl("call", NAME, PATH, NAME, "LoadModel", "s", "nosuch", check=False)
    check(rc != 0 and "No model" in err, f"LoadModel of a missing model fails: {err.strip()}")
    d.busctl("call", NAME, PATH, NAME, "LoadModel", "s", "sst2")
    d.busctl("call", NAME, PATH, NAME, "LoadModel", "s", "sst2")
    check(d.call("ListModels")[0][0][1] is True, "LoadModel through busctl (twice: idempotent): loaded")
    _, out, _ = d.busctl("get-property", NAME, PATH, NAME, "LoadedModels", json=True)
    check(json.loads(out)["data"] == ["sst2"], f"LoadedModels property {out.strip()}")


def test_dsactl_online(d):
    _, helptext, _ = d.dsactl("--help")
    if "unload" not in helptext:
        print("SKIP dsactl online verbs: not in this dsactl yet")
        return
    for verb, extra in (("classify", []), ("embed", ["--pool", "mean"]), ("embed", ["--pool", "cls"]),
                        ("embed", ["--pool", "pooler"]), ("tokenize", []), ("tokenize", ["--no-special"])):
        want = offline(d, verb, *extra)
        rc, out, err = d.dsactl(verb, "-m", "sst2", "--json", *extra, *TEXTS)
        if verb == "classify":
            check(rc == 0 and all(l.endswith(',"variant":"base"}') for l in out.splitlines()),
                  f"dsactl classify through dsad names the variant that ran: {out.splitlines()[:1]}")
            out = without_variant(out)
        check(rc == 0 and out == want, f"dsactl {verb} {' '.join(extra)} through dsad ($DSA_BUS_ADDRESS) prints "
                                       f"the in-process lines {err.strip()}")
        if rc == 0 and out != want:
            for a, b in zip(out.splitlines(), want.splitlines()):
                if a != b:
                    print(f"     dsad:       {a[:200]}\n     in-process: {b[:200]}")
                    break
    want = offline(d, "classify")
    rc, out, err = d.dsactl("--bus", d.address, "classify", "-m", "sst2", "--json", *TEXTS, bus_env=False)
    check(rc == 0 and without_variant(out) == want, f"dsactl --bus ADDR classify through dsad {err.strip()}")
    rc, out, err = d.dsactl("classify", "-m", "sst2", "--json", stdin="\n".join(TEXTS) + "\n")
    check(rc == 0 and without_variant(out) == want, f"dsactl classify through dsad, texts on stdin {err.strip()}")

    rc, out, err = d.dsactl("list", "--json")
    check(rc == 0 and any(m.get("name") == "sst2" for m in jsonl(out)), f"dsactl list --json: {out.strip()} {err}")
    rc, out, err = d.dsactl("status", "--json")
    st = json.loads(out) if rc == 0 else {}
    check(rc == 0 and st.get("models") == 1 and "version" in st, f"dsactl status --json: {out.strip()} {err}")
    rc, out, err = d.dsactl("ps", "--json")
    check(rc == 0, f"dsactl ps --json: {err.strip()}")
    rc, out, err = d.dsactl("unload", "sst2")
    check(rc == 0, f"dsactl unload sst2: {err.strip()}")
    check(d.call("ListModels")[0][0][1] is False, "after dsactl unload: not loaded")
    rc, out, err = d.dsactl("unload", "sst2")
    check(rc == 1 and len(err.strip().splitlines()) == 1, f"dsactl unload twice: exit {rc}, {err.strip()!r}")
    rc, out, err = d.dsactl("load", "sst2")
    check(rc == 0 and d.call("ListModels")[0][0][1] is True, f"dsactl load sst2: {err.strip()}")
    rc, out, err = d.dsactl("load", "nosuch")
    check(rc == 1 and len(err.strip().splitlines()) == 1, f"dsactl load nosuch: exit {rc}, {err.strip()!r}")
    rc, out, err = d.dsactl("classify", "-m", "nosuch", "x")
    check(rc == 1 and len(err.strip().splitlines()) == 1, f"dsactl classify -m nosuch: exit {rc}, {err.strip()!r}")


def test_idle_unload():
    with Dsad(extra_args=["--idle-unload", "1"]) as d:
        d.call("Classify", "sas", "sst2", "1", "wake up")
        check(d.call("ListModels")[0][0][1] is True, "idle-unload: loaded after use")
        t0 = time.monotonic()
        while d.call("ListModels")[0][0][1] and time.monotonic() - t0 < 5:
            time.sleep(0.1)
        dt = time.monotonic() - t0
        check(not d.call("ListModels")[0][0][1], f"--idle-unload 1: unloaded by itself after {dt:.1f} s")
        got = d.call("Classify", "sas", "sst2", "1", "wake up")[0]
        check(len(got) == 1 and d.call("ListModels")[0][0][1], "idle-unloaded model comes back on demand")


def test_shared(d_factory):
    shared = os.environ.get("DSA_SHARED") or os.path.join(harness.SRC, "../shared")
    hf = os.path.join(shared, "fixtures/hf")
    if not os.path.isdir(hf):
        print("SKIP shared fixtures: ../shared not found")
        return
    index = json.load(open(os.path.join(hf, "index.json")))
    names = [n for n, e in index.items() if e.get("kind") == "bert" and os.path.isdir(os.path.join(hf, n))]
    with Dsad() as d:
        models = {}
        for n in names:
            out_path = os.path.join(d.store, n + ".gguf")
            rc, _, err = d.dsactl("import", os.path.join(hf, n), "-o", out_path, bus_env=False)
            check(rc == 0, f"dsactl import {n}: {err.strip()}")
            if rc == 0:
                models[n] = out_path
        d.stop()
        d.start()  # rescans the store
        listed = {m[0]: m for m in d.call("ListModels")[0]}
        for n, path in models.items():
            check(n in listed, f"{n} listed by dsad after import")
            labels = listed.get(n, [0] * 5)[4]
            verbs = [("embed", "Embed", ["--pool", "cls"])] + ([("classify", "Classify", [])] if labels else [])
            for verb, method, extra in verbs:
                rc, out, err = d.dsactl(verb, "-m", path, "--json", *extra, *TEXTS, bus_env=False)
                check(rc == 0, f"{n}: dsactl {verb} in-process {err.strip()}")
                if rc != 0:
                    continue
                want = jsonl(out)
                if method == "Classify":
                    got = d.call(method, "sas", n, str(len(TEXTS)), *TEXTS)[0]
                    flat_g, flat_w = [v for r in got for v in r[3]], [v for w in want for v in w["logits"]]
                else:
                    got = d.call(method, "sass", n, str(len(TEXTS)), *TEXTS, "cls")[0]
                    flat_g, flat_w = [v for r in got for v in r], [v for w in want for v in w["embedding"]]
                worst, md = close(flat_g, flat_w)
                check(worst <= 0, f"{n}: busctl {method} vs dsactl in-process: max |diff| {md:.3g}")
            rc, out, err = d.dsactl("tokenize", "-m", path, "--json", *TEXTS, bus_env=False)
            got = d.call("Tokenize", "sasb", n, str(len(TEXTS)), *TEXTS, "true")[0]
            ids = [r[0] if isinstance(r[0], list) else r for r in got]
            check(rc == 0 and ids == [w["ids"] for w in jsonl(out)], f"{n}: Tokenize ids vs dsactl in-process")


with Dsad() as d:
    test_introspection(d)
    test_calls(d)
    test_admin_busctl(d)
    test_dsactl_online(d)
test_idle_unload()
test_shared(Dsad)
print(f"{failures} failures")
sys.exit(1 if failures else 0)
