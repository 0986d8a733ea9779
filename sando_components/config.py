"""The stack configuration (namespace `sando:`), validated once before any resource exists.

`load(raw, secret_keys)` takes the flat Pulumi config ({"sando:nodes": "[...]", ...})
and returns a `StackConfig`, or raises `ConfigError` whose message names the
offending key, e.g. `sando:nodes[1].hostKey: ...`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .commands import front
from .errors import ConfigError

NAMESPACE = "sando"

# A release name becomes a directory name and a shell word: keep it boring.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
# a stack name, alone or fully qualified (organization/project/stack), as `pulumi stack ls` shows it
STACK_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,99}/){0,2}[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
BIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HOSTKEY_TYPES = {
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
}
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# One field of a cron schedule (crontab(5)): a list of `*`, N, N-M or a name (jan, mon), each
# with an optional /step. Nothing else: the schedule is written into a root cron line.
_CRON_ITEM = r"(\*|[0-9]{1,2}(-[0-9]{1,2})?|[A-Za-z]{3}(-[A-Za-z]{3})?)(/[0-9]{1,2})?"
CRON_FIELD_RE = re.compile(rf"{_CRON_ITEM}(,{_CRON_ITEM})*")
# A POSIX-portable user or group name (useradd's default NAME_REGEX, at most 32 characters).
POSIX_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# A git ref or commit as an operator writes one (no option-like '-', no '..', no spaces or shell
# characters); git itself then says whether it names a commit.
GIT_REF_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+-]{0,199}")
BOOTSTRAP_ITEMS = ("caddyfile", "unit", "sshdGit", "fail2ban", "firewall", "backup")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _abs_path(value: str) -> str:
    if not value.startswith("/") or "/../" in value + "/" or "\n" in value:
        raise ValueError("must be an absolute path without '..'")
    return value.rstrip("/") or "/"


class _SshEndpoint(_Model):
    """Where an SSH server is: host, port, login user, and its pinned host key."""

    host: str
    port: int = 22
    user: str = "root"
    host_key: str | None = Field(None, alias="hostKey")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            ipaddress.ip_address(v)
        except ValueError:
            if not HOSTNAME_RE.fullmatch(v):
                raise ValueError("must be an IP address or a DNS name") from None
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError("must be between 1 and 65535")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", v):
            raise ValueError("must be a POSIX user name")
        return v

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = v.split()
        if len(parts) < 2 or parts[0] not in HOSTKEY_TYPES:
            raise ValueError("must be an OpenSSH public key line, e.g. 'ssh-ed25519 AAAA...'")
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except ValueError:
            raise ValueError("key data is not base64") from None
        if not blob[4:].startswith(parts[0].encode()):
            raise ValueError(f"key data does not hold a {parts[0]} key")
        return f"{parts[0]} {parts[1]}"


class ProxyJumpConfig(_SshEndpoint):
    """A bastion the node is reached through (OpenSSH's ProxyJump): sando logs in there with the
    node's key and opens a TCP channel to the node's host and port from it."""


class NodeConfig(_SshEndpoint):
    """A node reached over SSH, or (local: true) the machine sando runs on, reached through a
    local shell: no host, port, user, hostKey, proxyJump or SSH key (see config._unset)."""

    host: str | None = None  # required unless local (config._unset names the key)
    name: str
    local: bool = False
    app_url: str | None = Field(None, alias="appUrl")  # base URL of the app as seen on the node
    proxy_jump: ProxyJumpConfig | None = Field(None, alias="proxyJump")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("must be letters, digits, '.', '_' or '-' (it names resources)")
        return v

    @field_validator("app_url")
    @classmethod
    def _app_url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/]+/?", v):
            raise ValueError("must be a base URL such as http://127.0.0.1:3000")
        return v.rstrip("/") if v else v


class SourceConfig(_Model):
    repo: str  # path of the server's git repository (relative to the project dir or absolute)
    build_command: str = Field("cargo build --release --manifest-path server/Cargo.toml", alias="buildCommand")
    bin_dir: str = Field("server/target/release", alias="binDir")
    error_pages_dir: str = Field("server/deploy/error-pages", alias="errorPagesDir")

    @field_validator("bin_dir", "error_pages_dir")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/") or not v.strip("/"):
            raise ValueError("must be a path inside the repository")
        return v.strip("/")

    @field_validator("build_command")
    @classmethod
    def _cmd(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class HealthCheckConfig(_Model):
    url: str = "http://127.0.0.1:3000/"
    timeout_seconds: float = Field(30, alias="timeoutSeconds")
    interval_seconds: float = Field(1, alias="intervalSeconds")
    expect_version: bool = Field(False, alias="expectVersion")
    # the site through Caddy on the node (as users reach it): checked by every switch (with `url`:
    # both must pass), after a Caddyfile change and after a unit restart; None: only `url` is checked
    caddy_url: str | None = Field(None, alias="caddyUrl")

    @field_validator("url", "caddy_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/'\"`$\\]+(/[^\s'\"`$\\]*)?", v):
            raise ValueError("must be an http(s) URL")
        return v

    @field_validator("timeout_seconds", "interval_seconds")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not 0 < v <= 3600:
            raise ValueError("must be more than 0 and at most 3600")
        return v


def _repo_path(v: str) -> str:
    """A bootstrap source: a plain relative path inside the server repo (read there with git)."""
    if not v or v.startswith("/") or "\\" in v or any(p in ("", ".", "..") for p in v.split("/")) \
            or not re.fullmatch(r"[A-Za-z0-9._/+@-]+", v):
        raise ValueError("must be a relative path inside the server repo (letters, digits, '.', '_', '-', '/'; "
                         "no '..', no leading '/'), e.g. server/deploy/Caddyfile")
    return v


class BootstrapConfig(_Model):
    ref: str | None = None  # tag, branch or commit of the server repo the host files come from
    caddyfile: str = "server/deploy/Caddyfile"
    unit: str = "server/deploy/makenotwork.service"
    sshd_git: str = Field("server/deploy/sshd-git.conf", alias="sshdGit")
    fail2ban: str = "server/deploy/fail2ban-sshd.conf"
    firewall: str = "server/deploy/setup-firewall.sh"
    backup_script: str = Field("server/deploy/backup-db.sh", alias="backupScript")
    backup_schedule: str = Field("17 3 * * *", alias="backupSchedule")
    backup_user: str = Field("root", alias="backupUser")
    manage: tuple[str, ...] = BOOTSTRAP_ITEMS
    owner: str | None = None  # chown of the release root, e.g. "makenotwork:makenotwork"

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        if v is not None and (".." in v or v.endswith(("/", ".lock")) or not GIT_REF_RE.fullmatch(v)):
            raise ValueError("must be a tag, branch or commit of the server repo, e.g. main, host-7 or a commit id")
        return v

    @field_validator("caddyfile", "unit", "sshd_git", "fail2ban", "firewall", "backup_script")
    @classmethod
    def _source(cls, v: str) -> str:
        return _repo_path(v)

    @field_validator("backup_schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        fields = v.strip(" ").split(" ")
        fields = [f for f in fields if f]
        if len(fields) != 5 or not all(CRON_FIELD_RE.fullmatch(f) for f in fields):
            raise ValueError("must be a 5-field cron schedule such as '17 3 * * *' (digits, names, '*', ',', "
                             "'-', '/' only: it is written into a root cron line)")
        return " ".join(fields)

    @field_validator("backup_user")
    @classmethod
    def _backup_user(cls, v: str) -> str:
        if not POSIX_NAME_RE.fullmatch(v):
            raise ValueError("must be a user name (lower-case letters, digits, '_', '-'; at most 32): "
                             "it is written into a cron line")
        return v

    @field_validator("manage")
    @classmethod
    def _manage(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [x for x in v if x not in BOOTSTRAP_ITEMS]
        if unknown:
            raise ValueError(f"unknown item(s) {unknown}; known: {list(BOOTSTRAP_ITEMS)}")
        return tuple(dict.fromkeys(v))

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(rf"{POSIX_NAME_RE.pattern}(:{POSIX_NAME_RE.pattern})?", v):
            raise ValueError("must be 'user' or 'user:group' (user and group names: lower-case letters, digits, "
                             "'_', '-')")
        return v


PLACEHOLDERS = ("release", "scratch", "database")


class MigrationsConfig(_Model):
    """The migration gate (design doc item 9): a dry run of pending migrations on a copy of the
    node's live database before `current` moves."""

    gate: bool = True
    dir: str = "server/migrations"  # sqlx migrations of the server repo, read at the pinned commit
    dry_run_command: str = Field("{release}/mnw-admin migrate --dry-run --database {scratch}",
                                 alias="dryRunCommand")
    database: str | None = None  # default: DATABASE_PATH of the unit's env file, else /var/lib/<service>/<service>.db
    backup_dir: str | None = Field(None, alias="backupDir")  # default /var/backups/<service>
    refuse_destructive: bool = Field(False, alias="refuseDestructive")
    allow_destructive: tuple[str, ...] = Field((), alias="allowDestructive")

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/") or not v.strip("/"):
            raise ValueError("must be a path inside the repository")
        return v.strip("/")

    @field_validator("dry_run_command")
    @classmethod
    def _command(cls, v: str) -> str:
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(v) if name is not None]
        except ValueError as exc:
            raise ValueError(f"has a bad placeholder ({exc}); use {{release}}, {{scratch}}, {{database}}") from None
        if any(spec or conv for _, spec, conv in fields):
            raise ValueError("placeholders take no conversion or format: write {release}, {scratch}, {database}")
        names = {name for name, _, _ in fields}
        unknown = sorted(names - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"unknown placeholder(s) {unknown}; use {{release}}, {{scratch}}, {{database}}")
        if "scratch" not in names:
            raise ValueError("must run against {scratch} (the scratch copy), never the live database")
        return v

    @field_validator("database", "backup_dir")
    @classmethod
    def _abs(cls, v: str | None) -> str | None:
        return None if v is None else _abs_path(v)

    @field_validator("allow_destructive")
    @classmethod
    def _versions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for x in v:
            if not VERSION_RE.fullmatch(x):
                raise ValueError(f"{x!r} is not a version name")
        return v


