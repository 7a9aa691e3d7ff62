#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""minidocker: a Linux container runtime in one file, standard library only.

    sudo python3 minidocker.py mkrootfs ./rootfs && sudo python3 minidocker.py run ./rootfs /bin/sh

Read it top to bottom: the chapters follow a container from the command line
to its first instruction. `grep -n '^# ===' minidocker.py` prints them:

    1. errors and messages         8. cgroups: resource limits
    2. libc bindings and constants 10. capabilities and no_new_privs
    3. configuration (the spec)    11. the process: stages, init, terminal
    4. state on disk               12. commands
    5. images: mkrootfs, ELF       13. argparse and main()
    6. filesystem: overlay, mounts, /dev, pivot_root
    7. namespaces

Chapter 9 (networking) and the seccomp half of 10 arrive with issues #5 and
#4; the start-up sequence in chapter 11 says where they bind.

Needs: Linux >= 4.13 (TIOCGPTPEER for the terminal), overlayfs, root
(CAP_SYS_ADMIN in the initial user namespace), Python >= 3.8.
"""

import argparse
import ctypes
import fcntl
import json
import os
import re
import signal
import stat
import struct
import sys
import time

# Every module the container's init uses after pivot_root must be imported
# before it: from then on the host's Python library is out of reach, and an
# extension module (fcntl is one in many builds) would fail to load.

# ============================================================================
# 1. Errors and messages
# ============================================================================
# Helpers raise; only main() prints and exits (as tini does). Exit codes follow
# `docker run`: 125 when minidocker itself fails, 126 when the command exists
# but cannot be executed, 127 when it is not found, 128+N when the container's
# process was killed by signal N, and otherwise the command's own status.

EXIT_RUNTIME = 125
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127


class MiniDockerError(Exception):
    """A one-line failure shown to the user as `minidocker: error: ...`."""

    def __init__(self, message, code=EXIT_RUNTIME):
        super().__init__(message)
        self.code = code


class SyscallError(OSError):
    """OSError whose text names the call and its argument:
    `pivot_root(.): Invalid argument (hint: ...)`."""

    def __str__(self):
        return self.args[1]


def syscall_error(err, call, hint=None):
    """Build the error for a failed call, with a hint when the usual fix is
    a kernel setting or a different directory rather than a bug."""
    text = "%s: %s" % (call, os.strerror(err))
    if hint:
        text += " (hint: %s)" % hint
    return SyscallError(err, text)


def read_text(path):
    """A file's text, or "" when it cannot be read: for /proc and /sys files
    that this kernel may not have."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def debug(enabled, message):
    if enabled:
        sys.stderr.write("minidocker: debug: %s\n" % message)


# ============================================================================
# 2. libc bindings and kernel constants
# ============================================================================
# The only chapter that touches ctypes. Each function is bound once, with its
# argument types, and a failure (-1) raises SyscallError naming the call.
# Constants carry the header they come from.

_libc = ctypes.CDLL(None, use_errno=True)  # the libc this python links against
_c_str = ctypes.c_char_p
_c_int = ctypes.c_int
_c_ulong = ctypes.c_ulong
_c_long = ctypes.c_long


def _bind(name, argtypes, restype=_c_int):
    func = getattr(_libc, name)
    func.argtypes = argtypes
    func.restype = restype
    return func


def _check(result, call):
    if result == -1:
        raise syscall_error(ctypes.get_errno(), call)
    return result


def _b(text):
    return None if text is None else os.fsencode(text)


# <linux/sched.h>: namespace flags for unshare(2) and clone(2).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NAMESPACE_NAMES = {
    CLONE_NEWNS: "mnt", CLONE_NEWCGROUP: "cgroup", CLONE_NEWUTS: "uts",
    CLONE_NEWIPC: "ipc", CLONE_NEWUSER: "user", CLONE_NEWPID: "pid",
    CLONE_NEWNET: "net",
}

# <linux/mount.h>: mount(2) flags.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2  # umount2(2)

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# <asm-generic/ioctls.h> (the same numbers on x86_64 and aarch64)
TIOCSCTTY = 0x540E
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
TIOCSPTLCK = 0x40045431  # _IOW('T', 0x31, int)
TIOCGPTPEER = 0x5441     # _IO('T', 0x41), Linux 4.13

# <linux/sockios.h>, <net/if.h>: bringing loopback up without netlink.
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
AF_INET = 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000

# <asm/unistd.h>: glibc has no wrapper for pivot_root(2), so it goes
# through syscall(2) with the number of the architecture we run on.
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

_mount = _bind("mount", [_c_str, _c_str, _c_str, _c_ulong, _c_str])
_umount2 = _bind("umount2", [_c_str, _c_int])
_unshare = _bind("unshare", [_c_int])
_sethostname = _bind("sethostname", [_c_str, ctypes.c_size_t])
_prctl = _bind("prctl", [_c_int, _c_ulong, _c_ulong, _c_ulong, _c_ulong])
_capset = _bind("capset", [ctypes.c_void_p, ctypes.c_void_p])
_socket = _bind("socket", [_c_int, _c_int, _c_int])
_syscall = _bind("syscall", [_c_long, _c_str, _c_str], _c_long)


def mount(source, target, fstype, flags=0, data=None, shown=None):
    """mount(2). `shown` is the path to name in errors when `target` is a
    /proc/self/fd/N handle that would mean nothing to the user."""
    result = _mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    if result == -1:
        err = ctypes.get_errno()
        what = "mount %s on %s" % (fstype or source or "(remount)", shown or target)
        raise syscall_error(err, what, MOUNT_HINTS.get((fstype, err)))


MOUNT_HINTS = {
    ("overlay", 22): "the state directory (MINIDOCKER_ROOT) must be on a "
                     "filesystem that can hold an overlay upper layer, such "
                     "as ext4, xfs or tmpfs, and ROOTFS must not contain it",
    ("overlay", 19): "the overlay module is not loaded: modprobe overlay",
}


def umount2(target, flags):
    _check(_umount2(_b(target), flags), "umount2(%s)" % target)


def unshare(flags):
    if _unshare(flags) == -1:
        err = ctypes.get_errno()
        names = ",".join(n for f, n in NAMESPACE_NAMES.items() if flags & f)
        raise syscall_error(err, "unshare(%s)" % names,
                            "needs root in the initial user namespace" if err == 1 else None)


def sethostname(name):
    raw = name.encode()
    _check(_sethostname(raw, len(raw)), "sethostname(%s)" % name)


def prctl(option, arg2=0, what="prctl"):
    _check(_prctl(option, arg2, 0, 0, 0), what)


def pivot_root(new_root, put_old):
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise MiniDockerError("pivot_root: unsupported architecture %s" % os.uname().machine)
    if _syscall(number, _b(new_root), _b(put_old)) == -1:
        raise syscall_error(ctypes.get_errno(), "pivot_root(%s)" % new_root,
                            "the host's root must not be an initramfs (rootfs); "
                            "run from a real root filesystem")


def set_stage_name(name):
    """Name this process for ps(1) (comm is 15 bytes at most)."""
    buffer = ctypes.create_string_buffer(name.encode())
    _prctl(PR_SET_NAME, ctypes.addressof(buffer), 0, 0, 0)


# ============================================================================
# 3. Configuration: flags into one validated spec
# ============================================================================
# Every flag is checked and turned into plain data here, before anything is
# created on disk or in the kernel. The rest of the program only reads the
# spec, and the unit tests check it without root.

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Spec:
    """Everything needed to start one container, validated."""

    def __init__(self, **fields):
        self.rootfs = None        # absolute path of the lower layer
        self.command = []         # argv of the container's process
        self.hostname = None      # None: the short container id
        self.env = []             # "KEY=VAL" from -e and --env-file, in order
        self.workdir = "/"
        self.user = None          # "USER[:GROUP]", resolved inside the rootfs
        self.group_add = []
        self.caps = set()         # capability numbers the container keeps
        self.privileged = False
        self.read_only = False
        self.volumes = []         # Volume tuples
        self.tmpfs = []           # (path, flags, data)
        self.tty = False
        self.interactive = False
        self.remove = False
        self.debug = False
        self.resources = {}       # checked resource limits (chapter 8)
        self.cgroup_parent = None
        self.__dict__.update(fields)


class Volume:
    __slots__ = ("source", "target", "read_only")

    def __init__(self, source, target, read_only):
        self.source, self.target, self.read_only = source, target, read_only

    def __repr__(self):
        return "Volume(%r, %r, %r)" % (self.source, self.target, self.read_only)


def parse_volume(text):
    """`-v HOST:CTR[:ro|rw]` with absolute paths, as bind mounts."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise MiniDockerError("invalid volume %r: expected HOST:CONTAINER[:ro|rw]" % text)
    source, target = parts[0], parts[1]
    options = parts[2].split(",") if len(parts) == 3 else []
    if not source.startswith("/"):
        raise MiniDockerError("invalid volume %r: the host path must be absolute "
                              "(named volumes are not supported)" % text)
    if not target.startswith("/") or os.path.normpath(target) == "/":
        raise MiniDockerError("invalid volume %r: the container path must be "
                              "absolute and not /" % text)
    unknown = [o for o in options if o not in ("ro", "rw")]
    if unknown or not options and len(parts) == 3:
        raise MiniDockerError("invalid volume %r: unknown option %r (use ro or rw)"
                              % (text, ",".join(unknown)))
    return Volume(os.path.normpath(source), os.path.normpath(target), "ro" in options)


# Options that mount(8) spells as words but mount(2) takes as flags.
MOUNT_FLAG_WORDS = {
    "ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True), "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True), "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True), "exec": (MS_NOEXEC, False),
}
TMPFS_DEFAULT_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC  # as `docker run --tmpfs`


def parse_tmpfs(text):
    """`--tmpfs PATH[:OPTIONS]`: flag words become flags, the rest (size=,
    mode=, ...) is passed to tmpfs as data."""
    path, _, options = text.partition(":")
    if not path.startswith("/") or os.path.normpath(path) == "/":
        raise MiniDockerError("invalid --tmpfs %r: the path must be absolute and not /" % text)
    flags, data = TMPFS_DEFAULT_FLAGS, []
    for word in filter(None, options.split(",")):
        if word in MOUNT_FLAG_WORDS:
            bit, on = MOUNT_FLAG_WORDS[word]
            flags = flags | bit if on else flags & ~bit
        elif "=" in word:
            data.append(word)
        else:
            raise MiniDockerError("invalid --tmpfs %r: unknown option %r" % (text, word))
    return (os.path.normpath(path), flags, ",".join(data))


def parse_env_file(path):
    """Docker's --env-file: KEY=VAL lines; `#` comments and blank lines are
    skipped; a bare KEY takes its value from minidocker's own environment."""
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError as err:
        raise MiniDockerError("--env-file %s: %s" % (path, err.strerror))
    return [line for line in (l.strip() for l in lines) if line and not line.startswith("#")]


