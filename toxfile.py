"""tox's inline plugin (tox loads it itself): an environment can need programs pip cannot install.

``system_programs`` in an environment lists them (absolute paths). When one is missing the environment
is treated like one whose Python is missing: skipped, saying why, where missing interpreters are skipped
(tox.ini, a newcomer's machine), and failed where they are not (``.ci/run``), so CI never passes without it.
"""

from __future__ import annotations

import os

from tox.plugin import impl
from tox.tox_env.errors import Fail, Skip


@impl
def tox_add_env_config(env_conf, state) -> None:
    env_conf.add_config(keys=["system_programs"], of_type=list[str], default=[],
                        desc="programs this environment's tests run, installed with the system's package manager")


def _require_programs(tox_env) -> None:
    missing = [path for path in tox_env.conf["system_programs"] if not os.access(path, os.X_OK)]
    if not missing:
        return
    why = (f"{', '.join(missing)} is not installed; it comes from the system's packages, not pip "
           "(the README's Tests section says how)")
    raise Skip(why) if tox_env.conf["skip_missing_interpreters"] else Fail(why)


@impl
def tox_on_install(tox_env, arguments, section, of_type) -> None:
    """Before the environment's first install: a skipped environment costs no install."""
    _require_programs(tox_env)


@impl
def tox_before_run_commands(tox_env) -> None:
    """An environment installed earlier (nothing to install this time) is checked here."""
    _require_programs(tox_env)