class RolloutConfig(_Model):
    """Nodes switch in batches of batchSize, in config order; each batch waits for the previous
    one to pass its health checks, plus pauseSeconds. Default: every node at once."""

    batch_size: int | None = Field(None, alias="batchSize")
    pause_seconds: float = Field(0, alias="pauseSeconds")

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be 1 or more")
        return v

    @field_validator("pause_seconds")
    @classmethod
    def _pause(cls, v: float) -> float:
        if not 0 <= v <= 3600:
            raise ValueError("must be between 0 and 3600")
        return v


ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class SwitchConfig(_Model):
    """How a node goes from the live release to the new one (issue 23). `restart` (the default,
    the design doc's): one unit, `reload-or-restart`, the health check. `blueGreen`: the new
    release starts as a second instance (`<service>@<port>`, the idle one of `ports`, its port
    handed over through `bindEnv`), is health-checked on its own port, then Caddy's upstream (one
    sando-owned file the Caddyfile imports) moves to it by a graceful reload, and the old
    instance stops after `drainSeconds`. Back to `restart` from blueGreen: the instance stops
    `drainSeconds` after users reach the plain unit (the requests it took finish there)."""

    strategy: Literal["restart", "blueGreen"] = "restart"
    ports: tuple[int, int] = (3001, 3002)
    bind_env: str = Field("MNW_BIND", alias="bindEnv")
    bind_host: str = Field("127.0.0.1", alias="bindHost")
    drain_seconds: float = Field(2, alias="drainSeconds")

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] == v[1] or not all(1024 <= p <= 65535 for p in v):
            raise ValueError("must be two different ports between 1024 and 65535, e.g. [3001, 3002]")
        return v

    @field_validator("bind_env")
    @classmethod
    def _env(cls, v: str) -> str:
        if not ENV_NAME_RE.fullmatch(v):
            raise ValueError("must be an environment variable name such as MNW_BIND")
        return v

    @field_validator("bind_host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError("must be an IPv4 address Caddy reaches the app at, e.g. 127.0.0.1") from None
        return v

    @field_validator("drain_seconds")
    @classmethod
    def _drain(cls, v: float) -> float:
        if not 0 <= v <= 3600:
            raise ValueError("must be between 0 and 3600")
        return v

    @property
    def blue_green(self) -> bool:
        return self.strategy == "blueGreen"


class VerifiedBuild(_Model):
    """The bytes a promoted version runs with on its source stack, read from the source's nodes by
    `sando promote` (issue 22.1): a Release of that commit must be byte-identical to them."""

    source: str = Field(alias="from")  # the source stack
    version: str
    commit: str
    files: dict[str, str]  # release-relative path -> sha256


class StackConfig(_Model):
    nodes: tuple[NodeConfig, ...]
    version: str
    source: SourceConfig
    ssh_private_key: SecretStr | None = Field(None, alias="sshPrivateKey")
    node_keys: dict[str, SecretStr] = Field(default_factory=dict, alias="nodeKeys")  # node name -> its own key
    ssh_agent: bool = Field(False, alias="sshAgent")
    insecure_skip_host_key_check: bool = Field(False, alias="insecureSkipHostKeyCheck")
    release_root: str = Field("/opt/makenotwork", alias="releaseRoot")
    service: str = "makenotwork"
    bin_names: tuple[str, ...] = Field(("server",), alias="binNames")
    keep_releases: int = Field(5, alias="keepReleases")
    restart_warning_seconds: int = Field(0, alias="restartWarningSeconds")
    restart_warning_on_failure: Literal["warn", "abort"] = Field("warn", alias="restartWarningOnFailure")
    cli_service_token: SecretStr | None = Field(None, alias="cliServiceToken")
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig, alias="healthCheck")
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    migrations: MigrationsConfig = Field(default_factory=MigrationsConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    switch: SwitchConfig = Field(default_factory=SwitchConfig)
    verified_build: VerifiedBuild | None = Field(None, alias="verifiedBuild")  # set by sando promote
    # the stack whose verified bytes this one must run (issue 22.1: a manual pin is checked too)
    verify_against: str | None = Field(None, alias="verifyAgainst")

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if ".." in v or not VERSION_RE.fullmatch(v):
            raise ValueError(
                "must be a git ref usable as a directory name: letters, digits, '.', '_', '+', '-'; "
                "no '/', '..', spaces or shell characters"
            )
        return v

    @field_validator("verify_against")
    @classmethod
    def _verify_against(cls, v: str | None) -> str | None:
        if v is not None and not STACK_RE.fullmatch(v):
            raise ValueError("must name a stack of this backend, e.g. testnot (or organization/project/testnot)")
        return v

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, v: tuple[NodeConfig, ...]) -> tuple[NodeConfig, ...]:
        if not v:
            raise ValueError("needs at least one node")
        names = [n.name for n in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node names must be unique, repeated: {dupes}")
        return v

    @field_validator("release_root")
    @classmethod
    def _release_root(cls, v: str) -> str:
        v = _abs_path(v)
        if v == "/":
            raise ValueError("must not be /")
        return v

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("must be a plain unit name such as 'makenotwork'")
        return v

    @field_validator("bin_names")
    @classmethod
    def _bins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("must list at least one binary")
        for b in v:
            if not BIN_RE.fullmatch(b) or b in (".sando", "error-pages"):
                raise ValueError(f"{b!r} is not a binary name: use letters, digits, '.', '_' and '-' "
                                 "(no spaces, no '/')")
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a name")
        return v

    @field_validator("keep_releases")
    @classmethod
    def _keep(cls, v: int) -> int:
        if not 1 <= v <= 100:
            raise ValueError("must be between 1 and 100")
        return v

    @field_validator("restart_warning_seconds")
    @classmethod
    def _warn(cls, v: int) -> int:
        if not 0 <= v <= 3600:
            raise ValueError("must be between 0 and 3600")
        return v

    def private_key(self, node: NodeConfig) -> SecretStr | None:
        """The key sando logs in to `node` with: its own (sando:nodeKeys), else sando:sshPrivateKey;
        None = the SSH agent, or no key at all (a local node)."""
        if node.local:
            return None
        return self.node_keys.get(node.name) or self.ssh_private_key

    def app_url(self, node: NodeConfig) -> str:
        """Base URL of the app on a node (node's appUrl, else the health-check URL's origin)."""
        if node.app_url:
            return node.app_url
        m = re.match(r"^(https?://[^/]+)", self.health_check.url)
        return m.group(1)

    def health_url(self, node: NodeConfig) -> str:
        if not node.app_url:
            return self.health_check.url
        path = re.sub(r"^https?://[^/]+", "", self.health_check.url) or "/"
        return node.app_url + path

    def restart_warning_url(self, node: NodeConfig) -> str:
        return self.app_url(node) + "/api/internal/restart-warning"

    def health_path(self) -> str:
        """The health check's path (and query): what a blueGreen instance is checked at on its own port."""
        return re.sub(r"^https?://[^/]+", "", self.health_check.url) or "/"

    def front(self, node: NodeConfig) -> str:
        """blueGreen's front: 127.0.0.1 and the port the service's own unit serves on (the health
        URL's): what Caddy dials, pointed at the live instance by sando's nft rule."""
        return front(self.health_url(node))

    def batches(self) -> list[tuple[NodeConfig, ...]]:
        """The nodes in rollout batches, in config order."""
        size = self.rollout.batch_size or len(self.nodes)
        return [self.nodes[i:i + size] for i in range(0, len(self.nodes), size)]


# NodeConfig fields that only an SSH node has, by their config key
LOCAL_EXCLUDES = ("host", "port", "user", "hostKey", "proxyJump")


SECRET_KEYS = {"sshPrivateKey", "cliServiceToken", "nodeKeys"}
STRUCTURED_KEYS = {"nodes", "source", "binNames", "healthCheck", "bootstrap", "migrations", "rollout", "nodeKeys",
                   "switch", "verifiedBuild"}
LIST_HINTS = {  # what a list-valued key holds, in an operator's words
    "nodes": "a list of nodes ({name, host, hostKey, ...})",
    "binNames": "a list of binary names, e.g. [makenotwork, mnw-admin]",
    "bootstrap.manage": f"a list of bootstrap items, e.g. {list(BOOTSTRAP_ITEMS)}",
    "migrations.allowDestructive": "a list of versions, e.g. [v43]",
}
TYPE_WORDS = {
    "string_type": "must be text", "int_type": "must be a whole number", "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number", "float_type": "must be a number", "float_parsing": "must be a number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "finite_number": "must be a number",
}


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _in_operator_words(err: dict, loc: str) -> str:
    """A pydantic error as an operator reads it: no library jargon."""
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see README 'Configuration')"
    if kind == "missing":
        return "is required"
    if kind in ("tuple_type", "list_type"):
        return "must be " + LIST_HINTS.get(re.sub(r"\[\d+\]", "", loc), "a list")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be an object with named keys (see README 'Configuration')"
    if kind in TYPE_WORDS:  # the value is quoted, unless it is a secret's
        secret = loc.split(".")[0].split("[")[0] in SECRET_KEYS
        return TYPE_WORDS[kind] if secret else f"{TYPE_WORDS[kind]}, not {err.get('input')!r}"
    if kind == "literal_error":
        return "must be " + err["msg"].removeprefix("Input should be ")
    msg = err["msg"].removeprefix("Value error, ")
    return "must be " + msg.removeprefix("Input should be ") if msg.startswith("Input should be ") else msg


