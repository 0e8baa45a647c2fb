"""Contract: schemathesis, every check, against ``hypercorn asgi:app`` serving its own ``/openapi.json``.

Why a real process: the document under test is the one a deployment serves
(narrowed to its limits and templates), and the answers go through hypercorn's
HTTP, so a missing ``Allow`` or a wrong media type is seen as a client sees it.
Schema-valid requests must be accepted and schema-invalid ones refused
(``positive_data_acceptance`` / ``negative_data_rejection``): the document must
say exactly what the validation accepts.

It runs schemathesis' own command line (its pytest plugin does not load a schema
from a fixture under pytest 9); ``tests/contract_hooks.py`` gives it the one format
JSON Schema lacks, ``mailbox``. Everything else comes from the document.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import free_port, stop_group

ROOT = Path(__file__).resolve().parent.parent
KEY = "contract-key"
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service as deployed: API keys, small limits, the repository's templates; no worker (nothing sent)."""
    tmp = tmp_path_factory.mktemp("contract")
    port = free_port()
    # An admin key, so the webhook deliveries routes (admin only) answer their documented 200/202/404 too.
    keys = tmp / "tenants.json"
    keys.write_text(json.dumps({"contract": {"keys": [{"key": KEY, "scopes": ["admin"]}]}}), encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": "9",  # never dialled: no worker runs
        "MAIL_DEFAULT_SENDER": "svc@example.com",
        "MAILSVC_DATABASE_URL": f"sqlite:///{tmp}/outbox.sqlite3",
        "MAILSVC_API_KEYS_FILE": str(keys),
        "MAILSVC_TEMPLATES": str(ROOT / "templates"),
        "MAILSVC_WORKERS": "0",
        "MAILSVC_RATE_LIMIT": "0",
        "MAILSVC_SECURE_COOKIES": "false",
        # Small limits, so that the coverage phase's boundary cases are quick to build; 3001 bytes is not a
        # multiple of 3, so the document's exact base64 bound is tested too.
        "MAILSVC_MAX_ATTACHMENT_BYTES": "3001",
        "MAILSVC_MAX_TEMPLATE_CHARS": "2000",
        "MAILSVC_MAX_BATCH": "20",
    }
    log = (tmp / "hypercorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # hypercorn may spawn a worker child: stop the whole group
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # wait for start-up (a guard, not an assertion on time)
            if proc.poll() is not None:
                break
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert proc.poll() is None, (tmp / "hypercorn.log").read_text()
        yield base
    finally:
        stop_group(proc)
        log.close()


SEED = os.environ.get("SCHEMATHESIS_SEED", "20261203")


def test_service_keeps_its_openapi_contract(service: str, tmp_path: Path) -> None:
    """Every phase (examples, coverage, fuzzing, stateful), every check; bounded to stay under two minutes."""
    config = tmp_path / "schemathesis.toml"
    # The key as the document's security scheme, so the auth checks can leave it out on purpose.
    config.write_text(f'[auth.openapi.bearer]\nbearer = "{KEY}"\n', encoding="utf-8")
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(config),
            "run",
            f"{service}/openapi.json",
            "--checks",
            "all",
            # DELETE on a message or batch cancels it: the record stays, readable with its cancelled state
            # (README, "Cancelling"), so "deleted resource still available" does not apply.
            "--exclude-checks",
            "use_after_free",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--report-dir",
            str(tmp_path),
            "--no-color",
            # Pinned so that CI is repeatable; SCHEMATHESIS_SEED=<n> (or "random") explores further by hand.
            *(["--seed", SEED] if SEED != "random" else []),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.contract_hooks"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-20_000:] + proc.stderr[-5_000:]