def expand_env(entries):
    """-e KEY=VAL is taken as is; -e KEY copies KEY from our environment, or
    is dropped when we have none (as docker does)."""
    result = []
    for entry in entries:
        key, eq, _ = entry.partition("=")
        if not key or " " in key:
            raise MiniDockerError("invalid environment variable %r" % entry)
        if eq:
            result.append(entry)
        elif key in os.environ:
            result.append("%s=%s" % (key, os.environ[key]))
    return result


def build_spec(args):
    """argparse's namespace for `run` -> a validated Spec. Pure: touches the
    filesystem only to read the env files and to check that ROOTFS is a
    directory."""
    if not args.command:
        raise MiniDockerError("run: no command given: usage: run [OPTIONS] ROOTFS CMD [ARG...]")
    rootfs = os.path.abspath(args.rootfs)
    if not os.path.exists(rootfs):
        raise MiniDockerError("rootfs %s: no such directory" % args.rootfs)
    if not os.path.isdir(rootfs):
        raise MiniDockerError("rootfs %s: not a directory" % args.rootfs)
    if any(c in rootfs for c in ",:\\"):
        # overlayfs splits its option string on ',' and lowerdir on ':'.
        raise MiniDockerError("rootfs %s: overlayfs cannot take a path with ',', ':' or '\\'"
                              % rootfs)
    if not args.workdir.startswith("/"):
        raise MiniDockerError("workdir %r must be an absolute path" % args.workdir)
    env_entries = []
    for path in args.env_file:
        env_entries += parse_env_file(path)
    env_entries += args.env
    interactive, tty = args.interactive, args.tty
    if not interactive and not tty and os.isatty(0) and os.isatty(1):
        # The README's `run ./rootfs /bin/sh` on a terminal is a shell to talk to.
        interactive = tty = True
    return Spec(
        rootfs=rootfs, command=list(args.command), hostname=args.hostname,
        env=expand_env(env_entries), workdir=os.path.normpath(args.workdir),
        user=args.user, group_add=list(args.group_add),
        caps=plan_capabilities(args.cap_add, args.cap_drop, args.privileged,
                               held_capabilities()),
        privileged=args.privileged, read_only=args.read_only,
        volumes=[parse_volume(v) for v in args.volume],
        tmpfs=[parse_tmpfs(t) for t in args.tmpfs],
        tty=tty, interactive=interactive, remove=args.rm, debug=args.debug,
        resources=parse_resources(args, os.cpu_count() or 1,
                                  read_online("/sys/devices/system/cpu/online"),
                                  read_online("/sys/devices/system/node/online") or {0}),
        cgroup_parent=args.cgroup_parent)


# ============================================================================
# 4. State: where containers live on disk
# ============================================================================
# Two trees, as in Docker and runc:
#   /var/lib/minidocker/containers/<id>/   what outlives a reboot
#       upper/  work/                      the overlay's writable layer
#       merged/                            where the root is assembled
#   /run/minidocker/containers/<id>.json   what a running container is (tmpfs)
# MINIDOCKER_ROOT=DIR moves both to DIR/lib and DIR/run, so that tests and the
# cgroup-v2 VM keep them on a filesystem of their choice.


class Paths:
    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        base = environ.get("MINIDOCKER_ROOT")
        self.lib = os.path.join(base, "lib") if base else "/var/lib/minidocker"
        self.run = os.path.join(base, "run") if base else "/run/minidocker"
        self.containers = os.path.join(self.lib, "containers")
        self.records = os.path.join(self.run, "containers")

    def layer(self, cid):
        return os.path.join(self.containers, cid)

    def record(self, cid):
        return os.path.join(self.records, cid + ".json")


