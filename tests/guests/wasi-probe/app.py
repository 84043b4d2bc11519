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
    try:
        return "allowed: " + repr(action())[:200]
    except BaseException as e:  # noqa: BLE001 - every failure is the answer
        return "denied: " + type(e).__name__


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
            "tcp_connect": attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=1)),
            "tcp_connect_raw": attempt(lambda: socket.socket().connect(("127.0.0.1", port))),
            "udp_send": attempt(
                lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", port))
            ),
            "name_lookup": attempt(lambda: socket.getaddrinfo("localhost", 80)),
        }
        body = json.dumps(report).encode()
        return [types.Message(input.id, input.plant, input.route, "application/json", [], body)]
