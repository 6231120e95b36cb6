"""Hostile and broken XML: refused with a located problem, nothing resolved, fetched or stored."""

from __future__ import annotations

import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.bpmn.bundle import Bundle
from engine.errors import DeploymentRejected
from engine.process import deployments
from tests.support.bpmn import BPMN_NS, bundle_of, linear, process, row_counts, user_task

# Process and diagram logic: the same on either store (SQLite runs the processes end to end
# in tests/api/test_process_end_to_end.py).
pytestmark = pytest.mark.store_independent

TAIL = (f'<bpmn:definitions xmlns:bpmn="{BPMN_NS}" id="d" targetNamespace="http://x">'
        '<bpmn:process id="p" isExecutable="true"><bpmn:startEvent id="s"/></bpmn:process></bpmn:definitions>')



def _rejected(db, rt, actor, bundle: Bundle) -> DeploymentRejected:
    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, rt, bundle, actor=actor)
    return caught.value


def _raw(data: bytes | str) -> Bundle:
    return Bundle(name="hostile", bpmn={"p.bpmn": data.encode() if isinstance(data, str) else data},
                  forms={"any": {"type": "object"}})


def test_malformed_xml_is_a_problem_on_the_line_where_it_breaks(db, rt, people):
    good = process(linear(("ask", user_task("ask"))))
    lines = good.splitlines()
    broken_at = next(n for n, text in enumerate(lines, start=1) if 'id="ask"' in text)
    lines[broken_at - 1] = lines[broken_at - 1].replace("/>", ">")  # an element never closed
    before = row_counts(db)
    rejected = _rejected(db, rt, people.owner, _raw("\n".join(lines)))
    (problem,) = rejected.problems
    assert problem.file == "p.bpmn"
    assert "not well-formed" in problem.message
    assert problem.line is not None and problem.line > broken_at  # the parser notices at the next closing tag
    assert row_counts(db) == before


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
""" + TAIL.replace('<bpmn:startEvent id="s"/>', '<bpmn:documentation>&lol9;</bpmn:documentation>'
                   '<bpmn:startEvent id="s" name="&lol9;"/>')


def test_a_billion_laughs_bomb_is_refused_without_expanding(db, rt, people):
    before = row_counts(db)
    started = time.monotonic()
    rejected = _rejected(db, rt, people.owner, _raw(BOMB))
    assert time.monotonic() - started < 5
    assert len(rejected.problems) == 1
    problem = rejected.problems[0]
    assert "DOCTYPE" in problem.message or "entity" in problem.message
    assert "lollol" not in str(rejected)
    assert row_counts(db) == before


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-4f1c9a", encoding="utf-8")
    return path


@pytest.mark.parametrize("where", ["element", "attribute"])
def test_an_external_file_entity_is_not_resolved(db, rt, people, secret_file, where):
    body = ('<bpmn:documentation>&xxe;</bpmn:documentation><bpmn:startEvent id="s"/>' if where == "element"
            else '<bpmn:startEvent id="s" name="&xxe;"/>')
    xml = (f'<?xml version="1.0"?>\n<!DOCTYPE d [ <!ENTITY xxe SYSTEM "file://{secret_file}"> ]>\n'
           + TAIL.replace('<bpmn:startEvent id="s"/>', body))
    before = row_counts(db)
    rejected = _rejected(db, rt, people.owner, _raw(xml))
    assert rejected.problems
    assert "TOP-SECRET" not in str(rejected)
    assert all("TOP-SECRET" not in p.message for p in rejected.problems)
    assert row_counts(db) == before


def test_etc_passwd_is_not_resolved(db, rt, people):
    xml = ('<?xml version="1.0"?>\n<!DOCTYPE d [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>\n'
           + TAIL.replace('<bpmn:startEvent id="s"/>', '<bpmn:startEvent id="s" name="x"/>'
                          '<bpmn:documentation>&xxe;</bpmn:documentation>'))
    before = row_counts(db)
    rejected = _rejected(db, rt, people.owner, _raw(xml))
    assert "root:" not in str(rejected)
    assert row_counts(db) == before


class _Recorder(BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        body = b'<!ENTITY leaked "FETCHED">'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    # The recorder works: a real request is seen (so an empty list below means "not fetched").
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/probe", timeout=5) as response:
        assert response.read() == b'<!ENTITY leaked "FETCHED">'
    assert server.hits == ["/probe"]  # type: ignore[attr-defined]
    server.hits.clear()  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _http_cases(base: str) -> dict[str, str]:
    return {
        "general_entity": (f'<?xml version="1.0"?>\n<!DOCTYPE d [ <!ENTITY xxe SYSTEM "{base}/entity"> ]>\n'
                           + TAIL.replace('<bpmn:startEvent id="s"/>',
                                          '<bpmn:documentation>&xxe;</bpmn:documentation><bpmn:startEvent id="s"/>')),
        "parameter_entity": (f'<?xml version="1.0"?>\n<!DOCTYPE d [ <!ENTITY % remote SYSTEM "{base}/param"> '
                             "%remote; ]>\n" + TAIL),
        "external_dtd": f'<?xml version="1.0"?>\n<!DOCTYPE d SYSTEM "{base}/dtd">\n' + TAIL,
    }


@pytest.mark.parametrize("case", ["general_entity", "parameter_entity", "external_dtd"])
def test_nothing_is_fetched_over_http(db, rt, people, http_server, case):
    base = f"http://127.0.0.1:{http_server.server_address[1]}"
    before = row_counts(db)
    rejected = _rejected(db, rt, people.owner, _raw(_http_cases(base)[case]))
    assert rejected.problems
    assert "FETCHED" not in str(rejected)
    assert http_server.hits == []
    assert row_counts(db) == before


def test_schema_location_and_xinclude_are_not_followed(db, rt, people, http_server):
    base = f"http://127.0.0.1:{http_server.server_address[1]}"
    xml = process(linear(("ask", user_task("ask"))))
    xml = xml.replace('id="defs"', f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                                   f'xsi:schemaLocation="{BPMN_NS} {base}/schema.xsd" id="defs"')
    xml = xml.replace('<bpmn:startEvent id="start"/>',
                      '<bpmn:startEvent id="start"><bpmn:extensionElements>'
                      f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{base}/include"/>'
                      "</bpmn:extensionElements></bpmn:startEvent>")
    deployments.check(None, rt, bundle_of(xml))
    assert http_server.hits == []


NOT_BPMN = [
    ('<?xml version="1.0"?>\n<note><to>客户</to><body>not a diagram</body></note>', "note"),
    ("<html><body>hello</body></html>", "html"),
    ("", "not well-formed"),
    (b"\x00\x01\x02\xff\xfe", "not well-formed"),
    ("just some text", "not well-formed"),
]


def test_a_file_that_is_not_bpmn_is_refused(db, rt, people):
    before = row_counts(db)
    for content, words in NOT_BPMN:
        rejected = _rejected(db, rt, people.owner, _raw(content))
        (problem,) = rejected.problems
        assert (problem.file, words in problem.message) == ("p.bpmn", True), (content, problem)
        assert problem.line is not None, (content, problem)
    assert row_counts(db) == before


def test_a_file_without_an_executable_process_is_refused(db, rt, people):
    before = row_counts(db)
    rejected = _rejected(db, rt, people.owner, bundle_of(process(linear(("ask", user_task("ask"))),
                                                                 executable=False)))
    (problem,) = rejected.problems
    assert "no executable process" in problem.message
    assert row_counts(db) == before


def test_a_bundle_without_any_bpmn_file_is_refused(db, rt, people):
    before = row_counts(db)
    rejected = _rejected(db, rt, people.owner, Bundle(name="forms-only", forms={"any": {"type": "object"}}))
    assert "no .bpmn file" in rejected.problems[0].message
    assert row_counts(db) == before
