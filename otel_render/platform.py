"""The platform the process runs on: Render detection, the resource attributes
Render's variables map to, and the instance's memory and CPU limits.

Everything here is a function of an environment mapping and a :class:`HostFS`
(the root under which ``/proc`` and ``/sys/fs/cgroup`` are read), so tests can
hand it a fake Render environment and a fake cgroup tree.

Memory is judged per *instance* (the container), not per process: with
gunicorn ``--preload`` the workers share the master's pages, so summing their
RSS double-counts. The cgroup's ``memory.current`` (v2) or
``memory.usage_in_bytes`` (v1) minus the inactive file cache is what the
platform's out-of-memory killer looks at, and what we report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PLATFORM_RENDER = "render"
PLATFORM_LOCAL = "local"
PLATFORM_OTHER = "other"

MIB = 1024 * 1024

#: Render instance types by ``RENDER_CPU_COUNT``: the memory that comes with each
#: CPU share (https://render.com/pricing). Four CPUs are both Pro Plus (8 GB) and
#: Pro Max (16 GB); we assume the smaller, so the memory rules err on the safe side.
RENDER_MEMORY_MB_BY_CPU = {0.1: 512, 0.5: 512, 1.0: 2048, 2.0: 4096, 4.0: 8192, 8.0: 32768}
RENDER_DEFAULT_MEMORY_MB = 512

#: Variables that say "some other managed platform" when Render's are absent.
_OTHER_PLATFORM_MARKERS = (
    "KUBERNETES_SERVICE_HOST",
    "DYNO",
    "FLY_APP_NAME",
    "K_SERVICE",
    "AWS_EXECUTION_ENV",
    "RAILWAY_ENVIRONMENT",
    "WEBSITE_SITE_NAME",
)

# cgroup v1 reports "no limit" as a huge page-aligned number.
_CGROUP_V1_UNLIMITED = 1 << 62


def detect_platform(environ: Mapping[str, str]) -> str:
    """``render`` when ``RENDER=true``, ``other`` on another known platform, else ``local``."""
    if environ.get("RENDER", "").strip().lower() == "true":
        return PLATFORM_RENDER
    if any(environ.get(marker) for marker in _OTHER_PLATFORM_MARKERS):
        return PLATFORM_OTHER
    return PLATFORM_LOCAL


def render_resource_attributes(environ: Mapping[str, str]) -> dict[str, str]:
    """Resource attributes from Render's default variables (empty off Render).

    ``service.name`` comes from ``RENDER_SERVICE_NAME``; the caller must let
    ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win over anything here
    (see :func:`without_user_keys`).
    """
    if detect_platform(environ) != PLATFORM_RENDER:
        return {}

    def get(name: str) -> str:
        return environ.get(name, "").strip()

    attributes = {
        "cloud.provider": "render",
        "service.name": get("RENDER_SERVICE_NAME"),
        "service.version": get("RENDER_GIT_COMMIT")[:12],
        "deployment.environment.name": "preview"
        if get("IS_PULL_REQUEST").lower() == "true"
        else "production",
        "render.service.id": get("RENDER_SERVICE_ID"),
        "render.service.type": get("RENDER_SERVICE_TYPE"),
        "render.instance.id": get("RENDER_INSTANCE_ID"),
        "render.external_url": get("RENDER_EXTERNAL_URL"),
        "vcs.ref.head.name": get("RENDER_GIT_BRANCH"),
        "vcs.ref.head.revision": get("RENDER_GIT_COMMIT"),
    }
    return {key: value for key, value in attributes.items() if value}


def user_resource_keys(environ: Mapping[str, str]) -> set[str]:
    """Resource keys the user set through the standard variables."""
    keys = set()
    for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, _ = item.partition("=")
        if sep and key.strip():
            keys.add(key.strip())
    if environ.get("OTEL_SERVICE_NAME", "").strip():
        keys.add("service.name")
    return keys


def without_user_keys(attributes: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """Drop our defaults for keys the user set, so standard variables always win."""
    taken = user_resource_keys(environ)
    return {key: value for key, value in attributes.items() if key not in taken}


# --------------------------------------------------------------------------
# Host files: /proc and cgroups
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HostFS:
    """Where ``/proc`` and ``/sys`` are read from; tests point it at a fake tree."""

    root: Path = Path("/")

    def read(self, path: str) -> str | None:
        try:
            return (self.root / path.lstrip("/")).read_text()
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return (self.root / path.lstrip("/")).exists()


@dataclass(frozen=True)
class Cgroup:
    """The memory cgroup directory of this process, relative to the host root."""

    version: int
    path: str  # e.g. "/sys/fs/cgroup" or "/sys/fs/cgroup/memory/docker/abc"
    mount: str  # the controller's mount point; the walk up stops here


def find_memory_cgroup(fs: HostFS) -> Cgroup | None:
    """Locate this process's memory cgroup (v2 unified, else v1 ``memory``)."""
    membership = fs.read("/proc/self/cgroup") or ""
    mounts = _cgroup_mounts(fs)
    v1_path = v2_path = None
    for line in membership.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    if v1_path is not None and "memory" in mounts:
        mount, mount_root = mounts["memory"]
        return Cgroup(1, _join_cgroup(fs, mount, mount_root, v1_path, "memory.limit_in_bytes"), mount)
    if v2_path is not None and "cgroup2" in mounts:
        mount, mount_root = mounts["cgroup2"]
        return Cgroup(2, _join_cgroup(fs, mount, mount_root, v2_path, "memory.max"), mount)
    return None


