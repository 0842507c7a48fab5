"""schemathesis (4.x, its Python API) against the project's own OpenAPI schema, as the test stack
serves it at /api/schema, through Caddy: every operation with schema-valid (positive) and
schema-invalid (negative) inputs, then stateful scenarios that follow the schema's OpenAPI links
(sign-up -> the new user's operations -> a new post -> the post's operations;
api/gateway/openapi_contract.py). The properties: no 5xx, and every response conforms to the schema
(status code documented, content type, headers, body against its schema); negative inputs are
refused (4xx); a deleted resource is gone, a created one is there.

Authentication as a real client has it: an operation on a user's data (`/users/{user_id}/...`)
carries that user's own member token, minted with the stack's key; the admin endpoints the
operator's token; everything else none. Left out: the two operations that would change the
shared test stack under the other tests (PUT/PATCH /admin/topology: app servers, shards, limits),
and DELETE /admin/errors (other tests read the error groups).

Not asked of the schema: accepting every input it allows (schemathesis' positive_data_acceptance).
Some rules are not expressible in it: a cursor must be one the API issued, a time range must not
end before it starts, a username or email must be free."""
import collections
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from api.gateway import auth
from hostile import SOAK, Plain, record, unpatched

EXAMPLES = 25 if SOAK else 3          # per operation and generation mode
SCENARIOS = 300 if SOAK else 12       # stateful: hypothesis examples of the state machine
STEPS = 10                            # at most this many calls per scenario
MAX_ID = 2**63 - 1
DIGITS = re.compile(r"^[0-9]{1,19}$")
# Left out: they would change the shared stack under the other tests.
UNSAFE = r"^/api/v1/admin/(topology|errors)$"
CONFIG = {
    # Links come from the schema only: schemathesis would otherwise infer its own, e.g. from
    # GET /users's results to DELETE /users/{user_id}, deleting the seeded users other tests use.
    # Scenarios are made of valid calls, so that they get somewhere: a user made, then a post made.
    "phases": {"stateful": {"inference": {"algorithms": []}, "max-steps": STEPS,
                            "generation": {"mode": "positive", "allow-x00": False}}},
    "checks": {"positive_data_acceptance": {"enabled": False},
               # Schemathesis' list, plus the gateway's refusals of a body before it is parsed (too
               # large, chunked, not JSON); a 5xx is never among them (not_a_server_error).
               "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 406, 409, 411, 413, 415,
                                                                 422, 428, 429]},
               # Needs two users' credentials configured; IDOR is tests/test_hostile_auth.py's.
               "object_level_authorization": {"enabled": False}},
}


def credentials(case, operator: dict) -> dict:
    if case.path.startswith("/api/v1/admin/"):
        return operator
    user_id = str((case.path_parameters or {}).get("user_id", ""))
    if DIGITS.match(user_id) and int(user_id) <= MAX_ID:
        return {"Authorization": f"Bearer {auth.access_token(int(user_id), 'member')}"}
    return {}


class Tally:
    """Cases and responses per operation and status class; failures kept, not raised, so one run
    tries every operation and reports every failure at once."""

    def __init__(self):
        self.cases = collections.Counter()
        self.statuses = collections.Counter()
        self.answers = collections.Counter()  # (operation, status)
        self.failures: list[str] = []

    def call(self, case, session, operator, label: str):
        response = case.call(session=session, headers=credentials(case, operator), timeout=30)
        self.cases[label] += 1
        self.statuses[f"{response.status_code // 100}xx"] += 1
        self.answers[(label, response.status_code)] += 1
        return response

    def check(self, case, response, label: str) -> None:
        try:
            case.validate_response(response)
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' Failure and FailureGroup
            self.failures.append(f"{label}: {case.method} {case.formatted_path} -> {response.status_code}: "
                                 f"{str(exc)[:600]}")

    @property
    def server_errors(self) -> int:
        return self.statuses["5xx"]


