"""`zero systemd-unit`: a unit file that runs `zero mount` as a user or system
service (Type=notify: systemd counts it started once the mount answers)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("mountpoint")
    parser.add_argument("cache")
    parser.add_argument("--user", action="store_true", help="a user service (systemctl --user); default: system")
    parser.add_argument("-o", dest="options", default="", help="mount options, as for zero mount")


def unit_name(mountpoint: Path) -> str:
    return "zero-" + (re.sub(r"[^A-Za-z0-9]+", "-", str(mountpoint)).strip("-") or "root") + ".service"


def render(mountpoint: Path, cache: Path, config_source: str | None, user: bool, options: str = "") -> str:
    zero = str(Path(sys.executable).parent / "zero")
    config = ["--config", config_source] if config_source else []
    start = [zero, *config, "mount", str(mountpoint), str(cache)] + ([f"-o{options}"] if options else [])
    name = unit_name(mountpoint)
    where = "~/.config/systemd/user" if user else "/etc/systemd/system"
    ctl = "systemctl --user" if user else "systemctl"
    return f"""# zero at {mountpoint} (cache {cache}).
# Install: save as {where}/{name}, then: {ctl} daemon-reload && {ctl} enable --now {name}
# Logs: journalctl {'--user ' if user else ''}-u {name}    Reload the config: {ctl} reload {name}
[Unit]
Description=zero filesystem at {mountpoint}
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={shlex.join(start)}
ExecReload={shlex.join([zero, *config, "reload", str(mountpoint)])}
# SIGTERM to `zero mount` only: it unmounts, lets zero-fuse hand its writes to
# the worker, then stops the worker. The rest is killed only after the timeout.
KillMode=mixed
TimeoutStopSec=15min
Restart=on-failure
RestartSec=5s

[Install]
WantedBy={'default.target' if user else 'multi-user.target'}
"""


def systemd_unit(args, config) -> int:
    source = config.source if config.source != "embedded default" else None
    if source:
        source = str(Path(source).absolute())
    print(render(Path(args.mountpoint).expanduser().absolute(), Path(args.cache).expanduser().absolute(),
                 source, args.user, args.options), end="")
    return 0
