"""What the OpenAPI document says about requests and errors, beyond the schemas (the whole
document against the server: tests/api/test_schema_conformance.py)."""

import re

from api.openapi import ERRORS, TEXT_PATTERN
from tests.support.api import API

WRITES = ("post", "put", "patch", "delete")


def _spec(client):
    return client.get(f"{API}/openapi.json").json


def _operations(spec):
    return {(method, path): operation for path, item in spec["paths"].items()
            for method, operation in item.items() if method in ("get", *WRITES)}


def _response(spec, answer):
    return spec["components"]["responses"][answer["$ref"].rsplit("/", 1)[-1]] if "$ref" in answer else answer


def test_every_operation_lists_its_errors_and_none_is_left_to_a_default(client):
    spec = _spec(client)
    operations = _operations(spec)
    assert set(operations) == set(ERRORS)
    for (_, path), operation in operations.items():
        statuses = set(operation["responses"])
        assert "default" not in statuses, path
        assert {"400", "422"} <= statuses, path
        assert "401" in statuses, path  # no token, or (signing in) a wrong password
        if "requestBody" in operation:
            assert "413" in statuses, path
        for status, answer in operation["responses"].items():
            if status.startswith(("4", "5")):
                assert "application/problem+json" in _response(spec, answer)["content"], (path, status)


def test_the_503_concurrent_change_is_listed_on_the_writes_that_can_collide(client):
    spec = _spec(client)
    operations = _operations(spec)
    for key in [("post", "/api/v1/tasks/{task_id}/complete"), ("post", "/api/v1/messages"),
                ("put", "/api/v1/sla/policies/{key}"), ("post", "/api/v1/staff/{username}/departure")]:
        answer = _response(spec, operations[key]["responses"]["503"])
        assert "concurrent_change" in answer["description"] and "Retry-After" in answer["headers"]
    assert all("503" not in operation["responses"] for (method, _), operation in operations.items() if method == "get")


def test_a_body_is_required_only_when_it_has_a_required_member(client):
    operations = _operations(_spec(client))
    required = {path.rsplit("/", 1)[-1]: operations[("post", path)]["requestBody"]["required"] for path in (
        "/api/v1/instances/{instance_id}/cancel", "/api/v1/tasks/{task_id}/pause", "/api/v1/tasks/{task_id}/complete",
        "/api/v1/messages", "/api/v1/tasks/{task_id}/assign")}
    assert required == {"cancel": False, "pause": False, "complete": False, "messages": True, "assign": True}


def test_the_bundle_upload_and_the_registry_import_document_their_bodies(client):
    operations = _operations(_spec(client))
    upload = operations[("post", "/api/v1/deployments")]["requestBody"]
    assert upload["required"] is True
    assert {"multipart/form-data", "application/xml", "application/zip"} <= set(upload["content"])
    files = upload["content"]["multipart/form-data"]["schema"]["properties"]["files"]
    assert files["items"] == {"type": "string", "format": "binary"}
    parts = operations[("post", "/api/v1/registry/import")]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(parts["properties"]) == {"branches", "staff", "groups", "clients"}


def test_decimals_are_documented_as_the_strings_they_are_served_as(client):
    schemas = _spec(client)["components"]["schemas"]
    assert schemas["ClientOut"]["properties"]["assets"]["type"] == "string"
    assert schemas["ClientOut"]["properties"]["assets"]["format"] == "decimal"
    target = schemas["Policy"]["properties"]["target_amount"]
    assert {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"} in target["anyOf"]


def test_text_documents_that_it_holds_no_nul_and_dates_their_range(client):
    spec = _spec(client)
    login = spec["components"]["schemas"]["LoginIn"]["properties"]
    assert login["username"]["pattern"] == TEXT_PATTERN and re.fullmatch(TEXT_PATTERN, "李") and not re.fullmatch(
        TEXT_PATTERN, "a\x00")
    day = next(p for p in spec["paths"]["/api/v1/figures/complaints"]["get"]["parameters"] if p["name"] == "from")
    assert re.fullmatch(day["schema"]["pattern"], "2099-12-31") and not re.fullmatch(day["schema"]["pattern"],
                                                                                      "9999-12-31")
    instance_id = spec["paths"]["/api/v1/instances/{instance_id}"]["parameters"][0]["schema"]
    assert instance_id["maximum"] == 2**63 - 1