# A value the tier files (Pulumi.<tier>.yaml) leave for the operator to fill in: "<...>".
PLACEHOLDER_RE = re.compile(r"^<[^<>]*>$")
HOST_KEY_HOW = "pulumi config set --path 'sando:{key}' \"$(ssh-keyscan -t ed25519 HOST | cut -d' ' -f2-)\""
HOW_TO_SET = {  # how an operator sets a key (by its path with indexes as [i])
    "nodes[i].host": "pulumi config set --path 'sando:{key}' ADDRESS",
    "nodes[i].hostKey": HOST_KEY_HOW,
    "nodes[i].proxyJump.hostKey": HOST_KEY_HOW,
    "source.repo": "pulumi config set --path 'sando:{key}' PATH-OF-THE-SERVER-CHECKOUT",
    "sshPrivateKey": "pulumi config set --secret sando:sshPrivateKey < KEYFILE",
    "nodeKeys": "pulumi config set --secret --path 'sando:nodeKeys.NODE' < KEYFILE",
    "cliServiceToken": "pulumi config set --secret sando:cliServiceToken < TOKENFILE",
    "bootstrap.ref": "pulumi config set --path 'sando:bootstrap.ref' TAG-OR-COMMIT",
}


def how_to_set(key: str) -> str:
    return HOW_TO_SET.get(re.sub(r"\[\d+\]", "[i]", key), "pulumi config set --path 'sando:{key}' VALUE").format(key=key)


