"""Beam's local runner listening on the loopback interface only.

The portable FnApi runner behind `DirectRunner` starts gRPC services for its worker processes (control,
data, state and logging in `worker_handlers`, a worker pool in `worker_pool_main`, a logging service per
worker in `local_job_service`) and binds them to `[::]:0`: every interface of the machine, while the job
runs, for services that hand out work and state to whoever connects. Beam has no option for the address,
and its workers connect to `localhost:PORT`, so binding `localhost:0` instead (gRPC binds 127.0.0.1 and
::1 on one port) changes nothing for them and closes the ports to the network.
"""
from __future__ import annotations

import threading

_ALL_INTERFACES = "[::]:"
_LOOPBACK = "localhost:"
_lock = threading.Lock()


class _LoopbackServer:
    """A `grpc.Server` whose `add_insecure_port("[::]:P")` binds `localhost:P`."""

    def __init__(self, server):
        self._server = server

    def add_insecure_port(self, address):
        if address.startswith(_ALL_INTERFACES):
            address = _LOOPBACK + address[len(_ALL_INTERFACES):]
        return self._server.add_insecure_port(address)

    def __getattr__(self, name):
        return getattr(self._server, name)


class _LoopbackGrpc:
    """The `grpc` module as the runner's worker handlers see it: servers bind the loopback interface."""

    def __init__(self, grpc):
        self._grpc = grpc

    def server(self, *args, **kwargs):
        return _LoopbackServer(self._grpc.server(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._grpc, name)


# The Beam modules that bind '[::]:...' (apache-beam 2.72); each reads `grpc` as a module global.
_MODULES = ("apache_beam.runners.portability.fn_api_runner.worker_handlers",
            "apache_beam.runners.worker.worker_pool_main",
            "apache_beam.runners.portability.local_job_service",
            "apache_beam.runners.portability.abstract_job_service")


def install() -> None:
    """From now on, the local runner's gRPC services in this process bind the loopback interface only
    (idempotent; remote runners are not affected: they start none of these services here)."""
    import importlib

    with _lock:
        for name in _MODULES:
            module = importlib.import_module(name)
            if not isinstance(module.grpc, _LoopbackGrpc):
                module.grpc = _LoopbackGrpc(module.grpc)
