"""A real stack's secrets under a passphrase nobody else knows (issue 20.9).

`scripts/env.sh` used to export the publicly known passphrase `sando-local`, so a prod stack
created in such a shell had its SSH key and service token encrypted with it. Now only `make
demo` uses it (SANDO_DEMO=1, its throwaway stacks); the program and the sando CLI refuse a
stack whose secrets would be under it, or under no passphrase at all, naming what to set.
"""

from __future__ import annotations

import os
from pathlib import Path

PUBLIC = ("sando-local",)  # passphrases written in this repo for the demo


def uses_passphrase(project_dir: Path, stack: str) -> bool:
    """The stack's secrets provider is the passphrase one (Pulumi.<stack>.yaml has its salt and
    names no other provider); a stack without a file yet is created with it by default."""
    path = project_dir / f"Pulumi.{stack.split('/')[-1]}.yaml"
    try:
        text = path.read_text()
    except OSError:
        return True
    provider = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                     if line.startswith("secretsprovider:")), "passphrase")
    return provider == "passphrase"


def problem(project_dir: Path, stack: str, env: dict | None = None, need: bool = True) -> str | None:
    """Why the stack's secrets are not safe to use, or None. `need=False` (the program): a missing
    passphrase is Pulumi's to ask for (it prompts on a terminal); only the public one is refused."""
    env = os.environ if env is None else env
    if env.get("SANDO_DEMO") == "1" or not uses_passphrase(project_dir, stack):
        return None
    name = stack.split("/")[-1]
    fix = (f"export PULUMI_CONFIG_PASSPHRASE='<your own>' (or PULUMI_CONFIG_PASSPHRASE_FILE=<file>), or keep the "
           f"stack's secrets in a KMS: pulumi stack change-secrets-provider 'awskms://…' -s {name}")
    if env.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        return None
    passphrase = env.get("PULUMI_CONFIG_PASSPHRASE")
    if (passphrase is None or passphrase == "") and need:
        return f"stack {name}: no passphrase for its secrets (sando:sshPrivateKey, ...): {fix}"
    if passphrase in PUBLIC:
        return (f"stack {name}: PULUMI_CONFIG_PASSPHRASE is {passphrase!r}, the demo's publicly known passphrase; "
                f"a real stack's secrets need one nobody else knows: {fix}")
    return None