def _placeholders(value: Any, loc: str = "") -> list[tuple[str, str]]:
    """(key path, value) of the values still a tier file's "<...>" placeholder."""
    if isinstance(value, str):
        return [(loc, value.strip())] if PLACEHOLDER_RE.fullmatch(value.strip()) else []
    if isinstance(value, dict):
        return [k for key, v in value.items() for k in _placeholders(v, f"{loc}.{key}" if loc else str(key))]
    if isinstance(value, list):
        return [k for i, v in enumerate(value) for k in _placeholders(v, f"{loc}[{i}]")]
    return []


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _unset(data: dict[str, Any], env: dict[str, str] | None) -> list[tuple[str, str]]:
    """What the stack still lacks, all of it: (key, what to do). Read from the raw values, so it is
    said together with every other problem (a model validator would run only once all else is right)."""
    out = []
    agent = _truthy(data.get("sshAgent"))
    node_keys = data.get("nodeKeys") if isinstance(data.get("nodeKeys"), dict) else {}
    nodes = data.get("nodes")
    names = [n.get("name") for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else []
    local = {i for i, n in enumerate(nodes) if isinstance(n, dict) and _truthy(n.get("local"))} \
        if isinstance(nodes, list) else set()
    for i in sorted(local)[1:]:
        out.append((f"nodes[{i}].local", f"only one node can be the machine sando runs on "
                                         f"(nodes[{min(local)}] is local too)"))
    for i in sorted(local):
        ssh_only = [k for k in LOCAL_EXCLUDES if k in nodes[i]]
        if ssh_only:
            out.append((f"nodes[{i}].{ssh_only[0]}", "a local node (local: true) is the machine sando runs on, "
                        "reached without SSH: remove its " + ", ".join(ssh_only)))
        if nodes[i].get("name") in node_keys:
            out.append((f"nodeKeys.{nodes[i]['name']}", f"{nodes[i]['name']} is a local node (local: true): it "
                        "needs no SSH key; remove it"))
    for i, n in enumerate(nodes if isinstance(nodes, list) else []):
        if isinstance(n, dict) and i not in local and not n.get("host"):
            out.append((f"nodes[{i}].host", "is required (or local: true for the machine sando runs on): "
                        + how_to_set(f"nodes[{i}].host")))
    remote = [n.get("name") for i, n in enumerate(nodes) if isinstance(n, dict) and i not in local] \
        if isinstance(nodes, list) else []
    keyless = [n for n in remote if n not in node_keys]
    if data.get("sshPrivateKey") is None and not agent and (keyless or not names):
        also = (f", or every node's own key in sando:nodeKeys; without one: {', '.join(map(str, keyless))}"
                if node_keys or local else "")
        out.append(("sshPrivateKey", f"is required (or sando:sshAgent: true{also}): " + how_to_set("sshPrivateKey")))
    elif isinstance(data.get("sshPrivateKey"), str):
        unreadable = private_key_problem(data["sshPrivateKey"])
        if unreadable:
            out.append(("sshPrivateKey", unreadable))
    for name in node_keys:
        if names and name not in names:
            out.append((f"nodeKeys.{name}", f"names no node of sando:nodes ({', '.join(sorted(map(str, names)))})"))
    for name, key in node_keys.items():
        unreadable = private_key_problem(key) if isinstance(key, str) else "must be the text of a private key"
        if unreadable:
            out.append((f"nodeKeys.{name}", unreadable.replace("sando:sshPrivateKey", f"sando:nodeKeys.{name}")))
    if agent and data.get("sshPrivateKey") is None and env is not None and not env.get("SSH_AUTH_SOCK"):
        out.append(("sshAgent", "is true but SSH_AUTH_SOCK is not set: no SSH agent to ask for the key. Start one "
                                "(eval \"$(ssh-agent)\" && ssh-add KEYFILE) or set sando:sshPrivateKey"))
    if isinstance(nodes, list) and not _truthy(data.get("insecureSkipHostKeyCheck")):
        for i, n in enumerate(nodes):
            if i in local:
                continue
            jump = n.get("proxyJump") if isinstance(n, dict) else None
            for where, end in ((f"nodes[{i}]", n), (f"nodes[{i}].proxyJump", jump)):
                if isinstance(end, dict) and not end.get("hostKey"):
                    out.append((f"{where}.hostKey", "is required: every connection pins the host key: "
                                + how_to_set(f"{where}.hostKey") + " (sando:insecureSkipHostKeyCheck=true is for "
                                "throwaway local nodes only)"))
    try:
        warns = int(str(data.get("restartWarningSeconds", 0))) > 0
    except ValueError:
        warns = False
    if warns and data.get("cliServiceToken") is None:
        out.append(("cliServiceToken", "is required (as a secret) when sando:restartWarningSeconds > 0: "
                    + how_to_set("cliServiceToken")))
    return out


def private_key_problem(text: str) -> str | None:
    """Why sando cannot use this private key (None: it can): read here, at preview, rather than
    on the first connection of an up."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key

    data = text.strip().encode() + b"\n"
    load = load_ssh_private_key if b"BEGIN OPENSSH PRIVATE KEY" in data else load_pem_private_key
    try:
        key = load(data, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        return ("is protected by a passphrase, which sando cannot type: give it a key without one (ssh-keygen -p "
                "-N '' -f COPY-OF-KEYFILE) or use sando:sshAgent: true with the key added to your agent")
    except Exception:  # noqa: BLE001 - the library's text is not shown: it may quote the key
        return ("is not a private key sando can read (ed25519, ECDSA or RSA in OpenSSH or PEM form): "
                + how_to_set("sshPrivateKey"))
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return "is a kind of key sando cannot use: give it an ed25519, ECDSA or RSA key"
    return None


def load(raw: dict[str, Any], secret_keys: set[str] | frozenset[str] = frozenset(),
         env: dict[str, str] | None = None) -> StackConfig:
    """Validate the flat Pulumi config of the `sando` namespace; every problem is said at once, each
    naming its key (and, for a setting still to be made, how to make it). `env` (the program's
    environment) adds the checks that depend on it (sando:sshAgent needs SSH_AUTH_SOCK)."""
    data: dict[str, Any] = {}
    msgs: list[str] = []
    for full_key, value in raw.items():
        ns, _, key = full_key.partition(":")
        if ns != NAMESPACE:
            continue
        if key in SECRET_KEYS and full_key not in secret_keys:
            msgs.append(f"sando:{key}: must be set as a secret: " + how_to_set(key))
            continue
        if isinstance(value, str) and key in STRUCTURED_KEYS:  # Pulumi passes objects/lists as JSON
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                what = LIST_HINTS.get(key, "an object")
                msgs.append(f"sando:{key}: must be {what}, set in Pulumi.<stack>.yaml or with "
                            f"`pulumi config set --path 'sando:{key}...'`; got the plain text {value[:60]!r}")
                continue
        data[key] = value
    placeholders = [k for key, v in data.items() if key not in SECRET_KEYS for k in _placeholders(v, key)]
    msgs += [f"sando:{k}: still the tier file's placeholder {v}: " + how_to_set(k) for k, v in placeholders]
    msgs += [f"sando:{k}: {why}" for k, why in _unset(data, env)]
    said = {m.split(": ", 1)[0] for m in msgs}
    cfg = None
    try:
        cfg = StackConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _loc(err["loc"])
            if f"sando:{loc}" not in said:  # a placeholder is not also "must be a DNS name"
                msgs.append(f"sando:{loc}: {_in_operator_words(err, loc)}")
    if cfg is not None and cfg.switch.blue_green:
        for node in cfg.nodes:
            port = cfg.front(node).rsplit(":", 1)[1]
            if port in {str(p) for p in cfg.switch.ports}:
                msgs.append(f"sando:switch.ports: {port} is the port the service's own unit listens on "
                            f"({cfg.health_url(node)}, sando:healthCheck.url): give the two instances other ports")
                break
    bootstrap = data.get("bootstrap", {})
    if (isinstance(bootstrap, dict) and bootstrap.get("manage", True) and not bootstrap.get("ref")
            and not any(m.startswith(("sando:bootstrap:", "sando:bootstrap.")) for m in msgs)):
        msgs.append("sando:bootstrap.ref: is required: the tag, branch or commit of the server repo whose host files "
                    "(Caddyfile, unit, ...) the nodes get: " + how_to_set("bootstrap.ref") + " (README 'Host config')")
    if len(msgs) == 1:
        raise ConfigError(msgs[0])
    if msgs:
        raise ConfigError(f"{len(msgs)} problems in the stack configuration:\n  " + "\n  ".join(msgs))
    return cfg
