"""Say clearly which process holds a port we need, instead of a bind traceback."""
from __future__ import annotations

import socket

import psutil

from . import config


def in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def holder(port: int) -> str:
    """A description of the process listening on `port`, as far as we may see it."""
    try:
        connections = psutil.net_connections(kind="inet")
        for conn in connections:
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:
                    return "a process we may not inspect"
                try:
                    proc = psutil.Process(conn.pid)
                    return f"pid {conn.pid} ({' '.join(proc.cmdline())[:120]})"
                except psutil.Error:
                    return f"pid {conn.pid}"
        for conn in connections:
            if conn.laddr and conn.laddr.port == port and conn.raddr:
                return (f"a client connection ({conn.status}, to {conn.raddr.ip}:{conn.raddr.port}) that took it as "
                        f"its source port; ports from {config.ephemeral_low()} up are the kernel's ephemeral range")
    except psutil.Error:
        pass
    return "an unknown process"


def busy_ports(ports: list[tuple[str, int]]) -> list[str]:
    """One message per port that is taken."""
    return [f"port {port} (wanted for {name}) is in use by {holder(port)}"
            for name, port in ports if in_use(port)]
