import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llamapod.cloud.session import PERSISTENT, AwsSession, call, lookup_retries
from llamapod.errors import CloudError


def test_session_reaches_the_emulator(aws):
    session = AwsSession(region="us-east-1")
    assert session.account_id.isdigit()


def test_client_error_becomes_one_line_cloud_error(aws):
    session = AwsSession(region="us-east-1")
    with pytest.raises(CloudError) as info:
        call(session.client("sagemaker"), "describe_cluster", ClusterName="nope")
    assert info.value.op == "describe_cluster"
    assert "\n" not in str(info.value)


def test_each_call_site_chooses_its_retry_policy(aws_warm):
    session = AwsSession(region="us-east-1")
    persistent, lookup = session.client("sts"), session.client("sts", retries=lookup_retries(2))
    assert persistent is session.client("sts", retries=PERSISTENT) and lookup is session.client("sts", lookup_retries(2))
    assert persistent is not lookup
    assert persistent.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 11}
    assert lookup.meta.config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert (lookup.meta.config.connect_timeout, lookup.meta.config.read_timeout) == (5, 20)


class _Unavailable(BaseHTTPRequestHandler):
    """An AWS endpoint that answers every request 503 ServiceUnavailable, which botocore retries."""

    def do_POST(self):
        self.server.requests += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = (b"<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code>"
                b"<Message>try again later</Message></Error></ErrorResponse>")
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def unavailable_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    server.requests = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("attempts", [1, 2])
def test_a_lookup_gives_up_after_its_attempts(unavailable_endpoint, attempts):
    endpoint = f"http://127.0.0.1:{unavailable_endpoint.server_address[1]}"
    client = AwsSession(region="us-east-1", endpoint_url=endpoint).client("sts", retries=lookup_retries(attempts))
    with pytest.raises(CloudError) as info:
        call(client, "get_caller_identity")
    assert info.value.code == "ServiceUnavailable"
    assert unavailable_endpoint.requests == attempts


@pytest.mark.parametrize("region, partition", [("us-east-1", "aws"), ("us-gov-west-1", "aws-us-gov"),
                                               ("cn-northwest-1", "aws-cn")])
def test_the_sessions_partition_is_the_regions(region, partition):
    assert AwsSession(region=region).partition == partition
