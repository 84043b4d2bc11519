"""Test guest: a Python plugin that tries every ambient authority WASI could give it and
reports what happened, as JSON: files, directories, environment, TCP to the port named in the
body, name lookup. It prints a line to stdout and one to stderr (the host logs both)."""

import json
import os
import socket
import sys

import wit_world
from wit_world.imports import types


def attempt(action):
    """`allowed: RESULT`; `denied: TYPE errno=N` when the system refused (an OSError, which
    includes socket.gaierror); `error: TYPE: TEXT` for any other exception (a bug in the probe
    or the runtime, which must not pass for a denial)."""
    try:
        return "allowed: " + repr(action())[:200]
    except OSError as e:
        return "denied: %s errno=%s" % (type(e).__name__, e.errno)
    except BaseException as e:  # noqa: BLE001 - reported, never taken for a denial
        return "error: %s: %s" % (type(e).__name__, e)


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return types.PluginInfo("wasi-probe", "0.1.0", ["application/json"], [])

    def check_settings(self):
        return None

    def mediate(self, input):
        port = json.loads(bytes(input.body))["port"]
        print("probe stdout: hello from python", flush=True)
        print("probe stderr: about to knock on every door", file=sys.stderr, flush=True)
        report = {
            "read_file": attempt(lambda: open("/etc/hostname").read()),
            "list_root": attempt(lambda: os.listdir("/")),
            "list_cwd": attempt(lambda: os.listdir(".")),
            "write_file": attempt(lambda: open("/tmp/millrace-probe", "w").write("x")),
            "environment": dict(os.environ),
            # Host names as bytes: a str would first be IDNA-encoded, a codec this runtime lacks
            # (the attempt would fail before asking the host anything).
            "tcp_connect": attempt(lambda: socket.create_connection((b"127.0.0.1", port), timeout=1)),
            "tcp_connect_raw": attempt(lambda: socket.socket().connect(("127.0.0.1", port))),
            "udp_send": attempt(
                lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", port))
            ),
            "name_lookup": attempt(lambda: socket.getaddrinfo(b"localhost", 80)),
            # A failure that is not a denial: shows the probe tells the two apart.
            "control": attempt(lambda: int("not a number")),
        }
        body = json.dumps(report).encode()
        return [types.Message(input.id, input.plant, input.route, "application/json", [], body)]
