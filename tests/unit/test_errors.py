"""core.errors: one error path.  An OSError becomes a domain error with its errno kept;
the record a forked process (PID 1, a hook's injector) sends carries exit code and errno
back, so hints are chosen by errno, never by matching message text; every message is
one line."""
import errno

from nvlaunch.core import errors as E


def test_record_round_trip_keeps_code_errno_and_message():
    err = E.MountError("bind", "/a", "/b", "MS_BIND", OSError(errno.EPERM, "Operation not permitted"))
    back, trace = E.unpack_error(E.pack_error(err))
    assert (back.exit_code, back.errno) == (E.EXIT_SETUP, errno.EPERM)
    assert str(back).startswith("bind src=/a dst=/b flags=MS_BIND: Operation not permitted")
    assert trace == ""
    notfound = E.ExecError("nosuch", OSError(errno.ENOENT, "No such file or directory"))
    back, _ = E.unpack_error(E.pack_error(notfound))
    assert (back.exit_code, back.errno) == (E.EXIT_NOTFOUND, errno.ENOENT)


def test_record_of_an_error_without_errno():
    back, _ = E.unpack_error(E.pack_error(E.UsageError("bad")))
    assert back.errno is None and str(back) == "bad"


def test_a_garbled_record_is_still_one_error():
    back, _ = E.unpack_error(b"not\na record")
    assert isinstance(back, E.NvlaunchError) and "\n" not in str(back)


def test_describe_is_one_line_for_every_kind():
    cases = [E.UsageError("two\nlines"), OSError(errno.ENOENT, "No such file or directory", "/x"),
             OSError(errno.EXDEV, "Invalid cross-device link", b"/a\xff", None, "/b"),
             UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"),
             RuntimeError("boom")]
    for exc in cases:
        code, msg = E.describe(exc)
        assert code == E.EXIT_SETUP and "\n" not in msg, msg
    assert E.describe(cases[2])[1] == "/a\ufffd -> /b: Invalid cross-device link"   # no repr


def test_wrap_keeps_errno_and_chooses_the_hint_by_it():
    err = E.wrap(OSError(errno.ENOSPC, "No space left on device", "/mnt"), E.NvlaunchError, "mount")
    assert err.errno == errno.ENOSPC and "mount-max" in str(err)
    assert E.hint_for(errno.EPERM, "bpf").startswith("loading or attaching")
    assert E.hint_for(errno.EPERM, "nothing-known") is None
