import subprocess
import sys

import pytest

from mmrad import __version__
from mmrad.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mmrad {__version__}"


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "usage: mmrad" in out


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_info_reports_versions_codecs_and_device(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "open_clip_torch", "transformers", "peft", "accelerate", "pydicom"):
        assert name in out
    assert "JPEG 2000 Image Compression" in out and "RLE Lossless" in out
    assert "accelerate device    cpu" in out or "accelerate device    cuda" in out


def test_failure_is_one_line_exit_1(capsys, monkeypatch):
    import mmrad.commands.info as info

    def boom(args):
        raise ValueError("something\nwent wrong")

    monkeypatch.setattr(info, "_run_info", boom)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "mmrad: error: something went wrong"
    with pytest.raises(ValueError):
        main(["--debug", "info"])


def test_console_script_and_module_entry_points():
    exe = [sys.executable, "-m", "mmrad.cli", "--version"]
    result = subprocess.run(exe, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"mmrad {__version__}"