def process_start_time(pid):
    """Field 22 of /proc/PID/stat: tells a live pid from a reused one."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[19])


def write_record(paths, record):
    os.makedirs(paths.records, mode=0o700, exist_ok=True)
    temporary = paths.record(record["id"]) + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(record, handle)
    os.replace(temporary, paths.record(record["id"]))


def read_records(paths):
    try:
        names = sorted(os.listdir(paths.records))
    except FileNotFoundError:
        return []
    records = []
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(paths.records, name)) as handle:
                    records.append(json.load(handle))
            except (OSError, ValueError):
                continue
    return records


def owner_alive(record):
    """Is the minidocker process that started this container still running?"""
    return process_start_time(record["owner"]) == record["owner_start"]


def create_container(paths, spec, cid, cgroups):
    """Write the record, then make the writable layer. The record comes first
    (naming the cgroups about to be made) so that a crash at any later step
    is still found and reclaimed."""
    record = {"id": cid, "status": "created", "rootfs": spec.rootfs, "cgroups": cgroups,
              "command": spec.command, "remove": spec.remove, "pid": 0,
              "owner": os.getpid(), "owner_start": process_start_time(os.getpid()),
              "created": time.time()}
    write_record(paths, record)
    layer = paths.layer(cid)
    for sub in ("upper", "work", "merged"):
        os.makedirs(os.path.join(layer, sub), mode=0o700)
    # The overlay's root directory takes its owner and mode from upper/, so
    # upper/ copies ROOTFS's own, or a non-root user could not enter "/".
    image_root = os.stat(spec.rootfs)
    upper = os.path.join(layer, "upper")
    os.chown(upper, image_root.st_uid, image_root.st_gid)
    os.chmod(upper, stat.S_IMODE(image_root.st_mode))
    return record


def remove_container(paths, record):
    """Remove what a stopped container leaves: cgroups, layer, record."""
    import shutil
    cid = record["id"]
    remove_cgroups(record.get("cgroups", []))
    shutil.rmtree(paths.layer(cid), ignore_errors=True)
    try:
        os.unlink(paths.record(cid))
    except FileNotFoundError:
        pass


def reclaim_dead(paths):
    """Containers whose minidocker died (kill -9) are finished here: their
    cgroups removed, and the rest too if started with --rm, else marked
    exited. Their mounts died with their mount namespace, their processes
    with their pid 1 (the parent-death signal)."""
    for record in read_records(paths):
        if record["status"] in ("created", "running") and not owner_alive(record):
            if record["remove"]:
                remove_container(paths, record)
            else:
                remove_cgroups(record.get("cgroups", []))
                record["status"] = "exited"
                write_record(paths, record)


def find_container(paths, prefix):
    matches = [r for r in read_records(paths) if r["id"].startswith(prefix)]
    if not matches:
        raise MiniDockerError("no such container: %s" % prefix)
    if len(matches) > 1:
        raise MiniDockerError("container id %s is ambiguous (%d matches)" % (prefix, len(matches)))
    return matches[0]


# ============================================================================
# 5. Images: a rootfs from what the host has (mkrootfs), and an ELF reader
# ============================================================================
# `mkrootfs DIR` makes a working rootfs on a host with nothing but python3:
# the host's busybox if it has one, otherwise the host's own shell and core
# utilities with the shared libraries and dynamic loader they need. Which
# libraries those are is read from the ELF files themselves (PT_INTERP and
# DT_NEEDED), as ld.so would, instead of running ldd, which executes the
# program it inspects.

HOST_TOOLS = ("sh bash ls cat echo env id mkdir rmdir rm cp mv ln touch chmod "
              "grep sed head tail wc sort tr cut sleep true false test uname "
              "hostname tty kill ps stat readlink pwd printf expr date df "
              "find").split()

BASE_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
}
BASE_DIRS = {"bin": 0o755, "etc": 0o755, "proc": 0o555, "sys": 0o555,
             "dev": 0o755, "root": 0o700, "tmp": 0o1777}

# <elf.h>
PT_DYNAMIC, PT_INTERP, PT_LOAD = 2, 3, 1
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29

# Elf64_Ehdr / Elf32_Ehdr after e_ident[16]:
#   e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize
#   e_phentsize e_phnum e_shentsize e_shnum e_shstrndx
ELF_HEADER = {64: "HHIQQQIHHHHHH", 32: "HHIIIIIHHHHHH"}
# Elf64_Phdr: p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
# Elf32_Phdr: p_type p_offset p_vaddr p_paddr p_filesz p_memsz p_flags p_align
ELF_PHDR = {64: "IIQQQQQQ", 32: "IIIIIIII"}
ELF_DYN = {64: "qQ", 32: "iI"}  # d_tag, d_val
assert struct.calcsize("<" + ELF_HEADER[64]) == 64 - 16
assert struct.calcsize("<" + ELF_PHDR[64]) == 56
assert struct.calcsize("<" + ELF_PHDR[32]) == 32


class ElfInfo:
    __slots__ = ("bits", "machine", "interp", "needed", "runpath", "rpath")

    def __init__(self, bits, machine):
        self.bits, self.machine = bits, machine
        self.interp, self.needed, self.runpath, self.rpath = None, [], [], []


def read_elf(data):
    """Parse an ELF image's bytes: class, machine, interpreter, DT_NEEDED and
    run paths. Returns None for anything that is not ELF (a shell script)."""
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    bits = 64 if data[4] == 2 else 32
    order = "<" if data[5] == 1 else ">"
    header = struct.unpack_from(order + ELF_HEADER[bits], data, 16)
    machine, phoff, phentsize, phnum = header[1], header[4], header[8], header[9]
    info = ElfInfo(bits, machine)
    loads, dynamic = [], None
    for index in range(phnum):
        fields = struct.unpack_from(order + ELF_PHDR[bits], data, phoff + index * phentsize)
        if bits == 64:
            ptype, offset, vaddr, filesz = fields[0], fields[2], fields[3], fields[5]
        else:
            ptype, offset, vaddr, filesz = fields[0], fields[1], fields[2], fields[4]
        if ptype == PT_INTERP:
            info.interp = data[offset:offset + filesz].rstrip(b"\0").decode()
        elif ptype == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif ptype == PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic:
        read_dynamic(data, order, bits, dynamic, loads, info)
    return info


def read_dynamic(data, order, bits, dynamic, loads, info):
    """Walk the dynamic section; its string offsets are relative to
    DT_STRTAB, a virtual address that the PT_LOAD segments map to the file."""
    entry = order + ELF_DYN[bits]
    size = struct.calcsize(entry)
    tags = []
    for position in range(dynamic[0], dynamic[0] + dynamic[1], size):
        tag, value = struct.unpack_from(entry, data, position)
        if tag == DT_NULL:
            break
        tags.append((tag, value))
    strtab = [v for t, v in tags if t == DT_STRTAB]
    if not strtab:
        return
    base = next((off + strtab[0] - va for va, off, sz in loads if va <= strtab[0] < va + sz), None)
    if base is None:
        return

    def string(offset):
        return data[base + offset:data.index(b"\0", base + offset)].decode()

    for tag, value in tags:
        if tag == DT_NEEDED:
            info.needed.append(string(value))
        elif tag == DT_RUNPATH:
            info.runpath += string(value).split(":")
        elif tag == DT_RPATH:
            info.rpath += string(value).split(":")


def ld_so_conf_dirs(path="/etc/ld.so.conf", seen=None):
    """The directories ld.so.conf names, following its `include` globs."""
    import glob
    seen = set() if seen is None else seen
    if path in seen:
        return []
    seen.add(path)
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    dirs = []
    for line in (l.split("#")[0].strip() for l in lines):
        if line.startswith("include"):
            pattern = line.split(None, 1)[1]
            pattern = os.path.join(os.path.dirname(path), pattern)
            for name in sorted(glob.glob(pattern)):
                dirs += ld_so_conf_dirs(name, seen)
        elif line:
            dirs.append(line)
    return dirs


def library_search_path(info, origin):
    """ld.so's order: DT_RPATH (only without DT_RUNPATH), DT_RUNPATH, the
    ld.so.conf directories, then the built-in defaults."""
    own = (info.rpath if not info.runpath else []) + info.runpath
    own = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in own if d]
    defaults = ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]
    return own + ld_so_conf_dirs() + defaults


def read_elf_file(path):
    with open(path, "rb") as handle:
        return read_elf(handle.read())


def elf_closure(program):
    """Every file `program` needs in order to run: itself, its interpreter and
    its libraries, recursively. Returns host paths in discovery order."""
    wanted, queue = [program], [program]
    while queue:
        path = queue.pop(0)
        info = read_elf_file(path)
        if info is None:
            continue
        deps = [info.interp] if info.interp else []
        for name in info.needed:
            found = find_library(name, info, os.path.dirname(path))
            if found is None:
                raise MiniDockerError("mkrootfs: %s needs %s, which is not on this host" % (path, name))
            deps.append(found)
        for dep in deps:
            if dep not in wanted:
                wanted.append(dep)
                queue.append(dep)
    return wanted


def find_library(name, info, origin):
    if "/" in name:
        return name
    for directory in library_search_path(info, origin):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            other = read_elf_file(candidate)
            if other and (other.bits, other.machine) == (info.bits, info.machine):
                return candidate
    return None


def copy_file(host_path, root, as_path=None):
    """Copy host_path's content (links followed) to the same path under root."""
    import shutil
    target = os.path.join(root, (as_path or host_path).lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.exists(target):
        shutil.copy2(host_path, target)


def make_rootfs(dest, use_busybox=True):
    """Build a small rootfs at dest; returns a line describing what is in it."""
    import shutil
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise MiniDockerError("mkrootfs: %s exists and is not an empty directory" % dest)
    busybox = shutil.which("busybox") if use_busybox else None
    for name, mode in BASE_DIRS.items():
        os.makedirs(os.path.join(dest, name), exist_ok=True)
        os.chmod(os.path.join(dest, name), mode)
    for name, text in BASE_FILES.items():
        with open(os.path.join(dest, name), "w") as handle:
            handle.write(text)
    if busybox:
        install_busybox(busybox, dest)
        return "busybox from %s" % busybox
    copied = install_host_tools(dest)
    return "host tools: %s" % " ".join(copied)


def install_busybox(busybox, dest):
    """busybox itself (and its libraries if it is not static) plus one link
    per applet, where `busybox --list-full` says the applet lives."""
    import subprocess
    for path in elf_closure(os.path.realpath(busybox)):
        copy_file(path, dest, "/bin/busybox" if path == os.path.realpath(busybox) else path)
    listing = subprocess.run([busybox, "--list-full"], stdout=subprocess.PIPE,
                             check=True).stdout.decode().split()
    for applet in listing:
        link = os.path.join(dest, applet)
        if applet != "bin/busybox" and not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)


def install_host_tools(dest):
    """The host's shell and core utilities, each put in /bin under its own
    name, with every library it needs at the host's path for it."""
    import shutil
    copied = []
    for tool in HOST_TOOLS:
        program = shutil.which(tool)
        if program is None:
            continue
        real = os.path.realpath(program)
        copy_file(real, dest, "/bin/" + tool)
        for dep in elf_closure(real)[1:]:
            copy_file(dep, dest)
        copied.append(tool)
    if "sh" not in copied:
        raise MiniDockerError("mkrootfs: this host has neither busybox nor /bin/sh to copy")
    return copied


# ============================================================================
# 6. Filesystem: overlay, mounts, /dev, masked paths, pivot_root
# ============================================================================
# The root is an overlay: ROOTFS is the read-only lower layer, so the image is
# never written; the container's changes go to upper/ in the state directory.
# Onto it we mount a fresh /proc, /sys, a small /dev, the user's volumes, and
# then hide what a container must not see. Everything happens in the
# container's own mount namespace, made private first, so none of it is seen
# by the host and all of it vanishes with the namespace.
#
# Paths inside the rootfs are attacker-controlled: ROOTFS may hold
# `/proc -> /etc` or `/dev -> /`. A path string like merged + "/dev/shm"
# would follow such links out of the rootfs (CVE-2019-19921 in runc). So every
# mount target is opened component by component with O_NOFOLLOW, symlinks are
# resolved by us with the rootfs as `/` (as openat2's RESOLVE_IN_ROOT does), and
# the mount is made on /proc/self/fd/N, the handle we opened, not on a path.

DEVICES = [  # name, major, minor (Documentation/admin-guide/devices.txt)
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
    ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
]
DEV_LINKS = [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
             ("ptmx", "pts/ptmx")]

# What runc masks (and Docker adds /proc/interrupts): a /dev/null or an empty
# read-only tmpfs over each.
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore",
                "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                  "/proc/sysrq-trigger"]

MAX_SYMLINKS = 40  # as the kernel's path walk (ELOOP after 40)
O_PATH = getattr(os, "O_PATH", 0o10000000)


class Mount:
    """One step of the mount plan. kind: 'fs' mounts a filesystem, 'bind' a
    host path, 'devices' fills /dev, 'mask' hides a path, 'readonly' makes a
    path read-only. kernel_fs targets must be real directories."""
    __slots__ = ("kind", "target", "source", "fstype", "flags", "data", "kernel_fs")

    def __init__(self, kind, target, source=None, fstype=None, flags=0, data=None,
                 kernel_fs=False):
        self.kind, self.target, self.source, self.fstype = kind, target, source, fstype
        self.flags, self.data, self.kernel_fs = flags, data, kernel_fs

    def __repr__(self):
        return "Mount(%s %s %s)" % (self.kind, self.fstype or self.source or "", self.target)


