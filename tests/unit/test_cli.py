import subprocess
import sys


def test_help_lists_every_command(run_cli):
    from llamapod.cli.main import COMMANDS

    code, out, _ = run_cli("--help")
    assert code == 0
    for name in COMMANDS:
        assert name in out


def test_help_imports_neither_torch_nor_boto3():
    probe = (
        "import sys\n"
        "from llamapod.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'boto3', 'botocore', 'numpy', 'pydantic') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "HEAVY=\n" in out


def test_unknown_command_suggests_closest(run_cli):
    code, _, err = run_cli("trian")
    assert code != 0
    assert "Did you mean 'train'?" in err
    assert "Traceback" not in err
