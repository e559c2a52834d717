"""`csm-serve serve --config` picks Ray's HTTP ingress (HAProxy or the Python proxy) before Ray starts."""

from __future__ import annotations

import pytest

from serve_app.deploy.ingress import HAPROXY_ENV, IngressChoice, apply_ingress, choose_ingress

EXPOSED = {"http_options": {"host": "0.0.0.0", "port": 8000}}
BINARY = "/opt/haproxy"


@pytest.mark.parametrize(
    ("requested", "config", "environ", "binary", "expected"),
    [
        ("auto", EXPOSED, {}, BINARY, "haproxy"),
        ("auto", {"http_options": {"host": "127.0.0.1"}}, {}, BINARY, "proxy"),  # replica ports would open
        ("auto", {"http_options": {"host": "localhost"}}, {}, BINARY, "proxy"),
        ("auto", {}, {}, BINARY, "proxy"),  # Ray's default host is loopback
        ("auto", {"http_options": {"host": "10.0.0.5"}}, {}, BINARY, "haproxy"),
        ("auto", EXPOSED, {}, None, "proxy"),  # no binary
        ("auto", EXPOSED, {"RAY_ADDRESS": "ray://head:10001"}, BINARY, "proxy"),  # the cluster decides
        ("auto", EXPOSED, {"RAY_SERVE_ENABLE_HA_PROXY": "0"}, BINARY, "proxy"),
        ("auto", {}, {"RAY_SERVE_ENABLE_HA_PROXY": "1"}, BINARY, "haproxy"),
        ("proxy", EXPOSED, {"RAY_SERVE_ENABLE_HA_PROXY": "1"}, BINARY, "proxy"),
        ("haproxy", {}, {}, BINARY, "haproxy"),
    ],
)
def test_auto_takes_haproxy_only_where_it_is_safe_and_installed(requested, config, environ, binary, expected) -> None:
    assert choose_ingress(requested, config, environ, binary).ingress == expected


def test_asking_for_haproxy_without_a_binary_says_how_to_get_one() -> None:
    with pytest.raises(ValueError, match=r"csm-serve\[haproxy\]"):
        choose_ingress("haproxy", EXPOSED, {}, None)
    with pytest.raises(ValueError, match="ingress must be one of"):
        choose_ingress("nginx", EXPOSED, {}, BINARY)


def test_applying_a_choice_keeps_explicit_settings_unless_asked_by_name() -> None:
    environ = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    apply_ingress(IngressChoice("haproxy", "fastest measured"), environ)
    assert environ == {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    environ = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    apply_ingress(IngressChoice("haproxy", "requested", requested=True), environ)
    assert environ == HAPROXY_ENV
    environ = dict(HAPROXY_ENV)
    apply_ingress(IngressChoice("proxy", "requested", requested=True), environ)
    assert environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
