"""The Vagrantfile is valid for both providers (checked offline by Vagrant itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_vagrantfile_validates(tmp_path: Path) -> None:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("vagrant is not installed: scripts/setup.sh installs Debian's vagrant")
    # --ignore-provider: validate without libvirt or VirtualBox being installed here.
    # Vagrant's state goes to a temporary folder, not into the checkout.
    env = {**os.environ, "VAGRANT_DOTFILE_PATH": str(tmp_path / ".vagrant")}
    p = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "validated successfully" in p.stdout


def test_vagrantfile_names_both_providers_and_the_setup_script() -> None:
    text = (ROOT / "Vagrantfile").read_text()
    for needle in ('provider "libvirt"', 'provider "virtualbox"', "debian/bookworm64",
                   "scripts/setup.sh", 'synced_folder "."'):
        assert needle in text
