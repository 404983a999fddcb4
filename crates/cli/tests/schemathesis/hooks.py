"""Schemathesis hooks for the pass over factstore's OpenAPI document (crates/cli/tests/schemathesis.rs).

Every check runs (`--checks all`). A failure is dropped here only when the answer is one the
document states in prose because JSON Schema cannot: a rule across two parameters, or an
answer that depends on what the store holds. Each is matched by status, error code and message,
so anything else the same operation answers still fails the run.
"""

import json
import os
import threading
import uuid

import schemathesis

# Hypothesis describes a strategy's filter by parsing the source file of its lambda, and on
# CPython 3.11 before 3.11.9 `ast.parse` run by two threads at once can fail ("AST constructor
# recursion depth mismatch"): with `--workers 2` that failed a pass now and then, depending on
# which operations happened to be covered at the same moment. One description at a time.
try:
    from hypothesis.internal import lambda_sources as _lambda_sources

    _describe = _lambda_sources._lambda_description
    _describing = threading.Lock()

    def _describe_one_at_a_time(f):
        with _describing:
            return _describe(f)

    _lambda_sources._lambda_description = _describe_one_at_a_time
except (ImportError, AttributeError):
    pass

# (check code, status, error code, a part of the message): expected answers to requests the
# schemas alone cannot tell apart from good ones.
DOCUMENTED = [
    # Limits are in bytes of UTF-8; JSON Schema's `maxLength` counts characters.
    ("ST202", 400, "invalid_request", " bytes, got "),
    # One aggregate at most once in a commit's `appends`, and each event id at most once in a
    # request: uniqueness by one field of the items, which `uniqueItems` cannot state.
    ("ST202", 400, "invalid_request", "appears more than once in appends"),
    ("ST202", 400, "invalid_request", "appears more than once in the request"),
    # `to` and `until` of an aggregate read are one bound under two names: give one.
    ("ST202", 400, "invalid_request", "to and until mean the same"),
    # An upcaster goes up: `to_version` (body) above `from_version` (path).
    ("ST202", 400, "invalid_request", "to_version must be greater than the version upcast from"),
    # Acks, nacks and replays name positions the group has delivered or parked.
    ("ST202", 400, "invalid_request", "is not an event of the store"),
    ("ST202", 400, "invalid_request", "is not parked"),
    # The JSON Schema registered for an event type (by an earlier PUT /v1/schemas/...).
    ("ST202", 422, "schema_violation", ""),
    # A snapshot is of a version the aggregate has.
    ("ST202", 422, "invalid_snapshot", ""),
    # A projection's pointers and operands must fit the events (checked when it is compiled).
    ("ST202", 422, "invalid_projection", ""),
    # Read-your-writes: `min_position` not reached within `wait_ms` is 503 with Retry-After.
    ("ST101", 503, "not_yet_materialized", ""),
]


def _error(response):
    try:
        error = json.loads(response.content)["error"]
        return error.get("code", ""), error.get("message", "")
    except (ValueError, KeyError, TypeError):
        return "", ""


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    code, message = _error(response)
    for check, status, error_code, part in DOCUMENTED:
        if (
            failure.code == check
            and response.status_code == status
            and code == error_code
            and part in message
        ):
            return False
    return True


# Long polls and read-your-writes waits may last a minute each (`wait_ms` up to 60000), which
# would spend the pass's time budget waiting. Valid waits are cut to 100 ms; invalid ones
# (over 60000, not a whole number) are left for the server to refuse.
WAIT_MS_CUT = 100


def _cut(value):
    if isinstance(value, int) and not isinstance(value, bool) and WAIT_MS_CUT < value <= 60000:
        return WAIT_MS_CUT
    if isinstance(value, str) and value.isdigit() and WAIT_MS_CUT < int(value) <= 60000:
        return str(WAIT_MS_CUT)
    return value


@schemathesis.hook
def map_query(ctx, query):
    if isinstance(query, dict) and "wait_ms" in query:
        query["wait_ms"] = _cut(query["wait_ms"])
    return query


# A backup writes a copy of the store into the folder its body names, on the server's machine.
# Every folder a case names (any string: the document says "absolute" in prose) is replaced by
# a fresh one under the test's own folder (FACTSTORE_SCHEMATHESIS_BACKUPS), in every phase, so
# that the pass writes nowhere else and each backup finds its folder new. Values that are no
# string are left for the server to refuse.
BACKUPS = os.environ.get("FACTSTORE_SCHEMATHESIS_BACKUPS")


@schemathesis.hook
def before_call(ctx, case, kwargs):
    # The coverage phase's cases do not go through `map_query` / `map_body`: waits are cut here
    # too, right before every request.
    if isinstance(case.query, dict) and "wait_ms" in case.query:
        case.query["wait_ms"] = _cut(case.query["wait_ms"])
    if isinstance(case.body, dict) and "wait_ms" in case.body:
        case.body["wait_ms"] = _cut(case.body["wait_ms"])
    if case.operation.path != "/v1/admin/backup" or not isinstance(case.body, dict):
        return
    to = case.body.get("to")
    if isinstance(to, str):
        if not BACKUPS:
            raise RuntimeError("FACTSTORE_SCHEMATHESIS_BACKUPS must name a folder for the backups")
        case.body["to"] = os.path.join(BACKUPS, uuid.uuid4().hex)


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict) and "wait_ms" in body:
        body["wait_ms"] = _cut(body["wait_ms"])
    return body
