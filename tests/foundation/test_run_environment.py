"""bin/run's environment: a variable set in the real environment wins over $BOOKME_STATE_DIR/chain.env,
which wins over .env, in every process the Procfile starts (README, docs/configuration.md); the run
command's own ports and local-development defaults follow the same order."""
import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What a Procfile process sees: its settings (read the Django way) and the variables bin/run exported.
PROBE = (
    "import json, os; from django.conf import settings as s; print('PROBE ' + json.dumps({"
    "'rpc': s.CHAIN_RPC_URLS, 'start_block': s.CHAIN_START_BLOCK, 'hosts': s.ALLOWED_HOSTS, "
    "'siwe': s.SIWE_DOMAIN, 'metrics_port': s.WORKER_METRICS_PORT, "
    "'web_port': os.environ['WEB_PORT'], 'asgi_port': os.environ['ASGI_PORT'], "
    "'chain_port': os.environ['CHAIN_PORT'], 'cors': os.environ['CORS_ALLOWED_ORIGINS'], "
    "'database': s.DATABASES['default']['NAME'], 'database_url': os.environ['DATABASE_URL']}))"
)


def _checkout_copy(tmp_path: Path) -> Path:
    """The checkout's code in a directory of its own, so that the test owns its `.env`."""
    copy = tmp_path / "checkout"
    shutil.copytree(
        ROOT, copy, symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv", "node_modules", "tests", "var", ".env", "__pycache__"),
    )
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def test_real_environment_beats_chain_env_beats_dotenv_in_the_procfile_processes(tmp_path):
    checkout, state = _checkout_copy(tmp_path), tmp_path / "state"
    state.mkdir()
    (checkout / ".env").write_text(
        "CHAIN_RPC_URLS=http://dotenv.invalid:1\nCHAIN_START_BLOCK=5\nDJANGO_ALLOWED_HOSTS=dotenv.example\n"
        "WEB_PORT=1111\nASGI_PORT=2222\nWORKER_METRICS_PORT=3333\n"
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookme_from_dotenv\n"
    )
    (state / "chain.env").write_text(
        "CHAIN_RPC_URLS=http://chain-env.invalid:2\nCHAIN_START_BLOCK=7\nCHAIN_ID=31337\n"
    )
    (checkout / "Probe.procfile").write_text(f'probe: python -c "{PROBE}"\n')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST", "CHAIN_", "WEB_", "ASGI_", "WORKER_", "SIWE_", "CORS_", "DATABASE_"))}
    env.update(
        PATH=f"{ROOT / '.venv/bin'}:{env['PATH']}", DJANGO_SETTINGS_MODULE="bookme.settings",
        BOOKME_READ_ENV_FILES="1", BOOKME_STATE_DIR=str(state),
        CHAIN_RPC_URLS="http://real-environment.invalid:3", WEB_PORT="4444",  # the overrides
    )
    # bin/run's own steps: its settings, then the Procfile (here the probe) through honcho.
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail; source bin/_env; bookme_run_settings; bookme_start_procfile Probe.procfile"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=60,
    )
    lines = [line.split("PROBE ", 1)[1] for line in result.stdout.splitlines() if "PROBE " in line]
    assert lines, result.stdout + result.stderr
    seen = json.loads(lines[0])
    assert seen["rpc"] == ["http://real-environment.invalid:3"]  # real environment over both files
    assert seen["start_block"] == 7  # chain.env over .env
    assert seen["hosts"] == ["dotenv.example"]  # .env where nothing else sets it
    assert (seen["web_port"], seen["asgi_port"], seen["metrics_port"]) == ("4444", "2222", 3333)
    assert seen["chain_port"] == "8545"  # the run command's default where no layer sets it
    # bin/setup creates the database bin/run resolves this way (bookme_resolve DATABASE_URL).
    assert seen["database"] == "bookme_from_dotenv" and seen["database_url"].endswith("/bookme_from_dotenv")
    # The sign-in domain defaults to this run's own address; CORS to the usual dev-server origins.
    assert seen["siwe"] == ["127.0.0.1:4444", "localhost:4444"]
    assert "http://localhost:5173" in seen["cors"].split(",")