def plan_mounts(spec):
    """The ordered list of mounts that turns the overlay into the container's
    root. Pure: the unit tests read it."""
    sys_flags = MS_NOSUID | MS_NOEXEC | MS_NODEV | (0 if spec.privileged else MS_RDONLY)
    plan = [
        Mount("fs", "/proc", "proc", "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV, kernel_fs=True),
        Mount("fs", "/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_STRICTATIME,
              "mode=755,size=65536k", kernel_fs=True),
        Mount("devices", "/dev"),
        # newinstance: a devpts of our own, so the container sees only its
        # own terminals; ptmxmode=0666 lets any user open /dev/ptmx in it.
        Mount("fs", "/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        Mount("fs", "/dev/shm", "shm", "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV,
              "mode=1777,size=65536k"),
        Mount("fs", "/dev/mqueue", "mqueue", "mqueue", MS_NOSUID | MS_NOEXEC | MS_NODEV),
        Mount("fs", "/sys", "sysfs", "sysfs", sys_flags, kernel_fs=True),
    ]
    for volume in spec.volumes:
        plan.append(Mount("bind", volume.target, volume.source,
                          flags=MS_BIND | MS_REC | (MS_RDONLY if volume.read_only else 0)))
    for path, flags, data in spec.tmpfs:
        plan.append(Mount("fs", path, "tmpfs", "tmpfs", flags, data))
    if not spec.privileged:
        plan += [Mount("mask", path) for path in MASKED_PATHS]
        plan += [Mount("readonly", path) for path in READONLY_PATHS]
    return plan


def open_in_root(rootfd, path, create=None, follow=True):
    """Open `path` inside the directory `rootfd` as an O_PATH handle, never
    leaving it: symlinks are read and resolved with rootfd as `/`, and `..`
    stops at it. create='dir' or 'file' makes what is missing (parents as
    directories). follow=False refuses any symlink on the way."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    stack = [os.dup(rootfd)]
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            fd = open_component(stack[-1], name, create if not parts else "dir" if create else None)
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                os.close(fd)
                target = os.readlink(name, dir_fd=stack[-1])
                if not follow:
                    raise MiniDockerError("%s is a symlink (to %s): refusing to follow it"
                                          % (path, target))
                links += 1
                if links > MAX_SYMLINKS:
                    raise syscall_error(40, "open %s in rootfs" % path)  # ELOOP
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts[:0] = [p for p in target.split("/") if p not in ("", ".")]
                continue
            if parts and not stat.S_ISDIR(os.fstat(fd).st_mode):
                os.close(fd)
                raise syscall_error(20, "open %s in rootfs" % path)  # ENOTDIR
            stack.append(fd)
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def open_component(dirfd, name, create):
    """openat(dirfd, name, O_PATH|O_NOFOLLOW), making it first if asked."""
    flags = O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dirfd)
    except FileNotFoundError:
        if create is None:
            raise
    if create == "dir":
        os.mkdir(name, 0o755, dir_fd=dirfd)
    else:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=dirfd))
    return os.open(name, flags, dir_fd=dirfd)


def fd_path(fd):
    return "/proc/self/fd/%d" % fd


def mount_overlay(spec, layer):
    """Mount the root: ROOTFS read-only below, layer/upper for writes."""
    merged = os.path.join(layer, "merged")
    data = "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (spec.rootfs, layer, layer)
    mount("overlay", merged, "overlay", 0, data, shown=merged)
    return os.open(merged, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def apply_mounts(rootfd, plan):
    for step in plan:
        if step.kind == "devices":
            populate_dev(rootfd)
        elif step.kind in ("mask", "readonly"):
            apply_protection(rootfd, step)
        else:
            apply_mount(rootfd, step)


def apply_mount(rootfd, step):
    if step.kind == "bind" and not os.path.exists(step.source):
        os.makedirs(step.source, 0o755)  # as `docker run -v` does for a missing host dir
    create = "file" if step.kind == "bind" and not os.path.isdir(step.source) else "dir"
    try:
        fd = open_in_root(rootfd, step.target, create=create, follow=not step.kernel_fs)
    except MiniDockerError as err:
        raise MiniDockerError("rootfs: %s; %s is mounted only on a real directory"
                              % (err, step.fstype))
    except OSError as err:
        raise MiniDockerError("rootfs: cannot make mount point %s: %s"
                              % (step.target, err.strerror))
    try:
        if step.kind == "bind":
            mount(step.source, fd_path(fd), None, MS_BIND | MS_REC, shown=step.target)
            if step.flags & MS_RDONLY:
                remount_read_only(rootfd, step.target, 0)
        else:
            mount(step.source, fd_path(fd), step.fstype, step.flags, step.data, shown=step.target)
    finally:
        os.close(fd)


def apply_protection(rootfd, step):
    """Mask: /dev/null over a file, an empty read-only tmpfs over a
    directory. Read-only: bind the path onto itself and remount it read-only.
    A path this kernel does not have is skipped (ENOENT)."""
    try:
        fd = open_in_root(rootfd, step.target, follow=False)
    except FileNotFoundError:
        return
    try:
        here = fd_path(fd)
        if step.kind == "readonly":
            mount(here, here, None, MS_BIND | MS_REC, shown=step.target)
            remount_read_only(rootfd, step.target, MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif stat.S_ISDIR(os.fstat(fd).st_mode):
            mount("tmpfs", here, "tmpfs", MS_RDONLY, "size=0", shown=step.target)
        else:
            mount("/dev/null", here, None, MS_BIND, shown=step.target)
    finally:
        os.close(fd)


def remount_read_only(rootfd, target, flags):
    """A bind mount takes MS_RDONLY only from a second, remount call, and that
    call must name the new mount: a handle opened before the bind still
    points at the directory underneath, so the path is opened again."""
    fd = open_in_root(rootfd, target, follow=False)
    try:
        mount(None, fd_path(fd), None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags, shown=target)
    finally:
        os.close(fd)


def populate_dev(rootfd):
    """Fill the fresh /dev tmpfs: the six harmless devices, the /dev/fd and
    std* links, and mount points for pts, shm and mqueue. No host device is
    reachable: there is no node for one."""
    devfd = open_in_root(rootfd, "/dev", follow=False)
    try:
        for name, major, minor in DEVICES:
            os.mknod(name, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=devfd)
        for name, target in DEV_LINKS:
            os.symlink(target, name, dir_fd=devfd)
        for name in ("pts", "shm", "mqueue"):
            os.mkdir(name, 0o755, dir_fd=devfd)
    finally:
        os.close(devfd)


def add_host_devices(rootfd):
    """--privileged: also every character and block device at the top of the
    host's /dev, as `docker run --privileged` gives."""
    devfd = open_in_root(rootfd, "/dev", follow=False)
    try:
        for entry in os.scandir("/dev"):
            st = entry.stat(follow_symlinks=False)
            if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) \
                    and not os.path.lexists("/proc/self/fd/%d/%s" % (devfd, entry.name)):
                os.mknod(entry.name, st.st_mode, st.st_rdev, dir_fd=devfd)
    finally:
        os.close(devfd)


def enter_root(rootfd, read_only):
    """pivot_root into the assembled root and drop the old one.

    pivot_root(".", ".") stacks the old root on top of the new one at "/";
    unmounting "." then removes it, with nothing left to rmdir (the trick is
    in pivot_root(2)). Unlike chroot, the old root is gone from the mount
    namespace, so no open directory handle can lead back to it."""
    os.fchdir(rootfd)
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)
    os.chdir("/")
    if read_only:
        mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY, shown="/ (--read-only)")


# ============================================================================
# 7. Namespaces and the host name
# ============================================================================
# The parent unshares the pid namespace for its children only (unshare(2):
# CLONE_NEWPID applies to the next child), so the one child it forks is pid 1
# there. The child unshares the rest itself, which keeps minidocker's own
# process in the host's namespaces, where cgroups and networking are set up.
# The cgroup namespace is unshared last, after the child has joined its
# cgroup, so that the container sees that cgroup as its root.

CHILD_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET


