"""Schema-driven fuzzing: whatever a client sends, valid or not, the answer is never a 5xx."""

import schemathesis
from hypothesis import HealthCheck, settings

from serve_app.api.app import create_app
from serve_app.api.settings import ApiSettings
from tests.support_api import FakeEngine


def _app():
    import tempfile
    from pathlib import Path

    return create_app(FakeEngine(), ApiSettings(voices_dir=Path(tempfile.mkdtemp(prefix="csm-fuzz-voices-"))))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_input_causes_a_server_error(case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
