#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""minidocker: a Linux container runtime in one file, standard library only.

    sudo python3 minidocker.py mkrootfs ./rootfs && sudo python3 minidocker.py run ./rootfs /bin/sh

Read it top to bottom: the chapters follow a container from the command line
to its first instruction. `grep -n '^# ===' minidocker.py` prints them:

    1. errors and messages         8. cgroups: resource limits
    2. libc bindings and constants  9. networking: netlink, bridge, veth, NAT
    3. configuration (the spec)    10. capabilities, no_new_privs, seccomp
    4. state on disk               11. the process: stages, init, terminal
    5. images: mkrootfs, ELF,      12. commands
       the layer store, pull
    6. filesystem: overlay, mounts, /dev, pivot_root
    7. namespaces, loopback        13. the command line, main()

Needs: Linux >= 4.14 (TIOCGPTPEER for the terminal, SECCOMP_RET_KILL_PROCESS;
4.15 on cgroup v2, for the device cgroup's BPF program), overlayfs, root
(CAP_SYS_ADMIN in the initial user namespace), Python >= 3.8.
"""

import _signal as signal  # signal.py's C module: see below

if __name__ == "__main__":
    # The first thing the program does: hold back the signals `run` forwards,
    # so that one arriving before their handlers exist (a ctrl-C at start-up,
    # a `timeout` that fires early) waits instead of killing minidocker
    # halfway through making a container. main() gives the stopping ones a
    # handler that ends the command with one line while nothing is made yet;
    # `run` holds them back again before it makes anything, until its
    # signal pipe takes them (SignalPipe).
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                              signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2))

import _json  # noqa: E402 (the imports come after the mask above)
import errno
import fcntl
import gc
import marshal
import os
import select
import stat
import struct
import sys
import time

# Every module the container's init uses after pivot_root must be imported
# before it: from then on the host's Python library is out of reach, and an
# extension module (fcntl is one in many builds) would fail to load. A
# module only some runs need is imported where it is needed, to keep the
# others' start-up short (ipaddress: only for -p, --subnet and --add-host;
# ctypes: at the first call into libc, chapter 2, which comes before any
# pivot_root), but always before the fork when the child needs it after
# pivot_root (preload, in start_container). Sockets are made with
# _socket, the C module that socket.py wraps: socket.py builds its enums
# at import (4 ms of every run that needs a socket) for conveniences we do
# not use.
#
# Four modules every Python program seems to import are left out for the
# same reason, measured on the 2-CPU host: signal.py turns the signals into
# enums at import, re builds its own, and json imports re, 12 ms of every
# start between them (enum's import is most of it); contextlib brings
# collections and functools, 4 ms more. Together they were a sixth of a
# whole `run /bin/true`. So signal is _signal, the C module signal.py wraps
# (the same functions, with plain numbers where signal.py has enums; names
# for numbers: signal_name); JSON is read and written with _json, json's
# own C part (to_json, from_json, chapter 4); the few functions that need a
# pattern import re themselves; and `suppress` below is contextlib's.
#
# Python's cycle collector runs each time 700 more objects exist than at
# its last run: 11 times in a `run /bin/true` (the file's own functions
# among them), 3 ms, and each time in the child after the fork it writes
# to pages the fork shares, which the kernel then copies. From 10,000 it
# runs in no start-up; a minidocker that lives on (logs -f, a pull) still
# collects. Reference counting frees all but cycles in any case.
gc.set_threshold(10000)

# === 1. Errors and messages ===
# Helpers raise; only main() writes messages and exits (as tini does): the
# commands write nothing but their output (ps's table, rm's ids). Exit codes
# follow `docker run`: 125 when minidocker itself fails, 126 when the command
# exists but cannot be executed, 127 when it is not found, 128+N when the
# container's process was killed by signal N (and when minidocker's own
# start-up is ended by signal N, as a shell reports it), and otherwise the
# command's own status.

VERSION = "0.1.0"  # --version

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


def quote(text, limit=80):
    """User text inside an error line: repr-quoted, so a newline or a
    control character shows as an escape, and cut at `limit` characters,
    so one flag cannot make the line huge."""
    shown = repr(text[:limit])
    return shown + ("... (%d characters)" % len(text) if len(text) > limit else "")


def is_number(text):
    """Only ASCII digits: str.isdigit() also takes '²' and '١', which int()
    then refuses or reads in another script."""
    return text.isascii() and text.isdigit()


ASCII_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def is_hex_id(text, length=64):
    """A container's or a layer's id: `length` lowercase hex digits."""
    return isinstance(text, str) and len(text) == length and not text.strip("0123456789abcdef")


def is_integer(text, most_digits):
    """An optional minus, then 1 to `most_digits` ASCII digits."""
    digits = text[1:] if text.startswith("-") else text
    return is_number(digits) and len(digits) <= most_digits


class suppress:
    """contextlib.suppress: an exception of one of `errors` ends the block
    as if it had run to its end (without contextlib's import: see above)."""

    def __init__(self, *errors):
        self.errors = errors

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is not None and issubclass(kind, self.errors)


def one_line(text, limit=2000):
    """An error as main() prints it: one line, whatever a path or a value
    in it holds, and of a bounded length."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def read_regular_file(path, limit, what):
    """The bytes of a file that must be a regular file of at most `limit`
    bytes: a FIFO would block forever, /dev/zero never ends, and a file of
    /proc claims a size of 0 (so /proc/kmsg and its like read as empty:
    only st_size bytes are read). `what` names the file in errors."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise MiniDockerError("%s: %s" % (what, err.strerror))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MiniDockerError("%s is not a regular file" % what)
        if st.st_size > limit:
            raise MiniDockerError("%s is larger than %d MiB" % (what, limit >> 20))
        data = b""
        while len(data) < st.st_size:
            chunk = os.read(fd, st.st_size - len(data))
            if not chunk:
                break
            data += chunk
        return data
    except OSError as err:
        raise MiniDockerError("%s: %s" % (what, err.strerror))
    finally:
        os.close(fd)


FLAG_FILE_LIMIT = 16 << 20  # an --env-file or a seccomp profile


def read_text(path):
    """A file's text, or "" when it cannot be read: for /proc and /sys files
    that this kernel may not have."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


WARNINGS = []  # what the user should know and that did not stop the command


def warn(message):
    """Noted for main() to print once the command is done: only main()
    writes messages (as tini does), apart from --debug's trace."""
    WARNINGS.append(message)


def debug(enabled, message):
    if enabled:
        sys.stderr.write("minidocker: debug: %s\n" % message)


def trace(enabled, stage):
    """--debug's start-up trace: a stage done, at so many ms since main()
    began (perf_counter is CLOCK_MONOTONIC, the same clock in the child),
    so that a slow host shows where its time goes."""
    debug(enabled, "%8.2f ms  %s" % ((time.perf_counter() - START) * 1000, stage))


# === 2. libc bindings and kernel constants ===
# Every libc function and raw system call is bound here, once, with its
# argument types and its error check: a binding that returns -1 raises
# SyscallError by itself, so no caller can forget to look. The wrappers
# below only rename the error after what they were doing, and add a hint
# for the errno that has a usual cause. The buffers that a call reads
# (struct mount_attr, bpf_attr, the capability sets, the seccomp program)
# are built with struct beside the call that takes them. Constants carry
# the header they come from.
#
# ctypes itself is imported at the first call of a binding, not at the
# top: its import is 3 ms (the _ctypes extension and libffi loaded, its
# types built) that the verbs which only read state and send signals
# (state, start, kill, delete, ps, inspect, logs, stop) never need. The
# file's rule for imports still holds: whatever goes on into a container
# calls a binding (unshare, setns, mount) while the host's filesystem is
# still its own, so ctypes is loaded before any pivot_root or chroot. The
# functions that build a C buffer (below, and in chapters 7 and 10) import
# ctypes themselves, which after the first import is a look-up.


_libc = None


def libc():
    """The libc this python links against, loaded once (dlopen(NULL): the
    process's own symbols; no file is opened). Called before a fork whose
    child goes into a container, so that ctypes is imported once for both."""
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _fail_on_minus_one(result, func, args):
    """The errcheck of every binding: ctypes calls it with each result.
    libc and syscall(2) report a failure as -1 with errno set."""
    import ctypes
    if result == -1:
        raise syscall_error(ctypes.get_errno(), func.call)
    return result


class _bind:
    """libc's `name`, typed and checked, bound at its first call. The C
    types are named as ctypes names them without the c_ ("char_p ulong"
    for c_char_p, c_ulong). `call` names a raw system call made through
    syscall(2), for the error of a caller that does not rename it.

    holding_gil: called through a PyDLL, which keeps the GIL for the call
    (a CDLL's calls release it): for a call no other thread of the
    interpreter may run beside, fork_into_cgroup's clone3. Unchecked: the
    caller reads the result."""

    def __init__(self, name, argtypes, restype="int", call=None, holding_gil=False):
        self.name, self.argtypes, self.restype = name, argtypes.split(), restype
        self.call, self.holding_gil, self.func = call or name, holding_gil, None

    def __call__(self, *args):
        return (self.func or self.bind())(*args)

    def bind(self):
        """The function, bound now if it was not yet; kept for every call."""
        if self.func is not None:
            return self.func
        import ctypes
        library = ctypes.PyDLL(None, use_errno=True) if self.holding_gil else libc()
        func = library[self.name]  # a new function object: argtypes belong to one binding
        func.argtypes = [getattr(ctypes, "c_" + name) for name in self.argtypes]
        func.restype = getattr(ctypes, "c_" + self.restype)
        if not self.holding_gil:
            func.call = self.call
            func.errcheck = _fail_on_minus_one
        self.func = func
        return func


# <linux/sched.h>: clone3(2)'s flag, and its struct clone_args up to the
# cgroup field (CLONE_ARGS_SIZE_VER2, 88 bytes), eleven u64 in this order:
#   flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
#   tls, set_tid, set_tid_size, cgroup
CLONE_INTO_CGROUP = 0x200000000
CLONE_ARGS = "11Q"
assert struct.calcsize(CLONE_ARGS) == 88
_clone3 = _bind("syscall", "long char_p size_t", "long", holding_gil=True)
# clone3's refusals of the call itself: ENOSYS (Linux before 5.3, or a
# seccomp profile's answer: docker's), EPERM (another profile's), E2BIG
# (Linux 5.3 to 5.6: a clone_args without the cgroup field).
CLONE3_REFUSED = (errno.ENOSYS, errno.EPERM, errno.E2BIG)


def fork_into_cgroup(cgroup_fd):
    """os.fork() by clone3(2), the child born in the cgroup2 directory
    `cgroup_fd`: -> the child's pid (0 in the child), or None where clone3
    is refused. As os.fork does, it calls PyOS_BeforeFork before and
    PyOS_AfterFork_Child or _Parent after, with the GIL held throughout
    (a binding holding_gil), so that the interpreter's own state (its locks,
    its threads' records) is made right in the child. What os.fork's fork(3)
    does besides, glibc's handlers for its own locks, matters only while
    another thread may hold one: with another thread in the process, this
    declines. The kernel's count says so (/proc/self/task): a Python
    thread leaves _thread's count before its end, in which glibc frees its
    memory under malloc's locks, and a library's threads are never in it.
    OSError for a failure that is not a refusal of clone3 (CLONE3_REFUSED)."""
    try:
        if len(os.listdir("/proc/self/task")) != 1:
            return None
    except FileNotFoundError:  # no /proc: no count to trust
        return None
    import ctypes
    args = struct.pack(CLONE_ARGS, CLONE_INTO_CGROUP, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, 0, 0,
                       cgroup_fd)
    # Everything looked up first: from PyOS_BeforeFork to the child's
    # PyOS_AfterFork_Child, the interpreter runs no code of its own (the
    # import lock is held, and the child's thread records are the parent's).
    clone3 = _clone3.bind()
    before_fork, after_in_child, after_in_parent = (
        ctypes.pythonapi.PyOS_BeforeFork, ctypes.pythonapi.PyOS_AfterFork_Child,
        ctypes.pythonapi.PyOS_AfterFork_Parent)
    before_fork()
    pid = clone3(SYSCALLS["clone3"], args, len(args))
    if pid == 0:
        after_in_child()
        return 0
    after_in_parent()
    if pid > 0:
        return pid
    number = ctypes.get_errno()  # the call's, kept by ctypes (use_errno)
    if number in CLONE3_REFUSED:
        return None
    raise OSError(number, os.strerror(number))


class failing_as:
    """Rename a failed binding's error after what the caller was doing
    (`mount overlay on /x`), with the hint that `hints` gives its errno."""

    def __init__(self, call, hints=None):
        self.call, self.hints = call, hints or {}

    def __enter__(self):
        return self

    def __exit__(self, kind, err, traceback):
        if isinstance(err, SyscallError):
            raise syscall_error(err.errno, self.call, self.hints.get(err.errno)) from None
        return False


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
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_PROPAGATION = MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED
MNT_DETACH = 0x2  # umount2(2)

# <linux/magic.h>: statfs(2)'s f_type, the filesystem a handle is on.
SYSFS_MAGIC = 0x62656572
DEVPTS_SUPER_MAGIC = 0x1cd1

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# <asm-generic/ioctls.h> (the same numbers on x86_64 and aarch64)
TIOCSCTTY = 0x540E
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
TIOCSPTLCK = 0x40045431  # _IOW('T', 0x31, int)
TIOCGPTPEER = 0x5441     # _IO('T', 0x41), Linux 4.13
WINSIZE_ZERO = struct.pack("=HHHH", 0, 0, 0, 0)  # struct winsize: rows, cols, x and y pixels

# <linux/sockios.h>, <net/if.h>: bringing loopback up without netlink, on
# a socket of <sys/socket.h>'s kinds (bits/socket.h, bits/socket_type.h).
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFNAMSIZ = 16           # <linux/if.h>: an interface name, NUL included
# struct ifreq (40 bytes): the name, then a union of which the flags'
# ioctls use one short.
IFREQ_FLAGS = "=%dsh22x" % IFNAMSIZ
assert struct.calcsize(IFREQ_FLAGS) == 40
AF_UNSPEC, AF_INET = 0, 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000

# <asm/unistd.h>: system call numbers. glibc has no wrapper for pivot_root(2)
# or seccomp(2), and the seccomp compiler (chapter 10) turns names into
# numbers, so the tables of the two architectures we run on are written out.
# Each line starts with the number of its first name; the numbers go on by
# one. x86_64 has its own table; aarch64 uses the generic one in
# asm-generic/unistd.h. Both are Linux 6.1's, checked against Debian's
# linux-libc-dev and linux-libc-dev-arm64-cross by test_syscall_tables_*.
SYSCALL_TABLES = {
    "x86_64": """
    0 read write open close stat fstat lstat poll lseek mmap mprotect munmap
    12 brk rt_sigaction rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64
    19 readv writev access pipe select sched_yield mremap msync mincore
    28 madvise shmget shmat shmctl dup dup2 pause nanosleep getitimer alarm
    38 setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg
    47 recvmsg shutdown bind listen getsockname getpeername socketpair
    54 setsockopt getsockopt clone fork vfork execve exit wait4 kill uname
    64 semget semop semctl shmdt msgget msgsnd msgrcv msgctl fcntl flock fsync
    75 fdatasync truncate ftruncate getdents getcwd chdir fchdir rename mkdir
    84 rmdir creat link unlink symlink readlink chmod fchmod chown fchown
    94 lchown umask gettimeofday getrlimit getrusage sysinfo times ptrace
    102 getuid syslog getgid setuid setgid geteuid getegid setpgid getppid
    111 getpgrp setsid setreuid setregid getgroups setgroups setresuid
    118 getresuid setresgid getresgid getpgid setfsuid setfsgid getsid capget
    126 capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend
    131 sigaltstack utime mknod uselib personality ustat statfs fstatfs sysfs
    140 getpriority setpriority sched_setparam sched_getparam
    144 sched_setscheduler sched_getscheduler sched_get_priority_max
    147 sched_get_priority_min sched_rr_get_interval mlock munlock mlockall
    152 munlockall vhangup modify_ldt pivot_root _sysctl prctl arch_prctl
    159 adjtimex setrlimit chroot sync acct settimeofday mount umount2 swapon
    168 swapoff reboot sethostname setdomainname iopl ioperm create_module
    175 init_module delete_module get_kernel_syms query_module quotactl
    180 nfsservctl getpmsg putpmsg afs_syscall tuxcall security gettid
    187 readahead setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr
    194 listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr
    200 tkill time futex sched_setaffinity sched_getaffinity set_thread_area
    206 io_setup io_destroy io_getevents io_submit io_cancel get_thread_area
    212 lookup_dcookie epoll_create epoll_ctl_old epoll_wait_old
    216 remap_file_pages getdents64 set_tid_address restart_syscall semtimedop
    221 fadvise64 timer_create timer_settime timer_gettime timer_getoverrun
    226 timer_delete clock_settime clock_gettime clock_getres clock_nanosleep
    231 exit_group epoll_wait epoll_ctl tgkill utimes vserver mbind
    238 set_mempolicy get_mempolicy mq_open mq_unlink mq_timedsend
    243 mq_timedreceive mq_notify mq_getsetattr kexec_load waitid add_key
    249 request_key keyctl ioprio_set ioprio_get inotify_init
    254 inotify_add_watch inotify_rm_watch migrate_pages openat mkdirat
    259 mknodat fchownat futimesat newfstatat unlinkat renameat linkat
    266 symlinkat readlinkat fchmodat faccessat pselect6 ppoll unshare
    273 set_robust_list get_robust_list splice tee sync_file_range vmsplice
    279 move_pages utimensat epoll_pwait signalfd timerfd_create eventfd
    285 fallocate timerfd_settime timerfd_gettime accept4 signalfd4 eventfd2
    291 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev
    297 rt_tgsigqueueinfo perf_event_open recvmmsg fanotify_init fanotify_mark
    302 prlimit64 name_to_handle_at open_by_handle_at clock_adjtime syncfs
    307 sendmmsg setns getcpu process_vm_readv process_vm_writev kcmp
    313 finit_module sched_setattr sched_getattr renameat2 seccomp getrandom
    319 memfd_create kexec_file_load bpf execveat userfaultfd membarrier
    325 mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect pkey_alloc
    331 pkey_free statx io_pgetevents rseq
    424 pidfd_send_signal io_uring_setup io_uring_enter io_uring_register
    428 open_tree move_mount fsopen fsconfig fsmount fspick pidfd_open clone3
    436 close_range openat2 pidfd_getfd faccessat2 process_madvise
    441 epoll_pwait2 mount_setattr quotactl_fd landlock_create_ruleset
    445 landlock_add_rule landlock_restrict_self memfd_secret process_mrelease
    449 futex_waitv set_mempolicy_home_node
""",
    "aarch64": """
    0 io_setup io_destroy io_submit io_cancel io_getevents setxattr lsetxattr
    7 fsetxattr getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr
    14 removexattr lremovexattr fremovexattr getcwd lookup_dcookie eventfd2
    20 epoll_create1 epoll_ctl epoll_pwait dup dup3 fcntl inotify_init1
    27 inotify_add_watch inotify_rm_watch ioctl ioprio_set ioprio_get flock
    33 mknodat mkdirat unlinkat symlinkat linkat renameat umount2 mount
    41 pivot_root nfsservctl statfs fstatfs truncate ftruncate fallocate
    48 faccessat chdir fchdir chroot fchmod fchmodat fchownat fchown openat
    57 close vhangup pipe2 quotactl getdents64 lseek read write readv writev
    67 pread64 pwrite64 preadv pwritev sendfile pselect6 ppoll signalfd4
    75 vmsplice splice tee readlinkat newfstatat fstat sync fsync fdatasync
    84 sync_file_range timerfd_create timerfd_settime timerfd_gettime
    88 utimensat acct capget capset personality exit exit_group waitid
    96 set_tid_address unshare futex set_robust_list get_robust_list nanosleep
    102 getitimer setitimer kexec_load init_module delete_module timer_create
    108 timer_gettime timer_getoverrun timer_settime timer_delete
    112 clock_settime clock_gettime clock_getres clock_nanosleep syslog ptrace
    118 sched_setparam sched_setscheduler sched_getscheduler sched_getparam
    122 sched_setaffinity sched_getaffinity sched_yield sched_get_priority_max
    126 sched_get_priority_min sched_rr_get_interval restart_syscall kill
    130 tkill tgkill sigaltstack rt_sigsuspend rt_sigaction rt_sigprocmask
    136 rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigreturn setpriority
    141 getpriority reboot setregid setgid setreuid setuid setresuid getresuid
    149 setresgid getresgid setfsuid setfsgid times setpgid getpgid getsid
    157 setsid getgroups setgroups uname sethostname setdomainname getrlimit
    164 setrlimit getrusage umask prctl getcpu gettimeofday settimeofday
    171 adjtimex getpid getppid getuid geteuid getgid getegid gettid sysinfo
    180 mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr
    186 msgget msgctl msgrcv msgsnd semget semctl semtimedop semop shmget
    195 shmctl shmat shmdt socket socketpair bind listen accept connect
    204 getsockname getpeername sendto recvfrom setsockopt getsockopt shutdown
    211 sendmsg recvmsg readahead brk munmap mremap add_key request_key keyctl
    220 clone execve mmap fadvise64 swapon swapoff mprotect msync mlock
    229 munlock mlockall munlockall mincore madvise remap_file_pages mbind
    236 get_mempolicy set_mempolicy migrate_pages move_pages rt_tgsigqueueinfo
    241 perf_event_open accept4 recvmmsg
    260 wait4 prlimit64 fanotify_init fanotify_mark name_to_handle_at
    265 open_by_handle_at clock_adjtime syncfs setns sendmmsg process_vm_readv
    271 process_vm_writev kcmp finit_module sched_setattr sched_getattr
    276 renameat2 seccomp getrandom memfd_create bpf execveat userfaultfd
    283 membarrier mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect
    289 pkey_alloc pkey_free statx io_pgetevents rseq kexec_file_load
    424 pidfd_send_signal io_uring_setup io_uring_enter io_uring_register
    428 open_tree move_mount fsopen fsconfig fsmount fspick pidfd_open clone3
    436 close_range openat2 pidfd_getfd faccessat2 process_madvise
    441 epoll_pwait2 mount_setattr quotactl_fd landlock_create_ruleset
    445 landlock_add_rule landlock_restrict_self memfd_secret process_mrelease
    449 futex_waitv set_mempolicy_home_node
""",
}


def syscall_numbers(machine):
    """{name: number} for one architecture, from SYSCALL_TABLES."""
    numbers, number = {}, 0
    for word in SYSCALL_TABLES[machine].split():
        if word.isdigit():
            number = int(word)
        else:
            numbers[word] = number
            number += 1
    return numbers


MACHINE = os.uname().machine
SYSCALLS = syscall_numbers(MACHINE) if MACHINE in SYSCALL_TABLES else {}

_mount = _bind("mount", "char_p char_p char_p ulong char_p")
_umount2 = _bind("umount2", "char_p int")
_unshare = _bind("unshare", "int")
_setns = _bind("setns", "int int")
_sethostname = _bind("sethostname", "char_p size_t")
_setdomainname = _bind("setdomainname", "char_p size_t")
_personality = _bind("personality", "ulong")
_prctl = _bind("prctl", "int ulong ulong ulong ulong")
_setrlimit = _bind("setrlimit", "int char_p")
_capset = _bind("capset", "void_p void_p")
_socket = _bind("socket", "int int int")
_pivot_root = _bind("syscall", "long char_p char_p", "long", "pivot_root")
_seccomp = _bind("syscall", "long uint uint void_p", "long", "seccomp")
_bpf = _bind("syscall", "long int void_p uint", "long", "bpf")
_mount_setattr = _bind("syscall", "long int char_p uint void_p size_t", "long", "mount_setattr")
_clone = _bind("clone", "void_p void_p int void_p")
_open_tree = _bind("syscall", "long int char_p uint", "long", "open_tree")
_move_mount = _bind("syscall", "long int char_p int char_p uint", "long", "move_mount")
_fstatfs = _bind("fstatfs", "int void_p")


def filesystem_type(fd):
    """fstatfs(2)'s f_type: struct statfs opens with it, a long on both
    machines minidocker knows (x86_64, aarch64); the struct is 120 bytes."""
    import ctypes
    buf = ctypes.create_string_buffer(128)
    _fstatfs(fd, buf)
    return ctypes.c_long.from_buffer(buf).value


def mount(source, target, fstype, flags=0, data=None, shown=None):
    """mount(2). `shown` is the path to name in errors when `target` is a
    /proc/self/fd/N handle that would mean nothing to the user."""
    what = "mount %s on %s" % (fstype or source or "(remount)", shown or target)
    with failing_as(what, MOUNT_HINTS.get(fstype)):
        _mount(_b(source), _b(target), _b(fstype), flags, _b(data))


MOUNT_HINTS = {"overlay": {
    errno.EINVAL: "the state directory (MINIDOCKER_ROOT) must be on a "
                  "filesystem that can hold an overlay upper layer, such "
                  "as ext4, xfs or tmpfs, and ROOTFS must not contain it",
    errno.ENODEV: "the overlay module is not loaded: modprobe overlay",
}}


def umount2(target, flags):
    with failing_as("umount2(%s)" % target):
        _umount2(_b(target), flags)


def unshare(flags):
    names = ",".join(n for f, n in NAMESPACE_NAMES.items() if flags & f)
    with failing_as("unshare(%s)" % names,
                    {errno.EPERM: "needs root in the initial user namespace"}):
        _unshare(flags)


def setns(fd, nstype, what):
    with failing_as("setns(%s)" % what):
        _setns(fd, nstype)


def sethostname(name):
    raw = name.encode()
    with failing_as("sethostname(%s)" % name):
        _sethostname(raw, len(raw))


def setdomainname(name):
    raw = name.encode()
    with failing_as("setdomainname(%s)" % name):
        _setdomainname(raw, len(raw))


def personality(domain):
    with failing_as("personality(0x%x)" % domain):
        _personality(domain)


def prctl(option, arg2=0, what="prctl", arg3=0):
    with failing_as(what):
        return _prctl(option, arg2, arg3, 0, 0)


# <asm-generic/resource.h>: the resources of setrlimit(2), by the names
# Docker's --ulimit gives them (go-units' ulimitNameMapping).
RLIMITS = {"cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6,
           "nofile": 7, "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12,
           "nice": 13, "rtprio": 14, "rttime": 15}
RLIM_INFINITY = (1 << 64) - 1
#   struct rlimit (16 bytes)
#   +------------------+------------------+
#   | rlim_cur (8)     | rlim_max (8)     |
#   +------------------+------------------+
RLIMIT = "=QQ"
assert struct.calcsize(RLIMIT) == 16


def setrlimit(name, soft, hard):
    """setrlimit(2) of --ulimit NAME (RLIMITS); -1 is RLIM_INFINITY. Raising
    a hard limit needs CAP_SYS_RESOURCE, and even root is refused one above
    the kernel's ceiling (fs.nr_open for nofile) or a host's policy."""
    limits = struct.pack(RLIMIT, *(RLIM_INFINITY if v == -1 else v for v in (soft, hard)))
    with failing_as("setrlimit(RLIMIT_%s)" % name.upper(),
                    {errno.EPERM: "raising a hard limit above the current one is refused "
                                  "here", errno.EINVAL: "above the kernel's ceiling"}):
        _setrlimit(RLIMITS[name], limits)


def pivot_root(new_root, put_old):
    if "pivot_root" not in SYSCALLS:
        raise MiniDockerError("pivot_root: unsupported architecture %s" % MACHINE)
    # pivot_root(2) lists six causes of EINVAL. Four cannot happen here:
    # new_root is our own overlay mount, put_old is new_root itself, and
    # every mount was made private first. Two remain, both the host's: the
    # current root is the initramfs (rootfs), or it is not a mount point at
    # all (minidocker run inside a chroot).
    with failing_as("pivot_root(%s)" % new_root,
                    {errno.EINVAL: "the current root must be a mount point of a real "
                                   "filesystem: not an initramfs (rootfs), not a chroot"}):
        _pivot_root(SYSCALLS["pivot_root"], _b(new_root), _b(put_old))


# <linux/mount.h>: mount_setattr(2), Linux 5.12, which changes one attribute
# of a whole tree of mounts and leaves their other flags as they are.
#   struct mount_attr (32 bytes)
#   +---------------+---------------+---------------+---------------+
#   | attr_set (8)  | attr_clr (8)  | propagation(8)| userns_fd (8) |
#   +---------------+---------------+---------------+---------------+
MOUNT_ATTR = "=QQQQ"
assert struct.calcsize(MOUNT_ATTR) == 32
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NODEV = 0x1, 0x4
MOUNT_ATTR_IDMAP = 0x100000  # the mount shows owners through a user namespace's map
AT_EMPTY_PATH = 0x1000   # <linux/fcntl.h>: act on the handle itself
AT_RECURSIVE = 0x8000    # ... and on every mount below it


def mount_setattr(fd, attr_set, shown, userns_fd=0):
    """mount_setattr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE): set attr_set on
    the mount that fd names and on every mount under it. MOUNT_ATTR_IDMAP
    takes the user namespace whose map the mount then applies."""
    import ctypes
    attr = ctypes.create_string_buffer(struct.pack(MOUNT_ATTR, attr_set, 0, 0, userns_fd))
    with failing_as("mount_setattr(%s)" % shown):
        _mount_setattr(SYSCALLS["mount_setattr"], fd, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                       attr, len(attr.raw))


# The new mount API (Linux 5.2), for an idmapped copy of a tree (chapter 7,
# continued): open_tree(2) with OPEN_TREE_CLONE makes a detached copy of a
# mount tree, a descriptor that mount_setattr(2) may change before
# move_mount(2) attaches it anywhere.
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
AT_FDCWD = -100


def open_tree(path, recursive=True):
    """A detached copy of the mount at `path` (and of those under it), as a
    descriptor."""
    with failing_as("open_tree(%s)" % path):
        return _open_tree(SYSCALLS["open_tree"], AT_FDCWD, _b(path),
                          OPEN_TREE_CLONE | os.O_CLOEXEC | (AT_RECURSIVE if recursive else 0))


def move_mount(fd, target, shown):
    """Attach the detached tree `fd` on the directory or file `target` (a
    path, or a descriptor: a path's last symlink is not followed)."""
    to_fd, to_path = (target, b"") if isinstance(target, int) else (AT_FDCWD, _b(target))
    with failing_as("move_mount(%s)" % shown):
        _move_mount(SYSCALLS["move_mount"], fd, b"", to_fd, to_path, MOVE_MOUNT_F_EMPTY_PATH |
                    (MOVE_MOUNT_T_EMPTY_PATH if isinstance(target, int) else 0))


# <linux/bpf.h>: bpf(2), which glibc does not wrap, for the device cgroup's
# program on cgroup v2 (chapter 8).
BPF_PROG_LOAD = 5                  # enum bpf_cmd
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15   # enum bpf_prog_type, Linux 4.15
BPF_CGROUP_DEVICE = 6              # enum bpf_attach_type
BPF_F_ALLOW_MULTI = 1 << 1         # our cgroup's descendants may add programs of their own
BPF_LOG_SIZE = 1 << 16             # the verifier's explanation, asked for on refusal

#   union bpf_attr, as BPF_PROG_LOAD reads it (the first 64 bytes):
#       __u32 prog_type;   __u32 insn_cnt;   __aligned_u64 insns;
#       __aligned_u64 license;  __u32 log_level;  __u32 log_size;
#       __aligned_u64 log_buf;  __u32 kern_version;  __u32 prog_flags;
#       char prog_name[16];
#   and as BPF_PROG_ATTACH reads it:
#       __u32 target_fd;  __u32 attach_bpf_fd;  __u32 attach_type;  __u32 attach_flags;
BPF_ATTR_PROG_LOAD = "=IIQQIIQII16s"
assert struct.calcsize(BPF_ATTR_PROG_LOAD) == 64
BPF_ATTR_PROG_ATTACH = "=IIII"


def _bpf_call(command, attr):
    import ctypes
    buffer = ctypes.create_string_buffer(attr, len(attr))
    return _bpf(SYSCALLS["bpf"], command, buffer, len(attr))


def bpf_prog_load(prog_type, code, name):
    """Load an eBPF program (the bytes of its struct bpf_insn array); returns
    its fd. When the verifier refuses it (EINVAL, EACCES), the load is asked
    again with a log, so that the error quotes the verifier's reason."""
    import ctypes
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"MIT")
    log = ctypes.create_string_buffer(BPF_LOG_SIZE)

    def load(level):
        return _bpf_call(BPF_PROG_LOAD, struct.pack(
            BPF_ATTR_PROG_LOAD, prog_type, len(code) // 8, ctypes.addressof(insns),
            ctypes.addressof(license), level, BPF_LOG_SIZE if level else 0,
            ctypes.addressof(log) if level else 0, 0, 0, name.encode()))

    call = "bpf(BPF_PROG_LOAD, %s)" % name
    try:
        return load(0)
    except SyscallError as err:
        if err.errno not in (errno.EINVAL, errno.EACCES):
            raise syscall_error(err.errno, call) from None
    try:
        return load(1)
    except SyscallError as err:
        # No log: not the verifier. EINVAL then means the program type is
        # unknown to this kernel; EACCES, a security module's refusal.
        lines = log.value.decode(errors="replace").strip().splitlines()
        hint = "verifier: %s" % lines[-1] if lines else \
            "the kernel needs CONFIG_CGROUP_BPF" if err.errno == errno.EINVAL else None
        raise syscall_error(err.errno, call, hint) from None


def bpf_prog_attach(target_fd, prog_fd, attach_type, flags):
    attr = struct.pack(BPF_ATTR_PROG_ATTACH, target_fd, prog_fd, attach_type, flags)
    with failing_as("bpf(BPF_PROG_ATTACH)",
                    {errno.EINVAL: "the kernel needs CONFIG_CGROUP_BPF"}):
        _bpf_call(BPF_PROG_ATTACH, attr)


def set_stage_name(name):
    """Name this process for ps(1) (comm is 15 bytes at most)."""
    import ctypes
    buffer = ctypes.create_string_buffer(name.encode())
    prctl(PR_SET_NAME, ctypes.addressof(buffer), what="prctl(PR_SET_NAME)")


# === 3. Configuration: flags into one validated spec ===
# Every flag is checked and turned into plain data before anything is
# created on disk or in the kernel; build_spec, at the end of this chapter,
# gathers them into the spec. The rest of the program only reads the spec,
# and the unit tests check it without root.
#
# One rule places each flag's parser: in the chapter that carries the flag
# out. The resource flags, --cgroup-parent and --device are parsed in
# chapter 8, the network's flags in chapter 9, --security-opt and --cap-*
# in chapter 10; what belongs to no later chapter (volumes, tmpfs, the
# environment, the user, the host name) is parsed here.

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
        self.last_cap = 40        # the host's highest capability number
        self.privileged = False
        self.read_only = False
        self.volumes = []         # Volume objects (-v)
        self.devices = []         # Device: --device nodes made in /dev
        self.tmpfs = []           # (path, flags, data)
        self.tty = False
        self.interactive = False
        self.init = False         # --init: pid 1 is our reaper, the command its child
        self.restart = ("no", 0)  # --restart: the policy, and on-failure's most retries
        self.detach = False       # -d: a monitor keeps the container, its output to a log
        self.log_driver = "local"  # or "json-file", "none" (chapter 11 continued)
        self.log_max_size = LOCAL_LOG_SIZE    # --log-opt max-size: where the log rotates (-1 never)
        self.log_max_files = LOCAL_LOG_FILES  # --log-opt max-file: the log's files kept
        self.log_options = {}     # each --log-opt as given, for inspect's LogConfig
        self.name = None          # --name: unique among the records, as an id prefix is
        self.remove = False
        self.debug = False
        self.resources = {}       # checked resource limits (chapter 8)
        self.cgroup_parent = None
        self.seccomp = None       # the BPF filter's bytes (chapter 10); None: unconfined
        self.no_new_privs = False  # --security-opt no-new-privileges (chapter 10)
        self.notes = []           # what --debug prints about the plan
        self.network_plan = plan_network("none", None, None, [], [], [])  # see plan_network
        self.entrypoint = None    # --entrypoint: None, or [] ("") or [PROGRAM], first in command
        self.ulimits = []         # (name, soft, hard) of --ulimit, -1 unlimited (chapter 11)
        self.oom_score_adj = None  # --oom-score-adj (chapter 11)
        self.shm_size = SHM_DEFAULT_SIZE  # bytes of /dev/shm (chapter 6)
        self.sysctls = []         # (key, value) of --sysctl, written in our namespaces (chapter 7)
        self.namespaces = dict(NAMESPACE_DEFAULTS)  # --pid, --ipc, --uts, --cgroupns (chapter 7)
        self.userns = None        # --userns, --uidmap, --gidmap: see parse_userns (chapter 7)
        self.image = None         # run IMAGE: {"name", "id", "store", "lower"} (chapter 5, continued)
        self.labels = {}          # --label and --label-file
        self.stop_signal = None   # --stop-signal: stop's and restart's without -s (SIGTERM)
        self.stop_timeout = None  # --stop-timeout: their -t without one (10)
        # What only a bundle's config.json gives (chapter 3, continued):
        self.bundle = None        # the bundle's directory; None for `run`
        self.mount_plan = None    # its mounts in order, in place of plan_mounts'
        self.identity = None      # (uid, gid, [gids]): exactly these, no lookup
        self.cap_sets = None      # {set: {numbers}}: the five sets, one by one
        self.umask = None
        self.console_size = None  # (rows, columns) of its terminal
        self.cgroup_path = None   # linux.cgroupsPath
        self.propagation = MS_PRIVATE | MS_REC  # of the container's mounts, first of all
        self.seccomp_flags = 0    # SECCOMP_FILTER_FLAG_*
        self.personality = None   # personality(2)'s domain
        self.domainname = None
        self.apparmor = None      # the AppArmor profile to exec under
        self.hooks = {}           # {point: [hook]} (chapter 12, continued)
        self.annotations = {}
        self.tied = True          # the container dies with the process that starts it
        self.preserve_fds = 0     # descriptors 3.. passed on (--preserve-fds, LISTEN_FDS)
        self.exec_fifo = None     # create's O_PATH descriptor of the fifo `start` opens
        self.start_state = None   # the OCI state the startContainer hooks read
        self.runtime_files = None  # {(st_dev, st_ino)} of our interpreter and libraries
        self.__dict__.update(fields)


def absolute_path(path):
    """An absolute path in its plain form. os.path.normpath alone keeps
    POSIX's two leading slashes ("//" stays "//", not "/"), which would let
    `--tmpfs //` hide the whole root."""
    return "/" + os.path.normpath(path).lstrip("/")


class Volume:
    """One -v or --mount of a host path (a bind: `name` is None) or of a
    volume (`name` the volume's; "" for an anonymous one until it is made).
    `source` is the host directory bound: a volume's is filled in when it
    is made (make_volumes, chapter 4). `copy`: a new volume is first filled
    with what the image has at `target` (copy_up, chapter 6). `idmap`: a
    bind shown through the container's user namespace's map (-v's idmap,
    chapter 7 continued)."""
    __slots__ = ("source", "target", "read_only", "name", "copy", "anonymous", "idmap")

    def __init__(self, source, target, read_only, name=None, copy=True, anonymous=False,
                 idmap=False):
        self.source, self.target, self.read_only = source, target, read_only
        self.name, self.copy, self.anonymous, self.idmap = name, copy, anonymous, idmap

    def __repr__(self):
        if self.name is None:
            return "Volume(%r, %r, %r%s)" % (self.source, self.target, self.read_only,
                                             ", idmap=True" if self.idmap else "")
        return "Volume(%r, %r, %r, name=%r, copy=%r, anonymous=%r)" % (
            self.source, self.target, self.read_only, self.name, self.copy, self.anonymous)


# The options of -v's third part, in Docker's groups: at most one of each.
# SELinux labels (z, Z: there is no SELinux labelling here) and the
# consistency modes (only Docker Desktop's file sharing reads them; Docker
# on Linux ignores them too) are taken and ignored. Of the propagations,
# only the private ones, which every mount is (build_root makes the whole
# tree private).
VOLUME_OPTION_GROUPS = (("ro", "rw"), ("z", "Z"), ("consistent", "cached", "delegated"),
                        ("nocopy",), ("private", "rprivate"), ("idmap",))
PROPAGATIONS_REFUSED = ("shared", "rshared", "slave", "rslave")


def parse_volume(text):
    """`-v` as Docker 23+ reads it: HOST:CTR[:OPTS] binds a host path (a
    relative one, `./x`, `../x`, from the current directory), NAME:CTR[:OPTS]
    mounts the named volume NAME, made when missing, and CTR alone a new
    anonymous volume."""
    parts = text.split(":")
    if len(parts) > 3 or "" in parts[:2]:
        raise MiniDockerError("invalid volume %s: expected [HOST-PATH:|NAME:]CONTAINER-PATH"
                              "[:OPTIONS]" % quote(text))
    if len(parts) == 2 and any(parts[1] in group for group in VOLUME_OPTION_GROUPS):
        raise MiniDockerError("invalid volume %s: options need HOST-PATH:CONTAINER-PATH or "
                              "NAME:CONTAINER-PATH before them" % quote(text))
    source, target = (None, parts[0]) if len(parts) == 1 else parts[:2]
    options = parse_volume_options(text, parts[2] if len(parts) == 3 else "")
    check_container_path(target, "volume %s" % quote(text))
    if source is None:
        return Volume(None, absolute_path(target), False, name="", anonymous=True)
    if source.startswith(("/", ".")):
        if "nocopy" in options:
            raise MiniDockerError("invalid volume %s: nocopy is for a volume, not a host path"
                                  % quote(text))
        return Volume(absolute_path(os.path.abspath(source)), absolute_path(target),
                      "ro" in options, idmap="idmap" in options)
    if "idmap" in options:
        raise MiniDockerError("invalid volume %s: idmap is for a host path, not a volume (a "
                              "volume made for a user namespace's container is its root's)"
                              % quote(text))
    if len(source) > 128 or not is_docker_name(source):
        raise MiniDockerError("invalid volume %s: %s is no volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+"
                              ", at most 128 characters); a host path starts with /, ./ or ../"
                              % (quote(text), quote(source)))
    return Volume(None, absolute_path(target), "ro" in options, name=source,
                  copy="nocopy" not in options)


def parse_volume_options(text, field):
    """-v's options, comma-separated; an empty field is none, as Docker's."""
    options = field.split(",") if field else []
    for option in options:
        if option in PROPAGATIONS_REFUSED:
            raise MiniDockerError("invalid volume %s: propagation %s is not supported: "
                                  "minidocker's mounts are all private" % (quote(text), option))
        if not any(option in group for group in VOLUME_OPTION_GROUPS):
            raise MiniDockerError("invalid volume %s: unknown option %s (ro, rw, z, Z, nocopy, "
                                  "idmap, consistent, cached, delegated, private, rprivate)"
                                  % (quote(text), quote(option)))
    for group in VOLUME_OPTION_GROUPS:
        if sum(options.count(option) for option in group) > 1:
            raise MiniDockerError("invalid volume %s: only one of %s may be given"
                                  % (quote(text), " and ".join(o for o in group if o in options)))
    return options


def check_container_path(path, what):
    if not path.startswith("/") or absolute_path(path) == "/":
        raise MiniDockerError("invalid %s: the container path must be absolute and not /"
                              % what)


# --mount's keys, as Docker's command line reads them (each alias to its
# key); the bare words are the flags that may stand without =VALUE.
MOUNT_KEYS = {"type": "type", "source": "source", "src": "source", "target": "target",
              "dst": "target", "destination": "target", "readonly": "readonly",
              "ro": "readonly", "bind-propagation": "bind-propagation",
              "volume-nocopy": "volume-nocopy", "tmpfs-size": "tmpfs-size",
              "tmpfs-mode": "tmpfs-mode", "consistency": "consistency"}
MOUNT_BARE_WORDS = ("readonly", "ro", "volume-nocopy")
MOUNT_TYPES = ("bind", "volume", "tmpfs")
BOOLEANS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


def parse_mount(text):
    """`--mount type=bind|volume|tmpfs,...` -> a Volume, or a tmpfs as
    parse_tmpfs gives one. Docker's rules: the type defaults to volume;
    a bind's source must exist (unlike -v's, which is made); bind-*,
    volume-* and tmpfs-* keys only with their own type."""
    fields = mount_fields(text)
    kind = fields.pop("type", "volume")
    if kind not in MOUNT_TYPES:
        raise MiniDockerError("invalid --mount %s: unknown type %s (bind, volume or tmpfs)"
                              % (quote(text), quote(kind)))
    for key in fields:
        if key.partition("-")[0] in ("bind", "volume", "tmpfs") and not key.startswith(kind):
            raise MiniDockerError("invalid --mount %s: %s goes only with type=%s"
                                  % (quote(text), key, key.partition("-")[0]))
    target, source = fields.get("target"), fields.get("source", "")
    if target is None:
        raise MiniDockerError("invalid --mount %s: target is required" % quote(text))
    check_container_path(target, "--mount %s" % quote(text))
    read_only = mount_boolean(text, fields, "readonly")
    if kind == "tmpfs":
        return tmpfs_of_mount(text, fields, absolute_path(target), read_only, source)
    if kind == "volume":
        if not source and read_only:
            raise MiniDockerError("invalid --mount %s: an anonymous volume cannot be read-only"
                                  % quote(text))
        return Volume(None, absolute_path(target), read_only,
                      name=check_name(source, "volume name") if source else "",
                      copy=not mount_boolean(text, fields, "volume-nocopy"),
                      anonymous=not source)
    return bind_of_mount(text, fields, absolute_path(target), read_only, source)


def mount_fields(text):
    """KEY=VALUE,... (a CSV record, as Docker reads it: a field may be
    quoted) -> {key: value}, aliases to their key, bare words to "true"."""
    if '"' in text:
        import csv
        parts = next(csv.reader([text]), [])
    else:
        parts = text.split(",")
    fields = {}
    for part in parts:
        word, eq, value = part.partition("=")
        key = MOUNT_KEYS.get(word.lower())
        if key is None:
            raise MiniDockerError("invalid --mount %s: unknown key %s" % (quote(text),
                                                                           quote(word)))
        if key == "consistency" and value not in ("default", "consistent", "cached",
                                                  "delegated"):
            raise MiniDockerError("invalid --mount %s: unknown consistency %s"
                                  % (quote(text), quote(value)))
        if not eq and word.lower() not in MOUNT_BARE_WORDS:
            raise MiniDockerError("invalid --mount %s: %s must be a KEY=VALUE pair"
                                  % (quote(text), quote(part)))
        fields[key] = value if eq else "true"
    return fields


def mount_boolean(text, fields, key):
    value = fields.get(key, "false")
    if value.lower() not in BOOLEANS:
        raise MiniDockerError("invalid --mount %s: invalid value for %s: %s"
                              % (quote(text), key, quote(value)))
    return BOOLEANS[value.lower()]


def bind_of_mount(text, fields, target, read_only, source):
    if fields.get("bind-propagation", "rprivate") not in ("private", "rprivate"):
        raise MiniDockerError("invalid --mount %s: bind-propagation %s is not supported: "
                              "minidocker's mounts are all private"
                              % (quote(text), quote(fields["bind-propagation"])))
    if not source:
        raise MiniDockerError("invalid --mount %s: a bind needs a source" % quote(text))
    if source == "." or source.startswith("./"):
        source = os.path.abspath(source)  # as Docker's command line, only ./
    if not source.startswith("/"):
        raise MiniDockerError("invalid --mount %s: the bind source must be an absolute path"
                              % quote(text))
    if not os.path.exists(source):
        raise MiniDockerError("invalid --mount %s: bind source path does not exist: %s"
                              % (quote(text), source))
    return Volume(absolute_path(source), target, read_only)


def tmpfs_of_mount(text, fields, target, read_only, source):
    import re
    if source:
        raise MiniDockerError("invalid --mount %s: a tmpfs takes no source" % quote(text))
    data = []
    if "tmpfs-size" in fields:
        data.append("size=%d" % parse_size(fields["tmpfs-size"], "--mount tmpfs-size"))
    if "tmpfs-mode" in fields:
        mode = fields["tmpfs-mode"]
        if not re.fullmatch("[0-7]{1,4}", mode):
            raise MiniDockerError("invalid --mount %s: invalid value for tmpfs-mode: %s "
                                  "(octal, such as 1777)" % (quote(text), quote(mode)))
        data.append("mode=%s" % mode)
    return (target, TMPFS_DEFAULT_FLAGS | (MS_RDONLY if read_only else 0), ",".join(data))


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
    if not path.startswith("/") or absolute_path(path) == "/":
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
    return (absolute_path(path), flags, ",".join(data))


def parse_env_file(path, flag="--env-file"):
    """Docker's --env-file (and --label-file): KEY=VAL lines of UTF-8; `#`
    comments and blank lines are skipped; a bare KEY of --env-file takes
    its value from minidocker's own environment."""
    try:
        lines = read_regular_file(path, FLAG_FILE_LIMIT, "%s %s" % (flag, path)) \
            .decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise MiniDockerError("%s %s: not UTF-8 text (byte 0x%02x at offset %d)"
                              % (flag, path, err.object[err.start], err.start))
    return [line for line in (l.strip() for l in lines) if line and not line.startswith("#")]


def expand_env(entries):
    """-e KEY=VAL is taken as is; -e KEY copies KEY from our environment, or
    is dropped when we have none (as docker does)."""
    result = []
    for entry in entries:
        key, eq, _ = entry.partition("=")
        if not key or " " in key or "\0" in entry:
            # execve(2) takes C strings: a NUL would cut the entry short.
            raise MiniDockerError("invalid environment variable %r" % entry)
        if eq:
            result.append(entry)
        elif key in os.environ:
            result.append("%s=%s" % (key, os.environ[key]))
    return result


ID_MAX = 0xFFFFFFFE  # uid_t is 32 bits; (uid_t)-1 is EINVAL to setuid(2), "unchanged" to setresuid


def check_user(text, flag):
    """-u USER[:GROUP] and --group-add: names are looked up in the image
    later; numbers must fit a uid_t."""
    for part in text.split(":") if flag == "--user" else [text]:
        if not part or (is_number(part) and int(part) > ID_MAX) or \
                any(c in part for c in ":\n\0") or not part.isprintable():
            raise MiniDockerError("invalid %s %r: expected a name or a number from 0 to %d"
                                  % (flag, text, ID_MAX))
    if flag == "--user" and text.count(":") > 1:
        raise MiniDockerError("invalid --user %r: expected USER[:GROUP]" % text)
    return text


# Two grammars of Docker's, as regular expressions, matched below without
# re (its import is 10 ms, and --name and -h are read at a start):
#   a container's or a volume's name   [a-zA-Z0-9][a-zA-Z0-9_.-]+
#   a host name: RFC 1123 labels (letters, digits, '-') joined by dots, as
#   a host name in /etc/hosts must be, '_' allowed too, as Docker does
#     [A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*
# sethostname(2) takes at most 64 bytes.
def is_docker_name(text):
    return len(text) >= 2 and text[0] in ASCII_ALNUM and not text.strip(ASCII_ALNUM + "_.-")


def check_name(name, what="--name"):
    if len(name) > 128 or not is_docker_name(name):
        raise MiniDockerError("invalid %s %s: a name is [a-zA-Z0-9][a-zA-Z0-9_.-]+, at "
                              "most 128 characters" % (what, quote(name)))
    return name


RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")


# The words Go's strconv.ParseBool takes, as Docker reads a boolean flag's
# value (--rm=false) and --security-opt no-new-privileges=VALUE.
BOOLEAN_WORDS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
                 "0": False, "f": False, "F": False, "FALSE": False, "false": False,
                 "False": False}


def parse_restart(text):
    """--restart no|on-failure[:MAX]|always|unless-stopped, as docker reads
    it: MAX (retries, default unlimited) only with on-failure."""
    policy, colon, count = text.partition(":")
    if policy not in RESTART_POLICIES:
        raise MiniDockerError("invalid --restart %s: expected no, on-failure[:MAX], always or "
                              "unless-stopped" % quote(text))
    if colon and policy != "on-failure":
        raise MiniDockerError("invalid --restart %s: a maximum retry count goes only with "
                              "on-failure" % quote(text))
    if colon and (not is_number(count) or int(count) > 1 << 31):
        raise MiniDockerError("invalid --restart %s: the maximum retry count must be a number "
                              "from 0" % quote(text))
    return policy, int(count) if colon else 0


def parse_labels(texts, files):
    """--label-file's lines, then -l KEY[=VALUE] on top (a later one wins),
    as docker reads them: a bare KEY has the empty value."""
    labels = {}
    entries = [line for path in files for line in parse_env_file(path, "--label-file")]
    for text in entries + texts:
        key, _, value = text.partition("=")
        if not key.strip():
            raise MiniDockerError("invalid label %s: empty name" % quote(text))
        labels[key] = value
    return labels


def parse_stop_options(signal_text, timeout):
    """--stop-signal SIGNAL (a name, with or without SIG, or a number) and
    --stop-timeout SECONDS (-1: wait for ever) -> (number or None,
    seconds or None)."""
    number = None
    if signal_text is not None:
        try:
            number = parse_signal(signal_text)
        except MiniDockerError:
            raise MiniDockerError("invalid --stop-signal %s: expected a signal name (SIGTERM, "
                                  "TERM) or number" % quote(signal_text)) from None
    if timeout is not None and (not is_integer(timeout, 9) or int(timeout) < -1):
        raise MiniDockerError("invalid --stop-timeout %s: expected whole seconds, or -1 to "
                              "wait for ever" % quote(timeout))
    return number, None if timeout is None else int(timeout)


def check_hostname(name, flag):
    labels = name.split(".")
    if len(name) > 64 or not all(label and "-" not in (label[0], label[-1])
                                 and not label.strip(ASCII_ALNUM + "_-") for label in labels):
        raise MiniDockerError("invalid %s %s: a host name is letters, digits, '-' and '_' "
                              "in dot-separated labels, at most 64 characters"
                              % (flag, quote(name)))
    return name


def build_spec(args, seccomp_cache=None):
    """The parsed command line of `run` -> a validated Spec. Makes nothing; it
    reads only what checking needs: ROOTFS, the env files, a seccomp
    profile, the host's online CPUs and memory nodes, --device nodes and
    the block devices of --device-*-bps, the capabilities we hold and the
    kernel's last one, the host name (--network host), and whether stdin
    and stdout are a terminal. With `seccomp_cache`, the default profile's
    filter is read from there, or compiled and kept there."""
    # --entrypoint's PROGRAM replaces the image's ENTRYPOINT, and drops its
    # CMD, as Docker's does; "" is none. A rootfs has no image config.
    image, config = None, {}
    if args.pull not in ("missing", "always", "never"):
        raise MiniDockerError("invalid --pull %s: expected missing, always or never"
                              % quote(args.pull))
    if not is_rootfs_argument(args.rootfs):
        image = image_for_run(args)
        config = image["config"]
    entrypoint = None if args.entrypoint is None else [args.entrypoint] if args.entrypoint \
        else []
    command = list(args.command) or (config.get("Cmd") or [] if entrypoint is None else [])
    if entrypoint is None and config.get("Entrypoint"):
        entrypoint = config["Entrypoint"]
    command = (entrypoint or []) + command
    if not command:
        raise MiniDockerError("run: no command given: usage: run [OPTIONS] ROOTFS|IMAGE "
                              "CMD [ARG...]")
    rootfs = image["top"] if image else os.path.abspath(args.rootfs)
    if image is None and not os.path.exists(rootfs):
        raise MiniDockerError("rootfs %s: no such directory" % args.rootfs)
    if not os.path.isdir(rootfs):
        raise MiniDockerError("rootfs %s: not a directory" % args.rootfs)
    if any(c in rootfs for c in ",:\\"):
        # overlayfs splits its option string on ',' and lowerdir on ':'.
        raise MiniDockerError("rootfs %s: overlayfs cannot take a path with ',', ':' or '\\'"
                              % rootfs)
    workdir = (config.get("WorkingDir") or "/") if args.workdir is None else args.workdir
    if not workdir.startswith("/"):
        raise MiniDockerError("workdir %r must be an absolute path" % workdir)
    env_entries = []
    for path in args.env_file:
        env_entries += parse_env_file(path)
    env_entries += args.env
    devices = [parse_device(text) for text in args.device]
    resources = parse_resources(args, os.cpu_count() or 1,
                                read_online("/sys/devices/system/cpu/online"),
                                read_online("/sys/devices/system/node/online") or {0})
    if not args.privileged:
        resources["devices"] = DEFAULT_DEVICE_RULES + [device.rule() for device in devices]
    caps = plan_capabilities(args.cap_add, args.cap_drop, args.privileged, held_capabilities())
    choice, no_new_privs = parse_security_opts(args.security_opt)
    seccomp, notes = plan_security(choice, caps, args.privileged, seccomp_cache)
    interactive, tty = args.interactive, args.tty
    restart = parse_restart(args.restart)
    if restart[0] != "no" and args.rm:
        raise MiniDockerError("--restart %s and --rm conflict: a container removed at its end "
                              "cannot be restarted" % args.restart)
    # A restart policy without -d: a monitor keeps the container as with
    # -d, and the run shows its log (run_attached_to_monitor).
    kept = args.detach or restart[0] != "no"
    if args.detach and (interactive or tty):
        raise MiniDockerError("run -d keeps no terminal and no stdin: -i and -t need a run "
                              "without -d")
    if kept and (interactive or tty):
        raise MiniDockerError("--restart %s keeps the container under a monitor, with no "
                              "terminal and no stdin: -i and -t need --restart no"
                              % args.restart)
    if not kept and interactive is None and tty is None and os.isatty(0) and \
            os.isatty(1):
        # The README's `run ./rootfs /bin/sh` on a terminal is a shell to talk to.
        interactive = tty = True
    log_driver, log_max_size, log_max_files = parse_log_options(args.log_driver, args.log_opt)
    if kept and not args.detach and log_driver == "none":
        raise MiniDockerError("--restart %s without -d shows the container's log: "
                              "--log-driver none keeps none" % args.restart)
    mounts = [parse_mount(text) for text in args.mount]
    volumes = [parse_volume(text) for text in args.volume] + \
        [m for m in mounts if isinstance(m, Volume)]
    targets = [v.target for v in volumes] + [m[0] for m in mounts if isinstance(m, tuple)]
    for target in targets:
        if targets.count(target) > 1:  # one would hide the other, as Docker says
            raise MiniDockerError("duplicate mount point: %s (-v and --mount)" % target)
    namespaces = parse_namespace_modes(args, caps)
    rootless = os.geteuid() != 0
    if image and rootless:
        raise MiniDockerError("an image's container for a user without root is not supported "
                              "yet: give a rootfs directory (mkrootfs)")
    # A user's container has no bridge (chapter 7, continued): none by default.
    if args.network is None:  # (an empty --network '' is refused by plan_network)
        args.network = "none" if rootless else "bridge"
    userns = rootless_userns(args, resources) if rootless else \
        parse_userns(args.userns, args.uidmap, args.gidmap)
    check_userns_conflicts(userns, args, namespaces)
    if userns and not rootless:
        check_rootfs_mapped(rootfs, userns)
    if rootless:  # limits in a delegated cgroup, or none (rootless_userns); no device cgroup
        resources = {key: value for key, value in resources.items() if key != "devices"}
    if args.hostname and namespaces["uts"] == "host":
        raise MiniDockerError("conflicting options: --hostname and --uts host (the host's "
                              "name is the container's)")
    stop_signal, stop_timeout = parse_stop_options(args.stop_signal or config.get("StopSignal"),
                                                   args.stop_timeout)
    return Spec(
        rootfs=rootfs, command=command, entrypoint=entrypoint, image=image and image["run"],
        hostname=check_hostname(args.hostname, "--hostname") if args.hostname else
        os.uname().nodename if args.network == "host" or namespaces["uts"] == "host" else None,
        ulimits=parse_ulimits(args.ulimit), oom_score_adj=parse_oom_score_adj(args.oom_score_adj),
        shm_size=parse_shm_size(args.shm_size, namespaces["ipc"]),
        sysctls=[parse_sysctl(text, namespaces, args.network) for text in args.sysctl],
        namespaces=namespaces, userns=userns,
        labels=dict(config.get("Labels") or {}, **parse_labels(args.label, args.label_file)),
        stop_signal=stop_signal, stop_timeout=stop_timeout,
        env=merge_env(config.get("Env") or [], expand_env(env_entries)),
        workdir=absolute_path(workdir),
        user=(args.user or config.get("User")) and check_user(args.user or config["User"],
                                                              "--user"),
        group_add=[check_user(g, "--group-add") for g in args.group_add],
        caps=caps, last_cap=last_cap(), seccomp=seccomp, notes=notes,
        no_new_privs=no_new_privs and not args.privileged,  # as Docker: never privileged
        privileged=args.privileged, read_only=args.read_only,
        volumes=volumes, devices=devices,
        tmpfs=[parse_tmpfs(t) for t in args.tmpfs] + [m for m in mounts if isinstance(m, tuple)],
        tty=bool(tty), interactive=bool(interactive), init=args.init, restart=restart,
        remove=args.rm,
        debug=args.debug,
        detach=kept, name=check_name(args.name) if args.name is not None else None,
        log_driver=log_driver, log_max_size=log_max_size, log_max_files=log_max_files,
        log_options=dict(option.split("=", 1) for option in args.log_opt),
        resources=resources,
        cgroup_parent=check_cgroup_parent(args.cgroup_parent),
        network_plan=plan_network(args.network, args.subnet, args.bridge, args.publish, args.dns,
                             args.add_host, args.expose + sorted(config.get("ExposedPorts") or {}),
                             args.publish_all))


def is_rootfs_argument(text):
    """ROOTFS or IMAGE: an existing directory, or anything that starts with
    '/' or '.', is a rootfs; anything else is an image reference. A bare
    name may mean an image (`alpine`) where another user made a directory
    of that name (in /tmp, or in their home under sudo): run as the rootfs,
    their tree would be the container's root, its /bin/sh run as root with
    the caller's volumes, and changed under the run at will (chapter 6
    trusts a rootfs not to be); their symlink would make any directory of
    the host the rootfs, / included. So a bare name is taken as a rootfs
    only when it, and the directory it leads to, are the caller's own and
    writable by no one else."""
    if text.startswith(("/", ".")):
        return True
    try:
        found = [os.lstat(text), os.stat(text)]
    except OSError:  # ENOENT, ENOTDIR, ELOOP: no directory by that name here
        return False
    if not stat.S_ISDIR(found[1].st_mode):
        return False
    for st in found:
        if st.st_uid != os.geteuid() or stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022:
            raise MiniDockerError(
                "%s is a directory here that %s: a rootfs named without '/' or '.' must be "
                "your own and writable by no one else (give ./%s to run it anyway; to run "
                "the image, run from another directory)" % (
                    text, "uid %d owns" % st.st_uid if st.st_uid != os.geteuid() else
                    "others can write to", text))
    return True


def merge_env(image_env, entries):
    """The image's ENV, then -e and --env-file: a key given again takes its
    place, as Docker's does."""
    merged = {}
    for entry in list(image_env) + entries:
        key = entry.partition("=")[0]
        merged.pop(key, None)
        merged[key] = entry
    return list(merged.values())


# === 3. (continued) config.json: an OCI bundle into the same spec ===
# The OCI runtime spec (opencontainers/runtime-spec: config.md and
# config-linux.md) describes a container as a bundle: a directory holding
# config.json and the root filesystem it names. It is `run`'s spec in
# another shape, and oci_spec turns it into the same Spec, which the
# chapters that follow carry out alike. What only a bundle has rides in
# the same object:
#   - the root is the bundle's own directory, bound onto itself, not an
#     overlay (spec.bundle names the bundle): the container writes into
#     it, as the runtime spec says;
#   - the mounts are the config's list, in its order (spec.mount_plan),
#     in place of the plan `run` makes (plan_mounts);
#   - the five capability sets come one by one (spec.cap_sets), the user
#     as numbers with exactly the groups listed (spec.identity), the
#     environment exactly as given;
#   - a namespace is new (listed), the runtime's own (not listed), or
#     joined (listed with a path: spec.namespaces[kind] is that path);
#   - hooks run at the lifecycle's points (chapter 12, continued).
# A field this runtime cannot carry out is refused by its name, never
# skipped; a field it does not know is ignored, as runc ignores it.

OCI_VERSION = "1.0.2"
# config-linux.md's namespace types -> /proc/PID/ns names, and our spec's
# keys ("net" and "mnt" have no key there: network_plan and the always new
# mount namespace stand for them).
OCI_NAMESPACES = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc",
                  "uts": "uts", "cgroup": "cgroup", "user": "user", "time": "time"}

# mount(8)'s words, as runc reads a mount's "options": word -> (flags
# cleared, flags set). The propagation words are applied by a second call;
# any other word goes to the filesystem as data (mode=755, size=64k).
MOUNT_OPTIONS = {
    "defaults": (0, 0), "ro": (0, MS_RDONLY), "rw": (MS_RDONLY, 0),
    "suid": (MS_NOSUID, 0), "nosuid": (0, MS_NOSUID), "dev": (MS_NODEV, 0),
    "nodev": (0, MS_NODEV), "exec": (MS_NOEXEC, 0), "noexec": (0, MS_NOEXEC),
    "sync": (0, MS_SYNCHRONOUS), "async": (MS_SYNCHRONOUS, 0), "dirsync": (0, MS_DIRSYNC),
    "remount": (0, MS_REMOUNT), "mand": (0, MS_MANDLOCK), "nomand": (MS_MANDLOCK, 0),
    "atime": (MS_NOATIME, 0), "noatime": (0, MS_NOATIME), "diratime": (MS_NODIRATIME, 0),
    "nodiratime": (0, MS_NODIRATIME), "bind": (0, MS_BIND), "rbind": (0, MS_BIND | MS_REC),
    "relatime": (0, MS_RELATIME), "norelatime": (MS_RELATIME, 0),
    "strictatime": (0, MS_STRICTATIME), "nostrictatime": (MS_STRICTATIME, 0),
    "nosymfollow": (0, MS_NOSYMFOLLOW), "symfollow": (MS_NOSYMFOLLOW, 0),
}
PROPAGATION_OPTIONS = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC, "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC, "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC,
}
HOOK_POINTS = ("prestart", "createRuntime", "createContainer", "startContainer",
               "poststart", "poststop")


def config_error(field, problem):
    return MiniDockerError("config.json: %s: %s" % (field, problem))


def config_field(parent, key, kind, where, default=None):
    """parent[key], checked to be of `kind` (a type or a tuple of them);
    `default` when it is absent or null."""
    value = parent.get(key) if isinstance(parent, dict) else None
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise config_error(where + key, "expected %s, not %s" % (
            {"dict": "an object", "list": "a list", "str": "a string", "int": "an integer",
             "bool": "true or false"}.get(names, names), to_json(value)[:60]))
    return value


def load_config(bundle):
    """BUNDLE/config.json -> the parsed object, with one line for what is
    wrong with it."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as handle:
            config = from_json(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise MiniDockerError("bundle %s: no config.json in it" % bundle)
    except OSError as err:
        raise MiniDockerError("bundle %s: config.json: %s" % (bundle, err.strerror))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError alike
        raise MiniDockerError("bundle %s: config.json is not JSON: %s" % (bundle, err))
    if not isinstance(config, dict):
        raise config_error("(top)", "expected an object")
    version = config_field(config, "ociVersion", str, "")
    major, _, rest = (version or "").partition(".")
    minor, _, patch = rest.partition(".")
    if major != "1" or not is_number(minor) or not is_number(patch[:1]):  # 1.N.N, then anything
        raise config_error("ociVersion", "expected a 1.x version, not %s" % to_json(version))
    return config


def oci_spec(config, bundle):
    """A config.json (parsed) of the bundle at `bundle` -> a validated
    Spec, as build_spec makes one from `run`'s flags."""
    process = config_field(config, "process", dict, "", None)
    if process is None:
        raise config_error("process", "missing: a container needs a process to run")
    linux = config_field(config, "linux", dict, "", {})
    spec = Spec(bundle=bundle, interactive=True, tied=False,
                annotations=config_field(config, "annotations", dict, "", {}))
    spec.rootfs = oci_root(config, bundle, spec)
    spec.namespaces, spec.network_plan = oci_namespaces(linux)
    spec.userns = oci_id_maps(linux, spec.namespaces.pop("user") == "private", spec.namespaces)
    oci_process(process, spec)
    for field in ("hostname", "domainname"):
        name = config_field(config, field, str, "") or None
        if name is not None and spec.namespaces["uts"] != "private":
            raise config_error(field, "needs a new uts namespace of its own")
        setattr(spec, field, name and check_hostname(name, field))
    for key, value in sorted(config_field(linux, "sysctl", dict, "linux.", {}).items()):
        spec.sysctls.append(parse_sysctl("%s=%s" % (key, value), spec.namespaces,
                                         spec.network_plan["mode"], "linux.sysctl"))
    spec.mount_plan, spec.devices = oci_mounts(config, linux, bundle, spec.userns is not None)
    resources = config_field(linux, "resources", dict, "linux.", {})
    spec.resources = oci_resources(resources)
    rules = oci_device_rules(config_field(resources, "devices", list, "linux.resources.", []),
                             spec.devices)
    if rules is not None:
        spec.resources["devices"] = rules
    # "" is no path, as runc reads it
    spec.cgroup_path = config_field(linux, "cgroupsPath", str, "linux.") or None
    if spec.cgroup_path is not None and (".." in spec.cgroup_path.split("/") or
                                         ":" in spec.cgroup_path):
        raise config_error("linux.cgroupsPath", "%s is not a cgroupfs path (a systemd "
                           "slice:prefix:name needs --systemd-cgroup, which minidocker "
                           "does not drive)" % to_json(spec.cgroup_path))
    spec.propagation = PROPAGATION_OPTIONS.get(
        config_field(linux, "rootfsPropagation", str, "linux.", "rslave"))
    if spec.propagation is None:
        raise config_error("linux.rootfsPropagation", "expected one of %s"
                           % ", ".join(sorted(PROPAGATION_OPTIONS)))
    spec.seccomp, spec.notes = oci_seccomp(linux, spec)
    spec.personality = oci_personality(linux)
    spec.hooks = oci_hooks(config)
    for field in ("intelRdt", "timeOffsets", "mountLabel"):
        if linux.get(field):
            raise config_error("linux." + field, "not supported by minidocker")
    return spec


def oci_root(config, bundle, spec):
    """root.path (relative to the bundle) and root.readonly."""
    root = config_field(config, "root", dict, "", None)
    if root is None or not config_field(root, "path", str, "root."):
        raise config_error("root.path", "missing")
    path = os.path.normpath(os.path.join(bundle, root["path"]))
    if not os.path.isdir(path):
        raise config_error("root.path", "%s is not a directory" % path)
    spec.read_only = config_field(root, "readonly", bool, "root.", False)
    return path


def oci_namespaces(linux):
    """linux.namespaces -> (spec.namespaces, spec.network_plan). A kind
    listed without a path is new, with one it is joined, and one not listed
    is the runtime's own."""
    modes = {"pid": "host", "ipc": "host", "uts": "host", "cgroup": "host", "net": "host",
             "user": "host"}
    listed = set()
    for entry in config_field(linux, "namespaces", list, "linux.", []):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind not in OCI_NAMESPACES:
            raise config_error("linux.namespaces", "unknown namespace type %s"
                               % to_json(kind))
        if kind in listed:
            raise config_error("linux.namespaces", "%s is listed twice" % kind)
        listed.add(kind)
        path = config_field(entry, "path", str, "linux.namespaces[%s]." % kind)
        if kind == "time" or kind == "user" and path:
            raise config_error("linux.namespaces", "%s is not supported by minidocker" % (
                "joining a user namespace (path %s)" % path if path else "a time namespace"))
        if kind == "mount":
            if path:
                raise config_error("linux.namespaces", "joining a mount namespace (path "
                                   "%s) is not supported: the root is built in a new one" % path)
            continue
        if path is not None and not os.path.isabs(path):
            raise config_error("linux.namespaces", "%s path %s is not absolute" % (kind, path))
        modes[OCI_NAMESPACES[kind]] = path or "private"
    if "mount" not in listed:
        raise config_error("linux.namespaces", "a mount namespace is needed: minidocker "
                           "builds the root in one of its own")
    network = modes.pop("net")
    plan = plan_network("none" if network == "private" else "host", None, None, [], [], [])
    plan["join"] = network if network not in ("host", "private") else None
    return modes, plan


def oci_id_maps(linux, user, namespaces):
    """linux.uidMappings and gidMappings -> spec.userns (chapter 7,
    continued), for a new user namespace and only for one, as runc reads
    them. The namespaces it makes are its own: the pid namespace must be
    new, and a cgroup namespace is new or the runtime's."""
    maps = {}
    for kind, field in (("uid", "uidMappings"), ("gid", "gidMappings")):
        maps[kind] = []
        for index, entry in enumerate(config_field(linux, field, list, "linux.", [])):
            where = "linux.%s[%d]" % (field, index)
            values = [config_field(entry, key, int, where + ".") if isinstance(entry, dict)
                      else None for key in ("containerID", "hostID", "size")]
            if None in values or min(values) < 0 or values[2] == 0:
                raise config_error(where, "expected containerID, hostID and size, numbers "
                                   "(size at least 1)")
            maps[kind].append(tuple(values))
        if maps[kind] and not user:
            raise config_error("linux." + field, "needs a new user namespace (linux.namespaces "
                               "lists none)")
    if not user:
        return None
    for kind in ("uid", "gid"):
        if not maps[kind]:
            raise config_error("linux.%sMappings" % kind, "missing: a new user namespace needs "
                               "both uidMappings and gidMappings")
        check_id_map(maps[kind], "linux.%sMappings" % kind)
    if namespaces["pid"] != "private" or namespaces["cgroup"] not in ("private", "host"):
        raise config_error("linux.namespaces", "a new user namespace needs a new pid namespace, "
                           "and a cgroup namespace new or the runtime's")
    return maps


def oci_process(process, spec):
    """process -> the command, environment, user, capabilities, rlimits and
    the rest of what stage 2 applies (chapter 11)."""
    spec.command = config_field(process, "args", list, "process.", [])
    if not spec.command or not all(isinstance(a, str) for a in spec.command):
        raise config_error("process.args", "expected a list of strings, the first the program")
    spec.env = config_field(process, "env", list, "process.", [])
    if not all(isinstance(e, str) and "=" in e for e in spec.env):
        raise config_error("process.env", "expected a list of KEY=VALUE strings")
    spec.workdir = config_field(process, "cwd", str, "process.", "")
    if not spec.workdir.startswith("/"):
        raise config_error("process.cwd", "expected an absolute path, not %s"
                           % to_json(spec.workdir))
    spec.tty = config_field(process, "terminal", bool, "process.", False)
    size = config_field(process, "consoleSize", dict, "process.")
    spec.console_size = (size.get("height", 0), size.get("width", 0)) if size else None
    user = config_field(process, "user", dict, "process.", {})
    ids = [config_field(user, key, int, "process.user.", 0) for key in ("uid", "gid")]
    groups = config_field(user, "additionalGids", list, "process.user.", [])
    if not all(type(g) is int and 0 <= g <= ID_MAX for g in groups + ids):
        raise config_error("process.user", "uid, gid and additionalGids are numbers from 0 "
                           "to %d" % ID_MAX)
    spec.identity = (ids[0], ids[1], groups)
    spec.umask = config_field(user, "umask", int, "process.user.")
    spec.cap_sets = oci_capabilities(config_field(process, "capabilities", dict, "process.", {}))
    spec.caps = spec.cap_sets["bounding"]
    spec.ulimits = []
    for limit in config_field(process, "rlimits", list, "process.", []):
        kind = limit.get("type", "") if isinstance(limit, dict) else ""
        name = kind[len("RLIMIT_"):].lower()
        if not kind.startswith("RLIMIT_") or name not in RLIMITS:
            raise config_error("process.rlimits", "unknown type %s" % to_json(kind))
        soft, hard = (config_field(limit, k, int, "process.rlimits[%s]." % kind, 0)
                      for k in ("soft", "hard"))
        spec.ulimits.append((name, -1 if soft >= RLIM_INFINITY else soft,
                             -1 if hard >= RLIM_INFINITY else hard))
    spec.no_new_privs = config_field(process, "noNewPrivileges", bool, "process.", False)
    spec.oom_score_adj = config_field(process, "oomScoreAdj", int, "process.")
    if spec.oom_score_adj is not None and not -1000 <= spec.oom_score_adj <= 1000:
        raise config_error("process.oomScoreAdj", "the range is -1000 to 1000")
    if process.get("apparmorProfile") and not host_has_apparmor():
        raise config_error("process.apparmorProfile", "AppArmor is not enabled on this host")
    spec.apparmor = process.get("apparmorProfile") or None
    if process.get("selinuxLabel"):
        raise config_error("process.selinuxLabel", "SELinux labels are not applied by "
                           "minidocker")
    for field in ("scheduler", "ioPriority", "execCPUAffinity"):
        if process.get(field):
            raise config_error("process." + field, "not supported by minidocker")


def host_has_apparmor():
    with suppress(OSError):
        return read_text("/sys/module/apparmor/parameters/enabled").strip() == "Y"
    return False


CAP_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def oci_capabilities(capabilities):
    """process.capabilities -> {set: {numbers}}; a set not given is empty."""
    sets = {}
    for name in CAP_SETS:
        names = config_field(capabilities, name, list, "process.capabilities.", [])
        try:
            sets[name] = {cap_number(n) for n in names if isinstance(n, str)}
        except MiniDockerError as err:
            raise config_error("process.capabilities." + name, str(err))
        if len(sets[name]) != len(set(names)):
            raise config_error("process.capabilities." + name, "expected capability names")
    return sets


def parse_mount_options(options, where):
    """A mount's options -> (flags, propagation flags, data or None)."""
    flags, propagation, data = 0, 0, []
    for option in options:
        if not isinstance(option, str):
            raise config_error(where, "an option must be a string, not %s" % to_json(option))
        if option in MOUNT_OPTIONS:
            clear, add = MOUNT_OPTIONS[option]
            flags = flags & ~clear | add
        elif option in PROPAGATION_OPTIONS:
            propagation |= PROPAGATION_OPTIONS[option]
        elif option in ("idmap", "ridmap") or option.startswith("r") and \
                option[1:] in MOUNT_OPTIONS and option not in ("rw", "rbind", "relatime"):
            raise config_error(where, "option %s is not supported by minidocker" % option)
        elif option == "tmpcopyup":
            raise config_error(where, "option tmpcopyup is not supported by minidocker")
        else:
            data.append(option)
    return flags, propagation, ",".join(data) or None


def oci_mounts(config, linux, bundle, userns=False):
    """mounts, linux.devices, maskedPaths and readonlyPaths -> (the mount
    plan, [Device]). A tmpfs at /dev gets the standard nodes and links
    right after it (populate_dev), as runc makes them; a cgroup mount is
    the container's view of its cgroups (chapter 8)."""
    plan = []
    for index, entry in enumerate(config_field(config, "mounts", list, "", [])):
        where = "mounts[%d]" % index
        if not isinstance(entry, dict):
            raise config_error(where, "expected an object")
        target = config_field(entry, "destination", str, where + ".", "")
        if not target.startswith("/"):
            raise config_error(where + ".destination", "expected an absolute path, not %s"
                               % to_json(target))
        target = absolute_path(target)
        fstype = config_field(entry, "type", str, where + ".", "")
        source = config_field(entry, "source", str, where + ".", "")
        flags, propagation, data = parse_mount_options(
            config_field(entry, "options", list, where + ".", []), where + ".options")
        if fstype == "bind" or flags & MS_BIND:
            source = os.path.join(bundle, source)
            if not os.path.exists(source):
                raise config_error(where + ".source", "%s does not exist" % source)
            plan.append(Mount("bind", target, source, flags=flags | MS_BIND | propagation))
        elif fstype == "cgroup" or fstype == "cgroup2":
            if target != CGROUP_VIEW:
                raise config_error(where, "a cgroup mount is made at %s only" % CGROUP_VIEW)
            plan.append(Mount("cgroup", target, flags=flags))
        elif not fstype:
            raise config_error(where + ".type", "missing")
        else:
            plan.append(Mount("fs", target, source or fstype, fstype, flags | propagation, data,
                              kernel_fs=fstype in ("proc", "sysfs")))
            if target == "/dev" and fstype == "tmpfs":
                plan.append(Mount("devices", "/dev", data="bind" if userns else None))
    devices = [oci_device(entry, index) for index, entry in
               enumerate(config_field(linux, "devices", list, "linux.", []))]
    plan += [Mount("mask", absolute_path(p)) for p in
             config_field(linux, "maskedPaths", list, "linux.", []) if isinstance(p, str)]
    plan += [Mount("readonly", absolute_path(p)) for p in
             config_field(linux, "readonlyPaths", list, "linux.", []) if isinstance(p, str)]
    return plan, devices


OCI_DEVICE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def oci_device(entry, index):
    """One of linux.devices -> a Device made in /dev as --device's are."""
    where = "linux.devices[%d]." % index
    path = config_field(entry, "path", str, where, "")
    kind = config_field(entry, "type", str, where, "")
    # Checked in its plain form: "/dev/../etc/x" is no path in /dev, and in
    # a user namespace the host's file there would be bound (make_devices).
    if not absolute_path(path).startswith("/dev/") or kind not in OCI_DEVICE_TYPES:
        raise config_error(where[:-1], "expected a path in /dev and a type c, u, b or p")
    numbers = [config_field(entry, key, int, where, 0) for key in ("major", "minor")]
    mode = config_field(entry, "fileMode", int, where, 0o666) & 0o7777
    return Device(absolute_path(path), OCI_DEVICE_TYPES[kind] | mode,
                  os.makedev(*numbers) if kind != "p" else 0,
                  config_field(entry, "uid", int, where, 0),
                  config_field(entry, "gid", int, where, 0), "rwm")


def oci_device_rules(rules, devices):
    """linux.resources.devices -> the allow list of chapter 8, or None for
    no device cgroup. runc's model is an ordered list; the shape every
    caller writes, "deny all, then allow these", is ours: the rules after
    the first deny-all are allowed, runc's standard nodes too (as runc
    appends them), and the linux.devices. A lone "allow all" is no device
    cgroup (a privileged container). Any other deny is refused."""
    allowed = []
    for index, rule in enumerate(rules):
        where = "linux.resources.devices[%d]" % index
        if not isinstance(rule, dict) or not isinstance(rule.get("allow"), bool):
            raise config_error(where, "expected an object with allow true or false")
        kind = rule.get("type") or "a"
        major, minor = rule.get("major"), rule.get("minor")
        access = rule.get("access") or "rwm"
        if kind not in ("a", "b", "c") or not isinstance(access, str) or access.strip("rwm") or \
                any(n is not None and (type(n) is not int or n < -1) for n in (major, minor)):
            raise config_error(where, "expected type a, b or c, numbers and access of r, w, m")
        whole = kind == "a" and major in (None, -1) and minor in (None, -1)
        if not rule["allow"]:
            if not (whole and set(access) == set("rwm") and not allowed):
                raise config_error(where, "a deny rule other than a first deny-all is not "
                                   "supported by minidocker")
            continue
        if whole and set(access) == set("rwm"):
            return None
        for letter in (("c", "b") if kind == "a" else (kind,)):
            allowed.append((letter, None if major in (None, -1) else major,
                            None if minor in (None, -1) else minor, access))
    return DEFAULT_DEVICE_RULES + allowed + [d.rule() for d in devices
                                             if not stat.S_ISFIFO(d.mode)]


def oci_resources(resources):
    """linux.resources -> the resource dict of chapter 8 (the device rules
    apart). The values are written as the runtime spec gives them; the
    kernel refuses what is out of range, naming the file."""
    res, where = {}, "linux.resources."
    memory = config_field(resources, "memory", dict, where, {})
    for key, name in (("limit", "memory"), ("reservation", "memory_reservation"),
                      ("swap", "memory_swap"), ("swappiness", "memory_swappiness")):
        value = config_field(memory, key, int, where + "memory.")
        if value is not None and not (value == -1 and key != "swappiness"):
            res[name] = value
    if "memory_swap" in res and "memory" not in res:
        raise config_error(where + "memory.swap", "needs memory.limit (it is memory plus swap)")
    if config_field(memory, "disableOOMKiller", bool, where + "memory.", False):
        res["oom_kill_disable"] = True
    cpu = config_field(resources, "cpu", dict, where, {})
    for key, name in (("shares", "cpu_shares"), ("quota", "cpu_quota"),
                      ("period", "cpu_period")):
        value = config_field(cpu, key, int, where + "cpu.")
        if value:
            res[name] = value
    for key, name in (("cpus", "cpuset_cpus"), ("mems", "cpuset_mems")):
        if config_field(cpu, key, str, where + "cpu."):
            res[name] = cpu[key]
    pids = config_field(config_field(resources, "pids", dict, where, {}), "limit", int,
                        where + "pids.")
    if pids is not None:
        res["pids"] = pids if pids > 0 else None
    block = config_field(resources, "blockIO", dict, where, {})
    if config_field(block, "weight", int, where + "blockIO."):
        res["io_weight"] = block["weight"]
    for key, name in (("throttleReadBpsDevice", "io_read"),
                      ("throttleWriteBpsDevice", "io_write")):
        rates = config_field(block, key, list, where + "blockIO.", [])
        if rates:
            res[name] = [("%d:%d" % (r["major"], r["minor"]), r["rate"]) for r in rates]
    unified = config_field(resources, "unified", dict, where, {})
    if unified:
        res["unified"] = {k: str(v) for k, v in unified.items()}
    for field in ("hugepageLimits", "network", "rdma"):
        if resources.get(field):
            raise config_error(where + field, "not supported by minidocker")
    for key in ("realtimeRuntime", "realtimePeriod", "idle"):
        if cpu.get(key):
            raise config_error(where + "cpu." + key, "not supported by minidocker")
    for key in ("weightDevice", "throttleReadIOPSDevice", "throttleWriteIOPSDevice",
                "leafWeight"):
        if block.get(key):
            raise config_error(where + "blockIO." + key, "not supported by minidocker")
    return res


def oci_seccomp(linux, spec):
    """linux.seccomp, compiled by chapter 10's compiler (its fields are a
    Docker profile's less includes and excludes)."""
    profile = config_field(linux, "seccomp", dict, "linux.")
    if profile is None:
        return None, ["seccomp: none in config.json"]
    if profile.get("listenerPath"):
        raise config_error("linux.seccomp.listenerPath", "a seccomp notification listener "
                           "is not supported by minidocker")
    flags = 0
    for name in config_field(profile, "flags", list, "linux.seccomp.", []):
        if name not in SECCOMP_FILTER_FLAGS:
            raise config_error("linux.seccomp.flags", "unknown flag %s" % to_json(name))
        flags |= SECCOMP_FILTER_FLAGS[name]
    spec.seccomp_flags = flags
    return plan_seccomp(profile, spec.caps, "config.json linux.seccomp")


# <linux/personality.h>: PER_LINUX and PER_LINUX32, the domains runc knows.
PERSONALITIES = {"LINUX": 0x0000, "LINUX32": 0x0008}


def oci_personality(linux):
    personality = config_field(linux, "personality", dict, "linux.")
    if personality is None:
        return None
    domain = personality.get("domain")
    if domain not in PERSONALITIES or personality.get("flags"):
        raise config_error("linux.personality", "expected domain LINUX or LINUX32, no flags")
    return PERSONALITIES[domain]


def oci_hooks(config):
    """hooks -> {point: [{"path", "args", "env", "timeout"}]}, checked."""
    hooks = config_field(config, "hooks", dict, "", {})
    checked = {}
    for point, entries in hooks.items():
        if point not in HOOK_POINTS:
            raise config_error("hooks", "unknown hook point %s" % to_json(point))
        for index, hook in enumerate(entries if isinstance(entries, list) else [None]):
            where = "hooks.%s[%d]" % (point, index)
            if not isinstance(hook, dict) or not os.path.isabs(hook.get("path") or ""):
                raise config_error(where, "expected an object with an absolute path")
            args = config_field(hook, "args", list, where + ".", [hook["path"]])
            env = config_field(hook, "env", list, where + ".", [])
            timeout = config_field(hook, "timeout", int, where + ".")
            if timeout is not None and timeout <= 0:
                raise config_error(where + ".timeout", "must be positive")
            checked.setdefault(point, []).append(
                {"path": hook["path"], "args": args, "env": env, "timeout": timeout})
    return checked


# === 4. State: where containers live on disk ===
# Two trees, as in Docker and runc:
#   /var/lib/minidocker/containers/<id>/   what outlives a reboot
#       upper/  work/                      the overlay's writable layer
#       merged/                            where the root is assembled
#       hosts hostname resolv.conf         bound over the image's /etc files
#       container.log                      a detached container's output (run -d;
#                                          json.log with --log-driver json-file)
#   /var/lib/minidocker/volumes/<name>/    a volume: _data/ is what is mounted
#   /run/minidocker/containers/<id>.json   what a running container is (tmpfs),
#                                          with its network lease (chapter 9)
#   /run/minidocker/network.lock           taken while leases change
#   /run/minidocker/reclaim.lock           taken while dead containers go
#   /run/minidocker/names.lock             taken while a name is checked and taken, and
#                                          while a record is written or removed
#   /run/minidocker/volumes.lock           taken while a volume is made or removed
#   /run/minidocker/userns.lock            taken while --userns auto's ids are chosen and
#                                          recorded (chapter 7, continued)
#   /var/lib/minidocker/userns/<hash>/     ROOTFS copied with its owners shifted by a
#                                          map, where it cannot be idmapped
#   /run/minidocker/seccomp/               the default filter, compiled (chapter 10)
#   /run/minidocker/bytecode/              this file, compiled, for monitors' ends (chapter 11)
# MINIDOCKER_ROOT=DIR moves both to DIR/lib and DIR/run, so that tests and the
# cgroup-v2 VM keep them on a filesystem of their choice. A user's (rootless)
# trees are its own: ~/.local/share/minidocker and $XDG_RUNTIME_DIR/minidocker.


class Paths:
    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        base = environ.get("MINIDOCKER_ROOT")
        if base:
            self.lib, self.run = os.path.join(base, "lib"), os.path.join(base, "run")
        elif os.geteuid() == 0:
            self.lib, self.run = "/var/lib/minidocker", "/run/minidocker"
        else:  # a user's (rootless): in the user's own directories, as podman's
            home = environ.get("HOME") or os.path.expanduser("~")
            self.lib = os.path.join(environ.get("XDG_DATA_HOME") or
                                    os.path.join(home, ".local", "share"), "minidocker")
            runtime = environ.get("XDG_RUNTIME_DIR")
            self.run = os.path.join(runtime, "minidocker") if runtime else \
                "/tmp/minidocker-run-%d" % os.geteuid()  # checked to be ours (make_state_dirs)
        self.containers = os.path.join(self.lib, "containers")
        self.volumes = os.path.join(self.lib, "volumes")
        self.records = os.path.join(self.run, "containers")
        self.seccomp_cache = os.path.join(self.run, "seccomp")  # chapter 10
        self.bytecode = os.path.join(self.run, "bytecode")      # chapter 11
        self.shifted = os.path.join(self.lib, "userns")         # chapter 7, continued
        self.images = os.path.join(self.lib, "images")          # chapter 5, continued

    def layer(self, cid):
        return os.path.join(self.containers, cid)

    def record(self, cid):
        return os.path.join(self.records, cid + ".json")


def make_state_dirs(paths):
    """The state trees are their owner's alone (0700): root's, as Docker's
    are, or a rootless user's. A container's layer holds whatever the
    container wrote, setuid-root programs included, and a local user who
    could reach upper/ on the host could run them as root (Docker's
    CVE-2021-41091). A tree already there must be this user's own
    directory: /tmp/minidocker-run-UID may have been made first by another
    user. Trees left by an older minidocker with wider modes are narrowed."""
    for path in (paths.lib, paths.containers, paths.run, paths.records):
        try:
            os.makedirs(path, 0o700)
        except FileExistsError:
            st = os.lstat(path)
            if st.st_uid != os.geteuid() or not stat.S_ISDIR(st.st_mode):
                # (/tmp/minidocker-run-UID made first by another user)
                raise MiniDockerError("state directory %s is not a directory of this user's "
                                      "own: refused" % path)
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(path, 0o700)


# process_start_time(pid), which tells a live pid from a reused one, is
# defined with runc's lean verbs (chapter 12, continued), which run it alone.


# Records, leases and caches are JSON, read and written at every start.
# json.dumps and json.loads do their work in _json, json's C part, and
# json's import (12 ms, re's for the most part) buys only the Python
# around it: so these two call _json themselves, with json's defaults.
# json itself is imported only where a caller asks for more (indent,
# sort_keys), and to word a syntax error (from_json).

JSON_WORDS = {None: "null", True: "true", False: "false"}
JSON_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def to_json(value, indent=None, depth=0):
    """json.dumps(value, indent=indent), to the byte: ", " and ": " between
    items (with an indent, each item on a line of its own), every character
    past ASCII as an escape (and so a file name's undecodable bytes, as
    surrogates, too). TypeError for what JSON has no form of."""
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    if value is None or value is True or value is False:
        return JSON_WORDS[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        text = float.__repr__(value)
        return JSON_FLOATS.get(text, text)
    if isinstance(value, (list, tuple)):
        ends, items = "[]", [to_json(item, indent, depth + 1) for item in value]
    elif isinstance(value, dict):
        ends, items = "{}", ["%s: %s" % (to_json(key if isinstance(key, str) else json_key(key)),
                                         to_json(item, indent, depth + 1))
                             for key, item in value.items()]
    else:
            raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)
    if indent is None or not items:
        return ends[0] + ", ".join(items) + ends[1]
    step = " " * indent if isinstance(indent, int) else indent
    inner, outer = "\n" + step * (depth + 1), "\n" + step * depth
    return ends[0] + inner + ("," + inner).join(items) + outer + ends[1]


def json_key(key):
    """A key that is no string, as json.dumps writes it: 1, 2.5, true, null."""
    if key is None or isinstance(key, (int, float)):
        return to_json(key)
    raise TypeError("keys must be str, int, float, bool or None, not %s" % type(key).__name__)


class JsonDefaults:
    """What _json's scanner reads of a json.JSONDecoder: json.loads's defaults."""
    strict = True  # a control character inside a string is an error
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__


JSON_SCAN = _json.make_scanner(JsonDefaults())
JSON_SPACE = " \t\n\r"


def from_json(text):
    """json.loads(text), for a str or UTF-8 bytes: the value, or ValueError
    (json's JSONDecodeError), or RecursionError for nesting past the
    interpreter's limit. The scanner reports a syntax error with json's own
    exception class, which it finds only once json is imported (before
    that, a SystemError or, for no value at all, StopIteration): so a text
    it does not take whole is read again by json, for json's error."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")
    start = len(text) - len(text.lstrip(JSON_SPACE))
    try:
        value, end = JSON_SCAN(text, start)
    except (StopIteration, SystemError):
        end = None
    if end is None or text[end:].strip(JSON_SPACE):
        import json
        return json.loads(text)
    return value


def write_file_atomically(path, data, mode):
    """Write beside, then rename over: a reader sees the old file or the new
    one, never half of one. The temporary's name is the writer's own (pid
    in it), so writers never rename each other's half-written files; a
    failed write (ENOSPC) removes its temporary."""
    directory, name = os.path.split(path)
    # A name no one can guess, made new (O_EXCL, O_NOFOLLOW): a symlink
    # planted under a guessable name would have us write through it.
    temporary = os.path.join(directory, ".%s.%d.%s.tmp" % (name, os.getpid(),
                                                            os.urandom(4).hex()))
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_record(paths, record):
    """Replace the record atomically, keeping the name it has on disk:
    `rename` may have changed it since this writer read the record (a run
    writes its record again when the command starts and when it ends).
    rename changes names under names.lock, held here from the read to the
    write, so neither write undoes the other."""
    with state_lock(paths, "names.lock"):
        on_disk = read_record(paths, record["id"])
        if on_disk is not None:
            record["name"] = on_disk.get("name")
        store_record(paths, record)


def store_record(paths, record):
    """write_record without the name kept: for a record not written yet,
    or under names.lock."""
    os.makedirs(paths.records, mode=0o700, exist_ok=True)
    write_file_atomically(paths.record(record["id"]), to_json(record).encode(), 0o644)




# What a record must hold to be used; anything else in the directory is
# skipped with a warning and left for `rm -f` (by its file name).
RECORD_FIELDS = {"id": str, "status": str, "rootfs": str, "cgroups": list, "command": list,
                 "remove": bool, "pid": int, "owner": int, "created": (int, float)}


def valid_record(record, name):
    """A record is data that decides what is killed and removed, so every
    part is checked: the id is one minidocker makes (64 hex digits: never
    "..", which would turn the layer's path into lib/ itself), each cgroup
    is the container's own (its last component names the id), and the
    optional parts have their types."""
    if not isinstance(record, dict) or not all(
            isinstance(record.get(key), kinds) for key, kinds in RECORD_FIELDS.items()):
        return False
    cid = record["id"]
    own_cgroup = (cid, "minidocker-" + cid)
    return is_hex_id(cid) and cid == name[:-len(".json")] \
        and all(isinstance(path, str) and os.path.basename(path) in own_cgroup
                for path in record["cgroups"]) \
        and isinstance(record.get("cgroup_parents", []), list) \
        and all(isinstance(path, str) for path in record.get("cgroup_parents", [])) \
        and isinstance(record.get("network", {}), dict) \
        and isinstance(record.get("last_address", ""), str) \
        and isinstance(record.get("last_ports", []), list) \
        and isinstance(record.get("exit_code", 0), int) \
        and isinstance(record.get("restart_delay", 0), (int, float)) \
        and isinstance(record.get("name"), (str, type(None))) \
        and isinstance(record.get("log_driver", ""), str) \
        and isinstance(record.get("owner_start"), (int, type(None))) \
        and isinstance(record.get("pid_start"), (int, type(None))) \
        and isinstance(record.get("mounts", []), list) \
        and all(isinstance(mount, dict) and isinstance(mount.get("Name", ""), str)
                for mount in record.get("mounts", [])) \
        and isinstance(record.get("anonymous_volumes", []), list) \
        and all(isinstance(name, str) for name in record.get("anonymous_volumes", []))


def read_records(paths, malformed=None):
    """The records, sorted by id. Reading needs no free space and changes
    nothing. A file that is not a valid record is skipped, and its name
    added to `malformed` when a list is given."""
    try:
        names = sorted(os.listdir(paths.records))
    except FileNotFoundError:
        return []
    records = []
    for name in names:
        if name.endswith(".json"):
            try:
                record = load_record(os.path.join(paths.records, name))
            except FileNotFoundError:  # removed meanwhile by another minidocker
                continue
            if valid_record(record, name):
                records.append(record)
            elif malformed is not None:
                malformed.append(name)
    return records


def load_record(path):
    """What a record file holds, or None when it is no JSON; a file removed
    meanwhile is FileNotFoundError, for the caller to decide."""
    try:
        with open(path, "rb") as handle:
            return from_json(handle.read(1 << 20).decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError):
        return None


def read_record(paths, cid):
    """The record of this id as it is on disk now, or None (removed, or not
    a valid record)."""
    try:
        record = load_record(paths.record(cid))
    except FileNotFoundError:
        return None
    return record if valid_record(record, cid + ".json") else None


def is_running(record):
    """Said to be starting or running, by a minidocker still alive to say so."""
    return record["status"] in ("created", "running") and owner_alive(record)


def owner_alive(record):
    """Is the minidocker process that started this container still running?"""
    started = process_start_time(record["owner"])
    return started is not None and started == record["owner_start"]


class Instance:
    """One container's own facts, decided by run_container once it has an
    id (the spec, the same for every run of the same flags, is only read):
    its layer, its host name (default: the short id), the /etc files bound
    into it, its volumes with their host directories (make_volumes), and
    its network lease (None without --network bridge), which is taken
    while the child is already starting and reaches it with "go". A
    bundle's container (chapter 12, continued) has no layer; `state` is
    its OCI state for the hooks, `cgroups` its cgroup directories by their
    names under /sys/fs/cgroup (bind_cgroup_dirs). With a user namespace
    (chapter 7, continued): `id_maps`, its uid and gid maps, and
    `shifted_root`, the directory where a copy of ROOTFS shifted by them
    is kept if the kernel cannot idmap ROOTFS (shifted_root_path), and
    `handles`, stage 1's handles on the host paths the container mounts
    (open_host_sources)."""
    __slots__ = ("id", "layer", "hostname", "volumes", "lease", "oci_state", "cgroups",
                 "id_maps", "shifted_root", "handles")

    def __init__(self, cid, layer, hostname, volumes, oci_state=None, cgroups=(),
                 id_maps=None, shifted_root=None):
        self.id, self.layer, self.hostname, self.lease = cid, layer, hostname, None
        self.volumes, self.oci_state, self.cgroups = volumes, oci_state, cgroups
        self.id_maps, self.shifted_root, self.handles = id_maps, shifted_root, {}

    def state(self, status):
        """The OCI state the hooks read on stdin: the bundle's, with this
        process's pid in the host's pid namespace (the host's /proc is
        still mounted where hooks run before pivot_root)."""
        pid = int(os.readlink("/proc/self")) if os.path.exists("/proc/self") else os.getpid()
        return dict(self.oci_state or {}, status=status, pid=pid)

    @property
    def etc_files(self):
        """(file in the layer, /etc/ path it is bound over), as write_etc_files
        writes them."""
        return [(os.path.join(self.layer, name), "/etc/" + name) for name in ETC_FILES]


def create_container(paths, spec, cid, cgroups, parents=()):
    """Make the volumes missing, write the record, then make the writable
    layer. The record comes first (naming the cgroups about to be made, and
    the --cgroup-parent directories that do not exist yet) so that a crash
    at any later step is still found and reclaimed. Returns the record and
    the volumes with their host directories, and the names of the volumes
    made for it."""
    record = {"id": cid, "status": "created", "rootfs": spec.rootfs, "cgroups": cgroups,
              "image": spec.image and spec.image["name"], "image_id": spec.image and spec.image["id"],
              "cgroup_parents": list(parents),
              "command": spec.command, "remove": spec.remove, "pid": 0,
              "owner": os.getpid(), "owner_start": process_start_time(os.getpid()),
              "created": time.time(), "name": spec.name, "detached": spec.detach,
              "log_driver": spec.log_driver,
              # What inspect shows of the run's configuration:
              "config": {"env": spec.env, "workdir": spec.workdir, "user": spec.user or "",
                         "hostname": spec.hostname or cid[:12], "privileged": spec.privileged,
                         "read_only": spec.read_only, "init": spec.init,
                         "restart": spec.restart,
                         "exposed": spec.network_plan.get("expose", []),
                         "entrypoint": spec.entrypoint,
                         "labels": spec.labels, "stop_signal": spec.stop_signal,
                         "stop_timeout": spec.stop_timeout, "ulimits": spec.ulimits,
                         "shm_size": spec.shm_size, "sysctls": spec.sysctls,
                         "namespaces": spec.namespaces, "oom_score_adj": spec.oom_score_adj,
                         "oom_kill_disable": bool(spec.resources.get("oom_kill_disable")),
                         "log_options": spec.log_options}}
    make_state_dirs(paths)
    volumes = spec.volumes
    # The ids of a user namespace are taken and recorded under one lock.
    # (Under it too for --uidmap: container prune removes the shifted
    # copies no record names, and a record stored meanwhile must be seen.)
    with state_lock(paths, "userns.lock") if spec.userns and not spec.userns.get("rootless") \
            else suppress():
        maps = spec.userns and allocate_id_maps(spec.userns, read_records(paths))
        record["id_maps"] = maps
        with state_lock(paths, "volumes.lock") if volumes else suppress():
            volumes, made = make_volumes(paths, spec.volumes)
            record.update(mounts=mounts_of(volumes),
                          anonymous_volumes=[v.name for v in volumes if v.anonymous])
            try:
                store_named_record(paths, spec.name, record)
            except BaseException:
                for name in made:
                    delete_volume(paths, name)
                raise
    if spec.image:
        # rmi looks for containers under images.lock: either it sees this
        # record, or we see its image gone.
        with state_lock(paths, "images.lock"):
            if not os.path.exists(image_path(paths, spec.image["id"])):
                raise MiniDockerError("image %s was removed (rmi) while its container was made"
                                      % quote(spec.image["name"]))
    layer = paths.layer(cid)
    rootless = bool(maps and maps.get("rootless"))
    for sub in ("upper", "work", "merged") + (("lower",) if maps and not rootless else ()):
        os.makedirs(os.path.join(layer, sub), mode=0o700)
    if maps and not rootless and spec.image:  # one idmapped mount per image layer
        for index in range(len(spec.image["lower"])):
            os.mkdir(os.path.join(layer, "lower", str(index)), 0o700)
    # The overlay's root directory takes its owner and mode from upper/, so
    # upper/ copies ROOTFS's own, or a non-root user could not enter "/";
    # in a user namespace, as its map shows that owner.
    image_root = os.stat(spec.rootfs)
    upper = os.path.join(layer, "upper")
    # (A user's container sees ROOTFS's owners as they are: no chown, which
    # a user could not do.)
    if not rootless:
        os.chown(upper, *(owned_by(maps, image_root.st_uid, image_root.st_gid)))
    os.chmod(upper, stat.S_IMODE(image_root.st_mode))
    for volume in volumes:  # a volume made for it is its root's, as the image's files are
        if maps and not rootless and volume.name in made:
            os.chown(volume.source, *mapped_root(maps))
    save_spec(paths, cid, spec, volumes)
    return record, volumes, made


def store_named_record(paths, name, record):
    """A new record, with its --name checked and taken under one lock: of
    twenty runs asking for one name at once, one gets it."""
    if name is None:
        store_record(paths, record)
        return
    with state_lock(paths, "names.lock"):
        taken = [r["id"] for r in read_records(paths) if r.get("name") == name]
        if taken:
            raise MiniDockerError("the name %s is already in use by container %s: remove "
                                  "it or choose another name" % (name, taken[0][:12]))
        store_record(paths, record)


# The spec is kept beside the layer, fixed when the container is made (as
# Docker keeps a container's config, and OCI a bundle's config.json): start
# and the restarts of a policy run it again, exec takes its user,
# capabilities and filter. Python literals (ast.literal_eval reads them
# back, tuples and sets as they were); the filter's bytes in a file of
# their own.
SPEC_UNSAVED = ("seccomp", "debug", "notes")


def save_spec(paths, cid, spec, volumes):
    """`volumes`: the spec's, with their host directories (make_volumes), so
    that start mounts the same volumes again."""
    fields = {key: value for key, value in vars(spec).items() if key not in SPEC_UNSAVED}
    fields["volumes"] = [tuple(getattr(v, slot) for slot in Volume.__slots__) for v in volumes]
    fields["devices"] = [tuple(getattr(d, slot) for slot in Device.__slots__)
                         for d in spec.devices]
    fields["seccomp"] = spec.seccomp is not None
    write_file_atomically(os.path.join(paths.layer(cid), "spec.marshal"), marshal.dumps(fields),
                          0o600)
    if spec.seccomp is not None:
        write_file_atomically(os.path.join(paths.layer(cid), "seccomp.bpf"), spec.seccomp, 0o600)


def load_spec(paths, cid):
    """The saved spec, or None for a container an older minidocker made.
    In marshal's form, Python's own for its literals (sets and tuples
    included), which the interpreter reads without an import: `exec` and
    `start` read it at every start. (Root's alone, in the layer's
    directory, out of the container's reach: marshal is no parser for
    hostile bytes.) A spec an earlier minidocker saved as repr() text is
    read with ast.literal_eval."""
    try:
        try:
            with open(os.path.join(paths.layer(cid), "spec.marshal"), "rb") as handle:
                fields = marshal.loads(handle.read())
        except FileNotFoundError:
            import ast
            with open(os.path.join(paths.layer(cid), "spec"), "rb") as handle:
                fields = ast.literal_eval(handle.read().decode())
        seccomp = None
        if fields["seccomp"]:
            with open(os.path.join(paths.layer(cid), "seccomp.bpf"), "rb") as handle:
                seccomp = handle.read()
    except FileNotFoundError:
        return None
    fields.setdefault("no_new_privs", True)  # a minidocker before the flag always set it
    fields.update(seccomp=seccomp, volumes=[Volume(*v) for v in fields["volumes"]],
                  devices=[Device(*d) for d in fields["devices"]])
    return Spec(**fields)


class Flock:
    """flock(2) on an open descriptor for a `with` block: taken as the
    block begins, and dropped as it ends, by closing the descriptor (or
    when the process ends). `fd` None: no lock to take."""

    def __init__(self, fd, shared=False):
        self.fd, self.shared = fd, shared

    def __enter__(self):
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
            except BaseException:
                os.close(self.fd)
                raise
        return self

    def __exit__(self, *exception):
        if self.fd is not None:
            os.close(self.fd)


def container_lock(paths, cid):
    """flock(2) on the container's layer directory, for the verbs that
    change what it is (start, a restart, stop, rm): two at once end in one
    consistent result. A directory, not a lock file: it lives exactly as
    long as the container, and one who waited for a container removed
    meanwhile finds its record gone (read_record). Without its layer (gone
    already, or half-removed) there is nothing left to race for: no lock."""
    try:
        return Flock(os.open(paths.layer(cid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except FileNotFoundError:
        return Flock(None)


def current_record(paths, cid):
    """One container's record as it is now (under its lock, so that it
    stays so): read_record, which must find one."""
    record = read_record(paths, cid)
    if record is None:
        raise MiniDockerError("no such container: %s" % cid[:12])
    return record


def stop_requested_path(paths, cid):
    """Made by stop, removed by start: a restart policy does not undo stop."""
    return os.path.join(paths.layer(cid), "stopped")


def claim_container(paths, cid, by_user):
    """start (`by_user`) or a restart policy makes a stopped container ours
    again: we are its minidocker from now on. Under its lock: of two starts
    at once one wins, the other is told; a restart quietly loses (None) to
    stop, to rm, and to a start."""
    try:
        with container_lock(paths, cid):
            record = current_record(paths, cid)
            if not os.path.isdir(paths.layer(cid)):
                raise MiniDockerError("container %s has lost its layer" % cid[:12])
            if by_user and is_running(record):
                raise MiniDockerError("container %s is already running" % cid[:12])
            if by_user:
                with suppress(FileNotFoundError):
                    os.unlink(stop_requested_path(paths, cid))
                record.pop("restart_delay", None)  # the back-off begins anew
            elif is_running(record) or os.path.exists(stop_requested_path(paths, cid)):
                return None
            record.update(status="created", pid=0, pid_start=None, owner=os.getpid(),
                          owner_start=process_start_time(os.getpid()),
                          restart_count=0 if by_user else record.get("restart_count", 0) + 1)
            write_record(paths, record)
        return record
    except MiniDockerError:
        if by_user:
            raise
        return None  # removed meanwhile


class LayerError(MiniDockerError):
    """A layer that cannot be removed (a file made immutable, a full or
    broken filesystem): the other commands warn and go on."""


def remove_container(paths, record, volumes=False):
    """Remove what a stopped container leaves: cgroups, layer, record, and
    with `volumes` (rm -v, --rm) its anonymous volumes. The record goes
    after the layer, and only once the layer is gone, so that a layer that
    cannot be removed stays known (and `rm` says why)."""
    cid = record["id"]
    remove_cgroups(record.get("cgroups", []))
    remove_empty_cgroups(record.get("cgroup_parents", []))
    try:
        remove_user_tree(paths.layer(cid), record.get("id_maps"))
    except OSError as err:
        raise LayerError("container %s: cannot remove its layer %s: %s%s"
                              % (cid[:12], paths.layer(cid), err,
                                 " (hint: the container made a file immutable or append-only:"
                                 " chattr -ia it, then rm again)" if err.errno == errno.EPERM
                                 else ""))
    # Under names.lock: a rename reading the record meanwhile would write
    # it back.
    with state_lock(paths, "names.lock"), suppress(FileNotFoundError):
        os.unlink(paths.record(cid))
    if volumes:
        remove_unused_volumes(paths, record.get("anonymous_volumes", []))


def remove_tree(path):
    """rm -rf, by directory handles, without recursion and with two
    handles open at most: a container's layer may nest directories
    thousands deep (deeper than Python's recursion limit, which
    shutil.rmtree hits, than PATH_MAX, and than the open-file limit), and
    it may hold symlinks, which are removed, never followed. Going back up
    is by "..", checked against the directory noted on the way down."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return
    above = []  # (device, inode) of each directory passed, and the name taken from it
    try:
        while True:
            child = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        child = entry.name
                        break
                    with suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=fd)
            # The handle is replaced before the old one is closed: a signal
            # that ends us between the two (^C of a ps reclaiming) may leak
            # one, but the finally never closes one twice (EBADF would
            # replace the interrupt).
            if child is not None:
                try:  # an empty one goes at once, even one we may not list (mode 0)
                    os.rmdir(child, dir_fd=fd)
                    continue
                except OSError as err:
                    if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                here = os.fstat(fd)
                fd, old = os.open(child, flags, dir_fd=fd), fd
                os.close(old)
                above.append((here.st_dev, here.st_ino, child))
                continue
            if not above:
                break
            device, inode, name = above.pop()
            fd, old = os.open("..", flags, dir_fd=fd), fd
            os.close(old)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (device, inode):
                raise syscall_error(errno.EBUSY, "remove %s: a directory moved meanwhile" % path)
            with suppress(FileNotFoundError):
                os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def reclaim_dead(paths):
    """Containers whose minidocker died (kill -9) are finished here: their
    cgroups removed, their veths deleted and the NAT rules rebuilt without
    them, and the rest too if started with --rm, else marked exited. Their
    mounts died with their mount namespace, their processes with their pid 1
    (the parent-death signal).

    Any number of minidockers may reclaim at once (forty `run`s after a
    crash): a lock file makes them take turns, and each reads the records
    again once it holds the lock, so a record another has finished is no
    longer dead for it. The lock is taken only when a first look, without
    it, finds something dead: a hundred runs started at once would
    otherwise queue for it one by one, each reading every record (1.5 s
    for the median one, measured). Writing needs free space; a full disk leaves the
    record as it is (ps still shows it as not running) rather than failing
    the command that only wanted to read or remove."""
    if not os.path.isdir(paths.records) or not (stale_temporaries(paths) or dead_records(paths)):
        return
    with state_lock(paths, "reclaim.lock"):
        reclaim_locked(paths)


def dead_records(paths):
    """Records of containers said to run whose minidocker is gone."""
    return [record for record in read_records(paths)
            if record["status"] in ("created", "running") and not owner_alive(record)]


def state_lock(paths, name, shared=False):
    """flock(2) on run/NAME: held until the block ends, or the process;
    `shared` with other shared holders, never with an exclusive one."""
    os.makedirs(paths.run, mode=0o700, exist_ok=True)
    return Flock(os.open(os.path.join(paths.run, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600), shared)


def stale_temporaries(paths):
    """Temporaries of writers that died mid-write (kill -9):
    .ID.json.PID.RANDOM.tmp (write_file_atomically)."""
    stale = []
    for name in os.listdir(paths.records):
        parts = name.split(".")
        if name.startswith(".") and name.endswith(".tmp") and len(parts) >= 5 \
                and is_number(parts[-3]) and process_start_time(int(parts[-3])) is None:
            stale.append(name)
    return stale


def reclaim_locked(paths):
    for name in stale_temporaries(paths):
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(paths.records, name))
    dead = dead_records(paths)
    # Another namespace's rules are that namespace's next run's to rebuild.
    networked = [record for record in dead if record.get("network", {}).get("netns") == current_netns()]
    if networked:
        release_leases(paths, networked)
    for record in dead:
        if record["remove"]:
            try:
                remove_container(paths, record, volumes=True)
            except LayerError as err:  # one bad layer must not stop every command
                warn(str(err))
        else:
            remove_cgroups(record.get("cgroups", []))
            remove_empty_cgroups(record.get("cgroup_parents", []))
            record["status"] = "exited"
            with suppress(OSError):  # ENOSPC: it stays as it was
                write_record(paths, record)


def find_container(paths, prefix):
    """By the whole id, by name, or by a prefix of the id, in that order,
    as docker does."""
    records = read_records(paths)
    named = [r for r in records if prefix in (r["id"], r.get("name"))]
    if named:
        return sorted(named, key=lambda r: r["id"] != prefix)[0]
    matches = [r for r in records if r["id"].startswith(prefix)] if prefix else []
    if not matches:
        raise MiniDockerError("no such container: %s" % prefix)
    if len(matches) > 1:
        raise MiniDockerError("container id %s is ambiguous (%d matches)" % (prefix, len(matches)))
    return matches[0]


# Volumes live in lib/volumes/NAME/: _data/ is what is mounted, volume.json
# when it was made and whether it is anonymous (Docker's local driver keeps
# the same _data/ under /var/lib/docker/volumes/NAME/). run/volumes.lock is
# held while a volume is made or removed, and while a container that uses
# volumes writes its first record: `volume rm` then sees every container
# that uses a volume, or the volume is gone before the container names it.

def volume_dir(paths, name):
    """lib/volumes/NAME, for a name checked here again: a name becomes a
    path, and `..` or `a/b` would lead out of the volumes directory."""
    check_name(name, "volume name")
    return os.path.join(paths.volumes, name)


def create_volume(paths, name, anonymous=False):
    """Make volume NAME unless it exists (under volumes.lock, the caller's).
    It is built beside under a name of this writer's own, then renamed into
    place: a volume is whole or absent, whatever ends us. Returns whether
    it was made."""
    final = volume_dir(paths, name)
    if os.path.isdir(final):
        return False
    make_state_dirs(paths)
    os.makedirs(paths.volumes, 0o700, exist_ok=True)
    remove_stale_volume_builds(paths)
    temporary = os.path.join(paths.volumes, ".%s.%d.%s.tmp" % (name, os.getpid(),
                                                                os.urandom(4).hex()))
    try:
        os.mkdir(temporary, 0o700)
        os.mkdir(os.path.join(temporary, "_data"))
        os.chmod(os.path.join(temporary, "_data"), 0o755)  # whatever the umask
        meta = {"created": time.time(), "anonymous": anonymous}
        write_file_atomically(os.path.join(temporary, "volume.json"), to_json(meta).encode(),
                              0o600)
        os.rename(temporary, final)
    except BaseException:
        remove_tree(temporary)
        raise
    return True


def remove_stale_volume_builds(paths):
    """Half-built volumes of creators that died (kill -9) before their
    rename: .NAME.PID.RANDOM.tmp, whose PID is gone (under volumes.lock, so
    no live creator's build is taken)."""
    for entry in os.listdir(paths.volumes):
        parts = entry.split(".")
        if entry.startswith(".") and entry.endswith(".tmp") and len(parts) >= 5 \
                and is_number(parts[-3]) and process_start_time(int(parts[-3])) is None:
            remove_tree(os.path.join(paths.volumes, entry))


def delete_volume(paths, name):
    try:
        remove_user_tree(volume_dir(paths, name), rootless_maps() if os.geteuid() else None)
    except OSError as err:
        raise MiniDockerError("volume %s: cannot remove %s: %s"
                              % (name, volume_dir(paths, name), err.strerror))


def volume_names(paths):
    """The volumes there are, sorted (a builder's temporary starts with a dot)."""
    try:
        return sorted(n for n in os.listdir(paths.volumes) if is_docker_name(n))
    except FileNotFoundError:
        return []


def volume_meta(paths, name):
    """What volume.json says, or {} (unreadable: the volume is still one)."""
    try:
        with open(os.path.join(volume_dir(paths, name), "volume.json"), "rb") as handle:
            meta = from_json(handle.read(4096).decode())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def volumes_in_use(paths):
    """{volume name: [ids of the containers, running or not, that use it]}."""
    used = {}
    for record in read_records(paths):
        for mount in record.get("mounts", []):
            if mount.get("Type") == "volume":
                used.setdefault(mount.get("Name"), []).append(record["id"])
    return used


def make_volumes(paths, volumes):
    """The spec's volumes with their host directories: each volume made
    when it is missing, an anonymous one under a new random name, as
    `docker run` does. Under volumes.lock (the caller's). Returns the
    volumes and the names of those made here."""
    resolved, made = [], []
    for volume in volumes:
        if volume.name is None:
            resolved.append(volume)
            continue
        name = volume.name or os.urandom(32).hex()
        if create_volume(paths, name, volume.anonymous):
            made.append(name)
        resolved.append(Volume(os.path.join(volume_dir(paths, name), "_data"), volume.target,
                               volume.read_only, name, volume.copy, volume.anonymous))
    return resolved, made


def mounts_of(volumes):
    """What the record keeps of the volumes, in the shape of Docker's
    inspect "Mounts"; `volume rm` reads which volumes are in use there."""
    mounts = []
    for volume in volumes:
        if volume.name is None:
            mounts.append({"Type": "bind", "Source": volume.source, "Destination": volume.target,
                           "Mode": "", "RW": not volume.read_only, "Propagation": "rprivate"})
        else:
            mounts.append({"Type": "volume", "Name": volume.name, "Source": volume.source,
                           "Destination": volume.target, "Driver": "local", "Mode": "",
                           "RW": not volume.read_only, "Propagation": ""})
    return mounts


def remove_unused_volumes(paths, names):
    """rm -v, --rm: the container's anonymous volumes go with it (named ones
    stay), as Docker's; a run that could not start takes the volumes it
    made with it. One that another container mounts by its name stays,
    with a warning. The container's record is gone already."""
    if not names:
        return
    with state_lock(paths, "volumes.lock"):
        used = volumes_in_use(paths)
        for name in names:
            if name in used:
                warn("volume %s is kept: container %s uses it" % (name, used[name][0][:12]))
            elif os.path.isdir(volume_dir(paths, name)):
                try:
                    delete_volume(paths, name)
                except MiniDockerError as err:  # the container is gone all the same
                    warn(str(err))


# === 5. Images: a rootfs from what the host has (mkrootfs), and an ELF reader ===
# `mkrootfs DIR` makes a working rootfs on a host with nothing but python3:
# the host's busybox if it has one, otherwise the host's own shell and core
# utilities with the shared libraries and dynamic loader they need. Which
# libraries those are is read from the ELF files themselves (PT_INTERP and
# DT_NEEDED), as ld.so would, instead of running ldd, which is a script of
# glibc's that is not on every host and that loads the program it inspects.
# The one program mkrootfs runs is the host's own busybox, once, to ask where
# its applets go (`--list-full`): busybox keeps that in a packed table only
# it reads.

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
    except OSError:  # ENOENT: a host without the file, or an include to nothing
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
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise MiniDockerError("mkrootfs: %s: no such directory" % parent)
    check_safe_destination(parent, is_dest=False)  # before anything is made through it
    with suppress(FileExistsError):  # made now, or someone's: then checked
        os.mkdir(dest, 0o755)
    check_safe_destination(dest)
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


def check_safe_destination(dest, is_dest=True, command="mkrootfs"):
    """mkrootfs writes by path, as root: no other user may be able to swap
    anything on that path meanwhile (a directory for a symlink to /etc, say,
    whose files would then be overwritten or made world-writable). So the
    path is walked as the kernel will walk it, symlinks followed by hand,
    and every directory it passes must be owned by root (or by us) and
    writable by no one else, or sticky (/tmp: others cannot rename what they
    do not own there); every symlink on the way must be root's (or ours) as
    well; dest itself must be a directory only we can change (is_dest=False
    checks a parent, which may be sticky as the others)."""
    mine = os.geteuid()
    todo = [part for part in os.path.abspath(dest).split("/") if part]
    current, hops = "/", 0
    check_safe_directory("/", os.lstat("/"), mine, is_dest and not todo, command)
    while todo:
        name = todo.pop(0)
        if name in (".", ".."):
            current = current if name == "." else os.path.dirname(current)
            continue
        path = os.path.join(current, name)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if not todo and is_dest:
                raise unsafe_destination(path, "a symlink", command)
            if st.st_uid not in (0, mine):
                raise unsafe_destination(path, "a symlink owned by uid %d" % st.st_uid, command)
            hops += 1
            if hops > MAX_SYMLINKS:
                raise syscall_error(errno.ELOOP, "%s %s" % (command, dest))
            target = os.readlink(path)
            current = "/" if target.startswith("/") else current
            todo[:0] = [part for part in target.split("/") if part]
            continue
        check_safe_directory(path, st, mine, is_dest and not todo, command)
        current = path


def check_safe_directory(path, st, mine, last, command):
    if not stat.S_ISDIR(st.st_mode):
        raise unsafe_destination(path, "not a directory", command)
    if st.st_uid not in (0, mine):
        raise unsafe_destination(path, "owned by uid %d" % st.st_uid, command)
    if st.st_mode & 0o022 and (last or not st.st_mode & stat.S_ISVTX):
        raise unsafe_destination(path, "writable by others", command)


def unsafe_destination(path, what, command):
    return MiniDockerError("%s: %s is %s: another user could redirect what is written "
                           "there; use a directory only root can change" % (command, path, what))


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


# === 5. (continued) Images: references, the layer store, safe unpacking ===
# An image is a config (the command, environment, user, ports) and a list of
# layers, each a tar archive of the files one build step changed, named by a
# manifest. The OCI image spec and Docker's "schema 2" are one format under
# two sets of media types. What `pull` and `load` bring is kept under the
# state root, content-addressed, as Docker and containerd keep it:
#
#   lib/images/
#     blobs/sha256/HEX        each manifest, config and layer archive, named
#                             by the sha256 of its bytes; written under a
#                             temporary name and renamed once that digest
#                             checks, so a name never holds other bytes
#     layers/HEX/diff/        one layer unpacked, named by its diff_id (the
#     layers/HEX/layer.json   sha256 of the uncompressed tar): images that
#                             share a base share its directory; layer.json
#                             holds its short name and size
#     l/SHORT -> ../layers/HEX/diff   short names for overlayfs' lowerdir
#     images/HEX.json         one image (HEX: its config's digest, the image
#                             id): config, layers, manifest, digests
#     tags.json               {"docker.io/library/alpine:latest": "sha256:HEX"}
#
# A container of an image has an overlay root whose lower directories are
# the image's layers, top first (chapter 6): one unpacked copy serves every
# container of it. The kernel takes the mount's options in one page, so each
# layer is named by its short link, relative to lib/images, as Docker's
# overlay2 driver does: 128 layers fit in 3.7 KB.

DOCKER_HUB = "docker.io"
IMAGE_JSON_LIMIT = 4 << 20  # a manifest, index or config held in memory: Docker's limit too
LINK_LENGTH = 26            # a short name's characters, base32, as overlay2's


class ImageRef:
    """A parsed image reference: `registry/repository[:tag][@digest]`."""
    __slots__ = ("registry", "repository", "tag", "digest")

    def __init__(self, registry, repository, tag, digest):
        self.registry, self.repository, self.tag, self.digest = registry, repository, tag, digest

    @property
    def name(self):
        return "%s/%s" % (self.registry, self.repository)

    def __str__(self):
        return self.name + (":" + self.tag if self.tag else "") + \
            ("@" + self.digest if self.digest else "")


# Docker's grammar of a reference (distribution's reference package), as
# regular expressions, matched below without re (its import is 10 ms, and
# `run IMAGE` reads a reference at every start):
#   a repository component  [a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*
#   a registry              LABEL(?:\.LABEL)*(?::[0-9]{1,5})?,
#                           LABEL = [A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?
#   a tag                   [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
#   a digest                sha256:[0-9a-f]{64}
LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


def is_repository_component(text):
    runs = []  # alternating runs of [a-z0-9] and of separators
    for char in text:
        if char not in LOWER_ALNUM and char not in "._-":
            return False
        if runs and (char in LOWER_ALNUM) == (runs[-1][0] in LOWER_ALNUM):
            runs[-1] += char
        else:
            runs.append(char)
    return bool(runs) and runs[0][0] in LOWER_ALNUM and runs[-1][0] in LOWER_ALNUM and all(
        run in (".", "_", "__") or not run.strip("-") for run in runs[1::2])


def is_registry_host(text):
    host, colon, port = text.partition(":")
    return (not colon or is_number(port) and len(port) <= 5) and all(
        label and "-" not in (label[0], label[-1]) and not label.strip(ASCII_ALNUM + "-")
        for label in host.split("."))


def is_tag(text):
    return 0 < len(text) <= 128 and text[0] not in ".-" and not text.strip(ASCII_ALNUM + "_.-")


def is_digest(text):
    return isinstance(text, str) and text.startswith("sha256:") and is_hex_id(text[7:])


def parse_reference(text):
    """Docker's reference rules: `alpine` is docker.io/library/alpine:latest;
    a first component holding '.' or ':', or `localhost`, is a registry;
    repository components are lower case; a tag has at most 128
    characters; `@sha256:HEX` pins a digest (and needs no tag)."""
    def invalid(why):
        return MiniDockerError("invalid image reference %s: %s" % (quote(text), why))
    if not text or len(text) > 255:
        raise invalid("expected 1 to 255 characters")
    rest, at, digest = text.partition("@")
    if at and not is_digest(digest):
        raise invalid("a digest is 'sha256:' and 64 lower-case hex digits")
    name, tag = rest, None
    if rest.rfind(":") > rest.rfind("/"):
        name, _, tag = rest.rpartition(":")
        if not is_tag(tag):
            raise invalid("a tag is at most 128 letters, digits, '_', '.' and '-', not "
                          "starting with '.' or '-'")
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not is_registry_host(first):
            raise invalid("the registry is a host name with an optional :PORT")
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, name
    if registry in (DOCKER_HUB, "index.docker.io"):
        registry, path = DOCKER_HUB, path if "/" in path else "library/" + path
    for component in path.split("/"):
        if not is_repository_component(component):
            raise invalid("a repository is lower-case letters and digits, with '.', '_', "
                          "'__' or '-' between them, in '/'-separated parts")
    return ImageRef(registry, path, tag if tag or at else "latest", digest or None)


def familiar_name(name):
    """docker.io/library/alpine -> alpine, docker.io/me/app -> me/app: the
    short names docker shows."""
    if name.startswith(DOCKER_HUB + "/"):
        name = name[len(DOCKER_HUB) + 1:]
        if name.startswith("library/") and name.count("/") == 1:
            name = name[len("library/"):]
    return name


def check_digest(text, what):
    """A digest from a manifest or config names a file in the store: it must
    be exactly sha256 and hex, or `sha256:../../x` would be a path."""
    if not is_digest(text):
        raise MiniDockerError("%s: %s is not a sha256 digest" % (what, quote(str(text))))
    return text


def blob_path(paths, digest):
    return os.path.join(paths.images, "blobs", "sha256", digest[len("sha256:"):])


def layer_path(paths, diff_id):
    return os.path.join(paths.images, "layers", diff_id[len("sha256:"):])


def image_path(paths, image_id):
    return os.path.join(paths.images, "images", image_id[len("sha256:"):] + ".json")


class DigestReader:
    """A stream read through, hashed as it passes (hashlib drops the GIL on
    large buffers, so layers hash in parallel threads)."""

    def __init__(self, source):
        import hashlib
        self.source, self.hash, self.size = source, hashlib.sha256(), 0

    def read(self, size=-1):
        data = self.source.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data

    def digest(self):
        return "sha256:" + self.hash.hexdigest()


def store_blob(paths, source, what, expected=None, size=None, progress=None, limit=None):
    """Copy a stream into the blob store, hashing it on the way. `expected`
    and `size` (a manifest's descriptor) must match, or the bytes are
    dropped with one line; past `limit` bytes, whatever the size says, the
    stream is refused. Written under a temporary name and renamed once
    checked: a pull killed halfway (or a network that drops) leaves no
    blob that a later pull trusts. Returns the digest."""
    directory = os.path.dirname(blob_path(paths, "sha256:"))
    os.makedirs(directory, 0o700, exist_ok=True)
    temporary = os.path.join(directory, ".tmp-%d-%s" % (os.getpid(), os.urandom(6).hex()))
    reader = DigestReader(source)
    try:
        with open(temporary, "xb") as out:
            while True:
                data = reader.read(1 << 16)
                if not data:
                    break
                out.write(data)
                if size is not None and reader.size > size:
                    raise MiniDockerError("%s: more than the %d bytes its descriptor says: "
                                          "refused" % (what, size))
                if limit is not None and reader.size > limit:
                    raise MiniDockerError("%s: more than %d bytes: refused" % (what, limit))
                if progress:
                    progress(reader.size)
        digest = reader.digest()
        if expected and digest != expected:
            raise MiniDockerError("%s: digest mismatch: expected %s, got %s (the bytes are "
                                  "dropped)" % (what, expected, digest))
        if size is not None and reader.size != size:
            raise MiniDockerError("%s: %d bytes, where its descriptor says %d: refused"
                                  % (what, reader.size, size))
        os.rename(temporary, blob_path(paths, digest))
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return digest


def read_store_file(path, what, limit=IMAGE_JSON_LIMIT):
    """A JSON file of the store (a tree only its owner can write): at most
    `limit` bytes of it. A missing one raises FileNotFoundError."""
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise MiniDockerError("%s is larger than %d MiB" % (what, limit >> 20))
    return data


def read_blob(paths, digest, what, limit=IMAGE_JSON_LIMIT):
    """A stored manifest or config, checked again against its name."""
    import hashlib
    try:
        data = read_store_file(blob_path(paths, digest), what, limit)
    except FileNotFoundError:
        raise MiniDockerError("%s: blob %s is missing from the store" % (what, digest)) from None
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise MiniDockerError("%s: the stored blob does not match its digest %s" % (what, digest))
    return data


def parse_json(data, what):
    """A JSON document from outside (a registry, an archive): its faults,
    nesting past the interpreter's recursion limit among them (a 4 MiB
    manifest may open 4 million arrays), as one line."""
    try:
        return from_json(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise MiniDockerError("%s: not valid JSON: %s" % (what, err)) from None


def parse_json_object(data, what):
    value = parse_json(data, what)
    if not isinstance(value, dict):
        raise MiniDockerError("%s: expected a JSON object" % what)
    return value


def json_object(value):
    """A field that should hold an object: one of another type reads as
    missing, for what needs it to refuse by name."""
    return value if isinstance(value, dict) else {}


def json_list(value):
    return value if isinstance(value, list) else []


# Unpacking. A layer is the image author's tar, and the author may be
# hostile: a name with `..` or a leading `/`, a symlink `etc -> /` followed
# by an entry `etc/cron.d/x`, or a hard link to /etc/shadow, would write or
# expose host files if the tar were extracted by path (Docker's
# CVE-2014-6407 and CVE-2014-9356 in its layer extraction; CVE-2018-15664,
# the same walk raced in `docker cp`). So each
# layer goes into a new directory that only its own unpacker writes, and
# every entry's path is walked from that directory one component at a
# time with O_NOFOLLOW|O_DIRECTORY: a symlink or a file where a directory
# should be stops the walk, whoever planted it, and a hard link's target
# is found the same way, inside the layer. Earlier layers are other
# directories: an entry cannot reach them at all. Names with `..` or a
# leading `/` are refused, not cleaned: no real image has one.
#
# Whiteouts are how a layer deletes what a lower one has: `.wh.NAME` hides
# NAME, and `.wh..wh..opq` in a directory hides everything below it in
# lower layers. They become what overlayfs reads (Documentation/
# filesystems/overlayfs.rst): a character device 0:0 named NAME, and the
# xattr trusted.overlay.opaque=y on the directory. Both need real root
# (CAP_MKNOD, CAP_SYS_ADMIN), as device nodes shipped in a layer do.
# trusted.* and user.overlay.* xattrs from the tar itself are dropped:
# overlayfs' own (redirect, origin, metacopy) would steer its lookups.

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OVERLAY_OPAQUE = "trusted.overlay.opaque"
# Dropped from a layer's xattrs: what overlayfs reads as its own, in the
# host root's overlays (trusted.*) and in one mounted with userxattr
# (user.overlay.*, a user namespace's).
OVERLAY_XATTRS = ("trusted.", "user.overlay.")
XATTR_PAX_PREFIX = "SCHILY.xattr."  # how GNU tar and Go's archive/tar carry xattrs


def layer_entry_parts(name):
    """An entry's name as components inside the layer: "." and empty ones
    dropped (./etc//passwd is etc/passwd)."""
    if name.startswith("/"):
        raise ValueError("an absolute name")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("a '..' component")
    return parts


def entry_times(entry):
    mtime = int(entry.mtime * 1e9)
    return mtime, mtime


class LayerUnpacker:
    """One layer's entries, in order, into the directory open as `top`."""

    def __init__(self, top, real_root):
        self.top = top
        self.real_root = real_root
        self.cached = (None, None)  # the last parent walked to: (components, fd)
        self.directories = {}       # components: times, dated once filled (the last
        #                             entry of a name wins, and a layer of a million
        #                             entries of one directory keeps one)
        self.size = 0               # bytes of regular files, for `images`

    def walk(self, parts, create):
        """A new descriptor of the directory at `parts`, walked from the top
        without following a symlink; missing directories are made (0755, as
        tar makes them) when `create`."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.top)
        try:
            for index, part in enumerate(parts):
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                                    os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                                    os.O_CLOEXEC, dir_fd=fd)
                except OSError as err:
                    if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise ValueError("%s is a symlink or a file, not a directory: nothing is "
                                     "written through one" % "/".join(parts[:index + 1])) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def parent(self, parts):
        """The directory holding parts[-1]; consecutive entries of one
        directory (a tar's usual order) walk to it once."""
        key = tuple(parts[:-1])
        if self.cached[0] != key:
            fd = self.walk(key, create=True)
            self.forget()
            self.cached = (key, fd)
        return self.cached[1]

    def forget(self):
        if self.cached[1] is not None:
            os.close(self.cached[1])
        self.cached = (None, None)

    def clear(self, parent, name, keep_directory):
        """Make room for an entry: a later entry replaces an earlier one of
        the same name, but a directory entry keeps a directory's contents.
        Returns whether a directory was kept."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            return False
        if keep_directory:
            return True
        # The cached parent is `parent` itself, never below `name`, so it
        # stays open: closing it here would free its number for whatever
        # another thread of the pull opens next (another layer's directory),
        # and the removal and the write that follow would land there.
        remove_tree("%s/%s" % (fd_path(parent), name))
        return False

    def add(self, archive, entry):
        parts = layer_entry_parts(entry.name)
        if not parts:  # "./": the layer's own top directory
            if entry.isdir():
                self.set_attributes(self.top, entry)
                self.directories[()] = entry_times(entry)
            return
        name = parts[-1]
        parent = self.parent(parts)
        if name.startswith(WHITEOUT_PREFIX):
            self.whiteout(parent, name)
        elif entry.isdir():
            if not self.clear(parent, name, keep_directory=True):
                os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
            try:
                self.set_attributes(fd, entry)
            finally:
                os.close(fd)
            self.directories[tuple(parts)] = entry_times(entry)
        elif entry.isreg():  # (sparse ones refused by open_tar)
            self.clear(parent, name, keep_directory=False)
            self.write_file(archive, entry, parent, name)
        elif entry.issym():
            self.clear(parent, name, keep_directory=False)
            os.symlink(entry.linkname, name, dir_fd=parent)
            self.set_node_attributes(parent, name, entry, chmod=False)
        elif entry.islnk():
            self.hard_link(parent, name, entry)
        elif entry.ischr() or entry.isblk() or entry.isfifo():
            self.node(parent, name, entry)
        else:
            raise ValueError("type %r is not one a layer holds" % entry.type.decode("latin-1"))

    def write_file(self, archive, entry, parent, name):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        try:
            source = archive.extractfile(entry)
            with open(fd, "wb", closefd=False) as out:
                while True:
                    data = source.read(1 << 20)
                    if not data:
                        break
                    out.write(data)
            self.size += entry.size
            self.set_attributes(fd, entry)
        finally:
            os.close(fd)

    def set_attributes(self, fd, entry):
        """Owner, then mode (chown clears setuid bits, so it comes first),
        xattrs and times. A directory is dated again once filled (finish)."""
        os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode & 0o7777)
        for key, value in entry.pax_headers.items():
            xattr = key[len(XATTR_PAX_PREFIX):]
            if not key.startswith(XATTR_PAX_PREFIX) or xattr.startswith(OVERLAY_XATTRS):
                continue
            try:
                os.setxattr(fd, xattr, value.encode("utf-8", "surrogateescape"))
            except OSError as err:  # ENOTSUP, EOPNOTSUPP: a filesystem without xattrs
                if err.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
        os.utime(fd, ns=entry_times(entry))

    def set_node_attributes(self, parent, name, entry, chmod=True):
        os.chown(name, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        if chmod:  # (a node just made, never a symlink: chmod does not follow one here)
            os.chmod(name, entry.mode & 0o7777, dir_fd=parent)
        os.utime(name, ns=entry_times(entry), dir_fd=parent, follow_symlinks=False)

    def hard_link(self, parent, name, entry):
        """A hard link's target is another entry of this layer, found by the
        same walk: never a file outside it, never a directory."""
        try:
            target = layer_entry_parts(entry.linkname)
        except ValueError as err:
            raise ValueError("hard link to %s: %s" % (quote(entry.linkname), err)) from None
        if not target:
            raise ValueError("a hard link to the layer's top directory")
        try:
            source = self.walk(target[:-1], create=False)
        except FileNotFoundError:
            raise ValueError("hard link to %s, which no earlier entry made"
                             % quote(entry.linkname)) from None
        try:
            try:
                st = os.stat(target[-1], dir_fd=source, follow_symlinks=False)
            except FileNotFoundError:
                raise ValueError("hard link to %s, which no earlier entry made"
                                 % quote(entry.linkname)) from None
            if stat.S_ISDIR(st.st_mode):
                raise ValueError("a hard link to a directory")
            self.clear(parent, name, keep_directory=False)
            os.link(target[-1], name, src_dir_fd=source, dst_dir_fd=parent,
                    follow_symlinks=False)
        finally:
            os.close(source)

    def node(self, parent, name, entry):
        """A FIFO is made for anyone; a device node only by real root (in a
        user namespace mknod would fail, and rootless Docker skips them)."""
        if not entry.isfifo() and not self.real_root:
            return
        self.clear(parent, name, keep_directory=False)
        kind = stat.S_IFIFO if entry.isfifo() else stat.S_IFCHR if entry.ischr() \
            else stat.S_IFBLK
        os.mknod(name, kind | 0o600, os.makedev(entry.devmajor, entry.devminor), dir_fd=parent)
        self.set_node_attributes(parent, name, entry)

    def whiteout(self, parent, name):
        if name == OPAQUE_WHITEOUT:
            os.setxattr(parent, OVERLAY_OPAQUE, b"y")
        elif not name.startswith(WHITEOUT_PREFIX * 2):  # .wh..wh.plnk and such: aufs' own
            hidden = name[len(WHITEOUT_PREFIX):]
            if hidden in ("", ".", ".."):
                raise ValueError("a whiteout of nothing")
            self.clear(parent, hidden, keep_directory=False)
            os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)

    def finish(self):
        """Directories' times, last: each entry made inside one changed it."""
        self.forget()
        for parts, times in self.directories.items():
            try:
                fd = self.walk(parts, create=False)
            except (FileNotFoundError, ValueError):  # replaced by a later entry
                continue
            try:
                os.utime(fd, ns=times)
            finally:
                os.close(fd)


def real_root():
    """Root in the initial user namespace: device nodes and whiteouts can be
    made."""
    if os.geteuid() != 0:
        return False
    try:
        return read_text("/proc/self/uid_map").split() == ["0", "0", "4294967295"]
    except OSError:
        return False


# Reading the tar. Python's tarfile reads a header extension (a PAX header,
# a GNU long name) whole before it looks at it, and before 3.12.6 and
# 3.11.10 (CVE-2024-6232) it parses PAX records with regular expressions
# that may run to the end of the header from every record, keeping what
# each matched: measured here (3.11), a 64 KiB PAX header of "3 x" records
# took 700 MB, a 1 MiB one would take 170 GB, and a 256 KiB record of
# digits took 165 s of CPU. GNU sparse maps (a type 'S' entry's extension
# blocks, a PAX GNU.sparse map) grow a list for as long as the stream
# goes. A gzipped layer of a few kilobytes is enough for any of these, so
# a layer, and an archive `load` reads, go through CheckedTarInfo: an
# extension over 1 MiB is refused before it is read (Go's archive/tar,
# Docker's, refuses them too), PAX records are parsed here in one pass,
# at most PAX_RECORD_LIMIT of them, and sparse entries (which no layer
# holds: LayerUnpacker.add refuses them) are refused on sight.

TAR_EXTENSION_LIMIT = 1 << 20  # bytes of one PAX header or GNU long name
TAR_EXTENSION_CHAIN = 8        # extensions in a row before one entry (a real tar: 4 at most)
PAX_RECORD_LIMIT = 1000        # records of one PAX header, and global ones in all
PAX_NUMBER, PAX_TIME = r"[0-9]{1,20}", r"-?[0-9]{1,20}(\.[0-9]{0,20})?"
PAX_FIELDS = (("path", "name", str, None), ("linkpath", "linkname", str, None),
              ("uname", "uname", str, None), ("gname", "gname", str, None),
              ("size", "size", int, PAX_NUMBER), ("uid", "uid", int, PAX_NUMBER),
              ("gid", "gid", int, PAX_NUMBER), ("mtime", "mtime", float, PAX_TIME))
# (the record, the TarInfo field it sets, its type and form)


def parse_pax_records(data):
    """POSIX.1-2001 records, "LENGTH KEYWORD=VALUE\\n" where LENGTH counts
    the whole record, in one pass; NULs after the last are padding.
    Strings as the file system's: UTF-8, any other byte kept as a
    surrogate (the names and xattrs go back to bytes the same way)."""
    records, position = {}, 0
    while position < len(data) and data[position] != 0:
        space = data.find(b" ", position, position + 21)
        digits = data[position:space] if space > position else b""
        length = int(digits) if digits.isdigit() else 0
        record = data[position:position + length]
        keyword, equals, value = record[len(digits) + 1:-1].partition(b"=")
        if length < 5 or len(record) < length or record[-1:] != b"\n" or not equals or \
                not keyword:
            raise ValueError("a malformed PAX record at byte %d of its header" % position)
        records[keyword.decode("utf-8", "surrogateescape")] = \
            value.decode("utf-8", "surrogateescape")
        if len(records) > PAX_RECORD_LIMIT:
            raise ValueError("a PAX header of more than %d records" % PAX_RECORD_LIMIT)
        position += length
    return records


def check_pax_numbers(records):
    """A number must be one: tarfile would read "x" as 0 (root, for uid),
    and "inf" as inf."""
    import re
    import tarfile
    for key, _, _, form in PAX_FIELDS:
        value = records.get(key)
        if value is not None and form and not re.fullmatch(form, value):
            raise tarfile.ReadError("PAX record %s=%s is not a number" % (key, quote(value)))


def open_tar(source, mode):
    """tarfile.open over a stream, with the checks above. CheckedTarInfo
    hooks _proc_member, the method tarfile's own comments name for a
    subclass to handle a header type its own way."""
    import tarfile

    class CheckedTarInfo(tarfile.TarInfo):
        def _proc_member(self, archive):
            pax = self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise tarfile.ReadError("%s: a GNU sparse entry: refused" % quote(self.name))
            extension = pax or self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
            if extension and self.size > TAR_EXTENSION_LIMIT:
                raise tarfile.ReadError("a header extension of %d bytes (more than %d MiB): "
                                        "refused" % (self.size, TAR_EXTENSION_LIMIT >> 20))
            if not extension:
                return super()._proc_member(archive)
            # Each extension reads the header after it by recursion: a
            # chain of a few hundred would end in RecursionError. A real
            # one has a global PAX header, a PAX header, a long name and a
            # long link at most.
            depth = getattr(archive, "extension_depth", 0)
            if depth >= TAR_EXTENSION_CHAIN:
                raise tarfile.ReadError("more than %d header extensions before one entry: "
                                        "refused" % TAR_EXTENSION_CHAIN)
            archive.extension_depth = depth + 1
            try:
                return self.proc_pax(archive) if pax else super()._proc_member(archive)
            finally:
                archive.extension_depth = depth

        def proc_pax(self, archive):
            """The records apply to the next entry ('x'), or to every later
            one ('g'), which tarfile's _proc_builtin applies itself."""
            data = archive.fileobj.read(-(-self.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
            try:
                records = parse_pax_records(data[:self.size])
            except ValueError as err:
                raise tarfile.ReadError(str(err)) from None
            if any(key.startswith("GNU.sparse.") for key in records):
                raise tarfile.ReadError("a sparse file (GNU.sparse PAX records): refused")
            if self.type == tarfile.XGLTYPE:  # (tarfile applies these itself: checked here)
                check_pax_numbers(records)
                archive.pax_headers.update(records)
                if len(archive.pax_headers) > PAX_RECORD_LIMIT:
                    raise tarfile.ReadError("global PAX headers of more than %d records"
                                            % PAX_RECORD_LIMIT)
            try:
                entry = self.fromtarfile(archive)
            except tarfile.HeaderError as err:  # tarfile's own: not the end, an error
                raise tarfile.ReadError("after a PAX header: %s" % err) from None
            if self.type != tarfile.XGLTYPE:
                merged = dict(archive.pax_headers)
                merged.update(records)
                entry.apply_pax(merged)
                entry.offset = self.offset
                if entry.isreg() or entry.type not in tarfile.SUPPORTED_TYPES:
                    archive.offset = entry.offset_data + \
                        -(-entry.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            return entry

        def apply_pax(self, records):
            """What a PAX header overrides of the entry after it."""
            check_pax_numbers(records)
            for key, field, kind, _ in PAX_FIELDS:
                value = records.get(key)
                if value is not None:
                    setattr(self, field, kind(value))
            if "path" in records:
                self.name = self.name.rstrip("/")
            self.pax_headers = records

    return tarfile.open(fileobj=source, mode=mode, tarinfo=CheckedTarInfo, encoding="utf-8",
                        errors="surrogateescape")


def tar_entries(archive):
    """The entries of a tar read as a stream, each forgotten once the next
    is read: tarfile keeps every one in its members list (about 500 bytes
    each), so a gzipped layer of a million empty entries, 2 MB, took 500 MB."""
    while True:
        entry = archive.next()
        if entry is None:
            return
        yield entry
        archive.members.clear()


def layer_stream(blob, what):
    """A layer blob's tar stream: gzip is read by the standard library;
    zstd has no decoder there, so a zstd layer is refused by name."""
    import gzip
    magic = blob.read(4)
    blob.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=blob, mode="rb")
    if magic == b"\x28\xb5\x2f\xfd":
        raise MiniDockerError("%s is compressed with zstd, which Python's standard library "
                              "cannot read: refused" % what)
    return blob


def unpack_layer(paths, digest, diff_id, what):
    """The stored layer blob `digest` unpacked into layers/DIFF_ID, once:
    into a temporary directory first, renamed when complete and its
    uncompressed bytes match the diff_id the image's config names, so a
    half-unpacked layer is never used. Returns its layer.json: its short
    link and its size."""
    import tarfile
    import zlib
    final = layer_path(paths, diff_id)
    if os.path.isdir(final):
        return ensure_layer_link(paths, diff_id)
    os.makedirs(os.path.dirname(final), 0o700, exist_ok=True)
    temporary = "%s.tmp-%d-%s" % (final, os.getpid(), os.urandom(6).hex())
    os.mkdir(temporary, 0o700)
    try:
        os.mkdir(os.path.join(temporary, "diff"), 0o755)
        top = os.open(os.path.join(temporary, "diff"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        unpacker = LayerUnpacker(top, real_root())
        entry = None
        try:
            with open(blob_path(paths, digest), "rb") as blob:
                plain = DigestReader(layer_stream(blob, what))
                with open_tar(plain, "r|") as archive:
                    for entry in tar_entries(archive):
                        unpacker.add(archive, entry)
                    entry = None
                    unpacker.finish()
                    while plain.read(1 << 20):  # the end blocks too: every byte is hashed
                        pass
        # OverflowError: an owner, a time or a device number past what the
        # kernel's types hold (a PAX record or a base-256 field may say any).
        except (OSError, ValueError, OverflowError) as err:
            if entry is None:
                raise MiniDockerError("%s: %s" % (what, err)) from None
            raise MiniDockerError("%s: entry %s: %s" % (what, quote(entry.name), err)) from None
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise MiniDockerError("%s: not a valid tar archive: %s" % (what, str(err) or
                                                                       "cut short")) from None
        finally:
            unpacker.forget()
            os.close(top)
        if plain.digest() != diff_id:
            raise MiniDockerError("%s: its uncompressed bytes are %s, where the image's config "
                                  "says %s: refused" % (what, plain.digest(), diff_id))
        link = "".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[b % 32] for b in os.urandom(LINK_LENGTH))
        write_file_atomically(os.path.join(temporary, "layer.json"),
                              to_json({"link": link, "size": unpacker.size}).encode(), 0o600)
        try:
            os.rename(temporary, final)
        except OSError as err:  # EEXIST, ENOTEMPTY: another pull unpacked it meanwhile
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            remove_tree(temporary)
    except BaseException:
        if os.path.lexists(temporary):
            remove_tree(temporary)
        raise
    return ensure_layer_link(paths, diff_id)


def ensure_layer_link(paths, diff_id):
    """A layer's layer.json, and its short link in l/ (made after the
    rename, so that no link names a layer that lost a race)."""
    info = parse_json_object(read_store_file(os.path.join(layer_path(paths, diff_id),
                                                          "layer.json"), "layer.json"),
                             "layer %s" % diff_id)
    links = os.path.join(paths.images, "l")
    os.makedirs(links, 0o700, exist_ok=True)
    with suppress(FileExistsError):  # an earlier pull or load made it
        os.symlink(os.path.join("..", "layers", diff_id[len("sha256:"):], "diff"),
                   os.path.join(links, info["link"]))
    return info


# === 5. (continued) Image records, tags, and load ===
# An image's id is its config's digest, as
# Docker's is. A tag names one image; moving it to a newer image leaves the
# older one untagged (<none>) until `rmi` or `image prune`. Changes to
# tags.json, and removals, are made under one lock, and `rmi` takes it
# before it looks at which containers use an image.

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
OCI_MANIFEST, OCI_INDEX = MANIFEST_TYPES[0], INDEX_TYPES[0]
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_TYPES = (OCI_LAYER, OCI_LAYER + "+gzip", OCI_LAYER + "+zstd",
               "application/vnd.docker.image.rootfs.diff.tar.gzip",
               "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
               "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
          "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
          "riscv64": "riscv64"}


def host_platform():
    """linux/ARCH[/VARIANT] in Go's names, as registries list platforms."""
    machine = os.uname().machine
    arch = GOARCH.get(machine, machine)
    variant = {"aarch64": "v8", "armv7l": "v7", "armv6l": "v6"}.get(machine)
    return "linux/" + arch + ("/" + variant if variant else "")


def parse_platform(text):
    import re
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_]+", p) for p in parts):
        raise MiniDockerError("invalid --platform %s: expected OS/ARCH[/VARIANT], as "
                              "linux/amd64" % quote(text))
    return parts


def choose_manifest(index, platform, what):
    """The descriptor in an index (or Docker's manifest list) for the
    platform: the variant must match when both name one (arm64 images
    often omit v8)."""
    want = parse_platform(platform)
    found = []
    for descriptor in json_list(index.get("manifests")):
        if not isinstance(descriptor, dict):
            continue
        have = json_object(descriptor.get("platform"))
        if [have.get("os"), have.get("architecture")] == want[:2] and \
                (len(want) < 3 or have.get("variant") in (None, want[2])):
            found.append(descriptor)
    if not found:
        listed = sorted("%s/%s" % (json_object(d.get("platform")).get("os"),
                                   json_object(d.get("platform")).get("architecture"))
                        for d in json_list(index.get("manifests")) if isinstance(d, dict))
        raise MiniDockerError("%s has no image for %s (it has: %s)"
                              % (what, platform, ", ".join(listed) or "none"))
    return found[0]


def read_tags(paths):
    try:
        data = read_store_file(os.path.join(paths.images, "tags.json"), "tags.json")
    except FileNotFoundError:
        return {}
    return parse_json_object(data, os.path.join(paths.images, "tags.json"))


def write_tags(paths, tags):
    import json
    write_file_atomically(os.path.join(paths.images, "tags.json"),
                          json.dumps(tags, indent=1, sort_keys=True).encode(), 0o600)


def read_image(paths, image_id):
    return parse_json_object(read_store_file(image_path(paths, image_id), "image %s" % image_id),
                             "image %s" % image_id)


def read_images(paths):
    directory = os.path.join(paths.images, "images")
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [read_image(paths, "sha256:" + name[:-len(".json")]) for name in names
            if name.endswith(".json") and is_hex_id(name[:-len(".json")])]


def image_layers(manifest, config, what):
    """[(blob digest, media type, size, diff_id)] of a manifest, checked
    against its config's rootfs.diff_ids, one for one."""
    layers = manifest.get("layers")
    diff_ids = json_object(config.get("rootfs")).get("diff_ids")
    if not isinstance(layers, list) or not isinstance(diff_ids, list) or \
            len(layers) != len(diff_ids):
        raise MiniDockerError("%s: its manifest lists %s layers and its config %s diff_ids"
                              % (what, len(layers) if isinstance(layers, list) else "no",
                                 len(diff_ids) if isinstance(diff_ids, list) else "no"))
    result = []
    for layer, diff_id in zip(layers, diff_ids):
        if not isinstance(layer, dict) or layer.get("mediaType", OCI_LAYER) not in LAYER_TYPES:
            raise MiniDockerError("%s: layer media type %s is not one minidocker reads"
                                  % (what, quote(str(isinstance(layer, dict) and
                                                     layer.get("mediaType")))))
        size = layer.get("size")
        if not isinstance(size, int) or size < 0:
            raise MiniDockerError("%s: a layer without a valid size" % what)
        result.append((check_digest(layer.get("digest"), what), layer.get("mediaType", OCI_LAYER),
                       size, check_digest(diff_id, what)))
    return result


def store_image(paths, manifest_digest, config_digest, layers, unpacked, names, digests=()):
    """Write the image's record and point `names` (full references) at it.
    `unpacked`: each layer's layer.json. The record keeps what a run needs
    (the config's run-time part, the layers' short links), so that `run
    IMAGE` reads one file besides tags.json. Returns the image id."""
    config = parse_json_object(read_blob(paths, config_digest, "config"), "config")
    record = {"id": config_digest, "manifest": manifest_digest,
              "layers": [{"digest": d, "mediaType": t, "size": s, "diff_id": i, "link": u["link"]}
                         for (d, t, s, i), u in zip(layers, unpacked)],
              "config": config.get("config") or {},
              "size": sum(u["size"] for u in unpacked), "created": config.get("created") or "",
              "architecture": config.get("architecture") or "", "os": config.get("os") or "",
              "digests": list(digests), "stored": time.time()}
    os.makedirs(os.path.dirname(image_path(paths, config_digest)), 0o700, exist_ok=True)
    with state_lock(paths, "images.lock"):
        # (no earlier record, or an unreadable one, to merge digests from)
        with suppress(FileNotFoundError, MiniDockerError):
            record["digests"] = sorted(set(read_image(paths, config_digest)["digests"]) |
                                       set(digests))
        write_file_atomically(image_path(paths, config_digest), to_json(record).encode(),
                              0o600)
        if names:
            tags = read_tags(paths)
            tags.update((name, config_digest) for name in names)
            write_tags(paths, tags)
    return config_digest


def image_config(paths, record):
    return parse_json_object(read_blob(paths, record["id"], "config of %s" % record["id"]),
                             "config of %s" % record["id"])


def find_image(paths, text):
    """An image by reference (a tag, or NAME@DIGEST) or by id (a prefix of
    its hex, with or without sha256:). None when there is none."""
    tags = read_tags(paths)
    try:
        ref = parse_reference(text)
    except MiniDockerError:
        ref = None
    if ref is not None and ref.digest is None and str(ref) in tags:
        return read_image(paths, tags[str(ref)])
    if ref is not None and ref.digest:
        # An index's digest names one image per platform pulled: this
        # host's first.
        wanted = "%s@%s" % (ref.name, ref.digest)
        found = [record for record in read_images(paths) if wanted in record["digests"]]
        arch = host_platform().split("/")[1]
        found.sort(key=lambda record: record["architecture"] != arch)
        return found[0] if found else None
    prefix = text[len("sha256:"):] if text.startswith("sha256:") else text
    if not 0 < len(prefix) <= 64 or prefix.strip("0123456789abcdef"):
        return None
    found = [r for r in read_images(paths) if r["id"][7:].startswith(prefix)]
    if len(found) > 1:
        raise MiniDockerError("image id prefix %s is ambiguous: it matches %d images"
                              % (quote(text), len(found)))
    return found[0] if found else None


def image_names(tags, image_id):
    return sorted(name for name, target in tags.items() if target == image_id)


def image_lower_dirs(paths, record):
    """The overlay's lower directories for an image: its layers' short
    links, top layer first, relative to lib/images (mount_overlay)."""
    links = []
    for layer in reversed(record["layers"]):
        link = os.path.join("l", layer["link"])
        if not os.path.isdir(os.path.join(paths.images, link)):
            raise MiniDockerError("image %s: its layer %s is missing from the store: pull or "
                                  "load it again" % (record["id"][7:19], layer["diff_id"]))
        links.append(link)
    return links


def remove_image(paths, record, tags):
    """An image's record and tags; its layers and blobs go with the next
    collect_garbage. Called under images.lock."""
    for name in image_names(tags, record["id"]):
        del tags[name]
    write_tags(paths, tags)
    os.unlink(image_path(paths, record["id"]))


# Blobs and layers no image names any more are removed by rmi and image
# prune, as containerd's garbage collector removes them. A pull or load
# stores blobs and layers before the record that names them, so it holds
# images.gc shared from its first blob to its record, and the collector
# takes it exclusive: it never sees a pull's blobs unnamed.

def collect_garbage(paths):
    records = read_images(paths)
    layers = {layer["diff_id"][7:] for r in records for layer in r["layers"]}
    blobs = {digest[7:] for r in records for digest in
             [r["id"], r["manifest"]] + [layer["digest"] for layer in r["layers"]]}
    for name in listdir_or_empty(os.path.join(paths.images, "layers")):
        if is_hex_id(name) and name not in layers:
            # (a half-made layer without its layer.json has no link)
            with suppress(FileNotFoundError, MiniDockerError, KeyError):
                link = ensure_layer_link(paths, "sha256:" + name)["link"]
                os.unlink(os.path.join(paths.images, "l", link))
            remove_tree(layer_path(paths, "sha256:" + name))
    for name in listdir_or_empty(os.path.dirname(blob_path(paths, "sha256:"))):
        if is_hex_id(name) and name not in blobs:
            with suppress(FileNotFoundError):
                os.unlink(blob_path(paths, "sha256:" + name))


def listdir_or_empty(path):
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def images_in_use(paths):
    """Image ids that containers' records name: their layers are some
    overlay's lower directories."""
    return {record.get("image_id") for record in read_records(paths)} - {None}


# Loading an archive. `docker save` writes manifest.json (the image's
# config and layer files, and its tags); an OCI image layout has
# index.json and blobs/sha256/ (skopeo's oci-archive, `docker save` since
# Docker 25, which writes both). The archive is read once, as a stream
# (it may be gzipped, or a pipe): every file goes into the blob store by
# its digest, then the manifests are read from there. A file under
# blobs/sha256/ must match its name.

def load_archive(paths, source, what):
    """Returns [(names, image id)] of the images loaded."""
    import tarfile
    import zlib
    members, links = {}, {}
    try:
        with open_tar(source, "r|*") as archive:
            for entry in tar_entries(archive):
                name = os.path.normpath(entry.name).lstrip("/")
                if entry.issym():
                    links[name] = os.path.normpath(os.path.join(os.path.dirname(name),
                                                                entry.linkname))
                elif entry.isreg():
                    expected = "sha256:" + name[len("blobs/sha256/"):] \
                        if name.startswith("blobs/sha256/") else None
                    if expected:
                        check_digest(expected, "%s: %s" % (what, name))
                    members[name] = store_blob(paths, archive.extractfile(entry),
                                               "%s: %s" % (what, name), expected, entry.size)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise MiniDockerError("%s: not a valid tar archive: %s" % (what, str(err) or
                                                                   "cut short")) from None
    except OSError as err:  # gzip's BadGzipFile is one; so is ENOSPC in the store
        raise MiniDockerError("%s: %s" % (what, err.strerror or err)) from None

    def member(name):
        name = links.get(name, name)
        if name not in members:
            raise MiniDockerError("%s: %s is not in the archive" % (what, quote(name)))
        return members[name]

    if "manifest.json" in members:
        return load_docker_save(paths, what, member)
    if "index.json" in members:
        return load_oci_layout(paths, what, member)
    raise MiniDockerError("%s: neither a docker save archive (manifest.json) nor an OCI "
                          "image layout (index.json)" % what)


def load_docker_save(paths, what, member):
    entries = parse_json(read_blob(paths, member("manifest.json"), what), what + ": manifest.json")
    if not isinstance(entries, list):
        raise MiniDockerError("%s: manifest.json is not a list" % what)
    loaded = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Layers"), list):
            raise MiniDockerError("%s: manifest.json has an entry without Config and Layers"
                                  % what)
        config_digest = member(str(entry.get("Config")))
        config = parse_json_object(read_blob(paths, config_digest, what), what)
        descriptors = []
        for layer in entry["Layers"]:
            digest = member(str(layer))
            with open(blob_path(paths, digest), "rb") as blob:
                gzipped = blob.read(2) == b"\x1f\x8b"
            descriptors.append({"mediaType": OCI_LAYER + ("+gzip" if gzipped else ""),
                                "digest": digest,
                                "size": os.stat(blob_path(paths, digest)).st_size})
        # The OCI manifest docker save leaves implicit, written so `save` can
        # write this image out again.
        manifest = to_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                                          "size": os.stat(blob_path(paths, config_digest)).st_size},
                               "layers": descriptors}).encode()
        manifest_digest = store_blob(paths, io_bytes(manifest), what)
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise MiniDockerError("%s: manifest.json: RepoTags is not a list of names" % what)
        names = [str(parse_reference(tag)) for tag in tags]
        loaded.append((names, install_image(paths, manifest_digest, config, config_digest,
                                            what, names)))
    return loaded


def load_oci_layout(paths, what, member):
    index = parse_json_object(read_blob(paths, member("index.json"), what), what + ": index.json")
    if not isinstance(index.get("manifests"), list):
        raise MiniDockerError("%s: index.json: its manifests are not a list" % what)
    loaded = []
    for descriptor in index["manifests"]:
        descriptor = json_object(descriptor)
        annotations = json_object(descriptor.get("annotations"))
        digest = check_digest(descriptor.get("digest"), what + ": index.json")
        manifest = parse_json_object(read_blob(paths, member("blobs/sha256/" + digest[7:]), what),
                                     what)
        if descriptor.get("mediaType") in INDEX_TYPES or manifest.get("mediaType") in INDEX_TYPES:
            digest = check_digest(choose_manifest(manifest, host_platform(), what)
                                  .get("digest"), what)
            manifest = parse_json_object(read_blob(paths, member("blobs/sha256/" + digest[7:]),
                                                   what), what)
        config_digest = check_digest(json_object(manifest.get("config")).get("digest"), what)
        config = parse_json_object(read_blob(paths, member("blobs/sha256/" +
                                                           config_digest[7:]), what), what)
        for layer in json_list(manifest.get("layers")):
            if isinstance(layer, dict):
                member("blobs/sha256/" + check_digest(layer.get("digest"), what)[7:])
        name = annotations.get("io.containerd.image.name") or \
            annotations.get("org.opencontainers.image.ref.name")
        names = []
        if isinstance(name, str) and ("/" in name or ":" in name):  # not only a tag
            names = [str(parse_reference(name))]
        loaded.append((names, install_image(paths, digest, config, config_digest, what, names)))
    return loaded


def io_bytes(data):
    import io
    return io.BytesIO(data)


def install_image(paths, manifest_digest, config, config_digest, what, names, digests=()):
    """Unpack the layers of a manifest whose blobs are stored, then record
    the image."""
    manifest = parse_json_object(read_blob(paths, manifest_digest, what), what)
    layers = image_layers(manifest, config, what)
    unpacked = [unpack_layer(paths, digest, diff_id, "%s: layer %s" % (what, digest))
                for digest, _, _, diff_id in layers]
    return store_image(paths, manifest_digest, config_digest, layers, unpacked, names, digests)


# === 5. (continued) Pulling: the registry's HTTP API, and save ===
# The Registry HTTP API v2 (the OCI distribution spec) is a handful of
# GETs: /v2/NAME/manifests/REF with an Accept header listing the manifest
# types we read (a registry converts nothing it is not asked for), then
# /v2/NAME/blobs/DIGEST for the config and each layer, which a registry may
# answer with a redirect to other storage. A registry that wants
# credentials answers 401 with WWW-Authenticate: `Basic realm=...`, or
# `Bearer realm=URL,service=S,scope=S`: then a token is fetched from URL
# (with the user's password, or anonymously) and sent as
# `Authorization: Bearer TOKEN`. Docker Hub works this way even for
# anonymous pulls.
#
# Plain http only for a registry on this host (localhost, 127.0.0.0/8)
# or one named by `pull --insecure-registry`, as Docker allows; everything
# else is https, checked against the system's CA bundle. Credentials go
# over https, or to a host allowed plain http; never elsewhere, and a
# redirect to another host does not take them along.

REGISTRY_HOSTS = {DOCKER_HUB: "registry-1.docker.io"}
PULL_THREADS = 3  # layers fetched at once, as Docker's max-concurrent-downloads


def plain_http_allowed(host, insecure):
    import re
    import ipaddress
    name = re.sub(r":[0-9]+$", "", host).strip("[]")
    if name == "localhost" or host in insecure or name in insecure:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Registry:
    """One registry's API, with the credentials and the token it granted."""

    def __init__(self, host, credentials=None, insecure=()):
        self.host = REGISTRY_HOSTS.get(host, host)
        self.insecure = insecure
        self.plain = plain_http_allowed(self.host, insecure)
        self.credentials = credentials   # (user, password) or None
        self.authorization = None        # the header the last challenge earned

    def connection(self, scheme, host):
        import http.client
        if scheme == "http":
            return http.client.HTTPConnection(host, timeout=60)
        import ssl
        return http.client.HTTPSConnection(host, timeout=60, context=ssl.create_default_context())

    def get(self, path, accept=(), what=""):
        """GET a path of the API: a 200 response, after one answered
        challenge and up to five redirects. The Authorization header goes
        to the registry alone, over the scheme it was earned on: a redirect
        to another host (Docker Hub sends blobs to a CDN), or to plain http,
        drops it; and a 401 from anywhere but the registry is not answered,
        or the user's password would go to a token realm that the
        redirect's target names."""
        import http.client
        import urllib.parse
        origin = ("http" if self.plain else "https", self.host)
        for attempt in (1, 2):
            url = "%s://%s%s" % (origin + (path,))
            headers = {"User-Agent": "minidocker/" + VERSION}
            if accept:
                headers["Accept"] = ", ".join(accept)
            if self.authorization:
                headers["Authorization"] = self.authorization
            for _ in range(6):
                parts = urllib.parse.urlsplit(url)
                if (parts.scheme, parts.netloc) != origin:
                    headers.pop("Authorization", None)
                target = parts.path + ("?" + parts.query if parts.query else "")
                try:
                    connection = self.connection(parts.scheme, parts.netloc)
                    connection.request("GET", target, headers=headers)
                    response = connection.getresponse()
                except OSError as err:
                    raise MiniDockerError("%s: %s: %s" % (what, url, err)) from None
                except (http.client.HTTPException, ValueError) as err:
                    raise http_error(what, url, err) from None
                if response.status not in (301, 302, 303, 307, 308):
                    break
                response.close()
                url = urllib.parse.urljoin(url, response.getheader("Location") or "")
                if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                    raise MiniDockerError("%s: redirected to %s" % (what, quote(url)))
            if response.status == 401 and (parts.scheme, parts.netloc) != origin:
                response.close()
                raise MiniDockerError("%s: %s answered 401 after a redirect from %s: credentials "
                                      "go to the registry only" % (what, parts.netloc, self.host))
            if response.status == 401 and attempt == 1:
                challenge = response.getheader("WWW-Authenticate") or ""
                response.close()
                self.authorization = self.answer(challenge, what)
                continue
            if response.status != 200:
                body = response.read(4096).decode("utf-8", "replace")
                response.close()
                hint = " (give credentials with --username and --password-stdin, or " \
                    "MINIDOCKER_AUTH)" if response.status == 401 and not self.credentials else ""
                raise MiniDockerError("%s: %s answered %d %s%s%s" % (
                    what, parts.netloc, response.status, response.reason,
                    registry_error_text(body), hint))
            return response

    def answer(self, challenge, what):
        """The Authorization header a 401's challenge asks for."""
        import re
        import base64
        kind, _, rest = challenge.partition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        basic = self.credentials and "Basic " + base64.b64encode(
            ("%s:%s" % self.credentials).encode()).decode()
        if kind.lower() == "basic":
            if not basic:
                raise MiniDockerError("%s: %s wants a user name and password: give them with "
                                      "--username and --password-stdin, or MINIDOCKER_AUTH"
                                      % (what, self.host))
            return basic
        if kind.lower() != "bearer" or "realm" not in fields:
            raise MiniDockerError("%s: %s asks for authentication minidocker does not speak: %s"
                                  % (what, self.host, quote(challenge)))
        return "Bearer " + self.token(fields, basic, what)

    def token(self, fields, basic, what):
        import re
        import http.client
        import urllib.parse
        realm = urllib.parse.urlsplit(fields["realm"])
        if realm.scheme not in ("http", "https") or not realm.netloc:
            raise MiniDockerError("%s: the token realm %s is not an http(s) URL"
                                  % (what, quote(fields["realm"])))
        # The password crosses the network to the realm: in plain http only
        # to a host allowed it, or to the registry's own host when the
        # registry itself is spoken to in plain http.
        if realm.scheme == "http" and not plain_http_allowed(realm.netloc, self.insecure) and \
                not (self.plain and realm.hostname == urllib.parse.urlsplit(
                    "//" + self.host).hostname):
            raise MiniDockerError("%s: the token realm %s is plain http: refused"
                                  % (what, quote(fields["realm"])))
        query = urllib.parse.urlencode([(key, fields[key]) for key in ("service", "scope")
                                        if key in fields])
        headers = {"User-Agent": "minidocker/" + VERSION}
        if basic:
            headers["Authorization"] = basic
        path = realm.path + "?" + "&".join(filter(None, (realm.query, query)))
        try:
            connection = self.connection(realm.scheme, realm.netloc)
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read(IMAGE_JSON_LIMIT)
        except OSError as err:
            raise MiniDockerError("%s: token from %s: %s" % (what, fields["realm"], err)) from None
        except (http.client.HTTPException, ValueError) as err:
            raise http_error(what, "token from " + fields["realm"], err) from None
        if response.status != 200:
            raise MiniDockerError("%s: the token service %s answered %d %s%s" % (
                what, realm.netloc, response.status, response.reason,
                registry_error_text(body.decode("utf-8", "replace"))))
        grant = parse_json_object(body, "%s: the token service's answer" % what)
        token = grant.get("token") or grant.get("access_token")
        if not isinstance(token, str) or not token:
            raise MiniDockerError("%s: the token service granted no token" % what)
        if not re.fullmatch(r"[\x21-\x7e]+", token):  # it goes into a header: no line break
            raise MiniDockerError("%s: the token service granted a token that is not one (a "
                                  "character outside printable ASCII)" % what)
        return token

    def manifest(self, repository, reference, what):
        """(bytes, media type, digest) of a manifest or index."""
        import hashlib
        import http.client
        response = self.get("/v2/%s/manifests/%s" % (repository, reference),
                            MANIFEST_TYPES + INDEX_TYPES, what)
        try:
            data = response.read(IMAGE_JSON_LIMIT + 1)
        except http.client.HTTPException as err:
            raise http_error(what, "manifest " + reference, err) from None
        finally:
            response.close()
        if len(data) > IMAGE_JSON_LIMIT:
            raise MiniDockerError("%s: a manifest over %d bytes: refused" % (what, IMAGE_JSON_LIMIT))
        kind = (response.getheader("Content-Type") or "").split(";")[0].strip()
        body = parse_json_object(data, what + ": manifest")
        kind = body.get("mediaType") or kind
        if body.get("schemaVersion") == 1:
            raise MiniDockerError("%s: a schema 1 manifest, which registries have not served "
                                  "since 2019: not supported" % what)
        return data, kind, "sha256:" + hashlib.sha256(data).hexdigest()


def http_error(what, where, err):
    """http.client's own exceptions: an answer that is not HTTP
    (BadStatusLine, LineTooLong), a body cut short (IncompleteRead), a
    Location that is no URL (InvalidURL, or ValueError: not ASCII)."""
    return MiniDockerError("%s: %s: %s %s" % (what, where, type(err).__name__, quote(str(err))))


def registry_error_text(body):
    """The `errors` a registry explains a refusal with, in one short phrase."""
    try:
        errors = from_json(body).get("errors") or []
        return ": " + "; ".join("%s %s" % (e.get("code", ""), e.get("message", ""))
                                for e in errors[:3])
    except (ValueError, AttributeError, TypeError, RecursionError):
        return ""


class PullProgress:
    """On a terminal, one line per layer (as docker pull draws them), each
    redrawn in place: bytes, total and rate. On a pipe, nothing."""

    def __init__(self, layers, out):
        import threading
        self.out = out
        self.on = out.isatty()
        self.lines = [digest[7:19] + ": waiting" for digest, _, _, _ in layers]
        self.lock = threading.Lock()
        if self.on:
            out.write("".join(line + "\n" for line in self.lines))
            out.flush()

    def update(self, index, text):
        if not self.on:
            return
        with self.lock:
            self.lines[index] = self.lines[index][:12] + ": " + text
            up = len(self.lines) - index
            self.out.write("\x1b[%dA\r\x1b[2K%s\x1b[%dB\r" % (up, self.lines[index], up))
            self.out.flush()

    def counter(self, index, total):
        started = time.monotonic()  # (a layer may wait its turn behind the others)

        def progress(done):
            rate = done / max(time.monotonic() - started, 1e-3)
            self.update(index, "downloading %s / %s (%s/s)"
                        % (human_size(done), human_size(total), human_size(rate)))
        return progress


def pull_image(paths, ref, platform, credentials, insecure, out):
    """Fetch an image's manifest, config and missing layers, unpack each
    layer once, record and tag it. Returns (image id, manifest digest)."""
    import concurrent.futures
    what = "pull %s" % ref
    registry = Registry(ref.registry, credentials, insecure)
    data, kind, digest = registry.manifest(ref.repository, ref.digest or ref.tag, what)
    if ref.digest and digest != ref.digest:
        raise MiniDockerError("%s: the registry sent a manifest whose digest is %s" % (what, digest))
    pinned = digest
    if kind in INDEX_TYPES or "manifests" in parse_json_object(data, what):
        chosen = choose_manifest(parse_json_object(data, what), platform, what)
        wanted = check_digest(chosen.get("digest"), what)
        data, kind, digest = registry.manifest(ref.repository, wanted, what)
        if digest != wanted:
            raise MiniDockerError("%s: the registry sent a manifest whose digest is %s, not %s"
                                  % (what, digest, wanted))
    manifest = parse_json_object(data, what)
    config_descriptor = json_object(manifest.get("config"))
    config_digest = check_digest(config_descriptor.get("digest"), what + ": config")
    size = config_descriptor.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise MiniDockerError("%s: config: its descriptor's size is not a number" % what)
    if not os.path.exists(blob_path(paths, config_digest)):
        # Read into memory later: at most IMAGE_JSON_LIMIT, whatever its
        # descriptor says (or when it says nothing).
        fetch_blob(paths, registry, ref.repository, config_digest, what + ": config", size,
                   limit=IMAGE_JSON_LIMIT)
    config = parse_json_object(read_blob(paths, config_digest, what), what + ": config")
    layers = image_layers(manifest, config, what)
    progress = PullProgress(layers, out)

    def fetch(index):
        digest, _, size, diff_id = layers[index]
        layer_what = "%s: layer %s" % (what, digest)
        if not os.path.isdir(layer_path(paths, diff_id)):
            if not os.path.exists(blob_path(paths, digest)):
                fetch_blob(paths, registry, ref.repository, digest, layer_what, size,
                           progress=progress.counter(index, size))
            progress.update(index, "unpacking")
        done = unpack_layer(paths, digest, diff_id, layer_what)
        progress.update(index, "pull complete")
        return done

    with concurrent.futures.ThreadPoolExecutor(PULL_THREADS) as pool:
        unpacked = list(pool.map(fetch, range(len(layers))))
    store_blob(paths, io_bytes(data), what + ": manifest", digest)
    names = [str(ref)] if ref.tag else []
    image_id = store_image(paths, digest, config_digest, layers, unpacked, names,
                           ["%s@%s" % (ref.name, pinned)])
    return image_id, pinned


def fetch_blob(paths, registry, repository, digest, what, size, progress=None, limit=None):
    """A blob of the registry into the store, checked as it streams in."""
    import http.client
    response = registry.get("/v2/%s/blobs/%s" % (repository, digest), what=what)
    try:
        return store_blob(paths, response, what, digest, size, progress, limit)
    except http.client.HTTPException as err:  # IncompleteRead: cut short, or chunks that are not
        raise http_error(what, "blob " + digest, err) from None
    finally:
        response.close()


def image_for_run(args):
    """run IMAGE: the image, pulled first when --pull says so (missing: only
    when not stored); its config's run-time part; and the overlay's lower
    directories for its container."""
    if os.geteuid() != 0:
        raise MiniDockerError("an image's container for a user without root is not supported "
                              "yet: give a rootfs directory (mkrootfs)")
    paths = Paths()
    record = None if args.pull == "always" else find_image(paths, args.rootfs)
    if record is None:
        if args.pull == "never":
            raise MiniDockerError("no such image: %s (--pull never)" % quote(args.rootfs))
        ref = parse_reference(args.rootfs)
        with state_lock(paths, "images.gc", shared=True):
            image_id, _ = pull_image(paths, ref, args.platform or host_platform(),
                                     registry_credentials(args), (), sys.stderr)
        record = read_image(paths, image_id)
    if not record["layers"]:
        raise MiniDockerError("image %s has no layers: nothing to run" % quote(args.rootfs))
    what = "image %s" % quote(args.rootfs)
    return {"config": run_config(record["config"], what),
            "top": os.path.join(layer_path(paths, record["layers"][-1]["diff_id"]), "diff"),
            "run": {"name": args.rootfs, "id": record["id"], "store": paths.images,
                    "lower": image_lower_dirs(paths, record)}}


def run_config(fields, what):
    """The part of an image's config `run` applies (its `config` object),
    each field checked to be of the type the image spec gives it, and
    checked as the flag it stands in for would be, under the image's name
    (an image's User is no `--user` the caller gave)."""
    if not isinstance(fields, dict):
        raise MiniDockerError("%s: its config's config is not an object" % what)
    for key, kind in (("Entrypoint", list), ("Cmd", list), ("Env", list), ("WorkingDir", str),
                      ("User", str), ("ExposedPorts", dict), ("StopSignal", str),
                      ("Labels", dict)):
        value = fields.get(key)
        # A label's value is a string; an exposed port's is {} (and JSON's
        # keys are strings already).
        if value is not None and not isinstance(value, kind) or \
                kind is list and value and not all(isinstance(v, str) for v in value) or \
                key == "Labels" and value and not all(isinstance(v, str) for v in value.values()):
            raise MiniDockerError("%s: its config's %s is not a valid %s" % (
                what, key, "list of strings" if kind is list else
                "object of strings" if key == "Labels" else kind.__name__))
    for entry in fields.get("Env") or []:
        if "=" not in entry or entry.startswith("=") or "\0" in entry:  # execve's rules
            raise MiniDockerError("%s: its config's Env holds %s, not KEY=VALUE"
                                  % (what, quote(entry)))
    for key, check in (("User", lambda user: check_user(user, "--user")),
                       ("ExposedPorts", lambda ports: [parse_expose(port) for port in ports]),
                       ("StopSignal", lambda name: parse_stop_options(name, None))):
        try:
            if fields.get(key):
                check(fields[key])
        except MiniDockerError as err:
            raise MiniDockerError("%s: its config's %s: %s" % (what, key, err)) from None
    return fields


def registry_credentials(args):
    """--username with --password-stdin, or MINIDOCKER_AUTH=USER:PASSWORD."""
    username = getattr(args, "username", None)
    if username:
        if not getattr(args, "password_stdin", False):
            raise MiniDockerError("--username needs --password-stdin (a password on the "
                                  "command line would show in ps)")
        password = sys.stdin.readline().rstrip("\n")
        return username, password
    auth = os.environ.get("MINIDOCKER_AUTH")
    if auth:
        user, colon, password = auth.partition(":")
        if not colon or not user:
            raise MiniDockerError("MINIDOCKER_AUTH: expected USER:PASSWORD")
        return user, password
    return None


# Saving: the OCI image layout as a tar (what `docker save` writes since
# Docker 25), with Docker's manifest.json beside it so an older `docker
# load` reads it too. The blobs are written as stored: the same bytes, so
# the same digests as the registry's.

def save_images(paths, records, tags, out):
    import tarfile
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        def add(name, data=None, path=None):
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = 0, 0o644
            if path is not None:
                info.size = os.stat(path).st_size
                with open(path, "rb") as handle:
                    archive.addfile(info, handle)
            else:
                info.size = len(data)
                archive.addfile(info, io_bytes(data))
        index, docker, written = [], [], set()
        for record in records:
            names = image_names(tags, record["id"])
            for digest in [record["manifest"], record["id"]] + \
                    [layer["digest"] for layer in record["layers"]]:
                # A layer unpacked from another image's blob (the same
                # diff_id, compressed another way) was not fetched again.
                if not os.path.exists(blob_path(paths, digest)):
                    raise MiniDockerError("save: image %s: blob %s is not stored (its layer "
                                          "came with another image): pull or load it again"
                                          % (record["id"][7:19], digest))
            for digest in [record["manifest"], record["id"]] + \
                    [layer["digest"] for layer in record["layers"]]:
                if digest not in written:
                    written.add(digest)
                    add("blobs/sha256/" + digest[7:], path=blob_path(paths, digest))
            manifest = parse_json_object(read_blob(paths, record["manifest"], "save"), "save")
            kind = manifest.get("mediaType")  # a Docker registry's own type, as stored
            descriptor = {"mediaType": kind if kind in MANIFEST_TYPES else OCI_MANIFEST,
                          "digest": record["manifest"],
                          "size": os.stat(blob_path(paths, record["manifest"])).st_size}
            for name in names or [None]:
                annotations = {} if name is None else {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rpartition(":")[2]}
                index.append(dict(descriptor, annotations=annotations) if annotations
                             else descriptor)
            docker.append({"Config": "blobs/sha256/" + record["id"][7:],
                           "RepoTags": [familiar_name(n) for n in names],
                           "Layers": ["blobs/sha256/" + layer["digest"][7:]
                                      for layer in record["layers"]]})
        add("oci-layout", to_json({"imageLayoutVersion": "1.0.0"}).encode())
        add("index.json", to_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                      "manifests": index}).encode())
        add("manifest.json", to_json(docker).encode())


# === 6. Filesystem: overlay, mounts, /dev, masked paths, pivot_root ===
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
    path read-only, 'nodev' makes device nodes under a path unusable,
    'copy-up' fills an empty volume with what the image has at the path.
    kernel_fs targets must be real directories."""
    __slots__ = ("kind", "target", "source", "fstype", "flags", "data", "kernel_fs")

    def __init__(self, kind, target, source=None, fstype=None, flags=0, data=None,
                 kernel_fs=False):
        self.kind, self.target, self.source, self.fstype = kind, target, source, fstype
        self.flags, self.data, self.kernel_fs = flags, data, kernel_fs

    def __repr__(self):
        return "Mount(%s %s %s)" % (self.kind, self.fstype or self.source or "", self.target)


def plan_mounts(spec, etc_files=(), volumes=None):
    """The ordered list of mounts that turns the overlay into the container's
    root. `volumes`: the spec's with their host directories (Instance), by
    default the spec's own. Pure: the unit tests read it."""
    sys_flags = MS_NOSUID | MS_NOEXEC | MS_NODEV | (0 if spec.privileged else MS_RDONLY)
    volumes = spec.volumes if volumes is None else volumes
    # Copy-up first, from the bare root, as Docker copies from the image's
    # files: no /proc, /sys or other volume mounted yet, so an image's
    # `/data -> /proc/self` copies its own empty /proc, not the kernel's.
    plan = [Mount("copy-up", volume.target, volume.source) for volume in volumes
            if volume.name is not None and volume.copy]
    plan += [
        Mount("fs", "/proc", "proc", "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV, kernel_fs=True),
        Mount("fs", "/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_STRICTATIME,
              "mode=755,size=65536k", kernel_fs=True),
        # In a user namespace mknod(2) makes no device: the host's nodes are
        # bound instead, as runc does.
        Mount("devices", "/dev", data="bind" if spec.userns else None),
        # newinstance: a devpts of our own, so the container sees only its
        # own terminals; ptmxmode=0666 lets any user open /dev/ptmx in it;
        # gid=5 is the group `tty` of Debian's and Alpine's /etc/group, which
        # Docker and runc give the slaves too (where a user namespace maps it).
        Mount("fs", "/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620" + (",gid=5" if maps_id(spec.userns, "gid", 5)
                                                      else "")),
        *shm_mounts(spec),
        Mount("fs", "/dev/mqueue", "mqueue", "mqueue", MS_NOSUID | MS_NOEXEC | MS_NODEV),
        # A sysfs is mounted by the owner of the network namespace only: in
        # a user namespace on the host's network, the host's /sys is bound.
        Mount("bind", "/sys", "/sys", flags=MS_BIND | MS_REC | sys_flags)
        if spec.userns and spec.network_plan["mode"] == "host" else
        Mount("fs", "/sys", "sysfs", "sysfs", sys_flags, kernel_fs=True),
    ]
    for source, target in etc_files:  # (state file, /etc/...) bound over the image's
        # read-only with the root, as Docker binds them
        plan.append(Mount("bind", target, source,
                          flags=MS_BIND | (MS_RDONLY if spec.read_only else 0)))
    for volume in volumes:
        plan.append(Mount("bind", volume.target, volume.source,
                          flags=MS_BIND | MS_REC | (MS_RDONLY if volume.read_only else 0),
                          data="idmap" if volume.idmap else None))
        if not spec.privileged:
            plan.append(Mount("nodev", volume.target))
    for path, flags, data in spec.tmpfs:
        plan.append(Mount("fs", path, "tmpfs", "tmpfs", flags, data))
    if not spec.privileged:
        plan += [Mount("mask", path) for path in MASKED_PATHS]
        plan += [Mount("readonly", path, flags=MS_NOSUID | MS_NODEV | MS_NOEXEC)
                 for path in READONLY_PATHS]
    return plan


SHM_DEFAULT_SIZE = 64 << 20  # Docker's /dev/shm: 64m, mounted size=65536k


def parse_shm_size(text, ipc_mode):
    """--shm-size SIZE: /dev/shm's size (0: Docker's default 64m). With
    --ipc host the container's /dev/shm is the host's, whose size is the
    host's own."""
    if text is None:
        return SHM_DEFAULT_SIZE
    size = parse_size(text, "--shm-size") or SHM_DEFAULT_SIZE
    if ipc_mode == "host":
        raise MiniDockerError("conflicting options: --shm-size and --ipc host (the host's "
                              "/dev/shm keeps its own size)")
    return size


def shm_mounts(spec):
    """/dev/shm: a tmpfs of --shm-size bytes, the container's own, since
    its shared memory is the IPC namespace's; with --ipc host, the host's
    /dev/shm, bound (shm_open(3) names live there), as Docker binds it, and
    nodev as a volume is."""
    if spec.namespaces["ipc"] == "host":
        return [Mount("bind", "/dev/shm", "/dev/shm", flags=MS_BIND)] + \
            ([] if spec.privileged else [Mount("nodev", "/dev/shm")])
    return [Mount("fs", "/dev/shm", "shm", "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV,
                  "mode=1777,size=%d" % spec.shm_size)]


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
                    raise syscall_error(errno.ELOOP, "open %s in rootfs" % path)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts[:0] = [p for p in target.split("/") if p not in ("", ".")]
                continue
            if parts and not stat.S_ISDIR(os.fstat(fd).st_mode):
                os.close(fd)
                raise syscall_error(errno.ENOTDIR, "open %s in rootfs" % path)
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


def mount_overlay(spec, layer, lower=None, userxattr=False, base=None):
    """Mount the root: ROOTFS read-only below, layer/upper for writes. It is
    nodev (but under --privileged): a device node shipped in the image opens
    nothing through it. Volumes are made nodev the same way (apply_nodev), so
    nodes open in the fresh /dev tmpfs and in a `--tmpfs PATH:dev` only, and
    the device cgroup of chapter 8 decides which of those open. `lower`: in
    place of ROOTFS, ROOTFS as a user namespace's map shows it (chapter 7,
    continued). `userxattr`: mounted in a user's user namespace, where
    overlayfs keeps its own attributes as user.overlay.* (Linux 5.11):
    the trusted.* ones it uses by default are the host root's alone.
    `base`: the directory `lower`'s relative paths start from."""
    merged = os.path.join(layer, "merged")
    if spec.image and lower is None:
        # An image's layers, top first, by their short links relative to
        # the store (chapter 5, continued): the options fit in one page.
        lower, base = ":".join(spec.image["lower"]), spec.image["store"]
    here = None
    if base is not None:
        here = os.open(".", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        os.chdir(base)
    data = "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (lower or spec.rootfs, layer, layer)
    if userxattr:
        data += ",userxattr"
    try:
        mount("overlay", merged, "overlay", root_flags(spec), data, shown=merged)
    finally:
        if here is not None:
            os.fchdir(here)
            os.close(here)
    return os.open(merged, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def root_flags(spec):
    return 0 if spec.privileged or spec.bundle is not None else MS_NODEV


def mount_plan_of(spec, instance):
    """The plan build_root carries out: `run`'s (plan_mounts), or a bundle's."""
    if spec.bundle is not None:
        return spec.mount_plan
    return plan_mounts(spec, instance.etc_files, instance.volumes)


def bind_root(rootfs):
    """A bundle's root: its directory bound onto itself, so that it is a
    mount, which pivot_root(2) needs of the new root.

    pivot_root(2) fails with EINVAL when the new root or the mount it sits
    on is shared, and a config's rootfsPropagation "shared" or "rshared"
    (or "private", which leaves the mounts below "/" as the host shares
    them) keeps the mount that holds the bundle shared: that mount is made
    private first, in this namespace alone, as runc does. The bind then
    starts out private too, so nothing mounted in the root can reach the
    host's copy of that mount."""
    holder = shared_mount_holding(read_text("/proc/self/mountinfo"), os.path.realpath(rootfs))
    if holder is not None:
        mount(None, holder, None, MS_PRIVATE, shown=holder + " (private, under the root)")
    mount(rootfs, rootfs, None, MS_BIND | MS_REC, shown=rootfs)
    return os.open(rootfs, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def apply_mounts(rootfd, plan):
    for step in plan:
        if step.kind == "devices":
            populate_dev(rootfd, bind=step.data == "bind")
        elif step.kind == "nodev":
            apply_nodev(rootfd, step.target)
        elif step.kind == "copy-up":
            copy_up(rootfd, step.target, step.source)
        elif step.kind in ("mask", "readonly"):
            apply_protection(rootfd, step)
        elif step.kind != "cgroup":  # the cgroup view: build_root and child_stage
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
        if step.kind == "bind" and isinstance(step.data, int):  # stage 1's copy (chapter 7)
            move_mount(step.data, fd, step.target)
        elif step.kind == "bind":
            mount(step.source, fd_path(fd), None, MS_BIND | step.flags & MS_REC,
                  shown=step.target)
        else:
            mount(step.source, fd_path(fd), step.fstype,
                  step.flags & ~(MS_PROPAGATION | MS_REC), step.data, shown=step.target)
    finally:
        os.close(fd)
    # A bind takes its other flags from a second call, a remount, which
    # must name the new mount (so the path is opened again), as must a
    # change of propagation (a bundle's "rshared" and the like).
    others = step.flags & ~(MS_BIND | MS_REC | MS_PROPAGATION)
    if step.kind == "bind" and others & MS_RDONLY:
        remount_read_only(rootfd, step.target, others & ~MS_RDONLY,
                          recursive=bool(step.flags & MS_REC), follow=True)
    elif step.kind == "bind" and others:
        set_mount_flags(rootfd, step.target, MS_BIND | MS_REMOUNT | others)
    if step.flags & MS_PROPAGATION:
        set_mount_flags(rootfd, step.target, step.flags & (MS_PROPAGATION | MS_REC))


def set_mount_flags(rootfd, target, flags):
    fd = open_in_root(rootfd, target, follow=True)
    try:
        mount(None, fd_path(fd), None, flags, shown=target)
    finally:
        os.close(fd)


def apply_protection(rootfd, step):
    """Mask: the container's /dev/null (as runc binds it; the host's where
    the container has none) over a file, an empty read-only tmpfs over a
    directory. Read-only: bind the path onto itself and remount it
    read-only, with the step's flags and the mount's own. A path this
    kernel does not have is skipped (ENOENT)."""
    try:
        fd = open_in_root(rootfd, step.target, follow=False)
    except FileNotFoundError:
        return
    try:
        here = fd_path(fd)
        if step.kind == "readonly":
            mount(here, here, None, MS_BIND | MS_REC, shown=step.target)
            remount_read_only(rootfd, step.target, step.flags)
        elif stat.S_ISDIR(os.fstat(fd).st_mode):
            mount("tmpfs", here, "tmpfs", MS_RDONLY, "size=0", shown=step.target)
        else:
            null = container_null(rootfd)
            try:
                mount(fd_path(null) if null is not None else "/dev/null", here, None, MS_BIND,
                      shown=step.target)
            finally:
                if null is not None:
                    os.close(null)
    finally:
        os.close(fd)


def container_null(rootfd):
    """The container's /dev/null, opened (O_PATH), if it is the null device
    (c 1:3) and not a symlink; else None."""
    try:
        fd = open_in_root(rootfd, "/dev/null", follow=False)
    except OSError:
        return None
    st = os.fstat(fd)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3):
        return fd
    os.close(fd)
    return None


def apply_nodev(rootfd, target):
    """A volume is bound with its submounts (MS_REC): nodev must reach them
    all, and leave each one's other flags (ro) as they are, which only
    mount_setattr(2) does. Before Linux 5.12 (ENOSYS) the volume's own
    mount is remounted nodev with the flags it has; its submounts keep
    their devices, and the device cgroup is the wall there. The path is
    resolved in the root as apply_mount resolved it, symlinks and all."""
    fd = open_in_root(rootfd, target)
    try:
        mount_setattr(fd, MOUNT_ATTR_NODEV, target)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
        kept = flags_of_mount(fd_path(fd), with_rdonly=True)
        mount(None, fd_path(fd), None, MS_BIND | MS_REMOUNT | MS_NODEV | kept, shown=target)
    finally:
        os.close(fd)

def copy_up(rootfd, target, data):
    """A volume first mounted empty is filled with what the image has at
    its path, as Docker does: the files, and the directory's own owner and
    mode, so that `-v db:/var/lib/db` starts with the image's database
    directory. The path is resolved inside the bare root, before anything
    is mounted on it (plan_mounts): an image's `/data -> /etc` is the
    image's /etc, never the host's, and nothing below it is followed
    (copy_tree). flock on the volume's
    directory: of two containers starting on one new volume, one copies
    and the other then finds it full."""
    try:
        found = open_in_root(rootfd, target)
    except (FileNotFoundError, NotADirectoryError):  # nothing there to copy
        return
    try:
        if not stat.S_ISDIR(os.fstat(found).st_mode):
            return
        source = os.open(fd_path(found), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.close(found)
    try:
        # (In a user namespace `data` is stage 1's handle, /proc/self/fd/N:
        # a link that must be followed.)
        volume = os.open(data, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC |
                         (0 if data.startswith("/proc/self/fd/") else os.O_NOFOLLOW))
        try:
            fcntl.flock(volume, fcntl.LOCK_EX)
            if not os.listdir(volume):
                copy_attributes(source, volume, os.fstat(source))
                copy_tree(source, volume)
        finally:
            os.close(volume)
    except OSError as err:
        raise MiniDockerError("volume at %s: copying the image's files into it: %s"
                              % (target, err))
    finally:
        os.close(source)


def copy_tree(source, destination, owner=None):
    """Copy the directory `source` into `destination` (two handles) with
    owners, modes, times and extended attributes. Without recursion: each
    level holds two handles, and its names are listed once. Every name is
    opened with O_NOFOLLOW in its parent's handle: a symlink is copied as
    a symlink, so `/data/x -> /etc/shadow` copies the link, not the host's
    file, and a link in the destination is never written through.
    `owner(st)`: the (uid, gid) a copy gets, by default the source's."""
    levels = [(os.dup(source), os.dup(destination), os.listdir(source), None)]
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        while levels:
            src, dst, names, st = levels[-1]
            if not names:  # done: its times last, as copying changed them
                levels.pop()
                if st is not None:
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.close(src)
                os.close(dst)
                continue
            name = names.pop()
            st = os.stat(name, dir_fd=src, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o700, dir_fd=dst)
                inner = os.open(name, flags, dir_fd=src)
                levels.append((inner, os.open(name, flags, dir_fd=dst), os.listdir(inner), st))
                copy_attributes(inner, levels[-1][1], st, owner)
            else:
                copy_entry(src, dst, name, st, owner)
    finally:
        for src, dst, _, _ in levels:
            os.close(src)
            os.close(dst)


def copy_entry(src, dst, name, st, owner=None):
    """One file, symlink, device node or FIFO (a socket is no content:
    skipped, as cp skips one it cannot open)."""
    if stat.S_ISREG(st.st_mode):
        # O_NONBLOCK, then the type checked on the handle: a file swapped for
        # a FIFO since the stat (by the owner of ROOTFS or of the volume)
        # would otherwise hold the open, and the run, forever.
        reader = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=src)
        try:
            if not stat.S_ISREG(os.fstat(reader).st_mode):
                raise OSError(errno.EBUSY, "%s changed while it was copied" % name)
            writer = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dst)
            try:
                while os.sendfile(writer, reader, None, 1 << 30):
                    pass
                copy_attributes(reader, writer, st, owner)
                os.utime(writer, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(writer)
        finally:
            os.close(reader)
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        os.mknod(name, st.st_mode, st.st_rdev, dir_fd=dst)  # the umask is 0 (build_root)
    else:
        return
    os.chown(name, *(owner(st) if owner else (st.st_uid, st.st_gid)), dir_fd=dst,
             follow_symlinks=False)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)


def copy_attributes(source, destination, st, owner=None):
    """Owner, then mode (chown(2) clears the set-id bits), then the
    extended attributes (a file capability too, which chown clears); one
    the volume's filesystem cannot keep (ENOTSUP) is left out."""
    os.fchown(destination, *(owner(st) if owner else (st.st_uid, st.st_gid)))
    os.fchmod(destination, stat.S_IMODE(st.st_mode))
    for key in os.listxattr(source):
        try:
            os.setxattr(destination, key, os.getxattr(source, key))
        except OSError as err:
            if err.errno != errno.ENOTSUP:
                raise


def flags_of_mount(path, with_rdonly=False):
    """The flags of the mount holding `path` that a bind remount must repeat,
    or it clears them (mount(2): MS_REMOUNT|MS_BIND sets exactly the flags
    given; only the atime ones are kept when none is given): a volume from
    a host mount that is nosuid or noexec stays so. statvfs(3)'s ST_*
    values are the MS_* ones."""
    wanted = MS_NOSUID | MS_NODEV | MS_NOEXEC | (MS_RDONLY if with_rdonly else 0)
    return os.statvfs(path).f_flag & wanted


def remount_read_only(rootfd, target, flags, recursive=False, follow=False):
    """A bind mount takes MS_RDONLY only from a second, remount call, and that
    call must name the new mount: a handle opened before the bind still
    points at the directory underneath, so the path is opened again.

    The remount changes one mount, not the ones below it: a `-v SRC:DST:ro`
    whose SRC holds another mount would leave that one writable. With
    `recursive`, the submounts are made read-only too: by mount_setattr(2)
    at once, or on an older kernel (ENOSYS) one by one from mountinfo.
    `follow`: the path is resolved as the bind resolved it, symlinks inside
    the root and all (a volume's target may pass through one)."""
    fd = open_in_root(rootfd, target, follow=follow)
    try:
        flags |= flags_of_mount(fd_path(fd))
        mount(None, fd_path(fd), None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags, shown=target)
        if recursive:
            try:
                mount_setattr(fd, MOUNT_ATTR_RDONLY, target)
            except OSError as err:
                if err.errno != errno.ENOSYS:
                    raise
                top = os.readlink(fd_path(fd))
                for point, kept in submounts(read_text("/proc/self/mountinfo"), top):
                    mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | kept,
                          shown=target + point[len(top):])
    finally:
        os.close(fd)


# The per-mount flags of mountinfo's sixth field that a remount must repeat
# (a bind remount resets the flags it is not given).
MOUNTINFO_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}


def mountinfo_path(field):
    """A path as mountinfo writes it, its octal escapes undone: the kernel
    writes a space, a tab, a newline and a backslash as \\040, \\011, \\012
    and \\134, so a backslash begins an escape and nothing else."""
    if "\\" not in field:
        return field
    first, *rest = field.split("\\")
    return first + "".join(chr(int(part[:3], 8)) + part[3:] for part in rest)


def submounts(mountinfo, top):
    """[(mount point, flags to keep)] of the mounts strictly below `top`,
    from /proc/self/mountinfo's text (octal escapes such as \\040 undone)."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        point = mountinfo_path(fields[4])
        if point.startswith(top.rstrip("/") + "/"):
            kept = 0
            for option in fields[5].split(","):
                kept |= MOUNTINFO_FLAGS.get(option, 0)
            found.append((point, kept))
    return found


def shared_mount_holding(mountinfo, path):
    """The mount point of the mount a lookup of `path` lands in (of those
    mounted on the same point, the last), if that mount is shared (an
    optional field "shared:N" in mountinfo's seventh field on); else None."""
    holder, tags = None, []
    for line in mountinfo.splitlines():
        fields = line.split()
        point = mountinfo_path(fields[4])
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if holder is None or len(point) >= len(holder):
                holder, tags = point, fields[6:fields.index("-")]
    return holder if any(tag.startswith("shared:") for tag in tags) else None


def populate_dev(rootfd, bind=False):
    """Fill the fresh /dev tmpfs: the six harmless devices, the /dev/fd and
    std* links, and mount points for pts, shm and mqueue. No host device is
    reachable: there is no node for one. With `bind` (a user namespace),
    the host's six nodes are bound in place of new ones."""
    devfd = open_in_root(rootfd, "/dev", follow=False)
    try:
        for name, major, minor in DEVICES:
            if bind:
                bind_host_node(devfd, name, "/dev/" + name, stat.S_IFCHR,
                               os.makedev(major, minor))
            else:
                os.mknod(name, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=devfd)
        for name, target in DEV_LINKS:
            os.symlink(target, name, dir_fd=devfd)
        for name in ("pts", "shm", "mqueue"):
            os.mkdir(name, 0o755, dir_fd=devfd)
    finally:
        os.close(devfd)


def bind_host_node(dirfd, name, host_path, kind, rdev):
    """A user namespace's device node: mknod(2) makes none there, and a
    filesystem mounted in it opens none (SB_I_NODEV), so an empty file at
    `name` gets the host's node bound onto it, as runc does. The host's
    node must be the one named, of type `kind` (S_IFCHR, S_IFBLK) and
    numbers `rdev`: the device cgroup allows those, and whatever else
    sits at that path of the host (another device, a file, a link a user
    left in /dev/shm) would be bound in their place. So it is opened
    once, checked, and bound through that handle."""
    node = os.open(host_path, O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(node)
        if stat.S_IFMT(st.st_mode) != kind or st.st_rdev != rdev:
            raise MiniDockerError("device %s: the host's %s is %s, not the %s named: in a user "
                                  "namespace the host's node is bound" % (
                                      host_path, host_path, node_name(st.st_mode, st.st_rdev),
                                      node_name(kind, rdev)))
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o666, dir_fd=dirfd))
        mount(fd_path(node), "%s/%s" % (fd_path(dirfd), name), None, MS_BIND, shown=host_path)
    finally:
        os.close(node)


def node_name(mode, rdev):
    """"c 1:3", "b 8:0"; what is no device node, by its type."""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "%s %d:%d" % ("c" if stat.S_ISCHR(mode) else "b", os.major(rdev), os.minor(rdev))
    return "a directory" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else \
        "no device node"


def make_devices(rootfd, devices, bind=False):
    """--device: each node at its path in the container's /dev (making the
    directories on the way, as for /dev/net/tun), with the host node's type,
    numbers, mode and owner; with `bind` (a user namespace), the host's node
    bound there. Whether it opens is the device cgroup's say."""
    for device in devices:
        try:
            parent = open_in_root(rootfd, os.path.dirname(device.path), create="dir",
                                  follow=False)
        except OSError as err:
            raise MiniDockerError("--device %s: %s" % (device.path, err.strerror))
        name = os.path.basename(device.path)
        try:
            if bind and not stat.S_ISFIFO(device.mode):
                bind_host_node(parent, name, device.host or device.path,
                               stat.S_IFMT(device.mode), device.rdev)
            else:
                os.mknod(name, device.mode, device.rdev, dir_fd=parent)
                os.chown(name, device.uid, device.gid, dir_fd=parent, follow_symlinks=False)
        except OSError as err:
            raise MiniDockerError("--device %s: mknod: %s" % (device.path, err.strerror))
        finally:
            os.close(parent)


# What --privileged leaves out of the host's /dev, as Docker does
# (containerd's HostDevices): the host's console, and the directories that
# are mounts of their own in a container or belong to other runtimes
# (pts: the host's terminals; shm, mqueue; fd is a symlink). Symlinks and
# FIFOs are no devices and are left out too.
HOST_DEV_SKIPPED = {"console"}
HOST_DEV_SKIPPED_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}


def host_devices(top="/dev", below=""):
    """The host's device nodes under /dev, subdirectories too (net/tun,
    cpu/0/msr, mapper/control), as [(path under /dev, stat result)]."""
    found = []
    with os.scandir(os.path.join(top, below)) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            name = os.path.join(below, entry.name)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) and entry.name not in HOST_DEV_SKIPPED_DIRS:
                found += host_devices(top, name)
            elif (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) \
                    and entry.name not in HOST_DEV_SKIPPED:
                found.append((name, st))
    return found


def add_host_devices(rootfd):
    """--privileged: also the host's device nodes, at the same paths and
    with the same owners, as `docker run --privileged` gives; the
    container's own (null, tty, the devpts's ptmx) are kept."""
    dirs = {}
    try:
        for name, st in host_devices():
            parent = os.path.dirname(name)
            if parent not in dirs:
                dirs[parent] = open_in_root(rootfd, "/dev/" + parent, create="dir", follow=False)
            base = os.path.basename(name)
            if os.path.lexists("/proc/self/fd/%d/%s" % (dirs[parent], base)):
                continue
            os.mknod(base, st.st_mode, st.st_rdev, dir_fd=dirs[parent])
            os.chown(base, st.st_uid, st.st_gid, dir_fd=dirs[parent], follow_symlinks=False)
    finally:
        for fd in dirs.values():
            os.close(fd)


def enter_root(rootfd, read_only, flags):
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
        # A bind remount sets the mount's flags to exactly those given: the
        # root's own (nodev) must be given again.
        mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags, shown="/ (--read-only)")


# === 7. Namespaces, and the loopback of a new network namespace ===
# The parent unshares the pid namespace for its children only (unshare(2):
# CLONE_NEWPID applies to the next child), so the one child it forks is pid 1
# there. The child unshares the rest itself, which keeps minidocker's own
# process in the host's namespaces, where cgroups and networking are set up.
# The cgroup namespace is unshared last, after the child has joined its
# cgroup, so that the container sees that cgroup as its root. --pid, --ipc,
# --uts and --cgroupns host leave one of them out: the container shares the
# host's, as --network host shares its network.

CHILD_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET

# --pid, --ipc, --uts and --cgroupns: "private" (a namespace of the
# container's own) or "host" (the host's, shared: no new one is made).
#
# The cgroup namespace is private by default on every host. Docker's
# default is the host's on cgroup v1 and hybrid hosts (its daemon's
# DefaultCgroupV1NamespaceMode) and private on cgroup2-only ones; but
# Docker leans on AppArmor there, whose profile forbids mount(2), and
# minidocker has no LSM: in the host's cgroup namespace a container given
# CAP_SYS_ADMIN mounts a v1 hierarchy at its root and writes the
# release_agent the kernel runs as host root (CVE-2022-0492), or mounts
# cgroup2 and moves itself out of its limits and its device cgroup. For
# the same reason --cgroupns host is refused with CAP_SYS_ADMIN, unless
# --privileged (which hands over the host anyway).
NAMESPACE_DEFAULTS = {"pid": "private", "ipc": "private", "uts": "private", "cgroup": "private"}
NAMESPACE_FLAGS = (("pid", "--pid"), ("ipc", "--ipc"), ("uts", "--uts"), ("cgroup", "--cgroupns"))


def parse_namespace_modes(args, caps):
    """--pid, --ipc, --uts, --cgroupns -> {kind: "private" or "host"};
    `caps`: the capabilities the container keeps."""
    modes = dict(NAMESPACE_DEFAULTS)
    for kind, flag in NAMESPACE_FLAGS:
        text = getattr(args, kind + "_mode")
        # Docker's own words for a private one: "" (the default), and for
        # IPC "private" and "shareable" (ours can be joined by exec only).
        if text in ("host", "private") or text == "shareable" and kind == "ipc":
            modes[kind] = "host" if text == "host" else "private"
        elif text is not None:
            raise MiniDockerError("invalid %s %s: expected host or private%s" % (
                flag, quote(text), " (sharing another container's is not supported)"
                if text.startswith("container:") else ""))
    if modes["cgroup"] == "host" and cap_number("SYS_ADMIN") in caps and not args.privileged:
        raise MiniDockerError("--cgroupns host and CAP_SYS_ADMIN conflict: with both, the "
                              "container could mount the host's cgroup hierarchies and write "
                              "their release_agent (CVE-2022-0492) or leave its limits")
    return modes


def child_namespaces(spec):
    """What the child unshares: CHILD_NAMESPACES but those shared with the
    host or joined (the pid namespace is the parent's to make:
    start_container)."""
    flags = CHILD_NAMESPACES
    for kind, flag in (("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS)):
        if spec.namespaces[kind] != "private":
            flags &= ~flag
    return flags & ~CLONE_NEWNET if spec.network_plan["mode"] == "host" else flags


NAMESPACE_TYPES = {"pid": CLONE_NEWPID, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS,
                   "cgroup": CLONE_NEWCGROUP, "net": CLONE_NEWNET}


def join_namespaces(spec, kinds):
    """A bundle's namespaces given by path (a /proc/PID/ns/KIND or a file
    bound from one, as `ip netns add` makes): joined with setns(2), which
    checks that the file is a namespace of that kind."""
    for kind in kinds:
        mode = spec.namespaces[kind]
        if mode not in ("host", "private"):
            join_namespace(mode, NAMESPACE_TYPES[kind], kind)


def join_namespace(path, nstype, kind):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise MiniDockerError("the %s namespace at %s: %s" % (kind, path, err.strerror))
    try:
        setns(fd, nstype, "the %s namespace at %s" % (kind, path))
    finally:
        os.close(fd)


# === 7. (continued) The user namespace: root inside, another uid outside ===
# Without a user namespace, root in the container is the host's root, held
# back by capabilities, masks and seccomp alone: one kernel bug from the
# host. With --userns auto, --uidmap or --gidmap the container gets one of
# its own, whose ids are a range of the host's: container root is, say,
# host uid 2147614720, which owns nothing on the host, and its capabilities
# count only for what its namespaces own (its mounts, network, IPC, host
# name). --userns auto takes the lowest free range of the ids /etc/subuid
# and /etc/subgid give the user "containers" (podman's convention; a range
# is added on first use): free of every other container's, running or not
# (a stopped one's layer is owned by its ids), and of every id that
# another user's line grants.
#
# Every namespace belongs to the user namespace its maker was in, and only
# root there may mount proc for a pid namespace or sysfs for a network one
# (user_namespaces(7)). So the user namespace comes first and the others,
# the pid namespace too, are made inside it, which takes one more process
# than chapter 11's two:
#
#   md:[0:PARENT]  a child subreaper; forks stage 1 and unshares nothing
#   md:[1:USERNS]  host root, in a mount namespace of its own: makes the
#                  user namespace and the overlay as its map shows ROOTFS,
#                  opens what the init takes from the host, then enters the
#                  user namespace as its root, unshares the pid namespace,
#                  forks the init there, tells the parent its pid and ends
#   md:[1:CHILD]   the init, once the parent has adopted it: chapter 11's
#   md:[2:INIT]    stages, inside the user namespace, which owns all they make
#
# Stage 1 is host root for what the init could not do: idmap ROOTFS and
# mount the overlay (the host's root's to do), and reach the state
# directories (0700, host root's, an id the map leaves out). It hands each
# mount over as a detached copy (open_host_sources), which the init
# attaches in its own mount namespace.
#
# ROOTFS's files are host root's too: inside they would show as nobody
# (65534), and container root could not write its own /etc. So ROOTFS is
# shown through the map, one of two ways: an idmapped mount
# (mount_setattr(2), Linux 5.12; as an overlay's lower layer, 5.19), where
# host root's files are container root's and what container root writes
# lands in the writable layer as its host id; or, on a filesystem that
# cannot be idmapped (tmpfs before Linux 6.3, 9p), a copy of ROOTFS with
# every owner shifted by the map, made once per ROOTFS and map and kept
# (as podman keeps one per image and map), said in one line.
#
# Rootless: run by a user, the user's uid is container root, and where
# shadow-utils' setuid newuidmap and newgidmap are installed, the user's
# /etc/subuid and /etc/subgid range is ids 1 and up (podman's map); without
# them the one id is all, and setgroups(2) is denied in the namespace.
# Stage 1 has no host root to lend: it makes the namespace and enters it,
# and the init mounts the overlay and binds the user's paths itself. What
# needs the host's root is refused by name: --userns and the maps, the
# bridge, limits where no cgroup is delegated to the user, --cgroup-parent,
# --privileged, the host's pid, IPC and UTS namespaces, and idmapped
# volumes.

USERNS_AUTO_SIZE = 65536          # --userns auto's ids: podman's default size
SUBID_USER = "containers"
SUBID_FIRST = 2147483648          # where a new "containers" range starts: the top half
MAX_ID = 4294967294               # (uid_t)-1 is no id
ID_MAP_LINES = 340                # the kernel's limit of lines in one map (Linux 4.15)
SUBID_FILES = {"uid": "/etc/subuid", "gid": "/etc/subgid"}


def parse_userns(mode, uidmap, gidmap):
    """--userns, --uidmap, --gidmap -> None (no user namespace: the host's,
    Docker's default), {"size": N} (auto), or {"uid": map, "gid": map}. One
    of the maps alone stands for both, as in podman."""
    if uidmap or gidmap:
        if mode not in (None, ""):
            raise MiniDockerError("--userns %s and --uidmap/--gidmap conflict: the maps make a "
                                  "user namespace of their own" % quote(mode))
        uid = [parse_id_map(text, "--uidmap") for text in uidmap]
        gid = [parse_id_map(text, "--gidmap") for text in gidmap]
        return {"uid": check_id_map(uid or gid, "--uidmap"),
                "gid": check_id_map(gid or uid, "--gidmap")}
    if mode in (None, "", "host"):
        return None
    name, _, options = mode.partition(":")
    if name != "auto":
        raise MiniDockerError("invalid --userns %s: expected host, auto or auto:size=N"
                              % quote(mode))
    size = USERNS_AUTO_SIZE
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key != "size" or not value.isdigit() or not 0 < int(value) <= MAX_ID:
            raise MiniDockerError("invalid --userns %s: its only option is size=N (N ids, "
                                  "at least 1)" % quote(mode))
        size = int(value)
    return {"size": size}


def parse_id_map(text, flag):
    """--uidmap/--gidmap CONTAINER_ID:HOST_ID:SIZE (podman's form) ->
    (container id, host id, size)."""
    fields = text.split(":")
    if len(fields) != 3 or not all(field.isdigit() for field in fields):
        raise MiniDockerError("invalid %s %s: expected CONTAINER_ID:HOST_ID:SIZE"
                              % (flag, quote(text)))
    inside, outside, size = (int(field) for field in fields)
    if size == 0 or max(inside, outside) + size - 1 > MAX_ID:
        raise MiniDockerError("invalid %s %s: SIZE must be at least 1, and no id above %d"
                              % (flag, quote(text), MAX_ID))
    return inside, outside, size


def check_id_map(entries, flag):
    """A map as the kernel takes it: at most 340 lines, none past the last
    id (config.json's come unchecked by parse_id_map), no two of them
    overlapping inside or outside, and container root among its ids (the
    container's first process is root)."""
    if len(entries) > ID_MAP_LINES:
        raise MiniDockerError("%s: %d ranges, more than the kernel's %d"
                              % (flag, len(entries), ID_MAP_LINES))
    for inside, outside, size in entries:
        if max(inside, outside) + size - 1 > MAX_ID:
            raise MiniDockerError("%s: %d:%d:%d: no id above %d" % (flag, inside, outside, size,
                                                                   MAX_ID))
    for side, name in ((0, "container"), (1, "host")):
        spans = sorted((entry[side], entry[side] + entry[2]) for entry in entries)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            if start < end:
                raise MiniDockerError("%s: two ranges overlap at %s id %d" % (flag, name, start))
    if not any(inside == 0 for inside, _, _ in entries):
        raise MiniDockerError("%s: container id 0 (root) must be mapped" % flag)
    return entries


def check_userns_conflicts(userns, args, namespaces):
    """Flags a user namespace cannot serve, refused with the others: an
    idmap volume without a user namespace of root's to show it through;
    and with any user namespace, what its root cannot own: the host's
    devices (--privileged), and the host's pid, IPC and UTS namespaces,
    whose mounts (proc, mqueue) need CAP_SYS_ADMIN where they belong
    (Docker asks for --userns=host there). The host's network is allowed:
    /sys is then the host's, bound (plan_mounts), as a sysfs may be
    mounted only by the network namespace's owner."""
    idmapped = [volume for volume in args.volume if volume.split(":")[2:3] and
                "idmap" in volume.split(":")[2].split(",")]
    if idmapped and (userns is None or "rootless" in userns):
        raise MiniDockerError("invalid volume %s: idmap needs a user namespace of root's "
                              "(--userns auto, --uidmap): the volume's owners are shown "
                              "through its map" % quote(idmapped[0]))
    if userns is None:
        return
    shared = [flag for kind, flag in NAMESPACE_FLAGS if namespaces[kind] == "host"
              and kind != "cgroup"]
    if args.privileged or shared:
        raise MiniDockerError("%s and a user namespace conflict: its root cannot own what "
                              "the host's root does (%s)" % (
                                  "--privileged" if args.privileged else shared[0] + " host",
                                  "a user's container always has one" if "rootless" in userns
                                  else "use --userns host"))


def check_rootfs_mapped(rootfs, userns):
    """ROOTFS's own owner must be one the user namespace maps (owned_by
    gives the writable layer's root that owner): checked with the flags,
    before a record or a layer is made for a run that cannot start."""
    st = os.stat(rootfs)
    if not (maps_id(userns, "uid", st.st_uid) and maps_id(userns, "gid", st.st_gid)):
        raise MiniDockerError("ROOTFS is owned by %d:%d, which the user namespace's map "
                              "leaves out" % (st.st_uid, st.st_gid))


def maps_id(userns, kind, inside):
    """Whether a spec's user namespace (parse_userns's, or a rootless one's
    maps) has container id `inside`; without a user namespace, every id."""
    if not userns:
        return True
    if "size" in userns:
        return inside < userns["size"]
    return host_id(userns[kind], inside) is not None


def host_id(entries, inside):
    """A container id -> the host id the map makes it; None if unmapped."""
    for first, outside, size in entries:
        if first <= inside < first + size:
            return outside + inside - first
    return None


def allocate_id_maps(userns, records):
    """A container's maps: --uidmap/--gidmap's as given; for auto, the
    lowest `size` ids of the "containers" ranges that no other record holds
    and no other user's line grants (were a "containers" range written over
    a user's, that user's own user namespaces could signal, trace and own
    the files of a container whose ids they map). The caller holds
    userns.lock until the record with these maps is stored: two runs never
    take the same ids."""
    if "size" not in userns:
        return dict(userns)
    maps = {}
    for kind in ("uid", "gid"):
        ranges, granted = subid_ranges(kind)
        taken = granted + [(outside, size) for record in records
                           for _, outside, size in (record.get("id_maps") or {}).get(kind, [])]
        first = free_id_range(ranges, taken, userns["size"])
        if first is None:
            raise MiniDockerError("--userns auto: no %d free %ss left in the ranges of user %s "
                                  "in %s (%d containers hold ranges of their own; ids granted "
                                  "to other users are not taken)" % (
                                      userns["size"], kind, SUBID_USER, SUBID_FILES[kind],
                                      sum(1 for record in records if record.get("id_maps"))))
        maps[kind] = [(0, first, userns["size"])]
    return maps


def subid_ranges(kind):
    """The "containers" user's ranges in /etc/subuid or /etc/subgid, and
    every other user's, as two lists of (first, count). On first use, when
    "containers" has none, one is appended to the file, and said: the ids
    from SUBID_FIRST (or above every range given already) to the last."""
    path = SUBID_FILES[kind]
    try:
        text = read_text(path)
    except FileNotFoundError:
        text = ""
    ranges, others, ends = [], [], [0]
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            ends.append(int(fields[1]) + int(fields[2]))
            (ranges if fields[0] == SUBID_USER else others).append(
                (int(fields[1]), int(fields[2])))
    if ranges:
        return ranges, others
    first = max(SUBID_FIRST, max(ends))
    if first > MAX_ID:
        raise MiniDockerError("--userns auto: %s has no ids left above its ranges for user %s"
                              % (path, SUBID_USER))
    line = "%s:%d:%d\n" % (SUBID_USER, first, MAX_ID + 1 - first)
    with open(path, "a") as handle:
        if text and not text.endswith("\n"):
            handle.write("\n")
        handle.write(line)
    warn("--userns auto: %s had no ids for user %s: added %s" % (path, SUBID_USER, line.strip()))
    return [(first, MAX_ID + 1 - first)], others


def free_id_range(ranges, taken, size):
    """The lowest `size` ids inside `ranges` that overlap none of `taken`
    ((first, count) pairs); None if there is no such span."""
    for first, count in sorted(ranges):
        candidate = first
        for start, length in sorted(taken):
            if start < candidate + size and candidate < start + length:
                candidate = start + length
        if candidate + size <= first + count:
            return candidate
    return None


def mapped_root(maps):
    """Container root's host uid and gid."""
    return host_id(maps["uid"], 0), host_id(maps["gid"], 0)


def owned_by(maps, uid, gid):
    """The host's owner of a file the container should see owned by
    uid:gid (themselves without a user namespace). An id the map leaves
    out is refused: the container would see nobody own it."""
    if not maps:
        return uid, gid
    outside = host_id(maps["uid"], uid), host_id(maps["gid"], gid)
    if None in outside:
        raise MiniDockerError("ROOTFS is owned by %d:%d, which the user namespace's map "
                              "leaves out" % (uid, gid))
    return outside


# parse_resources' keys, and the flags that set them: rootless_userns
# names the flag of a limit it refuses
LIMIT_FLAGS = [("memory", "--memory"), ("memory_swap", "--memory-swap"),
               ("memory_reservation", "--memory-reservation"), ("cpu_quota", "--cpus"),
               ("cpu_shares", "--cpu-shares"), ("cpuset_cpus", "--cpuset-cpus"),
               ("cpuset_mems", "--cpuset-mems"), ("pids", "--pids-limit"),
               ("io_weight", "--blkio-weight"), ("oom_kill_disable", "--oom-kill-disable"),
               ("io_read", "--device-read-bps"), ("io_write", "--device-write-bps")]


def rootless_userns(args, resources):
    """A user's run: its flags checked against what a user may do, and the
    maps of its user namespace (rootless_maps)."""
    if args.userns not in (None, "") or args.uidmap or args.gidmap:
        raise MiniDockerError("rootless: --userns, --uidmap and --gidmap need root; a user's "
                              "container maps the user to its root (and the user's /etc/subuid "
                              "ranges above it, through newuidmap)")
    if args.cgroup_parent:
        raise MiniDockerError("rootless: --cgroup-parent needs root: a user's container goes "
                              "beside the user's own cgroup, where one is delegated to it")
    if args.network == "bridge":
        raise MiniDockerError("rootless: --network bridge needs root: the bridge, the veth and "
                              "NAT are made by netlink in the host's network namespace, which "
                              "a user may not change; use --network none or host")
    asked = [flag for key, flag in LIMIT_FLAGS if key in resources]
    if asked and delegated_cgroup() is None:
        raise MiniDockerError("rootless: %s needs a cgroup of the container's own, and no "
                              "cgroup2 directory is delegated to this user here (the parent of "
                              "its own cgroup, its own to write, on a cgroup2-only host): run "
                              "as root for limits" % asked[0])
    check_rootless_host()
    return rootless_maps()


def delegated_cgroup():
    """The cgroup a user may put its containers' cgroups in, or None: on a
    cgroup2-only host, the parent of the user's own cgroup when the user
    owns it, its cgroup.procs and its cgroup.subtree_control (systemd's
    Delegate=, or a chown by root), as podman's cgroupfs manager uses
    one. A container's cgroup is then made beside the user's own (cgroup2
    moves a process between two cgroups for whoever may write the
    cgroup.procs of both and of their common parent), and the device
    cgroup, a BPF program only the host's root may attach, is left out."""
    layout = detect_cgroups(read_text("/proc/self/mountinfo"), read_text("/proc/self/cgroup"))
    if layout.v1 or not layout.v2_mount or layout.v2_own.strip("/") == "":
        return None
    parent = os.path.join(layout.v2_mount, os.path.dirname(layout.v2_own.strip("/")))
    for name in ("", "cgroup.procs", "cgroup.subtree_control"):
        try:
            if os.stat(os.path.join(parent, name)).st_uid != os.geteuid():
                return None
        except OSError:
            return None
    return parent


def check_rootless_host():
    """Refuse, naming the setting and how to change it, a host that
    forbids users user namespaces: Debian's sysctl, a zero
    max_user_namespaces, or Ubuntu's AppArmor restriction. A setting this
    kernel does not have forbids nothing."""
    for path, refusing, hint in (
            ("/proc/sys/kernel/unprivileged_userns_clone", "0", "sysctl "
             "kernel.unprivileged_userns_clone=1"),
            ("/proc/sys/user/max_user_namespaces", "0", "sysctl user.max_user_namespaces=15000"),
            ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", "an AppArmor "
             "profile for python3 that allows userns, or sysctl "
             "kernel.apparmor_restrict_unprivileged_userns=0")):
        try:
            value = read_text(path).strip()
        except OSError:
            continue
        if value == refusing:
            raise MiniDockerError("rootless: this host forbids users user namespaces (%s is %s): "
                                  "run as root, or ask for %s" % (path, value, hint))


def rootless_maps():
    """The user's uid and gid as container root, and the first range the
    user has (by name or uid) in /etc/subuid and /etc/subgid as ids 1 and
    up when newuidmap and newgidmap are there to write them. Both maps get
    their range or neither does: make_user_namespace writes the two the
    same way. "rootless" marks the maps as a user's."""
    import pwd
    ids = {"uid": os.geteuid(), "gid": os.getegid()}
    try:
        names = {pwd.getpwuid(ids["uid"]).pw_name, str(ids["uid"])}
    except KeyError:
        names = {str(ids["uid"])}
    maps = {"rootless": True}
    helpers = all(host_executable("new%smap" % kind) for kind in ("uid", "gid"))
    for kind in ("uid", "gid"):
        ranges = []
        try:
            for line in read_text(SUBID_FILES[kind]).splitlines():
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in names and fields[1].isdigit() \
                        and fields[2].isdigit() and int(fields[2]) > 0:
                    ranges.append((int(fields[1]), int(fields[2])))
        except OSError:
            pass
        maps[kind] = [(0, ids[kind], 1)] + ([(1, ranges[0][0], ranges[0][1])]
                                            if helpers and ranges else [])
    if len(maps["uid"]) != len(maps["gid"]):  # both ranges, or the one id each
        maps["uid"], maps["gid"] = maps["uid"][:1], maps["gid"][:1]
    return maps


def host_executable(name):
    """The host's program `name` in $PATH (or the default one), or None."""
    for directory in os.environ.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory, name)
        if directory and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def make_user_namespace(maps):
    """A user namespace with `maps`, as a descriptor. A child makes it; we
    write its maps, open its /proc/PID/ns/user, and reap it. Host root's
    child is clone_in_user_namespace's, which runs no Python, and any range
    is written straight, each map in one write (as the kernel takes it);
    the gid map written with CAP_SETGID leaves setgroups(2) allowed in the
    namespace, as -u and --group-add need. A user's (rootless) child is
    hold_user_namespace's: its maps go through newuidmap and newgidmap when
    they name more than the user's own ids; else the user writes them, its
    one uid, and its one gid once setgroups is denied (user_namespaces(7))."""
    child, release = hold_user_namespace() if maps.get("rootless") else \
        (clone_in_user_namespace(), None)
    try:
        if maps.get("rootless") and len(maps["uid"]) > 1:
            for kind in ("uid", "gid"):
                run_id_map_helper("new%smap" % kind, child, maps[kind])
        else:
            if maps.get("rootless"):
                write_proc_file(child, "setgroups", "deny")
            for kind in ("uid", "gid"):
                write_proc_file(child, kind + "_map",
                                "".join("%d %d %d\n" % tuple(entry) for entry in maps[kind]))
        return os.open("/proc/%d/ns/user" % child, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        if release is not None:
            os.close(release)
        os.waitpid(child, 0)


# clone(2) as glibc wraps it: the child runs fn(arg) on the stack given,
# then exits with its result; CLONE_VM shares our memory instead of
# copying it (0.2 ms, where os.fork takes 2-3 ms of copying this process's
# page tables). The child's fn is libc's getpid: a system call, no Python,
# and of our memory only the stack we lend it, kept until it has ended
# (waitid with WNOWAIT). A zombie keeps its credentials, and so its user
# namespace, until it is reaped: time enough to write its maps and open
# /proc/PID/ns/user.
CLONE_VM = 0x100
CLONE_STACK_BYTES = 16384


def clone_in_user_namespace():
    """-> the pid of an ended, unreaped child in a new user namespace."""
    import ctypes
    stack = ctypes.create_string_buffer(CLONE_STACK_BYTES)
    top = (ctypes.addressof(stack) + CLONE_STACK_BYTES - 64) & ~15  # grows down, 16-aligned
    with failing_as("clone(CLONE_NEWUSER)",
                    {errno.EPERM: "this host forbids it (user.max_user_namespaces, or a "
                                  "security module)"}):
        child = _clone(ctypes.cast(libc().getpid, ctypes.c_void_p), top,
                       CLONE_VM | CLONE_NEWUSER | signal.SIGCHLD, None)
    os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # off our stack: it may go
    return child


def hold_user_namespace():
    """A user's way to the same: a zombie's /proc files are root's, so
    clone_in_user_namespace's will not do for a user. A forked child
    unshares a user namespace and waits, alive, until the write end
    returned with its pid is closed."""
    ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
    hold_read, hold_write = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_read)
            os.close(hold_write)
            try:
                unshare(CLONE_NEWUSER)
                os.write(ready_write, b"x")
            except OSError as err:
                os.write(ready_write, str(err).encode())
            os.read(hold_read, 1)
        finally:
            os._exit(0)
    os.close(ready_write)
    os.close(hold_read)
    answer = os.read(ready_read, 4096)
    os.close(ready_read)
    if answer != b"x":
        os.close(hold_write)
        os.waitpid(child, 0)
        raise MiniDockerError(answer.decode(errors="replace") or
                              "unshare(CLONE_NEWUSER): the child died")
    return child, hold_write


def write_proc_file(pid, name, text):
    """/proc/PID/NAME written in one write(2), as uid_map and gid_map must be."""
    try:
        fd = os.open("/proc/%d/%s" % (pid, name), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as err:
        raise MiniDockerError("writing %r to /proc/%d/%s: %s" % (text.strip(), pid, name,
                                                                  err.strerror))


def run_id_map_helper(name, pid, entries):
    """newuidmap or newgidmap PID INSIDE OUTSIDE COUNT...: shadow-utils'
    setuid helpers, which write a user's map where /etc/subuid or
    /etc/subgid grants its ranges."""
    program = host_executable(name)
    argv = [program or name, str(pid)] + ["%d" % value for entry in entries for value in entry]
    child = os.fork()
    if child == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    code = exit_code(os.waitpid(child, 0)[1])
    if code != 0:
        raise MiniDockerError("rootless: %s failed (exit %d): does %s grant this user the "
                              "ids it names?" % (" ".join(argv), code, SUBID_FILES[name[3:6]]))


def setgroups_denied():
    """Whether this user namespace refuses setgroups(2): a user's one-id
    gid map (make_user_namespace)."""
    try:
        return read_text("/proc/self/setgroups").strip() == "deny"
    except FileNotFoundError:  # before Linux 3.19
        return False


def enter_user_namespace(spec, instance, to_parent, from_parent, later=None):
    """Stage 1 of a container with a user namespace, md:[1:USERNS], forked
    by start_container in the host's namespaces. As host root still, in a
    mount namespace of its own: make the user namespace, mount the overlay
    with ROOTFS as the map shows it (mount_mapped_overlay), take a detached
    copy of each mount the init takes from the host (open_host_sources),
    and join a bundle's namespaces given by path. Then enter the user
    namespace as its root, unshare the pid namespace, and fork the
    container's init into it. Stage 1 tells the parent the init's pid and
    ends; the parent, a child subreaper, adopts the init and says
    "adopted" (adopt_init). Only then does the init go on to child_stage,
    which asks for the parent-death signal: that binds to the parent of
    the moment, and stage 1's end would fire it. The init's first act is
    to enter the CgroupEntry `later` (the pids cgroup). Returns in the
    init only.
    A user's (rootless) stage 1 has no host root to lend: it makes the
    user namespace and enters it, and the init mounts the overlay and
    binds the user's paths itself, as root of its namespace (build_root)."""
    set_stage_name("md:[1:USERNS]")
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
    rootless = instance.id_maps.get("rootless")
    if not rootless:
        unshare(CLONE_NEWNS)
        mount(None, "/", None, MS_PRIVATE | MS_REC, shown="/ (propagation)")
    userns = make_user_namespace(instance.id_maps)
    if spec.bundle is None and not rootless:
        note = mount_mapped_overlay(spec, instance, userns)
        if note:
            write_all(to_parent, b"note %s\n" % note.encode())
    if not rootless:
        instance.handles = open_host_sources(spec, instance, userns)
    # A bundle's namespaces given by path are the host's root's to join:
    # joined now, they are the init's (child_stage leaves them be).
    join_namespaces(spec, ("ipc", "uts"))
    if spec.network_plan.get("join"):
        join_namespace(spec.network_plan["join"], CLONE_NEWNET, "net")
    setns(userns, CLONE_NEWUSER, "the container's user namespace")
    os.close(userns)
    # setns(2) gave every capability there and none outside. Host root's
    # ids are ones the map leaves out (nobody, inside): made the
    # namespace's root's (a user's own ids are root's there already).
    os.setresgid(0, 0, 0)
    if not setgroups_denied():
        os.setgroups([])
    os.setresuid(0, 0, 0)
    unshare(CLONE_NEWPID)
    init = os.fork()
    if init != 0:
        write_all(to_parent, b"pid %d\n" % init)
        os._exit(0)
    if later is not None:
        later.enter()
    if read_line(from_parent, bytearray()) != b"adopted\n":
        os._exit(EXIT_RUNTIME)


def mount_mapped_overlay(spec, instance, userns):
    """The overlay at layer/merged, its lower layer ROOTFS as the map shows
    it: an idmapped mount of ROOTFS at layer/lower, or, where the kernel
    refuses one, the copy shifted_copy keeps (EINVAL: a filesystem without
    idmapped mounts, or an overlay before Linux 5.19, which takes no
    idmapped layer; ENOSYS: a kernel before 5.12; EPERM, EOPNOTSUPP: the
    filesystem's own refusal). Returns the one line that says a copy is
    used, or None."""
    lower = os.path.join(instance.layer, "lower")
    try:
        if spec.image:
            idmap_image_layers(spec, instance, userns)
            return None
        tree = open_tree(spec.rootfs)
        try:
            mount_setattr(tree, MOUNT_ATTR_IDMAP, spec.rootfs + " (idmapped)", userns)
            move_mount(tree, lower, lower)
        finally:
            os.close(tree)
        mount_overlay(spec, instance.layer, lower)
        return None
    except SyscallError as err:
        if err.errno not in (errno.EINVAL, errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        refusal = str(err)
    if spec.image:  # (a shifted copy of each layer is not written)
        raise MiniDockerError("the image's layers cannot be idmapped here (%s): an image's "
                              "container in a user namespace needs idmapped mounts of the "
                              "store's filesystem (Linux 5.19; tmpfs from 6.3)" % refusal)
    copy = shifted_copy(spec.rootfs, instance.shifted_root, instance.id_maps)
    mount_overlay(spec, instance.layer, copy)
    return ("%s cannot be idmapped here (%s): the container's root is a copy with its "
            "owners shifted by the map, kept in %s (remove it when ROOTFS changes)"
            % (spec.rootfs, refusal, copy))


def idmap_image_layers(spec, instance, userns):
    """An image's layers, each idmapped at layer/lower/N (top first), the
    overlay over them. The kernel does not follow a whiteout or an opaque
    directory any differently through an idmapped layer: it reads the
    same device numbers and xattrs."""
    names = []
    for index, link in enumerate(spec.image["lower"]):
        source = os.path.join(spec.image["store"], link)
        name = os.path.join("lower", str(index))
        target = os.path.join(instance.layer, name)
        tree = open_tree(source)
        try:
            mount_setattr(tree, MOUNT_ATTR_IDMAP, source + " (idmapped)", userns)
            move_mount(tree, target, target)
        finally:
            os.close(tree)
        names.append(name)
    mount_overlay(spec, instance.layer, ":".join(names), base=instance.layer)


def shifted_root_path(directory, rootfd, maps):
    """Where the shifted copy of the ROOTFS open as `rootfd` is kept for
    these maps, under `directory` (Paths.shifted): one per ROOTFS and
    maps, named by the hash of its path, its device and inode number, and
    the maps. The path alone would not do: a ROOTFS made anew where
    another was (removed since, maybe another owner's) would run from the
    copy of the old one's files. A ROOTFS changed in place finds its old
    copy; the line that says a copy is used tells the user to remove it."""
    import hashlib
    st = os.fstat(rootfd)
    key = to_json([os.readlink(fd_path(rootfd)), st.st_dev, st.st_ino,
                      maps["uid"], maps["gid"]])
    return os.path.join(directory, hashlib.sha256(key.encode()).hexdigest()[:32])


def shifted_copy(rootfs, directory, maps):
    """ROOTFS copied once into `directory` (shifted_root_path names the
    copy), every owner moved by the maps (an id they do not map becomes the
    map's nobody, 65534, or its root). ROOTFS is opened once, and that
    handle is both named and copied: a path swapped meanwhile cannot file
    one directory's files under another's name. Made under a temporary
    name and renamed: a run that dies halfway leaves no half copy, and of
    two runs making the same one, one keeps its own."""
    source = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        copy = shifted_root_path(directory, source, maps)
        if not os.path.isdir(copy):
            copy_shifted(source, copy, maps)
    finally:
        os.close(source)
    return copy


def copy_shifted(source, copy, maps):
    """shifted_copy's copy of the directory `source` (a handle) to `copy`."""
    temporary = "%s.tmp-%d" % (copy, os.getpid())
    os.makedirs(os.path.dirname(copy), mode=0o700, exist_ok=True)
    os.mkdir(temporary, 0o700)

    def shift(entries, inside):
        for candidate in (inside, 65534, 0):
            if host_id(entries, candidate) is not None:
                return host_id(entries, candidate)

    def owner(st):
        return shift(maps["uid"], st.st_uid), shift(maps["gid"], st.st_gid)

    try:
        destination = os.open(temporary, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            copy_tree(source, destination, owner)
            copy_attributes(source, destination, os.fstat(source), owner)
        finally:
            os.close(destination)
        os.rename(temporary, copy)
    except OSError as err:
        remove_tree(temporary)
        if not os.path.isdir(copy):
            raise MiniDockerError("copying %s for the user namespace: %s"
                                  % (os.readlink(fd_path(source)), err))


def open_host_sources(spec, instance, userns):
    """Stage 1, as host root: a detached copy (open_tree(2)) of each mount
    the container takes from the host: the root ("root": the overlay, or a
    bundle's directory), and the source of each bind and copy-up of the
    mount plan, by its index there (the /etc files, the volumes, made when
    missing as `docker run -v` makes them); build_root moves each to its
    place. The init, root of its user namespace only, could not reach them
    by path through the state directories (0700, host root's) or a user's
    home, and a bind of a mount of the namespace it came from (stage 1's)
    is refused (EINVAL); a detached copy it may attach in its own
    (move_mount(2)), as runc passes mount sources to an init in a user
    namespace. What the files allow is still the kernel's say: a root-only
    file stays out of reach."""
    handles = {"root": open_tree(spec.rootfs if spec.bundle is not None else
                                 os.path.join(instance.layer, "merged"))}
    for index, step in enumerate(mount_plan_of(spec, instance)):
        if step.kind in ("bind", "copy-up"):
            if not os.path.exists(step.source):
                os.makedirs(step.source, 0o755)
            handles[index] = open_tree(step.source, step.kind == "copy-up" or
                                       bool(step.flags & MS_REC))
            if step.data == "idmap":  # -v HOST:CTR:idmap: its owners as the map shows them
                mount_setattr(handles[index], MOUNT_ATTR_IDMAP, step.source + " (idmap)", userns)
    return handles


def remove_user_tree(path, maps):
    """remove_tree; for a user (rootless `maps`), what it may not remove
    (files of its containers' other ids) is removed again by the root of a
    user namespace of those maps."""
    try:
        remove_tree(path)
    except PermissionError:
        if not maps or not maps.get("rootless"):
            raise
        as_namespace_root(maps, remove_tree, path)


def as_namespace_root(maps, function, *args):
    """function(*args) run by the root of a new user namespace with `maps`,
    in a child. A user's (rootless) layer holds files of its container's
    ids 1 and up (the user's /etc/subuid range), and overlayfs's work
    directory of mode 0, which the user cannot remove; root of a namespace
    of the same maps can, as podman's `unshare` does it. An OSError raised
    there is raised here, with its errno."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            userns = make_user_namespace(maps)
            setns(userns, CLONE_NEWUSER, "a user namespace of the container's maps")
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            function(*args)
        except OSError as err:
            os.write(write_end, b"%d %s" % (err.errno or 0, str(err).encode()))
        except BaseException as err:
            os.write(write_end, b"0 %s" % repr(err).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        message = b""
        while True:
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            message += chunk
    finally:
        os.close(read_end)
        os.waitpid(child, 0)
    if message:
        number, _, text = message.decode(errors="replace").partition(" ")
        raise OSError(int(number), text)


# The sysctls a namespace of the container's own holds, as runc allows
# them (libcontainer/configs/validate): the IPC ones, the network's (in a
# network namespace of its own), and the UTS namespace's domain name. Any
# other would change the host, and is refused.
IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
               "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")
SYSCTL_KEY = r"[a-z0-9_]+(\.[A-Za-z0-9_@:+-]+)+"  # no '/', no '..': a path under /proc/sys


def parse_sysctl(text, namespaces, network, flag="--sysctl"):
    """--sysctl KEY=VALUE (or config.json's linux.sysctl) -> (key, value),
    checked against the namespaces the container will have."""
    import re
    key, equals, value = text.partition("=")
    if not equals or not re.fullmatch(SYSCTL_KEY, key, re.ASCII) or \
            any(c in value for c in "\n\0"):
        raise MiniDockerError("invalid %s %s: expected KEY=VALUE, such as "
                              "net.ipv4.ip_forward=1" % (flag, quote(text)))
    if key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
        refused = namespaces["ipc"] == "host" and "is not allowed in the host's IPC namespace " \
                                                  "(--ipc host)"
    elif key.startswith("net."):
        refused = network == "host" and "is not allowed in the host's network namespace " \
                                        "(--network host)"
    elif key == "kernel.domainname":
        refused = namespaces["uts"] == "host" and "is not allowed in the host's UTS " \
                                                  "namespace (--uts host)"
    elif key == "kernel.hostname":
        refused = "is not allowed: it conflicts with --hostname"
    else:
        refused = "is not in a separate kernel namespace: it would change the host"
    if refused:
        raise MiniDockerError("invalid %s %s: sysctl %s %s" % (flag, quote(text), key, refused))
    return key, value


def apply_sysctls(sysctls):
    """Write each --sysctl under /proc/sys, in the child once it has its
    namespaces: a file there is the namespace's of the process that opens
    it (net/ the network namespace's, kernel/msg* and fs/mqueue/ the IPC
    namespace's, kernel/domainname the UTS one's). The host's /proc
    serves, before pivot_root, while the container's /proc/sys is still
    writable by nobody of the image."""
    for key, value in sysctls:
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as handle:
                handle.write(value)
        except OSError as err:
            raise MiniDockerError("--sysctl %s=%s: writing %s: %s" % (
                key, value, path, "no such key in this kernel" if err.errno == errno.ENOENT
                else err.strerror))


def bring_up_loopback():
    """`ip link set lo up` through the SIOCSIFFLAGS ioctl of netdevice(7):
    a new network namespace has only lo, and it is down."""
    with failing_as("socket(AF_INET)"):
        fd = _socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)
    try:
        request = struct.pack(IFREQ_FLAGS, b"lo", 0)
        flags = struct.unpack(IFREQ_FLAGS, fcntl.ioctl(fd, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(fd, SIOCSIFFLAGS, struct.pack(IFREQ_FLAGS, b"lo", flags | IFF_UP))
    finally:
        os.close(fd)


# What Docker sets in a network namespace of the container's own (not with
# --network host, where they are the host's): any user may bind a port
# below 1024 (the namespace's ports are the container's alone), and open
# an ICMP echo socket (ping without CAP_NET_RAW or a setuid binary).
NETNS_SYSCTLS = [("net/ipv4/ip_unprivileged_port_start", "0"),
                 ("net/ipv4/ping_group_range", "0 2147483647")]


def set_network_sysctls(id_maps=None):
    """Write NETNS_SYSCTLS. A net sysctl file acts on the namespace of the
    process that opens it, so this runs in the child right after its
    unshare(CLONE_NEWNET), still through the host's /proc (the container's
    /proc/sys is read-only). In a user namespace the kernel takes only a
    ping range whose ends its map has (EINVAL): 0 to the last group mapped
    without a gap from 0."""
    for name, value in NETNS_SYSCTLS:
        if id_maps and name.endswith("ping_group_range"):
            top = -1  # the end of the groups mapped without a gap from 0
            for first, _, size in sorted(id_maps["gid"]):
                if first == top + 1:
                    top = first + size - 1
            value = "0 %d" % top
        try:
            with open("/proc/sys/" + name, "w") as handle:
                handle.write(value)
        except FileNotFoundError:  # ip_unprivileged_port_start: kernel < 4.11
            pass


# === 8. Cgroups: resource limits, written straight to cgroupfs ===
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
# on v2 /sys/fs/cgroup/mini-docker/<id>: beside minidocker's own cgroup, as
# a v2 cgroup whose children have controllers may hold no process itself
# (the "no internal processes" rule of cgroup-v2.rst), and ours holds us; on
# v1 under the cgroup minidocker itself is in, in each hierarchy, as runc
# does, so that limits set on the caller still bind the container.
# --cgroup-parent names the parent instead.
#
# The parent writes the child's pid into the cgroups while the child builds
# its root, and the child waits for "go" before it runs anything of the
# image, so the command's first instruction already runs under the limits;
# the child unshares its cgroup namespace only after "go".
#
# On v1 the container joins a cgroup of its own in EVERY mounted hierarchy,
# the named ones (name=systemd) too, as runc does, not only in those whose
# limits it uses. A hierarchy it did not join would be the host's root in
# its cgroup namespace: with CAP_SYS_ADMIN it could mount that hierarchy and
# write the root's release_agent, a program the kernel runs as host root
# when a cgroup empties (CVE-2022-0492). The file exists only at a
# hierarchy's root, and a new hierarchy cannot be made from inside a cgroup
# namespace (cgroup1_root_to_use: EPERM), so none is in reach. A hybrid
# host's cgroup2 tree is joined for the same reason: its root holds every
# process of the host.
#
# The device cgroup is always made: without it a node shipped in the image
# or made with mknod(2) opens any device of the host, its disks too. What the
# container may open is Docker's and runc's default list (below) plus each
# --device; everything else is refused with EPERM. On v1 the devices
# controller holds the list (devices.deny, devices.allow); cgroup v2 has no
# such controller, so the list is compiled into an eBPF program of type
# BPF_PROG_TYPE_CGROUP_DEVICE that the kernel asks at every open and mknod
# of a device node, attached to the container's cgroup.

CPU_PERIOD_US = 100000  # the CFS period docker uses for --cpus
# Controllers go by their v2 names; v1 calls io "blkio".
V1_NAMES = {"io": "blkio"}
V2_NAMES = {v1: v2 for v2, v1 in V1_NAMES.items()}
# "devices" is a v1 controller; on v2 the same rules are an eBPF program,
# which any cgroup2 cgroup takes: there is nothing to enable.
BPF_CONTROLLERS = {"devices"}
# A controller is wanted for a limit the user asked for (its absence is an
# error), or only to account usage for ps (these, where the host has them).
ACCOUNTING = ("memory", "cpu", "cpuacct", "pids")
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
              "p": 1 << 50}
MIN_MEMORY = 6 << 20  # docker's floor for --memory


SIZE_PATTERN = r"(\d+(?:\.\d+)?) ?([kmgtp]?)i?b?"  # go-units' RAMInBytes


SIZE_MAX = (1 << 63) - 1  # cgroup files hold signed 64-bit counts


def parse_size(text, flag):
    """Docker's sizes: 100m, 1.5G, 512k, 2048 (bytes), 64mb, 10MiB."""
    import re
    match = re.fullmatch(SIZE_PATTERN, text.strip(), re.IGNORECASE | re.ASCII)
    if match is None:
        raise MiniDockerError("invalid %s %s: expected a size such as 100m or 1g"
                              % (flag, quote(text)))
    value = float(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
    if value > SIZE_MAX:  # 1e400 is inf, and int(inf) raises
        raise MiniDockerError("invalid %s %s: larger than %d bytes" % (flag, quote(text), SIZE_MAX))
    return int(value)


def parse_cpu_list(text, online, flag):
    """A cpuset list such as 0-2,5, every member of which must be online."""
    members = set()
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not is_number(low) or (dash and not is_number(high)):
            raise MiniDockerError("invalid %s %s: expected a list such as 0-2,4"
                                  % (flag, quote(text)))
        last = int(high if dash else low)
        if last > max(online, default=0):  # checked before the range is built
            raise MiniDockerError("invalid %s %s: %d not available on this host (online: %s)"
                                  % (flag, quote(text), last, format_cpu_list(online)))
        members.update(range(int(low), last + 1))
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
    if args.memory_swap is not None and args.memory_swap.strip() != "0":  # 0: unset, as Docker
        if "memory" not in res:
            raise MiniDockerError("--memory-swap needs --memory (it is memory plus swap)")
        swap = -1 if args.memory_swap.strip() == "-1" else parse_size(args.memory_swap,
                                                                     "--memory-swap")
        if swap != -1 and swap < res["memory"]:
            raise MiniDockerError("invalid --memory-swap %r: it is memory plus swap, so it "
                                  "cannot be below --memory" % args.memory_swap)
        res["memory_swap"] = swap
    elif "memory" in res:
        # Docker's default: memory plus swap is twice the memory, so a
        # container swaps out at most as much as it may hold. Where the
        # host does not account swap it is dropped (create_cgroups).
        res["memory_swap"] = 2 * res["memory"]
        res["memory_swap_implied"] = True
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
    if args.oom_kill_disable:
        res["oom_kill_disable"] = True  # v1 only: see discard_v1_only
    for flag, key, values in (("--device-read-bps", "io_read", args.device_read_bps),
                              ("--device-write-bps", "io_write", args.device_write_bps)):
        if values:
            res[key] = [parse_device_rate(v, flag) for v in values]
    return res


def check_cgroup_parent(path):
    """--cgroup-parent is a path inside the hierarchy: no '..' to climb out
    of it."""
    if path is None:
        return None
    parts = path.split("/")
    if ".." in parts or "\0" in path or not path.strip("/") or not path.isprintable():
        raise MiniDockerError("invalid --cgroup-parent %s: expected a path below the cgroup "
                              "root, without '..'" % quote(path))
    return "/".join(p for p in parts if p not in ("", "."))


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
            ("oom_kill_disable", "memory", "--oom-kill-disable"),
            ("pids", "pids", "--pids-limit"), ("io_weight", "io", "--blkio-weight"),
            ("io_read", "io", "--device-read-bps"), ("io_write", "io", "--device-write-bps"),
            ("devices", "devices", "the device cgroup"),
            ("memory_swappiness", "memory", "memory.swappiness")):
        if key in res:
            needs.setdefault(controller, flag)
    for name in res.get("unified", {}):
        controller = name.split(".")[0]
        if controller not in ("cgroup",):  # cgroup.* files are the core's, in every cgroup
            needs.setdefault(controller, "linux.resources.unified " + name)
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
            writes.append(("cpu", "cpu.max", "%d %d" % (res["cpu_quota"],
                                                        res.get("cpu_period", CPU_PERIOD_US))))
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
        if "oom_kill_disable" in res:  # a task over the limit waits instead of being killed
            writes.append(("memory", "memory.oom_control", 1))
        if "memory_swappiness" in res:
            writes.append(("memory", "memory.swappiness", res["memory_swappiness"]))
        if "cpu_quota" in res:
            writes.append(("cpu", "cpu.cfs_period_us", res.get("cpu_period", CPU_PERIOD_US)))
            writes.append(("cpu", "cpu.cfs_quota_us", res["cpu_quota"]))
        if "cpu_shares" in res:
            writes.append(("cpu", "cpu.shares", res["cpu_shares"]))
        if "io_weight" in res:
            writes.append(("io", "blkio.weight", res["io_weight"]))
        for key, name in (("io_read", "read"), ("io_write", "write")):
            for device, rate in res.get(key, []):
                writes.append(("io", "blkio.throttle.%s_bps_device" % name, "%s %d" % (device, rate)))
        if "devices" in res:  # deny all, then allow the list, one rule per write
            writes.append(("devices", "devices.deny", "a"))
            writes += [("devices", "devices.allow", device_rule_text(rule))
                       for rule in res["devices"]]
    if "cpuset_cpus" in res:
        writes.append(("cpuset", "cpuset.cpus", res["cpuset_cpus"]))
    if "cpuset_mems" in res:
        writes.append(("cpuset", "cpuset.mems", res["cpuset_mems"]))
    if "pids" in res:
        writes.append(("pids", "pids.max", "max" if res["pids"] is None else res["pids"]))
    if version == 2:  # config.json's linux.resources.unified: cgroup2 files as they are named
        writes += [(name.split(".")[0], name, value)
                   for name, value in sorted(res.get("unified", {}).items())]
    return writes


# The device list: (type, major, minor, access), None for `*`. runc's
# default: any node may be made (m), so that images can ship their /dev, but
# only these open (r, w); Documentation/admin-guide/devices.txt names the
# numbers. Not /dev/net/tun (runc allows it) unless --device asks for it, and
# not c 5:1, which Docker adds and runc does not: that node is the HOST's
# console (ttyS0 or tty0), to read what is typed there and write to it; the
# container's /dev/console is a pty slave, c 136:N.
DEFAULT_DEVICE_RULES = [
    ("c", None, None, "m"), ("b", None, None, "m"),
    ("c", 1, 3, "rwm"), ("c", 1, 5, "rwm"), ("c", 1, 7, "rwm"),  # null zero full
    ("c", 1, 8, "rwm"), ("c", 1, 9, "rwm"),                      # random urandom
    ("c", 5, 0, "rwm"), ("c", 5, 2, "rwm"),                      # tty ptmx
    ("c", 136, None, "rwm"),                                     # the pty slaves, pts/N
]


def device_rule_text(rule):
    """("c", 136, None, "rwm") -> "c 136:* rwm", a line of devices.allow."""
    kind, major, minor, access = rule
    return "%s %s:%s %s" % (kind, "*" if major is None else major,
                            "*" if minor is None else minor, access)


class Device:
    """`host`: the host's node, bound in a user namespace (make_devices);
    None: the one at `path`."""
    __slots__ = ("path", "mode", "rdev", "uid", "gid", "access", "host")

    def __init__(self, path, mode, rdev, uid, gid, access, host=None):
        self.path, self.mode, self.rdev = path, mode, rdev
        self.uid, self.gid, self.access, self.host = uid, gid, access, host

    def rule(self):
        """Its line in the device cgroup (chapter 8)."""
        kind = "b" if stat.S_ISBLK(self.mode) else "c"
        return (kind, os.major(self.rdev), os.minor(self.rdev), self.access)

    def __repr__(self):
        return "Device(%r, %r)" % (self.path, self.rule())


def parse_device(text):
    """`--device HOST[:CONTAINER][:PERMS]`, as docker reads it: the node is
    made at CONTAINER (default: HOST's path) with the host node's type,
    numbers, mode and owner, and the device cgroup lets the container do
    PERMS with it: r(ead), w(rite), m(knod), default rwm. The second field
    is PERMS when it is made of those letters."""
    import re
    parts = text.split(":")
    if len(parts) > 3 or not parts[0]:
        raise MiniDockerError("invalid --device %r: expected HOST[:CONTAINER][:PERMS]" % text)
    host = parts[0]
    if len(parts) == 2 and re.fullmatch("[rwm]+", parts[1]):
        target, access = host, parts[1]
    else:
        target = parts[1] if len(parts) > 1 and parts[1] else host
        access = parts[2] if len(parts) == 3 else "rwm"
    if not re.fullmatch("[rwm]+", access) or len(set(access)) != len(access):
        raise MiniDockerError("invalid --device %r: permissions %r are not a set of r, w "
                              "and m" % (text, access))
    try:
        st = os.stat(host)
    except OSError as err:
        raise MiniDockerError("invalid --device %r: %s: %s" % (text, host, err.strerror))
    if not stat.S_ISCHR(st.st_mode) and not stat.S_ISBLK(st.st_mode):
        raise MiniDockerError("invalid --device %r: %s is not a device node" % (text, host))
    target = os.path.normpath(target)
    if not target.startswith("/dev/"):
        raise MiniDockerError("invalid --device %r: the container path must be in /dev, "
                              "where the container's device nodes open" % text)
    return Device(target, st.st_mode, st.st_rdev, st.st_uid, st.st_gid, access, host)


# <linux/bpf.h>: what a BPF_PROG_TYPE_CGROUP_DEVICE program is asked, in r1:
#   struct bpf_cgroup_dev_ctx {
#       __u32 access_type;   (access << 16) | type
#       __u32 major;         offset 4
#       __u32 minor;         offset 8
#   };
# and it returns 1 to allow, 0 to refuse (EPERM).
DEVCG_TYPE = {"b": 1, "c": 2}              # BPF_DEVCG_DEV_BLOCK, _CHAR
DEVCG_ACCESS = {"m": 1, "r": 2, "w": 4}    # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE
DEVCG_ACCESS_TYPE, DEVCG_MAJOR, DEVCG_MINOR = 0, 4, 8

# <linux/bpf.h>, <linux/bpf_common.h>: one eBPF instruction.
#   struct bpf_insn {
#       __u8  code;
#       __u8  dst_reg:4, src_reg:4;   the low four bits on a little-endian machine
#       __s16 off;                    a jump skips `off` instructions after itself
#       __s32 imm;
#   };
BPF_INSN = "=BBhi"
assert struct.calcsize(BPF_INSN) == 8
EBPF_LDX_W = 0x61    # dst = *(u32 *)(src + off)   BPF_LDX | BPF_MEM | BPF_W
EBPF_AND32_K = 0x54  # dst = (u32)dst & imm        BPF_ALU | BPF_AND | BPF_K
EBPF_RSH32_K = 0x74  # dst = (u32)dst >> imm       BPF_ALU | BPF_RSH | BPF_K
EBPF_MOV32_X = 0xbc  # dst = (u32)src              BPF_ALU | BPF_MOV | BPF_X
EBPF_MOV64_K = 0xb7  # dst = imm                   BPF_ALU64 | BPF_MOV | BPF_K
EBPF_JNE_K = 0x55    # if dst != imm: pc += off    BPF_JMP | BPF_JNE | BPF_K
EBPF_EXIT = 0x95     # return r0                   BPF_JMP | BPF_EXIT
R0, R1, R2, R3, R4, R5 = range(6)


def ebpf(code, dst=0, src=0, off=0, imm=0):
    return struct.pack(BPF_INSN, code, dst | src << 4, off, imm)


def compile_rule(rule):
    """One allow rule: each test that fails jumps past the rule's end, to the
    next rule. A `*` and a full rwm need no test."""
    kind, major, minor, access = rule
    steps = [(EBPF_JNE_K, R2, 0, DEVCG_TYPE[kind])]
    if set(access) != set("rwm"):  # the access asked, less what is granted, must be nothing
        granted = sum(DEVCG_ACCESS[letter] for letter in access)
        steps += [(EBPF_MOV32_X, R1, R3, 0), (EBPF_AND32_K, R1, 0, 0xFFFF & ~granted),
                  (EBPF_JNE_K, R1, 0, 0)]
    for register, number in ((R4, major), (R5, minor)):
        if number is not None:
            steps.append((EBPF_JNE_K, register, 0, number))
    steps += [(EBPF_MOV64_K, R0, 0, 1), (EBPF_EXIT, 0, 0, 0)]
    return b"".join(ebpf(op, dst, src, len(steps) - index - 1 if op == EBPF_JNE_K else 0, imm)
                    for index, (op, dst, src, imm) in enumerate(steps))


def compile_device_program(rules):
    """The device list as an eBPF program that allows what one rule allows:

         r2 = *(u32 *)(r1 + 0)      access_type
         w2 &= 0xffff               r2: the type, 1 block or 2 char
         r3 = *(u32 *)(r1 + 0)
         w3 >>= 16                  r3: the access asked, 1 mknod, 2 read, 4 write
         r4 = *(u32 *)(r1 + 4)      major
         r5 = *(u32 *)(r1 + 8)      minor
       each rule:
         if r2 != TYPE goto next
         w1 = w3; w1 &= ~ACCESS; if r1 != 0 goto next   (not for rwm)
         if r4 != MAJOR goto next                        (not for *)
         if r5 != MINOR goto next                        (not for *)
         r0 = 1; exit                                    allowed
       next: ...
         r0 = 0; exit                                    refused: EPERM

    The same shape as runc's, which has deny rules too; ours are all allow
    rules over a refusal, so their order does not matter."""
    code = b"".join([
        ebpf(EBPF_LDX_W, R2, R1, DEVCG_ACCESS_TYPE), ebpf(EBPF_AND32_K, R2, imm=0xFFFF),
        ebpf(EBPF_LDX_W, R3, R1, DEVCG_ACCESS_TYPE), ebpf(EBPF_RSH32_K, R3, imm=16),
        ebpf(EBPF_LDX_W, R4, R1, DEVCG_MAJOR), ebpf(EBPF_LDX_W, R5, R1, DEVCG_MINOR)])
    code += b"".join(compile_rule(rule) for rule in rules)
    return code + ebpf(EBPF_MOV64_K, R0, imm=0) + ebpf(EBPF_EXIT)


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
        if controller in self.v2_controllers or controller in BPF_CONTROLLERS and self.v2_mount:
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


# The container's own view of its cgroups at /sys/fs/cgroup, as runc
# mounts it in a cgroup namespace: every hierarchy the host has there is
# mounted afresh from inside the namespace, so that its root is the
# container's own cgroup, and a program that sizes itself (a JVM) reads
# its limits where it looks for them (memory.max, memory.limit_in_bytes).
# On cgroup v2 that is the one unified hierarchy at /sys/fs/cgroup; on v1
# and hybrid hosts a tmpfs holds a directory per hierarchy, named as on
# the host, and a symlink per controller of a co-mounted one (cpu ->
# cpu,cpuacct). It is read-only, as in Docker (but under --privileged,
# which Docker mounts read-write): the container must not lift its own
# limits nor leave its cgroup. Read-only is a bind remount, of these mounts
# alone: the superblocks are the host's, and no option of theirs is
# touched (a mount of cgroup2 changes nsdelegate and the memory_ options
# only from the initial cgroup namespace, so the mounts come after
# unshare(CLONE_NEWCGROUP)). A volume or --tmpfs at or above
# /sys/fs/cgroup replaces the view, as a user's mount does in Docker.

CGROUP_VIEW = "/sys/fs/cgroup"
CGROUP_MOUNT_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC


def plan_cgroup_view(mountinfo, targets=()):
    """The host's cgroup mounts at /sys/fs/cgroup (its /proc/self/mountinfo)
    -> [(name, fstype, options)]: name "" for a unified hierarchy at
    /sys/fs/cgroup itself, else the directory under it; a v1 hierarchy's
    options are its superblock's (controllers, name=, xattr), less rw and
    release_agent, so that the mount matches the hierarchy that exists.
    [] when the host has none there, or `targets` (the volumes' and
    --tmpfs paths) cover it."""
    if any(CGROUP_VIEW.startswith(t.rstrip("/") + "/") or t.startswith(CGROUP_VIEW)
           for t in targets):
        return []
    view, seen = [], set()
    for line in mountinfo.splitlines():
        fields = line.split()
        separator = fields.index("-")
        point, fstype, options = fields[4], fields[separator + 1], fields[separator + 3]
        if fstype not in ("cgroup", "cgroup2") or point in seen or "\\" in point:
            continue  # (mountinfo escapes a space or a backslash: no such name is ours)
        if point != CGROUP_VIEW and os.path.dirname(point) != CGROUP_VIEW:
            continue
        seen.add(point)
        kept = [o for o in options.split(",") if o not in ("rw", "ro")
                and not o.startswith("release_agent=")] if fstype == "cgroup" else []
        view.append(("" if point == CGROUP_VIEW else os.path.basename(point), fstype,
                     ",".join(kept)))
    return view


def mount_cgroup_view(view, read_only):
    """Stage 2, once in the container's cgroup namespace and root: mount
    the planned view at /sys/fs/cgroup (in the fresh sysfs, a directory no
    image reaches). Never from the host's cgroup namespace: there a mount
    of cgroup2 without nsdelegate would take it from the host's."""
    if not view or not on_fresh_sysfs(CGROUP_VIEW):
        return
    mounted = [CGROUP_VIEW]
    if view[0][0] == "":
        mount("cgroup2", CGROUP_VIEW, "cgroup2", CGROUP_MOUNT_FLAGS)
    else:
        mount("tmpfs", CGROUP_VIEW, "tmpfs", CGROUP_MOUNT_FLAGS, "mode=755,size=64k")
        names = {name for name, _, _ in view}
        for name, fstype, options in view:
            target = os.path.join(CGROUP_VIEW, name)
            os.mkdir(target, 0o755)
            mount(fstype, target, fstype, CGROUP_MOUNT_FLAGS, options or None)
            mounted.append(target)
            for alias in name.split(",") if "," in name else ():
                if alias not in names:
                    os.symlink(name, os.path.join(CGROUP_VIEW, alias))
    if read_only:
        for target in reversed(mounted):
            mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | CGROUP_MOUNT_FLAGS,
                  shown=target + " (read-only)")


def bind_cgroup_dirs(rootfd, dirs, read_only):
    """A bundle's cgroup mount without a cgroup namespace, as runc makes
    it: each hierarchy's directory of the container's own cgroup, bound
    from the host's tree (`dirs`: [(name under /sys/fs/cgroup, "" for a
    unified host, host directory)]), in a tmpfs but on a cgroup2-only
    host. Mounting the hierarchies afresh there would show the host's
    whole trees. Before pivot_root, in the container's fresh sysfs."""
    fd = open_in_root(rootfd, CGROUP_VIEW, follow=False)
    try:
        top = fd_path(fd)
        if dirs and dirs[0][0] == "":
            mount(dirs[0][1], top, None, MS_BIND, shown=CGROUP_VIEW)
        else:
            mount("tmpfs", top, "tmpfs", CGROUP_MOUNT_FLAGS, "mode=755,size=64k",
                  shown=CGROUP_VIEW)
    finally:
        os.close(fd)
    mounted = [CGROUP_VIEW]
    if not dirs or dirs[0][0] != "":
        view = open_in_root(rootfd, CGROUP_VIEW, follow=False)
        try:
            names = {name for name, _ in dirs}
            for name, _ in dirs:
                os.mkdir(name, 0o755, dir_fd=view)
                for alias in name.split(",") if "," in name else ():
                    if alias not in names:
                        os.symlink(name, alias, dir_fd=view)
        finally:
            os.close(view)
        for name, host in dirs:
            target = os.path.join(CGROUP_VIEW, name)
            inner = open_in_root(rootfd, target, follow=False)
            try:
                mount(host, fd_path(inner), None, MS_BIND, shown=target)
            finally:
                os.close(inner)
            mounted.append(target)
    if read_only:  # the directories, not the tmpfs that holds them: runc's way
        for target in reversed(mounted[1:] or mounted):
            remount_read_only(rootfd, target, CGROUP_MOUNT_FLAGS)


def on_fresh_sysfs(path):
    """Whether `path` is a directory of the container's sysfs, its last
    name no symlink. An image's symlink can lead a volume over /sys or
    /sys/fs (`/vol -> /sys/fs`, `-v vol:/vol`), where plan_cgroup_view,
    which knows the volumes by the paths given, does not see it: the view
    would be mounted by path in a directory that other containers sharing
    the volume can rename or replace meanwhile, so that a mount lands
    elsewhere or misses its read-only remount. Such a volume replaces the
    view, as one given at that path does. The fresh sysfs is no image's
    and nobody else's, and nothing of the container runs yet: mounts by
    path under it land where they are meant to."""
    try:
        fd = os.open(path, O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):  # ENOTDIR: a symlink (O_PATH opens it)
        return False
    try:
        return filesystem_type(fd) == SYSFS_MAGIC
    finally:
        os.close(fd)


def plan_cgroups(res, layout, cid, parent=None, cgroup_path=None):
    """-> [(version, mount point, directory, {controllers})], one per
    hierarchy: every v1 hierarchy and the cgroup2 one. `cgroup_path` (a
    bundle's linux.cgroupsPath) names the directory as runc reads it: an
    absolute path from each hierarchy's root; a relative one under our own
    cgroup, or on cgroup2 with controllers under its parent (which, unlike
    ours, holds no process, as cgroup2 requires of a cgroup that hands
    controllers down). Fails, before
    anything is made, when a controller a flag needs is missing, or when
    no cgroup filesystem is mounted at all (a mount namespace whose /sys
    was mounted afresh, as `ip netns exec` does, sees none)."""
    if not layout.v1 and not layout.v2_mount:
        raise MiniDockerError(
            "no cgroup filesystem is mounted here (/sys/fs/cgroup is empty in this mount "
            "namespace; `ip netns exec` mounts a fresh /sys): the container cannot be put "
            "in a cgroup (hint: enter the network namespace with "
            "`nsenter --net=/run/netns/NAME`, which keeps the mounts)")
    needs = controllers_needed(res)
    for controller, flag in sorted(needs.items()):
        if layout.version_of(controller) is not None:
            continue
        if controller == "devices":
            raise MiniDockerError(
                "the device cgroup needs cgroup v1's devices controller or a cgroup2 mount "
                "to attach its BPF program to, and this host has neither (--privileged runs "
                "without it)")
        raise MiniDockerError(
            "%s needs the %s cgroup controller, which this host has neither as cgroup v1 "
            "nor enabled in cgroup v2 (%s/cgroup.controllers)"
            % (flag, controller, layout.v2_mount or "/sys/fs/cgroup"))
    def place(mount_point, base, name, relative_base):
        if cgroup_path is None:
            return os.path.join(mount_point, (base if parent is None else parent).strip("/"), name)
        if cgroup_path.startswith("/"):
            return os.path.join(mount_point, cgroup_path.strip("/"))
        return os.path.join(mount_point, relative_base.strip("/"), cgroup_path)

    dirs = {}
    for name, (mount_point, own) in sorted(layout.v1.items()):
        path = place(mount_point, own, "minidocker-" + cid, own)
        dirs.setdefault((1, mount_point), (path, set()))[1].add(V2_NAMES.get(name, name))
    for controller in sorted(set(needs) | set(ACCOUNTING)):
        if layout.version_of(controller) == 2:  # (cpuacct exists on v1 only)
            path = place(layout.v2_mount, "mini-docker", cid, os.path.dirname(layout.v2_own))
            dirs.setdefault((2, layout.v2_mount), (path, set()))[1].add(controller)
    if layout.v2_mount and (2, layout.v2_mount) not in dirs:
        # A hybrid host's cgroup2 tree holds no controller, but its root
        # would be in reach all the same: joined too, under our own cgroup
        # as on v1 (with no controller enabled, any cgroup can have children).
        path = place(layout.v2_mount, layout.v2_own, "minidocker-" + cid, layout.v2_own)
        dirs[2, layout.v2_mount] = (path, set())
    return [(key[0], key[1], path, controllers)
            for key, (path, controllers) in sorted(dirs.items())]


def discard_v1_only(res, layout):
    """--oom-kill-disable is cgroup v1's memory.oom_control; cgroup v2 has
    no such knob (memory.oom.group is the opposite: kill all at once). As
    Docker does on such a host, it is discarded with a warning; and, as
    Docker warns, without --memory it lets the container take the host's
    memory with nobody to stop it."""
    if "oom_kill_disable" not in res:
        return
    if layout.version_of("memory") != 1:
        del res["oom_kill_disable"]
        warn("your kernel does not support --oom-kill-disable (cgroup v2 has no "
             "memory.oom_control): discarded")
    elif "memory" not in res:
        warn("the OOM killer is disabled for the container, but no memory limit is set, this "
             "can result in the system running out of resources")


def write_cgroup_file(directory, name, value):
    try:
        with open(os.path.join(directory, name), "w") as handle:
            handle.write(str(value))
    except OSError as err:
        raise MiniDockerError("cgroup: writing %r to %s/%s: %s"
                              % (str(value), directory, name, err.strerror))


def create_cgroups(cgroup_plan, res):
    """mkdir each cgroup (enabling v2 controllers on the way down) and write
    the limits. Returns the directories made, for removal."""
    made = []
    try:
        for version, mount_point, path, controllers in cgroup_plan:
            if version == 2:
                enable_v2_controllers(mount_point, os.path.dirname(path),
                                      controllers - BPF_CONTROLLERS)
            elif "cpuset" in controllers:
                inherit_cpuset(mount_point, os.path.dirname(path))
            make_cgroup(path)
            made.append(path)
            if version == 1 and "cpuset" in controllers:
                inherit_cpuset(mount_point, path)
            for controller, name, value in cgroup_writes(res, version):
                if controller in controllers and not implied_swap_unaccounted(res, path, name):
                    write_cgroup_file(path, name, value)
            if version == 2 and "devices" in controllers:
                attach_device_program(path, res["devices"])
    except BaseException:
        remove_cgroups(made)
        raise
    return made


SWAP_FILES = ("memory.swap.max", "memory.memsw.limit_in_bytes")


def implied_swap_unaccounted(res, path, name):
    """Is `name` the swap limit that -m implies, on a host that does not
    account swap (a kernel without swap accounting, or booted with
    swapaccount=0: the file is missing)? Then, as Docker does, the memory
    alone is limited, with a warning; a --memory-swap asked for is written,
    and fails."""
    if name not in SWAP_FILES or not res.get("memory_swap_implied") or \
            os.path.exists(os.path.join(path, name)):
        return False
    warn("this kernel does not account swap in cgroups (hint: boot with swapaccount=1): "
         "memory limited without swap")
    return True


def mkdir_cgroup(path, exist_ok=False):
    """mkdir one cgroup directory, on either version. Every failure is the
    same one line naming it: a path through a file of the hierarchy (as
    --cgroup-parent x/cgroup.procs) is EEXIST or ENOTDIR here."""
    try:
        os.mkdir(path)
    except OSError as err:
        if not (exist_ok and err.errno == errno.EEXIST and os.path.isdir(path)):
            raise MiniDockerError("cgroup: cannot make %s: %s" % (path, err.strerror))


def make_cgroup(path):
    """mkdir a cgroup and what is missing above it; a parent that another
    container removed meanwhile is made again, once."""
    for attempt in (1, 2):
        missing = []
        directory = os.path.dirname(path)
        while not os.path.isdir(directory):
            missing.insert(0, directory)
            directory = os.path.dirname(directory)
        try:
            for directory in missing:
                mkdir_cgroup(directory, exist_ok=True)
            mkdir_cgroup(path)
            return
        except MiniDockerError:  # ENOENT: a parent was removed under us
            if attempt == 2 or os.path.isdir(os.path.dirname(path)):
                raise


def missing_parents(cgroup_plan):
    """The directories above the containers' cgroups that do not exist yet
    (a new --cgroup-parent), outermost first: made by create_cgroups, and
    removed with the container when nothing else uses them."""
    missing = []
    for _, mount_point, path, _ in cgroup_plan:
        above = []
        directory = os.path.dirname(path)
        while directory != mount_point and not os.path.isdir(directory):
            above.insert(0, directory)
            directory = os.path.dirname(directory)
        missing += [d for d in above if d not in missing]
    return missing


def remove_empty_cgroups(paths):
    """rmdir each, innermost first, once: one that holds another container's
    cgroup (EBUSY) or is gone (ENOENT) stays as it is."""
    for path in sorted(paths, key=len, reverse=True):
        with suppress(OSError):
            os.rmdir(path)


def attach_device_program(path, rules):
    """cgroup v2: load the device list's program and attach it to the
    container's cgroup. An ancestor's programs attached with
    BPF_F_ALLOW_MULTI (a systemd unit's device policy) still run after ours
    (the child's first, <linux/bpf.h>), and a device must pass them all; an
    ancestor attached without it would refuse our attach (EPERM). We attach
    with BPF_F_ALLOW_MULTI ourselves, as runc does. The cgroup keeps the
    program; it goes with the cgroup's rmdir."""
    program = bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, compile_device_program(rules),
                            "minidocker_dev")
    try:
        cgroup = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            bpf_prog_attach(cgroup, program, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
        finally:
            os.close(cgroup)
    finally:
        os.close(program)


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
                mkdir_cgroup(directory, exist_ok=True)
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


def warm_cgroup_moves():
    """Our own pid written to our own cgroup.procs (of one hierarchy): no
    move, but the first write to a cgroup.procs waits out an RCU grace
    period (the kernel's cgroup_threadgroup_rwsem, 15-20 ms here), which
    writes soon after it then skip. On cgroup v2 the init of a container
    with a user namespace (chapter 7, continued) is written into its cgroup
    (the pids controller's: see CgroupEntry) only once stage 1 has forked
    it; started at the fork of stage 1, this wait runs beside stage 1's
    work instead of after it."""
    layout = detect_cgroups(read_text("/proc/self/mountinfo"), read_text("/proc/self/cgroup"))
    mount_point, own = next(iter(layout.v1.values())) if layout.v1 else \
        (layout.v2_mount, layout.v2_own)
    if mount_point:
        write_cgroup_file(os.path.join(mount_point, own.strip("/")), "cgroup.procs",
                          os.getpid())


# What a cgroup2 delegation hands over (the kernel's cgroup-v2.rst,
# "Delegation Containment"; systemd's Delegate= chowns the same).
DELEGATED_FILES = ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control")


def delegate_v2_cgroup(cgroup_plan, owner):
    """`run`'s container with a user namespace of root's (chapter 7,
    continued) on a cgroup2-only host (cgroup2 mounted at CGROUP_VIEW
    itself): its cgroup is its root's, as runc delegates it, so that in its
    cgroup namespace it sees its cgroup as its own (not nobody's). What it
    may change there is still bounded by its parent's limits, and by the
    view's read-only mount (--privileged, which would make it writable, is
    refused with a user namespace)."""
    for version, mount_point, path, controllers in cgroup_plan:
        if version == 2 and mount_point == CGROUP_VIEW and controllers:
            for name in DELEGATED_FILES:
                os.chown(os.path.join(path, name), *owner)


def join_cgroups(paths, pid):
    for path in paths:
        write_cgroup_file(path, "cgroup.procs", pid)


# Joining without the wait. A pid written to a cgroup.procs is a move of a
# whole thread group, for which the kernel takes cgroup_threadgroup_rwsem
# for writing; its first taker waits out an RCU grace period (8-20 ms on
# the 2-CPU host, 1-2 ms on a busy one), as runc's write waits. Two ways in
# take no such lock (kernel/cgroup/cgroup.c, cgroup_procs_write_start and
# cgroup_css_set_fork), and `run` takes both:
# - cgroup v2: clone3(CLONE_INTO_CGROUP), Linux 5.7. The child is born in
#   its cgroup; a fork takes that lock only for reading. crun forks so.
# - cgroup v1: a move of one thread, by the thread itself, is "0" written
#   to the hierarchy's `tasks` file. The container's init is one thread
#   when it is forked, and so moves whole: first thing, through descriptors
#   its parent opened (0.05 ms a hierarchy, measured on Linux 6.18).
# Where clone3 is refused (ENOSYS under an older kernel or a container's
# seccomp profile), the parent writes the pid to the v2 cgroup, as before.
# Only then: any other failure is the cgroup's answer, which a fork and a
# move would get round (a move is never counted against pids.max) or meet
# again, and after which a new pid namespace takes no process at all (its
# first fork failed: ENOMEM for every later one). (fork_into_cgroup, the
# clone3 that stands in for os.fork, is in chapter 2.)
CLONE3_HINTS = {errno.EAGAIN: "its task limit (pids.max), or a parent cgroup's, is reached",
                errno.EBUSY: "it has controllers enabled for its children (cgroup.subtree_control)"}


class CgroupEntry:
    """The way of a new process into the cgroups at `paths` (see above),
    made already: open() in the parent before the fork, fork(), then
    enter() first thing in the child, and rest() in the parent: the paths
    left to join_cgroups. A v1 cgroup is one with a `tasks` file."""

    def __init__(self, paths):
        self.v1 = [path for path in paths if os.path.exists(os.path.join(path, "tasks"))]
        self.v2 = [path for path in paths if path not in self.v1]
        self.tasks, self.birth, self.born = [], None, False

    def open(self, birth=True):
        """`birth`: by clone3 where it can (else the v2 cgroup is left to
        rest(), as when clone3 is refused)."""
        try:
            for path in self.v1:
                self.tasks.append(os.open(os.path.join(path, "tasks"), os.O_WRONLY | os.O_CLOEXEC))
            if birth and self.v2 and "clone3" in SYSCALLS:
                self.birth = os.open(self.v2[0], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            self.close()
            raise MiniDockerError("cgroup %s: %s" % (err.filename, err.strerror)) from None

    def fork(self):
        """os.fork(), the child born in the v2 cgroup where clone3 can."""
        try:
            pid = None if self.birth is None else fork_into_cgroup(self.birth)
        except OSError as err:
            raise syscall_error(err.errno, "starting a process in cgroup %s" % self.v2[0],
                                CLONE3_HINTS.get(err.errno)) from None
        self.born = pid is not None
        return os.fork() if pid is None else pid

    def enter(self):
        """The child's side: 0 to each v1 cgroup's `tasks`."""
        for fd in self.tasks:
            try:
                os.write(fd, b"0")
            except OSError as err:
                raise MiniDockerError("joining cgroup %s: %s"
                                      % (self.v1[self.tasks.index(fd)], err.strerror)) from None
        self.close()

    def rest(self):
        """The parent's side: the descriptors closed, and the paths left."""
        self.close()
        return [] if self.born else self.v2

    def close(self):
        for fd in self.tasks + ([self.birth] if self.birth is not None else []):
            os.close(fd)
        self.tasks, self.birth = [], None


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
                if err.errno != errno.EBUSY or time.monotonic() > deadline:  # tasks left
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


# What memory.limit_in_bytes reads when no limit is set: PAGE_COUNTER_MAX
# pages (<linux/page_counter.h>: LONG_MAX / PAGE_SIZE), in bytes, so a little under 2^63.
V1_UNLIMITED = ((1 << 63) - 1) // os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PAGE_SIZE")


def cgroup_usage(paths):
    """What the container uses now, as its cgroups count it: memory in
    bytes, and how much of it is page cache not used lately (docker's
    stats leaves that out), the memory limit (None: unlimited), CPU time in
    seconds, tasks. None where this kernel keeps no count.

        count           cgroup v2                  cgroup v1
        memory          memory.current             memory.usage_in_bytes
        inactive cache  memory.stat inactive_file  memory.stat total_inactive_file
        limit           memory.max ("max")         memory.limit_in_bytes (2^63 - a page)
        CPU             cpu.stat usage_usec        cpuacct.usage (ns)
        tasks           pids.current               pids.current"""
    def number(name):
        for path in paths:
            text = read_text(os.path.join(path, name)).strip()
            if is_number(text):
                return int(text)
        return None

    def field(name, key):
        for path in paths:
            for line in read_text(os.path.join(path, name)).splitlines():
                if line.startswith(key + " "):
                    return int(line.split()[1])
        return None

    cpu_ns = number("cpuacct.usage")
    if cpu_ns is None:  # v2; a v1 cpu.stat has no usage_usec
        usec = field("cpu.stat", "usage_usec")
        cpu_ns = None if usec is None else usec * 1000
    memory = number("memory.current")
    if memory is not None:
        inactive, limit = field("memory.stat", "inactive_file"), number("memory.max")
    else:
        memory = number("memory.usage_in_bytes")
        inactive = field("memory.stat", "total_inactive_file")
        limit = number("memory.limit_in_bytes")
    return {"memory": memory, "inactive_file": inactive,
            "memory_limit": None if limit is None or limit >= V1_UNLIMITED else limit,
            "cpu_seconds": None if cpu_ns is None else cpu_ns / 1e9,
            "pids": number("pids.current")}


def cgroup_processes(paths):
    """The processes in these cgroups and in the cgroups below them (a
    container may make cgroups of its own and move into them), by their
    cgroup.procs, sorted."""
    pids = set()
    for path in paths:
        for directory, _, _ in os.walk(path):
            procs = read_text(os.path.join(directory, "cgroup.procs"))
            pids.update(int(pid) for pid in procs.split())
    return sorted(pids)


# === 9. Networking: netlink spoken by hand, and rtnetlink's requests ===
# `ip` and `nft` are thin clients of netlink(7): a datagram socket to the
# kernel that carries requests and answers in one binary format. minidocker
# builds those messages itself, so it needs neither binary:
#   rtnetlink (NETLINK_ROUTE)       links, addresses, routes   rtnetlink(7)
#   nf_tables (NETLINK_NETFILTER)   NAT and filter rules       <linux/netfilter/nf_tables.h>
#
# A message is a header and a body; a body is a fixed struct and a list of
# attributes; an attribute may hold more attributes (nested). Everything is
# padded to 4 bytes (NLMSG_ALIGN, NLA_ALIGN).
#
#   struct nlmsghdr (16 bytes)               struct nlattr (4 bytes + payload)
#   0        4       6       8        12     0       2       4
#   +--------+-------+-------+--------+      +-------+-------+-----------+---+
#   | len    | type  | flags | seq    |      | len   | type  | payload   |pad|
#   +--------+-------+-------+--------+      +-------+-------+-----------+---+
#   | pid (0: from the kernel)        |      len counts header + payload, not the pad
#   +---------------------------------+
#
# The kernel answers a request flagged NLM_F_ACK with an NLMSG_ERROR message
# whose error field is 0 (success) or -errno; a dump (NLM_F_DUMP) answers with
# NLM_F_MULTI messages closed by NLMSG_DONE.
#
# The plan (pure functions, unit-tested with golden bytes) comes first, the
# socket after it, then what minidocker does with them:
#   - per network, a bridge (mini-br0, 10.0.0.1/24) made on first use and kept,
#     as docker0 is;
#   - per container, a veth pair: the host end on the bridge, the other end
#     born in the container's namespace as eth0 (IFLA_NET_NS_PID), then
#     configured from inside by the container's own stage 2;
#   - addresses leased in the container records under a lock file;
#   - one nf_tables table, `ip minidocker`, rebuilt whole in one atomic batch
#     from the live records each time a container comes or goes. Its chains:
#     guard (raw, prerouting), prerouting and output (DNAT of published
#     ports), forward (what may enter a bridge) and postrouting (masquerade).

NETLINK_ROUTE = 0               # <linux/netlink.h>
NETLINK_NETFILTER = 12
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300              # NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200              # for NEW requests: fail if it exists
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000           # may mark a nest; we write nests unmarked, as the kernel does
NLA_TYPE_MASK = 0x3FFF

NLMSG_HDR = "=IHHII"  # struct nlmsghdr: len, type, flags, seq, pid
NLA_HDR = "=HH"       # struct nlattr: len, type
NLMSG_HDRLEN, NLA_HDRLEN = struct.calcsize(NLMSG_HDR), struct.calcsize(NLA_HDR)
assert (NLMSG_HDRLEN, NLA_HDRLEN) == (16, 4)

# <linux/rtnetlink.h>: message types and the struct that opens each body.
#
#   struct ifinfomsg (16 bytes): links
#   +--------+-----+----------+-----------+-----------+------------+
#   | family | pad | type (2) | index (4) | flags (4) | change (4) |  change: which flags to set
#   +--------+-----+----------+-----------+-----------+------------+
#   struct ifaddrmsg (8 bytes): addresses
#   +--------+-----------+-------+-------+-----------+
#   | family | prefixlen | flags | scope | index (4) |
#   +--------+-----------+-------+-------+-----------+
#   struct rtmsg (12 bytes): routes
#   +--------+---------+---------+-----+-------+----------+-------+------+-----------+
#   | family | dst_len | src_len | tos | table | protocol | scope | type | flags (4) |
#   +--------+---------+---------+-----+-------+----------+-------+------+-----------+
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE = 24
IFINFOMSG = "=BxHiII"
IFADDRMSG = "=BBBBi"
RTMSG = "=BBBBBBBBI"
assert (struct.calcsize(IFINFOMSG), struct.calcsize(IFADDRMSG), struct.calcsize(RTMSG)) == (16, 8, 12)
IFLA_IFNAME = 3         # <linux/if_link.h>
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_NET_NS_PID = 19
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1      # <linux/veth.h>: the peer's ifinfomsg and attributes
IFA_ADDRESS = 1         # <linux/if_addr.h>
IFA_LOCAL = 2
RTA_GATEWAY = 5         # <linux/rtnetlink.h>
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3         # "installed during boot": what `ip route add` sends by default
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTN_LOCAL = 2

MESSAGE_NAMES = {RTM_NEWLINK: "RTM_NEWLINK", RTM_DELLINK: "RTM_DELLINK",
                 RTM_GETLINK: "RTM_GETLINK", RTM_NEWADDR: "RTM_NEWADDR",
                 RTM_GETADDR: "RTM_GETADDR", RTM_NEWROUTE: "RTM_NEWROUTE"}


# The flags of `run` that ask for a network, checked and turned into the
# plan that the rest of this chapter carries out (build_spec, in chapter 3,
# calls plan_network).

NETWORK_MODES = ("bridge", "none", "host")
DEFAULT_BRIDGE = "mini-br0"
DEFAULT_SUBNET = "10.0.0.0/24"


# IPv4 addresses and networks as the lease works with them. ipaddress's
# import is 6 ms (it brings functools and collections), and every bridge
# run paid it in its lease and again in its clean-up, both on the way from
# the command to the caller's prompt. The lease only handles addresses
# that are already checked and in their normal form: the defaults, what
# the flags' parsers turned through ipaddress (--subnet, -p IP:...), and
# what the kernel and the records give back. So a few lines of arithmetic
# serve there, and ipaddress stays for what a user writes. A test holds
# these to ipaddress.

def ipv4_number(text):
    """'10.0.0.2' -> 0x0A000002. Four decimal octets, none with a leading
    zero ("010" might be meant as octal: ipaddress refuses it too, since
    Python 3.8.12 and 3.9.5), or ValueError."""
    octets = text.split(".")
    if len(octets) != 4 or not all(
            octet.isdigit() and octet.isascii() and len(octet) <= 3
            and (octet == "0" or octet[0] != "0") and int(octet) < 256 for octet in octets):
        raise ValueError("%r is not an IPv4 address" % text)
    return int.from_bytes(bytes(int(octet) for octet in octets), "big")


def ipv4_text(number):
    """0x0A000002 -> '10.0.0.2'"""
    return ".".join(str(octet) for octet in number.to_bytes(4, "big"))


class IPv4Network:
    """'10.0.0.0/24', or an address alone, a /32: its first address (an
    int), its prefix length, and what the lease asks of a network. A bad
    address, a prefix length other than 0 to 32 in ASCII digits, or host
    bits set ('10.0.0.1/24', as ipaddress's strict ip_network has it) are a
    ValueError; interface() reads an address with its prefix."""

    __slots__ = ("first", "prefixlen")

    def __init__(self, text):
        address, slash, length = text.partition("/")
        self.first, self.prefixlen = ipv4_number(address), 32
        if slash:
            if not (length.isdigit() and length.isascii() and int(length) <= 32):
                raise ValueError("%r: the prefix length must be 0 to 32" % text)
            self.prefixlen = int(length)
        if self.first & ~self.mask:
            raise ValueError("%s has host bits set" % text)

    @staticmethod
    def interface(text):
        """'10.0.0.1/24' -> (the address as text, its network); ValueError
        as for a network, or without the prefix length."""
        address, slash, length = text.partition("/")
        if not slash:
            raise ValueError("%r has no prefix length" % text)
        network = IPv4Network("0.0.0.0/" + length)  # the length checked as any network's
        network.first = ipv4_number(address) & network.mask
        return address, network

    @property
    def mask(self):
        return 0xFFFFFFFF ^ (0xFFFFFFFF >> self.prefixlen)

    @property
    def last(self):
        """The network's last address: its broadcast address, for a /30 or
        larger; the address itself, for a /32."""
        return self.first | (0xFFFFFFFF >> self.prefixlen)

    @property
    def packed(self):
        """The first address as the network's headers carry it."""
        return self.first.to_bytes(4, "big")

    @property
    def netmask(self):
        return self.mask.to_bytes(4, "big")

    def hosts(self):
        """The addresses a host may have, as text: all but the network's
        own and its broadcast address (plan_subnet refuses a /31 or /32)."""
        return (ipv4_text(number) for number in range(self.first + 1, self.last))

    def __contains__(self, address):
        return self.first <= ipv4_number(address) <= self.last

    def overlaps(self, other):
        return self.first <= other.last and other.first <= self.last

    def subnet_of(self, other):
        return other.first <= self.first and self.last <= other.last

    def __eq__(self, other):
        if not isinstance(other, IPv4Network):
            return NotImplemented
        return (self.first, self.prefixlen) == (other.first, other.prefixlen)

    def __str__(self):
        return "%s/%d" % (ipv4_text(self.first), self.prefixlen)


def parse_port(text, spec, flag="--publish"):
    if not is_number(text) or not 0 < int(text) < 65536:
        raise MiniDockerError("invalid %s %r: port %r is not a number from 1 to 65535"
                              % (flag, spec, text))
    return int(text)


def parse_port_range(text, spec, flag="--publish"):
    """'80' -> (80, 80); '8080-8081' -> (8080, 8081)."""
    first, dash, last = text.partition("-")
    low = parse_port(first, spec, flag)
    high = parse_port(last, spec, flag) if dash else low
    if high < low:
        raise MiniDockerError("invalid %s %r: the range %s ends before it begins" % (flag, spec, text))
    return low, high


def parse_protocol(text, spec, flag="--publish"):
    """Docker's default is tcp; it also knows sctp, which minidocker's NAT
    rules do not."""
    proto = (text or "tcp").lower()
    if proto not in ("tcp", "udp"):
        raise MiniDockerError("invalid %s %r: protocol %r: minidocker publishes tcp and udp"
                              % (flag, spec, text))
    return proto


# A published port, once parsed, is a request: [host IP, first, last,
# proto, container port], the host port to be one of first..last. Docker's
# forms, and what they ask:
#   -p 8080:80                one host port:  [ip, 8080, 8080, proto, 80]
#   -p 80, -p IP::80          any free port of the ephemeral range: first = last = 0
#   -p 8080-8081:80-81        one request a port, paired in order (equal lengths)
#   -p 8000-8010:80           one port of the host's range, whichever is free
# The lease turns each request into the [ip, host port, proto, port] it got
# (assign_host_ports).
EPHEMERAL = 0


def parse_publish(text):
    """`-p [IP:][HOSTPORT[-END]:]CTRPORT[-END][/tcp|/udp]` -> requests; the
    errors in Docker's words (go-connections' ParsePortSpec)."""
    import ipaddress
    rest, _, proto = text.partition("/")
    parts = rest.split(":")
    if len(parts) > 3:
        raise MiniDockerError("invalid --publish %r: expected [IP:][HOSTPORT:]CTRPORT[/tcp|/udp]"
                              % text)
    if not parts[-1]:
        raise MiniDockerError("invalid --publish %r: no port specified: %s<empty>" % (text, text))
    proto = parse_protocol(proto, text)
    host_ip = parts[0] if len(parts) == 3 and parts[0] else "0.0.0.0"
    try:
        host_ip = str(ipaddress.IPv4Address(host_ip))
    except ValueError:
        raise MiniDockerError("invalid --publish %r: %r is not an IPv4 address" % (text, host_ip))
    low, high = parse_port_range(parts[-1], text)
    if len(parts) == 1 or not parts[-2]:
        return [[host_ip, EPHEMERAL, EPHEMERAL, proto, port] for port in range(low, high + 1)]
    first, last = parse_port_range(parts[-2], text)
    if last - first == high - low:
        return [[host_ip, first + n, first + n, proto, low + n] for n in range(high - low + 1)]
    if low != high:
        raise MiniDockerError("invalid --publish %r: invalid ranges specified for container and "
                              "host Ports: %s and %s" % (text, parts[-1], parts[-2]))
    return [[host_ip, first, last, proto, low]]


def parse_expose(text):
    """`--expose PORT[-END][/tcp|/udp]` -> [[port, proto], ...]."""
    rest, _, proto = text.partition("/")
    low, high = parse_port_range(rest, text, "--expose")
    proto = parse_protocol(proto, text, "--expose")
    return [[port, proto] for port in range(low, high + 1)]


def parse_add_host(text):
    """`--add-host NAME:IP`; IP may be host-gateway (the bridge's address)."""
    import ipaddress
    name, sep, ip = text.partition(":")
    if not sep or not name or not ip:
        raise MiniDockerError("invalid --add-host %s: expected NAME:IP" % quote(text))
    check_hostname(name, "--add-host name")
    if ip != "host-gateway":
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise MiniDockerError("invalid --add-host %r: %r is not an IP address" % (text, ip))
    return (name, ip)


def plan_network(mode, subnet, bridge, publish, dns, add_hosts, expose=(), publish_all=False):
    """--network and friends -> the network plan (chapter 9 carries it out).
    ipaddress is imported here only for --subnet, -p or --add-host: every
    Spec plans the default network (none), exec's too, and the bridge's
    lease works out its addresses without it (IPv4Network)."""
    if mode not in NETWORK_MODES:
        raise MiniDockerError("unknown --network %r: minidocker knows bridge, none and host" % mode)
    if mode != "bridge" and (subnet or bridge or publish or publish_all):
        raise MiniDockerError("--subnet, --bridge, --publish and --publish-all need --network "
                              "bridge, not %s" % mode)
    network = plan_subnet(subnet) if mode == "bridge" else DEFAULT_SUBNET
    check_ifname(bridge or DEFAULT_BRIDGE, "--bridge")
    ports = [request for text in publish for request in parse_publish(text)]
    seen = set()
    for host_ip, first, last, proto, _ in ports:
        if first == last != EPHEMERAL and (host_ip, first, proto) in seen:
            raise MiniDockerError("--publish %s:%d/%s is given twice" % (host_ip, first, proto))
        seen.add((host_ip, first, proto))
    exposed = plan_exposed(ports, expose)
    if publish_all:  # -P: what no -p publishes gets a port of the ephemeral range
        bound = {(port, proto) for _, _, _, proto, port in ports}
        ports += [["0.0.0.0", EPHEMERAL, EPHEMERAL, proto, port]
                  for port, proto in exposed if (port, proto) not in bound]
    for server in dns:
        if is_loopback_address(server) is None:
            raise MiniDockerError("invalid --dns %r: not an IP address" % server)
    hosts = [parse_add_host(text) for text in add_hosts]
    if mode != "bridge" and any(ip == "host-gateway" for _, ip in hosts):
        raise MiniDockerError("--add-host NAME:host-gateway needs --network bridge")
    return {"mode": mode, "bridge": bridge or DEFAULT_BRIDGE, "subnet": network,
            "ports": ports, "expose": exposed, "dns": list(dns), "add_hosts": hosts}


def plan_subnet(subnet):
    """--subnet (default DEFAULT_SUBNET), checked, in its normal form."""
    if not subnet:
        return DEFAULT_SUBNET
    import ipaddress
    try:
        network = ipaddress.IPv4Network(subnet)
    except ValueError as err:
        raise MiniDockerError("invalid --subnet %r: %s" % (subnet, err))
    if network.prefixlen > 30:
        raise MiniDockerError("invalid --subnet %r: a /%d has no room for a gateway and a container"
                              % (subnet, network.prefixlen))
    return str(network)


def plan_exposed(ports, expose):
    """The container's exposed ports, [port, proto] sorted: --expose's (a
    rootfs directory has no image config to declare any) and every port
    that -p publishes, as Docker counts them."""
    exposed = {(port, proto) for _, _, _, proto, port in ports}
    exposed.update((port, proto) for text in expose for port, proto in parse_expose(text))
    return [list(pair) for pair in sorted(exposed)]


def nl_attr(kind, payload):
    """One attribute, padded to 4 bytes."""
    return struct.pack(NLA_HDR, NLA_HDRLEN + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def nl_nest(kind, *attrs):
    return nl_attr(kind, b"".join(attrs))


def nl_string(kind, text):
    return nl_attr(kind, text.encode() + b"\0")


def nl_u32(kind, value):
    return nl_attr(kind, struct.pack("=I", value))


def nl_message(kind, flags, seq, body):
    return struct.pack(NLMSG_HDR, NLMSG_HDRLEN + len(body), kind, flags, seq, 0) + body


def parse_messages(data):
    """A datagram from the kernel -> [(type, flags, seq, body)]."""
    messages, offset = [], 0
    while offset + NLMSG_HDRLEN <= len(data):
        length, kind, flags, seq, _ = struct.unpack_from(NLMSG_HDR, data, offset)
        if length < NLMSG_HDRLEN:
            raise MiniDockerError("netlink: malformed message of %d bytes" % length)
        messages.append((kind, flags, seq, data[offset + NLMSG_HDRLEN:offset + length]))
        offset += (length + 3) & ~3
    return messages


def parse_attrs(data):
    """Attributes -> {type: payload}, flags (NLA_F_NESTED) masked off."""
    attrs, offset = {}, 0
    while offset + NLA_HDRLEN <= len(data):
        length, kind = struct.unpack_from(NLA_HDR, data, offset)
        if length < NLA_HDRLEN:
            break
        attrs[kind & NLA_TYPE_MASK] = data[offset + NLA_HDRLEN:offset + length]
        offset += (length + 3) & ~3
    return attrs


def error_of(body):
    """The errno an NLMSG_ERROR carries (0: an acknowledgement)."""
    return -struct.unpack_from("=i", body)[0]


def check_ifname(name, what):
    """Interface names: 1-15 bytes, no '/', ':' or whitespace (dev_valid_name)."""
    if not 0 < len(name.encode()) < IFNAMSIZ or name in (".", "..") or \
            any(c in name for c in "/: \t\n"):
        raise MiniDockerError("invalid %s %r: an interface name has 1-15 characters, "
                              "without '/', ':' or spaces" % (what, name))


# Each request below returns (type, flags, body, what): `what` names it in
# errors, as "RTM_NEWLINK veth a1b2c3 failed: File exists".

def request_new_bridge(name):
    """ip link add NAME type bridge"""
    body = struct.pack(IFINFOMSG, AF_UNSPEC, 0, 0, 0, 0) + nl_string(IFLA_IFNAME, name) \
        + nl_nest(IFLA_LINKINFO, nl_attr(IFLA_INFO_KIND, b"bridge"))  # no NUL, as `ip` sends it
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, "bridge " + name


def request_new_veth(name, peer, pid):
    """ip link add NAME type veth peer name PEER netns PID: the peer is born
    in the namespace of process PID, so it never appears on the host."""
    peer_info = struct.pack(IFINFOMSG, AF_UNSPEC, 0, 0, 0, 0) \
        + nl_u32(IFLA_NET_NS_PID, pid) + nl_string(IFLA_IFNAME, peer)
    body = struct.pack(IFINFOMSG, AF_UNSPEC, 0, 0, 0, 0) + nl_string(IFLA_IFNAME, name) \
        + nl_nest(IFLA_LINKINFO, nl_attr(IFLA_INFO_KIND, b"veth"),
                  nl_nest(IFLA_INFO_DATA, nl_attr(VETH_INFO_PEER, peer_info)))
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, "veth " + name


def request_link_up(index, name, master=None):
    """ip link set NAME [master BRIDGE] up"""
    body = struct.pack(IFINFOMSG, AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
    if master is not None:
        body += nl_u32(IFLA_MASTER, master)
    return RTM_NEWLINK, 0, body, "up " + name


def request_get_link(name):
    """ip link show NAME: answered by one RTM_NEWLINK, or ENODEV."""
    body = struct.pack(IFINFOMSG, AF_UNSPEC, 0, 0, 0, 0) + nl_string(IFLA_IFNAME, name)
    return RTM_GETLINK, 0, body, name


def request_delete_link(index, name):
    """ip link del NAME (a veth takes its peer with it)."""
    return RTM_DELLINK, 0, struct.pack(IFINFOMSG, AF_UNSPEC, 0, index, 0, 0), name


def request_new_address(index, name, address, prefixlen):
    """ip addr add ADDRESS/PREFIX dev NAME (IFA_LOCAL is the address itself;
    IFA_ADDRESS the peer's, the same on a broadcast link). `address` as
    text: the container's side packs it without ipaddress (configure_eth0)."""
    import _socket
    raw = _socket.inet_pton(_socket.AF_INET, address)
    body = struct.pack(IFADDRMSG, AF_INET, prefixlen, 0,
                       RT_SCOPE_UNIVERSE, index) + nl_attr(IFA_LOCAL, raw) + nl_attr(IFA_ADDRESS, raw)
    return RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, "%s %s/%d" % (name, address, prefixlen)


def request_get_addresses():
    """ip -4 addr show: a dump of every IPv4 address."""
    return RTM_GETADDR, NLM_F_DUMP, struct.pack(IFADDRMSG, AF_INET, 0, 0, 0, 0), "addresses"


def request_default_route(gateway):
    """ip route add default via GATEWAY (text, as request_new_address's)"""
    import _socket
    body = struct.pack(RTMSG, AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE,
                       RTN_UNICAST, 0) + nl_attr(RTA_GATEWAY,
                                                 _socket.inet_pton(_socket.AF_INET, gateway))
    return RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, "default via %s" % gateway


def parse_addresses(messages):
    """A dump's RTM_NEWADDR messages (of IPv4 addresses: request_get_addresses)
    -> [(interface index, 'ADDRESS/PREFIXLEN')]."""
    found = []
    for kind, _, _, body in messages:
        if kind != RTM_NEWADDR:
            continue
        _, prefix, _, _, index = struct.unpack_from(IFADDRMSG, body)
        attrs = parse_attrs(body[struct.calcsize(IFADDRMSG):])
        raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
        if raw and len(raw) == 4:
            found.append((index, "%s/%d" % (ipv4_text(int.from_bytes(raw, "big")), prefix)))
    return found


# === 9. (continued) nf_tables: the NAT table's messages ===
# nf_tables (<linux/netfilter/nf_tables.h>, <linux/netfilter/nfnetlink.h>).
# Changes go in a batch: BATCH_BEGIN, the requests, BATCH_END, sent as one
# datagram and applied all or nothing. A request's type is the subsystem
# (10) shifted left by 8, plus the operation. Its body opens with
#
#   struct nfgenmsg (4 bytes)
#   +--------+---------+-------------------+
#   | family | version | res_id (big end.) |
#   +--------+---------+-------------------+
#
# and every integer attribute of nf_tables is big-endian. A rule is a list
# of expressions run in order over registers, as a tiny virtual machine:
# load a field into a register (meta, payload, fib, ct), compare it (cmp),
# and act (masq, nat, or a verdict: immediate accept or drop). `nft
# --debug=netlink list ruleset` prints them.
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE = 0, 2, 3, 6
NFGENMSG = "=BBH"      # family, version, res_id (packed big-endian by hand)
assert struct.calcsize(NFGENMSG) == 4
NFPROTO_IPV4 = 2       # <linux/netfilter.h>: the `ip` family of nft
NF_INET_PRE_ROUTING, NF_INET_FORWARD, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = 0, 2, 3, 4
NF_DROP, NF_ACCEPT = 0, 1   # verdicts
# <linux/netfilter_ipv4.h>: nft's raw, dstnat, filter and srcnat
NF_IP_PRI_RAW, NF_IP_PRI_NAT_DST, NF_IP_PRI_FILTER, NF_IP_PRI_NAT_SRC = -300, -100, 0, 100
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS = 1, 2
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_TYPE = 1, 3, 4, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2
NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE = 1, 2, 1
NFT_REG_VERDICT, NFT_REG_1, NFT_REG_2 = 0, 1, 2    # 16-byte registers
# Each expression's attributes: enum nft_<name>_attributes.
NFTA_META_DREG, NFTA_META_KEY = 1, 2
NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA = 1, 2, 3
NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_OFFSET, NFTA_PAYLOAD_LEN = 1, 2, 3, 4
NFTA_BITWISE_SREG, NFTA_BITWISE_DREG, NFTA_BITWISE_LEN = 1, 2, 3
NFTA_BITWISE_MASK, NFTA_BITWISE_XOR, NFTA_BITWISE_OP = 4, 5, 6
NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA = 1, 2
NFTA_FIB_DREG, NFTA_FIB_RESULT, NFTA_FIB_FLAGS = 1, 2, 3
NFTA_CT_DREG, NFTA_CT_KEY = 1, 2
NFTA_NAT_TYPE, NFTA_NAT_FAMILY, NFTA_NAT_REG_ADDR_MIN, NFTA_NAT_REG_ADDR_MAX = 1, 2, 3, 4
NFTA_NAT_REG_PROTO_MIN, NFTA_NAT_REG_PROTO_MAX, NFTA_NAT_FLAGS = 5, 6, 7
# ... and the values they take.
NFT_META_IIFNAME = 6
NFT_META_OIFNAME, NFT_META_L4PROTO = 7, 16
NFT_CMP_EQ, NFT_CMP_NEQ = 0, 1
NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
NFT_BITWISE_BOOL = 0   # mask and xor; newer headers call it NFT_BITWISE_MASK_XOR
NFT_NAT_DNAT = 1
NFT_CT_STATE, NFT_CT_STATUS = 0, 2
NFT_FIB_RESULT_ADDRTYPE, NFTA_FIB_F_DADDR = 3, 2
# <linux/netfilter/nf_conntrack_common.h>: `ct state` bits are
# NF_CT_STATE_BIT(ctinfo) = 1 << (ctinfo + 1), IP_CT_ESTABLISHED 0 and
# IP_CT_RELATED 1 (a reply counts as its original); `ct status` bits.
NF_CT_STATE_ESTABLISHED, NF_CT_STATE_RELATED = 1 << 1, 1 << 2
IPS_DST_NAT = 1 << 5
NF_NAT_RANGE_MAP_IPS, NF_NAT_RANGE_PROTO_SPECIFIED = 1, 2   # <linux/netfilter/nf_nat.h>
NAT_TABLE = "minidocker"
IPPROTO = {"tcp": 6, "udp": 17}  # <netinet/in.h>: IPPROTO_TCP, IPPROTO_UDP


def nft_be32(kind, value):
    return nl_attr(kind, struct.pack(">i" if value < 0 else ">I", value))


def nft_message(operation, flags, seq, family, attrs):
    body = struct.pack(NFGENMSG, family, 0, 0) + b"".join(attrs)
    return nl_message((NFNL_SUBSYS_NFTABLES << 8) | operation, NLM_F_REQUEST | flags, seq, body)


def nft_batch_edge(kind, seq):
    """BATCH_BEGIN or BATCH_END: res_id names the subsystem the batch is for."""
    body = struct.pack("=BB", AF_UNSPEC, 0) + struct.pack(">H", NFNL_SUBSYS_NFTABLES)
    return nl_message(kind, NLM_F_REQUEST, seq, body)


def nft_expr(name, *attrs):
    return nl_nest(NFTA_LIST_ELEM, nl_string(NFTA_EXPR_NAME, name),
                   nl_nest(NFTA_EXPR_DATA, *attrs))


def nft_data(kind, raw):
    return nl_nest(kind, nl_attr(NFTA_DATA_VALUE, raw))


def expr_meta(key, register=NFT_REG_1):
    """meta KEY -> register"""
    return nft_expr("meta", nft_be32(NFTA_META_KEY, key), nft_be32(NFTA_META_DREG, register))


def expr_cmp(op, raw, register=NFT_REG_1):
    """register OP raw ? go on : next rule"""
    return nft_expr("cmp", nft_be32(NFTA_CMP_SREG, register), nft_be32(NFTA_CMP_OP, op),
                    nft_data(NFTA_CMP_DATA, raw))


def expr_payload(base, offset, length, register=NFT_REG_1):
    """LENGTH bytes of the packet at BASE+OFFSET -> register"""
    return nft_expr("payload", nft_be32(NFTA_PAYLOAD_DREG, register),
                    nft_be32(NFTA_PAYLOAD_BASE, base), nft_be32(NFTA_PAYLOAD_OFFSET, offset),
                    nft_be32(NFTA_PAYLOAD_LEN, length))


def expr_bitwise(mask, register=NFT_REG_1):
    """register = (register & mask) ^ 0. NFTA_BITWISE_OP came with Linux
    5.6; older kernels ignore it and do just this."""
    return nft_expr("bitwise", nft_be32(NFTA_BITWISE_SREG, register),
                    nft_be32(NFTA_BITWISE_DREG, register), nft_be32(NFTA_BITWISE_LEN, len(mask)),
                    nft_be32(NFTA_BITWISE_OP, NFT_BITWISE_BOOL),
                    nft_data(NFTA_BITWISE_MASK, mask), nft_data(NFTA_BITWISE_XOR, bytes(len(mask))))


def expr_immediate(raw, register):
    """raw -> register"""
    return nft_expr("immediate", nft_be32(NFTA_IMMEDIATE_DREG, register),
                    nft_data(NFTA_IMMEDIATE_DATA, raw))


def expr_ct(key):
    """ct KEY (a field of the packet's connection) -> register 1"""
    return nft_expr("ct", nft_be32(NFTA_CT_DREG, NFT_REG_1), nft_be32(NFTA_CT_KEY, key))


def match_ifname(key, name, op):
    """iifname/oifname [!=] NAME: names compare as 16 zero-padded bytes."""
    return [expr_meta(key), expr_cmp(op, name.encode().ljust(IFNAMSIZ, b"\0"))]


def match_prefix(offset, network, op=NFT_CMP_EQ):
    """The IPv4 address at OFFSET of the header is [not] in NETWORK (text:
    an address is a /32). A prefix on a byte boundary compares only its
    bytes (a /24 loads 3, an address 4), as nft does; another is masked
    first."""
    network = IPv4Network(network)
    if network.prefixlen % 8 == 0:
        size = network.prefixlen // 8
        return [expr_payload(NFT_PAYLOAD_NETWORK_HEADER, offset, size),
                expr_cmp(op, network.packed[:size])]
    return [expr_payload(NFT_PAYLOAD_NETWORK_HEADER, offset, 4),
            expr_bitwise(network.netmask), expr_cmp(op, network.packed)]


def match_saddr(network):
    """ip saddr NETWORK: bytes 12-15 of the IPv4 header"""
    return match_prefix(12, network)


def match_daddr(network, op=NFT_CMP_EQ):
    """ip daddr [!=] NETWORK (an address is a /32): bytes 16-19"""
    return match_prefix(16, network, op)


def match_local_daddr():
    """fib daddr type local: the packet is for one of this namespace's own
    addresses, 127.0.0.1 included."""
    return [nft_expr("fib", nft_be32(NFTA_FIB_DREG, NFT_REG_1),
                     nft_be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE),
                     nft_be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR)),
            expr_cmp(NFT_CMP_EQ, struct.pack("=I", RTN_LOCAL))]


def match_dport(proto, port):
    """meta l4proto PROTO th dport PORT: bytes 2-3 of the TCP or UDP header"""
    return [expr_meta(NFT_META_L4PROTO), expr_cmp(NFT_CMP_EQ, bytes([IPPROTO[proto]])),
            expr_payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2), expr_cmp(NFT_CMP_EQ, struct.pack(">H", port))]


def match_ct_bits(key, bits):
    """ct state A,B / ct status A: any of BITS is set in the connection's
    state or status, a host-endian 32-bit word."""
    return [expr_ct(key), expr_bitwise(struct.pack("=I", bits)), expr_cmp(NFT_CMP_NEQ, bytes(4))]


def match_dnat_status():
    """ct status dnat: the connection was DNATed."""
    return match_ct_bits(NFT_CT_STATUS, IPS_DST_NAT)


def match_established():
    """ct state established,related: a packet of a connection already let
    through, in either direction, or one it spawned (an ICMP error, an FTP
    data connection)."""
    return match_ct_bits(NFT_CT_STATE, NF_CT_STATE_ESTABLISHED | NF_CT_STATE_RELATED)


def action_verdict(code):
    """accept or drop: the verdict register := CODE"""
    verdict = nl_nest(NFTA_DATA_VERDICT, nft_be32(NFTA_VERDICT_CODE, code))
    return [nft_expr("immediate", nft_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT),
                     nl_nest(NFTA_IMMEDIATE_DATA, verdict))]


def action_masquerade():
    return [nft_expr("masq")]


def action_dnat(address, port):
    """dnat to ADDRESS:PORT, a range of one"""
    return [expr_immediate(ipv4_number(address).to_bytes(4, "big"), NFT_REG_1),
            expr_immediate(struct.pack(">H", port), NFT_REG_2),
            nft_expr("nat", nft_be32(NFTA_NAT_TYPE, NFT_NAT_DNAT),
                     nft_be32(NFTA_NAT_FAMILY, NFPROTO_IPV4),
                     nft_be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1),
                     nft_be32(NFTA_NAT_REG_ADDR_MAX, NFT_REG_1),
                     nft_be32(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2),
                     nft_be32(NFTA_NAT_REG_PROTO_MAX, NFT_REG_2),
                     nft_be32(NFTA_NAT_FLAGS, NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED))]


LOOPBACK = "127.0.0.0/8"


def nat_rules(leases):
    """The table's rules for the live containers: [(chain, [expressions])].
    leases: those of the containers still running.

    - postrouting: the subnet's traffic leaving by another interface is
      masqueraded (takes the outgoing interface's address), so containers
      reach past the host.
    - prerouting (from outside) and output (from the host's own processes):
      a published port is DNATed to the container (publish_rules).
    - postrouting again, hairpin: a container reaching a published port
      through a host address is DNATed back onto the bridge; the server
      would answer the client directly, bypassing the host's conntrack, so
      such connections are masqueraded to the gateway.
    - postrouting again: a published port reached through 127.0.0.1 leaves
      for the bridge with source 127.0.0.1, which the container could not
      answer; it is masqueraded to the gateway. The kernel would not even
      route it there without route_localnet=1 on the bridge (set once this
      table is in place, by set_route_localnet): 127.0.0.0/8 is otherwise a
      martian outside `lo`.
    - guard, before everything (priority raw): route_localnet's other side.
    - forward: what other hosts may open into the bridge (forward_rules)."""
    rules, seen = [], set()
    for lease in leases:
        subnet = lease["subnet"]
        if (lease["bridge"], subnet) not in seen:
            seen.add((lease["bridge"], subnet))
            rules.append(("postrouting", match_saddr(subnet)
                          + match_ifname(NFT_META_OIFNAME, lease["bridge"], NFT_CMP_NEQ)
                          + action_masquerade()))
            rules.append(("postrouting", match_saddr(subnet)
                          + match_ifname(NFT_META_OIFNAME, lease["bridge"], NFT_CMP_EQ)
                          + match_dnat_status() + action_masquerade()))
        rules += publish_rules(lease["address"], lease["ports"])
    for bridge in sorted({lease["bridge"] for lease in leases}):
        rules.append(("postrouting", match_saddr(LOOPBACK)
                      + match_ifname(NFT_META_OIFNAME, bridge, NFT_CMP_EQ) + action_masquerade()))
        # route_localnet's other side (CVE-2020-8558): a container could
        # send to 127.0.0.1 through the bridge and reach the host's
        # loopback-only services. Such packets are dropped first.
        rules.append(("guard", match_ifname(NFT_META_IIFNAME, bridge, NFT_CMP_EQ)
                      + match_daddr(LOOPBACK) + action_verdict(NF_DROP)))
        rules += forward_rules(bridge)
    return rules


def publish_rules(container_ip, ports):
    """-p [IP:]HOSTPORT:CTRPORT: DNAT rules in output, for the host's own
    processes, and in prerouting, for other hosts, but never for a loopback
    address there. A packet for 127.0.0.1 that comes in from another host
    (one that routes 127.0.0.0/8 via this one) is a martian the kernel
    drops, but only at the routing decision, which comes after prerouting:
    DNATed before it, it would reach the container (CVE-2020-8558's
    class). Our own processes' packets to 127.0.0.1 are DNATed in output;
    their way back in through `lo` belongs to a connection already NATed,
    so prerouting's rules never see them. So 127.0.0.1:HOSTPORT:CTRPORT
    has an output rule only, and a port on every address (`fib daddr type
    local`, which 127.0.0.0/8 is) excludes 127.0.0.0/8 in prerouting."""
    rules = []
    for host_ip, host_port, proto, port in ports:
        to = match_dport(proto, host_port) + action_dnat(container_ip, port)
        if host_ip == "0.0.0.0":
            rules += [("prerouting", match_local_daddr() + match_daddr(LOOPBACK, NFT_CMP_NEQ) + to),
                      ("output", match_local_daddr() + to)]
            continue
        if not IPv4Network(host_ip).subnet_of(IPv4Network(LOOPBACK)):
            rules.append(("prerouting", match_daddr(host_ip) + to))
        rules.append(("output", match_daddr(host_ip) + to))
    return rules


def forward_rules(bridge):
    """What is forwarded into the bridge, as Docker's isolation rules judge
    it: with ip_forward=1 a neighbour that routes the subnet via this host
    could otherwise open any port of any container. In order, accepted:
    packets of connections already let through (answers to the containers'
    own), connections DNATed by a published port, and the bridge's traffic
    to itself (container to container, allowed as in Docker: bridged
    frames skip the forward hook unless br_netfilter is loaded, and when
    it is they come in and go out by the bridge). Anything else into the
    bridge is dropped, from another bridge's containers too. Traffic
    out of the bridge, and the host's other forwarding, are not judged
    here: the chain's policy accepts them, and a host firewall's own
    forward chain still has its say."""
    into = match_ifname(NFT_META_OIFNAME, bridge, NFT_CMP_EQ)
    return [("forward", into + match_established() + action_verdict(NF_ACCEPT)),
            ("forward", into + match_dnat_status() + action_verdict(NF_ACCEPT)),
            ("forward", match_ifname(NFT_META_IIFNAME, bridge, NFT_CMP_EQ) + into
             + action_verdict(NF_ACCEPT)),
            ("forward", into + action_verdict(NF_DROP))]


NAT_CHAINS = (("guard", "filter", NF_INET_PRE_ROUTING, NF_IP_PRI_RAW),
              ("prerouting", "nat", NF_INET_PRE_ROUTING, NF_IP_PRI_NAT_DST),
              ("forward", "filter", NF_INET_FORWARD, NF_IP_PRI_FILTER),
              ("output", "nat", NF_INET_LOCAL_OUT, NF_IP_PRI_NAT_DST),
              ("postrouting", "nat", NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC))


def nat_batch(rules, seq=1):
    """The table rebuilt whole, as one transaction: create it (a no-op if it
    exists), delete it, and, if any rule is left, create it again with its
    chains and rules. Returns (datagram, {seq: what}) for the error report."""
    table = nl_string(NFTA_TABLE_NAME, NAT_TABLE)
    new_table = (NFT_MSG_NEWTABLE, NLM_F_CREATE, [table, nft_be32(NFTA_TABLE_FLAGS, 0)],
                 "NFT_MSG_NEWTABLE " + NAT_TABLE)
    steps = [new_table, (NFT_MSG_DELTABLE, 0, [table], "NFT_MSG_DELTABLE " + NAT_TABLE)]
    if rules:
        steps.append(new_table)
        for name, kind, hook, priority in NAT_CHAINS:
            steps.append((NFT_MSG_NEWCHAIN, NLM_F_CREATE, [
                nl_string(NFTA_CHAIN_TABLE, NAT_TABLE), nl_string(NFTA_CHAIN_NAME, name),
                nl_string(NFTA_CHAIN_TYPE, kind),
                nl_nest(NFTA_CHAIN_HOOK, nft_be32(NFTA_HOOK_HOOKNUM, hook),
                        nft_be32(NFTA_HOOK_PRIORITY, priority))], "NFT_MSG_NEWCHAIN " + name))
        for chain, expressions in rules:
            steps.append((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, [
                nl_string(NFTA_RULE_TABLE, NAT_TABLE), nl_string(NFTA_RULE_CHAIN, chain),
                nl_nest(NFTA_RULE_EXPRESSIONS, *expressions)],
                "NFT_MSG_NEWRULE " + chain))
    datagram, names = [nft_batch_edge(NFNL_MSG_BATCH_BEGIN, seq)], {}
    for offset, (operation, flags, attrs, what) in enumerate(steps, 1):
        datagram.append(nft_message(operation, flags | NLM_F_ACK, seq + offset, NFPROTO_IPV4, attrs))
        names[seq + offset] = what
    datagram.append(nft_batch_edge(NFNL_MSG_BATCH_END, seq + len(steps) + 1))
    return b"".join(datagram), names


# === 9. (continued) The socket, then bridge, veth, NAT and leases ===


class NetlinkError(MiniDockerError):
    """A request the kernel refused; .errno says why."""

    def __init__(self, err, what, hint=None, verb="failed"):
        text = "%s %s: %s" % (what, verb, os.strerror(err))
        super().__init__(text + (" (hint: %s)" % hint if hint else ""))
        self.errno = err


NETLINK_TIMEOUT = 10   # seconds: the kernel answers in milliseconds, a busy rtnl lock in seconds
NFTABLES_HINT = ("the kernel has no nf_tables (CONFIG_NF_TABLES); "
                 "--network none and --network host need none")
# A rule whose expression type the kernel lacks, after it tried to load the
# module, is refused with ENOENT (nf_tables_api.c, nft_expr_type_get).
NFT_EXPRESSIONS_HINT = ("the kernel may lack one of the nf_tables expressions the rules "
                        "use: nat, masq, fib, ct (CONFIG_NFT_NAT, _MASQ, _FIB_INET, _CT)")


class Netlink:
    """A netlink socket. It speaks for the network namespace it was opened
    in, whatever namespace its user moves to later (netlink(7)). A request
    the kernel never answers ends in an error, not a hang."""

    def __init__(self, protocol=NETLINK_ROUTE, timeout=NETLINK_TIMEOUT):
        import _socket
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                                   protocol)
        self.sock.bind((0, 0))  # port 0: the kernel picks ours
        self.sock.settimeout(timeout)
        self.seq = 0

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.sock.close()

    def receive(self, what):
        """The next datagram of answers to WHAT."""
        import _socket
        try:
            return self.sock.recv(1 << 17)
        except _socket.timeout:
            raise MiniDockerError("%s: no answer from the kernel in %g s"
                                  % (what, self.sock.gettimeout())) from None

    def call(self, request):
        """Send one rtnetlink request and return the kernel's answers (a
        dump's messages, or GETLINK's one); raise on NLMSG_ERROR."""
        kind, flags, body, what = request
        what = "%s %s" % (MESSAGE_NAMES[kind], what)
        self.seq += 1
        # Not `flags & NLM_F_DUMP`: on a NEW request the same bits mean
        # NLM_F_EXCL and NLM_F_REPLACE. A dump ends with NLMSG_DONE instead.
        if flags != NLM_F_DUMP:
            flags |= NLM_F_ACK
        self.sock.send(nl_message(kind, NLM_F_REQUEST | flags, self.seq, body))
        answers = []
        while True:
            for answer in parse_messages(self.receive(what)):
                if answer[2] != self.seq:
                    continue  # a late answer to an earlier request
                if answer[0] == NLMSG_ERROR:
                    if error_of(answer[3]):
                        raise NetlinkError(error_of(answer[3]), what)
                    return answers
                if answer[0] == NLMSG_DONE:
                    return answers
                answers.append(answer)

    def batch(self, datagram, names):
        """Send an nf_tables batch numbered after self.seq (nat_batch(rules,
        nl.seq + 1)) and wait for its answers. Every request in it was
        flagged NLM_F_ACK, so each gets one, and a refused one aborts the
        whole batch. The kernel may also refuse the batch itself, answering
        BATCH_BEGIN's sequence number, and then it reads no further, so
        nothing else comes: a res_id it does not know (EINVAL), or
        nfnetlink without nf_tables (EOPNOTSUPP). Any error ends the wait."""
        sent = [seq for _, _, seq, _ in parse_messages(datagram)]
        self.seq = max(sent)
        self.sock.send(datagram)
        pending = set(names)
        while pending:
            for kind, _, seq, body in parse_messages(self.receive("nf_tables batch")):
                if kind != NLMSG_ERROR or seq not in sent:
                    continue  # the rest of an earlier batch's answers, left when it failed
                err = error_of(body)
                if err and seq in names:
                    raise NetlinkError(err, names[seq], hint=NFT_EXPRESSIONS_HINT
                                       if err == errno.ENOENT
                                       and names[seq].startswith("NFT_MSG_NEWRULE") else None)
                if err:  # at BATCH_BEGIN's
                    raise NetlinkError(err, "nf_tables batch", verb="refused",
                                       hint=NFTABLES_HINT if err == errno.EOPNOTSUPP else None)
                pending.discard(seq)


def create_link(nl, request, driver):
    """RTM_NEWLINK of a bridge or veth, with a hint when the kernel lacks
    the driver (EOPNOTSUPP: "Unknown device type" in `ip`'s words)."""
    try:
        nl.call(request)
    except NetlinkError as err:
        if err.errno != errno.EOPNOTSUPP:
            raise
        raise NetlinkError(err.errno, "%s %s" % (MESSAGE_NAMES[request[0]], request[3]),
                           "the kernel has no %s driver (CONFIG_%s); --network none and "
                           "--network host need none" % (driver, driver.upper()))


def link_index(nl, name, kind=None):
    """The interface's index, or None if there is no such interface. With
    `kind`, an interface of another kind (IFLA_INFO_KIND) is an error."""
    try:
        answers = nl.call(request_get_link(name))
    except NetlinkError as err:
        if err.errno == errno.ENODEV:
            return None
        raise
    body = answers[0][3]
    if kind is not None:
        info = parse_attrs(parse_attrs(body[struct.calcsize(IFINFOMSG):]).get(IFLA_LINKINFO, b""))
        found = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode(errors="replace")
        if found != kind:
            raise MiniDockerError("interface %s exists and is a %s, not a %s"
                                  % (name, found or "device of no kind", kind))
    return struct.unpack_from(IFINFOMSG, body)[2]


def delete_link(nl, name):
    """A missing link is fine: the kernel removes a veth by itself when the
    namespace of its other end goes away (ENODEV: it went between the two
    requests)."""
    index = link_index(nl, name)
    try:
        if index is not None:
            nl.call(request_delete_link(index, name))
    except NetlinkError as err:
        if err.errno != errno.ENODEV:
            raise


def write_sysctl(name, value):
    """/proc/sys/net is the network namespace of the process that opens it."""
    with open("/proc/sys/" + name, "w") as handle:
        handle.write(value)


def ensure_bridge(nl, name, gateway):
    """The network's bridge with the gateway address ('10.0.0.1/24'), up; made on first use
    and then kept, as docker0 is; and ip_forward on in this network
    namespace, as Docker sets it, or the containers' packets would not pass
    through it. Returns the bridge's index. An existing interface
    of that name must be a bridge: route_localnet would otherwise be set
    on a real uplink, with no guard of ours for it."""
    index = link_index(nl, name, "bridge")
    if index is None:
        create_link(nl, request_new_bridge(name), "bridge")
        index = link_index(nl, name)
    present = [found for where, found in parse_addresses(nl.call(request_get_addresses()))
               if where == index]
    if gateway not in present:
        if present:
            raise MiniDockerError("bridge %s has address %s, not %s: use --subnet %s or another --bridge"
                                  % (name, present[0], gateway, IPv4Network.interface(present[0])[1]))
        address, network = IPv4Network.interface(gateway)
        nl.call(request_new_address(index, name, address, network.prefixlen))
    nl.call(request_link_up(index, name))
    write_sysctl("net/ipv4/ip_forward", "1")  # containers' packets pass through the host
    return index


def set_route_localnet(bridge, on):
    """route_localnet (see nat_rules) is on only while the table, with its
    guard, is there for the bridge: set after the table is built, cleared
    when its last container goes. A shared bridge's other members must not
    keep a way to the host's loopback."""
    try:
        write_sysctl("net/ipv4/conf/%s/route_localnet" % bridge, "1" if on else "0")
    except FileNotFoundError:  # the bridge is gone: nothing to clear
        pass


def attach_veth(lease, pid):
    """Host side of stage 0: the veth pair, eth0 born in the child's
    namespace, the host end enslaved to the bridge and up."""
    with Netlink() as nl:
        bridge = link_index(nl, lease["bridge"])
        create_link(nl, request_new_veth(lease["veth"], "eth0", pid), "veth")
        nl.call(request_link_up(link_index(nl, lease["veth"]), lease["veth"], master=bridge))


def configure_eth0(lease):
    """Container side, in stage 2: a socket opened here speaks for the
    container's namespace. Address, link up, then the default route, which
    needs the link up (a gateway must be reachable). The lease's addresses
    are taken as they are written (the subnet in its normal form, from the
    host's side): the child imports no ipaddress, which would have to
    happen before the fork, in the way of every bridge run."""
    with Netlink() as nl:
        index = link_index(nl, "eth0")
        nl.call(request_new_address(index, "eth0", lease["address"],
                                    int(lease["subnet"].split("/")[1])))
        nl.call(request_link_up(index, "eth0"))
        nl.call(request_default_route(lease["gateway"]))


NFTABLES_SOCKET = []  # one per process, opened on first use


def apply_nat(leases):
    """Rebuild the table. The socket stays open until minidocker exits:
    closing it makes the kernel first finish freeing what the last batch
    deleted (nf_tables waits for an RCU grace period, 13-22 ms measured),
    and the container's start should not wait for that."""
    rules = nat_rules(leases)
    if not NFTABLES_SOCKET:
        try:
            NFTABLES_SOCKET.append(Netlink(NETLINK_NETFILTER))
        except OSError as err:
            if err.errno != errno.EPROTONOSUPPORT:
                raise
            if not rules:
                return  # no nf_tables, so no table of ours to remove
            raise MiniDockerError("nf_tables: %s (hint: %s)" % (err.strerror, NFTABLES_HINT))
    nl = NFTABLES_SOCKET[0]
    try:
        nl.batch(*nat_batch(rules, nl.seq + 1))
    except NetlinkError as err:
        if rules or err.errno != errno.EOPNOTSUPP:
            raise  # EOPNOTSUPP: nfnetlink without nf_tables, so again no table of ours


# Leases. A container's lease lives in its record (chapter 4), under the key
# "network", as {"mode", "bridge", "subnet", "gateway", "address", "veth",
# "ports", "container" (its short id), "netns"}. Under an exclusive flock(2) on run/network.lock, a
# run reads the records of live containers, takes the first free address
# and its host ports (assign_host_ports), writes its record, rebuilds the table `ip
# minidocker`; the end of a run (or the reclaim after a kill -9) drops the
# lease, deletes the veth and rebuilds the table without it. A lease counts
# only while the minidocker that took it runs, so a crash can never keep an
# address taken.

def network_lock(paths):
    return state_lock(paths, "network.lock")


def current_netns():
    """Which network namespace minidocker runs in. Bridges, veths and the NAT
    table belong to one namespace; so do the leases that count."""
    found = os.stat("/proc/self/ns/net")
    return "%d:%d" % (found.st_dev, found.st_ino)


def live_leases(paths, excluded=()):
    """The leases of bridge containers in our network namespace whose
    minidocker still runs."""
    here = current_netns()
    return [record["network"] for record in read_records(paths)
            if record.get("network", {}).get("netns") == here and record["id"] not in excluded
            and is_running(record)]


def allocate_address(subnet, used, preferred=None):
    """In `subnet` (an IPv4Network, at most a /30: plan_subnet), as text:
    `preferred` (the address a restarted container had) if it is free,
    else the first host address after the gateway that no live container
    holds. hosts() already leaves out the network and broadcast addresses."""
    hosts = subnet.hosts()
    gateway = next(hosts)
    if isinstance(preferred, str) and preferred not in used and preferred != gateway:
        try:
            if subnet.first < ipv4_number(preferred) < subnet.last:
                return preferred
        except ValueError:  # not an address (a hand-edited record): no preference
            pass
    for candidate in hosts:
        if candidate not in used:
            return candidate
    raise MiniDockerError("subnet %s is full: all %d container addresses are in use"
                          % (subnet, len(used)))


def check_lease(plan, others):
    """One subnet per bridge, and subnets apart."""
    subnet = IPv4Network(plan["subnet"])
    for other in others:
        theirs = IPv4Network(other["subnet"])
        if other["bridge"] == plan["bridge"] and theirs != subnet:
            raise MiniDockerError("bridge %s already serves %s, not %s"
                                  % (plan["bridge"], theirs, subnet))
        if other["bridge"] != plan["bridge"] and theirs.overlaps(subnet):
            raise MiniDockerError("subnet %s overlaps %s of bridge %s"
                                  % (subnet, theirs, other["bridge"]))


# Host ports. A DNAT rule takes a port from under whatever listens on it
# in this namespace: the rule comes first (prerouting, output), so a host
# process listening there silently stops getting its connections. Docker's
# proxy binds the port, and its bind fails "address already in use"; with no
# proxy, minidocker reads the sockets the kernel lists instead
# (/proc/net/tcp and the others are this process's network namespace's)
# and refuses. Listening means a TCP socket in LISTEN, or a UDP socket bound
# and not connected. Our table is `ip` only: a listener shadowed is one on
# the IPv4 wildcard or the IPv6 one (which takes IPv4 too, unless
# IPV6_V6ONLY), or on an IPv4 address the rule matches: the -p address, or
# with -p 0.0.0.0 any (`fib daddr type local`).
#
#   /proc/net/tcp, one line a socket (tcp6, udp, udp6 alike):
#   sl  local_address rem_address   st tx_queue:rx_queue tr:tm->when retrnsmt  uid timeout inode
#   0:  0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000    0       0 41726
#   The address is printed 32 bits at a time, each word in host byte order
#   (127.0.0.1 on x86: 0100007F); the port in hex (1F90: 8080).
PROC_NET_SOCKETS = (("tcp", "tcp", "0A"), ("tcp6", "tcp", "0A"),   # TCP_LISTEN
                    ("udp", "udp", "07"), ("udp6", "udp", "07"))   # TCP_CLOSE: not connected
LOCAL_PORT_RANGE = "net/ipv4/ip_local_port_range"


def proc_net_address(text):
    """'0100007F' -> '127.0.0.1'; an IPv4-mapped IPv6 address -> its IPv4."""
    import ipaddress
    raw = bytes.fromhex(text)
    words = [struct.pack("=I", int.from_bytes(raw[at:at + 4], "big")) for at in range(0, len(raw), 4)]
    address = ipaddress.ip_address(b"".join(words))
    return str(getattr(address, "ipv4_mapped", None) or address)


def parse_listeners(text, proto, state):
    """One /proc/net file's sockets in STATE -> [(proto, address, port, inode)]."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[3] == state:
            address, port = fields[1].split(":")
            found.append((proto, proc_net_address(address), int(port, 16), int(fields[9])))
    return found


def read_listeners():
    """The listening sockets of this network namespace (a file that is not
    there, read as empty, is a protocol the kernel lacks: no IPv6)."""
    return [listener for name, proto, state in PROC_NET_SOCKETS
            for listener in parse_listeners(read_text("/proc/self/net/" + name), proto, state)]


def shadows(host_ip, address):
    """Would a DNAT rule for HOST_IP take the connections of a listener on
    ADDRESS (its own IPv4 address, or an IPv6 one)?"""
    if address in ("0.0.0.0", "::") or address == host_ip:
        return True
    return host_ip == "0.0.0.0" and ":" not in address


def socket_owner(inode):
    """'nc (pid 1234)' for the process that holds socket INODE, found by
    its descriptors (/proc/PID/fd/N -> 'socket:[INODE]'), or None. Read
    only when a port is refused. A process may end meanwhile (ENOENT), and
    one of another user's may hide its descriptors (EACCES)."""
    target = "socket:[%d]" % inode
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
            if any(os.readlink("/proc/%s/fd/%s" % (pid, fd)) == target for fd in fds):
                return "%s (pid %s)" % (read_text("/proc/%s/comm" % pid).strip(), pid)
        except OSError:  # ENOENT, EACCES: gone, or not ours to see
            continue
    return None


def port_in_use(host_ip, host_port, proto, listener, owner=socket_owner):
    _, address, port, inode = listener
    where = ("[%s]:%d" if ":" in address else "%s:%d") % (address, port)
    held = owner(inode)
    return MiniDockerError("cannot publish %s:%d/%s: address already in use by %s"
                           % (host_ip, host_port, proto,
                              "%s, listening on %s" % (held, where) if held
                              else "a socket listening on " + where))


DOCKER_EPHEMERAL = (49153, 65535)  # Docker's range when the kernel's cannot be read


def ephemeral_range():
    """The ports the kernel hands out to clients, where Docker picks a
    published port that was not given (-p CTRPORT, -P)."""
    found = read_text("/proc/sys/" + LOCAL_PORT_RANGE).split()
    return (int(found[0]), int(found[1])) if len(found) == 2 else DOCKER_EPHEMERAL


def assign_host_ports(requests, others, listeners, ephemeral, previous=(), owner=socket_owner):
    """Each request (see parse_publish) -> [ip, host port, proto, port]: the
    port given, checked, or a free one of its range (EPHEMERAL: the
    kernel's `ephemeral` range): the one the container had last time
    (`previous`, as its lease held them) if it still is, else the first. Taken:
    a port another live container publishes on an overlapping address, a
    port a listener of this namespace would lose (shadows), and one this
    container already has. The given ones are checked first, so that a
    range never takes them."""
    published = [(ip, port, proto, "container " + other["container"])
                 for other in others for ip, port, proto, _ in other["ports"]]

    def holder(host_ip, host_port, proto):
        """Who has the port: the publisher's name, a listener, or None."""
        for ip, port, their_proto, name in published:
            if (port, their_proto) == (host_port, proto) and \
                    ("0.0.0.0" in (host_ip, ip) or host_ip == ip):
                return name
        return next((listener for listener in listeners
                     if listener[0] == proto and listener[2] == host_port
                     and shadows(host_ip, listener[1])), None)

    def given(request):
        return request[1] == request[2] != EPHEMERAL

    assigned = {}
    for n in sorted(range(len(requests)), key=lambda n: not given(requests[n])):
        host_ip, first, last, proto, port = requests[n]
        if given(requests[n]):
            found = holder(host_ip, first, proto)
            if isinstance(found, str):
                raise MiniDockerError("port %s:%d/%s is already published by %s"
                                      % (host_ip, first, proto, found))
            if found:
                raise port_in_use(host_ip, first, proto, found, owner)
            chosen = first
        else:
            low, high = ephemeral if first == EPHEMERAL else (first, last)
            before = [had[1] for had in previous if isinstance(had, list) and len(had) == 4
                      and (had[0], had[2], had[3]) == (host_ip, proto, port)
                      and had[1] in range(low, high + 1)]  # a hand-edited record: no preference
            chosen = next((candidate for candidate in before + list(range(low, high + 1))
                           if holder(host_ip, candidate, proto) is None), None)
            if chosen is None:
                raise MiniDockerError("no free host port for %d/%s in %d-%d"
                                      % (port, proto, low, high))
        published.append((host_ip, chosen, proto, "this container"))
        assigned[n] = [host_ip, chosen, proto, port]
    return [assigned[n] for n in range(len(requests))]


def lease_network(paths, record, plan):
    """Stage 0, before the fork: an address, the bridge, the nf_tables rules.
    Returns the lease, which the record now holds."""
    subnet = IPv4Network(plan["subnet"])
    gateway = next(subnet.hosts())
    with network_lock(paths):
        others = live_leases(paths, excluded=[record["id"]])
        check_lease(plan, others)
        ports = assign_host_ports(plan["ports"], others, read_listeners(), ephemeral_range(),
                                  record.get("last_ports", [])) if plan["ports"] else []
        used = {other["address"] for other in others if other["bridge"] == plan["bridge"]}
        lease = {"mode": "bridge", "bridge": plan["bridge"], "subnet": str(subnet),
                 "gateway": gateway,
                 "address": allocate_address(subnet, used, record.get("last_address")),
                 "veth": "veth" + record["id"][:8], "ports": ports,
                 "container": record["id"][:12], "netns": current_netns()}
        record["network"] = lease
        write_record(paths, record)
        with Netlink() as nl:
            ensure_bridge(nl, plan["bridge"], "%s/%d" % (gateway, subnet.prefixlen))
        apply_nat(others + [lease])
        set_route_localnet(plan["bridge"], True)
    return lease


def release_leases(paths, records, delete_veths=True):
    """The leases of these containers dropped from their records, their
    veths deleted, and the table `ip minidocker` rebuilt from the
    containers still running (removed when none is left). The lease goes
    under the lock: another run rebuilding the table a moment later must
    not count it.

    Without `delete_veths`, for a container whose init has been reaped: its
    network namespace has no process left, and the kernel deletes the veth
    pair with it (cleanup_net, a moment later, in a kernel worker). Asking
    first with RTM_DELLINK would wait for that same teardown, which holds
    the rtnl lock: 9-18 ms of every run measured, for nothing."""
    with network_lock(paths):
        released = set()
        with Netlink() as nl:
            for record in records:
                lease = record.pop("network")
                record["last_address"] = lease["address"]  # a restart's first choice
                record["last_ports"] = lease["ports"]       # and its ports
                released.add(lease["bridge"])
                if delete_veths:
                    delete_link(nl, lease["veth"])
                write_record(paths, record)
        remaining = live_leases(paths)
        apply_nat(remaining)
        for bridge in released - {lease["bridge"] for lease in remaining}:
            set_route_localnet(bridge, False)


# /etc/hostname, /etc/hosts and /etc/resolv.conf are written to the
# container's state directory and bind-mounted over the image's own, which
# stay untouched (as Docker does).

LOCALHOST_LINES = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                   "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n"
                   "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")
DOCKER_FALLBACK_DNS = ["8.8.8.8", "8.8.4.4"]


def hosts_file(hostname, address, add_hosts, host_text=None):
    """Docker's /etc/hosts: the host's own with --network host, otherwise
    localhost, the container's name on its address, then --add-host."""
    text = host_text if host_text is not None else LOCALHOST_LINES
    if address:
        text += "%s\t%s\n" % (address, hostname)
    for name, ip in add_hosts:
        text += "%s\t%s\n" % (ip, name)
    return text


def resolv_conf(host_text, upstream_text, dns, keep_loopback):
    """The host's resolv.conf for the container. A loopback nameserver (as
    systemd-resolved's 127.0.0.53) means nothing in the container's own
    namespace: it is replaced by the upstream servers resolved knows
    (/run/systemd/resolve/resolv.conf), or by Docker's fallback 8.8.8.8 and
    8.8.4.4 when none is left. --dns replaces the nameservers."""

    def nameservers(text):
        return [line.split()[1] for line in text.splitlines()
                if line.split()[:1] == ["nameserver"] and len(line.split()) > 1]

    def usable(server):
        return keep_loopback or is_loopback_address(server.split("%")[0]) is False

    others = [line for line in host_text.splitlines()
              if line.split()[:1] != ["nameserver"] and line.strip() and not line.startswith(("#", ";"))]
    servers = list(dns) or [s for s in nameservers(host_text) if usable(s)]
    if not servers:
        servers = [s for s in nameservers(upstream_text) if usable(s)] or DOCKER_FALLBACK_DNS
    return "".join("nameserver %s\n" % server for server in servers) + \
        "".join(line + "\n" for line in others)


def is_loopback_address(text):
    """True for 127.0.0.0/8 and ::1, False for any other address, None for
    what is no address: ipaddress's is_loopback, without its import (3 ms,
    re's for the most part) in every run, which writes a resolv.conf."""
    import _socket
    try:
        return _socket.inet_pton(_socket.AF_INET, text)[0] == 127
    except OSError:
        pass
    try:
        return _socket.inet_pton(_socket.AF_INET6, text) == bytes(15) + b"\x01"
    except OSError:
        return None


ETC_FILES = ("hostname", "hosts", "resolv.conf")


def write_etc_files(layer, hostname, plan, lease):
    """Write the three files (ETC_FILES) into the state directory."""
    host = plan["mode"] == "host"
    address = lease["address"] if lease else None
    add_hosts = [(name, lease["gateway"] if ip == "host-gateway" else ip)
                 for name, ip in plan["add_hosts"]]
    contents = {
        "hostname": hostname + "\n",
        "hosts": hosts_file(hostname, address, add_hosts, read_text("/etc/hosts") if host else None),
        "resolv.conf": resolv_conf(read_text("/etc/resolv.conf"),
                                   read_text("/run/systemd/resolve/resolv.conf"),
                                   plan["dns"], keep_loopback=host),
    }
    for name in ETC_FILES:
        source = os.path.join(layer, name)
        with open(source, "w") as handle:
            handle.write(contents[name])
        os.chmod(source, 0o644)


# === 10. Capabilities, no_new_privs and seccomp ===
# A root process has every capability. The container keeps Docker's default
# fourteen, in the bounding, permitted and effective sets; inheritable and
# ambient are emptied (CVE-2022-24769: an inheritable set lets file
# capabilities raise a non-root user). As in Docker, a setuid-root file
# still makes a non-root user root, but only with the bounding set's
# capabilities; --security-opt no-new-privileges sets no_new_privs, which
# stops setuid files and file capabilities from raising anyone at all.

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
    container cannot get more: capset(2) never raises the permitted set. A
    user's (rootless) container gets its capabilities in its own user
    namespace, where the bounding set (CapBnd) is the limit."""
    field = "CapPrm:" if os.geteuid() == 0 else "CapBnd:"
    for line in read_text("/proc/self/status").splitlines():
        if line.startswith(field):
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


def drop_bounding_set(keep, last):
    """Remove from the bounding set every capability not kept, up to the
    kernel's last (read by the parent on the host: inside, /proc is the
    image's to redirect). Needs CAP_SETPCAP, so it runs while we are still
    full root."""
    for cap in range(last + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap, what="prctl(PR_CAPBSET_DROP, %d)" % cap)


def capability_sets(spec, uid):
    """The five sets the command gets. A bundle gives them one by one;
    `run`'s are Docker's: the kept capabilities bound the set, and are
    effective and permitted for root only (a non-root user ends with none,
    as with docker), nothing inheritable or ambient."""
    if spec.cap_sets is not None:
        return spec.cap_sets
    held = set(spec.caps) if uid == 0 else set()
    return {"bounding": set(spec.caps), "effective": held, "permitted": held,
            "inheritable": set(), "ambient": set()}


def set_capabilities(sets):
    """capset(2): the effective, permitted and inheritable sets; then the
    ambient set, cleared and raised capability by capability. The kernel
    raises an ambient capability only if it is permitted and inheritable
    (capabilities(7)); runc asks for the others too and is refused, as a
    config like `runc spec`'s (ambient, no inheritable) shows: they are
    left out here without asking."""
    import ctypes
    masks = [cap_mask(sets[name]) for name in ("effective", "permitted", "inheritable")]
    header = ctypes.create_string_buffer(struct.pack(CAP_HEADER, _LINUX_CAPABILITY_VERSION_3, 0))
    data = ctypes.create_string_buffer(
        struct.pack(CAP_DATA, *(m & 0xFFFFFFFF for m in masks))
        + struct.pack(CAP_DATA, *(m >> 32 for m in masks)))
    with failing_as("capset(0x%x)" % masks[0]):
        _capset(header, data)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    for cap in sorted(sets["ambient"] & sets["permitted"] & sets["inheritable"]):
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, "prctl(PR_CAP_AMBIENT_RAISE, %d)" % cap, cap)


# === 10. (continued) Seccomp: a BPF compiler for Docker's profiles ===
# Seccomp: the last gate. The kernel runs a small classic-BPF program on
# every system call the container makes, before the call does anything
# (seccomp(2), Documentation/userspace-api/seccomp_filter.rst). The program
# sees the call's number, its architecture and its six arguments, and answers
# with an action: allow it, fail it with an errno, kill the process...
#
# The program is compiled here, from a profile in Docker's JSON format, by
# plain Python and struct: no libseccomp. The work is done in three steps:
#   resolve_profile  profile + architecture + capabilities -> per-syscall rules
#   compile_filter   rules -> BPF instructions (the plan; tests run it)
#   load_filter      seccomp(SECCOMP_SET_MODE_FILTER), the last call before
#                    execve, after no_new_privs
# A filter cannot be removed, only stacked on: every process the container
# starts inherits it.

# <linux/seccomp.h>: what the filter can answer. The low 16 bits carry data
# (the errno for ERRNO, a message for TRACE).
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2,
                        "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}
SECCOMP_RET_KILL_PROCESS = 0x80000000  # Linux 4.14: the whole process dies of SIGSYS
SECCOMP_RET_KILL_THREAD = 0x00000000   # only the calling thread dies
SECCOMP_RET_TRAP = 0x00030000          # SIGSYS, which the process may catch
SECCOMP_RET_ERRNO = 0x00050000         # the call fails with errno = data
SECCOMP_RET_TRACE = 0x7FF00000         # ask a ptrace(2) tracer; ENOSYS without one
SECCOMP_RET_LOG = 0x7FFC0000           # allow, and log to the audit log
SECCOMP_RET_ALLOW = 0x7FFF0000
MAX_ERRNO = 4095                       # the kernel caps the errno at this

SECCOMP_ACTIONS = {  # Docker's names (libseccomp's) -> the kernel's
    "SCMP_ACT_KILL": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SECCOMP_RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": SECCOMP_RET_TRAP,
    "SCMP_ACT_ERRNO": SECCOMP_RET_ERRNO,
    "SCMP_ACT_TRACE": SECCOMP_RET_TRACE,
    "SCMP_ACT_LOG": SECCOMP_RET_LOG,
    "SCMP_ACT_ALLOW": SECCOMP_RET_ALLOW,
}
SECCOMP_COMPARISONS = ("SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE",
                       "SCMP_CMP_GT", "SCMP_CMP_GE", "SCMP_CMP_MASKED_EQ")

# <linux/audit.h>: seccomp_data.arch. A process can make system calls of
# another ABI than ours (int 0x80 enters the i386 table on x86_64, and
# x32 calls are x86_64 numbers with bit 30 set): their numbers mean other
# calls, so a filter written for our table must not judge them. Profiles
# name such ABIs as subArchitectures; we carry no tables for them, so the
# filter kills those calls, as libseccomp does for an architecture it was
# not given.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SCMP_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # as Docker's "includes.arches" says it
X32_SYSCALL_BIT = 0x40000000

#   struct seccomp_data {              what the filter reads, 64 bytes
#       int   nr;                      offset 0
#       __u32 arch;                    offset 4
#       __u64 instruction_pointer;     offset 8
#       __u64 args[6];                 offset 16 + 8 * i
#   };
# Classic BPF loads 32 bits at a time, in the machine's byte order, so each
# argument is read as two halves; on a little-endian machine (x86_64,
# aarch64) the low half comes first.
SECCOMP_DATA = "=iIQ6Q"
assert struct.calcsize(SECCOMP_DATA) == 64
DATA_NR, DATA_ARCH = 0, 4
_LOW_FIRST = sys.byteorder == "little"


def arg_low(index):
    return 16 + 8 * index + (0 if _LOW_FIRST else 4)


def arg_high(index):
    return 16 + 8 * index + (4 if _LOW_FIRST else 0)


# <linux/filter.h>, <linux/bpf_common.h>: one instruction, and the program.
#   struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; };
#   struct sock_fprog  { unsigned short len; struct sock_filter *filter; };
SOCK_FILTER = "=HBBI"
SOCK_FPROG = "@HP"
assert struct.calcsize(SOCK_FILTER) == 8
BPF_LD_W_ABS = 0x20   # A = the 32-bit word at offset k of seccomp_data
BPF_AND_K = 0x54      # A &= k
BPF_JA = 0x05         # jump k instructions forward
BPF_JEQ_K = 0x15      # jump jt forward if A == k, else jf forward
BPF_JGT_K = 0x25      # ... if A > k (unsigned)
BPF_JGE_K = 0x35      # ... if A >= k (unsigned)
BPF_RET_K = 0x06      # return k: the action
BPF_MAXINSNS = 4096   # the kernel's limit on a program's length
BPF_MAX_JUMP = 255    # jt and jf are one byte; only BPF_JA reaches farther


def seccomp_error(source, what):
    return MiniDockerError("seccomp profile %s: %s" % (source, what))


def read_profile(path):
    """--security-opt seccomp=PATH: the JSON file, as a dict."""
    text = read_regular_file(path, FLAG_FILE_LIMIT, "seccomp profile %s" % path)
    try:
        profile = from_json(text.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError is one too
        raise seccomp_error(path, "not valid JSON: %s" % err)
    except RecursionError:
        raise seccomp_error(path, "nested too deeply to be a profile")
    if not isinstance(profile, dict):
        raise seccomp_error(path, "must be a JSON object")
    return profile


def action_value(name, errno_ret, source):
    """Docker's action name and errnoRet -> the 32-bit SECCOMP_RET_* value.
    As runc: ERRNO without errnoRet is EPERM; TRACE's message is errnoRet."""
    if name == "SCMP_ACT_NOTIFY":
        raise seccomp_error(source, "SCMP_ACT_NOTIFY needs a supervisor listening on a "
                            "notification fd, which minidocker does not run")
    if name not in SECCOMP_ACTIONS:
        raise seccomp_error(source, "unknown action %r" % (name,))
    if errno_ret is not None and (type(errno_ret) is not int or not 0 <= errno_ret <= MAX_ERRNO):
        raise seccomp_error(source, "errnoRet %r is not an errno (0-%d)" % (errno_ret, MAX_ERRNO))
    value = SECCOMP_ACTIONS[name]
    if value in (SECCOMP_RET_ERRNO, SECCOMP_RET_TRACE):
        value |= errno.EPERM if errno_ret is None else errno_ret
    return value


def check_condition(arg, source):
    """One entry of a rule's "args" -> (index, op, value, valueTwo)."""
    if not isinstance(arg, dict):
        raise seccomp_error(source, "an argument condition must be an object, not %r" % (arg,))
    index, op = arg.get("index"), arg.get("op")
    value, value_two = arg.get("value", 0), arg.get("valueTwo", 0)
    if type(index) is not int or not 0 <= index <= 5:
        raise seccomp_error(source, "argument index %r is not 0-5" % (index,))
    if op not in SECCOMP_COMPARISONS:
        raise seccomp_error(source, "unknown comparison %r" % (op,))
    for number in (value, value_two):
        if type(number) is not int or not 0 <= number < 1 << 64:
            raise seccomp_error(source, "argument value %r is not a 64-bit number" % (number,))
    return (index, op, value, value_two)


def check_filters(rule, source):
    """A rule's "includes" and "excludes": objects with lists of strings for
    caps and arches, and a minKernel like "5.8"."""
    for key in ("includes", "excludes"):
        filters = rule.get(key) or {}
        if not isinstance(filters, dict):
            raise seccomp_error(source, '"%s" must be an object' % key)
        for field in ("caps", "arches"):
            values = filters.get(field) or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise seccomp_error(source, '"%s.%s" must be a list of strings' % (key, field))
        minimum = filters.get("minKernel")
        head, _, tail = str(minimum).partition(".")
        if minimum is not None and not (is_number(head) and is_number(tail[:1])):
            raise seccomp_error(source, "minKernel %r is not a kernel version" % (minimum,))


def kernel_at_least(version, release):
    """minKernel "5.8" against os.uname().release "6.1.0-13-amd64"."""
    return leading_numbers(release) >= leading_numbers(version)


def leading_numbers(text, count=2):
    """The first `count` runs of digits in `text`: "6.1.0-13-amd64" -> (6, 1)."""
    runs, run = [], ""
    for char in text + " ":
        if is_number(char):
            run += char
        elif run:
            runs.append(int(run))
            run = ""
    return tuple(runs[:count])


def rule_applies(rule, machine, cap_names, release):
    """Docker's includes/excludes: every cap in includes.caps held, the
    architecture in includes.arches, the kernel at least minKernel; and no
    cap of excludes.caps held, the architecture not in excludes.arches."""
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    arch_names = (SCMP_ARCH.get(machine), GO_ARCH.get(machine))
    if any(cap not in cap_names for cap in includes.get("caps") or []):
        return False
    if includes.get("arches") and not set(arch_names) & set(includes["arches"]):
        return False
    if includes.get("minKernel") and not kernel_at_least(includes["minKernel"], release):
        return False
    if any(cap in cap_names for cap in excludes.get("caps") or []):
        return False
    return not set(arch_names) & set(excludes.get("arches") or [])


def split_conditions(conditions):
    """runc's rule, kept so that profiles behave as under runc: conditions on
    different arguments must all hold, but two or more conditions on the
    same argument become separate rules, any of which may match."""
    indexes = [c[0] for c in conditions]
    if len(set(indexes)) == len(indexes):
        return [conditions]
    return [[c] for c in conditions]


def resolve_profile(profile, machine, caps, release, source):
    """A Docker-format profile (or an OCI config's linux.seccomp, the same
    fields less includes/excludes) -> (default action, {nr: [(conditions,
    action)]}, highest nr named, names unknown here).

    What the rules of one call mean is what they mean to libseccomp under
    runc, so that a profile does the same here as there:
      - a rule whose action is the default action is dropped (libseccomp
        refuses it, runc skips it);
      - a rule without conditions decides for its call alone: the call's
        rules with conditions are dropped (the first such rule wins);
      - otherwise the rules with conditions are tried in order, the first
        that matches decides, and the default action answers the rest."""
    if not isinstance(profile.get("syscalls", []) or [], list):
        raise seccomp_error(source, '"syscalls" must be a list')
    default = action_value(profile.get("defaultAction"), profile.get("defaultErrnoRet"), source)
    table = syscall_numbers(machine)
    cap_names = {"CAP_" + CAP_NAMES[c] for c in caps}
    rules, unknown, highest = {}, [], -1
    for rule in profile.get("syscalls") or []:
        if not isinstance(rule, dict):
            raise seccomp_error(source, "a syscalls entry must be an object, not %r" % (rule,))
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise seccomp_error(source, '"names" must be a list of strings')
        action = action_value(rule.get("action"), rule.get("errnoRet"), source)
        conditions = [check_condition(a, source) for a in rule.get("args") or []]
        check_filters(rule, source)
        if not rule_applies(rule, machine, cap_names, release):
            continue
        for name in names:
            if name not in table:
                unknown.append(name)  # Docker ignores these too
                continue
            nr = table[name]
            highest = max(highest, nr)
            if action != default:
                for alternative in split_conditions(conditions):
                    rules.setdefault(nr, []).append((alternative, action))
    for nr, alternatives in rules.items():
        rules[nr] = [r for r in alternatives if not r[0]][:1] or alternatives
    return default, rules, highest, unknown


def syscall_intervals(default, rules, highest, machine):
    """Cut the 2**32 possible numbers into intervals [start, next start)
    that share one outcome: ("ret", action) or ("rules", nr). Unnamed
    numbers get the default action, except those above the highest number
    the profile names: these are system calls newer than the profile, and
    answer ENOSYS so that a newer libc falls back to the older call (as
    glibc does from clone3 to clone), as runc arranges too."""
    above = default
    if default not in (SECCOMP_RET_ALLOW, SECCOMP_RET_LOG):
        above = SECCOMP_RET_ERRNO | errno.ENOSYS
    starts = {0: ("ret", default)}
    for nr in sorted(rules):
        conditions, action = rules[nr][0]
        starts[nr] = ("rules", nr) if conditions else ("ret", action)
        starts.setdefault(nr + 1, ("ret", default))
    if highest >= 0:
        starts[highest + 1] = ("ret", above)
    if machine == "x86_64":
        starts[X32_SYSCALL_BIT] = ("ret", SECCOMP_RET_KILL_PROCESS)
        starts[0xFFFFFFFF] = ("ret", above)  # -1: what a tracer sets to skip a call
    intervals = []
    for start in sorted(starts):
        if not intervals or intervals[-1][1] != starts[start]:
            intervals.append((start, starts[start]))
    return intervals


class BpfProgram:
    """Classic BPF, written from the last instruction backwards. Every jump
    goes forward, so when a jump is written its targets already exist and
    their distances are known. A label is an instruction's index counted
    from the end. A conditional jump reaches at most 255 instructions; a
    farther target gets a BPF_JA trampoline (which reaches 2**32) written
    just after the jump."""

    def __init__(self):
        self.backwards = []

    def add(self, code, k=0, jt=0, jf=0):
        self.backwards.append((code, jt, jf, k))
        return len(self.backwards) - 1

    def distance(self, label):
        """Jump offset from the instruction about to be written to label."""
        return len(self.backwards) - label - 1

    def ret(self, action):
        return self.add(BPF_RET_K, action)

    def load(self, offset):
        return self.add(BPF_LD_W_ABS, offset)

    def jump(self, code, k, true, false):
        while max(self.distance(true), self.distance(false)) > BPF_MAX_JUMP:
            far = true if self.distance(true) > BPF_MAX_JUMP else false
            trampoline = self.add(BPF_JA, self.distance(far))
            true = trampoline if true == far else true
            false = trampoline if false == far else false
        return self.add(code, k, self.distance(true), self.distance(false))

    def instructions(self):
        return list(reversed(self.backwards))


def compile_condition(program, condition, match, fail):
    """Write the test of one 64-bit argument condition as 32-bit halves:
    the high halves decide unless they are equal, then the low halves do.
    Returns the label of its first instruction."""
    index, op, value, value_two = condition
    high, low = value >> 32, value & 0xFFFFFFFF
    if op == "SCMP_CMP_MASKED_EQ":  # (arg & value) == valueTwo
        program.jump(BPF_JEQ_K, value_two & 0xFFFFFFFF, match, fail)
        program.add(BPF_AND_K, low)
        entry = program.load(arg_low(index))
        if high == 0 and value_two >> 32 == 0:
            return entry  # the mask leaves nothing of the high half to check
        program.jump(BPF_JEQ_K, value_two >> 32, entry, fail)
        program.add(BPF_AND_K, high)
        return program.load(arg_high(index))
    if op in ("SCMP_CMP_EQ", "SCMP_CMP_NE"):
        yes, no = (match, fail) if op == "SCMP_CMP_EQ" else (fail, match)
        program.jump(BPF_JEQ_K, low, yes, no)
        low_check = program.load(arg_low(index))
        program.jump(BPF_JEQ_K, high, low_check, no)
        return program.load(arg_high(index))
    # Orderings: GT and GE match when high > value's high, or when the highs
    # are equal and the low half passes; LT and LE are their opposites.
    low_op = BPF_JGT_K if op in ("SCMP_CMP_GT", "SCMP_CMP_LE") else BPF_JGE_K
    above, below = (match, fail) if op in ("SCMP_CMP_GT", "SCMP_CMP_GE") else (fail, match)
    program.jump(low_op, low, above, below)
    low_check = program.load(arg_low(index))
    equal = program.jump(BPF_JEQ_K, high, low_check, below)
    program.jump(BPF_JGT_K, high, above, equal)
    return program.load(arg_high(index))


def compile_rules(program, rules, default):
    """One system call's rules with conditions, tried in order; when none
    matches, the default action."""
    next_rule = program.ret(default)
    for conditions, action in reversed(rules):
        entry = program.ret(action)
        for condition in reversed(conditions):
            entry = compile_condition(program, condition, entry, next_rule)
        next_rule = entry
    return next_rule


def compile_search(program, intervals, rules, default):
    """A balanced binary search over the intervals: any system call is
    decided after about log2(len(intervals)) comparisons (7 for the default
    profile's 76 intervals, 6 for podman's), not after a linear chain of
    hundreds."""
    if len(intervals) == 1:
        kind, what = intervals[0][1]
        return program.ret(what) if kind == "ret" else compile_rules(program, rules[what], default)
    middle = len(intervals) // 2
    upper = compile_search(program, intervals[middle:], rules, default)
    lower = compile_search(program, intervals[:middle], rules, default)
    return program.jump(BPF_JGE_K, intervals[middle][0], upper, lower)


def compile_filter(default, rules, highest, machine):
    """The whole program: a call of a foreign architecture is killed; then the
    number is searched for, and its rules decide.

        ld  [arch]
        jeq AUDIT_ARCH_<ours>, 1, 0
        ret KILL_PROCESS
        ld  [nr]
        ... binary search over number intervals, rules at the leaves
    """
    program = BpfProgram()
    compile_search(program, syscall_intervals(default, rules, highest, machine), rules, default)
    load_nr = program.load(DATA_NR)
    kill = program.ret(SECCOMP_RET_KILL_PROCESS)
    program.jump(BPF_JEQ_K, AUDIT_ARCH[machine], load_nr, kill)
    program.load(DATA_ARCH)
    instructions = program.instructions()
    if len(instructions) > BPF_MAXINSNS:
        raise MiniDockerError("seccomp: the profile compiles to %d BPF instructions; the "
                              "kernel takes at most %d" % (len(instructions), BPF_MAXINSNS))
    return instructions


def plan_seccomp(profile, caps, source, machine=MACHINE, release=None):
    """Profile -> (filter bytes, notes for --debug)."""
    if machine not in AUDIT_ARCH:
        raise MiniDockerError("seccomp: no system call table for %s; use "
                              "--security-opt seccomp=unconfined" % machine)
    default, rules, highest, unknown = resolve_profile(
        profile, machine, caps, release or os.uname().release, source)
    instructions = compile_filter(default, rules, highest, machine)
    notes = ["seccomp: %s: %d system calls with rules, %d BPF instructions"
             % (source, len(rules), len(instructions))]
    if unknown:
        notes.append("seccomp: names not in the %s table, ignored: %s"
                     % (machine, " ".join(sorted(set(unknown)))))
    return b"".join(struct.pack(SOCK_FILTER, *i) for i in instructions), notes


def parse_security_opts(options):
    """Docker's --security-opt: seccomp=PATH or seccomp=unconfined (also the
    older seccomp:PATH), and no-new-privileges (bare, or =BOOL, :BOOL; the
    last one given wins). Returns (the seccomp choice, None for the default
    profile; whether no_new_privs is asked for: it is off unless asked
    for, and never set under --privileged, as in Docker)."""
    choice, no_new_privs = None, False
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            key, _, value = option.partition(":")
        if key == "seccomp" and value:
            choice = value
        elif option == "no-new-privileges" or \
                key == "no-new-privileges" and value in BOOLEAN_WORDS:
            no_new_privs = BOOLEAN_WORDS.get(value, True)
        else:
            raise MiniDockerError("--security-opt %r: minidocker knows seccomp=PATH, "
                                  "seccomp=unconfined and no-new-privileges[=true|false]"
                                  % option)
    return choice, no_new_privs


def plan_security(choice, caps, privileged, cache=None):
    """The seccomp filter for the container: the built-in default profile,
    a profile file, or none. --privileged means unconfined, as in Docker,
    unless a profile file is named."""
    if choice == "unconfined" or privileged and choice is None:
        return None, ["seccomp: unconfined"]
    if choice is None:
        return default_filter(caps, cache)
    return plan_seccomp(read_profile(choice), caps, choice)


def default_filter(caps, cache):
    """The default profile's filter, compiled once per version of this file,
    capability set, architecture and kernel, and kept in `cache` (in the
    run tree: a tmpfs, empty after a reboot, root's alone). Compiling takes
    3-5 ms of every start; reading it back, a tenth of one. The file's size
    and mtime stand for the profile, which is part of it: an edited file
    compiles anew. A profile file (seccomp=PATH) is compiled each time:
    checking it means reading it anyway."""
    if cache is None:
        return plan_seccomp(default_profile(), caps, "default")
    source = os.stat(__file__)
    key = "default-%d-%d-%s-%s-%x.json" % (source.st_size, source.st_mtime_ns, MACHINE,
                                         os.uname().release, cap_mask(caps))
    path = os.path.join(cache, key)
    with suppress(OSError, ValueError, KeyError, TypeError):  # absent or not ours
        with open(path) as handle:
            kept = from_json(handle.read())
        program = bytes.fromhex(kept["program"])
        if program and len(program) % struct.calcsize(SOCK_FILTER) == 0:
            return program, [note + " (cached)" for note in kept["notes"]]
    program, notes = plan_seccomp(default_profile(), caps, "default")
    try:  # into a run tree that make_state_dirs made root's alone, or not at all
        if os.path.isdir(os.path.dirname(cache)):
            os.makedirs(cache, mode=0o700, exist_ok=True)
        write_file_atomically(path, to_json({"program": program.hex(),
                                                "notes": notes}).encode(), 0o600)
    except OSError:  # EROFS, ENOSPC, EACCES: the next run compiles again
        pass
    return program, notes


def load_filter(program, flags=0):
    """seccomp(2). Needs no_new_privs first, or CAP_SYS_ADMIN, else
    EACCES. Everything after this runs under the filter, up to and with
    execve(2), which the profile must allow (exec_command places it).
    `flags`: SECCOMP_FILTER_FLAG_*, from a bundle's linux.seccomp.flags."""
    import ctypes
    code = ctypes.create_string_buffer(program, len(program))
    fprog = ctypes.create_string_buffer(
        struct.pack(SOCK_FPROG, len(program) // 8, ctypes.addressof(code)))
    with failing_as("seccomp(SECCOMP_SET_MODE_FILTER)",
                    {errno.EINVAL: "the kernel needs CONFIG_SECCOMP_FILTER"}):
        _seccomp(SYSCALLS["seccomp"], SECCOMP_SET_MODE_FILTER, flags, fprog)


# The default profile: an allowlist, Docker's approach. What a process
# needs for its ordinary work is allowed, by theme; what a container has no
# business doing is listed too, with the reason, and fails with EPERM (an
# unlisted call fails the same way). Some calls are allowed only with the
# capability that the kernel asks for them, as --cap-add gives it. The
# same data, as JSON, is profiles/default.json (test_default_profile_file
# keeps them equal), so that it can be read and changed with any tool and
# given back with --security-opt seccomp=PATH.


def _rule(action, names, comment, **fields):
    rule = {"names": names.split(), "action": action, "comment": comment}
    rule.update(fields)
    return rule


def _allow(names, comment, **fields):
    return _rule("SCMP_ACT_ALLOW", names, comment, **fields)


def _deny(names, comment, errno_ret=errno.EPERM, **fields):
    return _rule("SCMP_ACT_ERRNO", names, comment, errnoRet=errno_ret, **fields)


def _with_cap(cap, names, reason):
    """Allowed when the container holds CAP_<cap>, denied otherwise."""
    return [_allow(names, "with CAP_%s: %s" % (cap, reason), includes={"caps": ["CAP_" + cap]}),
            _deny(names, "without CAP_%s: %s" % (cap, reason), excludes={"caps": ["CAP_" + cap]})]


def _arg(index, op, value, value_two=0):
    return {"index": index, "value": value, "valueTwo": value_two, "op": "SCMP_CMP_" + op}


def _allow_all_but(name, index, excluded, comment):
    """Rules that allow every value of a 32-bit argument except a few. A
    profile cannot say "allow, but deny X" for one call (a rule without
    conditions would win alone), nor test one argument twice in a rule; so
    the allowed values are written as blocks that share their high bits with
    no excluded value, the branches a binary trie of the excluded values
    leaves empty: MASKED_EQ(bits 31..b) == prefix. Two excluded values take
    about 34 rules."""
    rules = []

    def cover(bit, prefix, inside):
        for branch in (0, 1):
            block = prefix | branch << bit
            left = [v for v in inside if v >> bit & 1 == branch]
            if not left:
                mask = 0xFFFFFFFF >> bit << bit
                rules.append(_allow(name, comment if not rules else "(the same)",
                                    args=[_arg(index, "MASKED_EQ", mask, block)]))
            elif bit > 0:
                cover(bit - 1, block, left)
    cover(31, 0, excluded)
    return rules


# Numbers the conditions below look at. Where the kernel reads an argument as
# a 32-bit int, only the low half may decide: the kernel drops the high half,
# so a rule that denied 0x5412 on all 64 bits would let 0x1_0000_5412 by,
# and that is TIOCSTI too. (musl passes an ioctl's request sign-extended,
# so the high half of a real request may be all ones.)
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C              # <asm-generic/ioctls.h>
_AF_ALG, _AF_VSOCK = 38, 40                         # <bits/socket.h>
_S_IFMT = 0o170000                                  # <linux/stat.h>
_FILE_TYPES = (0, 0o100000, 0o010000, 0o140000)     # none (a file), S_IFREG, S_IFIFO, S_IFSOCK
_HIGH_ZERO = 0xFFFFFFFF00000000
_NAMESPACE_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC
                    | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)


def default_profile():
    """The default profile, as its JSON file would give it, built anew at
    each call: the cached filter of a run (default_filter) needs none of
    it, and building it took half a millisecond of every start."""
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []}],
        "syscalls": [
            _allow("read write open openat openat2 creat close close_range lseek pread64 "
                   "pwrite64 readv writev preadv pwritev preadv2 pwritev2 sendfile splice tee "
                   "vmsplice copy_file_range readahead fadvise64 fallocate truncate ftruncate "
                   "fsync fdatasync sync syncfs sync_file_range stat fstat lstat newfstatat "
                   "statx statfs fstatfs ustat sysfs access faccessat faccessat2 getdents "
                   "getdents64 getcwd chdir fchdir mkdir mkdirat rmdir rename renameat "
                   "renameat2 link linkat unlink unlinkat symlink symlinkat readlink "
                   "readlinkat chmod fchmod fchmodat chown fchown lchown fchownat umask utime "
                   "utimes utimensat futimesat flock fcntl dup dup2 dup3 pipe pipe2 setxattr "
                   "lsetxattr fsetxattr getxattr lgetxattr fgetxattr listxattr llistxattr "
                   "flistxattr removexattr lremovexattr fremovexattr inotify_init "
                   "inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark "
                   "name_to_handle_at memfd_create memfd_secret",
                   "files: the kernel still checks users, capabilities and mounts"),
            _allow("brk mmap munmap mremap mprotect msync madvise mincore mlock mlock2 "
                   "munlock mlockall munlockall remap_file_pages pkey_mprotect pkey_alloc "
                   "pkey_free membarrier",
                   "memory of the process itself (locking is bounded by RLIMIT_MEMLOCK)"),
            _allow("fork vfork execve execveat exit exit_group wait4 waitid kill tkill "
                   "tgkill rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending "
                   "rt_sigtimedwait rt_sigqueueinfo rt_tgsigqueueinfo rt_sigsuspend "
                   "sigaltstack pause alarm getitimer setitimer nanosleep clock_nanosleep "
                   "restart_syscall getpid getppid gettid getpgid setpgid getpgrp getsid "
                   "setsid set_tid_address set_robust_list get_robust_list futex futex_waitv "
                   "rseq arch_prctl set_thread_area get_thread_area modify_ldt prctl "
                   "pidfd_open pidfd_send_signal pidfd_getfd process_mrelease getrlimit "
                   "setrlimit prlimit64 getrusage times uname sysinfo getcpu getrandom",
                   "processes, threads and signals, inside the container's pid namespace"),
            _allow("seccomp landlock_create_ruleset landlock_add_rule landlock_restrict_self "
                   "capget capset",
                   "a process may narrow its own rights further, never widen them"),
            _allow("getuid geteuid getgid getegid getresuid getresgid getgroups setuid setgid "
                   "setreuid setregid setresuid setresgid setgroups setfsuid setfsgid",
                   "user and group ids: changing them needs CAP_SETUID or CAP_SETGID"),
            _allow("sched_yield sched_getaffinity sched_setaffinity sched_getparam "
                   "sched_setparam sched_getscheduler sched_setscheduler "
                   "sched_get_priority_max sched_get_priority_min sched_rr_get_interval "
                   "sched_getattr sched_setattr getpriority setpriority ioprio_get "
                   "ioprio_set",
                   "scheduling: raising a priority needs CAP_SYS_NICE; cpusets still bind"),
            _allow("time gettimeofday clock_gettime clock_getres adjtimex timer_create "
                   "timer_settime timer_gettime timer_getoverrun timer_delete timerfd_create "
                   "timerfd_settime timerfd_gettime",
                   "reading clocks and timers (adjtimex sets the clock only with CAP_SYS_TIME)"),
            _allow("select pselect6 poll ppoll epoll_create epoll_create1 epoll_ctl "
                   "epoll_wait epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4 "
                   "io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents",
                   "waiting on many files, and Linux AIO"),
            _allow("socketpair bind connect listen accept accept4 getsockname getpeername "
                   "sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg setsockopt getsockopt "
                   "shutdown",
                   "sockets, in the container's network namespace"),
            _allow("shmget shmat shmdt shmctl semget semop semtimedop semctl msgget msgsnd "
                   "msgrcv msgctl mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify "
                   "mq_getsetattr",
                   "System V and POSIX IPC, in the container's ipc namespace"),
            _deny("socket", "AF_ALG sockets reach the kernel's crypto code, a source of "
                  "privilege escalations; AF_VSOCK reaches the hypervisor, outside the "
                  "network namespace. Both fail as if the family were not built in",
                  errno.EAFNOSUPPORT, args=[_arg(0, "EQ", _AF_ALG)]),
            _deny("socket", "(AF_VSOCK)", errno.EAFNOSUPPORT, args=[_arg(0, "EQ", _AF_VSOCK)]),
            _allow("socket", "the other families, 0-63: the block below AF_ALG, AF_NFC (39), "
                   "then 41, 42-43, 44-47 and 48-63; the high half must be 0",
                   args=[_arg(0, "LT", _AF_ALG)]),
        ] + [
            _allow("socket", "(the same)", args=[_arg(0, "MASKED_EQ", _HIGH_ZERO | mask, block)])
            for mask, block in ((0xFFFFFFFF, 39), (0xFFFFFFFF, 41), (0xFFFFFFFE, 42),
                                (0xFFFFFFFC, 44), (0xFFFFFFF0, 48))
        ] + _allow_all_but("ioctl", 1, [_TIOCSTI, _TIOCLINUX],
                           "every ioctl but two, whatever its high half: TIOCSTI pushes "
                           "characters into a terminal's input, so a container given the "
                           "user's terminal could type commands into the shell that started "
                           "it; TIOCLINUX pastes the console's selection as input, the same "
                           "attack") + [
            _allow(name, "files, FIFOs and sockets, not device nodes: a node of a host device "
                   "opens nothing under the device cgroup, and this is a second wall "
                   "before it" if not index else "(the same)",
                   args=[_arg(position, "MASKED_EQ", _S_IFMT, file_type)])
            for name, position in (("mknod", 1), ("mknodat", 2))
            for index, file_type in enumerate(_FILE_TYPES)
        ] + [
            _allow("personality", "the execution domains programs really ask for: Linux "
                   "(0), PER_LINUX32 (8), UNAME26 alone and with PER_LINUX32, and the query "
                   "0xffffffff; any other (ADDR_NO_RANDOMIZE among them) gets EPERM",
                   args=[_arg(0, "EQ", value)])
            for value in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
        ] + [
            _allow("clone", "threads and processes, but no new namespaces: see unshare",
                   args=[_arg(0, "MASKED_EQ", _NAMESPACE_FLAGS, 0)],
                   excludes={"caps": ["CAP_SYS_ADMIN"]}),
            _allow("clone clone3", "with CAP_SYS_ADMIN: any flags",
                   includes={"caps": ["CAP_SYS_ADMIN"]}),
            _deny("clone3", "its flags are in a struct in memory, which the filter cannot "
                  "read; ENOSYS makes glibc fall back to clone(2), whose flags it can",
                  errno.ENOSYS, excludes={"caps": ["CAP_SYS_ADMIN"]}),
        ] + _with_cap("SYS_ADMIN", "unshare setns",
                      "a new namespace, a user namespace above all, hands root-only kernel "
                      "code to an unprivileged process (CVE-2022-0185 went through fsconfig "
                      "in a fresh user namespace)"
        ) + _with_cap("SYS_ADMIN", "mount umount2 pivot_root open_tree move_mount fsopen "
                      "fsconfig fsmount fspick mount_setattr",
                      "mounts could uncover what the masked and read-only paths of /proc and "
                      "/sys hide"
        ) + _with_cap("SYS_ADMIN", "sethostname setdomainname",
                      "the names are the container's (its own uts namespace), set by the "
                      "runtime; the kernel asks CAP_SYS_ADMIN for them too"
        ) + _with_cap("SYS_ADMIN", "bpf perf_event_open fanotify_init lookup_dcookie quotactl "
                      "quotactl_fd",
                      "the eBPF verifier is a large attack surface; perf, fanotify and quotas "
                      "see the whole host"
        ) + _with_cap("SYS_PTRACE", "ptrace process_vm_readv process_vm_writev kcmp "
                      "process_madvise userfaultfd",
                      "reading and changing other processes; userfaultfd lets an exploit "
                      "pause the kernel in the middle of a copy from user memory"
        ) + _with_cap("SYS_MODULE", "init_module finit_module delete_module",
                      "kernel modules are code in the host's kernel"
        ) + _with_cap("SYS_BOOT", "reboot",
                      "in a pid namespace it only ends the container, but the kernel asks "
                      "for CAP_SYS_BOOT"
        ) + _with_cap("SYS_TIME", "settimeofday clock_settime clock_adjtime",
                      "the clock is the host's"
        ) + _with_cap("SYS_CHROOT", "chroot", "the kernel asks for CAP_SYS_CHROOT; "
                      "Docker's default capabilities include it"
        ) + _with_cap("SYS_PACCT", "acct", "process accounting is the host's"
        ) + _with_cap("SYS_RAWIO", "iopl ioperm", "raw I/O ports of the host's hardware"
        ) + _with_cap("SYS_TTY_CONFIG", "vhangup", "hangs up the terminal, for every process on it"
        ) + _with_cap("SYSLOG", "syslog", "the kernel log is the host's, with its addresses"
        ) + _with_cap("DAC_READ_SEARCH", "open_by_handle_at",
                      "opens any file of a filesystem by its handle, outside the container's "
                      "root: the 2014 'shocker' escape from Docker"
        ) + _with_cap("SYS_NICE", "mbind migrate_pages move_pages get_mempolicy set_mempolicy "
                      "set_mempolicy_home_node",
                      "NUMA placement moves memory on the host's nodes"
        ) + [
            _deny("keyctl add_key request_key", "the kernel keyring is not namespaced: "
                  "keys of the host and of other containers"),
            _deny("kexec_load kexec_file_load", "replaces the host's running kernel"),
            _deny("swapon swapoff", "swap is the host's"),
            _deny("io_uring_setup io_uring_enter io_uring_register",
                  "the operations io_uring carries out are never seen by this filter, and it "
                  "has been a steady source of kernel privilege escalations"),
            _deny("_sysctl uselib create_module get_kernel_syms query_module nfsservctl "
                  "getpmsg putpmsg afs_syscall tuxcall security vserver epoll_ctl_old "
                  "epoll_wait_old", "removed from Linux or never implemented: ENOSYS, "
                  "the kernel's own answer", errno.ENOSYS),
        ],
    }


# === 11. The process: stages, sync pipes, init, users, signals, the terminal ===
# Two processes, in stages named for ps(1), as runc names its own:
#
#   md:[0:PARENT]  minidocker itself. Makes the state, unshares the pid
#                  namespace for its child, forks, tells the child when to go
#                  on, forwards signals, relays the terminal, waits, cleans up.
#   md:[1:CHILD]   pid 1 of the new pid namespace. Unshares the other
#                  namespaces, builds the root filesystem, pivots into it.
#   md:[2:INIT]    the same process once inside: becomes the user, drops
#                  capabilities, sets no_new_privs if asked, loads the
#                  seccomp filter (compiled by the parent, from the spec;
#                  before the drop when no_new_privs is off), and
#                  execs the command. With --init it forks first, and stays
#                  as pid 1 to reap and forward signals (become_init).
#
# With a user namespace a third comes between them, md:[1:USERNS]: it makes
# the pid namespace inside the user namespace, as runc's third process does
# (chapter 7, continued).
#
# They talk over two close-on-exec pipes (subprocess.py's trick), a line
# at a time. The child is born in its cgroup v2 (clone3) and moves itself
# into each v1 one first thing (CgroupEntry, chapter 8); where it cannot,
# the parent writes its pid, in a thread. Meanwhile the parent leases the
# network and writes the /etc files (made empty before the fork, so that
# the child can bind them at once). The child unshares its namespaces,
# says "ready", builds its root, and waits. Once the child's namespaces
# exist and the cgroups are joined, the parent gives it its veth and says
# "go" with the lease; nothing of the image runs before. The child reports
# a failure as one "error CODE MESSAGE" line. End of file on the child's pipe with no error
# means the exec succeeded: the kernel closed the pipe in it.
#
# One run, in order (run_container at the end of this chapter; the chapter
# of each step in brackets):
#    1. flags into a checked spec, the seccomp program compiled    [3, 10]
#    2. dead containers reclaimed, under a lock                    [4]
#    3. the cgroups planned, the record and the layer made          [8, 4]
#    4. the signal pipe set up; cgroups made, limits written        [11, 8]
#    5. the child forked into a new pid namespace (stage 1) and
#       into its cgroups: it unshares mnt, uts, ipc and net, and
#       says "ready"                                               [8, 7, 11]
#    6. meanwhile the parent leases an address (the bridge, the
#       nf_tables table) and writes the /etc files                 [9]
#    7. the child: overlay, mounts, /dev, masks, pivot_root         [6]
#    8. the parent, once "ready" and joined: the veth, then "go"    [9]
#    9. stage 2: cgroup namespace and /sys/fs/cgroup, host name,
#       eth0, user, capabilities, no_new_privs, seccomp, execve   [7, 8, 9, 10, 11]
#   10. the parent forwards signals and relays the terminal until
#       the command ends, then removes what the run made           [11, 8, 9, 4]
#
# With run -d the parent of all this is a monitor, forked by `run` into a
# session of its own (run_detached): it reports the start, then execs a
# lean Python that copies the command's output into the log instead of
# relaying a terminal (chapter 11 continued).

FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
FORWARDED_NUMBERS = frozenset(getattr(signal, name) for name in FORWARDED_SIGNALS)


def parse_passwd(text):
    """/etc/passwd lines -> [(name, uid, gid, home)]."""
    users = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and is_id(fields[2]) and is_id(fields[3]) \
                and "\0" not in fields[5]:
            users.append((fields[0], int(fields[2]), int(fields[3]), fields[5]))
    return users


def is_id(text):
    """A uid or gid that setuid(2) can take (lines with others are skipped,
    as an unreadable line is)."""
    return is_number(text) and int(text) <= ID_MAX


def parse_group(text):
    """/etc/group lines -> [(name, gid, [members])]."""
    groups = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and is_id(fields[2]):
            groups.append((fields[0], int(fields[2]), [m for m in fields[3].split(",") if m]))
    return groups


def resolve_user(user, passwd, group, group_add=()):
    """Docker's -u rules against the container's own files: USER and GROUP
    by name or number; a number missing from passwd is allowed (gid 0, HOME
    /), so the default user, uid 0, needs no passwd file at all (a scratch
    image has none). Returns (uid, gid, supplementary gids, home)."""
    name, _, group_name = (user or "0").partition(":")
    entry = next((u for u in passwd if name in (u[0], str(u[1]))), None)
    if entry is None and not is_number(name):
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
    if match is None and not is_number(name):
        raise MiniDockerError("unable to find group %s: no matching entries in group file" % name)
    return match[1] if match else int(name)


def container_env(spec, hostname, home):
    """The process's environment: docker's defaults first, -e on top. A
    bundle's is its process.env as it is, and HOME when that has none, as
    runc adds it."""
    if spec.bundle is not None:
        env = dict(e.partition("=")[::2] for e in spec.env)
        env.setdefault("HOME", home)
        return env
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


def parse_ulimits(texts):
    """--ulimit NAME=SOFT[:HARD] (HARD defaults to SOFT; -1 is unlimited)
    -> [(name, soft, hard)], a later one of a name replacing an earlier
    one, as docker keeps them."""
    limits = {}
    for text in texts:
        name, equals, values = text.partition("=")
        if not equals:
            raise MiniDockerError("invalid --ulimit %s: expected NAME=SOFT[:HARD]" % quote(text))
        if name not in RLIMITS:
            raise MiniDockerError("invalid --ulimit %s: invalid ulimit type: %s (one of %s)"
                                  % (quote(text), name, ", ".join(sorted(RLIMITS))))
        parts = values.split(":")
        if len(parts) > 2 or not all(p == "-1" or is_number(p) and len(p) <= 19 for p in parts) \
                or any(int(p) >= RLIM_INFINITY for p in parts):
            raise MiniDockerError("invalid --ulimit %s: expected SOFT[:HARD], whole numbers, "
                                  "-1 for unlimited" % quote(text))
        soft, hard = int(parts[0]), int(parts[-1])
        if hard != -1 and (soft == -1 or soft > hard):
            raise MiniDockerError("invalid --ulimit %s: ulimit soft limit must be less than or "
                                  "equal to hard limit: %s > %d" % (quote(text), parts[0], hard))
        limits[name] = (name, soft, hard)
    return list(limits.values())


def parse_oom_score_adj(text):
    """--oom-score-adj N: the OOM killer's bias, -1000 (never) to 1000
    (first), as /proc/PID/oom_score_adj takes it (proc(5))."""
    if text is None:
        return None
    if not is_integer(text, 5) or not -1000 <= int(text) <= 1000:
        raise MiniDockerError("invalid --oom-score-adj %s: the range is -1000 to 1000"
                              % quote(text))
    return int(text)


def apply_ulimits(ulimits):
    """--ulimit, in the process about to exec, while it is still root with
    all its capabilities (as runc sets them, before its capabilities go):
    raising a hard limit needs CAP_SYS_RESOURCE. They pass to the command
    through fork and execve."""
    for name, soft, hard in ulimits:
        try:
            setrlimit(name, soft, hard)
        except SyscallError as err:
            raise MiniDockerError("--ulimit %s=%s:%s: %s" % (name, soft, hard, err))


def set_oom_score_adj(value):
    """--oom-score-adj, through the host's /proc (before pivot_root, or
    before exec's child enters the container, where no /proc/self of its
    own would be found): lowering it needs CAP_SYS_RESOURCE, which the
    process still has. Its children, the command among them, inherit it."""
    if value is None:
        return
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(str(value))
    except OSError as err:  # EACCES: below the current value without CAP_SYS_RESOURCE
        raise MiniDockerError("--oom-score-adj %d: writing /proc/self/oom_score_adj: %s%s" % (
            value, err.strerror, " (hint: lowering it needs CAP_SYS_RESOURCE, which "
            "minidocker does not hold here)" if err.errno in (errno.EACCES, errno.EPERM)
            else ""))


def drop_privileges(uid, gid, gids, sets, last, no_new_privs):
    """Everything stage 2 gives up before the command: the bounding set
    down to the container's capabilities, the user and groups (keeping the
    capabilities across setuid, PR_SET_KEEPCAPS, then setting the other
    sets of capability_sets: for `run`, a non-root user ends with empty
    permitted and effective sets, as with docker), and with --security-opt
    no-new-privileges (a bundle's noNewPrivileges), no_new_privs. Without it, as in
    Docker, a setuid-root file run by a non-root user raises it to root,
    with the bounding set's capabilities and no more: the bounding set is
    what stands between the container and the rest."""
    drop_bounding_set(sets["bounding"], last)
    prctl(PR_SET_KEEPCAPS, 1, what="prctl(PR_SET_KEEPCAPS)")
    if not setgroups_denied():  # (a user's one-id namespace keeps the groups it has)
        os.setgroups(gids)
    try:
        os.setgid(gid)
        os.setuid(uid)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
        raise MiniDockerError("user %d:%d is not in the user namespace's map (a user's "
                              "container without newuidmap maps the user alone, to root)"
                              % (uid, gid))
    set_capabilities(sets)
    if no_new_privs:
        prctl(PR_SET_NO_NEW_PRIVS, 1, what="prctl(PR_SET_NO_NEW_PRIVS)")


def child_stage(spec, instance, to_parent, from_parent, console):
    """Stage 1 and 2, in the child. Never returns: execs or exits."""
    try:
        set_stage_name("md:[1:CHILD]")
        spec.runtime_files = runtime_files()
        close_inherited_fds(spec.preserve_fds)
        if console is None:
            os.setsid()  # with -t, attach_terminal does it
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
        host_network = spec.network_plan["mode"] == "host"
        if not instance.id_maps:  # (else joined by stage 1, outside the user namespace)
            join_namespaces(spec, ("ipc", "uts"))
            if spec.network_plan.get("join"):
                join_namespace(spec.network_plan["join"], CLONE_NEWNET, "net")
        unshare(child_namespaces(spec))
        if not host_network and spec.bundle is None:
            set_network_sysctls(instance.id_maps)  # in our new namespace: never the host's
        apply_sysctls(spec.sysctls)  # after Docker's defaults: a --sysctl of the same key wins
        set_oom_score_adj(spec.oom_score_adj)
        os.write(to_parent, b"ready\n")
        trace(spec.debug, "child: namespaces unshared")
        # The root is built while the parent leases the network (and, on
        # a kernel without clone3, joins us to our cgroup v2, which waits
        # out an RCU grace period); nothing here needs either. The /etc files
        # are bound as they are, empty: the parent writes them (the same
        # files) before "go".
        rest = bytearray()
        if spec.hooks:  # startContainer's, once the host's /proc is out of reach
            spec.start_state = instance.state("created")
        if spec.bundle is None:
            cgroup_view = plan_cgroup_view(read_text("/proc/self/mountinfo"),
                                           [v.target for v in spec.volumes] +
                                           [t[0] for t in spec.tmpfs])
            view_read_only = not spec.privileged
        else:  # a bundle's cgroup mount, if it has one
            asked = [step for step in spec.mount_plan if step.kind == "cgroup"]
            cgroup_view = plan_cgroup_view(read_text("/proc/self/mountinfo")) if asked else []
            view_read_only = bool(asked and asked[0].flags & MS_RDONLY)
        build_root(spec, instance, console)
        trace(spec.debug, "child: root built, pivoted")
        set_stage_name("md:[2:INIT]")
        go = read_line(from_parent, rest)
        if not go.startswith(b"go "):
            os._exit(EXIT_RUNTIME)
        instance.lease = from_json(go[3:].decode())
        trace(spec.debug, "child: go")
        if spec.namespaces["cgroup"] == "private":
            unshare(CLONE_NEWCGROUP)  # after the join: our cgroup is its root
            # Only inside a cgroup namespace of its own: mounted in the
            # host's, each hierarchy's root would be the host's (and cgroup2
            # without nsdelegate would clear the host's).
            mount_cgroup_view(cgroup_view, view_read_only)
        else:
            join_namespaces(spec, ("cgroup",))
        if spec.namespaces["uts"] == "private" and instance.hostname:
            sethostname(instance.hostname)  # (the host's name is not ours to change)
        if spec.domainname:
            setdomainname(spec.domainname)
        if not host_network:
            bring_up_loopback()
        if instance.lease:  # the host made eth0 for us before "go"
            configure_eth0(instance.lease)
        if spec.init:
            # The reaper shows its argv for the container's whole life;
            # zeroed now, as root: once it is the container's user it is
            # non-dumpable, which makes its /proc/self/mem root's.
            scrub_arguments_and_environment()
        exec_command(spec, instance.hostname, to_parent)
    except MiniDockerError as err:
        report_and_exit(to_parent, err.code, str(err))
    except OSError as err:
        report_and_exit(to_parent, EXIT_RUNTIME, str(err))
    except BaseException as err:  # a bug: still one line, never a traceback
        report_and_exit(to_parent, EXIT_RUNTIME, "internal error: %r" % err)


def close_inherited_fds(preserved=0):
    """Close every descriptor above 2 that whoever started minidocker left
    open. Such a descriptor would reach the container through execve: an
    open directory of the host (`exec 7</`) is a way out of the root, by
    /proc/self/fd/7/etc/shadow or by `-w /proc/self/fd/7` (runc's
    CVE-2024-21626). Our own descriptors are all close-on-exec (Python
    opens them so) and stay open for the start-up; the kernel closes them
    at execve. close_range(2) with CLOSE_RANGE_CLOEXEC would do the same in
    one call, but it needs Linux 5.11."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if 2 < fd < 3 + preserved:  # a bundle's --preserve-fds: passed on, as runc does
            os.set_inheritable(fd, True)
        elif fd > 2:
            try:
                if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                    os.close(fd)
            except OSError:  # EBADF: the directory listdir itself had open
                pass


def read_line(fd, rest):
    """The child's side of the pipe: the parent's next line ("go" and the
    lease), b'' once the parent is gone. `rest` keeps what a read brought
    after the line."""
    while b"\n" not in rest:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b""
        rest += chunk
    line, newline, after = bytes(rest).partition(b"\n")
    rest[:] = after
    return line + newline


class reported:
    """A child's failure, as the one line its parent shows (report_and_exit),
    as child_stage reports its own."""

    def __init__(self, to_parent):
        self.to_parent = to_parent

    def __enter__(self):
        return self

    def __exit__(self, kind, err, traceback):
        if isinstance(err, MiniDockerError):
            report_and_exit(self.to_parent, err.code, str(err))
        elif isinstance(err, OSError):
            report_and_exit(self.to_parent, EXIT_RUNTIME, str(err))
        elif err is not None:  # a bug: still one line, never a traceback
            report_and_exit(self.to_parent, EXIT_RUNTIME, "internal error: %r" % err)


def report_and_exit(to_parent, code, message):
    line = "error %d %s\n" % (code, message.replace("\n", " "))
    try:
        os.write(to_parent, line.encode(errors="replace"))
    except OSError:  # EBADF: a bundle's `create` is done and gone; stderr is the caller's
        os.write(2, ("minidocker: error: %s\n" % message).encode(errors="replace"))
    os._exit(code)


def build_root(spec, instance, console):
    """Mount namespace work: private propagation, the overlay (with a user
    namespace of root's, stage 1's detached copies of it and of the bind
    sources), the mount plan, the terminal, pivot_root."""
    os.umask(0)  # device nodes and mount points get exactly the modes we give
    # Propagation must be private (or a bundle's slave) before anything is
    # mounted, or the mounts would be copied into the host's namespace
    # (mount_namespaces(7)).
    mount(None, "/", None, spec.propagation, shown="/ (propagation)")
    if instance.handles:
        # Stage 1's detached copies (open_host_sources): the root (the
        # overlay, or a bundle's directory), attached on top of our "/" for
        # pivot_root(2) to take (enter_root), and each bind's source, moved
        # to its place (apply_mount).
        rootfd = instance.handles["root"]
        move_mount(rootfd, "/", "/ (the container's root)")
        plan = [Mount(step.kind, step.target, fd_path(instance.handles[index]), step.fstype,
                      step.flags, instance.handles[index] if step.kind == "bind" else step.data,
                      step.kernel_fs) if index in instance.handles else step
                for index, step in enumerate(mount_plan_of(spec, instance))]
    elif spec.bundle is None:  # (a user's container too, in its user namespace)
        rootfd = mount_overlay(spec, instance.layer, userxattr=bool(instance.id_maps))
        plan = plan_mounts(spec, instance.etc_files, instance.volumes)
    else:
        rootfd = bind_root(spec.rootfs)
        plan = spec.mount_plan
    apply_mounts(rootfd, plan)
    for step in plan:
        if step.kind == "cgroup" and spec.namespaces["cgroup"] != "private":
            bind_cgroup_dirs(rootfd, instance.cgroups, step.flags & MS_RDONLY)
    make_devices(rootfd, spec.devices, bind=instance.id_maps is not None)
    if spec.privileged:
        add_host_devices(rootfd)
    if console is not None:
        attach_terminal(rootfd, console, spec.console_size)
    make_workdir(rootfd, spec.workdir)
    run_hooks(spec.hooks, "createContainer", lambda: instance.state("creating"))
    enter_root(rootfd, spec.read_only, root_flags(spec))
    if spec.bundle is not None:
        # The propagation set above went to the old root, which pivot_root
        # left behind. The config's rootfsPropagation is for the container's
        # own "/" (runtime-tools' validation checks that a "shared" root
        # shares), so it is set again there; runc 1.1 leaves "/" private.
        mount(None, "/", None, spec.propagation, shown="/ (rootfsPropagation)")
    os.close(rootfd)
    os.umask(0o022)


def make_workdir(rootfd, workdir):
    """-w DIR is created when missing, inside the rootfs, as docker does."""
    try:
        os.close(open_in_root(rootfd, workdir, create="dir"))
    except OSError as err:
        raise MiniDockerError("workdir %s: %s" % (workdir, err.strerror))


def attach_terminal(rootfd, console, size=None):
    """-t: open a pty in the container's own devpts, so that `tty` inside says
    /dev/pts/0; bind its slave to /dev/console; pass the master to the parent
    over the console socket (SCM_RIGHTS, unix(7)), and keep the slave as
    stdin, stdout and stderr, the controlling terminal of a new session.
    `size`: (rows, columns), a bundle's consoleSize."""
    slave = open_pty(rootfd, console, size)
    consolefd = open_in_root(rootfd, "/dev/console", create="file", follow=False)
    mount(fd_path(slave), fd_path(consolefd), None, MS_BIND, shown="/dev/console")
    os.close(consolefd)
    take_terminal(slave)


def open_pty(rootfd, console, size=None):
    """A new pty of the devpts mounted at ROOT/dev/pts, sized `size` or as
    our own terminal; its master goes to the parent (or a bundle's
    --console-socket) over `console`. Returns the slave."""
    import array
    import _socket
    ptsfd = open_in_root(rootfd, "/dev/pts", follow=False)
    try:
        # A bundle's config may mount no devpts there: /dev/pts is then
        # the image's, and its `ptmx -> /dev/ptmx` would be followed, before
        # pivot_root, to the host's (a pty of the host's, or any host file
        # opened read-write by root). In a devpts, ptmx is the kernel's own.
        if filesystem_type(ptsfd) != DEVPTS_SUPER_MAGIC:
            raise MiniDockerError("a terminal needs a devpts mounted at /dev/pts (config.json: "
                                  "mounts): /dev/pts is the image's own directory")
        master = os.open("ptmx", os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=ptsfd)
    finally:
        os.close(ptsfd)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt(3)
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    if size:
        fcntl.ioctl(slave, TIOCSWINSZ, struct.pack("=HHHH", size[0], size[1], 0, 0))
    elif os.isatty(0):
        fcntl.ioctl(slave, TIOCSWINSZ, fcntl.ioctl(0, TIOCGWINSZ, WINSIZE_ZERO))
    console.sendmsg([b"M"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                              array.array("i", [master]))])
    os.close(master)
    console.close()
    return slave


def take_terminal(slave):
    """The pty's slave as the controlling terminal of a new session, and as
    stdin, stdout and stderr."""
    os.setsid()
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(slave, target)
    os.close(slave)


def reset_signals():
    """Every signal back to its default action, and none blocked. (As pid 1
    of its namespace, the process, and the command after it, still ignores
    a default-action signal sent from inside the namespace, for its whole
    life: pid_namespaces(7). One sent from the host's namespace ends it.)
    Only the signals not at their default already are set: getsignal
    answers from the interpreter's own table (no system call), which it
    filled from the kernel at start-up; 60 calls of sigaction fewer."""
    for number in signal.valid_signals():
        if number in (signal.SIGKILL, signal.SIGSTOP) or \
                signal.getsignal(number) == signal.SIG_DFL:
            continue
        try:
            signal.signal(number, signal.SIG_DFL)
        except (OSError, ValueError):  # glibc's own real-time signals
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def exec_command(spec, hostname, to_parent, tied=True, fork=None):
    """Stage 2: identity, environment, privileges, the seccomp filter, then
    execve(2) (in a child of ours with --init: become_init, or `fork`,
    exec's). `tied`: the command dies with the process that started it
    (SIGKILL when it ends), as all do but exec -d's."""
    passwd = parse_passwd(read_account_file("/etc/passwd"))
    if spec.identity is None:
        group = parse_group(read_account_file("/etc/group"))
        uid, gid, gids, home = resolve_user(spec.user, passwd, group, spec.group_add)
    else:  # a bundle's numbers, exactly; passwd gives the home, as in runc
        uid, gid, gids = spec.identity
        home = next((u[3] for u in passwd if u[1] == uid and u[3]), "/")
    env = container_env(spec, hostname, home)
    apply_ulimits(spec.ulimits)
    if spec.umask is not None:
        os.umask(spec.umask)
    if spec.personality is not None:
        personality(spec.personality)
    # seccomp(2) asks for no_new_privs or CAP_SYS_ADMIN. Without
    # no_new_privs the filter is loaded here, while we still hold every
    # capability, as runc does; all that follows, up to execve, then runs
    # under it (prctl, setgroups, setgid, setuid, capset, chdir, getcwd,
    # stat, rt_sigaction, and --init's fork: the default profile allows them; a
    # profile file must too). With no_new_privs it comes last, so that as
    # little as possible runs under it.
    filter_first = spec.seccomp is not None and not spec.no_new_privs
    if filter_first:
        load_filter(spec.seccomp, spec.seccomp_flags)
    try:
        drop_privileges(uid, gid, gids, capability_sets(spec, uid), spec.last_cap,
                        spec.no_new_privs)
    except OSError as err:
        if not filter_first:
            raise
        raise MiniDockerError("dropping privileges under the seccomp filter: %s (hint: without "
                              "no-new-privileges the filter comes first, so the profile must "
                              "allow prctl, setgroups, setgid, setuid and capset)"
                              % err.strerror)
    # setuid cleared the parent-death signal (prctl(2)); ask for it again.
    tied = tied and spec.tied
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL if tied else 0, what="prctl(PR_SET_PDEATHSIG)")
    enter_workdir(spec.workdir)
    program = find_executable(spec.command[0], env.get("PATH", DEFAULT_PATH))
    # An ignored signal stays ignored across execve, and the blocked mask is
    # kept as it is. Python ignores SIGPIPE and SIGXFSZ for itself, and
    # whoever started minidocker may have ignored or blocked more (a
    # background job of a non-interactive shell ignores SIGINT and SIGQUIT,
    # and a shell's trap cannot undo that). The command starts as from a
    # fresh init: every disposition the default, nothing blocked.
    reset_signals()
    if spec.debug:
        debug(True, "own work %.2f ms (main() to execve)" % ((time.perf_counter() - START) * 1000))
    if spec.init or spec.exec_fifo is not None:
        # Before the filter, which may refuse prctl; execve makes the
        # command dumpable. A bundle's init may wait at the fifo for long,
        # holding a descriptor of the host's state directory: no process
        # of the container may reach into it meanwhile.
        prctl(PR_SET_DUMPABLE, 0, what="prctl(PR_SET_DUMPABLE)")
    if spec.exec_fifo is not None:
        wait_for_start(spec, to_parent)
    run_hooks(spec.hooks, "startContainer", lambda: dict(spec.start_state, status="created"),
              spec.runtime_files)
    if spec.apparmor:  # AppArmor's change_onexec(): the profile takes effect at execve
        write_attr("/proc/self/attr/apparmor/exec", "exec " + spec.apparmor)
    if spec.seccomp is not None and not filter_first:
        load_filter(spec.seccomp, spec.seccomp_flags)
    refuse_runtime_files(program, spec.runtime_files)
    if spec.init:  # returns in the command's process only
        (fork or become_init)(to_parent, spec.tty, tied)
    try:
        os.execve(program, spec.command, env)
    except OSError as err:
        code = EXIT_NOT_FOUND if err.errno == errno.ENOENT else EXIT_CANNOT_EXEC
        raise MiniDockerError("exec %s: %s" % (program, err.strerror), code)


def fork_in_container():
    """fork(2), its failures said in the container's terms."""
    try:
        return os.fork()
    except BlockingIOError:  # EAGAIN
        raise MiniDockerError("fork: the container's task limit (--pids-limit) or the host's "
                              "is reached")
    except OSError as err:
        raise syscall_error(err.errno, "fork", "a pid namespace whose init has ended takes no "
                            "new process" if err.errno == errno.ENOMEM else None)


def runtime_files():
    """{(st_dev, st_ino)} of every file mapped into us, the interpreter
    (/proc/self/exe) and its libraries (libc, ld.so, libpython), from the
    host's /proc/self/maps, before anything of the container is entered;
    and /proc/self/exe as stat(2) sees it: on overlayfs maps names the
    file of the layer below, stat the overlay's."""
    st = os.stat("/proc/self/exe")
    files = {(st.st_dev, st.st_ino)}
    for line in read_text("/proc/self/maps").splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[4] != "0":  # inode 0: anonymous, the heap, the stack
            major, minor = (int(n, 16) for n in fields[3].split(":"))
            files.add((os.makedev(major, minor), int(fields[4])))
    return files


def refuse_runtime_files(program, runtime_files):
    """Until execve, /proc/self/exe is the host's python3, and an image's
    `/bin/sh -> /proc/self/exe` leads execve there (as /proc/self/map_files
    leads to its libc, given CAP_CHECKPOINT_RESTORE): the command would be
    the host's interpreter, loading the image's ld.so and libc, and could
    keep a descriptor of its /proc/self/exe to write the host's python3
    once no process runs it (runc's CVE-2019-5736, with the image's
    symlink where runc's binary was). Checked last before execve (under
    the seccomp filter, which must allow stat, as glibc needs it): a link
    the image shipped is caught, one that a process already in the
    container swaps in between this stat and execve is not (that needs a
    copy of the interpreter to exec from, as runc clones its binary). An
    error execve would meet as well (ENOENT, EACCES, ...) is left to it."""
    try:
        st = os.stat(program)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP,
                         errno.ENAMETOOLONG):
            return
        raise MiniDockerError("exec %s: stat: %s" % (program, err.strerror))
    if (st.st_dev, st.st_ino) in runtime_files:
        raise MiniDockerError("exec %s: it is a file of the runtime's own interpreter (the "
                              "image leads it to /proc/self/exe): refused" % program,
                              EXIT_CANNOT_EXEC)


def become_init(to_parent, tty, tied=True):
    """--init, as tini: fork; the child goes on to execve the command, and
    we stay as pid 1, reaping every orphan the namespace hands us and
    forwarding signals to the command, until it ends; then we end with its
    status. We run under everything the command runs under (user,
    capabilities, no_new_privs, the seccomp filter, loaded just before),
    and are made non-dumpable: our /proc/1/exe is the host's python3, and
    /proc/1/mem our memory, which a process of the container must not
    open (runc's CVE-2019-5736 class). exec's child does the same from
    outside the pid namespace, where our fork puts the command (chapter
    11, exec); `tied`: the command dies with us, unless exec -d."""
    command = fork_in_container()
    if command == 0:
        if tied:  # the filter may refuse prctl: then only the namespace's end takes it
            with suppress(OSError):
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
        os.setpgid(0, 0)  # a group of its own: a terminal's ^C reaches it once, not via us too
        if tty:
            handler = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # we are not in the foreground
            with suppress(OSError):  # ENOTTY: stdin is not the terminal
                os.tcsetpgrp(0, os.getpgrp())
            signal.signal(signal.SIGTTOU, handler)
        return
    # The command's exec closes its copies of our descriptors; we never
    # exec, so we close ours: the pipe to the parent (whose end says the
    # exec happened), and those of run -d's monitor (its log, its report
    # to `run -d`, which would wait for us), which a process of the
    # container with CAP_SYS_PTRACE could otherwise reach through us.
    # exec's child, outside the pid namespace whose /proc it now sees,
    # finds no /proc/self there; it closed the rest before it entered
    # anything: the pipe is all it holds.
    if os.path.exists("/proc/self"):
        for name in os.listdir("/proc/self/fd"):
            with suppress(OSError):  # EBADF: listdir's own
                if int(name) > 2:
                    os.close(int(name))
    else:
        os.close(to_parent)
    wait_for_command(command)


def wait_for_command(command):
    """The reaper's life: forward signals to the command, reap, and end
    with the command's status. Never returns."""
    for number in FORWARDED_NUMBERS | {signal.SIGWINCH}:
        signal.signal(number, lambda received, _frame: forward(command, received))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # ECHILD: nothing left, the command among it
            os._exit(EXIT_RUNTIME)
        if pid == command:
            os._exit(exit_code(status))


def forward(pid, number):
    # ESRCH: it has just ended; EPERM: it became a user we may not signal
    # (--cap-drop KILL); either way the reaper goes on.
    with suppress(OSError):
        os.kill(pid, number)


def scrub_arguments_and_environment():
    """Zero the memory that /proc/1/cmdline and /proc/1/environ show: ours
    are minidocker's command line and the caller's environment (sudo -E
    passes secrets), which the container has no business reading. The
    bounds are fields 48 to 51 of /proc/self/stat; /proc/self/mem writes
    our own memory. A process that is not dumpable may not open it unless
    it is root of the host's user namespace (its /proc files are then the
    host root's): a user's (rootless) one, or the init of a user namespace
    with --init, is dumpable for those two writes, before anything of the
    container can see it."""
    fields = read_text("/proc/self/stat").rsplit(")", 1)[1].split()
    arg_start, arg_end, env_start, env_end = (int(f) for f in fields[45:49])
    dumpable = prctl(PR_GET_DUMPABLE, what="prctl(PR_GET_DUMPABLE)")
    if not dumpable:
        prctl(PR_SET_DUMPABLE, 1, what="prctl(PR_SET_DUMPABLE)")
    try:
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            for start, end in ((arg_start, arg_end), (env_start, env_end)):
                memory.seek(start)
                memory.write(b"\0" * (end - start))
    finally:
        if not dumpable:
            prctl(PR_SET_DUMPABLE, 0, what="prctl(PR_SET_DUMPABLE)")


def enter_workdir(workdir):
    """chdir into -w DIR, and check that the result is inside the root: a
    path through a magic link (/proc/self/fd/N, /proc/1/cwd) could name a
    directory of the host that some descriptor still held. For a directory
    outside the process's root the getcwd system call returns a path that
    starts "(unreachable)", which glibc's getcwd(3) turns into ENOENT
    (glibc 2.27 and later): either means outside."""
    try:
        os.chdir(workdir)
    except OSError as err:
        raise MiniDockerError("workdir %s: %s" % (workdir, err.strerror))
    try:
        inside = os.getcwd().startswith("/")
    except FileNotFoundError:
        inside = False
    except OSError as err:  # EPERM and the like: a seccomp profile refuses getcwd
        raise MiniDockerError("workdir %s: getcwd: %s (hint: it checks that the workdir is "
                              "inside the root; without no-new-privileges the seccomp filter "
                              "comes first, so the profile must allow getcwd)"
                              % (workdir, err.strerror))
    if not inside:
        raise MiniDockerError("workdir %s: resolves outside the container's root" % workdir)


ACCOUNT_FILE_LIMIT = 4 << 20  # far above any real passwd, far below harm


def read_account_file(path):
    """/etc/passwd or /etc/group of the image, read safely: the image may
    make it a symlink to /dev/zero (endless), a FIFO (blocks forever), or
    /proc/kmsg (the host's kernel log). Only a regular file of at most
    ACCOUNT_FILE_LIMIT bytes is read; a missing one is empty (scratch images
    have none)."""
    if not os.path.lexists(path):
        return ""
    data = read_regular_file(path, ACCOUNT_FILE_LIMIT, "%s in the image" % path)
    return data.decode("utf-8", "replace")


# During start-up there is no command yet to forward a signal to. These end
# the start (the user wants out, and the child may be stuck on a hostile
# image); the others wait until the command runs.
STOPPING_SIGNALS = frozenset((signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT))


def read_child_message(fd, signals, pending, rest):
    """One line from the child, or b'' at end of file. Watches the signal
    pipe meanwhile: a stopping signal ends the start-up, another forwarded
    one is kept in `pending` for the command. `rest` (a bytearray) keeps
    what came after the line for the next call: the child may write
    "ready" and its error in one go."""
    while b"\n" not in rest:
        readable = select.select([fd, signals.read_end], [], [])[0]
        # The child's word first: a signal that comes with the end of the
        # start-up (the command exec'd, the pipe at its end) is the
        # command's to get, not a start-up to end.
        if fd in readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            rest += chunk
            continue
        for number in signals.received():
            if number in STOPPING_SIGNALS:
                raise MiniDockerError("start-up interrupted by %s: the container did not start"
                                      % signal_name(number), 128 + number)
            if number in FORWARDED_NUMBERS:
                pending.append(number)
    line, newline, after = bytes(rest).partition(b"\n")
    rest[:] = after
    return line + newline


def raise_child_error(message):
    if not message:
        raise MiniDockerError("the container's init died during start-up")
    _, code, text = message.decode(errors="replace").rstrip("\n").split(" ", 2)
    raise MiniDockerError(text, int(code))


def start_container(spec, instance, signals, join, prepare, console_socket=None, entry=None,
                    later=None):
    """Stage 0: fork the child into its namespaces and see it to its exec.
    On the host side, while the child unshares and builds its root:
    join(pid) (the cgroups `entry` leaves) in a thread of its own, and meanwhile
    prepare(), which returns the lease (or None) once the /etc files are
    written; then, once the child's namespaces exist, its veth, and "go"
    with the lease. Returns (pid of the container's init, pty
    master or None, the signals that arrived meanwhile and are still to
    forward). `console_socket`: a bundle's --console-socket, connected,
    where the child sends the pty's master instead of to us. `entry`: a
    CgroupEntry, opened, by which the child enters its cgroups itself;
    `later`, one the init of a user namespace enters (stage 1 forks it)."""
    child_read, parent_write = os.pipe2(os.O_CLOEXEC)
    parent_read, child_write = os.pipe2(os.O_CLOEXEC)
    console, console_peer = None, console_socket
    if spec.network_plan["mode"] == "bridge":
        preload("_socket")  # configure_eth0 speaks netlink after pivot_root
    if spec.tty:
        preload("_socket", "array")  # attach_terminal's, after the fork
    if spec.tty and console_socket is None:
        import _socket
        console, console_peer = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    host_pid = spec.namespaces["pid"] == "host"
    userns = instance.id_maps is not None
    if userns:  # stage 1 makes the pid namespace, and forks the init we adopt
        prctl(PR_SET_CHILD_SUBREAPER, 1, what="prctl(PR_SET_CHILD_SUBREAPER)")
    elif spec.namespaces["pid"] == "private":
        unshare(CLONE_NEWPID)  # for the child we are about to fork
    else:  # a bundle's pid namespace by path, for the child alike
        join_namespaces(spec, ("pid",))
    libc()  # (--pid host calls none before): ctypes imported once, not in both processes
    pid = os.fork() if entry is None else entry.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)  # the parent's signals are not ours to note
        os.close(parent_read)
        os.close(parent_write)
        if console is not None:
            console.close()
        try:
            if entry is not None:
                with reported(child_write):
                    entry.enter()
            if not spec.interactive and not spec.tty:
                os.dup2(os.open("/dev/null", os.O_RDONLY), 0)  # `docker run` without -i
            if userns:
                with reported(child_write):
                    enter_user_namespace(spec, instance, child_write, child_read, later)
            child_stage(spec, instance, child_write, child_read, console_peer)
        finally:
            # Whatever happens, the child never returns into our frames:
            # their finally blocks would clean up the parent's run from
            # inside the container.
            os._exit(EXIT_RUNTIME)
    os.close(child_read)
    os.close(child_write)
    if console_peer is not None:
        console_peer.close()
    pending, rest = [], bytearray()
    try:
        trace(spec.debug, "forked the child")
        # unshare(CLONE_NEWPID) sent our next children to the new namespace,
        # and until that is undone the kernel refuses us a thread (EINVAL:
        # a thread must share its process's pid namespace). Entering our
        # own pid namespace again undoes it.
        if not host_pid and not userns:
            own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(own, CLONE_NEWPID, "our own pid namespace")
            finally:
                os.close(own)
        warming = None
        if userns:
            # (not a user's container: it joins a cgroup only where one is delegated)
            # (a pid still to write: cgroup v2's pids cgroup, the init's)
            if not instance.id_maps.get("rootless") and (entry is None or later and later.v2):
                warming = InThread(warm_cgroup_moves)
            pid = adopt_init(pid, parent_read, parent_write, signals, pending, rest)
        joining = InThread(join, pid)
        try:
            try:
                lease = prepare()
            finally:
                failed = joining.wait()
                if warming is not None:
                    warming.wait()  # (its failure is no matter: it only ran early)
        except MiniDockerError as err:
            child_error_first(err, pid, parent_read, signals, pending, rest)
        if failed is not None:
            child_error_first(failed, pid, parent_read, signals, pending, rest)
        trace(spec.debug, "cgroups joined")
        message = read_child_message(parent_read, signals, pending, rest)
        if message != b"ready\n":
            raise_child_error(message)
        try:
            if lease:
                attach_veth(lease, pid)
            for point in ("prestart", "createRuntime"):  # a bundle's, in our namespaces
                run_hooks(spec.hooks, point, lambda: dict(instance.oci_state, status="creating",
                                                    pid=pid))
            os.write(parent_write, b"go %s\n" % to_json(lease).encode())
        except (MiniDockerError, BrokenPipeError) as err:
            child_error_first(err, pid, parent_read, signals, pending, rest)
        trace(spec.debug, "the child's namespaces ready, veth attached, go")
        master = receive_master(console) if console is not None else None
        message = read_child_message(parent_read, signals, pending, rest)
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
    return pid, master, pending


def adopt_init(stage1, from_child, to_child, signals, pending, rest):
    """The parent's side of enter_user_namespace: stage 1's note (a shifted
    copy) kept for the user, the init's pid read, stage 1 reaped (its end
    made the init our child: we are a child subreaper), and "adopted" said
    to the init. Returns the init's pid."""
    message = read_child_message(from_child, signals, pending, rest)
    if message.startswith(b"note "):
        warn(message[5:].decode(errors="replace").rstrip("\n"))
        message = read_child_message(from_child, signals, pending, rest)
    if not message.startswith(b"pid "):
        raise_child_error(message)
    init = int(message[4:])
    os.waitpid(stage1, 0)
    try:
        if process_parent(init) != os.getpid():
            raise MiniDockerError("the container's init (pid %d) ended during start-up" % init)
        os.write(to_child, b"adopted\n")
    except BaseException:
        if process_parent(init) == os.getpid():
            kill_and_reap(init)
        raise
    return init


class InThread:
    """call(*args) in a thread of its own; wait() returns its exception, or
    None. (_thread, not threading: importing threading would cost 2 ms of
    every start.)"""

    def __init__(self, call, *args):
        import _thread
        self.error = None
        self.done = _thread.allocate_lock()
        self.done.acquire()

        def body():
            try:
                call(*args)
            except BaseException as err:
                self.error = err
            finally:
                self.done.release()

        _thread.start_new_thread(body, ())

    def wait(self):
        with self.done:
            return self.error


def preload(*names):
    """Import now, in the parent, modules that only the child uses, after
    pivot_root, when the host's Python library is out of its reach: the
    child gets them with the fork."""
    for name in names:
        __import__(name)


def child_error_first(err, pid, fd, signals, pending, rest):
    """A step on the host side failed while the child went on. If the child
    failed first (the cgroup join then says ESRCH, the "go" EPIPE), its own
    error is the one that explains: raise that, else `err`."""
    os.kill(pid, signal.SIGKILL)  # an unreaped child: never ESRCH
    message = b"ready\n"
    while message == b"ready\n":
        message = read_child_message(fd, signals, pending, rest)
    if message:
        raise_child_error(message)
    if isinstance(err, BrokenPipeError):
        raise_child_error(b"")
    raise err


def receive_master(console):
    import array
    import _socket
    fds = array.array("i")
    _, ancillary, _, _ = console.recvmsg(1, _socket.CMSG_LEN(fds.itemsize))
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[:fds.itemsize])
    return fds[0] if fds else None


def kill_and_reap(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    with suppress(ChildProcessError):  # reaped already (adopt_init's stage 1)
        os.waitpid(pid, 0)


def exit_code(status):
    """waitpid status -> the shell's convention (os.waitstatus_to_exitcode is
    3.9+): the code, or 128+N for a process killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class SignalPipe:
    """Signals as bytes in a pipe, so that one select() loop can wait for
    the container's end, its terminal and the user's signals at once.

    Why not plain Python handlers? Python runs a handler between two
    bytecodes of the main thread. A signal that lands after the last such
    point but before os.waitpid() enters the kernel is noted, and then
    nobody looks: waitpid sleeps until the container exits, and the signal
    meant to end it never goes out. (Under load it happened about once in a
    hundred runs.) signal.set_wakeup_fd() closes that gap: Python's C-level
    handler writes the signal's number into our pipe at the moment it
    arrives, and select() on the pipe cannot miss it.

    Installed before the fork, so a signal that comes while the container
    starts is never lost and never the default action (KeyboardInterrupt)
    in minidocker itself: read_child_message ends the start-up on a
    stopping signal and keeps the others for the command."""

    def __init__(self):
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        numbers = [getattr(signal, name) for name in FORWARDED_SIGNALS]
        numbers += [signal.SIGCHLD, signal.SIGWINCH]
        for number in numbers:
            signal.signal(number, self.noted)
        signal.set_wakeup_fd(self.write_end, warn_on_full_buffer=False)
        # Whoever started us may have blocked some of them; a blocked signal
        # would wait forever instead of reaching the container.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, numbers)

    @staticmethod
    def noted(_signum, _frame):
        """Nothing to do here: the number is already in the pipe."""

    def received(self):
        try:
            return list(os.read(self.read_end, 512))
        except BlockingIOError:
            return []

    def close(self):
        """The container is gone: a signal has nothing left to reach. They
        are held back again until minidocker exits, because Python puts
        every handler it installed back to the default action while it
        shuts down, and a SIGUSR1 then would end minidocker by the signal
        instead of with the container's exit code."""
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_NUMBERS)
        signal.set_wakeup_fd(-1)
        os.close(self.read_end)
        os.close(self.write_end)


def wait_for_container(pid, signals, master, interactive, pending=()):
    """Forward the user's signals to the container's init until it exits,
    relaying its terminal if it has one. Returns the wait status.

    A pid 1 only gets the signals it has a handler for (pid_namespaces(7)),
    exactly as in docker: `docker stop` needs a SIGKILL after the SIGTERM
    for a shell that set no trap."""
    local = master is not None and os.isatty(0)
    saved = None
    if local:  # imported only then: a millisecond of every exec and run
        import termios
        import tty
        saved = termios.tcgetattr(0)

    def resize():
        fcntl.ioctl(master, TIOCSWINSZ, fcntl.ioctl(0, TIOCGWINSZ, WINSIZE_ZERO))

    try:
        if local:
            # Raw, so that ctrl-C is a byte for the container's line
            # discipline and not a signal for us; TCSADRAIN, not TCSAFLUSH,
            # keeps what was typed ahead.
            tty.setraw(0, termios.TCSADRAIN)
            resize()
        for number in pending:  # arrived while the container started
            os.kill(pid, number)
        sources = [signals.read_end]
        if master is not None:
            sources += [master, 0] if interactive else [master]
        status = None
        # The output is complete only when the pty says so (EIO), which may
        # be a moment after the init's exit: wait for both.
        while status is None or set(sources) - {signals.read_end, 0}:
            readable = select.select(sources, [], [])[0]
            received = signals.received() if signals.read_end in readable else []
            for number in received:
                if number == signal.SIGWINCH and local:
                    resize()
                elif number in FORWARDED_NUMBERS and status is None:
                    os.kill(pid, number)  # still ours: not reaped yet
            if status is None and signals.read_end in readable:
                # After any wake-up, not only SIGCHLD's: a flood of other
                # signals fills the pipe, and the byte of SIGCHLD is then
                # dropped (a full wakeup pipe loses bytes, by design).
                reaped, wait_status = os.waitpid(pid, os.WNOHANG)
                status = wait_status if reaped else None
            if master in readable:
                data = read_or_eio(master)
                if data:
                    write_all(1, data)
                else:  # every slave is closed: the container is gone
                    sources = [source for source in sources if source != master]
            if 0 in readable:
                data = os.read(0, 65536)
                if data:
                    write_all(master, data)
                else:
                    sources.remove(0)
        return status
    finally:
        if local:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        if master is not None:
            os.close(master)


def read_or_eio(fd):
    """Read a pty master: b'' once no slave is left (EIO)."""
    try:
        return os.read(fd, 65536)
    except OSError as err:
        if err.errno != errno.EIO:
            raise
        return b""


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def release_run(paths, record, cgroups, parents, remove):
    """What a run made goes once its command has ended (or could not
    start): its cgroups, its network lease (the veth went with the child's
    network namespace), and with `remove` (--rm, or no start) its layer and
    record. Both ends of a run come here: run_container's, and a detached
    container's monitor's (end_detached).

    The lease goes first: the rules it deletes are freed by the kernel
    after an RCU grace period, in a worker, and our exit waits for that
    worker (closing the nf_tables socket apply_nat keeps open, the kernel
    flushes the work first): about 7 ms of every bridge run, measured.
    Begun first, the grace period passes while the cgroups and the layer
    go: 4-6 ms are left."""
    try:
        if "network" in record:
            release_leases(paths, [record], delete_veths=False)
    finally:
        remove_cgroups(cgroups)
        remove_empty_cgroups(parents)
        if remove:
            try:
                remove_container(paths, record, volumes=True)
            except LayerError as err:  # the exit code (or first error) comes first
                warn(str(err))


def record_exit(paths, record, code):
    record.update(status="exited", exit_code=code, finished=time.time())
    try:
        write_record(paths, record)
    except OSError as err:  # ENOSPC: the code still reaches the caller
        warn("container %s: its record keeps no exit code: %s" % (record["id"][:12],
                                                                   err.strerror))


def run_container(spec, paths, report=None, cid=None, again=None):
    """`run`: plan, create, start, wait, clean up (the steps of the map at
    the top of this chapter; step 1 was build_spec). Returns the exit code.
    With `report` (run -d, in the monitor), the output goes to the log, the
    report says when the command runs, and the monitor then becomes the
    lean one (become_lean_monitor): this call never returns once the
    command runs. With `again` (start, or a restart policy, by the user or
    not), container `cid` exists: its layer and record are taken over
    (claim_container) and kept whatever happens; None when the policy lost
    to a stop."""
    set_stage_name("md:[0:PARENT]")
    # From here on something is made: a signal waits for SignalPipe, which
    # ends the start-up cleanly or forwards it to the command.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING_SIGNALS)
    # 2. What killed minidockers left behind.
    reclaim_dead(paths)
    trace(spec.debug, "dead containers reclaimed")
    # 3. The cgroups planned, then the record (naming them) and the layer.
    cid = cid or os.urandom(32).hex()
    layout = detect_cgroups(read_text("/proc/self/mountinfo"), read_text("/proc/self/cgroup"))
    discard_v1_only(spec.resources, layout)
    # A user's container stays in its user's cgroups, or with limits gets
    # one beside the user's own, in the cgroup delegated to it
    # (delegated_cgroup: a relative cgroup_path is placed there).
    if spec.userns and spec.userns.get("rootless"):
        cgroup_plan = plan_cgroups(spec.resources, layout, cid, cgroup_path="minidocker-" + cid) \
            if spec.resources else []
    else:
        cgroup_plan = plan_cgroups(spec.resources, layout, cid, spec.cgroup_parent)
    parents = missing_parents(cgroup_plan) if spec.cgroup_parent else []
    cgroup_paths = [path for _, _, path, _ in cgroup_plan]
    # A saved spec's volumes (start, a restart) have their host directories.
    volumes, made = spec.volumes, []
    if again is None:
        record, volumes, made = create_container(paths, spec, cid, cgroup_paths, parents)
    else:
        record = claim_container(paths, cid, by_user=again == "user")
        if record is None:
            return None
        record.update(cgroups=cgroup_paths, cgroup_parents=list(parents))
        write_record(paths, record)
    layer = paths.layer(cid)
    trace(spec.debug, "record and layer made")
    debug(spec.debug, "container %s, layer %s, cgroups %s" % (cid, layer, record["cgroups"]))
    for note in spec.notes:
        debug(spec.debug, note)
    cgroups, started, ended, log = [], False, False, None
    # 4. Signals into a pipe from now on; the cgroups made.
    signals = SignalPipe()
    try:
        cgroups = create_cgroups(cgroup_plan, spec.resources)
        trace(spec.debug, "cgroups made, limits written")
        maps = record.get("id_maps")
        if maps and not maps.get("rootless"):
            delegate_v2_cgroup(cgroup_plan, mapped_root(maps))
        instance = Instance(cid, layer, spec.hostname or cid[:12], volumes, id_maps=maps,
                            shifted_root=maps and paths.shifted)
        for source, _ in instance.etc_files:  # bound by the child, written by prepare()
            os.close(os.open(source, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            if maps:  # the container's root may edit them, as without a user namespace
                os.chown(source, *mapped_root(maps))

        def prepare():  # 6., while the child starts
            lease = lease_network(paths, record, spec.network_plan) \
                if spec.network_plan["mode"] == "bridge" else None
            write_etc_files(layer, instance.hostname, spec.network_plan, lease)
            trace(spec.debug, "network leased, /etc files written")
            return lease

        if report is not None and spec.log_driver != "none":
            # run -d: the child's 1 and 2 are the log's pipes (with
            # --log-driver none, the monitor's own: /dev/null).
            log = LOG_CLASSES[spec.log_driver](log_path(paths, cid, spec.log_driver),
                                               spec.log_max_size, spec.log_max_files)
            for fd, writer in zip((1, 2), log.writers):
                os.dup2(writer, fd)
                os.close(writer)
        # 5. to 9. The child, from fork to the command's execve. It enters
        # its cgroups itself (CgroupEntry). With a user namespace, stage 1
        # enters them but the pids one, which the init it forks enters, as
        # exec's command does (the cgroup would otherwise need two free
        # pids for a moment); a user's container is joined by its pid.
        entry = later = None
        if not maps:
            entry = CgroupEntry(cgroups)
        elif not maps.get("rootless"):
            first, then = split_exec_cgroups(cgroups, set())
            entry, later = CgroupEntry(first), CgroupEntry(then)
        try:
            if entry is not None:
                entry.open()
            if later is not None:
                later.open(birth=False)
            pid, master, pending = start_container(
                spec, instance, signals,
                lambda child: join_cgroups(cgroups if entry is None else
                                           entry.rest() + (later.rest() if later else []), child),
                prepare, entry=entry, later=later)
        finally:
            for opened in (entry, later):
                if opened is not None:
                    opened.close()
        started = True
        record.update(status="running", pid=pid, pid_start=process_start_time(pid),
                      started=time.time())
        try:
            write_record(paths, record)
        except OSError as err:  # ENOSPC: the command may just have filled the disk
            warn("container %s: its record cannot say it runs (%s): stop and kill reach it "
                 "through this minidocker (pid %d), exec not at all"
                 % (cid[:12], err.strerror, os.getpid()))
        if report is not None:
            null = os.open("/dev/null", os.O_WRONLY)  # ours closed: the pipes end with the container's
            for fd in (1, 2):
                os.dup2(null, fd)
            os.close(null)
            report.finish("started", cid)
            try:
                become_lean_monitor(paths, cid, pid, pending, log,
                                    spec.namespaces["pid"] == "private")
            except OSError:  # the exec failed (ENOMEM): nobody would keep the container
                kill_and_reap(pid)
                raise
        # 10. Until the command ends; then everything the run made goes.
        code = exit_code(wait_for_container(pid, signals, master, spec.interactive, pending))
        ended = True
        trace(spec.debug, "the command ended (exit code %d)" % code)
        if code == 128 + signal.SIGKILL and oom_killed(cgroups):
            record["oom_killed"] = True
            warn("the container hit its memory limit (--memory %s) and the kernel's OOM "
                 "killer ended it" % spec.resources.get("memory", "of its parent cgroup"))
    finally:
        signals.close()
        if log is not None:
            log.close()
        removed = spec.remove or (not started and again is None)
        release_run(paths, record, cgroups, parents, removed)
        if not started and again is None:  # nothing of a run that could not start is left
            remove_unused_volumes(paths, [name for name in made
                                          if name not in record["anonymous_volumes"]])
        if not ended and not removed:  # a start again that failed: kept, not running
            record.update(status="exited", finished=time.time())
            with suppress(OSError):
                write_record(paths, record)
    if not spec.remove:
        record_exit(paths, record, code)
    trace(spec.debug, "cleaned up")
    return code


# === 11. (continued) run -d: the monitor and the log ===
# A detached container is run by run_container as any other, in a process
# of its own: the monitor (as conmon or containerd's shim). `run -d` forks
# it, waits for its report of the start, and leaves. The monitor then has
# three lives in one process, so one pid and one start time (the record's
# "owner") stand for it from the start to the end:
#
#   1. minidocker, forked by `run -d` (or by start and restart, for a
#      container that exists): it starts the container as `run` does, the
#      command's stdout and stderr going into two pipes, and reports the
#      start (run_container);
#   2. a lean Python it execs into (lean_monitor): it copies the pipes into
#      the log (container.log, the local driver's; json.log with
#      --log-driver json-file), rotating it at --log-opt max-size, and
#      waits for the container's init, which stays its child across execve;
#   3. minidocker again, which the lean one execs with the init's wait
#      status (end_detached): it records the exit code, the end and an OOM
#      kill, applies --rm and removes what the run made, as `run` does;
#      then, as the restart policy says (restart_by_policy), it waits out
#      the back-off, starts the container again as the first life did, and
#      goes on as the second, in the same process still.
#
# Why not stay minidocker: a fork holds every module minidocker loaded and
# the code of this whole file, pages shared with `run -d` only until it
# exits; from then on all of them are the monitor's own. Measured (private
# memory, USS, of an idle monitor: .ci/bench goal 6): 6.7 MB as a fork of
# the installed minidocker, 20 MB of the single file, then of 6,000 lines
# (its compile leaves its memory in Python's pools); gc.collect(), malloc_trim(0)
# and dropping the modules it had imported from sys.modules took back
# 0.15 MB of it. The lean Python holds 2.9-3.0 MB (3.4 MB after copying a
# 200 MB burst into the local log, 3.6 into json.log), and each of the
# three lives runs nothing of the others'.
# A monitor killed (kill -9) in any life leaves what one killed before
# did: its init gets SIGKILL (the parent-death signal), and the next
# command reclaims the rest (reclaim_dead).
#
# The log's form. Docker's default driver, json-file, writes a line of
# JSON for every line of output, its text escaped; its local driver, the
# one Docker advises, a denser form of its own that only docker reads.
# minidocker has both: local is its default (LocalLog: a line of text per
# chunk the monitor reads, the output's bytes as they came), json-file
# Docker's form (JsonLog), for the tools that read json.log themselves.
#
# The copy's speed (.ci/bench goal 8: 200 MB of 100-byte lines cat'ed to
# stdout in the container, `run -d` to `wait`, 2 CPUs): into the local
# log, 0.33 s, 1.10-1.13 times cat into a file inside the container (of
# its upper layer, 0.29-0.30 s); into json.log, 0.72-0.90 s, 2.5-3.0
# times. A JSON entry is the line and about 70 bytes more, so json.log
# is 340 MB; and each of its chunks is checked for the bytes that need
# escaping (bytes.translate; a regular expression did it at a third of
# the speed) and made entries (bytes.replace): 0.35 s of the monitor's
# CPU. The local log's copy makes no object of the output (LocalLog):
# the same 200 MB from a pipe into a file take its Python 0.15-0.2 s
# from start to end, JsonLog's 0.8 s. (The local log rotates by default,
# at 20 MB, and keeps 100 MB; without rotation, 200 MB on disk, it took
# 0.05-0.15 s longer.)
#
# Where else the time went, measured with json.log when the disk was
# slower (cat into the container took 0.7 s): 0.65-0.9 s between the
# moment the init's process began to exit and the moment the monitor
# could reap it, which is the unmount of the container's overlay when
# its mount namespace goes: overlayfs' sync_fs syncs the whole
# filesystem of the upper layer, where the log is too, so all it holds
# is written to disk then, and the monitor learns of the end only after.
# So the monitor starts the disk on the log as it goes
# (JsonLog.write_back), and the pipes are larger (LOG_PIPE_SIZE): 1.6 s,
# from 1.9 (median of 10, alternating). The disk sets the floor: the cat
# into the layer pays for the same sync of what it wrote.

LOG_DRIVERS = ("local", "json-file", "none")
# The log's file, in the container's state directory (Paths.layer, beside upper/):
LOG_FILES = {"local": "container.log", "json-file": "json.log"}
LOCAL_LOG_SIZE, LOCAL_LOG_FILES = 20 * 10**6, 5  # Docker's local driver's defaults
LOG_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}


def parse_log_options(driver, options):
    """--log-driver and each --log-opt KEY=VALUE, by the rules of Docker's
    drivers of those names -> (driver, max_size, max_files): the size at
    which the log is rotated (-1: never), and how many files are kept (the
    log and LOG.1 ... LOG.N-1). The defaults are each driver's in Docker:
    local rotates at 20m and keeps 5 files, json-file never rotates and
    keeps one. Docker compresses local's rotated files by default; we
    compress none, so compress=false is taken and compress=true refused,
    as are the keys we do nothing with (labels, tag, env)."""
    if driver not in LOG_DRIVERS:
        raise MiniDockerError("unknown log driver %s: minidocker keeps local, json-file or none"
                              % quote(driver))
    if driver == "none" and options:
        raise MiniDockerError("invalid logging opts for driver none")  # Docker's words
    settings = {}
    for option in options:
        key, equals, value = option.partition("=")
        if key not in ("max-size", "max-file", "compress"):
            raise MiniDockerError("unknown log opt %s for %s log driver (minidocker knows "
                                  "max-size, max-file and compress)" % (quote(key), driver))
        if not equals:
            raise MiniDockerError("invalid --log-opt %s: expected KEY=VALUE" % quote(option))
        settings[key] = value
    if settings.get("compress", "false") != "false":
        raise MiniDockerError("invalid compress %s: minidocker does not compress rotated "
                              "logs (compress=false)" % quote(settings["compress"]))
    local = driver == "local"
    max_size = parse_log_size(settings["max-size"]) if "max-size" in settings \
        else LOCAL_LOG_SIZE if local else -1
    max_files = settings.get("max-file", str(LOCAL_LOG_FILES) if local and max_size > 0 else "1")
    digits = max_files[1:] if max_files[:1] in ("+", "-") else max_files
    if not is_number(digits) or len(digits) > 18:
        raise MiniDockerError("invalid max-file %s: expected a whole number" % quote(max_files))
    max_files = int(max_files)
    if max_files < 1:
        raise MiniDockerError("max-file cannot be less than 1")  # Docker's words
    if max_files > 1 and max_size < 0:
        # Docker lets this pass and keeps one file: a flag that does nothing.
        raise MiniDockerError("max-file %d needs max-size: without it the log is never "
                              "rotated" % max_files)
    return driver, max_size, max_files


def parse_log_size(text):
    """max-size as Docker reads it (go-units' FromHumanSize): the forms of
    --memory's sizes, in decimal units (10k is 10,000 bytes, and so is
    10KiB: its i is read and ignored); -1 is no limit."""
    if text == "-1":
        return -1
    import re
    match = re.fullmatch(SIZE_PATTERN, text, re.IGNORECASE | re.ASCII)
    if match is None:
        raise MiniDockerError("invalid max-size %s: expected a size such as 10m or 1g"
                              % quote(text))
    size = float(match.group(1)) * LOG_SIZE_UNITS[match.group(2).lower()]
    if size > SIZE_MAX:  # 1e400 is inf, and int(inf) raises
        raise MiniDockerError("invalid max-size %s: larger than %d bytes" % (quote(text), SIZE_MAX))
    if int(size) <= 0:
        raise MiniDockerError("max-size must be a positive number")  # Docker's words
    return int(size)


def log_path(paths, cid, driver):
    return os.path.join(paths.layer(cid), LOG_FILES[driver])


class StartReport:
    """The pipe over which a detached container's monitor tells `run -d`
    how the start went: the warnings so far, then "started ID" once the
    command has been exec'd, or "error CODE MESSAGE"."""

    def __init__(self, fd):
        self.fd = fd

    def finish(self, kind, text):
        if self.fd is None:
            return
        lines = ["warning %s\n" % one_line(message) for message in WARNINGS]
        del WARNINGS[:]
        lines.append("%s %s\n" % (kind, one_line(text)))
        write_all(self.fd, "".join(lines).encode(errors="replace"))
        os.close(self.fd)
        self.fd = None


def run_detached(spec, paths, cid=None, again=None, shown=None):
    """run -d: start the container under a monitor (start_monitor), print
    its id, as docker does (or `shown`: start prints what it was given),
    and leave the container to it. `cid` and `again`: start's, as
    run_container takes them."""
    cid = start_monitor(spec, paths, cid, again)
    print(shown or cid)
    return 0


def start_monitor(spec, paths, cid=None, again=None):
    """A monitor, a child of ours in a session of its own, keeps the
    container as `run` would (run_container), its output going to the log;
    it tells us when the command has been exec'd (we return the id), or
    why it could not be (we raise)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    if os.fork() == 0:
        os.close(read_end)
        monitor(spec, paths, StartReport(write_end), cid or os.urandom(32).hex(), again)
    os.close(write_end)
    report = b""
    chunk = os.read(read_end, 65536)
    while chunk:
        report += chunk
        chunk = os.read(read_end, 65536)
    os.close(read_end)
    for line in report.decode(errors="replace").splitlines():
        kind, _, text = line.partition(" ")
        if kind == "warning":
            warn(text)
        elif kind == "started":
            return text
        elif kind == "error":
            code, _, message = text.partition(" ")
            raise MiniDockerError(message, int(code))
    raise MiniDockerError("the container's monitor died during start-up")


def monitor(spec, paths, report, cid, again):
    """The monitor's first life: in a session of its own, so that the
    user's terminal closing (SIGHUP) does not reach it; holding nothing of
    the user's (no terminal, no working directory, /dev/null for its own
    output, no descriptor but the report's: a `| cat` would wait for us to
    end, and a lock of the caller's would be held as long as we live); it
    starts the container as `run` does (or again, for start: `cid` and
    `again` as run_container takes them), and becomes the lean monitor.
    Never returns: the start failed, and it exits (a fork that returned
    would go on as a second copy of the caller's command)."""
    try:
        os.setsid()
        os.chdir("/")
        close_all_fds_but({report.fd})
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        run_container(spec, paths, report, cid, again)  # once the command runs: the lean monitor
    except MiniDockerError as err:
        report.finish("error", "%d %s" % (err.code, err))
    except OSError as err:
        report.finish("error", "%d %s" % (EXIT_RUNTIME, err))
    except BaseException as err:  # a bug: still one line
        report.finish("error", "%d internal error: %r" % (EXIT_RUNTIME, err))
    finally:
        os._exit(EXIT_RUNTIME)


# The file itself, run or imported: the lean monitor's code is read from it,
# and the third life loads it again.
SOURCE_FILE = os.path.abspath(__file__)
LEAN_BEGIN = "\n# --- The lean monitor"
LEAN_END = "\n# --- The lean monitor ends"
# What the lean part finds imported (lean_program): signal is _signal, the
# C module under signal.py, which builds enums at import (0.8 MB of the
# lean monitor's memory, measured).
LEAN_PROLOGUE = "import fcntl, os, select, time, _signal as signal\n"
# And runc's lean verbs' (chapter 12, continued), which the launcher runs.
LEAN_RUNC = ("\n# --- The lean runc verbs", "\n# --- The lean runc verbs end",
             "import posix as os, select, _json\n")
# The third life's program: minidocker loaded from its file as a module,
# and end_detached called. Its bytecode is kept in the state tree
# (sys.pycache_prefix, Python 3.8), not beside the file, which may be
# anywhere: compiling the file took 0.1 s of every end (1-2 s in the
# emulated VM), loading the bytecode 0.01.
END_PROGRAM = ("import importlib.machinery, importlib.util, sys\n"
               "loader = importlib.machinery.SourceFileLoader('minidocker', sys.argv[1])\n"
               "module = importlib.util.module_from_spec(\n"
               "    importlib.util.spec_from_loader('minidocker', loader))\n"
               "sys.pycache_prefix = sys.argv[2]  # for this file only, not the modules it imports\n"
               "code = loader.get_code('minidocker')\n"
               "sys.pycache_prefix = None\n"
               "exec(code, module.__dict__)\n"
               "module.exit_now(module.end_detached(sys.argv[3], int(sys.argv[4])))\n")


def lean_program(begin=LEAN_BEGIN, end=LEAN_END, prologue=LEAN_PROLOGUE):
    """A lean part's Python source (the lean monitor's, unless said):
    this file's part between the two lines that begin and end it."""
    with open(SOURCE_FILE, encoding="utf-8") as handle:
        text = handle.read()
    start = text.index(begin)
    return prologue + text[start:text.index(end, start)]


def become_lean_monitor(paths, cid, pid, pending, log, own_pids):
    """The monitor's second life begins: exec the lean Python, its program
    in a memfd (not on the command line, which ps shows), with the init
    (our child still), the log's descriptors, and the command line of the
    third life. Returns only by raising: the exec failed.

    The program goes compiled, as a .pyc file's bytes (Python runs a file
    that begins with its bytecode's magic number as one): compiled in the
    lean Python, it left that Python's heap 0.8 MB larger for good, 3.6
    MB of private memory in all against 2.9, measured."""
    for number in pending:  # arrived while the container started
        os.kill(pid, number)
    # Held until the lean monitor has its handlers: a default action would end it.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_NUMBERS | {signal.SIGCHLD})
    log_args = None
    if log is not None:
        for fd in (log.fd, log.out, log.err):
            os.set_inheritable(fd, True)
        log_args = (type(log).__name__, log.path, log.max_size, log.max_files,
                    (log.fd, log.out, log.err))
    end = [sys.executable, "-IS", "-c", END_PROGRAM, SOURCE_FILE, paths.bytecode, cid]
    # glibc gives back the free top of its heap beyond 128 KiB at each
    # free(); JsonLog's copy of each 64 KiB chunk takes and frees about 300 KiB
    # there, so a lean heap was grown and cut back at every chunk, and its
    # pages faulted in anew: 230,000 page faults and 1.7 s of CPU for a 200 MB
    # burst, measured, against 120 and 0.5 s with 1 MiB kept. An idle
    # monitor keeps 3.6 MB after such a burst into json.log (mallopt(3):
    # the variable sets M_TRIM_THRESHOLD; other C libraries ignore it).
    environment = dict(os.environ, MALLOC_TRIM_THRESHOLD_=str(1 << 20))
    memfd = os.memfd_create("minidocker-monitor")
    program = lean_program() + "lean_monitor(%r, %r, %r, %r, %r, %r)\n" % (
        memfd, pid, log_args, sorted(int(number) for number in FORWARDED_NUMBERS), own_pids,
        end)
    import importlib.util, marshal
    # A .pyc's header: the magic number, then flags and a source's stamp,
    # which Python does not check in a file it is given to run.
    write_all(memfd, importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(
        compile(program, "minidocker-monitor", "exec")))
    os.set_inheritable(memfd, True)
    # /proc/self/exe: the interpreter running now, even if an upgrade has
    # replaced the file at sys.executable since; sys.executable stays its
    # argv[0], from which Python finds its library.
    os.execve("/proc/self/exe", [sys.executable, "-IS", "/proc/self/fd/%d" % memfd, cid],
              environment)


# --- The lean monitor: from here to its end, this part also runs alone ---
# The monitor's second life runs only the code between this line and the
# one that ends the part (lean_program), in a Python started with -I -S
# that has imported little more than os. So nothing here calls anything
# of the rest of the file, and it imports only what costs next to nothing:
# fcntl, os, select, time, and _signal as signal (LEAN_PROLOGUE); _json,
# the C encoder under json (whose import brings re), where a line needs
# escaping. The tests run this part as the lean monitor gets it.

LOG_LINE_MAX = 16 << 10
# The pipes hold a megabyte (from 64 KiB), so that the container goes on
# writing while the monitor turns a chunk into entries. JsonLog's read
# takes 64 KiB, whose entries (about twice its size) stay below glibc's
# mmap threshold, fixed at 128 KiB once MALLOC_TRIM_THRESHOLD_ is set
# (mallopt(3)): reads of a megabyte made each chunk's objects mmap'd and
# faulted in anew, and the copy three times slower, measured. LocalLog's
# read takes what the pipe holds, into a buffer it keeps while output
# comes.
LOG_PIPE_SIZE = 1 << 20
LOG_READ = 64 << 10
LOG_WRITEBACK = 16 << 20  # the log's bytes written back to disk at a time (write_back)
LOG_QUIET = 1             # seconds without output after which LocalLog lets its buffers go
LOG_HEAD_MAX = 64         # a LocalLog record's header line: "stderr", a time of 30, a length
F_SETPIPE_SZ = 1031       # <linux/fcntl.h>: F_LINUX_SPECIFIC_BASE + 7 (Python's fcntl has it from 3.10)
# The bytes a log line may hold and go into its entry as they are:
# printable ASCII but '"' and '\', and the newline that ends the line.
LOG_PLAIN = bytes(range(0x20, 0x7f)).replace(b'"', b"").replace(b"\\", b"") + b"\n"


class JsonLog:
    """A detached container's output in Docker's json-file form
    (--log-driver json-file; LocalLog, the default, builds on it): one JSON
    object per line, {"log": the line and its newline, "stream": "stdout" or
    "stderr", "time": UTC, to the nanosecond}. The container writes into two
    pipes; the monitor copies them here as they come. A line is written
    once its newline comes (a partial one waits, per stream; what is left
    at the end goes without one). A line longer than LOG_LINE_MAX is cut
    into entries of that size, as Docker cuts at 16 KiB: a container that
    never writes a newline must not grow the monitor's memory.

    A chunk at a time: a chunk of LOG_PLAIN bytes only (the usual log)
    becomes its entries by one bytes.replace, at C speed; any other goes
    line by line through _json's encoder. A write that fails (ENOSPC)
    drops the chunk, and what of it reached the file: the pipes are still
    read, so a full disk never blocks the container. With max_size, the
    file is rotated as Docker rotates it (rotate)."""

    def __init__(self, path, max_size=-1, max_files=1, fds=None):
        """A new log at `path` and the two pipes the container will write
        into (self.writers); or, in the lean monitor, the log and the
        pipes' read ends that minidocker opened (fds)."""
        if fds is None:
            out, out_write = os.pipe2(os.O_CLOEXEC)
            err, err_write = os.pipe2(os.O_CLOEXEC)
            for fd in (out, err):
                try:
                    fcntl.fcntl(fd, F_SETPIPE_SZ, LOG_PIPE_SIZE)
                except OSError:  # EPERM: above /proc/sys/fs/pipe-max-size; 64 KiB then
                    pass
            self.writers = (out_write, err_write)  # become the container's 1 and 2
            log = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            # A run before this one (start, a restart) may have left an
            # entry cut short, its monitor killed halfway through a write
            # (or the host): it would swallow this run's first one.
            os.ftruncate(log, self.whole_end(log, os.fstat(log).st_size))
            os.close(os.open(path + ".lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            fds = (log, out, err)
        self.fd, self.out, self.err = fds
        self.path, self.max_size, self.max_files = path, max_size, max_files
        self.size = self.written_back = os.fstat(self.fd).st_size
        self.pipes = {self.out: "stdout", self.err: "stderr"}
        self.partial = {self.out: b"", self.err: b""}

    @staticmethod
    def whole_end(fd, size):
        """Where the last whole entry of a log file ends: after its last
        newline."""
        end = size
        while end > 0:
            block = os.pread(fd, min(end, 1 << 16), max(end - (1 << 16), 0))
            newline = block.rfind(b"\n")
            if newline >= 0:
                return end - len(block) + newline + 1
            end -= len(block)
        return 0

    def copy(self, fd):
        """One read from a pipe into the log; False at its end."""
        data = os.read(fd, LOG_READ)
        if not data:
            self.finish(fd)
            return False
        data = self.partial[fd] + data
        end = data.rfind(b"\n") + 1
        self.partial[fd] = data[end:]
        for first, last in cut_long_lines(data, 0, end):  # whole lines, or a piece of one
            self.write(self.pipes[fd], data[first:last] if data[last - 1] == ord("\n")
                       else [data[first:last]])
        while len(self.partial[fd]) >= LOG_LINE_MAX:
            self.write(self.pipes[fd], [self.partial[fd][:LOG_LINE_MAX]])
            self.partial[fd] = self.partial[fd][LOG_LINE_MAX:]
        return True

    def quiet_after(self):
        """Seconds without output after which the monitor calls quiet(); None:
        never (a JsonLog holds nothing between reads)."""
        return None

    def finish(self, fd):
        """The pipe's end (or the last read of it): an unfinished last line
        is an entry too."""
        if self.partial[fd]:
            self.write(self.pipes[fd], [self.partial[fd]])
            self.partial[fd] = b""

    @staticmethod
    def stamp(ns):
        """A time as the entries give it: RFC 3339, in UTC, to the nanosecond."""
        seconds, fraction = divmod(ns, 10**9)
        return "%s.%09dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)), fraction)

    def write(self, stream, lines):
        """lines: bytes of whole lines, or a list of one unterminated line.
        Lines end at b"\\n" only, as Docker's do (a '\\r' stays inside)."""
        tail = '","stream":"%s","time":"%s"}\n' % (stream, self.stamp(time.time_ns()))
        if isinstance(lines, bytes) and not lines.translate(None, LOG_PLAIN):
            end = tail.encode()
            entries = b"".join((b'{"log":"', lines[:-1].replace(b"\n", b"\\n" + end + b'{"log":"'),
                                b"\\n", end))
        else:
            import _json  # (for the lean monitor, which runs this class alone)
            if isinstance(lines, bytes):
                lines = [line + b"\n" for line in lines[:-1].split(b"\n")]
            entries = "".join('{"log":' + _json.encode_basestring_ascii(
                line.decode("utf-8", "replace")) + tail[1:] for line in lines).encode()
        self.append(entries)

    def append(self, entries):
        """Whole entries into the file. Docker rotates before it writes an
        entry when the file has reached max_size: so a file ends with the
        entry that takes it to max_size or past it, and the rest goes on in
        the next."""
        while entries:
            if 0 < self.max_size <= self.size:
                self.rotate()
            cut = len(entries)
            if 0 < self.max_size - self.size < cut:
                cut = entries.find(b"\n", self.max_size - self.size - 1) + 1
            self.write_whole([entries[:cut]])
            entries = entries[cut:]
        if self.size - self.written_back >= LOG_WRITEBACK:
            self.write_back()

    def write_whole(self, parts):
        """The parts (bytes-like), one after the other, as one entry: all of
        them, or none. A write that fails (ENOSPC, EIO, EFBIG) loses them,
        and what of them reached the file is taken off it, so that the file
        ends with whole entries; the container goes on."""
        start = self.size
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    written = os.write(self.fd, view)
                    self.size += written
                    view = view[written:]
        except OSError:
            try:
                os.ftruncate(self.fd, start)
                self.size = start
            except OSError:  # EIO: the disk's own fault; the file ends as it ends
                pass

    def write_back(self):
        """Start the disk writing what the log holds since the last call:
        for POSIX_FADV_DONTNEED the kernel starts writeback of the dirty
        pages, without waiting, and drops from the cache the pages already
        clean. Without it the log's whole burst stays dirty until
        the container's end, when the unmount of its overlay syncs the
        filesystem its upper layer is on (overlayfs' sync_fs), and the
        monitor learns of the end only after that: 0.75 s for a 200 MB
        burst, measured, during which nothing was copied."""
        os.posix_fadvise(self.fd, self.written_back, self.size - self.written_back,
                         os.POSIX_FADV_DONTNEED)
        self.written_back = self.size

    def rotate(self):
        """As Docker's drivers: the log (json.log, say) becomes json.log.1,
        each json.log.K becomes json.log.K+1, the one that would be
        json.log.N (N = max_files) goes, and a new json.log begins; with
        max_files 1 the full json.log simply goes. Meanwhile the log's
        lock file (json.log.lock, made with the log) is locked (flock), so
        that `logs` never opens the files halfway through; we do not wait
        for the lock: a reader holding it only puts the rotation off to the
        next write, and the container is never held. (A file of its own:
        the layer directory's flock is the container's lock, which stop
        holds while it waits for the container's end.) The new file is
        made first, as NAME.new, and renamed into place last: a step that
        fails (EWOULDBLOCK, ENOSPC, EMFILE, no inode left) leaves the
        entries going on into the file they went to, still the log's (had
        the renames come first, a failed open left them going into a
        rotated file, which the next rotations moved up and at last
        unlinked, to grow unseen without a bound)."""
        directory, name = os.path.split(self.path)
        dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fd = lock = None
        try:
            lock = os.open(name + ".lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600,
                           dir_fd=dirfd)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fd = os.open(name + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                         | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
            rotated = [entry[len(name) + 1:] for entry in os.listdir(dirfd)
                       if entry.startswith(name + ".")]
            for number in sorted((int(n) for n in rotated if n.isdigit() and n.isascii()),
                                 reverse=True):
                older = "%s.%d" % (name, number)
                if number + 1 < self.max_files:
                    os.rename(older, "%s.%d" % (name, number + 1),
                              src_dir_fd=dirfd, dst_dir_fd=dirfd)
                else:
                    os.unlink(older, dir_fd=dirfd)
            if self.max_files > 1:
                os.rename(name, name + ".1", src_dir_fd=dirfd, dst_dir_fd=dirfd)
            # (With max-file 1, over the full file.)
            os.rename(name + ".new", name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except OSError:
            if fd is not None:  # a rename failed: the log's file back, if it had gone
                os.close(fd)
                try:
                    if self.max_files > 1 and not os.path.exists(self.path):
                        os.rename(name + ".1", name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
                    os.unlink(name + ".new", dir_fd=dirfd)
                except OSError:  # what failed the rename fails this: the names stay as they are
                    pass
            return
        finally:
            if lock is not None:
                os.close(lock)  # and with it the lock
            os.close(dirfd)
        self.write_back()  # what the rotated file still holds
        os.close(self.fd)
        self.fd, self.size, self.written_back = fd, 0, 0

    def close(self):
        for fd in list(self.pipes) + [self.fd]:
            os.close(fd)


class LocalLog(JsonLog):
    """--log-driver local, the default: the same lines in a denser form of
    our own, for `logs` to read (as Docker's local driver keeps its own
    form, which only docker reads). A record per chunk of whole lines the
    monitor reads: a line of text, the stream, the chunk's time (as
    JsonLog gives it) and the number of bytes that follow; then those
    bytes, the lines as the container wrote them. Every line of a record
    has its stream and time:

        stdout 2026-11-30T20:34:47.123456789Z 20
        plain one
        plain two
        stderr 2026-11-30T20:34:47.125000000Z 10
        no newline

    Nothing in a line is looked at, let alone escaped, and no bytes object
    is made of it: a read takes what the pipe holds (up to its megabyte)
    into a buffer kept for it, and the record's lines are written from
    there; what follows the last newline stays, at the buffer's start. The
    monitor's own work is then the pipe's reads and the file's writes:
    .ci/bench goal 8, 200 MB of 100-byte lines, takes 1.1 times cat into
    a file, where json-file's log takes 2.5-3 times. Lines are kept, cut
    and rotated as in JsonLog (the record that takes the file to max_size
    ends with the line that does); a record whose write failed is taken
    off the file (write_whole). A buffer is let go after LOG_QUIET
    seconds without output (quiet): an idle monitor holds none."""

    def __init__(self, *args, **kwargs):
        JsonLog.__init__(self, *args, **kwargs)
        self.buffers = {}  # pipe -> [a bytearray, how much of it is filled], while output comes

    def quiet_after(self):
        return LOG_QUIET if self.buffers else None

    def copy(self, fd):
        """One read from a pipe into the log; False at its end."""
        held = self.buffers.get(fd)
        if held is None:  # from quiet: what it kept of an unfinished line goes first
            partial = self.partial[fd]
            held = self.buffers[fd] = [bytearray(LOG_PIPE_SIZE + LOG_LINE_MAX), len(partial)]
            held[0][:len(partial)] = partial
            self.partial[fd] = b""
        buffer, filled = held
        view = memoryview(buffer)
        count = os.readv(fd, [view[filled:filled + LOG_PIPE_SIZE]])
        if not count:
            self.finish(fd)
            return False
        filled += count
        start = buffer.rfind(b"\n", 0, filled) + 1
        for first, last in cut_long_lines(buffer, 0, start):
            self.record(self.pipes[fd], buffer, first, last)
        while filled - start >= LOG_LINE_MAX:  # a line that never ends, cut
            self.record(self.pipes[fd], buffer, start, start + LOG_LINE_MAX)
            start += LOG_LINE_MAX
        buffer[:filled - start] = bytes(view[start:filled])  # (less than LOG_LINE_MAX)
        held[1] = filled - start
        return True

    def finish(self, fd):
        held = self.buffers.pop(fd, None)
        if held is not None:
            self.record(self.pipes[fd], held[0], 0, held[1])
        elif self.partial[fd]:
            self.record(self.pipes[fd], self.partial[fd], 0, len(self.partial[fd]))
            self.partial[fd] = b""

    @staticmethod
    def whole_end(fd, size):
        """Where the last whole record of a log file ends: its headers read
        one after the other, from a megabyte of the file at a time. It ends
        before a record cut short, or before what is not a record's header
        (a header cut short; the zeros a host's crash may leave): nothing
        after that could be read (LocalLogReader skips the rest of a file
        from there), so the next run's records would be lost."""
        offset, block, base = 0, b"", 0
        while offset < size:
            if offset + LOG_HEAD_MAX > base + len(block):  # (the block's end, or the file's)
                block, base = os.pread(fd, 1 << 20, offset), offset
            head = block[offset - base:offset - base + LOG_HEAD_MAX]
            newline = head.find(b"\n")
            fields = head[:newline].split(b" ")
            if newline < 0 or len(fields) != 3 or not fields[2].isdigit():
                return offset
            end = offset + newline + 1 + int(fields[2])
            if end > size:  # cut short
                return offset
            offset = end
        return offset

    def record(self, stream, buffer, start, end):
        """buffer[start:end] into the file, as records (one, unless a
        rotation cuts it)."""
        head = ("%s %s " % (stream, self.stamp(time.time_ns()))).encode()
        view = memoryview(buffer)
        while start < end:
            if 0 < self.max_size <= self.size:
                self.rotate()
            cut = end
            if 0 < self.max_size - self.size < end - start:  # (no newline after: a cut line)
                cut = buffer.find(b"\n", start + self.max_size - self.size - 1, end) + 1 or end
            self.write_whole([b"%s%d\n" % (head, cut - start), view[start:cut]])
            start = cut
        if self.size - self.written_back >= LOG_WRITEBACK:
            self.write_back()

    def quiet(self):
        """No output for LOG_QUIET seconds: the buffers go (their megabytes
        back to the system: glibc maps so large a block, and unmaps it when
        it is freed), and what they held of an unfinished line waits in
        `partial`, as JsonLog's does."""
        for fd, (buffer, filled) in self.buffers.items():
            self.partial[fd] = bytes(buffer[:filled])
        self.buffers = {}


def cut_long_lines(data, start, end):
    """data[start:end], whole lines, as spans (first, last) of whole lines
    of at most LOG_LINE_MAX bytes each and pieces of longer lines, of
    LOG_LINE_MAX bytes each, as Docker cuts them: (start, end) itself when
    no line is longer, as is usual. It hops from line to line up to
    LOG_LINE_MAX bytes at a time (the last newline within that many), so
    a megabyte of 100-byte lines takes 64 hops, not 10,000."""
    spans, first = [], start
    while end - start > LOG_LINE_MAX:
        newline = data.rfind(b"\n", start, start + LOG_LINE_MAX)
        if newline >= 0:
            start = newline + 1
            continue
        if first < start:  # a line longer than LOG_LINE_MAX begins at start
            spans.append((first, start))
        spans.append((start, start + LOG_LINE_MAX))
        start = first = start + LOG_LINE_MAX
    if first < end:
        spans.append((first, end))
    return spans


def copy_until_exit(pid, log, forwarded, own_pids=True):
    """Copy the container's output into `log` (None: --log-driver none)
    until both pipes end, and wait for its init, passing on the signals
    `forwarded` that we receive, as run does (through a wakeup pipe, for
    the reason SignalPipe gives). Returns the init's wait status. The
    pipes end a moment after the init's exit, when the pid namespace's
    end has killed every process that held them. A container without a
    pid namespace of its own (`own_pids` false: --pid host, or one it
    joined) ends with its init all the same, as `run`'s does: what the
    pipes hold then is copied, and the end (release_run) kills the
    processes left in its cgroups, which may hold them forever."""
    wakeup, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    for number in forwarded + [signal.SIGCHLD]:
        signal.signal(number, lambda _number, _frame: None)  # the number is in the pipe
    signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, forwarded + [signal.SIGCHLD])
    pipes = list(log.pipes) if log is not None else []
    reaped, status = os.waitpid(pid, os.WNOHANG)  # it may have ended before our handlers
    status = status if reaped else None
    while status is None or pipes:
        if status is not None and not own_pids:
            for fd in pipes:  # at most what a pipe holds: one left writing gets no more
                os.set_blocking(fd, False)
                try:
                    for _ in range(LOG_PIPE_SIZE // LOG_READ + 1):
                        if not log.copy(fd):
                            break
                    else:
                        log.finish(fd)
                except BlockingIOError:  # (a write end still open: no end of file)
                    log.finish(fd)
            break
        # While a LocalLog holds buffers, a wake-up after LOG_QUIET seconds
        # of quiet, to let them go.
        quiet = log.quiet_after() if log is not None else None
        readable = select.select(pipes + [wakeup], [], [], quiet)[0]
        if not readable:
            log.quiet()
        if wakeup in readable:
            for number in os.read(wakeup, 512):
                if number in forwarded and status is None:  # not reaped: still ours
                    os.kill(pid, number)
            if status is None:  # after any wake-up: a full wakeup pipe drops SIGCHLD's byte
                reaped, wait_status = os.waitpid(pid, os.WNOHANG)
                status = wait_status if reaped else None
        for fd in pipes[:]:
            if fd in readable and not log.copy(fd):
                pipes.remove(fd)
    return status


def lean_monitor(program, pid, log_args, forwarded, own_pids, end):
    """The monitor's second life, called by the last line of its program:
    copy the log and wait (copy_until_exit), then exec the third life,
    `end` and the init's wait status, with the forwarded signals held, as
    run holds them while it cleans up (SignalPipe.close)."""
    os.close(program)  # the memfd it came in, read
    with open("/proc/self/comm", "w") as comm:  # execve named us after the interpreter
        comm.write("md:[0:PARENT]")
    log = {"JsonLog": JsonLog, "LocalLog": LocalLog}[log_args[0]](*log_args[1:]) \
        if log_args is not None else None
    status = copy_until_exit(pid, log, forwarded, own_pids)
    if log is not None:
        log.close()
    signal.pthread_sigmask(signal.SIG_BLOCK, forwarded)
    os.execv("/proc/self/exe", end + [str(status)])

# --- The lean monitor ends ---

LOG_CLASSES = {"local": LocalLog, "json-file": JsonLog}


RESTART_DELAY = 0.1      # seconds before the first restart, doubled for each next one,
RESTART_DELAY_MAX = 60   # up to a minute (Docker's back-off),
RESTART_RESET = 10       # and back to the first once a run has lasted this long


def end_detached(cid, status):
    """The monitor's third life: the container's init has ended with
    `status` (a wait status). Record it and clean up as run_container does
    after its wait; what the run made is named in the record, which the
    first life wrote. Then the restart policy decides (restart_by_policy).
    The back-off goes from one end to the next in the record
    ("restart_delay"), as each end is a new program. Returns the exit
    code, or never: the container runs again."""
    set_stage_name("md:[0:PARENT]")
    paths = Paths()
    record = read_record(paths, cid)
    if record is None:  # removed meanwhile (rm -f of a malformed record)
        return EXIT_RUNTIME
    code = exit_code(status)
    if code == 128 + signal.SIGKILL and oom_killed(record["cgroups"]):
        record["oom_killed"] = True
    delay = record.get("restart_delay", RESTART_DELAY)
    if time.time() - record.get("started", 0) >= RESTART_RESET:
        delay = RESTART_DELAY
    record["restart_delay"] = min(delay * 2, RESTART_DELAY_MAX)  # the next end's
    release_run(paths, record, record["cgroups"], record.get("cgroup_parents", []),
                record["remove"])
    if record["remove"]:
        return code
    record_exit(paths, record, code)
    try:
        spec = saved_spec(paths, record, detach=True)
    except MiniDockerError:  # an older minidocker's container: it kept no policy
        return code
    return restart_by_policy(spec, paths, cid, code, delay)


def restart_by_policy(spec, paths, cid, code, delay):
    """Run the container again as --restart says (Docker's rules), after
    `delay`: after any end with always and unless-stopped (alike here:
    there is no daemon to restart with the host), after a non-zero exit
    with on-failure, at most MAX times if given; never after stop or rm
    (claim_container sees to that). A run that starts makes us the lean
    monitor again (run_container, with a report that tells nobody); one
    that fails to start counts as an exit. Returns the last exit code."""
    policy, most = spec.restart
    while True:
        record = read_record(paths, cid)
        if record is None or policy == "no" or (policy == "on-failure" and (
                code == 0 or 0 < most <= record.get("restart_count", 0))):
            return code
        # The wait ends early for a stop (or rm), which is waiting for us.
        deadline = time.monotonic() + delay
        stop = stop_requested_path(paths, cid)
        while time.monotonic() < deadline and not os.path.exists(stop):
            time.sleep(0.05)
        try:
            ran = run_container(spec, paths, StartReport(None), cid, "policy")
        except MiniDockerError as err:
            ran = err.code
        if ran is None:  # stopped or removed meanwhile
            return code
        code, delay = ran, min(delay * 2, RESTART_DELAY_MAX)


# === 11. (continued) exec: one more process in a running container ===
# exec runs a command beside the container's own, as one of it: in every
# namespace of its init, in its cgroups, under the container's user,
# capabilities, no_new_privs and seccomp filter, inside its root. The
# parent (minidocker exec) opens the init's namespaces and forks a child
# into the container's cgroups but the pids one (split_exec_cgroups says
# which; CgroupEntry, chapter 8, how: born in the cgroup v2, its own write
# to each v1 one's tasks), which enters the namespaces, the mount
# namespace last (setns(2) moves its root and working directory to that
# namespace's root: the container's). The child then goes through stage 2
# as an --init container's init does (exec_command): it becomes the
# container's user with its capabilities and filter, waits for the
# parent's "go" (any cgroup the child could not enter itself, joined),
# and only then forks the command, the first of these processes to be in
# the container's pid namespace (setns(CLONE_NEWPID) places a caller's
# next children there, never the caller). The command's first act is to
# write itself into the pids cgroup (v1's tasks, through a descriptor
# exec opened; on cgroup v2 the parent writes its pid). The child reports
# the command's pid and ends (fork_command); the parent, a child
# subreaper (PR_SET_CHILD_SUBREAPER), inherits the command and says "go"
# again: the command execs. So an exec costs the container one pid, as
# runc's does: a container at --pids-limit N with N-1 tasks still takes
# one. The parent relays the terminal and the signals, and ends with the
# command's exit code; with -d it leaves once the command runs.
#
# Why the cgroups are entered in two steps: the kernel charges a fork to
# the pids cgroup of the process that forks, so a child inside it would
# need a second free pid for a moment. The command holds the descriptor of
# the pids cgroup's tasks file (root's: a write to it moves any process)
# from its fork to its first act, and closes it then: non-dumpable, it
# shows it to no process of the container (below).
#
# Where the time of `exec CONTAINER /bin/true` goes (.ci/bench goal 7:
# at most 1.5 times `runc exec`, which took 42-43 ms on the same host):
# 48-55 ms in all (1.13-1.26x), from 72-76 when exec's parent wrote both
# pids (its first write waited out the grace period, as runc's exec still
# does) and every start imported json, re and ast. Of that, Python's
# start and the bytecode take about 25 ms before main(), and exec's own
# work, from main() to the command's execve, 9-12 ms; the rest is the
# command itself, its end, and our exit.
#
# The dangerous moment is the one in between: a process of the host
# (python3, minidocker's memory and descriptors) entering the container.
# Through /proc/PID/exe of such a process a container overwrote the host's
# runc binary (CVE-2019-5736); through a descriptor another leaked, it
# reached the host's filesystem (CVE-2024-21626). So before it enters
# anything the child is non-dumpable (the kernel then refuses its exe,
# mem, fd, root, environ and ptrace to whoever lacks CAP_SYS_PTRACE) and
# keeps no descriptor but 0, 1, 2 and its pipes; each namespace's
# descriptor is closed as soon as it is used. Non-dumpable is no defence
# against a container given CAP_SYS_PTRACE (--cap-add SYS_PTRACE, for a
# debugger): a process of the host it could see in its pid namespace
# while still in the host's mount namespace, or with all of root's
# capabilities, would hand it the host (its /proc/PID/root, or code
# injected with ptrace). Hence the command is forked into the pid
# namespace only once it is no more than the container's own processes
# are. execve makes it dumpable again: from then on it is only the
# container's. Between its fork and the parent's "go" the command is in
# the pid namespace but not yet in the pids cgroup: a container that
# could ptrace it then (CAP_SYS_PTRACE) could fork there past its
# --pids-limit; for such a container the child joins the pids cgroup too,
# and an exec needs two free pids.

# In the order the child enters them: pid first (for the command it will
# fork), and the mount namespace last. The cgroup namespace's root is the
# init's cgroup whatever the child's own is: the command, in the
# container's cgroups before it execs, reads its cgroup as "/".
EXEC_NAMESPACES = (("pid", CLONE_NEWPID), ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS),
                   ("net", CLONE_NEWNET), ("cgroup", CLONE_NEWCGROUP), ("mnt", CLONE_NEWNS))


def build_exec_spec(args, record, paths):
    """The spec of the process exec adds: the command, -e, -w and -u on top
    of the container's own spec (its environment, user, capabilities and
    seccomp filter, read now: after setns the host's files are out of
    reach)."""
    spec = saved_spec(paths, record)
    if not args.command:
        raise MiniDockerError("exec: no command given: usage: exec [OPTIONS] CONTAINER CMD [ARG...]")
    if args.detach and (args.interactive or args.tty):
        raise MiniDockerError("exec -d keeps no terminal and no stdin: -i and -t need an exec "
                              "without -d")
    if args.workdir is not None and not args.workdir.startswith("/"):
        raise MiniDockerError("workdir %r must be an absolute path" % args.workdir)
    env_entries = []
    for path in args.env_file:
        env_entries += parse_env_file(path)
    spec.command = list(args.command)
    spec.hostname = record["config"]["hostname"]
    spec.env = spec.env + expand_env(env_entries + args.env)
    spec.workdir = absolute_path(args.workdir) if args.workdir else spec.workdir
    spec.user = check_user(args.user, "--user") if args.user else spec.user
    spec.tty, spec.interactive, spec.detach = args.tty, args.interactive, args.detach
    # The command is forked by our child, once confined (above).
    spec.init, spec.debug = True, args.debug
    return spec


def open_namespaces(record):
    """The init's namespaces, as descriptors, in EXEC_NAMESPACES' order. The
    init is checked by its start time once they are open: a pid that ended
    and was reused would otherwise hand us a stranger's namespaces."""
    pid, opened = record["pid"], []
    # A user namespace first: its root may then enter the others, its own.
    # One the container shares with us (a bundle's cgroup namespace not
    # listed) is left out: the user namespace's root may not enter the
    # host's, and is in it already.
    kinds = ((("user", CLONE_NEWUSER),) if record.get("id_maps") else ()) + EXEC_NAMESPACES
    try:
        for name, kind in kinds:
            path = "/proc/%d/ns/%s" % (pid, name)
            opened.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), kind, name))
            theirs, ours = os.fstat(opened[-1][0]), os.stat("/proc/self/ns/" + name)
            if record.get("id_maps") and (ours.st_dev, ours.st_ino) == \
                    (theirs.st_dev, theirs.st_ino):
                os.close(opened.pop()[0])
        if process_start_time(pid) == record.get("pid_start"):
            return opened
    except (FileNotFoundError, ProcessLookupError):  # the init has ended
        pass
    except BaseException:
        close_namespaces(opened)
        raise
    close_namespaces(opened)
    raise MiniDockerError("container %s is not running" % record["id"][:12])


def close_namespaces(opened):
    for fd, _, _ in opened:
        os.close(fd)


def exec_in_container(record, spec, console_socket=None, started=None):
    """Run spec.command in the running container of `record`; its exit code
    (with -d: 0 once it runs). For a bundle's exec: `console_socket`, where
    the pty's master goes (as start_container's), and started(pid) once the
    process runs."""
    namespaces = open_namespaces(record)
    signals = SignalPipe()
    console, console_peer = None, console_socket
    entry = later = None
    try:
        # Inherited by the child through fork: it is never dumpable while
        # it is python3 (see above).
        prctl(PR_SET_DUMPABLE, 0, what="prctl(PR_SET_DUMPABLE)")
        # The command, orphaned when the child that forks it ends, becomes ours.
        prctl(PR_SET_CHILD_SUBREAPER, 1, what="prctl(PR_SET_CHILD_SUBREAPER)")
        if spec.tty:
            preload("_socket", "array")  # open_pty's, once the host is out of reach
        if spec.tty and console_socket is None:
            import _socket
            console, console_peer = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        child_read, parent_write = os.pipe2(os.O_CLOEXEC)
        parent_read, child_write = os.pipe2(os.O_CLOEXEC)
        # The child enters the cgroups but the pids one by itself, and
        # the command that one (CgroupEntry); the parent, what they cannot.
        first, then = split_exec_cgroups(record["cgroups"], spec.caps)
        entry, later = CgroupEntry(first), CgroupEntry(then)
        entry.open()
        later.open(birth=False)
        pid = entry.fork()
        if pid == 0:
            try:
                with reported(child_write):
                    entry.enter()
                exec_child(spec, record, namespaces, child_write, child_read, console_peer, later)
            finally:  # never back into the parent's frames
                os._exit(EXIT_RUNTIME)
        for fd in (child_read, child_write):
            os.close(fd)
        if console_peer is not None:
            console_peer.close()
        pending, rest, command = [], bytearray(), None
        try:
            try:
                join_cgroups(entry.rest(), pid)
                os.write(parent_write, b"go\n")
            except (MiniDockerError, BrokenPipeError) as err:
                child_error_first(err, pid, parent_read, signals, pending, rest)
            master = receive_master(console) if console is not None else None
            message = read_child_message(parent_read, signals, pending, rest)
            if not message.startswith(b"pid "):
                raise_child_error(message)
            command = adopted(int(message[4:]), pid)
            join_cgroups(later.rest(), command)
            # Its end makes the command ours, before the command asks for
            # the parent-death signal, which binds to its parent of the moment.
            os.waitpid(pid, 0)
            pid = None
            try:
                os.write(parent_write, b"go\n")
            except BrokenPipeError as err:  # the command failed first: its error explains
                child_error_first(err, command, parent_read, signals, pending, rest)
            message = read_child_message(parent_read, signals, pending, rest)
            if message:
                raise_child_error(message)
            if started is not None:
                started(command)
        except BaseException:
            for process in (pid, command):
                if process is not None:
                    kill_and_reap(process)
            raise
        finally:
            os.close(parent_read)
            os.close(parent_write)
        if spec.detach:  # the command goes on without us; the host's init reaps it
            return 0
        return exit_code(wait_for_container(command, signals, master, spec.interactive, pending))
    finally:
        for opened in (entry, later):
            if opened is not None:
                opened.close()
        signals.close()
        close_namespaces(namespaces)
        if console is not None:
            console.close()


def split_exec_cgroups(cgroups, caps):
    """The container's cgroups -> (those exec's child joins before it
    forks the command, those the command joins after): the one that holds
    the pids controller (it has pids.max: the pids hierarchy of cgroup v1,
    or the only one of v2) waits for the command, unless the container
    holds CAP_SYS_PTRACE (see above). (With no `caps`: stage 1 of a user
    namespace and the init it forks, likewise.)"""
    if CAP_NAMES.index("SYS_PTRACE") in caps:
        return cgroups, []
    pids = [path for path in cgroups if os.path.exists(os.path.join(path, "pids.max"))]
    return [path for path in cgroups if path not in pids], pids


def adopted(command, child):
    """The pid the child reported (the command it forked, in the host's
    numbering), checked, so that no other process is ever moved into the
    container's cgroups: its parent is the child, or we are once the child
    has ended (a child subreaper's orphan)."""
    if process_parent(command) not in (child, os.getpid()):
        raise MiniDockerError("exec: the process forked into the container (pid %d) has ended "
                              "or is not ours" % command)
    return command


def process_parent(pid):
    """The fourth field of /proc/PID/stat (after the name, which may hold
    anything but ends at the last ')'); None if it has gone."""
    try:
        return int(read_text("/proc/%d/stat" % pid).rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def exec_child(spec, record, namespaces, to_parent, from_parent, console, later):
    """The process exec adds: it enters the container, is confined as its
    init was, and forks the command (fork_command), which enters the
    CgroupEntry `later` (opened: the pids cgroup v1). Never returns."""
    try:
        set_stage_name("md:[exec]")
        spec.runtime_files = runtime_files()
        signal.set_wakeup_fd(-1)  # the parent's signals are not ours to note
        null = os.open("/dev/null", os.O_RDWR)
        # (A bundle's exec keeps the caller's: conmon's pipes, its log.)
        for target in ((0, 1, 2) if spec.detach and spec.bundle is None else
                       (0,) if not spec.interactive else ()):
            os.dup2(null, target)
        os.close(null)
        # Nothing of the host's beyond this point but what is named here.
        keep = {to_parent, from_parent} | {fd for fd, _, _ in namespaces} | set(later.tasks)
        if console is not None:
            keep.add(console.fileno())
        close_all_fds_but(keep)
        # Our cmdline is world-readable in /proc, dumpable or not: it
        # names the caller's command line and paths.
        scrub_arguments_and_environment()
        # Through the set-up: it ends with us.
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
        set_oom_score_adj(spec.oom_score_adj)
        for fd, kind, name in namespaces:
            setns(fd, kind, "the container's %s namespace" % name)
            os.close(fd)
        os.setsid()  # out of the caller's session: its ^C comes through the parent
        slave = None
        if console is not None:
            rootfd = os.open("/", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            slave = open_pty(rootfd, console)
            os.close(rootfd)
        exec_command(spec, spec.hostname, to_parent, tied=not spec.detach,
                     fork=lambda to_parent, _tty, tied: fork_command(to_parent, from_parent,
                                                                     slave, tied, later))
    except MiniDockerError as err:
        report_and_exit(to_parent, err.code, str(err))
    except OSError as err:
        report_and_exit(to_parent, EXIT_RUNTIME, str(err))
    except BaseException as err:  # a bug: still one line, never a traceback
        report_and_exit(to_parent, EXIT_RUNTIME, "internal error: %r" % err)


def fork_command(to_parent, from_parent, slave, tied, later):
    """exec's child, confined, forks the command into the container's pid
    namespace once the parent says "go" (its first cgroups joined), tells
    the parent the command's pid and ends. The command waits for the
    second "go" (the pids cgroup joined); with `tied` it then dies with
    the parent, whose child it has become (the parent-death signal, asked
    for now: the child's end would have sent it); it leads a session of
    its own, with the pty's `slave` as its terminal under -t. Returns in
    the command's process only."""
    if read_line(from_parent, bytearray()) != b"go\n":
        os._exit(EXIT_RUNTIME)
    command = fork_in_container()
    if command != 0:
        write_all(to_parent, b"pid %d\n" % command)
        os._exit(0)
    later.enter()  # (a failure is exec_child's to report, as any before execve)
    if read_line(from_parent, bytearray()) != b"go\n":
        os._exit(EXIT_RUNTIME)
    if tied:  # the filter may refuse prctl: then only the namespace's end takes it
        with suppress(OSError):
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, what="prctl(PR_SET_PDEATHSIG)")
        if select.select([from_parent], [], [], 0)[0]:  # its end: the parent died before
            os._exit(EXIT_RUNTIME)
    os.close(from_parent)
    if slave is not None:
        take_terminal(slave)
    else:
        os.setsid()


def close_all_fds_but(keep):
    """Close every descriptor above 2 that is not in `keep`, close-on-exec
    or not (close_inherited_fds spares ours until execve: here even a
    moment is too long)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:  # EBADF: the directory listdir itself had open
                pass



# === 12. Commands ===


def require_root(what):
    if os.geteuid() != 0:
        raise MiniDockerError("%s needs root (CAP_SYS_ADMIN in the initial user "
                              "namespace): run it with sudo" % what)


def require_root_or_user(what):
    """Root, or a user where the host lets users make user namespaces: the
    user's containers are rootless ones (chapter 7, continued), in the
    user's own state directories (Paths). Those are made (or checked to be
    the user's) before anything in them is read: without $XDG_RUNTIME_DIR
    the run tree is /tmp/minidocker-run-UID, which another user may have
    made first, with records whose pids `rm -f` would kill and `exec`
    enter; made now, it stays the user's (/tmp is sticky)."""
    if os.geteuid() != 0:
        check_rootless_host()
        make_state_dirs(Paths())


def cmd_run(args):
    require_root_or_user("run")
    paths = Paths()
    spec = build_spec(args, paths.seccomp_cache)
    trace(spec.debug, "flags parsed into the spec, the seccomp filter ready")
    if spec.detach and not args.detach:  # a restart policy keeps it
        return run_attached_to_monitor(spec, paths)
    if spec.detach:
        return run_detached(spec, paths)
    return run_container(spec, paths)


def run_attached_to_monitor(spec, paths):
    """run --restart POLICY without -d, as docker's: a monitor keeps the
    container as with -d (start_monitor), so that the policy outlives us,
    and we stay attached to its first run: its output as the log takes it
    (as logs -f reads it), the signals we receive passed on to its init
    (docker's sig-proxy), its exit code ours. The runs the policy starts
    later go on in the background until stop or rm -f. The first run's
    entries are those written before the record took its end ("finished"):
    the next one begins a back-off (0.1 s at least) later, and each loop
    looks at the record well within it."""
    cid = start_monitor(spec, paths)
    layer = paths.layer(cid)

    def forward(number, _frame):
        record = read_record(paths, cid)
        if record is not None and record["status"] == "running":
            signal_init(record, number)
    for number in FORWARDED_NUMBERS:
        signal.signal(number, forward)
    reader = log_reader(spec.log_driver, None, False)
    try:
        files = open_log_files(layer, reader.name)
        if not files:  # removed meanwhile (rm -f), its layer with it
            raise MiniDockerError("container %s was removed (rm -f)" % cid[:12])
        reader.read_files(files)
        record = read_record(paths, cid)
        while record is not None and owner_alive(record) and record["status"] != "exited" \
                and not record.get("restart_count"):
            time.sleep(0.05)
            reader.follow(layer)
            record = read_record(paths, cid)
        if record is None:
            raise MiniDockerError("container %s was removed (rm -f): its exit code went with "
                                  "it" % cid[:12])
        if record["status"] != "exited" and not record.get("restart_count"):  # monitor killed
            raise MiniDockerError("container %s: its monitor ended before it" % cid[:12])
        reader.until = JsonLog.stamp(int(record["finished"] * 10**9))
        reader.follow(layer)
    finally:
        reader.close()
    return record["exit_code"]


def cmd_rm(args):
    """Remove stopped containers; -f first kills a running one. With -f, an
    id also removes a malformed record of that name."""
    require_root_or_user("rm")
    paths = Paths()
    reclaim_dead(paths)
    for prefix in args.containers:
        if args.force and remove_malformed(paths, prefix):
            continue
        record = find_container(paths, prefix)
        if owner_alive(record) and args.force:  # running, or about to run again
            end_container(paths, record, signal.SIGKILL, 0)
        with container_lock(paths, record["id"]):  # a start at the same time: one wins
            if not os.path.exists(paths.record(record["id"])):
                print(record["id"][:12])  # its minidocker removed it (--rm)
                continue
            record = current_record(paths, record["id"])
            if owner_alive(record):  # docker's "running" and "restarting"
                raise MiniDockerError("container %s is %s: stop it or use rm -f"
                                      % (record["id"][:12], "restarting" if container_state(
                                          record) == "restarting" else "running"))
            remove_container(paths, record, volumes=args.volumes)
        print(record["id"][:12])
    return 0


def remove_malformed(paths, prefix):
    """rm -f of a record that read_records skipped: its file goes."""
    malformed = []
    read_records(paths, malformed)
    names = [name for name in malformed if name.startswith(prefix)]
    if len(names) != 1:
        return False
    os.unlink(os.path.join(paths.records, names[0]))
    print(names[0][:-len(".json")][:12])
    return True


def cmd_logs(args):
    """The log of a detached container, as docker prints it: each line to
    our stdout or stderr as it was written, from the oldest rotated file to
    the newest; with -t its time first; --since and --until only the lines
    of that time; --tail N only the last N; -f then follows, across
    rotations, until the container's monitor ends. The log is in the form
    of the container's --log-driver: local (LocalLog) or json-file."""
    require_root_or_user("logs")
    now = time.time_ns()
    since = parse_log_time(args.since, "--since", now) if args.since is not None else None
    until = parse_log_time(args.until, "--until", now) if args.until is not None else None
    paths = Paths()
    record = find_container(paths, args.container)
    if record.get("log_driver") == "none":
        raise MiniDockerError("container %s keeps no log: it runs with --log-driver none"
                              % record["id"][:12])
    layer = paths.layer(record["id"])
    # A container of a minidocker before local: its record names no driver.
    reader = log_reader(record.get("log_driver", "json-file"), args.tail, args.timestamps,
                        since, until)
    files = open_log_files(layer, reader.name)
    if not files:
        reader.close()
        raise MiniDockerError("container %s has no log: only a detached one keeps one"
                              % record["id"][:12])
    try:
        reader.read_files(files)
        reader.print_kept()
        while args.follow and owner_alive(record) and not reader.ended \
                and (until is None or time.time_ns() <= until):
            time.sleep(0.05)
            reader.follow(layer)
        if args.follow:  # what came last; an unfinished line is no entry
            reader.follow(layer)
    finally:
        reader.close()
    return 0


def log_tail(text):
    """logs --tail as Docker reads it: a number of lines, or "all", as is
    any negative number -> None for all."""
    if text == "all":
        return None
    lines = int(text)
    return lines if lines >= 0 else None


def open_log_files(layer, name, after=None):
    """The log's files, opened, oldest first: NAME.N ... NAME.1, then NAME
    (container.log or json.log). They are opened under the log's lock
    (shared), which the monitor holds to rotate (JsonLog.rotate): one
    moment's set, no file seen twice, none missed. With `after` (the stat
    of a file read to its end), only the files newer than that one; all
    of them if it is no longer among them (rotated away meanwhile: what it
    took is lost)."""
    try:
        dirfd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:  # the layer is gone (--rm)
        return []
    fds, lock = [], None
    try:
        try:
            lock = os.open(name + ".lock", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
        except FileNotFoundError:  # no log, or one an older minidocker keeps: it locks the
            pass                   # directory to rotate
        fcntl.flock(dirfd if lock is None else lock, fcntl.LOCK_SH)
        prefix = name + "."
        rotated = sorted((int(entry[len(prefix):]) for entry in os.listdir(dirfd)
                          if entry.startswith(prefix) and is_number(entry[len(prefix):])
                          and not entry.startswith(prefix + "0")), reverse=True)
        for entry in ["%s%d" % (prefix, number) for number in rotated] + [name]:
            with suppress(FileNotFoundError):  # NAME: none kept (no run -d)
                fds.append(os.open(entry, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd))
    finally:
        if lock is not None:
            os.close(lock)  # and with it the lock
        os.close(dirfd)
    if after is not None:
        seen = [index for index, fd in enumerate(fds)
                if os.path.samestat(os.fstat(fd), after)]
        for fd in fds[:seen[0] + 1] if seen else ():
            os.close(fd)
        fds = fds[seen[0] + 1:] if seen else fds
    return fds


def log_reader(driver, tail, timestamps, since=None, until=None):
    """The reader of a log kept by `driver` (local or json-file)."""
    return (LocalLogReader if driver == "local" else LogReader)(tail, timestamps, since, until)


class LogReader:
    """What `logs` prints of a json-file log, file after file: each entry
    within --since and --until, at once, or (--tail N) the last N kept for
    print_kept. The times are compared as the strings JsonLog writes: of
    one width, in UTC, they sort as the times do."""

    name = LOG_FILES["json-file"]

    def __init__(self, tail, timestamps, since=None, until=None):
        import collections
        self.kept = collections.deque(maxlen=max(tail, 0)) if tail is not None else None
        self.timestamps = timestamps
        self.since = JsonLog.stamp(since) if since is not None else None
        self.until = JsonLog.stamp(until) if until is not None else None
        self.ended = False  # an entry after --until came: nothing more is printed
        self.fd = None      # the file followed: json.log when it was opened
        self.lost = False   # (LocalLogReader) the rest of this file cannot be read
        self.stream = None  # the stream printed to last (print)

    def read(self, fd):
        """The entries that came since the last read, a megabyte at a time
        (a log may be larger than memory)."""
        rest = b""
        chunk = os.read(fd, 1 << 20)
        while chunk:
            data = rest + chunk
            end = data.rfind(b"\n") + 1
            for line in data[:end].split(b"\n")[:-1]:
                self.entry(line)
            rest = data[end:]
            chunk = os.read(fd, 1 << 20)
        self.unread(fd, rest)
        self.flush()

    @staticmethod
    def unread(fd, rest):
        """An entry not whole yet at the file's end is read again next
        time, from its start: the writer may take one cut short back
        (write_whole, ENOSPC) and write others where it was."""
        if rest:
            os.lseek(fd, -len(rest), os.SEEK_CUR)

    def read_files(self, fds):
        """Each file read to its end and closed, but the last, which becomes
        the one followed. A file ends with whole entries: one cut short
        (ENOSPC) is no entry."""
        for fd in fds[:-1]:
            try:
                self.read(fd)
                self.lost = False
            finally:
                os.close(fd)
        self.fd = fds[-1]
        self.read(self.fd)

    def follow(self, layer):
        """-f: what came since into the file followed, and, once the log's
        name is no longer that file (rotated: renamed, or removed with
        max-file 1), the rest of it, then the newer files."""
        while True:
            self.read(self.fd)
            try:
                rotated = not os.path.samestat(os.stat(os.path.join(layer, self.name)),
                                               os.fstat(self.fd))
            except FileNotFoundError:  # halfway through a rotation, or the layer gone (--rm)
                rotated = False
            newer = open_log_files(layer, self.name, after=os.fstat(self.fd)) if rotated else []
            if not newer:
                return
            self.read(self.fd)  # its last entries, written before the rotation
            self.lost = False
            self.close()
            self.read_files(newer)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def entry(self, line):
        try:
            entry = from_json(line)
            stamp, text, stream = entry["time"], entry["log"].encode("utf-8", "replace"), \
                {"stdout": sys.stdout, "stderr": sys.stderr}[entry["stream"]]
            if not isinstance(stamp, str):
                return
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # not an entry of ours: skipped
        self.line(stream, stamp, text)

    def line(self, stream, stamp, text):
        """One line of the log, printed or kept if its time is asked for."""
        if self.ended or self.since is not None and stamp < self.since:
            return
        if self.until is not None and stamp > self.until:
            self.ended = True
            return
        line = (stamp + " ").encode() + text if self.timestamps else text
        if self.kept is not None:
            self.kept.append((stream, line))
        else:
            self.print(stream, line)

    def print_kept(self):
        for stream, line in self.kept or ():
            self.print(stream, line)
        self.flush()
        self.kept = None  # from now on (-f) each entry as it comes

    def print(self, stream, line):
        """A line to our stdout or stderr, flushed once the other stream
        comes and at the end of each read (flush): in order where both go
        to one place, and not a write per line."""
        if stream is not self.stream:
            self.flush()
            self.stream = stream
        stream.buffer.write(line)

    def flush(self):
        if self.stream is not None:
            self.stream.flush()


class LocalLogReader(LogReader):
    """What `logs` prints of a local log (LocalLog): each record's lines
    with its stream and time. A header that is not a record's makes the
    rest of its file unreadable (a record's length is all that says where
    the next begins): it is skipped, and the next file read."""

    name = LOG_FILES["local"]

    def read(self, fd):
        rest = b""
        chunk = os.read(fd, 1 << 20)
        while chunk:
            if self.lost:
                chunk = os.read(fd, 1 << 20)
                continue
            data, start = rest + chunk, 0
            while True:
                newline = data.find(b"\n", start, start + LOG_HEAD_MAX)
                if newline < 0:
                    self.lost = len(data) - start >= LOG_HEAD_MAX
                    break
                head = data[start:newline].split(b" ")
                if len(head) != 3 or head[0] not in (b"stdout", b"stderr") \
                        or len(head[1]) != 30 or not head[2].isdigit():
                    self.lost = True
                    break
                end = newline + 1 + int(head[2])
                if end > len(data):  # the rest of the record is still to come
                    break
                self.record(head[0], head[1].decode("ascii", "replace"), data[newline + 1:end])
                start = end
            rest = b"" if self.lost else data[start:]
            chunk = os.read(fd, 1 << 20)
        self.unread(fd, rest)
        self.flush()

    def record(self, stream, stamp, lines):
        stream = sys.stdout if stream == b"stdout" else sys.stderr
        if self.kept is None and not self.timestamps and self.since is None \
                and self.until is None:  # as they came: at once
            self.print(stream, lines)
            return
        pieces = lines.split(b"\n")
        for piece in pieces[:-1]:
            self.line(stream, stamp, piece + b"\n")
        if pieces[-1]:  # a line without its end (cut, or the last)
            self.line(stream, stamp, pieces[-1])


# Go's durations (time.ParseDuration), which Docker's --since and --until take
# as a time before now: 10m, 1h30m, 1.5h, 250ms.
GO_DURATION = r"[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+"
DURATION_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9,
                  "m": 60 * 10**9, "h": 3600 * 10**9}
# An RFC 3339 time, or the prefixes of one Docker takes (a date; to the
# hour, the minute), with or without a fraction of a second and a zone.
# Times before 1970 or after 9999 are taken as those bounds: the reader
# compares stamps of one width.
LOG_TIME = (r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
            r"(?:T([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?)?)?"
            r"(Z|[+-][0-9]{2}:[0-9]{2})?")


def parse_log_time(text, flag, now):
    """--since and --until in Docker's forms (its GetTimestamp) ->
    nanoseconds since the epoch: a duration before `now` (GO_DURATION; 0
    is Unix time 0), an RFC 3339 time (LOG_TIME; without a zone, in the
    local one), or Unix seconds (1714557600, 1714557600.5)."""
    return min(max(log_time(text, flag, now), 0), LOG_TIME_MAX)


LOG_TIME_MAX = 253402300799 * 10**9  # 9999-12-31T23:59:59Z


def log_time(text, flag, now):
    import re
    if text != "0" and re.fullmatch(GO_DURATION, text):
        ago = sum(float(number) * DURATION_UNITS[unit]
                  for number, unit in re.findall(r"([0-9.]+)([a-zµμ]+)", text))
        return now + round(ago) if text.startswith("-") else now - round(ago)
    match = re.fullmatch(LOG_TIME, text)
    if match:
        import datetime
        year, month, day, hour, minute, second, fraction, zone = match.groups()
        offset = time.localtime(now // 10**9).tm_gmtoff if zone is None else \
            0 if zone == "Z" else (-1 if zone[0] == "-" else 1) * (int(zone[1:3]) * 3600
                                                                 + int(zone[4:]) * 60)
        try:
            moment = datetime.datetime(
                int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                int(second or 0), tzinfo=datetime.timezone(datetime.timedelta(seconds=offset)))
        except ValueError as err:  # month 13, hour 24, an offset of a day or more
            raise MiniDockerError("invalid %s %s: %s" % (flag, quote(text), err))
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        return (moment - epoch) // datetime.timedelta(seconds=1) * 10**9 \
            + int((fraction or "0").ljust(9, "0"))
    match = re.fullmatch(r"([0-9]+)(?:\.([0-9]{1,9}))?", text)
    if match:
        return int(match.group(1)) * 10**9 + int((match.group(2) or "0").ljust(9, "0"))
    raise MiniDockerError("invalid %s %s: expected an RFC 3339 time (2024-05-01T10:00:00Z), "
                          "Unix seconds, or a time ago (10m, 1h30m)" % (flag, quote(text)))


def cmd_stop(args):
    """Stop running containers: -s SIGNAL (default SIGTERM) to their init,
    then, after -t seconds (default 10), SIGKILL; each name once its
    monitor (or its `run`) has recorded the end and cleaned up."""
    require_root_or_user("stop")
    paths = Paths()
    reclaim_dead(paths)
    if args.signal is not None:
        parse_signal(args.signal)  # a bad one stops none
    for ref in args.containers:
        record = find_container(paths, ref)
        if owner_alive(record):  # running, or between two runs of its restart policy
            end_container(paths, record, *stop_options(args, record))
        else:
            request_stop(paths, record["id"])
        print(ref)
    return 0


def cmd_wait(args):
    """Wait until each container's run has ended; print its exit code. As
    docker's, a restart policy does not make it wait longer: the end of the
    run going on (or, between two runs, the last one's) is the answer."""
    require_root_or_user("wait")
    paths = Paths()
    for ref in args.containers:
        record = find_container(paths, ref)
        this_run = (record["owner_start"], record.get("restart_count", 0))
        while is_running(record):
            time.sleep(0.05)
            record = read_record(paths, record["id"]) or record
            if (record["owner_start"], record.get("restart_count", 0)) != this_run:
                break  # ended, and a restart policy has begun the next run
        reclaim_dead(paths)
        try:
            with open(paths.record(record["id"])) as handle:
                ended = from_json(handle.read())
        except FileNotFoundError:
            raise MiniDockerError("container %s was removed (--rm, or rm): its exit code "
                                  "went with it" % record["id"][:12])
        print(ended.get("exit_code", "unknown"))
    return 0


def cmd_kill(args):
    """A signal (default SIGKILL) to running containers' init."""
    require_root_or_user("kill")
    paths = Paths()
    reclaim_dead(paths)
    number = parse_signal(args.signal)
    for ref in args.containers:
        record = find_container(paths, ref)
        if not is_running(record):
            raise MiniDockerError("container %s is not running" % record["id"][:12])
        signal_init(record, number)
        print(ref)
    return 0


def cmd_start(args):
    """Run stopped containers' command again, in the same container: its
    layer (what the command wrote is still there), name, spec and log; in
    the background under a monitor, as run -d (with -a: in the foreground,
    as run). One already running is left as it is, as docker does."""
    require_root_or_user("start")
    paths = Paths()
    reclaim_dead(paths)
    if args.attach and len(args.containers) > 1:
        raise MiniDockerError("start -a takes one container")
    for ref in args.containers:
        record = find_container(paths, ref)
        if is_running(record):
            print(ref)
            continue
        if args.attach:
            spec = saved_spec(paths, record)
            spec.detach, spec.interactive = False, args.interactive
            spec.tty = spec.tty and os.isatty(0) and os.isatty(1)
            return run_container(spec, paths, cid=record["id"], again="user")
        run_detached(saved_spec(paths, record, detach=True), paths, record["id"], "user",
                     shown=ref)
    return 0


def cmd_restart(args):
    """stop, then start (a stopped container is only started)."""
    require_root_or_user("restart")
    paths = Paths()
    reclaim_dead(paths)
    if args.signal is not None:
        parse_signal(args.signal)  # a bad one restarts none
    for ref in args.containers:
        record = find_container(paths, ref)
        if owner_alive(record):  # running, or about to run again
            end_container(paths, record, *stop_options(args, record))
        run_detached(saved_spec(paths, record, detach=True), paths, record["id"], "user",
                     shown=ref)
    return 0


def stop_options(args, record):
    """stop's and restart's -s and -t, else the container's --stop-signal
    and --stop-timeout, else SIGTERM and 10 seconds (-1: no SIGKILL)."""
    config = record.get("config", {})
    number = parse_signal(args.signal) if args.signal is not None else \
        config.get("stop_signal") or signal.SIGTERM
    seconds = args.time if args.time is not None else config.get("stop_timeout")
    return number, 10 if seconds is None else float("inf") if seconds < 0 else seconds


def saved_spec(paths, record, detach=False):
    spec = load_spec(paths, record["id"])
    if spec is None:
        raise MiniDockerError("container %s was made by an older minidocker, which kept no "
                              "spec to start it with" % record["id"][:12])
    if detach:
        spec.detach, spec.interactive, spec.tty = True, False, False
    return spec


def cmd_exec(args):
    """Run a command in a running container, as one of its processes."""
    require_root_or_user("exec")
    paths = Paths()
    record = find_container(paths, args.container)
    if record["status"] != "running" or not is_running(record):
        raise MiniDockerError("container %s is not running" % record["id"][:12])
    return exec_in_container(record, build_exec_spec(args, record, paths))


def cmd_inspect(args):
    """A JSON array, one object per container, in Docker's shape for the
    fields minidocker keeps."""
    require_root_or_user("inspect")
    paths = Paths()
    reclaim_dead(paths)
    print(to_json([inspect_record(find_container(paths, ref)) for ref in args.containers],
                  indent=4))
    return 0


def rfc3339(seconds):
    if not seconds:
        return "0001-01-01T00:00:00Z"  # Docker's zero time
    whole = int(seconds)
    return "%s.%06dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)),
                         int((seconds - whole) * 1e6))


def inspect_record(record):
    status = container_state(record)
    running = status == "running"
    config = record.get("config", {})
    policy, most = config.get("restart", ("no", 0))
    lease = record.get("network", {})
    ports = {key: bindings and [{"HostIp": ip, "HostPort": str(port)} for ip, port in bindings]
             for key, bindings in port_map(record).items()}
    exposed = dict(sorted(("%d/%s" % (port, proto), {}) for port, proto in config.get("exposed", [])))
    entrypoint = config.get("entrypoint")
    stop_signal = config.get("stop_signal")
    namespaces = dict(NAMESPACE_DEFAULTS, **config.get("namespaces", {}))
    driver = record.get("log_driver", "json-file")  # (none in an older minidocker's record)
    return {
        "Id": record["id"], "Name": "/" + (record.get("name") or record["id"][:12]),
        "Created": rfc3339(record["created"]),
        "Path": record["command"][0] if record["command"] else "",
        "Args": record["command"][1:],
        "State": {"Status": status, "Running": running, "Pid": record["pid"] if running else 0,
                  "ExitCode": record.get("exit_code", 0),
                  "OOMKilled": bool(record.get("oom_killed")),
                  "StartedAt": rfc3339(record.get("started")),
                  "FinishedAt": rfc3339(record.get("finished"))},
        "Image": record.get("image_id") or "",
        "Config": {"Image": record.get("image") or record["rootfs"],
                   "Cmd": record["command"][len(entrypoint or []):],
                   "Entrypoint": entrypoint or None, "Env": config.get("env", []),
                   "WorkingDir": config.get("workdir", "/"), "User": config.get("user", ""),
                   "Hostname": config.get("hostname", record["id"][:12]),
                   "Labels": config.get("labels", {}),
                   "StopSignal": signal_name(stop_signal) if stop_signal else None,
                   "StopTimeout": config.get("stop_timeout"),
                   **({"ExposedPorts": exposed} if exposed else {})},
        "HostConfig": {"Privileged": config.get("privileged", False),
                       "ReadonlyRootfs": config.get("read_only", False),
                       "AutoRemove": record["remove"], "Init": config.get("init", False),
                       "RestartPolicy": {"Name": policy, "MaximumRetryCount": most},
                       "Ulimits": [{"Name": name, "Soft": soft, "Hard": hard}
                                   for name, soft, hard in config.get("ulimits", [])],
                       "ShmSize": config.get("shm_size", SHM_DEFAULT_SIZE),
                       "Sysctls": dict(config.get("sysctls", [])),
                       "PidMode": "host" if namespaces["pid"] == "host" else "",
                       "IpcMode": namespaces["ipc"], "UTSMode": "host" if namespaces["uts"] ==
                       "host" else "", "CgroupnsMode": namespaces["cgroup"],
                       "OomScoreAdj": config.get("oom_score_adj") or 0,
                       "OomKillDisable": config.get("oom_kill_disable", False),
                       "LogConfig": {"Type": driver, "Config": config.get("log_options", {})}},
        # Docker's: json.log's path, for the tools that read it; none for
        # the local driver's file, whose form is minidocker's own.
        "LogPath": log_path(Paths(), record["id"], driver) if driver == "json-file" else "",
        "RestartCount": record.get("restart_count", 0),
        "Mounts": record.get("mounts", []),
        "NetworkSettings": {"IPAddress": lease.get("address", ""),
                            "Gateway": lease.get("gateway", ""), "Ports": ports},
    }


def port_map(record):
    """Docker's NetworkSettings.Ports while the container has its lease:
    "80/tcp" -> [(host IP, host port)], or None for a port exposed and not
    published; keys in the order Go's JSON gives a map's, sorted."""
    lease = record.get("network")
    if not lease:
        return {}
    ports = {"%d/%s" % (port, proto): None
             for port, proto in record.get("config", {}).get("exposed", [])}
    for host_ip, host_port, proto, port in lease["ports"]:
        key = "%d/%s" % (port, proto)
        ports[key] = (ports.get(key) or []) + [(host_ip, host_port)]
    return dict(sorted(ports.items()))


def natural_key(text):
    """Sort "9/tcp" before "10/tcp", as Docker's sortorder.NaturalLess."""
    import re
    return [int(part) if part.isdigit() else part for part in re.split(r"([0-9]+)", text)]


def cmd_port(args):
    """docker port: every published port as "80/tcp -> 0.0.0.0:8080", or
    the host addresses of one (CTRPORT[/PROTO], tcp by default), from the
    record's lease; a container not running publishes none."""
    require_root_or_user("port")
    paths = Paths()
    reclaim_dead(paths)
    ports = port_map(find_container(paths, args.container))
    if args.port is None:
        lines = ["%s -> %s:%d" % (key, ip, host) for key, bindings in ports.items()
                 for ip, host in bindings or []]
    else:
        port, _, proto = args.port.partition("/")
        if not is_number(port) or int(port) > 65535:
            raise MiniDockerError("invalid port %s: not a number from 0 to 65535" % quote(port))
        bindings = ports.get("%d/%s" % (int(port), proto or "tcp"))
        if not bindings:
            raise MiniDockerError("no public port %s published for %s"
                                  % (quote(args.port), args.container))
        lines = ["%s:%d" % binding for binding in bindings]
    for line in sorted(lines, key=natural_key):
        print(line)
    return 0


def signal_names():
    """{name: number} of every signal _signal names (SIGTERM; SIGRTMIN and
    SIGRTMAX; the aliases SIGIOT, SIGCLD, SIGPOLL), not its SIG_DFL and
    the like, which are no signals."""
    return {name: getattr(signal, name) for name in dir(signal)
            if name.startswith("SIG") and not name.startswith("SIG_")}


def signal_name(number):
    """15 -> "SIGTERM", as signal.py's Signals enum names it: of two names
    for one number, the first in alphabetical order (SIGABRT, not SIGIOT).
    A real-time signal without a name of its own stays a number."""
    names = sorted(name for name, value in signal_names().items() if value == number)
    return names[0] if names else str(number)


def parse_signal(text):
    """SIGTERM, TERM or 15 -> 15."""
    name = text.upper()
    if is_number(text) and 0 < int(text) < signal.NSIG:
        return int(text)
    number = signal_names().get(name if name.startswith("SIG") else "SIG" + name)
    if number is None:
        raise MiniDockerError("invalid signal %s" % quote(text))
    return number


def end_container(paths, record, number, seconds):
    """`number` to the container's init, SIGKILL after `seconds`; returns
    once its minidocker (the monitor, or `run`) has recorded the end and
    cleaned up. Its restart policy is told first: a stop is not a failure
    to restart after."""
    request_stop(paths, record["id"])
    # Read again: a restart policy may have begun a run since `record` was
    # read (whose init it names, or none); none begins once the mark is
    # down, so this is the last.
    record = read_record(paths, record["id"]) or record
    killed_owner = signal_init(record, number)
    if not killed_owner and not wait_for_owner(record, seconds):
        killed_owner = signal_init(record, signal.SIGKILL)
        if not killed_owner and not wait_for_owner(record, 30):
            raise MiniDockerError("container %s: its minidocker (pid %d) is still cleaning "
                                  "up; try again" % (record["id"][:12], record["owner"]))
    if killed_owner:  # what it would have cleaned up is ours to
        wait_for_owner(record, 5)
        reclaim_dead(paths)


def request_stop(paths, cid):
    with container_lock(paths, cid):
        try:
            os.close(os.open(stop_requested_path(paths, cid),
                             os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        except FileNotFoundError:  # its layer is gone: removed, nothing to restart
            pass


def signal_init(record, number):
    """To the container's init, if it is still the process the record
    names (its start time): a pid may be reused once it ends. A container
    whose record names no init yet (still starting, or its record could
    not be written on a full disk) is reached through its minidocker: a
    signal it forwards goes on to the command (or ends a start-up), and for
    one it cannot (SIGKILL), it is killed itself, and its container dies
    with it (the parent-death signal). Returns True in that last case."""
    if record["pid"]:
        started = process_start_time(record["pid"])
        if started is not None and started == record.get("pid_start"):
            with suppress(ProcessLookupError):  # ESRCH: it has just ended
                os.kill(record["pid"], number)
        return False
    if not owner_alive(record):
        return False
    with suppress(ProcessLookupError):  # ESRCH: it has just ended
        os.kill(record["owner"], number if number in FORWARDED_NUMBERS else signal.SIGKILL)
    return number not in FORWARDED_NUMBERS


def wait_for_owner(record, seconds):
    """True once the container's minidocker has ended (within `seconds`)."""
    deadline = time.monotonic() + seconds
    while owner_alive(record):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


GO_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm",
                    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def cmd_version(args):
    """docker version's first block, for what minidocker runs on here:
    its version, the Python running it, the kernel and the cgroup layout."""
    layout = detect_cgroups(read_text("/proc/self/mountinfo"), read_text("/proc/self/cgroup"))
    cgroups = ("v1 and v2 (hybrid)" if layout.v1 and layout.v2_mount else
               "v1" if layout.v1 else "v2" if layout.v2_mount else "none mounted")
    machine = os.uname().machine
    rows = (("Version", VERSION),
            ("Python", "%s (%s)" % (sys.version.split()[0], sys.executable)),
            ("OS/Arch", "linux/" + GO_ARCHITECTURES.get(machine, machine)),
            ("Kernel", os.uname().release),
            ("Cgroups", cgroups))
    print("minidocker:")
    for name, value in rows:
        print(" %-10s %s" % (name + ":", value))
    return 0


def cmd_mkrootfs(args):
    what = make_rootfs(os.path.abspath(args.dir), use_busybox=not args.no_busybox)
    print("rootfs %s: %s" % (args.dir, what))
    return 0


# `install` copies the file where Python keeps its compiled form. A script
# named on the command line is compiled whole on every start (a 5,000-line
# file takes 80 ms here, most of a run), while an imported module is loaded
# from its cached bytecode (__pycache__/*.pyc, about 2 ms). So the file goes
# to PREFIX/lib/minidocker/, is compiled there once, and PREFIX/bin/minidocker
# is a launcher of a few lines that imports it. The launcher's interpreter
# runs isolated and without site (-IS): no PYTHON* variables, no user's
# site-packages, no .pth files to run at every start. The bytecode is
# compiled as `python3 -OO -X no_debug_ranges` would: without docstrings
# (the book's, which the program never reads), asserts (the file's own
# checks of struct sizes, which a run of the file itself makes) and the
# column of each instruction (Python 3.11's, for tracebacks, which
# minidocker never shows): 18% fewer bytes to load at every start, 2 ms.

COMPILE_INSTALLED = ("import py_compile, sys\n"
                     "py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True, optimize=2)")

LAUNCHER_MARK = "# minidocker's launcher, written by `minidocker.py install`"
LAUNCHER = """#!{python} -IS
{mark}: it imports the
# installed file, so that each start loads its cached bytecode. Removed by
# `minidocker uninstall --prefix` and the prefix below.
# {prefix!r}
import _signal as signal
# As minidocker.py does first when run as a script: see there.
signal.pthread_sigmask(signal.SIG_BLOCK, ({held}))
import sys
if (sys.argv[0].endswith("runc") or sys.argv[1:2] == ["runc"]) and \
        ("start" in sys.argv or "delete" in sys.argv):
    # runc's start and delete, in their plain case, by a part of the file
    # alone, without minidocker's load (lean_runc).
    try:
        import marshal
        with open({lean!r}, "rb") as handle:
            lean = {{"__name__": "lean"}}
            exec(marshal.loads(handle.read()), lean)
    except Exception:  # (a Python upgraded since the install: minidocker does it all)
        lean = None
    code = lean and lean["lean_runc"](sys.argv)
    if code is not None:  # (it writes with os.write: nothing is left to flush)
        import posix  # (os's C part: os itself takes 1.3 ms to import)
        posix._exit(code)
sys.path.insert(0, {library!r})
import minidocker
minidocker.exit_now(minidocker.main())
"""


def install_paths(prefix):
    """(the library directory, the installed file, the launcher)."""
    library = os.path.join(prefix, "lib", "minidocker")
    return library, os.path.join(library, "minidocker.py"), os.path.join(prefix, "bin", "minidocker")


def lean_runc_path(library):
    """The lean runc verbs' bytecode (marshal), beside the installed file."""
    return os.path.join(library, "lean-runc.marshal")


def is_runc_link(path):
    """PREFIX/bin/minidocker-runc, as install makes it: a link to the
    launcher beside it, under which name it speaks runc's command line."""
    return os.path.islink(path) and os.readlink(path) == "minidocker"


def is_launcher(path):
    try:
        with open(path, "rb") as handle:
            return LAUNCHER_MARK.encode() in handle.read(512)
    except OSError:
        return False


def install_directories(prefix, command):
    """PREFIX/lib/minidocker and PREFIX/bin, made if missing, each checked
    as mkrootfs checks its destination: root (or we) alone may change any
    directory on the way, or another user could swap the launcher, the
    bytecode or a directory for a symlink, and root would run or write what
    they chose."""
    if not prefix.isprintable():  # a newline in it would be a line of the launcher
        raise MiniDockerError("%s: the prefix %s has a control character" % (command, quote(prefix)))
    library, _, launcher = install_paths(prefix)
    made = []
    for directory in (library, os.path.dirname(launcher)):
        existing = directory
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        check_safe_destination(existing, is_dest=False, command=command)
        if command == "install":
            os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.lexists(directory):
            check_safe_destination(directory, command=command)
            made.append(directory)
    return made


def cmd_install(args):
    """`install [--prefix DIR]`: the file, its bytecode and the launcher."""
    require_root("install")
    import importlib.util
    import subprocess
    prefix = os.path.abspath(args.prefix)
    library, installed, launcher = install_paths(prefix)
    if os.path.lexists(launcher) and not is_launcher(launcher):
        raise MiniDockerError("install: %s exists and is not minidocker's launcher: "
                              "remove it or choose another --prefix" % launcher)
    if os.path.lexists(launcher + "-runc") and not is_runc_link(launcher + "-runc"):
        raise MiniDockerError("install: %s-runc exists and is not minidocker's link: "
                              "remove it or choose another --prefix" % launcher)
    try:
        install_directories(prefix, "install")
        with open(os.path.abspath(__file__), "rb") as handle:
            source = handle.read()
        write_file_atomically(installed, source, 0o644)
        compiled = subprocess.run(
            [sys.executable, "-I", "-X", "no_debug_ranges", "-c", COMPILE_INSTALLED, installed,
             importlib.util.cache_from_source(installed)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if compiled.returncode != 0:
            why = compiled.stderr.decode(errors="replace").strip().splitlines()
            raise MiniDockerError("install: compiling %s: %s" % (
                installed, why[-1] if why else "exit %d" % compiled.returncode))
        import marshal
        write_file_atomically(lean_runc_path(library), marshal.dumps(compile(
            lean_program(*LEAN_RUNC), "minidocker-runc", "exec", optimize=2)), 0o644)
        held = ", ".join("signal." + name for name in FORWARDED_SIGNALS)
        write_file_atomically(launcher, LAUNCHER.format(
            python=sys.executable, mark=LAUNCHER_MARK, prefix=prefix, held=held,
            library=library, lean=lean_runc_path(library)).encode(), 0o755)
        if not os.path.lexists(launcher + "-runc"):  # runc's command line (chapter 12)
            os.symlink("minidocker", launcher + "-runc")
    except OSError as err:
        raise MiniDockerError("install: %s: %s" % (err.filename or prefix, err.strerror))
    print(launcher)
    return 0


def cmd_uninstall(args):
    """`uninstall [--prefix DIR]`: exactly what install wrote, and only
    where our launcher says it did."""
    require_root("uninstall")
    import importlib.util
    prefix = os.path.abspath(args.prefix)
    library, installed, launcher = install_paths(prefix)
    try:
        install_directories(prefix, "uninstall")
        if not is_launcher(launcher) or os.path.islink(launcher):
            raise MiniDockerError("uninstall: minidocker is not installed under %s" % prefix)
        cache = os.path.dirname(importlib.util.cache_from_source(installed))
        os.unlink(launcher)
        if is_runc_link(launcher + "-runc"):
            os.unlink(launcher + "-runc")
        for path in (installed, lean_runc_path(library)):
            with suppress(FileNotFoundError):
                os.unlink(path)
        if os.path.isdir(cache) and not os.path.islink(cache):
            for name in os.listdir(cache):
                if name.startswith("minidocker.") and name.endswith(".pyc"):
                    os.unlink(os.path.join(cache, name))
        for directory in (cache, library):
            try:
                os.rmdir(directory)
            except OSError as err:  # ENOTEMPTY: files not ours stay, and so does it
                if err.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
    except OSError as err:
        raise MiniDockerError("uninstall: %s: %s" % (err.filename or prefix, err.strerror))
    print(launcher)
    return 0


# === 12. (continued) Listing and housekeeping: ps, top, stats, rename, prune ===
# The verbs docker users type to see and tidy their containers, in docker's
# shapes: its columns and its words for ages ("Up 3 minutes"), its filters,
# its --format templates, its prompt, so that what people and scripts know
# from docker reads ours. Everything is read from the records (chapter 4),
# the cgroups (chapter 8) and /proc; only rename and prune write, and only
# records and layers of stopped containers or names.


def emit(lines, prefix=""):
    """Lines to stdout at once, as UTF-8 whatever the locale (docker's
    output is UTF-8: the "…" of a cut command)."""
    sys.stdout.flush()
    data = prefix + "".join(line + "\n" for line in lines)
    sys.stdout.buffer.write(data.encode("utf-8", "surrogateescape"))
    sys.stdout.buffer.flush()


def tabulate(lines, minwidth):
    """Go's text/tabwriter as docker sets it up (padding 3): a cell ends at
    a tab, each column is as wide as its widest cell plus 3 and at least
    `minwidth` (10 for ps and stats, 20 for top); a line's last cell is
    not padded."""
    rows = [line.split("\t") for line in lines]
    widths = {}
    for cells in rows:
        for column, cell in enumerate(cells[:-1]):
            widths[column] = max(widths.get(column, minwidth), len(cell) + 3)
    return ["".join(cell.ljust(widths[column]) for column, cell in enumerate(cells[:-1]))
            + cells[-1] for cells in rows]


def human_duration(seconds):
    """go-units' HumanDuration, docker's words for an age."""
    hours = int(seconds / 3600 + 0.5)
    for limit, text in ((1, "Less than a second"), (2, "1 second"),
                        (60, "%d seconds" % seconds), (120, "About a minute"),
                        (3600, "%d minutes" % (seconds // 60))):
        if seconds < limit:
            return text
    if hours == 1:
        return "About an hour"
    for limit, text in ((48, "%d hours" % hours), (24 * 7 * 2, "%d days" % (hours // 24)),
                        (24 * 30 * 2, "%d weeks" % (hours // 24 // 7)),
                        (24 * 365 * 2, "%d months" % (hours // 24 // 30))):
        if hours < limit:
            return text
    return "%d years" % (seconds // 3600 // 24 // 365)


def human_size(size, base=1000, units=("B", "kB", "MB", "GB", "TB", "PB"), precision=4):
    """go-units' HumanSize (decimal units) and, with base 1024 and binary
    units, its BytesSize: "0B", "1.234kB", "12.5MiB"."""
    unit = 0
    while size >= base and unit < len(units) - 1:
        size, unit = size / base, unit + 1
    return "%.*g%s" % (precision, size, units[unit])


def bytes_size(size):
    return human_size(size, 1024, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"))


def go_quote(text):
    """Go's strconv.Quote, as docker quotes a command: double quotes, and
    escapes for quotes, backslashes and everything not printable."""
    escapes = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n",
               "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append("\\x%02x" % code if code < 0x80 else "\\u%04x" % code if code < 0x10000
                       else "\\U%08x" % code)
    return '"' + "".join(out) + '"'


def container_state(record):
    """docker's State: "running"; "created" for one whose command never
    ran (its minidocker died before); "restarting" between two runs of a
    restart policy (its monitor lives on); else "exited"."""
    if is_running(record) and record["pid"]:
        return "running"
    if not record["pid"]:
        return "created"
    return "restarting" if owner_alive(record) else "exited"


def display_name(record):
    """The name, or for a container without one its short id (as inspect's
    Name): something to type back in its place."""
    return record.get("name") or record["id"][:12]


def ps_row(record, now, truncate):
    """One container as docker's ps formatter shows it: its fields by
    docker's names, every value a string."""
    state = container_state(record)
    command = record["command"][:1] + ["'%s'" % arg if " " in arg else arg
                                       for arg in record["command"][1:]]
    command = " ".join(command)
    if truncate and len(command) > 20:
        command = command[:19] + "…"
    if state == "running":
        status = "Up " + human_duration(now - record.get("started", record["created"]))
    elif state == "created":
        status = "Created"
    else:  # a code or an end its minidocker could not record (killed) is unknown: "?"
        status = "%s (%s)" % ("Restarting" if state == "restarting" else "Exited",
                              record.get("exit_code", "?"))
        if record.get("finished"):
            status += " %s ago" % human_duration(now - record["finished"])
    return {"ID": record["id"][:12] if truncate else record["id"],
            "Image": record.get("image") or record["rootfs"],
            "Command": go_quote(command),
            "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z %Z",
                                       time.localtime(record["created"])),
            "RunningFor": human_duration(now - record["created"]) + " ago",
            "Ports": displayable_ports(port_entries(port_map(record))),
            "State": state, "Status": status, "Names": display_name(record),
            "Labels": ",".join("%s=%s" % item for item in sorted(labels_of(record).items()))}


def labels_of(record):
    return record.get("config", {}).get("labels", {})


def port_entries(ports):
    """port_map's ports as the API's list: (port, host IP, host port,
    proto), a port only exposed with no IP and host port 0."""
    return [(int(key.split("/")[0]), ip, host, key.split("/")[1])
            for key, bindings in ports.items() for ip, host in bindings or [("", 0)]]


def displayable_ports(entries):
    """ps's PORTS, as Docker's formatter (DisplayablePorts) writes them
    from port_entries: a port published on the same host port, and one
    only exposed, join their neighbours in ranges
    ("0.0.0.0:80-81->80-81/tcp", "90-91/udp"), a range written out when
    the next port breaks it, the open ones after; a port published on
    another host port stands alone, at the end ("0.0.0.0:8080->80/tcp")."""

    def form(key, first, last):
        ip, proto = key
        span = str(first) if first == last else "%d-%d" % (first, last)
        return "%s/%s" % ("%s:%s->%s" % (ip, span, span) if ip else span, proto)

    shown, alone, groups = [], [], {}  # groups: (ip, proto) -> [first, last], in order of birth
    for port, ip, host, proto in sorted(entries):
        if ip and host != port:
            alone.append("%s:%d->%d/%s" % (ip, host, port, proto))
        elif (ip, proto) in groups and port == groups[ip, proto][1] + 1:
            groups[ip, proto][1] = port
        else:
            if (ip, proto) in groups:
                shown.append(form((ip, proto), *groups[ip, proto]))
            groups[ip, proto] = [port, port]  # a key keeps its place when its value changes
    return ", ".join(shown + [form(key, *span) for key, span in groups.items()] + alone)


# --format's fields, each with its column's header, as docker's ps has them.
PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
              "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS",
              "State": "STATE", "Status": "STATUS", "Names": "NAMES", "Labels": "LABELS"}
PS_TABLE = ("table {{.ID}}\\t{{.Image}}\\t{{.Command}}\\t{{.RunningFor}}\\t{{.Status}}"
            "\\t{{.Ports}}\\t{{.Names}}")
# What -f status= may ask for: docker's states (minidocker has no paused,
# removing or dead ones, so those match nothing).
PS_STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def parse_format(text, headers):
    """docker's --format, in the part of Go's templates that scripts use:
    "table" alone, or "table " before a template (a header line first,
    columns aligned), "json" (one JSON object a line), or a template of
    text and {{.Field}} placeholders ({{json .}}: the row; {{json .Field}}:
    one field, quoted), where \\t and \\n are a tab and a newline as docker
    reads them. -> (table?, [text, or (field or None for the whole row,
    as JSON?)])."""
    import re
    table = text in ("", "table") or text.startswith("table ")
    if text in ("", "table"):
        text = PS_TABLE
    elif text == "json":
        text = "{{json .}}"
    if text.startswith("table "):
        text = text[len("table "):]
    text = text.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    parts = []
    for index, piece in enumerate(re.split(r"{{(.*?)}}", text)):
        if index % 2 == 0:
            if "{{" in piece:
                raise MiniDockerError("invalid --format %s: an action opened with {{ is "
                                      "not closed" % quote(text))
            parts.append(piece)
            continue
        match = re.fullmatch(r"(json\s+)?\.([A-Za-z0-9_]*)", piece.strip())
        if not match:
            raise MiniDockerError("invalid --format: {{%s}} is not a template minidocker knows "
                                  "({{.Field}}, {{json .}}, {{json .Field}})" % piece)
        field = match.group(2) or None
        if field is not None and field not in headers:
            raise MiniDockerError("invalid --format: no field .%s (the fields are %s)"
                                  % (field, ", ".join(sorted(headers))))
        parts.append((field, bool(match.group(1))))
    return table, parts


def render(parts, row):
    def value(field, as_json):
        import json
        if field is None:
            return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return json.dumps(row[field], ensure_ascii=False) if as_json else row[field]
    return "".join(part if isinstance(part, str) else value(*part) for part in parts)


def parse_ps_filters(texts):
    """-f KEY=VALUE, repeatable: docker's status, name, id and label
    (label=KEY, or label=KEY=VALUE) -> {key: [values]}. Values of one key:
    any may match; of different keys: all must; but every label must."""
    filters = {}
    for text in texts:
        key, equals, value = text.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not equals:
            raise MiniDockerError("bad format of filter %s (expected name=value)" % quote(text))
        if key not in ("status", "name", "id", "label"):
            raise MiniDockerError("invalid filter %s: ps filters by status, name, id or label"
                                  % quote(key))
        if key == "label" and not value.partition("=")[0]:
            raise MiniDockerError("invalid filter %s: expected label=KEY or label=KEY=VALUE"
                                  % quote(text))
        if key == "status" and value not in PS_STATES:
            raise MiniDockerError("invalid filter 'status=%s': a status is one of %s"
                                  % (one_line(value, 80), ", ".join(PS_STATES)))
        filters.setdefault(key, []).append(value)
    return filters


def filter_matches(pattern, text):
    """docker's filters.Args.Match: equal, or the value, a regular
    expression, found anywhere in the text (so a part of a name or an id
    matches); one that does not compile matches nothing."""
    import re
    if pattern == text:
        return True
    try:
        return re.search(pattern, text) is not None
    except (re.error, RecursionError):
        return False


def ps_selected(record, state, filters):
    targets = {"status": [state], "id": [record["id"]],
               "name": [display_name(record), "/" + display_name(record)]}
    labels = labels_of(record)
    for value in filters.get("label", []):  # exact, as docker's MatchKVList
        key, equals, wanted = value.partition("=")
        if key not in labels or equals and labels[key] != wanted:
            return False
    return all(any(filter_matches(value, target) for value in values for target in targets[key])
               for key, values in filters.items() if key != "label")


def cmd_ps(args):
    """docker ps: running containers (-a: all; a status filter implies it),
    newest first, in docker's table or --format; -q their ids."""
    require_root_or_user("ps")  # the state trees are root's or the user's own alone
    paths = Paths()
    filters = parse_ps_filters(args.filter)
    table, parts = parse_format(args.format or "", PS_HEADERS)
    if args.quiet and args.format:
        warn("ignoring the custom format, because both --format and --quiet are set")
    reclaim_dead(paths)
    malformed, rows, now = [], [], time.time()
    for record in sorted(read_records(paths, malformed), key=lambda r: r["created"], reverse=True):
        state = container_state(record)
        if (args.all or "status" in filters or state == "running") \
                and ps_selected(record, state, filters):
            rows.append(ps_row(record, now, not args.no_trunc))
    if args.quiet:
        emit(row["ID"] for row in rows)
    elif table:
        emit(tabulate([render(parts, PS_HEADERS)] + [render(parts, row) for row in rows], 10))
    else:
        emit(render(parts, row) for row in rows)
    for name in malformed:
        warn("%s is not a valid container record: skipped (rm -f %s removes it)"
             % (os.path.join(paths.records, name), name[:-len(".json")]))
    return 0


PRUNE_WARNING = ("WARNING! This will remove all stopped containers.\n"
                 "Are you sure you want to continue?")


def confirmed(question):
    """docker's prompt: the question and " [y/N] " on stdout, then one line
    from stdin, whatever stdin is (`echo y |` answers too); y or Y is yes,
    anything else, or no line at all, is no."""
    emit([], question + " [y/N] ")
    answer = b""
    while not answer.endswith(b"\n") and len(answer) < 1024:
        byte = os.read(0, 1)
        if not byte:
            break
        answer += byte
    return answer.strip().lower() == b"y"


def layer_size(path):
    """Bytes in the files under a layer's upper/, each inode once (hard
    links), as docker counts what a container wrote; a part deeper than
    PATH_MAX (ENAMETOOLONG) goes uncounted."""
    seen, total, pending = set(), 0, [path]
    while pending:
        directory = pending.pop()
        with suppress(OSError):  # ENOENT: gone meanwhile; ENAMETOOLONG
            with os.scandir(directory) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(entry.path)
                    elif (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_size
    return total


def prune_shifted_copies(paths):
    """The shifted copies of ROOTFS (chapter 7, continued) that no record
    names any more, removed, with the half-made ones of runs that died;
    returns their bytes. Under userns.lock, which a run with a user
    namespace holds while it stores its record: a copy a container still
    runs from, or is about to, is kept."""
    if not os.path.isdir(paths.shifted):
        return 0
    space = 0
    with state_lock(paths, "userns.lock"):
        used = set()
        for record in read_records(paths):
            maps = record.get("id_maps")
            if not maps or maps.get("rootless"):
                continue
            try:
                rootfd = os.open(record["rootfs"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:  # its ROOTFS is gone: so is any claim on a copy
                continue
            try:
                used.add(os.path.basename(shifted_root_path(paths.shifted, rootfd, maps)))
            finally:
                os.close(rootfd)
        for name in os.listdir(paths.shifted):
            building = name.rsplit(".tmp-", 1)
            if name in used or len(building) == 2 and is_number(building[1]) and \
                    process_start_time(int(building[1])) is not None:
                continue
            copy = os.path.join(paths.shifted, name)
            space += layer_size(copy)
            remove_tree(copy)
    return space


def cmd_container_prune(args):
    """docker container prune: every stopped container removed, as rm
    removes one; running and starting ones are not touched. Without -f,
    docker's question first; "no" ends it quietly (exit 0), as docker."""
    require_root_or_user("container prune")
    paths = Paths()
    if not args.force and not confirmed(PRUNE_WARNING):
        return 0
    reclaim_dead(paths)
    deleted, space, kept = [], 0, 0
    for record in read_records(paths):
        with container_lock(paths, record["id"]):  # a start at the same time: one wins
            record = read_record(paths, record["id"])
            if record is None or is_running(record):
                continue
            size = layer_size(os.path.join(paths.layer(record["id"]), "upper"))
            try:
                remove_container(paths, record)
            except LayerError as err:  # the others still go
                warn(str(err))
                kept += 1
                continue
            deleted.append(record["id"])
        space += size
    space += prune_shifted_copies(paths)
    emit((["Deleted Containers:"] + deleted + [""] if deleted else [])
         + ["Total reclaimed space: " + human_size(space)])
    if kept:
        raise MiniDockerError("%d stopped container%s could not be removed (above)"
                              % (kept, "s" if kept > 1 else ""))
    return 0


def cmd_volume_create(args):
    """docker volume create [NAME]: made when missing (an existing one is
    fine, as Docker's), a random 64-hex name without one; prints it."""
    require_root_or_user("volume create")
    paths = Paths()
    name = check_name(args.name, "volume name") if args.name else os.urandom(32).hex()
    with state_lock(paths, "volumes.lock"):
        create_volume(paths, name)
    print(name)
    return 0


def cmd_volume_ls(args):
    require_root_or_user("volume ls")
    names = volume_names(Paths())
    emit(names if args.quiet else
         tabulate(["DRIVER\tVOLUME NAME"] + ["local\t" + name for name in names], 10))
    return 0


def cmd_volume_inspect(args):
    """A JSON array, one object per volume, in Docker's shape."""
    require_root_or_user("volume inspect")
    paths = Paths()
    found = []
    for name in args.names:
        path = volume_dir(paths, name)
        if not os.path.isdir(path):
            raise MiniDockerError("no such volume: %s" % name)
        meta = volume_meta(paths, name)
        created = meta.get("created") if isinstance(meta.get("created"), (int, float)) \
            else os.stat(path).st_mtime
        found.append({
            "CreatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
            "Driver": "local",
            "Labels": {"com.docker.volume.anonymous": ""} if meta.get("anonymous") else {},
            "Mountpoint": os.path.join(path, "_data"), "Name": name, "Options": {},
            "Scope": "local"})
    print(to_json(found, indent=4))
    return 0


def cmd_volume_rm(args):
    """docker volume rm [-f] NAME...: refused while a container uses it,
    running or stopped, whatever -f says (Docker's -f only makes a missing
    volume no error). Under volumes.lock: a run taking the volume at the
    same time either sees it gone and makes it anew, or is seen using it."""
    require_root_or_user("volume rm")
    paths = Paths()
    reclaim_dead(paths)
    failed = []
    for name in args.names:
        with state_lock(paths, "volumes.lock"):
            users = volumes_in_use(paths).get(check_name(name, "volume name"))
            if users:
                failed.append("volume %s is in use by container %s" % (name, users[0][:12]))
                continue
            if not os.path.isdir(volume_dir(paths, name)):
                if not args.force:
                    failed.append("no such volume: %s" % name)
                    continue
            else:
                delete_volume(paths, name)
        print(name)
    if failed:  # the others are removed, as Docker's; one line for all
        raise MiniDockerError("; ".join(failed))
    return 0


VOLUME_PRUNE_WARNINGS = {
    False: "WARNING! This will remove anonymous local volumes not used by at least one "
           "container.\nAre you sure you want to continue?",
    True: "WARNING! This will remove all local volumes not used by at least one container.\n"
          "Are you sure you want to continue?"}


def cmd_volume_prune(args):
    """docker volume prune [-a] [-f]: the volumes no container uses, running
    or stopped; since Docker 23 only the anonymous ones unless -a."""
    require_root_or_user("volume prune")
    paths = Paths()
    if not args.force and not confirmed(VOLUME_PRUNE_WARNINGS[args.all]):
        return 0
    reclaim_dead(paths)
    deleted, space = [], 0
    with state_lock(paths, "volumes.lock"):
        used = volumes_in_use(paths)
        for name in volume_names(paths):
            if name in used or not (args.all or volume_meta(paths, name).get("anonymous")):
                continue
            size = layer_size(os.path.join(volume_dir(paths, name), "_data"))
            delete_volume(paths, name)
            deleted.append(name)
            space += size
    emit((["Deleted Volumes:"] + deleted + [""] if deleted else [])
         + ["Total reclaimed space: " + human_size(space)])
    return 0

def cmd_rename(args):
    """docker rename: a new name, for a running or a stopped container,
    checked and written under names.lock (as run --name takes one), so of
    two renames to one name one wins."""
    require_root_or_user("rename")
    paths = Paths()
    new = check_name(args.new[1:] if args.new.startswith("/") else args.new, "new name")
    cid = find_container(paths, args.container)["id"]
    with state_lock(paths, "names.lock"):
        record = read_record(paths, cid)  # as it is now, under the lock
        if record is None:
            raise MiniDockerError("no such container: %s (removed meanwhile)" % args.container)
        if record.get("name") == new:
            raise MiniDockerError("container %s is already named %s" % (cid[:12], new))
        taken = [r["id"] for r in read_records(paths) if r.get("name") == new]
        if taken:
            raise MiniDockerError("the name %s is already in use by container %s: remove or "
                                  "rename that container to reuse it" % (new, taken[0][:12]))
        record["name"] = new
        store_record(paths, record)
    return 0


# top's columns, those of `ps -ef`, which docker top runs by default.
TOP_COLUMNS = ("UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD")


def tty_name(number):
    """stat's tty_nr (major in bits 8-15, minor in 0-7 and 20-31) as ps
    names it (<linux/major.h>: 136-143 are the pseudo-terminals, 4 the
    virtual consoles and serial ports); "?" for none."""
    major, minor = (number >> 8) & 0xfff, (number & 0xff) | ((number >> 12) & 0xfff00)
    if 136 <= major <= 143:
        return "pts/%d" % ((major - 136) * 256 + minor)
    if major == 4:
        return "tty%d" % minor if minor < 64 else "ttyS%d" % (minor - 64)
    return "console" if (major, minor) == (5, 1) else "?"


def process_row(pid, clock):
    """One line of `ps -ef` for this pid, from /proc, computed as procps-ng
    4 does; None once the process is gone. `clock`: (ticks a second, the
    boot time, seconds since boot). CMD is the process's own text, so what
    is not printable shows as "?", as ps shows it: a container must not
    write escape sequences to the terminal of whoever looks."""
    import pwd
    hertz, boot, uptime = clock
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            head, _, rest = handle.read().rpartition(b")")
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
        uid = int(proc_values(read_text("/proc/%d/status" % pid), "Uid")[1])  # effective
    except (OSError, ValueError, IndexError):  # ENOENT, ESRCH: it ended meanwhile
        return None
    fields = rest.split()  # fields[0] is stat's field 3, the state
    ppid, tty, started = int(fields[1]), int(fields[4]), int(fields[19])
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    alive = uptime * hertz - started  # in ticks
    cpu = min(int(ticks * 100 / alive), 99) if alive > 0 else 0  # C: percent of its life, on CPU
    start = time.localtime(boot + started // hertz)
    today = time.localtime()
    when = "%Y" if start.tm_year != today.tm_year else \
        "%b%d" if start.tm_yday != today.tm_yday else "%H:%M"
    seconds = ticks // hertz
    used = "%02d:%02d:%02d" % (seconds // 3600 % 24, seconds // 60 % 60, seconds % 60)
    if seconds >= 86400:
        used = "%d-%s" % (seconds // 86400, used)
    command = b" ".join(argv).rstrip(b" ") if argv[0] else b""
    if not command:  # a kernel thread, or a zombie: its name in brackets
        command = b"[%s]%s" % (head.partition(b"(")[2], b" <defunct>" if fields[0] == b"Z" else b"")
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # not in the host's /etc/passwd: the number, as ps
        user = str(uid)
    return (user, str(pid), str(ppid), str(cpu), time.strftime(when, start), tty_name(tty),
            used, "".join(c if c.isprintable() else "?"
                          for c in command.decode("utf-8", "replace")))


def proc_values(text, name):
    """The values on the line of `name` ("Name:" in /proc/PID/status and
    /proc/meminfo, "name" in /proc/stat)."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in (name, name + ":"):
            return words[1:]
    raise ValueError("no %s line" % name)


def cmd_top(args):
    """docker top: the container's processes (those in its cgroups and
    below), in ps -ef's columns, read from /proc."""
    require_root_or_user("top")
    paths = Paths()
    reclaim_dead(paths)
    record = find_container(paths, args.container)
    if container_state(record) != "running":
        raise MiniDockerError("container %s is not running" % record["id"][:12])
    boot = int(proc_values(read_text("/proc/stat"), "btime")[0])
    clock = (os.sysconf("SC_CLK_TCK"), boot, float(read_text("/proc/uptime").split()[0]))
    rows = [row for row in (process_row(pid, clock) for pid in cgroup_processes(record["cgroups"]))
            if row is not None]
    emit(tabulate(["\t".join(row) for row in [TOP_COLUMNS] + rows], 20))
    return 0


STATS_COLUMNS = ("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS")


def host_memory():
    """MemTotal of /proc/meminfo, in bytes: docker's limit for a container
    that has none."""
    return int(proc_values(read_text("/proc/meminfo"), "MemTotal")[0]) * 1024


def stats_row(record, previous, now, truncate, memory_total):
    """docker stats' line for one container. CPU % is the CPU time it used
    since the last sample over the wall time between them (100% is one
    CPU busy); memory leaves out the inactive page cache, as docker does;
    the limit is the container's, or the host's memory when it has none
    (or a larger one). A container not running shows zeros, as docker."""
    cid = record["id"][:12] if truncate else record["id"]
    usage = cgroup_usage(record["cgroups"]) if container_state(record) == "running" else {}
    cpu_seconds, cpu = usage.get("cpu_seconds"), 0.0
    before = previous.get(record["id"])
    if cpu_seconds is not None and before is not None and before[1] is not None and now > before[0]:
        cpu = max(cpu_seconds - before[1], 0) / (now - before[0]) * 100
    previous[record["id"]] = (now, cpu_seconds)
    memory, inactive = usage.get("memory") or 0, usage.get("inactive_file") or 0
    if inactive < memory:
        memory -= inactive
    limit = min(usage.get("memory_limit") or memory_total, memory_total) if usage else 0
    return (cid, display_name(record), "%.2f%%" % cpu,
            "%s / %s" % (bytes_size(memory), bytes_size(limit)),
            "%.2f%%" % (memory * 100 / limit if limit else 0), str(usage.get("pids") or 0))


def stats_records(paths, chosen):
    """The containers to show now: those named (as long as they exist), or
    every running one."""
    if chosen:
        return [record for record in (read_record(paths, cid) for cid in chosen) if record]
    return [record for record in read_records(paths) if container_state(record) == "running"]


def cmd_stats(args):
    """docker stats: CPU, memory and tasks of running containers (or those
    named) from their cgroups, a new table every second until ^C, over the
    last one on a terminal; --no-stream: one table, a second after a first
    sample (CPU % needs two)."""
    require_root_or_user("stats")
    paths = Paths()
    reclaim_dead(paths)
    chosen = [find_container(paths, ref)["id"] for ref in args.containers]
    memory_total, previous = host_memory(), {}
    clear = "\033[2J\033[H" if os.isatty(1) and not args.no_stream else ""
    try:
        for record in stats_records(paths, chosen):
            stats_row(record, previous, time.monotonic(), True, memory_total)
        while True:
            time.sleep(1)
            rows = [stats_row(record, previous, time.monotonic(), not args.no_trunc, memory_total)
                    for record in stats_records(paths, chosen)]
            emit(tabulate(["\t".join(row) for row in [STATS_COLUMNS] + rows], 10), clear)
            if args.no_stream:
                return 0
    except MiniDockerError as err:  # ^C is how a stream ends: no error line
        if err.code == 128 + signal.SIGINT and not args.no_stream:
            return err.code
        raise

# === 12. (continued) Images: pull, load, save, images, rmi, tag ===
# Image commands need root (README: limits): the store is root's, and pull
# and load make its whiteouts and device nodes with mknod(2).

def cmd_pull(args):
    require_root("pull")
    paths = Paths()
    ref = parse_reference(args.image)
    platform = args.platform or host_platform()
    parse_platform(platform)
    credentials = registry_credentials(args)
    before = read_tags(paths).get(str(ref)) if ref.tag else None
    with state_lock(paths, "images.gc", shared=True):
        image_id, digest = pull_image(paths, ref, platform, credentials, args.insecure_registry,
                                      sys.stdout)
    shown = familiar_name(ref.name) + (":" + ref.tag if ref.tag else "@" + ref.digest)
    emit(["Digest: %s" % digest, "Status: %s for %s" % (
        "Image is up to date" if before == image_id else "Downloaded newer image", shown),
        str(ref)])
    return 0


def cmd_load(args):
    require_root("load")
    paths = Paths()
    if args.input:
        try:
            source = open(args.input, "rb")
        except OSError as err:
            raise MiniDockerError("load -i %s: %s" % (args.input, err.strerror)) from None
    else:
        if os.isatty(0):
            raise MiniDockerError("load: stdin is a terminal: give -i FILE or pipe an archive")
        source = open(0, "rb", closefd=False)
    with source, state_lock(paths, "images.gc", shared=True):
        loaded = load_archive(paths, source, "load %s" % (args.input or "(stdin)"))
    for names, image_id in loaded:
        emit(["Loaded image: %s" % familiar_name(name) for name in names] or
             ["Loaded image ID: %s" % image_id])
    return 0


def cmd_save(args):
    require_root("save")
    paths = Paths()
    records = [existing_image(paths, text) for text in args.images]
    if not args.output and os.isatty(1):
        raise MiniDockerError("save: refusing to write an archive to a terminal: give -o FILE "
                              "or redirect stdout")
    tags = read_tags(paths)
    if not args.output:
        with open(1, "wb", closefd=False) as out, state_lock(paths, "images.gc", shared=True):
            save_images(paths, records, tags, out)
        return 0
    temporary = "%s.tmp-%d" % (args.output, os.getpid())
    try:
        # (shared with pulls: an rmi or prune meanwhile removes no blob)
        with open(temporary, "xb") as out, state_lock(paths, "images.gc", shared=True):
            save_images(paths, records, tags, out)
        os.rename(temporary, args.output)
    except BaseException as err:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(err, OSError):
            raise MiniDockerError("save -o %s: %s" % (args.output, err.strerror or err)) from None
        raise
    return 0


def existing_image(paths, text):
    record = find_image(paths, text)
    if record is None:
        raise MiniDockerError("no such image: %s" % quote(text))
    return record


IMAGES_HEADERS = ("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")


def cmd_images(args):
    """docker images: one row per tag, untagged images as <none>."""
    require_root("images")
    if args.format not in (None, "json"):
        raise MiniDockerError("invalid --format %s: json is the one format images writes"
                              % quote(args.format))
    paths = Paths()
    tags, rows, now = read_tags(paths), [], time.time()
    for record in sorted(read_images(paths), key=lambda r: r.get("created", ""), reverse=True):
        names = image_names(tags, record["id"]) or [None]
        for name in names:
            repository, tag = ("<none>", "<none>") if name is None else \
                (familiar_name(name.rpartition(":")[0]), name.rpartition(":")[2])
            rows.append({"Repository": repository, "Tag": tag, "ID": record["id"],
                         "CreatedAt": record.get("created", ""),
                         "CreatedSince": created_since(record.get("created"), now),
                         "Size": human_size(record["size"])})
    if args.quiet:
        emit(sorted(set(row["ID"][7:19] for row in rows)))
    elif args.format == "json":
        emit(to_json(row) for row in rows)
    else:
        emit(tabulate(["\t".join(IMAGES_HEADERS)] +
                      ["\t".join((r["Repository"], r["Tag"], r["ID"][7:19], r["CreatedSince"],
                                  r["Size"])) for r in rows], 3))
    return 0


def created_since(created, now):
    """An image's age in docker's words, from its config's RFC 3339 time."""
    import datetime
    try:
        when = datetime.datetime.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")
    except (TypeError, ValueError):
        return "N/A"
    seconds = now - when.replace(tzinfo=datetime.timezone.utc).timestamp()
    return human_duration(max(seconds, 0)) + " ago"


def cmd_tag(args):
    require_root("tag")
    paths = Paths()
    record = existing_image(paths, args.source)
    name = str(parse_reference(args.target))
    if "@" in name:
        raise MiniDockerError("tag %s: a target cannot have a digest" % quote(args.target))
    with state_lock(paths, "images.lock"):
        tags = read_tags(paths)
        tags[name] = record["id"]
        write_tags(paths, tags)
    return 0


def cmd_rmi(args):
    """docker rmi: a tag of an image with other tags is only untagged; an
    image's last tag, or its id, removes it, and its layers no other image
    uses. Refused while a container (running or not) uses it: its layers
    are that container's lower directories."""
    require_root("rmi")
    paths = Paths()
    with state_lock(paths, "images.gc"):
        for text in args.images:  # as rm: the first that fails ends the command
            emit(remove_image_by_name(paths, text, args.force))
    return 0


def remove_image_by_name(paths, text, force):
    with state_lock(paths, "images.lock"):
        record = existing_image(paths, text)
        tags = read_tags(paths)
        names = image_names(tags, record["id"])
        by_tag = [name for name in names if tag_matches(name, text)]
        if by_tag and len(names) > 1:
            del tags[by_tag[0]]
            write_tags(paths, tags)
            return ["Untagged: " + familiar_name(by_tag[0])]
        if len(names) > 1 and not force:
            raise MiniDockerError("conflict: unable to delete %s (must be forced): image is "
                                  "referenced in %d tags" % (record["id"][7:19], len(names)))
        users = [r["id"][:12] for r in read_records(paths) if r.get("image_id") == record["id"]]
        if users:
            raise MiniDockerError("conflict: unable to delete %s: image is used by container%s "
                                  "%s" % (record["id"][7:19], "s" if len(users) > 1 else "",
                                          ", ".join(users)))
        remove_image(paths, record, tags)
        collect_garbage(paths)
    return ["Untagged: " + familiar_name(name) for name in names] + ["Deleted: " + record["id"]]


def tag_matches(name, text):
    try:
        return str(parse_reference(text)) == name
    except MiniDockerError:
        return False


def cmd_image_inspect(args):
    """A JSON array, one object per image, in Docker's shape."""
    require_root("image inspect")
    paths = Paths()
    tags, result = read_tags(paths), []
    for text in args.images:
        record = existing_image(paths, text)
        config = image_config(paths, record)
        result.append({
            "Id": record["id"], "RepoTags": [familiar_name(n) for n in
                                             image_names(tags, record["id"])],
            "RepoDigests": [familiar_name(d.partition("@")[0]) + "@" + d.partition("@")[2]
                            for d in record["digests"]],
            "Created": record["created"], "Architecture": record["architecture"],
            "Os": record["os"], "Size": record["size"], "Config": config.get("config") or {},
            "RootFS": {"Type": "layers", "Layers": [l["diff_id"] for l in record["layers"]]}})
    emit([to_json(result, indent=4)])
    return 0


def cmd_image_prune(args):
    """Untagged images no container uses (-a: every image no container
    uses), and what a killed pull or load left half-written."""
    require_root("image prune")
    paths = Paths()
    if not args.force and not confirmed("WARNING! This will remove all %simages not used by a "
                                        "container." % ("" if args.all else "dangling ")):
        return 0
    lines = []
    with state_lock(paths, "images.gc"), state_lock(paths, "images.lock"):
        tags, used = read_tags(paths), images_in_use(paths)
        for record in read_images(paths):
            if record["id"] not in used and (args.all or not image_names(tags, record["id"])):
                lines += ["untagged: " + familiar_name(n) for n in image_names(tags, record["id"])]
                remove_image(paths, record, tags)
                lines.append("deleted: " + record["id"])
        collect_garbage(paths)
        remove_stale_image_temporaries(paths)
    emit(lines)
    return 0


def remove_stale_image_temporaries(paths):
    """.tmp-PID-... blobs and layers of a pull or load that died."""
    import re
    for directory in (os.path.dirname(blob_path(paths, "sha256:")),
                      os.path.join(paths.images, "layers")):
        with suppress(FileNotFoundError):
            for name in os.listdir(directory):
                match = re.search(r"\.tmp-([0-9]+)-[0-9a-f]+$", name)
                if match and process_start_time(int(match.group(1))) is None:
                    path = os.path.join(directory, name)
                    if os.path.isdir(path):
                        remove_tree(path)
                    else:
                        os.unlink(path)


# === 12. (continued) The OCI runtime: runc's command line over a bundle ===
# podman (through conmon), containerd's runc shim and CRI-O reach a runtime
# through one door: runc's command line. Started as `minidocker.py runc
# ...`, or under a name ending in "runc" (the `minidocker-runc` link that
# `install` makes), minidocker speaks it. A container's life, as runc lives
# it and the runtime spec (runtime.md) describes it:
#
#   create ID --bundle DIR   the container is built to the last step before
#                            its execve: the process waits there, on a fifo
#                            (exec.fifo) in the state directory; the runtime
#                            exits, and the caller (conmon, the shim) is left
#                            with the pid, as a subreaper, to reap it
#   start ID                 opens the fifo: the process writes a byte to it
#                            and execs the command
#   state ID                 the spec's state JSON: creating, created,
#                            running, paused or stopped, and the pid
#   kill ID [SIGNAL]         a signal to it (--all: to all of its cgroup)
#   delete [--force] ID      everything it had goes: the cgroups, the state,
#                            then the poststop hooks
#   run ID                   create and start, and with no --detach, wait
#                            for it and delete it, its exit code ours
#   exec ID CMD | --process  one more process in it, as `minidocker exec`
#
# Its state is a directory per container under --root (ROOT/ID, root's
# alone): state.json (written atomically, so any command reads the whole
# of it) and the fifo while the container is created. The container's
# init is known by its pid and start time, as a record's (chapter 4): a
# reused pid is no container of ours. Errors are one line on stderr (and
# in --log, as --log-format says), exit code 1, as runc's.

# --- The lean runc verbs: from here to their end, this part also runs alone ---
# After create, runc's callers run start and then delete, each a program
# of its own: 20 ms each as minidocker, against 8 for runc's, where the
# interpreter alone takes 8-10 (.ci/bench goal 9); the rest was the load
# of minidocker, for a few system calls. So the installed launcher runs
# this part alone first, from its bytecode beside the installed file
# (install writes it; lean_runc): it does the plain case, a created
# container started, or a stopped one deleted, with no hooks to run, and
# hands everything else to minidocker, untouched (None), whose checks and
# messages are the full ones; but a start that finds another took the
# init's byte says so itself, as only it can (release_init). Alone, it
# imports posix, os's C part, under the name os: importing os itself
# takes 1.3 ms, most of a lean verb's own time. So this part calls only
# what posix has (no os.path), and the same code runs on the real os
# inside minidocker. It also imports select and _json (the C scanner and
# encoder under json), and uses nothing else of the file, whose
# runc_start, runc_log and RuncState use it in turn. The tests run this
# part as the launcher gets it.

RUNC_ROOT = "/run/minidocker-runc"  # runc's own is /run/runc: ours never mixes with it
RUNC_EXIT = 1
# An id's characters: ASCII_ALNUM's (chapter 1), written out here, and _+-.
RUNC_ID = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-."


def process_start_time(pid):
    """Field 22 of /proc/PID/stat: tells a live pid from a reused one. None
    for a process that is gone, or a zombie (state Z, field 3): a killed
    minidocker whose parent has not reaped it yet owns nothing any more."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else int(fields[19])


def release_init(fifo, pid, pid_start):
    """runc's start: read the one byte a created init writes into its exec
    fifo (it opens its end at once, and waits there; chapter 12), then the
    end of file its execve brings (the fifo is CLOEXEC in it) -> "started";
    "taken" when another start read the byte first, "ended" when the init
    died before. The start that started it removes the fifo (so a lean
    start that hands over leaves minidocker's the same answer).
    FileNotFoundError: no fifo, started already."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while True:
            if select.select([fd], [], [], 0.1)[0]:
                if os.read(fd, 1):
                    break
                # End of file: the init wrote its one byte and closed, and
                # another start read it (select would say so forever).
                return "taken"
            if process_start_time(pid) != pid_start:
                return "ended"
        os.set_blocking(fd, True)
        os.read(fd, 1)  # EOF: the init has exec'd its command (or is gone)
    finally:
        os.close(fd)
    try:
        os.unlink(fifo)
    except FileNotFoundError:  # (a delete -f meanwhile)
        pass
    return "started"


def runc_log_line(log_format, level, message, moment):
    """A line of --log, as runc's logrus writes it: --log-format json or
    text."""
    quoted = _json.encode_basestring_ascii  # json.dumps of a str, to the byte
    if log_format == "json":
        return '{"level": %s, "msg": %s, "time": %s}\n' % (quoted(level), quoted(message),
                                                            quoted(moment))
    return "time=%s level=%s msg=%s\n" % (quoted(moment), level, quoted(message))


def lean_error(message, log, log_format):
    """A lean verb's error, as minidocker-runc's (run_runc, main): one line
    on stderr and in --log; runc's exit code."""
    try:
        os.write(2, ("minidocker: %s\n" % message).encode(errors="replace"))
    except OSError:  # EBADF: the caller closed our stderr; --log may still have it
        pass
    if log:
        import time  # (only here: its import reads the time zone)
        try:
            with open(log, "a") as handle:
                handle.write(runc_log_line(log_format, "error", message, time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        except OSError:  # as runc_log: the log is the caller's; stderr has the line
            pass
    return RUNC_EXIT


class LeanJson:
    """What _json's scanner reads of a decoder (chapter 4's JsonDefaults
    in short): enough for the state.json runc's create writes (to_json)."""
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, float


def lean_runc_command(argv):
    """The launcher's argv -> (root, log, log format, [verb, id]) of a
    runc command line lean_runc may take; None for any other."""
    words = argv[1:]
    if words[:1] == ["runc"]:
        words = words[1:]
    elif not argv[0].endswith("runc"):
        return None
    root, log, log_format = RUNC_ROOT, None, "text"
    while words and words[0].startswith("--"):  # runc's global flags (--debug and the
        flag, equals, value = words[0].partition("=")  # others: minidocker's)
        if flag not in ("--root", "--log", "--log-format"):
            return None
        if not equals:
            if len(words) < 2:
                return None
            value, words = words[1], words[1:]
        words = words[1:]
        if flag == "--root":
            root = value
        elif flag == "--log":
            log = value
        else:
            log_format = value
    if words[:1] == ["delete"] and words[1:2] in (["-f"], ["--force"]):
        words = words[:1] + words[2:]
    if len(words) != 2 or words[0] not in ("start", "delete") or not words[1] \
            or words[1].strip(RUNC_ID) or words[1] in (".", ".."):
        return None
    return root, log, log_format, words


def lean_runc(argv):
    """The launcher's argv -> the exit code of a start or delete done
    here, or None: minidocker does it. Here: `[--root DIR] [--log FILE]
    [--log-format F] start ID`, of a created container without poststart
    hooks, and `... delete [-f] ID` of a stopped one without poststop
    hooks, whose cgroups are empty and whose directory holds only
    state.json (and the fifo of a create never started). A step that
    fails hands over before the state is gone: the full delete does all
    of it again. A start that finds another took the init's byte, or
    the init dead, fails here, with minidocker's message: minidocker's
    start, opening the fifo after the init closed it, would wait."""
    command = lean_runc_command(argv)
    if command is None:
        return None
    root, log, log_format, words = command
    if not root:
        return None
    directory = "%s/%s" % (root, words[1])
    try:
        with open(directory + "/state.json", "rb") as handle:
            text = handle.read().decode()
        state, end = _json.make_scanner(LeanJson())(text, 0)
        pid, pid_start, cgroups = state["pid"], state.get("pid_start"), state["cgroups"]
        hooks = state.get("config", {}).get("hooks") or {}
        if end != len(text) or not isinstance(pid, int) or pid <= 0 \
                or not all(isinstance(path, str) for path in cgroups):
            return None
    except Exception:  # no such container, or a state not ours to read here
        return None
    fifo, alive = directory + "/exec.fifo", process_start_time(pid) == pid_start
    if words[0] == "start":
        if not alive or hooks.get("poststart"):
            return None
        try:
            released = release_init(fifo, pid, pid_start)
        except OSError:  # ENOENT: no fifo (started), or gone meanwhile
            return None
        if released == "taken":
            return lean_error("cannot start an already running container", log, log_format)
        if released == "ended":
            return lean_error("container %s: its process ended before start" % words[1], log,
                              log_format)
        return 0
    if alive or hooks.get("poststop"):
        return None
    try:
        for path in reversed(cgroups):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
        names = os.listdir(directory)
        if not set(names) <= {"state.json", "exec.fifo"}:
            return None
        for name in sorted(names):  # exec.fifo, then state.json
            os.unlink("%s/%s" % (directory, name))
        os.rmdir(directory)
    except OSError:  # EBUSY: processes left in a cgroup, for the full delete to kill
        return None
    return 0

# --- The lean runc verbs end ---


class RuncState:
    """One container's directory under --root, and what state.json says."""

    def __init__(self, root, cid):
        if not cid or cid.strip(RUNC_ID) or cid in (".", ".."):
            raise MiniDockerError("invalid container id %s: letters, digits and _+-. only"
                                  % quote(cid or ""))
        self.id, self.dir = cid, os.path.join(root, cid)
        self.fifo = os.path.join(self.dir, "exec.fifo")
        self.data = None

    def load(self):
        try:
            with open(os.path.join(self.dir, "state.json")) as handle:
                self.data = from_json(handle.read())
        except FileNotFoundError:
            raise MiniDockerError("container %s does not exist" % self.id)
        except ValueError:  # not JSON (save() is atomic: damaged, or not ours): stopped, so
            # that delete takes the directory; cgroups it may name are unknown
            self.data = {"id": self.id, "pid": 0, "cgroups": [], "bundle": "", "config": {}}
        return self

    def save(self):
        write_file_atomically(os.path.join(self.dir, "state.json"),
                              to_json(self.data).encode(), 0o600)

    def alive(self):
        pid = self.data.get("pid") or 0
        return pid > 0 and process_start_time(pid) == self.data.get("pid_start")

    def status(self):
        if not self.data.get("pid"):
            # Creating while its `create` lives (a create killed halfway
            # left a stopped container, for delete to reclaim).
            creator = self.data.get("creator") or 0
            return "creating" if self.data.get("creating") and creator > 0 and \
                process_start_time(creator) == self.data.get("creator_start") else "stopped"
        if not self.alive():
            return "stopped"
        if os.path.exists(self.fifo):
            return "created"
        return "paused" if cgroups_frozen(self.data["cgroups"]) else "running"

    def oci(self, status=None):
        """The state the runtime spec defines (what `state` prints and a
        hook reads), with runc's extra fields."""
        status = status or self.status()
        return {"ociVersion": OCI_VERSION, "id": self.id, "status": status,
                "pid": self.data.get("pid", 0) if status != "stopped" else 0,
                "bundle": self.data.get("bundle", ""),
                "rootfs": self.data.get("rootfs", ""), "created": self.data.get("created", ""),
                "owner": "", "annotations": self.data.get("annotations", {})}


def runc_create(args, foreground=False):
    """create and run: the container built to its fifo (create, run
    --detach) or to its command (a foreground run, which waits for it).
    Returns (RuncState, Spec, pid, the pty master or None, the SignalPipe,
    signals pending); the pipe is closed unless `foreground`."""
    spec, state = claim_runc_state(args, foreground)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING_SIGNALS)
    signals, made, pid, console = None, [], None, None
    try:
        layout = detect_cgroups(read_text("/proc/self/mountinfo"), read_text("/proc/self/cgroup"))
        discard_v1_only(spec.resources, layout)
        plan = plan_cgroups(spec.resources, layout, state.id, None, spec.cgroup_path)
        # The first state, "creating", names the cgroups before they are
        # made: a create killed from here on leaves delete what to remove.
        state.data["cgroups"] = [path for _, _, path, _ in plan]
        state.save()
        made = create_cgroups(plan, spec.resources)
        if not foreground:
            os.mkfifo(state.fifo, 0o622)
            if spec.userns:  # the init reopens it as its user namespace's root, as runc's does
                os.chown(state.fifo, *mapped_root(spec.userns))
            spec.exec_fifo = os.open(state.fifo, O_PATH | os.O_CLOEXEC)
        if args.console_socket:
            console = connect_console_socket(args.console_socket)
        instance = Instance(state.id, None, spec.hostname, [], state.oci("creating"),
                            cgroup_view_dirs(plan, layout), id_maps=spec.userns)
        signals = SignalPipe()
        entry = None if spec.userns else CgroupEntry(made)  # as run_container's
        try:
            if entry is not None:
                entry.open()
            pid, master, pending = start_container(
                spec, instance, signals,
                lambda child: join_cgroups(made if entry is None else entry.rest(), child),
                lambda: None, console, entry)
        finally:
            if entry is not None:
                entry.close()
        state.data.update(pid=pid, pid_start=process_start_time(pid), creating=False)
        state.save()
        if args.pid_file:
            write_file_atomically(os.path.abspath(args.pid_file), b"%d" % pid, 0o644)
    except BaseException:
        if signals is not None:
            signals.close()
        remove_cgroups(made)
        shutil_rmtree(state.dir)
        raise
    finally:
        if spec.exec_fifo is not None:
            os.close(spec.exec_fifo)
    if not foreground:
        signals.close()
    return state, spec, pid, master, signals, pending


def claim_runc_state(args, foreground):
    """create's checks, then the container's state directory, made: the
    one step that two creates of one id cannot both take. -> (Spec,
    RuncState)."""
    require_root("runc create")
    if getattr(args, "no_pivot", False):
        warn("--no-pivot: the root is entered with pivot_root all the same")
    bundle = os.path.abspath(args.bundle or ".")
    config = load_config(bundle)
    spec = oci_spec(config, bundle)
    spec.preserve_fds = args.preserve_fds + int(os.environ.get("LISTEN_FDS", "0") or 0)
    spec.tied = foreground
    if spec.tty and not foreground and not args.console_socket:
        raise MiniDockerError("cannot allocate tty if runc will detach without setting "
                              "console socket")
    if not spec.tty and args.console_socket:
        raise MiniDockerError("cannot use console socket if runc will not detach or "
                              "allocate tty")
    state = RuncState(args.root, args.container)
    os.makedirs(args.root, 0o700, exist_ok=True)
    try:
        os.mkdir(state.dir, 0o700)
    except FileExistsError:
        raise MiniDockerError("container with id exists: %s" % state.id)
    state.data = {"id": state.id, "pid": 0, "creating": True, "bundle": bundle,
                  "creator": os.getpid(), "creator_start": process_start_time(os.getpid()),
                  "rootfs": spec.rootfs, "config": config, "cgroups": [],
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "annotations": spec.annotations}
    return spec, state


def cgroup_view_dirs(plan, layout):
    """The cgroup plan -> [(name under /sys/fs/cgroup, the directory)] that
    bind_cgroup_dirs binds, as runc does: on a v1 or hybrid host the v1
    hierarchies alone, on a cgroup2 one its one directory (name "")."""
    return [("" if mount_point == CGROUP_VIEW else os.path.basename(mount_point), path)
            for version, mount_point, path, _ in plan
            if CGROUP_VIEW in (mount_point, os.path.dirname(mount_point))
            and (version == 1 or not layout.v1)]


def connect_console_socket(path):
    """--console-socket: the caller's unix socket, where the pty's master
    goes (SCM_RIGHTS), as runc sends it."""
    import _socket
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        raise MiniDockerError("--console-socket %s: %s" % (path, err.strerror))
    return sock


def shutil_rmtree(path):
    """rm -rf, as far as it goes."""
    with suppress(OSError):
        remove_tree(path)


def wait_for_start(spec, to_parent):
    """Stage 2 of a created container, at its last step before execve:
    tell `create` it is done (the pipe closes, as execve would close it),
    then wait until `start` opens the fifo, reopened for writing through
    the O_PATH descriptor create handed down (its path is out of reach
    since pivot_root). Meanwhile it holds nothing else of ours: a
    process exec'd into the created container sees no pipe of create's
    in its init. /proc is the config's to mount, or not, and an image's
    own /proc could lead the open elsewhere: the byte goes only to the
    fifo the descriptor names (the same inode)."""
    os.close(to_parent)
    close_all_fds_but({spec.exec_fifo} | set(range(3, 3 + spec.preserve_fds)))
    fifo = os.open("/proc/self/fd/%d" % spec.exec_fifo, os.O_WRONLY | os.O_CLOEXEC)
    opened, meant = os.fstat(fifo), os.fstat(spec.exec_fifo)
    if (opened.st_dev, opened.st_ino) != (meant.st_dev, meant.st_ino):
        raise MiniDockerError("the exec fifo: /proc/self/fd/%d is not the fifo (is /proc a "
                              "procfs in config.json's mounts?)" % spec.exec_fifo)
    os.write(fifo, b"0")
    # The write end is left open, close-on-exec: `start` reads on to its
    # EOF, which comes at execve (or when this process dies), so that the
    # poststart hooks run once the command is executed, as the runtime
    # spec orders, not while the startContainer hooks still run here.
    os.close(spec.exec_fifo)


def write_attr(path, value):
    with open(path, "w") as handle:
        handle.write(value)


def run_hooks(hooks, point, state, runtime_files=()):
    """Run a bundle's hooks of `point` (hooks: oci_hooks'), in order, each
    with the OCI state (state() builds it) on stdin; a hook that fails or
    outlives its timeout fails the step, naming it. `runtime_files`: the
    startContainer hooks', whose paths resolve in the container and run by
    a fork of python3 (refuse_runtime_files)."""
    for hook in hooks.get(point, ()):
        if runtime_files:
            refuse_runtime_files(hook["path"], runtime_files)
        data = to_json(state()).encode()
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(read_end, 0)
                os.execve(hook["path"], hook["args"] or [hook["path"]], dict(
                    e.partition("=")[::2] for e in hook["env"]))
            finally:
                os._exit(EXIT_CANNOT_EXEC)
        os.close(read_end)
        with suppress(BrokenPipeError):  # a hook that reads nothing
            os.write(write_end, data)
        os.close(write_end)
        code = wait_with_timeout(pid, hook["timeout"])
        if code != 0:
            raise MiniDockerError("%s hook %s %s" % (point, hook["path"], "timed out after %ds"
                                  % hook["timeout"] if code is None else
                                  "exited with %d" % code))


def wait_with_timeout(pid, timeout):
    """The exit code of child `pid`; None (and the child killed) when it
    is still running after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.001
    while True:
        done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        if done:
            return exit_code(status)
        if time.monotonic() > deadline:
            kill_and_reap(pid)
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def runc_start(args):
    state = RuncState(args.root, args.container).load()
    status = state.status()
    if status != "created":
        raise MiniDockerError("cannot start a container that has %s" % (
            "stopped" if status == "stopped" else "already started" if status in (
                "running", "paused") else "not been created"))
    try:
        released = release_init(state.fifo, state.data["pid"], state.data.get("pid_start"))
    except FileNotFoundError:
        released = "taken"
    if released == "taken":
        raise MiniDockerError("cannot start an already running container")
    if released == "ended":
        raise MiniDockerError("container %s: its process ended before start" % state.id)
    poststart(oci_hooks(state.data["config"]), state)
    return 0


def poststart(hooks, state):
    """The poststart hooks: the runtime spec has their failure logged, the
    container left running."""
    try:
        run_hooks(hooks, "poststart", lambda: state.oci("running"))
    except MiniDockerError as err:
        warn(str(err))


def runc_run(args):
    """run: create and start; with --detach that is all, else wait for the
    container, forwarding signals, then delete it: its exit code is ours."""
    if args.detach:
        state, spec, pid, _, _, _ = runc_create(args)
        args.container = state.id
        return runc_start(args)
    state, spec, pid, master, signals, pending = runc_create(args, foreground=True)
    try:
        poststart(spec.hooks, state)
        return exit_code(wait_for_container(pid, signals, master, True, pending))
    finally:
        signals.close()
        if not args.keep:
            destroy(state, spec.hooks)


def runc_state(args):
    state = RuncState(args.root, args.container).load()
    emit([to_json(state.oci(), indent="  ")])
    return 0


def runc_kill(args):
    state = RuncState(args.root, args.container).load()
    number = parse_signal(args.signal or "SIGTERM")
    status = state.status()
    if status == "stopped":
        raise MiniDockerError("container not running")
    if status == "creating":  # no pid yet: kill(0) would signal our own process group
        raise MiniDockerError("container %s is being created, not running" % state.id)
    pids = cgroup_processes(state.data["cgroups"]) if args.all else [state.data["pid"]]
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, number)
    return 0


def runc_delete(args):
    state = RuncState(args.root, args.container)
    if not os.path.exists(os.path.join(state.dir, "state.json")):
        shutil_rmtree(state.dir)  # a create killed before its first record: nothing else made
        if args.force:
            return 0
    state.load()
    status = state.status()
    if status in ("creating", "running", "paused") and not args.force:
        raise MiniDockerError("cannot delete container %s that is not stopped: %s"
                              % (state.id, status))
    destroy(state, oci_hooks(state.data.get("config") or {}))
    return 0


def destroy(state, hooks):
    """What a container had, gone: its processes (thawed first, to die),
    its cgroups, its state; then the poststop hooks, whose failure is only
    logged (the runtime spec)."""
    if state.alive():
        freeze(state.data["cgroups"], False)
        with suppress(ProcessLookupError):
            os.kill(state.data["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while state.alive() and time.monotonic() < deadline:
            time.sleep(0.005)
    for pid in cgroup_processes([p for p in state.data["cgroups"] if os.path.isdir(p)]):
        with suppress(ProcessLookupError):  # a shared pid namespace's leftovers
            os.kill(pid, signal.SIGKILL)
    remove_cgroups(state.data["cgroups"])
    shutil_rmtree(state.dir)
    try:
        run_hooks(hooks, "poststop", lambda: state.oci("stopped"))
    except MiniDockerError as err:
        warn(str(err))


def runc_list(args):
    states = []
    for name in sorted(os.listdir(args.root)) if os.path.isdir(args.root) else []:
        with suppress(MiniDockerError):
            states.append(RuncState(args.root, name).load())
    if args.quiet:
        emit([s.id for s in states])
    elif args.format == "json":
        emit([to_json([s.oci() for s in states])])
    else:
        rows = ["ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER"] + [
            "%s\t%d\t%s\t%s\t%s\troot" % (s.id, s.oci()["pid"], s.status(), s.data["bundle"],
                                          s.data.get("created", "")) for s in states]
        emit(tabulate(rows, 0))
    return 0


def runc_ps(args):
    state = RuncState(args.root, args.container).load()
    pids = cgroup_processes([p for p in state.data["cgroups"] if os.path.isdir(p)])
    if args.format == "json":
        emit([to_json(pids)])
        return 0
    boot = int(proc_values(read_text("/proc/stat"), "btime")[0])
    clock = (os.sysconf("SC_CLK_TCK"), boot, float(read_text("/proc/uptime").split()[0]))
    rows = [row for row in (process_row(pid, clock) for pid in pids) if row is not None]
    emit(tabulate(["\t".join(row) for row in [TOP_COLUMNS] + rows], 0))
    return 0


def runc_exec(args):
    """exec: a process described by --process FILE (the config's process
    object) or by CMD and the flags, in the container's namespaces, cgroups
    and confinement (exec_in_container, chapter 11 continued)."""
    state = RuncState(args.root, args.container).load()
    if state.status() not in ("created", "running"):
        raise MiniDockerError("cannot exec in a %s container" % state.status())
    if args.preserve_fds:
        raise MiniDockerError("exec --preserve-fds: minidocker's exec passes no descriptor on")
    config = state.data["config"]
    spec = oci_spec(config, state.data["bundle"])
    if args.process:
        try:
            with open(args.process) as handle:
                process = from_json(handle.read())
        except (OSError, ValueError) as err:
            raise MiniDockerError("--process %s: %s" % (args.process, err))
    else:
        process = dict(config["process"], args=list(args.command), terminal=bool(args.tty))
        if not args.command:
            raise MiniDockerError("exec: no command given: usage: exec [OPTIONS] ID CMD [ARG...]")
        process["env"] = list(process.get("env") or []) + list(args.env)
        if args.cwd:
            process["cwd"] = args.cwd
        if args.user:
            uid, _, gid = args.user.partition(":")
            if not is_number(uid) or gid and not is_number(gid):
                raise MiniDockerError("--user %s: expected UID[:GID], numbers" % quote(args.user))
            process["user"] = dict(process.get("user") or {}, uid=int(uid), gid=int(gid or 0))
        if args.cap:
            caps = process.setdefault("capabilities", {})
            for name in ("bounding", "effective", "permitted", "ambient"):
                caps[name] = list(caps.get(name) or []) + list(args.cap)
        if args.no_new_privs:
            process["noNewPrivileges"] = True
    oci_process(process, spec)
    spec.hooks = {}  # the container's, run at its own start: none for an exec
    spec.detach, spec.init = args.detach, True
    spec.tied = not args.detach
    record = {"id": state.id, "pid": state.data["pid"], "pid_start": state.data["pid_start"],
              "cgroups": [p for p in state.data["cgroups"] if os.path.isdir(p)],
              "id_maps": spec.userns}
    pid_file = os.path.abspath(args.pid_file) if args.pid_file else None
    console = connect_console_socket(args.console_socket) if args.console_socket else None
    return exec_in_container(record, spec, console_socket=console, started=lambda pid: (
        write_file_atomically(pid_file, b"%d" % pid, 0o644) if pid_file else None))


def runc_pause(args, frozen):
    state = RuncState(args.root, args.container).load()
    status = state.status()
    if status not in ("running", "paused"):
        raise MiniDockerError("container not running" if status == "stopped" else
                              "container %s is %s, not running" % (state.id, status))
    freeze(state.data["cgroups"], frozen)
    return 0


def runc_update(args):
    """update: new limits written to the container's cgroups, from
    --resources (linux.resources as JSON; - is stdin) or the flags."""
    import re
    state = RuncState(args.root, args.container).load()
    resources = {}
    if args.resources:
        try:
            text = sys.stdin.read() if args.resources == "-" else read_text(args.resources)
            resources = from_json(text)
        except (OSError, ValueError) as err:
            raise MiniDockerError("--resources %s: %s" % (args.resources, err))
    for flag, (group, key) in RUNC_UPDATE_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if group != "memory" and key not in ("cpus", "mems") and \
                not re.fullmatch(r"-?[0-9]{1,19}", value):  # sizes and cpu lists apart
            raise MiniDockerError("invalid --%s %s: expected a whole number"
                                  % (flag.replace("_", "-"), quote(value)))
        resources.setdefault(group, {})[key] = value if key in ("cpus", "mems") else \
            parse_size(value, "--" + flag.replace("_", "-")) if group == "memory" \
            else int(value)
    res = oci_resources(resources)
    for path in state.data["cgroups"]:
        version = 2 if os.path.exists(os.path.join(path, "cgroup.controllers")) else 1
        for _, name, value in cgroup_writes(res, version):
            if os.path.exists(os.path.join(path, name)):
                write_cgroup_file(path, name, value)
    return 0


RUNC_UPDATE_FLAGS = {  # runc update's flags -> linux.resources' fields
    "memory": ("memory", "limit"), "memory_swap": ("memory", "swap"),
    "memory_reservation": ("memory", "reservation"), "cpu_shares": ("cpu", "shares"),
    "cpu_quota": ("cpu", "quota"), "cpu_period": ("cpu", "period"),
    "cpuset_cpus": ("cpu", "cpus"), "cpuset_mems": ("cpu", "mems"),
    "pids_limit": ("pids", "limit"), "blkio_weight": ("blockIO", "weight"),
}


def runc_events(args):
    """events: the container's cgroup counters as runc's JSON, once with
    --stats, else every --interval until the container stops."""
    state = RuncState(args.root, args.container).load()
    while True:
        if state.status() == "stopped":
            raise MiniDockerError("container with id %s is not running" % state.id)
        usage = cgroup_usage([p for p in state.data["cgroups"] if os.path.isdir(p)])
        data = {"cpu": {"usage": {"total": int((usage.get("cpu_seconds") or 0) * 1e9)}},
                "memory": {"usage": {"usage": usage.get("memory") or 0,
                                     "limit": usage.get("memory_limit") or 0}},
                "pids": {"current": usage.get("pids") or 0}}
        emit([to_json({"type": "stats", "id": state.id, "data": data})])
        if args.stats:
            return 0
        time.sleep(parse_duration(args.interval))


def parse_duration(text):
    """Go's durations as events --interval takes them: 5s, 500ms, 1m."""
    import re
    match = re.fullmatch(r"([0-9.]+)(ms|s|m|h)", text or "")
    if match is None:
        raise MiniDockerError("invalid --interval %s: expected a duration such as 5s"
                              % quote(text or ""))
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def runc_features(args):
    """features: what this runtime carries out of config.json, in runc's
    shape, so that a caller can tell before it asks."""
    emit([to_json({
        "ociVersionMin": "1.0.0", "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOK_POINTS),
        "mountOptions": sorted(set(MOUNT_OPTIONS) | set(PROPAGATION_OPTIONS)),
        "linux": {
            "namespaces": sorted(k for k in OCI_NAMESPACES if k not in ("user", "time")),
            "capabilities": ["CAP_" + name for name in CAP_NAMES],
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True, "actions": sorted(a for a in SECCOMP_ACTIONS
                                                           if a != "SCMP_ACT_NOTIFY"),
                        "operators": sorted(SECCOMP_COMPARISONS),
                        "archs": [SCMP_ARCH_NAMES.get(MACHINE, MACHINE)]},
            "apparmor": {"enabled": host_has_apparmor()},
            "selinux": {"enabled": os.path.isdir("/sys/fs/selinux")},
        },
        "annotations": {"org.opencontainers.runc.version": "minidocker " + VERSION},
    }, indent="    ")])
    return 0


SCMP_ARCH_NAMES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def runc_spec(args):
    """spec: a config.json that means what `minidocker run ROOTFS sh` with
    no flags means (the defaults of chapters 6, 8 and 10), for a rootfs in
    the bundle's `rootfs` directory."""
    if args.rootless_spec:
        raise MiniDockerError("spec --rootless: user namespaces are not supported by minidocker")
    path = os.path.join(args.bundle or ".", "config.json")
    # Made new, never through a symlink: a bundle directory that another
    # user can write may hold `config.json -> /etc/...`, dangling, which
    # open(2) would create as root.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except FileExistsError:  # a symlink too, dangling or not
        raise MiniDockerError("File %s exists. Remove it first" % path)
    except OSError as err:
        raise MiniDockerError("spec: %s: %s" % (path, err.strerror))
    with open(fd, "w") as handle:
        handle.write(to_json(default_config(), indent="\t"))
    return 0


def default_config():
    """`run`'s defaults as a config.json."""
    caps = ["CAP_" + name for name in DOCKER_DEFAULT_CAPS]
    cap_names = {"CAP_" + n for n in DOCKER_DEFAULT_CAPS}
    release = os.uname().release
    profile = default_profile()
    syscalls = [{k: v for k, v in rule.items() if k not in ("includes", "excludes", "comment")}
                for rule in profile["syscalls"]
                if rule_applies(rule, MACHINE, cap_names, release)]
    flags = ["nosuid", "noexec", "nodev"]
    return {
        "ociVersion": OCI_VERSION,
        "process": {"terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": ["PATH=" + DEFAULT_PATH, "TERM=xterm"], "cwd": "/",
                    "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                    "noNewPrivileges": False},
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "minidocker",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": flags},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": flags + ["mode=1777", "size=%dk" % (SHM_DEFAULT_SIZE >> 10)]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": flags},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": flags + ["ro"]},
            {"destination": CGROUP_VIEW, "type": "cgroup", "source": "cgroup",
             "options": flags + ["ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}] + [
                {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}
                for kind, major, minor, access in DEFAULT_DEVICE_RULES]},
            "namespaces": [{"type": kind} for kind in
                           ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": list(MASKED_PATHS), "readonlyPaths": list(READONLY_PATHS),
            "seccomp": {"defaultAction": profile["defaultAction"],
                        "defaultErrnoRet": profile.get("defaultErrnoRet"),
                        "architectures": [SCMP_ARCH_NAMES.get(MACHINE, MACHINE)],
                        "syscalls": syscalls},
        },
    }


# Pausing: the freezer stops every task of a cgroup where it stands: v1's
# freezer controller (freezer.state) where the host has it, else cgroup2's
# own (cgroup.freeze, Linux 5.2). Not both: on a hybrid host, tasks that
# v1 has frozen never count as frozen to cgroup2, whose cgroup.events
# would wait for them forever. A write starts it; the file says when all
# the tasks have stopped.


def freezer_files(cgroups):
    """[(directory, file)] of the container's freezer."""
    v1 = [(p, "freezer.state") for p in cgroups
          if os.path.exists(os.path.join(p, "freezer.state"))]
    return v1 or [(p, "cgroup.freeze") for p in cgroups
                  if os.path.exists(os.path.join(p, "cgroup.freeze"))]


def freeze(cgroups, frozen):
    for path, name in freezer_files(cgroups):
        write_cgroup_file(path, name, ("FROZEN" if frozen else "THAWED") if name ==
                          "freezer.state" else int(frozen))
    deadline = time.monotonic() + 5
    while cgroups_frozen(cgroups) != frozen and time.monotonic() < deadline:
        time.sleep(0.001)


def cgroups_frozen(cgroups):
    """Whether the container's freezer says all of it has stopped."""
    for path, name in freezer_files(cgroups):
        with suppress(OSError):
            if name == "freezer.state":
                return read_text(os.path.join(path, name)).strip() == "FROZEN"
            return "frozen 1" in read_text(os.path.join(path, "cgroup.events")).splitlines()
    return False

# === 13. The command line, parsed as Docker's, and main() ===
# Docker's command line (Go's pflag under cobra) differs from argparse's in
# ways a Docker user types every day, so minidocker parses its own, in the
# time argparse took to import (argparse, its gettext and textwrap, and
# building its parser cost 10-12 ms of every start):
#   - a flag is spelled out in full: --priv is not --privileged, --pid not
#     --pids-limit (argparse takes any unique prefix);
#   - a boolean flag takes a value after `=`: --rm=false, -t=true, -it=0
#     (what Go's strconv.ParseBool takes: 1 t T TRUE true True, and 0 f F
#     FALSE false False); the last one given wins;
#   - a flag's value is the next word whatever it looks like
#     (--oom-score-adj -500), or follows `=` (--name=web), or is glued to a
#     one-letter flag (-p8080:80, -p=8080:80);
#   - one-letter booleans combine (-it, -dit), the last letter may take a
#     value (-ep=x is -e with "p=x": glued wins, as pflag's);
#   - `run ROOTFS CMD...` and `exec NAME CMD...`: once the words before CMD
#     are given, every word after them is CMD's, flags included; other
#     commands take flags before and after their arguments (`rm web -f`);
#   - `--` ends the flags.
# Each failure is one line naming the command and the word, exit 125.

REMAINDER = "..."  # nargs of the last positional of run and exec: CMD [ARG...]


class Flag:
    """One flag or argument of a command, declared as argparse's
    add_argument declares it (the same keywords, a smaller set of them)."""

    __slots__ = ("names", "dest", "action", "default", "metavar", "help", "type",
                 "nargs", "version")

    def __init__(self, names, action="store", default=None, metavar=None, help=None,
                 type=None, dest=None, nargs=None, version=None):
        self.names, self.action, self.default, self.help = names, action, default, help
        self.type, self.nargs, self.version = type, nargs, version
        longest = max(names, key=len)
        self.dest = dest or longest.lstrip("-").replace("-", "_")
        self.metavar = metavar or (self.dest.upper() if names[0].startswith("-") else longest)

    @property
    def takes_value(self):
        return self.action in ("store", "append")

    def convert(self, word, label, name):
        """The word given to this flag (spelled `name`), converted to its
        type; `label` is the command's, for the error line."""
        if self.type is not None:
            try:
                word = self.type(word)
            except ValueError:
                raise MiniDockerError("%sinvalid value %s for %s: %s" % (
                    label, quote(word), name,
                    "not an integer" if self.type is int else "not a number"))
        return word


class Namespace:
    """The parsed command line: one attribute per flag and argument."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def __repr__(self):
        return "Namespace(%s)" % ", ".join("%s=%r" % kv for kv in sorted(vars(self).items()))


class CommandLine:
    """The flags, arguments and subcommands of one command (or of
    minidocker itself), with argparse's way of declaring them."""

    def __init__(self, prog, help=None, description=None, add_help=True, epilog=None):
        self.prog, self.summary, self.description = prog, help, description or help
        self.epilog = epilog  # a few lines after the options: examples
        self.flags = {}        # "--name" and "-n" -> Flag
        self.declared = []     # every Flag, in the order declared (for --help)
        self.positionals = []  # Flag, in order
        self.subcommands = None  # name -> CommandLine, once add_subparsers is called
        self.subcommand_dest = None
        self.defaults = {}
        if add_help:
            self.add_argument("-h", "--help", action="help", help="show this help and exit")

    # -- declaring --

    def add_argument(self, *names, **keywords):
        flag = Flag(names, **keywords)
        if not names[0].startswith("-"):
            self.positionals.append(flag)
            return flag
        if flag.action == "store_true" and "default" not in keywords:
            flag.default = False  # (None: to tell --tty=false from no --tty)
        self.declared.append(flag)
        for name in names:
            assert name not in self.flags, "flag declared twice: " + name
            self.flags[name] = flag
        return flag

    def add_subparsers(self, dest):
        self.subcommands, self.subcommand_dest = {}, dest
        return self

    def add_parser(self, name, help=None, add_help=True, epilog=None):
        """A subcommand (called on what add_subparsers returned)."""
        command = CommandLine("%s %s" % (self.prog, name), help=help, add_help=add_help,
                              epilog=epilog)
        self.subcommands[name] = command
        return command

    def set_defaults(self, **values):
        self.defaults.update(values)

    # -- parsing --

    def parse_args(self, argv=None):
        namespace = Namespace()
        words = sys.argv[1:] if argv is None else list(argv)
        self.parse_into(namespace, words)
        return namespace

    def parse_into(self, namespace, words):
        """Set this command's defaults (those an outer command left unset:
        `minidocker --debug run` keeps --debug), then consume `words`."""
        for flag in self.declared + self.positionals:
            if flag.action in ("store", "store_true", "append") and \
                    not hasattr(namespace, flag.dest):
                default = flag.default
                setattr(namespace, flag.dest, list(default) if flag.action == "append" and
                        default is not None else default)
        for key, value in self.defaults.items():
            setattr(namespace, key, value)
        arguments = []  # the positional words, in order
        index, only_arguments = 0, False
        while index < len(words):
            word = words[index]
            index += 1
            if self.rest_is_command(arguments):
                arguments.extend(words[index - 1:])
                break
            if only_arguments or word == "-" or not word.startswith("-"):
                arguments.append(word)
                if self.subcommands is not None:
                    return self.enter(namespace, word, words[index:])
            elif word == "--":
                only_arguments = True
            elif word.startswith("--"):
                index = self.long_flag(namespace, word, words, index)
            else:
                index = self.short_flags(namespace, word, words, index)
        if self.subcommands is not None:
            self.print_help()  # `minidocker` or `minidocker container` alone, as docker
            raise SystemExit(0)
        self.assign(namespace, arguments)

    def rest_is_command(self, arguments):
        """True once every argument before a REMAINDER one is given."""
        return (len(self.positionals) == len(arguments) + 1 and
                self.positionals[-1].nargs == REMAINDER)

    def enter(self, namespace, name, words):
        command = self.subcommands.get(name)
        if command is None:
            raise MiniDockerError("%sunknown command %s (see '%s --help')" % (
                self.label(), quote(name), self.prog))
        setattr(namespace, self.subcommand_dest, name)
        command.parse_into(namespace, words)

    def label(self):
        """'run: ' for `minidocker run`, '' for minidocker itself."""
        command = self.prog.partition(" ")[2]
        return command + ": " if command else ""

    def long_flag(self, namespace, word, words, index):
        """--name VALUE, --name=VALUE, --rm, --rm=false -> the next index."""
        name, equals, value = word.partition("=")
        flag = self.flags.get(name)
        if flag is None:
            raise MiniDockerError("%sunknown flag: %s" % (self.label(), name[:80]))
        if flag.takes_value and not equals:
            if index == len(words):
                raise MiniDockerError("%sflag needs an argument: %s" % (self.label(), name))
            value, index = words[index], index + 1
        self.apply(namespace, flag, name, value if equals or flag.takes_value else None)
        return index

    def short_flags(self, namespace, word, words, index):
        """-i, -it, -dit=false, -p 80, -p80, -p=80 -> the next index."""
        position = 1
        while position < len(word):
            name = "-" + word[position]
            flag = self.flags.get(name)
            if flag is None:
                raise MiniDockerError("%sunknown shorthand flag: %s in %s" % (
                    self.label(), quote(word[position]), quote(word)))
            rest = word[position + 1:]
            if flag.takes_value:
                if rest:
                    value = rest[1:] if rest.startswith("=") else rest
                elif index < len(words):
                    value, index = words[index], index + 1
                else:
                    raise MiniDockerError("%sflag needs an argument: %s" % (self.label(), name))
                self.apply(namespace, flag, name, value)
                break
            if rest.startswith("="):
                self.apply(namespace, flag, name, rest[1:])
                break
            self.apply(namespace, flag, name, None)
            position += 1
        return index

    def apply(self, namespace, flag, name, value):
        """One flag given, with its value (None: a boolean without one)."""
        if flag.action == "help":
            self.print_help()
            raise SystemExit(0)
        if flag.action == "version":
            sys.stdout.write(flag.version + "\n")
            raise SystemExit(0)
        if flag.action == "store_true":
            if value is not None and value not in BOOLEAN_WORDS:
                raise MiniDockerError("%sinvalid value %s for %s: true or false" % (
                    self.label(), quote(value), name))
            setattr(namespace, flag.dest, True if value is None else BOOLEAN_WORDS[value])
        elif flag.action == "append":
            getattr(namespace, flag.dest).append(flag.convert(value, self.label(), name))
        else:
            setattr(namespace, flag.dest, flag.convert(value, self.label(), name))

    def assign(self, namespace, arguments):
        """The positional words onto the declared arguments, in order."""
        words = list(arguments)
        for flag in self.positionals:
            if flag.nargs in ("+", "*", REMAINDER):
                if flag.nargs == "+" and not words:
                    raise MiniDockerError("%srequires at least 1 %s (usage: %s)" % (
                        self.label(), flag.metavar, self.usage()))
                setattr(namespace, flag.dest, [flag.convert(w, self.label(), flag.metavar) for w in words])
                words = []
            elif words:
                setattr(namespace, flag.dest, flag.convert(words.pop(0), self.label(), flag.metavar))
            elif flag.nargs == "?":
                setattr(namespace, flag.dest, flag.default)
            else:
                raise MiniDockerError("%srequires %s (usage: %s)" % (
                    self.label(), flag.metavar, self.usage()))
        if words:
            raise MiniDockerError("%sunexpected argument %s (usage: %s)" % (
                self.label(), quote(words[0]), self.usage()))

    # -- help --

    def usage(self):
        shown = {"+": "%s...", "*": "[%s...]", "?": "[%s]"}
        words = [self.prog] + (["[OPTIONS]"] if len(self.declared) > 1 else [])
        words += [shown.get(flag.nargs, "%s") % flag.metavar for flag in self.positionals]
        if self.subcommands is not None:
            words.append("COMMAND")
        return " ".join(words)

    def print_help(self):
        """usage, what the command does, then a line per flag (or command);
        Docker's layout, wrapped to the terminal."""
        try:
            width = max(os.get_terminal_size(1).columns, 60)
        except OSError:  # ENOTTY: not a terminal
            width = 80
        rows = []
        for flag in self.declared:
            if flag.help is None:
                continue
            names = ", ".join(flag.names)
            rows.append((names + (" " + flag.metavar if flag.takes_value else ""), flag.help))
        lines = ["Usage:  " + self.usage(), ""]
        if self.description:
            lines += [self.description, ""]
        if self.subcommands:
            lines += ["Commands:"] + help_rows(
                [(name, command.summary or "") for name, command in self.subcommands.items()],
                width) + [""]
        arguments = [(flag.metavar, flag.help) for flag in self.positionals if flag.help]
        if arguments:
            lines += ["Arguments:"] + help_rows(arguments, width) + [""]
        if rows:
            lines += ["Options:"] + help_rows(rows, width) + [""]
        if self.epilog:
            lines.append(self.epilog)
        sys.stdout.write("\n".join(lines).rstrip("\n") + "\n")


def help_rows(rows, width):
    """Two columns, the second wrapped at word boundaries under itself."""
    column = min(max(len(left) for left, _ in rows) + 4, 30)
    lines = []
    for left, text in rows:
        line = "  " + left
        if len(line) > column - 2:
            lines.append(line)
            line = ""
        line = line.ljust(column)
        for word in text.split():
            if len(line) + 1 + len(word) > width and line.strip():
                lines.append(line)
                line = " " * column
            line += ("" if line.endswith(" ") else " ") + word
        lines.append(line)
    return lines


RUN_EXAMPLES = """\
When stdin and stdout are both a terminal, run acts as run -it.

Examples:
  minidocker mkrootfs ./rootfs && minidocker run ./rootfs /bin/sh
  minidocker run --rm --network none -m 100m ./rootfs sh -c 'echo hi'
  minidocker run -d --name web -p 8080:80 ./rootfs httpd -f -p 80
  minidocker run --rm -v "$PWD":/src -w /src -u 1000 ./rootfs ls"""


def add_image_commands(commands):
    """pull, load, save, images, rmi, tag, and `image VERB` for each."""
    image = commands.add_parser("image", help="manage images: ls, pull, load, save, tag, rm, "
                                "inspect, prune")
    verbs = image.add_subparsers(dest="verb")

    def both(name, alias, help, handler):
        parsers = [commands.add_parser(alias, help=help)] if alias else []
        parsers.append(verbs.add_parser(name, help=help))
        for sub in parsers:
            sub.set_defaults(handler=handler)
        return parsers

    for sub in both("pull", "pull", "pull an image from a registry", cmd_pull):
        sub.add_argument("--platform", metavar="OS/ARCH", help="default: this host's")
        sub.add_argument("--username", "-u", metavar="USER", help="the registry's user")
        sub.add_argument("--password-stdin", action="store_true",
                         help="read the password from stdin")
        sub.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                         help="plain http to HOST (a registry on this host may always use it)")
        sub.add_argument("image", metavar="NAME[:TAG|@DIGEST]", help="the image to pull")
    for sub in both("load", "load", "load images from a docker save or OCI archive", cmd_load):
        sub.add_argument("-i", "--input", metavar="FILE", help="the archive (default: stdin)")
    for sub in both("save", "save", "save images to an OCI archive (docker load reads it)",
                    cmd_save):
        sub.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
        sub.add_argument("images", nargs="+", metavar="IMAGE", help="names or ids")
    for sub in both("ls", "images", "list images", cmd_images):
        sub.add_argument("-q", "--quiet", action="store_true", help="only their ids")
        sub.add_argument("--format", metavar="json",
                         help="one JSON object per line")
    for sub in both("tag", "tag", "give an image another name", cmd_tag):
        sub.add_argument("source", metavar="IMAGE", help="a name or id")
        sub.add_argument("target", metavar="NAME[:TAG]", help="the new name")
    for sub in both("rm", "rmi", "remove images (or a tag of one)", cmd_rmi):
        sub.add_argument("-f", "--force", action="store_true",
                         help="remove an image by id even with several tags")
        sub.add_argument("images", nargs="+", metavar="IMAGE", help="names or ids")
    for sub in both("inspect", None, "images as JSON, in Docker's shape", cmd_image_inspect):
        sub.add_argument("images", nargs="+", metavar="IMAGE", help="names or ids")
    for sub in both("prune", None, "remove untagged images no container uses", cmd_image_prune):
        sub.add_argument("-a", "--all", action="store_true", help="every image no container uses")
        sub.add_argument("-f", "--force", action="store_true", help="do not ask first")


def build_parser():
    parser = CommandLine("minidocker", description="A container runtime in one file.")
    parser.add_argument("--version", action="version", version="minidocker " + VERSION,
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="print the plan and timings")
    commands = parser.add_subparsers(dest="command_name")

    # add_help=False: -h is --hostname, as in docker run.
    run = commands.add_parser("run", help="run a command in a new container", add_help=False,
                              epilog=RUN_EXAMPLES)
    run.add_argument("--help", action="help", help="show this help and exit")
    run.add_argument("--debug", action="store_true", help="print the plan and timings")
    run.add_argument("-i", "--interactive", action="store_true", default=None,
                     help="keep stdin open")
    run.add_argument("-t", "--tty", action="store_true", default=None,
                     help="allocate a terminal")
    run.add_argument("--rm", action="store_true", help="remove the container when it exits")
    run.add_argument("--init", action="store_true",
                     help="pid 1 is a small reaper that forwards signals to CMD")
    run.add_argument("-d", "--detach", action="store_true",
                     help="run in the background; print the id; output to its log")
    run.add_argument("--log-driver", default="local", metavar="DRIVER",
                     help="local (default: run -d's output to container.log), json-file "
                          "(to json.log, in Docker's form) or none")
    run.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE",
                     help="max-size=SIZE (rotate the log at SIZE; local: 20m), max-file=N "
                          "(files kept; local: 5), compress=false")
    run.add_argument("--name", metavar="NAME", help="a unique name, usable in place of the id")
    run.add_argument("--restart", default="no", metavar="POLICY",
                     help="no, on-failure[:MAX], always or unless-stopped (without -d: "
                          "attached to the first run)")
    run.add_argument("--hostname", "-h", dest="hostname", help="host name (default: short id)")
    run.add_argument("--entrypoint", metavar="PROGRAM",
                     help="run PROGRAM with CMD as its arguments (\"\": none)")
    run.add_argument("-l", "--label", action="append", default=[], metavar="KEY[=VALUE]",
                     help="a label, shown by inspect and ps, matched by ps -f label=")
    run.add_argument("--label-file", action="append", default=[], metavar="FILE",
                     help="KEY=VALUE lines of labels")
    run.add_argument("--stop-signal", metavar="SIGNAL",
                     help="the signal of stop and restart without -s (default SIGTERM)")
    run.add_argument("--stop-timeout", metavar="SECONDS",
                     help="their wait before SIGKILL without -t (default 10; -1: none)")
    run.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VAL]",
                     help="set a variable; KEY alone: its value here, if set")
    run.add_argument("--env-file", action="append", default=[], metavar="FILE",
                     help="KEY=VAL lines (# comments) read from FILE")
    run.add_argument("-w", "--workdir", metavar="DIR",
                     help="the command's working directory (default /)")
    run.add_argument("-u", "--user", metavar="USER[:GROUP]",
                     help="name or number, looked up in the container's /etc/passwd")
    run.add_argument("--group-add", action="append", default=[], metavar="GROUP",
                     help="one more supplementary group")
    run.add_argument("-v", "--volume", action="append", default=[],
                     metavar="[HOST:|NAME:]CTR[:OPTS]",
                     help="bind a host path (./ and ../ from here), mount volume NAME, or a new "
                     "anonymous volume; OPTS: ro, rw, nocopy, idmap (z, Z, cached... ignored)")
    run.add_argument("--mount", action="append", default=[], metavar="type=TYPE,...",
                     help="type=bind|volume|tmpfs, source=, target=, readonly, volume-nocopy, "
                     "tmpfs-size=, tmpfs-mode=")
    run.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTS]",
                     help="a tmpfs at PATH; OPTS as mount's: size=64m,mode=1777")
    run.add_argument("--read-only", action="store_true", help="mount the root read-only")
    run.add_argument("--shm-size", metavar="SIZE", help="the size of /dev/shm (default 64m)")
    run.add_argument("--cap-add", action="append", default=[], metavar="CAP",
                     help="a capability more than docker's 14 (ALL: every one)")
    run.add_argument("--cap-drop", action="append", default=[], metavar="CAP",
                     help="a capability less (ALL: none)")
    run.add_argument("--privileged", action="store_true",
                     help="all capabilities, host devices, nothing masked, no seccomp")
    run.add_argument("--security-opt", action="append", default=[], metavar="OPT",
                     help="seccomp=PROFILE.json, seccomp=unconfined, no-new-privileges")
    run.add_argument("-m", "--memory", metavar="SIZE", help="memory limit, e.g. 100m")
    run.add_argument("--memory-swap", metavar="SIZE", help="memory plus swap; -1: unlimited")
    run.add_argument("--memory-reservation", metavar="SIZE", help="soft memory limit")
    run.add_argument("--cpus", metavar="N", help="CPU quota, e.g. 0.5")
    run.add_argument("-c", "--cpu-shares", type=int, metavar="N", help="relative CPU weight")
    run.add_argument("--cpuset-cpus", metavar="LIST", help="CPUs allowed, e.g. 0-1")
    run.add_argument("--cpuset-mems", metavar="LIST", help="memory nodes allowed")
    run.add_argument("--pids-limit", type=int, metavar="N", help="task limit; 0 or -1: none")
    run.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
                     help="a resource limit (nofile, nproc, core, ...); -1: unlimited")
    run.add_argument("--oom-score-adj", metavar="N",
                     help="the OOM killer's bias, -1000 (never) to 1000 (first)")
    run.add_argument("--oom-kill-disable", action="store_true",
                     help="no OOM kill at the memory limit (cgroup v1 only)")
    run.add_argument("--blkio-weight", type=int, metavar="N", help="block I/O weight, 10-1000")
    run.add_argument("--device-read-bps", action="append", default=[], metavar="DEV:RATE",
                     help="read rate limit of a block device, e.g. /dev/sda:1mb")
    run.add_argument("--device-write-bps", action="append", default=[], metavar="DEV:RATE",
                     help="write rate limit of a block device")
    run.add_argument("--device", action="append", default=[],
                     metavar="HOST[:CTR][:PERMS]", help="a host device node, PERMS of rwm")
    run.add_argument("--cgroup-parent", metavar="PATH", help="parent cgroup of the container's")
    run.add_argument("--cgroupns", dest="cgroup_mode", metavar="MODE",
                     help="private (the default) or host (not with CAP_SYS_ADMIN)")
    run.add_argument("--pid", dest="pid_mode", metavar="MODE",
                     help="host: share the host's pid namespace")
    run.add_argument("--ipc", dest="ipc_mode", metavar="MODE",
                     help="host: share the host's IPC namespace and /dev/shm")
    run.add_argument("--uts", dest="uts_mode", metavar="MODE",
                     help="host: share the host's name (UTS namespace)")
    run.add_argument("--userns", metavar="MODE",
                     help="host (the default: container root is host root) or auto[:size=N] "
                     "(a user namespace of N free ids of /etc/subuid's user containers)")
    run.add_argument("--uidmap", action="append", default=[], metavar="CTR:HOST:N",
                     help="a user namespace mapping N uids from CTR to HOST (also the gids "
                     "without --gidmap)")
    run.add_argument("--gidmap", action="append", default=[], metavar="CTR:HOST:N",
                     help="... the gids (also the uids without --uidmap)")
    run.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE",
                     help="a namespaced sysctl: kernel.msg*, kernel.sem, kernel.shm*, "
                          "fs.mqueue.*, net.*, kernel.domainname")
    run.add_argument("--network", "--net", metavar="MODE",
                     help="bridge (root's default: mini-br0, 10.0.0.0/24), none (a user's "
                     "default) or host")
    run.add_argument("--subnet", metavar="CIDR", help="the bridge's subnet (default 10.0.0.0/24)")
    run.add_argument("--bridge", metavar="NAME", help="the bridge's name (default mini-br0)")
    run.add_argument("-p", "--publish", action="append", default=[],
                     metavar="[IP:][HOSTPORT:]CTRPORT[/PROTO]",
                     help="publish a port or a range (tcp or udp); no HOSTPORT: a free one")
    run.add_argument("-P", "--publish-all", action="store_true",
                     help="publish every exposed port on a free host port")
    run.add_argument("--expose", action="append", default=[], metavar="PORT[-END][/PROTO]",
                     help="expose a port or a range (shown by inspect and ps, published by -P)")
    run.add_argument("--dns", action="append", default=[], metavar="IP", help="a nameserver")
    run.add_argument("--add-host", action="append", default=[], metavar="NAME:IP",
                     help="a line in /etc/hosts; IP may be host-gateway")
    run.add_argument("--pull", default="missing", metavar="POLICY",
                     help="pull IMAGE before the run: when it is not stored (default), always, "
                          "or never")
    run.add_argument("--platform", metavar="OS/ARCH",
                     help="the platform to pull IMAGE for (default: this host's)")
    run.add_argument("rootfs", metavar="ROOTFS|IMAGE",
                     help="a directory (a path starting with / or ., or an existing one): the "
                          "lower layer of the container's root; or an image, pulled if missing")
    run.add_argument("command", nargs=REMAINDER, metavar="CMD [ARG...]",
                     help="the command and its arguments")
    run.set_defaults(handler=cmd_run)

    rm = commands.add_parser("rm", help="remove containers")
    rm.add_argument("-f", "--force", action="store_true", help="kill it first if running")
    rm.add_argument("-v", "--volumes", action="store_true",
                    help="also remove the containers' anonymous volumes")
    rm.add_argument("containers", nargs="+", metavar="NAME|ID",
                    help="containers, by name or id (a unique prefix of it)")
    rm.set_defaults(handler=cmd_rm)

    ps = commands.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="also stopped ones")
    ps.add_argument("-q", "--quiet", action="store_true", help="only their ids")
    ps.add_argument("--no-trunc", action="store_true", help="whole ids and commands")
    ps.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                    help="status=STATE, name=NAME or id=ID (a part, or a regular expression)")
    ps.add_argument("--format", metavar="TEMPLATE",
                    help="table, json, or a template such as '{{.ID}} {{.Names}}'")
    ps.set_defaults(handler=cmd_ps)

    logs = commands.add_parser("logs", help="print a detached container's output")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until it ends")
    logs.add_argument("-t", "--timestamps", action="store_true", help="each line's time first")
    logs.add_argument("--tail", type=log_tail, metavar="N",
                      help="only the last N lines (all, the default, or a negative N: all)")
    logs.add_argument("--since", metavar="TIME", help="only lines since TIME: RFC 3339 "
                      "(2024-05-01T10:00:00Z), Unix seconds, or a time ago (10m, 1h30m)")
    logs.add_argument("--until", metavar="TIME", help="only lines until TIME (the same forms)")
    logs.add_argument("container", metavar="NAME|ID",
                      help="a container, by name or id")
    logs.set_defaults(handler=cmd_logs)

    stop = commands.add_parser("stop", help="stop running containers")
    stop.add_argument("-s", "--signal", metavar="SIGNAL",
                      help="the first signal (default: --stop-signal, or SIGTERM)")
    stop.add_argument("-t", "--time", type=float, metavar="SECONDS",
                      help="then SIGKILL after this long (default: --stop-timeout, or 10)")
    stop.add_argument("containers", nargs="+", metavar="NAME|ID",
                      help="running containers, by name or id")
    stop.set_defaults(handler=cmd_stop)

    start = commands.add_parser("start", help="run stopped containers' command again")
    start.add_argument("-a", "--attach", action="store_true",
                       help="in the foreground, its output to ours, its exit code ours")
    start.add_argument("-i", "--interactive", action="store_true", help="with -a: keep stdin open")
    start.add_argument("containers", nargs="+", metavar="NAME|ID",
                       help="stopped containers, by name or id")
    start.set_defaults(handler=cmd_start)

    restart = commands.add_parser("restart", help="stop containers, then start them")
    restart.add_argument("-s", "--signal", metavar="SIGNAL",
                         help="the first signal (default: --stop-signal, or SIGTERM)")
    restart.add_argument("-t", "--time", type=float, metavar="SECONDS",
                         help="SIGKILL after this long (default: --stop-timeout, or 10)")
    restart.add_argument("containers", nargs="+", metavar="NAME|ID",
                         help="containers, by name or id")
    restart.set_defaults(handler=cmd_restart)

    kill = commands.add_parser("kill", help="send a signal to running containers")
    kill.add_argument("-s", "--signal", default="SIGKILL", metavar="SIGNAL",
                      help="the signal (default SIGKILL)")
    kill.add_argument("containers", nargs="+", metavar="NAME|ID",
                      help="running containers, by name or id")
    kill.set_defaults(handler=cmd_kill)

    # add_help=False, as in run: -h is not help here either (docker's
    # exec has no -h flag of its own, but CMD's arguments must not be
    # mistaken for ours, and REMAINDER sees to that).
    exec_ = commands.add_parser("exec", help="run a command in a running container",
                                add_help=False)
    exec_.add_argument("--help", action="help", help="show this help and exit")
    exec_.add_argument("--debug", action="store_true", help="print the plan and timings")
    exec_.add_argument("-d", "--detach", action="store_true",
                       help="leave the command running in the background")
    exec_.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    exec_.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    exec_.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VAL]",
                       help="set a variable, over the container's")
    exec_.add_argument("--env-file", action="append", default=[], metavar="FILE",
                       help="KEY=VAL lines read from FILE")
    exec_.add_argument("-w", "--workdir", metavar="DIR", help="default: the container's")
    exec_.add_argument("-u", "--user", metavar="USER[:GROUP]", help="default: the container's")
    exec_.add_argument("container", metavar="NAME|ID", help="a running container")
    exec_.add_argument("command", nargs=REMAINDER, metavar="CMD [ARG...]",
                       help="the command and its arguments")
    exec_.set_defaults(handler=cmd_exec)

    inspect = commands.add_parser("inspect", help="containers as JSON, in Docker's shape")
    inspect.add_argument("containers", nargs="+", metavar="NAME|ID",
                         help="containers, by name or id")
    inspect.set_defaults(handler=cmd_inspect)

    port = commands.add_parser("port", help="a container's published ports, as docker's")
    port.add_argument("container", metavar="NAME|ID", help="a container, by name or id")
    port.add_argument("port", nargs="?", metavar="CTRPORT[/PROTO]", help="only this one")
    port.set_defaults(handler=cmd_port)

    wait = commands.add_parser("wait", help="wait for containers to end; print their exit codes")
    wait.add_argument("containers", nargs="+", metavar="NAME|ID",
                      help="containers, by name or id")
    wait.set_defaults(handler=cmd_wait)

    rename = commands.add_parser("rename", help="rename a container")
    rename.add_argument("container", metavar="NAME|ID", help="a container, by name or id")
    rename.add_argument("new", metavar="NEW_NAME", help="its new name")
    rename.set_defaults(handler=cmd_rename)

    top = commands.add_parser("top", help="a running container's processes")
    top.add_argument("container", metavar="NAME|ID",
                     help="a running container, by name or id")
    top.set_defaults(handler=cmd_top)

    stats = commands.add_parser("stats", help="CPU, memory and tasks of running containers")
    stats.add_argument("--no-stream", action="store_true", help="one table, then exit")
    stats.add_argument("--no-trunc", action="store_true", help="whole ids")
    stats.add_argument("containers", nargs="*", metavar="NAME|ID",
                       help="containers, by name or id (default: every running one)")
    stats.set_defaults(handler=cmd_stats)

    container = commands.add_parser("container", help="manage containers: prune")
    verbs = container.add_subparsers(dest="verb")
    prune = verbs.add_parser("prune", help="remove every stopped container")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask first")
    prune.set_defaults(handler=cmd_container_prune)

    version = commands.add_parser("version", help="minidocker's version, and what it runs on")
    version.set_defaults(handler=cmd_version)

    # Listed for --help only: run_command hands `runc ...` to run_runc first.
    runc = commands.add_parser("runc", help="runc's command line over an OCI bundle "
                               "(minidocker runc --help)")
    runc.add_argument("words", nargs=REMAINDER, metavar="COMMAND [ARG...]",
                      help="create, start, run, state, kill, delete, exec, ...")

    volume = commands.add_parser("volume", help="manage volumes: create, ls, inspect, rm, prune")
    verbs = volume.add_subparsers(dest="verb")
    create = verbs.add_parser("create", help="make a volume (a random name without NAME)")
    create.add_argument("name", nargs="?", metavar="NAME", help="its name (Docker's rule)")
    create.set_defaults(handler=cmd_volume_create)
    ls = verbs.add_parser("ls", help="list volumes")
    ls.add_argument("-q", "--quiet", action="store_true", help="only their names")
    ls.set_defaults(handler=cmd_volume_ls)
    inspect = verbs.add_parser("inspect", help="volumes as JSON, in Docker's shape")
    inspect.add_argument("names", nargs="+", metavar="NAME", help="volumes, by name")
    inspect.set_defaults(handler=cmd_volume_inspect)
    rm = verbs.add_parser("rm", help="remove volumes no container uses")
    rm.add_argument("-f", "--force", action="store_true", help="a missing volume is no error")
    rm.add_argument("names", nargs="+", metavar="NAME", help="volumes, by name")
    rm.set_defaults(handler=cmd_volume_rm)
    prune = verbs.add_parser("prune", help="remove the anonymous volumes no container uses")
    prune.add_argument("-a", "--all", action="store_true", help="named ones too")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask first")
    prune.set_defaults(handler=cmd_volume_prune)

    add_image_commands(commands)

    mkrootfs = commands.add_parser("mkrootfs", help="build a small rootfs from the host's tools")
    mkrootfs.add_argument("--no-busybox", action="store_true",
                          help="copy the host's shell and utilities even if busybox is there")
    mkrootfs.add_argument("dir", metavar="DIR", help="where to build it: a new or empty directory")
    mkrootfs.set_defaults(handler=cmd_mkrootfs)

    for name, handler, what in (
            ("install", cmd_install, "copy this file to PREFIX/lib/minidocker, compile it, "
                                     "and write the PREFIX/bin/minidocker launcher"),
            ("uninstall", cmd_uninstall, "remove what install wrote under PREFIX")):
        command = commands.add_parser(name, help=what)
        command.add_argument("--prefix", default="/usr/local", metavar="PREFIX",
                             help="default /usr/local")
        command.set_defaults(handler=handler)
    return parser


START = 0.0  # time.perf_counter() when main() was entered, for --debug


# runc's command line, as urfave/cli parses it for runc: the global flags
# first, then the command, its flags, then its arguments.


def build_runc_parser(prog="minidocker-runc"):
    parser = CommandLine(prog, description="minidocker speaking runc's command "
                         "line: an OCI runtime for podman, containerd and CRI-O.")
    parser.add_argument("--version", "-v", action="version", version="minidocker-runc "
                        "version %s\nspec: %s" % (VERSION, OCI_VERSION),
                        help="print the version and exit")
    parser.add_argument("--root", default=RUNC_ROOT, metavar="DIR",
                        help="the state directory (default %s)" % RUNC_ROOT)
    parser.add_argument("--log", metavar="FILE", help="also write errors and warnings here")
    parser.add_argument("--log-format", default="text", metavar="text|json",
                        help="the format of --log's lines")
    parser.add_argument("--debug", action="store_true", help="print the plan and timings")
    parser.add_argument("--systemd-cgroup", action="store_true",
                        help="refused: minidocker writes cgroupfs, never through systemd")
    parser.add_argument("--criu", metavar="PATH", help="accepted; checkpoints are not supported")
    parser.add_argument("--rootless", metavar="true|false|auto", default="auto",
                        help="true is refused: user namespaces are not supported yet")
    commands = parser.add_subparsers(dest="command_name")

    def command(name, help, handler, container=True):
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(handler=handler)
        if container:
            sub.add_argument("container", metavar="ID", help="the container's id")
        return sub

    def creating(sub):
        sub.add_argument("--bundle", "-b", metavar="DIR",
                         help="the bundle: config.json and its root (default: here)")
        sub.add_argument("--pid-file", metavar="FILE", help="write the init's pid here")
        sub.add_argument("--console-socket", metavar="SOCKET",
                         help="a unix socket to send the terminal's master to")
        sub.add_argument("--no-pivot", action="store_true",
                         help="accepted; the root is entered with pivot_root all the same")
        sub.add_argument("--no-new-keyring", action="store_true",
                         help="accepted: minidocker makes no session keyring")
        sub.add_argument("--preserve-fds", type=int, default=0, metavar="N",
                         help="pass descriptors 3 to 3+N-1 on to the process")

    creating(command("create", "build a container, stopped before its command",
                     runc_create_command))
    command("start", "run a created container's command", runc_start)
    run = command("run", "create and start a container, and wait for it", runc_run)
    creating(run)
    run.add_argument("--detach", "-d", action="store_true", help="leave it running")
    run.add_argument("--keep", action="store_true", help="keep its state when it exits")
    run.add_argument("--no-subreaper", action="store_true", help="accepted")
    command("state", "print a container's state JSON", runc_state)
    kill = commands.add_parser("kill", help="send a signal to a container's init")
    kill.set_defaults(handler=runc_kill)
    kill.add_argument("--all", "-a", action="store_true",
                      help="to every process of its cgroups")
    kill.add_argument("container", metavar="ID", help="the container's id")
    kill.add_argument("signal", nargs="?", metavar="SIGNAL", help="default SIGTERM")
    delete = command("delete", "remove a stopped container", runc_delete)
    delete.add_argument("--force", "-f", action="store_true", help="kill it first if it runs")
    exec_ = commands.add_parser("exec", help="run one more process in a container")
    exec_.set_defaults(handler=runc_exec)
    for names, help in ((("--process", "-p"), "the process as JSON (config.json's process)"),
                        (("--pid-file",), "write the process's pid here"),
                        (("--console-socket",), "a unix socket for the terminal's master"),
                        (("--cwd",), "its working directory"),
                        (("--user", "-u"), "UID[:GID]"),
                        (("--process-label",), "refused unless SELinux is enabled"),
                        (("--apparmor",), "refused unless AppArmor is enabled"),
                        (("--cgroup",), "accepted: the process joins the container's cgroups")):
        exec_.add_argument(*names, help=help)
    for names, help in ((("--env", "-e"), "KEY=VALUE, added"), (("--cap", "-c"), "CAP, added"),
                        (("--additional-gids", "-g"), "GID, added")):
        exec_.add_argument(*names, action="append", default=[], help=help)
    for names, help in ((("--detach", "-d"), "leave it running"),
                        (("--tty", "-t"), "allocate a terminal"),
                        (("--no-new-privs",), "set no_new_privs")):
        exec_.add_argument(*names, action="store_true", help=help)
    exec_.add_argument("--preserve-fds", type=int, default=0, metavar="N",
                       help="0 only: an exec passes no descriptor on")
    exec_.add_argument("container", metavar="ID", help="the container's id")
    exec_.add_argument("command", nargs=REMAINDER, metavar="CMD [ARG...]",
                       help="the command, without --process")
    ps = command("ps", "list the processes of a container", runc_ps)
    ps.add_argument("--format", "-f", default="table", metavar="table|json", help="the format")
    ps.add_argument("ps_options", nargs=REMAINDER, metavar="[PS OPTIONS]", help="ignored")
    for name in ("list", "ls"):
        listing = command(name, "list the containers", runc_list, container=False)
        listing.add_argument("--format", "-f", default="table", metavar="table|json",
                             help="the format")
        listing.add_argument("--quiet", "-q", action="store_true", help="ids only")
    command("pause", "freeze every process of a container",
            lambda args: runc_pause(args, True))
    command("resume", "thaw a paused container", lambda args: runc_pause(args, False))
    update = command("update", "change a running container's limits", runc_update)
    update.add_argument("--resources", "-r", metavar="FILE",
                        help="linux.resources as JSON (- for stdin)")
    for flag in RUNC_UPDATE_FLAGS:
        update.add_argument("--" + flag.replace("_", "-"), metavar="VALUE", help="as in "
                            "linux.resources." + ".".join(RUNC_UPDATE_FLAGS[flag]))
    events = command("events", "print a container's resource usage", runc_events)
    events.add_argument("--stats", action="store_true", help="once, then exit")
    events.add_argument("--interval", default="5s", metavar="DURATION",
                        help="between two (default 5s)")
    command("features", "print what this runtime supports", runc_features, container=False)
    spec = command("spec", "write a config.json of minidocker's defaults", runc_spec,
                   container=False)
    spec.add_argument("--bundle", "-b", metavar="DIR", help="where (default: here)")
    spec.add_argument("--rootless", action="store_true", dest="rootless_spec",
                      help="refused: no user namespaces")
    for name in ("checkpoint", "restore"):
        refused = commands.add_parser(name, help="not supported (CRIU)")
        refused.add_argument("words", nargs=REMAINDER, metavar="...", help="ignored")
        refused.set_defaults(handler=lambda args: unsupported(args.command_name))
    return parser


def unsupported(name):
    raise MiniDockerError("%s is not supported by minidocker (it needs CRIU)" % name)


def runc_create_command(args):
    runc_create(args)
    return 0


def run_runc(argv, prog="minidocker-runc"):
    """runc's command line -> (exit code, the error line or None). An
    error is runc's exit code 1, on stderr and in --log."""
    args, code, error = None, RUNC_EXIT, None
    try:
        try:
            args = build_runc_parser(prog).parse_args(argv)
        except SystemExit as done:  # --help and --version, printed
            return done.code or 0, None
        if args.systemd_cgroup:
            raise MiniDockerError("--systemd-cgroup: minidocker writes cgroupfs itself and "
                                  "does not drive systemd; configure the caller for cgroupfs")
        if args.rootless == "true":
            raise MiniDockerError("--rootless: minidocker-runc runs as root only (a bundle's "
                                  "user namespace, linux.uidMappings, is root's to make)")
        if args.handler not in (runc_run, runc_create_command):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_NUMBERS)
        code = args.handler(args)
    except MiniDockerError as err:
        error = str(err)
    except BrokenPipeError:
        code = 128 + signal.SIGPIPE
    except OSError as err:
        error = str(err)
    except KeyboardInterrupt:
        code, error = 130, "interrupted"
    except Exception as err:  # a bug: one line
        error = "internal error: %s: %s" % (type(err).__name__, quote(str(err)))
    runc_log(args, [("warning", w) for w in WARNINGS] + ([("error", error)] if error else []))
    return code, error


def runc_log(args, entries):
    """Warnings and the error into --log, as runc's logrus writes them."""
    path = getattr(args, "log", None)
    if not path or not entries:
        return
    moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with suppress(OSError), open(path, "a") as handle:
        for level, message in entries:
            handle.write(runc_log_line(args.log_format, level, message, moment))


def open_standard_fds():
    """Descriptors 0, 1 and 2 open, on /dev/null if the caller closed them
    (`minidocker run ... <&-`), before anything else opens a file: or a pipe
    of ours would become "stdin", as in any daemon that forgets this."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)  # the lowest free number: fd
            if null != fd:
                os.dup2(null, fd, inheritable=True)
                os.close(null)
            else:
                os.set_inheritable(fd, True)


def stop_now(number, _frame):
    raise MiniDockerError("interrupted by %s" % signal_name(number), 128 + number)


def main(argv=None):
    """The one place that writes to the user (apart from the commands' own
    output and --debug's trace): the command's warnings, then its error if
    it failed, one line each. Returns the exit code."""
    code, error = run_command(argv)
    for message in WARNINGS:
        sys.stderr.write("minidocker: warning: %s\n" % one_line(message))
    del WARNINGS[:]
    if error:
        sys.stderr.write("minidocker: %s\n" % one_line(error))
    return code


def run_command(argv):
    """-> (exit code, the error line or None). Under a name ending in
    "runc" (the minidocker-runc link), or as `minidocker runc ...`, the
    command line is runc's (chapter 12, continued)."""
    global START
    START = time.perf_counter()
    open_standard_fds()
    argv = sys.argv[1:] if argv is None else list(argv)
    if os.path.basename(sys.argv[0]).endswith("runc") or argv[:1] == ["runc"]:
        for number in STOPPING_SIGNALS:
            signal.signal(number, stop_now)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING_SIGNALS)
        if argv[:1] == ["runc"]:
            return run_runc(argv[1:], "minidocker runc")
        return run_runc(argv)
    args = None
    try:
        # Until something is made, a stopping signal simply ends the command
        # (planning may read a flag's file); `run` holds them back again
        # before it makes anything, and keeps USR1 and USR2 for the command.
        for number in STOPPING_SIGNALS:
            signal.signal(number, stop_now)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING_SIGNALS)
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help and --version, printed: done
            return done.code or 0, None
        if args.handler is not cmd_run:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_NUMBERS)
        return args.handler(args), None
    except MiniDockerError as err:
        return err.code, "error: %s" % err
    except BrokenPipeError:  # EPIPE: our output's reader left (`ps | head -1`), as SIGPIPE would
        return 128 + signal.SIGPIPE, None
    except OSError as err:
        return EXIT_RUNTIME, "error: %s" % err
    except KeyboardInterrupt:
        return 130, "interrupted"
    except Exception as err:  # a bug: one line, the traceback only with --debug
        if getattr(args, "debug", False):
            import traceback
            traceback.print_exc()
        return EXIT_RUNTIME, "error: internal error: %s: %s" % (type(err).__name__,
                                                               quote(str(err)))


def exit_now(code):
    """End the process without the interpreter's shutdown, which would free
    every object one by one (10-12 ms measured) for the kernel to free
    again. Nothing of ours is left to atexit; stdout and stderr are flushed
    first. A reader of stdout that went away (EPIPE: `minidocker inspect X
    | head -c0`) ends it as SIGPIPE would (141), as when the output was
    written before (main), whether PYTHONUNBUFFERED made it so or not."""
    for stream in (sys.stdout, sys.stderr):  # None when the caller closed the fd
        try:
            if stream is not None:
                stream.flush()
        except BrokenPipeError:
            if stream is sys.stdout and code == 0:
                code = 128 + signal.SIGPIPE
        except (OSError, ValueError):  # ValueError: a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