def bring_up_loopback():
    """`ip link set lo up` through the SIOCSIFFLAGS ioctl of netdevice(7):
    a new network namespace has only lo, and it is down."""
    fd = _check(_socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket(AF_INET)")
    try:
        request = struct.pack("16sh22x", b"lo", 0)  # struct ifreq: name, flags
        flags = struct.unpack_from("16sh", fcntl.ioctl(fd, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(fd, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))
    finally:
        os.close(fd)


# ============================================================================
# 8. Cgroups: resource limits, written straight to cgroupfs
# ============================================================================
# A cgroup is a directory; a limit is a value written to a file in it; a
# process is put in it by writing its pid to cgroup.procs. Two layouts exist:
#
#   cgroup v2 (unified)  one tree at /sys/fs/cgroup; a controller works in a
#                        child only if the parent lists it in
#                        cgroup.subtree_control.
#   cgroup v1            one tree per controller (/sys/fs/cgroup/memory,
#                        /sys/fs/cgroup/cpu, ...), each with its own files.
#
# Hosts mix them ("hybrid": controllers on v1 beside an empty cgroup2), so the
# layout is detected per controller from /proc/self/mountinfo. Placement:
# on v2 /sys/fs/cgroup/mini-docker/<id>, as the original design has it; on
# v1 under the cgroup minidocker itself is in, in each hierarchy, as runc
# does, so that limits set on the caller still bind the container.
# --cgroup-parent names the parent instead.
#
# The parent writes the child's pid into the cgroups while the child waits
# for "go", so the command's first instruction already runs under its
# limits; the child unshares its cgroup namespace only after that.

CPU_PERIOD_US = 100000  # the CFS period docker uses for --cpus
# Controllers go by their v2 names; v1 calls io "blkio".
V1_NAMES = {"io": "blkio"}
# A controller is wanted for a limit the user asked for (its absence is an
# error), or only to account usage for ps (these, where the host has them).
ACCOUNTING = ("memory", "cpu", "cpuacct", "pids")
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
              "p": 1 << 50}
MIN_MEMORY = 6 << 20  # docker's floor for --memory


SIZE_PATTERN = r"(\d+(?:\.\d+)?) ?([kmgtp]?)i?b?"  # go-units' RAMInBytes


def parse_size(text, flag):
    """Docker's sizes: 100m, 1.5G, 512k, 2048 (bytes), 64mb, 10MiB."""
    match = re.fullmatch(SIZE_PATTERN, text.strip(), re.IGNORECASE)
    if match is None:
        raise MiniDockerError("invalid %s %r: expected a size such as 100m or 1g" % (flag, text))
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def parse_cpu_list(text, online, flag):
    """A cpuset list such as 0-2,5, every member of which must be online."""
    members = set()
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise MiniDockerError("invalid %s %r: expected a list such as 0-2,4" % (flag, text))
        members.update(range(int(low), int(high if dash else low) + 1))
    missing = sorted(members - online)
    if missing:
        raise MiniDockerError("invalid %s %r: %s not available on this host (online: %s)"
                              % (flag, text, ",".join(map(str, missing)),
                                 format_cpu_list(online)))
    return text


def format_cpu_list(members):
    return ",".join(str(m) for m in sorted(members))


def read_online(path):
    """/sys/devices/system/cpu/online and friends: "0-3,8" -> {0,1,2,3,8}."""
    text = read_text(path).strip()
    result = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        result.update(range(int(low), int(high or low) + 1))
    return result


def parse_device_rate(text, flag):
    """--device-read-bps /dev/sda:1mb -> ("8:0", bytes per second)."""
    path, _, rate = text.rpartition(":")
    if not path or not rate:
        raise MiniDockerError("invalid %s %r: expected DEVICE:RATE" % (flag, text))
    try:
        st = os.stat(path)
    except OSError as err:
        raise MiniDockerError("invalid %s %r: %s: %s" % (flag, text, path, err.strerror))
    if not stat.S_ISBLK(st.st_mode):
        raise MiniDockerError("invalid %s %r: %s is not a block device" % (flag, text, path))
    return ("%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)),
            parse_size(rate, flag))


def parse_resources(args, host_cpus, online_cpus, online_mems):
    """The resource flags -> {name: value}, checked. Pure but for the device
    paths, which are stat()ed."""
    res = {}
    if args.memory is not None:
        res["memory"] = parse_size(args.memory, "--memory")
        if res["memory"] < MIN_MEMORY:
            raise MiniDockerError("invalid --memory %r: the minimum is 6m" % args.memory)
    if args.memory_swap is not None:
        if "memory" not in res:
            raise MiniDockerError("--memory-swap needs --memory (it is memory plus swap)")
        swap = -1 if args.memory_swap.strip() == "-1" else parse_size(args.memory_swap,
                                                                     "--memory-swap")
        if swap != -1 and swap < res["memory"]:
            raise MiniDockerError("invalid --memory-swap %r: it is memory plus swap, so it "
                                  "cannot be below --memory" % args.memory_swap)
        res["memory_swap"] = swap
    if args.memory_reservation is not None:
        res["memory_reservation"] = parse_size(args.memory_reservation, "--memory-reservation")
    if args.cpus is not None:
        try:
            cpus = float(args.cpus)
        except ValueError:
            cpus = -1.0
        if not 0 < cpus <= host_cpus:
            raise MiniDockerError("invalid --cpus %r: the range is 0.01 to %d, the CPUs of "
                                  "this host" % (args.cpus, host_cpus))
        res["cpu_quota"] = max(1000, int(cpus * CPU_PERIOD_US))
    if args.cpu_shares:
        if not 2 <= args.cpu_shares <= 262144:
            raise MiniDockerError("invalid --cpu-shares %d: the range is 2 to 262144"
                                  % args.cpu_shares)
        res["cpu_shares"] = args.cpu_shares
    if args.cpuset_cpus is not None:
        res["cpuset_cpus"] = parse_cpu_list(args.cpuset_cpus, online_cpus, "--cpuset-cpus")
    if args.cpuset_mems is not None:
        res["cpuset_mems"] = parse_cpu_list(args.cpuset_mems, online_mems, "--cpuset-mems")
    if args.pids_limit is not None:
        if args.pids_limit < -1:
            raise MiniDockerError("invalid --pids-limit %d: use a positive number, or 0 or -1 "
                                  "for no limit" % args.pids_limit)
        res["pids"] = args.pids_limit if args.pids_limit > 0 else None
    if args.blkio_weight:
        if not 10 <= args.blkio_weight <= 1000:
            raise MiniDockerError("invalid --blkio-weight %d: the range is 10 to 1000"
                                  % args.blkio_weight)
        res["io_weight"] = args.blkio_weight
    for flag, key, values in (("--device-read-bps", "io_read", args.device_read_bps),
                              ("--device-write-bps", "io_write", args.device_write_bps)):
        if values:
            res[key] = [parse_device_rate(v, flag) for v in values]
    return res


def cpu_weight(shares):
    """cpu.shares (2..262144, default 1024) -> cpu.weight (1..10000, default
    100), the linear map crun documents."""
    return 1 + ((shares - 2) * 9999) // 262142


def controllers_needed(res):
    """{v2 controller name: the flag that needs it}."""
    needs = {}
    for key, controller, flag in (
            ("memory", "memory", "--memory"), ("memory_reservation", "memory",
                                               "--memory-reservation"),
            ("cpu_quota", "cpu", "--cpus"), ("cpu_shares", "cpu", "--cpu-shares"),
            ("cpuset_cpus", "cpuset", "--cpuset-cpus"), ("cpuset_mems", "cpuset", "--cpuset-mems"),
            ("pids", "pids", "--pids-limit"), ("io_weight", "io", "--blkio-weight"),
            ("io_read", "io", "--device-read-bps"), ("io_write", "io", "--device-write-bps")):
        if key in res:
            needs.setdefault(controller, flag)
    return needs


def cgroup_writes(res, version):
    """The plan: [(controller, file, value)] in the order they must be
    written (v1's memsw limit only after the memory limit it must exceed)."""
    writes = []
    if version == 2:
        if "memory" in res:
            writes.append(("memory", "memory.max", res["memory"]))
        if "memory_swap" in res:
            swap = res["memory_swap"]
            writes.append(("memory", "memory.swap.max",
                           "max" if swap == -1 else swap - res["memory"]))
        if "memory_reservation" in res:
            writes.append(("memory", "memory.low", res["memory_reservation"]))
        if "cpu_quota" in res:
            writes.append(("cpu", "cpu.max", "%d %d" % (res["cpu_quota"], CPU_PERIOD_US)))
        if "cpu_shares" in res:
            writes.append(("cpu", "cpu.weight", cpu_weight(res["cpu_shares"])))
        if "io_weight" in res:
            writes.append(("io", "io.weight", "default %d" % res["io_weight"]))
        for key, word in (("io_read", "rbps"), ("io_write", "wbps")):
            for device, rate in res.get(key, []):
                writes.append(("io", "io.max", "%s %s=%d" % (device, word, rate)))
    else:
        if "memory" in res:
            writes.append(("memory", "memory.limit_in_bytes", res["memory"]))
        if "memory_swap" in res:
            writes.append(("memory", "memory.memsw.limit_in_bytes", res["memory_swap"]))
        if "memory_reservation" in res:
            writes.append(("memory", "memory.soft_limit_in_bytes", res["memory_reservation"]))
        if "cpu_quota" in res:
            writes.append(("cpu", "cpu.cfs_period_us", CPU_PERIOD_US))
            writes.append(("cpu", "cpu.cfs_quota_us", res["cpu_quota"]))
        if "cpu_shares" in res:
            writes.append(("cpu", "cpu.shares", res["cpu_shares"]))
        if "io_weight" in res:
            writes.append(("io", "blkio.weight", res["io_weight"]))
        for key, name in (("io_read", "read"), ("io_write", "write")):
            for device, rate in res.get(key, []):
                writes.append(("io", "blkio.throttle.%s_bps_device" % name, "%s %d" % (device, rate)))
    if "cpuset_cpus" in res:
        writes.append(("cpuset", "cpuset.cpus", res["cpuset_cpus"]))
    if "cpuset_mems" in res:
        writes.append(("cpuset", "cpuset.mems", res["cpuset_mems"]))
    if "pids" in res:
        writes.append(("pids", "pids.max", "max" if res["pids"] is None else res["pids"]))
    return writes


class CgroupLayout:
    """Where each controller lives: v2 (one mount) or a v1 hierarchy."""

    def __init__(self):
        self.v2_mount = None        # the cgroup2 mount point
        self.v2_own = "/"           # our own cgroup in it
        self.v2_controllers = set()  # what cgroup.controllers offers at its root
        self.v1 = {}                # v1 controller name -> (mount point, our own cgroup)

    def version_of(self, controller):
        """1, 2 or None. A controller bound to v1 is not available on v2."""
        if V1_NAMES.get(controller, controller) in self.v1:
            return 1
        if controller in self.v2_controllers:
            return 2
        return None


def detect_cgroups(mountinfo, self_cgroup, read=read_text):
    """Parse /proc/self/mountinfo and /proc/self/cgroup into a layout."""
    layout = CgroupLayout()
    own = {}
    for line in self_cgroup.splitlines():
        number, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            own[name] = path
    for line in mountinfo.splitlines():
        fields = line.split()
        separator = fields.index("-")
        mount_point, fstype, options = fields[4], fields[separator + 1], fields[separator + 3]
        if fstype == "cgroup2" and layout.v2_mount is None:
            layout.v2_mount = mount_point
            layout.v2_own = own.get("", "/")
            layout.v2_controllers = set(read(mount_point + "/cgroup.controllers").split())
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in own and option not in layout.v1:
                    layout.v1[option] = (mount_point, own[option])
    return layout


def plan_cgroups(res, layout, cid, parent=None):
    """-> [(version, mount point, directory, {controllers})], one per
    hierarchy. Fails, before anything is made, when a controller a flag
    needs is missing."""
    needs = controllers_needed(res)
    for controller, flag in sorted(needs.items()):
        if layout.version_of(controller) is None:
            raise MiniDockerError(
                "%s needs the %s cgroup controller, which this host has neither as cgroup v1 "
                "nor enabled in cgroup v2 (%s/cgroup.controllers)"
                % (flag, controller, layout.v2_mount or "/sys/fs/cgroup"))
    dirs = {}
    for controller in sorted(set(needs) | set(ACCOUNTING)):
        version = layout.version_of(controller)
        if version == 2:
            base = parent if parent is not None else "mini-docker"
            key, path = (2, layout.v2_mount), os.path.join(layout.v2_mount, base.strip("/"), cid)
        elif version == 1:
            mount_point, own = layout.v1[V1_NAMES.get(controller, controller)]
            base = parent if parent is not None else own
            key = (1, mount_point)
            path = os.path.join(mount_point, base.strip("/"), "minidocker-" + cid)
        else:
            continue  # wanted only to account usage (cpuacct exists on v1 only)
        dirs.setdefault(key, (path, set()))[1].add(controller)
    return [(key[0], key[1], path, controllers)
            for key, (path, controllers) in sorted(dirs.items())]


def write_cgroup_file(directory, name, value):
    try:
        with open(os.path.join(directory, name), "w") as handle:
            handle.write(str(value))
    except OSError as err:
        raise MiniDockerError("cgroup: writing %r to %s/%s: %s"
                              % (str(value), directory, name, err.strerror))


def create_cgroups(groups, res):
    """mkdir each cgroup (enabling v2 controllers on the way down) and write
    the limits. Returns the directories made, for removal."""
    made = []
    try:
        for version, mount_point, path, controllers in groups:
            if version == 2:
                enable_v2_controllers(mount_point, os.path.dirname(path), controllers)
            elif "cpuset" in controllers:
                inherit_cpuset(mount_point, os.path.dirname(path))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path)
            made.append(path)
            if version == 1 and "cpuset" in controllers:
                inherit_cpuset(mount_point, path)
            for controller, name, value in cgroup_writes(res, version):
                if controller in controllers:
                    write_cgroup_file(path, name, value)
    except BaseException:
        remove_cgroups(made)
        raise
    return made


