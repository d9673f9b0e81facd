"""A wheel (what `pip install git+...` builds) must carry the built-in profiles and the batch
server's web page."""

import subprocess
import sys
import zipfile
from pathlib import Path

from vbatch.services.batch_server.ui import ASSETS

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_every_builtin_profile_and_the_web_page(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("vbatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(name).name for name in names if name.startswith("vbatch/builtin_profiles/")}
    expected = {path.name for path in (ROOT / "configs" / "profiles").glob("*.toml")}
    assert expected and shipped == expected
    assert {f"vbatch/services/batch_server/ui/{name}" for name in ASSETS} <= set(names)
