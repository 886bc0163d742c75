"""chmod specs: parse errors, and modes checked against the stock rsync's own ``--chmod``.

The oracle is the real client copying a tree locally with ``-r -p --chmod=SPEC``
(rsync applies the same parse_chmod()/tweak_mode() there as rsyncd does for
``incoming chmod``); ChmodSpec.apply must give the same mode for every entry.
"""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from backupd.config.load import load_config
from backupd.errors import ConfigError
from backupd.protocol.chmod import current_umask, parse_chmod

SPECS = (
    "Dg+s,ug+w,Fo-w,+X",
    "D2775,F664",
    "u=rwX,go=rX",
    "a-w",
    "+x",
    "=r",
    "go=",
    "Fu+s,Dg+s,+t",
    "o-rwx,g+r",
    "u-x,a+X",
)
FILE_MODES = (0o600, 0o644, 0o755, 0o700, 0o640, 0o666, 0o750, 0o4755, 0o2711, 0o1777 & ~0o1000)
DIR_MODES = (0o700, 0o755, 0o750, 0o2770, 0o711)


def _make_source(root) -> dict[str, int]:
    os.mkdir(root)
    made = {}
    for i, mode in enumerate(FILE_MODES):
        path = os.path.join(root, f"f{i}")
        with open(path, "w") as f:
            f.write("x")
        os.chmod(path, mode)
        made[f"f{i}"] = stat.S_IFREG | mode
    for i, mode in enumerate(DIR_MODES):
        path = os.path.join(root, f"d{i}")
        os.mkdir(path)
        made[f"d{i}"] = stat.S_IFDIR | mode
    for i, mode in enumerate(DIR_MODES):  # after the files inside were made
        os.chmod(os.path.join(root, f"d{i}"), mode)
    return made


@pytest.mark.parametrize("spec", SPECS)
def test_modes_equal_the_stock_rsync_chmod(spec, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    made = _make_source(src)
    done = subprocess.run(
        ["rsync", "-r", "-p", f"--chmod={spec}", f"{src}/", f"{dst}/"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    parsed = parse_chmod(spec, umask=current_umask())
    for name, mode in made.items():
        want = os.lstat(dst / name).st_mode
        assert oct(parsed.apply(mode)) == oct(want), f"{spec}: {name} {oct(mode)}"


def test_symlinks_and_mode_zero_are_never_changed():
    spec = parse_chmod("a=rwx", umask=0)
    assert spec.apply(stat.S_IFLNK | 0o777) == stat.S_IFLNK | 0o777
    assert spec.apply(0) == 0


@pytest.mark.parametrize("bad", ["", "Q+r", "u+q", "DF+r", "u", "rw", "D999", "u+r,,g+w", "8"])
def test_bad_specs_raise_value_error(bad):
    with pytest.raises(ValueError):
        parse_chmod(bad, umask=0)


def test_a_bad_incoming_chmod_fails_the_config_with_its_location(tmp_path):
    conf = tmp_path / "rsyncd.conf"
    conf.write_text(f"[m]\n    path = {tmp_path}\n    incoming chmod = Dg+s,u+q\n")
    with pytest.raises(ConfigError, match="incoming chmod"):
        load_config(conf)
