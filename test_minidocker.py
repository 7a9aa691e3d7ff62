"""Tests for minidocker.py.

Two kinds, as the README says:
- unit tests of the pure parts (flags into a spec, capability rules, the
  mount plan, the in-root path walk, the ELF reader, the cgroup writes, the
  device cgroup's eBPF program, the seccomp compiler, netlink and nf_tables
  messages against golden bytes); no root needed;
- root tests that start real containers and look at what the process inside
  sees, perform the escapes each defence stops, and push minidocker with
  faults, load and bad input. They are marked `root` and skipped only when
  not run as root (CI runs as root and fails on any skip).

Each section opens with a banner; where it tests one chapter of the book,
the banner starts with that chapter's number, and
`grep -nE '^# [0-9]+[.] ' test_minidocker.py` lists them. In file order:
the spec (3), then the pure helpers it leans on from 10, 2, 11 and 4; the
mount plan (6); the ELF reader (5); images (5): references, and layers
built here by hand, loaded and run as root; as root, what the process inside sees;
the terminal (11); bad input; escapes; faults and load; cgroups, the device
cgroup and release_agent (8); seccomp (10); networking (9). The sections
without a number (what the process sees, bad input, escapes, faults)
cross the chapters. Last come the image fixtures (5): layouts built with
umoci, skopeo's archives of them, and Debian's docker-registry, anonymous,
behind htpasswd or behind a token server, with the tests that pull from
them.
"""

import base64
import calendar
import contextlib
import errno
import fcntl
import glob
import hashlib
import http.client
import http.server
import io
import ipaddress
import json
import marshal
import os
import re
import resource
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import termios
import threading
import time
import traceback
import types
import urllib.parse

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import minidocker as md  # noqa: E402

SINGLE_FILE = [sys.executable, os.path.join(HERE, "minidocker.py")]
# How the tests run minidocker: as root, the launcher `install` writes
# (installed_minidocker), which loads the file's cached bytecode: the
# single file is compiled at every start (0.26 s more per command here, ten
# times that in the cgroup-v2 VM). Tests of the single file itself use
# SINGLE_FILE.
MINIDOCKER = list(SINGLE_FILE)
IS_ROOT = os.geteuid() == 0
root = pytest.mark.skipif(not IS_ROOT, reason="needs root to start containers")

DOCKER_DEFAULT_CAPS = 0x00000000A80425FB  # CapBnd of a `docker run` container


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def installed_minidocker(tmp_path_factory):
    """As root, minidocker installed once for the session; MINIDOCKER is its
    launcher meanwhile."""
    if not IS_ROOT:
        yield
        return
    prefix = str(tmp_path_factory.mktemp("installed"))
    subprocess.run(SINGLE_FILE + ["install", "--prefix", prefix], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)
    MINIDOCKER[:] = [os.path.join(prefix, "bin", "minidocker")]
    yield
    MINIDOCKER[:] = SINGLE_FILE


@pytest.fixture(scope="session")
def state(tmp_path_factory):
    """A MINIDOCKER_ROOT of our own, and (as root) cgroups of our own."""
    path = str(tmp_path_factory.mktemp("state"))
    os.environ["MINIDOCKER_ROOT"] = path
    with own_v1_cgroups():
        yield path
    del os.environ["MINIDOCKER_ROOT"]


@contextlib.contextmanager
def own_v1_cgroups():
    """Move the test process into a cgroup of its own in every cgroup-v1
    hierarchy, and in a hybrid host's cgroup2 tree. minidocker places a
    container under the cgroup it runs in there, so every container this
    suite starts lands below ours, and the checks
    for leftovers look there only: another user's containers on the same
    host are not ours to count. (On cgroup v2 containers go under
    /sys/fs/cgroup/mini-docker/, which the cgroup-v2 VM has to itself.)"""
    if not IS_ROOT:
        yield
        return
    layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                               md.read_text("/proc/self/cgroup"))
    moved = []
    try:
        for mount, own in sorted(set(layout.v1.values()) | hybrid_v2(layout)):
            parent = os.path.join(mount, own.strip("/"))
            mine = os.path.join(parent, "mdtest-%d" % os.getpid())
            os.mkdir(mine)
            moved.append((parent, mine))
            if os.path.exists(os.path.join(mine, "cpuset.cpus")):
                md.inherit_cpuset(mount, mine)
            md.write_cgroup_file(mine, "cgroup.procs", os.getpid())
        yield
    finally:
        for parent, mine in reversed(moved):
            md.write_cgroup_file(parent, "cgroup.procs", os.getpid())
            md.remove_cgroups([mine])


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory, state):
    """A busybox rootfs made by minidocker's own mkrootfs, plus test users."""
    if shutil.which("busybox") is None:
        pytest.fail("busybox is not installed (apt-get install busybox-static)")
    path = str(tmp_path_factory.mktemp("images") / "busybox")
    subprocess.run(MINIDOCKER + ["mkrootfs", path], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(path, "etc/passwd"), "a") as handle:
        handle.write("alice:x:1000:1000:Alice:/home/alice:/bin/sh\n")
    with open(os.path.join(path, "etc/group"), "a") as handle:
        handle.write("alice:x:1000:\nstaff:x:50:alice\nwheel:x:10:root\n")
    os.makedirs(os.path.join(path, "home/alice"))
    os.chown(os.path.join(path, "home/alice"), 1000, 1000)
    return path


def run(rootfs, *command, options=(), input=None, timeout=60, check_clean=True):
    """`minidocker run --rm OPTIONS ROOTFS COMMAND`; returns CompletedProcess."""
    result = subprocess.run(MINIDOCKER + ["run", "--network=none", "--rm"] + list(options) + [rootfs] + list(command),
                            input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    result.out = result.stdout.decode()
    result.err = result.stderr.decode()
    if check_clean:
        assert_nothing_left()
    return result


def sh(rootfs, script, options=(), **kw):
    return run(rootfs, "/bin/sh", "-c", script, options=options, **kw)


def assert_nothing_left():
    """No container state, and no mount of ours in the host's namespace."""
    base = os.environ["MINIDOCKER_ROOT"]
    for sub in ("lib/containers", "run/containers", "lib/volumes"):
        path = os.path.join(base, sub)
        assert not os.path.exists(path) or os.listdir(path) == [], os.listdir(path)
    with open("/proc/self/mountinfo") as handle:
        assert base not in handle.read()
    assert leftover_cgroups() == []


def hybrid_v2(layout):
    """A hybrid host's cgroup2 tree, where containers are placed as on v1."""
    return {(layout.v2_mount, layout.v2_own)} if layout.v1 and layout.v2_mount else set()


def leftover_cgroups():
    """Container cgroups still present where minidocker puts them."""
    layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                               md.read_text("/proc/self/cgroup"))
    places = [os.path.join(mount, own.strip("/"))
              for mount, own in set(layout.v1.values()) | hybrid_v2(layout)]
    if layout.v2_mount:
        places.append(os.path.join(layout.v2_mount, "mini-docker"))
    found = []
    for place in places:
        if os.path.isdir(place):
            found += [os.path.join(place, n) for n in os.listdir(place)
                      if n.startswith("minidocker-") or place.endswith("mini-docker")
                      and os.path.isdir(os.path.join(place, n))]
    return found


def start(rootfs, *command, options=()):
    return subprocess.Popen(MINIDOCKER + ["run", "--network=none", "--rm"] + list(options) + [rootfs] + list(command),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@contextlib.contextmanager
def started(rootfs, *command, options=()):
    """A container running in the background, killed if the test fails."""
    proc = start(rootfs, *command, options=options)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def status_field(text, name):
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("%s not in %r" % (name, text))


def snapshot(path):
    """Every entry under path: type, mode, owner, size and content hash."""
    result = {}
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(top, name)
            st = os.lstat(full)
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(full)
            result[os.path.relpath(full, path)] = (st.st_mode, st.st_uid, st.st_size, digest)
    return result


def children_of(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
        return [int(p) for p in handle.read().split()]


def wait_for_child(pid, timeout=10, pause=0.02):
    """The first child of minidocker `pid`. A test that must catch the child
    before its execve polls with no pause: a start-up's child lives a few
    milliseconds on a fast host, less than one 20 ms pause."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children_of(pid)
        if kids:
            return kids[0]
        time.sleep(pause)
    raise AssertionError("minidocker %d started no container" % pid)


# ---------------------------------------------------------------------------
# 3. unit tests: the spec
# ---------------------------------------------------------------------------

def parse(*argv):
    return md.build_spec(md.build_parser().parse_args(["run"] + list(argv)))


def test_parse_run_into_spec(tmp_path):
    spec = parse("--rm", "-e", "A=1", "-w", "/srv/", "-u", "alice:staff", "--hostname", "box",
                 "-v", "/data:/mnt/data:ro", "--tmpfs", "/run:size=1m,exec", "--read-only",
                 str(tmp_path), "ls", "-l", "--color")
    assert spec.rootfs == str(tmp_path)
    assert spec.command == ["ls", "-l", "--color"]
    assert spec.env == ["A=1"] and spec.workdir == "/srv" and spec.user == "alice:staff"
    assert spec.hostname == "box" and spec.remove and spec.read_only
    assert repr(spec.volumes) == "[Volume('/data', '/mnt/data', True)]"
    assert spec.tmpfs == [("/run", md.MS_NOSUID | md.MS_NODEV, "size=1m")]


def test_device_flags_into_nodes_and_rules(tmp_path):
    spec = parse("--device", "/dev/null", "--device", "/dev/zero:/dev/sub/z:r",
                 "--device", "/dev/full:rw", str(tmp_path), "sh")
    assert [(d.path, d.rule()) for d in spec.devices] == [
        ("/dev/null", ("c", 1, 3, "rwm")), ("/dev/sub/z", ("c", 1, 5, "r")),
        ("/dev/full", ("c", 1, 7, "rw"))]
    assert spec.devices[0].mode == os.stat("/dev/null").st_mode
    assert spec.resources["devices"] == md.DEFAULT_DEVICE_RULES + [d.rule() for d in spec.devices]
    assert "devices" not in parse("--privileged", "--device", "/dev/null", str(tmp_path),
                                  "sh").resources


@pytest.mark.parametrize("text, error", [
    ("/dev/null:/dev/n:rwx", "permissions 'rwx' are not a set of r, w and m"),
    ("/dev/null:/dev/n:rr", "permissions 'rr' are not a set"),
    ("/dev/null:/dev/n:", "permissions '' are not a set"),
    ("/dev/null:/tmp/n", "the container path must be in /dev"),
    ("/dev/null:/dev/", "the container path must be in /dev"),
    ("/dev/null:/dev/../etc/n", "the container path must be in /dev"),
    ("/etc/passwd", "/etc/passwd is not a device node"),
    ("/dev/no-such-device", "/dev/no-such-device: No such file or directory"),
    ("/dev/null:/dev/a:r:w", "expected HOST[:CONTAINER][:PERMS]"),
    (":/dev/a", "expected HOST[:CONTAINER][:PERMS]"),
])
def test_bad_devices(text, error):
    with pytest.raises(md.MiniDockerError, match=re.escape(error)):
        md.parse_device(text)


def test_combined_short_flags_and_help_is_not_hostname(tmp_path):
    spec = parse("-it", "-h", "name", str(tmp_path), "sh")
    assert spec.tty and spec.interactive and spec.hostname == "name"


@pytest.mark.parametrize("text, error", [
    ("foo", "container path must be absolute"),
    ("/a:/b:/c:/d", "expected [HOST-PATH:|NAME:]CONTAINER-PATH"),
    (":/b", "expected [HOST-PATH:|NAME:]CONTAINER-PATH"),
    ("r:/b", "'r' is no volume name"),
    ("/a:rel", "container path must be absolute"),
    ("/a:/", "container path must be absolute"),
    ("/a:/b:rx", "unknown option"),
])
def test_bad_volumes(text, error):
    with pytest.raises(md.MiniDockerError, match=re.escape(error)):
        md.parse_volume(text)


def test_tmpfs_options():
    assert md.parse_tmpfs("/x") == ("/x", md.MS_NOSUID | md.MS_NODEV | md.MS_NOEXEC, "")
    assert md.parse_tmpfs("/x:ro,mode=1777,suid") == (
        "/x", md.MS_RDONLY | md.MS_NODEV | md.MS_NOEXEC, "mode=1777")
    with pytest.raises(md.MiniDockerError, match="unknown option 'bogus'"):
        md.parse_tmpfs("/x:bogus")


def test_env_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_HOST", "yes")
    monkeypatch.delenv("NOT_SET", raising=False)
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nX=1\nFROM_HOST\n  Y=two words  \n")
    assert md.expand_env(md.parse_env_file(str(env_file)) + ["NOT_SET", "Z=="]) == [
        "X=1", "FROM_HOST=yes", "Y=two words", "Z=="]
    with pytest.raises(md.MiniDockerError, match="invalid environment variable"):
        md.expand_env(["=x"])


# ---------------------------------------------------------------------------
# 10. unit tests: capability rules and names, the capset header
# ---------------------------------------------------------------------------

def test_capability_rules():
    default = md.plan_capabilities([], [], False, set(range(41)))
    assert md.cap_mask(default) == DOCKER_DEFAULT_CAPS
    assert md.plan_capabilities([], ["ALL"], False, set(range(41))) == set()
    assert md.plan_capabilities(["net_admin"], ["ALL"], False, set(range(41))) == {12}
    assert md.plan_capabilities(["CAP_SYS_ADMIN"], ["chown"], False, set(range(41))) == \
        default - {0} | {21}
    assert md.plan_capabilities(["ALL"], ["MKNOD"], False, set(range(41))) == set(range(41)) - {27}
    assert md.plan_capabilities(["CHOWN"], ["CHOWN"], False, set(range(41))) == default
    held = set(range(41)) - {24}
    assert md.plan_capabilities([], [], True, held) == held
    with pytest.raises(md.MiniDockerError, match="CAP_SYS_RESOURCE is not held"):
        md.plan_capabilities(["SYS_RESOURCE"], [], False, held)
    with pytest.raises(md.MiniDockerError, match="unknown capability: CAP_FOO"):
        md.plan_capabilities(["CAP_FOO"], [], False, held)


def test_capability_names_match_kernel_header():
    with open("/usr/include/linux/capability.h") as handle:
        header = handle.read()
    for number, name in enumerate(md.CAP_NAMES):
        assert "#define CAP_%s" % name in header
        line = [l for l in header.splitlines() if l.startswith("#define CAP_%s " % name)
                or l.startswith("#define CAP_%s\t" % name)][0]
        assert int(line.split()[2]) == number


def test_capset_struct_bytes():
    assert struct.pack(md.CAP_HEADER, md._LINUX_CAPABILITY_VERSION_3, 0) == \
        bytes.fromhex("2205082000000000")


# ---------------------------------------------------------------------------
# 2. unit tests: every libc binding checks its errors
# ---------------------------------------------------------------------------

def test_every_binding_checks_its_errors():
    """Each libc binding carries its error check where it is declared, so no
    caller can forget it: a failed call raises SyscallError naming the call,
    and a wrapper renames it with a hint only for the errno that the hint
    explains."""
    bindings = [value for value in vars(md).values() if isinstance(value, md._bind)]
    assert len(bindings) == 20
    checked = [binding for binding in bindings if not binding.holding_gil]
    assert [binding.name for binding in bindings if binding.holding_gil] == ["syscall"]  # clone3
    assert all(binding.bind().errcheck is md._fail_on_minus_one for binding in checked)
    with pytest.raises(md.SyscallError) as raw:
        md._pivot_root(md.SYSCALLS["pivot_root"], b"/nonexistent/md", b"/nonexistent/md")
    assert str(raw.value).startswith("pivot_root: ")
    with pytest.raises(md.SyscallError) as renamed:
        md.pivot_root("/nonexistent/md", "/nonexistent/md")
    # ENOENT (as root) or EPERM: either way not the initramfs's EINVAL
    assert renamed.value.errno in (errno.ENOENT, errno.EPERM)
    assert str(renamed.value) == "pivot_root(/nonexistent/md): " + os.strerror(renamed.value.errno)
    with pytest.raises(md.SyscallError) as unhinted:  # overlay's hints: EINVAL, ENODEV
        md.mount("overlay", "/nonexistent/md", "overlay", data="lowerdir=/")
    assert unhinted.value.errno in (errno.ENOENT, errno.EPERM)
    assert str(unhinted.value) == "mount overlay on /nonexistent/md: " + \
        os.strerror(unhinted.value.errno)


# ---------------------------------------------------------------------------
# 11. unit tests: the user, the command's path, the exit code
# ---------------------------------------------------------------------------

def test_resolve_user():
    passwd = md.parse_passwd("root:x:0:0:root:/root:/bin/sh\n"
                             "alice:x:1000:1000::/home/alice:/bin/sh\nbroken line\n")
    group = md.parse_group("root:x:0:\nwheel:x:10:root,alice\nstaff:x:50:alice\nalice:x:1000:\n")
    assert md.resolve_user(None, passwd, group) == (0, 0, [0, 10], "/root")
    assert md.resolve_user("alice", passwd, group) == (1000, 1000, [1000, 10, 50], "/home/alice")
    assert md.resolve_user("1000:staff", passwd, group) == (1000, 50, [50], "/home/alice")
    assert md.resolve_user("4242", passwd, group) == (4242, 0, [0], "/")
    assert md.resolve_user("4242:77", passwd, group, ["wheel"]) == (4242, 77, [77, 10], "/")
    with pytest.raises(md.MiniDockerError, match="unable to find user bob"):
        md.resolve_user("bob", passwd, group)
    with pytest.raises(md.MiniDockerError, match="unable to find group nogrp"):
        md.resolve_user("alice:nogrp", passwd, group)


def test_find_executable(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "tool").write_text("")
    (tmp_path / "b" / "tool").write_text("#!/bin/sh\n")
    os.chmod(str(tmp_path / "b" / "tool"), 0o755)
    path = "%s/a:%s/b" % (tmp_path, tmp_path)
    assert md.find_executable("tool", path) == "%s/b/tool" % tmp_path
    assert md.find_executable("./x", path) == "./x"
    assert md.find_executable("tool", "%s/a" % tmp_path) == "%s/a/tool" % tmp_path
    with pytest.raises(md.MiniDockerError) as err:
        md.find_executable("nope", path)
    assert err.value.code == 127


def test_exit_code_convention():
    assert md.exit_code(7 << 8) == 7
    assert md.exit_code(signal.SIGKILL) == 137


# What the file's top leaves unimported (json, re, signal.py, ipaddress) is
# done by its own helpers: each is held to the module it stands in for.

JSON_VALUES = [
    None, True, False, 0, -7, 10 ** 30, 2.5, -0.0, 1e300, float("inf"), float("-inf"), "",
    "plain", 'quote " backslash \\ newline \n tab \t nul \x00 \x1f del \x7f',
    "caf\u00e9 \u20ac \U0001f600", "undecodable \udcff byte", [], {}, (1, "two"),
    {"id": "a" * 64, "cgroups": ["/sys/fs/cgroup/x"], "pid": 42, "nested": {"list": [[], {}]},
     "labels": {"k": "v"}, 7: "int key", 2.5: "float key", True: "bool key", None: "null key"},
]


def test_json_is_written_and_read_as_the_json_module_does():
    for value in JSON_VALUES:
        for indent in (None, 4, "  ", "\t"):
            assert md.to_json(value, indent=indent) == json.dumps(value, indent=indent), value
        text = json.dumps(value)
        assert repr(md.from_json(text)) == repr(json.loads(text))
        assert repr(md.from_json(("\n " + text + " \t").encode())) == repr(json.loads(text))
    assert md.from_json("NaN") != md.from_json("NaN")  # float("nan"), as json.loads reads it
    for bad in ({1, 2}, b"bytes", object(), {(1, 2): "tuple key"}):
        with pytest.raises(TypeError):
            md.to_json(bad)
    for bad in ("", "  ", "{", '{"a" 1}', "[1,]", "1 2", '"a\x01"', "nul", '{"a": 1}}',
                "\ufeff{}", "[" * 10 + "]"):
        with pytest.raises(ValueError) as ours:
            md.from_json(bad)
        with pytest.raises(ValueError) as theirs:
            json.loads(bad)
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))
    with pytest.raises(RecursionError):
        md.from_json("[" * 100000)


def test_signal_names_are_the_signal_modules():
    for number in range(signal.NSIG + 1):
        try:
            expected = signal.Signals(number).name
        except ValueError:
            expected = str(number)
        assert md.signal_name(number) == expected
    for name in ("TERM", "sigkill", "SIGRTMIN", "IOT", "cld", "poll", "usr1", "64"):
        number = int(name) if name.isdigit() else signal.Signals[
            name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()]
        assert md.parse_signal(name) == number
    for bad in ("SIG_DFL", "DFL", "", "0", "65", "NSIG", "TERM2"):
        with pytest.raises(md.MiniDockerError):
            md.parse_signal(bad)


def test_loopback_addresses_are_ipaddress_ones():
    for text in ("127.0.0.1", "127.255.1.2", "10.0.0.1", "8.8.8.8", "::1", "0:0:0:0:0:0:0:1",
                 "::", "fe80::1", "::ffff:127.0.0.1", "x", "127.1", "", "1.2.3.4.5", "0127.0.0.1"):
        try:
            expected = ipaddress.ip_address(text).is_loopback
        except ValueError:
            expected = None
        assert md.is_loopback_address(text) is expected, text


def test_ipv4_networks_are_ipaddress_ones():
    """The lease's IPv4 arithmetic (IPv4Network, ipv4_number) against
    ipaddress, on hand-picked and random networks and addresses."""
    import random
    rng = random.Random(12)
    texts = ["10.0.0.0/24", "10.0.0.1/24", "127.0.0.0/8", "0.0.0.0/0", "192.168.77.1/32",
             "172.16.0.0/12", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/08", "10.0.0/24",
             "010.0.0.0/24", "1.2.3.256", "1.2.3.4", "a.b.c.d", "1..2.3", " 1.2.3.4", "1.2.3.4 ",
             "\u0661.2.3.4", "10.0.0.0/\u0662\u0664", "255.255.255.255"]
    for _ in range(3000):
        length = rng.randrange(0, 33)
        number = rng.getrandbits(32) & (0xFFFFFFFF ^ (0xFFFFFFFF >> length)) \
            if rng.random() < 0.8 else rng.getrandbits(32)
        texts.append("%s/%d" % (ipaddress.IPv4Address(number), length))
    networks = []
    for text in texts:
        try:
            expected = ipaddress.IPv4Network(text)
        except ValueError:
            expected = None
        if expected is not None and "/" in text and not text.split("/")[1].isdigit():
            expected = None  # ipaddress also takes a netmask after the slash: not ours to read
        try:
            ours = md.IPv4Network(text)
        except ValueError:
            ours = None
        assert (ours is None) == (expected is None), text
        if ours is not None:
            assert str(ours) == str(expected) and ours.packed == expected.network_address.packed
            assert ours.netmask == expected.netmask.packed and ours.prefixlen == expected.prefixlen
            assert ours.last == int(expected.broadcast_address)
            networks.append((ours, expected))
    for (ours, expected), (other, theirs) in zip(networks, networks[1:] + networks[:1]):
        assert ours.overlaps(other) == expected.overlaps(theirs)
        assert ours.subnet_of(other) == expected.subnet_of(theirs)
        assert (ours == other) == (expected == theirs)
        address = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        assert (address in ours) == (ipaddress.IPv4Address(address) in expected)
    for text in ("10.0.0.0/24", "10.0.0.0/29", "10.0.0.0/30", "172.16.0.0/12"):
        ours, expected = md.IPv4Network(text), ipaddress.IPv4Network(text)
        hosts = ours.hosts()
        assert [next(hosts) for _ in range(2)] == [str(a) for a in list(expected.hosts())[:2]]
        assert list(md.IPv4Network("10.0.0.0/29").hosts()) == [
            str(a) for a in ipaddress.IPv4Network("10.0.0.0/29").hosts()]
    assert md.IPv4Network.interface("10.0.0.1/24") == ("10.0.0.1", md.IPv4Network("10.0.0.0/24"))
    for bad in ("10.0.0.1", "10.0.0.1/33", "10.0.0.1/-1", "10.0.0.1/", "10.0.0/24"):
        with pytest.raises(ValueError):
            md.IPv4Network.interface(bad)
    assert md.IPv4Network("10.0.0.0/24") != "10.0.0.0/24"
    assert md.ipv4_text(0x0A000002) == "10.0.0.2" and md.ipv4_number("10.0.0.2") == 0x0A000002


def test_mountinfo_paths_and_patterns_without_re():
    assert md.mountinfo_path("/a\\040b\\011c\\012d\\134e") == "/a b\tc\nd\\e"
    assert md.mountinfo_path("/plain") == "/plain"
    docker_name = "[a-zA-Z0-9][a-zA-Z0-9_.-]+"  # Docker's, as the file's comment gives them
    host_name = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*"
    for name in ("ab", "a", "_a", "a_", "a.b-c", "A1", "a b", "a\u00e9", "a" * 3, ".a", "a."):
        assert md.is_docker_name(name) == bool(re.fullmatch(docker_name, name, re.ASCII))
    for name in ("a", "a-b", "-a", "a-", "a.b", "a..b", "a_b.c-d", "x.", ".x", "a b"):
        matches = bool(re.fullmatch(host_name, name, re.ASCII))
        if matches:
            assert md.check_hostname(name, "--hostname") == name
        else:
            with pytest.raises(md.MiniDockerError):
                md.check_hostname(name, "--hostname")
    assert md.leading_numbers("6.1.0-13-amd64") == (6, 1) and md.leading_numbers("x") == ()
    assert md.kernel_at_least("5.8", "6.1.0-13-amd64") and not md.kernel_at_least("5.8", "5.4.0")


# ---------------------------------------------------------------------------
# 4. unit tests: where the state lives
# ---------------------------------------------------------------------------

def test_paths_follow_minidocker_root():
    assert md.Paths({}).lib == "/var/lib/minidocker"
    assert md.Paths({}).run == "/run/minidocker"
    paths = md.Paths({"MINIDOCKER_ROOT": "/tmp/x"})
    assert (paths.lib, paths.run) == ("/tmp/x/lib", "/tmp/x/run")
    assert paths.record("abc") == "/tmp/x/run/containers/abc.json"


# ---------------------------------------------------------------------------
# 6. unit tests: the mount plan and the walk inside the rootfs
# ---------------------------------------------------------------------------

def test_mount_plan_order_and_flags(tmp_path):
    spec = parse("-v", "/h:/data:ro", "--tmpfs", "/scratch", str(tmp_path), "sh")
    plan = md.plan_mounts(spec)
    targets = [(m.kind, m.target) for m in plan]
    assert targets[:7] == [("fs", "/proc"), ("fs", "/dev"), ("devices", "/dev"),
                           ("fs", "/dev/pts"), ("fs", "/dev/shm"), ("fs", "/dev/mqueue"),
                           ("fs", "/sys")]
    assert targets[7:10] == [("bind", "/data"), ("nodev", "/data"), ("fs", "/scratch")]
    assert [t for k, t in targets if k == "mask"] == md.MASKED_PATHS
    assert [t for k, t in targets if k == "readonly"] == md.READONLY_PATHS
    assert "/proc/interrupts" in md.MASKED_PATHS
    sysfs = plan[6]
    assert sysfs.flags & md.MS_RDONLY
    assert plan[3].data == "newinstance,ptmxmode=0666,mode=0620,gid=5"
    assert plan[7].flags == md.MS_BIND | md.MS_REC | md.MS_RDONLY
    assert [m.kernel_fs for m in plan[:7]] == [True, True, False, False, False, False, True]


def test_privileged_plan_masks_nothing(tmp_path):
    plan = md.plan_mounts(parse("--privileged", str(tmp_path), "sh"))
    assert not [m for m in plan if m.kind in ("mask", "readonly")]
    assert not plan[6].flags & md.MS_RDONLY


def test_root_and_volumes_are_nodev_unless_privileged(tmp_path):
    spec = parse("-v", "/h:/data", str(tmp_path), "sh")
    assert md.root_flags(spec) == md.MS_NODEV
    assert ("nodev", "/data") in [(m.kind, m.target) for m in md.plan_mounts(spec)]
    privileged = parse("--privileged", "-v", "/h:/data", str(tmp_path), "sh")
    assert md.root_flags(privileged) == 0
    assert "nodev" not in [m.kind for m in md.plan_mounts(privileged)]
    dev = [m for m in md.plan_mounts(spec) if m.target == "/dev" and m.kind == "fs"][0]
    assert not dev.flags & md.MS_NODEV  # the one place where nodes open


@pytest.fixture
def trap_tree(tmp_path):
    """A directory with links that point out of it in every way."""
    top = tmp_path / "root"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "hosts").write_text("inside")
    os.symlink("/etc", str(top / "abs"))               # absolute: means root/etc
    os.symlink("../../../../../../etc", str(top / "up"))  # climbs: stops at root
    os.symlink("/", str(top / "slash"))
    os.symlink("loop", str(top / "loop"))
    os.symlink("/nonexistent/deeper", str(top / "dangling"))
    (tmp_path / "outside").mkdir()
    return top


def walk(top, path, **kw):
    rootfd = os.open(str(top), os.O_PATH | os.O_DIRECTORY)
    try:
        fd = md.open_in_root(rootfd, path, **kw)
        try:
            return os.readlink("/proc/self/fd/%d" % fd)
        finally:
            os.close(fd)
    finally:
        os.close(rootfd)


def test_walk_keeps_symlinks_inside(trap_tree):
    top = str(trap_tree)
    assert walk(trap_tree, "/abs/hosts") == top + "/etc/hosts"
    assert walk(trap_tree, "up/hosts") == top + "/etc/hosts"
    assert walk(trap_tree, "/../../etc") == top + "/etc"
    assert walk(trap_tree, "/slash/slash/etc") == top + "/etc"
    assert walk(trap_tree, "/") == top


def test_walk_creates_inside_not_outside(trap_tree):
    top = str(trap_tree)
    assert walk(trap_tree, "/dangling/file", create="file") == top + "/nonexistent/deeper/file"
    assert walk(trap_tree, "/up/new/dir", create="dir") == top + "/etc/new/dir"
    assert os.listdir(str(trap_tree.parent / "outside")) == []
    assert not os.path.exists("/nonexistent")


def test_walk_refuses_what_it_must(trap_tree):
    with pytest.raises(md.MiniDockerError, match="abs is a symlink"):
        walk(trap_tree, "/abs", follow=False)
    with pytest.raises(OSError, match="Too many levels"):
        walk(trap_tree, "/loop/x")
    with pytest.raises(OSError, match="Not a directory"):
        walk(trap_tree, "/etc/hosts/x")
    with pytest.raises(FileNotFoundError):
        walk(trap_tree, "/missing")


# ---------------------------------------------------------------------------
# 5. unit tests: the ELF reader, against binutils' readelf
# ---------------------------------------------------------------------------

def readelf(*args):
    return subprocess.run(["readelf", "-W"] + list(args), stdout=subprocess.PIPE,
                          check=True, env=dict(os.environ, LC_ALL="C")).stdout.decode()


@pytest.mark.parametrize("program", ["/usr/bin/python3", "/bin/ls", "/bin/sh"])
def test_elf_reader_agrees_with_readelf(program):
    info = md.read_elf_file(os.path.realpath(program))
    dynamic = readelf("-d", os.path.realpath(program))
    needed = [line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines()
              if "(NEEDED)" in line]
    assert info.needed == needed
    headers = readelf("-l", os.path.realpath(program))
    interp = [line.split(":", 1)[1].strip().rstrip("]") for line in headers.splitlines()
              if "Requesting program interpreter" in line]
    assert [info.interp] == interp
    assert info.bits == 64


def test_elf_reader_32bit_big_endian(tmp_path):
    """A minimal 32-bit big-endian ELF made here, read by us and by readelf."""
    strtab = b"\0libfoo.so.1\0/opt/lib\0"
    interp = b"/lib/ld.so.1\0"
    phoff, phnum = 52, 3
    data_at = phoff + 32 * phnum
    dyn_at = data_at + len(interp) + len(strtab)
    dt_strsz = 10  # readelf wants it to print the strings; we do not need it
    dynamic = struct.pack(">iIiIiIiIiI", md.DT_NEEDED, 1, md.DT_RUNPATH, 13,
                          md.DT_STRTAB, 0x1000 + data_at + len(interp), dt_strsz, len(strtab),
                          md.DT_NULL, 0)
    size = dyn_at + len(dynamic)
    header = b"\x7fELF\x01\x02\x01" + b"\0" * 9 + struct.pack(
        ">" + md.ELF_HEADER[32], 3, 20, 1, 0, phoff, 0, 0, 52, 32, phnum, 40, 0, 0)
    phdrs = struct.pack(">" + md.ELF_PHDR[32], md.PT_INTERP, data_at, 0x1000 + data_at, 0,
                        len(interp), len(interp), 4, 1)
    phdrs += struct.pack(">" + md.ELF_PHDR[32], md.PT_LOAD, 0, 0x1000, 0, size, size, 5, 0x1000)
    phdrs += struct.pack(">" + md.ELF_PHDR[32], md.PT_DYNAMIC, dyn_at, 0x1000 + dyn_at, 0,
                         len(dynamic), len(dynamic), 6, 4)
    image = header + phdrs + interp + strtab + dynamic
    path = tmp_path / "tiny"
    path.write_bytes(image)
    info = md.read_elf(image)
    assert (info.bits, info.machine, info.interp) == (32, 20, "/lib/ld.so.1")
    assert info.needed == ["libfoo.so.1"] and info.runpath == ["/opt/lib"]
    dump = readelf("-d", "-l", str(path))
    assert "Shared library: [libfoo.so.1]" in dump and "[/opt/lib]" in dump
    assert "Requesting program interpreter: /lib/ld.so.1" in dump


def test_elf_reader_says_none_for_scripts():
    assert md.read_elf(b"#!/bin/sh\necho\n") is None


def test_elf_closure_of_ls_includes_loader_and_libc():
    closure = md.elf_closure(os.path.realpath("/bin/ls"))
    names = [os.path.basename(p) for p in closure]
    assert any(n.startswith("ld-linux") for n in names)
    assert "libc.so.6" in names


# ---------------------------------------------------------------------------
# 5. images: references (unit); layers built here by hand, loaded and run as
# root: hostile entries, whiteouts, the config `run` applies, rmi, save
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, canonical", [
    ("alpine", "docker.io/library/alpine:latest"),
    ("alpine:3.19", "docker.io/library/alpine:3.19"),
    ("library/alpine", "docker.io/library/alpine:latest"),
    ("docker.io/alpine", "docker.io/library/alpine:latest"),
    ("index.docker.io/me/app:v1", "docker.io/me/app:v1"),
    ("me/app", "docker.io/me/app:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/x/y:tag", "127.0.0.1:5000/x/y:tag"),
    ("quay.io/a/b_c__d-e.f", "quay.io/a/b_c__d-e.f:latest"),
    ("alpine@sha256:" + "a" * 64, "docker.io/library/alpine@sha256:" + "a" * 64),
    ("alpine:3@sha256:" + "b" * 64, "docker.io/library/alpine:3@sha256:" + "b" * 64),
])
def test_image_references_follow_dockers_rules(text, canonical):
    assert str(md.parse_reference(text)) == canonical


@pytest.mark.parametrize("text, why", [
    ("", "1 to 255"),
    ("Alpine", "lower-case"),
    ("alpine:", "a tag is"),
    ("alpine:.x", "a tag is"),
    ("alpine@sha256:abc", "a digest is"),
    ("a/../b", "lower-case"),
    ("-x", "lower-case"),
    ("host:99999999/x", "the registry is a host name"),
    ("x" * 256, "1 to 255"),
])
def test_image_references_refused_by_name(text, why):
    with pytest.raises(md.MiniDockerError) as raised:
        md.parse_reference(text)
    assert why in str(raised.value) and "invalid image reference" in str(raised.value)


REFERENCE_GRAMMAR = {  # distribution's reference package, as regular expressions
    "is_repository_component": r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*",
    "is_registry_host": r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?",
    "is_tag": r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
    "is_digest": r"sha256:[0-9a-f]{64}",
}


def test_image_reference_parts_match_as_the_grammar_says():
    """minidocker matches them without re: each matcher against its
    expression, on strings of the characters that matter."""
    import random
    rnd = random.Random(7)
    for name, pattern in REFERENCE_GRAMMAR.items():
        match = getattr(md, name)
        samples = ["a" * 128, "a" * 129, "a:99999", "a:123456", "a.b.c:1", "-a", "a-", "a--b",
                   "a__b", "a___b", "a._b", "", "sha256:" + "a" * 64, "sha256:" + "a" * 63]
        samples += ["".join(rnd.choice("aZ09_.-:/@\u00e9 ") for _ in range(rnd.randint(0, 9)))
                    for _ in range(20000)]
        samples += ["sha256:" + "".join(rnd.choice("0a9fg") for _ in range(rnd.choice((63, 64, 65))))
                    for _ in range(2000)]
        for text in samples:
            assert match(text) == bool(re.fullmatch(pattern, text)), (name, text)


def test_image_familiar_names_are_dockers_short_ones():
    assert md.familiar_name("docker.io/library/alpine") == "alpine"
    assert md.familiar_name("docker.io/me/app") == "me/app"
    assert md.familiar_name("127.0.0.1:5000/library/x") == "127.0.0.1:5000/library/x"


def test_image_index_resolves_to_the_platform_asked():
    index = {"manifests": [
        {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "arm64",
                                                      "variant": "v8"}},
        {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:" + "3" * 64, "platform": {"os": "windows", "architecture": "amd64"}}]}
    assert md.choose_manifest(index, "linux/amd64", "x")["digest"].endswith("2" * 64)
    assert md.choose_manifest(index, "linux/arm64/v8", "x")["digest"].endswith("1" * 64)
    assert md.choose_manifest(index, "linux/arm64", "x")["digest"].endswith("1" * 64)
    with pytest.raises(md.MiniDockerError, match="has no image for linux/s390x .it has: "
                                                 "linux/amd64, linux/arm64, windows/amd64"):
        md.choose_manifest(index, "linux/s390x", "x")


def tar_entry(name, data=b"", kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, linkname="",
              pax=None, device=(0, 0), mtime=1700000000):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.linkname = kind, mode, uid, gid, linkname
    info.mtime, info.size = mtime, len(data) if kind == tarfile.REGTYPE else 0
    info.devmajor, info.devminor = device
    info.pax_headers = dict(pax or {})
    return info, data


def layer_tar(entries):
    """A layer's tar, as written: entries in order, PAX headers for xattrs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buffer.getvalue()


def tree_layer(path):
    """A directory as one layer's tar (the busybox rootfs as a base)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(path, arcname=".")
    return buffer.getvalue()


def save_archive(path, layers, config=None, tags=("test/hand:1",), compress=False,
                 diff_ids=None):
    """A `docker save` archive of one image made of these layer tars."""
    import gzip
    config = {"architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
              "config": dict(config or {}),
              "rootfs": {"type": "layers", "diff_ids": diff_ids or [
                  "sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]}}
    config_bytes = json.dumps(config).encode()
    files = [("config.json", config_bytes)]
    files += [("%d/layer.tar" % i, gzip.compress(layer) if compress else layer)
              for i, layer in enumerate(layers)]
    files.append(("manifest.json", json.dumps([{
        "Config": "config.json", "RepoTags": list(tags),
        "Layers": ["%d/layer.tar" % i for i in range(len(layers))]}]).encode()))
    with tarfile.open(path, "w") as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def image_store(state):
    return os.path.join(state, "lib", "images")


def store_leftovers(state):
    """Temporaries of the store: what a failed load or pull must not leave."""
    store = image_store(state)
    return [os.path.join(d, n) for d in (os.path.join(store, "layers"),
                                          os.path.join(store, "blobs", "sha256"))
            if os.path.isdir(d) for n in os.listdir(d) if ".tmp-" in n]


@pytest.fixture(scope="session")
def busybox_layer(rootfs):
    return tree_layer(rootfs)


@pytest.fixture
def images(state, tmp_path):
    """Loads archives into the session's store; removes what it loaded."""
    loaded = []

    def load(layers, name="test/hand:1", **kw):
        path = save_archive(str(tmp_path / ("%d.tar" % len(loaded))), layers, tags=(name,), **kw)
        result = minidocker("load", "-i", path)
        if result.returncode == 0:
            loaded.append(name)
        return result
    yield load
    for name in loaded:
        minidocker("rmi", "-f", name)


HOSTILE_LAYERS = [
    ("dotdot", [tar_entry("../escaped-%d" % os.getpid(), b"x")], "a '..' component"),
    ("absolute", [tar_entry("/tmp/escaped-%d" % os.getpid(), b"x")], "an absolute name"),
    ("through a symlink", [tar_entry("etc", kind=tarfile.SYMTYPE, linkname="/tmp"),
                           tar_entry("etc/escaped-%d" % os.getpid(), b"x")],
     "etc is a symlink or a file, not a directory"),
    ("through a relative symlink", [tar_entry("d", kind=tarfile.DIRTYPE, mode=0o755),
                                    tar_entry("d/up", kind=tarfile.SYMTYPE, linkname="../../.."),
                                    tar_entry("d/up/tmp/escaped-%d" % os.getpid(), b"x")],
     "d/up is a symlink or a file"),
    ("hard link outside", [tar_entry("shadow", kind=tarfile.LNKTYPE, linkname="/etc/shadow")],
     "hard link to '/etc/shadow': an absolute name"),
    ("hard link up", [tar_entry("shadow", kind=tarfile.LNKTYPE,
                                linkname="../../../../../../etc/shadow")],
     "a '..' component"),
    ("hard link through a symlink", [tar_entry("etc", kind=tarfile.SYMTYPE, linkname="/etc"),
                                     tar_entry("shadow", kind=tarfile.LNKTYPE,
                                               linkname="etc/shadow")],
     "etc is a symlink or a file"),
    ("hard link to nothing", [tar_entry("x", kind=tarfile.LNKTYPE, linkname="nothing")],
     "which no earlier entry made"),
    ("whiteout of ..", [tar_entry(".wh..."), tar_entry("x", b"x")], "a whiteout of nothing"),
    ("an owner out of range", [tar_entry("f", b"x", pax={"uid": "99999999999999999999"})],
     "uid is greater than maximum"),
    ("a time out of range", [tar_entry("f", b"x", pax={"mtime": "99999999999999999999"})],
     "timestamp out of range"),
    ("file over a symlink's target", [tar_entry("link", kind=tarfile.SYMTYPE,
                                                linkname="/tmp/escaped-%d" % os.getpid()),
                                      tar_entry("link/", kind=tarfile.DIRTYPE),
                                      tar_entry("link/x", b"x")],
     None),
]


@root
@pytest.mark.parametrize("name, entries, message", HOSTILE_LAYERS,
                         ids=[h[0] for h in HOSTILE_LAYERS])
def test_escape_image_layer_entries_stay_in_their_layer(name, entries, message, state, images):
    """Each hostile layer, loaded as root: refused with a line naming the
    entry, or unpacked harmlessly; never a file outside the layer."""
    outside = ["/tmp/escaped-%d" % os.getpid(), "/escaped-%d" % os.getpid(),
               os.path.join(image_store(state), "escaped-%d" % os.getpid())]
    before = os.stat("/etc/shadow")
    result = images([layer_tar(entries)])
    if message is None:  # replaced by a directory: refused or not, nothing outside
        assert result.returncode in (0, 125), result.err
    else:
        assert result.returncode == 125, result.err
        assert result.err.count("\n") == 1 and "entry" in result.err and message in result.err, \
            result.err
        assert os.listdir(os.path.join(image_store(state), "layers")) == [] or \
            store_leftovers(state) == []
    for path in outside:
        assert not os.path.lexists(path), path
    assert os.stat("/etc/shadow").st_nlink == before.st_nlink
    assert store_leftovers(state) == []


def tar_header(name, kind, size, fmt=tarfile.GNU_FORMAT):
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(fmt)


def gzip_of_repeats(head, block, total):
    """gzip of head, then `block` repeated for `total` bytes (a multiple of
    16 MiB), in a few kilobytes: one member of 16 MiB compressed once and
    repeated (gzip readers take concatenated members as one stream)."""
    import gzip
    member = gzip.compress(block * ((16 << 20) // len(block)))
    return gzip.compress(head) + member * (total >> 24)


def quadratic_pax_header():
    records = b"3 x" * 349000 + b"=\n"  # each "3 x" matches to the one '=' at the end
    return tar_header("pax", tarfile.XHDTYPE, len(records)) + records + \
        bytes(-len(records) % 512)


def digits_pax_header():
    record = b" k=" + b"1" * 1000000 + b"\n"  # valid: tarfile's hdrcharset search scans
    record = b"%d" % (len(record) + 7) + record  # from every digit to the run's end
    return tar_header("pax", tarfile.XHDTYPE, len(record)) + record + bytes(-len(record) % 512)


def endless_sparse_map():
    sparse = bytearray(tar_header("sparse", tarfile.GNUTYPE_SPARSE, 0))
    sparse[482] = 1  # isextended: more sparse blocks follow, and each says so again
    sparse[148:156] = b" " * 8
    sparse[148:156] = b"%06o\0 " % sum(sparse)
    extension = bytearray(b"%011o\0%011o\0" % (1, 1) * 21 + bytes(8))
    extension[504] = 1
    return gzip_of_repeats(bytes(sparse), bytes(extension), 1 << 30)


def global_pax_records():
    records = b"".join(b"%d g%05d=v\n" % (len(b"g%05d=v\n" % i) + 3, i) for i in range(50000))
    return gzip_of_repeats(tar_header("global", tarfile.XGLTYPE, len(records)) + records +
                           bytes(-len(records) % 512), tar_header("f", tarfile.REGTYPE, 0),
                           96 << 20)


# Layers, each a few kilobytes to a few megabytes, that make Python's
# tarfile (before 3.12.6 and 3.11.10) take gigabytes or hours: (name, the
# layer, made when the test runs, and the refusal, or None: loaded).
PAX_BOMBS = [
    ("quadratic PAX records", lambda: quadratic_pax_header() + tar_header("f", tarfile.REGTYPE, 0),
     "a malformed PAX record at byte 0"),
    ("a PAX record of digits", lambda: digits_pax_header() + tar_header("f", tarfile.REGTYPE, 0) +
     bytes(1024), None),
    ("a PAX header of 2 GiB",
     lambda: gzip_of_repeats(tar_header("pax", tarfile.XHDTYPE, 2 << 30), b"1", 2 << 30),
     "a header extension of 2147483648 bytes (more than 1 MiB): refused"),
    ("a GNU long name of 2 GiB",
     lambda: gzip_of_repeats(tar_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 2 << 30),
                             b"a", 2 << 30), "a header extension of 2147483648 bytes"),
    ("a GNU sparse map that never ends", endless_sparse_map,
     "'sparse': a GNU sparse entry: refused"),
    ("global PAX records for every entry", global_pax_records,
     "a PAX header of more than 1000 records"),
    ("a chain of PAX headers", lambda: small_pax_header(b"k=v") * 2000 +
     tar_header("f", tarfile.REGTYPE, 0), "more than 8 header extensions before one entry"),
    ("a global uid that is no number", lambda: small_pax_header(b"uid=x", tarfile.XGLTYPE) +
     tar_header("f", tarfile.REGTYPE, 0), "PAX record uid='x' is not a number"),
]


def small_pax_header(record, kind=tarfile.XHDTYPE):
    line = b" %s\n" % record
    line = b"%d" % (len(line) + len(b"%d" % (len(line) + 2))) + line
    return tar_header("pax", kind, len(line)) + line + bytes(-len(line) % 512)


@root
@pytest.mark.parametrize("name, make, message", PAX_BOMBS, ids=[b[0] for b in PAX_BOMBS])
def test_escape_image_tar_headers_cannot_take_the_hosts_memory_or_time(name, make, message,
                                                                      busybox_layer, state,
                                                                      tmp_path):
    """A layer of a few kilobytes, loaded with 1 GiB of address space and
    60 s: refused with one line naming what is wrong, or (a well-formed
    header) unpacked, never out of memory or time. The same headers at
    the head of a `load` archive itself go the same way."""
    import resource

    def one_gib():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    layer = make()
    path = save_archive(str(tmp_path / "bomb.tar"), [busybox_layer, layer],
                        diff_ids=["sha256:" + hashlib.sha256(busybox_layer).hexdigest(),
                                  "sha256:" + hashlib.sha256(layer).hexdigest()])
    try:
        result = subprocess.run(MINIDOCKER + ["load", "-i", path], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60, preexec_fn=one_gib)
        if message is None:
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode == 125 and result.stderr.count("\n") == 1, result.stderr
            assert "not a valid tar archive: " + message in result.stderr, result.stderr
        assert store_leftovers(state) == []
        if name == "quadratic PAX records":
            with open(path, "rb") as handle:
                archive = handle.read()
            with open(path, "wb") as handle:
                handle.write(quadratic_pax_header() + archive)
            result = subprocess.run(MINIDOCKER + ["load", "-i", path], stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=60,
                                    preexec_fn=one_gib)
            assert result.returncode == 125 and "load %s: not a valid tar archive: %s" % (
                path, message) in result.stderr, result.stderr
    finally:
        minidocker("rmi", "-f", "test/hand:1")
        minidocker("image", "prune", "-f")


@root
def test_escape_image_layer_of_many_entries_keeps_memory_flat(busybox_layer, state, tmp_path):
    """tarfile keeps every entry it has read (its members list, about 500
    bytes each) and the unpacker kept every directory entry's time: a
    layer of 60,000 entries of one directory, 60 KB gzipped, took 35 MB
    more than a small one; a few megabytes took gigabytes. The peak is
    read by a small Python that starts `load` and waits for it (wait4's
    maxrss would count this test's own pages, shared at the fork)."""
    waiter = ("import os, sys\npid = os.fork()\nif pid == 0:\n    os.execv(sys.argv[1], "
              "sys.argv[1:])\n_, status, usage = os.wait4(pid, 0)\n"
              "print(usage.ru_maxrss if status == 0 else -1)")

    def peak(layer, name):
        path = save_archive(str(tmp_path / (name + ".tar")), [busybox_layer, layer],
                            diff_ids=["sha256:" + hashlib.sha256(busybox_layer).hexdigest(),
                                      "sha256:" + hashlib.sha256(layer).hexdigest()],
                            compress=True)
        result = subprocess.run([sys.executable, "-c", waiter] + MINIDOCKER + ["load", "-i", path],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=120)
        assert result.stdout.split()[-1] != "-1", result.stderr
        return int(result.stdout.split()[-1])  # KiB
    try:
        small = peak(layer_tar([tar_entry("d", kind=tarfile.DIRTYPE)]), "small")
        many = peak(tar_header("d", tarfile.DIRTYPE, 0) * 60000 + bytes(1024), "many")
        assert many - small < 20 << 10, (small, many)
    finally:
        minidocker("rmi", "-f", "test/hand:1")
        minidocker("image", "prune", "-f")


@root
def test_image_whiteouts_and_opaque_directories_stack_as_the_layers_say(busybox_layer, state,
                                                                        images):
    lower = layer_tar([tar_entry("data", kind=tarfile.DIRTYPE, mode=0o755),
                       tar_entry("data/gone", b"gone\n"), tar_entry("data/kept", b"kept\n"),
                       tar_entry("data/dir", kind=tarfile.DIRTYPE, mode=0o755),
                       tar_entry("data/dir/old", b"old\n"),
                       tar_entry("data/dir/sub", kind=tarfile.DIRTYPE, mode=0o755),
                       tar_entry("data/dir/sub/deep", b"deep\n")])
    upper = layer_tar([tar_entry("data/.wh.gone"), tar_entry("data/dir/.wh..wh..opq"),
                       tar_entry("data/dir/new", b"new\n")])
    assert images([busybox_layer, lower, upper]).returncode == 0
    result = run("test/hand:1", "sh", "-c", "cd /data && find . | sort && cat kept dir/new")
    assert result.returncode == 0, result.err
    assert result.out == "./\n./dir\n./dir/new\n./kept\nkept\nnew\n".replace("./\n", ".\n")
    store = image_store(state)
    upper_dir = [os.path.join(store, "layers", name, "diff") for name in
                 os.listdir(os.path.join(store, "layers"))
                 if os.path.exists(os.path.join(store, "layers", name, "diff", "data", "dir",
                                                "new"))][0]
    whiteout = os.lstat(os.path.join(upper_dir, "data", "gone"))
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(os.path.join(upper_dir, "data", "dir"), "trusted.overlay.opaque") == b"y"


@root
def test_image_layer_entry_replaces_a_directory_the_same_layer_made(busybox_layer, state,
                                                                    images):
    """A later entry of one layer takes the place of a directory an earlier
    one made: a file, a symlink, a whiteout. The unpacker once closed the
    descriptor of the directory holding it while making room, then wrote
    through that number (EBADF here; in a pull's three threads, whatever
    another layer's thread had opened under it meanwhile)."""
    layer = layer_tar([
        tar_entry("a", kind=tarfile.DIRTYPE, mode=0o755), tar_entry("a/x", b"x"),
        tar_entry("a", b"a file now\n"),
        tar_entry("d", kind=tarfile.DIRTYPE, mode=0o755),
        tar_entry("d/s", kind=tarfile.DIRTYPE, mode=0o755), tar_entry("d/s/x", b"x"),
        tar_entry("d/s", kind=tarfile.SYMTYPE, linkname="../a"),
        tar_entry("w", kind=tarfile.DIRTYPE, mode=0o755), tar_entry("w/x", b"x"),
        tar_entry(".wh.w")])
    result = images([busybox_layer, layer])
    assert result.returncode == 0, result.err
    result = run("test/hand:1", "sh", "-c", "cat /a; readlink /d/s; cat /d/s; ls -d /w || true")
    assert result.out == "a file now\n../a\na file now\n", result.out + result.err


@root
def test_image_layer_keeps_owners_modes_links_xattrs_and_times(busybox_layer, state, images):
    layer = layer_tar([
        tar_entry("f", kind=tarfile.DIRTYPE, mode=0o1777, uid=7, gid=8, mtime=1500000000),
        tar_entry("f/suid", b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
        tar_entry("f/owned", b"x", mode=0o640, uid=1234, gid=5678, mtime=1600000000),
        tar_entry("f/hard", kind=tarfile.LNKTYPE, linkname="f/owned"),
        tar_entry("f/link", kind=tarfile.SYMTYPE, linkname="owned", uid=3, gid=4),
        tar_entry("f/fifo", kind=tarfile.FIFOTYPE, mode=0o600),
        tar_entry("f/xattr", b"x", pax={"SCHILY.xattr.user.test": "hello",
                                        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
                                        "SCHILY.xattr.user.overlay.redirect": "/etc"}),
        tar_entry("f/null", kind=tarfile.CHRTYPE, mode=0o666, device=(1, 3))])
    assert images([busybox_layer, layer]).returncode == 0
    probe = ("cd /f && stat -c '%n %a %u %g %h %F' . suid owned hard link fifo null && "
             "readlink link && stat -c '%Y' . owned")
    result = run("test/hand:1", "sh", "-c", probe)
    assert result.returncode == 0, result.err
    assert result.out.splitlines() == [
        ". 1777 7 8 2 directory", "suid 4755 0 0 1 regular file",
        "owned 640 1234 5678 2 regular file", "hard 640 1234 5678 2 regular file",
        "link 777 3 4 1 symbolic link", "fifo 600 0 0 1 fifo",
        "null 666 0 0 1 character special file", "owned", "1500000000", "1600000000"]
    diff = [os.path.join(image_store(state), "layers", n, "diff", "f")
            for n in os.listdir(os.path.join(image_store(state), "layers"))
            if os.path.isdir(os.path.join(image_store(state), "layers", n, "diff", "f"))][0]
    assert os.getxattr(os.path.join(diff, "xattr"), "user.test") == b"hello"
    assert os.listxattr(os.path.join(diff, "xattr")) == ["user.test"]


@root
def test_image_config_is_applied_as_docker_applies_it(busybox_layer, state, images):
    config = {"Entrypoint": ["/bin/echo", "entry"], "Cmd": ["cmd"], "WorkingDir": "/tmp",
              "Env": ["PATH=/bin:/usr/bin", "IMAGE_VAR=from-image", "BOTH=image"],
              "User": "1000:1000", "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGUSR1",
              "Labels": {"org.example.test": "yes"}}
    assert images([busybox_layer], config=config).returncode == 0
    assert run("test/hand:1").out == "entry cmd\n"
    assert run("test/hand:1", "given").out == "entry given\n"
    probe = "pwd; id -u; echo $IMAGE_VAR $BOTH"
    result = run("test/hand:1", "-c", probe, options=["--entrypoint", "/bin/sh", "-e",
                                                     "BOTH=flag"])
    assert result.out == "/tmp\n1000\nfrom-image flag\n", result.err
    result = run("test/hand:1", "-c", "pwd; id -u",
                 options=["--entrypoint", "/bin/sh", "-w", "/", "-u", "0"])
    assert result.out == "/\n0\n", result.err
    assert run("test/hand:1", options=["--entrypoint", ""]).returncode == 125  # no command left
    cid = minidocker("run", "-d", "--network", "none", "test/hand:1").out.strip()
    try:
        minidocker("wait", cid)
        shown = json.loads(minidocker("inspect", cid).out)[0]
        assert shown["Config"]["Labels"] == {"org.example.test": "yes"}
        assert shown["Config"]["StopSignal"] == "SIGUSR1"
        assert "80/tcp" in shown["Config"]["ExposedPorts"]
        assert shown["Config"]["Image"] == "test/hand:1" and shown["Image"].startswith("sha256:")
        assert shown["Config"]["Entrypoint"] == ["/bin/echo", "entry"]
        assert shown["Config"]["Cmd"] == ["cmd"]
        ps = minidocker("ps", "-a", "--format", "{{.Image}}").out
        assert "test/hand:1" in ps.splitlines()
        refused = minidocker("rmi", "test/hand:1")
        assert refused.returncode == 125 and "image is used by container " + cid[:12] in \
            refused.err, refused.err
    finally:
        minidocker("rm", "-f", cid)


@root
@pytest.mark.parametrize("planted", ["a directory", "a symlink"])
def test_escape_image_name_is_not_another_users_directory(planted, rootfs, busybox_layer,
                                                          images, tmp_path):
    """Root runs `run test/planted` in a directory where a local user could
    make entries (/tmp, or a user's home under sudo). An argument that is an
    existing directory is a rootfs, so the user's own tree `test/hand:1`,
    planted there, was run as the container's root: their /bin/sh, root in
    the container, with root's volumes; or, through a symlink of theirs,
    any directory of the host, / included. Refused now, naming the owner."""
    assert images([busybox_layer], name="test/planted:latest").returncode == 0
    here = tmp_path / "shared"
    here.mkdir(mode=0o777)
    os.chmod(str(here), 0o1777)
    (here / "test").mkdir()
    os.chown(str(here / "test"), 1000, 1000)
    if planted == "a directory":
        shutil.copytree(rootfs, str(here / "test" / "planted"), symlinks=True)
        (here / "test" / "planted" / "marker").write_text("planted\n")
        for directory, _, names in os.walk(str(here / "test" / "planted")):
            for path in [directory] + [os.path.join(directory, n) for n in names]:
                os.lchown(path, 1000, 1000)
    else:
        os.symlink("/", str(here / "test" / "planted"))
        os.lchown(str(here / "test" / "planted"), 1000, 1000)
    result = subprocess.run(MINIDOCKER + ["run", "--rm", "--network", "none", "test/planted",
                                          "sh", "-c", "cat /marker /etc/hostname"],
                            cwd=str(here), stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=60)
    assert "planted" not in result.stdout and result.returncode == 125, result.stdout
    assert "test/planted is a directory here that uid 1000 owns" in result.stderr and \
        result.stderr.count("\n") == 1, result.stderr
    assert_nothing_left()


HOSTILE_CONFIGS = [
    ({"Labels": {"a": 1, "b": {"c": [1]}}}, "its config's Labels is not a valid object of strings"),
    ({"Env": ["A=b\0c"]}, "its config's Env holds 'A=b\\x00c', not KEY=VALUE"),
    ({"Env": ["=x"]}, "its config's Env holds '=x', not KEY=VALUE"),
    ({"User": "a b\n"}, "its config's User: invalid --user"),
    ({"ExposedPorts": {"garbage": {}}}, "its config's ExposedPorts: invalid --expose 'garbage'"),
    ({"StopSignal": "SIGFOO"}, "its config's StopSignal: invalid --stop-signal 'SIGFOO'"),
]


@root
@pytest.mark.parametrize("config, message", HOSTILE_CONFIGS,
                         ids=[next(iter(c[0])) + str(i) for i, c in enumerate(HOSTILE_CONFIGS)])
def test_image_config_fields_of_the_wrong_kind_are_named_as_the_images(config, message,
                                                                       busybox_layer, images):
    """An image's config is checked as the flags it stands in for, and the
    line names the image and the field: Labels of other values were taken
    (and shown as Python's repr), a NUL or an empty name in Env was an
    internal error, and the rest named a flag the caller never gave."""
    assert images([busybox_layer], config=dict(config, Cmd=["true"])).returncode == 0
    err = bad(["run", "--rm", "test/hand:1"], "image 'test/hand:1': " + message)
    assert "internal error" not in err


@root
def test_image_exposed_ports_are_what_minus_p_publishes(busybox_layer, state, images):
    config = {"Cmd": ["/bin/sh"], "ExposedPorts": {"80/tcp": {}, "53/udp": {}}}
    assert images([busybox_layer], config=config).returncode == 0
    plan = parse("-P", "--expose", "90", "test/hand:1").network_plan
    assert plan["expose"] == [[53, "udp"], [80, "tcp"], [90, "tcp"]]
    assert plan["ports"] == [["0.0.0.0", 0, 0, "udp", 53], ["0.0.0.0", 0, 0, "tcp", 80],
                             ["0.0.0.0", 0, 0, "tcp", 90]]

@root
def test_image_tags_rmi_and_prune(busybox_layer, state, images):
    assert images([busybox_layer]).returncode == 0
    assert minidocker("tag", "test/hand:1", "other/name:2").returncode == 0
    listed = minidocker("images").out.splitlines()
    assert listed[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert {tuple(line.split()[:2]) for line in listed[1:]} >= {("test/hand", "1"),
                                                                 ("other/name", "2")}
    image_id = json.loads(minidocker("image", "inspect", "test/hand:1").out)[0]["Id"]
    assert minidocker("rmi", "other/name:2").out == "Untagged: other/name:2\n"
    assert os.path.exists(os.path.join(image_store(state), "images", image_id[7:] + ".json"))
    # A tag moved to another image leaves the first one untagged, for prune.
    assert images([busybox_layer, layer_tar([tar_entry("x", b"x")])]).returncode == 0
    assert minidocker("images", "-q").out.count("\n") == 2
    pruned = minidocker("image", "prune", "-f")
    assert pruned.out == "deleted: %s\n" % image_id, pruned.err
    assert minidocker("rmi", "test/hand:1").returncode == 0
    store = image_store(state)
    for sub in ("images", "layers", "l", "blobs/sha256"):
        assert os.listdir(os.path.join(store, sub)) == [], sub
    assert minidocker("rmi", "test/hand:1").err == \
        "minidocker: error: no such image: 'test/hand:1'\n"


@root
def test_image_save_then_load_gives_the_same_image_and_skopeo_reads_it(busybox_layer, state,
                                                                        images, tmp_path):
    assert images([busybox_layer], config={"Cmd": ["/bin/sh"]}, compress=True).returncode == 0
    before = json.loads(minidocker("image", "inspect", "test/hand:1").out)[0]
    saved = str(tmp_path / "saved.tar")
    assert minidocker("save", "-o", saved, "test/hand:1").returncode == 0
    with tarfile.open(saved) as archive:
        names = archive.getnames()
    assert {"oci-layout", "index.json", "manifest.json"} <= set(names)
    inspected = subprocess.run(["skopeo", "inspect", "oci-archive:" + saved],
                               capture_output=True, text=True, timeout=60)
    assert inspected.returncode == 0, inspected.stderr
    with open(os.path.join(image_store(state), "images", before["Id"][7:] + ".json")) as handle:
        stored = json.load(handle)
    assert json.loads(inspected.stdout)["Layers"] == [layer["digest"]
                                                      for layer in stored["layers"]]
    assert minidocker("rmi", "test/hand:1").returncode == 0
    assert minidocker("load", "-i", saved).out == "Loaded image: test/hand:1\n"
    after = json.loads(minidocker("image", "inspect", "test/hand:1").out)[0]
    assert after["Id"] == before["Id"] and after["RootFS"] == before["RootFS"]
    assert run("test/hand:1", "echo", "back").out == "back\n"


@root
def test_image_with_many_layers_keeps_the_mount_options_in_one_page(busybox_layer, images):
    """130 layers of 64-hex names would take 8 KB of lowerdir; their short
    links take 3.7 KB."""
    layers = [busybox_layer] + [layer_tar([tar_entry("n/%03d" % i, b"%d\n" % i)])
                                for i in range(129)]
    assert images(layers).returncode == 0
    result = run("test/hand:1", "sh", "-c", "ls /n | wc -l; cat /n/000 /n/128")
    assert result.out == "129\n0\n128\n", result.err


@root
def test_image_load_refuses_what_does_not_match_its_digest(busybox_layer, state, images,
                                                           tmp_path):
    wrong = ["sha256:" + "0" * 64]
    result = images([busybox_layer], diff_ids=wrong)
    assert result.returncode == 125 and "uncompressed bytes are sha256:" in result.err and \
        "where the image's config says sha256:" + "0" * 64 in result.err, result.err
    assert os.listdir(os.path.join(image_store(state), "layers")) == []
    assert store_leftovers(state) == []
    # A blob under blobs/sha256/ of an OCI layout must match its name.
    path = str(tmp_path / "oci.tar")
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("blobs/sha256/" + "1" * 64)
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    result = minidocker("load", "-i", path)
    assert result.returncode == 125 and "digest mismatch: expected sha256:" + "1" * 64 in \
        result.err, result.err
    assert store_leftovers(state) == []


def archive_of(path, files):
    with tarfile.open(path, "w") as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


DEEP_JSON = b"[" * 200000 + b"]" * 200000
EMPTY_CONFIG = b'{"rootfs": {"diff_ids": []}}'
HOSTILE_JSON = [
    ("manifest.json not JSON", [("manifest.json", b"not json")],
     "manifest.json: not valid JSON: Expecting value"),
    ("manifest.json nested", [("manifest.json", DEEP_JSON)],
     "manifest.json: not valid JSON: maximum recursion depth exceeded"),
    ("a config nested", [("manifest.json", b'[{"Config": "c", "Layers": []}]'), ("c", DEEP_JSON)],
     "not valid JSON: maximum recursion depth exceeded"),
    ("index.json's manifests a number", [("index.json", b'{"manifests": 5}')],
     "index.json: its manifests are not a list"),
    ("a descriptor a string", [("index.json", b'{"manifests": ["x"]}')],
     "index.json: 'None' is not a sha256 digest"),
    ("RepoTags a string", [("manifest.json", b'[{"Config": "c", "Layers": [], "RepoTags": "ab"}]'),
                           ("c", EMPTY_CONFIG)], "manifest.json: RepoTags is not a list of names"),
    ("rootfs a number", [("manifest.json", b'[{"Config": "c", "Layers": []}]'),
                         ("c", b'{"rootfs": 5}')],
     "its manifest lists 0 layers and its config no diff_ids"),
]


@root
@pytest.mark.parametrize("name, files, message", HOSTILE_JSON, ids=[h[0] for h in HOSTILE_JSON])
def test_image_load_refuses_hostile_json_in_one_line(name, files, message, state, tmp_path):
    """JSON of the wrong shape, or nested past Python's recursion limit,
    was an internal error (RecursionError, AttributeError, TypeError), or,
    for RepoTags "ab", the tags a:latest and b:latest."""
    path = archive_of(str(tmp_path / "hostile.tar"), files)
    before = minidocker("images", "-q").out
    err = bad(["load", "-i", path], message)
    assert "internal error" not in err
    assert minidocker("images", "-q").out == before
    minidocker("image", "prune", "-f")


@root
def test_image_zstd_layer_is_refused_by_name(state, images):
    result = images([b"\x28\xb5\x2f\xfd" + b"\0" * 100], diff_ids=["sha256:" + "2" * 64])
    assert result.returncode == 125 and "compressed with zstd" in result.err, result.err
    assert store_leftovers(state) == []


@root
def test_userns_an_images_layers_are_idmapped(busybox_layer, state, images, subids):
    """run --userns auto IMAGE: each layer is an idmapped mount, so the
    container sees the owners the image gives (a file of 1234:5678 is
    1234:5678 inside, host ids outside), and whiteouts and opaque
    directories still hide what they hide."""
    lower = layer_tar([tar_entry("data", kind=tarfile.DIRTYPE, mode=0o755),
                       tar_entry("data/owned", b"x", uid=1234, gid=5678),
                       tar_entry("data/gone", b"gone\n"),
                       tar_entry("data/dir", kind=tarfile.DIRTYPE, mode=0o755),
                       tar_entry("data/dir/old", b"old\n")])
    upper = layer_tar([tar_entry("data/.wh.gone"), tar_entry("data/dir/.wh..wh..opq"),
                       tar_entry("data/dir/new", b"new\n")])
    assert images([busybox_layer, lower, upper]).returncode == 0
    probe = ("cat /proc/self/uid_map; stat -c '%u %g' /data/owned /bin/busybox; ls /data "
             "/data/dir; touch /data/owned && stat -c '%u %g' /data/owned")
    result = run("test/hand:1", "sh", "-c", probe, options=["--userns", "auto"])
    assert result.returncode == 0, result.err
    lines = result.out.splitlines()
    first, outside, size = lines[0].split()
    assert first == "0" and int(outside) >= 2147483648 and size == "65536"
    assert lines[1:] == ["1234 5678", "0 0", "/data:", "dir", "owned", "", "/data/dir:", "new",
                         "1234 5678"]

@root
def test_rootless_an_image_is_refused_in_one_line(rootless):
    result = rootless("run", "--rm", "busybox", "true")
    assert result.returncode == 125 and result.err == (
        "minidocker: error: an image's container for a user without root is not supported "
        "yet: give a rootfs directory (mkrootfs)\n"), result.err
    assert rootless("pull", "busybox").err == "minidocker: error: pull needs root " \
        "(CAP_SYS_ADMIN in the initial user namespace): run it with sudo\n"

class FaultyRegistry:
    """A registry of one image, served by http.server in this process, that
    misbehaves on purpose (no real registry sends wrong bytes, or stops
    halfway through a blob on cue): `mode` is "good", "corrupt" (one byte
    of the layer flipped) or "stall" (half the layer, then nothing until
    the test ends)."""

    def __init__(self, layer):
        import gzip
        self.layer = gzip.compress(layer)
        self.config = json.dumps({"architecture": "amd64", "os": "linux",
                                  "config": {"Cmd": ["/bin/sh"]},
                                  "rootfs": {"type": "layers", "diff_ids": [
                                      "sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
        self.layer_digest = "sha256:" + hashlib.sha256(self.layer).hexdigest()
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": "sha256:" + hashlib.sha256(self.config).hexdigest(),
                       "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": self.layer_digest, "size": len(self.layer)}]}).encode()
        self.mode, self.released = "good", threading.Event()
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                blobs = {"sha256:" + hashlib.sha256(b).hexdigest(): b
                         for b in (registry.config, registry.layer)}
                if self.path == "/v2/":
                    body = b"{}"
                elif self.path == "/v2/test/faulty/manifests/1":
                    body = registry.manifest
                elif self.path.startswith("/v2/test/faulty/blobs/") and \
                        self.path.rpartition("/")[2] in blobs:
                    body = blobs[self.path.rpartition("/")[2]]
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.end_headers()
                if body is registry.layer and registry.mode == "corrupt":
                    body = body[:100] + bytes([body[100] ^ 1]) + body[101:]
                if body is registry.layer and registry.mode == "stall":
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    registry.released.wait(60)
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def faulty_registry(busybox_layer, state):
    registry = FaultyRegistry(busybox_layer)
    yield registry
    registry.close()
    minidocker("rmi", "-f", registry.host + "/test/faulty:1")
    minidocker("image", "prune", "-f")


@root
def test_image_pull_refuses_a_layer_that_does_not_match_its_digest(faulty_registry, state):
    faulty_registry.mode = "corrupt"
    result = minidocker("pull", faulty_registry.host + "/test/faulty:1")
    assert result.returncode == 125 and result.err.count("\n") == 1, result.err
    assert "layer %s: digest mismatch: expected %s, got sha256:" % (
        faulty_registry.layer_digest, faulty_registry.layer_digest) in result.err, result.err
    store = image_store(state)
    assert not os.path.exists(os.path.join(store, "blobs", "sha256",
                                           faulty_registry.layer_digest[7:]))
    assert not os.listdir(os.path.join(store, "layers")) if os.path.isdir(
        os.path.join(store, "layers")) else True
    assert store_leftovers(state) == []
    faulty_registry.mode = "good"
    assert minidocker("pull", faulty_registry.host + "/test/faulty:1").returncode == 0


@root
def test_image_pull_killed_halfway_leaves_no_blob_a_later_pull_trusts(faulty_registry, state):
    faulty_registry.mode = "stall"
    blobs = os.path.join(image_store(state), "blobs", "sha256")
    pull = subprocess.Popen(MINIDOCKER + ["pull", faulty_registry.host + "/test/faulty:1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                ".tmp-" in n and os.path.getsize(os.path.join(blobs, n)) > 0
                for n in (os.listdir(blobs) if os.path.isdir(blobs) else [])):
            time.sleep(0.05)
    finally:
        pull.kill()
        pull.wait()
    assert store_leftovers(state), "the pull never wrote its half blob"
    assert not os.path.exists(os.path.join(blobs, faulty_registry.layer_digest[7:]))
    faulty_registry.mode = "good"
    result = minidocker("pull", faulty_registry.host + "/test/faulty:1")
    assert result.returncode == 0, result.err
    assert run(faulty_registry.host + "/test/faulty:1", "echo", "whole").out == "whole\n"
    assert minidocker("image", "prune", "-f").returncode == 0
    assert store_leftovers(state) == []


class HostileServer:
    """An HTTP server in a thread of this process whose every answer the
    test writes: `answer(handler)` is called with each GET's
    http.server handler, after the request's path and headers are kept in
    `seen`. With `tls` ((certificate, key) files) it speaks TLS to a
    client whose first byte opens a TLS handshake and plain HTTP to any
    other, on the same port."""

    def __init__(self, answer, tls=None):
        self.seen = []
        server_side = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server_side.seen.append((self.path, dict(self.headers),
                                         "https" if tls and hasattr(self.connection, "cipher")
                                         else "http"))
                answer(self)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                connection, address = super().get_request()
                if tls and connection.recv(1, socket.MSG_PEEK) == b"\x16":  # a TLS handshake
                    import ssl
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    context.load_cert_chain(*tls)
                    connection = context.wrap_socket(connection, server_side=True)
                return connection, address

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def send(handler, status, body=b"", headers=()):
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def registry_image(layer, config_size=True):
    """{path under /v2/test/x/: bytes} of a one-layer image (the manifest
    as manifests/1), and the config's digest."""
    import gzip
    blob = gzip.compress(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [
                             "sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
    digest = {data: "sha256:" + hashlib.sha256(data).hexdigest() for data in (config, blob)}
    descriptor = {"mediaType": "application/vnd.oci.image.config.v1+json",
                  "digest": digest[config], "size": len(config)}
    if config_size is not True:
        descriptor["size"] = config_size
        if config_size is None:
            del descriptor["size"]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": descriptor,
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": digest[blob], "size": len(blob)}]}).encode()
    return {"manifests/1": manifest, "blobs/" + digest[config]: config,
            "blobs/" + digest[blob]: blob}, digest[config]


def pull_with_credentials(reference, timeout=60, env=None):
    """pull as a user who gave the password "s3cret-%d" (this pid) for it."""
    environment = dict(os.environ, MINIDOCKER_AUTH="tester:s3cret-%d" % os.getpid(), **(env or {}))
    return minidocker("pull", reference, env=environment, timeout=timeout)


def carried_the_password(seen):
    """The requests that carried the password, in any form."""
    secret = "s3cret-%d" % os.getpid()
    encoded = base64.b64encode(("tester:" + secret).encode()).decode()
    return [(path, headers) for path, headers, _ in seen
            if any(secret in value or encoded in value for value in headers.values())]



def send_image_file(handler, files, name):
    """What registry_image made, as a registry serves it: a manifest (or a
    blob) by its path under /v2/test/x/, or 404."""
    if name in files:
        send(handler, 200, files[name], [("Content-Type",
                                          "application/vnd.oci.image.manifest.v1+json")])
    else:
        send(handler, 404)

@root
def test_escape_registry_redirect_target_never_gets_the_users_credentials(busybox_layer, state):
    """The registry sends its blobs to storage on another host (as Docker
    Hub does), and that host answers with a Bearer challenge of its own:
    the user's password is the registry's, never the storage's, nor that of
    a token realm the storage names. It was sent there."""
    files, _ = registry_image(busybox_layer)
    storage = HostileServer(lambda h: send(h, 200, b'{"token": "storage"}')
                            if h.path.startswith("/token")
                            else send(h, 401, headers=[(
                                "WWW-Authenticate", 'Bearer realm="http://127.0.0.1:%d/token",'
                                'service="storage"' % storage.port)]))

    def registry_answer(handler):
        name = handler.path[len("/v2/test/x/"):]
        if name.startswith("blobs/"):
            send(handler, 307, headers=[("Location", "http://127.0.0.1:%d/%s" % (
                storage.port, name))])
        else:
            send_image_file(handler, files, name)
    registry = HostileServer(registry_answer)
    try:
        result = pull_with_credentials("127.0.0.1:%d/test/x:1" % registry.port)
        assert carried_the_password(storage.seen) == [], storage.seen
        assert result.returncode == 125 and result.err.count("\n") == 1, result.err
        assert "127.0.0.1:%d answered 401" % storage.port in result.err and \
            "credentials go to the registry only" in result.err, result.err
        assert store_leftovers(state) == []
    finally:
        registry.close()
        storage.close()
        minidocker("image", "prune", "-f")


@root
def test_escape_registry_plain_http_token_realm_on_another_host_is_refused(state):
    """A registry on this host (so plain http) names a token realm in plain
    http on a host that is not allowed plain http: the password would cross
    the network in clear. 0.0.0.0 stands for that host here: it is no
    loopback address to minidocker's check (nor to Python's ipaddress), and
    Linux connects it to this host, so the test hears what would be sent."""
    realm = HostileServer(lambda h: send(h, 200, b'{"token": "t"}'))
    registry = HostileServer(lambda h: send(h, 401, headers=[(
        "WWW-Authenticate", 'Bearer realm="http://0.0.0.0:%d/token",service="r"' % realm.port)]))
    try:
        result = pull_with_credentials("127.0.0.1:%d/test/x:1" % registry.port)
        assert carried_the_password(realm.seen) == [], realm.seen
        assert result.returncode == 125 and result.err.count("\n") == 1, result.err
        assert "the token realm 'http://0.0.0.0:%d/token' is plain http: refused" % realm.port \
            in result.err, result.err
    finally:
        registry.close()
        realm.close()


@root
def test_escape_registry_redirect_to_plain_http_drops_the_credentials(busybox_layer, state,
                                                                       tmp_path):
    """An https registry (its certificate made here, trusted through
    SSL_CERT_FILE) redirects a blob to plain http on the same host and
    port: the password, earned over TLS, would cross the network in clear.
    It was sent, as the host was the same. 0.0.0.0: a host that is not
    allowed plain http, so the registry is spoken to over https."""
    certificate, key = str(tmp_path / "registry.crt"), str(tmp_path / "registry.key")
    peer("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=0.0.0.0", "-addext", "subjectAltName=IP:0.0.0.0",
         "-keyout", key, "-out", certificate)
    files, _ = registry_image(busybox_layer)

    def answer(handler):
        name = handler.path[len("/v2/test/x/"):]
        over_tls = hasattr(handler.connection, "cipher")
        if over_tls and "Authorization" not in handler.headers:
            send(handler, 401, headers=[("WWW-Authenticate", 'Basic realm="r"')])
        elif over_tls and name.startswith("blobs/"):
            send(handler, 302, headers=[("Location", "http://0.0.0.0:%d/v2/test/x/%s" % (
                registry.port, name))])
        else:
            send_image_file(handler, files, name)
    registry = HostileServer(answer, tls=(certificate, key))
    try:
        result = pull_with_credentials("0.0.0.0:%d/test/x:1" % registry.port,
                                       env={"SSL_CERT_FILE": certificate})
        plain = [(path, headers, scheme) for path, headers, scheme in registry.seen
                 if scheme == "http"]
        assert plain, (registry.seen, result.err)  # the redirect was followed
        assert carried_the_password(plain) == [], plain
        assert result.returncode == 0, result.err
    finally:
        registry.close()
        minidocker("rmi", "-f", "0.0.0.0:%d/test/x:1" % registry.port)
        minidocker("image", "prune", "-f")


def endless(handler):
    """A body that never ends, a 64 KiB chunk every 10 ms (so that a test
    that fails writes 6 MB a second, not a disk's worth)."""
    handler.send_response(200)
    handler.send_header("Connection", "close")
    handler.end_headers()
    try:
        while True:
            handler.wfile.write(b"{" * 65536)
            time.sleep(0.01)
    except OSError:  # the client went away
        pass


def raw(data):
    def answer(handler):
        handler.wfile.write(data)
        handler.close_connection = True
    return answer


HOSTILE_REGISTRIES = [
    ("a config that never ends", {"size": None, "config": endless},
     "config: more than 4194304 bytes: refused"),
    ("a config whose size is a string", {"size": "12"},
     "config: its descriptor's size is not a number"),
    ("a manifest nested", {"manifest": DEEP_JSON},
     "manifest: not valid JSON: maximum recursion depth exceeded"),
    ("a status line that is not HTTP", {"manifest": raw(b"HELLO\r\n\r\n")},
     "BadStatusLine"),
    ("a blob cut short in chunked encoding", {"config": raw(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")},
     "IncompleteRead"),
    ("a token with a line break", {"token": b'{"token": "a\\r\\nX-Injected: 1"}'},
     "the token service granted a token that is not one"),
]


@root
@pytest.mark.parametrize("name, hostile, message", HOSTILE_REGISTRIES,
                         ids=[h[0] for h in HOSTILE_REGISTRIES])
def test_image_pull_from_a_hostile_registry_fails_in_one_line_and_bounded(
        name, hostile, message, busybox_layer, state):
    """What a registry sends is bounded, and what is wrong with it is one
    line: a config of no stated size is read to 4 MiB at most (it was read
    until the disk filled), and a size, a manifest, a response or a token
    of the wrong shape is named (they were internal errors, or a header
    sent with the token's line break in it)."""
    files, config = registry_image(busybox_layer, hostile.get("size", True))
    if "manifest" in hostile and not callable(hostile["manifest"]):
        files["manifests/1"] = hostile["manifest"]

    def answer(handler):
        name = handler.path[len("/v2/test/x/"):]
        if "token" in hostile and handler.path.startswith("/token"):
            send(handler, 200, hostile["token"])
        elif "token" in hostile and "Authorization" not in handler.headers:
            send(handler, 401, headers=[("WWW-Authenticate", 'Bearer realm="http://127.0.0.1:%d'
                                         '/token",service="r"' % registry.port)])
        elif name == "manifests/1" and callable(hostile.get("manifest")):
            hostile["manifest"](handler)
        elif name == "blobs/" + config and "config" in hostile:
            hostile["config"](handler)
        else:
            send_image_file(handler, files, name)
    registry = HostileServer(answer)
    blobs = os.path.join(image_store(state), "blobs", "sha256")
    try:
        result = minidocker("pull", "127.0.0.1:%d/test/x:1" % registry.port, timeout=30)
        assert result.returncode == 125 and result.err.count("\n") == 1, result.err
        assert message in result.err and "internal error" not in result.err, result.err
        assert all(os.path.getsize(os.path.join(blobs, n)) <= (4 << 20) + (1 << 16)
                   for n in (os.listdir(blobs) if os.path.isdir(blobs) else []))
        assert store_leftovers(state) == []
        assert [h for _, h, _ in registry.seen if "X-Injected" in h] == []
    finally:
        registry.close()
        minidocker("image", "prune", "-f")


@root
@pytest.mark.parametrize("args, message", [
    (["run", "--pull", "never", "no/such:image", "sh"], "no such image: 'no/such:image' (--pull never)"),
    (["run", "--pull", "sometimes", "x", "sh"], "invalid --pull 'sometimes'"),
    (["run", "Not_A_Ref", "sh"], "invalid image reference 'Not_A_Ref'"),
    (["pull", "UPPER/case"], "invalid image reference 'UPPER/case'"),
    (["pull", "--platform", "amd64", "x"], "invalid --platform 'amd64'"),
    (["load", "-i", "/no/such.tar"], "load -i /no/such.tar: No such file or directory"),
    (["load", "-i", "/etc/passwd"], "load /etc/passwd: not a valid tar archive"),
    (["save", "-o", "/tmp/x.tar", "no/such"], "no such image: 'no/such'"),
    (["tag", "no/such", "x"], "no such image: 'no/such'"),
    (["image", "inspect", "no/such"], "no such image: 'no/such'"),
    (["images", "--format", "table"], "invalid --format 'table'"),
    (["pull", "--username", "u", "x"], "--username needs --password-stdin"),
])
def test_bad_image_input(args, message, state):
    bad(args, message)


# ---------------------------------------------------------------------------
# root: what the process inside sees, across chapters: its namespaces,
# capabilities, user, mounts, exit code and signals, and what a run leaves
# ---------------------------------------------------------------------------

@root
def test_pid_1_hostname_and_only_loopback(rootfs):
    result = sh(rootfs, "echo $$; hostname; ls /sys/class/net; cat /sys/class/net/lo/operstate;"
                        "echo $HOSTNAME")
    pid, hostname, nets, operstate, env_host = result.out.split("\n")[:5]
    assert result.returncode == 0, result.err
    assert pid == "1" and len(hostname) == 12 and env_host == hostname
    assert nets == "lo" and operstate == "unknown"  # lo is up (it has no carrier state)
    named = sh(rootfs, "hostname", options=["--hostname", "web1"])
    assert named.out == "web1\n"


@root
def test_loopback_is_up(rootfs):
    result = sh(rootfs, "ping -c 1 -W 2 127.0.0.1 >/dev/null && echo up")
    assert result.out == "up\n", result.err


@root
def test_own_namespaces(rootfs):
    names = ("pid", "uts", "mnt", "ipc", "net", "cgroup")
    script = "for n in %s; do readlink /proc/1/ns/$n; done" % " ".join(names)
    inside = sh(rootfs, script).out.split()
    assert len(inside) == len(names), inside
    for name, value in zip(names, inside):
        assert value.startswith(name + ":[") and value != os.readlink("/proc/self/ns/" + name)
    assert sh(rootfs, "cat /proc/self/cgroup").out.strip().endswith(":/")


@root
def test_capabilities_and_no_new_privs(rootfs):
    status = sh(rootfs, "cat /proc/self/status").out
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status_field(status, field), 16) == DOCKER_DEFAULT_CAPS
    assert int(status_field(status, "CapInh"), 16) == 0
    assert int(status_field(status, "CapAmb"), 16) == 0
    assert status_field(status, "NoNewPrivs") == "0"  # as Docker: off unless asked for


@root
def test_cap_add_and_drop(rootfs):
    status = sh(rootfs, "cat /proc/self/status",
                options=["--cap-add", "SYS_ADMIN", "--cap-drop", "chown"]).out
    assert int(status_field(status, "CapEff"), 16) == DOCKER_DEFAULT_CAPS & ~1 | 1 << 21
    none = sh(rootfs, "cat /proc/self/status", options=["--cap-drop", "ALL"]).out
    assert int(status_field(none, "CapBnd"), 16) == 0
    denied = sh(rootfs, "chown 1 /tmp", options=["--cap-drop", "ALL"])
    assert denied.returncode != 0 and "Operation not permitted" in denied.err


@root
def test_privileged_gets_what_we_hold(rootfs):
    status = sh(rootfs, "cat /proc/self/status; ls /proc/self/fd", options=["--privileged"]).out
    held = md.cap_mask(md.held_capabilities())
    assert int(status_field(status, "CapEff"), 16) == held
    assert int(status_field(status, "CapBnd"), 16) == held


@root
def test_non_root_user_has_no_capabilities(rootfs):
    result = sh(rootfs, "id; cat /proc/self/status", options=["-u", "alice"])
    assert result.out.splitlines()[0] == \
        "uid=1000(alice) gid=1000(alice) groups=50(staff),1000(alice)"
    assert int(status_field(result.out, "CapEff"), 16) == 0
    assert int(status_field(result.out, "CapPrm"), 16) == 0
    assert int(status_field(result.out, "CapBnd"), 16) == DOCKER_DEFAULT_CAPS
    assert status_field(result.out, "NoNewPrivs") == "0"


@root
def test_users_by_number_and_group(rootfs):
    assert sh(rootfs, "id", options=["-u", "1000:50"]).out == \
        "uid=1000(alice) gid=50(staff) groups=50(staff)\n"
    assert sh(rootfs, "id", options=["-u", "4242"]).out == "uid=4242 gid=0(root) groups=0(root)\n"
    assert sh(rootfs, "id", options=["--group-add", "staff"]).out == \
        "uid=0(root) gid=0(root) groups=0(root),10(wheel),50(staff)\n"
    assert sh(rootfs, "echo $HOME", options=["-u", "alice"]).out == "/home/alice\n"


@root
def test_environment_and_workdir(rootfs, tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_HOST", "hello")
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\nFILE_VAR=1\nA=from-file\n")
    result = sh(rootfs, "pwd; env | sort", options=["-e", "A=from-flag", "-e", "FROM_HOST",
                                                    "--env-file", str(env_file), "-w", "/work/dir"])
    lines = result.out.splitlines()
    assert lines[0] == "/work/dir"
    assert "A=from-flag" in lines and "FILE_VAR=1" in lines and "FROM_HOST=hello" in lines
    assert "PATH=%s" % md.DEFAULT_PATH in lines and "HOME=/root" in lines


@root
def test_command_found_on_path(rootfs):
    assert run(rootfs, "echo", "found").out == "found\n"
    assert run(rootfs, "sh", "-c", "echo $0", "arg0").out == "arg0\n"


@root
def test_proc_masked_and_read_only_paths(rootfs):
    script = ("cat /proc/interrupts | wc -c; ls /sys/firmware | wc -l; cat /proc/keys | wc -c;"
              "echo x > /proc/sys/kernel/hostname && echo wrote; touch /sys/x && echo wrote;"
              "grep -c ' /proc/sys ro,' /proc/self/mountinfo")
    result = sh(rootfs, script)
    assert result.out.split() == ["0", "0", "0", "1"]
    assert "Read-only file system" in result.err
    mountinfo = sh(rootfs, "cat /proc/self/mountinfo").out
    for path in md.READONLY_PATHS + md.MASKED_PATHS:
        if os.path.exists(path):
            assert " %s " % path in mountinfo, path


@root
def test_dev_has_no_host_devices(rootfs):
    listing = sh(rootfs, "ls -A /dev").out.split()
    assert sorted(listing) == ["fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
                               "stderr", "stdin", "stdout", "tty", "urandom", "zero"]
    nodes = sh(rootfs, "stat -c '%n %F %t:%T %a' /dev/null /dev/urandom /dev/tty").out
    assert nodes.splitlines() == ["/dev/null character special file 1:3 666",
                                  "/dev/urandom character special file 1:9 666",
                                  "/dev/tty character special file 5:0 666"]
    assert sh(rootfs, "head -c 4 /dev/urandom | wc -c").out.strip() == "4"
    assert sh(rootfs, "ls /dev/pts").out.split() == ["ptmx"]
    # No host block device is handed in; nodes made or shipped in the image
    # open nothing (test_mknod_of_host_devices_opens_nothing and the rest).
    assert sh(rootfs, "ls /dev | grep -c -e sd -e vd -e nvme").out.strip() == "0"


@root
def test_rootfs_is_never_modified(rootfs):
    before = snapshot(rootfs)
    result = sh(rootfs, "echo new > /etc/passwd; rm /bin/ls; mkdir /newdir; touch /bin/x;"
                        "chmod 700 /etc; cat /etc/passwd")
    assert result.out == "new\n"
    assert snapshot(rootfs) == before


@root
def test_read_only_root_and_tmpfs(rootfs):
    result = sh(rootfs, "touch /x; touch /scratch/ok && echo ok; grep ' /scratch ' /proc/self/mountinfo",
                options=["--read-only", "--tmpfs", "/scratch:size=1m"])
    assert "touch: /x: Read-only file system" in result.err
    assert result.out.startswith("ok\n") and "nosuid,nodev,noexec" in result.out
    assert "size=1024k" in result.out


@root
def test_volumes(rootfs, tmp_path):
    host = tmp_path / "vol"
    host.mkdir()
    (host / "in").write_text("from host")
    ro = sh(rootfs, "cat /data/in; echo x > /data/new", options=["-v", "%s:/data:ro" % host])
    assert ro.out == "from host" and "Read-only file system" in ro.err
    rw = sh(rootfs, "echo written > /deep/dir/out", options=["-v", "%s:/deep/dir" % host])
    assert rw.returncode == 0 and (host / "out").read_text() == "written\n"
    one_file = sh(rootfs, "cat /etc/injected", options=["-v", "%s/in:/etc/injected:ro" % host])
    assert one_file.out == "from host"


@root
def test_exit_codes(rootfs):
    assert sh(rootfs, "exit 0").returncode == 0
    assert sh(rootfs, "exit 7").returncode == 7
    not_exec = run(rootfs, "/etc/passwd")
    assert not_exec.returncode == 126 and "Permission denied" in not_exec.err
    missing = run(rootfs, "no-such-command")
    assert missing.returncode == 127 and "executable file not found in $PATH" in missing.err
    missing_path = run(rootfs, "/no/such")
    assert missing_path.returncode == 127
    assert sh(rootfs, "kill -SEGV $$; sleep 1; exit 3").returncode == 3  # pid 1 ignores it


@root
def test_killed_container_exits_137(rootfs):
    with started(rootfs, "sleep", "60") as proc:
        init = wait_for_child(proc.pid)
        time.sleep(0.2)
        os.kill(init, signal.SIGKILL)
        assert proc.wait(timeout=60) == 137
    assert_nothing_left()


@root
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"])
def test_signals_are_forwarded(rootfs, name):
    number = getattr(signal, name)
    # A loop of builtins: the trap runs between two of them, with no child
    # process in the way.
    script = 'trap "exit %d" %s; echo ready; while :; do :; done' % (number, name[3:])
    with started(rootfs, "sh", "-c", script) as proc:
        assert proc.stdout.readline() == b"ready\n"
        os.kill(proc.pid, number)
        assert proc.wait(timeout=60) == number
    assert_nothing_left()


def as_a_background_job():
    """What a non-interactive shell's `cmd &` does to its child (SIGINT and
    SIGQUIT ignored), plus signals blocked, as a launcher may leave them."""
    for number in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGQUIT, signal.SIGTERM])


@root
def test_command_starts_with_default_signals_whoever_started_us(rootfs):
    probe = MINIDOCKER + ["run", "--network=none", "--rm", rootfs, "cat", "/proc/self/status"]
    status = subprocess.run(probe, stdout=subprocess.PIPE, timeout=60,
                            preexec_fn=as_a_background_job).stdout.decode()
    # Python ignores SIGPIPE and SIGXFSZ in minidocker itself: not inherited.
    assert status_field(status, "SigBlk") == "0000000000000000"
    assert status_field(status, "SigIgn") == "0000000000000000"
    script = 'trap "exit 2" INT; echo ready; while :; do :; done'
    command = MINIDOCKER + ["run", "--network=none", "--rm", rootfs, "sh", "-c", script]
    with subprocess.Popen(command, stdout=subprocess.PIPE, preexec_fn=as_a_background_job) as proc:
        try:
            assert proc.stdout.readline() == b"ready\n"
            os.kill(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=60) == signal.SIGINT
        finally:
            if proc.poll() is None:
                proc.kill()
    assert_nothing_left()


@root
def test_stdin_with_and_without_i(rootfs):
    streamed = subprocess.run(MINIDOCKER + ["run", "--network=none", "--rm", "-i", rootfs, "cat"],
                              input=b"hello\n", stdout=subprocess.PIPE, timeout=30)
    assert streamed.stdout == b"hello\n"
    closed = subprocess.run(MINIDOCKER + ["run", "--network=none", "--rm", rootfs, "cat"],
                            input=b"hello\n", stdout=subprocess.PIPE, timeout=30)
    assert closed.stdout == b"" and closed.returncode == 0


@root
def test_rm_leaves_no_mount(rootfs):
    with open("/proc/self/mountinfo") as handle:
        before = handle.read()
    assert sh(rootfs, "mount | wc -l").returncode == 0
    with open("/proc/self/mountinfo") as handle:
        assert handle.read() == before


@root
def test_without_rm_the_layer_stays_until_rm(rootfs, state):
    result = subprocess.run(MINIDOCKER + ["run", "--network=none", rootfs, "sh", "-c", "echo kept > /kept"],
                            stdin=subprocess.DEVNULL, timeout=30)
    assert result.returncode == 0
    records = os.listdir(os.path.join(state, "run/containers"))
    assert len(records) == 1
    cid = records[0][:-5]
    assert open(os.path.join(state, "lib/containers", cid, "upper/kept")).read() == "kept\n"
    listing = subprocess.run(MINIDOCKER + ["ps", "-a"], stdout=subprocess.PIPE).stdout.decode()
    assert re.search(r"^%s .* Exited \(0\) " % cid[:12], listing, re.M), listing
    removed = subprocess.run(MINIDOCKER + ["rm", cid[:8]], stdout=subprocess.PIPE)
    assert removed.returncode == 0 and removed.stdout.decode() == cid[:12] + "\n"
    assert_nothing_left()


@root
def test_kill_9_of_minidocker_is_reclaimed(rootfs):
    with started(rootfs, "sleep", "60") as proc:
        init = wait_for_child(proc.pid)
        time.sleep(0.3)
        proc.kill()
    deadline = time.monotonic() + 10
    while os.path.exists("/proc/%d" % init) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists("/proc/%d" % init), "the container outlived minidocker"
    assert sh(rootfs, "true", check_clean=False).returncode == 0  # a later run reclaims
    assert_nothing_left()


# ---------------------------------------------------------------------------
# 11. root: the terminal
# ---------------------------------------------------------------------------

class Terminal:
    """minidocker on a pty of the test's own, as a user's shell would run it."""

    def __init__(self, argv, rows=40, cols=100):
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.saved = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen(argv, stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, start_new_session=True)
        self.output = b""

    def read_until(self, needle, timeout=10):
        deadline = time.monotonic() + timeout
        while needle.encode() not in self.output and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:
                    break
        assert needle.encode() in self.output, self.output
        found = self.output
        self.output = b""
        return found.decode(errors="replace")

    def send(self, text):
        os.write(self.master, text.encode())

    def close(self):
        os.close(self.master)
        os.close(self.slave)


@root
@pytest.mark.parametrize("init", [[], ["--init"]])
def test_terminal_interactive_shell(rootfs, init):
    """-it by itself on a terminal; with --init the shell, a child of the
    reaper, is given the terminal's foreground: job control and ^C work the
    same."""
    term = Terminal(MINIDOCKER + ["run", "--network=none", "--rm"] + init + [rootfs, "/bin/sh"])
    try:
        term.read_until("# ")
        term.send("tty; stty size; echo $TERM\n")
        out = term.read_until("xterm")
        assert "/dev/pts/0" in out and "40 100" in out
        assert termios.tcgetattr(term.slave)[3] & termios.ICANON == 0  # raw while running
        fcntl.ioctl(term.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        os.kill(term.proc.pid, signal.SIGWINCH)
        time.sleep(0.2)
        term.send("stty size\n")
        assert "30 120" in term.read_until("30 120")
        term.send("sleep 30; echo slept\n")
        time.sleep(0.5)
        term.send("\x03")  # ctrl-C: reaches the shell's foreground job, not minidocker
        term.send("echo after-$((6*7))\n")
        out = term.read_until("after-42")
        assert "\nslept" not in out and term.proc.poll() is None  # the echo of the line aside
        term.send("exit 3\n")
        assert term.proc.wait(timeout=20) == 3
        assert termios.tcgetattr(term.slave) == term.saved  # restored
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()
        term.close()
    assert_nothing_left()


@root
def test_terminal_console_and_job_control(rootfs):
    term = Terminal(MINIDOCKER + ["run", "--network=none", "--rm", "-it", rootfs, "/bin/sh"])
    try:
        out = term.read_until("# ")
        assert "job control turned off" not in out
        term.send("stat -c '%t' /dev/console; sleep 30 &\n")
        assert "88" in term.read_until("# ")  # 0x88 = 136, the pty slaves' major
        term.send("jobs\n")
        assert "Running" in term.read_until("sleep 30")
        term.send("kill %1; wait; echo done-$((1+1))\n")
        term.read_until("done-2")
        term.send("exit\n")
        assert term.proc.wait(timeout=20) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()
        term.close()


# ---------------------------------------------------------------------------
# root: bad input, each a clear error, exit 125 and nothing left behind
# ---------------------------------------------------------------------------

def bad(args, message, code=125):
    if args[:1] == ["run"] and not any(a.startswith(("--network", "--net=")) for a in args):
        args = ["run", "--network=none"] + args[1:]  # the host's own network stays untouched
    result = subprocess.run(MINIDOCKER + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=60)
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert err.startswith("minidocker: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err
    if IS_ROOT:
        assert_nothing_left()
    return err


@root
@pytest.mark.parametrize("args, message", [
    (["run", "/no/such/rootfs", "sh"], "rootfs /no/such/rootfs: no such directory"),
    (["run", "/etc/passwd", "sh"], "rootfs /etc/passwd: not a directory"),
    (["run", "--bogus", "/", "sh"], "run: unknown flag: --bogus"),
    (["run", "-v", "/a:/b:/c:/d", "/", "sh"], "invalid volume '/a:/b:/c:/d'"),
    (["run", "--cap-add", "CAP_NOPE", "/", "sh"], "unknown capability: CAP_NOPE"),
    (["run", "-w", "relative", "/", "sh"], "workdir 'relative' must be an absolute path"),
    (["run", "--env-file", "/no/such/file", "/", "sh"], "--env-file /no/such/file"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["run", "--device", "/etc/passwd", "/", "sh"], "/etc/passwd is not a device node"),
    (["run", "--device", "/dev/null:/tmp/null", "/", "sh"], "the container path must be in /dev"),
    (["run", "--device", "/dev/null:/dev/n:x", "/", "sh"], "permissions 'x' are not a set"),
    (["run", "-d", "--rm", "--restart", "always", "/", "sh"],
     "--restart always and --rm conflict"),
    (["run", "--rm", "--restart", "on-failure:2", "/", "sh"],
     "--restart on-failure:2 and --rm conflict"),
    (["run", "-t", "--restart", "always", "/", "sh"], "-i and -t need --restart no"),
    (["run", "--restart", "always", "--log-driver", "none", "/", "sh"],
     "--log-driver none keeps none"),
    (["run", "-d", "--restart", "always:2", "/", "sh"], "a maximum retry count goes only with"),
    (["start", "nosuch"], "no such container: nosuch"),
    (["start", "-a", "one", "two"], "start -a takes one container"),
    (["restart", "nosuch"], "no such container: nosuch"),
])
def test_bad_flags(args, message, state):
    bad(args, message)


@root
def test_bad_input_needing_the_rootfs(rootfs, state):
    bad(["run", rootfs], "no command given")
    bad(["run", "-u", "bob", rootfs, "id"], "unable to find user bob")
    bad(["run", "-u", "alice:nogroup2", rootfs, "id"], "unable to find group nogroup2")
    bad(["rm", "abcdef"], "no such container: abcdef")


@pytest.fixture
def hostile(rootfs, tmp_path):
    """A copy of the rootfs to booby-trap."""
    path = str(tmp_path / "hostile")
    subprocess.run(["cp", "-a", rootfs, path], check=True)
    return path


@root
@pytest.mark.parametrize("where, target", [("proc", "/etc"), ("dev", "/"), ("sys", "/..")])
def test_symlink_traps_are_refused(hostile, tmp_path, where, target):
    shutil.rmtree(os.path.join(hostile, where))
    os.symlink(target, os.path.join(hostile, where))
    err = bad(["run", "--rm", hostile, "true"],
              "/%s is a symlink (to %s): refusing to follow it" % (where, target))
    assert "mounted only on a real directory" in err


@root
def test_symlinks_never_lead_out_of_the_rootfs(hostile, tmp_path):
    escape = tmp_path / "escape"
    escape.mkdir()
    os.symlink("../../../../../../../../" + str(escape).lstrip("/"),
               os.path.join(hostile, "data"))
    os.symlink(str(escape), os.path.join(hostile, "work"))
    host = tmp_path / "vol"
    host.mkdir()
    result = sh(hostile, "ls /; echo ok > /data/vol/seen",
                options=["-v", "%s:/data/vol" % host, "-w", "/work/here", "--tmpfs", "/data/t"])
    assert result.returncode == 0, result.err
    assert os.listdir(str(escape)) == []  # nothing was made or mounted outside
    assert (host / "seen").read_text() == "ok\n"


@root
def test_mkrootfs_from_host_tools_without_busybox(tmp_path, state):
    path = str(tmp_path / "hosttools")
    made = subprocess.run(MINIDOCKER + ["mkrootfs", "--no-busybox", path],
                          stdout=subprocess.PIPE, check=True).stdout.decode()
    assert "host tools:" in made and " ls " in made
    assert not os.path.exists(os.path.join(path, "bin/busybox"))
    result = sh(path, "ls /bin | wc -l; id -u; cat /etc/passwd | head -n 1; readlink /proc/1/exe")
    assert result.returncode == 0, result.err
    lines = result.out.splitlines()
    assert int(lines[0]) >= 10 and lines[1] == "0" and lines[2].startswith("root:x:0:0")
    assert lines[3] == "/bin/sh"
    bad(["mkrootfs", path], "exists and is not an empty directory")


def test_a_host_that_forbids_users_user_namespaces_is_named(monkeypatch):
    """Where the kernel refuses users a user namespace, a user's run says
    which setting does, and how to allow it."""
    for path, value, hint in [
            ("/proc/sys/kernel/unprivileged_userns_clone", "0",
             "sysctl kernel.unprivileged_userns_clone=1"),
            ("/proc/sys/user/max_user_namespaces", "0", "sysctl user.max_user_namespaces="),
            ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", "AppArmor")]:
        monkeypatch.setattr(md, "read_text", lambda name, path=path, value=value:
                            value + "\n" if name == path else "1\n" if "userns_clone" in name
                            else "15000\n" if "max_user" in name else "0\n")
        with pytest.raises(md.MiniDockerError) as raised:
            md.check_rootless_host()
        assert str(raised.value).startswith("rootless: this host forbids users user namespaces "
                                            "(%s is %s): run as root, or ask for " % (path, value))
        assert hint in str(raised.value)


# ---------------------------------------------------------------------------
# root: escapes through what the caller or the image hands the container.
# Each test performs the attack and fails if it works.
# ---------------------------------------------------------------------------

@root
def test_escape_inherited_directory_fd_is_closed(rootfs, tmp_path):
    # `( exec 7</ ; minidocker run ... cat /proc/self/fd/7/etc/shadow )`
    secret = tmp_path / "host-secret"
    secret.write_text("host only\n")
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, True)
    try:
        def with_fd(*argv):
            return subprocess.run(MINIDOCKER + ["run", "--network=none", "--rm"] + list(argv),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, pass_fds=(fd,), timeout=60)
        script = "cat /proc/self/fd/%d/host-secret; ls /proc/self/fd" % fd
        result = with_fd(rootfs, "sh", "-c", script)
        assert b"host only" not in result.stdout
        assert result.stdout.split() == [b"0", b"1", b"2", b"3"]  # 3: ls's own directory
        # runc's CVE-2024-21626: the working directory through the leaked fd.
        result = with_fd("-w", "/proc/self/fd/%d" % fd, rootfs, "cat", "host-secret")
        assert b"host only" not in result.stdout
        assert result.returncode == 125, result.stderr
        assert result.stderr.decode().startswith("minidocker: error: workdir /proc/self/fd/")
    finally:
        os.close(fd)
    assert_nothing_left()


@root
def test_escape_through_the_callers_terminal(rootfs, probe):
    """Without -t the container must not have the caller's terminal as its
    controlling terminal: not readable as /dev/tty, and no TIOCSTI into it
    (with seccomp off, so the kernel's answer is what counts)."""
    master, slave = os.openpty()

    def session_on_the_pty():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    script = ("(exec 3</dev/tty) 2>/dev/null && echo tty-opened || echo tty-refused; "
              "/probe/probe tiocsti 0x5412")
    proc = subprocess.Popen(MINIDOCKER + ["run", "--network=none", "--rm", "-i"] + probe + [
        "--security-opt", "seccomp=unconfined", rootfs, "sh", "-c", script],
        stdin=slave, stdout=slave, stderr=slave, preexec_fn=session_on_the_pty)
    output = b""
    try:
        assert proc.wait(timeout=60) == 0
        while select.select([master], [], [], 0.2)[0]:
            output += os.read(master, 65536)
        injected = select.select([slave], [], [], 0)[0] and os.read(slave, 100)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    assert b"tty-refused" in output, output
    assert b"ret -1 errno %d" % errno.EPERM in output, output  # not its controlling terminal
    assert not injected
    assert_nothing_left()


@root
def test_escape_pid_1_leads_a_session_of_its_own(rootfs):
    """The container's processes are in a session that its pid 1 leads, so
    the caller's terminal is no controlling terminal in there (the attack
    itself is test_escape_through_the_callers_terminal). Seen through the
    pid namespace, a session led outside the container has the id 0."""
    sid = sh(rootfs, "cut -d' ' -f6 /proc/self/stat; cut -d' ' -f6 /proc/1/stat").out.split()
    assert sid == ["1", "1"]


@root
@pytest.mark.parametrize("trap", ["zero", "fifo", "big", "device"])
def test_escape_hostile_passwd_fails_fast(hostile, trap):
    passwd = os.path.join(hostile, "etc/passwd")
    os.unlink(passwd)
    if trap == "zero":
        os.symlink("/dev/zero", passwd)  # endless: grew minidocker to 24 GB
    elif trap == "fifo":
        os.mkfifo(passwd)  # hung `run`, and SIGTERM did nothing
    elif trap == "big":
        with open(passwd, "w") as handle:
            handle.truncate((md.ACCOUNT_FILE_LIMIT) + 1)
    else:
        os.symlink("/dev/null", passwd)
    start = time.monotonic()
    message = "is larger than 4 MiB" if trap == "big" else "is not a regular file"
    bad(["run", "--rm", hostile, "true"], "/etc/passwd in the image " + message)
    assert time.monotonic() - start < 20


@root
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_start_up_stays_killable(rootfs, name):
    """A start that does not finish (here the child is stopped mid-way, as
    a hostile image's FIFO once held it) still ends on SIGTERM or SIGINT,
    with one line and nothing left."""
    number = getattr(signal, name)
    for _ in range(20):
        proc = start(rootfs, "sleep", "30")
        try:
            child = wait_for_child(proc.pid, pause=0)
            os.kill(child, signal.SIGSTOP)
            stage = md.read_text("/proc/%d/comm" % child)
            if stage.startswith("md:"):  # caught before its execve
                os.kill(proc.pid, number)
                assert proc.wait(timeout=20) == 128 + number
                err = proc.stderr.read().decode()
                assert err == ("minidocker: error: start-up interrupted by %s: the container "
                               "did not start\n" % name)
                break
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    else:
        raise AssertionError("never caught the container before its execve")
    assert_nothing_left()


@root
def test_scratch_image_runs_as_root_without_passwd(rootfs, tmp_path):
    scratch = tmp_path / "scratch"
    (scratch / "bin").mkdir(parents=True)
    shutil.copy(os.path.realpath(shutil.which("busybox")), str(scratch / "bin/busybox"))
    result = run(str(scratch), "/bin/busybox", "id")
    assert result.returncode == 0, result.err
    assert result.out.startswith("uid=0 gid=0")
    bad(["run", "--rm", "-u", "root", str(scratch), "/bin/busybox", "true"],
        "unable to find user root")


@root
def test_escape_review_deep_layer_does_not_wedge_minidocker(rootfs):
    """1,200 nested directories in a layer: shutil.rmtree's recursion gave
    up, the run lost its exit code, and every later command failed."""
    import resource
    deep = "cd /tmp; i=0; while [ $i -lt 1200 ]; do mkdir d; cd d; i=$((i+1)); done; exit 3"
    # Deeper than a common open-file limit too: one handle per level would
    # run out (EMFILE) where the recursion no longer does.
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, limits[1]))
    try:
        result = sh(rootfs, deep)
        assert result.returncode == 3 and result.err == "", result.err
        kept = minidocker("run", "--network=none", rootfs, "sh", "-c", deep)
        assert kept.returncode == 3, kept.err
        (record,) = records_now()
        assert minidocker("ps", "-a").returncode == 0
        removed = minidocker("rm", record["id"])
        assert removed.returncode == 0 and removed.err == "", removed.err
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    assert_nothing_left()


@root
def test_escape_review_passwd_lines_and_proc_files(hostile):
    with open(os.path.join(hostile, "etc/passwd"), "a") as handle:
        handle.write("big:x:99999999999:0::/:/bin/sh\nmax:x:4294967295:0::/:/bin/sh\n"
                     "nul:x:7:7::/ho\0me:/bin/sh\n")
    for name in ("big", "max", "nul"):
        bad(["run", "--rm", "-u", name, hostile, "true"], "unable to find user " + name)
    os.unlink(os.path.join(hostile, "etc/passwd"))
    os.symlink("/proc/kmsg", os.path.join(hostile, "etc/passwd"))  # the host's kernel log
    result = sh(hostile, "id -u")
    assert (result.returncode, result.out) == (0, "0\n"), result.err  # read as empty


@root
def test_escape_review_cap_last_cap_is_the_hosts(hostile, tmp_path):
    """The image points /data at /proc/sys, and a volume at /data then
    hides the real cap_last_cap: the bounding set must be dropped all the
    same."""
    os.symlink("/proc/sys", os.path.join(hostile, "data"))
    fake = tmp_path / "fakesys"
    (fake / "kernel").mkdir(parents=True)
    (fake / "kernel/cap_last_cap").write_text("-1\n")
    result = sh(hostile, "grep CapBnd /proc/self/status", options=["-v", "%s:/data" % fake])
    assert result.returncode == 0, result.err
    assert int(status_field(result.out, "CapBnd"), 16) == DOCKER_DEFAULT_CAPS


@root
def test_escape_review_flag_files_that_never_end(rootfs, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    for flag in ("--env-file", "--security-opt"):
        for path in (str(fifo), "/dev/zero"):
            value = path if flag == "--env-file" else "seccomp=" + path
            start = time.monotonic()
            bad(["run", "--rm", flag, value, rootfs, "true"], "is not a regular file")
            assert time.monotonic() - start < 20


@root
def test_escape_review_mkrootfs_refuses_a_destination_others_control(tmp_path, state):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(str(shared), 0o1777)
    os.chmod(str(tmp_path), 0o755)
    theirs = shared / "theirs"
    theirs.mkdir()
    os.chown(str(theirs), 1000, 1000)
    bad(["mkrootfs", str(theirs)], "is owned by uid 1000")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(str(open_dir), 0o777)
    bad(["mkrootfs", str(open_dir / "rootfs")], "is writable by others")
    os.symlink(str(tmp_path / "elsewhere"), str(shared / "link"))
    bad(["mkrootfs", str(shared / "link")], "a symlink")
    # A path through another user's directory, or through their symlink,
    # even when it ends in a directory that is root's: they could point it
    # elsewhere between the check and the writes.
    safe = tmp_path / "safe"
    safe.mkdir()
    att = tmp_path / "att"
    att.mkdir()
    os.symlink(str(safe), str(att / "link"))
    os.chown(str(att), 1000, 1000)
    bad(["mkrootfs", str(att / "link" / "rootfs")], "att is owned by uid 1000")
    os.symlink(str(safe), str(shared / "theirlink"))
    os.lchown(str(shared / "theirlink"), 1000, 1000)
    bad(["mkrootfs", str(shared / "theirlink" / "rootfs")], "a symlink owned by uid 1000")
    assert os.listdir(str(safe)) == []
    os.symlink(str(safe), str(tmp_path / "rootlink"))  # root's own symlink: fine
    made = minidocker("mkrootfs", str(tmp_path / "rootlink" / "rootfs"))
    assert made.returncode == 0, made.err
    made = minidocker("mkrootfs", str(shared / "mine"))  # sticky: others cannot swap it
    assert made.returncode == 0, made.err


def host_user(uid=1000):
    """preexec_fn: become a plain local user of the host."""
    def drop():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return drop


@root
def test_escape_setuid_file_in_a_layer_is_out_of_local_users_reach(rootfs):
    """Docker's CVE-2021-41091: a container writes a setuid-root shell into
    its layer; a local user of the host runs it from the state directory."""
    top = tempfile.mkdtemp(prefix="md-state-", dir="/tmp")  # reachable by any user
    os.chmod(top, 0o755)
    env = dict(os.environ, MINIDOCKER_ROOT=top)
    try:
        made = subprocess.run(MINIDOCKER + ["run", "--network=none", rootfs, "sh", "-c",
                                            "cp /bin/busybox /rootme && chmod 4755 /rootme"],
                              env=env, stdin=subprocess.DEVNULL, timeout=60)
        assert made.returncode == 0
        (cid,) = os.listdir(os.path.join(top, "lib/containers"))
        rootme = os.path.join(top, "lib/containers", cid, "upper/rootme")
        assert os.stat(rootme).st_mode & stat.S_ISUID  # the payload is there
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        attempt = subprocess.run([python, "-c", "import os, sys; os.execv(sys.argv[1], "
                                  "[sys.argv[1], 'id', '-u'])", rootme], cwd="/",
                                 preexec_fn=host_user(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, timeout=30)
        assert attempt.stdout != b"0\n"
        assert b"PermissionError" in attempt.stderr
        for sub in ("lib", "lib/containers", "run", "run/containers"):
            assert stat.S_IMODE(os.stat(os.path.join(top, sub)).st_mode) == 0o700, sub
        assert subprocess.run(MINIDOCKER + ["rm", cid], env=env,
                              stdout=subprocess.DEVNULL).returncode == 0
    finally:
        shutil.rmtree(top)


@root
def test_escape_read_only_volume_is_read_only_all_the_way_down(rootfs, tmp_path):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(source / "sub")], check=True)
    try:
        result = sh(rootfs, "touch /v/top; touch /v/sub/below; ls /v /v/sub",
                    options=["-v", "%s:/v:ro" % source])
        assert os.listdir(str(source / "sub")) == [], "a submount of a :ro volume was written"
        assert os.listdir(str(source)) == ["sub"]
        assert result.err.count("Read-only file system") == 2, result.err
    finally:
        subprocess.run(["umount", str(source / "sub")], check=True)


def test_submounts_from_mountinfo():
    text = ("36 35 98:0 /mnt1 /mnt/v rw,noatime master:1 - ext3 /dev/root rw\n"
            "37 36 0:5 / /mnt/v/a\\040b rw,nosuid,nodev - tmpfs t rw\n"
            "38 37 0:6 / /mnt/v/a\\040b/c ro,noexec - tmpfs t rw\n"
            "39 35 0:7 / /mnt/vx rw - tmpfs t rw\n")
    assert md.submounts(text, "/mnt/v") == [("/mnt/v/a b", md.MS_NOSUID | md.MS_NODEV),
                                            ("/mnt/v/a b/c", md.MS_NOEXEC)]


@root
@pytest.mark.parametrize("args, message", [
    (["-u", "99999999999"], "invalid --user '99999999999'"),
    (["-u", "4294967295"], "invalid --user '4294967295'"),
    (["-u", "0:99999999999"], "invalid --user '0:99999999999'"),
    (["-u", "a:b:c"], "invalid --user 'a:b:c'"),
    (["--group-add", "99999999999"], "invalid --group-add '99999999999'"),
    (["--hostname", "bad\nname"], "invalid --hostname 'bad\\nname'"),
    (["--hostname", "\udcff"], "invalid --hostname"),
    (["--hostname", "x" * 65], "invalid --hostname 'xxxx"),
    (["--cgroup-parent", "../../x"], "invalid --cgroup-parent '../../x'"),
    (["--cgroup-parent", "a/../.."], "invalid --cgroup-parent"),
    (["--cgroup-parent", "cgroup.procs"], "cgroup: cannot make "),
    (["--userns", "auto", "--privileged"], "--privileged and a user namespace conflict"),
    (["--uidmap", "0:100000:10", "--pid", "host"], "--pid host and a user namespace conflict"),
    (["--userns", "auto", "--ipc", "host"], "--ipc host and a user namespace conflict"),
    (["--userns", "nomap"], "invalid --userns 'nomap'"),
    (["--gidmap", "0:1:2:3"], "invalid --gidmap '0:1:2:3'"),
])
def test_bad_identity_and_names(rootfs, args, message):
    bad(["run", "--rm"] + args + [rootfs, "true"], message)


@root
def test_bad_env_files_and_profiles(rootfs, tmp_path):
    latin1 = tmp_path / "latin1.env"
    latin1.write_bytes(b"NAME=caf\xe9\n")
    bad(["run", "--rm", "--env-file", str(latin1), rootfs, "true"],
        "not UTF-8 text (byte 0xe9 at offset 8)")
    nul = tmp_path / "nul.env"
    nul.write_bytes(b"A=x\x00y\n")
    bad(["run", "--rm", "--env-file", str(nul), rootfs, "true"], "invalid environment variable")
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100000 + "]" * 100000)
    bad(["run", "--rm", "--security-opt", "seccomp=%s" % nested, rootfs, "true"],
        "nested too deeply")
    bad(["run", "--rm", "--add-host", "evil\nhost:1.2.3.4", rootfs, "true"],
        "invalid --add-host name 'evil\\nhost'")


# ---------------------------------------------------------------------------
# root: faults and load. Each test reproduces what a user's scripts did and
# is bounded in time and count.
# ---------------------------------------------------------------------------

def minidocker(*args, env=None, timeout=60, **kw):
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    result = subprocess.run(MINIDOCKER + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, timeout=timeout, **kw)
    result.out, result.err = result.stdout.decode(), result.stderr.decode()
    return result


def records_now():
    return md.read_records(md.Paths())


@root
def test_fault_concurrent_reclaim_after_a_crash(rootfs):
    """25 containers (without --rm) whose minidockers were killed, then 40
    concurrent runs and 20 concurrent ps: every one succeeds."""
    procs = [subprocess.Popen(MINIDOCKER + ["run", "--network=none", rootfs, "sleep", "60"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(25)]
    try:
        deadline = time.monotonic() + 60
        while sum(r["status"] == "running" for r in records_now()) < 25:
            assert time.monotonic() < deadline, "the 25 containers did not all start"
            time.sleep(0.1)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    runs = [subprocess.Popen(MINIDOCKER + ["run", "--network=none", "--rm", rootfs, "true"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for _ in range(40)]
    lists = [subprocess.Popen(MINIDOCKER + ["ps", "-a"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(20)]
    failures = []
    for proc in runs + lists:
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or err:
            failures.append((proc.args[2], proc.returncode, err.decode()))
    assert failures == []
    dead = records_now()
    assert len(dead) == 25 and all(r["status"] == "exited" for r in dead)
    assert minidocker("rm", *[r["id"] for r in dead]).returncode == 0
    assert os.listdir(md.Paths().records) == []  # no temporaries either
    assert_nothing_left()


@root
def test_fault_full_state_filesystem(rootfs, tmp_path):
    """A container that fills the disk holding the state: its own exit code
    still comes back, and ps -a, rm and rm -f keep working."""
    top = tmp_path / "small"
    top.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(top)], check=True)
    env = dict(os.environ, MINIDOCKER_ROOT=str(top))
    try:
        filled = minidocker("run", "--network=none", rootfs, "sh", "-c",
                            "dd if=/dev/zero of=/fill bs=64k 2>/dev/null; exit 3", env=env)
        assert filled.returncode == 3, filled.err
        # The record keeps no exit code (and, if the disk filled up before
        # it was written, not that the command ran either): warnings only.
        warnings = filled.err.splitlines()
        assert 1 <= len(warnings) <= 2 and all(w.startswith("minidocker: warning: ")
                                               for w in warnings), filled.err
        listing = minidocker("ps", "-a", env=env)
        assert listing.returncode == 0 and listing.err == "", listing.err
        (line,) = listing.out.splitlines()[1:]
        # Created: the disk filled before the record could say it ran.
        assert (" Exited (?) " in line) != (" Created " in line) \
            and (" Created " in line) == (len(warnings) == 2), (line, warnings)
        second = minidocker("run", "--network=none", "--rm", rootfs, "true", env=env)
        assert second.returncode == 125 and second.err.count("\n") == 1, second.err
        assert "No space left on device" in second.err
        removed = minidocker("rm", "-f", line.split()[0], env=env)
        assert removed.returncode == 0, removed.err
        assert os.listdir(str(top / "run/containers")) == []
        assert os.listdir(str(top / "lib/containers")) == []
    finally:
        subprocess.run(["umount", str(top)], check=True)
    assert_nothing_left()


@root
def test_fault_closed_standard_descriptors(rootfs):
    def close(*fds):
        return lambda: [os.close(fd) for fd in fds]
    for fds in ((0,), (0, 1), (0, 1, 2)):
        proc = subprocess.run(MINIDOCKER + ["run", "--network=none", "--rm", rootfs, "sh", "-c",
                                            "exit 3"], preexec_fn=close(*fds), timeout=60)
        assert proc.returncode == 3, fds
    empty = subprocess.run(MINIDOCKER + ["run", "--network=none", "--rm", "-i", rootfs, "cat"],
                           preexec_fn=close(0), stdout=subprocess.PIPE, timeout=60)
    assert (empty.returncode, empty.stdout) == (0, b"")
    assert_nothing_left()


@root
def test_fault_signal_flood_while_the_container_exits(rootfs):
    for _ in range(6):
        proc = subprocess.Popen(MINIDOCKER + ["run", "--network=none", "--rm", rootfs, "sh", "-c",
                                              "sleep 0.5; exit 7"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            # From minidocker's first line on (before it, the interpreter
            # itself is starting, and SIGUSR1 would end any program). Until
            # it is reaped a pid cannot be reused: wait() comes after.
            wait_for_first_line(proc)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                for _ in range(1000):
                    os.kill(proc.pid, signal.SIGUSR1)
            assert proc.wait(timeout=30) == 7
            assert proc.stderr.read() == b""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    assert_nothing_left()


def wait_for_first_line(proc, timeout=10):
    """Until minidocker has run its first line (the signal mask)."""
    deadline = time.monotonic() + timeout
    while True:
        text = md.read_text("/proc/%d/status" % proc.pid)
        if text and int(status_field(text, "SigBlk"), 16) & (1 << (signal.SIGTERM - 1)):
            return
        assert proc.poll() is None and time.monotonic() < deadline, "no signal mask seen"
        time.sleep(0.001)


def start_up_seconds(rootfs):
    """How long a `run` takes from minidocker's first line to the command's
    first output: the median of three runs of `echo`."""
    times = []
    for _ in range(3):
        proc = subprocess.Popen(MINIDOCKER + ["run", "--network=none", "--rm", rootfs, "echo",
                                              "up"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            wait_for_first_line(proc)
            begun = time.monotonic()
            assert proc.stdout.readline() == b"up\n"
            times.append(time.monotonic() - begun)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    return sorted(times)[1]


@root
def test_fault_signals_at_random_moments_of_start_up(rootfs):
    """SIGINT or SIGTERM at a random moment from minidocker's first line to
    well past the command's start: either the command ran (sleep, as pid 1,
    ignores the signal: exit 0), or the start-up ended with one line and
    128 + the signal; nothing is left either way. Both outcomes must be
    seen: the moments are drawn over three times the start-up measured
    here, so they fall before and after the command's start, and a
    minidocker that could not be interrupted while starting, or that ended
    on a signal meant for a running command, fails."""
    import random
    rng = random.Random(7)
    window = 3 * start_up_seconds(rootfs)
    outcomes = set()
    for index in range(30):
        number = (signal.SIGINT, signal.SIGTERM)[index % 2]
        proc = subprocess.Popen(MINIDOCKER + ["run", "--network=none", "--rm", rootfs, "sleep",
                                              "0.3"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_first_line(proc)
            time.sleep(rng.uniform(0, window))
            os.kill(proc.pid, number)
            code = proc.wait(timeout=30)
            err = proc.stderr.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        if code == 0:
            assert err == ""
        else:
            assert code == 128 + number and err.count("\n") == 1, err
            assert err.startswith(("minidocker: error: start-up interrupted by ",
                                   "minidocker: error: interrupted by ")), err
        outcomes.add("ran" if code == 0 else "interrupted")
        assert_nothing_left()
    assert outcomes == {"ran", "interrupted"}, (outcomes, window)


@root
def test_fault_killed_minidocker_not_yet_reaped_owns_nothing(rootfs):
    proc = subprocess.Popen(MINIDOCKER + ["run", "--network=none", rootfs, "sleep", "60"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        record = running_record()
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not md.read_text("/proc/%d/stat" % proc.pid).split(") ")[-1].startswith("Z"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        listing = minidocker("ps", "-a", "--format", "{{.ID}} {{.Status}}")  # while a zombie
        assert listing.out == "%s Exited (?)\n" % record["id"][:12], listing.out
        assert record["cgroups"] and not any(os.path.exists(path) for path in record["cgroups"])
    finally:
        proc.wait()
    assert minidocker("rm", record["id"]).returncode == 0
    assert_nothing_left()


@root
def test_fault_killed_during_start_up_shows_created(rootfs):
    for _ in range(20):
        proc = subprocess.Popen(MINIDOCKER + ["run", "--network=none", rootfs, "sleep", "60"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        child = wait_for_child(proc.pid, pause=0)
        os.kill(child, signal.SIGSTOP)
        caught = md.read_text("/proc/%d/comm" % child).startswith("md:")
        proc.kill()
        proc.wait()
        listing = minidocker("ps", "-a", "--format", "{{.ID}} {{.State}}").out.splitlines()
        assert len(listing) == 1
        assert minidocker("rm", listing[0].split()[0]).returncode == 0
        if caught:
            assert listing[0].split()[1] == "created", listing
            break
    else:
        raise AssertionError("never caught the container before its execve")
    assert_nothing_left()


MALFORMED_RECORDS = [b"", b"[]", b"{}", b"null", b"42", b"\xff\xfe", b"{" * 5000,
                     b'{"id": "x"}', b"[" * 100000, b'{"id": 7}',
                     json.dumps({"id": "bad10", "status": "running", "rootfs": "/",
                                 "cgroups": [], "command": [], "remove": False, "pid": 1,
                                 "owner": "one", "created": 0}).encode(),
                     json.dumps({"id": "someone-else", "status": "running", "rootfs": "/",
                                 "cgroups": [], "command": [], "remove": False, "pid": 1,
                                 "owner": 1, "owner_start": 0, "created": 0}).encode(),
                     b'{"id": "bad12", "status": null}', b'"text"', b"{\"id\": \"bad14\",",
                     b"\x00" * 100, b'{"id": "bad16", "cgroups": "/sys"}', b"true",
                     b'{"id": "bad18", "command": "sh"}', b"[{}]"]


@root
def test_fault_malformed_records_are_skipped_and_removable(rootfs):
    paths = md.Paths()
    os.makedirs(paths.records, exist_ok=True)
    names = ["bad%02d" % index for index in range(len(MALFORMED_RECORDS))]
    for name, content in zip(names, MALFORMED_RECORDS):
        with open(paths.record(name), "wb") as handle:
            handle.write(content)
    assert len(names) == 20
    listing = minidocker("ps", "-a")
    assert listing.returncode == 0 and "Traceback" not in listing.err
    assert listing.err.count("is not a valid container record") == 20, listing.err
    assert run(rootfs, "true", check_clean=False).returncode == 0
    assert minidocker("rm", "bad01").returncode == 125  # without -f: no such container
    for name in names:
        removed = minidocker("rm", "-f", name)
        assert removed.returncode == 0, removed.err
    assert os.listdir(paths.records) == []
    assert_nothing_left()


@root
def test_fault_records_that_look_right_but_are_not(rootfs, state):
    """Records a careless script (or an attacker with root) could leave:
    an id of "..", which made the layer's path lib/ itself, and parts of the
    wrong type or that name another's cgroup. Each is skipped, and nothing
    else is touched."""
    paths = md.Paths()
    os.makedirs(paths.records, exist_ok=True)
    keep = os.path.join(paths.containers, "f" * 64)
    os.makedirs(keep)  # a layer that must survive
    good = {"status": "running", "rootfs": "/", "cgroups": [], "command": ["true"],
            "remove": True, "pid": 1, "owner": 999999, "owner_start": 1, "created": 0}
    cid = "e" * 64
    cases = [("..", dict(good, id="..")), (cid, dict(good, id=cid, network=5)),
             (cid, dict(good, id=cid, cgroup_parents=7)),
             (cid, dict(good, id=cid, cgroups=["/sys/fs/cgroup/pids"])),
             (cid, dict(good, id=cid, exit_code="3"))]
    for name, record in cases:
        with open(os.path.join(paths.records, name + ".json"), "w") as handle:
            json.dump(record, handle)
        listing = minidocker("ps", "-a")
        assert listing.returncode == 0 and "is not a valid container record" in listing.err
        assert "Traceback" not in listing.err and "internal error" not in listing.err
        assert os.path.isdir(keep) and os.path.isdir(paths.containers)
        assert minidocker("rm", "-f", name).returncode == 0
    os.rmdir(keep)
    # A dead owner whose start time was lost (null) is dead, not alive forever.
    with open(paths.record(cid), "w") as handle:
        json.dump(dict(good, id=cid, owner_start=None, remove=False), handle)
    assert " Exited (?) " in minidocker("ps", "-a").out
    assert minidocker("rm", cid).returncode == 0
    assert_nothing_left()


@root
def test_fault_rm_f_kills_no_stranger_with_a_reused_pid(rootfs):
    """While a --rm container's layer is being removed, its init is gone
    and its pid may be given to another process: rm -f must not kill it."""
    script = "cd /tmp; i=0; while [ $i -lt 6000 ]; do mkdir d$i; i=$((i+1)); done"
    for _ in range(5):
        proc = subprocess.Popen(MINIDOCKER + ["run", "--network=none", "--rm", rootfs, "sh",
                                              "-c", script], stdin=subprocess.DEVNULL)
        stranger = None
        try:
            record = running_record()
            init = record["pid"]
            while os.path.exists("/proc/%d" % init):
                time.sleep(0.005)
            if proc.poll() is not None or not os.path.exists(md.Paths().record(record["id"])):
                continue  # the cleanup was too quick to catch: again
            with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
                handle.write(str(init - 1))
            stranger = subprocess.Popen(["sleep", "60"])
            if stranger.pid != init:
                continue
            assert minidocker("rm", "-f", record["id"]).returncode == 0
            assert stranger.poll() is None, "rm -f killed a process that was not the container"
            break
        finally:
            if stranger is not None:
                stranger.kill()
                stranger.wait()
            proc.wait(timeout=60)
    else:
        raise AssertionError("never caught the cleanup with the pid reused")
    assert_nothing_left()


class Interrupted(Exception):
    pass


def test_remove_tree_interrupted_anywhere_raises_the_interrupt(tmp_path):
    """A signal whose handler raises (^C: stop_now) may land between any two
    bytecodes of remove_tree: what comes out is always that exception,
    never an EBADF from closing a handle twice, which reclaim would take
    for a layer it could not remove and go on."""
    def interrupt(_number, _frame):
        raise Interrupted()
    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupted = 0
    try:
        for trial in range(300):
            path = top = tmp_path / ("t%d" % trial)
            for _ in range(30):
                path = path / "d"
            path.mkdir(parents=True)
            try:  # any OSError (EBADF) goes through, and fails the test
                signal.setitimer(signal.ITIMER_REAL, 0.00001 * (1 + trial % 100))
                md.remove_tree(str(top))
                signal.setitimer(signal.ITIMER_REAL, 0)
            except Interrupted:
                signal.setitimer(signal.ITIMER_REAL, 0)
                interrupted += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert interrupted > 50


@root
def test_fault_ctrl_c_during_reclaim_ends_ps(rootfs):
    """SIGINT while ps reclaims a big layer: ps ends (130, one line), it
    does not take the interrupt for one more layer it could not remove."""
    script = "cd /tmp; i=0; while [ $i -lt 8000 ]; do mkdir d$i; i=$((i+1)); done; " \
        "echo made; sleep 60"
    with started(rootfs, "sh", "-c", script) as proc:
        assert proc.stdout.readline() == b"made\n"
        proc.kill()
    layer = md.Paths().layer(md.read_records(md.Paths())[0]["id"])
    listing = subprocess.Popen(MINIDOCKER + ["ps", "-a"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    # Once the removal has begun (however long the start took on a busy host).
    deadline = time.monotonic() + 30
    while len(os.listdir(os.path.join(layer, "upper/tmp"))) == 8000 \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(listing.pid, signal.SIGINT)
    err = listing.communicate(timeout=60)[1].decode()
    assert listing.returncode == 130 and err == "minidocker: error: interrupted by SIGINT\n", err
    assert minidocker("ps", "-a").returncode == 0  # the next one finishes the reclaim
    assert_nothing_left()


# Bad values for each flag of `run`: every one must give exit 125, one line,
# no traceback, nothing left.
BAD_VALUES = {
    "-m": ["1" + "9" * 400, "x", "-1", "1e400", "5k", "²", "1..5m", "", " ", "\n"],
    "--memory-swap": ["1" + "9" * 400, "1k", "y", "²", "", "\x00", "-2", "1e999", "m", "1.2.3"],
    "--cpus": ["0", "-1", "nan", "inf", "1e400", "²", "", "x", "99999", "0.0000"],
    "--cpuset-cpus": ["0-10000000", "0-4294967295", "²", "0-²", "a", "-1", "0-", ",", "0,,1",
                      "9999999999999999999999"],
    "--cpuset-mems": ["0-10000000", "²", "x", "-", "1-0-1", "99", "0-4294967295", "", " ", "\n"],
    "--pids-limit": ["-2", "x", "²", "1.5", "", "--", "0x10", "1e3", "-99", "\n"],
    "-p": ["²:80", "70000:80", "0:80", "abc", "1:2:3:4", "1.2.3.999:80:80", "80:80/sctp",
           ":80", "80:", "\n:80"],
    "-u": ["99999999999", "4294967295", "4294967296", "0:99999999999", "a:b:c", "\t",
           "\n", "\x00", ":", "0:"],
    "--group-add": ["99999999999", "4294967295", "", "\n", "\x01", "1:2", "a\nb", ":", " \n",
                    "9" * 30],
    "--hostname": ["bad\nname", "\udcff", "x" * 65, "-x", "x-", "a..b", ".", "a b", "a/b",
                   "\x00"],
    "--add-host": ["nocolon", "evil\nhost:1.2.3.4", "h:999.1.1.1", ":1.2.3.4", "h:", "h:x",
                   "a b:1.2.3.4", "\udcff:1.2.3.4", "h:host-gatewayx", "h:1.2.3.4\n"],
    "--cgroup-parent": ["../../x", "a/../..", "..", "/", "a/\nb", "\x00", "./..", "a/..",
                        "../", "x/../../y"],
    "--dns": ["x", "1.2.3", "999.1.1.1", "", "\n", "1.2.3.4/24", "::g", "²", "a b", "-"],
    "-v": ["nocolon", "a/b:/x", "/x:relative", "/x:/y:bogus", ":", "/x:", ":/y",
           "/x:/y:ro:rw", "a:b:c:d", "/x:/", "x" * 129 + ":/x", "/x:ro", "v:/x:ro,ro"],
    "--mount": ["", "type=bind", "dst=/x,src=..", "type=bind,src=/no/such,dst=/x", "dst=/x,ro=2",
                "type=tmpfs,dst=/x,tmpfs-size=x", "dst=/x,\n", "=", "dst=/x,volume-opt=a=b",
                "type=volume,dst=/x,bind-propagation=rprivate"],
    "--tmpfs": ["relative", "/", "/x:bogus", "/x:ro,bad", "", ":", "//", "/x:mode",
                "x:/y", "/x:exec,nope"],
    "-w": ["relative", "", "x/y", ".", "..", "~", "./a", "a/..", "\n", "${HOME}"],
    "--cap-add": ["CAP_NOPE", "", "NOPE", "ALL2", "\n", "SYS_ADMINX", "cap_", "42", "-1", "²"],
    "--security-opt": ["bogus", "seccomp", "seccomp=/no/such", "apparmor=x", "label=x",
                       "no-new-privileges=no", "seccomp=", "\n", "=", "x=y"],
    "--network": ["mesh", "", "bridge2", "\n", "container:x", "host ", "NONE", "br", "²", "x"],
    "--blkio-weight": ["5", "1001", "x", "-1", "²", "", "1.5", "0x10", "9" * 30, "\n"],
    "--restart": ["bogus", "always:3", "on-failure:x", "on-failure:-1", "", "²", "no:1",
                  "on-failure:", "\n", "unless-stopped:1"],
}


def bad_command_lines():
    for flag, values in sorted(BAD_VALUES.items()):
        for value in values:
            yield flag, value


def test_the_command_line_never_guesses(capsys, monkeypatch, tmp_path):
    """No abbreviations (--entry is not --entrypoint, --priv not --privileged),
    errors with one prefix and the command's name, --version and version."""
    monkeypatch.setenv("MINIDOCKER_ROOT", str(tmp_path))
    monkeypatch.setattr(md, "require_root", lambda what: None)
    for argv, line in (
            (["run", "--entry", "sh", "/", "sh"], "run: unknown flag: --entry"),
            (["run", "--priv", "/", "sh"], "run: unknown flag: --priv"),
            (["run", "--pids", "5", "/", "sh"], "run: unknown flag: --pids"),
            (["ps", "--al"], "ps: unknown flag: --al"),
            (["run", "--pids-limit", "x", "/", "sh"],
             "run: invalid value 'x' for --pids-limit: not an integer"),
            (["run", "--rm=maybe", "/", "sh"], "run: invalid value 'maybe' for --rm: true or false"),
            (["run", "-itz", "/", "sh"], "run: unknown shorthand flag: 'z' in '-itz'"),
            (["run", "--name"], "run: flag needs an argument: --name"),
            (["stop"], "stop: requires at least 1 NAME|ID (usage: minidocker stop [OPTIONS] "
                       "NAME|ID...)"),
            (["rename", "a", "b", "c"], "rename: unexpected argument 'c' (usage: minidocker "
                                        "rename NAME|ID NEW_NAME)"),
            (["frobnicate"], "unknown command 'frobnicate' (see 'minidocker --help')")):
        assert md.main(argv) == 125
        assert capsys.readouterr().err == "minidocker: error: %s\n" % line
    assert md.main(["--version"]) == 0
    assert capsys.readouterr().out == "minidocker %s\n" % md.VERSION
    assert md.main(["version"]) == 0
    out = capsys.readouterr().out
    assert " Version:   %s\n" % md.VERSION in out and os.uname().release in out
    assert os.listdir(str(tmp_path)) == []


def test_docker_command_line_forms():
    """What pflag (docker's parser) takes, and argparse did not: a boolean's
    value after `=`, the last one given winning; a value glued to a
    one-letter flag; a value that starts with a dash; flags after a
    command's arguments, except after run's ROOTFS, where all is CMD's."""
    def parse(*argv):
        return md.build_parser().parse_args(list(argv))

    assert parse("run", "--rm=false", "/", "sh").rm is False
    assert parse("run", "--rm=TRUE", "/", "sh").rm is True
    assert parse("run", "--rm", "--rm=0", "/", "sh").rm is False
    assert parse("run", "--rm=f", "--rm", "/", "sh").rm is True
    args = parse("run", "-it=false", "--read-only=1", "--privileged=False", "/", "sh")
    assert (args.interactive, args.tty, args.read_only, args.privileged) == (True, False, True,
                                                                             False)
    assert parse("run", "/", "sh").tty is None  # not given: a terminal may imply -it
    args = parse("run", "-p8080:80", "-p=81:81", "--publish", "82:82", "--name=web",
                 "--pids-limit", "-1", "-e", "-x", "/", "sh")
    assert (args.publish, args.name, args.pids_limit, args.env) == (
        ["8080:80", "81:81", "82:82"], "web", -1, ["-x"])
    args = parse("run", "--", "/", "sh", "--rm", "-it", "--", "x")
    assert (args.rootfs, args.command, args.rm, args.tty) == ("/", ["sh", "--rm", "-it", "--",
                                                                   "x"], False, None)
    assert parse("--debug", "run", "/", "sh").debug is True
    assert parse("run", "--debug", "/", "sh").debug is True
    assert parse("rm", "web", "-f", "db").force is True
    assert parse("rm", "web", "-f", "db").containers == ["web", "db"]
    assert parse("exec", "-e", "A=1", "web", "env", "-i").command == ["env", "-i"]
    assert parse("stop", "-t", "3", "web").time == 3.0


def test_help_for_every_flag_and_argument(capsys):
    """Each command's --help (run's and exec's: -h is --hostname there, as in
    docker) lists every flag and argument with a line that says what it
    does; run's ends with examples; `minidocker` and `minidocker container`
    alone print their help, as docker."""
    commands, parents = {}, [md.build_parser()]
    while parents:  # every command, and every command of a command (volume rm)
        for command in parents.pop().subcommands.values():
            commands[command.prog.split(" ", 1)[1]] = command
            parents += [command] if command.subcommands else []
    assert {"run", "exec", "container prune", "volume rm", "version"} <= set(commands)
    for name, command in sorted(commands.items()):
        for flag in command.declared + command.positionals:
            assert flag.help, (name, flag.names)
        assert md.main(name.split() + ["--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("Usage:  minidocker %s" % name)
        for flag in command.declared:
            assert flag.names[-1] in out
    assert md.main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "run acts as run -it" in out and "minidocker run ./rootfs /bin/sh" in out
    for argv in ([], ["container"]):
        assert md.main(argv) == 0
        assert "Commands:" in capsys.readouterr().out


def test_fuzz_bad_command_lines_in_process(capsys, monkeypatch, tmp_path):
    """Over 200 bad command lines, through main() in this process (each is
    refused before anything is made, so no root is needed and it is fast)."""
    monkeypatch.setenv("MINIDOCKER_ROOT", str(tmp_path))
    monkeypatch.setattr(md, "require_root", lambda what: None)
    monkeypatch.setattr(md, "run_container", lambda spec, paths: 0)  # accepted: exit 0
    lines = list(bad_command_lines())
    assert len(lines) >= 200
    accepted = []
    for flag, value in lines:
        network = [] if flag == "--network" else ["--network=none"]
        argv = ["run", "--rm"] + network + [flag, value, str(tmp_path), "true"]
        code = md.main(argv)
        err = capsys.readouterr().err
        if code != 125 or not err.startswith("minidocker: error: ") or err.count("\n") != 1 \
                or "internal error" in err or "Traceback" in err:
            accepted.append((flag, value, code, err))
    assert accepted == []
    assert os.listdir(str(tmp_path)) == []  # nothing was made


# ---------------------------------------------------------------------------
# 8. cgroups: unit tests of sizes, conversions and the plan of writes
# ---------------------------------------------------------------------------

def resources(*argv, cpus=2, online=frozenset({0, 1}), mems=frozenset({0})):
    args = md.build_parser().parse_args(["run"] + list(argv) + ["/", "true"])
    return md.parse_resources(args, cpus, set(online), set(mems))


@pytest.mark.parametrize("text, value", [
    ("100m", 100 << 20), ("100M", 100 << 20), ("1g", 1 << 30), ("512k", 512 << 10),
    ("2048", 2048), ("2048b", 2048), ("64mb", 64 << 20), ("10MiB", 10 << 20),
    ("1.5g", 3 << 29), ("7 m", 7 << 20),
])
def test_sizes(text, value):
    assert md.parse_size(text, "--memory") == value


@pytest.mark.parametrize("text", ["10x", "", "m", "-1", "1e3", "1..5m", "0x10"])
def test_bad_sizes(text):
    with pytest.raises(md.MiniDockerError, match="invalid --memory"):
        md.parse_size(text, "--memory")


def test_resource_flags_into_values():
    res = resources("-m", "100m", "--memory-swap", "300m", "--memory-reservation", "50m",
                    "--cpus", "0.5", "--cpu-shares", "512", "--cpuset-cpus", "0-1",
                    "--pids-limit", "20", "--blkio-weight", "300")
    assert res == {"memory": 100 << 20, "memory_swap": 300 << 20,
                   "memory_reservation": 50 << 20, "cpu_quota": 50000, "cpu_shares": 512,
                   "cpuset_cpus": "0-1", "pids": 20, "io_weight": 300}
    assert resources("--pids-limit", "0") == {"pids": None}
    assert resources("--pids-limit", "-1") == {"pids": None}
    assert resources("-m", "1g", "--memory-swap", "-1")["memory_swap"] == -1


@pytest.mark.parametrize("argv, error", [
    (["--memory", "10x"], "invalid --memory '10x'"),
    (["--memory", "1m"], "the minimum is 6m"),
    (["--memory-swap", "1g"], "--memory-swap needs --memory"),
    (["-m", "1g", "--memory-swap", "100m"], "cannot be below --memory"),
    (["--cpus", "-1"], "invalid --cpus '-1'"),
    (["--cpus", "99"], "the range is 0.01 to 2"),
    (["--cpus", "abc"], "invalid --cpus 'abc'"),
    (["--cpu-shares", "1"], "invalid --cpu-shares 1"),
    (["--cpuset-cpus", "64"], "64 not available on this host (online: 0,1)"),
    (["--cpuset-cpus", "0-x"], "expected a list such as 0-2,4"),
    (["--cpuset-mems", "1"], "1 not available on this host"),
    (["--pids-limit", "-5"], "invalid --pids-limit -5"),
    (["--blkio-weight", "5"], "invalid --blkio-weight 5"),
    (["--device-read-bps", "/dev/null:1mb"], "/dev/null is not a block device"),
    (["--device-write-bps", "nocolon"], "expected DEVICE:RATE"),
])
def test_bad_resource_flags(argv, error):
    with pytest.raises(md.MiniDockerError, match=error.replace("(", r"\(").replace(")", r"\)")):
        resources(*argv)


def test_cpu_shares_to_weight_as_crun():
    assert [md.cpu_weight(s) for s in (2, 1024, 262144)] == [1, 39, 10000]


def test_writes_v2_and_v1():
    res = {"memory": 100 << 20, "memory_swap": 300 << 20, "memory_reservation": 1 << 20,
           "cpu_quota": 50000, "cpu_shares": 1024, "cpuset_cpus": "0", "pids": None,
           "io_weight": 500, "io_read": [("8:0", 1048576)]}
    assert md.cgroup_writes(res, 2) == [
        ("memory", "memory.max", 100 << 20), ("memory", "memory.swap.max", 200 << 20),
        ("memory", "memory.low", 1 << 20), ("cpu", "cpu.max", "50000 100000"),
        ("cpu", "cpu.weight", 39), ("io", "io.weight", "default 500"),
        ("io", "io.max", "8:0 rbps=1048576"), ("cpuset", "cpuset.cpus", "0"),
        ("pids", "pids.max", "max")]
    assert md.cgroup_writes(res, 1) == [
        ("memory", "memory.limit_in_bytes", 100 << 20),
        ("memory", "memory.memsw.limit_in_bytes", 300 << 20),
        ("memory", "memory.soft_limit_in_bytes", 1 << 20),
        ("cpu", "cpu.cfs_period_us", 100000), ("cpu", "cpu.cfs_quota_us", 50000),
        ("cpu", "cpu.shares", 1024), ("io", "blkio.weight", 500),
        ("io", "blkio.throttle.read_bps_device", "8:0 1048576"),
        ("cpuset", "cpuset.cpus", "0"), ("pids", "pids.max", "max")]
    assert md.cgroup_writes({"memory": 1, "memory_swap": -1}, 2)[1] == \
        ("memory", "memory.swap.max", "max")


HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_SELF = "5:pids:/user\n4:memory:/job/7\n2:cpu,cpuacct:/\n1:name=systemd:/x\n0::/x\n"


def test_hybrid_layout_and_placement():
    layout = md.detect_cgroups(HYBRID_MOUNTINFO, HYBRID_SELF, read=lambda path: "")
    assert layout.v2_mount == "/sys/fs/cgroup/unified" and layout.v2_controllers == set()
    assert layout.v1["memory"] == ("/sys/fs/cgroup/memory", "/job/7")
    assert layout.version_of("cpu") == 1 and layout.version_of("cpuset") is None
    groups = md.plan_cgroups({"memory": 1 << 30, "pids": 5}, layout, "ID")
    # every v1 hierarchy, the named one too, whatever the limits use
    assert groups == [
        (1, "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/minidocker-ID",
         {"cpu", "cpuacct"}),
        (1, "/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory/job/7/minidocker-ID", {"memory"}),
        (1, "/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids/user/minidocker-ID", {"pids"}),
        (1, "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/systemd/x/minidocker-ID",
         {"name=systemd"}),
        # the controller-less cgroup2 tree too, under our own cgroup in it
        (2, "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/x/minidocker-ID", set())]
    with pytest.raises(md.MiniDockerError, match="--cpuset-cpus needs the cpuset cgroup "
                                                 "controller, which this host has neither"):
        md.plan_cgroups({"cpuset_cpus": "0"}, layout, "ID")
    parented = md.plan_cgroups({}, layout, "ID", parent="/ci")
    assert parented[1][2] == "/sys/fs/cgroup/memory/ci/minidocker-ID"
    assert parented[-1][2] == "/sys/fs/cgroup/unified/ci/minidocker-ID"


def test_device_cgroup_placement_v1_v2_and_none():
    res = {"devices": md.DEFAULT_DEVICE_RULES}
    v1 = md.detect_cgroups(HYBRID_MOUNTINFO + "42 31 0:39 / /sys/fs/cgroup/devices rw - cgroup "
                           "cgroup rw,devices\n", HYBRID_SELF + "6:devices:/d\n",
                           read=lambda path: "")
    assert (1, "/sys/fs/cgroup/devices", "/sys/fs/cgroup/devices/d/minidocker-ID",
            {"devices"}) in md.plan_cgroups(res, v1, "ID")
    # a hybrid host without the v1 controller: the program on the cgroup2 mount
    hybrid = md.detect_cgroups(HYBRID_MOUNTINFO, HYBRID_SELF, read=lambda path: "")
    assert md.plan_cgroups(res, hybrid, "ID")[-1] == (
        2, "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/mini-docker/ID", {"devices"})
    bare = md.detect_cgroups(HYBRID_MOUNTINFO.replace("cgroup2 cgroup2", "tmpfs tmpfs"),
                             HYBRID_SELF, read=lambda path: "")
    with pytest.raises(md.MiniDockerError, match="the device cgroup needs cgroup v1's devices "
                                                 "controller or a cgroup2 mount"):
        md.plan_cgroups(res, bare, "ID")
    assert md.plan_cgroups({}, bare, "ID")  # --privileged runs without one


def test_device_cgroup_v1_writes():
    writes = md.cgroup_writes({"devices": md.DEFAULT_DEVICE_RULES + [("b", 7, 3, "r")]}, 1)
    assert writes == [("devices", "devices.deny", "a")] + [
        ("devices", "devices.allow", line) for line in (
            "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm",
            "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm", "b 7:3 r")]
    assert md.cgroup_writes({"devices": md.DEFAULT_DEVICE_RULES}, 2) == []


def test_v2_plan_applied_to_a_fake_tree(tmp_path):
    """The whole v2 path, mkdir and writes, on a directory standing in for
    /sys/fs/cgroup (a plain filesystem: files are created as written)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    mountinfo = "41 31 0:38 / %s rw - cgroup2 cgroup2 rw\n" % root
    layout = md.detect_cgroups(mountinfo, "0::/\n")
    assert layout.version_of("memory") == 2 and layout.version_of("cpuacct") is None
    res = {"memory": 64 << 20, "cpu_quota": 25000, "pids": 20}
    groups = md.plan_cgroups(res, layout, "ID")
    assert groups == [(2, str(root), str(root / "mini-docker" / "ID"), {"cpu", "memory", "pids"})]
    made = md.create_cgroups(groups, res)
    leaf = root / "mini-docker" / "ID"
    assert made == [str(leaf)]
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "cpu.max").read_text() == "25000 100000"
    assert (leaf / "pids.max").read_text() == "20"
    # one "+controller" per write: the last one stands in a plain file
    assert (root / "mini-docker" / "cgroup.subtree_control").read_text() == "+pids"
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (leaf / "memory.current").write_text("1234\n")
    (leaf / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1\n")
    assert md.oom_killed(made)
    (leaf / "memory.stat").write_text("anon 1000\nfile 234\ninactive_file 200\n")
    (leaf / "memory.max").write_text("max\n")
    assert md.cgroup_usage(made) == {"memory": 1234, "inactive_file": 200, "memory_limit": None,
                                     "cpu_seconds": 1.5, "pids": None}
    (leaf / "memory.max").write_text("67108864\n")
    assert md.cgroup_usage(made)["memory_limit"] == 64 << 20


# ---------------------------------------------------------------------------
# 8. the device cgroup's eBPF program, unit: golden bytes and an interpreter
# ---------------------------------------------------------------------------

# Assembled by llvm-mc (llvm-mc -triple bpfel -filetype=obj, then
# llvm-objdump -d) from this listing, for the rules c 1:3 rwm, b 7:* r,
# c *:* m:
#    0 r2 = *(u32 *)(r1 + 0)       12 w1 = w3
#    1 w2 &= 65535                 13 w1 &= 65533
#    2 r3 = *(u32 *)(r1 + 0)       14 if r1 != 0 goto +3
#    3 w3 >>= 16                   15 if r4 != 7 goto +2
#    4 r4 = *(u32 *)(r1 + 4)       16 r0 = 1
#    5 r5 = *(u32 *)(r1 + 8)       17 exit
#    6 if r2 != 2 goto +4          18 if r2 != 2 goto +5
#    7 if r4 != 1 goto +3          19 w1 = w3
#    8 if r5 != 3 goto +2          20 w1 &= 65534
#    9 r0 = 1                      21 if r1 != 0 goto +2
#   10 exit                        22 r0 = 1
#   11 if r2 != 1 goto +6          23 exit
#                                  24 r0 = 0
#                                  25 exit
DEVICE_PROGRAM_LLVM_MC = (
    "611200000000000054020000ffff0000611300000000000074030000100000006114040000000000"
    "6115080000000000550204000200000055040300010000005505020003000000b700000001000000"
    "95000000000000005502060001000000bc3100000000000054010000fdff00005501030000000000"
    "5504020007000000b70000000100000095000000000000005502050002000000bc31000000000000"
    "54010000feff00005501020000000000b7000000010000009500000000000000b700000000000000"
    "9500000000000000")


def test_device_program_golden_bytes():
    code = md.compile_device_program([("c", 1, 3, "rwm"), ("b", 7, None, "r"),
                                      ("c", None, None, "m")])
    assert code.hex() == DEVICE_PROGRAM_LLVM_MC


def run_ebpf(code, kind, major, minor, access):
    """eBPF as the kernel runs a BPF_PROG_TYPE_CGROUP_DEVICE program, for the
    instructions minidocker emits, with what the verifier would refuse
    checked: an unknown opcode, a read of a register never written, a load
    outside struct bpf_cgroup_dev_ctx or through anything but its pointer, a
    jump backwards or out of the program. Returns r0 at exit."""
    program = [struct.unpack_from(md.BPF_INSN, code, i) for i in range(0, len(code), 8)]
    asked = sum(md.DEVCG_ACCESS[letter] for letter in access)
    ctx = struct.pack("=III", asked << 16 | md.DEVCG_TYPE[kind], major, minor)
    regs = {1: "ctx"}
    mask = (1 << 64) - 1

    def value(number):
        assert number in regs, "r%d read before it is written" % number
        assert regs[number] != "ctx", "arithmetic on the context pointer"
        return regs[number]

    pc = 0
    while True:
        assert 0 <= pc < len(program), "ran off the program"
        op, registers, off, imm = program[pc]
        dst, src = registers & 0xF, registers >> 4
        pc += 1
        if op == md.EBPF_LDX_W:
            assert regs.get(src) == "ctx" and off in (0, 4, 8), (src, off)
            regs[dst] = struct.unpack_from("=I", ctx, off)[0]
        elif op == md.EBPF_AND32_K:
            regs[dst] = value(dst) & imm & 0xFFFFFFFF
        elif op == md.EBPF_RSH32_K:
            regs[dst] = (value(dst) & 0xFFFFFFFF) >> imm
        elif op == md.EBPF_MOV32_X:
            regs[dst] = value(src) & 0xFFFFFFFF
        elif op == md.EBPF_MOV64_K:
            regs[dst] = imm & mask
        elif op == md.EBPF_JNE_K:
            assert off >= 0 and pc + off <= len(program), "jump %d at %d" % (off, pc - 1)
            if value(dst) != imm & mask:
                pc += off
        elif op == md.EBPF_EXIT:
            return value(0)
        else:
            raise AssertionError("opcode %#x" % op)


def device_allowed(rules, kind, major, minor, access):
    """What the device cgroup means: some rule covers type, numbers and every
    access asked (as devices.allow does on v1)."""
    return any(rule_kind == kind and set(access) <= set(rule_access)
               and rule_major in (None, major) and rule_minor in (None, minor)
               for rule_kind, rule_major, rule_minor, rule_access in rules)


ACCESSES = ["m", "r", "w", "rw", "rm", "wm", "rwm"]
MAJORS = [0, 1, 4, 5, 7, 10, 136, 137, 254, 4095]
MINORS = [0, 1, 2, 3, 5, 7, 8, 9, 11, 200, 0xFFFFF]


def test_default_device_program_decisions():
    code = md.compile_device_program(md.DEFAULT_DEVICE_RULES)
    decided = {}
    for kind in "bc":
        for major in MAJORS:
            for minor in MINORS:
                for access in ACCESSES:
                    verdict = run_ebpf(code, kind, major, minor, access)
                    assert verdict == device_allowed(md.DEFAULT_DEVICE_RULES, kind, major,
                                                     minor, access), (kind, major, minor, access)
                    decided[kind, major, minor, access] = verdict
    assert decided["c", 1, 3, "rw"] and decided["c", 1, 9, "r"] and decided["c", 5, 2, "rw"]
    assert decided["c", 136, 7, "rw"]
    assert decided["b", 7, 0, "m"] and decided["c", 1, 11, "m"]  # made, never opened:
    assert not decided["b", 7, 0, "r"] and not decided["b", 7, 0, "w"]  # a loop device
    assert not decided["c", 1, 11, "w"]                           # /dev/kmsg
    assert not decided["c", 10, 200, "rw"]                        # /dev/net/tun
    assert not decided["c", 5, 1, "r"] and not decided["c", 5, 1, "w"]  # the host's console
    assert not decided["c", 1, 1, "r"] and not decided["b", 0, 0, "rw"]  # /dev/mem


def test_random_device_lists_agree_with_the_model():
    import random
    rng = random.Random(7)
    for _ in range(40):
        rules = [(rng.choice("bc"), rng.choice([None] + MAJORS), rng.choice([None] + MINORS),
                  rng.choice(ACCESSES)) for _ in range(rng.randint(0, 6))]
        code = md.compile_device_program(rules)
        for _ in range(200):
            kind, major, minor = rng.choice("bc"), rng.choice(MAJORS), rng.choice(MINORS)
            access = rng.choice(ACCESSES)
            assert run_ebpf(code, kind, major, minor, access) == \
                device_allowed(rules, kind, major, minor, access), (rules, kind, major, minor,
                                                                    access)


# ---------------------------------------------------------------------------
# 8. cgroups, root: limits the process inside really meets (run on this host
# and in the cgroup-v2 VM: README's VM command selects them by name)
# ---------------------------------------------------------------------------

def running_record(timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in md.read_records(md.Paths()):
            if record["status"] == "running":
                return record
        time.sleep(0.02)
    raise AssertionError("no container came up")


def cgroup_of(record, controller):
    """The container's cgroup directory holding a controller's files."""
    for path in record["cgroups"]:
        if any(name.startswith(controller + ".") for name in os.listdir(path)):
            return path
    raise AssertionError("no %s cgroup in %s" % (controller, record["cgroups"]))


@root
def test_cgroup_memory_limit_oom_kills(rootfs):
    result = run(rootfs, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1",
                 options=["-m", "32m"])
    assert result.returncode == 137, result.err
    assert "hit its memory limit (--memory 33554432)" in result.err
    assert sh(rootfs, "echo fine", options=["-m", "32m"]).out == "fine\n"


@root
def test_cgroup_pids_limit_stops_a_fork_bomb(rootfs):
    # The bomb forks until fork fails (then busybox's sh gives up and exits);
    # the outer shell, pid 1, waits without forking again.
    script = ('trap "exit 0" TERM; sleep 1000 & sh -c "while :; do sleep 30 & done" 2>/dev/null;'
              'echo spawned; wait')
    with started(rootfs, "sh", "-c", script, options=["--pids-limit", "20"]) as proc:
        assert proc.stdout.readline() == b"spawned\n"
        record = running_record()
        pids = cgroup_of(record, "pids")
        assert md.read_text(os.path.join(pids, "pids.max")).strip() == "20"
        assert 15 <= int(md.read_text(os.path.join(pids, "pids.current"))) <= 20
        events = md.read_text(os.path.join(pids, "pids.events")).split()
        assert events[0] == "max" and int(events[1]) > 0  # forks were refused
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert_nothing_left()


@root
def test_cgroup_cpu_quota_half_a_cpu(rootfs):
    with started(rootfs, "sh", "-c", 'trap "exit 0" TERM; echo go; while :; do :; done',
                 options=["--cpus", "0.5"]) as proc:
        assert proc.stdout.readline() == b"go\n"
        record = running_record()
        time.sleep(0.5)
        first, t0 = md.cgroup_usage(record["cgroups"])["cpu_seconds"], time.monotonic()
        time.sleep(2)
        second, t1 = md.cgroup_usage(record["cgroups"])["cpu_seconds"], time.monotonic()
        rate = (second - first) / (t1 - t0)
        assert 0.4 <= rate <= 0.6, rate
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert_nothing_left()


@root
def test_cgroup_cpuset_pins(rootfs):
    assert sh(rootfs, "grep Cpus_allowed_list /proc/self/status",
              options=["--cpuset-cpus", "0"]).out.split() == ["Cpus_allowed_list:", "0"]


@root
def test_cgroup_placement_namespace_and_removal(rootfs):
    with started(rootfs, "sh", "-c", 'trap "exit 0" TERM; cat /proc/self/cgroup; echo end; '
                                     'while :; do sleep 0.05; done', options=["-m", "64m"]) as proc:
        inside = b""
        while not inside.endswith(b"end\n"):
            inside += proc.stdout.readline()
        lines = inside.decode().splitlines()[:-1]
        assert lines, inside
        for line in lines:
            assert line.endswith(":/"), line  # the cgroup namespace: its own cgroup is the root
        record = running_record()
        layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                                   md.read_text("/proc/self/cgroup"))
        memory = cgroup_of(record, "memory")
        if layout.version_of("memory") == 1:
            mount, own = layout.v1["memory"]
            assert memory == os.path.join(mount, own.strip("/"), "minidocker-" + record["id"])
            assert md.read_text(memory + "/memory.limit_in_bytes").strip() == str(64 << 20)
        else:
            assert memory == os.path.join(layout.v2_mount, "mini-docker", record["id"])
            assert md.read_text(memory + "/memory.max").strip() == str(64 << 20)
        host_view = md.read_text("/proc/%d/cgroup" % record["pid"])
        assert record["id"] in host_view
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    for path in record["cgroups"]:
        assert not os.path.exists(path)
    assert_nothing_left()


@root
def test_cgroup_joined_by_pid_where_clone3_is_refused(rootfs):
    """Docker's default seccomp profile, among others, answers clone3 with
    ENOSYS (glibc then falls back to clone): minidocker inside such a
    container cannot have the init born in its cgroup (CgroupEntry), and
    writes its pid instead. Here minidocker runs under a filter that does
    just that, and its container is still in each of its cgroups."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}
    program, _ = md.plan_seccomp(profile, set(range(41)), "test")
    script = ("import os, sys; sys.path.insert(0, %r); import minidocker as md; "
              "md.load_filter(%r); os.execv(sys.argv[1], sys.argv[1:])" % (HERE, program))
    command = ['trap "exit 0" TERM; cat /proc/self/cgroup; echo end; while :; do sleep 0.05; done']
    proc = subprocess.Popen([sys.executable, "-c", script] + MINIDOCKER + [
        "run", "--rm", "--network", "none", "-m", "64m", rootfs, "sh", "-c"] + command,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        inside = b""
        while not inside.endswith(b"end\n"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            inside += line
        assert all(line.endswith(":/") for line in inside.decode().splitlines()[:-1]), inside
        record = running_record()
        assert record["cgroups"]
        host_view = md.read_text("/proc/%d/cgroup" % record["pid"]).splitlines()
        assert host_view and all(line.endswith("minidocker-" + record["id"]) or
                                 line.endswith("/" + record["id"]) for line in host_view), host_view
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_nothing_left()


@root
def test_cgroup_birth_declines_beside_a_thread_python_does_not_count():
    """fork_into_cgroup's clone3 runs none of the handlers by which glibc's
    fork first takes malloc's and the loader's locks from every other
    thread, so it declines (None: os.fork then) while the process has
    another thread. A library's thread (pthread_create, here with sleep(1)
    as its start routine), which _thread never counts, is one; once it has
    ended, the child is born in the cgroup."""
    script = """if 1:
        import ctypes, os, sys, time
        sys.path.insert(0, %r)
        import minidocker as md
        libc = ctypes.CDLL(None)
        assert libc.pthread_create(ctypes.byref(ctypes.c_ulong()), None, libc.sleep,
                                   ctypes.c_void_p(1)) == 0
        layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                                   md.read_text("/proc/self/cgroup"))
        fd = os.open(layout.v2_mount + layout.v2_own, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(2):
            pid = md.fork_into_cgroup(fd)
            if pid == 0:
                os._exit(0)
            if pid is not None:
                os.waitpid(pid, 0)
            print(pid is not None, len(os.listdir("/proc/self/task")))
            time.sleep(1.5)
    """ % HERE
    result = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=60)
    assert result.stdout.decode().split("\n") == ["False 2", "True 1", ""], result


SLOW_IMPORTS = ("re", "enum", "json", "contextlib", "ipaddress", "ast", "shutil", "functools")


def imports_of(argv, enter=()):
    """The modules a start of the installed launcher imports, from
    -X importtime (the interpreter named on the launcher's first line);
    `enter`: a command it runs under (nsenter into a sandbox)."""
    with open(MINIDOCKER[0]) as handle:
        interpreter = handle.readline()[2:].split()
    # To a file: a created container keeps the descriptors it was given.
    with tempfile.TemporaryFile() as err:
        result = subprocess.run(list(enter) + interpreter + ["-X", "importtime", MINIDOCKER[0]] + argv,
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                timeout=60)
        err.seek(0)
        text = err.read().decode()
    assert result.returncode == 0, text
    return {line.split("|")[-1].strip() for line in text.splitlines()
            if line.startswith("import time:") and "|" in line}


@root
def test_a_start_imports_none_of_the_slow_modules(rootfs, tmp_path):
    """The file's top leaves out json, re, signal.py's enums and contextlib
    (14 ms of every start on the 2-CPU host): a plain run, run -d, exec,
    stop, rm, an OCI create, start, state and delete, and a run of a stored
    image must not bring them back by a side door (an `import re` a
    function makes on every path). Nor may the verbs that only read state
    and send signals import ctypes (3 ms), which chapter 2 imports at the
    first call of a libc binding."""
    if len(MINIDOCKER) != 1:
        pytest.skip("only the installed launcher's imports are measured")
    assert MINIDOCKER[0].endswith("/bin/minidocker")
    runs = [["run", "--rm", "--network", "none", "--name", "imports-%d" % os.getpid(),
             "--hostname", "h", rootfs, "true"]]
    cid = subprocess.run(MINIDOCKER + ["run", "-d", "--network", "none", rootfs, "sleep", "60"],
                         stdout=subprocess.PIPE, check=True).stdout.decode().strip()
    runs += [["exec", cid, "true"], ["stop", "-t", "0", cid], ["rm", cid]]
    path = tmp_path / "bundle"
    path.mkdir()
    shutil.copytree(rootfs, str(path / "rootfs"), symlinks=True)
    subprocess.run(MINIDOCKER + ["runc", "spec", "--bundle", str(path)], check=True)
    edit_config(str(path), lambda c: c["process"].update(terminal=False, args=["true"]))
    root_dir = str(tmp_path / "runc-root")
    oci_id = "imports-%d" % os.getpid()
    runs += [["runc", "--root", root_dir, "create", "--bundle", str(path), oci_id],
             ["runc", "--root", root_dir, "state", oci_id],
             ["runc", "--root", root_dir, "start", oci_id],
             ["runc", "--root", root_dir, "delete", "-f", oci_id]]
    image = "test/imports:%d" % os.getpid()
    archive = save_archive(str(tmp_path / "image.tar"), [tree_layer(rootfs)],
                           config={"Cmd": ["true"]}, tags=(image,))
    subprocess.run(MINIDOCKER + ["load", "-i", archive], stdout=subprocess.DEVNULL, check=True)
    runs.append(["run", "--rm", "--network", "none", image])
    without_ctypes = [["stop", "-t", "0", cid], ["rm", cid]] + [
        ["runc", "--root", root_dir, verb, oci_id] for verb in ("state", "start")] + [
        ["runc", "--root", root_dir, "delete", "-f", oci_id]]
    try:
        for argv in runs:
            imported = imports_of(argv)
            assert not imported & set(SLOW_IMPORTS), argv
            assert "ctypes" not in imported or argv not in without_ctypes, argv
    finally:
        subprocess.run(MINIDOCKER + ["rmi", image], stdout=subprocess.DEVNULL)
    assert_nothing_left()


@root
def test_a_bridge_run_imports_no_ipaddress(rootfs, sandbox):
    """A bridge run's lease and clean-up work out addresses without
    ipaddress (IPv4Network): its import was 6 ms of each, on the way to
    the container's start and to the caller's prompt. Flags that name an
    address (-p IP:..., --subnet) still read it with ipaddress."""
    if len(MINIDOCKER) != 1:
        pytest.skip("only the installed launcher's imports are measured")
    imported = imports_of(["run", "--rm", "--network", "bridge", rootfs, "true"], sandbox.enter())
    assert not imported & set(SLOW_IMPORTS), imported & set(SLOW_IMPORTS)
    assert_network_gone(sandbox)


@root
def test_cgroup_removed_after_kill_9_of_minidocker(rootfs):
    with started(rootfs, "sleep", "60", options=["--pids-limit", "10"]) as proc:
        record = running_record()
        proc.kill()
    assert record["cgroups"] and all(os.path.isdir(path) for path in record["cgroups"])
    assert sh(rootfs, "true", check_clean=False).returncode == 0  # reclaims
    for path in record["cgroups"]:
        assert not os.path.exists(path), path
    assert_nothing_left()


@root
def test_cgroup_parent_made_for_a_container_goes_with_it(rootfs):
    parent = "mdtest-parent-%d/inner" % os.getpid()
    layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                               md.read_text("/proc/self/cgroup"))
    mounts = [mount for mount, _ in layout.v1.values()] + [layout.v2_mount]
    tops = [os.path.join(mount, parent.split("/")[0]) for mount in mounts if mount]
    assert tops
    for kill in (False, True):
        with started(rootfs, "sh", "-c", "echo up; sleep 60",
                     options=["--cgroup-parent", parent]) as proc:
            assert proc.stdout.readline() == b"up\n"
            record = running_record()
            assert record["cgroups"], record
            assert all(path.startswith(tuple(tops)) for path in record["cgroups"])
            assert all(os.path.isdir(top) for top in tops)
            if kill:
                proc.kill()  # and the next command reclaims
                proc.wait()
                assert any(os.path.isdir(top) for top in tops)
                assert minidocker("ps").returncode == 0
            else:
                os.kill(wait_for_child(proc.pid), signal.SIGKILL)
                assert proc.wait(timeout=20) == 137
        assert [top for top in tops if os.path.exists(top)] == []
    assert_nothing_left()


@root
def test_cgroup_parent_at_its_pids_limit_takes_no_init_on_cgroup_v2(rootfs):
    """A --cgroup-parent whose task limit is reached (pids.max 0). On
    cgroup v2 the init is born in its cgroup by clone3, and the kernel
    counts that birth against every limit above it: the run fails in one
    line that names the limit, and leaves nothing (no fork and move
    instead: a move is never counted, and the pid namespace whose first
    fork failed takes no other). On cgroup v1 the init moves itself in,
    which the kernel never counts: it runs, and no fork of its passes."""
    layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                               md.read_text("/proc/self/cgroup"))
    version = layout.version_of("pids")
    mount = layout.v1["pids"][0] if version == 1 else layout.v2_mount
    name = "mdtest-full-%d" % os.getpid()
    top = os.path.join(mount, name)
    if version == 1:
        os.mkdir(top)
    else:
        md.enable_v2_controllers(mount, top, {"pids"})
    try:
        md.write_cgroup_file(top, "pids.max", 0)
        for options in ([], ["--pid", "host"]):  # a fork there would succeed: moved past
            result = run(rootfs, "sh", "-c", "echo up; /bin/true; echo forked",
                         options=["--cgroup-parent", name] + options)
            if version == 1:
                assert result.out == "up\n" and result.returncode != 0, (options, result)
            else:
                assert (result.returncode, result.out, result.err.count("\n")) == \
                    (125, "", 1), (options, result)
                assert result.err.startswith("minidocker: error: starting a process in cgroup "
                                             "%s/" % top) and "pids.max" in result.err, result.err
            assert [entry for entry in os.listdir(top)
                    if os.path.isdir(os.path.join(top, entry))] == []
    finally:
        md.remove_cgroups([top])
    assert_nothing_left()


@root
@pytest.mark.parametrize("flags, error", [
    (["--memory", "10x"], "invalid --memory '10x'"),
    (["--cpus", "-1"], "invalid --cpus '-1'"),
    (["--cpus", "99"], "invalid --cpus '99'"),
    (["--cpuset-cpus", "64"], "invalid --cpuset-cpus '64'"),
    (["--pids-limit", "-3"], "invalid --pids-limit -3"),
    (["--memory-swap", "1g"], "--memory-swap needs --memory"),
])
def test_cgroup_bad_values(rootfs, flags, error):
    bad(["run", "--rm"] + flags + [rootfs, "true"], error)


@root
def test_cgroup_pids_zero_means_unlimited(rootfs):
    for flags in (["--pids-limit", "0"], ["--pids-limit", "-1"], ["--pids-limit", "7"]):
        with started(rootfs, "sh", "-c", "echo up; sleep 60", options=flags) as proc:
            assert proc.stdout.readline() == b"up\n"
            limit = md.read_text(cgroup_of(running_record(), "pids") + "/pids.max").strip()
            assert limit == ("7" if flags[1] == "7" else "max")
            os.kill(wait_for_child(proc.pid), signal.SIGKILL)
            assert proc.wait(timeout=20) == 137
    assert_nothing_left()


@root
def test_cgroup_pids_limit_of_one_is_the_init_alone(rootfs, subids):
    """--pids-limit 1 leaves room for the init and nothing else, with a user
    namespace too: stage 1, which forks the init, never counts in the pids
    cgroup (the init moves itself in), nor does exec's process (its
    command moves itself in). So the command runs, and cannot fork."""
    for options in ([], ["--userns", "auto"]):
        result = run(rootfs, "sh", "-c", "echo up; /bin/true; echo forked",
                     options=["--pids-limit", "1"] + options)
        assert result.out == "up\n" and result.returncode != 0, (options, result.err)
        with started(rootfs, "sh", "-c", "echo up; exec sleep 60",
                     options=["--pids-limit", "2"] + options) as proc:
            assert proc.stdout.readline() == b"up\n"
            record = running_record()
            pids = cgroup_of(record, "pids")
            assert int(md.read_text(pids + "/pids.current")) == 1
            assert minidocker("exec", record["id"], "cat", "/proc/self/cgroup").returncode == 0
            os.kill(wait_for_child(proc.pid), signal.SIGKILL)
            assert proc.wait(timeout=20) == 137
    assert_nothing_left()


# ---------------------------------------------------------------------------
# 8. the device cgroup, root: host devices reached through nodes in the image,
# made with mknod or given with --device (on this host and in the v2 VM)
# ---------------------------------------------------------------------------

DENIED = ("Operation not permitted", "Permission denied")  # EPERM: the cgroup; EACCES: nodev


@pytest.fixture
def host_device(tmp_path):
    """A host device whose content the tests know and may write to: a loop
    device over a file of ours. The cgroup-v2 VM's kernel has no modules, so
    no loop driver and no block device at all: there it is the virtual
    console's screen memory, /dev/vcs (c 7:0), as harmless to write."""
    if not os.path.exists("/dev/loop-control"):
        yield "/dev/vcs"
        return
    backing = tmp_path / "disk.img"
    backing.write_bytes(b"minidocker-disk!" * 4096)
    path = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        yield path
    finally:
        subprocess.run(["losetup", "-d", path], check=True)


def device_node(path):
    """(mknod type letter, major, minor) of a host device."""
    st = os.stat(path)
    return ("b" if stat.S_ISBLK(st.st_mode) else "c"), os.major(st.st_rdev), os.minor(st.st_rdev)


def device_content(path):
    with open(path, "rb") as handle:
        return handle.read(16)


@pytest.fixture
def device_rootfs(tmp_path, host_device, state):
    """A rootfs that ships nodes of host devices, readable and writable by
    anyone: the test device, and /dev/kmsg (c 1:11), the kernel's log."""
    path = str(tmp_path / "image")
    subprocess.run(MINIDOCKER + ["mkrootfs", path], check=True, stdout=subprocess.DEVNULL)
    os.mkdir(os.path.join(path, "nodes"))
    kind, major, minor = device_node(host_device)
    for name, mode, numbers in (("disk", stat.S_IFBLK if kind == "b" else stat.S_IFCHR,
                                 (major, minor)), ("kmsg", stat.S_IFCHR, (1, 11))):
        os.mknod(os.path.join(path, "nodes", name), mode | 0o666, os.makedev(*numbers))
        os.chmod(os.path.join(path, "nodes", name), 0o666)
    return path


ATTACK_NODES = ("head -c 16 {disk}; echo; echo forged > {disk}; "
                "echo '<3>minidocker: forged' > {kmsg}")


def assert_denied(result, attempts):
    lines = result.err.splitlines()
    assert len(lines) == attempts and all(any(d in line for d in DENIED) for line in lines), \
        result.err


@root
@pytest.mark.parametrize("options", [[], ["-u", "1000", "--read-only"]])
def test_device_nodes_in_the_image_are_refused_by_the_nodev_root(device_rootfs, host_device,
                                                                 options):
    """Nodes of host devices that the image ships open nothing, because the
    root is mounted nodev: each open fails with EACCES. The kernel decides
    that before it asks the device cgroup (may_open() checks nodev, then
    inode_permission() asks the cgroup), so this test cannot see the device
    cgroup; test_mknod_of_host_devices_opens_nothing does."""
    before = device_content(host_device)
    result = sh(device_rootfs, ATTACK_NODES.format(disk="/nodes/disk", kmsg="/nodes/kmsg"),
                options=options)
    assert result.out == "\n"  # nothing read
    lines = result.err.splitlines()
    assert len(lines) == 3 and all("Permission denied" in line for line in lines), result.err
    assert device_content(host_device) == before


@root
def test_mknod_of_host_devices_opens_nothing(rootfs, host_device):
    """Without seccomp (which refuses mknod of devices by default) nodes can
    be made, as in Docker; the device cgroup refuses to open them: the
    host's disk, its kernel log, its console. They are made in /dev, which
    is not nodev, so every refusal must be the cgroup's EPERM: this is the
    test that fails without a device cgroup."""
    before = device_content(host_device)
    kind, major, minor = device_node(host_device)
    script = ("mknod /dev/disk %s %d %d && mknod /dev/kmsg c 1 11 && mknod /dev/host c 5 1 "
              "&& echo made; " % (kind, major, minor)) + ATTACK_NODES.format(
                  disk="/dev/disk", kmsg="/dev/kmsg") + "; echo forged > /dev/host"
    for options in ([], ["-u", "0", "--cap-add", "SYS_ADMIN"]):
        result = sh(rootfs, script, options=["--security-opt", "seccomp=unconfined"] + options)
        assert result.out == "made\n\n"
        assert all("Operation not permitted" in line for line in result.err.splitlines())
        assert_denied(result, 4)
    assert device_content(host_device) == before


@root
def test_device_flag_gives_that_device_and_no_other(rootfs, host_device):
    kind, major, minor = device_node(host_device)
    content = device_content(host_device)
    script = ("head -c 16 /dev/given; stat -c '%%t:%%T %%a' /dev/given; "
              "mknod /dev/other %s %d %d; head -c 16 /dev/other; echo x > /dev/kmsg2"
              % (kind, major, minor + 1))
    result = run(rootfs, "sh", "-c", "mknod /dev/kmsg2 c 1 11; " + script,
                 options=["--device", host_device + ":/dev/given",
                          "--security-opt", "seccomp=unconfined"])
    host_mode = os.stat(host_device).st_mode
    assert result.stdout == content + ("%x:%x %o\n" % (major, minor, host_mode & 0o7777)).encode()
    assert_denied(result, 2)
    # r only: read, never written; the node lands where it is asked, directories made
    before = device_content(host_device)
    result = sh(rootfs, "head -c 16 /dev/sub/dir/ro; echo forged > /dev/sub/dir/ro",
                options=["--device", host_device + ":/dev/sub/dir/ro:r"])
    assert result.stdout == content
    assert_denied(result, 1)
    assert device_content(host_device) == before


@root
def test_root_and_volumes_are_nodev(device_rootfs, tmp_path):
    """Even a node the device cgroup allows (null) opens nothing outside the
    container's /dev: the root and the volumes, file or directory, read-only
    or not, with their submounts, are nodev, and keep their other flags."""
    volume = tmp_path / "volume"
    volume.mkdir()
    os.mknod(str(volume / "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (tmp_path / "file").write_text("")
    script = ("echo x > /nodes/null; echo x > /v/null; echo x > /ro/null; echo x > /v/sub/null;"
              "awk '$5 == \"/\" || $5 == \"/v\" || $5 == \"/ro\" || $5 == \"/f\" || "
              "$5 == \"/v/sub\" {print $5, $6}' /proc/self/mountinfo")
    os.mknod(os.path.join(device_rootfs, "nodes", "null"), stat.S_IFCHR | 0o666,
             os.makedev(1, 3))
    sub = tmp_path / "sub"
    sub.mkdir()
    os.mknod(str(sub / "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (volume / "sub").mkdir()
    subprocess.run(["mount", "--bind", str(sub), str(volume / "sub")], check=True)
    try:
        result = sh(device_rootfs, script, options=[
            "--read-only", "-v", "%s:/v" % volume, "-v", "%s:/ro:ro" % volume,
            "-v", "%s:/f" % (tmp_path / "file")])
    finally:
        subprocess.run(["umount", str(volume / "sub")], check=True)
    assert result.err.count("Permission denied") == 4, result.err
    flags = dict(line.split() for line in result.out.splitlines())
    assert set(flags) == {"/", "/v", "/ro", "/f", "/v/sub"}, result.out
    assert all("nodev" in value.split(",") for value in flags.values()), flags
    assert flags["/"].startswith("ro,") and flags["/ro"].startswith("ro,")
    assert flags["/v"].startswith("rw,")


@root
def test_volumes_keep_the_host_mounts_flags(rootfs, tmp_path):
    """A bind remount sets exactly the flags it is given: the read-only
    remount of a `:ro` volume must repeat the host mount's nosuid and
    noexec, or a volume from a nosuid, noexec host mount would lose them."""
    source = tmp_path / "source"
    source.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nosuid,noexec,size=1m", "tmpfs",
                    str(source)], check=True)
    try:
        result = sh(rootfs, "awk '$5 == \"/v\" || $5 == \"/ro\" {print $5, $6}' "
                    "/proc/self/mountinfo",
                    options=["-v", "%s:/v" % source, "-v", "%s:/ro:ro" % source])
    finally:
        subprocess.run(["umount", str(source)], check=True)
    flags = {point: set(value.split(",")) for point, value in
             (line.split() for line in result.out.splitlines())}
    assert set(flags) == {"/v", "/ro"}, result.out + result.err
    assert {"rw", "nosuid", "nodev", "noexec"} <= flags["/v"], flags
    assert {"ro", "nosuid", "nodev", "noexec"} <= flags["/ro"], flags


@root
def test_privileged_opens_every_device(device_rootfs, host_device):
    result = run(device_rootfs, "head", "-c", "16", "/nodes/disk", options=["--privileged"])
    assert result.stdout == device_content(host_device), result.err


@root
def test_standard_devices_still_open(rootfs):
    script = ("echo x > /dev/null && head -c 3 /dev/zero | wc -c && head -c 3 /dev/random | wc -c"
              " && head -c 3 /dev/urandom | wc -c; echo x > /dev/full; echo x > /dev/tty")
    result = sh(rootfs, script, options=["-u", "1000"])
    assert result.out.split() == ["3", "3", "3"]
    assert "No space left on device" in result.err       # full, opened
    assert "No such device or address" in result.err     # tty opened: no terminal
    assert not any(d in result.err for d in DENIED), result.err
    term = Terminal(MINIDOCKER + ["run", "--network=none", "--rm", "-it", rootfs, "/bin/sh"])
    try:
        term.read_until("# ")
        term.send("echo a > /dev/tty && echo b > /dev/console && exec 3<>/dev/ptmx && tty"
                  " && echo ok-$((1+1))\n")
        assert "/dev/pts/0" in term.read_until("ok-2")
        term.send("exit\n")
        assert term.proc.wait(timeout=20) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()
        term.close()


# Nodes made inside and opened for writing (no byte is written): the
# standard devices, the host's kernel log, memory, screen, console, tun,
# loop and nvme block devices. What matters is which opens fail with EPERM.
DEVICE_PROBES = [("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9), ("c", 5, 0),
                 ("c", 5, 2), ("c", 136, 0), ("c", 1, 11), ("c", 7, 0), ("c", 4, 1),
                 ("c", 5, 1), ("c", 10, 200), ("b", 7, 0), ("b", 259, 0)]
DEVICE_PROBE_SCRIPT = "".join(
    "mknod /dev/p%d %s %d %d; if why=$( (exec 3> /dev/p%d) 2>&1 ); then echo %s %d %d open; "
    "else echo %s %d %d ${why##*: }; fi\n" % (i, kind, major, minor, i, kind, major, minor,
                                             kind, major, minor)
    for i, (kind, major, minor) in enumerate(DEVICE_PROBES))


def refused(output):
    return {tuple(line.split()[:3]) for line in output.splitlines()
            if line.endswith("Operation not permitted")}


@root
def test_device_list_is_runcs_but_tun(rootfs, tmp_path):
    """The same nodes made and opened under runc, which builds the device
    cgroup from its own default list (devices.allow on v1, its eBPF program
    on v2): the same refusals, c 5:1 (the host's console) among them, but
    for c 10:200, tun, which runc allows."""
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed (apt-get install runc)")
    bundle = str(tmp_path / "bundle")
    os.makedirs(bundle)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    with open(os.path.join(bundle, "config.json")) as handle:
        config = json.load(handle)
    caps = ["CAP_" + name for name in md.DOCKER_DEFAULT_CAPS]
    config["process"].update(terminal=False, args=["/bin/sh", "-c", DEVICE_PROBE_SCRIPT])
    config["process"]["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    config["root"] = {"path": rootfs, "readonly": True}
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump(config, handle)
    theirs = subprocess.run(["runc", "run", "--bundle", bundle, "md-dev-%d" % os.getpid()],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert theirs.returncode == 0, theirs.stderr
    ours = sh(rootfs, DEVICE_PROBE_SCRIPT, options=["--security-opt", "seccomp=unconfined"])
    assert len(ours.out.splitlines()) == len(theirs.stdout.splitlines()) == len(DEVICE_PROBES)
    tun = ("c", "10", "200")
    assert tun not in refused(theirs.stdout) and ("c", "5", "1") in refused(theirs.stdout)
    assert refused(ours.out) == refused(theirs.stdout) | {tun}
    assert ("c", "1", "3", "open") in {tuple(l.split()) for l in ours.out.splitlines()}


@root
def test_a_device_that_cannot_be_made_is_one_line(rootfs):
    bad(["run", "--rm", "--device", "/dev/zero:/dev/null", rootfs, "true"],
        "--device /dev/null: mknod: File exists")


# ---------------------------------------------------------------------------
# 8. cgroup release_agent, root: CVE-2022-0492 as it is really done
# ---------------------------------------------------------------------------

# Inside a container with CAP_SYS_ADMIN: mount each cgroup hierarchy; where
# a release_agent file is found, write a payload of the container's (by its
# host path, the overlay's upperdir) into it, set notify_on_release on a new
# child cgroup and empty it: the kernel would run the payload as host root.
RELEASE_AGENT_ATTACK = r"""
upper=$(sed -n 's/.*[ ,]upperdir=\([^,]*\).*/\1/p' /proc/self/mountinfo | head -n 1)
printf '#!/bin/sh\ntouch %s\n' > /payload && chmod 755 /payload
attack() {
    [ -e $1/release_agent ] && echo "$upper/payload" > $1/release_agent && echo "$2: agent set"
    mkdir $1/attack && echo 1 > $1/attack/notify_on_release &&
        sh -c "echo \$\$ > $1/attack/cgroup.procs"
}
for options in %s; do
    dir=/tmp/$options
    mkdir -p $dir
    mount -t cgroup -o $options cgroup $dir 2>/dev/null || { echo "$options: refused"; continue; }
    echo "$options: mounted"
    [ -z "$(find $dir -name release_agent)" ] || echo "$options: has a release_agent"
    [ -z "$(find $dir -mindepth 1 -type d)" ] || echo "$options: sees cgroups not its own"
    attack $dir $options
done
mkdir /tmp/v2 && mount -t cgroup2 none /tmp/v2 && echo "cgroup2: mounted"
[ -z "$(find /tmp/v2 -mindepth 1 -type d)" ] || echo "cgroup2: sees cgroups not its own"
sleep 1
for dir in /tmp/*/attack; do [ ! -d $dir ] || rmdir $dir; done
"""


@root
def test_release_agent_is_out_of_reach_with_sys_admin(rootfs, tmp_path):
    layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                               md.read_text("/proc/self/cgroup"))
    hierarchies = {}
    for name, (mount, _) in layout.v1.items():
        hierarchies.setdefault(mount, []).append(name)
    options = sorted(",".join(sorted(names)).replace("name=", "none,name=")
                     for names in hierarchies.values())
    # a new hierarchy would have its own root; controllers unbound on pure v2
    fresh = ["none,name=minidocker-new"] + ([] if layout.v1 else ["freezer", "devices", "memory"])
    marker = tmp_path / "escaped"
    agents = {mount: md.read_text(mount + "/release_agent") for mount in hierarchies}
    # minidocker runs where its caller is, not in the suite's own cgroups
    # (own_v1_cgroups): in the cgroup above, the hierarchy's root on most hosts.
    homes = [os.path.dirname(os.path.join(mount, own.strip("/")))
             for mount, own in set(layout.v1.values()) | hybrid_v2(layout)]

    def go_home():
        for home in homes:
            md.write_cgroup_file(home, "cgroup.procs", os.getpid())

    script = RELEASE_AGENT_ATTACK % (marker, " ".join(options + fresh))
    try:
        result = subprocess.run(MINIDOCKER + ["--debug", "run", "--rm", "--network=none",
                                              "--cap-add", "SYS_ADMIN", rootfs, "sh", "-c",
                                              script],
                                preexec_fn=go_home, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60)
        cid = re.search(r"debug: container ([0-9a-f]{64})", result.stderr).group(1)
        time.sleep(1)
        assert not marker.exists(), "the payload ran on the host"
        expected = ["%s: mounted" % o for o in options] + ["%s: refused" % o for o in fresh]
        assert result.stdout.splitlines() == expected + ["cgroup2: mounted"], result.stdout
        assert not [home for home in homes  # its own (others may run minidocker here)
                    if os.path.exists(os.path.join(home, "minidocker-" + cid))]
    finally:
        for mount, agent in agents.items():  # what the old code let the attack change
            if md.read_text(mount + "/release_agent") != agent:
                md.write_cgroup_file(mount, "release_agent", agent.strip() or "\n")
            if os.path.isdir(mount + "/attack"):
                os.rmdir(mount + "/attack")


# ---------------------------------------------------------------------------
# defaults: what a Docker user relies on without asking (no_new_privs off,
# the container's own /sys/fs/cgroup, swap, the /etc files, netns sysctls,
# --privileged's /dev)
# ---------------------------------------------------------------------------

SUID_C = r"""
/* suid: run setuid root by a user of the container, it prints what that
 * made of it (its ids, capabilities, no_new_privs and seccomp mode), then
 * the result of keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING),
 * which the kernel grants anyone and the default profile denies. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
    char line[256];
    FILE *status = fopen("/proc/self/status", "r");
    while (status && fgets(line, sizeof line, status))
        if (!strncmp(line, "Uid:", 4) || !strncmp(line, "Cap", 3)
                || !strncmp(line, "NoNewPrivs:", 11) || !strncmp(line, "Seccomp:", 8))
            fputs(line, stdout);
    long r = syscall(SYS_keyctl, 0, -3, 0);
    printf("keyctl %s errno %d\n", r == -1 ? "failed" : "passed", r == -1 ? errno : 0);
    return 0;
}
"""


@pytest.fixture(scope="session")
def suid(tmp_path_factory):
    """A setuid-root program, static; returns the -v flags that put it at
    /suid/suid (a bind mount: setuid bits work there, as in Docker)."""
    directory = tmp_path_factory.mktemp("suid")
    (directory / "suid.c").write_text(SUID_C)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(directory / "suid"),
                    str(directory / "suid.c")], check=True)
    os.chmod(str(directory / "suid"), 0o4755)
    os.chmod(str(directory), 0o755)
    return ["-v", "%s:/suid:ro" % directory]


def suid_report(output):
    """suid's lines -> {field: value}, the Uid field as its four ids."""
    fields = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    fields = {key: value.strip() for key, value in fields.items()}
    fields["Uid"] = fields["Uid"].split()
    return fields


@root
def test_setuid_file_raises_a_user_to_the_bounding_set_and_no_further(rootfs, suid):
    """no_new_privs is off, as in Docker: a setuid-root file run by a
    non-root user makes it root, with the bounding set's capabilities
    (Docker's fourteen), never one more, and still under the seccomp
    filter, which was loaded before the capabilities were dropped. The
    --init reaper runs the command as stage 2 does: the same holds."""
    script = "grep NoNewPrivs /proc/self/status; /suid/suid"
    for options in ([], ["--init"]):
        result = sh(rootfs, script, options=suid + ["-u", "alice"] + options)
        assert result.returncode == 0, result.err
        assert result.out.startswith("NoNewPrivs:\t0\n"), result.out
        raised = suid_report(result.out.split("\n", 1)[1])
        assert raised["Uid"] == ["1000", "0", "0", "0"], result.out  # euid root
        for field in ("CapPrm", "CapEff", "CapBnd"):
            assert int(raised[field], 16) == DOCKER_DEFAULT_CAPS, (field, result.out)
        assert int(raised["CapInh"], 16) == 0 and int(raised["CapAmb"], 16) == 0
        assert raised["Seccomp"] == "2", result.out
        assert "keyctl failed errno %d" % errno.EPERM in result.out, result.out
    # The same call without the filter passes: the probe tells them apart.
    unconfined = sh(rootfs, "/suid/suid",
                    options=suid + ["-u", "alice", "--security-opt", "seccomp=unconfined"])
    assert "keyctl passed" in unconfined.out, unconfined.out


@root
def test_no_new_privileges_keeps_a_setuid_file_from_raising_in_run_and_exec(rootfs, suid):
    """--security-opt no-new-privileges: the setuid bit raises nobody, in
    the container's command and in what exec adds to it (exec reads the
    saved spec)."""
    def not_raised(output):
        report = suid_report(output)
        assert report["Uid"] == ["1000"] * 4, output
        assert int(report["CapEff"], 16) == 0 and int(report["CapPrm"], 16) == 0, output
        assert report["NoNewPrivs"] == "1" and report["Seccomp"] == "2", output
        assert "keyctl failed errno %d" % errno.EPERM in output, output
    ran = run(rootfs, "/suid/suid",
              options=suid + ["-u", "alice", "--security-opt", "no-new-privileges"])
    not_raised(ran.out)
    cid = detached(rootfs, "--security-opt", "no-new-privileges:true", *suid)
    try:
        not_raised(minidocker("exec", "-u", "alice", cid, "/suid/suid").out)
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_a_profile_must_allow_the_privilege_drop_without_no_new_privileges(rootfs, tmp_path):
    """Without no_new_privs the filter is loaded before the drop (seccomp(2)
    needs CAP_SYS_ADMIN then): a profile that denies setgroups stops the
    start with one line that says so; with the flag it loads last."""
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["setgroups"], "action": "SCMP_ACT_ERRNO"}]}))
    bad(["run", "--security-opt", "seccomp=%s" % profile, rootfs, "true"],
        "dropping privileges under the seccomp filter: Operation not permitted (hint: ")
    assert run(rootfs, "true", options=["--security-opt", "seccomp=%s" % profile,
                                        "--security-opt", "no-new-privileges"]).returncode == 0


def test_no_new_privileges_forms():
    """Docker's forms: bare, =BOOL and :BOOL with strconv.ParseBool's words;
    the last one wins; never under --privileged, even when asked for, as
    Docker, which sets it only for a container that is not privileged."""
    assert md.parse_security_opts([]) == (None, False)
    for on in ("no-new-privileges", "no-new-privileges=true", "no-new-privileges:true",
               "no-new-privileges=1", "no-new-privileges=True"):
        assert md.parse_security_opts([on]) == (None, True), on
    for off in ("no-new-privileges=false", "no-new-privileges:0", "no-new-privileges=F"):
        assert md.parse_security_opts(["no-new-privileges", off]) == (None, False), off
    for wrong in ("no-new-privileges=yes", "no-new-privileges=", "no-new-privileges=truex"):
        with pytest.raises(md.MiniDockerError):
            md.parse_security_opts([wrong])
    assert parse("--security-opt", "no-new-privileges", "/", "sh").no_new_privs
    assert not parse("--privileged", "--security-opt", "no-new-privileges", "/", "sh").no_new_privs


def test_cgroup_view_plan_follows_the_hosts_mounts():
    """v1 hierarchies (co-mounted, named, hybrid's cgroup2) or v2's one, as
    the host has them at /sys/fs/cgroup; a superblock's options but rw and
    release_agent; nothing when a volume covers the place."""
    hybrid = ("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
              "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
              "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup "
              "rw,xattr,release_agent=/x/agent,name=systemd\n"
              "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
              "42 23 0:29 / /mnt/elsewhere rw - cgroup cgroup rw,cpu,cpuacct\n")
    assert md.plan_cgroup_view(hybrid) == [("cpu,cpuacct", "cgroup", "cpu,cpuacct"),
                                           ("systemd", "cgroup", "xattr,name=systemd"),
                                           ("unified", "cgroup2", "")]
    v2 = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
    assert md.plan_cgroup_view(v2) == [("", "cgroup2", "")]
    for targets in (["/sys/fs/cgroup"], ["/sys/fs/cgroup/memory"], ["/sys"], ["/sys/fs/"]):
        assert md.plan_cgroup_view(v2, targets) == [], targets
    assert md.plan_cgroup_view(v2, ["/sys/fsx", "/srv"]) != []


def cgroup_lines(mountinfo):
    return [line for line in mountinfo.splitlines() if " - cgroup" in line]


@root
def test_cgroup_view_is_the_containers_own_and_read_only(rootfs):
    """/sys/fs/cgroup in the container: its own cgroup as the root (no
    other cgroup below, the shell in the root's cgroup.procs), the
    limit -m set readable where a JVM reads it, and every write refused
    with EROFS (cgroup.procs, the limit, release_agent, notify_on_release).
    Under --privileged the view is read-write, as in Docker. The host's
    cgroup mounts are as they were."""
    layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                               md.read_text("/proc/self/cgroup"))
    memory, limit = ("/sys/fs/cgroup/memory", "memory.limit_in_bytes") \
        if "memory" in layout.v1 else ("/sys/fs/cgroup", "memory.max")
    before = cgroup_lines(md.read_text("/proc/self/mountinfo"))
    script = ("cat %s/%s; echo --; find /sys/fs/cgroup -mindepth %d -type d; "
              "grep -qx $$ %s/cgroup.procs || echo not in its cgroup.procs; "
              "echo --; for f in cgroup.procs %s release_agent notify_on_release; do "
              "(echo 1 >%s/$f) 2>&1 | grep -o 'Read-only file system'; done"
              % (memory, limit, 2 if layout.v1 else 1, memory, limit, memory))
    result = sh(rootfs, script, options=["-m", "64m"])
    assert result.returncode == 0, result.err
    seen, below, refused = result.out.split("--\n")
    assert seen == "67108864\n", result.out
    assert below == "", "cgroups other than its own in the view: %r" % below
    assert refused.splitlines() == ["Read-only file system"] * 4, result.out
    # Under --privileged the same mounts are read-write (a write to the
    # view's root files is then the kernel's to refuse: v2's nsdelegate
    # keeps a namespace's root limits from inside).
    options = "awk '$5 == \"%s\" {print substr($6, 1, 3)}' /proc/self/mountinfo" % memory
    assert sh(rootfs, options, options=["--privileged"]).out == "rw,\n"
    assert cgroup_lines(md.read_text("/proc/self/mountinfo")) == before


@root
def test_escape_cgroup_view_is_never_mounted_through_a_volume(hostile):
    """The image points /vol at /sys/fs, so that `-v vol:/vol` covers the
    container's /sys/fs with a volume, which other containers may share
    and change while this one mounts its cgroup view there: the view,
    mounted by path, would follow whatever they put at cgroup/ (and its
    read-only remounts could miss a mount that stays writable). A volume
    led over /sys/fs replaces the view, as `-v vol:/sys/fs` does: the
    container starts, with no cgroup mount, whether the volume is empty
    or holds a cgroup/ directory."""
    os.symlink("/sys/fs", os.path.join(hostile, "vol"))
    planted = os.path.join(os.environ["MINIDOCKER_ROOT"], "lib/volumes/cgview/_data/cgroup")
    try:
        minidocker("volume", "create", "cgview")
        for prepared in (True, False):  # a volume with cgroup/ in it, then an empty one
            if prepared:
                os.mkdir(planted)
            result = sh(hostile, "grep -c ' - cgroup' /proc/self/mountinfo || :",
                        options=["-v", "cgview:/vol"], check_clean=False)
            assert (result.returncode, result.out) == (0, "0\n"), result.err
            if prepared:
                assert os.listdir(planted) == []
                os.rmdir(planted)
    finally:
        minidocker("volume", "rm", "cgview")
    assert_nothing_left()


def test_memory_alone_implies_as_much_swap_as_memory():
    """Docker's default: -m without --memory-swap (or with 0) is memory
    plus swap of twice the memory; an explicit one is as given."""
    implied = {"memory": 100 << 20, "memory_swap": 200 << 20, "memory_swap_implied": True}
    assert resources("-m", "100m") == implied
    assert resources("-m", "100m", "--memory-swap", "0") == implied
    assert resources("-m", "100m", "--memory-swap", "100m") == {"memory": 100 << 20,
                                                                "memory_swap": 100 << 20}
    assert md.cgroup_writes(implied, 2)[:2] == [("memory", "memory.max", 100 << 20),
                                                ("memory", "memory.swap.max", 100 << 20)]
    assert md.cgroup_writes(implied, 1)[1] == ("memory", "memory.memsw.limit_in_bytes",
                                               200 << 20)


@root
def test_memory_swap_default_as_the_container_reads_it(rootfs):
    """-m 64m alone: the swap limit in the container's own cgroup, read
    through its /sys/fs/cgroup: v1's memsw limit 128m, v2's swap.max 64m
    (v2 counts swap alone). A host that does not account swap limits the
    memory alone, with a warning, as Docker does."""
    layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                               md.read_text("/proc/self/cgroup"))
    if "memory" in layout.v1:  # the test's own cgroup (a root cgroup has no limit files)
        path, expected = "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", 128 << 20
        memory_cgroups = [os.path.join(layout.v1["memory"][0], layout.v1["memory"][1].strip("/"))]
    else:
        path, expected = "/sys/fs/cgroup/memory.swap.max", 64 << 20
        memory_cgroups = [d for d, _, files in os.walk(layout.v2_mount) if "memory.max" in files]
    accounted = any(os.path.exists(os.path.join(d, os.path.basename(path)))
                    for d in memory_cgroups)
    result = sh(rootfs, "cat %s 2>/dev/null || echo absent" % path, options=["-m", "64m"])
    assert result.returncode == 0, result.err
    if accounted:
        assert result.out == "%d\n" % expected and result.err == "", result.err
    else:
        assert result.out == "absent\n" and "memory limited without swap" in result.err


@root
def test_read_only_covers_the_etc_files(rootfs):
    """--read-only: /etc/hosts, /etc/hostname and /etc/resolv.conf, bound
    over the root, are read-only too, as Docker binds them; without it
    they are writable, as in Docker."""
    script = ("for f in hosts hostname resolv.conf; do (echo x >> /etc/$f) 2>&1 | "
              "grep -o 'Read-only file system' || echo $f written; done")
    assert sh(rootfs, script, options=["--read-only"]).out == "Read-only file system\n" * 3
    assert sh(rootfs, script).out == "hosts written\nhostname written\nresolv.conf written\n"


@root
def test_own_network_namespace_lets_any_user_bind_low_ports_and_ping(rootfs):
    """Docker's sysctls in a network namespace of the container's own: a
    non-root user binds port 80 (on loopback, --network none) and may open
    ICMP echo sockets; the host's own values are untouched."""
    names = ["/proc/sys/net/ipv4/ip_unprivileged_port_start", "/proc/sys/net/ipv4/ping_group_range"]
    host = [md.read_text(name) for name in names]
    script = ("cat %s; nc -l -p 80 127.0.0.1 & sleep 0.3; netstat -ltn | grep -c 127.0.0.1:80; "
              "kill $!" % " ".join(names))
    result = sh(rootfs, script, options=["-u", "alice"])
    assert result.out.split("\n")[:3] == ["0", "0\t2147483647", "1"], (result.out, result.err)
    assert [md.read_text(name) for name in names] == host


@root
def test_privileged_gets_the_hosts_dev_tree_but_its_console_and_terminals(rootfs):
    """--privileged: every device node of the host's /dev, subdirectories
    too (net/tun opens), at the same path with the same numbers, mode and
    owner, as Docker gives; never the host's /dev/console nor its pts (the
    container's devpts holds only its own ptmx)."""
    host = {"/dev/" + name: "%x:%x %o %d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev),
                                                 st.st_mode, st.st_uid, st.st_gid)
            for name, st in md.host_devices()}
    assert "/dev/net/tun" in host and "/dev/console" not in host
    script = ("find /dev \\( -type c -o -type b \\) -exec stat -c '%n %t:%T %f %u:%g' {} +; "
              "exec 3<>/dev/net/tun && echo tun opened; test -e /dev/console || echo no console")
    result = sh(rootfs, script, options=["--privileged"])
    inside = {}
    for line in result.out.splitlines()[:-2]:
        path, numbers, mode, owner = line.split()
        inside[path] = "%s %o %s" % (numbers, int(mode, 16), owner)
    assert result.out.splitlines()[-2:] == ["tun opened", "no console"], result.out
    own = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
           "/dev/pts/ptmx", "/dev/ptmx"}  # ptmx: a symlink to pts/ptmx, as runc makes it
    assert {path: inside[path] for path in host if path not in own} == \
        {path: value for path, value in host.items() if path not in own}
    assert set(inside) - set(host) <= own and [p for p in inside if p.startswith("/dev/pts/")] \
        == ["/dev/pts/ptmx"], sorted(set(inside) - set(host))


# ---------------------------------------------------------------------------
# 10. seccomp, unit: the syscall tables, a BPF interpreter, the compiler
# ---------------------------------------------------------------------------

def header_syscalls(*cpp_args):
    """{name: number} from <asm/unistd.h>, through the C preprocessor, so that
    the kernel's own conditionals (__ARCH_WANT_*) decide what is in it."""
    text = subprocess.run(["cpp", "-dM", "-nostdinc"] + list(cpp_args) + ["-"],
                          input="#include <asm/unistd.h>\n", capture_output=True,
                          text=True, check=True).stdout
    macros = dict(line.split(None, 2)[1:] for line in text.splitlines()
                  if len(line.split(None, 2)) == 3)

    def value(expr):
        expr = expr.strip().strip("()")
        if expr.isdigit():
            return int(expr)
        name, _, offset = expr.partition("+")
        return value(macros[name.strip()]) + (int(offset) if offset else 0)
    return {name[5:]: value(expr) for name, expr in macros.items()
            if name.startswith("__NR_") and name not in ("__NR_syscalls",
                                                         "__NR_arch_specific_syscall")}


def test_syscall_tables_x86_64_match_linux_libc_dev():
    header = header_syscalls("-I/usr/include/x86_64-linux-gnu", "-I/usr/include", "-D__x86_64__")
    assert md.syscall_numbers("x86_64") == header


def test_syscall_tables_aarch64_match_linux_libc_dev_arm64_cross():
    include = "/usr/aarch64-linux-gnu/include"
    assert os.path.exists(include + "/asm/unistd.h"), "apt-get install linux-libc-dev-arm64-cross"
    header = header_syscalls("-I" + include, "-D__BITS_PER_LONG=64")
    assert md.syscall_numbers("aarch64") == header


BPF_NAMES = {md.BPF_LD_W_ABS: "ld", md.BPF_AND_K: "and", md.BPF_JA: "ja", md.BPF_JEQ_K: "jeq",
             md.BPF_JGT_K: "jgt", md.BPF_JGE_K: "jge", md.BPF_RET_K: "ret"}


def run_bpf(code, nr, arch="x86_64", args=(0,) * 6):
    """Classic BPF, as the kernel runs a seccomp filter, for the instructions
    minidocker emits. Checks what the kernel's checker would refuse: a load
    outside seccomp_data or unaligned, a jump out of the program. Returns
    (action, instructions executed)."""
    program = [struct.unpack_from(md.SOCK_FILTER, code, i) for i in range(0, len(code), 8)]
    nr = nr - (1 << 32) if nr >= 1 << 31 else nr  # seccomp_data.nr is an int
    data = struct.pack(md.SECCOMP_DATA, nr, md.AUDIT_ARCH.get(arch, arch), 0, *args)
    pc = a = steps = 0
    while True:
        assert 0 <= pc < len(program), "jumped out of the program"
        op, jt, jf, k = program[pc]
        steps += 1
        pc += 1
        if op == md.BPF_LD_W_ABS:
            assert k % 4 == 0 and k + 4 <= 64
            a = struct.unpack_from("=I", data, k)[0]
        elif op == md.BPF_AND_K:
            a &= k
        elif op == md.BPF_JA:
            pc += k
        elif op in (md.BPF_JEQ_K, md.BPF_JGT_K, md.BPF_JGE_K):
            taken = {md.BPF_JEQ_K: a == k, md.BPF_JGT_K: a > k, md.BPF_JGE_K: a >= k}[op]
            pc += jt if taken else jf
        elif op == md.BPF_RET_K:
            return k, steps
        else:
            raise AssertionError("unknown BPF instruction 0x%x" % op)


# <linux/seccomp.h>'s return values, written out here and not taken from
# minidocker, so that the model below shares no code with what it checks.
MODEL_ACTIONS = {"SCMP_ACT_KILL": 0, "SCMP_ACT_KILL_THREAD": 0,
                 "SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_TRAP": 0x00030000,
                 "SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7FF00000,
                 "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000}
MODEL_ARCH_NAMES = {"x86_64": ("SCMP_ARCH_X86_64", "amd64"),
                    "aarch64": ("SCMP_ARCH_AARCH64", "arm64")}


def model_action(name, errno_ret):
    """An action as runc hands it to libseccomp: ERRNO and TRACE carry
    errnoRet in their low 16 bits, EPERM (1) when it is not given."""
    value = MODEL_ACTIONS[name]
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        value |= 1 if errno_ret is None else errno_ret
    return value


def model_applies(rule, arch, cap_names, release):
    """Docker's includes and excludes, read from its profile format: a rule
    counts when every included cap is held, the architecture is included
    (by either of its names), the kernel is at least minKernel, and no
    excluded cap or architecture matches."""
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    names = set(MODEL_ARCH_NAMES[arch])
    if not set(includes.get("caps") or []) <= cap_names:
        return False
    if includes.get("arches") and not names & set(includes["arches"]):
        return False
    if includes.get("minKernel"):
        wanted = [int(n) for n in includes["minKernel"].split(".")[:2]]
        if [int(n) for n in release.split(".")[:2]] < wanted:
            return False
    return not (set(excludes.get("caps") or []) & cap_names
                or names & set(excludes.get("arches") or []))


def model(profile, nr, args=(0,) * 6, caps=frozenset(), arch="x86_64"):
    """What the profile means, written directly from Docker's and libseccomp's
    rules and not compiled: the reference the BPF program is checked against.
    It uses only minidocker's tables of names (syscall and capability
    numbers, which other tests check against the kernel's headers)."""
    table = md.syscall_numbers(arch)
    default = model_action(profile.get("defaultAction"), profile.get("defaultErrnoRet"))
    cap_names = {"CAP_" + md.CAP_NAMES[c] for c in caps}
    named, unconditional, conditional = set(), [], []
    nr &= 0xFFFFFFFF
    for rule in profile.get("syscalls") or []:
        if not model_applies(rule, arch, cap_names, "6.1.0"):
            continue
        numbers = {table[name] for name in rule["names"] if name in table}
        named |= numbers
        action = model_action(rule["action"], rule.get("errnoRet"))
        if nr not in numbers or action == default:
            continue  # libseccomp refuses a rule with the default action
        conditions = rule.get("args") or []
        indexes = [c["index"] for c in conditions]
        if not conditions:
            unconditional.append(action)
        elif len(set(indexes)) == len(indexes):
            conditional.append((conditions, action))
        else:  # runc: one rule per condition
            conditional += [([c], action) for c in conditions]
    if arch == "x86_64" and 0x40000000 <= nr < 0xFFFFFFFF:  # __X32_SYSCALL_BIT
        return MODEL_ACTIONS["SCMP_ACT_KILL_PROCESS"]
    if unconditional:
        return unconditional[0]
    for conditions, action in conditional:
        if all(holds(args[c["index"]], c["op"], c.get("value", 0), c.get("valueTwo", 0))
               for c in conditions):
            return action
    if named and nr > max(named) and default not in (MODEL_ACTIONS["SCMP_ACT_ALLOW"],
                                                     MODEL_ACTIONS["SCMP_ACT_LOG"]):
        return MODEL_ACTIONS["SCMP_ACT_ERRNO"] | errno.ENOSYS
    return default


def holds(arg, op, value, value_two):
    return {"SCMP_CMP_EQ": arg == value, "SCMP_CMP_NE": arg != value,
            "SCMP_CMP_LT": arg < value, "SCMP_CMP_LE": arg <= value,
            "SCMP_CMP_GT": arg > value, "SCMP_CMP_GE": arg >= value,
            "SCMP_CMP_MASKED_EQ": arg & value == value_two}[op]


def compiled(profile, caps=frozenset(), arch="x86_64"):
    return md.plan_seccomp(profile, caps, "test", machine=arch, release="6.1.0")[0]


def errno_of(name):
    return md.SECCOMP_RET_ERRNO | getattr(errno, name)


ALLOW, EPERM = md.SECCOMP_RET_ALLOW, md.SECCOMP_RET_ERRNO | errno.EPERM
DEFAULT_CAPS = frozenset(md.CAP_NAMES.index(n) for n in md.DOCKER_DEFAULT_CAPS)


def test_bpf_golden_program():
    """One allowed call, laid out by hand: arch check, then the search."""
    profile = {"defaultAction": "SCMP_ACT_ERRNO",
               "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]}
    code = compiled(profile)
    enosys, kill = md.SECCOMP_RET_ERRNO | errno.ENOSYS, md.SECCOMP_RET_KILL_PROCESS
    expected = [
        (0x20, 0, 0, 4),             # ld [arch]
        (0x15, 1, 0, 0xC000003E),    # jeq AUDIT_ARCH_X86_64
        (0x06, 0, 0, kill),          # ret KILL_PROCESS
        (0x20, 0, 0, 0),             # ld [nr]
        (0x35, 3, 0, 40),            # jge 40 (above getpid)
        (0x35, 1, 0, 39),            # jge 39 (getpid)
        (0x06, 0, 0, EPERM),         # ret ERRNO(EPERM): 0-38
        (0x06, 0, 0, ALLOW),         # ret ALLOW: 39
        (0x35, 1, 0, 0x40000000),    # jge X32_SYSCALL_BIT
        (0x06, 0, 0, enosys),        # ret ERRNO(ENOSYS): 40 up to x32
        (0x35, 1, 0, 0xFFFFFFFF),    # jge -1
        (0x06, 0, 0, kill),          # x32
        (0x06, 0, 0, enosys),        # -1
    ]
    assert code == b"".join(struct.pack("=HBBI", *i) for i in expected)
    assert code[:8] == bytes.fromhex("2000000004000000")


def test_default_profile_file_is_the_built_in_one():
    with open(os.path.join(HERE, "profiles", "default.json")) as handle:
        assert json.load(handle) == md.default_profile(), (
            "regenerate: python3 -c 'import json, minidocker as m; "
            "print(json.dumps(m.default_profile(), indent=2))' > profiles/default.json")


def test_default_profile_classifies_every_syscall():
    """Every system call of both tables is named by the default profile on
    purpose, allowed or denied with a reason: none falls to the default."""
    named = {name for rule in md.default_profile()["syscalls"] for name in rule["names"]}
    for arch in md.SYSCALL_TABLES:
        assert set(md.syscall_numbers(arch)) - named == set(), arch
    assert all(rule["comment"] for rule in md.default_profile()["syscalls"])


@pytest.mark.parametrize("arch", sorted(md.SYSCALL_TABLES))
def test_default_profile_decisions(arch):
    """Every number of the table, and a few beyond, as the model says, for
    default caps and with CAP_SYS_ADMIN and CAP_SYS_PTRACE."""
    numbers = md.syscall_numbers(arch)
    for caps in (DEFAULT_CAPS, DEFAULT_CAPS | {md.cap_number("SYS_ADMIN"),
                                              md.cap_number("SYS_PTRACE")}):
        code = compiled(md.default_profile(), caps, arch)
        for nr in list(range(0, 500)) + [1000, 0x3FFFFFFF, 0x40000000 + 39, 0xFFFFFFFF]:
            assert run_bpf(code, nr, arch)[0] == model(md.default_profile(), nr, caps=caps,
                                                       arch=arch), nr
    code = compiled(md.default_profile(), DEFAULT_CAPS, arch)
    decide = lambda name, *args: run_bpf(code, numbers[name], arch, args + (0,) * (6 - len(args)))[0]  # noqa: E731
    for name in ("read", "write", "openat", "execve", "mmap", "futex", "getpid", "socket",
                 "ioctl", "clone", "personality", "mknodat", "setuid", "epoll_pwait"):
        assert decide(name) == ALLOW, name
    for name in ("mount", "umount2", "unshare", "setns", "keyctl", "add_key", "request_key",
                 "bpf", "perf_event_open", "userfaultfd", "kexec_load", "init_module",
                 "finit_module", "reboot", "swapon", "swapoff", "settimeofday",
                 "clock_settime", "ptrace", "io_uring_setup", "open_by_handle_at"):
        assert decide(name) == EPERM, name
    assert decide("clone3") == errno_of("ENOSYS")
    assert decide("clone", md.CLONE_NEWUSER | 17) == EPERM
    assert decide("clone", 0x3D0F00 | 17) == ALLOW  # what fork() and pthreads pass
    assert decide("socket", 38) == decide("socket", 40) == errno_of("EAFNOSUPPORT")
    assert decide("socket", 38 | 1 << 32) == decide("socket", 64) == EPERM  # not a family
    assert decide("socket", 39) == decide("socket", 47) == decide("socket", 63) == ALLOW
    assert decide("socket", 2) == decide("socket", 1) == ALLOW
    assert decide("ioctl", 0, 0x5412) == decide("ioctl", 0, 0x541C) == EPERM
    assert decide("ioctl", 0, 0x5412 | 1 << 32) == EPERM  # the kernel reads 0x5412
    assert decide("ioctl", 0, 0x5413) == decide("ioctl", 0, 0x5411) == ALLOW
    assert decide("ioctl", 0, 0xFFFFFFFF80045430) == ALLOW  # TIOCGPTN from musl
    for request in (0, 0x541B, 0x541D, 0x15412, 0xC0305412, 0xFFFFFFFF):
        assert decide("ioctl", 0, request) == ALLOW, hex(request)
    assert decide("personality", 0xFFFFFFFF) == decide("personality", 8) == ALLOW
    assert decide("personality", 0x0400000) == EPERM  # READ_IMPLIES_EXEC
    assert decide("mknodat", 0, 0, 0o020644) == decide("mknodat", 0, 0, 0o060644) == EPERM
    assert decide("mknodat", 0, 0, 0o010644) == decide("mknodat", 0, 0, 0o140755) == ALLOW
    if "mknod" in numbers:  # x86_64 only; aarch64 has just mknodat
        assert decide("mknod", 0, 0o020644 | 1 << 40) == EPERM
        assert decide("mknod", 0, 0o100644) == ALLOW
    with_admin = compiled(md.default_profile(), DEFAULT_CAPS | {md.cap_number("SYS_ADMIN")}, arch)
    assert run_bpf(with_admin, numbers["mount"], arch)[0] == ALLOW
    assert run_bpf(with_admin, numbers["clone"], arch, (md.CLONE_NEWUSER,) + (0,) * 5)[0] == ALLOW


def test_foreign_architectures_and_x32_are_killed():
    code = compiled(md.default_profile(), DEFAULT_CAPS)
    assert run_bpf(code, 20, arch=0x40000003)[0] == md.SECCOMP_RET_KILL_PROCESS  # i386
    assert run_bpf(code, 39, arch="aarch64")[0] == md.SECCOMP_RET_KILL_PROCESS
    assert run_bpf(code, 0x40000000 | 39)[0] == md.SECCOMP_RET_KILL_PROCESS  # x32 getpid
    arm = compiled(md.default_profile(), DEFAULT_CAPS, "aarch64")
    assert run_bpf(arm, 172, arch=0x40000028)[0] == md.SECCOMP_RET_KILL_PROCESS  # 32-bit arm
    assert run_bpf(arm, 0x40000000 | 172, arch="aarch64")[0] == errno_of("ENOSYS")


def test_enosys_above_the_highest_named_call():
    profile = {"defaultAction": "SCMP_ACT_ERRNO",
               "syscalls": [{"names": ["read", "clone"], "action": "SCMP_ACT_ALLOW"}]}
    code = compiled(profile)
    assert run_bpf(code, 0)[0] == ALLOW
    assert run_bpf(code, 1)[0] == EPERM        # write: below clone (56), not named
    assert run_bpf(code, 435)[0] == errno_of("ENOSYS")  # clone3: glibc falls back
    allow_all = {"defaultAction": "SCMP_ACT_ALLOW",
                 "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]}
    assert run_bpf(compiled(allow_all), 435)[0] == ALLOW
    nothing = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13}
    assert run_bpf(compiled(nothing), 435)[0] == errno_of("EACCES")


# Values on both sides of each 32-bit half's edges.
EDGES = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 1 << 32, (1 << 32) + 1,
         (5 << 32) | 7, (5 << 32) | 0xFFFFFFFF, (6 << 32), 0xFFFFFFFF00000000, (1 << 64) - 1]


@pytest.mark.parametrize("op", md.SECCOMP_COMPARISONS)
def test_conditions_compare_both_halves(op):
    for value in EDGES:
        profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 3, "value": value, "valueTwo": value & 0xFF0000000000FF00,
                       "op": op}]}]}
        code = compiled(profile)
        for arg in EDGES + [value - 1 & (1 << 64) - 1, value + 1 & (1 << 64) - 1]:
            args = (0, 0, 0, arg, 0, 0)
            assert run_bpf(code, 0, args=args)[0] == model(profile, 0, args), (op, value, arg)


def test_same_argument_twice_means_either_as_in_runc():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                  {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                  {"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]}]}
    code = compiled(profile)
    assert run_bpf(code, 135, args=(8, 0, 0, 0, 0, 0))[0] == ALLOW
    assert run_bpf(code, 135, args=(0, 0, 0, 0, 0, 0))[0] == ALLOW
    assert run_bpf(code, 135, args=(1, 0, 0, 0, 0, 0))[0] == EPERM
    assert run_bpf(code, 41, args=(2, 1, 0, 0, 0, 0))[0] == ALLOW   # both hold
    assert run_bpf(code, 41, args=(2, 2, 0, 0, 0, 0))[0] == EPERM   # only one


def random_profile(rng, calls, max_conditions):
    names = sorted(md.syscall_numbers("x86_64"))
    actions = ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
               "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_KILL"]
    rules = []
    for _ in range(calls):
        args = [{"index": rng.randrange(6), "value": rng.choice(EDGES),
                 "valueTwo": rng.choice(EDGES), "op": rng.choice(md.SECCOMP_COMPARISONS)}
                for _ in range(rng.randrange(max_conditions + 1))]
        rules.append({"names": rng.sample(names, rng.randrange(1, 4)),
                      "action": rng.choice(actions), "errnoRet": rng.randrange(1, 200),
                      "args": args})
    return {"defaultAction": rng.choice(["SCMP_ACT_ERRNO", "SCMP_ACT_ALLOW"]),
            "defaultErrnoRet": rng.randrange(1, 100), "syscalls": rules}


def test_compiler_agrees_with_the_model_on_random_profiles():
    import random
    rng = random.Random(4)
    for _ in range(40):
        profile = random_profile(rng, rng.randrange(1, 40), 3)
        code = compiled(profile)
        named = sorted({md.syscall_numbers("x86_64")[n] for r in profile["syscalls"]
                        for n in r["names"]})
        for _ in range(150):
            nr = rng.choice(named + [rng.randrange(600), 0x40000001, 0xFFFFFFFF])
            args = tuple(rng.choice(EDGES) for _ in range(6))
            assert run_bpf(code, nr, args=args)[0] == model(profile, nr, args)


def test_long_programs_jump_past_255_instructions():
    """Hundreds of calls with conditions: far targets need BPF_JA trampolines,
    and every call still costs only a handful of instructions to decide."""
    import random
    rng = random.Random(7)
    profile = random_profile(rng, 150, 3)
    code = compiled(profile)
    ops = [struct.unpack_from(md.SOCK_FILTER, code, i)[0] for i in range(0, len(code), 8)]
    assert len(ops) > 1000 and md.BPF_JA in ops
    for nr in range(0, 460):
        for _ in range(5):
            args = tuple(rng.choice(EDGES) for _ in range(6))
            assert run_bpf(code, nr, args=args)[0] == model(profile, nr, args)
    simple = compiled(md.default_profile(), DEFAULT_CAPS)
    assert max(run_bpf(simple, nr)[1] for nr in (0, 39, 231, 450, 1000)) <= 16


def test_profile_includes_and_excludes():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
        {"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
        {"names": ["write"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "6.2"}},
        {"names": ["gettid"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.10"}},
        {"names": ["close"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_KILL"]}}]}
    decide = lambda nr, caps=frozenset(): run_bpf(compiled(profile, caps), nr)[0]  # noqa: E731
    assert decide(101) == EPERM and decide(101, {md.cap_number("SYS_PTRACE")}) == ALLOW
    assert decide(0) == EPERM and decide(1) == EPERM  # arm64 only; not amd64
    assert decide(39) == EPERM and decide(186) == ALLOW  # kernel "6.1.0"
    assert decide(3) == ALLOW and decide(3, {md.cap_number("KILL")}) == EPERM


def test_oci_linux_seccomp_form_is_accepted():
    """An OCI config's linux.seccomp: the same fields, architectures as a list."""
    oci = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
           "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
           "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    code = compiled(oci)
    assert run_bpf(code, 1)[0] == ALLOW and run_bpf(code, 62)[0] == EPERM
    assert run_bpf(code, 2)[0] == errno_of("ENOSYS")


def test_podman_profile_compiles():
    path = "/usr/share/containers/seccomp.json"
    assert os.path.exists(path), "apt-get install golang-github-containers-common"
    with open(path) as handle:
        profile = json.load(handle)
    code, notes = md.plan_seccomp(profile, DEFAULT_CAPS, path, machine="x86_64", release="6.1")
    assert "names not in the x86_64 table, ignored: _llseek" in notes[1]
    for nr in range(0, 460):
        assert run_bpf(code, nr)[0] == model(profile, nr, caps=DEFAULT_CAPS), nr


@pytest.mark.parametrize("profile, error", [
    ({"defaultAction": "SCMP_ACT_FROB"}, "unknown action 'SCMP_ACT_FROB'"),
    ({}, "unknown action None"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY needs a supervisor"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000}, "errnoRet 5000 is not an errno"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {"names": []}}, '"syscalls" must be a list'),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": ["read"]}, "a syscalls entry must be an object"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": "read",
                                                       "action": "SCMP_ACT_ALLOW"}]},
     '"names" must be a list of strings'),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}, "argument index 6 is not 0-5"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ROUGHLY"}]}]},
     "unknown comparison 'SCMP_CMP_ROUGHLY'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]},
     "argument value -1 is not a 64-bit number"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]},
     "minKernel 'new' is not a kernel version"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": "CAP_KILL"}}]},
     '"excludes.caps" must be a list of strings'),
])
def test_bad_profiles(profile, error):
    with pytest.raises(md.MiniDockerError) as caught:
        md.plan_seccomp(profile, DEFAULT_CAPS, "p.json", machine="x86_64", release="6.1")
    assert str(caught.value).startswith("seccomp profile p.json: ") and error in str(caught.value)


def test_security_opt_parsing():
    assert md.parse_security_opts([]) == (None, False)
    assert md.parse_security_opts(["seccomp=unconfined"]) == ("unconfined", False)
    assert md.parse_security_opts(["seccomp:/p.json", "no-new-privileges"]) == ("/p.json", True)
    assert md.parse_security_opts(["no-new-privileges:true"]) == (None, True)
    for wrong in (["apparmor=unconfined"], ["seccomp="], ["no-new-privileges=no"]):
        with pytest.raises(md.MiniDockerError):
            md.parse_security_opts(wrong)
    assert md.plan_security("unconfined", DEFAULT_CAPS, False)[0] is None
    assert md.plan_security(None, DEFAULT_CAPS, True)[0] is None  # --privileged


def test_strict_profile_is_small_and_loads():
    with open(os.path.join(HERE, "profiles", "strict.json")) as handle:
        strict = json.load(handle)
    code, _ = md.plan_seccomp(strict, DEFAULT_CAPS, "strict", machine="x86_64", release="6.1")
    numbers = md.syscall_numbers("x86_64")
    allowed = [n for n in numbers if run_bpf(code, numbers[n])[0] == ALLOW]
    assert 60 <= len(allowed) <= 110 and "mount" not in allowed and "execve" in allowed


# ---------------------------------------------------------------------------
# 10. seccomp, root: real containers, real system calls
# ---------------------------------------------------------------------------

PROBE_C = r"""
/* probe: make one system call and print what came back, for the seccomp tests
 * and .ci/bench. Static, so it runs in any rootfs.
 *   probe NR [ARG...]    syscall(NR, ARG...)          -> "ret R errno E"
 *   probe tiocsti REQ    ioctl(0, REQ, "x")           -> "ret R errno E"
 *   probe int80 NR       the i386 entry (x86_64 only)  -> "ret R"
 *   probe loop N         getpid() N times              -> "T ns"            */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "loop") == 0) {
        long n = strtol(argv[2], NULL, 0);
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++)
            syscall(SYS_getpid);
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("%.1f ns\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
        return 0;
    }
#ifdef __x86_64__
    if (argc == 3 && strcmp(argv[1], "int80") == 0) {
        long ret, nr = strtol(argv[2], NULL, 0);
        __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(nr) : "memory");
        printf("ret %ld\n", ret);
        return 0;
    }
#endif
    if (argc == 3 && strcmp(argv[1], "tiocsti") == 0) {
        char c = 'x';
        long r = syscall(SYS_ioctl, 0, strtoul(argv[2], NULL, 0), &c);
        printf("ret %ld errno %d\n", r, r == -1 ? errno : 0);
        return 0;
    }
    unsigned long a[6] = {0};
    for (int i = 2; i < argc && i < 8; i++)
        a[i - 2] = strtoul(argv[i], NULL, 0);
    long r = syscall(strtol(argv[1], NULL, 0), a[0], a[1], a[2], a[3], a[4], a[5]);
    printf("ret %ld errno %d\n", r, r == -1 ? errno : 0);
    return 0;
}
"""


@pytest.fixture(scope="session")
def probe(tmp_path_factory):
    """The probe, built static; returns the -v flags that put it at /probe."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed (apt-get install gcc libc6-dev)")
    directory = tmp_path_factory.mktemp("probe")
    (directory / "probe.c").write_text(PROBE_C)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(directory / "probe"),
                    str(directory / "probe.c")], check=True)
    return ["-v", "%s:/probe:ro" % directory]


AT_FDCWD = (1 << 64) - 100  # <fcntl.h>'s -100, as the unsigned long the probe reads

# (what, syscall, arguments, errno under the default profile). Pointers
# are 0: a call that passes the filter fails later with EFAULT, or succeeds.
DENIALS = [
    ("unshare(CLONE_NEWUSER)", "unshare", [md.CLONE_NEWUSER], errno.EPERM),
    ("mount", "mount", [0, 0, 0, 0, 0], errno.EPERM),
    ("keyctl", "keyctl", [0, 0], errno.EPERM),
    ("add_key", "add_key", [0, 0, 0, 0, 0], errno.EPERM),
    ("socket(AF_ALG)", "socket", [socket.AF_ALG, socket.SOCK_SEQPACKET, 0], errno.EAFNOSUPPORT),
    ("socket(AF_VSOCK)", "socket", [socket.AF_VSOCK, socket.SOCK_STREAM, 0], errno.EAFNOSUPPORT),
    ("clone(CLONE_NEWUSER)", "clone", [md.CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0],
     errno.EPERM),
    ("clone3", "clone3", [0, 0], errno.ENOSYS),
    ("bpf", "bpf", [0, 0, 0], errno.EPERM),
    ("perf_event_open", "perf_event_open", [0, 0, 0, 0, 0], errno.EPERM),
    ("io_uring_setup", "io_uring_setup", [1, 0], errno.EPERM),
    ("ptrace(PTRACE_TRACEME)", "ptrace", [0, 0, 0, 0], errno.EPERM),
    ("personality(READ_IMPLIES_EXEC)", "personality", [0x400000], errno.EPERM),
    ("mknodat(S_IFCHR)", "mknodat", [AT_FDCWD, 0, stat.S_IFCHR | 0o644, os.makedev(1, 3)],
     errno.EPERM),
    ("ioctl(TIOCSTI)", "ioctl", [0, termios.TIOCSTI, 0], errno.EPERM),
    ("syscall 1000", 1000, [], errno.ENOSYS),
]
ALLOWED = [
    ("getppid", "getppid", [], 0),
    ("socket(AF_INET)", "socket", [socket.AF_INET, socket.SOCK_STREAM, 0], 0),
    ("socket(AF_UNIX)", "socket", [socket.AF_UNIX, socket.SOCK_STREAM, 0], 0),
    ("mknodat(S_IFIFO)", "mknodat", [AT_FDCWD, 0, stat.S_IFIFO | 0o644, 0],
     errno.EFAULT),  # passed
    ("personality(query)", "personality", [0xFFFFFFFF], 0),
    ("ioctl(TIOCGWINSZ)", "ioctl", [0, termios.TIOCGWINSZ, 0], errno.ENOTTY),  # passed
]


def probe_script(calls):
    """One shell line that runs the probe for each call, one result a line."""
    lines = []
    for _, name, args, _ in calls:
        number = md.SYSCALLS[name] if isinstance(name, str) else name
        lines.append("/probe/probe %s" % " ".join("%d" % n for n in [number] + args))
    return "; ".join(lines)


def probe_errnos(output):
    return [int(line.split()[-1]) for line in output.splitlines() if line.startswith("ret ")]


@root
def test_seccomp_filter_is_on_and_denies(rootfs, probe):
    result = sh(rootfs, "grep Seccomp /proc/self/status; " + probe_script(DENIALS + ALLOWED),
                options=probe)
    assert result.returncode == 0, result.err
    assert status_field(result.out, "Seccomp") == "2"
    assert status_field(result.out, "Seccomp_filters") == "1"
    got = probe_errnos(result.out)
    for (what, _, _, expected), errno_seen in zip(DENIALS + ALLOWED, got):
        assert errno_seen == expected, what
    assert len(got) == len(DENIALS + ALLOWED)


@root
def test_unconfined_and_privileged_have_no_filter(rootfs, probe):
    # Without the filter the kernel answers each call itself, otherwise. Left
    # out: clone (it would fork), AF_ALG and AF_VSOCK (a kernel built without
    # them says the same), bpf (EPERM too where unprivileged_bpf_disabled is
    # set) and 1000 (ENOSYS either way).
    calls = [c for c in DENIALS if c[0] not in ("clone(CLONE_NEWUSER)", "socket(AF_ALG)",
                                                "socket(AF_VSOCK)", "bpf", "syscall 1000")]
    for options in (["--security-opt", "seccomp=unconfined"], ["--privileged"]):
        result = sh(rootfs, "grep Seccomp: /proc/self/status; " + probe_script(calls),
                    options=probe + options)
        assert status_field(result.out, "Seccomp") == "0"
        assert len(probe_errnos(result.out)) == len(calls), result.out
        for (what, _, _, filtered), errno_seen in zip(calls, probe_errnos(result.out)):
            assert errno_seen != filtered, (options, what)


@root
def test_capabilities_open_their_system_calls(rootfs, probe):
    """As in Docker's profile, CAP_SYS_ADMIN opens mount and CAP_SYS_PTRACE
    ptrace. mount(0, 0, 0, 0, 0) tells the filter's answer from the
    kernel's: the kernel reads the path before it checks the capability,
    so it says EFAULT with the capability or without; only the filter says
    EPERM."""
    result = sh(rootfs, "mkdir -p /mnt && mount -t tmpfs none /mnt && grep -c ' /mnt ' /proc/self/mountinfo",
                options=["--cap-add", "SYS_ADMIN"])
    assert result.returncode == 0 and result.out == "1\n", result.err
    mount = ["/probe/probe", str(md.SYSCALLS["mount"])] + ["0"] * 5
    for options, expected in (([], errno.EPERM),  # refused by the filter
                              (["--cap-add", "SYS_ADMIN"], errno.EFAULT),  # let through
                              (["--security-opt", "seccomp=unconfined"], errno.EFAULT)):
        result = run(rootfs, *mount, options=probe + options)
        assert result.out == "ret -1 errno %d\n" % expected, (options, result.out)
    result = run(rootfs, "/probe/probe", str(md.SYSCALLS["ptrace"]), "0",
                 options=probe + ["--cap-add", "SYS_PTRACE"])
    assert result.out == "ret 0 errno 0\n"  # PTRACE_TRACEME


@root
@pytest.mark.skipif(md.MACHINE != "x86_64", reason="i386 and x32 entries exist on x86_64 only")
def test_foreign_abis_are_killed(rootfs, probe):
    unconfined = ["--security-opt", "seccomp=unconfined"]
    assert run(rootfs, "/probe/probe", "int80", "20", options=probe + unconfined).out.startswith(
        "ret ")  # the i386 getpid works without the filter
    killed = 128 + signal.SIGSYS
    assert run(rootfs, "/probe/probe", "int80", "20", options=probe).returncode == killed
    assert run(rootfs, "/probe/probe", str(0x40000000 | 39), options=probe).returncode == killed


def kernels_tiocsti_answer():
    """What TIOCSTI on a process's own terminal gets from the kernel itself,
    without CAP_SYS_ADMIN: EIO where dev.tty.legacy_tiocsti is 0 (Linux 6.2
    and later can turn TIOCSTI off), else it works."""
    if md.read_text("/proc/sys/dev/tty/legacy_tiocsti").strip() == "0":
        return "ret -1 errno %d" % errno.EIO
    return "ret 0 errno 0"


@root
def test_tiocsti_denied_on_the_containers_terminal(rootfs, probe):
    """The default profile refuses TIOCSTI, also with bits above the 32 the
    kernel reads; unconfined, the same two calls get the kernel's own
    answer, so the EPERM is the filter's."""
    unconfined = ["--security-opt", "seccomp=unconfined"]
    for options, expected in (([], "ret -1 errno %d" % errno.EPERM),
                              (unconfined, kernels_tiocsti_answer())):
        term = Terminal(MINIDOCKER + ["run", "--network=none", "--rm", "-t"] + probe + options + [
            rootfs, "/bin/sh", "-c", "/probe/probe tiocsti 0x5412; "
            "/probe/probe tiocsti 0x100005412; echo probed; sleep 0.2"])
        try:
            out = term.read_until("probed", timeout=30)
            assert term.proc.wait(timeout=20) == 0
        finally:
            if term.proc.poll() is None:
                term.proc.kill()
                term.proc.wait()
            term.close()
        assert re.findall(r"ret -?\d+ errno \d+", out) == [expected] * 2, (options, out)
    assert_nothing_left()


@root
def test_strict_profile_runs_busybox(rootfs, probe):
    # It refuses setuid and the like, which the privilege drop makes under
    # the filter without no_new_privs: with the flag the filter loads last.
    strict = ["--security-opt", "seccomp=" + os.path.join(HERE, "profiles", "strict.json"),
              "--security-opt", "no-new-privileges"]
    # ps's second line is pid 1 (it lists /proc in pid order), a shell of root's
    result = sh(rootfs, "ls / | wc -l; echo hi > /tmp/f; cat /tmp/f; rm /tmp/f; mkdir /tmp/d; "
                "rmdir /tmp/d; sort /etc/passwd | head -1; ps | awk 'NR == 2 {print $1, $2}'; "
                "sleep 0.01; trap 'echo trapped' USR1; kill -USR1 $$; id -u; "
                "hostname x || echo denied", options=strict)
    assert result.returncode == 0, result.err
    lines = result.out.splitlines()
    shown = [name for name in os.listdir(rootfs) if not name.startswith(".")]  # as ls shows
    assert lines[:4] == [str(len(shown)), "hi",
                         "alice:x:1000:1000:Alice:/home/alice:/bin/sh", "1 root"], lines
    assert "trapped" in lines and lines[-2:] == ["0", "denied"]
    result = run(rootfs, "/probe/probe", str(md.SYSCALLS["socket"]), "%d" % socket.AF_NETLINK,
                 "%d" % socket.SOCK_RAW, "0",
                 options=probe + strict)  # AF_NETLINK is not in the list
    assert result.out == "ret -1 errno %d\n" % errno.EPERM


@pytest.fixture(scope="session")
def debian(tmp_path_factory, state):
    """A real Debian userland: the host's own /usr, bound read-only, below a
    root of usr-merge symlinks and a copy of the /etc files it needs. Returns
    (rootfs, options)."""
    path = str(tmp_path_factory.mktemp("images") / "debian")
    for directory in ("usr", "proc", "sys", "dev", "tmp", "root", "run", "etc",
                      "var/lib/dpkg", "var/lib/apt", "var/cache/apt", "var/log"):
        os.makedirs(os.path.join(path, directory))
    os.chmod(os.path.join(path, "tmp"), 0o1777)
    for link in ("bin", "sbin", "lib", "lib64"):
        os.symlink("usr/" + link, os.path.join(path, link))
    for name in ("passwd", "group", "nsswitch.conf", "ld.so.cache", "ld.so.conf",
                 "debian_version"):
        shutil.copy2("/etc/" + name, os.path.join(path, "etc"))
    for name in ("apt", "dpkg", "ld.so.conf.d"):
        shutil.copytree("/etc/" + name, os.path.join(path, "etc", name), symlinks=True)
    options = []
    for directory in ("/usr", "/var/lib/dpkg", "/var/lib/apt", "/var/cache/apt"):
        options += ["-v", "%s:%s:ro" % (directory, directory)]
    return path, options


WEB_CHECK = """
import http.server, threading, urllib.request, json, sqlite3, ctypes
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
page = urllib.request.urlopen("http://127.0.0.1:%d/etc/debian_version" % server.server_port)
db = sqlite3.connect(":memory:")
print("web", page.status, page.read().decode().strip() == open("/etc/debian_version").read().strip(),
      db.execute("select 6 * 7").fetchone()[0], ctypes.CDLL(None).getpid() > 0)
"""


@root
def test_debian_userland_under_the_default_profile(debian):
    rootfs, options = debian
    result = sh(rootfs, "grep Seccomp: /proc/self/status; cd / && python3 -c '%s'; "
                "apt-get check >/dev/null && echo apt-check-ok; "
                "apt-get install -s busybox-static | tail -1; dpkg -s busybox-static | head -2"
                % WEB_CHECK.replace("'", "\\'"), options=options, timeout=180)
    assert result.returncode == 0, result.err
    assert status_field(result.out, "Seccomp") == "2"
    assert "web 200 True 42 True" in result.out
    assert "apt-check-ok" in result.out and "0 newly installed" in result.out
    assert "Status: install ok installed" in result.out


@root
def test_profile_from_podman_loads_and_runs(rootfs, debian, probe):
    """containers-common's seccomp.json, unchanged: its default is ENOSYS."""
    podman = ["--security-opt", "seccomp=/usr/share/containers/seccomp.json"]
    result = sh(rootfs, "grep Seccomp: /proc/self/status; ls /bin | wc -l; " + probe_script(
        [("add_key", "add_key", [0, 0, 0, 0, 0], errno.ENOSYS),
         ("open_by_handle_at", "open_by_handle_at", [0, 0, 0], errno.EPERM)]),
        options=probe + podman)
    assert result.returncode == 0, result.err
    assert status_field(result.out, "Seccomp") == "2"
    assert probe_errnos(result.out) == [errno.ENOSYS, errno.EPERM]
    rootfs, options = debian
    result = run(rootfs, "python3", "-c", WEB_CHECK, options=options + podman, timeout=120)
    assert "web 200 True 42 True" in result.out, result.err


@root
def test_unknown_names_are_ignored_and_said_with_debug(rootfs, tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["no_such_call", "socketcall"], "action": "SCMP_ACT_ERRNO"}]}))
    result = subprocess.run(MINIDOCKER + ["--debug", "run", "--rm", "--network=none", "--security-opt",
                                          "seccomp=%s" % profile, rootfs, "true"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "names not in the %s table, ignored: no_such_call socketcall" % md.MACHINE in result.stderr


@root
def test_bad_seccomp_profiles_from_the_command_line(rootfs, tmp_path):
    cases = [("{not json", "not valid JSON"),
             ('{"defaultAction": "SCMP_ACT_NOPE"}', "unknown action 'SCMP_ACT_NOPE'"),
             ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
              '"action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "op": "SCMP_CMP_SORTOF"}]}]}',
              "unknown comparison 'SCMP_CMP_SORTOF'"),
             ("[]", "must be a JSON object")]
    for text, message in cases:
        profile = tmp_path / "bad.json"
        profile.write_text(text)
        err = bad(["run", "--rm", "--security-opt", "seccomp=%s" % profile, rootfs, "true"],
                  message)
        assert str(profile) in err
    bad(["run", "--security-opt", "seccomp=/no/such.json", rootfs, "true"],
        "seccomp profile /no/such.json: No such file or directory")
    bad(["run", "--security-opt", "apparmor=unconfined", rootfs, "true"],
        "--security-opt 'apparmor=unconfined'")


def oci_seccomp(profile, caps):
    """A Docker profile as an OCI config's linux.seccomp, its includes and
    excludes decided for caps: what Docker hands runc."""
    names = {"CAP_" + md.CAP_NAMES[c] for c in caps}
    rules = [{key: rule[key] for key in ("names", "action", "errnoRet", "args") if key in rule}
             for rule in profile["syscalls"]
             if model_applies(rule, md.MACHINE, names, os.uname().release)]
    return {"defaultAction": profile["defaultAction"],
            "defaultErrnoRet": profile["defaultErrnoRet"],
            "architectures": [MODEL_ARCH_NAMES[md.MACHINE][0]], "syscalls": rules}


@root
def test_same_answers_as_runc_with_libseccomp(rootfs, probe, tmp_path):
    """The default profile compiled by libseccomp under runc gives every
    probe the errno it gets here."""
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed (apt-get install runc)")
    bundle = str(tmp_path / "bundle")
    os.makedirs(bundle)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    with open(os.path.join(bundle, "config.json")) as handle:
        config = json.load(handle)
    caps = ["CAP_" + name for name in md.DOCKER_DEFAULT_CAPS]
    config["process"].update(terminal=False, args=["/bin/sh", "-c", probe_script(DENIALS + ALLOWED)])
    config["process"]["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    config["root"] = {"path": rootfs, "readonly": True}
    config["mounts"].append({"destination": "/probe", "type": "bind", "source": probe[1].split(":")[0],
                             "options": ["rbind", "ro"]})
    config["linux"]["seccomp"] = oci_seccomp(md.default_profile(), DEFAULT_CAPS)
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump(config, handle)
    theirs = subprocess.run(["runc", "run", "--bundle", bundle, "md-test-%d" % os.getpid()],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert theirs.returncode == 0, theirs.stderr
    ours = sh(rootfs, probe_script(DENIALS + ALLOWED), options=probe)
    assert probe_errnos(ours.out) == probe_errnos(theirs.stdout)
    assert len(probe_errnos(ours.out)) == len(DENIALS + ALLOWED)


# ---------------------------------------------------------------------------
# 9. networking, pure: netlink messages against bytes the real tools and the
# kernel produced
# ---------------------------------------------------------------------------

# What iproute2 6.1 sent for each command (strace -e write=3 of `ip ...` in a
# throwaway namespace), with the sequence number zeroed. The veth's peer was
# made in the namespace of pid 4063 (0x0fdf).
IPROUTE2_SENT = {
    "ip link add mini-br0 type bridge": (
        "40000000100005060000000000000000000000000000000000000000000000000d000300"
        "6d696e692d62723000000000100012000a0001006272696467650000"),
    "ip link add veth1234abcd type veth peer name eth0 netns 4063": (
        "6c0000001000050600000000000000000000000000000000000000000000000011000300"
        "766574683132333461626364000000003800120008000100766574682c00020028000100"
        "0000000000000000000000000000000008001300df0f0000090003006574683000000000"),
    "ip link set veth1234abcd master mini-br0 up": (
        "280000001000050000000000000000000000000005000000010000000100000008000a00"
        "04000000"),
    "ip addr add 10.0.0.1/24 dev mini-br0": (
        "280000001400050600000000000000000218000004000000080002000a00000108000100"
        "0a000001"),
    "ip link set mini-br0 up": (
        "2000000010000500000000000000000000000000040000000100000001000000"),
    "ip route add default via 10.0.0.1": (
        "2400000018000506000000000000000002000000fe03000100000000080005000a000001"),
    "ip link del veth1234abcd": (
        "2000000011000500000000000000000000000000050000000000000000000000"),
}

OUR_REQUESTS = {
    "ip link add mini-br0 type bridge": lambda: md.request_new_bridge("mini-br0"),
    "ip link add veth1234abcd type veth peer name eth0 netns 4063": lambda: md.request_new_veth("veth1234abcd", "eth0", 4063),
    "ip link set veth1234abcd master mini-br0 up": lambda: md.request_link_up(5, "veth1234abcd", master=4),
    "ip addr add 10.0.0.1/24 dev mini-br0": lambda: md.request_new_address(4, "mini-br0", "10.0.0.1", 24),
    "ip link set mini-br0 up": lambda: md.request_link_up(4, "mini-br0"),
    "ip route add default via 10.0.0.1": lambda: md.request_default_route("10.0.0.1"),
    "ip link del veth1234abcd": lambda: md.request_delete_link(5, "veth1234abcd"),
}


@pytest.mark.parametrize("command", sorted(IPROUTE2_SENT))
def test_rtnetlink_requests_match_iproute2(command):
    kind, flags, body, _ = OUR_REQUESTS[command]()
    message = md.nl_message(kind, md.NLM_F_REQUEST | md.NLM_F_ACK | flags, 0, body)
    assert message.hex() == IPROUTE2_SENT[command]


# The kernel's own encoding of rules that `nft -f` loaded (an NFT_MSG_GETRULE
# dump, attribute NFTA_RULE_EXPRESSIONS), for the rule written beside each.
KERNEL_RULES = [
    ('ip saddr 10.0.0.0/24 oifname "mini-br0" ct status dnat masquerade',
     lambda: (md.match_saddr("10.0.0.0/24")
              + md.match_ifname(md.NFT_META_OIFNAME, "mini-br0", md.NFT_CMP_EQ)
              + md.match_dnat_status() + md.action_masquerade()),
     "340001000c0001007061796c6f6164002400020008000100000000010800020000000001"
     "080003000000000c08000400000000032c00010008000100636d70002000020008000100"
     "0000000108000200000000000c000300070001000a00000024000100090001006d657461"
     "0000000014000200080002000000000708000100000000013800010008000100636d7000"
     "2c0002000800010000000001080002000000000018000300140001006d696e692d627230"
     "000000000000000020000100070001006374000014000200080001000000000108000200"
     "000000024c0001000c00010062697477697365003c000200080001000000000108000200"
     "00000001080003000000000408000600000000000c00040008000100200000000c000500"
     "08000100000000002c00010008000100636d700020000200080001000000000108000200"
     "000000010c000300080001000000000014000100090001006d6173710000000004000200"),
    ('iifname "mini-br0" ip daddr 127.0.0.0/8 drop',
     lambda: (md.match_ifname(md.NFT_META_IIFNAME, "mini-br0", md.NFT_CMP_EQ)
               + md.match_daddr("127.0.0.0/8") + md.action_verdict(md.NF_DROP)),
     "24000100090001006d657461000000001400020008000200000000060800010000000001"
     "3800010008000100636d70002c0002000800010000000001080002000000000018000300"
     "140001006d696e692d6272300000000000000000340001000c0001007061796c6f616400"
     "240002000800010000000001080002000000000108000300000000100800040000000001"
     "2c00010008000100636d700020000200080001000000000108000200000000000c000300"
     "050001007f000000300001000e000100696d6d6564696174650000001c00020008000100"
     "00000000100002000c0002000800010000000000"),
    ('fib daddr type local tcp dport 8080 dnat to 10.0.0.2:80',
     lambda: (md.match_local_daddr() + md.match_dport("tcp", 8080)
               + md.action_dnat("10.0.0.2", 80)),
     "2800010008000100666962001c0002000800010000000001080002000000000308000300"
     "000000022c00010008000100636d70002000020008000100000000010800020000000000"
     "0c000300080001000200000024000100090001006d657461000000001400020008000200"
     "0000001008000100000000012c00010008000100636d7000200002000800010000000001"
     "08000200000000000c0003000500010006000000340001000c0001007061796c6f616400"
     "240002000800010000000001080002000000000208000300000000020800040000000002"
     "2c00010008000100636d700020000200080001000000000108000200000000000c000300"
     "060001001f9000002c0001000e000100696d6d6564696174650000001800020008000100"
     "000000010c000200080001000a0000022c0001000e000100696d6d656469617465000000"
     "1800020008000100000000020c000200060001000050000048000100080001006e617400"
     "3c0002000800010000000001080002000000000208000300000000010800040000000001"
     "080005000000000208000600000000020800070000000003"),
    ('ip daddr 192.168.77.1 udp dport 5353 dnat to 10.0.0.2:53',
     lambda: (md.match_daddr("192.168.77.1/32") + md.match_dport("udp", 5353)
               + md.action_dnat("10.0.0.2", 53)),
     "340001000c0001007061796c6f6164002400020008000100000000010800020000000001"
     "080003000000001008000400000000042c00010008000100636d70002000020008000100"
     "0000000108000200000000000c00030008000100c0a84d0124000100090001006d657461"
     "0000000014000200080002000000001008000100000000012c00010008000100636d7000"
     "20000200080001000000000108000200000000000c000300050001001100000034000100"
     "0c0001007061796c6f616400240002000800010000000001080002000000000208000300"
     "0000000208000400000000022c00010008000100636d7000200002000800010000000001"
     "08000200000000000c0003000600010014e900002c0001000e000100696d6d6564696174"
     "650000001800020008000100000000010c000200080001000a0000022c0001000e000100"
     "696d6d6564696174650000001800020008000100000000020c0002000600010000350000"
     "48000100080001006e6174003c0002000800010000000001080002000000000208000300"
     "000000010800040000000001080005000000000208000600000000020800070000000003"),
    ('ip saddr 10.0.0.0/24 oifname != "mini-br0" masquerade',
     lambda: (md.match_saddr("10.0.0.0/24")
               + md.match_ifname(md.NFT_META_OIFNAME, "mini-br0", md.NFT_CMP_NEQ) + md.action_masquerade()),
     "340001000c0001007061796c6f6164002400020008000100000000010800020000000001"
     "080003000000000c08000400000000032c00010008000100636d70002000020008000100"
     "0000000108000200000000000c000300070001000a00000024000100090001006d657461"
     "0000000014000200080002000000000708000100000000013800010008000100636d7000"
     "2c0002000800010000000001080002000000000118000300140001006d696e692d627230"
     "000000000000000014000100090001006d6173710000000004000200"),
    ('fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to 10.0.0.2:80',
     lambda: (md.match_local_daddr() + md.match_daddr("127.0.0.0/8", md.NFT_CMP_NEQ)
               + md.match_dport("tcp", 8080) + md.action_dnat("10.0.0.2", 80)),
     "2800010008000100666962001c0002000800010000000001080002000000000308000300"
     "000000022c00010008000100636d70002000020008000100000000010800020000000000"
     "0c0003000800010002000000340001000c0001007061796c6f6164002400020008000100"
     "000000010800020000000001080003000000001008000400000000012c00010008000100"
     "636d700020000200080001000000000108000200000000010c000300050001007f000000"
     "24000100090001006d657461000000001400020008000200000000100800010000000001"
     "2c00010008000100636d700020000200080001000000000108000200000000000c000300"
     "0500010006000000340001000c0001007061796c6f616400240002000800010000000001"
     "0800020000000002080003000000000208000400000000022c00010008000100636d7000"
     "20000200080001000000000108000200000000000c000300060001001f9000002c000100"
     "0e000100696d6d6564696174650000001800020008000100000000010c00020008000100"
     "0a0000022c0001000e000100696d6d656469617465000000180002000800010000000002"
     "0c000200060001000050000048000100080001006e6174003c0002000800010000000001"
     "080002000000000208000300000000010800040000000001080005000000000208000600"
     "000000020800070000000003"),
    ('oifname "mini-br0" ct state established,related accept',
     lambda: (md.match_ifname(md.NFT_META_OIFNAME, "mini-br0", md.NFT_CMP_EQ) + md.match_established()
               + md.action_verdict(md.NF_ACCEPT)),
     "24000100090001006d657461000000001400020008000200000000070800010000000001"
     "3800010008000100636d70002c0002000800010000000001080002000000000018000300"
     "140001006d696e692d627230000000000000000020000100070001006374000014000200"
     "080001000000000108000200000000004c0001000c00010062697477697365003c000200"
     "08000100000000010800020000000001080003000000000408000600000000000c000400"
     "08000100060000000c00050008000100000000002c00010008000100636d700020000200"
     "080001000000000108000200000000010c0003000800010000000000300001000e000100"
     "696d6d6564696174650000001c0002000800010000000000100002000c00020008000100"
     "00000001"),
    ('oifname "mini-br0" ct status dnat accept',
     lambda: (md.match_ifname(md.NFT_META_OIFNAME, "mini-br0", md.NFT_CMP_EQ) + md.match_dnat_status()
               + md.action_verdict(md.NF_ACCEPT)),
     "24000100090001006d657461000000001400020008000200000000070800010000000001"
     "3800010008000100636d70002c0002000800010000000001080002000000000018000300"
     "140001006d696e692d627230000000000000000020000100070001006374000014000200"
     "080001000000000108000200000000024c0001000c00010062697477697365003c000200"
     "08000100000000010800020000000001080003000000000408000600000000000c000400"
     "08000100200000000c00050008000100000000002c00010008000100636d700020000200"
     "080001000000000108000200000000010c0003000800010000000000300001000e000100"
     "696d6d6564696174650000001c0002000800010000000000100002000c00020008000100"
     "00000001"),
    ('iifname "mini-br0" oifname "mini-br0" accept',
     lambda: (md.match_ifname(md.NFT_META_IIFNAME, "mini-br0", md.NFT_CMP_EQ)
               + md.match_ifname(md.NFT_META_OIFNAME, "mini-br0", md.NFT_CMP_EQ)
               + md.action_verdict(md.NF_ACCEPT)),
     "24000100090001006d657461000000001400020008000200000000060800010000000001"
     "3800010008000100636d70002c0002000800010000000001080002000000000018000300"
     "140001006d696e692d627230000000000000000024000100090001006d65746100000000"
     "14000200080002000000000708000100000000013800010008000100636d70002c000200"
     "0800010000000001080002000000000018000300140001006d696e692d62723000000000"
     "00000000300001000e000100696d6d6564696174650000001c0002000800010000000000"
     "100002000c0002000800010000000001"),
    ('oifname "mini-br0" drop',
     lambda: md.match_ifname(md.NFT_META_OIFNAME, "mini-br0", md.NFT_CMP_EQ) + md.action_verdict(md.NF_DROP),
     "24000100090001006d657461000000001400020008000200000000070800010000000001"
     "3800010008000100636d70002c0002000800010000000001080002000000000018000300"
     "140001006d696e692d6272300000000000000000300001000e000100696d6d6564696174"
     "650000001c0002000800010000000000100002000c0002000800010000000000"),
]


@pytest.mark.parametrize("text, ours, kernel", KERNEL_RULES, ids=[r[0] for r in KERNEL_RULES])
def test_nftables_expressions_match_the_kernels(text, ours, kernel):
    assert b"".join(ours()).hex() == "".join(kernel)


# The headers chapter 9 cites, and what it names from them, as the C compiler
# reads them: an enum's members are numbered by the compiler, so cpp alone
# cannot tell. Two names are minidocker's own, spelled as the header would,
# and NLA_TYPE_MASK is an int there, ~(the flags), over a 16-bit field.
NETFILTER_HEADERS = ["limits.h", "linux/netlink.h", "linux/netfilter.h", "linux/netfilter_ipv4.h",
                     "linux/netfilter/nfnetlink.h", "linux/netfilter/nf_tables.h",
                     "linux/netfilter/nf_nat.h", "linux/netfilter/nf_conntrack_common.h"]
NETFILTER_OWN = {"NF_CT_STATE_ESTABLISHED": "NF_CT_STATE_BIT(IP_CT_ESTABLISHED)",
                 "NF_CT_STATE_RELATED": "NF_CT_STATE_BIT(IP_CT_RELATED)",
                 "NLA_TYPE_MASK": "NLA_TYPE_MASK & 0xFFFF"}


def test_netlink_and_nftables_numbers_match_the_headers(tmp_path):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed (apt-get install gcc libc6-dev)")
    names = sorted(name for name in dir(md)
                   if re.match(r"(NETLINK|NLM|NLMSG|NLA|NFNL|NFPROTO|NF|NFT|NFTA|IPS)_", name)
                   and isinstance(getattr(md, name), int) and name != "NETLINK_TIMEOUT")
    assert len(names) > 90 and "NFTA_META_DREG" in names
    source = "".join("#include <%s>\n" % header for header in NETFILTER_HEADERS) + "#include <stdio.h>\n"
    source += "int main(void) {\n" + "".join('    printf("%s %%lld\\n", (long long)(%s));\n'
                                             % (name, NETFILTER_OWN.get(name, name)) for name in names) + "}\n"
    (tmp_path / "numbers.c").write_text(source)
    subprocess.run(["gcc", "-o", str(tmp_path / "numbers"), str(tmp_path / "numbers.c")], check=True)
    printed = subprocess.run([str(tmp_path / "numbers")], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert {name: getattr(md, name) for name in names} == \
        {name: int(value) for name, value in (line.split() for line in printed.splitlines())}


# An RTM_GETADDR dump of a namespace with lo up and mini-br0 at 10.0.0.1/24:
# two NLM_F_MULTI messages in one datagram, then NLMSG_DONE in the next;
# and the answer to RTM_GETLINK for a missing "nosuch0".
KERNEL_DUMP = ("4c000000140002000100000018120000020880fe01000000080001007f00000108000200"
    "7f000001070003006c6f0000080008008000000014000600ffffffffffffffff3ace0a00"
    "3ace0a00540000001400020001000000181200000218800004000000080001000a000001"
    "080002000a0000010d0003006d696e692d62723000000000080008008000000014000600"
    "ffffffffffffffff79b80a0079b80a00")
KERNEL_DONE = "1400000003000200010000001812000000000000"
KERNEL_ENODEV = ("40000000020000000200000018120000edffffff2c000000120005000200000000000000"
    "000000000000000000000000000000000c0003006e6f737563683000")


def test_parse_a_multipart_dump_and_an_error():
    messages = md.parse_messages(bytes.fromhex(KERNEL_DUMP))
    assert [(kind, flags & md.NLM_F_MULTI) for kind, flags, _, _ in messages] == \
        [(md.RTM_NEWADDR, md.NLM_F_MULTI)] * 2
    assert md.parse_addresses(messages) == [(1, "127.0.0.1/8"), (4, "10.0.0.1/24")]
    assert [m[0] for m in md.parse_messages(bytes.fromhex(KERNEL_DONE))] == [md.NLMSG_DONE]
    [(kind, _, seq, body)] = md.parse_messages(bytes.fromhex(KERNEL_ENODEV))
    assert (kind, seq, md.error_of(body)) == (md.NLMSG_ERROR, 2, errno.ENODEV)
    # The error echoes the request it answers.
    assert md.parse_attrs(body[4 + 16 + 16:])[md.IFLA_IFNAME] == b"nosuch0\0"
    assert str(md.NetlinkError(md.error_of(body), "RTM_NEWLINK veth a1b2c3")) == \
        "RTM_NEWLINK veth a1b2c3 failed: No such device"


def test_publish_and_network_flags_parse():
    assert md.parse_publish("8080:80") == [["0.0.0.0", 8080, 8080, "tcp", 80]]
    assert md.parse_publish("127.0.0.1:5353:53/udp") == [["127.0.0.1", 5353, 5353, "udp", 53]]
    plan = parse("--subnet", "10.9.0.0/16", "--bridge", "br-test", "-p", "1:2", "--dns", "9.9.9.9",
                "--add-host", "db:10.1.2.3", "--add-host", "gw:host-gateway", "/", "true").network_plan
    assert plan == {"mode": "bridge", "bridge": "br-test", "subnet": "10.9.0.0/16",
                    "ports": [["0.0.0.0", 1, 1, "tcp", 2]], "expose": [[2, "tcp"]], "dns": ["9.9.9.9"],
                    "add_hosts": [("db", "10.1.2.3"), ("gw", "host-gateway")]}
    assert parse("/", "true").network_plan["bridge"] == "mini-br0"
    assert parse("--network", "none", "/", "true").network_plan["mode"] == "none"
    assert parse("--net", "host", "/", "true").network_plan["mode"] == "host"  # docker's alias


@pytest.mark.parametrize("argv, message", [
    (["-p", "70000:80"], "invalid --publish '70000:80': port '70000' is not a number from 1 to 65535"),
    (["-p", "abc"], "invalid --publish 'abc': port 'abc' is not a number from 1 to 65535"),
    (["-p", "1:2:3:4"], "invalid --publish '1:2:3:4': expected [IP:][HOSTPORT:]CTRPORT[/tcp|/udp]"),
    (["-p", "80:0"], "port '0' is not a number"),
    (["-p", "1.2.3:80:80"], "'1.2.3' is not an IPv4 address"),
    (["-p", "80:80/sctp"], "protocol 'sctp': minidocker publishes tcp and udp"),
    (["-p", "80:80", "-p", "80:81"], "--publish 0.0.0.0:80/tcp is given twice"),
    (["--subnet", "10.0.0.0/33"], "invalid --subnet '10.0.0.0/33'"),
    (["--subnet", "10.0.0.1/24"], "has host bits set"),
    (["--subnet", "10.0.0.0/31"], "no room for a gateway and a container"),
    (["--network", "overlay"], "unknown --network 'overlay': minidocker knows bridge, none and host"),
    (["--network", "none", "-p", "80:80"], "need --network bridge, not none"),
    (["--network", "host", "-P"], "need --network bridge, not host"),
    (["--bridge", "a/b"], "invalid --bridge 'a/b'"),
    (["--bridge", "sixteen-chars-xx"], "invalid --bridge"),
    (["--dns", "resolver"], "invalid --dns 'resolver'"),
    (["--add-host", "nohost"], "invalid --add-host 'nohost': expected NAME:IP"),
    (["--add-host", "db:300.1.1.1"], "invalid --add-host 'db:300.1.1.1': '300.1.1.1' is not an IP address"),
    (["--network", "host", "--add-host", "g:host-gateway"], "needs --network bridge"),
])
def test_bad_network_flags(argv, message):
    with pytest.raises(md.MiniDockerError) as caught:
        parse(*argv, "/", "true")
    assert message in str(caught.value)


def test_address_allocation_skips_gateway_and_used_and_says_when_full():
    subnet = md.IPv4Network("10.0.0.0/29")  # .1 gateway, .2-.6 containers, .7 broadcast
    assert md.allocate_address(subnet, set()) == "10.0.0.2"
    assert md.allocate_address(subnet, {"10.0.0.2", "10.0.0.3"}) == "10.0.0.4"
    # A restarted container's address again, if free and a host's; else the first free.
    assert md.allocate_address(subnet, {"10.0.0.2"}, "10.0.0.5") == "10.0.0.5"
    for taken in ("10.0.0.1", "10.0.0.7", "10.0.0.0", "10.0.1.5", "10.0.0.2", "nonsense", "010.0.0.5",
                  167772165, None):
        assert md.allocate_address(subnet, {"10.0.0.2"}, taken) == "10.0.0.3"
    with pytest.raises(md.MiniDockerError, match="subnet 10.0.0.0/29 is full"):
        md.allocate_address(subnet, {"10.0.0.%d" % n for n in range(2, 7)})


def test_lease_conflicts():
    mine = {"bridge": "mini-br0", "subnet": "10.0.0.0/24", "ports": [["0.0.0.0", 8080, 8080, "tcp", 80]]}
    other = dict(mine, container="abc", ports=[["127.0.0.1", 8080, "tcp", 81]])
    with pytest.raises(md.MiniDockerError, match="port 0.0.0.0:8080/tcp is already published by container abc"):
        md.assign_host_ports(mine["ports"], [other], [], (32768, 60999))
    assert md.assign_host_ports(mine["ports"], [dict(other, ports=[["0.0.0.0", 8080, "udp", 80]])],
                                [], (32768, 60999)) == [["0.0.0.0", 8080, "tcp", 80]]
    with pytest.raises(md.MiniDockerError, match="bridge mini-br0 already serves 10.0.0.0/24, not 10.1.0.0/24"):
        md.check_lease(dict(mine, subnet="10.1.0.0/24", ports=[]), [other])
    with pytest.raises(md.MiniDockerError, match="subnet 10.0.0.0/16 overlaps 10.0.0.0/24 of bridge mini-br0"):
        md.check_lease(dict(mine, bridge="br1", subnet="10.0.0.0/16", ports=[]), [other])


def test_resolv_conf_and_hosts():
    host = "# made by resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.org\n"
    upstream = "nameserver 192.0.2.53\nnameserver ::1\nsearch example.org\n"
    assert md.resolv_conf(host, upstream, [], False) == \
        "nameserver 192.0.2.53\noptions edns0 trust-ad\nsearch example.org\n"
    assert md.resolv_conf(host, "", [], False).startswith("nameserver 8.8.8.8\nnameserver 8.8.4.4\n")
    assert md.resolv_conf(host, upstream, ["1.1.1.1"], False).startswith("nameserver 1.1.1.1\noptions")
    assert md.resolv_conf(host, upstream, [], True).startswith("nameserver 127.0.0.53\n")
    text = md.hosts_file("web", "10.0.0.2", [("db", "10.1.2.3")])
    assert text.startswith("127.0.0.1\tlocalhost\n") and text.endswith("10.0.0.2\tweb\n10.1.2.3\tdb\n")


def test_nat_batch_rebuilds_the_table_whole():
    net = {"bridge": "mini-br0", "subnet": "10.0.0.0/24", "address": "10.0.0.2",
           "ports": [["0.0.0.0", 8080, "tcp", 80]]}
    rules = md.nat_rules([net, dict(net, address="10.0.0.3", ports=[])])
    assert [chain for chain, _ in rules] == ["postrouting", "postrouting", "prerouting", "output",
                                             "postrouting", "guard"] + ["forward"] * 4
    datagram, names = md.nat_batch(rules)
    kinds = [kind & 0xFF for kind, _, _, _ in md.parse_messages(datagram)]
    assert kinds == [md.NFNL_MSG_BATCH_BEGIN, md.NFT_MSG_NEWTABLE, md.NFT_MSG_DELTABLE,
                     md.NFT_MSG_NEWTABLE] + [md.NFT_MSG_NEWCHAIN] * 5 + [md.NFT_MSG_NEWRULE] * 10 \
        + [md.NFNL_MSG_BATCH_END]
    assert len(names) == 18 and names[2] == "NFT_MSG_NEWTABLE minidocker"
    empty, _ = md.nat_batch([])  # nothing running: create-if-missing, then delete
    assert [kind & 0xFF for kind, _, _, _ in md.parse_messages(empty)] == [
        md.NFNL_MSG_BATCH_BEGIN, md.NFT_MSG_NEWTABLE, md.NFT_MSG_DELTABLE, md.NFNL_MSG_BATCH_END]


# ---------------------------------------------------------------------------
# 9. networking, root: only inside network namespaces the test makes
# ---------------------------------------------------------------------------
# `sandbox` is a throwaway namespace where minidocker runs (its bridge, veths
# and NAT table live there), wired by a veth pair to a second one, `client`,
# that plays another host: sandbox 192.168.77.1/24, client 192.168.77.2/24.
# No packet leaves those two namespaces. The host's network is never touched.

class Sandbox:
    count = 0

    def __init__(self):
        Sandbox.count += 1
        self.name = "mdtest%d-%d" % (os.getpid(), Sandbox.count)
        self.client = self.name + "c"
        for name in (self.name, self.client):
            subprocess.run(["ip", "netns", "add", name], check=True)
        for script in ["ip -n {s} link add s0 type veth peer name c0 netns {c}",
                       "ip -n {s} addr add 192.168.77.1/24 dev s0",
                       "ip -n {c} addr add 192.168.77.2/24 dev c0",
                       "ip -n {s} link set s0 up", "ip -n {c} link set c0 up",
                       "ip -n {s} link set lo up", "ip -n {c} link set lo up"]:
            subprocess.run(script.format(s=self.name, c=self.client).split(), check=True)

    def enter(self, name=None):
        return ["nsenter", "--net=/run/netns/" + (name or self.name)]

    def minidocker(self, *args):
        return self.enter() + MINIDOCKER + list(args)

    def run(self, *args, timeout=60):
        result = subprocess.run(self.minidocker(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=timeout)
        result.out, result.err = result.stdout.decode(), result.stderr.decode()
        return result

    def start(self, *args):
        return subprocess.Popen(self.minidocker(*args), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sh(self, script, namespace=None):
        return subprocess.run(self.enter(namespace) + ["sh", "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=60).stdout.decode()

    def veths(self):
        return self.sh("ip -o link show type veth | grep -v ' s0@'").strip()

    def veths_once_namespaces_go(self, seconds=5):
        """The veths still there once the kernel has torn down the network
        namespaces of exited containers: it deletes their veths then, in a
        kernel worker, a moment after the container's last process."""
        deadline = time.monotonic() + seconds
        while self.veths() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.veths()

    def ruleset(self):
        return self.sh("nft list ruleset").strip()

    def delete(self):
        for name in (self.name, self.client):
            subprocess.run(["ip", "netns", "del", name])


@pytest.fixture
def sandbox():
    for tool in ("ip", "nft", "nsenter"):
        if shutil.which(tool) is None:
            pytest.fail("%s is not installed (apt-get install iproute2 nftables util-linux)" % tool)
    box = Sandbox()
    try:
        yield box
    finally:
        box.delete()


def container_address(line):
    """The last line of a container's /etc/hosts: 'ADDRESS\\tNAME'."""
    return line.split()[0]


def assert_network_gone(box):
    """No veth, no NAT table; the bridge stays, with its address (as docker0),
    but without route_localnet, whose guard went with the table."""
    assert box.veths_once_namespaces_go() == ""
    assert box.ruleset() == ""
    for bridge in box.sh("ip -o link show type bridge | cut -d: -f2").split():
        assert box.sh("cat /proc/sys/net/ipv4/conf/%s/route_localnet" % bridge) == "0\n", bridge
    assert_nothing_left()


NAT_RULESET = """table ip minidocker {
	chain guard {
		type filter hook prerouting priority raw; policy accept;
		iifname "mini-br0" ip daddr 127.0.0.0/8 drop
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		oifname "mini-br0" ct state established,related accept
		oifname "mini-br0" ct status dnat accept
		iifname "mini-br0" oifname "mini-br0" accept
		oifname "mini-br0" drop
	}

	chain output {
		type nat hook output priority -100; policy accept;
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.0.0.0/24 oifname != "mini-br0" masquerade
		ip saddr 10.0.0.0/24 oifname "mini-br0" ct status dnat masquerade
		ip saddr 127.0.0.0/8 oifname "mini-br0" masquerade
	}
}"""


@root
def test_net_containers_reach_each_other_and_the_gateway(rootfs, sandbox):
    server = sandbox.start("run", "--rm", rootfs, "sh", "-c", "tail -n1 /etc/hosts; nc -l -p 5000")
    try:
        address = container_address(server.stdout.readline().decode())
        assert ipaddress.ip_address(address) in ipaddress.ip_network("10.0.0.0/24")
        # What the tools see of what we built, while it runs.
        assert "bridge" in sandbox.sh("ip -d link show mini-br0")
        assert "inet 10.0.0.1/24 " in sandbox.sh("ip -4 addr show mini-br0")
        assert sandbox.sh("ip route show dev mini-br0").split() == \
            "10.0.0.0/24 proto kernel scope link src 10.0.0.1".split()
        [veth] = sandbox.veths().splitlines()
        assert "master mini-br0" in veth and "state UP" in veth
        assert sandbox.ruleset() == NAT_RULESET
        client = sandbox.run("run", "--rm", rootfs, "sh", "-c",
                             "ip route; ip -4 -o addr show eth0; ping -c1 -W5 10.0.0.1 >/dev/null && "
                             "ping -c1 -W5 %s >/dev/null && echo hello >/tmp/m && nc %s 5000 </tmp/m && echo sent"
                             % (address, address))
        # The message comes from a file, not `echo hello |`: the server's stdin is /dev/null,
        # so busybox nc half-closes its side on accept, and a client that sees that EOF before
        # echo has written into the pipe quits without sending (rc 0; once in a CI run).
        assert client.returncode == 0, client.out + client.err
        route, eth0, sent = client.out.splitlines()[0], client.out.splitlines()[2], client.out.splitlines()[-1]
        assert route.split()[:3] == ["default", "via", "10.0.0.1"] and sent == "sent"
        assert "inet 10.0.0." in eth0 and address not in eth0  # the client has its own address
        assert server.wait(timeout=30) == 0
        assert server.stdout.read() == b"hello\n"
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    assert_network_gone(sandbox)


ECHO_SERVER = """
import socket, sys, threading
def tcp():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 80)); listener.listen()
    while True:
        conn, peer = listener.accept()
        conn.sendall(b"tcp " + conn.recv(100) + b" from " + peer[0].encode()); conn.close()
def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.bind(("0.0.0.0", 53))
    while True:
        data, peer = sock.recvfrom(100); sock.sendto(b"udp " + data + b" from " + peer[0].encode(), peer)
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True); sys.stdin.read()
"""

ASK = """
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
sock.settimeout(float(sys.argv[4]) if len(sys.argv) > 4 else 10)
try:
    sock.connect((host, port)); sock.send(b"ping")
    print(sock.recv(100).decode())
except socket.timeout:
    print("no answer")
except OSError as err:
    print(err.strerror)
"""


@root
def test_net_published_ports_tcp_and_udp(debian, rootfs, sandbox):
    image, options = debian
    server = subprocess.Popen(sandbox.minidocker("run", "--rm", "-i", "-p", "8080:80", "-p", "5353:53/udp",
                                                 *options, image, "python3", "-c", ECHO_SERVER),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout.readline() == b"ready\n", server.stderr.read1()
        answers = {}
        for where, host in [("sandbox", "192.168.77.1"), ("sandbox", "127.0.0.1"),
                            ("client", "192.168.77.1")]:
            for proto, port in [("tcp", 8080), ("udp", 5353)]:
                asked = subprocess.run(sandbox.enter(sandbox.client if where == "client" else None)
                                       + [sys.executable, "-c", ASK, proto, host, str(port)],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
                answers[where, host, proto] = asked.stdout.decode().strip()
        # From the sandbox's own address the source is kept; from 127.0.0.1 it
        # is masqueraded to the gateway; from another host it arrives as is.
        assert answers == {
            ("sandbox", "192.168.77.1", "tcp"): "tcp ping from 192.168.77.1",
            ("sandbox", "192.168.77.1", "udp"): "udp ping from 192.168.77.1",
            ("sandbox", "127.0.0.1", "tcp"): "tcp ping from 10.0.0.1",
            ("sandbox", "127.0.0.1", "udp"): "udp ping from 10.0.0.1",
            ("client", "192.168.77.1", "tcp"): "tcp ping from 192.168.77.2",
            ("client", "192.168.77.1", "udp"): "udp ping from 192.168.77.2"}
        # Hairpin: another container reaches the port through the host's
        # addresses; the server sees the gateway, whose conntrack answers.
        hairpin = sandbox.run("run", "--rm", rootfs, "sh", "-c",
                              "echo ping | nc 192.168.77.1 8080; echo; echo ping | nc 10.0.0.1 8080")
        assert hairpin.out == "tcp ping\n from 10.0.0.1\ntcp ping\n from 10.0.0.1", hairpin.err
        rules = sandbox.ruleset()
        assert "fib daddr type local tcp dport 8080 dnat to 10.0.0.2:80" in rules
        assert "fib daddr type local udp dport 5353 dnat to 10.0.0.2:53" in rules
        assert sandbox.sh("cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/mini-br0/route_localnet") \
            == "1\n1\n"
        server.stdin.close()
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    assert_network_gone(sandbox)


# A neighbour (the client namespace) that routes the containers' subnet and
# 127.0.0.0/8 through the sandbox, as an attacker on the same link can. Its
# own loopback address goes first, or its kernel would keep 127.0.0.0/8
# local, and it takes answers from 127.0.0.1 (route_localnet), which a
# kernel otherwise drops as martians.
NEIGHBOUR_ROUTES = ("ip route add 10.0.0.0/24 via 192.168.77.1 && ip addr del 127.0.0.1/8 dev lo && "
                    "ip route add 127.0.0.0/8 via 192.168.77.1 && "
                    "echo 1 > /proc/sys/net/ipv4/conf/c0/route_localnet")


# Who asks, what, and the answer it must get, from a container that
# publishes 8080:80, 127.0.0.1:8081:80 and 127.0.0.1:5353:53/udp.
NEIGHBOUR_ANSWERS = {
    ("client", "tcp", "10.0.0.2", 80): "no answer",        # unpublished, straight to the container
    ("client", "udp", "10.0.0.2", 53): "no answer",
    ("client", "tcp", "127.0.0.1", 8080): "no answer",     # through loopback addresses
    ("client", "tcp", "127.0.0.1", 8081): "no answer",
    ("client", "udp", "127.0.0.1", 5353): "no answer",
    ("client", "tcp", "192.168.77.1", 8080): "tcp ping from 192.168.77.2",
    ("client", "tcp", "192.168.77.1", 8081): "Connection refused",
    ("sandbox", "tcp", "127.0.0.1", 8080): "tcp ping from 10.0.0.1",
    ("sandbox", "tcp", "127.0.0.1", 8081): "tcp ping from 10.0.0.1",
    ("sandbox", "udp", "127.0.0.1", 5353): "udp ping from 10.0.0.1",
}


@root
def test_net_a_neighbour_reaches_only_what_is_published_on_its_side(debian, rootfs, sandbox):
    image, options = debian
    sandbox.sh(NEIGHBOUR_ROUTES, sandbox.client)
    outside = subprocess.Popen(sandbox.enter(sandbox.client) + [sys.executable, "-c", ECHO_SERVER],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    publish = ["-p", "8080:80", "-p", "127.0.0.1:8081:80", "-p", "127.0.0.1:5353:53/udp"]
    server = subprocess.Popen(sandbox.minidocker("run", "--rm", "-i", *publish, *options, image,
                                                 "python3", "-c", ECHO_SERVER),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert outside.stdout.readline() == b"ready\n"
        assert server.stdout.readline() == b"ready\n", server.stderr.read1()
        assert "dnat to 10.0.0.2:80" in sandbox.ruleset()
        asking = {(where, proto, host, port): subprocess.Popen(
            sandbox.enter(sandbox.client if where == "client" else None)
            + [sys.executable, "-c", ASK, proto, host, str(port), "3"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for where, proto, host, port in NEIGHBOUR_ANSWERS}
        answers = {ask: proc.communicate(timeout=30)[0].decode().strip() for ask, proc in asking.items()}
        assert answers == NEIGHBOUR_ANSWERS
        # Out to the neighbour (masqueraded), and to the other container on
        # the bridge, whether or not br_netfilter shows bridged frames to
        # the forward hook (a per-namespace switch where the module is loaded).
        switch = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        for setting in ["1", "0"] if sandbox.sh("test -e %s && echo yes" % switch) == "yes\n" else [None]:
            if setting:
                sandbox.sh("echo %s > %s" % (setting, switch))
            talk = sandbox.run("run", "--rm", rootfs, "sh", "-c",
                               "echo ping | nc 192.168.77.2 80; echo; echo ping | nc -w 3 10.0.0.2 80")
            assert talk.out == "tcp ping\n from 192.168.77.1\ntcp ping\n from 10.0.0.3", (setting, talk.err)
        server.stdin.close()
        assert server.wait(timeout=30) == 0
    finally:
        for proc in (server, outside):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert_network_gone(sandbox)


@root
def test_net_twenty_parallel_runs_get_distinct_addresses_and_leave_nothing(rootfs, sandbox,
                                                                          tmp_path):
    # A barrier: each container says it is up (a file in a shared volume)
    # and waits for "go", so all twenty are alive at once, whatever the load.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    script = ("tail -n1 /etc/hosts; touch /b/$(hostname); n=0; "
              "while [ ! -e /b/go ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done")
    runs = [sandbox.start("run", "--rm", "-v", "%s:/b" % barrier, rootfs, "sh", "-c", script)
            for _ in range(20)]
    deadline = time.monotonic() + 120
    while len(os.listdir(str(barrier))) < 20:
        assert time.monotonic() < deadline and all(p.poll() is None for p in runs)
        time.sleep(0.1)
    (barrier / "go").touch()
    outputs = [proc.communicate(timeout=120) for proc in runs]
    assert [proc.returncode for proc in runs] == [0] * 20, [err for _, err in outputs]
    addresses = {container_address(out.decode()) for out, _ in outputs}
    assert len(addresses) == 20 and "10.0.0.1" not in addresses
    assert_network_gone(sandbox)


@root
def test_net_kill_9_of_minidocker_is_reclaimed_by_the_next_run(rootfs, sandbox):
    proc = sandbox.start("run", "--rm", "-p", "8080:80", rootfs, "sh", "-c", "echo up; sleep 60")
    try:
        assert proc.stdout.readline() == b"up\n"
        assert sandbox.veths() != ""
        os.kill(proc.pid, signal.SIGKILL)  # nsenter exec'd minidocker: this is its pid
        proc.wait()
    finally:
        proc.stdout.close()
        proc.stderr.close()
    sandbox.veths_once_namespaces_go(10)
    assert "dport 8080" in sandbox.ruleset()  # the rules wait for the next run
    again = sandbox.run("run", "--rm", rootfs, "true")
    assert again.returncode == 0, again.err
    assert_network_gone(sandbox)


@root
def test_net_a_zombie_minidocker_keeps_no_lease_nor_rules(rootfs, sandbox):
    """Killed but not yet reaped by its parent: its lease and published
    port go with the next command, as for a minidocker that is gone."""
    proc = sandbox.start("run", "--rm", "-p", "8080:80", rootfs, "sh", "-c", "echo up; sleep 60")
    try:
        assert proc.stdout.readline() == b"up\n"
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not md.read_text("/proc/%d/stat" % proc.pid).split(") ")[-1].startswith("Z"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        listing = sandbox.run("ps", "-a")  # while it is a zombie
        assert listing.returncode == 0 and listing.out.count("\n") == 1, listing.out
        assert "dport 8080" not in sandbox.ruleset()
    finally:
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert_network_gone(sandbox)


@root
def test_net_ip_netns_exec_hides_the_cgroups_and_says_so(rootfs, sandbox):
    """`ip netns exec` mounts a fresh /sys, so no cgroup filesystem is
    there: one line that names the cause and the fix, nothing left."""
    for flags in ([], ["-m", "64m"], ["--privileged"]):
        result = subprocess.run(["ip", "netns", "exec", sandbox.name] + MINIDOCKER + [
            "run", "--rm", "--network=none"] + flags + [rootfs, "true"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=60)
        err = result.stderr.decode()
        assert result.returncode == 125 and err.count("\n") == 1, err
        assert "no cgroup filesystem is mounted here" in err
        assert "nsenter --net=/run/netns/NAME" in err
    assert_nothing_left()


@root
def test_net_etc_files(rootfs, sandbox):
    before = snapshot(os.path.join(rootfs, "etc"))
    result = sandbox.run("run", "--rm", "--hostname", "web", "--add-host", "db:10.1.2.3",
                         "--add-host", "gw:host-gateway", "--dns", "192.0.2.53", rootfs, "sh", "-c",
                         "cat /etc/hostname; echo --; cat /etc/hosts; echo --; cat /etc/resolv.conf")
    assert result.returncode == 0, result.err
    hostname, hosts, resolv = result.out.split("--\n")
    assert hostname == "web\n"
    assert hosts.startswith("127.0.0.1\tlocalhost\n")
    assert hosts.endswith("\tweb\n10.1.2.3\tdb\n10.0.0.1\tgw\n")
    assert resolv.startswith("nameserver 192.0.2.53\n") and resolv.count("nameserver") == 1
    assert snapshot(os.path.join(rootfs, "etc")) == before  # the image's own files untouched
    # A loopback resolver (systemd-resolved's) means nothing inside: replaced.
    fake = os.path.join(os.environ["MINIDOCKER_ROOT"], "resolv.conf.fake")
    with open(fake, "w") as handle:
        handle.write("nameserver 127.0.0.53\noptions edns0\nsearch example.org\n")
    script = "mount --bind %s /etc/resolv.conf && exec %s" % (fake, " ".join(
        MINIDOCKER + ["run", "--rm", rootfs, "cat", "/etc/resolv.conf"]))
    replaced = subprocess.run(sandbox.enter() + ["unshare", "-m", "--propagation", "private",
                                                 "sh", "-c", script],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    os.unlink(fake)
    assert replaced.stdout.decode() == ("nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
                                        "options edns0\nsearch example.org\n"), replaced.stderr
    assert_network_gone(sandbox)


@root
def test_net_none_and_host(rootfs, sandbox):
    none = sandbox.run("run", "--rm", "--network", "none", rootfs, "ls", "/sys/class/net")
    assert none.out.split() == ["lo"]
    host = sandbox.run("run", "--rm", "--network", "host", rootfs, "sh", "-c",
                       "ls /sys/class/net; hostname; echo --; cat /etc/hosts")
    names, hosts = host.out.split("--\n")
    assert "s0" in names.split() and names.split()[-1] == socket.gethostname()
    with open("/etc/hosts") as handle:
        assert hosts == handle.read()  # a copy of the host's
    assert sandbox.veths() == "" and sandbox.ruleset() == ""
    assert "mini-br0" not in sandbox.sh("ip link")  # neither made a bridge
    assert_nothing_left()


@root
@pytest.mark.parametrize("args, message", [
    (["-p", "70000:80"], "port '70000' is not a number from 1 to 65535"),
    (["-p", "abc"], "invalid --publish 'abc'"),
    (["--subnet", "10.0.0.0/33"], "invalid --subnet '10.0.0.0/33'"),
    (["--network", "mesh"], "unknown --network 'mesh'"),
])
def test_net_bad_input_leaves_nothing(rootfs, sandbox, args, message):
    result = sandbox.run("run", "--rm", *args, rootfs, "true")
    assert result.returncode == 125 and result.err.startswith("minidocker: error: ")
    assert message in result.err and result.err.count("\n") == 1, result.err
    assert "mini-br0" not in sandbox.sh("ip link")
    assert_network_gone(sandbox)


@root
def test_net_port_published_twice_is_refused(rootfs, sandbox):
    first = sandbox.start("run", "--rm", "-p", "8080:80", rootfs, "sh", "-c", "echo up; sleep 60")
    try:
        assert first.stdout.readline() == b"up\n"
        second = sandbox.run("run", "--rm", "-p", "8080:81", rootfs, "true")
        assert second.returncode == 125 and second.err.count("\n") == 1, second.err
        assert "port 0.0.0.0:8080/tcp is already published by container" in second.err
        assert len(sandbox.veths().splitlines()) == 1  # the first one's only
        listing = subprocess.run(sandbox.minidocker("ps"), stdout=subprocess.PIPE).stdout.decode()
        assert re.search(r" \"sh -c 'echo up; sle…\" .* 0\.0\.0\.0:8080->80/tcp ", listing), listing
    finally:
        first.kill()
        first.wait()
        first.stdout.close()
        first.stderr.close()
    again = sandbox.run("run", "--rm", rootfs, "true")  # reclaims the killed first
    assert again.returncode == 0
    assert_network_gone(sandbox)


# From inside the container: hand-made Ethernet frames (AF_PACKET, with the
# default CAP_NET_RAW) to the gateway's MAC, one for 10.0.0.1 (the control:
# it must arrive) and one for 127.0.0.1 (must not: the guard chain).
RAW_FRAMES = """
import socket, struct, sys, time
address = open("/etc/hosts").read().split()[-2]
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"arp", ("10.0.0.1", 9))
time.sleep(0.5)
arp = [line.split() for line in open("/proc/net/arp").read().splitlines()[1:]]
gateway_mac = bytes.fromhex([row[3] for row in arp if row[0] == "10.0.0.1"][0].replace(":", ""))
own_mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
def checksum(header):
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
def frame(destination, port, payload):
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(address), socket.inet_aton(destination))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return gateway_mac + own_mac + b"\\x08\\x00" + ip + udp
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
raw.bind(("eth0", 0))
raw.send(frame("10.0.0.1", 7001, b"control"))
raw.send(frame("127.0.0.1", 7002, b"to loopback"))
print("sent")
"""

LISTEN = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.settimeout(float(sys.argv[3]))
print("listening", flush=True)
try:
    print(sock.recv(100).decode())
except socket.timeout:
    print("nothing")
"""


@root
def test_net_guard_keeps_containers_off_the_hosts_loopback(debian, sandbox):
    rootfs, options = debian
    # The bridge first, so that the listeners can bind its address.
    assert sandbox.run("run", "--rm", *options, rootfs, "true").returncode == 0
    listeners = [subprocess.Popen(sandbox.enter() + [sys.executable, "-c", LISTEN, host, port, "6"],
                                  stdout=subprocess.PIPE)
                 for host, port in [("10.0.0.1", "7001"), ("127.0.0.1", "7002")]]
    for listener in listeners:
        assert listener.stdout.readline() == b"listening\n"
    sent = sandbox.run("run", "--rm", *options, rootfs, "python3", "-c", RAW_FRAMES)
    assert sent.out == "sent\n", sent.err
    heard = [listener.communicate(timeout=30)[0].decode() for listener in listeners]
    assert heard == ["control\n", "nothing\n"]
    assert_network_gone(sandbox)


# What nft 1.0.6 sent (strace) for `nft add table ip minidocker`, `nft add
# chain ip minidocker postrouting { type nat hook postrouting priority
# srcnat; }` and `nft delete table ip minidocker`: message type and body.
# nft marks its nests with NLA_F_NESTED (the 0x80 in the hook's "04 80");
# minidocker writes them unmarked, as the kernel does in its own messages.
NFT_SENT = {
    "batch begin": (0x10, "0000000a"),
    "new table": (0xA00, "020000000f0001006d696e69646f636b657200000800020000000000"),
    "new chain postrouting": (0xA03, "020000000f0001006d696e69646f636b6572000010000300706f737472"
                                     "6f7574696e6700080007006e6174001400048008000100000000040800"
                                     "020000000064"),
    "delete table": (0xA02, "020000000f0001006d696e69646f636b65720000"),
    "batch end": (0x11, "0000000a"),
}

# `ip -4 addr show`'s RTM_GETADDR dump request (iproute2 6.1), sequence zeroed.
IPROUTE2_GETADDR = "180000001600010300000000000000000200000000000000"


def test_nftables_messages_match_nft():
    rule = ("postrouting", md.match_saddr("10.0.0.0/24") + md.action_masquerade())
    ours = {}
    for kind, _, _, body in md.parse_messages(md.nat_batch([rule])[0]):
        name = {0x10: "batch begin", 0xA00: "new table", 0xA02: "delete table",
                0x11: "batch end"}.get(kind)
        if kind == 0xA03:
            name = "new chain " + md.parse_attrs(body[4:])[md.NFTA_CHAIN_NAME].rstrip(b"\0").decode()
        ours[name] = (kind, body.hex())
    for name, (kind, sent) in NFT_SENT.items():
        assert ours[name] == (kind, sent.replace("14000480", "14000400")), name
    kind, flags, body, _ = md.request_get_addresses()
    assert md.nl_message(kind, md.NLM_F_REQUEST | flags, 0, body).hex() == IPROUTE2_GETADDR


@root
def test_net_a_bridge_name_that_is_not_a_bridge_is_refused(rootfs, sandbox):
    """A tap device where the bridge should be (the kernel would not
    enslave a veth to it), and the sandbox's own uplink named with
    --bridge: refused before anything is set on them. route_localnet on a
    real uplink, with no guard for it, would open the namespace's loopback
    services to its neighbours."""
    sandbox.sh("ip tuntap add mini-br0 mode tap")
    for flags, kind in (([], "tun"), (["--bridge", "s0", "--subnet", "192.168.88.0/24"], "veth")):
        result = sandbox.run("run", "--rm", *flags, rootfs, "true")
        assert result.returncode == 125 and result.err.count("\n") == 1, result.err
        name = flags[1] if flags else "mini-br0"
        assert "interface %s exists and is a %s, not a bridge" % (name, kind) in result.err
        assert sandbox.sh("cat /proc/sys/net/ipv4/conf/%s/route_localnet" % name) == "0\n"
        assert sandbox.veths() == "" and sandbox.ruleset() == ""
    assert_nothing_left()


# In a network namespace of its own (`unshare -n`): nf_tables batches made by
# nat_batch, some altered, sent through one Netlink; prints each error.
ODD_BATCHES = """
import struct, sys
sys.path.insert(0, sys.argv[1])
import minidocker as md
NLMSG_NOOP = 1  # <linux/netlink.h>
masquerade = md.action_masquerade()
nl = md.Netlink(md.NETLINK_NETFILTER, **({"timeout": 0.5} if sys.argv[2] == "no answer" else {}))
batches = [md.nat_batch([("postrouting", masquerade)], nl.seq + 1)]
if sys.argv[2] == "bad res_id":  # BATCH_BEGIN's res_id names no subsystem
    datagram, names = batches[0]
    assert md.parse_messages(datagram)[0][0] == md.NFNL_MSG_BATCH_BEGIN
    batches = [(datagram[:18] + struct.pack(">H", 0xFFFF) + datagram[20:], names)]
elif sys.argv[2] == "no answer":  # the kernel does not answer a NOOP without NLM_F_ACK
    batches = [(md.nl_message(NLMSG_NOOP, md.NLM_F_REQUEST, 1, b""), {1: "NLMSG_NOOP"})]
for chains in (["nosuchchain", "postrouting"], ["postrouting", "nosuchchain"]):
    if sys.argv[2] == "after a failed one":  # the first batch's last ack comes after its error
        batches = [md.nat_batch([(chain, masquerade) for chain in chains], nl.seq + 1)]
    try:
        nl.batch(*batches[0])
    except md.MiniDockerError as err:
        print(type(err).__name__, err)
    if sys.argv[2] != "after a failed one":
        break
"""


@root
@pytest.mark.parametrize("change, errors", [
    ("bad res_id", "NetlinkError nf_tables batch refused: Invalid argument\n"),
    ("no answer", "MiniDockerError nf_tables batch: no answer from the kernel in 0.5 s\n"),
    ("after a failed one",
     "NetlinkError NFT_MSG_NEWRULE nosuchchain failed: No such file or directory "
     "(hint: %s)\n" % md.NFT_EXPRESSIONS_HINT * 2)])
def test_net_an_nftables_batch_never_waits_forever_nor_misreads(change, errors):
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", ODD_BATCHES, HERE, change],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert result.stdout.decode() == errors, result.stderr.decode()


@root
def test_net_another_subnet_and_bridge_and_a_full_subnet(rootfs, sandbox):
    options = ["--subnet", "10.5.0.0/30", "--bridge", "br-small"]  # room for one container
    first = sandbox.start("run", "--rm", *options, rootfs, "sh", "-c",
                          "ip -4 -o addr show eth0; ip route; sleep 60")
    try:
        address, route = first.stdout.readline().decode(), first.stdout.readline().decode()
        assert " inet 10.5.0.2/30 " in address and route.split()[:3] == ["default", "via", "10.5.0.1"]
        assert "inet 10.5.0.1/30 " in sandbox.sh("ip -4 addr show br-small")
        full = sandbox.run("run", "--rm", *options, rootfs, "true")
        assert full.returncode == 125 and full.err.count("\n") == 1, full.err
        assert "subnet 10.5.0.0/30 is full: all 1 container addresses are in use" in full.err
        clash = sandbox.run("run", "--rm", "--subnet", "10.5.0.0/16", rootfs, "true")
        assert "subnet 10.5.0.0/16 overlaps 10.5.0.0/30 of bridge br-small" in clash.err
        assert len(sandbox.veths().splitlines()) == 1
    finally:
        first.kill()
        first.wait()
        first.stdout.close()
        first.stderr.close()
    again = sandbox.run("run", "--rm", *options, rootfs, "true")  # reclaims the killed first
    assert again.returncode == 0, again.err
    assert_network_gone(sandbox)


@root
def test_a_kernel_without_a_bridge_driver_gets_a_hint(rootfs):
    """The cgroup-v2 VM's kernel has no bridge module: there the default
    network fails with one line and a hint, and leaves nothing. Where the
    kernel has one, the same run works. In a network namespace of its own."""
    script = "if ip link add probe0 type bridge 2>/dev/null; then echo driver; else echo none; fi; " \
        "ip link del probe0 2>/dev/null; exec " + " ".join(MINIDOCKER + ["run", "--rm", rootfs, "true"])
    result = subprocess.run(["unshare", "-n", "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=60)
    err = result.stderr.decode()
    if result.stdout == b"driver\n":
        assert result.returncode == 0, err
    else:
        assert result.stdout == b"none\n" and result.returncode == 125
        assert err == ("minidocker: error: RTM_NEWLINK bridge mini-br0 failed: Operation not supported "
                       "(hint: the kernel has no bridge driver (CONFIG_BRIDGE); --network none and "
                       "--network host need none)\n")
    assert_nothing_left()


# ---------------------------------------------------------------------------
# 12. install: the launcher, cached bytecode, and the start-up trace
# ---------------------------------------------------------------------------

def installed(prefix):
    """(launcher, installed file, its bytecode) under PREFIX."""
    import importlib.util
    library = os.path.join(prefix, "lib", "minidocker", "minidocker.py")
    return (os.path.join(prefix, "bin", "minidocker"), library,
            importlib.util.cache_from_source(library))


def tree(top):
    return sorted(os.path.relpath(os.path.join(d, n), top)
                  for d, dirs, files in os.walk(top) for n in dirs + files)


@root
def test_install_runs_from_cached_bytecode_and_uninstall_removes_it(rootfs, tmp_path):
    """install copies the file, compiles it, and writes a launcher that
    imports it; a run through the launcher loads that bytecode as it is
    (a stale or missing one would be rewritten: its bytes and mtime would
    change). uninstall removes exactly what install wrote."""
    prefix = str(tmp_path / "prefix")
    os.makedirs(os.path.join(prefix, "bin"))
    before = tree(prefix)
    result = subprocess.run(MINIDOCKER + ["install", "--prefix", prefix], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=60)
    launcher, library, bytecode = installed(prefix)
    assert result.returncode == 0 and result.stdout.decode() == launcher + "\n", result.stderr
    with open(launcher) as handle:
        assert handle.readline() == "#!%s -IS\n" % sys.executable
    assert os.stat(launcher).st_mode & 0o777 == 0o755
    with open(library, "rb") as copy, open(os.path.join(HERE, "minidocker.py"), "rb") as source:
        assert copy.read() == source.read()
    compiled = os.stat(bytecode)
    with open(bytecode, "rb") as handle:
        compiled_bytes = handle.read()
    # Compiled as -OO -X no_debug_ranges: no docstrings, no columns.
    module = marshal.loads(compiled_bytes[16:])
    codes = {c.co_name: c for c in module.co_consts if isinstance(c, types.CodeType)}
    for code, docstring in ((module, "minidocker: a Linux"), (codes["is_number"], "Only ASCII")):
        assert not any(isinstance(c, str) and c.startswith(docstring) for c in code.co_consts)
    if sys.version_info >= (3, 11):
        assert {column for _, _, column, _ in codes["is_number"].co_positions()} == {None}
    ran = subprocess.run([launcher, "run", "--rm", "--network=none", rootfs, "echo", "hi"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=60)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, b"hi\n", b"")
    features = subprocess.run([launcher + "-runc", "features"], stdout=subprocess.PIPE,
                              timeout=60)  # the link speaks runc's command line
    assert json.loads(features.stdout)["ociVersionMax"] == md.OCI_VERSION
    assert os.stat(bytecode).st_mtime_ns == compiled.st_mtime_ns
    with open(bytecode, "rb") as handle:
        assert handle.read() == compiled_bytes
    assert_nothing_left()
    result = subprocess.run([launcher, "uninstall", "--prefix", prefix], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 0, result.stderr
    assert tree(prefix) == before + ["lib"]  # lib/ may hold others' files: it stays


@root
def test_the_launcher_ignores_the_callers_python_environment(rootfs, tmp_path):
    """`sudo -E minidocker` keeps the caller's environment: PYTHONPATH must
    not choose the module the launcher imports (-I), nor PYTHONSTARTUP or a
    user site run anything (-S, -I)."""
    prefix = str(tmp_path / "prefix")
    subprocess.run(MINIDOCKER + ["install", "--prefix", prefix], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "minidocker.py").write_text("print('hijacked')\nmain = exit_now = print\n")
    (hostile / "sitecustomize.py").write_text("print('hijacked')\n")
    env = dict(os.environ, PYTHONPATH=str(hostile), PYTHONSTARTUP=str(hostile / "minidocker.py"),
               PYTHONUSERBASE=str(hostile))
    ran = subprocess.run([installed(prefix)[0], "run", "--rm", "--network=none", rootfs,
                          "echo", "hi"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, b"hi\n"), ran.stderr
    subprocess.run(MINIDOCKER + ["uninstall", "--prefix", prefix], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)


@root
def test_install_and_uninstall_refuse_what_is_not_theirs(state, tmp_path):
    """A launcher path that holds someone else's program is left alone, and
    uninstall where nothing is installed says so: one line, exit 125."""
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    theirs = prefix / "bin" / "minidocker"
    theirs.write_text("#!/bin/sh\necho theirs\n")
    err = bad(["install", "--prefix", str(prefix)],
              "install: %s exists and is not minidocker's launcher" % theirs)
    assert "--prefix" in err and theirs.read_text() == "#!/bin/sh\necho theirs\n"
    assert tree(str(prefix)) == ["bin", "bin/minidocker"]
    bad(["uninstall", "--prefix", str(prefix)],
        "uninstall: minidocker is not installed under %s" % prefix)
    assert theirs.read_text() == "#!/bin/sh\necho theirs\n"
    (tmp_path / "file").write_text("")
    bad(["install", "--prefix", str(tmp_path / "file")], "install: ")


@root
def test_install_refuses_a_prefix_another_user_can_change(state, tmp_path):
    """Root installing into directories a user can write would run that
    user's launcher or bytecode later, or write through their symlinks
    (the temporary's name was guessable): refused before anything is
    written, and uninstall neither follows a symlinked directory nor
    deletes where no launcher of ours is."""
    theirs = tmp_path / "theirs"
    (theirs / "lib").mkdir(parents=True)
    os.chown(str(theirs), 1000, 1000)
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    bad(["install", "--prefix", str(theirs)], "install: %s is owned by uid 1000" % theirs)
    assert tree(str(theirs)) == ["lib"] and victim.read_text() == "root's\n"
    os.symlink(str(tmp_path), str(theirs / "lib" / "minidocker"))
    (tmp_path / "minidocker.py").write_text("root's own\n")
    os.chown(str(theirs), 0, 0)
    os.lchown(str(theirs / "lib" / "minidocker"), 1000, 1000)
    bad(["uninstall", "--prefix", str(theirs)], "uninstall: ")
    assert (tmp_path / "minidocker.py").read_text() == "root's own\n"
    bad(["install", "--prefix", str(tmp_path / "a\nb")], "has a control character")


@root
def test_debug_traces_each_stage_in_order(rootfs):
    """--debug prints a line per start-up stage with the ms since main()
    began, the child's stages among them (the same clock), and the `own
    work` line. The times follow the order of the run: the child gets "go"
    only after the cgroups are joined and the /etc files written."""
    result = run(rootfs, "true", options=["--debug"])
    assert result.returncode == 0, result.err
    times = {}
    for ms, stage in re.findall(r"^minidocker: debug: +([0-9.]+) ms  (.*)$", result.err, re.M):
        times[stage.split(",")[0]] = float(ms)
    for order in (["flags parsed into the spec", "dead containers reclaimed",
                   "record and layer made", "cgroups made", "forked the child",
                   "child: namespaces unshared", "child: root built", "child: go"],
                  ["forked the child", "network leased", "child: go"],  # the /etc files
                  ["forked the child", "cgroups joined", "child: go"]):
        assert [times[stage] for stage in order] == sorted(times[stage] for stage in order), times
    assert re.search(r"^minidocker: debug: own work [0-9.]+ ms \(main\(\) to execve\)$",
                     result.err, re.M), result.err


@root
def test_the_default_filter_is_compiled_once_and_kept(rootfs):
    """The default profile's program is kept in the run tree after the first
    run (root's alone), and a second run loads it: the same bytes as a fresh
    compile, and a forged cache entry (not a multiple of 8 bytes) is
    compiled anew rather than loaded."""
    cache = md.Paths().seccomp_cache
    run(rootfs, "true")  # the run tree exists from here on
    shutil.rmtree(cache, ignore_errors=True)
    first = run(rootfs, "true", options=["--debug"])
    assert first.returncode == 0 and "(cached)" not in first.err, first.err
    entries = os.listdir(cache)
    assert len(entries) == 1 and os.stat(cache).st_mode & 0o777 == 0o700
    with open(os.path.join(cache, entries[0])) as handle:
        kept = json.load(handle)
    assert bytes.fromhex(kept["program"]) == \
        md.plan_seccomp(md.default_profile(), DEFAULT_CAPS, "default")[0]
    second = run(rootfs, "true", options=["--debug"])
    assert "BPF instructions (cached)" in second.err, second.err
    with open(os.path.join(cache, entries[0]), "w") as handle:
        json.dump({"program": "00", "notes": []}, handle)
    third = run(rootfs, "sh", "-c", "grep Seccomp: /proc/self/status", options=["--debug"])
    assert "BPF instructions (cached)" not in third.err and "Seccomp:\t2" in third.out


# ---------------------------------------------------------------------------
# 11. --init: a reaper as pid 1
# ---------------------------------------------------------------------------

@root
def test_init_reaps_orphans_and_keeps_the_exit_code(rootfs):
    """With --init, pid 1 is our reaper and the command its child: an
    orphan is reaped (no zombie), and the command's exit code is the run's."""
    script = "(sleep 0.1 &); sleep 0.6; ps -o pid,stat,comm; exit 7"
    result = sh(rootfs, script, options=["--init"])
    assert result.returncode == 7, result.err
    lines = [line.split() for line in result.out.splitlines()[1:]]
    assert lines[0] == ["1", "S", "md:[2:INIT]"] and lines[1][2] == "sh", result.out
    # The orphan went to pid 1, the reaper: a reaper that did not wait for
    # it would show it here as a zombie.
    assert not [line for line in lines if line[1].startswith("Z")], result.out


@root
def test_init_forwards_signals_to_a_command_without_handlers(rootfs):
    """pid 1 ignores a signal it has no handler for, so `sleep` as pid 1
    outlives SIGTERM; under --init the reaper passes it on and sleep dies
    of it: 143."""
    command = MINIDOCKER + ["run", "--network=none", "--rm", "--init", rootfs,
                            "sh", "-c", "echo ready; exec sleep 60"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as proc:
        try:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(0.2)  # sh has exec'd sleep
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()
    assert_nothing_left()


@root
def test_init_is_held_as_the_command_and_keeps_its_memory_to_itself(rootfs):
    """The reaper runs under the command's user, capabilities, no_new_privs
    and seccomp filter; and it is not dumpable, so not even root in the
    container opens its /proc/1/exe (the host's python3: runc's
    CVE-2019-5736 class) or /proc/1/mem."""
    script = ("grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/1/status; echo --; "
              "grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; "
              "for f in exe mem; do if cat /proc/1/$f >/dev/null 2>&1; then echo $f open; "
              "else echo $f refused; fi; done")
    for options, nnp in (([], "0"), (["-u", "1000", "--security-opt", "no-new-privileges"], "1")):
        result = sh(rootfs, script, options=["--init"] + options)
        reaper, rest = result.out.split("--\n")
        command = rest.splitlines()[:5]
        assert reaper.splitlines() == command and len(command) == 5, result.out
        assert "Seccomp:\t2" in command and "NoNewPrivs:\t" + nnp in command
        assert rest.splitlines()[5:] == ["exe refused", "mem refused"], result.out


@root
def test_init_reports_a_command_that_cannot_run(rootfs):
    bad(["run", "--init", rootfs, "/no/such/program"], "exec /no/such/program", 127)


# ---------------------------------------------------------------------------
# 12. run -d: the monitor, the log, --name, logs, stop, wait
# ---------------------------------------------------------------------------

def lean_part():
    """The lean monitor's part of minidocker.py, run alone as the monitor
    runs it (md.lean_program): a name it uses from the rest of the file
    fails here."""
    namespace = {"__name__": "lean"}
    exec(md.lean_program(), namespace)
    return namespace


def close_log(log):
    """A lean log a test made: the write ends of its pipes (the
    container's, in a run), then the log itself."""
    for writer in log.writers:
        os.close(writer)
    log.close()


def test_json_log_entries_are_docker_json_file_lines(tmp_path):
    """The fast path (one bytes.replace over a clean chunk) and the slow one
    (_json's encoder per line) write the same entries: each line, newline
    and all (a '\\r' stays in its line, as in Docker's), with its stream and
    an RFC 3339 time in UTC to the nanosecond."""
    log = lean_part()["JsonLog"](str(tmp_path / "json.log"))
    try:
        for data in (b"plain one\nplain two\n", b'a "quote" \\ and \xc3\xa9\n', b"\x01\xff\n",
                     b"50%\r100%\n"):
            writer = log.writers[0]
            os.write(writer, data)
            assert log.copy(log.out)
        os.write(log.writers[1], b"no newline")
        for writer in log.writers:
            os.close(writer)
        assert log.copy(log.err)  # the unterminated line waits for the end
        assert log.copy(log.err) is False and log.copy(log.out) is False
    finally:
        log.close()
    entries = [json.loads(line) for line in (tmp_path / "json.log").read_text().splitlines()]
    assert [(e["log"], e["stream"]) for e in entries] == [
        ("plain one\n", "stdout"), ("plain two\n", "stdout"),
        ('a "quote" \\ and \u00e9\n', "stdout"), ("\x01\ufffd\n", "stdout"),
        ("50%\r100%\n", "stdout"), ("no newline", "stderr")]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", e["time"]) for e in entries)


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"


def logged(data, local):
    """What a log file holds, read by hand by the form its driver writes
    (JsonLog's lines of JSON, or LocalLog's records), not by minidocker's
    reader: [(the entry's bytes on disk, stream, time, [its lines])]."""
    entries = []
    while data and not local:
        raw, _, data = data.partition(b"\n")
        entry = json.loads(raw)
        entries.append((raw + b"\n", entry["stream"], entry["time"], [entry["log"]]))
    while data and local:
        head, newline, rest = data.partition(b"\n")
        stream, stamp, length = head.decode().split(" ")
        assert newline and stream in ("stdout", "stderr") and re.fullmatch(STAMP, stamp)
        assert re.fullmatch(r"[0-9]+", length) and len(rest) >= int(length) > 0
        lines = re.findall(r"[^\n]*\n|[^\n]+$", rest[:int(length)].decode("utf-8", "replace"))
        entries.append((head + newline + rest[:int(length)], stream, stamp, lines))
        data = rest[int(length):]
    return entries


@pytest.mark.parametrize("kind", ["JsonLog", "LocalLog"])
def test_log_rotates_as_docker_does(tmp_path, kind):
    """max-size and max-file: the log is rotated before an entry (a record,
    for LocalLog) once the file has reached max-size (so each rotated file
    ends with the entry that took it there), LOG.1 is the newest rotated
    file, only max-file files are kept, and together, oldest first, they
    hold the last lines in order; with max-file 1 only the log is kept."""
    lean = lean_part()
    for max_files in (3, 1):
        directory = tmp_path / str(max_files)
        directory.mkdir()
        log = lean[kind](str(directory / "x.log"), 1000, max_files)
        try:
            for chunk in range(40):  # ten lines a chunk; JsonLog's fast path and its slow one
                os.write(log.writers[0], b"".join(b"line %d%s\n" % (chunk * 10 + i, b"\xc3\xa9"
                                                  if chunk % 2 else b"") for i in range(10)))
                assert log.copy(log.out)
        finally:
            close_log(log)
        names = ["x.log.%d" % n for n in range(max_files - 1, 0, -1)] + ["x.log"]
        assert sorted(os.listdir(str(directory))) == sorted(names + ["x.log.lock"])
        files = [logged((directory / name).read_bytes(), kind == "LocalLog") for name in names]
        sizes = [sum(len(entry[0]) for entry in entries) for entries in files]
        for entries, size in zip(files[:-1], sizes):
            assert size - len(entries[-1][0]) < 1000 <= size
        assert sizes[-1] < 1000 + 100
        lines = [line for entries in files for entry in entries for line in entry[3]]
        numbers = [int(line.split()[1].rstrip("\u00e9")) for line in lines]
        assert numbers == list(range(400 - len(numbers), 400))
        assert sum(sizes) >= 1000 * (max_files - 1)


def test_local_log_records_are_the_output_as_it_came(tmp_path, capsysbinary):
    """LocalLog: a record per chunk of whole lines, its bytes as the
    container wrote them (none escaped, none replaced); an unterminated
    line waits for the pipe's end. minidocker's reader prints them as they
    came, and with -t each line after its record's time."""
    path = str(tmp_path / "container.log")
    log = lean_part()["LocalLog"](path)
    try:
        for data in (b"plain one\nplain two\n", b'a "quote" \\ and \xc3\xa9\n', b"\x01\xff\n",
                     b"50%\r100%\n"):
            os.write(log.writers[0], data)
            assert log.copy(log.out)
        os.write(log.writers[1], b"no newline")
        for writer in log.writers:
            os.close(writer)
        assert log.copy(log.err)
        assert log.copy(log.err) is False and log.copy(log.out) is False
    finally:
        log.close()
    with open(path, "rb") as handle:
        data = handle.read()
    records = [entry[0] for entry in logged(data, local=True)]
    assert [re.sub(STAMP.encode(), b"T", record) for record in records] == [
        b"stdout T 20\nplain one\nplain two\n", b'stdout T 19\na "quote" \\ and \xc3\xa9\n',
        b"stdout T 3\n\x01\xff\n", b"stdout T 9\n50%\r100%\n", b"stderr T 10\nno newline"]
    stamps = [record[7:37].decode() for record in records]
    for timestamps in (False, True):
        reader = md.log_reader("local", None, timestamps)
        reader.read_files([os.open(path, os.O_RDONLY)])
        reader.close()
        out, err = capsysbinary.readouterr()
        if timestamps:
            assert out == b"".join((stamp + " ").encode() + line for stamp, line in zip(
                stamps[:1] * 2 + stamps[1:4], [b"plain one\n", b"plain two\n",
                                               b'a "quote" \\ and \xc3\xa9\n', b"\x01\xff\n",
                                               b"50%\r100%\n"]))
            assert err == stamps[4].encode() + b" no newline"
        else:
            assert out == b'plain one\nplain two\na "quote" \\ and \xc3\xa9\n\x01\xff\n50%\r100%\n'
            assert err == b"no newline"


@pytest.mark.parametrize("kind", ["JsonLog", "LocalLog"])
def test_a_log_cuts_a_line_that_never_ends(tmp_path, kind):
    """A container writing without a newline: entries (records) of
    LOG_LINE_MAX bytes as they come, so the monitor holds less than one
    such piece (in `partial`, or LocalLog's buffer)."""
    log = lean_part()[kind](str(tmp_path / "x.log"))
    try:
        for _ in range(5):
            os.write(log.writers[0], b"x" * 8192)
            assert log.copy(log.out)
            buffers = getattr(log, "buffers", {})  # (LocalLog's)
            held = buffers[log.out][1] if log.out in buffers else 0
            assert len(log.partial[log.out]) + held < md.LOG_LINE_MAX
        for writer in log.writers:
            os.close(writer)
        while log.copy(log.out):
            pass
    finally:
        log.close()
    entries = logged((tmp_path / "x.log").read_bytes(), kind == "LocalLog")
    assert [len(line) for entry in entries for line in entry[3]] == \
        [md.LOG_LINE_MAX, md.LOG_LINE_MAX, 8192]


def test_a_quiet_local_log_lets_its_buffers_go(tmp_path):
    """LocalLog reads into a buffer of the pipe's size, held while output
    comes; quiet() (the monitor calls it after LOG_QUIET seconds without
    output) lets it go, keeping the unfinished line, which the next read
    finishes."""
    log = lean_part()["LocalLog"](str(tmp_path / "container.log"))
    try:
        os.write(log.writers[0], b"whole\nunfin")
        assert log.copy(log.out) and list(log.buffers) == [log.out]
        assert len(log.buffers[log.out][0]) == md.LOG_PIPE_SIZE + md.LOG_LINE_MAX
        log.quiet()
        assert log.buffers == {} and log.partial[log.out] == b"unfin"
        os.write(log.writers[0], b"ished\n")
        assert log.copy(log.out)
        log.quiet()
        assert log.partial[log.out] == b""
    finally:
        close_log(log)
    records = logged((tmp_path / "container.log").read_bytes(), local=True)
    assert [record[3] for record in records] == [["whole\n"], ["unfinished\n"]]


@pytest.mark.parametrize("kind", ["JsonLog", "LocalLog"])
def test_a_log_write_that_fails_leaves_whole_entries(tmp_path, kind):
    """A write the kernel cuts short and then refuses (here at RLIMIT_FSIZE:
    a short write, then EFBIG, as a disk filling up gives a short write,
    then ENOSPC) loses that chunk's lines, and what of them reached the
    file is taken off it: the file goes on with whole entries, and the
    copy with the next chunk. (A LocalLog record cut short would hide every
    record after it.) In a child: the limit and SIGXFSZ stay out of pytest."""
    path = str(tmp_path / "x.log")
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            log = lean_part()[kind](path)
            os.write(log.writers[0], b"before\n")
            assert log.copy(log.out)
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 100, limit[1]))
            os.write(log.writers[0], b"lost\n" * 100)
            assert log.copy(log.out)
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
            os.write(log.writers[0], b"after\n")
            assert log.copy(log.out)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
    with open(path, "rb") as handle:
        entries = logged(handle.read(), kind == "LocalLog")
    assert [entry[3] for entry in entries] == [["before\n"], ["after\n"]]


def test_a_local_log_not_ours_is_skipped_from_where_it_breaks(tmp_path, capsysbinary):
    """A record's length is all that says where the next begins: from a
    header that is not a record's, or a record cut short, the rest of that
    file is skipped, and the next file read from its start."""
    stamp = "2026-11-30T20:00:00.000000000Z"
    first, second = tmp_path / "container.log.1", tmp_path / "container.log"
    first.write_bytes(b"stdout %s 4\none\nnot a header\nstdout %s 4\ntwo\n" % (
        stamp.encode(), stamp.encode()))
    second.write_bytes(b"stderr %s 6\nthree\nstdout %s 99\ncut short\n" % (
        stamp.encode(), stamp.encode()))
    reader = md.log_reader("local", None, False)
    reader.read_files(md.open_log_files(str(tmp_path), "container.log"))
    reader.close()
    assert capsysbinary.readouterr() == (b"one\n", b"three\n")


def test_long_lines_are_cut_as_docker_cuts_them(tmp_path, capsysbinary):
    """A line longer than LOG_LINE_MAX becomes pieces of that size, whether
    its newline came in the same read or not (Docker's 16 KiB): each an
    entry (a record's last line) with its own time. cut_long_lines is held
    to a line-by-line cut on random lines; logs prints the line whole."""
    random = __import__("random").Random(7)
    for _ in range(300):
        lines = [b"x" * random.choice([0, 1, 99, md.LOG_LINE_MAX - 1, md.LOG_LINE_MAX,
                                       md.LOG_LINE_MAX + 1, 40000]) + b"\n"
                 for _ in range(random.randint(1, 6))]
        data = b"".join(lines)
        expected = []
        for line in lines:
            while len(line) > md.LOG_LINE_MAX:
                expected.append(line[:md.LOG_LINE_MAX])
                line = line[md.LOG_LINE_MAX:]
            expected.append(line)
        spans = md.cut_long_lines(data, 0, len(data))
        assert [piece for first, last in spans
                for piece in re.findall(b"[^\n]*\n|[^\n]+$", data[first:last])] == expected
        assert all(data[last - 1:last] == b"\n" or last - first == md.LOG_LINE_MAX
                   for first, last in spans)
    line = b"a" * 40000 + b"\n"
    for kind in ("LocalLog", "JsonLog"):
        log = lean_part()[kind](str(tmp_path / kind))
        try:
            os.write(log.writers[0], line + b"short\n")
            assert log.copy(log.out)
        finally:
            close_log(log)
        entries = logged((tmp_path / kind).read_bytes(), kind == "LocalLog")
        lines = [text for entry in entries for text in entry[3]]
        assert lines == ["a" * 16384, "a" * 16384, "a" * 7232 + "\n", "short\n"]
    reader = md.log_reader("local", None, False)
    reader.read_files([os.open(str(tmp_path / "LocalLog"), os.O_RDONLY)])
    reader.close()
    assert capsysbinary.readouterr().out == line + b"short\n"


@pytest.mark.parametrize("kind", ["JsonLog", "LocalLog"])
def test_a_rotation_that_fails_keeps_the_log_where_it_was(tmp_path, kind):
    """The new file is made first: when it cannot be (here a directory is
    in its way, as no inode left would do), nothing is renamed, and the
    entries go on into the log's own file, which is still the log (a
    rotated one would grow unseen, moved up and unlinked by the next
    rotations). Once the way is clear, the rotation is done."""
    log = lean_part()[kind](str(tmp_path / "x.log"), 100, 3)
    (tmp_path / "x.log.new").mkdir()
    try:
        for number in range(10):
            os.write(log.writers[0], b"line %d\n" % number * 5)
            assert log.copy(log.out)
        assert sorted(os.listdir(str(tmp_path))) == ["x.log", "x.log.lock", "x.log.new"]
        assert os.fstat(log.fd).st_nlink == 1 and os.path.samestat(
            os.fstat(log.fd), os.stat(str(tmp_path / "x.log")))
        (tmp_path / "x.log.new").rmdir()
        os.write(log.writers[0], b"after\n")
        assert log.copy(log.out)
    finally:
        close_log(log)
    assert sorted(os.listdir(str(tmp_path))) == ["x.log", "x.log.1", "x.log.lock"]
    rotated = logged((tmp_path / "x.log.1").read_bytes(), kind == "LocalLog")
    assert len([line for entry in rotated for line in entry[3]]) == 50
    assert logged((tmp_path / "x.log").read_bytes(), kind == "LocalLog")[0][3] == ["after\n"]


@pytest.mark.parametrize("kind, tail", [
    ("JsonLog", b'{"log":"pa'), ("LocalLog", b"stdout 2026-11-30T20:00:00.000000000Z 500\npart"),
    ("LocalLog", b"stdout 2026-11-30T2"), ("JsonLog", bytes(4096)), ("LocalLog", bytes(4096))])
def test_a_log_cut_short_is_trimmed_when_the_next_run_opens_it(tmp_path, kind, tail):
    """A monitor killed halfway through a write leaves an entry cut short
    (LocalLog: in its lines, or in its header), and a host's crash may
    leave zeros; the next run's monitor (start, a restart) cuts them off
    before it writes, so that they hide none of the new entries."""
    path = str(tmp_path / "x.log")
    for run in (b"first run\n", b"second run\n"):
        log = lean_part()[kind](path)
        os.write(log.writers[0], run)
        assert log.copy(log.out)
        close_log(log)
        if run.startswith(b"first"):
            whole = os.path.getsize(path)
            with open(path, "ab") as handle:  # what a kill -9 mid-write leaves
                handle.write(tail)
    entries = logged((tmp_path / "x.log").read_bytes(), kind == "LocalLog")
    assert [entry[3] for entry in entries] == [["first run\n"], ["second run\n"]]
    assert sum(len(entry[0]) for entry in entries[:1]) == whole


@pytest.mark.parametrize("driver", ["local", "json-file"])
def test_logs_reads_again_an_entry_not_yet_whole(tmp_path, capsysbinary, driver):
    """logs -f reading while a write fails halfway (ENOSPC): the writer
    takes the cut entry back (ftruncate) and later writes others where it
    was; the reader, which had read the cut one to its end, reads from its
    start again, and prints the new entries, not a mix of both."""
    path = str(tmp_path / "log")
    stamp = b"2026-11-30T20:00:00.000000000Z"

    def entry(text):
        if driver == "local":
            return b"stdout %s %d\n%s" % (stamp, len(text), text)
        return json.dumps({"log": text.decode(), "stream": "stdout",
                           "time": stamp.decode()}).encode() + b"\n"
    with open(path, "wb") as handle:
        handle.write(entry(b"one\n") + entry(b"lost, cut short\n")[:-5])
    reader = md.log_reader(driver, None, False)
    reader.read_files([os.open(path, os.O_RDONLY)])
    assert capsysbinary.readouterr().out == b"one\n"
    os.truncate(path, len(entry(b"one\n")))
    with open(path, "ab") as handle:
        handle.write(entry(b"two, written in its place\n") + entry(b"three\n"))
    reader.read(reader.fd)
    reader.close()
    assert capsysbinary.readouterr().out == b"two, written in its place\nthree\n"


def test_logs_waits_for_no_verb_holding_the_container(tmp_path):
    """The log's files are opened under a lock of the log's own: a verb
    holding the container's lock (a flock of its layer directory: stop,
    while it waits for the end) does not hold logs up."""
    log = lean_part()["LocalLog"](str(tmp_path / "container.log"))
    close_log(log)
    container = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(container, fcntl.LOCK_EX)
        opened = []
        reader = threading.Thread(target=lambda: opened.extend(
            md.open_log_files(str(tmp_path), "container.log")), daemon=True)
        reader.start()
        reader.join(10)
        assert len(opened) == 1
    finally:
        os.close(container)
    os.close(opened[0])


def test_json_log_rotation_waits_for_no_reader(tmp_path):
    """A reader holding the log's lock (logs, opening the files) puts the
    rotation off to a later write: the entries go on into the full file
    meanwhile, and the copy never waits."""
    log = lean_part()["JsonLog"](str(tmp_path / "json.log"), 100, 2)
    try:
        held = os.open(str(tmp_path / "json.log.lock"), os.O_RDONLY)
        try:
            fcntl.flock(held, fcntl.LOCK_SH)
            os.write(log.writers[0], b"held\n" * 10)
            assert log.copy(log.out)
            assert sorted(os.listdir(str(tmp_path))) == ["json.log", "json.log.lock"]
        finally:
            os.close(held)
        os.write(log.writers[0], b"free\n")
        assert log.copy(log.out)
    finally:
        close_log(log)
    rotated = (tmp_path / "json.log.1").read_text().splitlines()
    assert [json.loads(line)["log"] for line in rotated] == ["held\n"] * 10
    assert json.loads((tmp_path / "json.log").read_text())["log"] == "free\n"


@root
def test_detached_run_logs_stop_and_wait(rootfs):
    """run -d prints the id and returns while the command runs; the
    container is found by name; logs gives each stream back (with -t, the
    time first; --tail); logs -f follows until the end; stop's SIGTERM
    reaches a trap; wait prints the exit code; rm by name leaves nothing."""
    script = ('echo hello; echo oops >&2; trap "echo bye; exit 3" TERM; '
              'while :; do sleep 0.05; done')
    started = minidocker("run", "-d", "--name", "svc", "--network=none", rootfs, "sh", "-c", script)
    assert started.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", started.out), started.err
    cid = started.out.strip()
    try:
        listing = minidocker("ps")
        assert re.search(r"^%s .* Up .* svc$" % cid[:12], listing.out, re.M), listing.out
        deadline = time.monotonic() + 10
        while "hello" not in minidocker("logs", "svc").out and time.monotonic() < deadline:
            time.sleep(0.05)
        logs = minidocker("logs", "svc")
        assert (logs.out, logs.err) == ("hello\n", "oops\n")
        stamped = minidocker("logs", "-t", "--tail", "1", cid[:8])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT[0-9:.]{18}Z (hello|oops)\n",
                            stamped.out + stamped.err), stamped
        follow = subprocess.Popen(MINIDOCKER + ["logs", "-f", "svc"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        stopped = minidocker("stop", "-t", "5", "svc")
        assert stopped.returncode == 0 and stopped.out == "svc\n", stopped.err
        assert follow.communicate(timeout=20)[0] == b"hello\nbye\n"
        waited = minidocker("wait", "svc")
        assert (waited.returncode, waited.out) == (0, "3\n"), waited.err
        assert re.search(r"^%s .* Exited \(3\) .* svc$" % cid[:12], minidocker("ps", "-a").out, re.M)
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_stop_kills_what_ignores_the_signal(rootfs):
    """sleep as pid 1 ignores SIGTERM (it has no handler): stop sends
    SIGKILL after -t seconds, and the exit code is 137."""
    started = minidocker("run", "-d", "--rm", "--network=none", rootfs, "sleep", "60")
    cid = started.out.strip()
    assert started.returncode == 0, started.err
    begun = time.monotonic()
    assert minidocker("stop", "-t", "1", cid).returncode == 0
    assert 1 <= time.monotonic() - begun < 10
    assert "exited" not in minidocker("ps", "-a").out  # --rm: gone
    assert_nothing_left()


@root
def test_the_monitor_keeps_nothing_of_the_callers(rootfs):
    """The monitor leads a session of its own (the caller's terminal closing
    does not reach it), its own 0, 1 and 2 are /dev/null, and its working
    directory is /."""
    started = minidocker("run", "-d", "--network=none", rootfs, "sleep", "60")
    cid = started.out.strip()
    try:
        record = md.find_container(md.Paths(), cid)
        owner = record["owner"]
        with open("/proc/%d/stat" % owner) as handle:
            session = int(handle.read().rsplit(")", 1)[1].split()[3])
        assert session == owner != os.getsid(0)
        assert [os.readlink("/proc/%d/fd/%d" % (owner, fd)) for fd in (0, 1, 2)] == \
            ["/dev/null"] * 3
        assert os.readlink("/proc/%d/cwd" % owner) == "/"
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_run_d_reports_a_failed_start_itself(rootfs):
    bad(["run", "-d", rootfs, "/no/such/program"], "exec /no/such/program", 127)
    bad(["run", "-d", "-t", rootfs, "sh"], "run -d keeps no terminal")
    bad(["run", "--name=-bad", rootfs, "true"], "invalid --name '-bad'")
    bad(["logs", "nosuch"], "no such container: nosuch")


@root
def test_a_name_is_taken_once_even_by_twenty_at_once(rootfs):
    """Twenty `run -d --name same` at once: one container gets the name,
    the others fail with one line each, and nothing of theirs is left."""
    argv = MINIDOCKER + ["run", "-d", "--name", "same", "--network=none", rootfs, "sleep", "60"]
    procs = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(20)]
    results = [(p.wait(timeout=120), p.stdout.read().decode(), p.stderr.read().decode())
               for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    winners = [out.strip() for code, out, _ in results if code == 0]
    try:
        assert len(winners) == 1, results
        losers = [err for code, _, err in results if code != 0]
        assert all(code == 125 for code, _, _ in results if code != 0)
        assert all(re.fullmatch(r"minidocker: error: the name same is already in use by "
                                r"container [0-9a-f]{12}: remove it or choose another name\n",
                                err) for err in losers), losers
        again = minidocker("run", "--name", "same", "--network=none", rootfs, "true")
        assert again.returncode == 125 and "already in use" in again.err
    finally:
        for cid in winners:
            minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_init_holds_nothing_of_the_host_even_for_a_tracer(rootfs):
    """With CAP_SYS_PTRACE a process of the container may read pid 1's
    environ, cmdline and descriptors: the reaper's are minidocker's (the
    caller's environment, the command line, the monitor's log), so it
    zeroes the first two and keeps no descriptor above 2; and a signal it
    may not pass on (--cap-drop KILL, the command another user) does not
    end it: the command's own code comes out."""
    script = ("tr '\\0' '\\n' </proc/1/environ | grep -c . ; tr '\\0' '\\n' </proc/1/cmdline "
              "| grep -c . ; ls /proc/1/fd | tr '\\n' ' '")
    result = subprocess.run(MINIDOCKER + ["run", "--rm", "--network=none", "--init", "--cap-add",
                                          "SYS_PTRACE", rootfs, "sh", "-c", script],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=60,
                            env=dict(os.environ, HOST_SECRET="s3cr3t"))
    assert result.stdout.decode().split() == ["0", "0", "0", "1", "2"], result.stderr
    command = MINIDOCKER + ["run", "--network=none", "--rm", "--init", "--cap-drop", "KILL",
                            rootfs, "su", "nobody", "-s", "/bin/sh", "-c",
                            'trap "exit 3" TERM; echo ready; while :; do sleep 0.05; done']
    with subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as proc:
        try:
            assert proc.stdout.readline() == b"ready\n"
            os.kill(proc.pid, signal.SIGTERM)  # to the reaper, which may not pass it on
            time.sleep(0.5)
            assert proc.poll() is None, proc.stderr.read()
        finally:
            proc.kill()
            proc.wait()
    minidocker("ps")  # reclaims what the killed minidocker left
    assert_nothing_left()


@root
@pytest.mark.parametrize("user", ["root", "alice"])
def test_init_shows_no_host_command_line_whatever_its_user(rootfs, user):
    """/proc/1/cmdline is world-readable; the --init reaper's is
    minidocker's own command line (host paths, every flag). It is zeroed
    for a non-root user too, who may not write its own /proc/self/mem."""
    result = sh(rootfs, "tr '\\0' '\\n' </proc/1/cmdline | grep -c .; id -un",
                options=["--init", "-u", user])
    assert result.out.split() == ["0", user], (result.out, result.err)


@root
def test_run_d_returns_at_once_and_keeps_nothing_of_the_caller(rootfs):
    """run -d --init returns once the command runs (the reaper keeps no end
    of the report pipe), and a pipe the caller passed as fd 3 is not held
    by the monitor (`run -d ... 3>&1 | cat` would wait for the container)."""
    begun = time.monotonic()
    result = subprocess.run(
        "%s run -d --rm --init --network=none %s sleep 5 3>&1 | cat" %
        (" ".join(MINIDOCKER), rootfs), shell=True, stdout=subprocess.PIPE, timeout=60)
    cid = result.stdout.decode().strip()
    assert re.fullmatch("[0-9a-f]{64}", cid) and time.monotonic() - begun < 4
    minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_stop_and_names_take_what_docker_takes(rootfs):
    """Signal names are the signals' (SIG_IGN is none); a whole id comes
    before a name that spells it; logs -f ends with the container."""
    first = minidocker("run", "-d", "--network=none", rootfs, "sleep", "60").out.strip()
    second = minidocker("run", "-d", "--network=none", "--name", first, rootfs, "sh", "-c",
                        "echo second; sleep 60").out.strip()
    try:
        refused = minidocker("stop", "-s", "SIG_IGN", first)
        assert (refused.returncode, refused.err) == (
            125, "minidocker: error: invalid signal 'SIG_IGN'\n")
        assert minidocker("stop", "-s", "KILL", first).returncode == 0
        assert minidocker("wait", first).out == "137\n"  # the whole id: the first
        follow = subprocess.Popen(MINIDOCKER + ["logs", "-f", second], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        assert minidocker("stop", "-t", "0", second).returncode == 0
        assert follow.communicate(timeout=20)[0] == b"second\n"
    finally:
        minidocker("rm", "-f", first, second)
    assert_nothing_left()


@root
def test_kill_and_inspect(rootfs):
    """kill sends its signal to the init; inspect shows the container in
    Docker's shape; a reader that leaves early (`| head`) ends the output
    quietly, as SIGPIPE would."""
    cid = minidocker("run", "-d", "--name", "probe", "-e", "A=1", "-w", "/tmp", "--network=none",
                     rootfs, "sleep", "60").out.strip()
    try:
        [shown] = json.loads(minidocker("inspect", "probe").out)
        assert (shown["Id"], shown["Name"], shown["Path"], shown["Args"]) == \
            (cid, "/probe", "sleep", ["60"])
        assert shown["State"]["Running"] and shown["State"]["Status"] == "running"
        assert shown["State"]["Pid"] == md.find_container(md.Paths(), cid)["pid"]
        assert (shown["Config"]["Env"], shown["Config"]["WorkingDir"]) == (["A=1"], "/tmp")
        reader = subprocess.Popen(MINIDOCKER + ["inspect", "probe"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        reader.stdout.close()  # before it writes: Python takes longer than this to start
        assert reader.wait(timeout=60) == 128 + signal.SIGPIPE
        assert reader.stderr.read() == b""
        reader.stderr.close()
        assert minidocker("kill", "-s", "TERM", "probe").out == "probe\n"  # pid 1: ignored
        assert minidocker("kill", "probe").returncode == 0
        assert minidocker("wait", "probe").out == "137\n"
        [ended] = json.loads(minidocker("inspect", cid).out)
        assert ended["State"]["Status"] == "exited" and ended["State"]["ExitCode"] == 137
        refused = minidocker("kill", "probe")
        assert (refused.returncode, refused.err) == (
            125, "minidocker: error: container %s is not running\n" % cid[:12])
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


# ---------------------------------------------------------------------------
# FLAGS: run's Docker flags --entrypoint, --ulimit, --shm-size, --sysctl,
# --pid/--ipc/--uts/--cgroupns host, --label, --stop-signal, --stop-timeout,
# --oom-score-adj and --oom-kill-disable
# ---------------------------------------------------------------------------

def test_flags_are_planned_into_the_spec(tmp_path):
    """The pure part: each flag as data in the spec, /dev/shm's mount in
    the plan, and the namespaces the child unshares."""
    spec = parse("--entrypoint", "/bin/echo", "--ulimit", "nofile=100:200", "--ulimit", "core=0",
                 "--ulimit", "nofile=50", "--shm-size", "10m", "--sysctl", "kernel.msgmax=1234",
                 "--pid", "host", "--uts", "host", "-l", "a=1", "-l", "b", "--stop-signal", "usr1",
                 "--stop-timeout", "-1", "--oom-score-adj", "500", str(tmp_path), "hi")
    assert (spec.entrypoint, spec.command) == (["/bin/echo"], ["/bin/echo", "hi"])
    assert spec.ulimits == [("nofile", 50, 50), ("core", 0, 0)]  # the later nofile wins
    assert [m.data for m in md.plan_mounts(spec) if m.target == "/dev/shm"] == \
        ["mode=1777,size=10485760"]
    assert spec.sysctls == [("kernel.msgmax", "1234")]
    assert spec.namespaces["pid"] == spec.namespaces["uts"] == "host"
    assert spec.hostname == os.uname().nodename
    assert md.child_namespaces(spec) == md.CLONE_NEWNS | md.CLONE_NEWIPC | md.CLONE_NEWNET
    assert spec.labels == {"a": "1", "b": ""}
    assert (spec.stop_signal, spec.stop_timeout, spec.oom_score_adj) == (signal.SIGUSR1, -1, 500)
    default = parse("--entrypoint", "", str(tmp_path), "sh")
    assert (default.entrypoint, default.command, default.shm_size) == ([], ["sh"], 64 << 20)
    assert [m.data for m in md.plan_mounts(default) if m.target == "/dev/shm"] == \
        ["mode=1777,size=67108864"]
    shared = parse("--ipc", "host", str(tmp_path), "sh")
    assert [(m.kind, m.source) for m in md.plan_mounts(shared) if m.target == "/dev/shm"] == \
        [("bind", "/dev/shm"), ("nodev", None)]
    assert default.namespaces == {"pid": "private", "ipc": "private", "uts": "private",
                                  "cgroup": "private"}  # on every host: see the next test


@root
@pytest.mark.parametrize("options, message", [
    (["--ulimit", "nofile"], "invalid --ulimit 'nofile': expected NAME=SOFT[:HARD]"),
    (["--ulimit", "files=1"], "invalid --ulimit 'files=1': invalid ulimit type: files"),
    (["--ulimit", "nofile=2:1"], "ulimit soft limit must be less than or equal to hard limit"),
    (["--ulimit", "nofile=-1:10"], "ulimit soft limit must be less than or equal to hard limit"),
    (["--ulimit", "nofile=a"], "invalid --ulimit 'nofile=a': expected SOFT[:HARD]"),
    (["--ulimit", "nofile=1:2:3"], "invalid --ulimit 'nofile=1:2:3'"),
    (["--shm-size", "-1"], "invalid --shm-size '-1'"),
    (["--shm-size", "lots"], "invalid --shm-size 'lots'"),
    (["--shm-size", "1m", "--ipc", "host"], "conflicting options: --shm-size and --ipc host"),
    (["--sysctl", "kernel.pid_max=100000"], "sysctl kernel.pid_max is not in a separate kernel"),
    (["--sysctl", "vm.swappiness=1"], "sysctl vm.swappiness is not in a separate kernel"),
    (["--sysctl", "kernel.hostname=x"], "sysctl kernel.hostname is not allowed"),
    (["--sysctl", "net.ipv4.ip_forward=1", "--network", "host"],
     "sysctl net.ipv4.ip_forward is not allowed in the host's network namespace"),
    (["--sysctl", "kernel.shmmax=1", "--ipc", "host"],
     "sysctl kernel.shmmax is not allowed in the host's IPC namespace"),
    (["--sysctl", "kernel.domainname=x", "--uts", "host"],
     "sysctl kernel.domainname is not allowed in the host's UTS namespace"),
    (["--sysctl", "net.ipv4.ip_forward"], "invalid --sysctl 'net.ipv4.ip_forward': expected"),
    (["--sysctl", "net/../../kernel/pid_max=1"], "invalid --sysctl"),
    (["--sysctl", "net.ipv4.no_such_key=1"], "net.ipv4.no_such_key=1: writing "
                                             "/proc/sys/net/ipv4/no_such_key: no such key"),
    (["--pid", "container:other"], "invalid --pid 'container:other': expected host or private"),
    (["--ipc", "none"], "invalid --ipc 'none'"),
    (["--uts", "shared"], "invalid --uts 'shared'"),
    (["--cgroupns", "both"], "invalid --cgroupns 'both'"),
    (["--cgroupns", "host", "--cap-add", "SYS_ADMIN"],
     "--cgroupns host and CAP_SYS_ADMIN conflict"),
    (["--uts", "host", "--hostname", "box"], "conflicting options: --hostname and --uts host"),
    (["-l", "=x"], "invalid label '=x': empty name"),
    (["--label-file", "/no/such/labels"], "--label-file /no/such/labels"),
    (["--stop-signal", "SIGNOPE"], "invalid --stop-signal 'SIGNOPE'"),
    (["--stop-timeout", "soon"], "invalid --stop-timeout 'soon'"),
    (["--stop-timeout", "-2"], "invalid --stop-timeout '-2'"),
    (["--oom-score-adj", "1001"], "invalid --oom-score-adj '1001': the range is -1000 to 1000"),
    (["--oom-score-adj", "-1001"], "invalid --oom-score-adj '-1001'"),
    (["--oom-score-adj", "high"], "invalid --oom-score-adj 'high'"),
    (["--entrypoint", ""], "run: no command given"),
])
def test_flags_bad_values(options, message, rootfs):
    command = [] if options == ["--entrypoint", ""] else ["true"]
    bad(["run", "--rm"] + options + [rootfs] + command, message)


@root
def test_flags_ulimit_raising_a_hard_limit_is_refused(rootfs):
    """A hard limit above the kernel's ceiling (fs.nr_open, which not even
    CAP_SYS_RESOURCE passes): refused in the child before the command, one
    line naming the limit, 125, nothing left."""
    ceiling = int(open("/proc/sys/fs/nr_open").read())
    bad(["run", "--rm", "--ulimit", "nofile=100:%d" % (ceiling + 1), rootfs, "true"],
        "--ulimit nofile=100:%d: setrlimit(RLIMIT_NOFILE): Operation not permitted"
        % (ceiling + 1))


def limits_of(text):
    """/proc/PID/limits -> {name: (soft, hard)}."""
    limits = {}
    for line in text.splitlines()[1:]:
        name, soft, hard = re.match(r"(.+?)\s{2,}(\S+)\s+(\S+)", line).groups()
        limits[name] = (soft, hard)
    return limits


PODMAN_PROBE = r"""
grep -E '^(CapBnd|CapEff|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
ls /sys/fs/cgroup | grep -vx unified | tr '\n' ' '; echo
touch /sys/fs/cgroup/memory/x 2>&1 | grep -o 'Read-only file system'
cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes
grep -c . /sys/fs/cgroup/memory/cgroup.procs
df -k /dev/shm | tail -1 | awk '{print $2}'
cat /proc/sys/kernel/msgmax
ulimit -Sn; ulimit -Hn
cat /proc/self/oom_score_adj
grep -E ' /etc/(hosts|hostname) ' /proc/self/mountinfo | awk '{print $5, substr($6, 1, 2)}' | sort
"""


@root
def test_run_defaults_and_flags_side_by_side_with_podman(rootfs, tmp_path):
    """The same probe, in the same rootfs with the same flags, under podman
    and under minidocker, must read the same: capabilities in all five
    sets, no_new_privs off, the seccomp filter, the container's own
    /sys/fs/cgroup (read-only, its limit, memory plus swap at twice -m, its
    two processes at its root), /dev/shm's size, a --sysctl, --ulimit,
    --oom-score-adj, and --read-only's /etc files. Podman runs with runc
    (crun refuses this hybrid host's cgroups) and with ulimits this host
    lets it set (its defaults raise hard limits, which is refused here).
    Two known differences are left out of the probe: on a hybrid host
    minidocker's view also holds the cgroup2 hierarchy (`unified`), and
    podman binds no /etc/resolv.conf with --network none (Docker does)."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (apt-get install podman)")
    if not md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                             md.read_text("/proc/self/cgroup")).v1.get("memory"):
        pytest.fail("the probe reads cgroup v1's memory files: this runs on the hybrid host")
    (tmp_path / "probe.sh").write_text(PODMAN_PROBE)
    conf = tmp_path / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=32768:32768"]\n')
    flags = ["--network", "none", "-m", "64m", "--sysctl", "kernel.msgmax=65536", "--ulimit",
             "nofile=512:1000", "--shm-size", "32m", "--oom-score-adj", "100", "--read-only",
             "-v", "%s:/probe:ro" % tmp_path]
    # podman's cgroupfs manager puts its containers in libpod_parent at each
    # hierarchy's root: what this test makes there, it removes.
    parents = set(glob.glob("/sys/fs/cgroup/*/libpod_parent"))
    try:
        podman = subprocess.run(
            ["podman", "--runtime", "runc", "run", "--rm", "--ulimit", "nproc=32768:32768"] +
            flags + ["--rootfs", os.path.realpath(rootfs), "/bin/sh", "/probe/probe.sh"],
            env=dict(os.environ, CONTAINERS_CONF=str(conf)), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120)
    finally:
        for made in set(glob.glob("/sys/fs/cgroup/*/libpod_parent")) - parents:
            for path, _, _ in sorted(os.walk(made), reverse=True):
                os.rmdir(path)
    assert podman.returncode == 0, podman.stderr
    ours = run(rootfs, "/bin/sh", "/probe/probe.sh", options=flags)
    assert ours.returncode == 0, ours.err
    assert ours.out == podman.stdout
    assert "NoNewPrivs:\t0\nSeccomp:\t2\n" in ours.out and "67108864\n134217728\n" in ours.out


@root
def test_flags_entrypoint_ulimit_sysctl_shm_and_namespaces_inside(rootfs):
    """One container as it sees itself: --entrypoint first and CMD after
    it, the --ulimit values (for a non-root user too) in /proc/self/limits,
    the namespaced sysctls in its own namespaces (the host's unchanged),
    /dev/shm of --shm-size, --oom-score-adj, and the pid, ipc, uts and
    cgroup namespaces its own."""
    host_ns = {n: os.readlink("/proc/self/ns/" + n) for n in ("pid", "ipc", "uts", "cgroup")}
    sysctls = {"kernel/msgmax": "1234", "net/ipv4/ip_forward": "1",
               "kernel/domainname": "example.org", "fs/mqueue/msg_max": "20"}
    before = {key: open("/proc/sys/" + key).read() for key in sysctls}
    options = ["--entrypoint", "/bin/sh", "-u", "1000", "--ulimit", "nofile=100:200",
               "--ulimit", "core=0", "--ulimit", "cpu=-1", "--shm-size", "10m",
               "--oom-score-adj", "500", "--cgroupns", "private"]
    for key, value in sysctls.items():
        options += ["--sysctl", "%s=%s" % (key.replace("/", "."), value)]
    script = ("cat /proc/self/limits; echo ==; for k in %s; do cat /proc/sys/$k; done; "
              "echo ==; grep ' /dev/shm ' /proc/self/mountinfo; cat /proc/self/oom_score_adj; "
              "for n in pid ipc uts cgroup; do readlink /proc/self/ns/$n; done; "
              "cat /proc/self/cgroup" % " ".join(sysctls))
    result = run(rootfs, "-c", script, options=options)
    assert result.returncode == 0, result.err
    limits, values, rest = result.out.split("==\n")
    limits = limits_of(limits)
    assert limits["Max open files"] == ("100", "200")
    assert limits["Max core file size"] == ("0", "0")
    assert limits["Max cpu time"] == ("unlimited", "unlimited")
    assert values.split() == list(sysctls.values())
    assert {key: open("/proc/sys/" + key).read() for key in sysctls} == before
    lines = rest.splitlines()
    assert re.search(r" /dev/shm rw,nosuid,nodev,noexec,.* tmpfs shm rw,size=10240k", lines[0])
    assert lines[1] == "500"
    assert all(ns != host_ns[name] for name, ns in zip(("pid", "ipc", "uts", "cgroup"), lines[2:6]))
    assert all(line.endswith(":/") for line in lines[6:]), lines  # its cgroup is its root


@root
def test_flags_host_namespaces_and_the_cgroupns_default(rootfs):
    """--pid, --ipc, --uts and --cgroupns host: no namespace of its own, the
    host's (the host's processes in /proc, as with Docker; the host's
    /dev/shm; the host's name), all else the same. By default each is the
    container's own, the cgroup one too on every host (unlike Docker on
    cgroup v1: see test_release_agent_is_out_of_reach_with_sys_admin), and
    /dev/shm is Docker's 64m."""
    names = ("pid", "ipc", "uts", "cgroup")
    host_ns = [os.readlink("/proc/self/ns/" + n) for n in names]
    marker = "/dev/shm/mdtest-flags-%d" % os.getpid()
    script = ("for n in %s; do readlink /proc/self/ns/$n; done; hostname; "
              "test -d /proc/%d && echo sees-host; grep ' /dev/shm ' /proc/self/mountinfo; "
              "touch %s" % (" ".join(names), os.getpid(), marker))
    try:
        shared = sh(rootfs, script, options=["--pid", "host", "--ipc", "host", "--uts", "host",
                                             "--cgroupns", "host"])
        assert shared.returncode == 0, shared.err
        lines = shared.out.splitlines()
        assert lines[:4] == host_ns
        assert lines[4:6] == [os.uname().nodename, "sees-host"]
        assert " - tmpfs " in lines[6] and os.path.exists(marker)  # the host's own /dev/shm
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker)
    own = sh(rootfs, script.replace(marker, "/dev/shm/x"))
    lines = own.out.splitlines()
    assert all(a != b for a, b in zip(lines[:4], host_ns))
    assert "sees-host" not in lines and "size=65536k" in lines[-1]


@root
def test_flags_labels_stop_signal_and_timeout_are_kept(rootfs, tmp_path):
    """-l and --label-file in inspect's Config.Labels, ps's .Labels and
    -f label=; --stop-signal and --stop-timeout kept in the record: stop
    and restart without -s and -t use them, and start repeats the
    container's --entrypoint, limits and score; exec's process has them
    too."""
    labels = tmp_path / "labels"
    labels.write_text("# a comment\ncolor=blue\nshape=round\n")
    script = "trap 'echo got-usr1; exit 7' USR1; echo up; while :; do sleep 0.1; done"
    cid = detached(rootfs, "--name", "mdtest-flags", "-l", "shape=square", "--label", "bare",
                   "--label-file", str(labels), "--stop-signal", "USR1", "--stop-timeout", "60",
                   "--entrypoint", "/bin/sh", "--ulimit", "nofile=64", "--oom-score-adj", "300",
                   command=("-c", script))
    try:
        [info] = json.loads(minidocker("inspect", cid).out)
        assert info["Config"]["Labels"] == {"color": "blue", "shape": "square", "bare": ""}
        assert (info["Config"]["StopSignal"], info["Config"]["StopTimeout"]) == ("SIGUSR1", 60)
        assert (info["Config"]["Entrypoint"], info["Config"]["Cmd"]) == (["/bin/sh"],
                                                                          ["-c", script])
        assert info["HostConfig"]["Ulimits"] == [{"Name": "nofile", "Soft": 64, "Hard": 64}]
        assert info["HostConfig"]["OomScoreAdj"] == 300
        ps = minidocker("ps", "--format", "{{.Names}} {{.Labels}}", "-f", "label=color=blue")
        assert ps.out == "mdtest-flags bare=,color=blue,shape=square\n"
        for wanted in ("color=red", "nosuch"):
            assert minidocker("ps", "-q", "-f", "label=" + wanted).out == ""
        inside = minidocker("exec", cid, "sh", "-c", "cat /proc/self/oom_score_adj /proc/self/limits")
        assert inside.out.splitlines()[0] == "300"
        assert limits_of("\n".join(inside.out.splitlines()[1:]))["Max open files"] == ("64", "64")
        for verb in ("stop", "restart"):  # its USR1 trap ends it at once (not in 60 s), with 7
            began = time.monotonic()
            assert minidocker(verb, "mdtest-flags").returncode == 0
            assert time.monotonic() - began < 30
        assert minidocker("stop", "mdtest-flags").returncode == 0
        assert minidocker("wait", cid).out == "7\n"
        assert minidocker("logs", cid).out.count("got-usr1\n") == 2
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_flags_stop_timeout_replaces_stops_ten_seconds(rootfs):
    """pid 1 ignores SIGTERM (a signal with no handler, sent to a pid
    namespace's init): `stop` waits --stop-timeout, 4 s here, not 10,
    before SIGKILL; -t on the command line wins over it."""
    cid = detached(rootfs, "--stop-timeout", "4")
    try:
        began = time.monotonic()
        assert minidocker("stop", cid).returncode == 0
        waited = time.monotonic() - began
        assert minidocker("start", cid).returncode == 0
        began = time.monotonic()
        assert minidocker("stop", "-t", "0", cid).returncode == 0
        overhead = time.monotonic() - began  # a stop's own time (seconds in the emulated VM)
        assert waited >= 4 and 2.5 < waited - overhead < 8, (waited, overhead)
        assert minidocker("wait", cid).out == "137\n"
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_flags_oom_kill_disable_cgroup(rootfs):
    """cgroup v1: memory.oom_control says oom_kill_disable 1, and a process
    over --memory waits (under_oom 1) instead of being killed. cgroup v2
    has no such knob: as Docker, one warning line, and the run goes on."""
    layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                               md.read_text("/proc/self/cgroup"))
    if layout.version_of("memory") != 1:
        result = run(rootfs, "true", options=["-m", "32m", "--oom-kill-disable"])
        assert result.returncode == 0
        assert result.err == ("minidocker: warning: your kernel does not support "
                              "--oom-kill-disable (cgroup v2 has no memory.oom_control): "
                              "discarded\n")
        return
    # The memory is touched from user space (awk copies its string as it
    # doubles it): a fault in a system call (read(2) into a fresh buffer)
    # fails the charge with EFAULT instead of waiting.
    cid = detached(rootfs, "-m", "16m", "--oom-kill-disable",
                   command=("awk", "BEGIN { s = \"x\"; while (1) s = s s }"))
    try:
        control = os.path.join(cgroup_of(md.find_container(md.Paths(), cid), "memory"),
                               "memory.oom_control")
        deadline = time.monotonic() + 20
        while "under_oom 1" not in open(control).read() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open(control).read().splitlines()[:3] == [
            "oom_kill_disable 1", "under_oom 1", "oom_kill 0"]
        assert json.loads(minidocker("inspect", cid).out)[0]["HostConfig"]["OomKillDisable"]
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


# ---------------------------------------------------------------------------
# 11. exec: one more process in a running container
# ---------------------------------------------------------------------------

def detached(rootfs, *options, command=("sleep", "1000")):
    started = minidocker("run", "-d", "--network=none", *options, rootfs, *command)
    assert started.returncode == 0, started.err
    return started.out.strip()


def init_pid(cid):
    return json.loads(minidocker("inspect", cid).out)[0]["State"]["Pid"]


@root
def test_exec_joins_the_namespaces_cgroups_and_confinement(rootfs):
    """An exec'd process is one of the container's: every namespace the
    same inode as pid 1's, the same cgroups (seen from the host: it is in
    their cgroup.procs), the same capabilities, no_new_privs and seccomp
    mode, the container's root, user and environment, with -e, -w and -u on
    top; its exit code is exec's."""
    cid = detached(rootfs, "--cap-drop", "NET_RAW", "-e", "FROM_RUN=1", "-u", "nobody")
    try:
        pid = init_pid(cid)
        names = ("pid", "ipc", "uts", "net", "cgroup", "mnt")
        script = ("echo joined; read _; for n in %s; do readlink /proc/self/ns/$n; done; "
                  "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; id -un; "
                  "echo $FROM_RUN $FROM_EXEC $HOSTNAME; pwd; echo /*; "
                  % " ".join(names))
        with subprocess.Popen(MINIDOCKER + ["exec", "-i", "-e", "FROM_EXEC=2", "-w", "/tmp", cid,
                                            "sh", "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdout.readline() == b"joined\n"
            # While it runs, the host sees it in the container's cgroups.
            record = md.find_container(md.Paths(), cid)
            members = [set(open(os.path.join(path, "cgroup.procs")).read().split())
                       for path in record["cgroups"]]
            out, err = proc.communicate(b"\n", timeout=30)
        lines = out.decode().splitlines()
        assert proc.returncode == 0, err
        assert lines[:6] == [os.readlink("/proc/%d/ns/%s" % (pid, n)) for n in names]
        own = [line for line in open("/proc/%d/status" % pid).read().splitlines()
               if re.match(r"(Cap|NoNewPrivs|Seccomp:)", line)]
        assert lines[6:6 + len(own)] == own and "Seccomp:\t2" in own, lines
        rest = lines[6 + len(own):]
        assert rest[:3] == ["nobody", "1 2 %s" % cid[:12], "/tmp"], rest
        assert {"/" + name for name in os.listdir(rootfs)} == set(rest[3].split())  # its root
        # The init and the command (the child that forked it has ended).
        assert all(len(m) == 2 and str(pid) in m for m in members), members
        assert minidocker("exec", cid, "sh", "-c", "exit 7").returncode == 7
        assert minidocker("exec", "-u", "root", cid, "id", "-u").out == "0\n"
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_exec_with_a_terminal_and_detached(rootfs):
    """exec -it: a pty of the container's devpts, sized as ours, its exit
    code; exec -d: returns at once, the command lives on in the container."""
    cid = detached(rootfs)
    try:
        term = Terminal(MINIDOCKER + ["exec", "-it", cid, "sh"], rows=33, cols=77)
        try:
            term.send("tty; stty size; exit 5\n")
            text = term.read_until("33 77")
            assert re.search(r"/dev/pts/\d+", text), text
            assert term.proc.wait(timeout=20) == 5
        finally:
            term.close()
        begun = time.monotonic()
        assert minidocker("exec", "-d", cid, "sleep", "42").returncode == 0
        assert time.monotonic() - begun < 5
        listing = minidocker("exec", cid, "ps", "-o", "args").out
        assert "sleep 42" in listing, listing
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_exec_holds_nothing_of_the_host_while_it_joins(rootfs):
    """The runc CVE-2019-5736 and CVE-2024-21626 classes, attacked from
    inside: strace holds the exec'd process at its execve (in the
    container's namespaces, as confined as the container, still the host's
    python3), while the container's root (without CAP_SYS_PTRACE, as by
    default) waits for that moment (its seccomp filter loaded) and tries
    its /proc/PID/exe (a way to overwrite the host's python3), environ, fd
    and cmdline. The kernel refuses all but cmdline, which is
    zeroed. And a directory the caller left open reaches neither the
    command nor -w."""
    hunt = ('while :; do for p in /proc/[0-9]*; do '
            '[ "$(cat $p/comm 2>/dev/null)" = "md:[exec]" ] || continue; '
            'grep -q "Seccomp:.2" $p/status || continue; '
            'echo found; cat $p/exe >/dev/null 2>&1 && echo EXE; '
            'cat $p/environ 2>/dev/null | grep -q . && echo ENVIRON; '
            'for f in $p/fd/*; do readlink $f; done 2>/dev/null | grep -q . && echo FD; '
            'tr "\\0" "\\n" <$p/cmdline | grep -q . && echo CMDLINE; '
            'exit 0; done; done')
    cid = detached(rootfs, command=("sh", "-c", "sleep 1000"))
    try:
        attacker = subprocess.Popen(MINIDOCKER + ["exec", cid, "sh", "-c", hunt],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)
        # A syscall must be traced for strace to delay it.
        held = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=execve",
                               "-e", "inject=execve:delay_enter=3000000"]
                              + MINIDOCKER + ["exec", cid, "true"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                              env=dict(os.environ, HOST_SECRET="s3cr3t"))
        assert held.returncode == 0, held.stderr
        out, err = attacker.communicate(timeout=30)
        assert out.decode().split() == ["found"], (out, err)
        host_dir = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            fds = minidocker("exec", cid, "ls", "/proc/self/fd", pass_fds=(host_dir,))
            assert fds.out.split() == ["0", "1", "2", "3"], fds.out  # 3: ls's own
            through = minidocker("exec", "-w", "/proc/self/fd/%d" % host_dir, cid, "ls",
                                 pass_fds=(host_dir,))
            assert through.returncode == 125 and "workdir" in through.err, through
        finally:
            os.close(host_dir)
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


def host_secret(directory):
    """A file of the host's that no container may read: the attack tests
    try it through a process's /proc/PID/root. Its path."""
    marker = os.path.join(directory, "host-only-%d" % os.getpid())
    with open(marker, "w") as handle:
        handle.write("host secret\n")
    return marker


def exec_held_by_strace(cid, calls, injections, timeout=90):
    """`exec CID true` with strace delaying each injection's call (a call
    must be traced for strace to delay it), while the container hunts for
    its process. -> (the exec's CompletedProcess, the container's log once
    it says something, or after 10 s)."""
    held = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=" + calls]
                          + [word for inject in injections for word in ("-e", "inject=" + inject)]
                          + MINIDOCKER + ["exec", cid, "true"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    deadline = time.monotonic() + 10
    while not minidocker("logs", cid).out and time.monotonic() < deadline:
        time.sleep(0.05)
    return held, minidocker("logs", cid).out


@root
def test_exec_is_out_of_reach_of_cap_sys_ptrace_until_confined(rootfs, state):
    """A container given CAP_SYS_PTRACE (--cap-add SYS_PTRACE, as for a
    debugger) passes the dumpable check: any process of the host it can see
    in its pid namespace is open to it, /proc/PID/root, mem and ptrace. So
    the exec'd process must not appear there until it is in every other
    namespace, with the container's user, capabilities and filter. strace
    slows each setns of the exec by half a second; the container's init
    hunts for it meanwhile and reads a file of the host through its
    /proc/PID/root."""
    marker = host_secret(state)
    hunt = ('while :; do for p in /proc/[0-9]*; do '
            '[ "$(cat $p/comm 2>/dev/null)" = "md:[exec]" ] || continue; '
            'cat $p/root%s 2>/dev/null && exec sleep 1000; '
            'grep -q "Seccomp:.2" $p/status 2>/dev/null && echo confined && exec sleep 1000; '
            'done; done' % marker)
    cid = detached(rootfs, "--cap-add", "SYS_PTRACE", command=("sh", "-c", hunt))
    try:
        held, seen = exec_held_by_strace(cid, "setns,execve", ["setns:delay_enter=500000",
                                                              "execve:delay_enter=2000000"])
        assert seen == "confined\n"  # not the host's file
        assert held.returncode == 0, held.stderr
    finally:
        os.unlink(marker)
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_exec_pids_cgroup_descriptor_is_out_of_the_containers_reach(rootfs):
    """exec's command holds root's descriptor of the pids cgroup's `tasks`
    (cgroup v1) from its fork in the container's pid namespace to its first
    act, the write that moves it in: a write through it moves any process.
    strace holds that write (the command's first) for two seconds; the
    container's root, without CAP_SYS_PTRACE as by default, finds the
    command outside the pids cgroup meanwhile and tries its descriptors,
    by /proc/PID/fd (links, and a write through each) and fdinfo. The
    kernel refuses them all: the command is not dumpable. (The numbers it
    lists: /proc/PID/fd is root's, and is read without the ptrace check.)"""
    hunt = ('while :; do for p in /proc/[0-9]*; do '
            '[ "$(cat $p/comm 2>/dev/null)" = "md:[exec]" ] || continue; '
            'grep -q "Seccomp:.2" $p/status 2>/dev/null || continue; '
            'c=$(grep ":pids:" $p/cgroup || grep "^0::" $p/cgroup); '
            '[ "${c##*:}" = / ] && continue; '
            'echo found; for n in $(ls $p/fd); do '
            'readlink $p/fd/$n 2>/dev/null && echo LINK; '
            '{ echo $$ >$p/fd/$n; } 2>/dev/null && echo WROTE; '
            'cat $p/fdinfo/$n 2>/dev/null | grep -q . && echo FDINFO; done; '
            'exec sleep 1000; done; done')
    cid = detached(rootfs, command=("sh", "-c", hunt))
    try:
        held, seen = exec_held_by_strace(cid, "write", ["write:delay_enter=2000000:when=1"])
        # (On cgroup v2 the parent moves the command: no write of its own
        # to hold, and only a moment in which to find it.)
        layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                                   md.read_text("/proc/self/cgroup"))
        assert seen in (
            ("found\n",) if layout.version_of("pids") == 1 else ("found\n", ""))
        assert held.returncode == 0, held.stderr
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_exec_holds_no_cgroup_file_where_cap_sys_ptrace_reaches_it(rootfs):
    """A container given CAP_SYS_PTRACE reads the descriptors of exec's
    command (it passes the dumpable check): so the command of such a
    container is born in every cgroup, and holds no `tasks` of root's to
    move itself with. strace holds the command at its first write and at
    its execve, and the container's root lists what each of its
    descriptors is: never a cgroup's file."""
    hunt = ('while :; do for p in /proc/[0-9]*; do '
            '[ "$(cat $p/comm 2>/dev/null)" = "md:[exec]" ] || continue; '
            'grep -q "Seccomp:.2" $p/status 2>/dev/null || continue; '
            'echo found; for f in $p/fd/*; do readlink $f; done; '
            'exec sleep 1000; done; done')
    cid = detached(rootfs, "--cap-add", "SYS_PTRACE", command=("sh", "-c", hunt))
    try:
        held, seen = exec_held_by_strace(cid, "write,execve", ["write:delay_enter=1000000:when=1",
                                                              "execve:delay_enter=1000000"])
        links = seen.split()
        assert links[0] == "found" and len(links) > 3, links  # it reads them
        assert not [link for link in links if "cgroup" in link or "tasks" in link], links
        assert held.returncode == 0, held.stderr
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_exec_bad_input(rootfs, tmp_path):
    """One line and the right code for each: a stopped container, an
    unknown one, no command, -d with -t, a relative -w, a command not found
    (127) or not executable (126), an unknown user."""
    cid = detached(rootfs)
    stopped = minidocker("run", "--network=none", rootfs, "true")
    assert stopped.returncode == 0
    gone = [r["id"] for r in md.read_records(md.Paths()) if r["id"] != cid][0]
    try:
        for args, code, message in (
                ([gone, "true"], 125, "container %s is not running" % gone[:12]),
                (["nosuch", "true"], 125, "no such container: nosuch"),
                ([cid], 125, "exec: no command given"),
                (["-d", "-t", cid, "true"], 125, "exec -d keeps no terminal"),
                (["-w", "tmp", cid, "true"], 125, "workdir 'tmp' must be an absolute path"),
                ([cid, "nosuchcommand"], 127, 'exec: "nosuchcommand": executable file not found'),
                ([cid, "/etc/passwd"], 126, "exec /etc/passwd: Permission denied"),
                (["-u", "nosuchuser", cid, "true"], 125, "unable to find user nosuchuser")):
            result = minidocker("exec", *args)
            assert (result.returncode, result.err.count("\n")) == (code, 1), (args, result)
            assert message in result.err, (args, result.err)
        assert minidocker("exec", cid, "true").returncode == 0  # none of it harmed the container
        assert minidocker("rm", "-fv", cid, gone).returncode == 0  # -v: as docker's
    finally:
        minidocker("rm", "-f", cid, gone)
    assert_nothing_left()


# 12. start, restart and restart policies
# ---------------------------------------------------------------------------

def count_runs(cid):
    return int(minidocker("exec", cid, "wc", "-l", "/runs").out.split()[0]) \
        if json.loads(minidocker("inspect", cid).out)[0]["State"]["Running"] else None


@root
def test_start_runs_the_command_again_in_its_cgroups_and_layer(rootfs, state):
    """A container that ended is started again: the same layer (what it
    wrote is there), its spec (the pids limit, in fresh cgroups of its own
    name, gone again at each end), its log growing; start -a in the
    foreground with its exit code; start of a running one leaves it as it
    is; restart stops a running one and starts it."""
    script = "echo run >> /runs; wc -l < /runs; [ -e /stay ] && exec sleep 1000; exit 3"
    first = minidocker("run", "--name", "again", "--pids-limit", "50", "--network=none", rootfs,
                       "sh", "-c", script)
    assert (first.returncode, first.out) == (3, "1\n"), first.err
    try:
        started = minidocker("start", "again")
        assert (started.returncode, started.out) == (0, "again\n"), started.err
        assert minidocker("wait", "again").out == "3\n"
        assert minidocker("logs", "again").out == "2\n"
        attached = minidocker("start", "-a", "again")
        assert (attached.returncode, attached.out) == (3, "3\n"), attached.err
        record = md.find_container(md.Paths(), "again")
        assert record["status"] == "exited" and record["exit_code"] == 3
        assert not any(os.path.exists(path) for path in record["cgroups"])
        open(os.path.join(str(state), "lib/containers", record["id"], "upper/stay"), "w").close()
        assert minidocker("start", "again").returncode == 0
        before = init_pid("again")
        pids = cgroup_of(md.find_container(md.Paths(), "again"), "pids")
        assert md.read_text(os.path.join(pids, "pids.max")).strip() == "50"
        assert md.read_text(os.path.join(pids, "cgroup.procs")).split() == [str(before)]
        prefix = record["id"][:10]
        assert minidocker("start", prefix).out == prefix + "\n" and init_pid("again") == before
        restarted = minidocker("restart", "-t", "1", "again")
        assert restarted.returncode == 0, restarted.err
        assert init_pid("again") != before and count_runs("again") == 5
    finally:
        minidocker("rm", "-f", "again")
    assert_nothing_left()


@root
def test_restart_policies_back_off_and_end_with_stop(rootfs):
    """on-failure:2 runs a failing command three times and stops there
    (RestartCount 2); on-failure leaves a clean exit alone; always restarts
    a clean exit with a doubling back-off (0.1 s, 0.2 s, 0.4 s...), and stop
    ends it for good, between two runs as during one."""
    failing = detached(rootfs, "--restart", "on-failure:2",
                       command=("sh", "-c", "echo run >> /runs; exit 1"))
    clean = detached(rootfs, "--restart", "on-failure", command=("true",))
    looping = detached(rootfs, "--restart", "always",
                       command=("sh", "-c", "cut -d' ' -f1 /proc/uptime"))
    try:
        time.sleep(2.5)
        state = json.loads(minidocker("inspect", failing, clean).out)
        assert [(s["State"]["Status"], s["State"]["ExitCode"], s["RestartCount"])
                for s in state] == [("exited", 1, 2), ("exited", 0, 0)]
        assert state[0]["HostConfig"]["RestartPolicy"] == {"Name": "on-failure",
                                                           "MaximumRetryCount": 2}
        times = [float(t) for t in minidocker("logs", looping).out.split()]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert len(times) >= 4 and all(b > a for a, b in zip(gaps, gaps[1:])), times
        assert minidocker("stop", looping).returncode == 0
        runs = len(minidocker("logs", looping).out.split())
        time.sleep(1.5)
        assert len(minidocker("logs", looping).out.split()) == runs
        assert json.loads(minidocker("inspect", looping).out)[0]["State"]["Status"] == "exited"
    finally:
        minidocker("rm", "-f", failing, clean, looping)
    assert_nothing_left()


@root
def test_wait_and_rm_under_a_restart_policy(rootfs):
    """As docker's: wait returns at the end of the run going on with its
    exit code, though the policy runs the command again; rm without -f
    refuses a container whose policy lives, between two runs as during
    one, and leaves it as it was."""
    cid = detached(rootfs, "--restart", "always", command=("sh", "-c", "sleep 1; exit 3"))
    try:
        began = time.monotonic()
        waited = minidocker("wait", cid, timeout=15)
        assert (waited.returncode, waited.out, waited.err) == (0, "3\n", "")
        assert time.monotonic() - began < 5
        for _ in range(3):  # whatever the moment: running or restarting
            removed = minidocker("rm", cid)
            assert removed.returncode == 125
            assert re.search(r"container \w{12} is (running|restarting): stop it or use rm -f",
                             removed.err), removed.err
            time.sleep(0.4)
        assert json.loads(minidocker("inspect", cid).out)[0]["Id"] == cid
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_stop_during_a_restart_back_off_ends_the_run_that_begins_meanwhile(rootfs):
    """stop reads the record of a container between two runs of its
    restart policy; before stop's mark is down, the back-off ends and the
    next run begins (strace slows stop's flock by four seconds). stop
    still ends that run, and the policy, before it returns."""
    script = ('echo run >> /runs; [ $(wc -l < /runs) -ge 7 ] && exec sleep 1000; exit 1')
    cid = detached(rootfs, "--restart", "always", command=("sh", "-c", script))
    try:
        deadline = time.monotonic() + 20
        record = {}
        while time.monotonic() < deadline:  # the 6th run has ended: a back-off of 3.2 s
            record = md.read_record(md.Paths(), cid) or {}
            if record.get("restart_count") == 5 and md.container_state(record) == "restarting":
                break
            time.sleep(0.01)
        assert record.get("restart_count") == 5, record
        stopped = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=flock",
                                  "-e", "inject=flock:delay_enter=4000000"]
                                 + MINIDOCKER + ["stop", "-t", "1", cid],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        record = md.find_container(md.Paths(), cid)
        assert not md.owner_alive(record) and record["status"] == "exited", record
        assert md.read_text(os.path.join(os.environ["MINIDOCKER_ROOT"], "lib/containers", cid,
                                         "upper/runs")).split() == ["run"] * 7
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_racing_starts_and_stop_with_rm_end_consistently(rootfs):
    """Ten starts of one stopped container at once: it runs once more, and
    every start succeeds (it runs) or is told it lost. stop and rm -f of one running
    container at once: it ends removed, nothing left behind."""
    cid = detached(rootfs, command=("sh", "-c", "echo run >> /runs; sleep 2"))
    try:
        assert minidocker("wait", cid).out == "0\n"
        starts = [subprocess.Popen(MINIDOCKER + ["start", cid], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE) for _ in range(10)]
        results = [(p.wait(timeout=60), p.stderr.read().decode()) for p in starts]
        for proc in starts:
            proc.stdout.close()
            proc.stderr.close()
        assert all(code == 0 or "is already running" in err for code, err in results), results
        minidocker("wait", cid)
        layer = os.path.join(os.environ["MINIDOCKER_ROOT"], "lib/containers", cid, "upper")
        assert open(os.path.join(layer, "runs")).read().split() == ["run", "run"], results
    finally:
        minidocker("rm", "-f", cid)
    for _ in range(3):
        cid = detached(rootfs, "--restart", "always")
        racers = [subprocess.Popen(MINIDOCKER + [verb, cid], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE) for verb in ("stop", "rm")]
        racers.append(subprocess.Popen(MINIDOCKER + ["rm", "-f", cid], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE))
        for proc in racers:
            proc.wait(timeout=60)
            proc.stderr.close()
        assert racers[2].returncode == 0
        assert md.read_records(md.Paths()) == []
        assert_nothing_left()


@root
def test_net_a_restart_keeps_its_address_and_exec_shares_the_network(rootfs, sandbox):
    """A restart policy's runs keep the container's address even when a
    lower one is free by then (the first container's, stopped meanwhile),
    and exec's process sees the container's eth0."""
    first = sandbox.run("run", "-d", rootfs, "sleep", "1000").out.strip()
    second = sandbox.run("run", "-d", "--restart", "on-failure:2", rootfs, "sh", "-c",
                         "sleep 1; tail -1 /etc/hosts; exit 1").out.strip()
    try:
        seen = sandbox.run("exec", first, "cat", "/sys/class/net/eth0/operstate")
        assert seen.out == "up\n", seen.err
        assert sandbox.run("stop", "-t", "0", first).returncode == 0
        deadline = time.monotonic() + 20
        while sandbox.run("inspect", second).out.count('"exited"') == 0 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        addresses = [container_address(line)
                     for line in sandbox.run("logs", second).out.splitlines()]
        assert len(addresses) == 3 and len(set(addresses)) == 1, addresses
        assert addresses[0] != "10.0.0.2"  # the first's, free since the second run
    finally:
        sandbox.run("rm", "-f", first, second)
    assert_network_gone(sandbox)


@root
def test_net_a_detached_web_server_published_and_followed(rootfs, sandbox):
    """The everyday service: busybox httpd detached with -p, reached from a
    neighbour through the published port, its request log followed by
    logs -f (which ends with it), stopped, removed, nothing left."""
    script = ("mkdir -p /www && echo hello-web > /www/index.html && "
              "exec httpd -f -vv -p 80 -h /www")
    started = sandbox.run("run", "-d", "--name", "web", "-p", "8080:80", rootfs, "sh", "-c", script)
    assert started.returncode == 0, started.err
    follow = subprocess.Popen(sandbox.minidocker("logs", "-f", "web"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        page = ""
        deadline = time.monotonic() + 20
        while page != "hello-web\n" and time.monotonic() < deadline:
            page = sandbox.sh("timeout 5 busybox wget -q -O - http://192.168.77.1:8080/",
                              sandbox.client)
        assert page == "hello-web\n"
        assert b"192.168.77.2" in follow.stderr.readline()  # the neighbour, as httpd saw it
        assert sandbox.run("stop", "web").returncode == 0
        follow.wait(timeout=20)
    finally:
        if follow.poll() is None:
            follow.kill()
        follow.communicate()
        sandbox.run("rm", "-f", "web")
    assert_network_gone(sandbox)


@root
def test_fifty_parallel_detached_runs_then_stop_them_all(rootfs):
    """50 run -d at once, all running with their own monitor; one stop of
    all 50 ends them all with 137 (sleep ignores SIGTERM as pid 1: the
    SIGKILL after -t); rm of all leaves nothing."""
    procs = [subprocess.Popen(MINIDOCKER + ["run", "-d", "--network=none", rootfs, "sleep", "1000"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(50)]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        ids.append(out.decode().strip())
    try:
        records = md.read_records(md.Paths())
        assert sorted(r["id"] for r in records) == sorted(ids)
        assert all(md.is_running(r) and r["pid"] for r in records)
        assert len({r["owner"] for r in records}) == 50  # a monitor each
        stopped = minidocker("stop", "-t", "1", *ids, timeout=300)
        assert stopped.returncode == 0 and stopped.out.split() == ids, stopped.err
        assert [r.get("exit_code") for r in md.read_records(md.Paths())] == [137] * 50
    finally:
        minidocker("rm", "-f", *ids, timeout=300)
    assert_nothing_left()


@root
def test_kill_9_of_a_monitor_at_any_moment_is_reclaimed(rootfs):
    """A monitor killed with SIGKILL at a random moment of its container's
    start or life: the container dies with it (the parent-death signal),
    and the next command shows it as not running and reclaims its cgroups;
    rm then leaves nothing. Ten moments from 0 to 0.5 s."""
    for delay in [index * 0.05 for index in range(10)]:
        launcher = subprocess.Popen(MINIDOCKER + ["run", "-d", "--network=none", rootfs, "sleep",
                                                  "1000"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        monitor = None
        deadline = time.monotonic() + 60  # the v2 VM, on a busy host, is that slow
        while monitor is None and time.monotonic() < deadline:  # run -d's child
            if launcher.poll() is not None:  # run -d has already left: the record names it
                monitor = md.read_records(md.Paths())[0]["owner"]
                break
            children = open("/proc/%d/task/%d/children" % (launcher.pid, launcher.pid)).read()
            monitor = int(children.split()[0]) if children.split() else None
        assert monitor is not None, launcher.communicate()
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):  # it failed (reported by run -d)
            os.kill(monitor, signal.SIGKILL)
        launcher.communicate(timeout=60)
        listing = minidocker("ps", "-a")
        assert listing.returncode == 0, listing.err
        for record in md.read_records(md.Paths()):
            assert not md.is_running(record), (delay, record)
            assert not any(os.path.exists(path) for path in record["cgroups"]), (delay, record)
            assert minidocker("rm", record["id"]).returncode == 0
        assert_nothing_left()


@root
@pytest.mark.parametrize("verb", [["stop", "-t", "1"], ["rm", "-f"]])
def test_net_stop_and_rm_f_reach_a_container_still_starting(rootfs, sandbox, verb):
    """A container whose start-up is held (the test holds the network lock
    its lease waits for) has no init to signal yet: stop's SIGTERM goes to
    its minidocker, then the SIGKILL after -t, which takes the starting
    child with it; rm -f sends that at once. Both return within seconds,
    not after a 30 s wait, and nothing is left behind."""
    os.makedirs(os.path.join(os.environ["MINIDOCKER_ROOT"], "run"), exist_ok=True)
    lock = os.open(os.path.join(os.environ["MINIDOCKER_ROOT"], "run", "network.lock"),
                   os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    held = sandbox.start("run", "-d", "--name", "slow", rootfs, "sleep", "1000")
    try:
        deadline = time.monotonic() + 20
        while not [r for r in md.read_records(md.Paths()) if r.get("name") == "slow"] \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # waiting for the lock
        begun = time.monotonic()
        ended = sandbox.run(*verb, "slow")
        assert ended.returncode == 0 and time.monotonic() - begun < 5, ended.err
        out, err = held.communicate(timeout=30)
        assert held.returncode == 125 and out == b"", err
        assert [r for r in md.read_records(md.Paths()) if md.is_running(r)] == []
    finally:
        os.close(lock)
        if held.poll() is None:
            held.kill()
            held.wait()
        sandbox.run("rm", "-f", "slow")
    assert_network_gone(sandbox)


# --- lifecycle leftovers ---
# ---------------------------------------------------------------------------

@root
def test_restart_policy_without_d_attaches_to_the_first_run(rootfs):
    """run --restart always without -d, as docker's: run shows the first
    run's output (and none of a later one's) and returns its exit code;
    the policy goes on in the background (RestartCount grows) until stop,
    and rm -f leaves nothing."""
    script = "echo run $(cat /proc/uptime); sleep 0.3; exit 3"
    ran = minidocker("run", "--name", "kept", "--restart", "always", "--network=none", rootfs,
                     "sh", "-c", script)
    try:
        assert ran.returncode == 3, ran.err
        assert len(ran.out.splitlines()) == 1 and ran.out.startswith("run "), ran.out
        deadline = time.monotonic() + 20
        while json.loads(minidocker("inspect", "kept").out)[0]["RestartCount"] < 2:
            assert time.monotonic() < deadline, "the policy did not run it again"
            time.sleep(0.1)
        assert minidocker("logs", "kept").out.startswith(ran.out)
        assert minidocker("stop", "-t", "1", "kept").returncode == 0
        runs = minidocker("logs", "kept").out
        time.sleep(1)
        assert minidocker("logs", "kept").out == runs
        assert json.loads(minidocker("inspect", "kept").out)[0]["State"]["Status"] == "exited"
    finally:
        minidocker("rm", "-f", "kept")
    assert_nothing_left()


@root
def test_restart_policy_without_d_passes_a_clean_exit_and_stop_through(rootfs):
    """The first run's exit code whatever it is (0 with on-failure, which
    then runs nothing more); a stop during the first run ends the attached
    run with stop's code (137: sleep, as pid 1, ignores SIGTERM) and the
    policy."""
    clean = minidocker("run", "--restart", "on-failure", "--network=none", rootfs,
                       "sh", "-c", "echo out; echo err >&2")
    assert (clean.returncode, clean.out, clean.err) == (0, "out\n", "err\n")
    attached = subprocess.Popen(MINIDOCKER + ["run", "--name", "held", "--restart",
                                              "unless-stopped", "--network=none", rootfs,
                                              "sleep", "1000"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while minidocker("inspect", "held").returncode != 0 or not json.loads(
                minidocker("inspect", "held").out)[0]["State"]["Running"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert minidocker("stop", "-t", "1", "held").returncode == 0
        assert attached.wait(timeout=20) == 137, attached.stderr.read()
    finally:
        attached.kill()
        attached.wait()
        minidocker("rm", "-f", "held")
    for record in records_now():
        assert record["status"] == "exited", record
        minidocker("rm", record["id"])
    assert_nothing_left()


@root
def test_exec_takes_the_last_free_pid(rootfs):
    """exec costs the container one pid, as runc's does: at --pids-limit 2
    with one process running, an exec still runs (and its exit code comes
    back), and a third process is refused to it. A container that could
    ptrace the exec'd process while it joins (CAP_SYS_PTRACE) needs two
    free pids, and says so in one line."""
    cid = detached(rootfs, "--pids-limit", "2")
    traced = detached(rootfs, "--pids-limit", "2", "--cap-add", "SYS_PTRACE")
    try:
        ran = minidocker("exec", cid, "sh", "-c", "echo in; exit 4")
        assert (ran.returncode, ran.out) == (4, "in\n"), ran.err
        third = minidocker("exec", cid, "sh", "-c", "true & wait")
        assert third.returncode != 0 and "fork" in third.err, third
        refused = minidocker("exec", traced, "true")
        assert refused.returncode == 125, refused
        assert refused.err.count("\n") == 1 and "--pids-limit" in refused.err, refused.err
        assert minidocker("exec", cid, "true").returncode == 0  # nothing was left behind
    finally:
        minidocker("rm", "-f", cid, traced)
    assert_nothing_left()


@root
def test_exec_fork_bomb_stops_at_the_pids_limit(rootfs):
    """What an exec forks is counted in the container's pids cgroup, from
    the first fork on: a fork bomb started by exec -d (each process forks
    two more, eight levels deep: 511 at most if nothing stopped it) holds
    at --pids-limit 8, and the cgroup records the refused forks."""
    cid = detached(rootfs, "--pids-limit", "8")
    try:
        bomb = "b() { [ $1 -gt 0 ] && { b $(($1-1)) & b $(($1-1)) & }; sleep 30; }; b 8"
        assert minidocker("exec", "-d", cid, "sh", "-c", bomb).returncode == 0
        pids = cgroup_of(md.find_container(md.Paths(), cid), "pids")
        deadline = time.monotonic() + 10
        while "max 0" in md.read_text(os.path.join(pids, "pids.events")):
            assert time.monotonic() < deadline, "the bomb never reached the limit"
            time.sleep(0.1)
        time.sleep(0.5)
        assert int(md.read_text(os.path.join(pids, "pids.current"))) <= 8
        # Each of its processes still alive is in the cgroup (a zombie's
        # /proc/PID/cgroup says "/").
        namespace, outside = os.readlink("/proc/%d/ns/pid" % init_pid(cid)), []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            # ENOENT, ESRCH: ended meanwhile; EACCES: a host process closed to us (not the
            # container's, whose processes are all ours to read)
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
                if os.readlink("/proc/%s/ns/pid" % pid) == namespace and "\nState:\tZ" not in \
                        md.read_text("/proc/%s/status" % pid) and pid not in \
                        md.read_text(os.path.join(pids, "cgroup.procs")).split():
                    outside.append(pid)
        assert outside == []
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


# ---------------------------------------------------------------------------
# Ports: host listeners and other containers, free ports, ranges, --expose,
# -P, `port`, and what inspect and ps show of them
# ---------------------------------------------------------------------------

def test_publish_forms_parse_as_docker_reads_them():
    assert md.parse_publish("80") == [["0.0.0.0", 0, 0, "tcp", 80]]
    assert md.parse_publish("127.0.0.1::80-81/UDP") == [["127.0.0.1", 0, 0, "udp", 80],
                                                        ["127.0.0.1", 0, 0, "udp", 81]]
    assert md.parse_publish("8080-8081:80-81") == [["0.0.0.0", 8080, 8080, "tcp", 80],
                                                   ["0.0.0.0", 8081, 8081, "tcp", 81]]
    assert md.parse_publish("8000-8010:80") == [["0.0.0.0", 8000, 8010, "tcp", 80]]
    assert md.parse_expose("90-91/udp") == [[90, "udp"], [91, "udp"]]
    plan = parse("-P", "-p", "8080:80", "--expose", "80", "--expose", "90", "/", "true").network_plan
    assert plan["expose"] == [[80, "tcp"], [90, "tcp"]]  # -p's ports are exposed too
    assert plan["ports"] == [["0.0.0.0", 8080, 8080, "tcp", 80], ["0.0.0.0", 0, 0, "tcp", 90]]
    assert parse("-P", "/", "true").network_plan["ports"] == []
    assert parse("--network", "none", "--expose", "80", "/", "true").network_plan["expose"] == \
        [[80, "tcp"]]


@pytest.mark.parametrize("argv, message", [
    (["-p", "8080-8082:80-81"], "invalid --publish '8080-8082:80-81': invalid ranges specified "
                                "for container and host Ports: 80-81 and 8080-8082"),
    (["-p", "8080:"], "invalid --publish '8080:': no port specified: 8080:<empty>"),
    (["-p", "81-80"], "invalid --publish '81-80': the range 81-80 ends before it begins"),
    (["-p", "127.0.0.1:8080-x:80"], "port 'x' is not a number from 1 to 65535"),
    (["--expose", "80-x"], "invalid --expose '80-x': port 'x' is not a number from 1 to 65535"),
    (["--expose", "80/icmp"], "invalid --expose '80/icmp': protocol 'icmp': minidocker publishes "
                              "tcp and udp"),
])
def test_bad_port_forms(argv, message):
    with pytest.raises(md.MiniDockerError) as caught:
        parse(*argv, "/", "true")
    assert str(caught.value) == message or message in str(caught.value)


def test_listeners_read_from_the_kernel_and_their_process_named():
    """The kernel's own /proc/net lines: a TCP listener on 127.0.0.1, one
    on an IPv4-mapped IPv6 address, an unconnected UDP socket on ::, and a
    connected TCP socket, which listens on nothing."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    mapped = socket.socket(socket.AF_INET6)
    mapped.bind(("::ffff:127.0.0.1", 0))
    mapped.listen()
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.bind(("::", 0))
    client = socket.create_connection(tcp.getsockname())
    try:
        def inode(sock):
            return os.fstat(sock.fileno()).st_ino
        found = md.read_listeners()
        assert ("tcp", "127.0.0.1", tcp.getsockname()[1], inode(tcp)) in found
        assert ("tcp", "127.0.0.1", mapped.getsockname()[1], inode(mapped)) in found
        assert ("udp", "::", udp6.getsockname()[1], inode(udp6)) in found
        assert not [entry for entry in found if entry[3] == inode(client)]
        with open("/proc/self/comm") as handle:
            assert md.socket_owner(inode(tcp)) == "%s (pid %d)" % (handle.read().strip(), os.getpid())
        assert md.socket_owner(1) is None
    finally:
        for sock in (tcp, mapped, udp6, client):
            sock.close()


def test_host_ports_assigned_around_listeners_and_other_containers():
    listeners = [("tcp", "::", 40000, 1), ("tcp", "127.0.0.1", 8080, 2),
                 ("udp", "0.0.0.0", 40001, 3), ("tcp", "::1", 9000, 4)]
    others = [{"container": "abc", "ports": [["0.0.0.0", 40001, "tcp", 80]]}]
    requests = [["0.0.0.0", 0, 0, "tcp", 80], ["0.0.0.0", 0, 0, "udp", 53],
                ["10.1.2.3", 8080, 8080, "tcp", 81], ["0.0.0.0", 9000, 9000, "tcp", 82],
                ["0.0.0.0", 40002, 40002, "tcp", 83], ["127.0.0.1", 40000, 40009, "tcp", 84]]
    assert md.assign_host_ports(requests, others, listeners, (40000, 40010)) == [
        ["0.0.0.0", 40003, "tcp", 80],    # 40000 listened on, 40001 abc's, 40002 given to 83
        ["0.0.0.0", 40000, "udp", 53],    # another protocol's ports are not taken
        ["10.1.2.3", 8080, "tcp", 81],    # the listener has 127.0.0.1 only
        ["0.0.0.0", 9000, "tcp", 82],     # ::1 is IPv6's: our table is `ip` only
        ["0.0.0.0", 40002, "tcp", 83],
        ["127.0.0.1", 40004, "tcp", 84]]  # 40003 went to 80, on 0.0.0.0
    with pytest.raises(md.MiniDockerError) as caught:
        md.assign_host_ports([["0.0.0.0", 8080, 8080, "tcp", 80]], [], listeners, (1, 2),
                             owner=lambda inode: None)
    assert str(caught.value) == ("cannot publish 0.0.0.0:8080/tcp: address already in use by a "
                                 "socket listening on 127.0.0.1:8080")
    with pytest.raises(md.MiniDockerError) as caught:
        md.assign_host_ports([["127.0.0.1", 40000, 40000, "tcp", 80]], [], listeners, (1, 2),
                             owner=lambda inode: "nc (pid %d)" % inode)
    assert str(caught.value) == ("cannot publish 127.0.0.1:40000/tcp: address already in use by "
                                 "nc (pid 1), listening on [::]:40000")
    # Started again: the ports it had, when still free, else the first free.
    last = [["0.0.0.0", 40007, "tcp", 80], ["0.0.0.0", 40001, "udp", 53], ["0.0.0.0", 40008, "tcp", 99]]
    assert md.assign_host_ports(requests[:2], others, listeners, (40000, 40010), last) == [
        ["0.0.0.0", 40007, "tcp", 80], ["0.0.0.0", 40000, "udp", 53]]  # udp 40001: listened on
    assert md.assign_host_ports(requests[:1], others, listeners, (40000, 40005), last + [7, ["x"]]) \
        == [["0.0.0.0", 40002, "tcp", 80]]  # out of the range now; junk ignored
    with pytest.raises(md.MiniDockerError, match="^no free host port for 80/tcp in 40000-40001$"):
        md.assign_host_ports([["0.0.0.0", 0, 0, "tcp", 80]], others, listeners, (40000, 40001))


# Docker's own cases (docker/cli, TestDisplayablePorts), as (port, host IP,
# host port, proto); "" is no IP. Left out: the IPv6 one, which minidocker
# never publishes.
DOCKER_DISPLAYABLE_PORTS = [
    ([(9988, "", 0, "tcp")], "9988/tcp"),
    ([(9988, "", 0, "udp")], "9988/udp"),
    ([(9988, "0.0.0.0", 0, "tcp")], "0.0.0.0:0->9988/tcp"),
    ([(9988, "", 8899, "tcp")], "9988/tcp"),
    ([(9988, "4.3.2.1", 8899, "tcp")], "4.3.2.1:8899->9988/tcp"),
    ([(9988, "4.3.2.1", 9988, "tcp")], "4.3.2.1:9988->9988/tcp"),
    ([(9988, "", 0, "udp"), (9988, "", 0, "udp")], "9988/udp, 9988/udp"),
    ([(9998, "1.2.3.4", 9998, "udp"), (9999, "1.2.3.4", 9999, "udp")],
     "1.2.3.4:9998-9999->9998-9999/udp"),
    ([(9998, "1.2.3.4", 8887, "udp"), (9999, "1.2.3.4", 8888, "udp")],
     "1.2.3.4:8887->9998/udp, 1.2.3.4:8888->9999/udp"),
    ([(9998, "", 0, "udp"), (9999, "", 0, "udp")], "9998-9999/udp"),
    ([(6677, "1.2.3.4", 7766, "tcp"), (9988, "", 8899, "udp")], "9988/udp, 1.2.3.4:7766->6677/tcp"),
    ([(9988, "1.2.3.4", 8899, "udp"), (9988, "1.2.3.4", 8899, "tcp"), (2233, "4.3.2.1", 3322, "tcp")],
     "4.3.2.1:3322->2233/tcp, 1.2.3.4:8899->9988/tcp, 1.2.3.4:8899->9988/udp"),
    ([(9988, "", 8899, "udp"), (6677, "1.2.3.4", 7766, "tcp"), (2233, "4.3.2.1", 3322, "tcp")],
     "9988/udp, 4.3.2.1:3322->2233/tcp, 1.2.3.4:7766->6677/tcp"),
    ([(80, "", 0, "tcp"), (1024, "", 0, "tcp"), (80, "", 0, "udp"), (1024, "", 0, "udp"),
      (1024, "1.1.1.1", 80, "tcp"), (1024, "1.1.1.1", 80, "udp"), (80, "1.1.1.1", 1024, "tcp"),
      (80, "1.1.1.1", 1024, "udp"), (1024, "2.1.1.1", 80, "tcp"), (1024, "2.1.1.1", 80, "udp"),
      (80, "2.1.1.1", 1024, "tcp"), (80, "2.1.1.1", 1024, "udp"), (12345, "", 0, "sctp")],
     "80/tcp, 80/udp, 1024/tcp, 1024/udp, 12345/sctp, 1.1.1.1:1024->80/tcp, 1.1.1.1:1024->80/udp, "
     "2.1.1.1:1024->80/tcp, 2.1.1.1:1024->80/udp, 1.1.1.1:80->1024/tcp, 1.1.1.1:80->1024/udp, "
     "2.1.1.1:80->1024/tcp, 2.1.1.1:80->1024/udp"),
]


@pytest.mark.parametrize("entries, expected", DOCKER_DISPLAYABLE_PORTS)
def test_ps_ports_as_docker_displays_them(entries, expected):
    assert md.displayable_ports(entries) == expected


def test_port_map_of_a_record():
    record = {"config": {"exposed": [[7, "udp"], [80, "tcp"], [81, "tcp"], [90, "tcp"]]},
              "network": {"ports": [["0.0.0.0", 8080, "tcp", 80], ["127.0.0.1", 8081, "tcp", 80],
                                    ["0.0.0.0", 81, "tcp", 81]]}}
    ports = md.port_map(record)
    assert ports == {"7/udp": None, "80/tcp": [("0.0.0.0", 8080), ("127.0.0.1", 8081)],
                     "81/tcp": [("0.0.0.0", 81)], "90/tcp": None}
    assert list(ports) == ["7/udp", "80/tcp", "81/tcp", "90/tcp"]  # Go's JSON: keys sorted
    assert md.displayable_ports(md.port_entries(ports)) == \
        "7/udp, 0.0.0.0:81->81/tcp, 90/tcp, 0.0.0.0:8080->80/tcp, 127.0.0.1:8081->80/tcp"
    assert md.port_map(dict(record, network={})) == {}  # not running: no lease, nothing shown
    assert sorted(["10/tcp -> 0.0.0.0:1", "9/tcp -> 0.0.0.0:2"], key=md.natural_key)[0] == \
        "9/tcp -> 0.0.0.0:2"


PY_LISTEN = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM)
sock.bind((sys.argv[2], int(sys.argv[3])))
if sys.argv[1] == "tcp":
    sock.listen()
print("listening", flush=True)
time.sleep(60)
"""


@root
def test_net_a_port_a_host_process_listens_on_is_refused(rootfs, sandbox):
    """A host process's listener keeps its port: busybox nc on [::]:8080,
    python on 127.0.0.1:8081 (tcp) and 0.0.0.0:5353 (udp) in the sandbox.
    -p over any of them is refused, naming the process, and leaves nothing;
    nc still gets its connection afterwards. On an address or protocol
    they do not hold, the same ports are published."""
    nc = subprocess.Popen(sandbox.enter() + ["busybox", "nc", "-l", "-p", "8080"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pythons = [subprocess.Popen(sandbox.enter() + [sys.executable, "-c", PY_LISTEN, *where],
                                stdout=subprocess.PIPE)
               for where in [("tcp", "127.0.0.1", "8081"), ("udp", "0.0.0.0", "5353")]]
    try:
        for listener in pythons:
            assert listener.stdout.readline() == b"listening\n"
        deadline = time.monotonic() + 10
        while ":1F90 " not in sandbox.sh("cat /proc/net/tcp6") and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = {
            "8080:80": "0.0.0.0:8080/tcp: address already in use by busybox (pid %d), "
                       "listening on [::]:8080" % nc.pid,
            "192.168.77.1:8080:80": "192.168.77.1:8080/tcp: address already in use by busybox "
                                    "(pid %d), listening on [::]:8080" % nc.pid,
            "8081:80": "0.0.0.0:8081/tcp: address already in use by python3 (pid %d), "
                       "listening on 127.0.0.1:8081" % pythons[0].pid,
            "5353:53/udp": "0.0.0.0:5353/udp: address already in use by python3 (pid %d), "
                           "listening on 0.0.0.0:5353" % pythons[1].pid,
        }
        for publish, message in refused.items():
            result = sandbox.run("run", "--rm", "-p", publish, rootfs, "true")
            assert (result.returncode, result.err) == \
                (125, "minidocker: error: cannot publish %s\n" % message), publish
            assert sandbox.veths() == "" and sandbox.ruleset() == ""
            assert_nothing_left()
        allowed = sandbox.run("run", "--rm", "-p", "192.168.77.1:8081:80", "-p", "5353:53",
                              rootfs, "true")
        assert allowed.returncode == 0, allowed.err
        sandbox.sh("echo to-the-host | timeout 5 busybox nc 127.0.0.1 8080")
        assert nc.stdout.readline() == b"to-the-host\n"
    finally:
        for process in [nc] + pythons:
            process.kill()
            process.wait()
    assert_network_gone(sandbox)


WEB = ("mkdir -p /www/a /www/b && echo page-a > /www/a/index.html && echo page-b > /www/b/index.html"
       " && httpd -p 81 -h /www/b && exec httpd -f -p 80 -h /www/a")


def fetch(box, address, port):
    """A page through a published port, from the client namespace (the
    server may take a moment to listen)."""
    page, deadline = "", time.monotonic() + 20
    while not page.startswith("page-") and time.monotonic() < deadline:
        page = box.sh("timeout 5 busybox wget -q -O - http://%s:%d/" % (address, port), box.client)
    return page


@root
def test_net_port_ranges_expose_and_what_port_inspect_and_ps_show(rootfs, sandbox):
    """-p 8080-8081:80-81 publishes two servers of one container, reached
    from a neighbour; 127.0.0.1:9000:80 from the host only; --expose 90
    shows as exposed and not published. `port`, inspect, ps and the
    kernel's ruleset agree."""
    started = sandbox.run("run", "-d", "--name", "web", "-p", "8080-8081:80-81",
                          "-p", "127.0.0.1:9000:80", "--expose", "90", rootfs, "sh", "-c", WEB)
    assert started.returncode == 0, started.err
    try:
        assert fetch(sandbox, "192.168.77.1", 8080) == "page-a\n"
        assert fetch(sandbox, "192.168.77.1", 8081) == "page-b\n"
        assert sandbox.sh("timeout 5 busybox wget -q -O - http://127.0.0.1:9000/") == "page-a\n"
        assert sandbox.run("port", "web").out == \
            "80/tcp -> 0.0.0.0:8080\n80/tcp -> 127.0.0.1:9000\n81/tcp -> 0.0.0.0:8081\n"
        assert sandbox.run("port", "web", "81/tcp").out == "0.0.0.0:8081\n"
        for asked, message in [("90", "no public port '90' published for web"),
                               ("80/udp", "no public port '80/udp' published for web"),
                               ("http", "invalid port 'http': not a number from 0 to 65535")]:
            refused = sandbox.run("port", "web", asked)
            assert (refused.returncode, refused.out, refused.err) == \
                (125, "", "minidocker: error: %s\n" % message)
        unknown = sandbox.run("port", "nosuch")
        assert (unknown.returncode, unknown.err) == (125, "minidocker: error: no such container: nosuch\n")
        [shown] = json.loads(sandbox.run("inspect", "web").out)
        assert shown["NetworkSettings"]["Ports"] == {
            "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                       {"HostIp": "127.0.0.1", "HostPort": "9000"}],
            "81/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8081"}], "90/tcp": None}
        assert shown["Config"]["ExposedPorts"] == {"80/tcp": {}, "81/tcp": {}, "90/tcp": {}}
        assert sandbox.run("ps", "--format", "{{.Ports}}").out == \
            "90/tcp, 0.0.0.0:8080->80/tcp, 127.0.0.1:9000->80/tcp, 0.0.0.0:8081->81/tcp\n"
        rules = sandbox.ruleset()
        address = shown["NetworkSettings"]["IPAddress"]
        for rule in ["fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to %s:80",
                     "fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8081 dnat to %s:81",
                     "ip daddr 127.0.0.1 tcp dport 9000 dnat to %s:80"]:
            assert rule % address in rules, rules
    finally:
        sandbox.run("rm", "-f", "web")
    assert sandbox.run("port", "web").returncode == 125
    assert_network_gone(sandbox)


@root
def test_net_free_host_ports_skip_listeners_and_each_other(rootfs, sandbox):
    """The sandbox's ephemeral range cut to 40000-40005, a listener on
    40000: four `run -d -p 80` at once get 40001-40004, each its own (the
    choice is made under the network lock), and of three asking for 8090
    at once, one gets it; -P with two exposed ports finds
    one left and is refused, leaving nothing; each server answers on its
    port from a neighbour. A container started again keeps its port."""
    sandbox.sh("echo '40000 40005' > /proc/sys/net/ipv4/ip_local_port_range")
    listener = subprocess.Popen(sandbox.enter() + [sys.executable, "-c", PY_LISTEN,
                                                   "tcp", "0.0.0.0", "40000"], stdout=subprocess.PIPE)
    ids = []
    try:
        assert listener.stdout.readline() == b"listening\n"
        racers = [sandbox.start("run", "-d", "-p", "80", rootfs, "sh", "-c",
                                "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 80 -h /w")
                  for _ in range(4)]
        for racer in racers:
            out, err = racer.communicate(timeout=60)
            assert racer.returncode == 0, err
            ids.append(out.decode().strip())
        ports = {}
        for cid in ids:
            [line] = sandbox.run("port", cid).out.splitlines()
            assert line.startswith("80/tcp -> 0.0.0.0:"), line
            ports[int(line.rsplit(":", 1)[1])] = cid
        assert sorted(ports) == [40001, 40002, 40003, 40004]
        for port, cid in ports.items():
            page = ""
            deadline = time.monotonic() + 20
            while page != cid[:12] + "\n" and time.monotonic() < deadline:
                page = sandbox.sh("timeout 5 busybox wget -q -O - http://192.168.77.1:%d/" % port,
                                  sandbox.client)
            assert page == cid[:12] + "\n"
        # One host port asked for by three runs at once: one gets it.
        same = [sandbox.start("run", "-d", "-p", "8090:80", rootfs, "sleep", "100") for _ in range(3)]
        for racer in same:
            out, err = racer.communicate(timeout=60)
            if racer.returncode == 0:
                ids.append(out.decode().strip())
            else:
                assert racer.returncode == 125 and re.fullmatch(
                    rb"minidocker: error: port 0\.0\.0\.0:8090/tcp is already published by "
                    rb"container [0-9a-f]{12}\n", err), err
        assert len(ids) == 5
        sandbox.run("rm", "-f", ids.pop())
        full = sandbox.run("run", "--rm", "-P", "--expose", "80-81", rootfs, "true")
        assert (full.returncode, full.err) == \
            (125, "minidocker: error: no free host port for 81/tcp in 40000-40005\n")
        assert len(sandbox.veths().splitlines()) == 4
        assert len(md.read_records(md.Paths())) == 4
        # Started again, a container keeps its port though a lower one is free.
        assert sandbox.run("stop", "-t", "0", ports[40002], ports[40001]).returncode == 0
        assert sandbox.run("start", ports[40002]).returncode == 0
        assert sandbox.run("port", ports[40002], "80").out == "0.0.0.0:40002\n"
    finally:
        if ids:
            sandbox.run("rm", "-f", *ids)
        listener.kill()
        listener.wait()
    assert_network_gone(sandbox)


@root
@pytest.mark.parametrize("args, message", [
    (["-p", "8080-8081:80-82"], "invalid ranges specified for container and host Ports: 80-82 and 8080-8081"),
    (["--expose", "90/sctp"], "invalid --expose '90/sctp': protocol 'sctp'"),
])
def test_net_bad_port_forms_leave_nothing(rootfs, sandbox, args, message):
    result = sandbox.run("run", "--rm", *args, rootfs, "true")
    assert result.returncode == 125 and message in result.err and result.err.count("\n") == 1, \
        result.err
    assert "mini-br0" not in sandbox.sh("ip link")
    assert_network_gone(sandbox)


# ---------------------------------------------------------------------------
# 12. ps, top, stats, rename, container prune: docker's shapes, unit and root
# (top and stats read the cgroups: their names hold "cgroup", so that the
# README's cgroup-v2 VM command runs them too)
# ---------------------------------------------------------------------------

def test_docker_words_for_ages_and_sizes():
    """go-units' HumanDuration, HumanSize and BytesSize, at their edges."""
    ages = {0: "Less than a second", 0.9: "Less than a second", 1: "1 second",
            59.9: "59 seconds", 60: "About a minute", 119: "About a minute",
            120: "2 minutes", 3599: "59 minutes", 3600: "About an hour",
            5399: "About an hour", 5400: "2 hours", 47 * 3600: "47 hours",
            48 * 3600: "2 days", 14 * 86400: "2 weeks", 60 * 86400: "2 months",
            730 * 86400: "2 years"}
    assert {age: md.human_duration(age) for age in ages} == ages
    assert [md.human_size(n) for n in (0, 999, 1000, 1234, 1536000, 10 ** 12)] == \
        ["0B", "999B", "1kB", "1.234kB", "1.536MB", "1TB"]
    assert [md.bytes_size(n) for n in (0, 164 << 10, 64 << 20, 1536 << 20)] == \
        ["0B", "164KiB", "64MiB", "1.5GiB"]


def test_go_quote_and_tabwriter():
    # strconv.Quote's output for the same strings (Go 1.19)
    assert md.go_quote('sh -c \'echo "a\\b"\'') == '"sh -c \'echo \\"a\\\\b\\"\'"'
    assert md.go_quote("\t\x01\x1b[2Jé\u2028\U0001f600\x9b") == \
        '"\\t\\x01\\x1b[2Jé\\u2028\U0001f600\\u009b"'
    # text/tabwriter.NewWriter(out, 10, 1, 3, ' ', 0), as docker's tables
    assert md.tabulate(["A\tLONGER HEADER\tLAST", "a-long-cell-here\tb\tc"], 10) == [
        "A" + " " * 18 + "LONGER HEADER   LAST",
        "a-long-cell-here   b" + " " * 15 + "c"]


def test_ps_templates_and_filters():
    row = {field: field.lower() for field in md.PS_HEADERS}
    table, parts = md.parse_format("table {{.ID}}\\t{{ .Names }}", md.PS_HEADERS)
    assert table and md.render(parts, md.PS_HEADERS) == "CONTAINER ID\tNAMES"
    assert md.render(parts, row) == "id\tnames"
    table, parts = md.parse_format("json", md.PS_HEADERS)
    assert not table and json.loads(md.render(parts, row)) == row
    table, parts = md.parse_format("{{.Names}}={{json .State}}\\n", md.PS_HEADERS)
    assert not table and md.render(parts, row) == 'names="state"\n'
    assert md.parse_format("", md.PS_HEADERS) == md.parse_format("table", md.PS_HEADERS)
    for text, error in (("{{.Nope}}", "no field .Nope (the fields are Command, CreatedAt"),
                        ("{{.ID}", "is not closed"), ("{{if .ID}}x{{end}}", "is not a template")):
        with pytest.raises(md.MiniDockerError, match=re.escape(error)):
            md.parse_format(text, md.PS_HEADERS)
    assert md.parse_ps_filters(["name=a", "Name = b ", "status=exited"]) == \
        {"name": ["a", "b"], "status": ["exited"]}
    for text, error in (("nonsense", "bad format of filter 'nonsense'"),
                        ("ancestor=x", "invalid filter 'ancestor'"), ("label==x", "label=KEY"),
                        ("status=up", "status=up")):
        with pytest.raises(md.MiniDockerError, match=re.escape(error)):
            md.parse_ps_filters([text])
    record = {"id": "abc123" + "0" * 58, "name": "web-1"}
    # docker: a value is a regular expression searched in the name (and in
    # "/name"), or in the whole id; values of one key OR, keys AND
    for filters, expected in (({"name": ["eb"]}, True), ({"name": ["^/web"]}, True),
                              ({"name": ["^web-1$"]}, True), ({"name": ["^eb"]}, False),
                              ({"name": ["x", "web"]}, True), ({"id": ["abc1"]}, True),
                              ({"id": ["c12"]}, True), ({"id": ["[", "abd"]}, False),
                              ({"name": ["web"], "status": ["exited"]}, False),
                              ({"name": ["web"], "status": ["running"]}, True)):
        assert md.ps_selected(record, "running", filters) is expected, filters


def detach_run(rootfs, *command, options=()):
    result = minidocker("run", "-d", "--network=none", *options, rootfs, *command)
    assert result.returncode == 0, result.err
    return result.out.strip()


def ps_lines(*args):
    result = minidocker("ps", *args)
    assert result.returncode == 0 and result.err == "", result.err
    return result.out.splitlines()


@root
def test_ps_shows_filters_and_formats_as_docker(rootfs):
    alpha = detach_run(rootfs, "sleep", "1000", options=["--name", "alpha"])
    beta = detach_run(rootfs, "sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait",
                    options=["--name", "beta"])
    gamma = minidocker("run", "--network=none", "--name", "gamma", rootfs, "sh", "-c", "exit 3")
    try:
        assert gamma.returncode == 3
        gamma = md.find_container(md.Paths(), "gamma")["id"]
        header, *rows = ps_lines()
        assert re.split(r"\s{3,}", header) == ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED",
                                               "STATUS", "PORTS", "NAMES"]
        assert header.index("COMMAND") == header.index("IMAGE") + len(rootfs) + 3 == 18 + len(rootfs)
        assert [row.split()[0] for row in rows] == [beta[:12], alpha[:12]]  # newest first
        age = r"(Less than a second|\d+ seconds?)"
        assert re.fullmatch(r"%s +%s +\"sleep 1000\" +%s ago +Up %s +alpha"
                            % (alpha[:12], re.escape(rootfs), age, age), rows[1]), rows
        assert ' "sh -c \'trap \'exit 0…" ' in rows[0]  # 19 characters, then the ellipsis
        assert "\"sh -c 'trap 'exit 0' TERM; sleep 1000 & wait'\"" in ps_lines("--no-trunc")[1]
        assert re.search(r" Exited \(3\) %s ago +gamma$" % age, ps_lines("-a")[1]), ps_lines("-a")
        assert ps_lines("-q") == [beta[:12], alpha[:12]]
        assert ps_lines("-aq", "--no-trunc") == [gamma, beta, alpha]
        assert ps_lines("-q", "-f", "status=exited") == [gamma[:12]]  # a status filter: all
        assert ps_lines("-q", "-f", "name=lph") == [alpha[:12]]
        assert ps_lines("-aq", "-f", "name=^/gam") == [gamma[:12]]
        assert ps_lines("-q", "-f", "id=" + alpha[:5]) == [alpha[:12]]
        assert ps_lines("-aq", "-f", "name=alpha", "-f", "name=gamma") == [gamma[:12], alpha[:12]]
        assert ps_lines("-aq", "-f", "name=alpha", "-f", "status=exited") == []
        assert ps_lines("-a", "--format", "{{.ID}} {{.Names}} {{.State}}") == [
            "%s gamma exited" % gamma[:12], "%s beta running" % beta[:12],
            "%s alpha running" % alpha[:12]]
        assert ps_lines("-a", "--format", "table {{.Names}}\\t{{.State}}") == [
            "NAMES     STATE", "gamma     exited", "beta      running", "alpha     running"]
        shown = [json.loads(line) for line in ps_lines("-a", "--format", "json")]
        assert [row["ID"] for row in shown] == [gamma[:12], beta[:12], alpha[:12]]
        assert set(shown[2]) == {"Command", "CreatedAt", "ID", "Image", "Labels", "Names", "Ports",
                                 "RunningFor", "State", "Status"}
        assert (shown[2]["Command"], shown[2]["Image"], shown[2]["Names"], shown[2]["State"]) == \
            ('"sleep 1000"', rootfs, "alpha", "running")
        assert shown[0]["Status"].startswith("Exited (3) ") and shown[2]["Status"].startswith("Up ")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} \S+", shown[2]["CreatedAt"])
        wrong = minidocker("ps", "--format", "{{.Nope}}")
        assert wrong.returncode == 125 and wrong.err.count("\n") == 1 and "no field .Nope" in wrong.err
        both = minidocker("ps", "-q", "--format", "{{.Names}}")
        assert both.out.split() == [beta[:12], alpha[:12]] and "ignoring the custom format" in both.err
    finally:
        minidocker("rm", "-f", alpha, beta, "gamma")
    assert_nothing_left()


@root
@pytest.mark.parametrize("args, message", [
    (["ps", "-f", "ancestor=x"], "invalid filter 'ancestor'"),
    (["ps", "-f", "status=up"], "invalid filter 'status=up'"),
    (["ps", "-f", "nonsense"], "bad format of filter 'nonsense'"),
    (["ps", "--format", "{{.Nope}}"], "no field .Nope"),
    (["ps", "--format", "{{.ID}"], "is not closed"),
    (["top", "nosuch"], "no such container: nosuch"),
    (["stats", "--no-stream", "nosuch"], "no such container: nosuch"),
    (["rename", "nosuch", "fine"], "no such container: nosuch"),
    (["rename", "nosuch", "bad name"], "invalid new name 'bad name'"),
    (["container", "prune", "extra"], "container prune: unexpected argument 'extra'"),
])
def test_bad_listing_and_housekeeping_input(args, message, state):
    bad(args, message)


def layer_bytes(path):
    """What a layer's files hold, each inode once: the test's own count."""
    inodes = {}
    for top, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(top, name))
            inodes[st.st_dev, st.st_ino] = st.st_size
    return sum(inodes.values())


@root
def test_container_prune_removes_only_what_is_stopped(rootfs):
    paths = md.Paths()
    running = detach_run(rootfs, "sleep", "1000")
    stopped = []
    try:
        for script in ("dd if=/dev/zero of=/big bs=1k count=1000 2>/dev/null", "exit 4"):
            assert minidocker("run", "--network=none", rootfs, "sh", "-c", script).returncode != 125
        stopped = [r["id"] for r in md.read_records(paths) if r["id"] != running]
        size = sum(layer_bytes(os.path.join(paths.layer(cid), "upper")) for cid in stopped)
        assert len(stopped) == 2 and size >= 1000 * 1024
        question = ("WARNING! This will remove all stopped containers.\n"
                    "Are you sure you want to continue? [y/N] ")
        for answer in (b"n\n", b"", b"yes\n"):  # docker's yes is y or Y, and nothing else
            declined = minidocker("container", "prune", stdin=None, input=answer)
            assert (declined.returncode, declined.out, declined.err) == (0, question, "")
            assert len(md.read_records(paths)) == 3
        pruned = minidocker("container", "prune", stdin=None, input=b"Y\n")
        assert pruned.returncode == 0, pruned.err
        head, _, rest = pruned.out.partition("Deleted Containers:\n")
        deleted, _, tail = rest.partition("\n\n")
        assert head == question and sorted(deleted.splitlines()) == sorted(stopped)
        assert tail == "Total reclaimed space: %s\n" % md.human_size(size)
        assert [r["id"] for r in md.read_records(paths)] == [running]
        assert sorted(os.listdir(paths.containers)) == [running]
        assert md.container_state(md.find_container(paths, running)) == "running"
        again = minidocker("container", "prune", "-f")
        assert (again.returncode, again.out) == (0, "Total reclaimed space: 0B\n")
    finally:
        minidocker("rm", "-f", running, *stopped)
    assert_nothing_left()


@root
def test_rename_running_and_stopped(rootfs):
    """A running container's new name outlives the writes its run makes
    later (the end, its exit code), and a stopped one takes one too."""
    first = detach_run(rootfs, "sleep", "1000", options=["--name", "one"])
    other = detach_run(rootfs, "sleep", "1000", options=["--name", "other"])
    try:
        assert minidocker("rename", "one", "two").returncode == 0
        assert ps_lines("--format", "{{.Names}}") == ["other", "two"]
        assert minidocker("top", "one").returncode == 125
        assert minidocker("stop", "-t", "0", "two").returncode == 0
        assert ps_lines("-a", "--format", "{{.Names}} {{.State}}") == ["other running", "two exited"]
        assert minidocker("rename", first[:6], "/three").returncode == 0  # docker's "/" is dropped
        for new, error in (("other", "the name other is already in use by container %s"
                            % other[:12]), ("three", "is already named three")):
            refused = minidocker("rename", "three", new)
            assert refused.returncode == 125 and error in refused.err, refused.err
        assert md.find_container(md.Paths(), "three")["id"] == first
    finally:
        minidocker("rm", "-f", first, other)
    assert_nothing_left()


@root
def test_rename_race_one_wins(rootfs):
    """Two renames to one name at once, ten times, with a run -d --name of
    that name in the race too: one gets it each time."""
    cids = [detach_run(rootfs, "sleep", "1000") for _ in range(2)]
    made = []  # by the runs that won
    try:
        for round in range(10):
            name = "race%d" % round
            racers = [subprocess.Popen(MINIDOCKER + ["rename", cid, name], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                      for cid in cids[:2]]
            racers.append(subprocess.Popen(MINIDOCKER + ["run", "-d", "--network=none", "--name",
                                                         name, rootfs, "sleep", "1000"],
                                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE))
            results = [(racer.wait(timeout=60), racer.communicate()) for racer in racers]
            assert sorted(code for code, _ in results) == [0, 125, 125], results
            assert all(b"already in use" in err for code, (_, err) in results if code), results
            named = [r["id"] for r in md.read_records(md.Paths()) if r.get("name") == name]
            assert len(named) == 1
            if results[2][0] == 0:
                made.append(results[2][1][0].decode().strip())
    finally:
        minidocker("rm", "-f", *cids, *made)
    assert_nothing_left()


def cgroup_procs(record):
    """The container's processes, as the test reads them: every
    cgroup.procs of its cgroups and below."""
    pids = set()
    for path in record["cgroups"]:
        for top, _, _ in os.walk(path):
            with open(os.path.join(top, "cgroup.procs")) as handle:
                pids.update(int(pid) for pid in handle.read().split())
    return pids


def test_top_c_column_is_procps_4s():
    """C as procps-ng 4 computes it: the CPU ticks over the ticks of life,
    both exact (procps 3 used whole seconds of life: a process that spun
    for 1.3 s of its first 1.5 would show 99, not 86). The process sleeps
    by then, so its C only falls, by about one every 17 ms: ours is read
    first (or rises by one, should a tick fall on its last instructions
    on the way to sleep)."""
    spin = subprocess.Popen([sys.executable, "-S", "-c", "import time\nt = time.time()\n"
                             "while time.time() - t < 1.3: pass\ntime.sleep(0.2)\n"
                             "print('spun', flush=True)\ntime.sleep(60)"],
                            stdout=subprocess.PIPE)
    try:
        assert spin.stdout.readline() == b"spun\n"  # and asleep since
        clock = (os.sysconf("SC_CLK_TCK"),
                 int(md.proc_values(md.read_text("/proc/stat"), "btime")[0]),
                 float(md.read_text("/proc/uptime").split()[0]))
        ours = md.process_row(spin.pid, clock)[3]
        theirs = subprocess.run(["ps", "-o", "c=", "-p", str(spin.pid)], stdout=subprocess.PIPE,
                                check=True).stdout.decode().strip()
        assert -1 <= int(ours) - int(theirs) <= 5, (ours, theirs)
    finally:
        spin.kill()
        spin.wait()
        spin.stdout.close()


@root
def test_cgroup_top_lists_the_processes_as_ps_does(rootfs):
    """top's rows are those of procps' ps -f for the processes in the
    container's cgroups: its init (sh), and the sleep it started, whose
    host pid /proc shows. A process's own text cannot reach the terminal:
    an escape in its command line shows as "?"."""
    cid = detach_run(rootfs, "sh", "-c", "sleep 1000 & wait", "\x1b]0;owned\x07")
    try:
        record = md.find_container(md.Paths(), cid)
        deadline = time.monotonic() + 10
        while True:  # until the forked shell has become sleep
            pids = cgroup_procs(record)
            sleeper = [pid for pid in pids
                       if md.read_text("/proc/%d/cmdline" % pid) == "sleep\x001000\x00"]
            if sleeper:
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert len(sleeper) == 1 and len(pids) == 2 and record["pid"] in pids
        shown = minidocker("top", cid[:8])
        assert shown.returncode == 0, shown.err
        header, *rows = shown.out.splitlines()
        assert header.split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        assert header.index("PID") == 20 and header.index("CMD") == 140  # columns of 20
        peer = subprocess.run(["ps", "-ww", "-o", "user=,pid=,ppid=,c=,stime=,tty=,time=,args=", "-p",
                               ",".join(map(str, sorted(pids)))], stdout=subprocess.PIPE,
                              check=True).stdout.decode().splitlines()
        ours, theirs = [row.split(None, 7) for row in rows], [line.split(None, 7) for line in peer]
        # C, the percent of its life a process spent on a CPU, moves between
        # the two reads: it falls as an idle process ages, and rises while
        # a young one still runs (the shell on its way to `wait`, slowly on
        # an emulated CPU)
        assert [row[:3] + row[4:] for row in ours] == [row[:3] + row[4:] for row in theirs]
        assert all(abs(int(mine[3]) - int(other[3])) <= 10 for mine, other in zip(ours, theirs))
        assert [row.split()[1:3] for row in rows] == [[str(record["pid"]), str(record["owner"])],
                                                      [str(sleeper[0]), str(record["pid"])]]
        assert rows[0].endswith("sh -c sleep 1000 & wait ?]0;owned?") and "\x1b" not in shown.out
        assert minidocker("stop", "-t", "0", cid).returncode == 0
        refused = minidocker("top", cid)
        assert (refused.returncode, refused.err) == (
            125, "minidocker: error: container %s is not running\n" % cid[:12])
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


def from_bytes_size(text):
    number, unit = re.fullmatch(r"([\d.]+)(B|KiB|MiB|GiB|TiB)", text).groups()
    return float(number) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB"].index(unit)


def stats_table(*args):
    result = minidocker("stats", "--no-stream", *args)
    assert result.returncode == 0 and result.err == "", result.err
    header, *rows = result.out.splitlines()
    assert re.split(r"\s{3,}", header) == ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT",
                                           "MEM %", "PIDS"]
    return {row.split()[1]: row.split() for row in rows}


def memory_in_use(record):
    """docker stats' memory, from the cgroup's own files: the usage less
    the inactive page cache."""
    path = cgroup_of(record, "memory")
    stat = dict(line.split() for line in md.read_text(os.path.join(path, "memory.stat")).splitlines())
    if os.path.exists(os.path.join(path, "memory.current")):
        return int(md.read_text(os.path.join(path, "memory.current"))) - int(stat["inactive_file"])
    return int(md.read_text(os.path.join(path, "memory.usage_in_bytes"))) - \
        int(stat["total_inactive_file"])


@root
def test_cgroup_stats_reads_what_the_cgroups_count(rootfs):
    """stats --no-stream: memory as the cgroup counts it, its limit the
    --memory given or the host's memory, tasks as started, a busy loop's
    CPU % high and an idle container's about 0; without --no-stream a new
    table each second until ^C, which ends it with no error line."""
    idle = detach_run(rootfs, "sh", "-c", "sleep 1000 & sleep 1000 & wait",
                    options=["--name", "idle", "-m", "64m"])
    busy = detach_run(rootfs, "sh", "-c", "while :; do :; done", options=["--name", "busy"])
    try:
        paths = md.Paths()
        records = {name: md.find_container(paths, name) for name in ("idle", "busy")}
        deadline = time.monotonic() + 10
        while len(cgroup_procs(records["idle"])) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        table = stats_table()
        assert set(table) == {"idle", "busy"} and table["idle"][0] == idle[:12]
        for name, row in table.items():
            used, limit = from_bytes_size(row[3]), from_bytes_size(row[5])
            expected = memory_in_use(records[name])
            assert abs(used - expected) <= max(expected * 0.05, 64 << 10), (row, expected)
            assert abs(float(row[6].rstrip("%")) - used * 100 / limit) < 0.01, row
        assert table["idle"][5] == "64MiB"
        assert table["busy"][5] == md.bytes_size(md.host_memory())
        assert table["idle"][7] == "3" and table["busy"][7] == "1"
        assert float(table["busy"][2].rstrip("%")) >= 50, table["busy"]
        assert float(table["idle"][2].rstrip("%")) < 5, table["idle"]
        assert set(stats_table("--no-trunc", "idle")) == {"idle"}
        assert stats_table("--no-trunc", "idle")["idle"][0] == idle
        stream = subprocess.Popen(MINIDOCKER + ["stats", "busy"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        assert stream.stdout.readline().startswith(b"CONTAINER ID")
        assert stream.stdout.readline().startswith(busy[:12].encode())
        assert stream.stdout.readline().startswith(b"CONTAINER ID")  # a second later
        stream.send_signal(signal.SIGINT)
        assert stream.wait(timeout=10) == 130 and stream.stderr.read() == b""
        stream.stdout.close()
        stream.stderr.close()
        assert minidocker("stop", "-t", "0", "busy").returncode == 0
        assert stats_table("busy")["busy"][2:] == ["0.00%", "0B", "/", "0B", "0.00%", "0"]
    finally:
        minidocker("rm", "-f", idle, busy)
    assert_nothing_left()


# ---------------------------------------------------------------------------
# volumes: -v's forms, named and anonymous volumes, copy-up, --mount, `volume`
# ---------------------------------------------------------------------------

def test_volume_forms_as_docker_reads_them(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    forms = [md.parse_volume(text) for text in (
        "./dir:/a", "../up:/b:ro,z", ".:/c:Z", "data:/d", "data:/e:ro,nocopy,cached", "/f",
        "/h:/g:rw,delegated,rprivate", "/h:/i:consistent")]
    assert repr(forms) == repr([
        md.Volume(str(tmp_path / "dir"), "/a", False),
        md.Volume(str(tmp_path.parent / "up"), "/b", True),
        md.Volume(str(tmp_path), "/c", False),
        md.Volume(None, "/d", False, name="data"),
        md.Volume(None, "/e", True, name="data", copy=False),
        md.Volume(None, "/f", False, name="", anonymous=True),
        md.Volume("/h", "/g", False), md.Volume("/h", "/i", False)])


@pytest.mark.parametrize("text, error", [
    ("", "expected [HOST-PATH:|NAME:]CONTAINER-PATH[:OPTIONS]"),
    ("/a:/b:ro:x", "expected [HOST-PATH:|NAME:]CONTAINER-PATH"),
    ("/data:ro", "options need HOST-PATH:CONTAINER-PATH or NAME:CONTAINER-PATH"),
    ("/a:/b:ro,rw", "only one of ro and rw may be given"),
    ("/a:/b:z,Z", "only one of z and Z may be given"),
    ("/a:/b:nocopy", "nocopy is for a volume, not a host path"),
    ("/a:/b:rshared", "propagation rshared is not supported"),
    ("/a:/b:exec", "unknown option 'exec'"),
    ("x/../..:/x", "'x/../..' is no volume name"),
    ("a/b:/x", "'a/b' is no volume name"),
    ("~/x:/y", "'~/x' is no volume name"),
    ("data:x", "the container path must be absolute"),
])
def test_bad_volume_forms(text, error):
    with pytest.raises(md.MiniDockerError, match=re.escape(error)):
        md.parse_volume(text)


def test_mount_forms_and_their_aliases(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    assert repr([md.parse_mount(text) for text in (
        "type=bind,src=.,dst=/a,ro", "type=bind,source=%s,destination=/b,readonly=false,"
        "bind-propagation=rprivate" % tmp_path, "source=vol,target=/c,volume-nocopy",
        "type=volume,dst=/d", '"type=volume","src=v2",target=/e,readonly=1')]) == repr([
        md.Volume(str(tmp_path), "/a", True), md.Volume(str(tmp_path), "/b", False),
        md.Volume(None, "/c", False, name="vol", copy=False),
        md.Volume(None, "/d", False, name="", anonymous=True),
        md.Volume(None, "/e", True, name="v2")])
    assert md.parse_mount("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1770,ro") == (
        "/t", md.TMPFS_DEFAULT_FLAGS | md.MS_RDONLY, "size=1048576,mode=1770")
    spec = parse("-v", "vv:/v", "--mount", "type=tmpfs,dst=/t", "--mount", "src=ww,dst=/w,"
                 "volume-nocopy", str(tmp_path), "sh")
    plan = [(m.kind, m.target) for m in md.plan_mounts(spec)]
    assert plan[:2] == [("copy-up", "/v"), ("fs", "/proc")]  # from the bare root: see copy_up
    assert [m for m in plan if m[1] in ("/v", "/w", "/t")] == [
        ("copy-up", "/v"), ("bind", "/v"), ("nodev", "/v"), ("bind", "/w"), ("nodev", "/w"),
        ("fs", "/t")]


@pytest.mark.parametrize("text, error", [
    ("type=bind,source=/no/such/dir,target=/x", "bind source path does not exist: /no/such/dir"),
    ("type=bind,src=../up,dst=/x", "the bind source must be an absolute path"),
    ("type=bind,target=/x", "a bind needs a source"),
    ("type=volume,target=/x,readonly", "an anonymous volume cannot be read-only"),
    ("type=nfs,target=/x", "unknown type 'nfs'"),
    ("target=/x,size=1", "unknown key 'size'"),
    ("target", "'target' must be a KEY=VALUE pair"),
    ("type=bind,src=/,dst=/x,volume-nocopy", "volume-nocopy goes only with type=volume"),
    ("type=volume,dst=/x,tmpfs-size=1m", "tmpfs-size goes only with type=tmpfs"),
    ("src=vol", "target is required"),
    ("src=vol,dst=/", "the container path must be absolute and not /"),
    ("src=a/b,dst=/x", "invalid volume name 'a/b'"),
    ("type=tmpfs,dst=/x,tmpfs-mode=rwx", "invalid value for tmpfs-mode: 'rwx'"),
    ("type=tmpfs,src=x,dst=/x", "a tmpfs takes no source"),
    ("type=bind,src=/,dst=/x,ro=maybe", "invalid value for readonly: 'maybe'"),
    ("type=bind,src=/,dst=/x,bind-propagation=rslave", "bind-propagation 'rslave' is not"),
])
def test_bad_mounts(text, error):
    with pytest.raises(md.MiniDockerError, match=re.escape(error)):
        md.parse_mount(text)


def volumes_now():
    return minidocker("volume", "ls", "-q").out.split()


@pytest.fixture
def image_with_data(rootfs, tmp_path):
    """A rootfs whose /data holds what copy-up must keep: owners, modes
    (setuid and sticky too), a symlink, a FIFO, an extended attribute."""
    path = str(tmp_path / "withdata")
    subprocess.run(["cp", "-a", rootfs, path], check=True)
    data = os.path.join(path, "data")
    os.makedirs(os.path.join(data, "sub"))
    with open(os.path.join(data, "sub/file"), "w") as handle:
        handle.write("from the image\n")
    os.chown(data, 1000, 50)
    os.chmod(data, 0o1770)
    os.chown(os.path.join(data, "sub/file"), 1000, 1000)
    os.chmod(os.path.join(data, "sub/file"), 0o4750)
    os.symlink("/etc/passwd", os.path.join(data, "link"))
    os.mkfifo(os.path.join(data, "fifo"))
    os.setxattr(os.path.join(data, "sub/file"), "user.origin", b"image")
    return path


@root
def test_named_volume_is_copied_up_once_and_keeps_what_runs_wrote(image_with_data):
    listing = "stat -c '%n %u %g %a %F' /data /data/sub/file /data/fifo; readlink /data/link"
    try:
        first = sh(image_with_data, listing + "; echo kept > /data/new; rm /data/sub/file",
                   options=["-v", "store:/data"], check_clean=False)
        assert first.returncode == 0, first.err
        assert first.out == ("/data 1000 50 1770 directory\n/data/sub/file 1000 1000 4750 "
                             "regular file\n/data/fifo 0 0 644 fifo\n/etc/passwd\n")
        data = os.path.join(os.environ["MINIDOCKER_ROOT"], "lib/volumes/store/_data")
        assert os.listdir(os.path.join(data, "sub")) == []
        # A second run finds the volume full: no copy again, and read-only.
        second = sh(image_with_data, "cat /data/new; ls /data/sub; touch /data/x",
                    options=["-v", "store:/data:ro"], check_clean=False)
        assert second.out == "kept\n" and "Read-only file system" in second.err
        assert volumes_now() == ["store"]
        os.unlink(os.path.join(data, "new"))  # empty again: copied up again, xattr too
        os.unlink(os.path.join(data, "fifo"))
        os.unlink(os.path.join(data, "link"))
        os.rmdir(os.path.join(data, "sub"))
        third = sh(image_with_data, "cat /data/sub/file", options=["-v", "store:/data"],
                   check_clean=False)
        assert third.out == "from the image\n"
        assert os.getxattr(os.path.join(data, "sub/file"), "user.origin") == b"image"
    finally:
        minidocker("volume", "rm", "store")
    assert_nothing_left()


@root
def test_anonymous_volumes_go_with_rm_v_and_run_rm(image_with_data):
    """--rm and rm -v remove the container's anonymous volumes, never a
    named one; a volume in use (running or stopped container) is not
    removed by volume rm, -f or not; prune takes only anonymous ones."""
    img = image_with_data
    assert sh(img, "cat /data/sub/file", options=["-v", "/data"]).out == "from the image\n"
    assert volumes_now() == []  # run --rm took it
    try:
        kept = minidocker("run", "--network=none", "--name", "keeper", "-v", "/data",
                          "-v", "named:/n", "--mount", "type=volume,dst=/m", img, "true")
        assert kept.returncode == 0, kept.err
        mounts = json.loads(minidocker("inspect", "keeper").out)[0]["Mounts"]
        assert [(m["Type"], m["Destination"], m["RW"]) for m in mounts] == [
            ("volume", "/data", True), ("volume", "/n", True), ("volume", "/m", True)]
        anonymous = [mounts[0]["Name"], mounts[2]["Name"]]
        assert all(re.fullmatch("[0-9a-f]{64}", name) for name in anonymous)
        assert sorted(volumes_now()) == sorted(anonymous + ["named"])
        inspected = json.loads(minidocker("volume", "inspect", anonymous[0], "named").out)
        assert [(v["Name"], v["Driver"], v["Scope"], v["Labels"], v["Mountpoint"])
                for v in inspected] == [
            (anonymous[0], "local", "local", {"com.docker.volume.anonymous": ""},
             mounts[0]["Source"]), ("named", "local", "local", {}, mounts[1]["Source"])]
        for flags in ([], ["-f"]):
            refused = minidocker("volume", "rm", *flags, "named")
            assert (refused.returncode, refused.out, refused.err) == (
                125, "", "minidocker: error: volume named is in use by container %s\n"
                % json.loads(minidocker("inspect", "keeper").out)[0]["Id"][:12])
        with started(img, "sh", "-c", "echo up; sleep 60", options=["-v", "busy:/b"]) as proc:
            assert proc.stdout.readline() == b"up\n"
            refused = minidocker("volume", "rm", "-f", "busy")
            assert refused.returncode == 125 and "is in use by container" in refused.err
        assert minidocker("volume", "rm", "busy").out == "busy\n"
        assert minidocker("rm", "-v", "keeper").returncode == 0
        assert volumes_now() == ["named"]
        assert minidocker("volume", "prune", "-f").out == "Total reclaimed space: 0B\n"
        assert minidocker("volume", "prune", "-a", "-f").out.startswith(
            "Deleted Volumes:\nnamed\n\nTotal reclaimed space: ")
    finally:
        minidocker("rm", "-f", "-v", "keeper")
        minidocker("volume", "rm", "-f", "named", "busy")
    assert_nothing_left()


@root
def test_mount_flag_and_relative_binds(rootfs, tmp_path):
    here = tmp_path / "here"
    (here / "sub").mkdir(parents=True)
    (here / "sub/in").write_text("relative\n")
    result = subprocess.run(
        MINIDOCKER + ["run", "--rm", "--network=none", "-v", "./sub:/rel:ro,z",
                      "-v", "../here:/up", "--mount", "type=bind,src=.,dst=/dot,readonly",
                      "--mount", "type=volume,dst=/home,volume-nocopy",
                      "--mount", "type=tmpfs,dst=/t,tmpfs-size=1m,tmpfs-mode=1770",
                      rootfs, "sh", "-c", "cat /rel/in /up/sub/in /dot/sub/in; ls -A /home; "
                      "touch /dot/x; grep ' /t ' /proc/self/mountinfo"],
        cwd=str(here), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=60)
    out = result.stdout.decode()
    assert out.startswith("relative\nrelative\nrelative\n"), result.stderr
    assert "size=1024k,mode=1770" in out and "nosuid,nodev,noexec" in out
    assert "Read-only file system" in result.stderr.decode()
    assert_nothing_left()  # the volume-nocopy one was anonymous: gone with --rm


@root
@pytest.mark.parametrize("args, message", [
    (["volume", "create", ".."], "invalid volume name '..'"),
    (["volume", "create", "a/b"], "invalid volume name 'a/b'"),
    (["volume", "create", "../containers"], "invalid volume name '../containers'"),
    (["volume", "inspect", "../../lib"], "invalid volume name '../../lib'"),
    (["volume", "inspect", "nosuch"], "no such volume: nosuch"),
    (["volume", "rm", "nosuch"], "no such volume: nosuch"),
    (["volume", "rm", "-f", ".."], "invalid volume name '..'"),
    (["run", "-v", "x/../..:/x", "/", "true"], "'x/../..' is no volume name"),
    (["run", "--mount", "src=..,dst=/x", "/", "true"], "invalid volume name '..'"),
    (["run", "--mount", "type=bind,src=/no/such,dst=/x", "/", "true"],
     "bind source path does not exist: /no/such"),
    (["run", "-v", "/tmp:/x", "--mount", "type=tmpfs,dst=/x/", "/", "true"],
     "duplicate mount point: /x"),
])
def test_bad_volume_input(args, message, state):
    bad(args, message)


@root
def test_a_run_that_cannot_start_leaves_no_volume(rootfs):
    bad(["run", "-u", "bob", "-v", "fresh:/x", "-v", "/y", rootfs, "id"], "unable to find user bob")
    assert volumes_now() == []


@root
def test_volume_rm_f_of_a_missing_volume_and_creates_that_race(state):
    assert minidocker("volume", "rm", "-f", "never").out == "never\n"
    # What a creator killed before its rename leaves (its pid is gone: ours
    # is reused only after a wrap of pid_max), taken by the next create.
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.makedirs(os.path.join(state, "lib/volumes/.raced.%d.0a1b2c3d.tmp/_data" % dead.pid))
    racers = [subprocess.Popen(MINIDOCKER + ["volume", "create", "raced"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE) for _ in range(6)]
    try:
        assert [p.communicate(timeout=60) for p in racers] == [(b"raced\n", b"")] * 6
        assert volumes_now() == ["raced"]
        assert os.listdir(os.path.join(state, "lib/volumes")) == ["raced"]  # no temporary left
        made = minidocker("volume", "create")
        assert re.fullmatch("[0-9a-f]{64}\n", made.out)
    finally:
        minidocker("volume", "rm", "raced", made.out.strip())
    assert_nothing_left()


@root
def test_escape_volume_copy_up_stays_in_the_rootfs(hostile, tmp_path):
    """The image points /data at /etc (absolute), /up at the host's /etc
    through `..`s, /kernel at /proc/self, and /links holds links to the
    host's secrets: copy-up must copy the image's /etc and its empty /proc,
    and the links as links."""
    os.symlink("/etc", os.path.join(hostile, "data"))
    os.symlink("/proc/self", os.path.join(hostile, "kernel"))
    os.symlink("../../../../../../../../../etc", os.path.join(hostile, "up"))
    os.makedirs(os.path.join(hostile, "links"))
    os.symlink("/etc/shadow", os.path.join(hostile, "links/shadow"))
    os.symlink("../../../../../../../../etc/hostname", os.path.join(hostile, "links/name"))
    volumes = os.path.join(os.environ["MINIDOCKER_ROOT"], "lib/volumes")
    try:
        result = sh(hostile, "true", options=["-v", "etc1:/data", "-v", "etc2:/up",
                                              "-v", "links:/links", "-v", "kernel:/kernel"],
                    check_clean=False)
        assert result.returncode == 0, result.err
        image_etc = sorted(os.listdir(os.path.join(hostile, "etc")))
        for name in ("etc1", "etc2"):
            copied = os.path.join(volumes, name, "_data")
            assert sorted(os.listdir(copied)) == image_etc
            with open(os.path.join(copied, "passwd")) as handle:
                assert "alice" in handle.read()  # the image's, not the host's
        links = os.path.join(volumes, "links/_data")
        assert sorted(os.listdir(links)) == ["name", "shadow"]
        assert all(os.path.islink(os.path.join(links, n)) for n in ("name", "shadow"))
        assert os.listdir(os.path.join(volumes, "kernel/_data")) == []
    finally:
        minidocker("volume", "rm", "etc1", "etc2", "links", "kernel")
    assert_nothing_left()


# ---------------------------------------------------------------------------
# 12. run -d: the lean monitor, log rotation, --since and --until
# ---------------------------------------------------------------------------

def test_log_options_are_read_as_dockers_drivers_read_them():
    """max-size in go-units' decimal sizes (10k is 10,000 bytes, its i and b
    read and ignored), -1 or absent for none; max-file a whole number. The
    defaults are Docker's: local rotates at 20m and keeps 5 files (one
    without max-size), json-file never rotates; compress=false is taken."""
    assert md.parse_log_options("local", []) == ("local", 20 * 10**6, 5)
    assert md.parse_log_options("local", ["max-size=1m", "compress=false"]) == \
        ("local", 10**6, 5)
    assert md.parse_log_options("local", ["max-size=-1"]) == ("local", -1, 1)
    assert md.parse_log_options("local", ["max-file=2"]) == ("local", 20 * 10**6, 2)
    assert md.parse_log_options("json-file", []) == ("json-file", -1, 1)
    assert md.parse_log_options("none", []) == ("none", -1, 1)
    for text, size in (("10k", 10000), ("10KiB", 10000), ("1.5m", 1500000), ("2g", 2 * 10**9),
                       ("100", 100), ("64 MB", 64 * 10**6), ("-1", -1)):
        assert md.parse_log_options("json-file", ["max-size=" + text]) == ("json-file", size, 1)
    assert md.parse_log_options("json-file", ["max-file=3", "max-size=1m"]) == \
        ("json-file", 10**6, 3)


@root
@pytest.mark.parametrize("args, message", [
    (["--log-opt", "max-size=0"], "max-size must be a positive number"),
    (["--log-opt", "max-size=10x"], "invalid max-size '10x': expected a size such as 10m"),
    (["--log-opt", "max-file=0"], "max-file cannot be less than 1"),
    (["--log-opt", "max-size=1m", "--log-opt", "max-file=two"], "invalid max-file 'two'"),
    (["--log-driver", "json-file", "--log-opt", "max-file=3"], "max-file 3 needs max-size"),
    (["--log-opt", "max-size=-1", "--log-opt", "max-file=3"], "max-file 3 needs max-size"),
    (["--log-opt", "compress=true"], "invalid compress 'true': minidocker does not compress"),
    (["--log-driver", "json-file", "--log-opt", "labels=a"],
     "unknown log opt 'labels' for json-file log driver (minidocker knows max-size, max-file"),
    (["--log-opt", "tag=x"], "unknown log opt 'tag' for local log driver"),
    (["--log-opt", "max-size"], "invalid --log-opt 'max-size': expected KEY=VALUE"),
    (["--log-driver", "syslog"], "unknown log driver 'syslog'"),
    (["--log-driver", "none", "--log-opt", "max-size=1m"], "invalid logging opts for driver none"),
])
def test_bad_log_options(args, message, state):
    bad(["run", "-d"] + args + ["/", "sh"], message)


def test_log_times_take_dockers_forms():
    """--since and --until: a duration before now (Go's), RFC 3339 with a
    zone, an offset or none (the local one), a date or a prefix of a time,
    Unix seconds with or without a fraction."""
    now = 1714557600 * 10**9  # 2024-05-01T10:00:00Z
    local = time.localtime(1714557600).tm_gmtoff * 10**9

    def parsed(text):
        return md.parse_log_time(text, "--since", now)

    assert parsed("10m") == now - 600 * 10**9
    assert parsed("1h30m") == parsed("1.5h") == now - 5400 * 10**9
    assert parsed("250ms") == now - 250 * 10**6
    assert parsed("-1m") == now + 60 * 10**9
    assert parsed("0") == 0
    assert parsed("1714557600") == parsed("2024-05-01T10:00:00Z") == now
    assert parsed("1714557600.5") == parsed("2024-05-01T10:00:00.5Z") == now + 5 * 10**8
    assert parsed("2024-05-01T12:00:00.000000001+02:00") == now + 1
    assert parsed("2024-05-01T10Z") == parsed("2024-05-01T10:00Z") == now
    assert parsed("2024-05-01Z") == now - 10 * 3600 * 10**9
    assert parsed("2024-05-01T10:00") == parsed("2024-05-01T10:00:00") == now - local
    assert parsed("2024-05-01") == now - 10 * 3600 * 10**9 - local
    for text in ("yesterday", "2024-13-01", "2024-05-01T24:00Z", "10 m", "1d", "1.2.3", ""):
        with pytest.raises(md.MiniDockerError, match="invalid --since"):
            parsed(text)


@root
def test_bad_log_times(state):
    bad(["logs", "--since", "yesterday", "nosuch"], "invalid --since 'yesterday': expected an "
        "RFC 3339 time")
    bad(["logs", "--until", "2024-13-01", "nosuch"], "invalid --until '2024-13-01': month")
    bad(["logs", "--tail", "many", "nosuch"], "invalid value 'many' for --tail: not a number")


def wait_for_output(proc, expected, timeout=30):
    """Read a pipe of `proc` until `expected` has come; what came."""
    seen = b""
    deadline = time.monotonic() + timeout
    while expected not in seen:
        assert time.monotonic() < deadline, seen
        if select.select([proc.stdout], [], [], 1)[0]:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, seen
            seen += chunk
    return seen


@root
@pytest.mark.parametrize("driver", ["local", "json-file"])
def test_log_rotation_in_a_real_container(rootfs, tmp_path, driver):
    """--log-opt max-size=2k --log-opt max-file=5: 300 numbered lines of 50
    bytes (21 KB as JSON, 15 as local's records), written after `logs -f`
    has begun, in bursts. Left on disk: LOG and LOG.1 to .4 (container.log,
    or json.log), each rotated file ending with the entry that took it to
    2,000 bytes (decimal, as Docker's k). logs prints exactly the lines the
    files keep, oldest first: the last ones, up to 300, no line twice, none
    missing at a rotation. logs -f saw every line, across every rotation
    (the file it read renamed away under it)."""
    sync = tmp_path / "sync"
    sync.mkdir()
    pad = "." * 40
    script = ('echo ready; while [ ! -e /sync/go ]; do sleep 0.05; done; i=1; '
              'while [ $i -le 300 ]; do echo "line $i %s"; ' % pad +
              '[ $((i % 10)) -eq 0 ] && sleep 0.1; i=$((i + 1)); done; exit 0')
    started = minidocker("run", "-d", "--network=none", "--log-driver", driver, "--log-opt",
                         "max-size=2k", "--log-opt", "max-file=5", "-v", "%s:/sync" % sync,
                         rootfs, "sh", "-c", script)
    cid = started.out.strip()
    assert started.returncode == 0, started.err
    follow = subprocess.Popen(MINIDOCKER + ["logs", "-f", cid], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        first = wait_for_output(follow, b"ready\n")
        (sync / "go").touch()
        rest, err = follow.communicate(timeout=120)
        assert (first + rest).decode().splitlines() == \
            ["ready"] + ["line %d %s" % (i, pad) for i in range(1, 301)], err
        assert minidocker("wait", cid).out == "0\n"
        layer = md.Paths().layer(cid)
        name = md.LOG_FILES[driver]
        names = ["%s.%d" % (name, n) for n in range(4, 0, -1)] + [name]
        assert sorted(n for n in os.listdir(layer) if n.endswith(".log") or ".log." in n) \
            == sorted(names + [name + ".lock"])
        files = [logged(open(os.path.join(layer, name), "rb").read(), driver == "local")
                 for name in names]
        for entries in files[:-1]:
            size = sum(len(entry[0]) for entry in entries)
            assert size - len(entries[-1][0]) < 2000 <= size
        kept = [line for entries in files for entry in entries for line in entry[3]]
        logs = minidocker("logs", cid)
        assert logs.out == "".join(kept) and logs.err == ""
        numbers = [int(line.split()[1]) for line in logs.out.splitlines()]
        assert numbers == list(range(301 - len(numbers), 301)) and len(numbers) > 50
        assert minidocker("logs", "--tail", "3", cid).out == \
            "line 298 {0}\nline 299 {0}\nline 300 {0}\n".format(pad)
        for every in (["--tail", "all"], ["--tail", "-1"], ["--tail=-5"]):  # Docker's "all"
            assert minidocker("logs", *every, cid).out == logs.out
        [info] = json.loads(minidocker("inspect", cid).out)
        assert info["HostConfig"]["LogConfig"] == {"Type": driver, "Config": {
            "max-size": "2k", "max-file": "5"}}
        assert info["LogPath"] == (os.path.join(layer, "json.log") if driver == "json-file"
                                   else "")
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
        minidocker("rm", "-f", cid)
    assert_nothing_left()


def wait_for_the_lean_monitor(cid, timeout=60):
    """Until the monitor of `cid` is the lean Python, copying: a line's time
    is when the monitor reads it, and the lean one takes a moment to start
    (seconds in the emulated cgroup-v2 VM)."""
    owner = md.find_container(md.Paths(), cid)["owner"]
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/%d/cmdline" % owner, "rb") as handle:
            lean = handle.read().split(b"\0")[1:2] == [b"-IS"]
        if lean and md.read_text("/proc/%d/comm" % owner) == "md:[0:PARENT]\n":
            return
        assert time.monotonic() < deadline
        time.sleep(0.05)


@root
@pytest.mark.parametrize("driver", ["local", "json-file"])
def test_logs_since_and_until(rootfs, tmp_path, driver):
    """--since and --until pick the lines by the times the log gives them,
    whatever form the time is written in: RFC 3339 in UTC, at an offset, or
    without a zone (the local time), Unix seconds, or a time ago."""
    script = ("while [ ! -e /sync/go ]; do sleep 0.05; done; "
              "echo one; sleep 1.2; echo two; sleep 1.2; echo three")
    cid = minidocker("run", "-d", "--network=none", "--log-driver", driver, "-v",
                     "%s:/sync" % tmp_path, rootfs, "sh", "-c", script).out.strip()
    try:
        wait_for_the_lean_monitor(cid)
        (tmp_path / "go").touch()
        assert minidocker("wait", cid).out == "0\n"
        with open(md.log_path(md.Paths(), cid, driver), "rb") as handle:
            entries = logged(handle.read(), driver == "local")
        assert [entry[3] for entry in entries] == [["one\n"], ["two\n"], ["three\n"]]
        stamp = entries[1][2]  # of "two"
        seconds = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
        fraction = stamp[19:-1]  # ".123456789"

        def logs(*flags):
            result = minidocker("logs", *flags, cid)
            assert result.returncode == 0, result.err
            return result.out

        assert logs("--since", stamp) == "two\nthree\n"
        assert logs("--until", stamp) == "one\ntwo\n"
        assert logs("--since", stamp, "--until", stamp) == "two\n"
        assert logs("--since", "%d%s" % (seconds, fraction)) == "two\nthree\n"
        assert logs("--since", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds + 5400))
                    + fraction + "+01:30") == "two\nthree\n"
        assert logs("--until", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))
                    + fraction) == "one\ntwo\n"
        assert logs("--since", "1h") == "one\ntwo\nthree\n"
        assert logs("--until", "1h") == ""
        assert logs("--tail", "1", "--until", stamp) == "two\n"
        assert logs("-f", "--since", stamp) == "two\nthree\n"  # the container has ended
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_a_detached_container_without_its_own_pids_ends_with_its_init(rootfs, tmp_path):
    """--pid host: a process the init leaves behind holds the log's pipes
    open, and nothing ends it with the init. The container ends all the
    same when its init does, as run's: the monitor copies what the pipes
    hold and goes on to the end, which kills what is left in the cgroups
    (wait, stop and rm -f used to hang on it)."""
    cid = detached(rootfs, "--pid", "host", "-v", "%s:/sync" % tmp_path, command=(
        "sh", "-c", "sleep 1000 & echo $! > /sync/pid; echo bye; exit 3"))
    try:
        waited = minidocker("wait", cid, timeout=30)
        assert waited.out == "3\n", waited.err
        leftover = int((tmp_path / "pid").read_text())
        with contextlib.suppress(FileNotFoundError):
            assert "sleep" not in md.read_text("/proc/%d/cmdline" % leftover)
        assert minidocker("logs", cid).out == "bye\n"
    finally:
        minidocker("rm", "-f", cid)
    # One left writing, faster than the monitor rotates a small log: the
    # monitor copies what the pipe held, and no more.
    cid = detached(rootfs, "--pid", "host", "--log-opt", "max-size=1k", "--log-opt",
                   "max-file=2", command=("sh", "-c", "yes & sleep 0.5; exit 4"))
    try:
        waited = minidocker("wait", cid, timeout=30)
        assert waited.out == "4\n", waited.err
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
@pytest.mark.parametrize("driver", ["local", "json-file"])
def test_a_container_cannot_forge_log_entries(rootfs, tmp_path, driver):
    """Output that looks like the log's own form (a local record's header
    with a length running past the end, a stderr record, a JSON entry),
    with NUL bytes, a \\r, bytes not UTF-8, a line of 40,000 bytes and no
    newline at the end: logs gives the container's stdout back byte for
    byte, and on stderr nothing, which it never wrote to. (json-file keeps
    text: its bytes not UTF-8 come back as U+FFFD, as Docker's do.)"""
    stamp = b"2026-11-30T20:00:00.000000000Z"
    payload = b"".join([
        b"stdout %s 99999999\n" % stamp, b"stderr %s 5\nforged\n" % stamp,
        b'{"log":"forged\\n","stream":"stderr","time":"%s"}\n' % stamp,
        b"nul\0byte\r\n", b"\xff\xfe not utf-8\n", b"x" * 40000 + b"\n", b"no end"])
    (tmp_path / "payload").write_bytes(payload)
    cid = detached(rootfs, "--log-driver", driver, "-v", "%s:/sync:ro" % tmp_path,
                   command=("cat", "/sync/payload"))
    try:
        assert minidocker("wait", cid).out == "0\n"
        logs = subprocess.run(MINIDOCKER + ["logs", cid], capture_output=True, timeout=60)
        expected = payload if driver == "local" else \
            payload.decode("utf-8", "replace").encode()
        assert (logs.returncode, logs.stdout, logs.stderr) == (0, expected, b"")
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_log_driver_none_keeps_no_log(rootfs):
    cid = minidocker("run", "-d", "--network=none", "--log-driver", "none", rootfs, "sh", "-c",
                     "echo hidden; exit 4").out.strip()
    try:
        assert minidocker("wait", cid).out == "4\n"
        assert not any(n.endswith(".log") for n in os.listdir(md.Paths().layer(cid)))
        refused = minidocker("logs", cid)
        assert (refused.returncode, refused.err) == (125, "minidocker: error: container %s keeps "
                                                     "no log: it runs with --log-driver none\n"
                                                     % cid[:12])
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


def monitor_of(cid):
    record = md.find_container(md.Paths(), cid)
    return record["owner"], record["pid"]


def assert_lean(owner, cid):
    """The monitor becomes the lean one a moment after the record says the
    container runs."""
    deadline = time.monotonic() + 20
    while True:
        with open("/proc/%d/cmdline" % owner, "rb") as handle:
            argv = handle.read().split(b"\0")[:-1]
        if argv[1:2] == [b"-IS"] and argv[2].startswith(b"/proc/self/fd/") \
                and argv[3:] == [cid.encode()]:
            return
        assert time.monotonic() < deadline, argv
        time.sleep(0.05)


@root
def test_a_restart_by_policy_or_by_start_is_kept_by_the_lean_monitor(rootfs):
    """A restart policy's next run is begun by the monitor's end (full
    minidocker), which then becomes the lean monitor again in the same
    process: the record's owner keeps its pid. start and restart end in
    the lean monitor too."""
    script = "[ -e /again ] && exec sleep 1000; touch /again; echo first; exit 1"
    cid = minidocker("run", "-d", "--network=none", "--restart", "on-failure", rootfs,
                     "sh", "-c", script).out.strip()
    try:
        owner, first_init = monitor_of(cid)
        deadline = time.monotonic() + 20
        while md.find_container(md.Paths(), cid).get("restart_count", 0) < 1 \
                or md.find_container(md.Paths(), cid)["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        again, init = monitor_of(cid)
        assert again == owner and init != first_init
        assert_lean(owner, cid)
        for verb in (["restart", "-t", "0"], ["stop", "-t", "0"], ["start"]):
            assert minidocker(*verb, cid).returncode == 0
        owner, _ = monitor_of(cid)
        assert_lean(owner, cid)
        assert minidocker("logs", cid).out == "first\n"
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


@root
def test_the_lean_monitor_keeps_every_duty(rootfs):
    """Once the command runs, the monitor is a lean Python (-IS, its
    program in a memfd, none of minidocker's modules), which still does
    what the monitor did: it passes on a signal it receives to the init;
    the exit code, the end and an OOM kill are recorded; --rm removes
    everything; and a kill -9 of it ends the container, whose remains the
    next command reclaims."""
    script = 'trap "exit 3" TERM; echo ready; while :; do sleep 0.05; done'
    cid = minidocker("run", "-d", "--network=none", rootfs, "sh", "-c", script).out.strip()
    try:
        owner, _ = monitor_of(cid)
        deadline = time.monotonic() + 20
        while minidocker("logs", cid).out != "ready\n":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with open("/proc/%d/cmdline" % owner, "rb") as handle:
            argv = handle.read().split(b"\0")[:-1]
        assert argv[1:2] == [b"-IS"] and argv[2].startswith(b"/proc/self/fd/") \
            and argv[3:] == [cid.encode()], argv
        assert md.read_text("/proc/%d/comm" % owner) == "md:[0:PARENT]\n"
        os.kill(owner, signal.SIGTERM)  # passed on to the init, whose trap exits 3
        assert minidocker("wait", cid).out == "3\n"
        [shown] = json.loads(minidocker("inspect", cid).out)
        assert (shown["State"]["Status"], shown["State"]["ExitCode"]) == ("exited", 3)
        assert shown["State"]["FinishedAt"] > shown["State"]["StartedAt"]
    finally:
        minidocker("rm", "-f", cid)
    cid = minidocker("run", "-d", "--network=none", "-m", "32m", rootfs, "dd", "if=/dev/zero",
                     "of=/dev/null", "bs=64M", "count=1").out.strip()
    try:
        assert minidocker("wait", cid).out == "137\n"
        assert json.loads(minidocker("inspect", cid).out)[0]["State"]["OOMKilled"] is True
    finally:
        minidocker("rm", "-f", cid)
    cid = minidocker("run", "-d", "--rm", "--network=none", rootfs, "true").out.strip()
    deadline = time.monotonic() + 20
    while any(record["id"] == cid for record in records_now()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert_nothing_left()
    cid = minidocker("run", "-d", "--network=none", rootfs, "sleep", "60").out.strip()
    try:
        owner, init = monitor_of(cid)
        os.kill(owner, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while md.process_start_time(init) is not None:  # the parent-death signal
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shown = minidocker("ps", "-a", "--format", "{{.ID}} {{.Status}}").out
        assert re.search(r"^%s Exited \(\?\)$" % cid[:12], shown, re.M)
    finally:
        minidocker("rm", "-f", cid)
    assert_nothing_left()


# ---------------------------------------------------------------------------
# The OCI runtime: runc's command line over a bundle
# ---------------------------------------------------------------------------

@pytest.fixture
def runc_link(tmp_path):
    """minidocker under a name ending in "runc", as callers install it."""
    link = tmp_path / "bin" / "minidocker-runc"
    link.parent.mkdir()
    link.symlink_to(os.path.join(HERE, "minidocker.py"))
    return str(link)


@pytest.fixture
def bundle(tmp_path, rootfs):
    """A bundle of our own: a copy of the busybox rootfs (a bundle's root is
    written to directly) and minidocker's `spec`, the process not on a
    terminal."""
    path = tmp_path / "bundle"
    path.mkdir()
    shutil.copytree(rootfs, str(path / "rootfs"), symlinks=True)
    subprocess.run(MINIDOCKER + ["runc", "spec", "--bundle", str(path)], check=True)
    edit_config(str(path), lambda c: c["process"].update(terminal=False))
    return str(path)


def edit_config(bundle, change):
    path = os.path.join(bundle, "config.json")
    with open(path) as handle:
        config = json.load(handle)
    change(config)
    with open(path, "w") as handle:
        json.dump(config, handle)
    return config


INSTALLED_RUNC = []  # set by the oci_root fixture: the installed minidocker-runc


def oci(root, *words, runtime=None, timeout=60):
    """minidocker-runc --root ROOT WORDS; CompletedProcess with .out, .err.
    Its output goes to files, not pipes: a created container keeps the
    descriptors it was given, as conmon's are kept, after create returns.
    Through `runtime` (a link to the single file), else the installed link
    (its bytecode compiled once, where the single file is compiled at each
    start: 135 ms on the host, ten times that in the cgroup-v2 VM), else
    `minidocker.py runc`."""
    command = ([sys.executable, runtime] if runtime else INSTALLED_RUNC[:1] or
               MINIDOCKER + ["runc"])
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        result = subprocess.run(command + ["--root", root] + list(words), stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL, timeout=timeout)
        out.seek(0)
        err.seek(0)
        result.out, result.err = out.read().decode(), err.read().decode()
    return result


def assert_no_oci_left(root):
    assert not os.path.exists(root) or os.listdir(root) == [], os.listdir(root)
    assert leftover_cgroups() == []


@pytest.fixture(scope="session")
def installed_runc(installed_minidocker):
    """The minidocker-runc link of the session's install
    (installed_minidocker): what oci() runs."""
    INSTALLED_RUNC[:] = [os.path.join(os.path.dirname(MINIDOCKER[0]), "minidocker-runc")]
    yield INSTALLED_RUNC[0]
    del INSTALLED_RUNC[:]


@pytest.fixture
def oci_root(tmp_path, installed_runc):
    """A --root of the test's own; what a failed test left there is
    deleted, so that the next test starts clean."""
    root = str(tmp_path / "state")
    yield root
    for name in os.listdir(root) if os.path.isdir(root) else []:
        oci(root, "delete", "--force", name)


OCI_PROBE = r"""
id; grep -E '^(Cap|NoNewPrivs|Seccomp:|Groups)' /proc/self/status
ulimit -Sn; ulimit -Hn; umask; pwd; hostname; env | sort
awk '{ for (i = 7; $i != "-"; i++); print $5, $6, $(i + 1) }' /proc/self/mountinfo | sort
cat /proc/self/cgroup | sed 's/:\/.*//' | sort
"""


def the_same_under_runc(tmp_path, oci_root, bundle, name, runc_link):
    """The bundle run by runc, then by minidocker-runc: their output, which
    must be the same."""
    reference = subprocess.run(["runc", "--root", str(tmp_path / "runc"), "run", "--bundle",
                                bundle, "mdtest-ref-%d" % os.getpid()], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert reference.returncode == 0, reference.stderr
    ours = oci(oci_root, "run", "--bundle", bundle, name, runtime=runc_link)
    assert ours.returncode == 0, ours.err
    assert ours.out == reference.stdout
    return ours.out


@root
def test_oci_the_same_bundle_reads_the_same_under_runc(tmp_path, oci_root, bundle, runc_link):
    """runc itself is the reference: one bundle, `runc spec`'s config with
    a user, groups, a umask, rlimits, capabilities in all five sets (one
    ambient that is inheritable too), an extra mount and a host name, run
    by runc and by minidocker-runc, prints the same identity, capability
    sets, no_new_privs, seccomp mode, limits, cwd, environment, mounts
    (point, flags, type) and cgroup hierarchies."""
    os.remove(os.path.join(bundle, "config.json"))
    subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "probe.sh").write_text(OCI_PROBE)
    probe.chmod(0o755)

    def change(config):
        process = config["process"]
        process.update(terminal=False, args=["/bin/sh", "/probe/probe.sh"], cwd="/home/alice",
                       env=process["env"] + ["FOO=bar baz"])
        process["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [50, 10], "umask": 0o027}
        process["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1000}]
        caps = process["capabilities"]
        caps["inheritable"] = ["CAP_KILL"]
        caps["ambient"] = ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
        config["hostname"] = "probe"
        config["mounts"] += [
            {"destination": "/probe", "type": "bind", "source": str(probe),
             "options": ["rbind", "ro", "nosuid"]},
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
             "options": ["nodev", "size=1m"]}]
    edit_config(bundle, change)
    ours = the_same_under_runc(tmp_path, oci_root, bundle, "probe", runc_link)
    assert "uid=1000(alice) gid=1000(alice) groups=10(wheel),50(staff)" in ours
    assert "CapAmb:\t0000000000000020\n" in ours  # CAP_KILL: permitted and inheritable
    assert_no_oci_left(oci_root)


@root
def test_oci_create_waits_for_start_and_delete_takes_everything(tmp_path, oci_root, bundle, runc_link):
    """create leaves the process at its last step before execve: state
    says created with the pid the --pid-file holds, and the command has not
    run; start lets it run (running, its output); kill ends it (stopped,
    pid 0); delete removes the state and the cgroups. run passes the exit
    code on and deletes the container."""
    root = oci_root
    edit_config(bundle, lambda c: c["process"].update(
        args=["/bin/sh", "-c", "echo ran > /ran; exec sleep 60"]))
    pid_file = tmp_path / "pid"
    created = oci(root, "create", "--bundle", bundle, "--pid-file", str(pid_file), "box",
                  runtime=runc_link)
    assert created.returncode == 0, created.err
    state = json.loads(oci(root, "state", "box").out)
    assert state["status"] == "created" and state["pid"] == int(pid_file.read_text())
    assert state["bundle"] == bundle and state["ociVersion"].startswith("1.")
    ran = os.path.join(bundle, "rootfs", "ran")
    time.sleep(0.2)
    assert not os.path.exists(ran)
    assert "box" in oci(root, "list", "-q").out.split()
    assert oci(root, "start", "box").returncode == 0
    deadline = time.monotonic() + 10
    while not os.path.exists(ran) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert json.loads(oci(root, "state", "box").out)["status"] == "running"
    again = oci(root, "start", "box")
    assert again.returncode == 1 and "already" in again.err
    busy = oci(root, "delete", "box")
    assert busy.returncode == 1 and "not stopped: running" in busy.err
    assert oci(root, "kill", "box", "KILL").returncode == 0
    deadline = time.monotonic() + 10
    while json.loads(oci(root, "state", "box").out)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert json.loads(oci(root, "state", "box").out)["pid"] == 0
    assert oci(root, "delete", "box").returncode == 0
    gone = oci(root, "state", "box")
    assert gone.returncode == 1 and gone.err.count("\n") == 1 and "does not exist" in gone.err
    edit_config(bundle, lambda c: c["process"].update(args=["/bin/sh", "-c", "exit 7"]))
    assert oci(root, "run", "--bundle", bundle, "seven").returncode == 7
    assert_no_oci_left(root)


def test_lean_runc_takes_only_the_plain_forms(tmp_path):
    """The lean runc verbs, run alone as the launcher runs them: anything
    but runc's start and delete, with --root, --log and --log-format at
    most, of a container it can read, is minidocker's (None)."""
    lean = {"__name__": "lean"}
    exec(md.lean_program(*md.LEAN_RUNC), lean)
    assert md.RUNC_ID == md.ASCII_ALNUM + "_+-."  # (written out there, to run alone)
    root = str(tmp_path)
    for argv in (["minidocker", "ps"], ["minidocker", "start", "x"],
                 ["minidocker-runc", "--root", "", "start", "x"],
                 ["minidocker-runc", "--debug", "--root", root, "start", "x"],
                 ["minidocker-runc", "--root", root, "start", "x", "y"],
                 ["minidocker-runc", "--root", root, "kill", "x"],
                 ["minidocker-runc", "--root", root, "delete", "--now", "x"],
                 ["minidocker-runc", "--root", root, "start", "../x"],
                 ["minidocker-runc", "--root", root, "start", ".."],
                 ["minidocker-runc", "--root"], ["minidocker", "runc", "--root=%s" % root,
                                                 "delete", "-f", "nosuch"]):
        assert lean["lean_runc"](argv) is None, argv
    (tmp_path / "bad").mkdir()
    for text in ("{", '{"pid": 1}', '{"pid": "1", "cgroups": []}', '[]'):
        (tmp_path / "bad" / "state.json").write_text(text)
        assert lean["lean_runc"](["minidocker-runc", "--root", root, "delete", "bad"]) is None
    log = tmp_path / "log"
    for log_format in ("json", "text"):
        assert lean["lean_error"]("a \"quoted\" caf\u00e9", str(log), log_format) == 1
    json_line, text_line = log.read_text().splitlines()
    entry = json.loads(json_line)
    assert (entry["level"], entry["msg"]) == ("error", "a \"quoted\" caf\u00e9")
    assert re.fullmatch(r'time="[0-9T:-]+Z" level=error msg="a \\"quoted\\" caf\\u00e9"',
                        text_line), text_line


@root
def test_oci_start_and_delete_load_no_minidocker(tmp_path, oci_root, bundle):
    """The installed link starts a created container and deletes a stopped
    one without loading minidocker (the launcher's lean runc verbs): the
    command runs, and delete takes the state and the cgroups. What they
    hand over (a start of a started one, a delete of a running one) gets
    the full checks and their messages."""
    if len(MINIDOCKER) != 1:
        pytest.skip("only the installed launcher runs the lean verbs")
    edit_config(bundle, lambda c: c["process"].update(args=["/bin/sh", "-c", "echo ran > /ran"]))
    assert oci(oci_root, "create", "--bundle", bundle, "lean").returncode == 0
    started = imports_of(["runc", "--root", oci_root, "start", "lean"])
    # nor os, whose import was most of a lean verb's own time: posix serves
    assert "minidocker" not in started and "os" not in started and "_json" in started
    deadline = time.monotonic() + 10
    while json.loads(oci(oci_root, "state", "lean").out)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with open(os.path.join(bundle, "rootfs", "ran")) as handle:
        assert handle.read() == "ran\n"
    again = oci(oci_root, "start", "lean")
    assert again.returncode == 1 and "cannot start a container that has stopped" in again.err
    assert not {"minidocker", "os"} & imports_of(["runc", "--root", oci_root, "delete", "lean"])
    assert_no_oci_left(oci_root)
    edit_config(bundle, lambda c: c["process"].update(args=["sleep", "60"]))
    assert oci(oci_root, "run", "-d", "--bundle", bundle, "busy").returncode == 0
    busy = oci(oci_root, "delete", "busy")
    assert busy.returncode == 1 and "not stopped: running" in busy.err
    assert oci(oci_root, "delete", "-f", "busy").returncode == 0
    assert_no_oci_left(oci_root)


@root
def test_oci_hooks_run_at_their_points_with_the_state(tmp_path, oci_root, bundle, runc_link):
    """Every hook point runs its hook with the state on stdin: the runtime's
    ones (prestart, createRuntime, poststart, poststop) with a host path,
    createContainer in the container's mount namespace before pivot_root,
    startContainer inside the container (its path and its output there).
    A failing prestart hook fails the create, naming it, and leaves
    nothing."""
    root = oci_root
    out = tmp_path / "hooks"
    out.mkdir()

    def hook(point, inside=False):
        target = "/hook-%s.json" % point if inside else str(out / point)
        return [{"path": "/bin/sh", "args": ["sh", "-c", "cat > %s" % target],
                 "env": ["X=1"], "timeout": 10}]
    points = ("prestart", "createRuntime", "createContainer", "poststart", "poststop")
    edit_config(bundle, lambda c: c.update(hooks=dict(
        {p: hook(p) for p in points}, startContainer=hook("startContainer", True))))
    edit_config(bundle, lambda c: c["process"].update(args=["/bin/true"]))
    result = oci(root, "run", "--bundle", bundle, "hooked")
    assert result.returncode == 0, result.err
    states = {p: json.loads((out / p).read_text()) for p in points}
    states["startContainer"] = json.loads(
        open(os.path.join(bundle, "rootfs", "hook-startContainer.json")).read())
    assert {s["id"] for s in states.values()} == {"hooked"}
    assert {s["bundle"] for s in states.values()} == {bundle}
    assert states["poststop"]["status"] == "stopped"
    assert states["poststart"]["status"] == "running"
    pids = {states[p]["pid"] for p in ("prestart", "createRuntime", "createContainer",
                                       "startContainer", "poststart")}
    assert len(pids) == 1 and pids.pop() > 1  # the init, as the host numbers it
    edit_config(bundle, lambda c: c.update(hooks={"prestart": [
        {"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]}))
    failed = oci(root, "create", "--bundle", bundle, "failing")
    assert failed.returncode == 1 and "prestart hook /bin/sh exited with 3" in failed.err
    assert failed.err.count("\n") == 1
    assert_no_oci_left(root)


@root
def test_oci_console_socket_receives_the_terminal(tmp_path, oci_root, bundle, runc_link):
    """With process.terminal, create sends the pty's master over
    --console-socket (SCM_RIGHTS), as runc does for conmon and the shim:
    the command's output comes through it, on the container's
    /dev/pts/0, sized as consoleSize."""
    import socket as socketlib
    import array
    root = oci_root
    edit_config(bundle, lambda c: c["process"].update(
        terminal=True, consoleSize={"height": 30, "width": 100},
        args=["/bin/sh", "-c", "tty; stty size"]))
    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    listener.bind(str(tmp_path / "console.sock"))
    listener.listen(1)
    no_socket = oci(root, "create", "--bundle", bundle, "tty")
    assert no_socket.returncode == 1 and "console socket" in no_socket.err
    created = oci(root, "create", "--bundle", bundle, "--console-socket",
                  str(tmp_path / "console.sock"), "tty")
    assert created.returncode == 0, created.err
    connection, _ = listener.accept()
    fds = array.array("i")
    _, ancillary, _, _ = connection.recvmsg(64, socketlib.CMSG_LEN(fds.itemsize))
    fds.frombytes(ancillary[0][2][:fds.itemsize])
    master = fds[0]
    assert oci(root, "start", "tty").returncode == 0
    output = b""
    while True:
        try:
            chunk = os.read(master, 1024)
        except OSError:  # EIO: the terminal's last user is gone
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert output.decode().split() == ["/dev/pts/0", "30", "100"]
    assert oci(root, "delete", "--force", "tty").returncode == 0
    assert_no_oci_left(root)


@root
def test_oci_exec_joins_the_container(tmp_path, oci_root, bundle, runc_link):
    """exec by --process FILE and by CMD with --env, --cwd, --user: the new
    process is in the init's namespaces and cgroups, its exit code ours;
    --detach writes its pid to --pid-file."""
    root = oci_root
    edit_config(bundle, lambda c: c["process"].update(args=["/bin/sleep", "60"]))
    assert oci(root, "run", "--detach", "--bundle", bundle, "box").returncode == 0
    init = json.loads(oci(root, "state", "box").out)["pid"]
    names = ("pid", "net", "ipc", "uts", "mnt")
    expected = " ".join(os.readlink("/proc/%d/ns/%s" % (init, n)) for n in names)
    script = "for n in %s; do readlink /proc/self/ns/$n; done | xargs; id -u; pwd; echo $FOO; " \
             "exit 4" % " ".join(names)
    result = oci(root, "exec", "--env", "FOO=bar", "--cwd", "/tmp", "--user", "1000:1000",
                 "box", "/bin/sh", "-c", script)
    assert result.returncode == 4, result.err
    assert result.out.splitlines() == [expected, "1000", "/tmp", "bar"]
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["/bin/sh", "-c", "cat /proc/self/cgroup"],
                                   "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}))
    by_file = oci(root, "exec", "--process", str(process), "box")
    assert by_file.returncode == 0, by_file.err
    lines = by_file.out.splitlines()  # in the init's cgroups, which its cgroup namespace roots
    assert len(lines) > 1 and all(line.endswith(":/") for line in lines), lines
    pid_file = tmp_path / "exec.pid"
    detached = oci(root, "exec", "--detach", "--pid-file", str(pid_file), "box", "/bin/sleep", "30")
    assert detached.returncode == 0, detached.err
    assert int(pid_file.read_text()) in md.cgroup_processes(
        json.load(open(os.path.join(root, "box", "state.json")))["cgroups"])
    assert oci(root, "delete", "--force", "box").returncode == 0
    assert_no_oci_left(root)


@root
def test_oci_pause_resume_update_ps_and_events(tmp_path, oci_root, bundle, runc_link):
    """pause freezes the container (state paused, its counter stands still),
    resume thaws it; update writes new limits its cgroup shows; ps lists its
    processes; events --stats reports them."""
    root = oci_root
    edit_config(bundle, lambda c: c["process"].update(
        args=["/bin/sh", "-c", "while :; do echo x >> /count; done"]))
    assert oci(root, "run", "--detach", "--bundle", bundle, "busy").returncode == 0
    count = os.path.join(bundle, "rootfs", "count")
    time.sleep(0.3)
    assert oci(root, "pause", "busy").returncode == 0
    assert json.loads(oci(root, "state", "busy").out)["status"] == "paused"
    before = os.path.getsize(count)
    time.sleep(0.3)
    assert os.path.getsize(count) == before > 0
    assert oci(root, "resume", "busy").returncode == 0
    time.sleep(0.3)
    assert os.path.getsize(count) > before
    assert oci(root, "update", "--pids-limit", "50", "--memory", "64m", "busy").returncode == 0
    cgroups = json.load(open(os.path.join(root, "busy", "state.json")))["cgroups"]
    limits = [md.read_text(os.path.join(p, f)).strip() for p in cgroups
              for f in ("pids.max", "memory.limit_in_bytes", "memory.max")
              if os.path.exists(os.path.join(p, f))]
    assert "50" in limits and str(64 << 20) in limits
    pids = json.loads(oci(root, "ps", "--format", "json", "busy").out)
    assert json.loads(oci(root, "state", "busy").out)["pid"] in pids
    stats = json.loads(oci(root, "events", "--stats", "busy").out)
    assert stats["type"] == "stats" and stats["data"]["pids"]["current"] >= 1
    assert oci(root, "delete", "--force", "busy").returncode == 0
    assert_no_oci_left(root)


OCI_BAD_CONFIGS = [
    (lambda c: c.pop("process"), "process: missing"),
    (lambda c: c["process"].update(args="sh"), "process.args"),
    (lambda c: c["process"].update(cwd="tmp"), "process.cwd"),
    (lambda c: c.update(ociVersion="2.0.0"), "ociVersion"),
    (lambda c: c["linux"]["namespaces"].append({"type": "user"}), "user namespace"),
    (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "unknown namespace type"),
    (lambda c: c["linux"].update(namespaces=[{"type": "pid"}]), "mount namespace is needed"),
    (lambda c: c["process"].update(rlimits=[{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]),
     "process.rlimits"),
    (lambda c: c["process"]["capabilities"].update(bounding=["CAP_BOGUS"]),
     "unknown capability"),
    (lambda c: c["mounts"].append({"destination": "rel", "type": "tmpfs"}), "mounts[7]"),
    (lambda c: c["mounts"].append({"destination": "/x", "type": "bind", "source": "/nowhere"}),
     "does not exist"),
    (lambda c: c["linux"].update(intelRdt={"closID": "x"}), "linux.intelRdt"),
    (lambda c: c["linux"]["seccomp"].update(listenerPath="/run/x.sock"), "listenerPath"),
    (lambda c: c["process"].update(apparmorProfile="docker-default"), "AppArmor"),
    (lambda c: c["root"].update(path="nowhere"), "root.path"),
    (lambda c: c.update(hostname="bad name"), "hostname"),
    (lambda c: c["linux"].update(sysctl={"kernel.shmmax": "1", "vm.swappiness": "1"}),
     "vm.swappiness"),
    (lambda c: c["linux"]["resources"]["devices"].append(
        {"allow": False, "type": "c", "major": 1, "minor": 3}), "deny rule"),
    (lambda c: c["linux"].update(cgroupsPath="system.slice:md:x"), "systemd"),
    (lambda c: (c["linux"]["namespaces"].append({"type": "user"}), c["linux"].update(
        uidMappings=[{"containerID": 0, "hostID": 4294967290, "size": 65536}],
        gidMappings=[{"containerID": 0, "hostID": 3000000, "size": 65536}])),
     "no id above 4294967294"),
    (lambda c: c["linux"].update(uidMappings=[{"containerID": 0, "hostID": 1, "size": 1}]),
     "linux.uidMappings: needs a new user namespace"),
    (lambda c: (c["linux"]["namespaces"].append({"type": "user"}), c["linux"].update(
        uidMappings=[{"containerID": 0, "hostID": 3000000, "size": 0}],
        gidMappings=[{"containerID": 0, "hostID": 3000000, "size": 1}])),
     "linux.uidMappings[0]: expected containerID, hostID and size"),
    (lambda c: c["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"}),
     "joining a user namespace"),
    (lambda c: (c["linux"].update(namespaces=[n for n in c["linux"]["namespaces"]
                                              if n["type"] != "pid"] + [{"type": "user"}]),
                c["linux"].update(uidMappings=[{"containerID": 0, "hostID": 3000000, "size": 9}],
                                  gidMappings=[{"containerID": 0, "hostID": 3000000,
                                                "size": 9}])),
     "a new user namespace needs a new pid namespace"),
]


@root
@pytest.mark.parametrize("change,named", OCI_BAD_CONFIGS, ids=[n for _, n in OCI_BAD_CONFIGS])
def test_oci_bad_config_is_one_line_exit_1_nothing_left(oci_root, bundle, change, named):
    root = oci_root
    edit_config(bundle, change)
    result = oci(root, "create", "--bundle", bundle, "bad")
    assert result.returncode == 1
    assert named in result.err and result.err.count("\n") == 1, result.err
    assert_no_oci_left(root)


@root
def test_oci_command_line_errors(tmp_path, oci_root, bundle):
    root = oci_root
    for words, named in ((["state", "nosuch"], "does not exist"),
                         (["create", "--bundle", str(tmp_path), "x"], "no config.json"),
                         (["create", "--bundle", bundle, "../x"], "invalid container id"),
                         (["--systemd-cgroup", "create", "--bundle", bundle, "x"], "systemd"),
                         (["checkpoint", "x"], "not supported"),
                         (["kill", "x", "SIGBOGUS"], "does not exist"),
                         (["bogus"], "unknown command")):
        result = oci(root, *words)
        assert result.returncode == 1 and named in result.err, (words, result.err)
        assert result.err.count("\n") == 1
    (tmp_path / "config.json").write_text("{not json")
    broken = oci(root, "create", "--bundle", str(tmp_path), "x")
    assert broken.returncode == 1 and "not JSON" in broken.err
    assert oci(root, "delete", "--force", "nosuch").returncode == 0
    assert_no_oci_left(root)


@root
def test_oci_spec_means_what_run_means(oci_root, bundle, rootfs):
    """`spec` writes run's defaults: the bundle it makes, run by
    minidocker-runc, and `minidocker run` of the same rootfs read the same
    capabilities, seccomp mode, no_new_privs, masked paths and cgroup view."""
    probe = ("grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; "
             "cat /proc/keys 2>&1 | wc -c; ls /sys/fs/cgroup | sort | xargs; "
             "(echo x > /proc/sys/kernel/domainname) 2>&1 | grep -o 'Read-only'")
    edit_config(bundle, lambda c: c["process"].update(args=["/bin/sh", "-c", probe]))
    ours = oci(oci_root, "run", "--bundle", bundle, "spec")
    assert ours.returncode == 0, ours.err
    docker_style = sh(rootfs, probe)
    assert ours.out == docker_style.out
    assert "Seccomp:\t2" in ours.out and "Read-only" in ours.out
    exists = oci(oci_root, "spec", "--bundle", bundle)
    assert exists.returncode == 1 and "exists" in exists.err


@root
def test_escape_oci_mount_targets_stay_in_the_root_and_nothing_leaks(tmp_path, oci_root,
                                                                    bundle):
    """A hostile image in a bundle: a symlink leading a mount's destination
    out of the root lands the mount inside it (the host's directory is never
    made or covered); the created init, waiting with a descriptor of the
    host's state directory, cannot be looked into by another process of the
    container (non-dumpable), and the command holds no descriptor of ours."""
    root = oci_root
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), os.path.join(bundle, "rootfs", "escape"))
    edit_config(bundle, lambda c: (c["mounts"].append(
        {"destination": "/escape/made", "type": "tmpfs", "source": "tmpfs"}),
        c["process"].update(args=["/bin/sh", "-c", "ls /proc/self/fd | xargs > /fds"])))
    assert oci(root, "create", "--bundle", bundle, "hostile").returncode == 0
    peek = oci(root, "exec", "hostile", "/bin/sh", "-c",
               "ls /proc/1/fd | xargs; readlink /proc/1/fd/3 || echo no-link; "
               "cat /proc/1/environ | head -c 9")
    # The fifo's descriptor is all the waiting init holds, and it is not
    # to be followed: the init is not dumpable.
    assert peek.out.splitlines() == ["0 1 2 3", "no-link"]
    assert "/proc/1/environ': Permission denied" in peek.err
    assert oci(root, "start", "hostile").returncode == 0
    fds = os.path.join(bundle, "rootfs", "fds")
    deadline = time.monotonic() + 10
    while not os.path.exists(fds) or not open(fds).read():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert open(fds).read().split() == ["0", "1", "2", "3"]  # 3: ls's own directory
    assert not os.path.exists(outside / "made")
    assert os.path.isdir(os.path.join(bundle, "rootfs", str(outside).lstrip("/"), "made"))
    assert oci(root, "delete", "--force", "hostile").returncode == 0
    assert_no_oci_left(root)


@contextlib.contextmanager
def podman_with(runtime, tmp_path):
    """podman run through `runtime`, with ulimits this host lets it set
    (podman's defaults raise hard limits, refused here); the libpod_parent
    cgroups its cgroupfs manager makes at each hierarchy's root go again."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (apt-get install podman)")
    conf = tmp_path / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=32768:32768"]\n')
    parents = set(glob.glob("/sys/fs/cgroup/*/libpod_parent"))
    env = dict(os.environ, CONTAINERS_CONF=str(conf))

    def podman(*words, **kw):
        return subprocess.run(["podman", "--runtime", runtime] + list(words), env=env,
                              capture_output=True, text=True, timeout=120, **kw)
    try:
        yield podman
    finally:
        for made in set(glob.glob("/sys/fs/cgroup/*/libpod_parent")) - parents:
            for path, _, _ in sorted(os.walk(made), reverse=True):
                with contextlib.suppress(OSError):  # EBUSY: another user's container
                    os.rmdir(path)


@root
def test_oci_podman_drives_minidocker_runc(tmp_path, rootfs, runc_link):
    """podman --runtime minidocker-runc, through conmon: run --rm with
    limits and a capability; run -d, exec, logs, stop, rm; run -it on a
    terminal (--console-socket). The executable link is how podman finds a
    runtime, as it finds runc."""
    name = "mdtest-podman-%d" % os.getpid()
    with podman_with(runc_link, tmp_path) as podman:
        result = podman("run", "--rm", "--network", "none", "--memory", "64m", "--pids-limit",
                        "50", "--cap-add", "SYS_TIME", "--rootfs", os.path.realpath(rootfs),
                        "/bin/sh", "-c", "cat /sys/fs/cgroup/pids/pids.max "
                        "/sys/fs/cgroup/memory/memory.limit_in_bytes; grep CapEff "
                        "/proc/self/status; exit 3", stdin=subprocess.DEVNULL)
        assert result.returncode == 3, result.stderr
        assert result.stdout.split()[:2] == ["50", str(64 << 20)]
        assert int(result.stdout.split()[-1], 16) & 1 << md.cap_number("SYS_TIME")
        try:
            started = podman("run", "-d", "--name", name, "--network", "none", "--rootfs",
                             os.path.realpath(rootfs), "/bin/sh", "-c",
                             "echo up; trap 'exit 0' TERM; while :; do sleep 1; done",
                             stdin=subprocess.DEVNULL)
            assert started.returncode == 0, started.stderr
            inside = podman("exec", name, "/bin/sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '",
                            stdin=subprocess.DEVNULL)
            assert inside.returncode == 0 and "echo up" in inside.stdout, inside.stderr
            assert podman("logs", name).stdout == "up\n"
            stopped = podman("stop", "-t", "10", name)
            assert stopped.returncode == 0 and "SIGKILL" not in stopped.stderr, stopped.stderr
        finally:
            podman("rm", "-f", name)
        code, output = on_a_terminal(lambda: os.execvpe(
            "podman", ["podman", "--runtime", runc_link, "run", "--rm", "-it", "--network", "none",
                       "--rootfs", os.path.realpath(rootfs), "/bin/sh", "-c", "tty; exit 5"],
            dict(os.environ, CONTAINERS_CONF=str(tmp_path / "containers.conf"))))
        assert code == 5 and b"/dev/pts/0" in output, output
        assert name not in podman("ps", "-a").stdout


def on_a_terminal(execute):
    """execute() (an exec) in a child on a new pty, as a user's shell runs
    a command: -> (its exit code, everything it wrote to the terminal)."""
    pid, master = os.forkpty()
    if pid == 0:
        try:
            execute()
        finally:
            os._exit(127)
    output = b""
    with contextlib.suppress(OSError):  # EIO once it is gone
        while True:
            chunk = os.read(master, 1024)
            if not chunk:
                break
            output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(master)
    return md.exit_code(status), output


def oci_image_archive(rootfs, path, name):
    """An OCI image layout as a tar, of one uncompressed layer holding
    `rootfs`: what `ctr images import` reads."""
    import io
    import tarfile
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    blobs = {}

    def blob(data, media):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media, "digest": digest, "size": len(data)}
    layer_ref = blob(layer.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config = blob(json.dumps({"architecture": "amd64" if md.MACHINE == "x86_64" else "arm64",
                              "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                              "rootfs": {"type": "layers", "diff_ids": [layer_ref["digest"]]}}
                             ).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "config": config, "layers": [layer_ref],
                                "mediaType": "application/vnd.oci.image.manifest.v1+json"}
                               ).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": name}
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [manifest]}).encode()}
    files.update({"blobs/sha256/" + d[7:]: data for d, data in blobs.items()})
    with tarfile.open(path, "w") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@root
def test_oci_containerd_drives_minidocker_runc(tmp_path, rootfs, runc_link):
    """containerd (its own root, state and socket, started here) with an
    image imported from the busybox rootfs: `ctr run --runc-binary
    minidocker-runc --rm` passes the exit code, and a detached task takes
    `ctr task exec` (through the runc shim's create, start, exec --process
    --detach --pid-file, ps, kill and delete)."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("containerd is not installed (apt-get install containerd)")
    base = tmp_path / "containerd"
    base.mkdir()
    sock = str(base / "c.sock")
    (base / "config.toml").write_text(
        'version = 2\nroot = "%s/root"\nstate = "%s/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "%s"\n'
        '[ttrpc]\n  address = "%s.ttrpc"\n' % (base, base, sock, sock))
    daemon = subprocess.Popen(["containerd", "--config", str(base / "config.toml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name, image = "mdtest-ctr-%d" % os.getpid(), "mdtest/busybox:%d" % os.getpid()

    def ctr(*words):
        return subprocess.run(["ctr", "--address", sock] + list(words), capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while ctr("version").returncode != 0:
            assert time.monotonic() < deadline and daemon.poll() is None
            time.sleep(0.1)
        oci_image_archive(rootfs, str(base / "image.tar"), image)
        imported = ctr("images", "import", str(base / "image.tar"))
        assert imported.returncode == 0, imported.stderr
        once = ctr("run", "--runc-binary", runc_link, "--rm", "--cgroup", name + "-once", image,
                   name + "-once", "/bin/sh", "-c", "echo hello; exit 4")
        assert (once.returncode, once.stdout) == (4, "hello\n"), once.stderr
        started = ctr("run", "-d", "--runc-binary", runc_link, "--cgroup", name, image, name,
                      "/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done")
        assert started.returncode == 0, started.stderr
        inside = ctr("task", "exec", "--exec-id", "probe", name, "/bin/sh", "-c",
                     "cat /proc/1/cmdline | tr '\\0' ' '; exit 6")
        assert inside.returncode == 6 and "trap" in inside.stdout, inside.stderr
        assert ctr("task", "kill", name).returncode == 0
        deadline = time.monotonic() + 20
        while "STOPPED" not in ctr("task", "ls").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert ctr("task", "rm", name).returncode == 0
        assert ctr("containers", "rm", name).returncode == 0
    finally:
        for task in (name, name + "-once"):
            ctr("task", "rm", "-f", task)
            ctr("containers", "rm", task)
        daemon.terminate()
        daemon.wait(timeout=30)
        for place in glob.glob("/run/containerd/runc/default"):
            with contextlib.suppress(OSError):  # another containerd's containers: theirs
                os.rmdir(place)
    layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                               md.read_text("/proc/self/cgroup"))
    assert [path for mount, own in set(layout.v1.values()) | hybrid_v2(layout)
            for path in glob.glob(os.path.join(mount, own.strip("/"), name + "*"))] == []


def test_oci_help_for_every_command_and_flag(capsys):
    """runc's command line has a help line for each command, flag and
    argument, as minidocker's own has."""
    parser = md.build_runc_parser("minidocker runc")
    assert {"create", "start", "run", "state", "kill", "delete", "exec", "ps", "list", "pause",
            "resume", "update", "events", "features", "spec"} <= set(parser.subcommands)
    for flag in parser.declared:
        assert flag.help, flag.names
    for name, command in sorted(parser.subcommands.items()):
        for flag in command.declared + command.positionals:
            assert flag.help, (name, flag.names)
        if name in ("checkpoint", "restore"):  # every word is refused, --help too
            assert md.main(["runc", name, "--help"]) == 1
            assert "not supported" in capsys.readouterr().err
            continue
        assert md.main(["runc", name, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("Usage:  minidocker runc %s" % name)
        for flag in command.declared:
            assert flag.names[0] in out
    assert md.main(["runc", "--version"]) == 0
    assert md.OCI_VERSION in capsys.readouterr().out


@root
def test_oci_namespaces_joined_by_path_and_descriptors_passed_on(tmp_path, oci_root, bundle):
    """linux.namespaces with a path: a second container joins the first's
    pid, ipc and uts namespaces and a network namespace made by `ip netns
    add` (setns(2) by the path); --preserve-fds hands descriptor 3 on."""
    edit_config(bundle, lambda c: c["process"].update(args=["/bin/sleep", "60"]))
    assert oci(oci_root, "run", "--detach", "--bundle", bundle, "first").returncode == 0
    first = json.loads(oci(oci_root, "state", "first").out)["pid"]
    netns = "mdtest-oci-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        joined = {"pid": "/proc/%d/ns/pid" % first, "ipc": "/proc/%d/ns/ipc" % first,
                  "uts": "/proc/%d/ns/uts" % first, "network": "/run/netns/" + netns}

        def change(config):
            config["linux"]["namespaces"] = [
                {"type": kind, "path": joined[kind]} if kind in joined else {"type": kind}
                for kind in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
            config.pop("hostname", None)
            config["process"]["args"] = ["/bin/sh", "-c", "for n in pid ipc uts net; do "
                                         "readlink /proc/self/ns/$n; done; cat <&3"]
        edit_config(bundle, change)
        (tmp_path / "passed").write_text("passed on\n")
        # Descriptor 3 opened by a shell, as conmon hands its own over.
        second = subprocess.run(["/bin/sh", "-c", 'exec 3< "$0"; exec "$@"',
                                 str(tmp_path / "passed")] + MINIDOCKER +
                                ["runc", "--root", oci_root, "run", "--preserve-fds", "1",
                                 "--bundle", bundle, "second"],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        expected = [os.readlink("/proc/%d/ns/%s" % (first, n)) for n in ("pid", "ipc", "uts")]
        expected.append("net:[%d]" % os.stat("/run/netns/" + netns).st_ino)
        assert second.stdout.splitlines() == expected + ["passed on"]
    finally:
        oci(oci_root, "delete", "--force", "first")
        subprocess.run(["ip", "netns", "delete", netns], check=True)
    assert_no_oci_left(oci_root)


@root
def test_escape_oci_a_joined_pid_namespace_sees_no_host_process(tmp_path, oci_root, bundle,
                                                                  state):
    """A bundle whose pid namespace is another container's (by path, as a
    pod's): its init is in that namespace from its fork, still the host's
    python3 with all of root's capabilities, in a copy of the host's mounts
    until pivot_root, holding root's descriptors of its cgroups' `tasks`
    (v1) until its first write. The first container's root, with a
    bundle's default capabilities, watches its namespace meanwhile (strace
    holds that write and pivot_root) and tries each new process's
    /proc/PID/root (a file of the host's) and descriptors: the kernel
    refuses it the capabilities it lacks. (A container given CAP_SYS_PTRACE
    in the host's user namespace would pass: a pid namespace is shared
    with such a container at that price, as with runc's.)"""
    marker = host_secret(state)
    hunt = ('while :; do for p in /proc/[0-9]*; do [ $p = /proc/1 ] && continue; '
            'case "$(cat $p/comm 2>/dev/null)" in "md:[1:CHILD]") '
            '[ -e /tmp/seen ] || { echo seen; touch /tmp/seen; };; esac; '
            'cat $p/root%s 2>/dev/null; for f in $p/fd/*; do readlink $f; done 2>/dev/null '
            '| grep -e tasks -e cgroup; done; done' % marker)
    edit_config(bundle, lambda config: config["process"].update(args=["/bin/sh", "-c", hunt]))
    log = tmp_path / "first.log"
    with open(str(log), "w") as out:
        first_run = subprocess.Popen(MINIDOCKER + ["runc", "--root", oci_root, "run", "--bundle",
                                                   bundle, "first"], stdout=out, stderr=out,
                                     stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while oci(oci_root, "state", "first").returncode != 0 or \
                json.loads(oci(oci_root, "state", "first").out)["status"] != "running":
            assert time.monotonic() < deadline and first_run.poll() is None, log.read_text()
            time.sleep(0.1)
        first = json.loads(oci(oci_root, "state", "first").out)["pid"]

        def second_config(config):
            config["linux"]["namespaces"] = [
                {"type": "pid", "path": "/proc/%d/ns/pid" % first} if entry["type"] == "pid"
                else entry for entry in config["linux"]["namespaces"]]
            config["process"]["args"] = ["/bin/true"]
            config["process"]["capabilities"] = {}
        edit_config(bundle, second_config)
        second = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null",
                                 "-e", "trace=write,pivot_root",
                                 "-e", "inject=write:delay_enter=1000000:when=1",
                                 "-e", "inject=pivot_root:delay_enter=1500000"]
                                + MINIDOCKER + ["runc", "--root", oci_root, "run", "--bundle",
                                                bundle, "second"],
                                capture_output=True, text=True, timeout=90)
        assert second.returncode == 0, second.stderr
        time.sleep(0.5)
        assert log.read_text() == "seen\n"  # the start watched, and nothing of the host's
    finally:
        first_run.kill()
        first_run.wait()
        oci(oci_root, "delete", "--force", "first")
        os.unlink(marker)
    assert_no_oci_left(oci_root)


@root
def test_escape_oci_an_images_own_proc_gets_no_byte_of_the_fifo(oci_root, bundle):
    """A config that mounts no /proc leaves the image's /proc in place, and
    the image can make /proc/self/fd/3 a file of its choosing: the waiting
    init reopens its fifo descriptor through that path, so it must check
    that it opened the fifo before it writes. Here the start fails, and the
    image's file is left as it was."""
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "fake", "fd"))
    with open(os.path.join(rootfs, "fake", "fd", "3"), "w") as handle:
        handle.write("untouched")
    shutil.rmtree(os.path.join(rootfs, "proc"), ignore_errors=True)
    os.makedirs(os.path.join(rootfs, "proc"))
    os.symlink("/fake", os.path.join(rootfs, "proc", "self"))

    def change(config):
        config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/proc"]
        config["linux"]["maskedPaths"] = config["linux"]["readonlyPaths"] = []
        config["process"]["args"] = ["/bin/true"]
    edit_config(bundle, change)
    assert oci(oci_root, "create", "--bundle", bundle, "noproc").returncode == 0
    started = oci(oci_root, "start", "noproc")
    assert started.returncode == 1 and ("ended before start" in started.err or
                                        "has stopped" in started.err), started.err
    assert open(os.path.join(rootfs, "fake", "fd", "3")).read() == "untouched"
    assert oci(oci_root, "delete", "noproc").returncode == 0
    assert_no_oci_left(oci_root)


# --- OCI hostile review ---

def without_dev_mounts(config):
    """config.json with no /dev, /dev/pts, /dev/shm or /dev/mqueue mount:
    the image's own /dev is the container's."""
    config["mounts"] = [m for m in config["mounts"] if not m["destination"].startswith("/dev")]


@root
def test_escape_oci_an_images_ptmx_symlink_is_not_followed_to_the_host(tmp_path, oci_root,
                                                                       bundle):
    """process.terminal, and config.json mounts no devpts: /dev/pts is the
    image's, whose `ptmx -> /dev/ptmx` create would follow before
    pivot_root, to the host's ptmx (the container's terminal a pty of the
    host's devpts; any host file, opened read-write by root). The create
    is refused, naming what is missing, and leaves nothing."""
    import socket as socketlib
    pts = os.path.join(bundle, "rootfs", "dev", "pts")
    os.makedirs(pts, exist_ok=True)
    os.symlink("/dev/ptmx", os.path.join(pts, "ptmx"))
    edit_config(bundle, lambda c: (without_dev_mounts(c), c["process"].update(
        terminal=True, args=["/bin/true"])))
    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    listener.bind(str(tmp_path / "console.sock"))
    listener.listen(1)
    try:
        created = oci(oci_root, "create", "--bundle", bundle, "--console-socket",
                      str(tmp_path / "console.sock"), "ptmx")
    finally:
        listener.close()
    assert created.returncode == 1, "the host's /dev/ptmx was opened for the container"
    assert "needs a devpts mounted at /dev/pts" in created.err
    assert created.err.count("\n") == 1, created.err
    assert_no_oci_left(oci_root)


EXE_PROBE = "import os; print('host exe', os.stat('/proc/self/exe').st_ino)"


def link_to_the_runtimes_exe(bundle, name):
    """The hostile image: /bin/NAME -> /proc/self/exe, the interpreter's
    libraries in place and the host's standard library bound in (so that
    the host's python3, if it ran, could print EXE_PROBE). -> the standard
    library's directory."""
    rootfs = os.path.join(bundle, "rootfs")
    stdlib = give_image_the_interpreters_libraries(rootfs)
    os.symlink("/proc/self/exe", os.path.join(rootfs, "bin", name))
    edit_config(bundle, lambda c: c["mounts"].append(
        {"destination": stdlib, "type": "bind", "source": stdlib, "options": ["rbind", "ro"]}))
    return stdlib


def give_image_the_interpreters_libraries(rootfs):
    """Copy the libraries the running python3 loads (ldd's list, the
    dynamic loader among them) into `rootfs` at the same paths, as an
    image with a glibc of its own has them: -> the directory of its
    standard library, for a bind mount."""
    listed = subprocess.run(["ldd", os.path.realpath(sys.executable)], capture_output=True,
                            text=True).stdout
    for path in re.findall(r"(/\S+) \(0x", listed):
        inside = os.path.join(rootfs, path.lstrip("/"))
        os.makedirs(os.path.dirname(inside), exist_ok=True)
        shutil.copy(path, inside)
    return os.path.dirname(os.__file__)


@root
def test_escape_oci_an_images_link_to_proc_self_exe_runs_no_host_binary(oci_root, bundle,
                                                                         tmp_path):
    """runc's CVE-2019-5736 through the image alone: its /bin/evil is a
    symlink to /proc/self/exe, which until execve is the host's python3.
    Followed, the command would be the host's interpreter (loading the
    image's ld.so and libc, code of the image's choosing), free to keep
    its /proc/self/exe open and write the host's python3 once nothing
    runs it. Here the host's standard library is bound in, so that the
    interpreter, if it runs, prints the inode of its executable. The
    command is refused (as is `minidocker run`'s)."""
    rootfs = os.path.join(bundle, "rootfs")
    stdlib = link_to_the_runtimes_exe(bundle, "evil")
    edit_config(bundle, lambda c: c["process"].update(args=["/bin/evil", "-I", "-c", EXE_PROBE]))
    result = oci(oci_root, "run", "--bundle", bundle, "evil")
    host_exe = "host exe %d" % os.stat(sys.executable).st_ino
    assert host_exe not in result.out, "the container ran the host's python3"
    assert result.returncode == 1 and "a file of the runtime's own interpreter" in result.err, result.err
    docker_style = run(rootfs, "/bin/evil", "-I", "-c", EXE_PROBE,
                       options=["-v", "%s:%s:ro" % (stdlib, stdlib)])
    assert host_exe not in docker_style.out, "the container ran the host's python3"
    assert docker_style.returncode == 126 and "own interpreter" in docker_style.err
    assert_no_oci_left(oci_root)


@root
def test_escape_oci_a_start_container_hook_is_no_way_to_the_host_binary(oci_root, bundle):
    """The startContainer hook's path is resolved in the container, and its
    process is a fork of the waiting init, the host's python3: the image's
    `/bin/hook -> /proc/self/exe` would make the hook the host's
    interpreter (the CVE-2019-5736 class again). Refused; the start fails."""
    link_to_the_runtimes_exe(bundle, "hook")
    edit_config(bundle, lambda c: (c["process"].update(args=["/bin/true"]), c.update(hooks={
        "startContainer": [{"path": "/bin/hook", "args": ["hook", "-I", "-c", EXE_PROBE]}]})))
    result = oci(oci_root, "run", "--bundle", bundle, "hooked")
    assert "host exe %d" % os.stat(sys.executable).st_ino not in result.out, \
        "the hook ran the host's python3"
    assert result.returncode == 1 and "runtime's own interpreter" in result.err, result.err
    assert_no_oci_left(oci_root)


@root
def test_oci_delete_leaves_a_container_being_created_alone(tmp_path, oci_root, bundle):
    """The runtime spec: deleting a container that is not stopped has no
    effect on it and is an error. While `create` runs (a createRuntime
    hook holds it here) the container is `creating`: delete fails, kill
    fails (it has no pid to signal), and the create goes on to `created`. A create killed halfway leaves one that
    delete reclaims."""
    hold = "until [ -e %s ]; do sleep 0.05; done" % (tmp_path / "go")
    edit_config(bundle, lambda c: (c["process"].update(args=["/bin/true"]), c.update(hooks={
        "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", hold], "timeout": 60}]})))
    command = MINIDOCKER + ["runc", "--root", oci_root, "create", "--bundle", bundle, "slow"]
    with open(tmp_path / "create.err", "w+") as err:
        create = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 60
            while oci(oci_root, "state", "slow").returncode != 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert json.loads(oci(oci_root, "state", "slow").out)["status"] == "creating"
            busy = oci(oci_root, "delete", "slow")
            assert busy.returncode == 1 and "not stopped: creating" in busy.err, busy.err
            # No pid yet: a kill must not become kill(0), our own process group.
            signalled = subprocess.run(MINIDOCKER + ["runc", "--root", oci_root, "kill", "slow"],
                                       capture_output=True, text=True, timeout=60,
                                       start_new_session=True)
            assert signalled.returncode == 1 and "being created" in signalled.stderr, signalled
        finally:
            (tmp_path / "go").touch()
            code = create.wait(timeout=30)
        assert code == 0, open(tmp_path / "create.err").read()
    assert json.loads(oci(oci_root, "state", "slow").out)["status"] == "created"
    assert oci(oci_root, "delete", "slow").returncode == 0
    os.remove(tmp_path / "go")
    killed = subprocess.Popen(command[:-1] + ["halfway"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while oci(oci_root, "state", "halfway").returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    (tmp_path / "go").touch()  # its hook, orphaned, ends
    assert json.loads(oci(oci_root, "state", "halfway").out)["status"] == "stopped"
    assert oci(oci_root, "delete", "halfway").returncode == 0
    assert_no_oci_left(oci_root)


def holders_of(path):
    """The pids with a descriptor of `path` open."""
    found = set()
    for link in glob.glob("/proc/[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(link) == path:
                found.add(int(link.split("/")[2]))
    return found


@root
def test_oci_two_starts_at_once_run_it_once_and_the_other_fails(oci_root, bundle):
    """Two starts of one created container, both past the status check:
    the first opens the fifo (and is held there by strace), the second
    (the test itself, as quick as a start can be) reads the init's one
    byte. The first then finds the fifo at its end, which select reports
    ready again and again: it fails at once, as runc's does, instead of
    spinning until the container ends."""
    edit_config(bundle, lambda c: c["process"].update(args=["/bin/sleep", "30"]))
    assert oci(oci_root, "create", "--bundle", bundle, "twice").returncode == 0
    held = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null",
                             "-e", "trace=select,pselect6",
                             "-e", "inject=select,pselect6:delay_enter=3000000:when=1"]
                            + MINIDOCKER + ["runc", "--root", oci_root, "start", "twice"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        fifo = os.path.join(oci_root, "twice", "exec.fifo")
        init = json.loads(oci(oci_root, "state", "twice").out)["pid"]
        deadline = time.monotonic() + 60
        while not holders_of(fifo) - {init}:  # the first start has it open, held in strace
            assert time.monotonic() < deadline
            time.sleep(0.01)
        other = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(BlockingIOError):  # EAGAIN: not written yet
                    if os.read(other, 1) == b"0":
                        break
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            os.close(other)
        _, err = held.communicate(timeout=30)
        assert held.returncode == 1 and "already running" in err, err
    finally:
        held.kill()
        held.wait()
        oci(oci_root, "delete", "--force", "twice")
    assert_no_oci_left(oci_root)


@root
def test_oci_update_with_a_bad_number_is_one_line(oci_root, bundle):
    edit_config(bundle, lambda c: c["process"].update(args=["/bin/sleep", "30"]))
    assert oci(oci_root, "create", "--bundle", bundle, "upd").returncode == 0
    for flag in ("--pids-limit", "--cpu-shares", "--blkio-weight"):
        bad = oci(oci_root, "update", flag, "abc", "upd")
        assert bad.returncode == 1 and bad.err.count("\n") == 1, bad.err
        assert "invalid %s 'abc': expected a whole number" % flag in bad.err, bad.err
    assert oci(oci_root, "delete", "--force", "upd").returncode == 0
    assert_no_oci_left(oci_root)


@root
def test_oci_an_empty_cgroups_path_is_the_default_one(oci_root, bundle):
    """linux.cgroupsPath "" is no path, as runc reads it (it was the
    runtime's own cgroup, which exists: every create failed)."""
    edit_config(bundle, lambda c: (c["linux"].update(cgroupsPath=""), c["process"].update(
        args=["/bin/true"])))
    result = oci(oci_root, "run", "--bundle", bundle, "cgempty")
    assert result.returncode == 0, result.err
    assert_no_oci_left(oci_root)


@root
def test_escape_oci_spec_writes_through_no_symlink(tmp_path, oci_root):
    """`spec --bundle DIR` run by root in a directory another user can
    write: their dangling `config.json -> /elsewhere/file` would be
    followed and the file made, root's, where they chose. Refused as an
    existing file; nothing is made at the link's target."""
    bundle_dir = tmp_path / "theirs"
    bundle_dir.mkdir()
    target = tmp_path / "elsewhere" / "made-by-root"
    target.parent.mkdir()
    os.symlink(str(target), str(bundle_dir / "config.json"))
    result = oci(oci_root, "spec", "--bundle", str(bundle_dir))
    assert not target.exists(), "spec wrote through the symlink"
    assert result.returncode == 1 and "exists" in result.err, result.err
# --- OCI conformance ---
# What runtime-tools' validation suite (the OCI runtime conformance tests,
# run against runc and minidocker-runc by hand: CI has no Go) found
# minidocker-runc doing otherwise than runc, each checked here with a real
# container.

def test_oci_conformance_the_shared_mount_holding_a_bundle():
    """From mountinfo: the mount a path lands in (the longest mount point
    that holds it, the last of those stacked on one point, \\040 undone),
    named only when it is shared."""
    text = ("27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
            "40 27 0:50 / /srv rw shared:7 - tmpfs a rw\n"
            "41 40 0:51 / /srv/my\\040b rw master:7 - tmpfs b rw\n"
            "42 27 0:52 / /data rw - tmpfs c rw\n"
            "43 42 0:53 / /data rw shared:9 master:2 - tmpfs d rw\n")
    assert md.shared_mount_holding(text, "/srv/x/rootfs") == "/srv"
    assert md.shared_mount_holding(text, "/srv/my b/rootfs") is None
    assert md.shared_mount_holding(text, "/srvx") == "/"
    assert md.shared_mount_holding(text, "/data/rootfs") == "/data"
    assert md.shared_mount_holding(text.replace(" shared:1", ""), "/home") is None


@root
@pytest.mark.parametrize("propagation", ["shared", "rshared", "private", "rslave"])
def test_oci_conformance_rootfs_propagation_from_a_shared_mount(tmp_path, oci_root, bundle,
                                                                  propagation):
    """linux.rootfsPropagation (the suite's linux_rootfs_propagation and
    config_updates_without_affect): the bundle sits on a shared mount, as
    on a systemd host. pivot_root(2) refuses a shared new root, and a bind
    made on a shared mount is copied to the host's peer: the container
    starts all the same, its "/" has the propagation asked for, and not
    one of its mounts shows in the host's mount table, while it is created
    nor after it has gone."""
    shared = tmp_path / "shared"
    shared.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "mdtest-shared", str(shared)],
                   check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        moved = str(shared / "bundle")
        shutil.copytree(bundle, moved, symlinks=True)
        edit_config(moved, lambda c: (
            c["linux"].update(rootfsPropagation=propagation),
            c["process"].update(args=["/bin/sh", "-c", "awk '$5 == \"/\" { for (i = 7; "
                                      "$i != \"-\"; i++) print $i }' /proc/self/mountinfo "
                                      "> /propagation"])))

        def host_mounts_below():
            with open("/proc/self/mountinfo") as handle:
                return [line.split()[4] for line in handle
                        if line.split()[4].startswith(moved + "/")]
        created = oci(oci_root, "create", "--bundle", moved, "propagation")
        assert created.returncode == 0, created.err
        assert host_mounts_below() == []
        assert oci(oci_root, "start", "propagation").returncode == 0
        deadline = time.time() + 10
        while json.loads(oci(oci_root, "state", "propagation").out)["status"] != "stopped":
            assert time.time() < deadline
            time.sleep(0.05)
        assert oci(oci_root, "delete", "propagation").returncode == 0
        assert host_mounts_below() == []
        tags = open(os.path.join(moved, "rootfs", "propagation")).read().split()
        assert any(tag.startswith("shared:") for tag in tags) == propagation.endswith("shared")
        if propagation == "private":
            assert tags == []
    finally:
        oci(oci_root, "delete", "--force", "propagation")
        subprocess.run(["umount", "-R", str(shared)], check=True)
    assert_no_oci_left(oci_root)


@root
def test_oci_conformance_poststart_hooks_run_once_the_command_is_executed(tmp_path, oci_root,
                                                                           bundle):
    """The suite's poststart: the poststart hooks run after the user's
    process is executed, before `start` returns. A startContainer hook
    that takes a second keeps the init short of its execve; the poststart
    hook reads the container's pid (from the state on its stdin) and
    finds the command there, not minidocker still on its way to it."""
    seen = tmp_path / "seen"
    reader = ("import json, sys; pid = json.load(sys.stdin)['pid']; "
              "open(%r, 'wb').write(open('/proc/%%d/cmdline' %% pid, 'rb').read())" % str(seen))

    def change(config):
        config["process"]["args"] = ["/bin/sleep", "30"]
        config["hooks"] = {
            "startContainer": [{"path": "/bin/sleep", "args": ["sleep", "1"]}],
            "poststart": [{"path": sys.executable, "args": ["python3", "-c", reader]}]}
    edit_config(bundle, change)
    try:
        assert oci(oci_root, "create", "--bundle", bundle, "executed").returncode == 0
        started = oci(oci_root, "start", "executed")
        assert started.returncode == 0, started.err
        assert seen.read_bytes() == b"/bin/sleep\0" + b"30\0"
    finally:
        oci(oci_root, "delete", "--force", "executed")
    assert_no_oci_left(oci_root)


@root
def test_oci_conformance_a_profile_refusing_getcwd_is_one_clear_line(oci_root, bundle):
    """The suite's linux_seccomp: every system call allowed but getcwd,
    which fails with EPERM, and no no_new_privs, so the filter is loaded
    before the init checks that process.cwd is inside the root, which
    needs getcwd. The container cannot start (nor under runc): the error
    is one line that names getcwd and why, and nothing is left."""
    def change(config):
        config["process"]["noNewPrivileges"] = False
        config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"}]}
    edit_config(bundle, change)
    created = oci(oci_root, "create", "--bundle", bundle, "nogetcwd")
    assert created.returncode == 1
    assert created.err.startswith("minidocker: workdir /: getcwd: Operation not permitted (hint:")
    assert created.err.count("\n") == 1, created.err
    assert_no_oci_left(oci_root)


# ---------------------------------------------------------------------------
# user namespaces: --userns auto, --uidmap, --gidmap (root's remapped containers)
# ---------------------------------------------------------------------------

def test_userns_flags_as_podman_reads_them():
    assert md.parse_userns(None, [], []) is None
    assert md.parse_userns("host", [], []) is None
    assert md.parse_userns("auto", [], []) == {"size": 65536}
    assert md.parse_userns("auto:size=1024", [], []) == {"size": 1024}
    assert md.parse_userns(None, ["0:100000:1000"], []) == \
        {"uid": [(0, 100000, 1000)], "gid": [(0, 100000, 1000)]}  # one map stands for both
    assert md.parse_userns("", ["0:100000:10", "10:200000:5"], ["0:300000:1"]) == \
        {"uid": [(0, 100000, 10), (10, 200000, 5)], "gid": [(0, 300000, 1)]}
    for mode, uidmap, message in [
            ("keep-id", [], "invalid --userns 'keep-id': expected host, auto or auto:size=N"),
            ("auto:size=0", [], "its only option is size=N"),
            ("auto:uidmapping=0:1:1", [], "its only option is size=N"),
            ("auto", ["0:1:1"], "--userns 'auto' and --uidmap/--gidmap conflict"),
            (None, ["0:1"], "invalid --uidmap '0:1': expected CONTAINER_ID:HOST_ID:SIZE"),
            (None, ["0:-1:5"], "expected CONTAINER_ID:HOST_ID:SIZE"),
            (None, ["0:100:0"], "SIZE must be at least 1"),
            (None, ["0:4294967290:10"], "no id above 4294967294"),
            (None, ["1:100000:10"], "--uidmap: container id 0 (root) must be mapped"),
            (None, ["0:100000:10", "5:300000:10"], "--uidmap: two ranges overlap at container id 5"),
            (None, ["0:100000:10", "20:100005:10"], "two ranges overlap at host id 100005")]:
        with pytest.raises(md.MiniDockerError, match=re.escape(message)):
            md.parse_userns(mode, uidmap, [])


def test_userns_auto_takes_the_lowest_free_range(tmp_path, monkeypatch):
    """The ids of /etc/subuid's user "containers", added above every other
    user's range when it has none; each container's range the lowest that
    no record holds."""
    files = {kind: tmp_path / kind for kind in ("uid", "gid")}
    files["uid"].write_text("alice:100000:65536\nbob:4000000000:1000")  # no final newline
    files["gid"].write_text("containers:500000:200000\n")
    monkeypatch.setattr(md, "SUBID_FILES", {kind: str(path) for kind, path in files.items()})
    monkeypatch.setattr(md, "WARNINGS", [])
    records = [{"id_maps": {"uid": [(0, 4000001000, 100)], "gid": [(0, 500000, 65536)]}},
               {"id_maps": None}, {}]
    maps = md.allocate_id_maps({"size": 1000}, records)
    assert maps == {"uid": [(0, 4000001100, 1000)], "gid": [(0, 565536, 1000)]}
    added = "containers:4000001000:%d" % (md.MAX_ID + 1 - 4000001000)
    assert files["uid"].read_text() == "alice:100000:65536\nbob:4000000000:1000\n%s\n" % added
    assert md.WARNINGS == ["--userns auto: %s had no ids for user containers: added %s"
                           % (files["uid"], added)]
    assert md.free_id_range([(10, 100)], [(10, 50), (70, 10)], 20) == 80
    assert md.free_id_range([(10, 100)], [(10, 50), (70, 10)], 31) is None
    with pytest.raises(md.MiniDockerError, match=re.escape(
            "--userns auto: no 200000 free gids left in the ranges of user containers in %s "
            "(1 containers hold ranges of their own; ids granted to other users are not "
            "taken)" % files["gid"])):
        md.allocate_id_maps({"size": 200000}, records)
    assert md.allocate_id_maps({"uid": [(0, 7, 1)], "gid": [(0, 8, 1)]}, records) == \
        {"uid": [(0, 7, 1)], "gid": [(0, 8, 1)]}


@pytest.fixture
def subids():
    """/etc/subuid and /etc/subgid as the test found them, put back after;
    meanwhile without a range for "containers", as on a fresh host."""
    saved = {}
    for path in md.SUBID_FILES.values():
        try:
            with open(path) as handle:
                saved[path] = handle.read()
        except FileNotFoundError:
            saved[path] = None
        with open(path, "w") as handle:
            handle.writelines(line for line in (saved[path] or "").splitlines(True)
                              if not line.startswith(md.SUBID_USER + ":"))
    try:
        yield
    finally:
        for path, text in saved.items():
            if text is None:
                os.unlink(path)
            else:
                with open(path, "w") as handle:
                    handle.write(text)


USERNS_PROBE = ("cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c '%u:%g %n' / /bin/sh "
                "/etc/hosts /home/alice; grep -E '^Cap(Prm|Eff|Bnd)' /proc/self/status")


@root
def test_userns_auto_root_inside_is_a_free_range_outside(rootfs, subids, tmp_path):
    """--userns auto: container root is the first id of a range of 65536
    from "containers"' ids in /etc/subuid (added on first use, one line on
    stderr); the image's files show their owners as on the host (root's
    as root's, alice's as alice's); the capabilities are Docker's; a
    second container running beside it gets the next range; a file
    container root makes in a volume is the mapped id's on the host."""
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)
    first = sh(rootfs, USERNS_PROBE + "; touch /volume/made",
               options=["--userns", "auto", "-v", "%s:/volume" % volume])
    assert first.returncode == 0, first.err
    lines = first.out.splitlines()
    start = md.SUBID_FIRST
    assert lines[:3] == ["%10d %10d %10d" % (0, start, 65536)] * 2 + ["0"]
    assert lines[3:7] == ["0:0 /", "0:0 /bin/sh", "0:0 /etc/hosts", "1000:1000 /home/alice"]
    plain = sh(rootfs, "grep -E '^Cap(Prm|Eff|Bnd)' /proc/self/status")
    assert lines[7:] == plain.out.splitlines()
    assert first.err.splitlines() == [
        "minidocker: warning: --userns auto: /etc/sub%sid had no ids for user containers: "
        "added containers:%d:%d" % (kind, start, md.MAX_ID + 1 - start) for kind in "ug"]
    assert "containers:%d:" % start in open("/etc/subuid").read()
    made = os.stat(str(volume / "made"))
    assert (made.st_uid, made.st_gid) == (start, start)
    with started(rootfs, "sleep", "60", options=["--userns", "auto:size=1000"]):
        deadline = time.monotonic() + 20
        while not records_now():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        beside = sh(rootfs, "cat /proc/self/uid_map", options=["--userns", "auto"],
                    check_clean=False)
        assert beside.out.split() == ["0", str(start + 1000), "65536"], beside.err
        assert beside.err == ""


@root
def test_userns_a_failure_in_stage_1_is_one_line(rootfs, tmp_path):
    """What fails while stage 1 prepares the user namespace's mounts (here a
    volume's source, a dangling symlink that cannot be made) is one line,
    exit 125, and nothing is left."""
    dangling = tmp_path / "dangling"
    os.symlink("/nonexistent/mdtest", str(dangling))
    bad(["run", "--rm", "--uidmap", "0:3000000:65536", "-v", "%s:/x" % dangling, rootfs, "true"],
        "File exists: '%s'" % dangling)


@root
def test_userns_a_rootfs_whose_owner_the_map_leaves_out_is_one_line(state, tmp_path, subids):
    """ROOTFS owned by an id the map does not give the container (--uidmap,
    or auto's size): refused with the flags, exit 125; no record, no
    layer, and /etc/subuid as it was."""
    image = tmp_path / "image"
    image.mkdir()
    os.chown(str(image), 100000, 100000)
    before = [md.read_text(path) for path in md.SUBID_FILES.values()]
    for options in (["--uidmap", "0:3000000:1000"], ["--userns", "auto:size=1000"]):
        bad(["run", "--rm"] + options + [str(image), "true"],
            "ROOTFS is owned by 100000:100000, which the user namespace's map leaves out")
    assert [md.read_text(path) for path in md.SUBID_FILES.values()] == before


@root
def test_userns_uidmap_as_given_exec_and_a_start_again_keep_it(rootfs):
    """--uidmap without --gidmap maps the gids alike; exec enters the user
    namespace (its process has the init's map, and -u resolves as in the
    init); stop and start again keep the map, and the layer's files
    (owned by the mapped ids) stay the container's root's. On a
    cgroup2-only host its cgroup is delegated to its root (a v1
    hierarchy's, never: those stay the host's, nobody's inside)."""
    maps = ["--uidmap", "0:3000000:2000", "--uidmap", "2000:3100000:1"]
    cid = detach_run(rootfs, "sh", "-c", "[ -e /root-file ] || echo kept > /root-file; sleep 1000",
                     options=maps + ["--name", "mapped"])
    try:
        expected = ("%10d %10d %10d\n" * 2) % (0, 3000000, 2000, 2000, 3100000, 1)
        shown = minidocker("exec", "mapped", "cat", "/proc/self/uid_map", "/proc/self/gid_map")
        assert shown.out == expected * 2, shown.err
        layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                                   md.read_text("/proc/self/cgroup"))
        procs = "/sys/fs/cgroup/pids/cgroup.procs" if layout.v1 else "/sys/fs/cgroup/cgroup.procs"
        owner = minidocker("exec", "mapped", "stat", "-c", "%u:%g", procs)
        assert owner.out == ("65534:65534\n" if layout.v1 else "0:0\n"), owner.err
        alice = minidocker("exec", "-u", "alice", "mapped", "id")
        assert alice.out == "uid=1000(alice) gid=1000(alice) groups=50(staff),1000(alice)\n"
        layer_file = os.path.join(md.Paths().layer(cid), "upper/root-file")
        deadline = time.monotonic() + 20
        while not os.path.exists(layer_file):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert (os.stat(layer_file).st_uid, os.stat(layer_file).st_gid) == (3000000, 3000000)
        assert minidocker("stop", "-t", "0", "mapped").returncode == 0
        assert minidocker("start", "mapped").returncode == 0
        again = minidocker("exec", "mapped", "sh", "-c", "echo more >> /root-file && "
                           "cat /root-file /proc/self/uid_map")
        assert again.out == "kept\nmore\n" + expected, again.err
    finally:
        minidocker("rm", "-f", "mapped")
    assert_nothing_left()


USERNS_SUID_C = r"""
#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>
#include <string.h>
int main(int argc, char **argv) {
    printf("euid %d\n", (int)geteuid());
    int fd = open(argv[1], O_RDONLY);
    printf("open %s\n", fd < 0 ? strerror(errno) : "ok");
    return 0;
}
"""


@pytest.fixture(scope="session")
def suid_image(rootfs, tmp_path_factory):
    """The busybox rootfs with a setuid-root program of the image's own at
    /bin/suid-open (it prints its euid and opens argv[1])."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed (apt-get install gcc libc6-dev)")
    work = tmp_path_factory.mktemp("suid-image")
    image = work / "image"
    subprocess.run(["cp", "-a", rootfs, str(image)], check=True)
    (work / "suid.c").write_text(USERNS_SUID_C)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(image / "bin/suid-open"),
                    str(work / "suid.c")], check=True)
    os.chmod(str(image / "bin/suid-open"), 0o4755)
    return str(image)


@root
def test_escape_userns_root_is_nobody_to_the_host(suid_image, tmp_path):
    """The attacks a user namespace stops, with CAP_SYS_ADMIN and
    CAP_DAC_OVERRIDE given: a root-only host file bound in does not open
    (not for container root, not for the image's setuid-root program,
    which does make a non-root user container root); the host's root
    block device, given with --device, does not mount; mknod makes no
    device."""
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    secret.chmod(0o600)
    device = os.stat("/").st_dev
    uevent = "/sys/dev/block/%d:%d/uevent" % (os.major(device), os.minor(device))
    if not os.path.exists(uevent):
        pytest.fail("the host's root filesystem is on no block device (%s)" % uevent)
    node = "/dev/" + dict(line.split("=", 1) for line in md.read_text(uevent).split())["DEVNAME"]
    [fstype] = [line.split(" - ")[1].split()[0] for line in
                md.read_text("/proc/self/mountinfo").splitlines() if line.split()[4] == "/"]
    options = ["--uidmap", "0:3200000:65536", "--cap-add", "SYS_ADMIN", "--cap-add",
               "DAC_READ_SEARCH", "-v", "%s:/secret" % secret, "--device",
               "%s:/dev/hostroot" % node, "--security-opt", "seccomp=unconfined"]
    result = sh(suid_image, "cat /secret; echo cat=$?; suid-open /secret; "
                "su alice -c 'suid-open /secret'; mkdir /m; mount -t %s /dev/hostroot /m; "
                "echo mount=$?; mknod /n b %d %d; echo mknod=$?" % (
                    fstype, os.major(device), os.minor(device)), options=options)
    assert result.returncode == 0, result.err
    assert result.out.splitlines() == ["cat=1", "euid 0", "open Permission denied",
                                       "euid 0", "open Permission denied", "mount=1",
                                       "mknod=1"], result.out + result.err
    assert result.err.splitlines() == ["cat: can't open '/secret': Permission denied",
                                       "mount: permission denied (are you root?)",
                                       "mknod: /n: Operation not permitted"]
    plain = sh(suid_image, "su alice -c 'suid-open /secret'", options=["-v", "%s:/secret" % secret])
    assert plain.out == "euid 0\nopen ok\n", plain.err  # without a user namespace: the host's root


@root
def test_userns_a_rootfs_that_cannot_be_idmapped_runs_from_a_shifted_copy(rootfs, tmp_path):
    """ROOTFS on a filesystem without idmapped mounts (ramfs): one line
    says so and where the copy is; the container sees the image's owners
    as on the host all the same; the copy, made once, serves the next run
    of the same map, and goes with `container prune` once no container
    names it (a running one keeps it)."""
    ram = tmp_path / "ram"
    ram.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(ram)], check=True)
    try:
        image = ram / "image"
        subprocess.run(["cp", "-a", rootfs, str(image)], check=True)
        options = ["--uidmap", "0:3300000:65536"]
        probe = "stat -c '%u:%g %n' / /bin/sh /home/alice; touch /made; ls -n /made"
        first = sh(str(image), probe, options=options)
        assert first.returncode == 0, first.err
        assert first.out.splitlines()[:3] == ["0:0 /", "0:0 /bin/sh", "1000:1000 /home/alice"]
        assert first.out.splitlines()[3].split()[2:4] == ["0", "0"], first.out  # ls -n /made
        [note] = first.err.splitlines()
        handle = os.open(str(image), os.O_RDONLY | os.O_DIRECTORY)
        copy = md.shifted_root_path(os.path.join(os.environ["MINIDOCKER_ROOT"], "lib/userns"),
                                    handle, {"uid": [(0, 3300000, 65536)],
                                             "gid": [(0, 3300000, 65536)]})
        os.close(handle)
        assert note == ("minidocker: warning: %s cannot be idmapped here (mount_setattr(%s "
                        "(idmapped)): Invalid argument): the container's root is a copy with its "
                        "owners shifted by the map, kept in %s (remove it when ROOTFS changes)"
                        % (image, image, copy))
        st = os.stat(os.path.join(copy, "home/alice"))
        assert (st.st_uid, st.st_gid) == (3301000, 3301000)
        made = os.stat(copy).st_ino
        again = sh(str(image), "stat -c '%u:%g %n' /bin/sh", options=options)
        assert again.out == "0:0 /bin/sh\n" and os.stat(copy).st_ino == made
        running = detach_run(str(image), "sleep", "1000", options=options)
        try:
            assert minidocker("container", "prune", "-f").returncode == 0
            assert os.stat(copy).st_ino == made  # named by the running container's record
        finally:
            minidocker("rm", "-f", running)
        pruned = minidocker("container", "prune", "-f")
        assert pruned.returncode == 0 and not os.path.exists(copy), pruned.err
    finally:
        subprocess.run(["umount", str(ram)], check=True)


@root
def test_escape_userns_a_shifted_copy_serves_only_the_directory_it_was_made_from(rootfs,
                                                                                 tmp_path):
    """The shifted copies are kept by ROOTFS's path and map: a ROOTFS made
    anew at a path that held another one (another owner's, since removed)
    must not run from the copy of the old one's files, which would put
    what its old owner planted in the new container. The copy is keyed by
    the directory itself: the new one gets a copy of its own."""
    ram = tmp_path / "ram"
    ram.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(ram)], check=True)
    options = ["--uidmap", "0:3310000:65536"]
    copies = os.path.join(os.environ["MINIDOCKER_ROOT"], "lib/userns")
    before = set(os.listdir(copies)) if os.path.isdir(copies) else set()
    try:
        image = ram / "image"
        subprocess.run(["cp", "-a", rootfs, str(image)], check=True)
        (image / "planted").write_text("the old owner's\n")
        first = sh(str(image), "cat /planted", options=options)
        assert first.out == "the old owner's\n", first.err
        subprocess.run(["rm", "-rf", str(image)], check=True)
        subprocess.run(["cp", "-a", rootfs, str(image)], check=True)
        again = sh(str(image), "cat /planted 2>&1; true", options=options)
        assert again.out == "cat: can't open '/planted': No such file or directory\n", again.out
        assert "is a copy with its owners shifted" in again.err
    finally:
        subprocess.run(["umount", str(ram)], check=True)
        for name in set(os.listdir(copies)) - before:
            md.remove_tree(os.path.join(copies, name))


@root
def test_net_a_remapped_container_on_the_bridge(rootfs, sandbox):
    """A user namespace's container on the bridge: its network namespace
    is its user namespace's, yet the host still gives it its veth and
    address; it reaches the gateway and a neighbour without a user
    namespace, and its root, given CAP_NET_ADMIN, sets up its own network
    without reaching the host's."""
    server = sandbox.start("run", "--rm", rootfs, "sh", "-c", "tail -n1 /etc/hosts; nc -l -p 5000")
    try:
        address = container_address(server.stdout.readline().decode())
        client = sandbox.run("run", "--rm", "--uidmap", "0:3400000:65536", "--cap-add",
                             "NET_ADMIN", rootfs, "sh", "-c",
                             "cat /proc/self/uid_map; ping -c1 -W5 10.0.0.1 >/dev/null && "
                             "echo hello >/tmp/m && nc %s 5000 </tmp/m && ip addr add "
                             "192.0.2.7/32 dev eth0 && ip -o addr show eth0 | grep -c 192.0.2.7"
                             % address)
        assert client.returncode == 0, client.out + client.err
        assert client.out.split() == ["0", "3400000", "65536", "1"], client.out
        assert server.wait(timeout=30) == 0
        assert server.stdout.read() == b"hello\n"
        assert "192.0.2.7" not in sandbox.sh("ip -o addr")
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        server.stdout.close()
        server.stderr.close()
    assert_network_gone(sandbox)


@root
def test_oci_a_user_namespace_reads_the_same_under_runc(tmp_path, rootfs, oci_root, runc_link):
    """A bundle with a user namespace (linux.uidMappings and gidMappings,
    its root chowned to the map, as podman prepares one): runc and
    minidocker-runc print the same maps, identity, capability sets, mounts
    and cgroups; exec enters it. Its directory sits where the mapped root
    may search, as runc needs (runc mounts the root by path from inside)."""
    place = tempfile.mkdtemp(prefix="mdtest-userns-", dir="/tmp")
    try:
        os.chmod(place, 0o711)
        bundle = os.path.join(place, "bundle")
        os.mkdir(bundle)
        shutil.copytree(rootfs, os.path.join(bundle, "rootfs"), symlinks=True)
        for top, dirs, files in os.walk(os.path.join(bundle, "rootfs")):
            for name in [top] + [os.path.join(top, entry) for entry in dirs + files]:
                st = os.lstat(name)
                os.lchown(name, st.st_uid + 3500000, st.st_gid + 3500000)
                if not stat.S_ISLNK(st.st_mode):
                    os.chmod(name, stat.S_IMODE(st.st_mode))
        subprocess.run(["runc", "spec", "--bundle", bundle], check=True)

        def change(config):
            config["process"].update(terminal=False, args=["/bin/sh", "-c", OCI_PROBE +
                                                           "cat /proc/self/uid_map /proc/self/gid_map"])
            config["linux"]["namespaces"].append({"type": "user"})
            for field in ("uidMappings", "gidMappings"):
                config["linux"][field] = [{"containerID": 0, "hostID": 3500000, "size": 65536}]
        edit_config(bundle, change)
        ours = the_same_under_runc(tmp_path, oci_root, bundle, "mapped", runc_link)
        assert ours.endswith(("%10d %10d %10d\n" % (0, 3500000, 65536)) * 2)
        edit_config(bundle, lambda c: c["process"].update(args=["sleep", "60"]))
        detached = oci(oci_root, "run", "--detach", "--bundle", bundle, "mapped")
        assert detached.returncode == 0, detached.err
        joined = oci(oci_root, "exec", "mapped", "cat", "/proc/self/uid_map")
        assert joined.out == "%10d %10d %10d\n" % (0, 3500000, 65536), joined.err
    finally:
        oci(oci_root, "delete", "--force", "mapped")
        shutil.rmtree(place)
    assert_no_oci_left(oci_root)


@root
def test_escape_oci_userns_devices_bind_only_the_node_the_config_names(bundle, oci_root):
    """In a user namespace linux.devices are the host's nodes, bound at
    their paths: a path that leaves /dev by "..", or a host node other
    than the type and numbers the config names (which the device cgroup
    allows), must not be bound. Each is refused with one line, exit 1,
    nothing left; a node the config names rightly is bound."""
    place = tempfile.mkdtemp(prefix="mdtest-hostfile-", dir="/tmp")
    try:
        os.chmod(place, 0o755)
        secret = os.path.join(place, "secret")
        with open(secret, "w") as handle:
            handle.write("the host's file\n")
        os.chmod(secret, 0o644)

        def configure(device, script):
            def change(config):
                config["process"]["args"] = ["/bin/sh", "-c", script]
                if {"type": "user"} not in config["linux"]["namespaces"]:
                    config["linux"]["namespaces"].append({"type": "user"})
                for field in ("uidMappings", "gidMappings"):
                    config["linux"][field] = [{"containerID": 0, "hostID": 3520000,
                                               "size": 65536}]
                config["linux"]["devices"] = [device]
            edit_config(bundle, change)

        for device, script, refusal in (
                ({"path": "/dev/.." + secret, "type": "c", "major": 1, "minor": 3},
                 "cat %s" % secret, "expected a path in /dev"),
                ({"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 3},
                 "stat -c '%t:%T' /dev/kmsg", "is c 1:11, not the c 1:3 named")):
            configure(device, script)
            result = oci(oci_root, "run", "--bundle", bundle, "devices")
            assert result.out == "", result.out
            assert result.returncode == 1 and len(result.err.splitlines()) == 1, result.err
            assert refusal in result.err
            assert_no_oci_left(oci_root)
        configure({"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11},
                  "stat -c '%t:%T' /dev/kmsg")
        result = oci(oci_root, "run", "--bundle", bundle, "devices")
        assert (result.returncode, result.out) == (0, "1:b\n"), result.err
    finally:
        shutil.rmtree(place)
    assert_no_oci_left(oci_root)


@root
def test_userns_auto_as_podman_maps_it(tmp_path, rootfs, runc_link, subids):
    """podman run --userns=auto:size=65536, an image made of the busybox
    rootfs, through runc and through minidocker-runc, and `minidocker run
    --userns auto` on the rootfs itself: one map (the first range of
    "containers"' ids), the same capabilities, the image's owners."""
    probe = "cat /proc/self/uid_map /proc/self/gid_map; grep ^Cap /proc/self/status; " \
        "stat -c '%u:%g %n' / /bin/sh /home/alice"
    ours = sh(rootfs, probe, options=["--userns", "auto"])  # adds "containers" to /etc/subuid
    assert ours.returncode == 0, ours.err
    image = "localhost/mdtest-userns-%d:1" % os.getpid()
    archive = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", rootfs, "-cf", str(archive), "."], check=True)
    outputs = []
    try:
        for runtime in ("runc", runc_link):
            with podman_with(runtime, tmp_path) as podman:
                if not outputs:
                    imported = podman("import", "-q", str(archive), image)
                    assert imported.returncode == 0, imported.stderr
                result = podman("run", "--rm", "--network", "none", "--userns=auto:size=65536",
                                image, "sh", "-c", probe, stdin=subprocess.DEVNULL)
                assert result.returncode == 0, result.stderr
                outputs.append(result.stdout)
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True, timeout=120)
    assert outputs == [ours.out] * 2
    assert ours.out.startswith(("%10d %10d %10d\n" % (0, md.SUBID_FIRST, 65536)) * 2)


# ---------------------------------------------------------------------------
# rootless: minidocker run by a real user of the host, without root
# ---------------------------------------------------------------------------

ROOTLESS_SUBIDS = (3600000, 65536)  # the test user's /etc/subuid and /etc/subgid range


@pytest.fixture
def rootless(subids):
    """A real user of the host (useradd), with a home of its own under /tmp
    (the test's own directories are root's alone) holding minidocker
    installed (by the system python, which the user may run), and a range
    in /etc/subuid and /etc/subgid. Yields run(*words, path=...),
    minidocker run as that user; the user, its processes' containers and
    its files go after."""
    for tool in ("useradd", "userdel", "newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            pytest.fail("%s is not installed (apt-get install passwd uidmap)" % tool)
    import pwd
    name = "mdtest%d" % os.getpid()
    home = tempfile.mkdtemp(prefix="mdtest-home-", dir="/tmp")
    prefix = tempfile.mkdtemp(prefix="mdtest-prefix-", dir="/tmp")
    subprocess.run(["useradd", "-M", "-d", home, "-s", "/bin/sh", name], check=True)
    try:
        user = pwd.getpwnam(name)
        for path in md.SUBID_FILES.values():  # ours alone, whatever useradd gave it
            with open(path) as handle:
                kept = [line for line in handle if not line.startswith(name + ":")]
            with open(path, "w") as handle:
                handle.writelines(kept + ["%s:%d:%d\n" % ((name,) + ROOTLESS_SUBIDS)])
        os.chown(home, user.pw_uid, user.pw_gid)
        os.chmod(home, 0o755)
        os.chmod(prefix, 0o755)  # root's, and the user's to read
        subprocess.run(["/usr/bin/python3", SINGLE_FILE[1], "install", "--prefix", prefix],
                       check=True, stdout=subprocess.DEVNULL, timeout=60)
        launcher = os.path.join(prefix, "bin", "minidocker")
        runtime = os.path.join(home, "run")
        os.mkdir(runtime, 0o700)
        os.chown(runtime, user.pw_uid, user.pw_gid)

        def become(cgroup=None):
            if cgroup is not None:  # as a login puts a user's session in its cgroup
                md.write_cgroup_file(cgroup, "cgroup.procs", os.getpid())
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

        def run(*words, path="/usr/sbin:/usr/bin:/sbin:/bin", timeout=60, cgroup=None):
            env = {"HOME": home, "PATH": path, "XDG_RUNTIME_DIR": runtime, "LANG": "C.UTF-8"}
            result = subprocess.run([launcher] + list(words), preexec_fn=lambda: become(cgroup),
                                    env=env, cwd=home,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, timeout=timeout)
            result.out, result.err = result.stdout.decode(), result.stderr.decode()
            return result

        run.uid, run.gid, run.home, run.become = user.pw_uid, user.pw_gid, home, become
        run.launcher = launcher
        yield run
        for record in run("ps", "-a", "-q").out.split():
            run("rm", "-f", record)
        layers = os.path.join(home, ".local/share/minidocker/containers")
        assert not os.path.exists(layers) or os.listdir(layers) == []
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(home)
        shutil.rmtree(prefix)


@root
def test_rootless_run_exec_volumes_and_mkrootfs_as_a_user(rootless):
    """A user without root: mkrootfs, then run, where the user is container
    root and its /etc/subuid range ids 1 and up (podman's rootless map,
    written by newuidmap); Docker's capabilities, in the user namespace
    only; a volume's files owned on the host by the user, or by the range
    for -u 1000; the host's network with --network host; run -d, exec,
    ps, stop, rm; a terminal with -it; and what needs root, refused by
    name."""
    home = rootless.home
    made = rootless("mkrootfs", os.path.join(home, "rootfs"))
    assert made.returncode == 0, made.err
    rootfs = os.path.join(home, "rootfs")
    probe = rootless("run", "--rm", rootfs, "sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; "
                     "id -u; stat -c '%u:%g' / /bin/busybox; grep -E '^Cap(Eff|Bnd)' /proc/self/status")
    assert probe.returncode == 0, probe.err
    first, count = ROOTLESS_SUBIDS
    maps = {kind: "%10d %10d %10d\n%10d %10d %10d\n" % (0, own, 1, 1, first, count)
            for kind, own in (("uid", rootless.uid), ("gid", rootless.gid))}
    assert probe.out == maps["uid"] + maps["gid"] + "0\n0:0\n0:0\nCapEff:\t%016x\nCapBnd:\t%016x\n" \
        % (DOCKER_DEFAULT_CAPS, DOCKER_DEFAULT_CAPS), probe.err
    volume = os.path.join(home, "volume")
    os.mkdir(volume)
    os.chown(volume, rootless.uid, rootless.gid)
    wrote = rootless("run", "--rm", "--init", "-v", "%s:/v" % volume, rootfs, "sh", "-c",
                     "touch /v/root; chmod 777 /v")
    assert wrote.returncode == 0, wrote.err
    assert rootless("run", "--rm", "-u", "1000:1000", "-v", "%s:/v" % volume, rootfs, "touch",
                    "/v/user").returncode == 0
    owners = {name: (os.stat(os.path.join(volume, name)).st_uid,
                     os.stat(os.path.join(volume, name)).st_gid) for name in ("root", "user")}
    assert owners == {"root": (rootless.uid, rootless.gid), "user": (first + 999, first + 999)}
    host = rootless("run", "--rm", "--network", "host", rootfs, "ls", "/sys/class/net")
    assert host.out.split() == sorted(os.listdir("/sys/class/net")), host.err
    started = rootless("run", "-d", "--name", "rootless-box", rootfs, "sleep", "1000")
    assert started.returncode == 0, started.err
    joined = rootless("exec", "rootless-box", "cat", "/proc/self/uid_map")
    assert joined.out == maps["uid"], joined.err
    assert "rootless-box" in rootless("ps").out
    assert rootless("stop", "-t", "0", "rootless-box").returncode == 0
    removed = rootless("rm", "rootless-box")
    assert removed.returncode == 0 and removed.err == "", removed.err
    def shell():
        rootless.become()
        os.chdir(home)
        os.execve(rootless.launcher, [rootless.launcher, "run", "--rm", "-it", rootfs, "sh", "-c",
                                      "tty; exit 5"],
                  {"HOME": home, "PATH": "/usr/bin:/bin",
                   "XDG_RUNTIME_DIR": os.path.join(home, "run")})
    code, output = on_a_terminal(shell)
    assert code == 5 and b"/dev/pts/0" in output, output
    for flags, message in [
            (["--network", "bridge"], "rootless: --network bridge needs root"),
            (["-m", "64m"], "rootless: --memory needs a cgroup of the container's own"),
            (["--userns", "auto"], "rootless: --userns, --uidmap and --gidmap need root"),
            (["--privileged"], "--privileged and a user namespace conflict: its root cannot "
                               "own what the host's root does (a user's container always has "
                               "one)"),
            (["--cgroup-parent", "/x"], "rootless: --cgroup-parent needs root")]:
        refused = rootless("run", "--rm", *flags, rootfs, "true")
        assert refused.returncode == 125 and refused.err.count("\n") == 1, refused.err
        assert refused.err.startswith("minidocker: error: " + message), refused.err


@root
def test_rootless_a_user_cannot_reach_a_remapped_container_through_its_own_ids(rootless, rootfs):
    """A "containers" range written over a user's /etc/subuid range (here
    the user's 3600000:65536 inside containers:3600000:200000): --userns
    auto takes none of the user's ids, or the user, in a user namespace of
    its own ranges (newuidmap, as any user may), would be the same host
    id as the container's root and could kill it, trace it, own its
    files."""
    for path in md.SUBID_FILES.values():
        with open(path, "a") as handle:
            handle.write("containers:%d:200000\n" % ROOTLESS_SUBIDS[0])
    with started(rootfs, "sh", "-c", "cat /proc/self/uid_map; exec sleep 60",
                 options=["--userns", "auto"]) as proc:
        shown = proc.stdout.readline().decode().split()
        assert shown == ["0", str(ROOTLESS_SUBIDS[0] + ROOTLESS_SUBIDS[1]), "65536"], shown
        deadline = time.monotonic() + 20
        while not [r for r in records_now() if r["pid"]]:  # written once the command runs
            assert time.monotonic() < deadline
            time.sleep(0.05)
        [record] = records_now()
        attack = subprocess.run(
            ["unshare", "--map-root-user", "--map-users=%d,1,%d" % ROOTLESS_SUBIDS,
             "--map-groups=%d,1,%d" % ROOTLESS_SUBIDS, "setpriv", "--reuid", "1", "--regid", "1",
             "--clear-groups", "kill", "-9", str(record["pid"])], preexec_fn=rootless.become,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, capture_output=True, timeout=30)
        assert attack.returncode != 0 and b"Operation not permitted" in attack.stderr, attack
        assert proc.poll() is None
        assert minidocker("kill", record["id"]).returncode == 0
        assert proc.wait(timeout=30) == 137
    assert_nothing_left()


@root
def test_rootless_without_newuidmap_maps_the_user_alone(rootless):
    """Without newuidmap and newgidmap (not in $PATH), the user's own ids
    are all the namespace has: container root, its files the user's, no
    setgroups; a -u the map lacks is one clear line."""
    rootfs = os.path.join(rootless.home, "rootfs")
    assert rootless("mkrootfs", rootfs).returncode == 0
    alone = rootless("run", "--rm", rootfs, "sh", "-c", "cat /proc/self/uid_map /proc/self/setgroups; "
                     "touch /new; stat -c %u:%g /new", path="/nonexistent")
    assert alone.returncode == 0, alone.err
    assert alone.out == "%10d %10d %10d\ndeny\n0:0\n" % (0, rootless.uid, 1)
    unmapped = rootless("run", "--rm", "-u", "1000", rootfs, "true", path="/nonexistent")
    assert unmapped.returncode == 125
    assert unmapped.err == ("minidocker: error: user 1000:0 is not in the user namespace's map (a "
                            "user's container without newuidmap maps the user alone, to root)\n")


@root
def test_rootless_a_run_tree_another_user_made_first_is_refused(rootless):
    """Without $XDG_RUNTIME_DIR a user's run tree is /tmp/minidocker-run-UID,
    a name any user may take first. Another user (here nobody) made it and
    planted a record of a "running" container the user never ran, whose
    pid and owner are a process of the user's: ps, rm -f and exec refuse
    in one line, exit 125; nothing is listed, killed or entered."""
    planted = "/tmp/minidocker-run-%d" % rootless.uid
    os.mkdir(planted)  # (not ours to remove if it is there already)
    victim = subprocess.Popen(["sleep", "60"], preexec_fn=rootless.become)
    try:
        start = md.process_start_time(victim.pid)
        cid = "ab" * 32
        record = {"id": cid, "status": "running", "rootfs": "/", "cgroups": [],
                  "command": ["sleep"], "remove": False, "pid": victim.pid, "pid_start": start,
                  "owner": victim.pid, "owner_start": start, "created": time.time(),
                  "name": "planted", "id_maps": None}
        os.mkdir(os.path.join(planted, "containers"))
        with open(os.path.join(planted, "containers", cid + ".json"), "w") as handle:
            json.dump(record, handle)
        for top, dirs, files in os.walk(planted):
            for name in [top] + [os.path.join(top, entry) for entry in files]:
                os.chown(name, 65534, 65534)
                os.chmod(name, 0o777)
        env = {"HOME": rootless.home, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        for words in (["ps", "-a"], ["exec", "planted", "true"], ["rm", "-f", "planted"]):
            result = subprocess.run([rootless.launcher] + words, preexec_fn=rootless.become,
                                    env=env, cwd=rootless.home, stdin=subprocess.DEVNULL,
                                    capture_output=True, timeout=60)
            assert (result.returncode, result.stdout, result.stderr.decode()) == (
                125, b"", "minidocker: error: state directory %s is not a directory of this "
                "user's own: refused\n" % planted), words
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
        shutil.rmtree(planted)


@root
def test_userns_an_idmap_volume_shows_the_hosts_owners_through_the_map(rootfs, tmp_path):
    """-v HOST:CTR:idmap: a host directory seen through the container's
    map, as podman's idmap option: host root's file is container root's
    (and opens for it), and what container root writes there is host
    root's (here under --init, whose reaper zeroes its own command line as
    the namespace's root); without idmap, the same file is nobody's and
    stays shut."""
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "root-only").write_text("host root's\n")
    (volume / "root-only").chmod(0o600)
    maps = ["--uidmap", "0:3800000:65536"]
    seen = sh(rootfs, "cat /v/root-only; stat -c %u:%g /v/root-only; touch /v/made",
              options=maps + ["-v", "%s:/v:idmap" % volume, "--init"])
    assert seen.returncode == 0, seen.err
    assert seen.out == "host root's\n0:0\n"
    made = os.stat(str(volume / "made"))
    assert (made.st_uid, made.st_gid) == (0, 0)
    shut = sh(rootfs, "stat -c %u:%g /v/root-only; cat /v/root-only", options=maps + [
        "-v", "%s:/v" % volume])
    assert shut.out == "65534:65534\n" and "Permission denied" in shut.err
    bad(["run", "--rm", "-v", "%s:/v:idmap" % volume, rootfs, "true"],
        "invalid volume '%s:/v:idmap': idmap needs a user namespace of root's" % volume)


@root
def test_rootless_limits_in_a_delegated_cgroup(rootless):
    """On a cgroup2-only host where root delegates a cgroup to the user (its
    directory and files chowned to it, as systemd's Delegate= does), a
    rootless run takes -m and --pids-limit: the container gets a cgroup
    beside the user's own, reads its limits there, and the cgroup goes
    with it. Where nothing is delegated (this host's v1 or hybrid layout
    among them), the limit is refused in one line that says why."""
    rootfs = os.path.join(rootless.home, "rootfs")
    assert rootless("mkrootfs", rootfs).returncode == 0
    layout = md.detect_cgroups(md.read_text("/proc/self/mountinfo"),
                               md.read_text("/proc/self/cgroup"))
    limits = ["-m", "64m", "--pids-limit", "50"]
    if layout.v1 or not layout.v2_mount:
        refused = rootless("run", "--rm", *limits, rootfs, "true")
        assert refused.returncode == 125 and refused.err.startswith(
            "minidocker: error: rootless: --memory needs a cgroup of the container's own, and "
            "no cgroup2 directory is delegated to this user here"), refused.err
        return
    delegated = os.path.join(layout.v2_mount, "mdtest-delegated-%d" % os.getpid())
    session = os.path.join(delegated, "session")
    md.enable_v2_controllers(layout.v2_mount, layout.v2_mount, {"memory", "pids", "cpu"})
    os.mkdir(delegated)
    os.mkdir(session)
    try:
        for path in (delegated, session):
            for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
                os.chown(os.path.join(path, name), rootless.uid, rootless.gid)
        inside = rootless("run", "--rm", *limits, rootfs, "sh", "-c",
                          "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /proc/self/cgroup",
                          cgroup=session)
        assert inside.returncode == 0, inside.err
        assert inside.out == "%d\n50\n0::/\n" % (64 << 20)
        assert [name for name in os.listdir(delegated) if name.startswith("minidocker-")] == []
        plain = rootless("run", "--rm", rootfs, "cat", "/proc/self/cgroup", cgroup=session)
        assert plain.out == "0::/\n", plain.err  # without limits: the session's own cgroup
    finally:
        os.rmdir(session)
        os.rmdir(delegated)


@root
def test_rootless_as_podman_maps_it(rootless):
    """podman run by the same user, rootless (through runc, cgroupfs), and
    minidocker's rootless run of the same rootfs: the same uid and gid
    maps (the user as root, its /etc/subuid range from 1) and the same
    capabilities. podman's pause process, which it leaves holding its
    namespaces, is ended by its pid file."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (apt-get install podman)")
    home = rootless.home
    rootfs = os.path.join(home, "rootfs")
    assert rootless("mkrootfs", rootfs).returncode == 0
    probe = "cat /proc/self/uid_map /proc/self/gid_map; grep -E '^Cap(Prm|Eff|Bnd)' /proc/self/status"
    ours = rootless("run", "--rm", rootfs, "sh", "-c", probe)
    assert ours.returncode == 0, ours.err
    conf = os.path.join(home, "containers.conf")
    with open(conf, "w") as handle:
        handle.write('[containers]\ndefault_ulimits = []\n'
                     '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    runtime = os.path.join(home, "run")
    try:
        theirs = subprocess.run(
            ["podman", "--runtime", shutil.which("runc"), "run", "--rm", "--network", "none",
             "--rootfs", rootfs, "sh", "-c", probe], preexec_fn=rootless.become, cwd=home,
            env={"HOME": home, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "XDG_RUNTIME_DIR": runtime,
                 "CONTAINERS_CONF": conf}, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=120)
        assert theirs.returncode == 0, theirs.stderr
        assert theirs.stdout == ours.out
        assert ours.out.startswith("%10d %10d %10d\n%10d %10d %10d\n" % (
            (0, rootless.uid, 1, 1) + ROOTLESS_SUBIDS))
    finally:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            with open(os.path.join(runtime, "libpod", "tmp", "pause.pid")) as handle:
                pause = int(handle.read())
            os.kill(pause, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while os.path.exists("/proc/%d" % pause) and time.monotonic() < deadline:
                time.sleep(0.05)


# ---------------------------------------------------------------------------
# 5. Images: test images built with umoci, and real registries to pull from
# ---------------------------------------------------------------------------
# What the image tests pull, load and run, made by the peers and never by
# minidocker: OCI image layouts that umoci builds from the busybox rootfs
# (with blobs written here by hand where umoci has no command for them), the
# archives skopeo makes of them (`docker save`'s tar and oci-archive), and
# Debian's docker-registry (the distribution project's registry, as Docker
# Hub runs it) serving them over plain http on 127.0.0.1: anonymous, behind
# htpasswd, or behind a token server that runs in this process. The tests at
# the end of the section guard the fixtures themselves, with skopeo and
# umoci as the judges.

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_REF_NAME = "org.opencontainers.image.ref.name"  # a tag, in a layout's index.json
IMAGE_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REGISTRY_USER = "tester"
REGISTRY_PASSWORD = "s3cret"
TOKEN_SERVICE = "minidocker-test-registry"  # the token's aud, as the registry expects it
TOKEN_ISSUER = "minidocker-test-issuer"  # its iss


def need_tool(name, package):
    if shutil.which(name) is None:
        pytest.fail("%s is not installed (apt-get install %s)" % (name, package))


def peer(*command, input=None, timeout=120):
    """A peer tool's stdout (bytes); the test fails with its stderr if it fails."""
    result = subprocess.run(list(command), input=input, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=timeout,
                            stdin=None if input is not None else subprocess.DEVNULL)
    if result.returncode != 0:
        pytest.fail("%s: exit %d: %s" % (" ".join(command), result.returncode,
                                         result.stderr.decode(errors="replace")))
    return result.stdout


def umoci(*args):
    peer("umoci", *args)


def skopeo(*args):
    """skopeo's answer (a CompletedProcess, text). --insecure-policy: the
    host's signature policy has nothing to say about unsigned test images."""
    return subprocess.run(["skopeo", "--insecure-policy"] + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)


def skopeo_ok(*args):
    result = skopeo(*args)
    assert result.returncode == 0, "skopeo %s: %s" % (" ".join(args), result.stderr)
    return result.stdout


class ImageLayout:
    """An OCI image layout directory (image-spec's image-layout.md) and what
    its tags hold: `.path`, `.ref(tag)` for skopeo, and the tag's descriptor,
    manifest (or index), config and layers as the layout stores them."""

    def __init__(self, path):
        self.path = str(path)

    def ref(self, tag):
        return "oci:%s:%s" % (self.path, tag)

    def blob(self, digest):
        algorithm, hexdigest = digest.split(":", 1)
        with open(os.path.join(self.path, "blobs", algorithm, hexdigest), "rb") as handle:
            return handle.read()

    def descriptor(self, tag):
        with open(os.path.join(self.path, "index.json")) as handle:
            index = json.load(handle)
        found = [d for d in index["manifests"] if d.get("annotations", {}).get(OCI_REF_NAME) == tag]
        assert len(found) == 1, "tag %r in %s: %r" % (tag, self.path, index)
        return found[0]

    def manifest(self, tag):
        return json.loads(self.blob(self.descriptor(tag)["digest"]))

    def config(self, tag):
        return json.loads(self.blob(self.manifest(tag)["config"]["digest"]))

    def layer(self, tag, number):
        """Layer `number` (from 0, the lowest) of the tag, an open tarfile."""
        digest = self.manifest(tag)["layers"][number]["digest"]
        return tarfile.open(fileobj=io.BytesIO(self.blob(digest)))


def write_file(path, text, mode=0o644):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def tar_layer(path, entries):
    """An uncompressed layer tar of (name, text) entries, a name ending in
    "/" a directory (0755) and the others files (0644), all root's."""
    with tarfile.open(str(path), "w") as tar:
        for name, text in entries:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = int(time.time())
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = text.encode()
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))


def umoci_plain(layout, rootfs, bundle):
    """A new layout whose tag `plain` is the busybox rootfs as one layer,
    with no config yet. Returns the bundle it was packed from: umoci's
    metadata there stands on `plain`, so the next repack adds a layer."""
    umoci("init", "--layout", layout)
    umoci("new", "--image", layout + ":empty")
    umoci("unpack", "--image", layout + ":empty", bundle)
    peer("cp", "-a", rootfs + "/.", os.path.join(bundle, "rootfs"))
    umoci("repack", "--refresh-bundle", "--image", layout + ":plain", bundle)
    umoci("rm", "--image", layout + ":empty")
    return bundle


def fill_data_layer(rootfs):
    """What layer 2 of `layers` adds: one entry of each kind an unpacker has
    to get right, and the two that layer 3 deletes. /data/kept ("kept\n",
    xattr user.test=hello) and /data/hard are one file: umoci writes the
    tar in name order, so data/hard is the file there and data/kept the
    hard link to it (both with the xattr)."""
    data = os.path.join(rootfs, "data")
    os.makedirs(os.path.join(data, "dir"))
    os.chmod(data, 0o755)
    os.chmod(os.path.join(data, "dir"), 0o755)
    write_file(os.path.join(data, "kept"), "kept\n")
    os.setxattr(os.path.join(data, "kept"), "user.test", b"hello")
    write_file(os.path.join(data, "gone"), "gone\n")
    write_file(os.path.join(data, "dir", "old"), "old\n")
    os.link(os.path.join(data, "kept"), os.path.join(data, "hard"))
    os.symlink("kept", os.path.join(data, "link"))
    write_file(os.path.join(data, "suid"), "suid\n", mode=0o4755)
    write_file(os.path.join(data, "owned"), "owned\n")
    os.chown(os.path.join(data, "owned"), 1234, 5678)
    os.mkfifo(os.path.join(data, "fifo"))
    os.chmod(os.path.join(data, "fifo"), 0o644)


# Layer 3 of `layers`, written here: umoci's repack whites a replaced
# directory's old entries out one by one (`data/dir/.wh.old`), never with
# the opaque marker, so the layer is made by hand and appended with
# `umoci raw add-layer`. `.wh.gone` deletes /data/gone; `.wh..wh..opq` hides
# everything the layers below hold in /data/dir, before `new` is added.
WHITEOUT_LAYER = [("data/", None), ("data/.wh.gone", ""), ("data/dir/", None),
                  ("data/dir/.wh..wh..opq", ""), ("data/dir/new", "new\n")]

LAYERS_CONFIG = ["--config.entrypoint", "/bin/echo", "--config.entrypoint", "entry",
                 "--config.cmd", "cmd", "--config.env", "IMAGE_VAR=from-image",
                 "--config.env", IMAGE_PATH_ENV, "--config.workingdir", "/data",
                 "--config.user", "1234:5678", "--config.exposedports", "80/tcp",
                 "--config.label", "org.example.test=yes", "--config.stopsignal", "SIGUSR1"]


@pytest.fixture(scope="session")
def image_layout(rootfs, tmp_path_factory):
    """An OCI layout (ImageLayout) with two tags, as root (the owners and the
    setuid bit are real):
    - `plain`: the busybox rootfs as one layer; Cmd ["/bin/sh"], nothing else
      in its config (no Env: the runtime's default PATH applies);
    - `layers`: the same layer, then layer 2 (fill_data_layer), then layer 3
      (WHITEOUT_LAYER); config LAYERS_CONFIG (Entrypoint ["/bin/echo",
      "entry"], Cmd ["cmd"], Env IMAGE_VAR and PATH, WorkingDir /data, User
      1234:5678, port 80/tcp, label org.example.test=yes, StopSignal SIGUSR1).
    """
    need_tool("umoci", "umoci")
    work = str(tmp_path_factory.mktemp("image-layout"))
    layout, bundle = os.path.join(work, "layout"), os.path.join(work, "bundle")
    umoci_plain(layout, rootfs, bundle)
    fill_data_layer(os.path.join(bundle, "rootfs"))
    umoci("repack", "--image", layout + ":layers", bundle)
    shutil.rmtree(bundle)
    tar_layer(os.path.join(work, "whiteouts.tar"), WHITEOUT_LAYER)
    umoci("raw", "add-layer", "--image", layout + ":layers", os.path.join(work, "whiteouts.tar"))
    os.unlink(os.path.join(work, "whiteouts.tar"))
    umoci("config", "--image", layout + ":layers", *LAYERS_CONFIG)
    umoci("config", "--image", layout + ":plain", "--config.cmd", "/bin/sh")
    umoci("gc", "--layout", layout)
    image = ImageLayout(layout)
    assert {"data/.wh.gone", "data/dir/.wh..wh..opq"} <= set(image.layer("layers", 2).getnames())
    return image


def add_index(layout, tag, platforms):
    """Tag `tag` of the layout becomes an image index (image-spec's
    image-index.md) of the manifests tagged with each platform's
    architecture, each entry with its platform: umoci makes manifests only,
    so the index blob is written here."""
    entries = []
    for architecture in platforms:
        entry = dict(layout.descriptor(architecture))
        del entry["annotations"]
        entry["platform"] = {"architecture": architecture, "os": "linux"}
        entries.append(entry)
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
                      indent=2).encode()
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout.path, "blobs", "sha256", digest), "wb") as handle:
        handle.write(data)
    index_path = os.path.join(layout.path, "index.json")
    with open(index_path) as handle:
        index = json.load(handle)
    index["manifests"].append({"mediaType": OCI_INDEX, "digest": "sha256:" + digest,
                               "size": len(data), "annotations": {OCI_REF_NAME: tag}})
    with open(index_path + ".new", "w") as handle:
        json.dump(index, handle)
    os.rename(index_path + ".new", index_path)


@pytest.fixture(scope="session")
def multiarch_layout(rootfs, tmp_path_factory):
    """An OCI layout (ImageLayout) whose tag `multi` is an image index of
    two manifests, linux/amd64 and linux/arm64, also tagged `amd64` and
    `arm64`: each is the busybox layer (Cmd ["/bin/sh"]) and one more layer
    holding /arch ("amd64\\n" or "arm64\\n"), and its config's architecture
    says the same. (The arm64 one still holds the amd64 busybox: it is
    there to be chosen or passed over, not run.)"""
    need_tool("umoci", "umoci")
    work = str(tmp_path_factory.mktemp("multiarch-layout"))
    layout = os.path.join(work, "layout")
    shutil.rmtree(umoci_plain(layout, rootfs, os.path.join(work, "bundle")))
    umoci("config", "--image", layout + ":plain", "--config.cmd", "/bin/sh")
    for architecture in ("amd64", "arm64"):
        marker = os.path.join(work, architecture + ".tar")
        tar_layer(marker, [("arch", architecture + "\n")])
        umoci("raw", "add-layer", "--image", layout + ":plain", "--tag", architecture, marker)
        os.unlink(marker)
        umoci("config", "--image", "%s:%s" % (layout, architecture), "--architecture", architecture)
    umoci("rm", "--image", layout + ":plain")
    umoci("gc", "--layout", layout)
    image = ImageLayout(layout)
    add_index(image, "multi", ("amd64", "arm64"))
    return image


def docker_archive(layout_ref, path, name):
    """`docker save`'s tar of an image, by skopeo. Its manifest.json names
    the image fully qualified, as skopeo writes it: name "test/x:v1" is
    RepoTags ["docker.io/test/x:v1"] (docker save writes "test/x:v1")."""
    skopeo_ok("copy", "-q", layout_ref, "docker-archive:%s:%s" % (path, name))
    return str(path)


def oci_archive(layout_ref, path, tag):
    """An OCI layout in one tar, the image tagged `tag` there, by skopeo."""
    skopeo_ok("copy", "-q", layout_ref, "oci-archive:%s:%s" % (path, tag))
    return str(path)


def base64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The token server of distribution's Bearer flow (its docs/spec/auth/
    token.md), on 127.0.0.1 in a thread of this process. GET /token?service=
    &scope=repository:NAME:ACTIONS: with HTTP basic auth tester:s3cret every
    action asked for is granted; anonymous, pull only, and only of
    repositories named public/*; wrong credentials get 401. The answer is
    {"token", "access_token", "expires_in"}, a JWT signed RS256 by a key made
    here, its self-signed certificate in the header's x5c, which the
    registry checks against the same certificate as its rootcertbundle.
    Every request is recorded in `requests` as (query string, the basic-auth
    user or None)."""

    def __init__(self, directory):
        self.key = os.path.join(directory, "token.key")
        self.cert = os.path.join(directory, "token.crt")
        peer("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=" + TOKEN_ISSUER, "-keyout", self.key, "-out", self.cert)
        self.x5c = base64.b64encode(peer("openssl", "x509", "-in", self.cert, "-outform", "DER")).decode()
        self.requests = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenHandler)
        self.server.tokens = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.realm = "http://127.0.0.1:%d/token" % self.server.server_port

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    @staticmethod
    def grant(user, scopes):
        """The `access` claim: what each scope asks, as far as user may."""
        access = []
        for scope in scopes:
            kind, rest = scope.split(":", 1)
            name, actions = rest.rsplit(":", 1)
            wanted = actions.split(",")
            if user is None:
                wanted = [a for a in wanted if a == "pull" and kind == "repository"
                          and name.startswith("public/")]
            access.append({"type": kind, "name": name, "actions": wanted})
        return access

    def token(self, user, access):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": TOKEN_ISSUER, "sub": user or "", "aud": TOKEN_SERVICE,
                  "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": os.urandom(16).hex(), "access": access}
        signed = "%s.%s" % (base64url(json.dumps(header).encode()),
                            base64url(json.dumps(claims).encode()))
        signature = peer("openssl", "dgst", "-sha256", "-sign", self.key, input=signed.encode())
        return signed + "." + base64url(signature)


class TokenHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        tokens = self.server.tokens
        path, _, query = self.path.partition("?")
        user, authorized = self.basic_user()
        tokens.requests.append((query, user))
        fields = urllib.parse.parse_qs(query)
        if path != "/token" or fields.get("service") != [TOKEN_SERVICE]:
            return self.answer(400, {"errors": [{"code": "UNSUPPORTED"}]})
        if user is not None and not authorized:
            return self.answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
        token = tokens.token(user, tokens.grant(user, fields.get("scope", [])))
        return self.answer(200, {"token": token, "access_token": token, "expires_in": 300})

    def basic_user(self):
        """(the user the request names, or None; whether its password is right)."""
        kind, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if kind.lower() != "basic":
            return None, False
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        return user, (user, password) == (REGISTRY_USER, REGISTRY_PASSWORD)

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass  # the requests are in TokenServer.requests


class Registry:
    """A running docker-registry: `.host` ("127.0.0.1:PORT"), `.creds`
    ("tester:s3cret", or None when it lets anyone in), `.token_requests`
    (the token server's TokenServer.requests; empty without one), `.log`
    (the registry's own log file); `.ref(repo_tag)` and `.push(layout_ref,
    repo_tag)`."""

    def __init__(self, host, creds, token_requests, log):
        self.host, self.creds, self.token_requests, self.log = host, creds, token_requests, log

    def ref(self, repo_tag):
        return "docker://%s/%s" % (self.host, repo_tag)

    def push(self, layout_ref, repo_tag):
        """skopeo copies the image (an index with all its manifests) here,
        its digests as they are: what the registry serves is byte for byte
        what the layout holds."""
        creds = ["--dest-creds", self.creds] if self.creds else ["--dest-no-creds"]
        skopeo_ok("copy", "-q", "--all", "--preserve-digests", "--dest-tls-verify=false",
                  *creds, layout_ref, self.ref(repo_tag))


def registry_config(base, port, auth, tokens):
    """docker-registry's config.yml (JSON is YAML too): storage under base,
    plain http on 127.0.0.1:port, and the auth asked for."""
    config = {"version": "0.1", "log": {"level": "info"},
              "storage": {"filesystem": {"rootdirectory": os.path.join(base, "storage")},
                          "delete": {"enabled": True}},
              "http": {"addr": "127.0.0.1:%d" % port, "secret": os.urandom(16).hex()}}
    if auth == "basic":
        htpasswd = os.path.join(base, "htpasswd")
        with open(htpasswd, "wb") as handle:  # -B: bcrypt, the only hash the registry takes
            handle.write(peer("htpasswd", "-nbB", REGISTRY_USER, REGISTRY_PASSWORD))
        config["auth"] = {"htpasswd": {"realm": "minidocker-test", "path": htpasswd}}
    elif auth == "token":
        config["auth"] = {"token": {"realm": tokens.realm, "service": TOKEN_SERVICE,
                                    "issuer": TOKEN_ISSUER, "rootcertbundle": tokens.cert}}
    path = os.path.join(base, "config.yml")
    with open(path, "w") as handle:
        json.dump(config, handle, indent=2)
    return path


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_registry(proc, port, log, timeout=30):
    """Until GET /v2/ answers (200, or 401 asking for credentials)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/v2/")
            if connection.getresponse().status in (200, 401):
                return
        except OSError:
            time.sleep(0.05)
        finally:
            connection.close()
    with open(log) as handle:
        pytest.fail("docker-registry on port %d did not answer: %s" % (port, handle.read()))


@contextlib.contextmanager
def registry(tmp_dir, auth=None):
    """Debian's docker-registry on 127.0.0.1, plain http, its files in a
    directory of its own under tmp_dir; auth None (anyone pulls and
    pushes), "basic" (htpasswd: tester, s3cret) or "token" (TokenServer).
    Yields a Registry; the registry and token server stop, and the
    directory goes, when the block ends."""
    assert auth in (None, "basic", "token"), auth
    need_tool("docker-registry", "docker-registry")
    need_tool("skopeo", "skopeo")
    need_tool("htpasswd" if auth == "basic" else "openssl", "apache2-utils openssl")
    base = tempfile.mkdtemp(prefix="registry-", dir=str(tmp_dir))
    tokens = proc = None
    try:
        tokens = TokenServer(base) if auth == "token" else None
        port = free_port()
        config = registry_config(base, port, auth, tokens)
        log = os.path.join(base, "registry.log")
        with open(log, "wb") as handle:  # no REGISTRY_* of the host's reaches it
            proc = subprocess.Popen(["docker-registry", "serve", config], stdin=subprocess.DEVNULL,
                                    stdout=handle, stderr=subprocess.STDOUT,
                                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        wait_for_registry(proc, port, log)
        yield Registry("127.0.0.1:%d" % port,
                       None if auth is None else "%s:%s" % (REGISTRY_USER, REGISTRY_PASSWORD),
                       tokens.requests if tokens else [], log)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if tokens is not None:
            tokens.close()
        shutil.rmtree(base)


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory):
    """A registry for the session (see `registry`): plain http, anonymous."""
    with registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@root
def test_image_fixtures_layers_and_plain_as_umoci_and_skopeo_read_them(image_layout, tmp_path):
    """`layers` unpacked by umoci (which applies whiteouts and opaque
    directories) holds what its three layers say, and skopeo reads its
    config as set; `plain` is the first layer alone, Cmd /bin/sh."""
    assert [m.name for m in image_layout.layer("layers", 2).getmembers()] == [
        "data", "data/.wh.gone", "data/dir", "data/dir/.wh..wh..opq", "data/dir/new"]
    bundle = str(tmp_path / "bundle")
    umoci("unpack", "--image", image_layout.path + ":layers", bundle)
    data = os.path.join(bundle, "rootfs", "data")
    assert sorted(os.listdir(data)) == ["dir", "fifo", "hard", "kept", "link", "owned", "suid"]
    assert os.listdir(os.path.join(data, "dir")) == ["new"]
    with open(os.path.join(data, "kept")) as handle:
        assert handle.read() == "kept\n"
    assert os.getxattr(os.path.join(data, "kept"), "user.test") == b"hello"
    kept, hard = os.lstat(os.path.join(data, "kept")), os.lstat(os.path.join(data, "hard"))
    assert (hard.st_ino, hard.st_nlink) == (kept.st_ino, 2)
    assert os.readlink(os.path.join(data, "link")) == "kept"
    suid, owned = os.lstat(os.path.join(data, "suid")), os.lstat(os.path.join(data, "owned"))
    assert (stat.S_IMODE(suid.st_mode), suid.st_uid, suid.st_gid) == (0o4755, 0, 0)
    assert (owned.st_uid, owned.st_gid) == (1234, 5678)
    assert stat.S_ISFIFO(os.lstat(os.path.join(data, "fifo")).st_mode)
    assert os.path.isfile(os.path.join(bundle, "rootfs", "bin", "busybox"))
    config = json.loads(skopeo_ok("inspect", "--config", image_layout.ref("layers")))["config"]
    assert config == {"User": "1234:5678", "ExposedPorts": {"80/tcp": {}},
                      "Env": ["IMAGE_VAR=from-image", IMAGE_PATH_ENV],
                      "Entrypoint": ["/bin/echo", "entry"], "Cmd": ["cmd"], "WorkingDir": "/data",
                      "Labels": {"org.example.test": "yes"}, "StopSignal": "SIGUSR1"}
    plain = json.loads(skopeo_ok("inspect", "--config", image_layout.ref("plain")))
    assert plain["config"] == {"Cmd": ["/bin/sh"]} and plain["architecture"] == "amd64"
    assert image_layout.manifest("plain")["layers"] == image_layout.manifest("layers")["layers"][:1]


@root
def test_image_fixtures_archives_as_skopeo_reads_them(image_layout, tmp_path):
    """docker_archive writes `docker save`'s tar, oci_archive a layout in a
    tar; skopeo reads both back as the same image."""
    saved = docker_archive(image_layout.ref("layers"), tmp_path / "saved.tar", "test/layers:v1")
    with tarfile.open(saved) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert [(m["RepoTags"], len(m["Layers"])) for m in manifest] == [(["docker.io/test/layers:v1"], 3)]
    config = json.loads(skopeo_ok("inspect", "--config", "docker-archive:" + saved))["config"]
    assert config["Entrypoint"] == ["/bin/echo", "entry"] and config["User"] == "1234:5678"
    archive = oci_archive(image_layout.ref("layers"), tmp_path / "oci.tar", "v1")
    raw = skopeo_ok("inspect", "--raw", "oci-archive:%s:v1" % archive).encode()
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == image_layout.descriptor("layers")["digest"]


@root
def test_image_fixtures_multiarch_index_as_skopeo_reads_it(multiarch_layout, tmp_path):
    """`multi` is an OCI index skopeo reads, and copying it for arm64 or
    amd64 picks that platform's manifest: its config and its /arch."""
    index = json.loads(skopeo_ok("inspect", "--raw", multiarch_layout.ref("multi")))
    assert index["mediaType"] == OCI_INDEX
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
    for architecture in ("arm64", "amd64"):
        copied = ImageLayout(tmp_path / architecture)
        skopeo_ok("--override-arch", architecture, "copy", "-q", multiarch_layout.ref("multi"),
                  copied.ref("x"))
        assert copied.descriptor("x")["digest"] == multiarch_layout.descriptor(architecture)["digest"]
        assert copied.config("x")["architecture"] == architecture
        marker = copied.layer("x", 1)
        assert marker.getnames() == ["arch"]
        assert marker.extractfile("arch").read() == (architecture + "\n").encode()


def unauthorized(result):
    return result.returncode != 0 and "unauthorized" in result.stderr.lower()


@root
@pytest.mark.parametrize("auth", [None, "basic", "token"])
def test_image_fixtures_push_and_pull_through_each_registry_with_skopeo(
        auth, image_layout, multiarch_layout, plain_registry, tmp_path):
    """Each registry takes `layers` and the `multi` index from skopeo, and
    gives them back byte for byte, to the credentials only where it has
    auth; the token registry lets anyone pull public/* and nothing more,
    through the token server."""
    running = contextlib.nullcontext(plain_registry) if auth is None else registry(tmp_path, auth)
    with running as reg:
        creds = ["--creds", reg.creds] if reg.creds else []
        reg.push(image_layout.ref("layers"), "test/layers:v1")
        seen = json.loads(skopeo_ok("inspect", "--tls-verify=false", *creds, reg.ref("test/layers:v1")))
        assert seen["Digest"] == image_layout.descriptor("layers")["digest"]
        assert seen["Labels"] == {"org.example.test": "yes"} and len(seen["Layers"]) == 3
        pulled = ImageLayout(tmp_path / "pulled")
        src_creds = ["--src-creds", reg.creds] if reg.creds else []
        skopeo_ok("copy", "-q", "--src-tls-verify=false", *src_creds, reg.ref("test/layers:v1"),
                  pulled.ref("v1"))
        assert pulled.manifest("v1") == image_layout.manifest("layers")
        reg.push(multiarch_layout.ref("multi"), "test/multi:v1")
        raw = skopeo_ok("inspect", "--raw", "--tls-verify=false", *creds, reg.ref("test/multi:v1"))
        assert raw.encode() == multiarch_layout.blob(multiarch_layout.descriptor("multi")["digest"])
        anonymous = skopeo("inspect", "--tls-verify=false", "--no-creds", reg.ref("test/layers:v1"))
        assert (anonymous.returncode == 0) == (auth is None), anonymous.stderr
        if auth is not None:
            assert unauthorized(anonymous), anonymous.stderr
            wrong = skopeo("inspect", "--tls-verify=false", "--creds", REGISTRY_USER + ":wrong",
                           reg.ref("test/layers:v1"))
            assert unauthorized(wrong), wrong.stderr
        if auth == "token":
            reg.push(image_layout.ref("plain"), "public/x:v1")
            assert {user for query, user in reg.token_requests if "repository:public/x:pull,push"
                    in urllib.parse.parse_qs(query).get("scope", [])} == {REGISTRY_USER}
            del reg.token_requests[:]
            public = skopeo("inspect", "--tls-verify=false", "--no-creds", reg.ref("public/x:v1"))
            assert public.returncode == 0, public.stderr
            assert set(reg.token_requests) == {
                ("scope=repository%3Apublic%2Fx%3Apull&service=" + TOKEN_SERVICE, None)}
            pushed = skopeo("copy", "-q", "--dest-tls-verify=false", "--dest-no-creds",
                            image_layout.ref("plain"), reg.ref("public/x:v2"))
            assert unauthorized(pushed), pushed.stderr


# The image tests that use the fixtures above: minidocker pulls from the
# real registry and loads skopeo's archives; umoci's unpack is the peer
# its store is compared with.

# Every file's type and mode, owner, size, links and target, and its time;
# a directory's link count and time are overlayfs' own (1, and the top
# layer's), so directories show type, mode and owner.
TREE_PROBE = ("cd / && find . -xdev -type d ! -path './proc*' ! -path './sys*' ! -path './dev*' "
              "| sort | xargs stat -c '%n %f %u %g' && find . -xdev ! -type d ! -path './proc*' "
              "! -path './sys*' ! -path './dev*' ! -path './etc/host*' ! -path './etc/resolv.conf' "
              "| sort | xargs stat -c '%n %f %u %g %s %h %Y %N'")
# (/etc/hostname, hosts and resolv.conf are written for each run)


@pytest.fixture
def pulled(state):
    """Removes every image a test stored, and what they left."""
    yield
    for line in minidocker("images", "-q").out.split():
        minidocker("rmi", "-f", line)
    minidocker("image", "prune", "-a", "-f")
    assert store_leftovers(state) == []


def registry_blob_gets(registry, digest):
    """How many times minidocker fetched a blob, from the registry's
    access log."""
    with open(registry.log, errors="replace") as handle:
        return sum(1 for line in handle if '"GET /v2/' in line and
                   "/blobs/%s HTTP/" % digest in line and '"minidocker/' in line)


@root
def test_image_pulled_from_a_registry_reads_as_umocis_unpack_of_it(
        image_layout, plain_registry, pulled, state, tmp_path):
    plain_registry.push(image_layout.ref("layers"), "test/layers:v1")
    name = plain_registry.host + "/test/layers:v1"
    result = minidocker("pull", name)
    assert result.returncode == 0, result.err
    digest = image_layout.descriptor("layers")["digest"]
    assert result.out == "Digest: %s\nStatus: Downloaded newer image for %s\n%s\n" % (
        digest, name, name)
    assert run(name).out == "entry cmd\n"
    bundle = str(tmp_path / "bundle")
    umoci("unpack", "--image", image_layout.path + ":layers", bundle)
    ours = run(name, "-c", TREE_PROBE, options=["--entrypoint", "/bin/sh", "-u", "0"])
    theirs = run(os.path.join(bundle, "rootfs"), "sh", "-c", TREE_PROBE)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.err + theirs.err
    assert ours.out == theirs.out
    assert "./data/suid 89ed 0 0" in ours.out and "./data/owned 81a4 1234 5678" in ours.out
    # xattrs (which busybox's stat cannot show) on the files themselves:
    # in our store, the layer that holds data/kept; in umoci's, its rootfs.
    store = os.path.join(image_store(state), "layers")
    kept = [os.path.join(store, n, "diff", "data", "kept") for n in os.listdir(store)
            if os.path.exists(os.path.join(store, n, "diff", "data", "kept"))]
    assert [os.getxattr(path, "user.test") for path in kept] == [b"hello"]
    assert os.getxattr(os.path.join(bundle, "rootfs", "data", "kept"), "user.test") == b"hello"
    shown = json.loads(minidocker("image", "inspect", name).out)[0]
    assert shown["RepoDigests"] == [plain_registry.host + "/test/layers@" + digest]
    assert shown["Config"]["Labels"] == {"org.example.test": "yes"}


@root
def test_image_pull_shows_a_line_per_layer_on_a_terminal(image_layout, plain_registry, pulled):
    plain_registry.push(image_layout.ref("layers"), "test/layers:v1")
    name = plain_registry.host + "/test/layers:v1"
    code, output = on_a_terminal(lambda: os.execv(MINIDOCKER[0], MINIDOCKER + ["pull", name]))
    assert code == 0, output
    text = output.decode()
    for layer in image_layout.manifest("layers")["layers"]:
        short = layer["digest"][7:19]
        assert short + ": waiting" in text and short + ": pull complete" in text, text
    assert re.search(r": downloading [0-9.]+[kM]?B / [0-9.]+[kM]?B \([0-9.]+[kMG]?B/s\)", text)
    assert "Status: Downloaded newer image for " + name in text

@root
def test_image_pull_fetches_a_shared_base_once(image_layout, plain_registry, pulled):
    plain_registry.push(image_layout.ref("layers"), "test/layers:v1")
    plain_registry.push(image_layout.ref("plain"), "test/plain:v1")
    base = image_layout.manifest("plain")["layers"][0]["digest"]
    before = registry_blob_gets(plain_registry, base)  # (the registry is the session's)
    assert minidocker("pull", plain_registry.host + "/test/layers:v1").returncode == 0
    fetched = registry_blob_gets(plain_registry, base)
    assert fetched == before + 1
    result = minidocker("pull", plain_registry.host + "/test/plain:v1")
    assert result.returncode == 0, result.err
    assert registry_blob_gets(plain_registry, base) == fetched
    again = minidocker("pull", plain_registry.host + "/test/plain:v1")
    assert "Status: Image is up to date for " in again.out
    assert run(plain_registry.host + "/test/plain:v1", "true").returncode == 0


@root
def test_image_pull_of_an_index_takes_the_platform_asked(multiarch_layout, plain_registry,
                                                         pulled):
    plain_registry.push(multiarch_layout.ref("multi"), "test/multi:1")
    name = plain_registry.host + "/test/multi:1"
    assert minidocker("pull", name).returncode == 0
    assert run(name, "cat", "/arch").out == "amd64\n"
    result = minidocker("pull", "--platform", "linux/arm64", name)
    assert result.returncode == 0, result.err
    assert json.loads(minidocker("image", "inspect", name).out)[0]["Architecture"] == "arm64"
    assert run(name, "cat", "/arch").out == "arm64\n"
    refused = minidocker("pull", "--platform", "linux/s390x", name)
    assert refused.returncode == 125 and "has no image for linux/s390x (it has: linux/amd64, " \
        "linux/arm64)" in refused.err, refused.err
    by_digest = "%s@%s" % (plain_registry.host + "/test/multi",
                           multiarch_layout.descriptor("multi")["digest"])
    assert run(by_digest, "cat", "/arch", options=["--pull", "always"]).out == "amd64\n"


@root
def test_image_pull_answers_basic_auth_with_the_users_password(image_layout, pulled, tmp_path):
    with registry(tmp_path, "basic") as private:
        private.push(image_layout.ref("plain"), "test/private:1")
        name = private.host + "/test/private:1"
        refused = minidocker("pull", name)
        assert refused.returncode == 125 and "wants a user name and password: give them " \
            "with --username and --password-stdin, or MINIDOCKER_AUTH" in refused.err, refused.err
        wrong = minidocker("pull", "--username", REGISTRY_USER, "--password-stdin", name,
                           input=b"wrong\n")
        assert wrong.returncode == 125 and "401" in wrong.err, wrong.err
        given = minidocker("pull", "--username", REGISTRY_USER, "--password-stdin", name,
                           input=REGISTRY_PASSWORD.encode() + b"\n")
        assert given.returncode == 0, given.err
        assert minidocker("rmi", name).returncode == 0
        env = dict(os.environ, MINIDOCKER_AUTH=private.creds)
        assert minidocker("pull", name, env=env).returncode == 0
        assert run(name, "echo", "in").out == "in\n"


@root
def test_image_pull_goes_through_a_token_server(image_layout, pulled, tmp_path):
    with registry(tmp_path, "token") as guarded:
        guarded.push(image_layout.ref("plain"), "public/x:1")
        guarded.push(image_layout.ref("plain"), "private/y:1")
        del guarded.token_requests[:]
        assert minidocker("pull", guarded.host + "/public/x:1").returncode == 0
        assert {(query, user) for query, user in guarded.token_requests} == {
            ("scope=repository%%3Apublic%%2Fx%%3Apull&service=%s" % TOKEN_SERVICE, None)} or \
            all(user is None and "public%2Fx" in query for query, user in guarded.token_requests)
        assert guarded.token_requests
        refused = minidocker("pull", guarded.host + "/private/y:1")
        assert refused.returncode == 125 and "401" in refused.err, refused.err
        del guarded.token_requests[:]
        env = dict(os.environ, MINIDOCKER_AUTH=guarded.creds)
        result = minidocker("pull", guarded.host + "/private/y:1", env=env)
        assert result.returncode == 0, result.err
        assert {user for _, user in guarded.token_requests} == {REGISTRY_USER}


@root
def test_image_load_reads_skopeos_docker_and_oci_archives(image_layout, pulled, tmp_path):
    saved = docker_archive(image_layout.ref("layers"), tmp_path / "docker.tar", "test/layers:v1")
    result = minidocker("load", "-i", saved)
    assert result.out == "Loaded image: test/layers:v1\n", result.err
    assert run("test/layers:v1").out == "entry cmd\n"
    archive = oci_archive(image_layout.ref("plain"), tmp_path / "oci.tar", "plain")
    with open(archive, "rb") as handle:  # from stdin, gzipped
        import gzip
        result = minidocker("load", input=gzip.compress(handle.read()))
    assert result.returncode == 0 and result.out.startswith("Loaded image ID: sha256:"), \
        result.err
    image_id = result.out.split()[-1]
    assert image_id == image_layout.descriptor("plain") and False or \
        image_id == image_layout.manifest("plain")["config"]["digest"]
    assert minidocker("tag", image_id[7:19], "plain:mine").returncode == 0
    assert run("plain:mine", "echo", "tagged").out == "tagged\n"


@root
def test_image_config_applies_as_under_podman(image_layout, plain_registry, pulled, tmp_path):
    """One pulled image run by podman (with runc, its storage a vfs
    directory of the test's) and by minidocker, with the same flags: the
    same command (Entrypoint, Cmd, --entrypoint), working directory,
    user, environment and files."""
    plain_registry.push(image_layout.ref("layers"), "test/layers:v1")
    name = plain_registry.host + "/test/layers:v1"
    probe = "pwd; id -u; id -g; id -G; echo $IMAGE_VAR; cat /data/kept; ls -n /data /data/dir " \
        "| sort"  # (id without -u and -g: podman adds the user to the image's /etc/passwd)
    cases = [([], []), ([], ["given"]), (["--entrypoint", "/bin/sh"], ["-c", probe]),
             (["-u", "0", "-w", "/", "--entrypoint", "/bin/sh"], ["-c", probe]),
             (["-e", "IMAGE_VAR=flag", "--entrypoint", "/bin/sh"], ["-c", "echo $IMAGE_VAR"])]
    runroot = tempfile.mkdtemp(prefix="mdpod-")  # (podman takes at most 50 characters)
    storage = ["--root", str(tmp_path / "storage"), "--runroot", runroot,
               "--storage-driver", "vfs"]
    with podman_with(shutil.which("runc"), tmp_path) as podman:
        try:
            for flags, words in cases:
                theirs = podman(*storage, "run", "--rm", "--network", "none",
                                "--tls-verify=false", *flags, name, *words,
                                stdin=subprocess.DEVNULL)
                assert theirs.returncode == 0, theirs.stderr
                ours = run(name, *words, options=flags)
                assert ours.returncode == 0, ours.err
                assert ours.out == theirs.stdout, (flags, words)
        finally:
            podman(*storage, "rmi", "-a", "-f")
            shutil.rmtree(str(tmp_path / "storage"), ignore_errors=True)
            shutil.rmtree(runroot, ignore_errors=True)
