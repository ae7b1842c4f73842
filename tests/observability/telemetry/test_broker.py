"""The broker as the messaging spans name it: the conventions' well-known ``messaging.system`` per transport, the
server's address and port - and never the URL's credentials."""

from __future__ import annotations

from observability.telemetry.broker import broker_of, client_id


def test_a_redis_url_gives_its_host_and_port_and_never_its_credentials():
    attributes = broker_of("rediss://ops:s3cret@redis.internal:6380/2").attributes()
    assert attributes == {"messaging.system": "celery", "server.address": "redis.internal", "server.port": 6380}
    assert not any("s3cret" in str(value) or value == "ops" for value in attributes.values())


def test_rabbitmq_and_sqs_take_their_well_known_system_names():
    assert broker_of("amqp://guest:guest@127.0.0.1//").attributes() == {
        "messaging.system": "rabbitmq",
        "server.address": "127.0.0.1",
        "server.port": 5672,
    }
    assert broker_of("sqs://").attributes() == {"messaging.system": "aws_sqs"}


def test_a_failover_list_names_its_first_broker_and_a_port_left_out_is_the_schemes():
    broker = broker_of("redis://a.example;redis://b.example:6390")
    assert (broker.address, broker.port) == ("a.example", 6379)


def test_a_workers_client_id_is_its_node_name_other_processes_name_role_and_pid():
    assert client_id("worker", "celery@host-1") == "celery@host-1"
    assert client_id("web").startswith("web.") and "@" in client_id("web")