def enable_v2_controllers(mount_point, parent, controllers):
    """A v2 controller reaches a cgroup only if every ancestor lists it in
    cgroup.subtree_control; write "+name" from the top down."""
    relative = os.path.relpath(parent, mount_point)
    steps = [] if relative == "." else relative.split("/")
    directory = mount_point
    for step in [None] + steps:
        if step is not None:
            directory = os.path.join(directory, step)
            if not os.path.isdir(directory):
                os.mkdir(directory)
        enabled = read_text(os.path.join(directory, "cgroup.subtree_control")).split()
        for controller in sorted(controllers - set(enabled)):
            write_cgroup_file(directory, "cgroup.subtree_control", "+" + controller)


def inherit_cpuset(mount_point, path):
    """A new v1 cpuset has empty cpuset.cpus and cpuset.mems, and a task
    cannot join it (ENOSPC) until they are filled: copy the parent's."""
    if not os.path.isdir(path) or path == mount_point:
        return
    parent = os.path.dirname(path)
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not read_text(os.path.join(path, name)).strip():
            inherit_cpuset(mount_point, parent)
            write_cgroup_file(path, name, read_text(os.path.join(parent, name)).strip())


def join_cgroups(paths, pid):
    for path in paths:
        write_cgroup_file(path, "cgroup.procs", pid)


def remove_cgroups(paths):
    """rmdir each cgroup once it is empty. The container's processes die
    with its pid namespace, but the kernel may take a moment to let them go,
    and after a crash some may remain: kill those (cgroup.procs)."""
    for path in reversed(paths):
        deadline = time.monotonic() + 5
        while os.path.isdir(path):
            try:
                os.rmdir(path)
            except OSError as err:
                if err.errno != 16 or time.monotonic() > deadline:  # EBUSY: tasks left
                    break
                for pid in read_text(os.path.join(path, "cgroup.procs")).split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.01)