def _cgroup_mounts(fs: HostFS) -> dict[str, tuple[str, str]]:
    """Mount point and mount root of the v2 hierarchy and of the v1 memory controller."""
    found: dict[str, tuple[str, str]] = {}
    for line in (fs.read("/proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        left_fields, right_fields = left.split(), right.split()
        if len(left_fields) < 5 or len(right_fields) < 3:
            continue
        mount_root, mount_point, fstype = left_fields[3], left_fields[4], right_fields[0]
        if fstype == "cgroup2":
            found.setdefault("cgroup2", (mount_point, mount_root))
        elif fstype == "cgroup" and "memory" in right_fields[2].split(","):
            found.setdefault("memory", (mount_point, mount_root))
    return found


def _join_cgroup(fs: HostFS, mount: str, mount_root: str, path: str, probe: str) -> str:
    # Inside a container the mount root is often the container's own cgroup, and
    # /proc/self/cgroup names a path outside it: strip the common prefix, and fall
    # back to the mount point itself when the joined directory does not exist.
    relative = path
    if mount_root != "/" and relative.startswith(mount_root):
        relative = relative[len(mount_root) :]
    candidate = mount.rstrip("/") + "/" + relative.strip("/")
    candidate = candidate.rstrip("/") or "/"
    if fs.exists(f"{candidate}/{probe}"):
        return candidate
    return mount


def _read_int(fs: HostFS, path: str) -> int | None:
    text = fs.read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _memory_stat(fs: HostFS, directory: str) -> dict[str, int]:
    stats: dict[str, int] = {}
    for line in (fs.read(f"{directory}/memory.stat") or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stats[key] = int(value)
    return stats


def _ancestors(cgroup: Cgroup) -> list[str]:
    """The cgroup directory and its parents up to the controller's mount point."""
    paths = [cgroup.path]
    current = cgroup.path
    while current.rstrip("/") != cgroup.mount.rstrip("/") and current not in ("", "/"):
        current = current.rsplit("/", 1)[0] or "/"
        paths.append(current)
    return paths


def cgroup_memory_limit(fs: HostFS, cgroup: Cgroup) -> int | None:
    """The tightest memory limit on this cgroup or any ancestor, in bytes."""
    limits = []
    filename = "memory.max" if cgroup.version == 2 else "memory.limit_in_bytes"
    for directory in _ancestors(cgroup):
        value = _read_int(fs, f"{directory}/{filename}")
        if value is not None and value < _CGROUP_V1_UNLIMITED:
            limits.append(value)
    if cgroup.version == 1:
        hierarchical = _memory_stat(fs, cgroup.path).get("hierarchical_memory_limit")
        if hierarchical is not None and hierarchical < _CGROUP_V1_UNLIMITED:
            limits.append(hierarchical)
    return min(limits) if limits else None


def cgroup_memory_in_use(fs: HostFS, cgroup: Cgroup) -> int | None:
    """Memory charged to the cgroup minus the inactive file cache, in bytes."""
    if cgroup.version == 2:
        current = _read_int(fs, f"{cgroup.path}/memory.current")
        inactive = _memory_stat(fs, cgroup.path).get("inactive_file", 0)
    else:
        current = _read_int(fs, f"{cgroup.path}/memory.usage_in_bytes")
        inactive = _memory_stat(fs, cgroup.path).get("total_inactive_file", 0)
    if current is None:
        return None
    return max(0, current - inactive)


def physical_memory(fs: HostFS) -> int | None:
    for line in (fs.read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryLimit:
    """The instance's memory limit and where it was learnt."""

    bytes: int
    source: str


@dataclass(frozen=True)
class CpuLimit:
    """How many CPUs the instance may use (fractional on small Render plans)."""

    cpus: float
    source: str


def render_cpu_count(environ: Mapping[str, str]) -> float | None:
    raw = environ.get("RENDER_CPU_COUNT", "").strip()
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value > 0 else None


def memory_limit(
    environ: Mapping[str, str], override_mb: int = 0, fs: HostFS = HostFS()
) -> MemoryLimit:
    """The instance's memory limit: override, cgroup, Render plan, Render default, host."""
    if override_mb > 0:
        return MemoryLimit(override_mb * MIB, "OTEL_RENDER_MEMORY_LIMIT_MB")
    cgroup = find_memory_cgroup(fs)
    if cgroup is not None:
        limit = cgroup_memory_limit(fs, cgroup)
        physical = physical_memory(fs)
        # A cgroup limit above the host's memory is no limit at all.
        if limit is not None and (physical is None or limit < physical):
            return MemoryLimit(limit, f"cgroup v{cgroup.version} ({cgroup.path})")
    if detect_platform(environ) == PLATFORM_RENDER:
        cpus = render_cpu_count(environ)
        if cpus is not None and cpus in RENDER_MEMORY_MB_BY_CPU:
            return MemoryLimit(
                RENDER_MEMORY_MB_BY_CPU[cpus] * MIB, f"Render plan (RENDER_CPU_COUNT={cpus:g})"
            )
        return MemoryLimit(RENDER_DEFAULT_MEMORY_MB * MIB, "Render default")
    physical = physical_memory(fs)
    if physical is not None:
        return MemoryLimit(physical, "physical memory")
    return MemoryLimit(RENDER_DEFAULT_MEMORY_MB * MIB, "assumed")


MEMORY_SOURCE_CGROUP = "cgroup"
MEMORY_SOURCE_PROCESSES = "processes"


def memory_source(environ: Mapping[str, str], setting: str = "auto", fs: HostFS = HostFS()) -> str:
    """Where the instance's memory in use is read: ``cgroup`` or ``processes``.

    ``auto``: the cgroup on Render and wherever the cgroup carries a memory
    limit (a container: the cgroup *is* the instance); otherwise (a laptop,
    a VM, a shared CI cgroup) the cgroup holds unrelated processes too, so the
    instance is the app's own process tree, measured by PSS (each shared page
    counted once, split among the processes that share it).
    """
    if setting in (MEMORY_SOURCE_CGROUP, MEMORY_SOURCE_PROCESSES):
        return setting
    if detect_platform(environ) == PLATFORM_RENDER:
        return MEMORY_SOURCE_CGROUP
    cgroup = find_memory_cgroup(fs)
    if cgroup is not None:
        limit = cgroup_memory_limit(fs, cgroup)
        physical = physical_memory(fs)
        if limit is not None and (physical is None or limit < physical):
            return MEMORY_SOURCE_CGROUP
    return MEMORY_SOURCE_PROCESSES


def process_tree_memory(root_pid: int) -> int | None:
    """PSS summed over ``root_pid`` and its descendants (None if it is gone).

    Reads ``/proc/<pid>/smaps_rollup`` per process: a background-loop cost,
    never a request-path one.
    """
    import psutil  # pylint: disable=import-outside-toplevel

    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except (psutil.Error, OSError):
        return None
    total = 0
    for process in processes:
        try:
            info = process.memory_full_info()
            total += getattr(info, "pss", info.uss)
        except (psutil.Error, OSError, AttributeError):
            continue
    return total


def instance_memory_in_use(fs: HostFS = HostFS()) -> int | None:
    """The instance's memory in use (cgroup, without inactive file cache), or None."""
    cgroup = find_memory_cgroup(fs)
    if cgroup is None:
        return None
    return cgroup_memory_in_use(fs, cgroup)


def cpu_limit(environ: Mapping[str, str], fs: HostFS = HostFS()) -> CpuLimit:
    """CPUs from ``RENDER_CPU_COUNT``, else the cgroup CPU quota, else the host."""
    render_cpus = render_cpu_count(environ)
    if render_cpus is not None:
        return CpuLimit(render_cpus, "RENDER_CPU_COUNT")
    quota = _cgroup_cpu_quota(fs)
    if quota is not None:
        return CpuLimit(quota, "cgroup cpu quota")
    try:
        host = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        host = os.cpu_count() or 1
    return CpuLimit(float(host), "host")


def _cgroup_cpu_quota(fs: HostFS) -> float | None:
    text = fs.read("/sys/fs/cgroup/cpu.max")
    if text:
        quota, _, period = text.strip().partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            return int(quota) / int(period)
        return None
    quota_us = _read_int(fs, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    period_us = _read_int(fs, "/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if quota_us and quota_us > 0 and period_us:
        return quota_us / period_us
    return None
