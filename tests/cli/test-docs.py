#!/usr/bin/env python3
"""The manuals agree with the code: every function libdsa exports is in libdsa(3); every key
dsad.conf accepts (daemon/config.c) is in dsad.conf(5) and in the packaged default
configuration; every D-Bus method, property and signal of dsad's vtables is in dsad(8) and in
docs/dbus-api.md; every dsactl verb is in dsactl(1); every polkit action dsad asks about is
declared in the packaged actions file. (dsactl's options: tests/cli/test-cli.py.)

Usage: test-docs.py SOURCE_DIR
"""
import glob, os, re, sys

src = sys.argv[1]
failures = 0


def read(path):
    return open(os.path.join(src, path)).read()


def man(path):
    # roff escapes that split words: \- and \(em etc.
    return read(path).replace("\\-", "-").replace("\\&", "")


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures += 1


# libdsa(3): every DSA_EXPORT function
funcs = re.findall(r"DSA_EXPORT[^;(]*?\b(dsa_[a-z0-9_]+)\s*\(", read("include/dsa/dsa.h"))
check(len(funcs) > 30, f"found the exported functions ({len(funcs)})")
libdsa3 = man("man/libdsa.3")
for f in sorted(set(funcs)):
    check(re.search(rf"\b{f}\b", libdsa3) is not None, f"{f} in libdsa(3)")

# dsad.conf(5) and packaging/dsad.conf: every key the parser knows
config = read("daemon/config.c")
keys = set(re.findall(r'\{ "(?:policy|battery)", "([a-z_]+)"', config))
keys |= set(re.findall(r'strcmp\(name, "([a-z_]+)"\) == 0', config))
check(len(keys) > 15, f"found the configuration keys ({len(keys)})")
conf5, default_conf = man("man/dsad.conf.5"), read("packaging/dsad.conf")
for k in sorted(keys):
    check(re.search(rf"\b{k}=", conf5) is not None, f"{k}= in dsad.conf(5)")
    # root= is for tests only and not in the packaged file on purpose
    if k != "root":
        check(re.search(rf"^#?{k} = ", default_conf, re.M) is not None, f"{k} in packaging/dsad.conf")

# dsad(8) and docs/dbus-api.md: every member of the vtables
members = set()
for f in glob.glob(os.path.join(src, "daemon", "api*.c")):
    text = open(f).read()
    members |= set(re.findall(r'SD_BUS_(?:METHOD_WITH_ARGS|SIGNAL_WITH_ARGS|PROPERTY|WRITABLE_PROPERTY)\("([A-Za-z]+)"',
                              text))
check(len(members) > 30, f"found the D-Bus members ({len(members)})")
dsad8, api_md = man("man/dsad.8"), read("docs/dbus-api.md")
for m in sorted(members):
    check(re.search(rf"\b{m}\b", dsad8) is not None, f"{m} in dsad(8)")
    check(f"`{m}`" in api_md or f"`{m}(" in api_md, f"{m} in docs/dbus-api.md")

# dsactl(1): every verb
verbs = re.findall(r'\{ "([a-z-]+)", verb_', read("cli/dsactl.c"))
check(len(verbs) > 10, f"found the dsactl verbs ({len(verbs)})")
dsactl1 = man("man/dsactl.1")
for v in verbs:
    check(re.search(rf"^\.(?:B|BI|BR) (?:dsactl )?{v}\b", dsactl1, re.M) is not None, f"verb {v} in dsactl(1)")

# polkit: every action id dsad checks is declared, and owned by the dsad user
actions = set(re.findall(r'#define [A-Z_]+_ACTION "([a-z.-]+)"', "".join(
    open(f).read() for f in glob.glob(os.path.join(src, "daemon", "*.c")))))
policy = read("packaging/org.dsa.Daemon1.policy")
check(len(actions) >= 2, f"found the polkit actions ({sorted(actions)})")
for a in sorted(actions):
    block = re.search(rf'<action id="{re.escape(a)}">(.*?)</action>', policy, re.S)
    check(block is not None, f"action {a} declared in packaging/org.dsa.Daemon1.policy")
    check(block is not None and "unix-user:dsad" in block.group(1), f"action {a} owned by unix-user:dsad")

print(f"test-docs: {failures} failure(s)")
sys.exit(1 if failures else 0)
