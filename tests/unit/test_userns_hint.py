"""The error hint for hosts that restrict unprivileged user namespaces names the fix."""
from nvlaunch.host import features


def test_hint_names_the_setting(tmp_path, monkeypatch):
    knob = tmp_path / "apparmor_restrict_unprivileged_userns"
    knob.write_text("1\n")
    monkeypatch.setattr(features, "USERNS_SYSCTLS", (
        (str(tmp_path / "missing"), "0", "never shown"),
        (str(knob), "1", "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
    ))
    hint = features.userns_restriction()
    assert "apparmor_restrict_unprivileged_userns=0" in hint and "= 1" in hint
    knob.write_text("0\n")
    assert features.userns_restriction() is None


def test_this_host_is_not_restricted():
    # this machine allows unprivileged user namespaces (the rootless tests rely on it)
    assert features.userns_restriction() is None