def load(api_url: str):
    config = SchemathesisConfig.from_dict(CONFIG)
    schema = schemathesis.openapi.from_url(api_url + "/api/schema", config=config, timeout=60)
    return schema.exclude(path_regex=UNSAFE, method=["PUT", "PATCH", "DELETE"])


def stateless(schema, operator: dict, examples: int = EXAMPLES) -> Tally:
    tally = Tally()
    with Plain() as session, unpatched():
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                label = f"{operation.label} ({mode.value})"

                @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def run(case):
                    tally.check(case, tally.call(case, session, operator, label), label)

                run()
    return tally


def stateful(schema, operator: dict, scenarios: int = SCENARIOS) -> Tally:
    tally = Tally()

    class Workflow(schema.as_state_machine()):
        def call(self, case, **kwargs):
            return tally.call(case, session, operator, f"stateful {case.operation.label}")

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            try:
                super().validate_response(response, case, additional_checks, **kwargs)
            except (AssertionError, BaseExceptionGroup) as exc:  # recorded; see Tally.check
                tally.failures.append(f"stateful {case.method} {case.formatted_path} -> {response.status_code}: "
                                      f"{str(exc)[:600]}")

    with Plain() as session, unpatched():
        Workflow.run(settings=settings(max_examples=scenarios, stateful_step_count=STEPS, deadline=None,
                                       database=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                                       suppress_health_check=list(HealthCheck)))
    return tally


@pytest.fixture(scope="module")
def schema(stack):
    return load(stack["api_url"])


def test_the_schema_has_links_from_each_write_to_what_it_made(schema):
    """The stateful run below needs them; without links it would only try ids that do not exist."""
    links = {(source.label, target.label) for source, target in _links(schema)}
    for version in ("v1", "v2"):
        assert (f"POST /api/{version}/users", f"GET /api/{version}/users/{{user_id}}") in links, links
        assert (f"POST /api/{version}/users", f"POST /api/{version}/users/{{user_id}}/posts") in links
        assert (f"POST /api/{version}/users/{{user_id}}/posts",
                f"DELETE /api/{version}/users/{{user_id}}/posts/{{post_id}}") in links


def _links(schema):
    operations = {op.definition.raw.get("operationId"): op for op in (r.ok() for r in schema.get_all_operations())}
    for source in operations.values():
        for response in source.definition.raw.get("responses", {}).values():
            for link in (response.get("links") or {}).values():
                if link.get("operationId") in operations:
                    yield source, operations[link["operationId"]]


def test_every_operation_with_valid_and_invalid_inputs(schema, stack_config):
    tally = stateless(schema, stack_config.operator_headers())
    record("schemathesis stateless", operations=len({label.rsplit(" (", 1)[0] for label in tally.cases}),
           cases=sum(tally.cases.values()),
           **dict(sorted(tally.statuses.items())), failures=len(tally.failures))
    assert tally.server_errors == 0, "\n".join(f for f in tally.failures if "-> 5" in f)
    assert not tally.failures, "\n\n".join(tally.failures[:20])
    assert min(tally.cases.values()) >= 1 and len(tally.cases) >= 2 * 40, tally.cases  # every operation was tried


def test_stateful_scenarios_along_the_links(schema, stack_config):
    tally = stateful(schema, stack_config.operator_headers())
    record("schemathesis stateful", scenarios=SCENARIOS, calls=sum(tally.cases.values()),
           operations=len(tally.cases), **dict(sorted(tally.statuses.items())), failures=len(tally.failures))
    assert tally.server_errors == 0, "\n".join(f for f in tally.failures if "-> 5" in f)
    assert not tally.failures, "\n\n".join(tally.failures[:20])
    # The links were followed: operations on a user that a sign-up made. Whether a scenario also
    # reaches a post made after it depends on what the server answered on the way (a 429 from the
    # sign-up limit ends that path), so it is counted, not required.
    followed = {label for label in tally.cases if "{user_id}" in label}
    assert followed, sorted(tally.cases)
    record("schemathesis stateful links", user_operations=len(followed),
           post_operations=sum("{post_id}" in label for label in followed))
