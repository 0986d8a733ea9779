"""Helpers shared by sando's unit tests (git repos in tmp dirs)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from pathlib import Path

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "sando-test",
    "GIT_AUTHOR_EMAIL": "sando-test@example.invalid",
    "GIT_COMMITTER_NAME": "sando-test",
    "GIT_COMMITTER_EMAIL": "sando-test@example.invalid",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(repo: Path | str, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {res.stderr}")
    return res.stdout.strip()


def init_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    return path


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def _private_key() -> str:
    """A real ed25519 private key in OpenSSH form (config.load reads sando:sshPrivateKey)."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()).decode()


PRIVATE_KEY = _private_key()


def scratch_project(tmp_path: Path, name: str, program: str, pulumi: Path, venv: Path) -> tuple[Path, dict]:
    """A scratch Pulumi project in tmp_path/project (the program given, the venv as its
    virtualenv) with a file backend in tmp_path/state: its directory and the engine's environment
    variables for it (to add to os.environ)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text(f"name: {name}\nruntime:\n  name: python\n  options:\n"
                                         f"    virtualenv: {venv}\n")
    (project / "__main__.py").write_text(program)
    (tmp_path / "state").mkdir()
    return project, {"PATH": f"{pulumi.parent}:{os.environ['PATH']}", "PULUMI_HOME": str(tmp_path / "home"),
                     "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}", "PULUMI_CONFIG_PASSPHRASE": "scratch",
                     "PULUMI_SKIP_UPDATE_CHECK": "true", "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true"}


class _AcceptsKeys:
    """A paramiko server's authentication part: any public key, sessions only."""

    def check_auth_publickey(self, username, key):
        import paramiko
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        import paramiko
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


@contextlib.contextmanager
def loopback_sshd(exec_request):
    """A paramiko SSH server on 127.0.0.1 that lets any key in and answers each exec with
    exec_request(channel, command) (paramiko's check_channel_exec_request); yields (port, its
    host key as "kind base64")."""
    import paramiko

    server = type("_Server", (_AcceptsKeys, paramiko.ServerInterface),
                  {"check_channel_exec_request": lambda self, channel, command: exec_request(channel, command)})
    host_key = paramiko.RSAKey.generate(2048)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    transports = []

    def serve():
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            t = paramiko.Transport(sock)
            t.add_server_key(host_key)
            t.start_server(server=server())
            transports.append(t)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], f"{host_key.get_name()} {host_key.get_base64()}"
    finally:
        listener.close()
        for t in transports:
            t.close()