def oom_killed(paths):
    """Did the kernel's OOM killer act in the container's memory cgroup?
    (memory.events on v2; memory.oom_control, Linux 4.13, on v1.)"""
    for path in paths:
        for name in ("memory.events", "memory.oom_control"):
            for line in read_text(os.path.join(path, name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
    return False


def cgroup_usage(paths):
    """What the container uses now: memory (current, peak) in bytes, CPU
    time in seconds, tasks. None where this kernel keeps no count."""
    def number(name):
        for path in paths:
            text = read_text(os.path.join(path, name)).strip()
            if text and text.isdigit():
                return int(text)
        return None

    cpu_ns = number("cpuacct.usage")
    if cpu_ns is None:
        for path in paths:
            for line in read_text(os.path.join(path, "cpu.stat")).splitlines():
                if line.startswith("usage_usec "):
                    cpu_ns = int(line.split()[1]) * 1000
    memory = number("memory.current")
    return {"memory": memory if memory is not None else number("memory.usage_in_bytes"),
            "memory_peak": number("memory.peak") or number("memory.max_usage_in_bytes"),
            "cpu_seconds": None if cpu_ns is None else cpu_ns / 1e9,
            "pids": number("pids.current")}


# ============================================================================
# 10. Capabilities and no_new_privs
# ============================================================================
# A root process has every capability. The container keeps Docker's default
# fourteen, in the bounding, permitted and effective sets; inheritable and
# ambient are emptied (CVE-2022-24769: an inheritable set lets file
# capabilities raise a non-root user). no_new_privs then stops setuid files
# and file capabilities from giving back what was dropped.

CAP_NAMES = [  # <linux/capability.h>, in number order
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL",
    "SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE",
    "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL",
    "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]
DOCKER_DEFAULT_CAPS = ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD",
                       "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP",
                       "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"]

# <linux/capability.h>: capset(2) takes a header and two 32-bit halves.
#   struct __user_cap_header_struct { __u32 version; int pid; };
#   struct __user_cap_data_struct { __u32 effective, permitted, inheritable; } [2];
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_HEADER = "Ii"
CAP_DATA = "III"
assert struct.calcsize(CAP_HEADER) == 8 and struct.calcsize(CAP_DATA) == 12


def cap_number(name):
    key = name.upper()
    key = key[4:] if key.startswith("CAP_") else key
    if key not in CAP_NAMES:
        raise MiniDockerError("unknown capability: %s" % name)
    return CAP_NAMES.index(key)


def held_capabilities():
    """The capabilities minidocker itself holds (CapPrm in proc(5)). A
    container cannot get more: capset(2) never raises the permitted set."""
    for line in read_text("/proc/self/status").splitlines():
        if line.startswith("CapPrm:"):
            mask = int(line.split()[1], 16)
            return {cap for cap in range(64) if mask >> cap & 1}
    return set(range(len(CAP_NAMES)))


def plan_capabilities(add, drop, privileged, held):
    """Docker's rules: start from the default set (or nothing when dropping
    ALL, or everything when adding ALL or --privileged), add, then drop.
    "Everything" is what we hold; asking for a capability we lack is an
    error, not a silent omission."""
    every = set(range(len(CAP_NAMES))) & held
    if privileged:
        return every
    caps = docker_capability_rules(add, drop, every)
    missing = sorted(caps - held)
    if missing:
        raise MiniDockerError("capability %s is not held by minidocker itself, so the "
                              "container cannot have it" % ", ".join("CAP_" + CAP_NAMES[c]
                                                                      for c in missing))
    return caps


def docker_capability_rules(add, drop, every):
    """moby's TweakCapabilities: --cap-add ALL is everything less the drops;
    otherwise the defaults (none after --cap-drop ALL) less the drops, plus
    the adds, so a capability both added and dropped is kept."""
    adds = {cap_number(n) for n in add if n.upper() != "ALL"}
    drops = {cap_number(n) for n in drop if n.upper() != "ALL"}
    if any(n.upper() == "ALL" for n in add):
        return every - drops
    dropped_all = any(n.upper() == "ALL" for n in drop)
    base = set() if dropped_all else {CAP_NAMES.index(n) for n in DOCKER_DEFAULT_CAPS}
    return (base - drops) | adds


def cap_mask(caps):
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    return mask


def last_cap():
    with open("/proc/sys/kernel/cap_last_cap") as handle:
        return int(handle.read())


def drop_bounding_set(keep):
    """Remove from the bounding set every capability not kept. Needs
    CAP_SETPCAP, so it runs while we are still full root."""
    for cap in range(last_cap() + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap, what="prctl(PR_CAPBSET_DROP, %d)" % cap)


def set_capabilities(effective_permitted):
    """capset(2): effective = permitted = the given mask, inheritable = 0;
    then clear the ambient set."""
    mask = effective_permitted
    header = ctypes.create_string_buffer(struct.pack(CAP_HEADER, _LINUX_CAPABILITY_VERSION_3, 0))
    data = ctypes.create_string_buffer(
        struct.pack(CAP_DATA, mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0)
        + struct.pack(CAP_DATA, mask >> 32, mask >> 32, 0))
    _check(_capset(header, data), "capset(0x%x)" % mask)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


# ============================================================================
# 11. The process: stages, sync pipes, init, users, signals, the terminal
# ============================================================================
# Two processes, in stages named for ps(1), as runc names its own:
#
#   md:[0:PARENT]  minidocker itself. Makes the state, unshares the pid
#                  namespace for its child, forks, tells the child when to go
#                  on, forwards signals, relays the terminal, waits, cleans up.
#   md:[1:CHILD]   pid 1 of the new pid namespace. Unshares the other
#                  namespaces, builds the root filesystem, pivots into it.
#   md:[2:INIT]    the same process once inside: becomes the user, drops
#                  capabilities, sets no_new_privs, and execs the command.
#
# runc needs a third process because it can enter a user namespace and a pid
# namespace in one start-up; without user namespaces two are enough.
#
# They talk over two close-on-exec pipes (subprocess.py's trick): the child
# writes "ready" once its namespaces exist, the parent answers "go" when the
# host side (cgroups, #3; networking, #5) is done, and the child reports a
# failure as one "error CODE MESSAGE" line. End of file on the child's pipe
# with no error means the exec succeeded: the kernel closed the pipe in it.

FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def parse_passwd(text):
    """/etc/passwd lines -> [(name, uid, gid, home)]."""
    users = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[2].isdigit() and fields[3].isdigit():
            users.append((fields[0], int(fields[2]), int(fields[3]), fields[5]))
    return users


def parse_group(text):
    """/etc/group lines -> [(name, gid, [members])]."""
    groups = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isdigit():
            groups.append((fields[0], int(fields[2]), [m for m in fields[3].split(",") if m]))
    return groups


def resolve_user(user, passwd, group, group_add=()):
    """Docker's -u rules against the container's own files: USER and GROUP
    by name or number; a number missing from passwd is allowed (gid 0, HOME
    /). Returns (uid, gid, supplementary gids, home)."""
    name, _, group_name = (user or "root").partition(":")
    entry = next((u for u in passwd if name in (u[0], str(u[1]))), None)
    if entry is None and not name.isdigit():
        raise MiniDockerError("unable to find user %s: no matching entries in passwd file" % name)
    uid, gid, home = (entry[1], entry[2], entry[3]) if entry else (int(name), 0, "/")
    if group_name:
        gid = lookup_group(group_name, group)
    supplementary = [] if group_name else [g[1] for g in group if entry and entry[0] in g[2]]
    supplementary += [lookup_group(g, group) for g in group_add]
    groups = [gid] + [g for g in supplementary if g != gid]
    return uid, gid, sorted(set(groups), key=groups.index), home or "/"


def lookup_group(name, group):
    match = next((g for g in group if name in (g[0], str(g[1]))), None)
    if match is None and not name.isdigit():
        raise MiniDockerError("unable to find group %s: no matching entries in group file" % name)
    return match[1] if match else int(name)


def container_env(spec, hostname, home):
    """The process's environment: docker's defaults first, -e on top."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": home}
    if spec.tty:
        env["TERM"] = "xterm"
    for entry in spec.env:
        key, _, value = entry.partition("=")
        env[key] = value
    return env


def find_executable(command, path):
    """execvp's search, inside the container: a name with a slash is used as
    is; otherwise the first executable in $PATH. Not found -> exit 127."""
    if "/" in command:
        return command
    found_denied = None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", command)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            found_denied = found_denied or candidate
    if found_denied:
        return found_denied  # execve will say EACCES: exit 126
    raise MiniDockerError('exec: "%s": executable file not found in $PATH' % command,
                          EXIT_NOT_FOUND)


def switch_user(uid, gid, groups, caps):
    """Become the container's user, keeping the container's capabilities
    across setuid (PR_SET_KEEPCAPS) only for root. A non-root user ends with
    empty permitted and effective sets, as with docker."""
    drop_bounding_set(caps)
    prctl(PR_SET_KEEPCAPS, 1, what="prctl(PR_SET_KEEPCAPS)")
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    set_capabilities(cap_mask(caps) if uid == 0 else 0)
    prctl(PR_SET_NO_NEW_PRIVS, 1, what="prctl(PR_SET_NO_NEW_PRIVS)")


def child_stage(spec, record, layer, to_parent, from_parent, console):
    """Stage 1 and 2, in the child. Never returns: execs or exits."""
    try:
        set_stage_name("md:[1:CHILD]")
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
        unshare(CHILD_NAMESPACES)
        os.write(to_parent, b"ready\n")
        if os.read(from_parent, 2) != b"go":
            os._exit(EXIT_RUNTIME)  # the parent is gone
        unshare(CLONE_NEWCGROUP)
        hostname = spec.hostname or record["id"][:12]
        build_root(spec, layer, console)
        set_stage_name("md:[2:INIT]")
        sethostname(hostname)
        bring_up_loopback()
        exec_command(spec, hostname)
    except MiniDockerError as err:
        report_and_exit(to_parent, err.code, str(err))
    except OSError as err:
        report_and_exit(to_parent, EXIT_RUNTIME, str(err))
    except BaseException as err:  # a bug: still one line, never a traceback
        report_and_exit(to_parent, EXIT_RUNTIME, "internal error: %r" % err)


def report_and_exit(to_parent, code, message):
    line = "error %d %s\n" % (code, message.replace("\n", " "))
    os.write(to_parent, line.encode(errors="replace"))
    os._exit(code)


def build_root(spec, layer, console):
    """Mount namespace work: private propagation, the overlay, the mount
    plan, the terminal, pivot_root."""
    os.umask(0)  # device nodes and mount points get exactly the modes we give
    # Propagation must be private before anything is mounted, or the mounts
    # would be copied into the host's namespace (mount_namespaces(7)).
    mount(None, "/", None, MS_REC | MS_PRIVATE, shown="/ (make-rprivate)")
    rootfd = mount_overlay(spec, layer)
    apply_mounts(rootfd, plan_mounts(spec))
    if spec.privileged:
        add_host_devices(rootfd)
    if console is not None:
        attach_terminal(rootfd, console)
    mount_workdir(rootfd, spec.workdir)
    enter_root(rootfd, spec.read_only)
    os.close(rootfd)
    os.umask(0o022)


def mount_workdir(rootfd, workdir):
    """-w DIR is created when missing, inside the rootfs, as docker does."""
    try:
        os.close(open_in_root(rootfd, workdir, create="dir"))
    except OSError as err:
        raise MiniDockerError("workdir %s: %s" % (workdir, err.strerror))


def attach_terminal(rootfd, console):
    """-t: open a pty in the container's own devpts, so that `tty` inside says
    /dev/pts/0; bind its slave to /dev/console; pass the master to the parent
    over the console socket (SCM_RIGHTS, unix(7)), and keep the slave as
    stdin, stdout and stderr, the controlling terminal of a new session."""
    import array
    import socket
    ptsfd = open_in_root(rootfd, "/dev/pts", follow=False)
    master = os.open("ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=ptsfd)
    os.close(ptsfd)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt(3)
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    if os.isatty(0):
        fcntl.ioctl(slave, TIOCSWINSZ, fcntl.ioctl(0, TIOCGWINSZ, b"\0" * 8))
    consolefd = open_in_root(rootfd, "/dev/console", create="file", follow=False)
    mount(fd_path(slave), fd_path(consolefd), None, MS_BIND, shown="/dev/console")
    os.close(consolefd)
    console.sendmsg([b"M"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [master]))])
    os.close(master)
    console.close()
    os.setsid()
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(slave, target)
    os.close(slave)


def exec_command(spec, hostname):
    """Stage 2: identity, environment, privileges, then execve(2)."""
    passwd, group = parse_passwd(read_text("/etc/passwd")), parse_group(read_text("/etc/group"))
    uid, gid, groups, home = resolve_user(spec.user, passwd, group, spec.group_add)
    env = container_env(spec, hostname, home)
    switch_user(uid, gid, groups, spec.caps)
    # setuid cleared the parent-death signal (prctl(2)); ask for it again.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
    try:
        os.chdir(spec.workdir)
    except OSError as err:
        raise MiniDockerError("workdir %s: %s" % (spec.workdir, err.strerror))
    program = find_executable(spec.command[0], env.get("PATH", DEFAULT_PATH))
    # Python ignores SIGPIPE and SIGXFSZ for itself; an ignored signal stays
    # ignored across execve, so give the command the defaults back.
    for name in ("SIGPIPE", "SIGXFSZ"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    if spec.debug:
        debug(True, "own work %.2f ms (main() to execve)" % ((time.perf_counter() - START) * 1000))
    try:
        os.execve(program, spec.command, env)
    except OSError as err:
        code = EXIT_NOT_FOUND if err.errno == 2 else EXIT_CANNOT_EXEC
        raise MiniDockerError("exec %s: %s" % (program, err.strerror), code)


def read_child_message(fd):
    """One line from the child, or b'' at end of file."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def raise_child_error(message):
    if not message:
        raise MiniDockerError("the container's init died during start-up")
    _, code, text = message.decode(errors="replace").rstrip("\n").split(" ", 2)
    raise MiniDockerError(text, int(code))


def start_container(spec, record, layer, on_ready):
    """Stage 0: fork the child into its namespaces and see it to its exec.
    on_ready(pid) runs on the host side while the child waits for "go".
    Returns (pid of the container's init, pty master or None)."""
    child_read, parent_write = os.pipe2(os.O_CLOEXEC)
    parent_read, child_write = os.pipe2(os.O_CLOEXEC)
    console = console_peer = None
    if spec.tty:
        import socket
        console, console_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    unshare(CLONE_NEWPID)  # for the child we are about to fork
    pid = os.fork()
    if pid == 0:
        os.close(parent_read)
        os.close(parent_write)
        if console is not None:
            console.close()
        if not spec.interactive and not spec.tty:
            os.dup2(os.open("/dev/null", os.O_RDONLY), 0)  # `docker run` without -i
        child_stage(spec, record, layer, child_write, child_read, console_peer)
        os._exit(EXIT_RUNTIME)  # not reached: child_stage execs or exits
    os.close(child_read)
    os.close(child_write)
    if console_peer is not None:
        console_peer.close()
    try:
        if read_child_message(parent_read) != b"ready\n":
            raise_child_error(b"")
        on_ready(pid)  # cgroups now; the network (#5) will join here too
        os.write(parent_write, b"go")
        master = receive_master(console) if console is not None else None
        message = read_child_message(parent_read)
        if message:
            raise_child_error(message)
    except BaseException:
        kill_and_reap(pid)
        raise
    finally:
        os.close(parent_read)
        os.close(parent_write)
        if console is not None:
            console.close()
    return pid, master


def receive_master(console):
    import array
    import socket
    fds = array.array("i")
    _, ancillary, _, _ = console.recvmsg(1, socket.CMSG_LEN(fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:fds.itemsize])
    return fds[0] if fds else None


def kill_and_reap(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def exit_code(status):
    """waitpid status -> the shell's convention (os.waitstatus_to_exitcode is
    3.9+): the code, or 128+N for a process killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class SignalForwarder:
    """Send what minidocker receives to the container's init. Installed
    before the fork: a signal that comes while the container starts is kept
    and sent as soon as the init's pid is known, never lost and never the
    default action (KeyboardInterrupt) in minidocker itself. A pid 1 only
    gets signals it has a handler for (pid_namespaces(7)), exactly as in
    docker."""

    def __init__(self):
        self.pid = None
        self.pending = []
        for name in FORWARDED_SIGNALS:
            signal.signal(getattr(signal, name), self.receive)

    def receive(self, signum, _frame):
        if self.pid is None:
            self.pending.append(signum)
        else:
            self.send(signum)

    def send(self, signum):
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def attach(self, pid):
        self.pid = pid
        while self.pending:
            self.send(self.pending.pop(0))


def relay_terminal(master, interactive):
    """Copy the user's keys to the container's pty and its output back, with
    the user's terminal raw (so ctrl-C is a byte for the container's line
    discipline, not a signal for us) and the window size kept in step."""
    import termios
    import tty
    local = os.isatty(0)
    saved = termios.tcgetattr(0) if local else None

    def resize(_signum=None, _frame=None):
        fcntl.ioctl(master, TIOCSWINSZ, fcntl.ioctl(0, TIOCGWINSZ, b"\0" * 8))

    try:
        if local:
            tty.setraw(0, termios.TCSADRAIN)  # not TCSAFLUSH: keep what was typed ahead
            signal.signal(signal.SIGWINCH, resize)
            resize()
        pump(master, interactive)
    finally:
        if local:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)


def pump(master, interactive):
    import select
    sources = [master, 0] if interactive else [master]
    while True:
        readable, _, _ = select.select(sources, [], [])
        if master in readable:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave is closed, the container is gone
                return
            if not data:
                return
            write_all(1, data)
        if 0 in readable:
            data = os.read(0, 65536)
            if not data:
                sources.remove(0)
                continue
            write_all(master, data)


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def run_container(spec, paths):
    """`run`: plan, create, start, wait, clean up. Returns the exit code."""
    reclaim_dead(paths)
    cid = os.urandom(32).hex()
    layout = detect_cgroups(read_text("/proc/self/mountinfo"), read_text("/proc/self/cgroup"))
    groups = plan_cgroups(spec.resources, layout, cid, spec.cgroup_parent)
    record = create_container(paths, spec, cid, [path for _, _, path, _ in groups])
    layer = paths.layer(cid)
    debug(spec.debug, "container %s, layer %s, cgroups %s" % (cid, layer, record["cgroups"]))
    cgroups, started = [], False
    try:
        forwarder = SignalForwarder()
        cgroups = create_cgroups(groups, spec.resources)
        pid, master = start_container(spec, record, layer,
                                      lambda child: join_cgroups(cgroups, child))
        started = True
        forwarder.attach(pid)
        record.update(status="running", pid=pid)
        write_record(paths, record)
        if master is not None:
            relay_terminal(master, spec.interactive)
        _, status = os.waitpid(pid, 0)
        code = exit_code(status)
        if code == 128 + signal.SIGKILL and oom_killed(cgroups):
            sys.stderr.write("minidocker: the container hit its memory limit (--memory %s) "
                             "and the kernel's OOM killer ended it\n"
                             % spec.resources.get("memory", "of its parent cgroup"))
    finally:
        remove_cgroups(cgroups)
        if spec.remove or not started:
            remove_container(paths, record)
    if not spec.remove:
        record.update(status="exited", exit_code=code)
        write_record(paths, record)
    return code


# ============================================================================
# 12. Commands
# ============================================================================


def require_root(what):
    if os.geteuid() != 0:
        raise MiniDockerError("%s needs root (CAP_SYS_ADMIN in the initial user "
                              "namespace): run it with sudo" % what)


def cmd_run(args):
    require_root("run")
    spec = build_spec(args)
    return run_container(spec, Paths())


def cmd_rm(args):
    """Remove stopped containers; -f first kills a running one."""
    require_root("rm")
    paths = Paths()
    reclaim_dead(paths)
    for prefix in args.containers:
        record = find_container(paths, prefix)
        if record["status"] == "running" and owner_alive(record):
            if not args.force:
                raise MiniDockerError("container %s is running: stop it or use rm -f"
                                      % record["id"][:12])
            os.kill(record["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while owner_alive(record) and time.monotonic() < deadline:
                time.sleep(0.02)
        remove_container(paths, record)
        print(record["id"][:12])
    return 0


def cmd_ps(args):
    paths = Paths()
    reclaim_dead(paths)
    row = "%-12s  %-10s  %9s  %8s  %-30s  %s"
    print(row % ("CONTAINER ID", "STATUS", "MEMORY", "CPU", "COMMAND", "ROOTFS"))
    for record in read_records(paths):
        if args.all or record["status"] == "running":
            status, memory, cpu = record["status"], "-", "-"
            if status == "exited":
                status = "exited(%s)" % record.get("exit_code", "?")
            else:
                usage = cgroup_usage(record.get("cgroups", []))
                if usage["memory"] is not None:
                    memory = "%.1fMiB" % (usage["memory"] / (1 << 20))
                if usage["cpu_seconds"] is not None:
                    cpu = "%.2fs" % usage["cpu_seconds"]
            print(row % (record["id"][:12], status, memory, cpu,
                         " ".join(record["command"])[:30], record["rootfs"]))
    return 0


def cmd_mkrootfs(args):
    what = make_rootfs(os.path.abspath(args.dir), use_busybox=not args.no_busybox)
    print("rootfs %s: %s" % (args.dir, what))
    return 0


# ============================================================================
# 13. argparse and main()
# ============================================================================


def build_parser():
    class Parser(argparse.ArgumentParser):
        def error(self, message):  # exit 125 with one line, as docker does
            raise MiniDockerError("%s: %s" % (self.prog, message))

    parser = Parser(prog="minidocker", description="A container runtime in one file.")
    parser.add_argument("--debug", action="store_true", help="print the plan and timings")
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    commands.required = True

    # add_help=False: -h is --hostname, as in docker run.
    run = commands.add_parser("run", help="run a command in a new container", add_help=False)
    run.add_argument("--help", action="help", help="show this help and exit")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    run.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    run.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    run.add_argument("--rm", action="store_true", help="remove the container when it exits")
    run.add_argument("--hostname", "-h", dest="hostname", help="host name (default: short id)")
    run.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VAL]")
    run.add_argument("--env-file", action="append", default=[], metavar="FILE")
    run.add_argument("-w", "--workdir", default="/", metavar="DIR")
    run.add_argument("-u", "--user", metavar="USER[:GROUP]")
    run.add_argument("--group-add", action="append", default=[], metavar="GROUP")
    run.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]")
    run.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTS]")
    run.add_argument("--read-only", action="store_true", help="mount the root read-only")
    run.add_argument("--cap-add", action="append", default=[], metavar="CAP")
    run.add_argument("--cap-drop", action="append", default=[], metavar="CAP")
    run.add_argument("--privileged", action="store_true",
                     help="all capabilities, host devices, nothing masked")
    run.add_argument("-m", "--memory", metavar="SIZE", help="memory limit, e.g. 100m")
    run.add_argument("--memory-swap", metavar="SIZE", help="memory plus swap; -1: unlimited")
    run.add_argument("--memory-reservation", metavar="SIZE", help="soft memory limit")
    run.add_argument("--cpus", metavar="N", help="CPU quota, e.g. 0.5")
    run.add_argument("-c", "--cpu-shares", type=int, metavar="N", help="relative CPU weight")
    run.add_argument("--cpuset-cpus", metavar="LIST", help="CPUs allowed, e.g. 0-1")
    run.add_argument("--cpuset-mems", metavar="LIST", help="memory nodes allowed")
    run.add_argument("--pids-limit", type=int, metavar="N", help="task limit; 0 or -1: none")
    run.add_argument("--blkio-weight", type=int, metavar="N", help="block I/O weight, 10-1000")
    run.add_argument("--device-read-bps", action="append", default=[], metavar="DEV:RATE")
    run.add_argument("--device-write-bps", action="append", default=[], metavar="DEV:RATE")
    run.add_argument("--cgroup-parent", metavar="PATH", help="parent cgroup of the container's")
    run.add_argument("rootfs", metavar="ROOTFS")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD [ARG...]")
    run.set_defaults(handler=cmd_run)

    rm = commands.add_parser("rm", help="remove containers")
    rm.add_argument("-f", "--force", action="store_true", help="kill it first if running")
    rm.add_argument("containers", nargs="+", metavar="ID")
    rm.set_defaults(handler=cmd_rm)

    ps = commands.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="also stopped ones")
    ps.set_defaults(handler=cmd_ps)

    mkrootfs = commands.add_parser("mkrootfs", help="build a small rootfs from the host's tools")
    mkrootfs.add_argument("--no-busybox", action="store_true",
                          help="copy the host's shell and utilities even if busybox is there")
    mkrootfs.add_argument("dir", metavar="DIR")
    mkrootfs.set_defaults(handler=cmd_mkrootfs)
    return parser


START = 0.0  # time.perf_counter() when main() was entered, for --debug


def main(argv=None):
    global START
    START = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except MiniDockerError as err:
        sys.stderr.write("minidocker: error: %s\n" % err)
        return err.code
    except OSError as err:
        sys.stderr.write("minidocker: error: %s\n" % err)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
